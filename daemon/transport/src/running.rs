//! One generation request of a request-per-exchange transport (HTTP, Wyoming): a request-table
//! client of its own, so that dropping the request (the peer went away) cancels it, the
//! scheduler's admission, and its events read back in order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use qwenedge_api::{ErrorCode, EventBody, GenerateRequest};
use qwenedge_scheduler::{Client, ClientPolicy, Job, Outbound, Refusal, Requests, Scheduler};

/// Where a request goes and how its client is bounded.
#[derive(Clone, Copy)]
pub struct RequestPath<'a> {
    /// The queue in front of the engine.
    pub scheduler: &'a Scheduler,
    /// The request table.
    pub requests: &'a Requests,
    /// Bytes of events the peer may leave unread before the request is cancelled.
    pub max_unread_bytes: usize,
    /// The setting that bounds them (named in the `cancelled` answer).
    pub unread_key: &'static str,
    /// The transport label of the request counters.
    pub transport: &'static str,
}

/// A generation request handed to the scheduler, and its events as they come.
pub struct Submitted {
    _client: Client,
    out: Arc<Outbound>,
    pending: VecDeque<EventBody>,
    done: bool,
}

impl Submitted {
    /// Submits `request`; a refusal (queue full, shutting down, too hot) comes back at once.
    pub fn submit(route: RequestPath<'_>, request: GenerateRequest) -> Result<Self, Refusal> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let out = Arc::new(Outbound::new(route.max_unread_bytes));
        let policy = ClientPolicy { remember: 1, reject_recent: false, unread_key: route.unread_key, transport: route.transport };
        let client = route.requests.client(policy, Arc::clone(&out));
        let id = format!("{}-{}", route.transport, NEXT.fetch_add(1, Ordering::Relaxed));
        let ticket = client.begin("request", &id).map_err(|_| Refusal::new(ErrorCode::ModelError, "request table"))?;
        if let Err(rejected) = route.scheduler.submit(Job::new(ticket, request)) {
            let refusal = rejected.refusal.clone();
            drop(rejected);
            return Err(refusal);
        }
        Ok(Self { _client: client, out, pending: VecDeque::new(), done: false })
    }

    /// The next event; `None` after the terminal one.
    pub async fn next(&mut self) -> Option<EventBody> {
        self.peek().await?;
        let e = self.pending.pop_front()?;
        self.done |= e.is_terminal();
        Some(e)
    }

    /// The event [`next`](Self::next) will return, left in place (a transport chooses its
    /// response status from the first event, then streams them all).
    pub async fn peek(&mut self) -> Option<&EventBody> {
        while self.pending.is_empty() && !self.done {
            self.out.ready().await;
            self.pending.extend(self.out.take().into_iter().map(|d| d.event.body));
        }
        self.pending.front()
    }

    /// Everything up to the terminal event: the streamed text and the terminal event.
    pub async fn collect(mut self) -> (String, EventBody) {
        let mut text = String::new();
        while let Some(e) = self.next().await {
            match e {
                EventBody::Token { text: t } => text.push_str(&t),
                terminal => return (text, terminal),
            }
        }
        (text, EventBody::error(ErrorCode::ModelError, "the request ended without an answer"))
    }
}
