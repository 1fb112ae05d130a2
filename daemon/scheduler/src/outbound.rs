//! One client's events on their way out: a queue bounded in the bytes its events hold (their
//! queue slots and texts) that the engine thread pushes into without ever waiting, and that the
//! client's transport drains (the socket writer, the MQTT session). A token event that would
//! take the queue past its bound is dropped and reported as [`Pushed::Overflow`], so the caller
//! can cancel that client's requests; terminal events are always queued (each request has one,
//! and a client past its bound is not read from until it catches up, so their number stays
//! bounded too).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use qwenedge_api::Event;

/// An event with the table number of its request (0 for answers that belong to no request,
/// such as `status` or a bad request).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The request's number in the request table.
    pub no: u64,
    /// The event.
    pub event: Event,
}

/// What became of a pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Dropped: the client has too much unread. `first` is true for the first drop since the
    /// queue was last below its bound (log once, cancel once).
    Overflow {
        /// First drop of this episode.
        first: bool,
    },
    /// Dropped: the client is gone.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Delivery>,
    bytes: usize,
    over: bool,
    closed: bool,
}

/// A client's outgoing events.
#[derive(Debug)]
pub struct Outbound {
    state: Mutex<State>,
    limit: usize,
    ready: Notify,
    drained: Notify,
}

impl Outbound {
    /// A queue that holds at most `limit_bytes` of token events.
    pub fn new(limit_bytes: usize) -> Self {
        Self { state: Mutex::new(State::default()), limit: limit_bytes.max(1), ready: Notify::new(), drained: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bound, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Queues `event` of request `no`; never waits. An event counts as the memory it holds
    /// here (its place in the queue and its text), not only its length on the wire: a token
    /// event of a few bytes holds a few hundred.
    pub fn push(&self, no: u64, event: Event) -> Pushed {
        let len = std::mem::size_of::<Delivery>() + event.approx_len();
        let mut s = self.lock();
        if s.closed {
            return Pushed::Closed;
        }
        if !event.is_terminal() && s.bytes + len > self.limit {
            let first = !s.over;
            s.over = true;
            return Pushed::Overflow { first };
        }
        s.bytes += len;
        s.queue.push_back(Delivery { no, event });
        drop(s);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Takes everything queued (oldest first). The queue counts as caught up again once it has
    /// been emptied.
    pub fn take(&self) -> Vec<Delivery> {
        let mut s = self.lock();
        // The queue's buffer goes with what is taken: a backlog once read holds nothing after.
        let out = Vec::from(std::mem::take(&mut s.queue));
        s.bytes = 0;
        s.over = false;
        drop(s);
        self.drained.notify_waiters();
        out
    }

    /// Bytes waiting.
    pub fn unread(&self) -> usize {
        self.lock().bytes
    }

    /// Whether the queue is past its bound (the client's next request should wait).
    pub fn is_full(&self) -> bool {
        let s = self.lock();
        s.over || s.bytes >= self.limit
    }

    /// Waits until something is queued (or the queue is closed).
    pub async fn ready(&self) {
        if !self.lock().queue.is_empty() || self.is_closed() {
            return;
        }
        self.ready.notified().await;
    }

    /// Waits until the queue is below its bound (or closed).
    pub async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            if !self.is_full() || self.is_closed() {
                return;
            }
            drained.await;
        }
    }

    /// Accepts nothing more; what is queued can still be taken.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
        self.drained.notify_waiters();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwenedge_api::{ErrorCode, EventBody};

    fn token(text: &str) -> Event {
        Event { id: Some("r".into()), body: EventBody::Token { text: text.into() } }
    }

    #[test]
    fn tokens_past_the_bound_are_dropped_and_terminals_kept() {
        // Room for two such events, as held in the queue.
        let each = std::mem::size_of::<Delivery>() + token(&"x".repeat(40)).approx_len();
        let out = Outbound::new(2 * each + each / 2);
        let mut pushed = Vec::new();
        for _ in 0..10 {
            pushed.push(out.push(1, token(&"x".repeat(40))));
        }
        assert_eq!(pushed[..2], [Pushed::Queued, Pushed::Queued]);
        assert_eq!(pushed[2], Pushed::Overflow { first: true });
        assert_eq!(pushed[3], Pushed::Overflow { first: false });
        assert!(out.is_full());
        assert_eq!(out.push(1, Event::error(Some("r".into()), ErrorCode::Cancelled, "unread")), Pushed::Queued);
        let taken = out.take();
        assert_eq!(taken.len(), 3);
        assert!(taken[2].event.is_terminal());
        assert!(!out.is_full());
        assert_eq!(out.push(1, token("y")), Pushed::Queued, "a client that caught up gets its events again");
        out.close();
        assert_eq!(out.push(1, token("z")), Pushed::Closed);
        assert_eq!(out.take().len(), 1, "what was queued before closing can still be taken");
    }
}
