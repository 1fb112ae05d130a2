//! The engine thread: picks the next unit of work under the lock, does it outside the lock.
//! Policy: a running interactive generation, else a waiting interactive one, else background
//! work. At most one generation per class is in flight, so a paused background generation
//! holds one sequence of state while an interactive request runs.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{info, info_span, warn};

use super::{load_engine, Job, Phase, Shared, State};
use crate::api::{ErrorCode, EventBody, Priority, Prompt, RequestTimings};
use crate::config::Settings;
use crate::engine::chat::ChatInput;
use crate::engine::generate::{Decoder, GenerateParams, Step};
use crate::engine::Engine;

/// How long the worker sleeps without work before it checks deadlines and beats again.
const IDLE_TICK: Duration = Duration::from_millis(250);

struct Active {
    job: Job,
    decoder: Decoder,
    started: Instant,
    deadline: Option<Instant>,
}

enum Work {
    Step(usize),
    Start(Job),
    Reload(Settings),
}

/// What `status`/`models` report about the loaded model.
pub(super) fn describe(engine: &Engine, settings: &Settings) -> Value {
    let spec = &engine.spec;
    let backend = engine.backend_info();
    json!({
        "id": spec.dir.file_name().map(|n| n.to_string_lossy().into_owned()),
        "path": spec.dir,
        "type": spec.model_type,
        "context_length": context_length(engine, settings),
        "vocab_size": spec.vocab_size,
        "layers": spec.layers.len(),
        "full_attention_layers": spec.full_attention_layers(),
        "weights_mb": spec.weight_bytes() / (1 << 20),
        "chat_template": engine.has_chat_template(),
        "backend": backend,
    })
}

fn context_length(engine: &Engine, settings: &Settings) -> usize {
    match settings.model.context_length {
        0 => engine.spec.context_length,
        n => n.min(engine.spec.context_length),
    }
}

/// The worker loop; returns when draining has finished.
pub(super) fn run(shared: &Shared, engine: Engine) {
    let mut engine = Some(engine);
    let mut active: Vec<Active> = Vec::new();
    loop {
        shared.beat();
        let work = {
            let mut state = shared.lock();
            loop {
                settle_queue(&mut state);
                let draining = state.phase == Phase::Draining;
                if draining && state.grace_until.is_some_and(|t| Instant::now() >= t) {
                    for a in active.drain(..) {
                        a.job.fail(ErrorCode::ShuttingDown, "the daemon is shutting down");
                    }
                }
                if draining && active.is_empty() && state.queue.is_empty() {
                    state.running.clear();
                    return;
                }
                if active.is_empty() && !draining {
                    if let Some(settings) = state.reload.take() {
                        break Work::Reload(settings);
                    }
                }
                if let Some(work) = pick(&mut state, &active) {
                    break work;
                }
                let timeout = state.grace_until.map_or(IDLE_TICK, |t| t.saturating_duration_since(Instant::now()).min(IDLE_TICK));
                state = shared.wake.wait_timeout(state, timeout).unwrap_or_else(|p| p.into_inner()).0;
                shared.beat();
            }
        };
        match work {
            Work::Reload(settings) => {
                shared.lock().phase = Phase::Loading;
                reload(shared, &mut engine, settings);
                let mut state = shared.lock();
                if state.phase == Phase::Loading {
                    state.phase = Phase::Ready;
                }
            }
            Work::Start(job) => {
                let settings = shared.lock().settings.clone();
                if let Some(a) = start(engine.as_mut(), &settings, job) {
                    active.push(a);
                    let i = active.len() - 1;
                    step(shared, engine.as_mut(), &mut active, i);
                }
            }
            Work::Step(i) => step(shared, engine.as_mut(), &mut active, i),
        }
        let mut state = shared.lock();
        state.running = active.iter().map(|a| (a.job.id.clone(), a.job.request.priority)).collect();
    }
}

/// Answers queued jobs that were cancelled or whose deadline passed, and all of them when
/// draining.
fn settle_queue(state: &mut State) {
    let now = Instant::now();
    let default_deadline = state.settings.scheduler.default_deadline_ms;
    let draining = state.phase == Phase::Draining;
    for job in state.queue.take_where(|j| draining || j.cancel.load(Ordering::Relaxed) || deadline(j, default_deadline).is_some_and(|d| now >= d)) {
        if draining {
            job.fail(ErrorCode::ShuttingDown, "the daemon is shutting down");
        } else if job.cancel.load(Ordering::Relaxed) {
            job.fail(ErrorCode::Cancelled, "cancelled while queued");
        } else {
            job.fail(ErrorCode::Timeout, "the deadline passed while the request was queued");
        }
        state.failed += 1;
    }
}

fn deadline(job: &Job, default_ms: u64) -> Option<Instant> {
    match job.request.deadline_ms.unwrap_or(default_ms) {
        0 => None,
        ms => Some(job.received + Duration::from_millis(ms)),
    }
}

fn pick(state: &mut State, active: &[Active]) -> Option<Work> {
    for priority in [Priority::Interactive, Priority::Background] {
        if let Some(i) = active.iter().position(|a| a.job.request.priority == priority) {
            return Some(Work::Step(i));
        }
        if let Some(job) = state.queue.pop(priority) {
            return Some(Work::Start(job));
        }
    }
    None
}

/// Renders and tokenizes the prompt and creates the decoder; answers the job on failure.
fn start(engine: Option<&mut Engine>, settings: &Settings, job: Job) -> Option<Active> {
    let Some(engine) = engine else {
        job.fail(ErrorCode::ModelError, "no model is loaded (the last load failed; see the daemon log)");
        return None;
    };
    let req = &job.request;
    let text = match &req.prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Chat { messages, tools, thinking } => {
            let input = ChatInput {
                messages: messages.clone(),
                tools: tools.clone(),
                add_generation_prompt: true,
                enable_thinking: Some(*thinking),
            };
            match engine.render_chat(&input) {
                Ok(t) => t,
                Err(e) => {
                    job.fail(ErrorCode::BadRequest, e.to_string());
                    return None;
                }
            }
        }
    };
    let prompt = match engine.tokenizer.encode(&text) {
        Ok(p) => p,
        Err(e) => {
            job.fail(ErrorCode::BadRequest, e.to_string());
            return None;
        }
    };
    let s = &settings.scheduler;
    let params = GenerateParams {
        max_tokens: req.max_tokens.unwrap_or(s.default_max_tokens).min(s.max_tokens_limit),
        stop: req.stop.clone(),
        sampling: req.sampling.clone(),
        prefill_chunk: settings.model.prefill_chunk_tokens,
    };
    let seq = match engine.new_sequence() {
        Ok(seq) => seq,
        Err(e) => {
            job.fail(ErrorCode::ModelError, e.to_string());
            return None;
        }
    };
    let eos = engine.spec.eos_token_ids.clone();
    match Decoder::new(seq, prompt, params, eos, context_length(engine, settings)) {
        Ok(decoder) => {
            let deadline = deadline(&job, s.default_deadline_ms);
            Some(Active { job, decoder, started: Instant::now(), deadline })
        }
        Err(e) => {
            job.fail(ErrorCode::BadRequest, e.to_string());
            None
        }
    }
}

/// One unit of work for `active[i]`; removes it when it ends.
fn step(shared: &Shared, engine: Option<&mut Engine>, active: &mut Vec<Active>, i: usize) {
    let a = &mut active[i];
    let _span = info_span!("request", id = %a.job.id).entered();
    let outcome = if a.job.cancel.load(Ordering::Relaxed) {
        Err((ErrorCode::Cancelled, "cancelled".to_string()))
    } else if a.deadline.is_some_and(|d| Instant::now() >= d) {
        let n = a.decoder.completion().usage.completion_tokens;
        Err((ErrorCode::Timeout, format!("the deadline passed after {n} generated tokens")))
    } else if let Some(engine) = engine {
        match engine.step(&mut a.decoder) {
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
    match outcome {
        Ok(false) => {}
        Ok(true) => {
            let a = active.remove(i);
            let done = a.decoder.completion();
            let queue_ms = (a.started - a.job.received).as_secs_f64() * 1e3;
            let timings = RequestTimings {
                queue_ms,
                prefill_ms: done.timings.prefill_ms,
                ttft_ms: queue_ms + done.timings.ttft_ms,
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
            a.job.send(EventBody::Done { text: done.text, finish_reason: done.finish_reason, usage: done.usage, timings });
            let mut state = shared.lock();
            state.served += 1;
            state.last = Some(timings);
        }
        Err((code, message)) => {
            let a = active.remove(i);
            info!(?code, %message, "failed");
            a.job.fail(code, message);
            shared.lock().failed += 1;
        }
    }
}

/// Applies new settings; loads another model when the model settings changed.
fn reload(shared: &Shared, engine: &mut Option<Engine>, settings: Settings) {
    let old = shared.lock().settings.clone();
    if old.model.onnxruntime_library != settings.model.onnxruntime_library {
        warn!("model.onnxruntime_library changed; a different ONNX Runtime library needs a restart");
    }
    let (a, b) = (&old.model, &settings.model);
    let model_changed = a.path != b.path
        || a.threads != b.threads
        || a.execution_providers != b.execution_providers
        || a.provider_options != b.provider_options
        || a.strict_providers != b.strict_providers;
    if model_changed || engine.is_none() {
        info!(model = ?settings.model.path, "loading model");
        // Free the old model first: a board rarely has room for two.
        *engine = None;
        match load_engine(&settings) {
            Ok(e) => *engine = Some(e),
            Err(err) => {
                warn!(error = %err, "loading the new model failed; going back to the previous one");
                match load_engine(&old) {
                    Ok(e) => *engine = Some(e),
                    Err(err) => warn!(error = %err, "reloading the previous model failed too"),
                }
                let mut state = shared.lock();
                state.settings = Settings { model: old.model.clone(), ..settings };
                if let Some(e) = engine.as_ref() {
                    state.model = describe(e, &state.settings);
                }
                return;
            }
        }
    }
    let mut state = shared.lock();
    if let Some(e) = engine.as_ref() {
        state.model = describe(e, &settings);
    }
    state.settings = settings;
    info!("configuration reloaded");
}
