//! The one request table every transport uses: which requests each client (a socket
//! connection, the MQTT session) has in flight, duplicate ids, cancellation, and what a
//! disconnect or an unread backlog cancels. Each accepted request gets a [`Ticket`]: its table
//! number, a [`CancelToken`] and a [`Responder`] that carries its events to the client's
//! [`Outbound`] queue and always ends with exactly one terminal event.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::warn;

use super::outbound::{Outbound, Pushed};
use qwenedge_api::{ErrorCode, Event, EventBody};

/// Why a request was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The client asked.
    Client,
    /// The client went away.
    Disconnected,
    /// The client left more than `limit` bytes of events unread (`key` names the setting).
    Unread {
        /// The bound.
        limit: usize,
        /// The setting that sets it.
        key: &'static str,
    },
}

impl CancelReason {
    /// The message of the `cancelled` answer.
    pub fn message(self, queued: bool) -> String {
        match (self, queued) {
            (CancelReason::Client, false) => "cancelled".into(),
            (CancelReason::Client, true) => "cancelled while queued".into(),
            (CancelReason::Disconnected, _) => "cancelled: the client disconnected".into(),
            (CancelReason::Unread { limit, key }, _) => {
                format!("cancelled: more than {limit} bytes of this client's events were unread ({key})")
            }
        }
    }
}

/// Set to stop a request; the engine thread checks it between steps.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    inner: Arc<(AtomicBool, Mutex<Option<CancelReason>>)>,
}

impl CancelToken {
    /// Cancels for `reason` (the first reason wins); false when it already was.
    pub fn cancel(&self, reason: CancelReason) -> bool {
        let mut r = self.inner.1.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_some() {
            return false;
        }
        *r = Some(reason);
        self.inner.0.store(true, Ordering::Release);
        true
    }

    /// Whether it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.0.load(Ordering::Acquire)
    }

    /// Why, once cancelled.
    pub fn reason(&self) -> Option<CancelReason> {
        if !self.is_cancelled() {
            return None;
        }
        *self.inner.1.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How a transport's client keys its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPolicy {
    /// How many finished keys are remembered (for `cancel` after the end, and duplicates).
    pub remember: usize,
    /// A key that finished recently is a duplicate too (MQTT redeliveries run once).
    pub reject_recent: bool,
    /// The setting that bounds the client's unread events (named in `cancelled` answers).
    pub unread_key: &'static str,
    /// The transport, for the request counters (`unix`, `mqtt`, `openai`, `ollama`, …).
    pub transport: &'static str,
}

/// Why a request was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicate {
    /// A request with this key is in flight.
    InFlight,
    /// One finished recently (only with [`ClientPolicy::reject_recent`]).
    Recent,
}

/// What `cancel` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The request was in flight and is now cancelled.
    Now,
    /// It finished recently: nothing to do.
    AlreadyFinished,
    /// No such request.
    Unknown,
}

#[derive(Debug)]
struct Entry {
    policy: ClientPolicy,
    in_flight: HashMap<String, (u64, CancelToken)>,
    by_no: HashMap<u64, String>,
    recent: HashSet<String>,
    order: VecDeque<String>,
}

impl Entry {
    fn remember(&mut self, key: String) {
        if self.recent.contains(&key) {
            return;
        }
        if self.order.len() >= self.policy.remember.max(1) {
            if let Some(old) = self.order.pop_front() {
                self.recent.remove(&old);
            }
        }
        self.recent.insert(key.clone());
        self.order.push_back(key);
    }
}

#[derive(Debug, Default)]
struct Table {
    clients: HashMap<u64, Entry>,
}

/// The shared table; clone it into every transport.
#[derive(Debug, Clone, Default)]
pub struct Requests {
    table: Arc<Mutex<Table>>,
    next: Arc<AtomicU64>,
}

impl Requests {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a client whose events go to `outbound`. Dropping the handle cancels what it
    /// still has in flight.
    pub fn client(&self, policy: ClientPolicy, outbound: Arc<Outbound>) -> Client {
        let id = self.number();
        let entry = Entry { policy, in_flight: HashMap::new(), by_no: HashMap::new(), recent: HashSet::new(), order: VecDeque::new() };
        self.lock().clients.insert(id, entry);
        let shared = ClientShared {
            id,
            requests: self.clone(),
            outbound,
            unread_key: policy.unread_key,
            transport: policy.transport,
            ended: tokio::sync::Notify::new(),
        };
        Client { shared: Arc::new(shared) }
    }

    /// Requests in flight, all clients.
    pub fn in_flight(&self) -> usize {
        self.lock().clients.values().map(|e| e.in_flight.len()).sum()
    }

    fn finish(&self, client: u64, no: u64) {
        let mut t = self.lock();
        if let Some(e) = t.clients.get_mut(&client) {
            if let Some(key) = e.by_no.remove(&no) {
                e.in_flight.remove(&key);
                e.remember(key);
            }
        }
    }

    fn cancel_all(&self, client: u64, reason: CancelReason) -> usize {
        let t = self.lock();
        t.clients.get(&client).map_or(0, |e| e.in_flight.values().filter(|(_, c)| c.cancel(reason)).count())
    }
}

#[derive(Debug)]
struct ClientShared {
    id: u64,
    requests: Requests,
    outbound: Arc<Outbound>,
    unread_key: &'static str,
    transport: &'static str,
    /// Notified whenever one of the client's requests ends.
    ended: tokio::sync::Notify,
}

impl ClientShared {
    fn push(&self, no: u64, event: Event) -> bool {
        match self.outbound.push(no, event) {
            Pushed::Queued => true,
            Pushed::Closed => false,
            Pushed::Overflow { first } => {
                let reason = CancelReason::Unread { limit: self.outbound.limit(), key: self.unread_key };
                let n = self.requests.cancel_all(self.id, reason);
                if first {
                    warn!(
                        client = self.id,
                        cancelled = n,
                        limit = self.outbound.limit(),
                        setting = self.unread_key,
                        "a client is not reading its events; its requests are cancelled"
                    );
                }
                false
            }
        }
    }
}

/// A transport's handle for one client.
#[derive(Debug)]
pub struct Client {
    shared: Arc<ClientShared>,
}

impl Client {
    /// Where this client's events wait.
    pub fn outbound(&self) -> &Arc<Outbound> {
        &self.shared.outbound
    }

    /// Accepts a request under `key` (unique per client), with `id` on its events.
    pub fn begin(&self, key: &str, id: &str) -> Result<Ticket, Duplicate> {
        let no = self.shared.requests.number();
        let cancel = CancelToken::default();
        {
            let mut t = self.shared.requests.lock();
            let Some(e) = t.clients.get_mut(&self.shared.id) else {
                return Err(Duplicate::InFlight);
            };
            if e.in_flight.contains_key(key) {
                return Err(Duplicate::InFlight);
            }
            if e.policy.reject_recent && e.recent.contains(key) {
                return Err(Duplicate::Recent);
            }
            e.in_flight.insert(key.to_string(), (no, cancel.clone()));
            e.by_no.insert(no, key.to_string());
        }
        Ok(self.ticket(no, id, cancel))
    }

    /// Accepts a request that has no key of its own (a Hermes query): never a duplicate,
    /// cancelled only with the client.
    pub fn begin_unkeyed(&self, id: &str) -> Ticket {
        let no = self.shared.requests.number();
        self.begin(&format!("\0{no}"), id).unwrap_or_else(|_| self.ticket(no, id, CancelToken::default()))
    }

    fn ticket(&self, no: u64, id: &str, cancel: CancelToken) -> Ticket {
        let responder = Responder { no, id: id.to_string(), client: Arc::clone(&self.shared), done: false };
        Ticket { no, client: self.shared.id, transport: self.shared.transport, cancel, responder }
    }

    /// Cancels the request under `key`.
    pub fn cancel(&self, key: &str) -> Cancelled {
        let t = self.shared.requests.lock();
        let Some(e) = t.clients.get(&self.shared.id) else { return Cancelled::Unknown };
        match e.in_flight.get(key) {
            Some((_, c)) => {
                c.cancel(CancelReason::Client);
                Cancelled::Now
            }
            None if e.recent.contains(key) => Cancelled::AlreadyFinished,
            None => Cancelled::Unknown,
        }
    }

    /// Cancels everything in flight; returns how many were.
    pub fn cancel_all(&self, reason: CancelReason) -> usize {
        self.shared.requests.cancel_all(self.shared.id, reason)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.shared.requests.lock().clients.get(&self.shared.id).map_or(0, |e| e.in_flight.len())
    }

    /// Waits until none of the client's requests is in flight.
    pub async fn settled(&self) {
        loop {
            let ended = self.shared.ended.notified();
            if self.in_flight() == 0 {
                return;
            }
            ended.await;
        }
    }

    /// Sends an answer that belongs to no accepted request (`status`, a refused line).
    pub fn reply(&self, event: Event) {
        self.shared.push(0, event);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let reqs = &self.shared.requests;
        reqs.cancel_all(self.shared.id, CancelReason::Disconnected);
        reqs.lock().clients.remove(&self.shared.id);
    }
}

/// An accepted request's handles.
#[derive(Debug)]
pub struct Ticket {
    /// Its table number (on every [`Delivery`](super::outbound::Delivery) of its events).
    pub no: u64,
    /// The client's number (clients take turns in the queue).
    pub client: u64,
    /// The client's transport.
    pub transport: &'static str,
    /// Its cancellation.
    pub cancel: CancelToken,
    /// Its events.
    pub responder: Responder,
}

/// Carries one request's events to its client without waiting, and guarantees the terminal
/// event: dropped before sending one, it sends `model_error`.
#[derive(Debug)]
pub struct Responder {
    no: u64,
    id: String,
    client: Arc<ClientShared>,
    done: bool,
}

impl Responder {
    /// The request id on its events.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends `body`; false when the event was dropped (the client is gone or not reading).
    /// After a terminal event nothing more is sent.
    pub fn send(&mut self, body: EventBody) -> bool {
        if self.done {
            return false;
        }
        let terminal = body.is_terminal();
        if terminal {
            self.done = true;
            // Out of the table first: a client that reads the answer may reuse the id at once.
            self.client.requests.finish(self.client.id, self.no);
        }
        let pushed = self.client.push(self.no, Event { id: Some(self.id.clone()), body });
        if terminal {
            self.client.ended.notify_waiters();
        }
        pushed
    }

    /// Whether the terminal event was sent.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.done {
            self.send(EventBody::error(ErrorCode::ModelError, "the engine stopped before answering (see the daemon log)"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(reject_recent: bool) -> ClientPolicy {
        ClientPolicy { remember: 2, reject_recent, unread_key: "socket.max_unread_bytes", transport: "test" }
    }

    #[test]
    fn ids_cancel_and_finish() {
        let reqs = Requests::default();
        let out = Arc::new(Outbound::new(1 << 20));
        let client = reqs.client(policy(false), Arc::clone(&out));
        let mut a = client.begin("a", "a").unwrap();
        assert_eq!(client.begin("a", "a").unwrap_err(), Duplicate::InFlight);
        assert_eq!(client.cancel("a"), Cancelled::Now);
        assert_eq!(a.cancel.reason(), Some(CancelReason::Client));
        assert_eq!(client.cancel("zz"), Cancelled::Unknown);
        a.responder.send(EventBody::error(ErrorCode::Cancelled, "cancelled"));
        assert_eq!(client.cancel("a"), Cancelled::AlreadyFinished);
        assert!(client.begin("a", "a").is_ok(), "a finished id may be used again on a socket");
        let got = out.take();
        assert_eq!(got.len(), 2, "the second ticket was dropped unanswered: its responder answered");
        assert!(matches!(&got[1].event.body, EventBody::Error { code: ErrorCode::ModelError, .. }));
    }

    #[test]
    fn recent_keys_are_duplicates_when_the_policy_says_so() {
        let reqs = Requests::default();
        let client = reqs.client(policy(true), Arc::new(Outbound::new(1 << 20)));
        for key in ["k1", "k2", "k3"] {
            let mut t = client.begin(key, key).unwrap();
            t.responder.send(EventBody::error(ErrorCode::Timeout, "late"));
        }
        assert!(client.begin("k1", "k1").is_ok(), "only the last two are remembered");
        assert_eq!(client.begin("k3", "k3").unwrap_err(), Duplicate::Recent);
    }

    #[test]
    fn a_dropped_responder_still_answers_and_a_dropped_client_cancels() {
        let reqs = Requests::default();
        let out = Arc::new(Outbound::new(1 << 20));
        let client = reqs.client(policy(false), Arc::clone(&out));
        let t = client.begin("a", "a").unwrap();
        let cancel = t.cancel.clone();
        drop(t);
        let got = out.take();
        assert!(matches!(&got[0].event.body, EventBody::Error { code: ErrorCode::ModelError, .. }));
        let t = client.begin("b", "b").unwrap();
        drop(client);
        assert_eq!(t.cancel.reason(), Some(CancelReason::Disconnected));
        assert!(!cancel.is_cancelled());
        assert_eq!(reqs.in_flight(), 0);
    }

    #[test]
    fn an_unread_backlog_cancels_the_clients_requests() {
        let reqs = Requests::default();
        let out = Arc::new(Outbound::new(100));
        let client = reqs.client(policy(false), Arc::clone(&out));
        let mut a = client.begin("a", "a").unwrap();
        let b = client.begin("b", "b").unwrap();
        let other_client = reqs.client(policy(false), Arc::new(Outbound::new(100)));
        let other = other_client.begin("c", "c").unwrap();
        while a.responder.send(EventBody::Token { text: "word".into() }) {}
        let reason = CancelReason::Unread { limit: 100, key: "socket.max_unread_bytes" };
        assert_eq!((a.cancel.reason(), b.cancel.reason()), (Some(reason), Some(reason)));
        assert!(!other.cancel.is_cancelled(), "other clients go on");
        assert!(reason.message(false).contains("socket.max_unread_bytes"));
    }
}
