//! The scheduling core: an I/O-free state machine over the waiting room ([`SchedulerState`], shared
//! with the transports under one lock) and the engine thread's own state ([`Core`]: the model,
//! the running requests). The thread loop in `thread.rs` calls [`Core::next`] under the lock
//! (what to do now: settle what must end, then pick work), [`Core::perform`] outside it (the
//! model's work) and [`Core::after`] under it again (counters, then the terminal events).
//!
//! Policy: interactive requests first, then background work — unless the device is warm or
//! hotter, when background work waits. Several interactive requests may be in progress, each
//! with its own sequence of state (one per client, `scheduler.max_sequences` in all); they take
//! turns (`turns`): a prompt chunk or a few tokens each, and when a turn ends a waiting request
//! of another client starts first. One background generation at a time, paused while any
//! interactive work is in progress or waiting. Model lifecycle happens only while nothing runs:
//! reloads (SIGHUP), the switch to the hot-weather model, caching the catalog prefix once
//! after a load (in chunks while idle; an intent request, which starts with that prefix, lets
//! it finish first), unloading when idle; a request that finds no model loads it first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

mod lifecycle;
mod run;
mod turns;

pub use super::board::{Reload, SchedulerState};
use super::job::Job;
use super::model::{Context, Loader, Model, Refusal};
use super::queue::Queued;
use qwenedge_api::{
    ErrorCode, EventBody, ModelReport, Phase, Priority, Prompt, RunningReport, SequenceReport, SequenceState, ThermalLevel,
};
use qwenedge_budget::BudgetState;
use qwenedge_config::{LoadSettings, Settings};
use qwenedge_intent::Catalog;

/// How long the engine thread waits without work before it checks deadlines again.
pub const IDLE_TICK: Duration = Duration::from_millis(250);

/// What the engine thread should do next.
#[derive(Debug)]
pub enum Next {
    /// This work, with what it needs to read.
    Run(Work, Box<WorkInputs>),
    /// Nothing now: wait for a wake-up or this long.
    Wait(Duration),
    /// Draining has finished.
    Exit,
}

/// One piece of work.
#[derive(Debug)]
pub enum Work {
    /// Step the running request at this index.
    Step(usize),
    /// Start a request (loading the model first when this says so).
    Start(Box<Job>, Option<Box<LoadSettings>>),
    /// Apply a configuration.
    Reload(Reload),
    /// Load another model directory (the thermal level wants it).
    Swap(Box<LoadSettings>),
    /// Load the model (a client asked, with none loaded).
    Load(Box<LoadSettings>),
    /// Free the model.
    Unload,
    /// Cache the catalog prefix.
    WarmUp,
    /// Hand back the memory the finished requests freed (nothing in progress or waiting).
    Tidy,
}

/// What the work reads, copied out of the board.
#[derive(Debug, Clone)]
pub struct WorkInputs {
    /// The settings.
    pub settings: Arc<Settings>,
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// The budget.
    pub budget: BudgetState,
}

#[derive(Debug)]
enum ModelChange {
    Loaded(Box<ModelReport>),
    Gone,
}

/// The outcome of [`Core::perform`], applied by [`Core::after`].
#[derive(Debug, Default)]
pub struct Ran {
    /// Time the model computed (what pacing is charged for).
    pub busy: Duration,
    /// The running request the pause after this work is charged to.
    pub charged: Option<u64>,
    answers: Vec<(Job, EventBody)>,
    model: Option<ModelChange>,
    applied: Option<Reload>,
    /// A request that cannot start yet (memory held by those in progress), back to the queue.
    requeue: Option<Job>,
}

struct Active<R> {
    seq: u64,
    job: Job,
    run: R,
    started: Instant,
    deadline: Option<Instant>,
    load_ms: f64,
    paced: Duration,
    /// Memory it was admitted for (MiB).
    need_mb: f64,
}

impl<R> Active<R> {
    /// Whether it is an interactive request (they take turns; a background one waits for them).
    fn interactive(&self) -> bool {
        self.job.request().priority() == Priority::Interactive
    }
}

/// The engine thread's state.
pub struct Core<L: Loader> {
    loader: L,
    model: Option<L::Model>,
    loaded: Option<LoadSettings>,
    active: Vec<Active<<L::Model as Model>::Running>>,
    next_seq: u64,
    warm_up_pending: bool,
    /// Failed tries of the warm-up since the model was loaded or reconfigured.
    warm_up_failures: u32,
    last_busy: Instant,
    pressure: bool,
    /// Why the last load failed (for the requests that find no model).
    last_error: Option<String>,
    /// Whose turn it is among the interactive requests in progress.
    turns: turns::Turns,
    /// The request the last step was for.
    last_stepped: Option<u64>,
    /// A request waits for memory held by requests in progress: no other starts while this
    /// many interactive ones (or more) are held.
    memory_wait: Option<usize>,
    /// A request ended since the memory was last handed back.
    untidy: bool,
}

impl<L: Loader> Core<L> {
    /// A core serving `model`, which was loaded with `loaded` (none: loaded when a request
    /// needs one).
    pub fn new(loader: L, model: Option<L::Model>, loaded: LoadSettings) -> Self {
        let loaded = model.as_ref().map(|_| loaded);
        Self {
            loader,
            model,
            loaded,
            active: Vec::new(),
            next_seq: 0,
            warm_up_pending: true,
            warm_up_failures: 0,
            last_busy: Instant::now(),
            pressure: false,
            last_error: None,
            turns: turns::Turns::default(),
            last_stepped: None,
            memory_wait: None,
            untidy: false,
        }
    }

    /// Settles what must end now, then picks the next work.
    pub fn next(&mut self, board: &mut SchedulerState, now: Instant) -> Next {
        self.settle(board, now);
        self.sync(board);
        let draining = board.phase == Phase::Draining;
        if draining && self.active.is_empty() && board.queue.is_empty() {
            board.stats.running.clear();
            return Next::Exit;
        }
        let snapshot = |b: &SchedulerState| {
            Box::new(WorkInputs { settings: Arc::clone(&b.settings), catalog: Arc::clone(&b.catalog), budget: b.budget.clone() })
        };
        if self.active.is_empty() && !draining {
            if let Some(reload) = board.reload.take() {
                if self.model.is_none() || board.settings.model.load_settings() != reload.settings.model.load_settings() {
                    board.phase = Phase::Loading;
                }
                return Next::Run(Work::Reload(reload), snapshot(board));
            }
            let wanted = wanted_model(board);
            if self.model.is_some() && self.loaded.as_ref() != Some(&wanted) {
                board.phase = Phase::Loading;
                return Next::Run(Work::Swap(Box::new(wanted)), snapshot(board));
            }
            if self.warm_up_pending && self.model.is_some() && (board.queue.is_empty() || self.intent_waits_for_warm_up(board)) {
                return Next::Run(Work::WarmUp, snapshot(board));
            }
            if self.model.is_none() && std::mem::take(&mut board.load_requested) {
                board.phase = Phase::Loading;
                return Next::Run(Work::Load(Box::new(wanted)), snapshot(board));
            }
            if self.untidy && board.queue.is_empty() && self.model.is_some() {
                self.untidy = false;
                return Next::Run(Work::Tidy, snapshot(board));
            }
            let idle_for = now.saturating_duration_since(self.last_busy);
            if self.model.is_some() && board.queue.is_empty() && board.idle_unload().is_some_and(|idle| idle_for >= idle) {
                return Next::Run(Work::Unload, snapshot(board));
            }
        }
        if let Some(work) = self.interactive_work(board) {
            return Next::Run(work, snapshot(board));
        }
        if board.budget.level < ThermalLevel::Warm {
            if let Some(i) = self.active.iter().position(|a| !a.interactive()) {
                return Next::Run(Work::Step(i), snapshot(board));
            }
            if let Some(job) = board.queue.pop(Priority::Background) {
                return Next::Run(self.start_work(board, job), snapshot(board));
            }
        }
        let wait = board.grace_until.map_or(IDLE_TICK, |t| t.saturating_duration_since(now).min(IDLE_TICK));
        Next::Wait(wait)
    }

    /// Starting `job`, loading the model first when none is loaded.
    fn start_work(&self, board: &mut SchedulerState, job: Job) -> Work {
        let load = self.model.is_none().then(|| Box::new(wanted_model(board)));
        if load.is_some() {
            board.phase = Phase::Loading;
        }
        Work::Start(Box::new(job), load)
    }

    /// The interactive work to do next: the request whose turn goes on; else, when its turn has
    /// ended, a waiting request (of a client with none in progress, while fewer than
    /// `scheduler.max_sequences` are held and none waits for memory); else the next request in
    /// progress in the round.
    fn interactive_work(&mut self, board: &mut SchedulerState) -> Option<Work> {
        let position = |core: &Self, seq: u64| core.active.iter().position(|a| a.seq == seq);
        if let Some(i) = self.turns.holder().and_then(|seq| position(self, seq)) {
            return Some(Work::Step(i));
        }
        let held = self.interactive_held();
        let room = held < board.settings.scheduler.max_sequences && self.memory_wait.is_none_or(|n| held < n);
        if room {
            let busy: Vec<u64> = self.active.iter().filter(|a| a.interactive()).map(|a| a.job.client()).collect();
            if let Some(job) = board.queue.pop_where(Priority::Interactive, |client| !busy.contains(&client)) {
                return Some(self.start_work(board, job));
            }
        }
        let interactive = self.active.iter().filter(|a| a.interactive()).map(|a| a.seq);
        let seq = self.turns.next(interactive)?;
        self.turns.give(seq, board.settings.scheduler.turn_tokens);
        position(self, seq).map(Work::Step)
    }

    /// True when the request that would start next is an intent request and the warm-up (the
    /// catalog prefix it starts with) has not failed yet: finishing the catalog's prefill, or
    /// restoring it from disk, answers it sooner than a cold prefill of its whole prompt, and
    /// leaves the catalog cached. Other requests run between the warm-up's chunks.
    fn intent_waits_for_warm_up(&self, board: &SchedulerState) -> bool {
        let next = board.queue.peek(Priority::Interactive).or_else(|| {
            let background_waits = board.budget.level >= ThermalLevel::Warm;
            (!background_waits).then(|| board.queue.peek(Priority::Background)).flatten()
        });
        self.warm_up_failures == 0 && next.is_some_and(|job| matches!(job.request().prompt(), Prompt::Intent { .. }))
    }

    /// Answers what must end now: queued requests that were cancelled, timed out, or wait
    /// while the daemon drains or the device is critically hot; running ones past the grace
    /// period or while critically hot.
    fn settle(&mut self, board: &mut SchedulerState, now: Instant) {
        let default_deadline = board.settings.scheduler.default_deadline_ms;
        let draining = board.phase == Phase::Draining;
        let critical = board.budget.level == ThermalLevel::Critical;
        let temp = board.budget.temperature_c.map_or(String::new(), |t| format!(" ({t:.1} °C)"));
        let ended = board
            .queue
            .take_where(|j| draining || critical || j.cancel().is_cancelled() || j.deadline(default_deadline).is_some_and(|d| now >= d));
        for job in ended {
            let body = if draining {
                EventBody::error(ErrorCode::ShuttingDown, "the daemon is shutting down")
            } else if critical {
                EventBody::error(ErrorCode::Thermal, format!("the device is critically hot{temp}"))
            } else if let Some(reason) = job.cancel().reason() {
                EventBody::error(ErrorCode::Cancelled, reason.message(true))
            } else {
                EventBody::error(ErrorCode::Timeout, "the deadline passed while the request was queued")
            };
            board.answer(job, body);
        }
        let stopped = self.stop_ended(now);
        if !stopped.is_empty() {
            for (job, body) in stopped {
                board.answer(job, body);
            }
            self.untidy = true;
            self.report_sequences(board);
        }
        let grace_over = draining && board.grace_until.is_some_and(|t| now >= t);
        if grace_over || critical {
            for a in self.active.drain(..) {
                let body = if grace_over {
                    EventBody::error(ErrorCode::ShuttingDown, "the daemon is shutting down")
                } else {
                    EventBody::error(ErrorCode::Thermal, format!("stopped: the device is critically hot{temp}"))
                };
                board.answer(a.job, body);
            }
        }
    }

    /// Puts the model's caches in or out of pressure mode when the budget's memory pressure
    /// changed, and publishes the cache counters.
    fn sync(&mut self, board: &mut SchedulerState) {
        let Some(model) = self.model.as_mut() else {
            board.stats.cache = None;
            return;
        };
        if board.budget.under_pressure != self.pressure {
            self.pressure = board.budget.under_pressure;
            if self.pressure {
                warn!("memory is under pressure: dropping cached conversation prefixes");
            }
            model.set_pressure(self.pressure);
        }
        board.stats.cache = model.cache();
    }

    /// Does `work` (outside the lock).
    pub fn perform(&mut self, work: Work, snap: &WorkInputs) -> Ran {
        let mut ran = Ran::default();
        match work {
            Work::Step(i) => self.step(i, snap, &mut ran),
            Work::Start(job, load) => {
                let mut load_ms = 0.0;
                if let Some(load) = load {
                    let began = Instant::now();
                    self.load(&load, &snap.settings, &mut ran);
                    load_ms = began.elapsed().as_secs_f64() * 1e3;
                }
                self.start(*job, snap, load_ms, &mut ran);
            }
            Work::Reload(reload) => self.reload(reload, snap, &mut ran),
            Work::Swap(load) => {
                info!(model = %load.path.display(), level = snap.budget.level.as_str(), "switching model for the thermal level");
                self.load(&load, &snap.settings, &mut ran);
            }
            Work::Load(load) => {
                info!(model = %load.path.display(), "loading the model as a client asked");
                self.load(&load, &snap.settings, &mut ran);
            }
            Work::Unload => {
                info!("unloading the model after being idle");
                self.model = None;
                self.loaded = None;
                ran.model = Some(ModelChange::Gone);
            }
            Work::WarmUp => {
                let began = Instant::now();
                self.warm_up(snap);
                ran.busy = began.elapsed();
            }
            Work::Tidy => {
                if let Some(model) = self.model.as_mut() {
                    model.release_memory();
                }
            }
        }
        ran
    }

    /// Adds a pause to the running request it was charged to.
    pub fn charge_pause(&mut self, seq: Option<u64>, slept: Duration) {
        if let Some(a) = self.active.iter_mut().find(|a| Some(a.seq) == seq) {
            a.paced += slept;
        }
    }

    /// Applies the outcome under the lock: settings, model state, counters, and then the
    /// terminal events (so a client that reads its answer and asks for `status` sees it
    /// counted).
    pub fn after(&mut self, board: &mut SchedulerState, ran: Ran) {
        if let Some(reload) = ran.applied {
            board.settings = reload.settings;
            board.catalog = reload.catalog;
        }
        match ran.model {
            Some(ModelChange::Loaded(report)) => {
                board.stats.model = *report;
                board.stats.loaded = true;
            }
            Some(ModelChange::Gone) => board.stats.loaded = false,
            None => {}
        }
        if board.phase == Phase::Loading {
            board.phase = Phase::Ready;
        }
        self.untidy |= !ran.answers.is_empty();
        if let Some(job) = ran.requeue {
            board.queue.unpop(job);
        }
        for (job, body) in ran.answers {
            board.answer(job, body);
        }
        self.report_sequences(board);
        board.stats.cache = self.model.as_ref().and_then(Model::cache);
        self.last_busy = Instant::now();
        board.stats.last_busy = self.last_busy;
    }
}

impl<L: Loader> Core<L> {
    /// Publishes the requests in progress and the state they hold.
    fn report_sequences(&self, board: &mut SchedulerState) {
        let state = |a: &Active<_>| if self.last_stepped == Some(a.seq) { SequenceState::Running } else { SequenceState::Paused };
        board.stats.running = self
            .active
            .iter()
            .map(|a| RunningReport { id: a.job.id().to_string(), priority: a.job.request().priority(), state: state(a) })
            .collect();
        let paused = board.stats.running.iter().filter(|r| r.state == SequenceState::Paused).count();
        let held_mb = self.model.as_ref().map_or(0.0, |m| self.active.iter().fold(0.0, |sum, a| sum + m.held_mb(&a.run)));
        board.stats.sequences = SequenceReport { in_progress: self.active.len(), paused, held_mb };
    }
}

/// The model directory the budget wants: the hot-weather model while hot, else the configured.
fn wanted_model(board: &SchedulerState) -> LoadSettings {
    let mut load = board.settings.model.load_settings();
    if let (Some(hot), true) = (&board.settings.budget.hot_model, board.budget.level >= ThermalLevel::Hot) {
        load.path = hot.clone();
    }
    load
}

/// `max_tokens` for `job`: its own, else the default; never above the limit; capped while hot.
fn max_tokens(job: &Job, snap: &WorkInputs) -> usize {
    let s = &snap.settings.scheduler;
    let mut n = job.request().max_tokens().unwrap_or(s.default_max_tokens).min(s.max_tokens_limit);
    if snap.budget.level >= ThermalLevel::Hot {
        n = n.min(snap.settings.budget.hot_max_tokens);
    }
    n
}

fn context(snap: &WorkInputs, max_tokens: usize) -> Context<'_> {
    Context { settings: &snap.settings, catalog: &snap.catalog, max_tokens }
}

fn answer_error(ran: &mut Ran, job: Job, refused: Refusal) {
    ran.answers.push(failed(job, refused));
}

/// `job`'s error answer, logged.
fn failed(job: Job, refused: Refusal) -> (Job, EventBody) {
    info!(code = ?refused.code, message = %refused.message, "failed");
    (job, EventBody::error(refused.code, refused.message))
}

fn log_done(body: &EventBody) {
    match body {
        EventBody::Done { finish_reason, usage, timings, .. } => info!(
            finish = ?finish_reason,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            ttft_ms = timings.ttft_ms as u64,
            decode_tok_s = timings.decode_tok_s as u64,
            "done"
        ),
        EventBody::Intent { recognized, intent, usage, timings, .. } => info!(
            recognized,
            intent = intent.as_ref().map_or("", |i| i.name.as_str()),
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            ttft_ms = timings.ttft_ms as u64,
            "done"
        ),
        _ => {}
    }
}
