//! The outbox state machine: order, window, re-sends with the same `seq`, merging, retained
//! values, and the bound.

use super::*;
use qwenedge_api::ErrorCode;
use serde_json::Value;

fn key(id: &str) -> StreamKey {
    StreamKey { topic: format!("r/{id}"), id: id.into() }
}

fn token(id: &str, text: &str) -> Message {
    let event = Event { id: Some(id.into()), body: EventBody::Token { text: text.into() } };
    Message {
        topic: format!("r/{id}"),
        correlation: None,
        retain: false,
        replaceable: false,
        body: Body::Event { event: Box::new(event), stream: Some(key(id)) },
    }
}

fn end(id: &str) -> Message {
    let event = Event::error(Some(id.into()), ErrorCode::Cancelled, "x");
    Message {
        topic: format!("r/{id}"),
        correlation: Some(Bytes::from_static(b"c")),
        retain: false,
        replaceable: false,
        body: Body::Event { event: Box::new(event), stream: Some(key(id)) },
    }
}

fn json(p: &Publication) -> Value {
    serde_json::from_slice(&p.payload).unwrap()
}

fn drain(o: &mut Outbox) -> Vec<Publication> {
    let mut out = Vec::new();
    while let Some((_, p)) = o.next_publication() {
        out.push(p);
    }
    out
}

#[test]
fn delivered_in_order_and_removed_on_ack() {
    let mut o = Outbox::new(8);
    o.push(token("a", "x"));
    o.push(end("a"));
    o.push(Message::raw("t", b"raw".to_vec()));
    assert!(o.next_publication().is_none(), "nothing is handed out while disconnected");
    o.connected();
    let out = drain(&mut o);
    assert_eq!(out.iter().map(|p| p.topic.as_str()).collect::<Vec<_>>(), ["r/a", "r/a", "t"]);
    assert_eq!((json(&out[0])["seq"].as_u64(), json(&out[1])["seq"].as_u64()), (Some(0), Some(1)));
    assert_eq!(out[1].correlation.as_deref(), Some(&b"c"[..]));
    assert_eq!(out[2].payload, b"raw");
    for pkid in [5, 6, 7] {
        assert!(o.published(pkid));
    }
    assert!(!o.published(8), "no handed publication left");
    let now = Instant::now();
    assert!(o.acked(6, now));
    assert!(!o.acked(6, now), "acknowledged once");
    assert_eq!(o.len(), 2);
    assert!(o.acked(5, now) && o.acked(7, now));
    assert!(o.is_empty());
}

#[test]
fn the_window_bounds_what_is_in_flight() {
    let mut o = Outbox::new(2);
    o.connected();
    for i in 0..5 {
        o.push(Message::raw(format!("t{i}"), vec![]));
    }
    assert_eq!(drain(&mut o).len(), 2);
    o.published(1);
    o.published(2);
    assert!(o.next_publication().is_none());
    o.acked(1, Instant::now());
    assert_eq!(drain(&mut o).iter().map(|p| p.topic.clone()).collect::<Vec<_>>(), ["t2"]);
}

#[test]
fn a_reconnect_resends_everything_unacknowledged_in_order_with_the_same_seq() {
    let mut o = Outbox::new(16);
    o.connected();
    o.push(token("a", "one"));
    o.push(token("b", "uno"));
    let first = drain(&mut o);
    o.published(1);
    o.published(2);
    let t0 = Instant::now();
    o.acked(1, t0);
    o.push(token("a", "two"));
    o.next_publication();
    o.disconnected(t0 + REPLAY + Duration::from_millis(1));
    o.push(token("a", "three"));
    o.push(token("a", "four"));
    o.push(end("a"));
    o.connected();
    let again = drain(&mut o);
    let seen: Vec<(String, u64, String)> = again
        .iter()
        .map(|p| {
            let v = json(p);
            (v["id"].as_str().unwrap().into(), v["seq"].as_u64().unwrap(), v["text"].as_str().unwrap_or("<end>").into())
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("b".into(), 0, "uno".into()),
            ("a".into(), 1, "two".into()),
            ("a".into(), 2, "threefour".into()),
            ("a".into(), 3, "<end>".into())
        ]
    );
    assert_eq!(again[0].payload, first[1].payload, "a re-sent event is byte-identical");
}

#[test]
fn request_events_acknowledged_just_before_a_loss_are_sent_again() {
    let mut o = Outbox::new(16);
    o.connected();
    o.push(token("a", "one"));
    o.push(Message::raw("hermes/x", b"h".to_vec()));
    let mut first = drain(&mut o);
    o.push(token("a", "two"));
    first.extend(drain(&mut o));
    for pkid in 1..=3 {
        o.published(pkid);
    }
    let t0 = Instant::now();
    o.acked(1, t0);
    o.acked(2, t0);
    o.disconnected(t0 + Duration::from_secs(1));
    o.connected();
    let again = drain(&mut o);
    assert_eq!(again.iter().map(|p| p.payload.clone()).collect::<Vec<_>>(), [first[0].payload.clone(), first[2].payload.clone()]);
    for pkid in 4..=5 {
        o.published(pkid);
        o.acked(pkid, t0 + Duration::from_secs(1));
    }
    o.disconnected(t0 + Duration::from_secs(4));
    o.connected();
    assert!(o.next_publication().is_none(), "old acknowledgements are not replayed");
    assert!(o.is_empty());
}

#[test]
fn waiting_tokens_merge_but_sent_ones_do_not() {
    let mut o = Outbox::new(16);
    for t in ["a", "b", "c"] {
        o.push(token("x", t));
    }
    assert_eq!(o.len(), 1);
    o.connected();
    let p = drain(&mut o);
    assert_eq!(json(&p[0])["text"], "abc");
    o.push(token("x", "d"));
    assert_eq!(o.len(), 2, "the handed token is not modified");
}

#[test]
fn retained_values_replace_their_waiting_predecessor() {
    let mut o = Outbox::new(16);
    o.push(Message::retained("s", b"1".to_vec()));
    o.push(Message::retained("s", b"2".to_vec()));
    o.push(Message::retained("other", b"x".to_vec()));
    o.connected();
    let p = drain(&mut o);
    assert_eq!(p.iter().map(|p| p.payload.clone()).collect::<Vec<_>>(), [b"2".to_vec(), b"x".to_vec()]);
    assert!(p.iter().all(|p| p.retain));
    o.push(Message::retained("s", b"3".to_vec()));
    assert_eq!(o.len(), 3, "one in flight is kept until acknowledged");
}

#[test]
fn a_refused_publication_waits_again() {
    let mut o = Outbox::new(4);
    o.connected();
    o.push(Message::raw("t", vec![]));
    let (no, _) = o.next_publication().unwrap();
    o.unhand(no);
    assert!(!o.published(1), "nothing handed");
    assert!(o.next_publication().is_some());
}

#[test]
fn a_stalled_broker_drops_the_oldest_waiting_messages_past_the_bound() {
    let mut o = Outbox::bounded(1, 600);
    o.connected();
    o.push(Message::raw("first", vec![b'x'; 100]));
    assert!(o.next_publication().is_some(), "one is handed out and never acknowledged");
    let mut over = Vec::new();
    for i in 0..6 {
        over.push(o.push(Message::raw(format!("t{i}"), vec![b'y'; 100])));
    }
    assert!(o.bytes() <= 600, "{}", o.bytes());
    assert_eq!(over.iter().filter(|p| p.over_first).count(), 1, "the stall is reported once");
    assert!(over.iter().map(|p| p.dropped).sum::<usize>() >= 1);
    o.published(1);
    o.acked(1, Instant::now());
    let rest: Vec<String> = drain_acked(&mut o);
    assert_eq!(rest.last().map(String::as_str), Some("t5"), "the newest messages are kept: {rest:?}");
    assert!(!rest.contains(&"t0".to_string()), "the oldest waiting message went first: {rest:?}");
    let big = "z".repeat(500);
    for _ in 0..3 {
        o.push(token("s", &big));
    }
    assert!(o.bytes() <= 600, "merged tokens count too: {}", o.bytes());
}

fn drain_acked(o: &mut Outbox) -> Vec<String> {
    let mut topics = Vec::new();
    let mut pkid = 100;
    while let Some((_, p)) = o.next_publication() {
        topics.push(p.topic);
        pkid += 1;
        o.published(pkid);
        o.acked(pkid, Instant::now());
    }
    topics
}
