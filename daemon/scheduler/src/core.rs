//! The scheduling core: an I/O-free state machine over the waiting room ([`SchedulerState`], shared
//! with the transports under one lock) and the engine thread's own state ([`Core`]: the model,
//! the running requests). The thread loop in `thread.rs` calls [`Core::next`] under the lock
//! (what to do now: settle what must end, then pick work), [`Core::perform`] outside it (the
//! model's work) and [`Core::after`] under it again (counters, then the terminal events).
//!
//! Policy: a running interactive generation, else a waiting interactive one, else background
//! work — unless the device is warm or hotter, when background work waits. At most one
//! generation per class is in flight, so a paused background generation holds one sequence of
//! state while an interactive request runs. Model lifecycle happens only while nothing runs:
//! reloads (SIGHUP), the switch to the hot-weather model, caching the catalog prefix once
//! after a load (in chunks while idle; an intent request, which starts with that prefix, lets
//! it finish first), unloading when idle; a request that finds no model loads it first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, info_span, warn};

mod lifecycle;

pub use super::board::{Reload, SchedulerState};
use super::job::Job;
use super::model::{Clock, Context, Loader, Model, Progress, Refusal};
use qwenedge_api::{ErrorCode, EventBody, ModelReport, Phase, Priority, Prompt, RunningReport, ThermalLevel};
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
}

struct Active<R> {
    seq: u64,
    job: Job,
    run: R,
    started: Instant,
    deadline: Option<Instant>,
    load_ms: f64,
    paced: Duration,
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
            let idle_for = now.saturating_duration_since(self.last_busy);
            if self.model.is_some() && board.queue.is_empty() && board.idle_unload().is_some_and(|idle| idle_for >= idle) {
                return Next::Run(Work::Unload, snapshot(board));
            }
        }
        for priority in [Priority::Interactive, Priority::Background] {
            if priority == Priority::Background && board.budget.level >= ThermalLevel::Warm {
                break;
            }
            if let Some(i) = self.active.iter().position(|a| a.job.request().priority() == priority) {
                return Next::Run(Work::Step(i), snapshot(board));
            }
            if let Some(job) = board.queue.pop(priority) {
                let load = self.model.is_none().then(|| Box::new(wanted_model(board)));
                if load.is_some() {
                    board.phase = Phase::Loading;
                }
                return Next::Run(Work::Start(Box::new(job), load), snapshot(board));
            }
        }
        let wait = board.grace_until.map_or(IDLE_TICK, |t| t.saturating_duration_since(now).min(IDLE_TICK));
        Next::Wait(wait)
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
    pub fn perform(&mut self, work: Work, snap: &WorkInputs, now: Instant) -> Ran {
        let mut ran = Ran::default();
        match work {
            Work::Step(i) => self.step(i, snap, now, &mut ran),
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
        }
        ran
    }

    fn start(&mut self, job: Job, snap: &WorkInputs, load_ms: f64, ran: &mut Ran) {
        let _span = info_span!("request", id = %job.id()).entered();
        let Some(model) = self.model.as_mut() else {
            let why = self.last_error.as_deref().unwrap_or("see the daemon log");
            let msg = format!("no model is loaded (loading it failed: {why}); the next request tries again");
            return answer_error(ran, job, Refusal::new(ErrorCode::ModelError, msg));
        };
        let ctx = context(snap, max_tokens(&job, snap));
        let prepared = match model.prepare(job.request(), &ctx) {
            Ok(p) => p,
            Err(refused) => return answer_error(ran, job, refused),
        };
        if let Some(room) = snap.budget.memory_room_mb.filter(|room| prepared.need_mb > *room) {
            let message = format!(
                "this request needs about {:.0} MiB for {} tokens of state, but only {room:.0} MiB is free; ask for fewer max_tokens or a shorter prompt",
                prepared.need_mb, prepared.tokens
            );
            return answer_error(ran, job, Refusal::new(ErrorCode::Memory, message));
        }
        match model.start(prepared.job) {
            Ok(run) => {
                let deadline = job.deadline(snap.settings.scheduler.default_deadline_ms);
                self.next_seq += 1;
                let started = Instant::now();
                self.active.push(Active { seq: self.next_seq, job, run, started, deadline, load_ms, paced: Duration::ZERO });
                self.step(self.active.len() - 1, snap, started, ran);
            }
            Err(refused) => answer_error(ran, job, refused),
        }
    }

    fn step(&mut self, i: usize, snap: &WorkInputs, now: Instant, ran: &mut Ran) {
        let Some(model) = self.model.as_mut() else {
            let a = self.active.remove(i);
            return answer_error(ran, a.job, Refusal::new(ErrorCode::ModelError, "no model is loaded"));
        };
        let a = &mut self.active[i];
        let _span = info_span!("request", id = %a.job.id()).entered();
        ran.charged = Some(a.seq);
        let outcome = if let Some(reason) = a.job.cancel().reason() {
            Err(Refusal::new(ErrorCode::Cancelled, reason.message(false)))
        } else if a.deadline.is_some_and(|d| now >= d) {
            let n = model.generated(&a.run);
            Err(Refusal::new(ErrorCode::Timeout, format!("the deadline passed after {n} generated tokens")))
        } else {
            let began = Instant::now();
            let progress = model.step(&mut a.run);
            ran.busy = began.elapsed();
            match progress {
                // An interactive prompt is not paced: pacing starts with its first token, so a
                // warm device still answers a voice request promptly.
                Ok(Progress::Prefilled) => {
                    if a.job.request().priority() == Priority::Interactive {
                        ran.busy = Duration::ZERO;
                    }
                    Ok(false)
                }
                Ok(Progress::Token(piece)) => {
                    if a.job.request().stream() && !piece.is_empty() {
                        // A dropped token means the client is gone or not reading; its
                        // requests are cancelled already and the next step sees it.
                        a.job.send(EventBody::Token { text: piece });
                    }
                    Ok(false)
                }
                Ok(Progress::Finished(tail)) => {
                    if a.job.request().stream() && !tail.is_empty() {
                        a.job.send(EventBody::Token { text: tail });
                    }
                    Ok(true)
                }
                Err(error) => Err(Refusal::new(ErrorCode::ModelError, error.to_string())),
            }
        };
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                let a = self.active.remove(i);
                let clock = Clock { received: a.job.received(), started: a.started, load_ms: a.load_ms, paced: a.paced };
                match model.finish(a.run, &clock, &context(snap, 0)) {
                    Ok(body) => {
                        log_done(&body);
                        ran.answers.push((a.job, body));
                    }
                    Err(error) => answer_error(ran, a.job, Refusal::new(ErrorCode::ModelError, error.to_string())),
                }
            }
            Err(refused) => {
                let a = self.active.remove(i);
                answer_error(ran, a.job, refused);
            }
        }
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
        for (job, body) in ran.answers {
            board.answer(job, body);
        }
        board.stats.running =
            self.active.iter().map(|a| RunningReport { id: a.job.id().to_string(), priority: a.job.request().priority() }).collect();
        board.stats.cache = self.model.as_ref().and_then(Model::cache);
        self.last_busy = Instant::now();
        board.stats.last_busy = self.last_busy;
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
    info!(code = ?refused.code, message = %refused.message, "failed");
    ran.answers.push((job, EventBody::error(refused.code, refused.message)));
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
