//! The ONNX Runtime backend: one session over the builder's decoder graph, driven through an
//! `IoBinding` so no state is copied between steps.
//!
//! - KV caches live in one buffer per layer with spare capacity, bound as both the `past` input
//!   and the `present` output: GroupQueryAttention then appends the new positions in place
//!   (ONNX Runtime's shared-buffer mode) instead of concatenating the whole cache every step.
//!   When the capacity runs out the buffer doubles (one copy, amortised).
//! - Gated DeltaNet conv/recurrent states are one buffer each, also bound as input and output:
//!   the kernels copy past into present and update present, which in place is a no-op copy
//!   followed by the update (the binding onnxruntime-genai uses on CPU). A step that fails
//!   part-way therefore leaves the state undefined, and the sequence refuses further steps.
//! - Logits are written into a buffer owned by the backend.

use std::path::PathBuf;

use ort::session::{IoBinding, Session};
use ort::value::Tensor;

mod ep_context;
mod fixed;
mod mapped;
mod optimized;
mod placement;
mod probe;
mod session;
mod state;

pub use fixed::{StaticBackend, StaticGraphs, STATIC_JSON};
pub use optimized::OptimizedCache;
pub use placement::{Declined, EpNodes, Placement};
use session::{edited_graph, embedding, load_optimized, plain, Optimized};
use state::{Layout, OrtState};

use super::providers::ProviderRequest;
use super::{runtime, Backend, BackendError, BackendInfo, Logits, LogitsWanted, Sequence, Snapshot};
use crate::files::ModelFiles;
use crate::model::{LayerKind, ModelSpec, PositionIds, StateTensor, StateType};

/// The most tokens one run of the session takes; a longer prompt runs in several. ONNX
/// Runtime's attention keeps `heads × rows × context` scores and the MLP `rows × intermediate`
/// values per pass: a 4032-token prompt in one pass took the 0.8B model to 1.9 GB resident
/// (0.8 GB for a short prompt), in passes of 512 rows to 1.0 GB (the KV cache of 4096 tokens
/// and the activations of one pass), and prefilled faster (168 against 121 tokens/s).
pub(crate) const MAX_PASS_TOKENS: usize = 512;

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
    /// Use ONNX Runtime's CPU memory arena and memory patterns (off: less resident memory, no
    /// measurable speed difference on the models this engine runs).
    pub memory_arena: bool,
    /// Execution providers in priority order (empty: CPU only).
    pub providers: Vec<ProviderRequest>,
    /// Fail instead of falling back when a requested provider is unavailable.
    pub strict_providers: bool,
    /// Write ONNX Runtime's per-operator profile (a Chrome trace, JSON) to files starting with
    /// this path (benchmarks: where a forward pass spends its time).
    pub profile: Option<PathBuf>,
    /// Save the optimized session with its pre-packed weights here and map it on later loads
    /// (CPU provider only; `None`: pack at every load).
    pub optimized: Option<OptimizedCache>,
}

impl Default for OrtOptions {
    fn default() -> Self {
        Self {
            library: None,
            threads: 0,
            spinning: true,
            all_logits: false,
            memory_arena: false,
            providers: Vec::new(),
            strict_providers: false,
            profile: None,
            optimized: None,
        }
    }
}

/// A loaded decoder session.
pub struct OrtBackend {
    session: Session,
    /// The embedding graph's session, where the model has one (its output feeds `input_ids`).
    embedding: Option<Session>,
    /// The runtime's maps of that graph's table, whose rows are let go after each lookup.
    table_pages: mapped::Resident,
    /// Bindings persist between steps; state buffers are rebound only when `bound` changes.
    binding: IoBinding,
    bound: Option<u64>,
    /// Reused `[1, 1, vocab]` logits buffer when the graph returns the last position only.
    logits: Option<Tensor<f32>>,
    spec: ModelSpec,
    layout: Layout,
    info: BackendInfo,
    last_only: bool,
    /// Set while [`probe`](Self::probe) runs (test builds inject no faults into it).
    probing: bool,
}

fn is_kv(spec: &ModelSpec, t: &StateTensor) -> bool {
    spec.layers.iter().any(|l| matches!(l, LayerKind::FullAttention { key, value } if key == t || value == t))
}

fn all_states(spec: &ModelSpec) -> impl Iterator<Item = &StateTensor> {
    spec.layers.iter().flat_map(|l| match l {
        LayerKind::FullAttention { key, value } => [key, value],
        LayerKind::LinearAttention { conv, recurrent } => [conv, recurrent],
    })
}

/// For a Hub layout's variant, which variant to load instead.
fn variant_hint(spec: &ModelSpec) -> String {
    match &spec.layout {
        crate::model::Layout::Hub { variant, .. } => format!(": variant '{variant}' — load model.variant = \"q4\" or \"fp32\""),
        _ => String::new(),
    }
}

/// Whether this run is to fail (test builds only): once for each time the file
/// `QWENEDGE_FAULT_ORT_ERROR_FILE` names appears (it is removed).
#[cfg(feature = "fault-injection")]
fn injected_error() -> bool {
    std::env::var_os("QWENEDGE_FAULT_ORT_ERROR_FILE").is_some_and(|f| std::fs::remove_file(f).is_ok())
}

fn run_err(e: ort::Error) -> BackendError {
    BackendError::Run(e.to_string())
}

impl OrtBackend {
    /// Loads the runtime (once per process) and creates a session for `spec`.
    pub fn load(spec: &ModelSpec, opts: &OrtOptions) -> Result<Self, BackendError> {
        let rt = runtime::load(opts.library.as_deref())?;
        for t in all_states(spec) {
            if t.dtype != StateType::F32 {
                return Err(BackendError::Load {
                    path: spec.onnx_path.clone(),
                    msg: format!(
                        "state '{}' is float16; this build runs float32-state exports (CPU int4/fp32){}",
                        t.input,
                        variant_hint(spec)
                    ),
                });
            }
        }
        if spec.logits_dtype != StateType::F32 {
            return Err(BackendError::Load { path: spec.onnx_path.clone(), msg: "float16 logits are not supported".into() });
        }
        let (graph, last_only) = edited_graph(spec, opts.all_logits)?;
        let cache = opts.optimized.as_ref().filter(|_| opts.profile.is_none() && opts.providers.iter().all(|p| p.name == "cpu"));
        let Some(cache) = cache else {
            return Self::from_session(rt, spec, opts, plain(rt, spec, opts, graph.as_deref())?, last_only);
        };
        let edits = if last_only { "last-position logits" } else { "all logits" };
        let identity = optimized::identity(&rt.version, &rt.path, &ModelFiles::read(&spec.dir).identity(), edits);
        for use_saved in [true, false] {
            match load_optimized(rt, spec, opts, graph.as_deref(), cache, &identity, use_saved)? {
                Optimized::Plain(created) => return Self::from_session(rt, spec, opts, created, last_only),
                Optimized::Saving { packed, tmp, entry } => {
                    let packed = Self::from_session(rt, spec, opts, packed, last_only)?;
                    return Self::finish_saving(rt, spec, opts, graph.as_deref(), last_only, (cache, &identity), packed, (tmp, entry));
                }
                Optimized::Mapped { created, probe, entry } => {
                    let mut backend = Self::from_session(rt, spec, opts, created, last_only)?;
                    match backend.probe() {
                        Ok(got) if probe::hash_logits(&got) == probe => return Ok(backend),
                        outcome => {
                            let why =
                                outcome.err().map_or("its logits differ from those recorded when it was saved".into(), |e| e.to_string());
                            tracing::warn!(entry = %entry.display(), reason = %why, "saved optimized model is damaged; building it again");
                            drop(backend);
                            let _ = std::fs::remove_dir_all(&entry);
                        }
                    }
                }
            }
        }
        Self::from_session(rt, spec, opts, plain(rt, spec, opts, graph.as_deref())?, last_only)
    }

    /// Builds the backend around a created session.
    fn from_session(
        rt: &runtime::Runtime,
        spec: &ModelSpec,
        opts: &OrtOptions,
        (session, reports, primary, weights): session::Created,
        last_only: bool,
    ) -> Result<Self, BackendError> {
        for r in &reports {
            match &r.reason {
                Some(why) => tracing::warn!(provider = %r.name, reason = %why, "execution provider skipped"),
                None => tracing::info!(provider = %r.name, device = r.device.as_deref().unwrap_or("-"), "execution provider active"),
            }
        }
        let placement = placement::read(&session, &reports);
        if let Some(p) = &placement {
            tracing::info!(placement = %p.summary(), "nodes per execution provider");
            for d in p.providers.iter().flat_map(|e| e.declined.iter().map(move |d| (&e.ep, d))) {
                tracing::info!(provider = %d.0, op_type = %d.1.op_type, nodes = d.1.nodes, reason = %d.1.reason, "nodes left to the CPU");
            }
        }
        let load_err = |e: ort::Error| BackendError::Load { path: spec.onnx_path.clone(), msg: e.to_string() };
        let info = BackendInfo {
            name: "onnxruntime",
            version: rt.version.clone(),
            library: Some(rt.path.display().to_string()),
            execution_provider: primary,
            providers: reports,
            threads: opts.threads,
            chosen: String::new(),
            placement,
            prefill_placement: None,
        };
        for data in &weights {
            mapped::advise_random_access(data);
        }
        let binding = session.create_binding().map_err(load_err)?;
        let layout = Layout::of(spec, spec.context_length);
        let logits =
            if last_only { Some(Tensor::<f32>::new(&layout.allocator, [1usize, 1, spec.vocab_size]).map_err(load_err)?) } else { None };
        let embedding = embedding(rt, spec, opts)?;
        let table_pages = mapped::Resident::of(spec.embedding.iter().flat_map(|e| e.data_files.iter().map(|(f, _)| f.as_path())));
        Ok(Self {
            session,
            embedding,
            table_pages,
            binding,
            bound: None,
            logits,
            spec: spec.clone(),
            layout,
            info,
            last_only,
            probing: false,
        })
    }

    /// Runs the session on the bound inputs and outputs. Test builds can make ONNX Runtime
    /// fail the run (its terminate flag, set before the run) to check what an error in the
    /// middle of a generation does.
    fn run_bound(&mut self) -> Result<(), ort::Error> {
        #[cfg(feature = "fault-injection")]
        if !self.probing && injected_error() {
            let options = ort::session::RunOptions::new()?;
            options.terminate()?;
            return self.session.run_binding_with_options(&self.binding, &options).map(drop);
        }
        self.session.run_binding(&self.binding).map(drop)
    }

    /// Binds the state buffers (and the reused logits buffer) of `state`, unless they are
    /// bound already.
    fn bind_state(&mut self, state: &mut OrtState) -> Result<(), BackendError> {
        if self.bound == Some(state.id) {
            return Ok(());
        }
        self.bound = None;
        let b = &mut self.binding;
        b.clear();
        let layout = &self.layout;
        for (t, buf) in layout.kv.iter().zip(state.kv.iter_mut()).chain(layout.linear.iter().zip(state.linear.iter_mut())) {
            b.bind_input(&t.input, &*buf).map_err(run_err)?;
            b.bind_output(&t.output, &mut *buf).map_err(run_err)?;
        }
        if let Some(logits) = self.logits.as_mut() {
            b.bind_output(&self.spec.logits, logits).map_err(run_err)?;
        }
        self.bound = Some(state.id);
        Ok(())
    }

    /// Binds the per-step inputs: token ids, attention mask, positions.
    fn bind_step(&mut self, past: usize, tokens: &[u32]) -> Result<(), BackendError> {
        let n = tokens.len();
        let total = past + n;
        let b = &mut self.binding;
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let ids = Tensor::from_array(([1, n], ids)).map_err(run_err)?;
        match (&mut self.embedding, &self.spec.embedding) {
            (Some(session), Some(e)) => {
                let mut out = session.run(ort::inputs![e.input.as_str() => ids]).map_err(run_err)?;
                let embeds = out
                    .remove(e.output.as_str())
                    .ok_or_else(|| BackendError::Run(format!("the embedding graph gave no '{}'", e.output)))?;
                b.bind_input(&self.spec.input_ids, &embeds).map_err(run_err)?;
                self.table_pages.release();
            }
            _ => b.bind_input(&self.spec.input_ids, &ids).map_err(run_err)?,
        }
        if let Some(name) = &self.spec.attention_mask {
            b.bind_input(name, &Tensor::from_array(([1, total], vec![1i64; total])).map_err(run_err)?).map_err(run_err)?;
        }
        if let Some(name) = &self.spec.logits_to_keep {
            let keep = Tensor::from_array(([0usize; 0], vec![i64::from(self.last_only)])).map_err(run_err)?;
            b.bind_input(name, &keep).map_err(run_err)?;
        }
        if let Some(name) = &self.spec.use_cache_branch {
            b.bind_input(name, &Tensor::from_array(([1usize], vec![past > 0])).map_err(run_err)?).map_err(run_err)?;
        }
        if let Some(name) = &self.spec.position_ids_name {
            let positions: Vec<i64> = (past as i64..total as i64).collect();
            let value = match self.spec.position_ids {
                PositionIds::Sections(rows) => Tensor::from_array(([rows, 1, n], positions.repeat(rows))),
                _ => Tensor::from_array(([1, n], positions)),
            };
            b.bind_input(name, &value.map_err(run_err)?).map_err(run_err)?;
        }
        Ok(())
    }
}

impl Backend for OrtBackend {
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn new_sequence(&self) -> Result<Sequence, BackendError> {
        self.layout.new_sequence()
    }

    fn forward(&mut self, seq: &mut Sequence, tokens: &[u32], want: LogitsWanted, out: &mut Logits) -> Result<(), BackendError> {
        if tokens.is_empty() {
            return Err(BackendError::Limit("no tokens to process".into()));
        }
        if want == LogitsWanted::Last && tokens.len() > MAX_PASS_TOKENS {
            if seq.len + tokens.len() > self.spec.context_length {
                return Err(BackendError::Limit(format!(
                    "{} tokens exceed the model's context length of {}",
                    seq.len + tokens.len(),
                    self.spec.context_length
                )));
            }
            return tokens.chunks(MAX_PASS_TOKENS).try_for_each(|chunk| self.forward(seq, chunk, want, out));
        }
        let (past, n) = (seq.len, tokens.len());
        if past + n > self.spec.context_length {
            return Err(BackendError::Limit(format!(
                "{} tokens exceed the model's context length of {}",
                past + n,
                self.spec.context_length
            )));
        }
        if want == LogitsWanted::All && self.last_only && n > 1 {
            return Err(BackendError::Run("this session computes last-position logits only (load with all_logits)".into()));
        }
        let mut state_box = std::mem::replace(&mut seq.state, Box::new(()));
        let result = (|| -> Result<(), BackendError> {
            let state = state_box.downcast_mut::<OrtState>().ok_or(BackendError::ForeignState)?;
            state.usable()?;
            self.layout.reserve(state, past, past + n)?;
            self.bind_state(state)?;
            self.bind_step(past, tokens)?;
            let mut all_rows = None;
            if !self.last_only {
                let mut t = Tensor::<f32>::new(&self.layout.allocator, [1usize, n, self.spec.vocab_size]).map_err(run_err)?;
                self.binding.bind_output(&self.spec.logits, &mut t).map_err(run_err)?;
                all_rows = Some(t);
            }
            let ran = self.run_bound().map_err(run_err);
            let logits = all_rows.as_ref().or(self.logits.as_ref()).expect("a logits buffer is bound");
            let data = logits.extract_tensor().1;
            let rows = data.len() / self.spec.vocab_size;
            let keep = if want == LogitsWanted::Last { 1 } else { rows };
            out.rows = keep;
            out.vocab = self.spec.vocab_size;
            out.data.clear();
            out.data.extend_from_slice(&data[(rows - keep) * self.spec.vocab_size..]);
            state.broken = ran.is_err();
            ran
        })();
        seq.state = state_box;
        result?;
        seq.len += n;
        Ok(())
    }

    fn fork(&self, seq: &Sequence) -> Result<Sequence, BackendError> {
        self.layout.fork(seq)
    }

    fn snapshot(&self, seq: &Sequence) -> Result<Snapshot, BackendError> {
        self.layout.snapshot(seq)
    }

    fn restore(&self, snap: &Snapshot, room: usize) -> Result<Sequence, BackendError> {
        self.layout.restore(snap, room)
    }

    fn snapshot_parts(&self, snap: &Snapshot, each: &mut dyn FnMut(&[f32])) -> Result<(), BackendError> {
        self.layout.parts(snap, each)
    }

    fn snapshot_from_parts(&self, len: usize, parts: Vec<Vec<f32>>) -> Result<Snapshot, BackendError> {
        self.layout.snapshot_of_parts(len, parts)
    }
}
