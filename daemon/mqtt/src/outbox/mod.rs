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

use qwenedge_api::{Event, EventBody};

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
mod tests;
