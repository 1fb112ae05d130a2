//! The generation loop: prefill the prompt, then decode one token at a time with the state
//! carried in a [`Sequence`], streaming UTF-8-safe text pieces to a sink until an EOS token, a
//! stop string, the token limit, the context end or cancellation.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::backend::{Backend, BackendError, Logits, LogitsWanted, Sequence};
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
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
}

/// Where the time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
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

/// Runs one generation from an empty or prefix-filled sequence.
pub struct Generation<'a> {
    /// The backend.
    pub backend: &'a mut dyn Backend,
    /// The tokenizer.
    pub tokenizer: &'a TextTokenizer,
    /// Tokens that end generation.
    pub eos: &'a [u32],
    /// Context length of the model.
    pub context_length: usize,
}

impl Generation<'_> {
    /// Generates after `prompt` (fed on top of whatever `seq` holds).
    pub fn run(
        &mut self,
        seq: &mut Sequence,
        prompt: &[u32],
        params: &GenerateParams,
        sink: &mut dyn TokenSink,
    ) -> Result<Completion, BackendError> {
        if prompt.is_empty() && seq.is_empty() {
            return Err(BackendError::Limit("the prompt is empty".into()));
        }
        if seq.len() + prompt.len() >= self.context_length {
            return Err(BackendError::Limit(format!(
                "the prompt has {} tokens; the model's context holds {}",
                seq.len() + prompt.len(),
                self.context_length
            )));
        }
        let start = Instant::now();
        let mut logits = Logits::default();
        let chunk = if params.prefill_chunk == 0 { prompt.len().max(1) } else { params.prefill_chunk };
        for part in prompt.chunks(chunk) {
            self.backend.forward(seq, part, LogitsWanted::Last, &mut logits)?;
        }
        let prefill = start.elapsed();

        let mut sampler = Sampler::new(params.sampling.clone(), prompt);
        let mut utf8 = Utf8Stream::default();
        let mut stops = StopMatcher::new(&params.stop);
        let mut text = String::new();
        let mut tokens = Vec::new();
        let mut first_token_at = None;
        let mut stopped_by_string = false;
        let finish = loop {
            if tokens.len() >= params.max_tokens {
                break FinishReason::Length;
            }
            let choice = sampler.sample(&mut logits.data[..logits.vocab]);
            first_token_at.get_or_insert_with(Instant::now);
            if self.eos.contains(&choice.token) {
                break FinishReason::Stop;
            }
            sampler.accept(choice.token);
            tokens.push(choice.token);
            let piece = utf8.push(self.tokenizer.token_bytes(choice.token));
            let (emit, stopped) = match stops.push(&piece) {
                StopState::Continue(s) => (s, false),
                StopState::Stopped(s) => (s, true),
            };
            text.push_str(&emit);
            let flow = sink.on_token(&emit, choice.token);
            if stopped {
                stopped_by_string = true;
                break FinishReason::Stop;
            }
            if flow.is_break() {
                break FinishReason::Cancelled;
            }
            if tokens.len() >= params.max_tokens {
                break FinishReason::Length;
            }
            if seq.len() + 1 >= self.context_length {
                break FinishReason::ContextFull;
            }
            self.backend.forward(seq, &[choice.token], LogitsWanted::Last, &mut logits)?;
        };
        // Flush what the UTF-8 stream and the stop matcher still hold, unless a stop string
        // ended the text or the client went away.
        if !stopped_by_string && finish != FinishReason::Cancelled {
            let tail = match stops.push(&utf8.finish()) {
                StopState::Continue(s) => s + &stops.finish(),
                StopState::Stopped(s) => s,
            };
            if !tail.is_empty() {
                text.push_str(&tail);
                let _ = sink.on_token(&tail, *tokens.last().unwrap_or(&0));
            }
        }
        let end = Instant::now();
        let ttft = first_token_at.map_or(prefill, |t| t - start);
        let decode = first_token_at.map_or(Duration::ZERO, |t| end - t);
        let decoded = tokens.len().saturating_sub(1);
        Ok(Completion {
            text,
            usage: Usage { prompt_tokens: prompt.len(), completion_tokens: tokens.len() },
            tokens,
            finish_reason: finish,
            timings: Timings {
                prefill_ms: ms(prefill),
                ttft_ms: ms(ttft),
                decode_ms: ms(decode),
                prefill_tok_s: rate(prompt.len(), prefill),
                decode_tok_s: rate(decoded, decode),
            },
        })
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
