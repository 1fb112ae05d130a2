//! The onnxruntime-genai layout: `genai_config.json` (tensor name patterns, EOS ids, context
//! length, search defaults) with the decoder graph it names — taking `input_ids`, or, in the split
//! layout (the builder's `exclude_embeds`, Olive's recipes), `inputs_embeds` from the embedding
//! graph `model.embedding` names.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::graph::Names;
use super::{
    check_external_data, check_fed, decoder_io, embedding_graph, op_names, read, require, text_files, DecoderIo, Layout, ModelError,
    ModelSpec, SearchDefaults, SUPPORTED_TYPES,
};
use crate::onnx;

#[derive(Debug, Deserialize)]
struct GenaiConfig {
    model: GenaiModel,
    #[serde(default)]
    search: GenaiSearch,
}

#[derive(Debug, Deserialize)]
struct GenaiModel {
    #[serde(rename = "type")]
    model_type: String,
    #[serde(default)]
    embedding: Option<GenaiEmbedding>,
    context_length: usize,
    vocab_size: usize,
    eos_token_id: OneOrMany,
    decoder: GenaiDecoder,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Debug, Deserialize)]
pub(super) struct GenaiDecoder {
    pub(super) filename: String,
    #[serde(default)]
    pub(super) hidden_size: usize,
    pub(super) num_hidden_layers: usize,
    #[serde(default)]
    pub(super) num_attention_heads: Option<usize>,
    #[serde(default)]
    pub(super) num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub(super) head_size: Option<usize>,
    pub(super) inputs: BTreeMap<String, String>,
    pub(super) outputs: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct GenaiSearch {
    do_sample: bool,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    repetition_penalty: f32,
    max_length: usize,
}

impl Default for GenaiSearch {
    fn default() -> Self {
        Self { do_sample: false, temperature: 1.0, top_k: 50, top_p: 1.0, repetition_penalty: 1.0, max_length: 0 }
    }
}

/// `model.embedding`: the embedding graph of the split layout.
#[derive(Debug, Deserialize)]
struct GenaiEmbedding {
    filename: String,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    #[serde(default)]
    outputs: BTreeMap<String, String>,
}

pub(super) fn load(dir: &Path) -> Result<ModelSpec, ModelError> {
    let meta = std::fs::metadata(dir).map_err(|e| ModelError::Dir(dir.to_path_buf(), e))?;
    if !meta.is_dir() {
        return Err(ModelError::Dir(dir.to_path_buf(), std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory")));
    }
    let config_path = require(dir, "genai_config.json", "the onnxruntime-genai model builder writes it")?;
    let config: GenaiConfig = serde_json::from_slice(&read(&config_path)?)
        .map_err(|e| ModelError::invalid(&config_path, format!("not a valid genai config: {e}")))?;
    let m = &config.model;
    if !SUPPORTED_TYPES.contains(&m.model_type.as_str()) {
        return Err(ModelError::invalid(
            &config_path,
            format!("model type '{}' is not supported (this engine runs {})", m.model_type, SUPPORTED_TYPES.join(", ")),
        ));
    }
    let onnx_path = require(dir, &m.decoder.filename, "the decoder graph named in genai_config.json")?;
    let (tokenizer_path, tokenizer_config_path, chat_template_path) = text_files(dir)?;

    let graph =
        onnx::parse_model(&read(&onnx_path)?).map_err(|e| ModelError::invalid(&onnx_path, format!("not a readable ONNX model: {e}")))?;
    let data_files = check_external_data(dir, &onnx_path, &graph)?;
    // (A builder export's data sits beside its graph, in the model directory.)

    let names = Names { config: &config_path, onnx: &onnx_path, graph: &graph, decoder: &m.decoder };
    let embedding = match &m.embedding {
        Some(e) => {
            let path = require(dir, &e.filename, "the embedding graph named in genai_config.json")?;
            let output = e.outputs.get("inputs_embeds").map(String::as_str).unwrap_or("inputs_embeds");
            Some(embedding_graph(dir, path, e.inputs.get("input_ids").map(String::as_str), output)?)
        }
        None => None,
    };
    let token_input = if embedding.is_some() { "inputs_embeds" } else { "input_ids" };
    let input_ids = names.graph_input(token_input, true)?.expect("required");
    if embedding.is_none() && graph.input("inputs_embeds").is_some() {
        return Err(ModelError::invalid(
            &onnx_path,
            "the graph takes inputs_embeds, but genai_config.json names no embedding graph (model.embedding with its filename)",
        ));
    }
    let DecoderIo { attention_mask, position_ids_name, position_ids, logits, logits_dtype, logits_width } = decoder_io(&names)?;
    match logits_width {
        Some(v) if v == m.vocab_size => {}
        Some(v) => {
            return Err(ModelError::invalid(
                &onnx_path,
                format!("logits have {v} entries but genai_config.json says vocab_size {}", m.vocab_size),
            ))
        }
        _ => {}
    }

    let layers = (0..m.decoder.num_hidden_layers).map(|i| names.layer(i)).collect::<Result<Vec<_>, _>>()?;
    let fed = [Some(input_ids.as_str()), attention_mask.as_deref(), position_ids_name.as_deref()];
    check_fed(&graph, &onnx_path, &fed, &layers, "is not described by genai_config.json")?;

    let eos_token_ids = match &m.eos_token_id {
        OneOrMany::One(id) => vec![*id],
        OneOrMany::Many(ids) if !ids.is_empty() => ids.clone(),
        OneOrMany::Many(_) => return Err(ModelError::invalid(&config_path, "eos_token_id is an empty list")),
    };
    let s = &config.search;
    let search = SearchDefaults {
        do_sample: s.do_sample,
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        repetition_penalty: s.repetition_penalty,
        max_length: if s.max_length == 0 { m.context_length } else { s.max_length },
    };
    Ok(ModelSpec {
        dir: dir.to_path_buf(),
        model_type: m.model_type.clone(),
        layout: Layout::Genai { split: embedding.is_some() },
        embedding,
        onnx_path,
        data_files,
        inline_weight_bytes: graph.inline_bytes,
        vocab_size: m.vocab_size,
        hidden_size: m.decoder.hidden_size,
        context_length: m.context_length,
        eos_token_ids,
        input_ids,
        attention_mask,
        position_ids_name,
        position_ids,
        logits,
        logits_to_keep: None,
        use_cache_branch: None,
        logits_dtype,
        layers,
        search,
        tokenizer_path,
        tokenizer_config_path,
        chat_template_path,
        ops: op_names(&graph),
        attention_heads: m.decoder.num_attention_heads.unwrap_or(0),
        weights: graph.weight_use(m.vocab_size),
    })
}
