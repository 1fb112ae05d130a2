//! One request on the engine thread: rendering and tokenizing its prompt, checking its memory,
//! stepping its decoder and answering it. Called by the worker loop in `worker`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{info, info_span};

use super::{Job, Shared};
use crate::api::{ErrorCode, EventBody, Prompt, RequestTimings};
use crate::budget::{memory, BudgetState, ThermalLevel};
use crate::config::Settings;
use crate::engine::backend::BackendError;
use crate::engine::chat::ChatInput;
use crate::engine::constrain::{ConstrainError, Grammar};
use crate::engine::generate::{Decoder, GenerateParams, Step};
use crate::engine::Engine;
use crate::intent::Catalog;

/// A request the engine thread is working on.
pub(super) struct Active {
    pub(super) job: Job,
    decoder: Decoder,
    started: Instant,
    deadline: Option<Instant>,
    load_ms: f64,
    /// Time the engine thread slept after this request's steps to keep to the warm duty cycle.
    pub(super) paced: Duration,
    /// For an `intent` request: the catalog it was asked against and the confidence needed.
    intent: Option<(std::sync::Arc<Catalog>, f64)>,
}

/// The request's deadline: its own `deadline_ms`, else the configured default.
pub(super) fn deadline(job: &Job, default_ms: u64) -> Option<Instant> {
    match job.request.deadline_ms.unwrap_or(default_ms) {
        0 => None,
        ms => Some(job.received + Duration::from_millis(ms)),
    }
}

/// The context a request may use: the model's, capped by `model.context_length`.
pub(super) fn context_length(engine: &Engine, settings: &Settings) -> usize {
    match settings.model.context_length {
        0 => engine.spec.context_length,
        n => n.min(engine.spec.context_length),
    }
}

/// A job that could not start, with the error to answer it with.
pub(super) type Refused = (Job, ErrorCode, String);

/// Renders and tokenizes the prompt, checks the memory its state needs and creates the
/// decoder.
pub(super) fn start(engine: &mut Engine, settings: &Settings, budget: &BudgetState, job: Job, load_ms: f64) -> Result<Active, Refused> {
    let req = &job.request;
    let mut history = None;
    let mut grammar = req.format.clone();
    let mut intent = None;
    let text = match &req.prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Intent { text, filter } => {
            let catalog = match settings.intents.catalog() {
                Ok(c) => c,
                Err(e) => return Err((job, ErrorCode::ModelError, e.to_string())),
            };
            let prepared = crate::intent::prepare(&catalog, text, filter.as_deref());
            let rendered = match engine.render_chat(&prepared.chat) {
                Ok(t) => t,
                Err(e) => return Err((job, ErrorCode::ModelError, e.to_string())),
            };
            grammar = Some(Grammar::Lark(prepared.grammar));
            intent = Some((catalog, settings.intents.min_confidence, prepared.max_tokens));
            rendered
        }
        Prompt::Chat { messages, tools, thinking } => {
            let mut input = ChatInput {
                messages: messages.clone(),
                tools: tools.clone(),
                add_generation_prompt: true,
                enable_thinking: Some(*thinking),
            };
            let text = match engine.render_chat(&input) {
                Ok(t) => t,
                Err(e) => {
                    return Err((job, ErrorCode::BadRequest, e.to_string().to_string()));
                }
            };
            if engine.cache_stats().max_bytes > 0 {
                input.add_generation_prompt = false;
                history = engine.render_chat(&input).ok();
            }
            text
        }
    };
    let prompt = match engine.tokenizer.encode(&text) {
        Ok(p) => p,
        Err(e) => {
            return Err((job, ErrorCode::BadRequest, e.to_string().to_string()));
        }
    };
    let store_at = history.and_then(|h| message_boundary(engine, &prompt, &h));
    let s = &settings.scheduler;
    let mut max_tokens = req.max_tokens.unwrap_or(s.default_max_tokens).min(s.max_tokens_limit);
    if budget.level >= ThermalLevel::Hot {
        max_tokens = max_tokens.min(settings.budget.hot_max_tokens);
    }
    if let Some((_, _, n)) = &intent {
        // The grammar ends every answer within this many tokens; a lower cap would cut it.
        max_tokens = *n;
    }
    let context = context_length(engine, settings);
    let tokens = (prompt.len() + max_tokens).min(context);
    let need_mb = memory::request_bytes(&engine.spec, tokens) as f64 / (1024.0 * 1024.0);
    if let Some(room) = budget.memory_room_mb.filter(|room| need_mb > *room) {
        let msg = format!("this request needs about {need_mb:.0} MiB for {tokens} tokens of state, but only {room:.0} MiB is free; ask for fewer max_tokens or a shorter prompt");
        return Err((job, ErrorCode::Memory, msg));
    }
    let params = GenerateParams {
        max_tokens,
        stop: req.stop.clone(),
        sampling: req.sampling.clone(),
        prefill_chunk: settings.model.prefill_chunk_tokens,
    };
    let constraint = match grammar.map(|g| engine.constrainer().and_then(|c| c.constraint(&g))) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e @ ConstrainError::Grammar(_))) => return Err((job, ErrorCode::BadRequest, e.to_string())),
        Some(Err(e)) => return Err((job, ErrorCode::ModelError, e.to_string())),
    };
    match engine.cached_decoder(prompt, store_at, params, context) {
        Ok(mut decoder) => {
            if let Some(c) = constraint {
                decoder.constrain(c);
            }
            let deadline = deadline(&job, s.default_deadline_ms);
            let intent = intent.map(|(c, min, _)| (c, min));
            Ok(Active { job, decoder, started: Instant::now(), deadline, load_ms, paced: Duration::ZERO, intent })
        }
        Err(e @ BackendError::Limit(_)) => Err((job, ErrorCode::BadRequest, e.to_string())),
        Err(e) => Err((job, ErrorCode::ModelError, e.to_string())),
    }
}

/// Where the conversation's messages end inside `prompt` (before the assistant turn opener):
/// the state there is what the next turn of the same conversation starts with. `history` is
/// the chat rendered without the generation prompt; `None` unless its tokens are a prefix of
/// `prompt`.
fn message_boundary(engine: &Engine, prompt: &[u32], history: &str) -> Option<usize> {
    let tokens = engine.tokenizer.encode(history).ok()?;
    (!tokens.is_empty() && prompt.starts_with(&tokens)).then_some(tokens.len())
}

/// Does one unit of work for `active[i]`, removing it when it ends. Returns how long the
/// engine computed (for pacing).
pub(super) fn step(shared: &Shared, engine: Option<&mut Engine>, active: &mut Vec<Active>, i: usize) -> Duration {
    let a = &mut active[i];
    let _span = info_span!("request", id = %a.job.id).entered();
    let began = Instant::now();
    let outcome = if a.job.cancel.load(Ordering::Relaxed) {
        Err((ErrorCode::Cancelled, "cancelled".to_string()))
    } else if a.deadline.is_some_and(|d| Instant::now() >= d) {
        let n = a.decoder.completion().usage.completion_tokens;
        Err((ErrorCode::Timeout, format!("the deadline passed after {n} generated tokens")))
    } else if let Some(engine) = engine {
        match engine.step(&mut a.decoder) {
            // An interactive prompt is not paced: pacing starts with its first token, so a
            // warm device still answers a voice request promptly.
            Ok(Step::Prefilled { .. }) if a.job.request.priority == crate::api::Priority::Interactive => {
                return Duration::ZERO;
            }
            Ok(Step::Prefilled { .. }) => Ok(false),
            Ok(Step::Token { piece, .. }) => {
                if a.job.request.stream && !piece.is_empty() && !a.job.send(EventBody::Token { text: piece }) {
                    a.job.cancel.store(true, Ordering::Relaxed);
                }
                Ok(false)
            }
            Ok(Step::Finished { tail, .. }) => {
                if a.job.request.stream && !tail.is_empty() {
                    a.job.send(EventBody::Token { text: tail });
                }
                Ok(true)
            }
            Err(e) => Err((ErrorCode::ModelError, e.to_string())),
        }
    } else {
        Err((ErrorCode::ModelError, "no model is loaded".to_string()))
    };
    let busy = began.elapsed();
    match outcome {
        Ok(false) => {}
        Ok(true) => finish(shared, active.remove(i)),
        Err((code, message)) => fail(shared, active.remove(i), code, message),
    }
    busy
}

/// Ends a request with an error event.
pub(super) fn fail(shared: &Shared, a: Active, code: ErrorCode, message: impl Into<String>) {
    let message = message.into();
    let _span = info_span!("request", id = %a.job.id).entered();
    info!(?code, %message, "failed");
    // Count first: a client that reads the terminal event and then asks for `status` sees it.
    shared.lock().failed += 1;
    a.job.fail(code, message);
}

fn finish(shared: &Shared, a: Active) {
    let _span = info_span!("request", id = %a.job.id).entered();
    let done = a.decoder.completion();
    let queue_ms = (a.started - a.job.received).as_secs_f64() * 1e3 - a.load_ms;
    let timings = RequestTimings {
        queue_ms: queue_ms.max(0.0),
        load_ms: a.load_ms,
        paced_ms: a.paced.as_secs_f64() * 1e3,
        prefill_ms: done.timings.prefill_ms,
        ttft_ms: (a.started - a.job.received).as_secs_f64() * 1e3 + done.timings.ttft_ms,
        decode_tok_s: done.timings.decode_tok_s,
        total_ms: a.job.received.elapsed().as_secs_f64() * 1e3,
    };
    info!(
        finish = ?done.finish_reason,
        prompt_tokens = done.usage.prompt_tokens,
        completion_tokens = done.usage.completion_tokens,
        ttft_ms = timings.ttft_ms as u64,
        decode_tok_s = done.timings.decode_tok_s as u64,
        "done"
    );
    {
        let mut state = shared.lock();
        state.served += 1;
        state.last = Some(timings);
    }
    if let (Some((catalog, min)), Prompt::Intent { text, .. }) = (&a.intent, &a.job.request.prompt) {
        let confidence = a.decoder.constraint().map_or(0.0, |c| c.confidence());
        match crate::intent::event(catalog, &done.text, text, confidence, *min, done.usage, timings) {
            Ok(body) => a.job.send(body),
            Err(e) => a.job.send(EventBody::Error { code: ErrorCode::ModelError, message: e.to_string() }),
        };
        return;
    }
    a.job.send(EventBody::Done { text: done.text, finish_reason: done.finish_reason, usage: done.usage, timings });
}

/// Sleeps between steps so that computing takes `duty` of the wall time. The debt carries
/// across steps (and goes negative after an oversleep), so short steps and imprecise sleeps
/// still average out to the duty cycle.
#[derive(Debug, Default)]
pub(super) struct Pacer {
    /// Seconds of sleep owed.
    debt: f64,
}

impl Pacer {
    /// Records `busy` compute time at `duty` (1.0 = no pacing) and returns how long to sleep
    /// now; report the time actually slept with [`slept`](Self::slept).
    pub(super) fn after(&mut self, busy: Duration, duty: f64) -> Duration {
        if duty >= 1.0 {
            self.debt = 0.0;
            return Duration::ZERO;
        }
        self.debt += busy.as_secs_f64() * (1.0 / duty - 1.0);
        if self.debt < 0.002 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.debt.min(0.2))
    }

    /// Records time actually slept.
    pub(super) fn slept(&mut self, actual: Duration) {
        self.debt -= actual.as_secs_f64();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_averages_to_the_duty_cycle() {
        let mut p = Pacer::default();
        let busy = Duration::from_micros(700);
        let mut slept = Duration::ZERO;
        for i in 0..1000 {
            let want = p.after(busy, 0.25);
            // Sleeps overshoot by up to a millisecond, as a loaded machine does.
            let actual = if want.is_zero() { want } else { want + Duration::from_micros(i % 1000) };
            p.slept(actual);
            slept += actual;
        }
        let duty = (busy * 1000).as_secs_f64() / ((busy * 1000) + slept).as_secs_f64();
        assert!((duty - 0.25).abs() < 0.02, "{duty}");
        assert_eq!(Pacer::default().after(Duration::from_secs(1), 1.0), Duration::ZERO);
    }
}
