//! The waiting room: what the transports (through the scheduler handle) and the engine thread
//! share under one lock — the queue, the lifecycle phase, a pending reload, the settings and
//! catalog in force, the budget, and the counters `status` reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::job::Job;
use super::metrics::{op_of, Metrics};
use super::queue::JobQueue;
use qwenedge_api::{CacheReport, EventBody, ModelReport, Phase, RequestTimings, RunningReport, SequenceReport, ThermalLevel};
use qwenedge_budget::BudgetState;
use qwenedge_config::Settings;
use qwenedge_intent::Catalog;

/// A configuration to apply.
#[derive(Debug, Clone)]
pub struct Reload {
    /// The settings.
    pub settings: Arc<Settings>,
    /// Their intent catalog.
    pub catalog: Arc<Catalog>,
}

/// Counters and descriptions for `status`.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Requests completed.
    pub served: u64,
    /// Requests that ended with an error.
    pub failed: u64,
    /// Timings of the last completed request.
    pub last: Option<RequestTimings>,
    /// Requests the engine is working on.
    pub running: Vec<RunningReport>,
    /// The sequences of state they hold.
    pub sequences: SequenceReport,
    /// The model (the last loaded).
    pub model: ModelReport,
    /// Whether a model is loaded.
    pub loaded: bool,
    /// Its prefix cache.
    pub cache: Option<CacheReport>,
    /// When the engine last worked (an idle model unloads counting from here).
    pub last_busy: Instant,
    /// The monitoring counters.
    pub metrics: Metrics,
}

/// How long an idle model stays loaded, as a client asked (Ollama's `keep_alive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Until the daemon stops.
    Forever,
    /// This long after the last request (zero: unload as soon as it is idle).
    For(Duration),
}

/// The waiting room and what the transports may read or change, under one lock.
#[derive(Debug)]
pub struct SchedulerState {
    /// Waiting requests.
    pub queue: JobQueue<Job>,
    /// Lifecycle.
    pub phase: Phase,
    /// When draining: the time after which running requests are stopped.
    pub grace_until: Option<Instant>,
    /// A configuration to apply once nothing runs.
    pub reload: Option<Reload>,
    /// The home's link to Home Assistant, as last reported.
    pub home: Option<qwenedge_api::HomeReport>,
    /// The settings in force.
    pub settings: Arc<Settings>,
    /// The intent catalog in force.
    pub catalog: Arc<Catalog>,
    /// The governors' latest decision.
    pub budget: BudgetState,
    /// For `status`.
    pub stats: Stats,
    /// The last keep-alive a client asked for; `None`: `budget.idle_unload_s`.
    pub keep_alive: Option<KeepAlive>,
    /// A client asked for the model to be loaded now.
    pub load_requested: bool,
}

impl SchedulerState {
    /// A board for a daemon serving `model` under `settings`.
    pub fn new(settings: Arc<Settings>, catalog: Arc<Catalog>, model: ModelReport) -> Self {
        let stats = Stats {
            served: 0,
            failed: 0,
            last: None,
            running: Vec::new(),
            sequences: SequenceReport::default(),
            model,
            loaded: true,
            cache: None,
            last_busy: Instant::now(),
            metrics: Metrics::default(),
        };
        Self {
            queue: JobQueue::default(),
            phase: Phase::Ready,
            grace_until: None,
            reload: None,
            home: None,
            settings,
            catalog,
            budget: BudgetState::default(),
            stats,
            keep_alive: None,
            load_requested: false,
        }
    }

    /// How long an idle model stays loaded now (`None`: until the daemon stops).
    pub fn idle_unload(&self) -> Option<Duration> {
        match self.keep_alive {
            Some(KeepAlive::Forever) => None,
            Some(KeepAlive::For(d)) => Some(d),
            None => match self.settings.budget.idle_unload_s {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
        }
    }

    /// Counts `job`'s answer and sends it (counted first: a client that reads its answer and
    /// asks for `status` sees it counted).
    pub fn answer(&mut self, mut job: Job, body: EventBody) {
        match &body {
            EventBody::Done { timings, .. } | EventBody::Intent { timings, .. } => {
                self.stats.served += 1;
                self.stats.last = Some(*timings);
            }
            _ => self.stats.failed += 1,
        }
        self.stats.metrics.record(job.transport(), op_of(job.request().prompt()), &body);
        job.send(body);
    }

    /// The share of time the engine may compute now (1.0 unless warm).
    pub fn duty(&self) -> f64 {
        if self.budget.level >= ThermalLevel::Warm {
            self.settings.budget.warm_duty_cycle
        } else {
            1.0
        }
    }
}
