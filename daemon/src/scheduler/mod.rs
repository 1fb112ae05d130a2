//! One queue in front of the engine. Transports hand in typed jobs through the cheap, cloneable
//! [`Scheduler`] handle; a single worker thread owns the engine and runs jobs token by token
//! (interactive before background, a running background generation yields at the next token),
//! enforcing cancellation and deadlines between tokens. Each job carries its own event channel,
//! so the engine never knows which transport asked.

mod admission;
mod job;
mod queue;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

pub use admission::{admit, AdmissionView, Refusal};

use crate::api::{ErrorCode, Event, GenerateRequest, Priority};
use crate::config::Settings;
use crate::engine::Engine;
use queue::{JobQueue, Queued};

/// Where a job's events go.
pub type EventSender = UnboundedSender<Event>;

/// A generation request handed to the scheduler.
#[derive(Debug)]
pub struct Job {
    /// Client id of the request.
    pub id: String,
    /// What to generate.
    pub request: GenerateRequest,
    /// When it arrived.
    pub received: Instant,
    /// Set to stop it (client cancel or disconnect).
    pub cancel: Arc<AtomicBool>,
    /// Its events.
    pub events: EventSender,
}

impl Queued for Job {
    fn priority(&self) -> Priority {
        self.request.priority
    }
}

impl Job {
    fn send(&self, event: crate::api::EventBody) -> bool {
        self.events.send(Event { id: Some(self.id.clone()), body: event }).is_ok()
    }

    fn fail(&self, code: ErrorCode, message: impl Into<String>) {
        self.send(crate::api::EventBody::Error { code, message: message.into() });
    }
}

/// The daemon's lifecycle as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving.
    Ready,
    /// Loading a model (start or reload).
    Loading,
    /// Finishing in-flight work before exit.
    Draining,
    /// The worker has exited.
    Stopped,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Ready => "ready",
            Phase::Loading => "loading",
            Phase::Draining => "draining",
            Phase::Stopped => "stopped",
        }
    }
}

/// State shared between the handle and the worker.
struct State {
    queue: JobQueue<Job>,
    settings: Settings,
    phase: Phase,
    /// When draining: the time after which running jobs are cancelled.
    grace_until: Option<Instant>,
    /// A configuration to apply once no job is running.
    reload: Option<Settings>,
    /// Ids of the jobs the worker is running, with their priority.
    running: Vec<(String, Priority)>,
    model: Value,
    served: u64,
    failed: u64,
    /// Timings of the last completed request.
    last: Option<crate::api::RequestTimings>,
    /// The governors' latest decision.
    budget: crate::budget::BudgetState,
    /// Whether a model is loaded (false after an idle unload or a failed load).
    loaded: bool,
    /// The loaded engine's prefix-cache counters.
    cache: Option<crate::engine::cache::CacheStats>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Milliseconds since `started` at the worker's last loop turn.
    heartbeat_ms: AtomicU64,
    started: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn beat(&self) {
        self.heartbeat_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Handle to the scheduler; clone it into every transport.
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

/// Completion of the worker thread.
pub type Stopped = tokio::sync::oneshot::Receiver<()>;

impl Scheduler {
    /// Starts the worker thread around a loaded engine.
    pub fn start(engine: Engine, settings: Settings) -> std::io::Result<(Self, Stopped)> {
        let model = worker::describe(&engine, &settings);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: JobQueue::default(),
                settings,
                phase: Phase::Ready,
                grace_until: None,
                reload: None,
                running: Vec::new(),
                model,
                served: 0,
                failed: 0,
                last: None,
                budget: Default::default(),
                loaded: true,
                cache: None,
            }),
            wake: Condvar::new(),
            heartbeat_ms: AtomicU64::new(0),
            started: Instant::now(),
        });
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let worker_shared = Arc::clone(&shared);
        std::thread::Builder::new().name("qwenedge-engine".into()).spawn(move || {
            worker::run(&worker_shared, engine);
            worker_shared.lock().phase = Phase::Stopped;
            let _ = done_tx.send(());
        })?;
        Ok((Self { shared }, done_rx))
    }

    /// Queues a job, or refuses it at once (queue full, shutting down).
    pub fn submit(&self, job: Job) -> Result<(), (Job, Refusal)> {
        let mut state = self.shared.lock();
        let view = AdmissionView {
            draining: state.phase == Phase::Draining || state.phase == Phase::Stopped,
            waiting: state.queue.len(),
            capacity: state.settings.scheduler.queue_capacity,
            budget: &state.budget,
        };
        if let Err(refusal) = admit(job.request.priority, &view) {
            return Err((job, refusal));
        }
        state.queue.push(job);
        drop(state);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Wakes the worker so it notices a cancelled job at once.
    pub fn nudge(&self) {
        self.shared.wake.notify_one();
    }

    /// The limits transports apply while parsing.
    pub fn settings(&self) -> Settings {
        self.shared.lock().settings.clone()
    }

    /// The daemon's state for `status`.
    pub fn status(&self) -> Value {
        let state = self.shared.lock();
        let (interactive, background) = state.queue.counts();
        json!({
            "state": state.phase.as_str(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.shared.started.elapsed().as_secs(),
            "model": state.model,
            "queue": {
                "interactive": interactive,
                "background": background,
                "capacity": state.settings.scheduler.queue_capacity,
            },
            "running": state.running.iter().map(|(id, p)| json!({"id": id, "priority": p})).collect::<Vec<_>>(),
            "requests": {"done": state.served, "failed": state.failed},
            "last_request": state.last,
            "model_loaded": state.loaded,
            "budget": state.budget,
            "cache": state.cache,
        })
    }

    /// Takes the governors' latest reading; wakes the engine thread when its level changes.
    pub fn set_budget(&self, budget: crate::budget::BudgetState) {
        let mut state = self.shared.lock();
        let changed = state.budget.level != budget.level || state.budget.under_pressure != budget.under_pressure;
        state.budget = budget;
        drop(state);
        if changed {
            self.shared.wake.notify_one();
        }
    }

    /// The loaded model, for `models`.
    pub fn models(&self) -> Vec<Value> {
        vec![self.shared.lock().model.clone()]
    }

    /// Milliseconds since the worker last showed life (for the watchdog).
    pub fn worker_silence(&self) -> Duration {
        let now = self.shared.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.shared.heartbeat_ms.load(Ordering::Relaxed)))
    }

    /// Applies `settings` once nothing is running; swaps the model if its path changed.
    /// Queued requests stay queued.
    pub fn reload(&self, settings: Settings) {
        self.shared.lock().reload = Some(settings);
        self.shared.wake.notify_one();
    }

    /// Stops admitting; queued jobs get `shutting_down` now, running ones may finish until
    /// `grace` has passed and are then cancelled with `shutting_down`.
    pub fn shutdown(&self, grace: Duration) {
        let mut state = self.shared.lock();
        state.phase = Phase::Draining;
        let until = Instant::now() + grace;
        state.grace_until = Some(state.grace_until.map_or(until, |t| t.min(until)));
        drop(state);
        self.shared.wake.notify_one();
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.shared.lock().phase
    }
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The files or the runtime failed.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The model does not fit in the memory the device leaves.
    #[error("{0}")]
    Memory(String),
}

/// Loads the engine the settings describe, after checking that it fits in memory.
pub fn load_engine(settings: &Settings) -> Result<Engine, LoadError> {
    let path = settings.model.path.clone().unwrap_or_default();
    let spec = crate::engine::model::ModelSpec::load(&path).map_err(crate::engine::EngineError::from)?;
    let context = crate::budget::memory::load_context(settings.model.context_length, spec.context_length);
    let estimate = crate::budget::memory::model_estimate(&spec, context);
    let root = crate::budget::readers::SysRoot::new(&settings.budget.root);
    let room = crate::budget::memory::room(&root, settings.budget.memory_reserve_mb);
    if room.room_mb.is_some_and(|free| estimate.total_mb > free) {
        let mut msg = format!("{}: the model needs {estimate}, but {room}", path.display());
        if let Some(hot) = &settings.budget.hot_model {
            msg.push_str(&format!("; a smaller variant is configured (budget.hot_model = {}): point model.path at it", hot.display()));
        }
        if context > 4096 {
            msg.push_str(&format!("; a lower model.context_length (now {context}) shrinks the KV cache"));
        }
        return Err(LoadError::Memory(msg));
    }
    let opts = crate::engine::EngineOptions {
        backend: settings.model.backend,
        ort: crate::engine::backend::ort::OrtOptions {
            library: settings.model.onnxruntime_library.clone(),
            threads: settings.model.threads,
            providers: settings
                .model
                .execution_providers
                .iter()
                .map(|name| crate::engine::backend::providers::ProviderRequest {
                    name: name.clone(),
                    options: settings.model.provider_options.get(name).cloned().unwrap_or_default(),
                })
                .collect(),
            strict_providers: settings.model.strict_providers,
            ..Default::default()
        },
    };
    let mut engine = Engine::load(&path, &opts)?;
    let info = engine.backend_info();
    tracing::info!(model = %path.display(), backend = info.name, runtime = %info.version, chosen = %info.chosen, "backend chosen");
    engine.configure_cache(settings.cache.max_bytes(), settings.cache.min_tokens);
    Ok(engine)
}
