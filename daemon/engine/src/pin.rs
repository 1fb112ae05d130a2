//! Pinned prefixes: the part of a prompt every request of a kind shares (the intent catalog's
//! system prompt and tools, up to the user turn's header) prefilled once, a chunk at a time
//! between other work, kept in the prefix cache and saved to disk, so that each request
//! prefills only its own part. A prompt that starts with the pinned text is tokenized as the
//! pinned tokens followed by the rest, so it always finds them.

use super::backend::{self, Sequence, Snapshot};
use super::cache::CacheError;
use super::chat::{ChatInput, TemplateError};
use super::tokenizer::TokenizerError;
use super::{persist, BackendError, Engine};

/// Stands for the utterance while the shared part of an intent prompt is rendered.
const UTTERANCE: &str = "\u{e000}utterance\u{e000}";

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

/// A pinned prefix in the making: its tokens, the sequence prefilled so far, and how far.
pub(super) struct Pinning {
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

/// The text of the pinned chat prefix and its tokens.
#[derive(Debug, Clone, Default)]
pub(super) struct PinnedText {
    text: String,
    tokens: Vec<u32>,
}

impl Engine {
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
    /// same tools, and the last user turn's header (for an intent request, the catalog's system
    /// prompt and tools, then `<|im_start|>user\n`). Prefills only when it is not pinned
    /// already. Returns its length in tokens.
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
        let text = self.shared_chat_text(chat)?;
        let tokens = match &self.pinned_text {
            Some(p) if p.text == text => p.tokens.clone(),
            _ => {
                let tokens = self.tokenizer.encode(&text)?;
                self.pinned_text = Some(PinnedText { text, tokens: tokens.clone() });
                tokens
            }
        };
        self.cache.unpin_except(&tokens);
        self.pin_prefix_step(&tokens, chunk)
    }

    /// The text every prompt like `chat` starts with: the rendering with the last user message
    /// standing for any, cut where its content begins; without a user message (or with a
    /// template that alters it), the messages before it with no generation prompt.
    fn shared_chat_text(&self, chat: &ChatInput) -> Result<String, TemplateError> {
        let last_user = chat.messages.iter().rposition(|m| m["role"] == "user").unwrap_or(chat.messages.len());
        if last_user < chat.messages.len() {
            let mut messages = chat.messages[..last_user].to_vec();
            messages.push(serde_json::json!({"role": "user", "content": UTTERANCE}));
            let any = ChatInput { messages, add_generation_prompt: false, ..chat.clone() };
            let rendered = self.render_chat(&any)?;
            if let Some(at) = rendered.find(UTTERANCE) {
                return Ok(rendered[..at].to_string());
            }
        }
        let fixed = ChatInput { messages: chat.messages[..last_user].to_vec(), add_generation_prompt: false, ..chat.clone() };
        self.render_chat(&fixed)
    }

    /// Tokenizes a prompt: one that starts with the pinned chat prefix's text as its tokens
    /// followed by the rest (the same tokens as a whole for an utterance that starts with no
    /// whitespace, since the prefix ends a pre-token; and the cached prefix found whatever the
    /// utterance), any other as a whole.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match &self.pinned_text {
            Some(p) if !p.text.is_empty() && text.starts_with(&p.text) => {
                let mut tokens = p.tokens.clone();
                tokens.extend(self.tokenizer.encode(&text[p.text.len()..])?);
                Ok(tokens)
            }
            _ => self.tokenizer.encode(text),
        }
    }
}
