//! The pure-Rust backend: the same decoder graph run by tract (with a split layout's embedding
//! graph before it), for devices where no ONNX Runtime library can be loaded.
//!
//! The graph is loaded once with symbolic sequence (`S`) and past (`P`) lengths, so one
//! optimized plan serves prefill, decode and chunked steps after a restored prefix. The
//! com.microsoft ops tract does not run are registered from [`ops`]. Per-sequence state is the
//! graph's own tensors: KV caches `[1, heads, len, head_dim]` that each step replaces with the
//! `present` outputs, and the fixed-size Gated DeltaNet conv/recurrent tensors.

mod embedding;
pub mod ops;

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::{Backend, BackendError, BackendInfo, Logits, LogitsWanted, Sequence, Snapshot};
use crate::model::{LayerKind, ModelSpec, PositionIds, StateTensor, StateType};
use crate::onnx::edit;

/// The most tokens one run of the plan takes when only the last logits are wanted (a longer
/// prompt runs in several): 256 tokens of the 0.8B model's activations are tens of MiB, a
/// 2048-token step would hold over a GiB.
const STEP_TOKENS: usize = 256;

/// The tract release this backend is built against.
pub(crate) const TRACT_VERSION: &str = "tract-onnx 0.23";

/// How to build the plan.
#[derive(Debug, Clone, Default)]
pub struct TractOptions {
    /// Keep logits for every position (parity checks); otherwise the graph is rewritten to
    /// compute only the last position's logits.
    pub all_logits: bool,
    /// Threads for the 4-bit matrix products (0: one per core, as `model.threads`).
    pub threads: usize,
}

/// What each graph input is fed with, in the plan's input order.
#[derive(Debug, Clone, Copy)]
enum Feed {
    Ids,
    Mask,
    Positions,
    /// `use_cache_branch`: whether there is a past.
    CacheBranch,
    /// Index into the state list.
    State(usize),
}

/// A loaded decoder plan.
pub struct TractBackend {
    plan: Arc<TypedRunnableModel>,
    feeds: Vec<Feed>,
    /// Output slot of the logits and of each state's `present` tensor.
    logits_slot: usize,
    state_slots: Vec<usize>,
    states: Vec<StateTensor>,
    kv: Vec<bool>,
    spec: ModelSpec,
    last_only: bool,
    threads: usize,
    /// The embedding graph of a split layout, run before each step.
    embedding: Option<embedding::TractEmbedding>,
}

/// One sequence's state tensors, in the backend's state order; `None` while a step runs.
struct TractState {
    tensors: Vec<Option<Tensor>>,
    broken: bool,
}

fn load_err(path: &Path, e: impl std::fmt::Display) -> BackendError {
    BackendError::Load { path: path.to_path_buf(), msg: e.to_string() }
}

fn run_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Run(format!("{e:#}"))
}

fn all_states(spec: &ModelSpec) -> Vec<(StateTensor, bool)> {
    spec.layers
        .iter()
        .flat_map(|l| match l {
            LayerKind::FullAttention { key, value } => [(key.clone(), true), (value.clone(), true)],
            LayerKind::LinearAttention { conv, recurrent } => [(conv.clone(), false), (recurrent.clone(), false)],
        })
        .collect()
}

/// An empty state tensor: KV with no positions, linear state zero-filled.
fn empty_state(t: &StateTensor, kv: bool) -> Result<Tensor, BackendError> {
    let shape: Vec<usize> = std::iter::once(1).chain(t.shape.iter().enumerate().map(|(i, &d)| if kv && i == 1 { 0 } else { d })).collect();
    Tensor::zero::<f32>(&shape).map_err(run_err)
}

/// Replaces the graph input `name` (`num_logits_to_keep`) by the constant 1.
fn keep_last_logits(model: &mut InferenceModel, name: &str) -> TractResult<()> {
    let inputs = model.input_outlets()?.to_vec();
    let Some(&input) = inputs.iter().find(|o| model.node(o.node).name == name) else { return Ok(()) };
    let one = model.add_const(format!("{name}.one"), tensor0(1i64))?;
    for inlet in model.outlet_successors(input).to_vec() {
        model.add_edge(one, inlet)?;
    }
    model.set_input_outlets(&inputs.into_iter().filter(|o| *o != input).collect::<Vec<_>>())
}

/// The graph at `path` with its lookups edited to read the stored rows of mapped tables, a row
/// at a time (the decoder's and the embedding graph's alike).
fn read_graph(path: &Path) -> Result<Vec<u8>, BackendError> {
    let mut bytes = std::fs::read(path).map_err(|e| load_err(path, e))?;
    if let Some(b) = edit::lookup_reads_stored_rows(&bytes).map_err(|e| load_err(path, e))? {
        bytes = b;
    }
    if let Some(b) = edit::lookups_read_mapped_tables(&bytes).map_err(|e| load_err(path, e))? {
        bytes = b;
    }
    Ok(bytes)
}

/// Parses `bytes`, the graph at `path` (its external data beside it), with this backend's ops
/// registered; the bytes are let go before the graph is built from them.
fn parse_graph(path: &Path, bytes: Vec<u8>) -> Result<InferenceModel, BackendError> {
    // The builder's value_info entries are hints that do not always agree with the
    // graph (a `[1]` constant declared as a scalar); shapes come from inference instead.
    let mut onnx = tract_onnx::onnx().with_ignore_value_info(true);
    ops::register(&mut onnx);
    let proto = onnx.proto_model_for_read(&mut bytes.as_slice()).map_err(|e| load_err(path, e))?;
    drop(bytes);
    let dir = path.parent().and_then(Path::to_str);
    Ok(onnx.parse(&proto, dir).map_err(|e| load_err(path, format!("{e:#}")))?.model)
}

impl TractBackend {
    /// Parses, types and optimizes the decoder graph of `spec`.
    pub fn load(spec: &ModelSpec, opts: &TractOptions) -> Result<Self, BackendError> {
        let path = &spec.onnx_path;
        let states = all_states(spec);
        if states.iter().any(|(t, _)| t.dtype != StateType::F32) || spec.logits_dtype != StateType::F32 {
            return Err(load_err(path, "float16 state or logits are not supported by the tract backend (use a CPU int4/fp32 export)"));
        }
        let embedding = spec.embedding.as_ref().map(embedding::TractEmbedding::load).transpose()?;
        let bytes = read_graph(path)?;
        let edited =
            if opts.all_logits { None } else { edit::last_position_logits(&bytes, &spec.logits).map_err(|e| load_err(path, e))? };
        let last_only = edited.is_some();
        let mut model = parse_graph(path, edited.unwrap_or(bytes))?;

        // `num_logits_to_keep` becomes the constant 1 (only the last position's logits are ever
        // read): tract 0.23 runs its slice with a constant start, not a dynamic one.
        if let Some(name) = &spec.logits_to_keep {
            keep_last_logits(&mut model, name).map_err(|e| load_err(path, format!("{e:#}")))?;
        }
        let (s, p) = (model.symbols.sym("S").to_dim(), model.symbols.sym("P").to_dim());
        let mut feeds = Vec::new();
        for (ix, outlet) in model.input_outlets().map_err(|e| load_err(path, e))?.to_vec().into_iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            let (feed, fact) = if name == spec.input_ids && embedding.is_some() {
                (Feed::Ids, f32::fact([1.to_dim(), s.clone(), spec.hidden_size.to_dim()]))
            } else if name == spec.input_ids {
                (Feed::Ids, i64::fact([1.to_dim(), s.clone()]))
            } else if Some(&name) == spec.attention_mask.as_ref() {
                (Feed::Mask, i64::fact([1.to_dim(), p.clone() + s.clone()]))
            } else if Some(&name) == spec.position_ids_name.as_ref() {
                let fact = match spec.position_ids {
                    PositionIds::Sections(rows) => i64::fact([rows.to_dim(), 1.to_dim(), s.clone()]),
                    _ => i64::fact([1.to_dim(), s.clone()]),
                };
                (Feed::Positions, fact)
            } else if Some(&name) == spec.use_cache_branch.as_ref() {
                (Feed::CacheBranch, bool::fact([1]))
            } else if let Some(i) = states.iter().position(|(t, _)| t.input == name) {
                let (t, kv) = &states[i];
                let dims: TVec<TDim> = std::iter::once(1.to_dim())
                    .chain(t.shape.iter().enumerate().map(|(j, &d)| if *kv && j == 1 { p.clone() } else { d.to_dim() }))
                    .collect();
                (Feed::State(i), f32::fact(dims))
            } else {
                return Err(load_err(path, format!("graph input '{name}' is not one the engine feeds")));
            };
            model.set_input_fact(ix, fact.into()).map_err(|e| load_err(path, e))?;
            feeds.push(feed);
        }
        let mut typed = model.into_optimized().map_err(|e| load_err(path, format!("{e:#}")))?;
        let threads = if opts.threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { opts.threads };
        let workers = ops::Workers::new(threads).map_err(|e| load_err(path, format!("cannot start {threads} threads: {e}")))?;
        for node in &mut typed.nodes {
            if let Some(op) = node.op_as_mut::<ops::MatMulNBits>() {
                op.workers = Some(workers.clone());
            } else if let Some(op) = node.op_as_mut::<ops::LinearAttention>() {
                op.workers = Some(workers.clone());
            } else if let Some(op) = node.op_as_mut::<ops::GroupQueryAttention>() {
                op.workers = Some(workers.clone());
            }
        }
        let label = |slot: usize| -> Result<String, BackendError> {
            let outlet = typed.output_outlets().map_err(|e| load_err(path, e))?[slot];
            Ok(typed.outlet_label(outlet).map(str::to_string).unwrap_or_else(|| typed.node(outlet.node).name.clone()))
        };
        let outputs = (0..typed.output_outlets().map_err(|e| load_err(path, e))?.len()).map(label).collect::<Result<Vec<_>, _>>()?;
        let slot_of = |name: &str| {
            outputs.iter().position(|o| o == name).ok_or_else(|| load_err(path, format!("the optimized graph has no output '{name}'")))
        };
        let logits_slot = slot_of(&spec.logits)?;
        let state_slots = states.iter().map(|(t, _)| slot_of(&t.output)).collect::<Result<Vec<_>, _>>()?;
        let plan = typed.into_runnable().map_err(|e| load_err(path, format!("{e:#}")))?;
        Ok(Self {
            plan,
            feeds,
            logits_slot,
            state_slots,
            kv: states.iter().map(|(_, kv)| *kv).collect(),
            states: states.into_iter().map(|(t, _)| t).collect(),
            spec: spec.clone(),
            last_only,
            threads,
            embedding,
        })
    }

    fn check_len(&self, seq: &Sequence, n: usize) -> Result<(), BackendError> {
        if n == 0 {
            return Err(BackendError::Limit("no tokens to process".into()));
        }
        if seq.len + n > self.spec.context_length {
            return Err(BackendError::Limit(format!(
                "{} tokens exceed the model's context length of {}",
                seq.len + n,
                self.spec.context_length
            )));
        }
        Ok(())
    }

    /// The step's inputs, taking the state tensors out of `state`.
    fn inputs(&self, state: &mut TractState, past: usize, tokens: &[u32]) -> Result<TVec<TValue>, BackendError> {
        let n = tokens.len();
        let positions: Vec<i64> = (past as i64..(past + n) as i64).collect();
        let mut inputs = TVec::new();
        for feed in &self.feeds {
            let t = match *feed {
                Feed::Ids => match &self.embedding {
                    Some(e) => Ok(e.run(tokens)?),
                    None => Tensor::from_shape(&[1, n], &tokens.iter().map(|&t| i64::from(t)).collect::<Vec<_>>()),
                },
                Feed::Mask => Tensor::from_shape(&[1, past + n], &vec![1i64; past + n]),
                Feed::CacheBranch => Tensor::from_shape(&[1], &[past > 0]),
                Feed::Positions => match self.spec.position_ids {
                    PositionIds::Sections(rows) => Tensor::from_shape(&[rows, 1, n], &positions.repeat(rows)),
                    _ => Tensor::from_shape(&[1, n], &positions),
                },
                Feed::State(i) => state.tensors[i].take().ok_or_else(|| anyhow::anyhow!("state '{}' is missing", self.states[i].input)),
            }
            .map_err(run_err)?;
            inputs.push(t.into_tvalue());
        }
        Ok(inputs)
    }
}

impl Backend for TractBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "tract",
            version: TRACT_VERSION.into(),
            library: None,
            execution_provider: "cpu".into(),
            providers: Vec::new(),
            threads: self.threads,
            chosen: String::new(),
            placement: None,
            prefill_placement: None,
        }
    }

    fn new_sequence(&self) -> Result<Sequence, BackendError> {
        let tensors = self.states.iter().zip(&self.kv).map(|(t, &kv)| empty_state(t, kv).map(Some)).collect::<Result<Vec<_>, _>>()?;
        Ok(Sequence { len: 0, state: Box::new(TractState { tensors, broken: false }) })
    }

    fn forward(&mut self, seq: &mut Sequence, tokens: &[u32], want: LogitsWanted, out: &mut Logits) -> Result<(), BackendError> {
        self.check_len(seq, tokens.len())?;
        if want == LogitsWanted::All && self.last_only && tokens.len() > 1 {
            return Err(BackendError::Run("this plan computes last-position logits only (load with all_logits)".into()));
        }
        let state = seq.state.downcast_mut::<TractState>().ok_or(BackendError::ForeignState)?;
        if state.broken {
            return Err(BackendError::Run("this sequence's state was lost in an earlier failed step".into()));
        }
        state.broken = true;
        // A long prompt runs in steps of at most STEP_TOKENS, which bounds the activations that
        // tract holds at once; every op treats positions independently or in order, so steps
        // change nothing but the peak memory (and make prefill faster: the activations of a
        // step stay in cache).
        let step = if want == LogitsWanted::Last { STEP_TOKENS } else { tokens.len() };
        let mut past = seq.len;
        let mut logits = None;
        for chunk in tokens.chunks(step) {
            let inputs = self.inputs(state, past, chunk)?;
            let mut outputs = self.plan.run(inputs).map_err(run_err)?;
            for (i, &slot) in self.state_slots.iter().enumerate() {
                let t = std::mem::replace(&mut outputs[slot], Tensor::default().into_tvalue());
                state.tensors[i] = Some(t.into_tensor());
            }
            past += chunk.len();
            logits = Some(std::mem::replace(&mut outputs[self.logits_slot], Tensor::default().into_tvalue()));
        }
        let logits = logits.expect("at least one token (checked)");
        let logits = logits.try_as_plain_ram().map_err(run_err)?;
        let data = logits.as_slice::<f32>().map_err(run_err)?;
        let vocab = self.spec.vocab_size;
        let rows = data.len() / vocab;
        if rows == 0 || rows * vocab != data.len() {
            return Err(BackendError::Run(format!("logits have {} values, not a multiple of the vocabulary {vocab}", data.len())));
        }
        let keep = if want == LogitsWanted::Last { 1 } else { rows };
        out.rows = keep;
        out.vocab = vocab;
        out.data.clear();
        out.data.extend_from_slice(&data[(rows - keep) * vocab..]);
        state.broken = false;
        seq.len = past;
        Ok(())
    }

    fn fork(&self, seq: &Sequence) -> Result<Sequence, BackendError> {
        let state = seq.state.downcast_ref::<TractState>().ok_or(BackendError::ForeignState)?;
        let copy = TractState { tensors: state.tensors.clone(), broken: state.broken };
        Ok(Sequence { len: seq.len, state: Box::new(copy) })
    }

    fn snapshot(&self, seq: &Sequence) -> Result<Snapshot, BackendError> {
        let state = seq.state.downcast_ref::<TractState>().ok_or(BackendError::ForeignState)?;
        if state.broken {
            return Err(BackendError::Run("this sequence's state was lost in an earlier failed step".into()));
        }
        let tensors: Vec<Tensor> = state.tensors.iter().flatten().cloned().collect();
        let bytes = tensors.iter().map(|t| t.len() * std::mem::size_of::<f32>()).sum();
        Ok(Snapshot { len: seq.len, bytes, state: Box::new(tensors) })
    }

    fn restore(&self, snap: &Snapshot, _room: usize) -> Result<Sequence, BackendError> {
        let saved = snap.state.downcast_ref::<Vec<Tensor>>().ok_or(BackendError::ForeignState)?;
        let shapes = self.state_shapes(snap.len);
        if saved.len() != shapes.len() || saved.iter().zip(&shapes).any(|(t, want)| t.shape() != want.as_slice()) {
            return Err(BackendError::ForeignState);
        }
        let tensors = saved.iter().cloned().map(Some).collect();
        Ok(Sequence { len: snap.len, state: Box::new(TractState { tensors, broken: false }) })
    }

    fn snapshot_parts(&self, snap: &Snapshot, each: &mut dyn FnMut(&[f32])) -> Result<(), BackendError> {
        let saved = snap.state.downcast_ref::<Vec<Tensor>>().ok_or(BackendError::ForeignState)?;
        for t in saved {
            each(t.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).map_err(run_err)?);
        }
        Ok(())
    }

    fn snapshot_from_parts(&self, len: usize, parts: Vec<Vec<f32>>) -> Result<Snapshot, BackendError> {
        let shapes = self.state_shapes(len);
        if parts.len() != shapes.len() || parts.iter().zip(&shapes).any(|(p, s)| p.len() != s.iter().product::<usize>()) {
            return Err(BackendError::ForeignState);
        }
        let bytes = parts.iter().map(|p| p.len() * std::mem::size_of::<f32>()).sum();
        let tensors = parts.iter().zip(&shapes).map(|(p, s)| Tensor::from_shape(s, p).map_err(run_err)).collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot { len, bytes, state: Box::new(tensors) })
    }
}

impl TractBackend {
    /// The shape of each state tensor after `len` tokens (the KV tensors grow with it).
    fn state_shapes(&self, len: usize) -> Vec<Vec<usize>> {
        self.states
            .iter()
            .zip(&self.kv)
            .map(|(s, &kv)| {
                std::iter::once(1).chain(s.shape.iter().enumerate().map(|(i, &d)| if kv && i == 1 { len } else { d })).collect()
            })
            .collect()
    }
}
