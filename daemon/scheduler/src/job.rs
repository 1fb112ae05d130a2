//! A generation request on its way through the scheduler: the validated request, when it
//! arrived, its cancellation and its responder.

use std::time::{Duration, Instant};

use super::queue::Queued;
use super::table::{CancelToken, Ticket};
use qwenedge_api::{ErrorCode, EventBody, GenerateRequest, Priority};

/// A request handed to the scheduler.
#[derive(Debug)]
pub struct Job {
    request: GenerateRequest,
    received: Instant,
    cancel: CancelToken,
    ticket: Ticket,
}

impl Queued for Job {
    fn priority(&self) -> Priority {
        self.request.priority()
    }

    fn client(&self) -> u64 {
        self.ticket.client
    }
}

impl Job {
    /// A job for `request`, answered through `ticket`.
    pub fn new(ticket: Ticket, request: GenerateRequest) -> Self {
        Self { request, received: Instant::now(), cancel: ticket.cancel.clone(), ticket }
    }

    /// The client's id of the request.
    pub fn id(&self) -> &str {
        self.ticket.responder.id()
    }

    /// The transport it came through.
    pub fn transport(&self) -> &'static str {
        self.ticket.transport
    }

    /// The request.
    pub fn request(&self) -> &GenerateRequest {
        &self.request
    }

    /// When it arrived.
    pub fn received(&self) -> Instant {
        self.received
    }

    /// Its cancellation.
    pub fn cancel(&self) -> &CancelToken {
        &self.cancel
    }

    /// Its deadline: its own `deadline_ms`, else `default_ms` (0: none).
    pub fn deadline(&self, default_ms: u64) -> Option<Instant> {
        match self.request.deadline_ms().unwrap_or(default_ms) {
            0 => None,
            ms => Some(self.received + Duration::from_millis(ms)),
        }
    }

    /// Sends an event; false when it was dropped (the client is gone or not reading).
    pub fn send(&mut self, body: EventBody) -> bool {
        self.ticket.responder.send(body)
    }

    /// Ends the request with an error.
    pub fn fail(mut self, code: ErrorCode, message: impl Into<String>) {
        self.ticket.responder.send(EventBody::error(code, message));
    }
}
