//! Several interactive requests in progress at once, taking turns: a short request between the
//! chunks of a long prompt, generations a few tokens each, one request per client and
//! `scheduler.max_sequences` in all, memory held by the requests in progress, a paused request
//! cancelled, and what `status` says of them.

use super::*;

/// The ids of the token events, in order, one letter each (the first letter of the id).
fn token_order(events: &[Event]) -> String {
    events.iter().filter(|e| matches!(e.body, EventBody::Token { .. })).filter_map(|e| e.id.as_deref()?.chars().next()).collect()
}

fn position(events: &[Event], id: &str, terminal: bool) -> usize {
    events
        .iter()
        .position(|e| e.id.as_deref() == Some(id) && (e.is_terminal() == terminal))
        .unwrap_or_else(|| panic!("no {} event of {id} in {events:?}", if terminal { "terminal" } else { "token" }))
}

fn streaming(edit: impl FnOnce(&mut qwenedge_config::Settings)) -> Harness {
    Harness::new(FakeLoader::default(), settings("/m/a", edit))
}

#[test]
fn a_short_request_is_answered_between_the_chunks_of_a_long_prompt() {
    let mut h = streaming(|_| {});
    let (long, short) = (h.new_client(), h.new_client());
    h.submit_from(&long, "long", "chunks:6", 2);
    assert_eq!(h.turn(Instant::now()), Some("start"), "the long prompt's first chunk");
    h.submit_from(&short, "short", "hi", 3);
    assert_eq!(h.turn(Instant::now()), Some("start"), "the newcomer starts after one chunk");
    assert_eq!(h.board.stats.sequences.in_progress, 2);
    h.run();
    let events = h.events();
    assert!(position(&events, "short", true) < position(&events, "long", false), "answered before the long prompt's first token");
    assert_eq!(text_of(&events, "short").matches('#').count(), 3);
    assert_eq!(text_of(&events, "long").matches('#').count(), 2, "the long request is whole");
    assert_eq!(h.board.stats.sequences, qwenedge_api::SequenceReport::default(), "nothing held once both ended");
}

#[test]
fn generations_in_progress_take_turns_a_few_tokens_each() {
    let mut h = streaming(|s| s.scheduler.turn_tokens = 2);
    let clients: Vec<Client> = (0..3).map(|_| h.new_client()).collect();
    for (client, id) in clients.iter().zip(["a", "b", "c"]) {
        h.submit_from(client, id, "hello", 8);
    }
    h.run();
    let events = h.events();
    assert_eq!(token_order(&events), "aabbcc".repeat(4), "two tokens a turn, round and round: {events:?}");
    for id in ["a", "b", "c"] {
        assert_eq!(text_of(&events, id), (1..=8).map(|n| format!("/m/a#{n} ")).collect::<String>(), "{id} is whole");
    }
}

#[test]
fn a_client_has_one_request_in_progress_and_max_sequences_hold_the_rest_in_the_queue() {
    let mut h = streaming(|s| s.scheduler.max_sequences = 2);
    let (a, b, c) = (h.new_client(), h.new_client(), h.new_client());
    h.submit_from(&a, "a1", "hello", 6);
    h.submit_from(&a, "a2", "hello", 6);
    h.submit_from(&b, "b1", "hello", 6);
    h.submit_from(&c, "c1", "hello", 6);
    let mut most = 0;
    while h.turn(Instant::now()).is_some() {
        most = most.max(h.board.stats.sequences.in_progress);
    }
    assert_eq!(most, 2, "at most scheduler.max_sequences in progress");
    let events = h.events();
    assert!(position(&events, "a1", true) < position(&events, "a2", false), "a client's requests run one after the other");
    assert!(position(&events, "c1", false) > position(&events, "a1", true).min(position(&events, "b1", true)), "c1 waited for a sequence");
    assert_eq!((h.board.stats.served, h.board.stats.failed), (4, 0));
}

#[test]
fn a_newcomer_waits_for_memory_held_by_the_requests_in_progress_instead_of_failing() {
    let mut h = streaming(|s| s.scheduler.turn_tokens = 1);
    h.board.budget.memory_room_mb = Some(1.5);
    let (a, b) = (h.new_client(), h.new_client());
    h.submit_from(&a, "a", "hello", 4);
    h.turn(Instant::now());
    h.submit_from(&b, "b", "hello", 4);
    h.run();
    let events = h.events();
    assert!(position(&events, "a", true) < position(&events, "b", false), "b started once a ended: {events:?}");
    assert_eq!((h.board.stats.served, h.board.stats.failed), (2, 0));
    // Alone, a request that does not fit is refused, naming what the others hold.
    h.board.budget.memory_room_mb = Some(0.5);
    h.submit_from(&a, "big", "hello", 4);
    h.run();
    assert_eq!(error_of(&h.events(), "big").0, ErrorCode::Memory);
}

#[test]
fn a_paused_request_is_reported_and_answered_at_once_when_cancelled() {
    let mut h = streaming(|s| s.scheduler.turn_tokens = 2);
    let (a, b) = (h.new_client(), h.new_client());
    h.submit_from(&a, "a", "chunks:8", 2);
    h.turn(Instant::now());
    h.submit_from(&b, "b", "hello", 20);
    for _ in 0..3 {
        h.turn(Instant::now());
    }
    // b had its turn (prompt and two tokens); a's next chunk runs now.
    h.turn(Instant::now());
    let s = h.board.stats.sequences;
    assert_eq!((s.in_progress, s.paused), (2, 1), "{s:?}");
    let states: Vec<_> = h.board.stats.running.iter().map(|r| (r.id.as_str(), r.state)).collect();
    assert_eq!(states, [("a", qwenedge_api::SequenceState::Running), ("b", qwenedge_api::SequenceState::Paused)]);
    assert_eq!(b.cancel("b"), Cancelled::Now);
    h.turn(Instant::now());
    let events = h.events();
    assert_eq!(error_of(&events, "b"), (ErrorCode::Cancelled, "cancelled".into()));
    assert_eq!(h.board.stats.sequences.in_progress, 1);
    h.run();
    assert!(matches!(terminal(&h.events(), "a"), EventBody::Done { .. }));
}
