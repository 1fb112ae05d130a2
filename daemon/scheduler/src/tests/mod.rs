//! The scheduling core against a fake model: priorities and preemption, deadlines,
//! cancellation, the hot-weather swap, idle unload, draining, refusals, and a panic on
//! the engine thread. No model files, no sockets: the fake says which model served a request,
//! and the events arrive on a client's queue as a transport would see them. Reloads and the
//! warm-up are in [`lifecycle`].

mod lifecycle;
mod turns;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::core::{Core, Next, Reload, SchedulerState, Work};
use super::*;
use qwenedge_api::{
    BackendReport, CacheReport, ErrorCode, Event, EventBody, FinishReason, GenerateSpec, ModelReport, Priority, Prompt, ThermalLevel, Usage,
};

/// Models that loaded, by path, in order.
type Loads = Arc<Mutex<Vec<PathBuf>>>;

/// Holds the fake's warm-up (the engine thread) until the test opens it: the test knows when the
/// warm-up has begun and decides when it ends, by events rather than by time.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<(bool, bool)>, Condvar)>);

impl Gate {
    /// On the engine thread: says the warm-up began, then waits until the gate is opened.
    fn pass(&self) {
        let (state, changed) = &*self.0;
        let mut s = state.lock().unwrap();
        s.0 = true;
        changed.notify_all();
        while !s.1 {
            s = changed.wait(s).unwrap();
        }
    }

    /// Waits until the engine thread is held at the gate.
    fn wait_entered(&self) {
        let wait = crate::test_wait::Wait::new("the engine thread to begin the fake's warm-up", Duration::from_secs(30));
        let (state, changed) = &*self.0;
        let mut s = state.lock().unwrap();
        while !s.0 {
            if wait.expired() {
                wait.fail("");
            }
            s = changed.wait_timeout(s, wait.left()).unwrap().0;
        }
    }

    fn open(&self) {
        let (state, changed) = &*self.0;
        state.lock().unwrap().1 = true;
        changed.notify_all();
    }
}

struct Fake {
    path: PathBuf,
    need_mb: f64,
    warm_up_gate: Option<Gate>,
    /// Warm-up chunks still to do.
    warm_left: usize,
    /// Warm-up tries still to fail.
    warm_fails: Arc<Mutex<usize>>,
    panic_at_step: Option<usize>,
    steps: usize,
    pressure: Arc<Mutex<Vec<bool>>>,
    changed_on_disk: Arc<Mutex<Option<String>>>,
}

struct FakeRun {
    /// Prompt chunks still to prefill (a prompt `chunks:N` has N, any other one).
    chunks_left: usize,
    prefilled: bool,
    made: usize,
    max: usize,
    text: String,
}

/// The fake's failures.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FakeError(String);

impl Model for Fake {
    type Prepared = (usize, usize);
    type Running = FakeRun;
    type Error = FakeError;

    fn prepare(&mut self, request: &qwenedge_api::GenerateRequest, ctx: &Context<'_>) -> Result<Prepared<(usize, usize)>, Refusal> {
        if request.prompt() == &Prompt::Text("refuse".into()) {
            return Err(Refusal::new(ErrorCode::BadRequest, "the fake refuses"));
        }
        let chunks = match request.prompt() {
            Prompt::Text(t) => t.strip_prefix("chunks:").and_then(|n| n.parse().ok()).unwrap_or(1),
            _ => 1,
        };
        Ok(Prepared { job: (ctx.max_tokens, chunks), tokens: ctx.max_tokens + 1, need_mb: self.need_mb })
    }

    fn start(&mut self, (max, chunks): (usize, usize)) -> Result<FakeRun, Refusal> {
        Ok(FakeRun { chunks_left: chunks, prefilled: false, made: 0, max, text: String::new() })
    }

    fn step(&mut self, run: &mut FakeRun) -> Result<Progress, FakeError> {
        self.steps += 1;
        if self.panic_at_step == Some(self.steps) {
            panic!("the fake model broke");
        }
        if !run.prefilled {
            run.chunks_left = run.chunks_left.saturating_sub(1);
            run.prefilled = run.chunks_left == 0;
            return Ok(Progress::Prefilled);
        }
        if run.made == run.max {
            return Ok(Progress::Finished(String::new()));
        }
        run.made += 1;
        let piece = format!("{}#{} ", self.path.display(), run.made);
        run.text.push_str(&piece);
        Ok(Progress::Token(piece))
    }

    fn generated(&self, run: &FakeRun) -> usize {
        run.made
    }

    fn prompt_done(&self, run: &FakeRun) -> bool {
        run.prefilled
    }

    fn held_mb(&self, run: &FakeRun) -> f64 {
        self.need_mb * run.made as f64 / run.max.max(1) as f64
    }

    fn finish(&mut self, run: FakeRun, clock: &Clock, _ctx: &Context<'_>) -> Result<EventBody, FakeError> {
        let usage = Usage { prompt_tokens: 1, completion_tokens: run.made, cached_tokens: 0 };
        Ok(EventBody::Done { text: run.text, finish_reason: FinishReason::Length, usage, timings: clock.timings(0.0, 0.0, 0.0) })
    }

    fn warm_up(&mut self, _ctx: &Context<'_>) -> Result<bool, FakeError> {
        if let Some(gate) = &self.warm_up_gate {
            gate.pass();
        }
        let mut fails = self.warm_fails.lock().unwrap();
        if *fails > 0 {
            *fails -= 1;
            return Err(FakeError("the fake's runtime failed".into()));
        }
        self.warm_left = self.warm_left.saturating_sub(1);
        Ok(self.warm_left > 0)
    }

    fn release_memory(&mut self) {}

    fn reconfigure(&mut self, _settings: &qwenedge_config::Settings) {}

    fn set_pressure(&mut self, on: bool) {
        self.pressure.lock().unwrap().push(on);
    }

    fn report(&self, _settings: &qwenedge_config::Settings) -> ModelReport {
        let backend = BackendReport {
            name: "fake".into(),
            version: "0".into(),
            library: None,
            execution_provider: "cpu".into(),
            providers: Vec::new(),
            threads: 1,
            chosen: String::new(),
            placement: None,
        };
        ModelReport {
            id: None,
            path: self.path.clone(),
            model_type: "fake".into(),
            context_length: 64,
            vocab_size: 1,
            layers: 1,
            full_attention_layers: 1,
            weights_mb: 0,
            hidden_size: 8,
            quantization: "fp32".into(),
            layout: "onnxruntime-genai".into(),
            chat_template: false,
            backend,
        }
    }

    fn cache(&self) -> Option<CacheReport> {
        None
    }

    fn files_changed(&self) -> Option<String> {
        self.changed_on_disk.lock().unwrap().clone()
    }
}

#[derive(Default, Clone)]
struct FakeLoader {
    loads: Loads,
    broken: Arc<Mutex<Vec<PathBuf>>>,
    /// Models whose files check but which fail to load (in the runtime).
    fail_to_load: Vec<PathBuf>,
    /// Holds every warm-up until the test opens it.
    warm_up_gate: Option<Gate>,
    /// Chunks of each model's warm-up (0 counts as 1).
    warm_up_chunks: usize,
    /// Warm-up tries that fail, in all models made.
    warm_fails: Arc<Mutex<usize>>,
    panic_at_step: Option<usize>,
    pressure: Arc<Mutex<Vec<bool>>>,
    /// What every model made says changed in its files.
    changed_on_disk: Arc<Mutex<Option<String>>>,
}

impl FakeLoader {
    fn fake(&self, path: PathBuf) -> Fake {
        Fake {
            path,
            need_mb: 1.0,
            warm_up_gate: self.warm_up_gate.clone(),
            warm_left: self.warm_up_chunks.max(1),
            warm_fails: Arc::clone(&self.warm_fails),
            panic_at_step: self.panic_at_step,
            steps: 0,
            pressure: Arc::clone(&self.pressure),
            changed_on_disk: Arc::clone(&self.changed_on_disk),
        }
    }
}

impl Loader for FakeLoader {
    type Model = Fake;
    type Error = FakeError;

    fn load(&mut self, load: &qwenedge_config::LoadSettings, _settings: &qwenedge_config::Settings) -> Result<Fake, FakeError> {
        self.check(load)?;
        if self.fail_to_load.contains(&load.path) {
            return Err(FakeError(format!("{}: the runtime failed", load.path.display())));
        }
        self.loads.lock().unwrap().push(load.path.clone());
        *self.changed_on_disk.lock().unwrap() = None;
        Ok(self.fake(load.path.clone()))
    }

    fn check(&mut self, load: &qwenedge_config::LoadSettings) -> Result<(), FakeError> {
        match self.broken.lock().unwrap().contains(&load.path) {
            true => Err(FakeError(format!("{}: broken", load.path.display()))),
            false => Ok(()),
        }
    }
}

fn settings(path: &str, edit: impl FnOnce(&mut qwenedge_config::Settings)) -> Arc<qwenedge_config::Settings> {
    let mut s = qwenedge_config::Settings::default();
    s.model.path = Some(path.into());
    edit(&mut s);
    Arc::new(s)
}

struct Harness {
    board: SchedulerState,
    core: Core<FakeLoader>,
    loader: FakeLoader,
    client: Client,
    out: Arc<Outbound>,
    _requests: Requests,
}

impl Harness {
    fn new(loader: FakeLoader, settings: Arc<qwenedge_config::Settings>) -> Self {
        let catalog = Arc::new(qwenedge_intent::Catalog::builtin().unwrap());
        let load = settings.model.load_settings();
        let model = loader.fake(load.path.clone());
        let report = model.report(&settings);
        let requests = Requests::default();
        let out = Arc::new(Outbound::new(1 << 20));
        let client =
            requests.client(ClientPolicy { remember: 8, reject_recent: false, unread_key: "test", transport: "test" }, Arc::clone(&out));
        let mut h = Self {
            board: SchedulerState::new(settings, catalog, report),
            core: Core::new(loader.clone(), Some(model), load),
            loader,
            client,
            out,
            _requests: requests,
        };
        assert_eq!(h.turn(Instant::now()), Some("warm_up"), "a new model is warmed up while idle");
        h
    }

    fn submit(&mut self, id: &str, priority: Priority, max_tokens: usize, deadline_ms: Option<u64>) {
        self.submit_prompt(id, Prompt::Text("hello".into()), priority, max_tokens, deadline_ms);
    }

    fn submit_prompt(&mut self, id: &str, prompt: Prompt, priority: Priority, max_tokens: usize, deadline_ms: Option<u64>) {
        queue_job(&mut self.board, &self.client, id, prompt, priority, max_tokens, deadline_ms);
    }

    /// Submits an interactive, streamed request from `client` (another client than the
    /// harness's own takes turns with it).
    fn submit_from(&mut self, client: &Client, id: &str, prompt: &str, max_tokens: usize) {
        let spec = GenerateSpec { max_tokens: Some(max_tokens), stream: true, ..GenerateSpec::new(Prompt::Text(prompt.into())) };
        let request = qwenedge_api::GenerateRequest::new(spec, &qwenedge_api::Limits { max_tokens: 100 }).unwrap();
        self.board.queue.push(Job::new(client.begin(id, id).unwrap(), request));
    }

    /// Another client, whose events arrive on the same queue as the harness's own.
    fn new_client(&self) -> Client {
        let policy = ClientPolicy { remember: 8, reject_recent: false, unread_key: "test", transport: "test" };
        self._requests.client(policy, Arc::clone(&self.out))
    }

    /// One turn of the engine thread at `now`: the kind of work done, `None` when there was
    /// none, `exit` when draining finished.
    fn turn(&mut self, now: Instant) -> Option<&'static str> {
        match self.core.next(&mut self.board, now) {
            Next::Exit => Some("exit"),
            Next::Wait(_) => None,
            Next::Run(work, snap) => {
                let kind = match &work {
                    Work::Step(_) => "step",
                    Work::Start(_, None) => "start",
                    Work::Start(_, Some(_)) => "load_and_start",
                    Work::Reload(_) => "reload",
                    Work::Swap(_) => "swap",
                    Work::Load(_) => "load",
                    Work::Unload => "unload",
                    Work::WarmUp => "warm_up",
                    Work::Tidy => "tidy",
                };
                let ran = self.core.perform(work, &snap);
                self.core.after(&mut self.board, ran);
                Some(kind)
            }
        }
    }

    /// Turns until there is nothing to do; returns the kinds of work done.
    fn run(&mut self) -> Vec<&'static str> {
        let mut done = Vec::new();
        while let Some(kind) = self.turn(Instant::now()) {
            done.push(kind);
            if kind == "exit" {
                break;
            }
            assert!(done.len() < 1000, "the core does not settle: {done:?}");
        }
        done
    }

    fn events(&self) -> Vec<Event> {
        self.out.take().into_iter().map(|d| d.event).collect()
    }

    fn loads(&self) -> Vec<PathBuf> {
        self.loader.loads.lock().unwrap().clone()
    }
}

fn queue_job(
    board: &mut SchedulerState,
    client: &Client,
    id: &str,
    prompt: Prompt,
    priority: Priority,
    max_tokens: usize,
    deadline_ms: Option<u64>,
) {
    // An intent request takes its length from the grammar.
    let max_tokens = (!matches!(prompt, Prompt::Intent { .. })).then_some(max_tokens);
    let spec = GenerateSpec { max_tokens, priority, deadline_ms, ..GenerateSpec::new(prompt) };
    let request = qwenedge_api::GenerateRequest::new(spec, &qwenedge_api::Limits { max_tokens: 100 }).unwrap();
    let ticket = client.begin(id, id).unwrap();
    board.queue.push(Job::new(ticket, request));
}

/// The terminal event of `id` among `events`.
fn terminal<'a>(events: &'a [Event], id: &str) -> &'a EventBody {
    let mut ends = events.iter().filter(|e| e.id.as_deref() == Some(id) && e.is_terminal());
    let end = ends.next().unwrap_or_else(|| panic!("{id} has no terminal event in {events:?}"));
    assert!(ends.next().is_none(), "{id} has one terminal event");
    &end.body
}

fn error_of(events: &[Event], id: &str) -> (ErrorCode, String) {
    match terminal(events, id) {
        EventBody::Error { code, message } => (*code, message.clone()),
        other => panic!("{id}: expected an error, got {other:?}"),
    }
}

fn text_of(events: &[Event], id: &str) -> String {
    match terminal(events, id) {
        EventBody::Done { text, .. } => text.clone(),
        other => panic!("{id}: expected done, got {other:?}"),
    }
}

#[test]
fn an_interactive_request_overtakes_a_running_background_one_at_the_next_token() {
    let mut h = Harness::new(FakeLoader::default(), settings("/m/a", |_| {}));
    h.submit("bg", Priority::Background, 6, None);
    for _ in 0..3 {
        h.turn(Instant::now());
    }
    h.submit("fg", Priority::Interactive, 2, None);
    h.run();
    let events = h.events();
    let order: Vec<&str> = events.iter().map(|e| e.id.as_deref().unwrap_or("")).collect();
    let first_fg = order.iter().position(|&i| i == "fg").unwrap();
    let fg_done = events.iter().position(|e| e.id.as_deref() == Some("fg") && e.is_terminal()).unwrap();
    let bg_done = events.iter().position(|e| e.id.as_deref() == Some("bg") && e.is_terminal()).unwrap();
    assert!(order[..first_fg].contains(&"bg"), "the background request had started: {order:?}");
    assert!(order[first_fg..=fg_done].iter().all(|&i| i == "fg"), "nothing of bg between fg's first token and its end: {order:?}");
    assert!(fg_done < bg_done, "{order:?}");
    assert_eq!(text_of(&events, "bg").matches('#').count(), 6, "the background request resumes where it was");
    assert_eq!((h.board.stats.served, h.board.stats.failed), (2, 0));
}

#[test]
fn a_warm_device_defers_background_work_and_a_critical_one_stops_everything() {
    let mut h = Harness::new(FakeLoader::default(), settings("/m/a", |_| {}));
    h.board.budget.level = ThermalLevel::Warm;
    h.submit("bg", Priority::Background, 2, None);
    assert_eq!(h.run(), Vec::<&str>::new(), "background work waits while warm");
    h.submit("fg", Priority::Interactive, 2, None);
    h.run();
    assert!(matches!(terminal(&h.events(), "fg"), EventBody::Done { .. }));
    h.submit("fg2", Priority::Interactive, 50, None);
    h.turn(Instant::now());
    h.board.budget = qwenedge_budget::BudgetState { level: ThermalLevel::Critical, temperature_c: Some(96.0), ..Default::default() };
    h.run();
    let events = h.events();
    assert_eq!(error_of(&events, "bg"), (ErrorCode::Thermal, "the device is critically hot (96.0 °C)".into()));
    let (code, message) = error_of(&events, "fg2");
    assert_eq!(code, ErrorCode::Thermal);
    assert!(message.starts_with("stopped"), "{message}");
}

#[test]
fn deadlines_end_queued_and_running_requests() {
    let mut h = Harness::new(FakeLoader::default(), settings("/m/a", |_| {}));
    // The first turns at a time taken before the requests were received: before their deadline
    // however long this thread takes.
    let before = Instant::now();
    h.submit("running", Priority::Interactive, 50, Some(1000));
    h.submit("queued", Priority::Interactive, 50, Some(1000));
    for _ in 0..4 {
        h.turn(before);
    }
    h.turn(Instant::now() + Duration::from_secs(2));
    h.turn(Instant::now() + Duration::from_secs(2));
    let events = h.events();
    assert_eq!(error_of(&events, "queued"), (ErrorCode::Timeout, "the deadline passed while the request was queued".into()));
    let (code, message) = error_of(&events, "running");
    assert_eq!(code, ErrorCode::Timeout);
    assert!(message.starts_with("the deadline passed after 3 generated tokens"), "{message}");
}

#[test]
fn cancel_while_queued_and_while_running() {
    let mut h = Harness::new(FakeLoader::default(), settings("/m/a", |_| {}));
    h.submit("running", Priority::Interactive, 50, None);
    h.submit("queued", Priority::Interactive, 50, None);
    h.turn(Instant::now());
    h.turn(Instant::now());
    assert_eq!(h.client.cancel("queued"), Cancelled::Now);
    h.turn(Instant::now());
    assert_eq!(error_of(&h.events(), "queued"), (ErrorCode::Cancelled, "cancelled while queued".into()));
    assert_eq!(h.client.cancel("running"), Cancelled::Now);
    h.run();
    let events = h.events();
    assert_eq!(error_of(&events, "running"), (ErrorCode::Cancelled, "cancelled".into()));
    assert_eq!(h.client.cancel("running"), Cancelled::AlreadyFinished);
    assert_eq!(h.board.stats.failed, 2);
    assert!(h.board.stats.running.is_empty());
}

#[test]
fn a_hot_device_swaps_to_the_hot_model_between_requests_and_back() {
    let mut h = Harness::new(FakeLoader::default(), settings("/m/big", |s| s.budget.hot_model = Some("/m/small".into())));
    h.submit("one", Priority::Interactive, 3, None);
    h.turn(Instant::now());
    h.board.budget.level = ThermalLevel::Hot;
    h.submit("two", Priority::Interactive, 3, None);
    let work = h.run();
    let events = h.events();
    assert!(text_of(&events, "one").starts_with("/m/big#1"));
    assert!(text_of(&events, "two").starts_with("/m/small#1"), "{work:?}");
    h.board.budget.level = ThermalLevel::Normal;
    h.run();
    assert_eq!(h.loads(), [PathBuf::from("/m/small"), PathBuf::from("/m/big")]);
}

#[test]
fn an_idle_model_is_unloaded_and_the_next_request_loads_it() {
    let before = Instant::now();
    let mut h = Harness::new(FakeLoader::default(), settings("/m/a", |s| s.budget.idle_unload_s = 1));
    assert_eq!(h.turn(before), None, "not idle long enough yet");
    assert_eq!(h.turn(Instant::now() + Duration::from_secs(2)), Some("unload"));
    assert!(!h.board.stats.loaded);
    h.submit("wake", Priority::Interactive, 2, None);
    let work = h.run();
    assert_eq!(work[0], "load_and_start");
    assert!(matches!(terminal(&h.events(), "wake"), EventBody::Done { .. }));
    assert!(h.board.stats.loaded);
    assert_eq!(h.loads(), [PathBuf::from("/m/a")]);
}

#[test]
fn a_clients_keep_alive_overrides_the_idle_setting_and_a_load_request_loads() {
    let mut h = Harness::new(FakeLoader::default(), settings("/m/a", |s| s.budget.idle_unload_s = 1));
    h.board.keep_alive = Some(KeepAlive::Forever);
    assert_eq!(h.turn(Instant::now() + Duration::from_secs(3600)), None, "kept loaded");
    h.board.keep_alive = Some(KeepAlive::For(Duration::ZERO));
    h.submit("last", Priority::Interactive, 2, None);
    let work = h.run();
    assert_eq!(work.last(), Some(&"unload"), "unloaded as soon as it is idle: {work:?}");
    assert!(!h.board.stats.loaded);
    h.board.keep_alive = None;
    h.board.load_requested = true;
    assert_eq!(h.turn(Instant::now()), Some("load"));
    assert!(h.board.stats.loaded);
    assert_eq!(h.loads(), [PathBuf::from("/m/a")]);
    assert_eq!(h.board.stats.metrics.requests.values().sum::<u64>(), 1, "the request is counted");
}

#[test]
fn draining_answers_the_queue_lets_running_requests_finish_within_the_grace_period() {
    let mut h = Harness::new(FakeLoader::default(), settings("/m/a", |_| {}));
    h.submit("running", Priority::Interactive, 3, None);
    h.submit("queued", Priority::Background, 3, None);
    h.turn(Instant::now());
    h.board.phase = qwenedge_api::Phase::Draining;
    h.board.grace_until = Some(Instant::now() + Duration::from_secs(60));
    let work = h.run();
    assert_eq!(work.last(), Some(&"exit"));
    let events = h.events();
    assert_eq!(error_of(&events, "queued"), (ErrorCode::ShuttingDown, "the daemon is shutting down".into()));
    assert!(matches!(terminal(&events, "running"), EventBody::Done { .. }), "it finished within the grace period");

    let mut h = Harness::new(FakeLoader::default(), settings("/m/a", |_| {}));
    h.submit("long", Priority::Interactive, 90, None);
    h.turn(Instant::now());
    h.board.phase = qwenedge_api::Phase::Draining;
    h.board.grace_until = Some(Instant::now());
    assert_eq!(h.turn(Instant::now() + Duration::from_millis(1)), Some("exit"));
    assert_eq!(error_of(&h.events(), "long").0, ErrorCode::ShuttingDown, "stopped once the grace period is over");
}

#[test]
fn requests_the_model_or_the_memory_budget_refuse_get_their_reason() {
    let mut h = Harness::new(FakeLoader::default(), settings("/m/a", |_| {}));
    h.submit_prompt("refused", Prompt::Text("refuse".into()), Priority::Interactive, 2, None);
    h.board.budget.memory_room_mb = Some(0.5);
    h.submit("big", Priority::Interactive, 7, None);
    h.run();
    let events = h.events();
    assert_eq!(error_of(&events, "refused"), (ErrorCode::BadRequest, "the fake refuses".into()));
    let (code, message) = error_of(&events, "big");
    assert_eq!(code, ErrorCode::Memory);
    assert!(message.contains("needs about 1 MiB for 8 tokens") && message.contains("0 MiB is free"), "{message}");
    assert_eq!(h.board.stats.failed, 2);
}

#[test]
fn memory_pressure_reaches_the_model_once_per_change() {
    let loader = FakeLoader::default();
    let mut h = Harness::new(loader.clone(), settings("/m/a", |_| {}));
    h.board.budget.under_pressure = true;
    h.run();
    h.run();
    h.board.budget.under_pressure = false;
    h.run();
    assert_eq!(*loader.pressure.lock().unwrap(), [true, false]);
}

#[test]
fn a_panic_on_the_engine_thread_answers_every_open_request_and_reports_the_failure() {
    // The warm-up holds the engine thread while all three requests are queued.
    let gate = Gate::default();
    let loader = FakeLoader { panic_at_step: Some(3), warm_up_gate: Some(gate.clone()), ..Default::default() };
    let s = settings("/m/a", |_| {});
    let model = loader.fake("/m/a".into());
    let catalog = Arc::new(qwenedge_intent::Catalog::builtin().unwrap());
    let (scheduler, mut stopped) = Scheduler::start(loader, Some(model), s.model.load_settings(), s, catalog, LocalStage::off()).unwrap();
    gate.wait_entered();
    let requests = Requests::default();
    let out = Arc::new(Outbound::new(1 << 20));
    let client =
        requests.client(ClientPolicy { remember: 8, reject_recent: false, unread_key: "test", transport: "test" }, Arc::clone(&out));
    for (id, priority) in [("a", Priority::Interactive), ("b", Priority::Interactive), ("c", Priority::Background)] {
        let spec = GenerateSpec { max_tokens: Some(50), priority, ..GenerateSpec::new(Prompt::Text("x".into())) };
        let request = qwenedge_api::GenerateRequest::new(spec, &qwenedge_api::Limits { max_tokens: 100 }).unwrap();
        scheduler.submit(Job::new(client.begin(id, id).unwrap(), request)).unwrap();
    }
    gate.open();
    let wait = crate::test_wait::Wait::new("the engine thread to stop after the fake's panic", Duration::from_secs(30));
    let outcome = loop {
        match stopped.try_recv() {
            Ok(outcome) => break outcome,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => wait.tick(String::new),
            Err(e) => panic!("the scheduler dropped its stop report: {e}"),
        }
    };
    assert!(outcome.unwrap_err().contains("the fake model broke"));
    let events: Vec<Event> = out.take().into_iter().map(|d| d.event).collect();
    for id in ["a", "b", "c"] {
        assert_eq!(error_of(&events, id).0, ErrorCode::ModelError, "{id}: {events:?}");
    }
    assert_eq!(scheduler.phase(), qwenedge_api::Phase::Stopped);
    let spec = GenerateSpec::new(Prompt::Text("late".into()));
    let request = qwenedge_api::GenerateRequest::new(spec, &qwenedge_api::Limits { max_tokens: 100 }).unwrap();
    let rejected = scheduler.submit(Job::new(client.begin("late", "late").unwrap(), request)).unwrap_err();
    assert_eq!(rejected.refusal.code, ErrorCode::ShuttingDown, "nothing is admitted after the failure");
}
