//! The generation loop: prefill the prompt, then decode one token at a time with the state
//! carried in a [`Sequence`], producing UTF-8-safe text pieces until an EOS token, a stop
//! string, the token limit, the context end or cancellation. [`Decoder`] is the loop as a state
//! machine the scheduler steps; [`run_to_end`] drives it for one-shot callers.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::backend::{Backend, BackendError, Logits, LogitsWanted, Sequence, Snapshot};
use super::constrain::{Allowed, Constraint};
use super::detok::{StopMatcher, StopState, Utf8Stream};
use super::sampler::{Sampler, SamplingParams};
use super::tokenizer::TextTokenizer;

/// Limits and sampling of one generation.
#[derive(Debug, Clone, Default)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Stop strings (not included in the output).
    pub stop: Vec<String>,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Prompt tokens per forward pass during prefill (0 = whole prompt in one pass).
    pub prefill_chunk: usize,
    /// Feed the tokens a grammar forces to the model one forward pass each, instead of all of
    /// them in one pass (the same tokens either way; for comparison and measurement).
    pub forced_one_by_one: bool,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The model's context is full.
    ContextFull,
    /// The sink asked to stop.
    Cancelled,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt tokens restored from the prefix cache instead of prefilled.
    pub cached_tokens: usize,
}

/// Where the time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Prefill wall time (ms).
    pub prefill_ms: f64,
    /// Start of prefill to the first generated token (ms).
    pub ttft_ms: f64,
    /// Decode wall time after the first token (ms).
    pub decode_ms: f64,
    /// Prompt tokens per second.
    pub prefill_tok_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tok_s: f64,
    /// Forward passes after the prompt (one per generated token, fewer when forced tokens
    /// share one).
    pub model_steps: usize,
    /// Generated tokens that the grammar forced (emitted without sampling).
    pub forced_tokens: usize,
}

/// The result of a generation.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Text generated (stop string excluded).
    pub text: String,
    /// Token ids generated (the EOS token excluded).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Timings.
    pub timings: Timings,
}

/// Receives the stream; returning `Break` cancels before the next token.
pub trait TokenSink {
    /// A piece of text (may be empty while a stop string or a character is incomplete) and the
    /// token that produced it.
    fn on_token(&mut self, piece: &str, token: u32) -> ControlFlow<()>;
}

impl<F: FnMut(&str, u32) -> ControlFlow<()>> TokenSink for F {
    fn on_token(&mut self, piece: &str, token: u32) -> ControlFlow<()> {
        self(piece, token)
    }
}

/// What one [`Decoder::step`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A chunk of the prompt was processed.
    Prefilled {
        /// Prompt tokens processed so far.
        done: usize,
        /// Prompt tokens in all.
        total: usize,
    },
    /// A token was generated; `piece` is the text that became final with it (may be empty
    /// while a character or a possible stop string is incomplete).
    Token {
        /// Text to emit.
        piece: String,
        /// The token.
        token: u32,
    },
    /// Generation ended; `tail` is text still held back that belongs to the output.
    Finished {
        /// Why it ended.
        reason: FinishReason,
        /// Remaining text to emit.
        tail: String,
    },
}

/// One generation as a resumable state machine, so a scheduler can interleave generations at
/// token granularity (an interactive request overtakes a background one between two steps) and
/// check cancellation and deadlines between any two forward passes.
pub struct Decoder {
    seq: Sequence,
    prompt: Vec<u32>,
    prefilled: usize,
    /// Prompt tokens the sequence already held when the decoder was made.
    reused: usize,
    /// Prompt positions at which to take a snapshot during prefill, ascending.
    snapshot_at: Vec<usize>,
    /// Snapshots taken and not yet handed out.
    snapshots: Vec<Snapshot>,
    params: GenerateParams,
    eos: Vec<u32>,
    context_length: usize,
    sampler: Sampler,
    utf8: Utf8Stream,
    stops: StopMatcher,
    text: String,
    tokens: Vec<u32>,
    logits: Logits,
    started: Instant,
    prefill_end: Option<Instant>,
    first_token: Option<Instant>,
    finished: Option<FinishReason>,
    pending: Option<FinishReason>,
    /// The grammar the output must follow, if any.
    constraint: Option<Constraint>,
    /// Tokens the grammar forced, to emit next without sampling.
    queue: VecDeque<u32>,
    /// How many of `queue` the model has already been given.
    ahead: usize,
    /// Forward passes after the prompt.
    model_steps: usize,
    /// Tokens the grammar forced.
    forced: usize,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("prompt", &self.prompt.len()).field("generated", &self.tokens.len()).finish_non_exhaustive()
    }
}

impl Decoder {
    /// Prepares a generation of `prompt` on top of `seq`, stopping on `eos` (empty: never on a
    /// token). Nothing runs until [`step`](Self::step).
    pub fn new(
        seq: Sequence,
        prompt: Vec<u32>,
        params: GenerateParams,
        eos: Vec<u32>,
        context_length: usize,
    ) -> Result<Self, BackendError> {
        if prompt.is_empty() {
            return Err(BackendError::Limit("the prompt is empty".into()));
        }
        Self::build(seq, prompt, params, eos, context_length, 0)
    }

    /// A decoder whose `seq` already holds the first `reused` tokens of `prompt`.
    fn build(
        seq: Sequence,
        prompt: Vec<u32>,
        params: GenerateParams,
        eos: Vec<u32>,
        context_length: usize,
        reused: usize,
    ) -> Result<Self, BackendError> {
        let total = seq.len() - reused + prompt.len();
        if total >= context_length {
            return Err(BackendError::Limit(format!("the prompt has {total} tokens; the model's context holds {context_length}")));
        }
        let sampler = Sampler::new(params.sampling.clone(), &prompt);
        let stops = StopMatcher::new(&params.stop);
        Ok(Self {
            seq,
            prompt,
            prefilled: reused,
            reused,
            snapshot_at: Vec::new(),
            snapshots: Vec::new(),
            params,
            eos,
            context_length,
            sampler,
            utf8: Utf8Stream::default(),
            stops,
            text: String::new(),
            tokens: Vec::new(),
            logits: Logits::default(),
            started: Instant::now(),
            prefill_end: None,
            first_token: None,
            finished: None,
            pending: None,
            constraint: None,
            queue: VecDeque::new(),
            ahead: 0,
            model_steps: 0,
            forced: 0,
        })
    }

    /// Prepares a generation of `prompt` on a sequence that already holds its first
    /// `seq.len()` tokens (restored from a prefix snapshot): only the rest is prefilled, while
    /// sampling (penalties) and usage still see the whole prompt.
    pub fn resume(
        seq: Sequence,
        prompt: Vec<u32>,
        params: GenerateParams,
        eos: Vec<u32>,
        context_length: usize,
    ) -> Result<Self, BackendError> {
        let reused = seq.len();
        if reused >= prompt.len() {
            return Err(BackendError::Limit(format!("the restored state holds {reused} tokens; the prompt has only {}", prompt.len())));
        }
        Self::build(seq, prompt, params, eos, context_length, reused)
    }

    /// Asks for a snapshot of the state after the first `at` prompt tokens (a prefix worth
    /// caching); the prefill then stops at that position once. Several positions may be asked
    /// for. Ignored unless `at` lies after what is already prefilled and inside the prompt.
    pub fn snapshot_at(&mut self, at: usize) {
        if at > self.prefilled && at <= self.prompt.len() {
            if let Err(i) = self.snapshot_at.binary_search(&at) {
                self.snapshot_at.insert(i, at);
            }
        }
    }

    /// The snapshots asked for with [`snapshot_at`](Self::snapshot_at) that the prefill has
    /// taken since the last call, each with the prompt tokens it holds.
    pub fn take_snapshots(&mut self) -> Vec<(Vec<u32>, Snapshot)> {
        let taken = std::mem::take(&mut self.snapshots);
        taken.into_iter().map(|snap| (self.prompt[..snap.len()].to_vec(), snap)).collect()
    }

    /// Holds the output to `constraint`'s grammar: disallowed tokens are masked before
    /// sampling and the generation stops once the grammar is complete.
    pub fn constrain(&mut self, constraint: Constraint) {
        self.constraint = Some(constraint);
    }

    /// The grammar state, when the output is constrained.
    pub fn constraint(&self) -> Option<&Constraint> {
        self.constraint.as_ref()
    }

    /// Prompt tokens restored instead of prefilled.
    pub fn reused_tokens(&self) -> usize {
        self.reused
    }

    /// Does the next unit of work: one prefill chunk, or one token.
    pub fn step(&mut self, backend: &mut dyn Backend, tokenizer: &TextTokenizer) -> Result<Step, BackendError> {
        if let Some(reason) = self.finished {
            return Ok(Step::Finished { reason, tail: String::new() });
        }
        if let Some(reason) = self.pending.take() {
            return Ok(self.finish(reason));
        }
        if self.prefilled < self.prompt.len() {
            let chunk = if self.params.prefill_chunk == 0 { self.prompt.len() } else { self.params.prefill_chunk };
            let mut end = (self.prefilled + chunk).min(self.prompt.len());
            if let Some(&at) = self.snapshot_at.first() {
                end = end.min(at);
            }
            let mut input = self.prompt[self.prefilled..end].to_vec();
            if end == self.prompt.len() {
                // What the grammar forces at the start rides along with the prompt's last chunk
                // (unless a snapshot of the prompt alone is wanted there).
                let alone = self.snapshot_at.first() == Some(&end) || self.params.forced_one_by_one;
                self.fill_queue(self.seq.len() + input.len())?;
                if !alone && !self.done_after_queue() {
                    input.extend(self.queue.iter());
                    self.ahead = self.queue.len();
                }
            }
            let result = backend.forward(&mut self.seq, &input, LogitsWanted::Last, &mut self.logits);
            if let Err(e) = result {
                self.finished = Some(FinishReason::Cancelled);
                return Err(e);
            }
            self.prefilled = end;
            if self.snapshot_at.first() == Some(&end) {
                self.snapshot_at.remove(0);
                match backend.snapshot(&self.seq) {
                    Ok(snap) => self.snapshots.push(snap),
                    Err(e) => tracing::warn!(error = %e, "taking a prefix snapshot failed; continuing without it"),
                }
            }
            if end == self.prompt.len() {
                self.prefill_end = Some(Instant::now());
            }
            return Ok(Step::Prefilled { done: end, total: self.prompt.len() });
        }
        if self.tokens.len() >= self.params.max_tokens {
            return Ok(self.finish(FinishReason::Length));
        }
        if let Some(token) = self.queue.pop_front() {
            return self.emit(token, false, backend, tokenizer);
        }
        if let Some(c) = self.constraint.as_mut() {
            match c.mask(&mut self.logits.data[..self.logits.vocab]) {
                Ok(Allowed::Tokens) => {}
                Ok(Allowed::EndOnly) => return Ok(self.finish(FinishReason::Stop)),
                Err(e) => {
                    self.finished = Some(FinishReason::Cancelled);
                    return Err(BackendError::Run(e.to_string()));
                }
            }
        }
        let choice = self.sampler.sample(&mut self.logits.data[..self.logits.vocab]);
        if let Some(c) = self.constraint.as_mut() {
            if let Err(e) = c.commit(choice.token, &self.logits.data[..self.logits.vocab]) {
                self.finished = Some(FinishReason::Cancelled);
                return Err(BackendError::Run(e.to_string()));
            }
        }
        if self.eos.contains(&choice.token) {
            self.first_token.get_or_insert_with(Instant::now);
            return Ok(self.finish(FinishReason::Stop));
        }
        self.emit(choice.token, true, backend, tokenizer)
    }

    /// Takes what the grammar forces after the last token into the queue, at most what the
    /// token limit and the context (`len` positions used after the next forward) leave room for.
    fn fill_queue(&mut self, len: usize) -> Result<(), BackendError> {
        let Some(c) = self.constraint.as_mut() else { return Ok(()) };
        let forced = match c.take_forced() {
            Ok(f) => f,
            Err(e) => {
                self.finished = Some(FinishReason::Cancelled);
                return Err(BackendError::Run(e.to_string()));
            }
        };
        let room = self.params.max_tokens.saturating_sub(self.tokens.len()).min(self.context_length.saturating_sub(len + 1));
        self.forced += forced.len().min(room);
        self.queue.extend(forced.into_iter().take(room));
        Ok(())
    }

    /// True when the grammar is complete once the queue is emitted: no more forward passes.
    fn done_after_queue(&self) -> bool {
        self.constraint.as_ref().is_some_and(Constraint::is_finished)
    }

    /// Emits `token` (sampled, or forced from the queue), then gives the model what it needs
    /// for the next choice: after a sampled token, the token and (unless one by one) everything
    /// the grammar now forces in one forward pass; after a forced token, nothing when it was
    /// part of that pass.
    fn emit(&mut self, token: u32, sampled: bool, backend: &mut dyn Backend, tokenizer: &TextTokenizer) -> Result<Step, BackendError> {
        self.first_token.get_or_insert_with(Instant::now);
        self.sampler.accept(token);
        self.tokens.push(token);
        let decoded = self.utf8.push(tokenizer.token_bytes(token));
        let piece = match self.stops.push(&decoded) {
            StopState::Continue(s) => s,
            StopState::Stopped(s) => {
                self.text.push_str(&s);
                self.finished = Some(FinishReason::Stop);
                return Ok(Step::Token { piece: s, token });
            }
        };
        self.text.push_str(&piece);
        if sampled {
            self.fill_queue(self.seq.len() + 1)?;
        }
        if self.queue.is_empty() && self.done_after_queue() {
            self.pending = Some(FinishReason::Stop);
        }
        if self.pending.is_some() || self.done_after_queue() {
            // The grammar is complete: no further forward pass.
        } else if self.tokens.len() >= self.params.max_tokens {
            self.pending = Some(FinishReason::Length);
        } else if self.ahead > 0 {
            self.ahead -= 1;
        } else {
            let mut input = vec![token];
            if !self.params.forced_one_by_one {
                input.extend(self.queue.iter());
                self.ahead = self.queue.len();
            }
            if self.seq.len() + input.len() >= self.context_length {
                self.pending = Some(FinishReason::ContextFull);
            } else if let Err(e) = backend.forward(&mut self.seq, &input, LogitsWanted::Last, &mut self.logits) {
                self.finished = Some(FinishReason::Cancelled);
                return Err(e);
            } else {
                self.model_steps += 1;
            }
        }
        Ok(Step::Token { piece, token })
    }

    /// Ends the generation: the text held back for a possible stop string or an unfinished
    /// character belongs to the output.
    fn finish(&mut self, reason: FinishReason) -> Step {
        let tail = match self.stops.push(&self.utf8.finish()) {
            StopState::Continue(s) => s + &self.stops.finish(),
            StopState::Stopped(s) => s,
        };
        self.text.push_str(&tail);
        self.finished = Some(reason);
        Step::Finished { reason, tail }
    }

    /// Stops the generation where it is (no more text is emitted).
    pub fn cancel(&mut self) {
        if self.finished.is_none() {
            self.finished = Some(FinishReason::Cancelled);
        }
    }

    /// True once the generation has ended.
    pub fn is_finished(&self) -> bool {
        self.finished.is_some()
    }

    /// Positions the sequence's state holds now (restored, prefilled and generated tokens).
    pub fn state_tokens(&self) -> usize {
        self.seq.len()
    }

    /// Whether the prompt has been processed.
    pub fn prefill_done(&self) -> bool {
        self.prefilled == self.prompt.len()
    }

    /// The result so far (final once finished).
    pub fn completion(&self) -> Completion {
        let end = Instant::now();
        let prefill = self.prefill_end.map_or(end - self.started, |t| t - self.started);
        let ttft = self.first_token.map_or(prefill, |t| t - self.started);
        let decode = self.first_token.map_or(Duration::ZERO, |t| end - t);
        Completion {
            text: self.text.clone(),
            tokens: self.tokens.clone(),
            finish_reason: self.finished.unwrap_or(FinishReason::Cancelled),
            usage: Usage { prompt_tokens: self.prompt.len(), completion_tokens: self.tokens.len(), cached_tokens: self.reused },
            timings: Timings {
                prefill_ms: ms(prefill),
                ttft_ms: ms(ttft),
                decode_ms: ms(decode),
                prefill_tok_s: rate(self.prompt.len() - self.reused, prefill),
                decode_tok_s: rate(self.tokens.len().saturating_sub(1), decode),
                model_steps: self.model_steps,
                forced_tokens: self.forced,
            },
        }
    }

    /// The sequence, for reuse as a prefix snapshot.
    pub fn into_sequence(self) -> Sequence {
        self.seq
    }
}

/// Runs a [`Decoder`] to the end, streaming into `sink`; a `Break` from the sink cancels.
pub(crate) fn run_to_end(
    decoder: &mut Decoder,
    backend: &mut dyn Backend,
    tokenizer: &TextTokenizer,
    sink: &mut dyn TokenSink,
) -> Result<Completion, BackendError> {
    loop {
        match decoder.step(backend, tokenizer)? {
            Step::Prefilled { .. } => {}
            Step::Token { piece, token } => {
                if sink.on_token(&piece, token).is_break() {
                    decoder.cancel();
                }
            }
            Step::Finished { tail, .. } => {
                if !tail.is_empty() {
                    let _ = sink.on_token(&tail, *decoder.tokens.last().unwrap_or(&0));
                }
                return Ok(decoder.completion());
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn rate(n: usize, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}
