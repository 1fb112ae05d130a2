//! One queue in front of the engine, shared by every transport. Transports register their
//! clients in the [`Requests`] table, turn each accepted request into a [`Job`] (which carries
//! its own bounded responder and cancellation) and hand it to the cheap, cloneable
//! [`Scheduler`] handle. A single engine thread (`thread`) runs the scheduling core (`core`,
//! an I/O-free state machine unit-tested against a fake model) over the model behind the
//! [`Model`] trait; `qwenedge-runner` adapts the real engine to it, so this crate knows no
//! engine type (it depends on the wire types, the budgets, the settings and the catalog it
//! hands to the model).
//!
//! The pieces: `admission` (may a request wait?), `queue` (two lanes), `board` (the state
//! shared under the lock), `job`, `table` and
//! `outbound` (the request table and each client's bounded event queue), `model` (the traits),
//! `core`, `thread`, `pacer` (the warm duty cycle).

mod admission;
mod board;
mod core;
mod job;
mod local;
mod local_tools;
mod metrics;
mod model;
mod outbound;
mod pacer;
mod queue;
mod table;
mod thread;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use admission::{admit, AdmissionView, Refusal};
pub use board::KeepAlive;
pub use job::Job;
pub use local::{home, LocalAnswer, LocalStage};
pub use metrics::{Histogram, Labels, Metrics};
pub use model::{Clock, Context, Loader, Model, Prepared, Progress};
pub use outbound::{Delivery, Outbound, Pushed};
pub use table::{CancelReason, CancelToken, Cancelled, Client, ClientPolicy, Duplicate, Requests, Responder, Ticket};

use self::core::{Core, Reload, SchedulerState};
use qwenedge_api::{Limits, ModelReport, Phase, QueueReport, RequestCounts, StatusReport};
use qwenedge_budget::BudgetState;
use qwenedge_config::{LoadSettings, Settings};
use qwenedge_intent::Catalog;
use thread::Shared;

/// Handle to the scheduler; clone it into every transport.
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
    /// The sentence templates, tried when an intent request is submitted.
    local: Arc<std::sync::RwLock<Arc<LocalStage>>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

/// Completion of the engine thread: `Ok` after draining, `Err` with the panic's message.
pub type Stopped = tokio::sync::oneshot::Receiver<Result<(), String>>;

/// A request the scheduler did not take, handed back with the reason.
#[derive(Debug)]
pub struct Rejected {
    /// The request.
    pub job: Job,
    /// Why.
    pub refusal: Refusal,
}

impl Rejected {
    /// Answers the request with the refusal.
    pub fn answer(self) {
        self.job.fail(self.refusal.code, self.refusal.message);
    }
}

impl Scheduler {
    /// Starts the engine thread around `model` (loaded with `loaded`; `None`: none yet, as
    /// when only the sentence templates answer); `loader` loads the next ones (reload,
    /// hot-weather model, after an idle unload); `local` answers the intent requests the
    /// sentence templates match.
    pub fn start<L: Loader>(
        loader: L,
        model: Option<L::Model>,
        loaded: LoadSettings,
        settings: Arc<Settings>,
        catalog: Arc<Catalog>,
        local: LocalStage,
    ) -> std::io::Result<(Self, Stopped)> {
        let report = match &model {
            Some(m) => <L::Model as Model>::report(m, &settings),
            None => ModelReport::none(),
        };
        let mut state = SchedulerState::new(settings, catalog, report);
        state.stats.loaded = model.is_some();
        let shared = Arc::new(Shared::new(state));
        let core = Core::new(loader, model, loaded);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let worker = Arc::clone(&shared);
        std::thread::Builder::new().name("qwenedge-engine".into()).spawn(move || {
            let outcome = thread::run(&worker, core);
            let _ = done_tx.send(outcome);
        })?;
        Ok((Self { shared, local: Arc::new(std::sync::RwLock::new(Arc::new(local))) }, done_rx))
    }

    /// The sentence templates and the home's names in use.
    pub fn local(&self) -> Arc<LocalStage> {
        Arc::clone(&self.local.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the sentence templates and the home's names (a configuration reload).
    pub fn set_local(&self, local: LocalStage) {
        *self.local.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(local);
    }

    /// Queues a job, or hands it back with the reason (queue full, shutting down, too hot).
    /// An intent request the sentence templates match is answered here, at once: it neither
    /// waits in the queue nor needs the model (nor is it refused for the queue or the heat).
    pub fn submit(&self, job: Job) -> Result<(), Box<Rejected>> {
        let draining = matches!(self.shared.lock().phase, Phase::Draining | Phase::Stopped);
        if !draining {
            let stage = Arc::clone(&self.local.read().unwrap_or_else(|p| p.into_inner()));
            if let LocalAnswer::Answer(mut events) = stage.answer(job.request()) {
                if let Some(last) = events.pop() {
                    let mut job = job;
                    for e in events {
                        job.send(e);
                    }
                    self.shared.lock().answer(job, last);
                    return Ok(());
                }
            }
        }
        let mut board = self.shared.lock();
        let view = AdmissionView {
            draining: matches!(board.phase, Phase::Draining | Phase::Stopped),
            waiting: board.queue.len(),
            capacity: board.settings.scheduler.queue_capacity,
            budget: &board.budget,
        };
        if let Err(refusal) = admit(job.request().priority(), &view) {
            return Err(Box::new(Rejected { job, refusal }));
        }
        board.queue.push(job);
        drop(board);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Wakes the engine thread so it notices a cancelled job at once.
    pub fn nudge(&self) {
        self.shared.wake.notify_one();
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.shared.lock().settings)
    }

    /// The limits requests are parsed under.
    pub fn limits(&self) -> Limits {
        self.shared.lock().settings.scheduler.limits()
    }

    /// The daemon's state for `status`.
    pub fn status(&self) -> StatusReport {
        let board = self.shared.lock();
        let (interactive, background) = board.queue.counts();
        let s = &board.stats;
        StatusReport {
            state: board.phase,
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: Some(self.shared.started.elapsed().as_secs()),
            model: s.model.clone(),
            queue: QueueReport { interactive, background, capacity: board.settings.scheduler.queue_capacity },
            running: s.running.clone(),
            sequences: s.sequences,
            requests: RequestCounts { done: s.served, failed: s.failed },
            last_request: s.last,
            model_loaded: s.loaded,
            budget: board.budget.report(),
            cache: s.cache,
            home: board.home.clone(),
        }
    }

    /// Takes the state of the home's link to Home Assistant, for `status`.
    pub fn set_home_report(&self, home: Option<qwenedge_api::HomeReport>) {
        self.shared.lock().home = home;
    }

    /// Takes the governors' latest reading; wakes the engine thread when its level changes.
    pub fn set_budget(&self, budget: BudgetState) {
        let mut board = self.shared.lock();
        let changed = board.budget.level != budget.level || board.budget.under_pressure != budget.under_pressure;
        board.budget = budget;
        drop(board);
        if changed {
            self.shared.wake.notify_one();
        }
    }

    /// The monitoring counters.
    pub fn metrics(&self) -> Metrics {
        self.shared.lock().stats.metrics.clone()
    }

    /// Keeps the model loaded for `keep` after the last request (the latest request's wish
    /// wins over `budget.idle_unload_s`); wakes the engine thread, which may unload now.
    pub fn keep_alive(&self, keep: KeepAlive) {
        self.shared.lock().keep_alive = Some(keep);
        self.shared.wake.notify_one();
    }

    /// Loads the model when it is not loaded (after an idle unload).
    pub fn load(&self) {
        self.shared.lock().load_requested = true;
        self.shared.wake.notify_one();
    }

    /// When the loaded model will be unloaded if nothing comes (`None`: it stays; also when
    /// none is loaded).
    pub fn unload_at(&self) -> Option<std::time::Instant> {
        let board = self.shared.lock();
        board.idle_unload().filter(|_| board.stats.loaded).map(|d| board.stats.last_busy + d)
    }

    /// The loaded model, for `models`.
    pub fn models(&self) -> Vec<ModelReport> {
        vec![self.shared.lock().stats.model.clone()]
    }

    /// How long since the engine thread last showed life (for the watchdog).
    pub fn worker_silence(&self) -> Duration {
        self.shared.silence()
    }

    /// Applies `settings` (and their catalog) once nothing is running; loads the model again
    /// when what loading reads changed. Queued requests stay queued.
    pub fn reload(&self, settings: Arc<Settings>, catalog: Arc<Catalog>) {
        self.shared.lock().reload = Some(Reload { settings, catalog });
        self.shared.wake.notify_one();
    }

    /// Loads the model in `dir` (with `variant` for a directory in the Hub's layout) in place
    /// of the current one, keeping every other setting — what an Ollama client naming a pulled
    /// model asks for. Like a reload: once nothing runs, queued requests wait for it, and a
    /// model that does not load leaves the current one serving. The configuration's model comes
    /// back with the next configuration reload.
    pub fn use_model(&self, dir: std::path::PathBuf, variant: Option<String>) {
        let mut board = self.shared.lock();
        let (settings, catalog) = match &board.reload {
            Some(r) => (Arc::clone(&r.settings), Arc::clone(&r.catalog)),
            None => (Arc::clone(&board.settings), Arc::clone(&board.catalog)),
        };
        if settings.model.path.as_deref() == Some(dir.as_path()) && settings.model.variant == variant {
            return;
        }
        let mut changed = (*settings).clone();
        changed.model.path = Some(dir);
        changed.model.variant = variant;
        board.reload = Some(Reload { settings: Arc::new(changed), catalog });
        drop(board);
        self.shared.wake.notify_one();
    }

    /// Stops admitting; queued jobs get `shutting_down` now, running ones may finish until
    /// `grace` has passed and are then stopped with `shutting_down`.
    pub fn shutdown(&self, grace: Duration) {
        let mut board = self.shared.lock();
        if board.phase != Phase::Stopped {
            board.phase = Phase::Draining;
        }
        let until = Instant::now() + grace;
        board.grace_until = Some(board.grace_until.map_or(until, |t| t.min(until)));
        drop(board);
        self.shared.wake.notify_one();
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.shared.lock().phase
    }
}

/// The tests' waits, shared with the end-to-end tests (one scale, one report when a wait runs
/// out).
#[cfg(test)]
#[allow(dead_code, unexpected_cfgs)]
#[path = "../../../tests/common/wait.rs"]
mod test_wait;
