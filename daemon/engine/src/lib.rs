//! Everything that touches a model: files → spec, tokenizer and chat template, the runtime
//! backend, sampling and the generation loop. It knows no request, transport or setting type of
//! the daemon: it depends on no other member of the workspace, and only the scheduler (which
//! runs it), the configuration (which names its options) and the intent catalog (which renders
//! through its chat types) use it.
//!
//! The API: [`Engine::load`] a model directory with [`EngineOptions`] (which backend —
//! [`backend::select::BackendKind`], ONNX Runtime's [`backend::ort::OrtOptions`]); render a
//! prompt ([`chat::ChatInput`]) and tokenize it; start a [`generate::Decoder`] with
//! [`generate::GenerateParams`] (sampling, stop strings, an optional grammar
//! [`constrain::Constraint`]) and [`Engine::step`] it — a prefill chunk or one token at a time,
//! so that the caller can interleave requests and cancel between steps. Prefix states are
//! cached in memory ([`cache`]) and on disk ([`persist`]); the intent catalog's prefix is pinned
//! ([`PinProgress`]). [`EngineError`] says which layer failed. The remaining public modules
//! (`onnx`, `bpe`, `model`, `files`) are the readers these are built on, public for the tools
//! and tests that check them against the reference implementations.

#![warn(unreachable_pub)]

pub mod backend;
pub mod bpe;
mod cache;
pub mod chat;
pub mod constrain;
pub mod detok;
mod files;
pub mod generate;
pub mod model;
mod onnx;
pub mod persist;
mod pin;
pub mod sampler;
pub mod tokenizer;

use std::path::Path;

use backend::ort::OrtOptions;
use backend::select::{self, BackendKind};
use backend::{Backend, BackendError, BackendInfo, Sequence, Snapshot};
use cache::{CacheStats, PrefixCache};
use chat::{ChatInput, ChatTemplate, TemplateError};
use generate::{Completion, Decoder, GenerateParams, Step, TokenSink};
use model::{ModelError, ModelSpec};
pub use pin::{PinError, PinProgress};
use tokenizer::{TextTokenizer, TokenizerError};

/// Hands the memory freed on the heap back to the kernel. The C allocator keeps freed pages in
/// its pools (one per thread that allocated), so without this the memory of finished requests
/// (states, logits, events) stays resident; with it, what the daemon holds while idle is what it
/// uses.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Any failure of the engine, by layer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model directory is unusable.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The tokenizer is unusable or does not match.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The chat template is broken or absent.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The runtime failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Options for loading an engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Which runtime runs the model (`model.backend`).
    pub backend: BackendKind,
    /// ONNX Runtime settings.
    pub ort: OrtOptions,
    /// Read the tokenizer and chat template on another thread while the runtime loads the
    /// model, then build the grammar compiler ([`constrainer`](Engine::constrainer)) on a thread
    /// of its own instead of on first use: a daemon serving intents starts sooner and its first
    /// constrained request does not wait for the compiler.
    pub parallel_setup: bool,
    /// Which variant of a Hub layout to load (`q4`, `fp32`, …; `None`: the first present).
    pub variant: Option<String>,
}

/// A loaded model: spec, tokenizer, chat template and a backend session.
pub struct Engine {
    /// What the model directory says.
    pub spec: ModelSpec,
    /// The model's tokenizer.
    pub tokenizer: TextTokenizer,
    chat: Option<ChatTemplate>,
    backend: Box<dyn Backend>,
    /// Prefix snapshots of this backend's sequences (off until configured).
    cache: PrefixCache<Snapshot>,
    /// Grammar compiler for this vocabulary.
    constrainer: constrain::ConstrainerSlot,
    /// Why this backend was chosen (see [`backend::select`]).
    chosen: String,
    /// A prefix being pinned a chunk at a time.
    pinning: Option<pin::Pinning>,
    /// The pinned chat prefix's text and tokens.
    pinned_text: Option<pin::PinnedText>,
    /// Where pinned prefixes are saved and restored from across restarts.
    store: Option<persist::SnapshotStore>,
    /// The model directory's files as they were when loading began.
    files: files::ModelFiles,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("model", &self.spec.dir).finish_non_exhaustive()
    }
}

impl Engine {
    /// Validates `dir` and loads everything with the backend `opts.backend` selects; fails
    /// before touching the runtime when the files are wrong.
    pub fn load(dir: impl AsRef<Path>, opts: &EngineOptions) -> Result<Self, EngineError> {
        let mut chosen = String::new();
        let mut engine = Self::load_parts(dir.as_ref(), opts.variant.as_deref(), opts.parallel_setup, |spec| {
            let c = select::load(spec, opts.backend, &opts.ort)?;
            chosen = c.why;
            Ok(c.backend)
        })?;
        engine.chosen = chosen;
        Ok(engine)
    }

    /// Like [`load`](Self::load), with the backend built by `make` from the validated spec.
    pub fn load_with(
        dir: impl AsRef<Path>,
        make: impl FnOnce(&ModelSpec) -> Result<Box<dyn Backend>, BackendError>,
    ) -> Result<Self, EngineError> {
        Self::load_parts(dir.as_ref(), None, false, make)
    }

    /// Loads `dir` with the backend `make` builds; with `parallel`, the tokenizer and chat
    /// template are read on another thread meanwhile, and the grammar compiler is built on a
    /// third (the first error of the files is returned before the backend's).
    fn load_parts(
        dir: &Path,
        variant: Option<&str>,
        parallel: bool,
        make: impl FnOnce(&ModelSpec) -> Result<Box<dyn Backend>, BackendError>,
    ) -> Result<Self, EngineError> {
        let files = files::ModelFiles::read(dir);
        let (spec, tokenizer, chat, constrainer, backend) = if parallel {
            let spec = ModelSpec::load_variant(dir, variant)?;
            let (text, backend) = std::thread::scope(|scope| {
                let text = scope.spawn(|| {
                    let (tokenizer, chat) = Self::read_text(&spec)?;
                    let constrainer = constrain::ConstrainerSlot::spawn(&tokenizer, spec.vocab_size, &spec.eos_token_ids);
                    Ok::<_, EngineError>((tokenizer, chat, constrainer))
                });
                let backend = make(&spec);
                (text.join(), backend)
            });
            let (tokenizer, chat, constrainer) = text.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            (spec, tokenizer, chat, constrainer, backend?)
        } else {
            let (spec, tokenizer, chat) = Self::read_dir(dir, variant)?;
            let backend = make(&spec)?;
            (spec, tokenizer, chat, constrain::ConstrainerSlot::default(), backend)
        };
        Ok(Self {
            spec,
            tokenizer,
            chat,
            backend,
            cache: PrefixCache::default(),
            constrainer,
            chosen: String::new(),
            pinning: None,
            pinned_text: None,
            store: None,
            files,
        })
    }

    /// Reads and checks everything in `dir` but the weights (which only the runtime reads):
    /// what [`load`](Self::load) would refuse for the directory's files, without a session.
    pub fn check(dir: impl AsRef<Path>) -> Result<(), EngineError> {
        Self::read_dir(dir, None).map(|_| ())
    }

    fn read_dir(dir: impl AsRef<Path>, variant: Option<&str>) -> Result<(ModelSpec, TextTokenizer, Option<ChatTemplate>), EngineError> {
        let spec = ModelSpec::load_variant(dir, variant)?;
        let (tokenizer, chat) = Self::read_text(&spec)?;
        Ok((spec, tokenizer, chat))
    }

    /// The tokenizer and the chat template (if the model has one) of `spec`.
    fn read_text(spec: &ModelSpec) -> Result<(TextTokenizer, Option<ChatTemplate>), EngineError> {
        let tokenizer = TextTokenizer::load(spec)?;
        let chat = match ChatTemplate::load(spec) {
            Ok(t) => Some(t),
            Err(TemplateError::Absent) => None,
            Err(e) => return Err(e.into()),
        };
        Ok((tokenizer, chat))
    }

    /// What changed in the model directory since this model was loaded from it (files
    /// replaced, changed, added or deleted), in a few words; `None` when nothing did.
    pub fn files_changed(&self) -> Option<String> {
        self.files.changed()
    }

    /// The backend's description.
    pub fn backend_info(&self) -> BackendInfo {
        BackendInfo { chosen: self.chosen.clone(), ..self.backend.info() }
    }

    /// Renders a chat with the model's template.
    pub fn render_chat(&self, input: &ChatInput) -> Result<String, TemplateError> {
        self.chat.as_ref().ok_or(TemplateError::Absent)?.render(input)
    }

    /// Whether the model ships a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// A fresh sequence.
    pub fn new_sequence(&self) -> Result<Sequence, BackendError> {
        self.backend.new_sequence()
    }

    /// Forks a sequence (prefix snapshots).
    pub fn fork(&self, seq: &Sequence) -> Result<Sequence, BackendError> {
        self.backend.fork(seq)
    }

    /// Direct access to the backend (parity checks, benchmarks).
    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }

    /// A decoder for `prompt` on a fresh sequence, stopping on the model's EOS ids.
    pub fn decoder(&self, prompt: Vec<u32>, params: GenerateParams) -> Result<Decoder, BackendError> {
        let seq = self.backend.new_sequence()?;
        Decoder::new(seq, prompt, params, self.spec.eos_token_ids.clone(), self.spec.context_length)
    }

    /// Advances `decoder` by one prefill chunk or one token; a prefix snapshot it took goes
    /// into the prefix cache.
    pub fn step(&mut self, decoder: &mut Decoder) -> Result<Step, BackendError> {
        let step = decoder.step(self.backend.as_mut(), &self.tokenizer)?;
        for (tokens, snap) in decoder.take_snapshots() {
            let bytes = snap.bytes();
            if let Err(e) = self.cache.insert(tokens, snap, bytes, false) {
                tracing::debug!(reason = %e, "prefix not cached");
            }
        }
        Ok(step)
    }

    /// The grammar compiler for this model's vocabulary (built on the first call, which takes
    /// a moment for a large vocabulary).
    pub fn constrainer(&mut self) -> Result<std::sync::Arc<constrain::Constrainer>, constrain::ConstrainError> {
        self.constrainer.get(true, &self.tokenizer, self.spec.vocab_size, &self.spec.eos_token_ids)
    }

    /// The grammar compiler without the vocabulary's slices (see
    /// [`Constrainer::unsliced`](constrain::Constrainer::unsliced)): for grammars without JSON
    /// strings, such as the intent grammar; the same tokens, less memory.
    pub fn plain_constrainer(&mut self) -> Result<std::sync::Arc<constrain::Constrainer>, constrain::ConstrainError> {
        self.constrainer.get(false, &self.tokenizer, self.spec.vocab_size, &self.spec.eos_token_ids)
    }

    /// Sets the prefix cache's budget (0: off) and the fewest tokens a stored conversation
    /// prefix must save; what no longer fits is evicted.
    pub fn configure_cache(&mut self, max_bytes: usize, min_tokens: usize) {
        self.cache.configure(max_bytes, min_tokens);
    }

    /// Turns memory-pressure mode of the prefix cache on or off (on: conversation prefixes
    /// are dropped and none are stored; pinned prefixes stay).
    pub fn set_cache_pressure(&mut self, on: bool) {
        self.cache.set_pressure(on);
    }

    /// The prefix cache's counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Drops every cached prefix.
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Saves pinned prefixes under `store` from now on, and restores them from there instead of
    /// prefilling when a matching file exists (`None`: neither). `store`'s identity should come
    /// from [`state_identity`](Self::state_identity).
    pub fn set_snapshot_store(&mut self, store: Option<persist::SnapshotStore>) {
        self.store = store;
    }

    /// What determines the state a prefill produces besides its tokens: the backend, its
    /// version, provider and threads, and each model file (name, size, modification time).
    pub fn state_identity(&self) -> String {
        let info = self.backend.info();
        let dir = self.spec.dir.canonicalize().unwrap_or_else(|_| self.spec.dir.clone());
        format!(
            "{} {} provider {} threads {} model {} [{}]",
            info.name,
            info.version,
            info.execution_provider,
            info.threads,
            dir.display(),
            self.files.identity()
        )
    }

    /// A decoder for `prompt` that starts from the longest cached prefix of it and, at each
    /// position of `store_at` that marks a prefix worth keeping (a message boundary), snapshots
    /// the state for later prompts. Stops on the model's EOS ids; `context_length` caps prompt + output.
    pub fn cached_decoder(
        &mut self,
        prompt: Vec<u32>,
        store_at: &[usize],
        params: GenerateParams,
        context_length: usize,
    ) -> Result<Decoder, BackendError> {
        let eos = self.spec.eos_token_ids.clone();
        let restored = match self.cache.lookup(&prompt) {
            Some((reused, snap)) => match self.backend.restore(snap, prompt.len() - reused + params.max_tokens) {
                Ok(seq) => Some(seq),
                Err(e) => {
                    tracing::warn!(error = %e, "restoring a cached prefix failed; prefilling the whole prompt");
                    None
                }
            },
            None => None,
        };
        let mut decoder = match restored {
            Some(seq) => Decoder::resume(seq, prompt, params, eos, context_length)?,
            None => Decoder::new(self.backend.new_sequence()?, prompt, params, eos, context_length)?,
        };
        let reused = decoder.reused_tokens();
        for &at in store_at.iter().filter(|&&at| self.cache.worth_storing(at, reused)) {
            decoder.snapshot_at(at);
        }
        Ok(decoder)
    }

    /// Generates after `prompt` from a fresh sequence, stopping on the model's EOS ids.
    pub fn generate(&mut self, prompt: &[u32], params: &GenerateParams, sink: &mut dyn TokenSink) -> Result<Completion, BackendError> {
        let mut decoder = self.decoder(prompt.to_vec(), params.clone())?;
        generate::run_to_end(&mut decoder, self.backend.as_mut(), &self.tokenizer, sink)
    }

    /// Generates after `prompt` on top of `seq`, stopping on `eos` (empty: never on a token).
    pub fn generate_with(
        &mut self,
        seq: Sequence,
        prompt: &[u32],
        params: &GenerateParams,
        eos: &[u32],
        sink: &mut dyn TokenSink,
    ) -> Result<Completion, BackendError> {
        let mut decoder = Decoder::new(seq, prompt.to_vec(), params.clone(), eos.to_vec(), self.spec.context_length)?;
        generate::run_to_end(&mut decoder, self.backend.as_mut(), &self.tokenizer, sink)
    }
}
