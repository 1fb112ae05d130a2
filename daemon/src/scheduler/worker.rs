//! The engine thread: picks the next unit of work under the lock, does it outside the lock.
//!
//! Policy: a running interactive generation, else a waiting interactive one, else background
//! work — unless the device is warm or hotter, when background work waits. At most one
//! generation per class is in flight, so a paused background generation holds one sequence of
//! state while an interactive request runs. The thread also owns the model's lifecycle:
//! reloads on SIGHUP, the switch to the hot-weather model, unloading when idle and loading
//! again on the next request.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{info, warn};

use super::job::{self, context_length, Active, Pacer};
use super::{load_engine, Phase, Shared, State};
use crate::api::{ErrorCode, Priority};
use crate::budget::ThermalLevel;
use crate::config::Settings;
use crate::engine::Engine;

/// How long the worker sleeps without work before it checks deadlines and beats again.
const IDLE_TICK: Duration = Duration::from_millis(250);

enum Work {
    Step(usize),
    Start(super::Job),
    Reload(Settings),
    Swap(PathBuf),
    Unload,
    Pin,
}

/// What `status`/`models` report about the loaded model.
pub(super) fn describe(engine: &Engine, settings: &Settings) -> Value {
    let spec = &engine.spec;
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
        "backend": engine.backend_info(),
    })
}

/// The model directory the budget wants: the hot-weather model while hot, else the configured.
fn wanted_model(state: &State) -> Option<PathBuf> {
    let b = &state.settings.budget;
    match (&b.hot_model, state.budget.level >= ThermalLevel::Hot) {
        (Some(hot), true) => Some(hot.clone()),
        _ => state.settings.model.path.clone(),
    }
}

/// The worker loop; returns when draining has finished.
pub(super) fn run(shared: &Shared, engine: Engine) {
    let mut engine = Some(engine);
    let mut loaded_path = engine.as_ref().map(|e| e.spec.dir.clone());
    let mut active: Vec<Active> = Vec::new();
    let mut pacer = Pacer::default();
    let mut last_busy = Instant::now();
    let mut pressure = false;
    // The intent catalog's prefix is (re)built when the engine is idle after a (re)load.
    let mut pin_pending = true;
    loop {
        shared.beat();
        let (work, level, duty) = {
            let mut state = shared.lock();
            loop {
                settle(&mut state, &mut active);
                sync_cache(&mut state, engine.as_mut(), &mut pressure);
                let draining = state.phase == Phase::Draining;
                if draining && active.is_empty() && state.queue.is_empty() {
                    state.running.clear();
                    return;
                }
                let level = state.budget.level;
                let duty = if level >= ThermalLevel::Warm { state.settings.budget.warm_duty_cycle } else { 1.0 };
                if active.is_empty() && !draining {
                    if let Some(settings) = state.reload.take() {
                        break (Work::Reload(settings), level, duty);
                    }
                    let wanted = wanted_model(&state);
                    if engine.is_some() && wanted.is_some() && wanted != loaded_path {
                        break (Work::Swap(wanted.unwrap_or_default()), level, duty);
                    }
                    if pin_pending && engine.is_some() && state.queue.is_empty() {
                        break (Work::Pin, level, duty);
                    }
                    let idle = state.settings.budget.idle_unload_s;
                    if idle > 0 && engine.is_some() && state.queue.is_empty() && last_busy.elapsed() >= Duration::from_secs(idle) {
                        break (Work::Unload, level, duty);
                    }
                }
                if let Some(work) = pick(&mut state, &active, level) {
                    break (work, level, duty);
                }
                let timeout = state.grace_until.map_or(IDLE_TICK, |t| t.saturating_duration_since(Instant::now()).min(IDLE_TICK));
                state = shared.wake.wait_timeout(state, timeout).unwrap_or_else(|p| p.into_inner()).0;
                shared.beat();
            }
        };
        let may_load = !matches!(work, Work::Step(_));
        // Which request the pause after this piece of work is charged to.
        let stepped = match &work {
            Work::Step(i) => active.get(*i).map(|a| a.job.id.clone()),
            Work::Start(job) => Some(job.id.clone()),
            _ => None,
        };
        let busy = match work {
            Work::Reload(settings) => {
                reload(shared, &mut engine, &mut loaded_path, settings);
                pin_pending = true;
                Duration::ZERO
            }
            Work::Pin => {
                let settings = shared.lock().settings.clone();
                let began = Instant::now();
                if let Some(e) = engine.as_mut() {
                    pin_intents(e, &settings);
                }
                pin_pending = false;
                began.elapsed()
            }
            Work::Swap(path) => {
                let settings = shared.lock().settings.clone();
                info!(model = %path.display(), ?level, "switching model for the thermal level");
                swap(shared, &mut engine, &mut loaded_path, &settings, path);
                pin_pending = true;
                Duration::ZERO
            }
            Work::Unload => {
                info!("unloading the model after being idle");
                engine = None;
                loaded_path = None;
                shared.lock().loaded = false;
                Duration::ZERO
            }
            Work::Start(job) => {
                let (settings, budget, wanted) = {
                    let state = shared.lock();
                    (state.settings.clone(), state.budget.clone(), wanted_model(&state))
                };
                let mut load_ms = 0.0;
                if engine.is_none() {
                    let began = Instant::now();
                    swap(shared, &mut engine, &mut loaded_path, &settings, wanted.unwrap_or_default());
                    load_ms = began.elapsed().as_secs_f64() * 1e3;
                    pin_pending = true;
                }
                match engine.as_mut() {
                    None => {
                        shared.lock().failed += 1;
                        job.fail(ErrorCode::ModelError, "no model is loaded (loading it failed; see the daemon log)");
                        Duration::ZERO
                    }
                    Some(e) => match job::start(e, &settings, &budget, job, load_ms) {
                        Ok(a) => {
                            active.push(a);
                            let i = active.len() - 1;
                            job::step(shared, engine.as_mut(), &mut active, i)
                        }
                        Err((job, code, message)) => {
                            shared.lock().failed += 1;
                            job.fail(code, message);
                            Duration::ZERO
                        }
                    },
                }
            }
            Work::Step(i) => job::step(shared, engine.as_mut(), &mut active, i),
        };
        if may_load {
            // A new engine starts without pressure mode; apply it again if it still holds.
            pressure = false;
        }
        last_busy = Instant::now();
        let sleep = pacer.after(busy, duty);
        if !sleep.is_zero() {
            let began = Instant::now();
            std::thread::sleep(sleep);
            let slept = began.elapsed();
            pacer.slept(slept);
            if let Some(a) = active.iter_mut().find(|a| Some(&a.job.id) == stepped.as_ref()) {
                a.paced += slept;
            }
        }
        let mut state = shared.lock();
        state.running = active.iter().map(|a| (a.job.id.clone(), a.job.request.priority)).collect();
    }
}

/// Prefills the intent catalog's fixed prompt (system prompt + tools) and pins its state, so
/// `intent` requests prefill only the utterance; drops the pinned prefix when turned off.
fn pin_intents(engine: &mut Engine, settings: &Settings) {
    if !settings.cache.pin_intents || settings.cache.max_mb == 0 {
        engine.unpin_prefixes();
        return;
    }
    let catalog = match settings.intents.catalog() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "the intent catalog is unusable; its prefix is not cached");
            return;
        }
    };
    let chat = crate::intent::prepare(&catalog, "", None).chat;
    let began = Instant::now();
    match engine.pin_chat_prefix(&chat) {
        Ok(tokens) => info!(tokens, ms = began.elapsed().as_millis() as u64, "intent catalog prefix cached"),
        Err(e) => warn!(error = %e, "caching the intent catalog prefix failed"),
    }
}

/// Puts the prefix cache in or out of pressure mode when the budget's memory pressure changed
/// (`applied` is the mode the engine's cache is in), and publishes its counters.
fn sync_cache(state: &mut State, engine: Option<&mut Engine>, applied: &mut bool) {
    let Some(e) = engine else {
        state.cache = None;
        return;
    };
    if state.budget.under_pressure != *applied {
        *applied = state.budget.under_pressure;
        if *applied {
            warn!("memory is under pressure: dropping cached conversation prefixes");
        }
        e.set_cache_pressure(*applied);
    }
    state.cache = Some(e.cache_stats());
}

/// Answers what must end now: queued jobs that were cancelled, timed out, or arrive while
/// draining or critically hot; running jobs past the grace period or while critically hot.
fn settle(state: &mut State, active: &mut Vec<Active>) {
    let now = Instant::now();
    let default_deadline = state.settings.scheduler.default_deadline_ms;
    let draining = state.phase == Phase::Draining;
    let critical = state.budget.level == ThermalLevel::Critical;
    let temp = state.budget.temperature_c.map_or(String::new(), |t| format!(" ({t:.1} °C)"));
    let ended = state.queue.take_where(|j| {
        draining || critical || j.cancel.load(Ordering::Relaxed) || job::deadline(j, default_deadline).is_some_and(|d| now >= d)
    });
    for job in ended {
        if draining {
            job.fail(ErrorCode::ShuttingDown, "the daemon is shutting down");
        } else if critical {
            job.fail(ErrorCode::Thermal, format!("the device is critically hot{temp}"));
        } else if job.cancel.load(Ordering::Relaxed) {
            job.fail(ErrorCode::Cancelled, "cancelled while queued");
        } else {
            job.fail(ErrorCode::Timeout, "the deadline passed while the request was queued");
        }
        state.failed += 1;
    }
    let grace_over = draining && state.grace_until.is_some_and(|t| now >= t);
    if grace_over || critical {
        for a in active.drain(..) {
            let (code, message) = if grace_over {
                (ErrorCode::ShuttingDown, "the daemon is shutting down".to_string())
            } else {
                (ErrorCode::Thermal, format!("stopped: the device is critically hot{temp}"))
            };
            a.job.fail(code, message);
            state.failed += 1;
        }
    }
}

fn pick(state: &mut State, active: &[Active], level: ThermalLevel) -> Option<Work> {
    for priority in [Priority::Interactive, Priority::Background] {
        if priority == Priority::Background && level >= ThermalLevel::Warm {
            break;
        }
        if let Some(i) = active.iter().position(|a| a.job.request.priority == priority) {
            return Some(Work::Step(i));
        }
        if let Some(job) = state.queue.pop(priority) {
            return Some(Work::Start(job));
        }
    }
    None
}

/// Loads `path` under `settings` in place of the current model (freed first: a board rarely
/// has room for two). On failure the slot stays empty and the next request tries again.
fn swap(shared: &Shared, engine: &mut Option<Engine>, loaded: &mut Option<PathBuf>, settings: &Settings, path: PathBuf) {
    shared.lock().phase = Phase::Loading;
    *engine = None;
    let mut target = settings.clone();
    target.model.path = Some(path.clone());
    match load_engine(&target) {
        Ok(e) => {
            let mut state = shared.lock();
            state.model = describe(&e, settings);
            state.loaded = true;
            *engine = Some(e);
            *loaded = Some(path);
        }
        Err(err) => {
            warn!(error = %err, model = %path.display(), "loading the model failed");
            shared.lock().loaded = false;
            *loaded = None;
        }
    }
    let mut state = shared.lock();
    if state.phase == Phase::Loading {
        state.phase = Phase::Ready;
    }
}

/// Applies new settings; loads another model when the model settings changed, falling back to
/// the previous model if the new one does not load.
fn reload(shared: &Shared, engine: &mut Option<Engine>, loaded: &mut Option<PathBuf>, settings: Settings) {
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
    shared.lock().settings = settings.clone();
    if model_changed || engine.is_none() {
        info!(model = ?settings.model.path, "loading the model");
        swap(shared, engine, loaded, &settings, settings.model.path.clone().unwrap_or_default());
        if engine.is_none() {
            warn!("going back to the previous model");
            swap(shared, engine, loaded, &old, old.model.path.clone().unwrap_or_default());
            shared.lock().settings = Settings { model: old.model.clone(), ..settings };
            return;
        }
    } else if let Some(e) = engine.as_mut() {
        e.configure_cache(settings.cache.max_bytes(), settings.cache.min_tokens);
        shared.lock().model = describe(e, &settings);
    }
    info!("configuration reloaded");
}
