//! Everything that touches a model: files → spec, tokenizer and chat template, the runtime
//! backend, sampling and the generation loop. Transports never reach in here directly.

pub mod backend;
pub mod bpe;
pub mod cache;
pub mod chat;
pub mod constrain;
pub mod detok;
pub mod files;
pub mod generate;
pub mod model;
pub mod onnx;
pub mod persist;
pub mod sampler;
pub mod tokenizer;

use std::path::Path;

use backend::ort::OrtOptions;
use backend::select::{self, BackendKind};
use backend::{Backend, BackendError, BackendInfo, Sequence, Snapshot};
use cache::{CacheError, CacheStats, PrefixCache};
use chat::{ChatInput, ChatTemplate, TemplateError};
use generate::{Completion, Decoder, GenerateParams, Step, TokenSink};
use model::{ModelError, ModelSpec};
use tokenizer::{TextTokenizer, TokenizerError};

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

/// Why a prefix could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// Prefilling it failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The cache would not hold it.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The chat could not be rendered.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The rendered chat could not be tokenized.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// Options for loading an engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Which runtime runs the model (`model.backend`).
    pub backend: BackendKind,
    /// ONNX Runtime settings.
    pub ort: OrtOptions,
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
    /// Grammar compiler for this vocabulary, built on first use.
    constrainer: Option<std::sync::Arc<constrain::Constrainer>>,
    /// Why this backend was chosen (see [`backend::select`]).
    chosen: String,
    /// A prefix being pinned a chunk at a time.
    pinning: Option<Pinning>,
    /// Where pinned prefixes are saved and restored from across restarts.
    store: Option<persist::SnapshotStore>,
    /// The model directory's files as they were when loading began.
    files: files::ModelFiles,
}

/// A pinned prefix in the making: its tokens, the sequence prefilled so far, and how far.
struct Pinning {
    tokens: Vec<u32>,
    seq: Sequence,
    done: usize,
    began: std::time::Instant,
}

/// How far pinning a prefix is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PinProgress {
    /// The prefix's length in tokens.
    pub tokens: usize,
    /// Whether it is pinned (else more chunks remain).
    pub pinned: bool,
    /// Milliseconds since its first chunk (when it was prefilled here), or spent restoring it.
    pub elapsed_ms: u64,
    /// Whether it was restored from a snapshot on disk instead of prefilled.
    pub restored: bool,
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
        let mut engine = Self::load_with(dir, |spec| {
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
        let files = files::ModelFiles::read(dir.as_ref());
        let (spec, tokenizer, chat) = Self::read_dir(dir)?;
        let backend = make(&spec)?;
        Ok(Self {
            spec,
            tokenizer,
            chat,
            backend,
            cache: PrefixCache::default(),
            constrainer: None,
            chosen: String::new(),
            pinning: None,
            store: None,
            files,
        })
    }

    /// Reads and checks everything in `dir` but the weights (which only the runtime reads):
    /// what [`load`](Self::load) would refuse for the directory's files, without a session.
    pub fn check(dir: impl AsRef<Path>) -> Result<(), EngineError> {
        Self::read_dir(dir).map(|_| ())
    }

    fn read_dir(dir: impl AsRef<Path>) -> Result<(ModelSpec, TextTokenizer, Option<ChatTemplate>), EngineError> {
        let spec = ModelSpec::load(dir)?;
        let tokenizer = TextTokenizer::load(&spec)?;
        let chat = match ChatTemplate::load(&spec) {
            Ok(t) => Some(t),
            Err(TemplateError::Absent) => None,
            Err(e) => return Err(e.into()),
        };
        Ok((spec, tokenizer, chat))
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
        if let Some(c) = &self.constrainer {
            return Ok(c.clone());
        }
        let c = constrain::Constrainer::new(&self.tokenizer, self.spec.vocab_size, &self.spec.eos_token_ids)?;
        self.constrainer = Some(c.clone());
        Ok(c)
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

    /// Drops the pinned prefixes (before the current ones are registered again).
    pub fn unpin_prefixes(&mut self) {
        self.cache.unpin_all();
    }

    /// Prefills `tokens` once and keeps their state as a pinned prefix, so every prompt that
    /// starts with them prefills only the rest. Does nothing when it is pinned already.
    pub fn pin_prefix(&mut self, tokens: &[u32]) -> Result<(), PinError> {
        while !self.pin_prefix_step(tokens, usize::MAX)?.pinned {}
        Ok(())
    }

    /// Pins `tokens` as a prefix a chunk of at most `chunk` tokens per call, so that other work
    /// can run between the calls; a call for other tokens starts over. The state is the same as
    /// prefilling the prefix at once (chunked prefill continues the sequence exactly).
    pub fn pin_prefix_step(&mut self, tokens: &[u32], chunk: usize) -> Result<PinProgress, PinError> {
        if !self.cache.enabled() {
            self.pinning = None;
            return Err(PinError::Cache(CacheError::Disabled));
        }
        let mut progress = PinProgress { tokens: tokens.len(), pinned: true, elapsed_ms: 0, restored: false };
        if tokens.is_empty() || self.cache.contains(tokens, true) {
            self.pinning = None;
            return Ok(progress);
        }
        let store = self.store.as_ref().map(|s| s.variant(&format!("prefill chunk {chunk}")));
        let mut p = match self.pinning.take() {
            Some(p) if p.tokens == tokens => p,
            _ => {
                let began = std::time::Instant::now();
                if let Some(snap) = store.as_ref().and_then(|s| self.restore_saved(s, tokens)) {
                    let bytes = snap.bytes();
                    self.cache.insert(tokens.to_vec(), snap, bytes, true)?;
                    progress.elapsed_ms = began.elapsed().as_millis() as u64;
                    progress.restored = true;
                    return Ok(progress);
                }
                Pinning { tokens: tokens.to_vec(), seq: self.backend.new_sequence()?, done: 0, began }
            }
        };
        let end = p.done.saturating_add(chunk.max(1)).min(tokens.len());
        let mut logits = backend::Logits::default();
        self.backend.forward(&mut p.seq, &tokens[p.done..end], backend::LogitsWanted::Last, &mut logits)?;
        p.done = end;
        progress.elapsed_ms = p.began.elapsed().as_millis() as u64;
        if end < tokens.len() {
            self.pinning = Some(p);
            progress.pinned = false;
            return Ok(progress);
        }
        let snap = self.backend.snapshot(&p.seq)?;
        if let Some(store) = &store {
            self.save(store, tokens, &snap);
        }
        let bytes = snap.bytes();
        self.cache.insert(tokens.to_vec(), snap, bytes, true)?;
        Ok(progress)
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

    /// The snapshot of `tokens` saved in `store`, if there is a usable one; an unusable file
    /// is logged and deleted (the prefill that follows writes a new one).
    fn restore_saved(&self, store: &persist::SnapshotStore, tokens: &[u32]) -> Option<Snapshot> {
        let result = store.load(tokens).map_err(|e| e.to_string()).and_then(|found| match found {
            None => Ok(None),
            Some(parts) => self.backend.snapshot_from_parts(tokens.len(), parts).map(Some).map_err(|e| e.to_string()),
        });
        match result {
            Ok(Some(snap)) => {
                tracing::info!(file = %store.path(tokens).display(), tokens = tokens.len(), "restored a prefix snapshot from disk");
                Some(snap)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unusable prefix snapshot; prefilling instead");
                store.remove(tokens);
                None
            }
        }
    }

    /// Writes `snap` of `tokens` to `store`; a failure (a full disk) is logged and serving goes on.
    fn save(&self, store: &persist::SnapshotStore, tokens: &[u32], snap: &Snapshot) {
        let began = std::time::Instant::now();
        let failed = std::cell::RefCell::new(None);
        let visit = |each: &mut dyn FnMut(&[f32])| {
            if let Err(e) = self.backend.snapshot_parts(snap, each) {
                *failed.borrow_mut() = Some(e);
            }
        };
        match store.save(tokens, &visit) {
            Ok(_) if failed.borrow().is_some() => {
                store.remove(tokens);
                tracing::warn!(error = %failed.borrow().as_ref().map(ToString::to_string).unwrap_or_default(), "could not write the prefix snapshot");
            }
            Ok((path, bytes)) => {
                let ms = began.elapsed().as_millis() as u64;
                tracing::info!(file = %path.display(), mb = bytes >> 20, ms, "saved the prefix snapshot to disk");
            }
            Err(e) => tracing::warn!(error = %e, "could not save the prefix snapshot; serving goes on"),
        }
    }

    /// Makes the part of `chat` that every request of its kind shares the pinned prefix,
    /// replacing other pinned prefixes: the messages before the last user message with the
    /// same tools and no generation prompt (for an intent request, the catalog's system prompt
    /// and tools). Prefills only when it is not pinned already. Returns its length in tokens.
    pub fn pin_chat_prefix(&mut self, chat: &ChatInput) -> Result<usize, PinError> {
        loop {
            let p = self.pin_chat_prefix_step(chat, usize::MAX)?;
            if p.pinned {
                return Ok(p.tokens);
            }
        }
    }

    /// [`pin_chat_prefix`](Self::pin_chat_prefix) a chunk of at most `chunk` tokens per call.
    pub fn pin_chat_prefix_step(&mut self, chat: &ChatInput, chunk: usize) -> Result<PinProgress, PinError> {
        let last_user = chat.messages.iter().rposition(|m| m["role"] == "user").unwrap_or(chat.messages.len());
        let fixed = ChatInput { messages: chat.messages[..last_user].to_vec(), add_generation_prompt: false, ..chat.clone() };
        let tokens = self.tokenizer.encode(&self.render_chat(&fixed)?)?;
        self.cache.unpin_except(&tokens);
        self.pin_prefix_step(&tokens, chunk)
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
