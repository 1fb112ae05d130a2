//! The model's life cycle against the fake: reloads (waiting for the running request, to
//! broken files, to a model the runtime refuses, for files changed on disk), a request that
//! finds no model, and the warm-up (in chunks, tried again after a failure).

use super::*;

#[test]
fn a_reload_waits_for_the_running_request_and_the_queued_ones_get_the_new_model() {
    let mut h = Harness::new(FakeLoader::default(), settings("/m/a", |_| {}));
    h.submit("first", Priority::Interactive, 3, None);
    h.turn(Instant::now());
    let catalog = Arc::clone(&h.board.catalog);
    h.board.reload = Some(Reload { settings: settings("/m/b", |_| {}), catalog });
    h.submit("second", Priority::Interactive, 3, None);
    let work = h.run();
    let events = h.events();
    assert!(text_of(&events, "first").starts_with("/m/a#1"), "the running request finishes on the old model");
    assert!(text_of(&events, "second").starts_with("/m/b#1"), "the queued one is served by the new model");
    let reload_at = work.iter().position(|&k| k == "reload").unwrap();
    assert!(work[..reload_at].contains(&"step") && work[reload_at..].contains(&"start"), "{work:?}");
    assert_eq!(h.loads(), [PathBuf::from("/m/b")]);
    assert_eq!(h.board.stats.model.path, PathBuf::from("/m/b"));
    assert_eq!(h.board.phase, qwenedge_api::Phase::Ready);

    // What loading reads is compared whole: a new backend alone loads the model again.
    let catalog = Arc::clone(&h.board.catalog);
    let tract = settings("/m/b", |s| s.model.backend = serde_json::from_str("\"tract\"").unwrap());
    h.board.reload = Some(Reload { settings: tract, catalog: Arc::clone(&catalog) });
    h.run();
    assert_eq!(h.loads().len(), 2, "changing model.backend reloads");
    let cache_only = settings("/m/b", |s| {
        s.model.backend = serde_json::from_str("\"tract\"").unwrap();
        s.cache.max_mb = 1;
    });
    h.board.reload = Some(Reload { settings: cache_only, catalog });
    h.run();
    assert_eq!(h.loads().len(), 2, "a setting loading does not read is applied without a reload");
    assert_eq!(h.board.settings.cache.max_mb, 1);
}

#[test]
fn a_reload_to_a_model_whose_files_are_broken_keeps_the_loaded_one() {
    let loader = FakeLoader { broken: Arc::new(Mutex::new(vec![PathBuf::from("/m/broken")])), ..Default::default() };
    let mut h = Harness::new(loader, settings("/m/a", |_| {}));
    let catalog = Arc::clone(&h.board.catalog);
    h.board.reload = Some(Reload { settings: settings("/m/broken", |s| s.scheduler.queue_capacity = 3), catalog });
    h.submit("after", Priority::Interactive, 2, None);
    h.run();
    assert!(text_of(&h.events(), "after").starts_with("/m/a#1"));
    assert!(h.loads().is_empty(), "the loaded model was never freed: {:?}", h.loads());
    assert_eq!(h.board.settings.model.path.as_deref(), Some(std::path::Path::new("/m/a")));
    assert_eq!(h.board.settings.scheduler.queue_capacity, 3, "the rest of the new configuration applies");
    assert!(h.board.stats.loaded);
}

#[test]
fn a_reload_to_a_model_the_runtime_refuses_loads_the_previous_one_again() {
    let loader = FakeLoader { fail_to_load: vec![PathBuf::from("/m/bad")], ..Default::default() };
    let mut h = Harness::new(loader, settings("/m/a", |_| {}));
    let catalog = Arc::clone(&h.board.catalog);
    h.board.reload = Some(Reload { settings: settings("/m/bad", |_| {}), catalog });
    h.submit("after", Priority::Interactive, 2, None);
    h.run();
    assert!(text_of(&h.events(), "after").starts_with("/m/a#1"));
    assert_eq!(h.loads(), [PathBuf::from("/m/a")], "the previous model was loaded again");
    assert_eq!(h.board.settings.model.path.as_deref(), Some(std::path::Path::new("/m/a")));
}

#[test]
fn a_reload_loads_files_that_changed_on_disk_and_keeps_the_model_when_they_are_gone() {
    let loader = FakeLoader::default();
    let changed = Arc::clone(&loader.changed_on_disk);
    let mut h = Harness::new(loader, settings("/m/a", |_| {}));
    let catalog = Arc::clone(&h.board.catalog);
    // Same settings, nothing changed: no load.
    h.board.reload = Some(Reload { settings: settings("/m/a", |_| {}), catalog: Arc::clone(&catalog) });
    h.run();
    assert!(h.loads().is_empty());
    // The files were replaced: the same path is loaded again.
    *changed.lock().unwrap() = Some("model.onnx was replaced or changed".into());
    h.board.reload = Some(Reload { settings: settings("/m/a", |_| {}), catalog: Arc::clone(&catalog) });
    h.run();
    assert_eq!(h.loads(), [PathBuf::from("/m/a")]);
    // The directory is gone: the check fails and the model in memory keeps serving.
    h.loader.broken.lock().unwrap().push(PathBuf::from("/m/a"));
    *changed.lock().unwrap() = Some("/m/a can no longer be read".into());
    h.board.reload = Some(Reload { settings: settings("/m/a", |_| {}), catalog });
    h.submit("after", Priority::Interactive, 2, None);
    h.run();
    assert_eq!(h.loads(), [PathBuf::from("/m/a")], "not freed");
    assert!(text_of(&h.events(), "after").starts_with("/m/a#1"));
}

#[test]
fn a_request_without_a_model_is_told_why_loading_failed() {
    // Neither the new model nor, after it, the previous one loads in the runtime.
    let loader = FakeLoader { fail_to_load: vec![PathBuf::from("/m/a"), PathBuf::from("/m/bad")], ..Default::default() };
    let mut h = Harness::new(loader, settings("/m/a", |_| {}));
    let catalog = Arc::clone(&h.board.catalog);
    h.board.reload = Some(Reload { settings: settings("/m/bad", |_| {}), catalog });
    h.submit("one", Priority::Interactive, 2, None);
    h.run();
    let events = h.events();
    let end = format!("{:?}", terminal(&events, "one"));
    assert!(end.contains("ModelError") && end.contains("/m/a: the runtime failed"), "{end}");
}

#[test]
fn the_warm_up_runs_in_chunks_and_a_request_runs_between_them() {
    let loader = FakeLoader { warm_up_chunks: 4, ..Default::default() };
    let mut h = Harness::new(loader, settings("/m/a", |_| {}));
    assert_eq!(h.turn(Instant::now()), Some("warm_up"), "the second chunk");
    h.submit("a", Priority::Interactive, 3, None);
    let done = h.run();
    let start = done.iter().position(|k| *k == "start").unwrap();
    let warm: Vec<usize> = done.iter().enumerate().filter(|(_, k)| **k == "warm_up").map(|(i, _)| i).collect();
    assert_eq!(warm.len(), 2, "the two chunks left, after the request: {done:?}");
    assert!(warm.iter().all(|&i| i > start), "the request ran before the warm-up went on: {done:?}");
    assert!(matches!(terminal(&h.events(), "a"), EventBody::Done { .. }));
    assert!(h.run().is_empty(), "the warm-up is over");
}

#[test]
fn an_intent_request_lets_the_warm_up_finish_first_and_a_failed_one_does_not_hold_it() {
    let loader = FakeLoader { warm_up_chunks: 4, ..Default::default() };
    let mut h = Harness::new(loader, settings("/m/a", |_| {}));
    let intent = || Prompt::Intent { text: "turn on the light".into(), filter: None, place: Default::default() };
    h.submit_prompt("i", intent(), Priority::Interactive, 3, None);
    let done = h.run();
    assert_eq!(&done[..3], ["warm_up"; 3], "the catalog prefix it starts with is finished first: {done:?}");
    assert!(matches!(terminal(&h.events(), "i"), EventBody::Done { .. }));

    // A chat request first: it runs between the chunks; the intent behind it waits for the rest.
    let mut h = Harness::new(FakeLoader { warm_up_chunks: 4, ..Default::default() }, settings("/m/a", |_| {}));
    h.submit("chat", Priority::Interactive, 2, None);
    h.submit_prompt("i", intent(), Priority::Interactive, 2, None);
    let done = h.run();
    assert_eq!(done[0], "start", "{done:?}");
    let starts: Vec<usize> = done.iter().enumerate().filter(|(_, k)| **k == "start").map(|(i, _)| i).collect();
    let warm: Vec<usize> = done.iter().enumerate().filter(|(_, k)| **k == "warm_up").map(|(i, _)| i).collect();
    assert_eq!(warm.len(), 3, "{done:?}");
    assert!(warm.iter().all(|&w| w < starts[1]), "the intent request started after the warm-up: {done:?}");

    // After a failed try the warm-up waits for idle time again.
    let loader = FakeLoader { warm_up_chunks: 2, warm_fails: Arc::new(Mutex::new(1)), ..Default::default() };
    let mut h = Harness::new(loader, settings("/m/a", |_| {}));
    h.submit_prompt("i", intent(), Priority::Interactive, 2, None);
    let done = h.run();
    assert_eq!(done[0], "start", "{done:?}");
    assert!(done.contains(&"warm_up"), "{done:?}");
}

#[test]
fn a_failed_warm_up_is_tried_again_then_waits_for_the_next_reload() {
    let loader = FakeLoader { warm_fails: Arc::new(Mutex::new(2)), ..Default::default() };
    let mut h = Harness::new(loader, settings("/m/a", |_| {}));
    assert_eq!(h.run(), vec!["warm_up"; 2], "the two failures, then the warm-up that works");
    assert!(h.run().is_empty());

    let fails = Arc::new(Mutex::new(5));
    let loader = FakeLoader { warm_fails: Arc::clone(&fails), ..Default::default() };
    let mut h = Harness::new(loader, settings("/m/a", |_| {}));
    assert_eq!(h.run(), vec!["warm_up"; 2], "three tries in all (the harness made the first)");
    assert_eq!(*fails.lock().unwrap(), 2);
    h.submit("a", Priority::Interactive, 3, None);
    h.run();
    assert!(matches!(terminal(&h.events(), "a"), EventBody::Done { .. }), "requests are answered meanwhile");
    let catalog = Arc::clone(&h.board.catalog);
    h.board.reload = Some(Reload { settings: settings("/m/a", |_| {}), catalog });
    let after = h.run();
    assert_eq!(after.iter().filter(|k| **k == "warm_up").count(), 3, "a reload tries again: {after:?}");
    assert_eq!(*fails.lock().unwrap(), 0);
}
