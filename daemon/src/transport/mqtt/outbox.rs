//! The outbox: every message the daemon publishes waits here until the broker acknowledges it
//! (QoS 1 PUBACK). rumqttc forgets unacknowledged publishes when a reconnect finds no stored
//! session, so the daemon keeps its own copy and re-sends after every reconnect, in the order
//! the messages were made (so a request's events stay in order).
//!
//! The state machine has no I/O: the session hands out [`Publication`]s (at most `window` in
//! flight), reports rumqttc's `Outgoing::Publish(pkid)` (the handed publications get packet ids
//! in the order they were handed) and `PubAck(pkid)`, and resets everything in flight on
//! disconnect. Each request event gets a `seq` (0, 1, 2… per request) when it is first handed
//! out and keeps it on re-sends, so a client can drop the duplicates QoS 1 allows. Token events
//! never handed out yet are merged (text appended) while they wait, and a retained "latest
//! value" message replaces its waiting predecessor, so an outage costs memory per request, not
//! per token.
//!
//! A broker may acknowledge a message before it has saved or forwarded it (Mosquitto saves
//! its database periodically), so a broker killed at the wrong moment loses messages it has
//! already acknowledged. Request events acknowledged shortly before a connection is lost
//! ([`REPLAY`]) are therefore sent again after the reconnect, with their original `seq`.
//! Other messages are not: status and discovery are refreshed on connect anyway, and Hermes
//! answers have no `seq` to recognise a repeat by.
//!
//! The outbox is bounded (`mqtt.max_outbox_bytes`): when the broker stops taking messages and
//! more than the bound waits, [`Outbox::push`] says so once per stall (the session then
//! cancels the running MQTT requests), and the oldest waiting messages are dropped first until
//! the rest fits; messages already handed to the client stay.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::api::{Event, EventBody};

/// A request's event stream: its reply topic and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamKey {
    /// Where its events go.
    pub topic: String,
    /// The request id.
    pub id: String,
}

/// What is published.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A request event; `stream` is `None` for one-off answers (`status`, a refused request),
    /// which get `seq` 0.
    Event {
        /// The event.
        event: Box<Event>,
        /// Its stream, for `seq` numbering and merging.
        stream: Option<StreamKey>,
    },
    /// A payload made elsewhere (status, discovery, Hermes).
    Raw(Vec<u8>),
}

/// A message to publish (QoS 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Topic.
    pub topic: String,
    /// MQTT 5 correlation data.
    pub correlation: Option<Bytes>,
    /// Retained.
    pub retain: bool,
    /// A newer message to the same topic replaces this one while it waits.
    pub replaceable: bool,
    /// Payload.
    pub body: Body,
}

impl Message {
    /// A retained "latest value" message.
    pub fn retained(topic: impl Into<String>, payload: Vec<u8>) -> Self {
        Self { topic: topic.into(), correlation: None, retain: true, replaceable: true, body: Body::Raw(payload) }
    }

    /// A plain message.
    pub fn raw(topic: impl Into<String>, payload: Vec<u8>) -> Self {
        Self { topic: topic.into(), correlation: None, retain: false, replaceable: false, body: Body::Raw(payload) }
    }
}

/// One publish ready for the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// Topic.
    pub topic: String,
    /// Bytes on the wire.
    pub payload: Vec<u8>,
    /// Retained.
    pub retain: bool,
    /// MQTT 5 correlation data.
    pub correlation: Option<Bytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Handed,
    Sent(u16),
}

#[derive(Debug)]
struct Entry {
    no: u64,
    msg: Message,
    seq: Option<u32>,
    state: State,
    bytes: usize,
}

/// What [`Outbox::push`] did beyond queueing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pushed {
    /// More than the bound waits; true only for the first push of a stall.
    pub over_first: bool,
    /// Oldest waiting messages dropped to make room.
    pub dropped: usize,
}

fn message_bytes(msg: &Message) -> usize {
    let body = match &msg.body {
        Body::Raw(bytes) => bytes.len(),
        Body::Event { event, .. } => event.approx_len() + 12,
    };
    msg.topic.len() + msg.correlation.as_ref().map_or(0, Bytes::len) + body
}

/// How long after its acknowledgement a request event is still re-sent when the connection
/// is lost.
pub const REPLAY: Duration = Duration::from_secs(2);

/// Unacknowledged messages, oldest first.
#[derive(Debug)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    next_no: u64,
    window: usize,
    connected: bool,
    /// Entry numbers handed to the client, waiting for their packet id.
    handed: VecDeque<u64>,
    /// Packet id → entry number.
    sent: HashMap<u16, u64>,
    /// Next `seq` per stream.
    seqs: HashMap<StreamKey, u32>,
    /// The newest entry of each stream (for merging tokens).
    last_of: HashMap<StreamKey, u64>,
    /// Recently acknowledged request events, with when, for re-sending after a loss.
    replay: VecDeque<(Instant, Entry)>,
    /// Bytes of the entries.
    bytes: usize,
    /// The bound on `bytes`.
    cap: usize,
    /// Over the bound since the last time it was under half of it.
    over: bool,
}

impl Outbox {
    /// An outbox with at most `window` publications in flight and no bound on what waits.
    pub fn new(window: usize) -> Self {
        Self::bounded(window, usize::MAX)
    }

    /// An outbox with at most `window` publications in flight and `cap_bytes` waiting.
    pub fn bounded(window: usize, cap_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            next_no: 0,
            window: window.max(1),
            connected: false,
            handed: VecDeque::new(),
            sent: HashMap::new(),
            seqs: HashMap::new(),
            last_of: HashMap::new(),
            replay: VecDeque::new(),
            bytes: 0,
            cap: cap_bytes.max(1),
            over: false,
        }
    }

    /// Bytes waiting or in flight.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops the oldest waiting messages until what is left fits the bound.
    fn enforce(&mut self) -> Pushed {
        let mut pushed = Pushed::default();
        if self.bytes <= self.cap {
            if self.bytes <= self.cap / 2 {
                self.over = false;
            }
            return pushed;
        }
        pushed.over_first = !self.over;
        self.over = true;
        while self.bytes > self.cap {
            let Some(i) = self.entries.iter().position(|e| e.state == State::Waiting) else { break };
            if let Some(e) = self.entries.remove(i) {
                self.bytes -= e.bytes;
                self.last_of.retain(|_, no| *no != e.no);
                pushed.dropped += 1;
            }
        }
        pushed
    }

    /// Messages not yet acknowledged.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing left to deliver.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn index(&self, no: u64) -> Option<usize> {
        self.entries.binary_search_by_key(&no, |e| e.no).ok()
    }

    /// Adds a message; see [`Pushed`] for what the bound made of it.
    pub fn push(&mut self, msg: Message) -> Pushed {
        if msg.replaceable {
            let bytes = &mut self.bytes;
            self.entries.retain(|e| {
                let replaced = e.state == State::Waiting && e.msg.replaceable && e.msg.topic == msg.topic;
                if replaced {
                    *bytes -= e.bytes;
                }
                !replaced
            });
        }
        if let Body::Event { event, stream: Some(key) } = &msg.body {
            if let EventBody::Token { text } = &event.body {
                if let Some(i) = self.last_of.get(key).and_then(|no| self.index(*no)) {
                    let e = &mut self.entries[i];
                    if let (State::Waiting, None, Body::Event { event: prev, .. }) = (e.state, e.seq, &mut e.msg.body) {
                        if let EventBody::Token { text: acc } = &mut prev.body {
                            acc.push_str(text);
                            e.bytes += text.len();
                            self.bytes += text.len();
                            return self.enforce();
                        }
                    }
                }
                self.last_of.insert(key.clone(), self.next_no);
            } else {
                self.last_of.remove(key);
            }
        }
        let bytes = message_bytes(&msg);
        self.bytes += bytes;
        self.entries.push_back(Entry { no: self.next_no, msg, seq: None, state: State::Waiting, bytes });
        self.next_no += 1;
        self.enforce()
    }

    /// The connection is up: waiting messages may be handed out.
    pub fn connected(&mut self) {
        self.connected = true;
    }

    /// The connection is gone at `now`: everything in flight, and the request events
    /// acknowledged within [`REPLAY`], wait again and are re-sent in their original order
    /// after the next reconnect.
    pub fn disconnected(&mut self, now: Instant) {
        self.connected = false;
        self.handed.clear();
        self.sent.clear();
        self.forget_replay(now);
        if !self.replay.is_empty() {
            self.bytes += self.replay.iter().map(|(_, e)| e.bytes).sum::<usize>();
            let mut all: Vec<Entry> = self.entries.drain(..).chain(self.replay.drain(..).map(|(_, e)| e)).collect();
            all.sort_by_key(|e| e.no);
            self.entries = all.into();
        }
        for e in &mut self.entries {
            e.state = State::Waiting;
        }
    }

    fn forget_replay(&mut self, now: Instant) {
        while self.replay.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > REPLAY) {
            self.replay.pop_front();
        }
    }

    /// The next message to hand to the client, if connected and the window allows.
    pub fn next_publication(&mut self) -> Option<(u64, Publication)> {
        if !self.connected || self.handed.len() + self.sent.len() >= self.window {
            return None;
        }
        let i = self.entries.iter().position(|e| e.state == State::Waiting)?;
        let entry = &mut self.entries[i];
        let payload = match &entry.msg.body {
            Body::Raw(bytes) => bytes.clone(),
            Body::Event { event, stream } => {
                let seq = *entry.seq.get_or_insert_with(|| match stream {
                    None => 0,
                    Some(key) => {
                        let counter = self.seqs.entry(key.clone()).or_insert(0);
                        let seq = *counter;
                        *counter += 1;
                        if event.is_terminal() {
                            self.seqs.remove(key);
                        }
                        seq
                    }
                });
                event_payload(event, seq)
            }
        };
        entry.state = State::Handed;
        self.handed.push_back(entry.no);
        let msg = &entry.msg;
        Some((entry.no, Publication { topic: msg.topic.clone(), payload, retain: msg.retain, correlation: msg.correlation.clone() }))
    }

    /// The client refused the publication `no` (its queue was full): it waits again.
    pub fn unhand(&mut self, no: u64) {
        if self.handed.back() == Some(&no) {
            self.handed.pop_back();
        }
        if let Some(i) = self.index(no) {
            self.entries[i].state = State::Waiting;
        }
    }

    /// rumqttc sent the next handed publication with packet id `pkid`. `false` when nothing was
    /// handed (not ours).
    pub fn published(&mut self, pkid: u16) -> bool {
        let Some(no) = self.handed.pop_front() else { return false };
        if let Some(i) = self.index(no) {
            self.entries[i].state = State::Sent(pkid);
            self.sent.insert(pkid, no);
        }
        true
    }

    /// The broker acknowledged `pkid` at `now`: that message is delivered.
    pub fn acked(&mut self, pkid: u16, now: Instant) -> bool {
        let Some(no) = self.sent.remove(&pkid) else { return false };
        if let Some(entry) = self.index(no).and_then(|i| self.entries.remove(i)) {
            self.bytes -= entry.bytes;
            if matches!(entry.msg.body, Body::Event { .. }) {
                self.replay.push_back((now, entry));
            }
        }
        self.forget_replay(now);
        true
    }
}

/// An event as JSON with its `seq`.
pub fn event_payload(event: &Event, seq: u32) -> Vec<u8> {
    let mut value = serde_json::to_value(event).unwrap_or_else(
        |e| serde_json::json!({"id": event.id, "event": "error", "code": "model_error", "message": format!("unserialisable event: {e}")}),
    );
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("seq".into(), seq.into());
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorCode;
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
}
