//! The fake model the scheduling core's tests drive, its loader, and the harness that turns the
//! core by hand (one turn of the engine thread at a time) and collects the events a client
//! would see.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::core::{Core, Next, SchedulerState, Work};
use crate::*;
use qwenedge_api::{
    BackendReport, CacheReport, ErrorCode, Event, EventBody, FinishReason, GenerateSpec, ModelReport, Priority, Prompt, Usage,
};

/// Models that loaded, by path, in order.
pub(super) type Loads = Arc<Mutex<Vec<PathBuf>>>;

/// Holds the fake's warm-up (the engine thread) until the test opens it: the test knows when the
/// warm-up has begun and decides when it ends, by events rather than by time.
#[derive(Clone, Default)]
pub(super) struct Gate(Arc<(Mutex<(bool, bool)>, Condvar)>);

impl Gate {
    /// On the engine thread: says the warm-up began, then waits until the gate is opened.
    pub(super) fn pass(&self) {
        let (state, changed) = &*self.0;
        let mut s = state.lock().unwrap();
        s.0 = true;
        changed.notify_all();
        while !s.1 {
            s = changed.wait(s).unwrap();
        }
    }

    /// Waits until the engine thread is held at the gate.
    pub(super) fn wait_entered(&self) {
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

    pub(super) fn open(&self) {
        let (state, changed) = &*self.0;
        state.lock().unwrap().1 = true;
        changed.notify_all();
    }
}

pub(super) struct Fake {
    pub(super) path: PathBuf,
    pub(super) need_mb: f64,
    pub(super) warm_up_gate: Option<Gate>,
    /// Warm-up chunks still to do.
    pub(super) warm_left: usize,
    /// Warm-up tries still to fail.
    pub(super) warm_fails: Arc<Mutex<usize>>,
    pub(super) panic_at_step: Option<usize>,
    pub(super) steps: usize,
    pub(super) pressure: Arc<Mutex<Vec<bool>>>,
    pub(super) changed_on_disk: Arc<Mutex<Option<String>>>,
}

pub(super) struct FakeRun {
    /// Prompt chunks still to prefill (a prompt `chunks:N` has N, any other one).
    pub(super) chunks_left: usize,
    pub(super) prefilled: bool,
    pub(super) made: usize,
    pub(super) max: usize,
    pub(super) text: String,
}

/// The fake's failures.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct FakeError(String);

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
            prefill_placement: None,
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
pub(super) struct FakeLoader {
    pub(super) loads: Loads,
    pub(super) broken: Arc<Mutex<Vec<PathBuf>>>,
    /// Models whose files check but which fail to load (in the runtime).
    pub(super) fail_to_load: Vec<PathBuf>,
    /// Holds every warm-up until the test opens it.
    pub(super) warm_up_gate: Option<Gate>,
    /// Chunks of each model's warm-up (0 counts as 1).
    pub(super) warm_up_chunks: usize,
    /// Warm-up tries that fail, in all models made.
    pub(super) warm_fails: Arc<Mutex<usize>>,
    pub(super) panic_at_step: Option<usize>,
    pub(super) pressure: Arc<Mutex<Vec<bool>>>,
    /// What every model made says changed in its files.
    pub(super) changed_on_disk: Arc<Mutex<Option<String>>>,
}

impl FakeLoader {
    pub(super) fn fake(&self, path: PathBuf) -> Fake {
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

pub(super) fn settings(path: &str, edit: impl FnOnce(&mut qwenedge_config::Settings)) -> Arc<qwenedge_config::Settings> {
    let mut s = qwenedge_config::Settings::default();
    s.model.path = Some(path.into());
    edit(&mut s);
    Arc::new(s)
}

pub(super) struct Harness {
    pub(super) board: SchedulerState,
    pub(super) core: Core<FakeLoader>,
    pub(super) loader: FakeLoader,
    pub(super) client: Client,
    pub(super) out: Arc<Outbound>,
    pub(super) _requests: Requests,
}

impl Harness {
    pub(super) fn new(loader: FakeLoader, settings: Arc<qwenedge_config::Settings>) -> Self {
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

    pub(super) fn submit(&mut self, id: &str, priority: Priority, max_tokens: usize, deadline_ms: Option<u64>) {
        self.submit_prompt(id, Prompt::Text("hello".into()), priority, max_tokens, deadline_ms);
    }

    pub(super) fn submit_prompt(&mut self, id: &str, prompt: Prompt, priority: Priority, max_tokens: usize, deadline_ms: Option<u64>) {
        queue_job(&mut self.board, &self.client, id, prompt, priority, max_tokens, deadline_ms);
    }

    /// Submits an interactive, streamed request from `client` (another client than the
    /// harness's own takes turns with it).
    pub(super) fn submit_from(&mut self, client: &Client, id: &str, prompt: &str, max_tokens: usize) {
        let spec = GenerateSpec { max_tokens: Some(max_tokens), stream: true, ..GenerateSpec::new(Prompt::Text(prompt.into())) };
        let request = qwenedge_api::GenerateRequest::new(spec, &qwenedge_api::Limits { max_tokens: 100 }).unwrap();
        self.board.queue.push(Job::new(client.begin(id, id).unwrap(), request));
    }

    /// Another client, whose events arrive on the same queue as the harness's own.
    pub(super) fn new_client(&self) -> Client {
        let policy = ClientPolicy { remember: 8, reject_recent: false, unread_key: "test", transport: "test" };
        self._requests.client(policy, Arc::clone(&self.out))
    }

    /// One turn of the engine thread at `now`: the kind of work done, `None` when there was
    /// none, `exit` when draining finished.
    pub(super) fn turn(&mut self, now: Instant) -> Option<&'static str> {
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
    pub(super) fn run(&mut self) -> Vec<&'static str> {
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

    pub(super) fn events(&self) -> Vec<Event> {
        self.out.take().into_iter().map(|d| d.event).collect()
    }

    pub(super) fn loads(&self) -> Vec<PathBuf> {
        self.loader.loads.lock().unwrap().clone()
    }
}

pub(super) fn queue_job(
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
