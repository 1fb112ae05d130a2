//! The scheduling core against a fake model: priorities and preemption, deadlines,
//! cancellation, the hot-weather swap, idle unload, draining, refusals, and a panic on
//! the engine thread. No model files, no sockets: the fake says which model served a request,
//! and the events arrive on a client's queue as a transport would see them. Reloads and the
//! warm-up are in [`lifecycle`], several requests taking turns in [`turns`]; the fake and the
//! harness in [`fake`].

mod fake;
mod lifecycle;
mod turns;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use self::fake::*;
use super::core::Reload;
use super::*;
use qwenedge_api::{ErrorCode, Event, EventBody, GenerateSpec, Priority, Prompt, ThermalLevel};

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
