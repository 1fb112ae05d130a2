//! A model directory → [`ModelSpec`]: everything the engine needs to know about a Qwen3.5 export
//! before it loads weights, read from the files and validated with errors that name the file.
//!
//! Sources, in order of authority: `genai_config.json` (tensor name patterns, EOS ids, context
//! length, search defaults), the ONNX graph itself (which layers carry KV versus Gated DeltaNet
//! state, state shapes and element types) and the tokenizer files. Nothing here is specific to
//! one model size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod genai;
mod graph;
pub mod hub;

use super::onnx::weights::WeightUse;
use super::onnx::{self, Dim, GraphSummary};
use genai::GenaiDecoder;
use graph::{float_type, Names};

/// Model types this engine runs (the text decoder of Qwen3.5 Small).
pub const SUPPORTED_TYPES: &[&str] = &["qwen3_5_text", "qwen3_5"];

/// Why a model directory cannot be used. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The directory itself is missing or unreadable.
    #[error("model directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    /// A required file is absent.
    #[error("{path}: missing ({why})")]
    Missing {
        /// The expected file.
        path: PathBuf,
        /// What the file is for.
        why: &'static str,
    },
    /// A file exists but could not be read.
    #[error("{path}: cannot read: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A file is malformed or inconsistent with the rest of the directory.
    #[error("{path}: {msg}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// An external data file is shorter than the model says.
    #[error(
        "{path}: truncated: tensor '{tensor}' needs bytes up to {needed}, but the file has {actual} \
         (incomplete download or copy?)"
    )]
    Truncated {
        /// The data file.
        path: PathBuf,
        /// First tensor found out of range.
        tensor: String,
        /// Bytes required.
        needed: u64,
        /// Bytes present.
        actual: u64,
    },
}

impl ModelError {
    fn invalid(path: &Path, msg: impl Into<String>) -> Self {
        Self::Invalid { path: path.to_path_buf(), msg: msg.into() }
    }
}

/// Element type of a state or logits tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
}

/// Input and output tensor names for one piece of per-sequence state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateTensor {
    /// Graph input (`past…`).
    pub input: String,
    /// Graph output (`present…`).
    pub output: String,
    /// Shape without the batch dimension; for KV the sequence axis is `0` here and grows.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: StateType,
}

/// What a decoder layer keeps between steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerKind {
    /// Full (softmax) attention: a KV cache that grows with the sequence.
    FullAttention {
        /// Key cache `[kv_heads, seq, head_dim]`.
        key: StateTensor,
        /// Value cache `[kv_heads, seq, head_dim]`.
        value: StateTensor,
    },
    /// Gated DeltaNet linear attention: fixed-size conv and recurrent state.
    LinearAttention {
        /// Causal conv window `[conv_dim, kernel - 1]`.
        conv: StateTensor,
        /// Recurrent state `[v_heads, d_k, d_v]`.
        recurrent: StateTensor,
    },
}

/// How `position_ids` is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionIds {
    /// The graph has no `position_ids` input.
    None,
    /// `[batch, seq]`.
    Flat,
    /// `[rows, batch, seq]` (multimodal RoPE; text-only uses the same positions in every row).
    Sections(usize),
}

/// Generation defaults from `genai_config.json`'s `search` section.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchDefaults {
    /// Sample (true) or greedy (false).
    pub do_sample: bool,
    /// Softmax temperature.
    pub temperature: f32,
    /// Top-k cut-off (0 = off).
    pub top_k: usize,
    /// Nucleus cut-off (1.0 = off).
    pub top_p: f32,
    /// Repetition penalty (1.0 = off).
    pub repetition_penalty: f32,
    /// Maximum total length (prompt + generated).
    pub max_length: usize,
}

/// How a model directory is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The onnxruntime-genai model builder's: `genai_config.json` and the decoder graph, with an
    /// embedding graph of its own in the split layout.
    Genai {
        /// Whether the embedding is a graph of its own (`model.embedding`).
        split: bool,
    },
    /// The Hugging Face Hub's ONNX exports (transformers.js's): `config.json` and `onnx/`.
    Hub {
        /// The variant loaded (`q4`, `fp32`, …).
        variant: String,
        /// Whether the embedding is a graph of its own (`embed_tokens*.onnx`).
        split: bool,
    },
}

impl Layout {
    /// A short description for `status` and `doctor`.
    pub fn describe(&self) -> String {
        match self {
            Self::Genai { split: false } => "onnxruntime-genai".into(),
            Self::Genai { split: true } => "onnxruntime-genai, embedding + decoder".into(),
            Self::Hub { variant, split: true } => format!("transformers.js, embedding + decoder, {variant}"),
            Self::Hub { variant, split: false } => format!("transformers.js, one graph, {variant}"),
        }
    }
}

/// A separate embedding graph: token ids in, the decoder's `inputs_embeds` out.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// The graph file.
    pub onnx_path: PathBuf,
    /// Its external data files with their sizes.
    pub data_files: Vec<(PathBuf, u64)>,
    /// Bytes of weights stored inline in the graph file.
    pub inline_weight_bytes: u64,
    /// Its token-ids input.
    pub input: String,
    /// Its output (the decoder input of the same name).
    pub output: String,
}

/// Everything known about a model directory before loading it.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The directory.
    pub dir: PathBuf,
    /// `model.type` from genai_config.json (`model_type` of config.json).
    pub model_type: String,
    /// The directory's layout.
    pub layout: Layout,
    /// A separate embedding graph feeding the decoder (`None`: the decoder takes token ids).
    pub embedding: Option<Embedding>,
    /// The decoder graph file.
    pub onnx_path: PathBuf,
    /// External data files with their sizes in bytes.
    pub data_files: Vec<(PathBuf, u64)>,
    /// Bytes of weights stored inline in the graph file.
    pub inline_weight_bytes: u64,
    /// Vocabulary size of the logits.
    pub vocab_size: usize,
    /// Hidden size (informational).
    pub hidden_size: usize,
    /// Maximum sequence length the model supports.
    pub context_length: usize,
    /// Token ids that end generation.
    pub eos_token_ids: Vec<u32>,
    /// The decoder's token input: `input_ids`, or `inputs_embeds` when [`embedding`](Self::embedding) feeds it.
    pub input_ids: String,
    /// `attention_mask` tensor name, if the graph takes one.
    pub attention_mask: Option<String>,
    /// `position_ids` tensor name, if the graph takes one.
    pub position_ids_name: Option<String>,
    /// Shape of `position_ids`.
    pub position_ids: PositionIds,
    /// `logits` tensor name.
    pub logits: String,
    /// A scalar input saying how many positions' logits to compute (`num_logits_to_keep`; 0 =
    /// all), where the graph declares one: 1 is fed when only the last is wanted.
    pub logits_to_keep: Option<String>,
    /// Optimum's `use_cache_branch` (bool `[1]`), where the graph declares it: true when the
    /// sequence has a past.
    pub use_cache_branch: Option<String>,
    /// Element type of the logits.
    pub logits_dtype: StateType,
    /// Per-layer state, indexed by layer.
    pub layers: Vec<LayerKind>,
    /// Search defaults.
    pub search: SearchDefaults,
    /// `tokenizer.json`.
    pub tokenizer_path: PathBuf,
    /// `tokenizer_config.json`, if present.
    pub tokenizer_config_path: Option<PathBuf>,
    /// `chat_template.jinja`, if present.
    pub chat_template_path: Option<PathBuf>,
    /// Operators the graph uses, as `domain:op`.
    pub ops: Vec<String>,
    /// Query heads of the full-attention layers (0 when genai_config.json does not say).
    pub attention_heads: usize,
    /// The weights by how the graph reads them (what memory estimates need).
    pub weights: WeightUse,
}

impl ModelSpec {
    /// Total size of the weights on disk.
    pub fn weight_bytes(&self) -> u64 {
        let embedding =
            self.embedding.iter().map(|e| e.inline_weight_bytes + e.data_files.iter().map(|(_, n)| n).sum::<u64>()).sum::<u64>();
        self.inline_weight_bytes + self.data_files.iter().map(|(_, n)| n).sum::<u64>() + embedding
    }

    /// Number of layers with a KV cache.
    pub fn full_attention_layers(&self) -> usize {
        self.layers.iter().filter(|l| matches!(l, LayerKind::FullAttention { .. })).count()
    }

    /// Bytes of KV cache per token of context (all full-attention layers, keys and values).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerKind::FullAttention { key, value } => state_bytes(key) + state_bytes(value),
                LayerKind::LinearAttention { .. } => 0,
            })
            .sum()
    }

    /// Bytes of the fixed-size linear-attention state of one sequence.
    pub fn fixed_state_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerKind::LinearAttention { conv, recurrent } => state_bytes(conv) + state_bytes(recurrent),
                LayerKind::FullAttention { .. } => 0,
            })
            .sum()
    }

    /// Loads and validates `dir` (in the Hub's layouts, the first variant of
    /// [`VARIANTS`](hub::VARIANTS) present).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::load_variant(dir, None)
    }

    /// Loads and validates `dir`; `variant` picks one of a Hub layout's variants.
    pub fn load_variant(dir: impl AsRef<Path>, variant: Option<&str>) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        if hub::is_hub_layout(dir) {
            return hub::load(dir, variant);
        }
        genai::load(dir)
    }
}

fn state_bytes(t: &StateTensor) -> usize {
    let elem = match t.dtype {
        StateType::F32 => 4,
        StateType::F16 => 2,
    };
    t.shape.iter().map(|&d| d.max(1)).product::<usize>() * elem
}

fn require(dir: &Path, name: &str, why: &'static str) -> Result<PathBuf, ModelError> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelError::Missing { path, why })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|error| ModelError::Read { path: path.to_path_buf(), error })
}

/// Reads the embedding graph at `path` (its data in `data_dir`): its token input (`input`, else
/// its first) and its output `output`, which must exist.
fn embedding_graph(data_dir: &Path, path: std::path::PathBuf, input: Option<&str>, output: &str) -> Result<Embedding, ModelError> {
    let g = onnx::parse_model(&read(&path)?).map_err(|e| ModelError::invalid(&path, format!("not a readable ONNX model: {e}")))?;
    let data_files = check_external_data(data_dir, &path, &g)?;
    let input = match input {
        Some(name) if g.input(name).is_some() => name.to_string(),
        Some(name) => return Err(ModelError::invalid(&path, format!("the graph has no input '{name}'"))),
        None => g.inputs.first().map(|i| i.name.clone()).ok_or_else(|| ModelError::invalid(&path, "the graph has no input"))?,
    };
    if g.output(output).is_none() {
        return Err(ModelError::invalid(&path, format!("the graph has no output '{output}'")));
    }
    Ok(Embedding { onnx_path: path, data_files, inline_weight_bytes: g.inline_bytes, input, output: output.into() })
}

/// The tokenizer (required), and the tokenizer configuration and chat template where present.
fn text_files(dir: &Path) -> Result<(PathBuf, Option<PathBuf>, Option<PathBuf>), ModelError> {
    Ok((
        require(dir, "tokenizer.json", "the tokenizer")?,
        Some(dir.join("tokenizer_config.json")).filter(|p| p.is_file()),
        Some(dir.join("chat_template.jinja")).filter(|p| p.is_file()),
    ))
}

/// The graph's operators as `domain:op`.
fn op_names(graph: &GraphSummary) -> Vec<String> {
    graph.ops.iter().map(|(d, o)| if d.is_empty() { o.clone() } else { format!("{d}:{o}") }).collect()
}

/// The decoder's inputs and outputs besides its token input and its states.
struct DecoderIo {
    attention_mask: Option<String>,
    position_ids_name: Option<String>,
    position_ids: PositionIds,
    logits: String,
    logits_dtype: StateType,
    /// The logits' last dimension, where the graph fixes it.
    logits_width: Option<usize>,
}

fn decoder_io(names: &Names) -> Result<DecoderIo, ModelError> {
    let attention_mask = names.graph_input("attention_mask", false)?;
    let position_ids_name = names.graph_input("position_ids", false)?;
    let position_ids = positions(names.graph, names.onnx, position_ids_name.as_deref())?;
    let logits = names.graph_output("logits")?;
    let info = names.graph.output(&logits).expect("checked");
    let logits_dtype = float_type(names.onnx, info)?;
    let logits_width = match info.shape.last() {
        Some(Dim::Fixed(v)) => Some(*v as usize),
        _ => None,
    };
    Ok(DecoderIo { attention_mask, position_ids_name, position_ids, logits, logits_dtype, logits_width })
}

/// How the decoder's `position_ids` input (if any) is shaped.
fn positions(graph: &GraphSummary, onnx: &Path, name: Option<&str>) -> Result<PositionIds, ModelError> {
    let Some(name) = name else { return Ok(PositionIds::None) };
    match graph.input(name).map(|v| v.shape.as_slice()) {
        Some([Dim::Fixed(rows), _, _]) => Ok(PositionIds::Sections(*rows as usize)),
        Some([_, _]) => Ok(PositionIds::Flat),
        _ => Err(ModelError::invalid(onnx, format!("input '{name}' has an unexpected shape"))),
    }
}

/// Every graph input must be one the engine feeds: `fed` or a layer's state (else `why`).
fn check_fed(graph: &GraphSummary, onnx: &Path, fed: &[Option<&str>], layers: &[LayerKind], why: &str) -> Result<(), ModelError> {
    let states = layers.iter().flat_map(|l| match l {
        LayerKind::FullAttention { key, value } => [key.input.as_str(), value.input.as_str()],
        LayerKind::LinearAttention { conv, recurrent } => [conv.input.as_str(), recurrent.input.as_str()],
    });
    let known: Vec<&str> = fed.iter().flatten().copied().chain(states).collect();
    match graph.inputs.iter().find(|i| !known.contains(&i.name.as_str())) {
        Some(extra) => Err(ModelError::invalid(onnx, format!("graph input '{}' {why}", extra.name))),
        None => Ok(()),
    }
}

/// Every external data file must exist and be long enough for every tensor placed in it.
fn check_external_data(dir: &Path, onnx: &Path, graph: &GraphSummary) -> Result<Vec<(PathBuf, u64)>, ModelError> {
    let mut files: BTreeMap<String, (PathBuf, u64)> = BTreeMap::new();
    for ext in &graph.external {
        if ext.location.contains("..") || Path::new(&ext.location).is_absolute() {
            return Err(ModelError::invalid(onnx, format!("tensor '{}' points outside the model directory: {}", ext.tensor, ext.location)));
        }
        if !files.contains_key(&ext.location) {
            let path = dir.join(&ext.location);
            let len = match std::fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ModelError::Missing { path, why: "external weights referenced by the graph" })
                }
                Err(error) => return Err(ModelError::Read { path, error }),
            };
            files.insert(ext.location.clone(), (path, len));
        }
        let (path, len) = &files[&ext.location];
        let needed = ext.offset + ext.length.unwrap_or(0);
        if needed > *len {
            return Err(ModelError::Truncated { path: path.clone(), tensor: ext.tensor.clone(), needed, actual: *len });
        }
    }
    Ok(files.into_values().collect())
}
