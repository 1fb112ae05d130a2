//! The ONNX Runtime backend: one session over the builder's decoder graph, state carried as
//! runtime-owned tensors that move from one step's outputs to the next step's inputs (no copy).

use std::borrow::Cow;
use std::path::PathBuf;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use super::{graph_edit, runtime, Backend, BackendError, BackendInfo, Logits, LogitsWanted, Sequence};
use crate::engine::model::{LayerKind, ModelSpec, PositionIds, StateTensor, StateType};

/// How to build the session.
#[derive(Debug, Clone)]
pub struct OrtOptions {
    /// Explicit library path (else the documented search order).
    pub library: Option<PathBuf>,
    /// Intra-op threads (0 = the runtime's default: one per core).
    pub threads: usize,
    /// Let idle worker threads spin between steps (faster, burns CPU while idle).
    pub spinning: bool,
    /// Keep logits for every position (parity checks); otherwise the graph is rewritten to
    /// compute only the last position's logits.
    pub all_logits: bool,
}

impl Default for OrtOptions {
    fn default() -> Self {
        Self { library: None, threads: 0, spinning: true, all_logits: false }
    }
}

/// A loaded decoder session.
pub struct OrtBackend {
    session: Session,
    spec: ModelSpec,
    states: Vec<StateTensor>,
    info: BackendInfo,
    last_only: bool,
}

struct OrtState {
    values: Vec<DynValue>,
}

impl OrtBackend {
    /// Loads the runtime (once per process) and creates a session for `spec`.
    pub fn load(spec: &ModelSpec, opts: &OrtOptions) -> Result<Self, BackendError> {
        let rt = runtime::load(opts.library.as_deref())?;
        for t in all_states(spec) {
            if t.dtype != StateType::F32 {
                return Err(BackendError::Load {
                    path: spec.onnx_path.clone(),
                    msg: format!("state '{}' is float16; this build runs float32-state exports (CPU int4/fp32)", t.input),
                });
            }
        }
        if spec.logits_dtype != StateType::F32 {
            return Err(BackendError::Load { path: spec.onnx_path.clone(), msg: "float16 logits are not supported".into() });
        }
        let load_err = |e: ort::Error| BackendError::Load { path: spec.onnx_path.clone(), msg: e.to_string() };
        let mut builder = Session::builder(&rt.env)
            .map_err(load_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load_err(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| load_err(e.into()))?
            .with_intra_op_spinning(opts.spinning)
            .map_err(|e| load_err(e.into()))?;
        if opts.threads > 0 {
            builder = builder.with_intra_threads(opts.threads).map_err(|e| load_err(e.into()))?;
        }
        let graph = std::fs::read(&spec.onnx_path)
            .map_err(|e| BackendError::Load { path: spec.onnx_path.clone(), msg: e.to_string() })?;
        let edited = if opts.all_logits {
            None
        } else {
            graph_edit::last_position_logits(&graph, &spec.logits)
                .map_err(|e| BackendError::Load { path: spec.onnx_path.clone(), msg: e.to_string() })?
        };
        let last_only = edited.is_some();
        let session = match edited {
            Some(bytes) => {
                drop(graph);
                let dir = spec.onnx_path.parent().unwrap_or(&spec.dir).to_string_lossy().into_owned();
                builder
                    .with_config_entry("session.model_external_initializers_file_folder_path", dir)
                    .map_err(|e| load_err(e.into()))?
                    .commit_from_memory(&bytes)
                    .map_err(load_err)?
            }
            None => builder.commit_from_file(&spec.onnx_path).map_err(load_err)?,
        };
        let info = BackendInfo {
            name: "onnxruntime",
            version: rt.version.clone(),
            library: Some(rt.path.display().to_string()),
            execution_provider: "cpu".into(),
            threads: opts.threads,
        };
        Ok(Self { session, spec: spec.clone(), states: all_states(spec).cloned().collect(), info, last_only })
    }

    fn state<'s>(&self, seq: &'s Sequence) -> Result<&'s OrtState, BackendError> {
        seq.state.downcast_ref::<OrtState>().ok_or(BackendError::ForeignState)
    }

    fn inputs<'v>(&self, seq: &'v Sequence, tokens: &[u32]) -> Result<Vec<(Cow<'v, str>, SessionInputValue<'v>)>, BackendError> {
        let state = self.state(seq)?;
        let (past, n) = (seq.len, tokens.len());
        let total = past + n;
        let run = |e: ort::Error| BackendError::Run(e.to_string());
        let mut inputs: Vec<(Cow<'v, str>, SessionInputValue<'v>)> = Vec::with_capacity(3 + state.values.len());
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        inputs.push((self.spec.input_ids.clone().into(), Tensor::from_array(([1, n], ids)).map_err(run)?.into()));
        if let Some(name) = &self.spec.attention_mask {
            inputs.push((name.clone().into(), Tensor::from_array(([1, total], vec![1i64; total])).map_err(run)?.into()));
        }
        if let Some(name) = &self.spec.position_ids_name {
            let positions: Vec<i64> = (past as i64..total as i64).collect();
            let value = match self.spec.position_ids {
                PositionIds::Sections(rows) => {
                    Tensor::from_array(([rows, 1, n], positions.repeat(rows))).map_err(run)?
                }
                _ => Tensor::from_array(([1, n], positions)).map_err(run)?,
            };
            inputs.push((name.clone().into(), value.into()));
        }
        for (t, v) in self.states.iter().zip(&state.values) {
            inputs.push((t.input.clone().into(), v.into()));
        }
        Ok(inputs)
    }
}

fn all_states(spec: &ModelSpec) -> impl Iterator<Item = &StateTensor> {
    spec.layers.iter().flat_map(|l| match l {
        LayerKind::FullAttention { key, value } => [key, value],
        LayerKind::LinearAttention { conv, recurrent } => [conv, recurrent],
    })
}

fn zeros(t: &StateTensor) -> Result<DynValue, ort::Error> {
    let shape: Vec<usize> = std::iter::once(1).chain(t.shape.iter().copied()).collect();
    let n = shape.iter().product();
    Ok(Tensor::from_array((shape, vec![0f32; n]))?.into_dyn())
}

impl Backend for OrtBackend {
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn new_sequence(&self) -> Result<Sequence, BackendError> {
        let values = self.states.iter().map(zeros).collect::<Result<Vec<_>, _>>().map_err(|e| BackendError::Run(e.to_string()))?;
        Ok(Sequence { len: 0, state: Box::new(OrtState { values }) })
    }

    fn forward(&mut self, seq: &mut Sequence, tokens: &[u32], want: LogitsWanted, out: &mut Logits) -> Result<(), BackendError> {
        if tokens.is_empty() {
            return Err(BackendError::Limit("no tokens to process".into()));
        }
        if seq.len + tokens.len() > self.spec.context_length {
            return Err(BackendError::Limit(format!(
                "{} tokens exceed the model's context length of {}",
                seq.len + tokens.len(),
                self.spec.context_length
            )));
        }
        if want == LogitsWanted::All && self.last_only && tokens.len() > 1 {
            return Err(BackendError::Run("this session computes last-position logits only (load with all_logits)".into()));
        }
        let run = |e: ort::Error| BackendError::Run(e.to_string());
        let inputs = self.inputs(seq, tokens)?;
        let mut outputs = self.session.run(inputs).map_err(run)?;
        let logits = outputs.get(&self.spec.logits).ok_or_else(|| BackendError::Run("no logits output".into()))?;
        let (shape, data) = logits.try_extract_tensor::<f32>().map_err(run)?;
        let vocab = *shape.last().unwrap_or(&0) as usize;
        let rows = if vocab == 0 { 0 } else { data.len() / vocab };
        let expected = if self.last_only { 1 } else { tokens.len() };
        if rows != expected {
            return Err(BackendError::Run(format!("logits have {rows} rows for {} tokens", tokens.len())));
        }
        let keep = if want == LogitsWanted::Last { 1 } else { rows };
        out.rows = keep;
        out.vocab = vocab;
        out.data.clear();
        out.data.extend_from_slice(&data[(rows - keep) * vocab..]);
        let mut values = Vec::with_capacity(self.states.len());
        for t in &self.states {
            values.push(outputs.remove(&t.output).ok_or_else(|| BackendError::Run(format!("no output '{}'", t.output)))?);
        }
        seq.state = Box::new(OrtState { values });
        seq.len += tokens.len();
        Ok(())
    }

    fn fork(&self, seq: &Sequence) -> Result<Sequence, BackendError> {
        let state = self.state(seq)?;
        let run = |e: ort::Error| BackendError::Run(e.to_string());
        let mut values = Vec::with_capacity(state.values.len());
        for v in &state.values {
            let (shape, data) = v.try_extract_tensor::<f32>().map_err(run)?;
            let dims: Vec<i64> = shape.iter().copied().collect();
            values.push(Tensor::from_array((dims, data.to_vec())).map_err(run)?.into_dyn());
        }
        Ok(Sequence { len: seq.len, state: Box::new(OrtState { values }) })
    }
}
