//! What every transport shares. A transport (`qwenedge-unix`, `-mqtt`, `-http`, `-wyoming`, each
//! a crate of its own) decodes its wire format into `api` requests, registers them in the
//! scheduler's request table (one client per connection or session, with its bounded event
//! queue), submits them, and encodes the events back; it never touches the engine and never
//! uses another transport. The shared pieces:
//!
//! - [`Lifecycle`]: how far the daemon is in its life, as connections see it;
//! - [`accept`]: the accept loop with one over-limit behaviour (the protocol's busy answer and
//!   a log line);
//! - [`dispatch`]: the ops of a request stream (generate, cancel, status, models) and
//!   submit-or-answer;
//! - [`running`]: one request of a request-per-exchange transport (HTTP, Wyoming);
//! - [`tcp`]: binding every TCP address before READY, accepting from all of them, and the
//!   close with a grace period.

pub mod accept;
pub mod dispatch;
pub mod running;
pub mod tcp;

/// How far the daemon is in its life, as connections see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Accepting connections and requests.
    Running,
    /// No new connections; requests are refused by the scheduler.
    Draining,
    /// Flush what is queued for each client and close.
    Closing,
}

/// The Unix-socket listener: the peer is told apart by its credentials once served.
impl accept::Listen for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    type Peer = &'static str;

    async fn accept(&self) -> std::io::Result<(Self::Stream, Self::Peer)> {
        tokio::net::UnixListener::accept(self).await.map(|(stream, _)| (stream, "a socket client"))
    }
}
