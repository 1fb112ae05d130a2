//! Transports: each decodes its own wire format into `api` requests, registers them in the
//! scheduler's request table (one client per connection or session, with its bounded event
//! queue), submits them, and encodes the events back. They never touch the engine and never
//! import each other; a new transport is a thin codec over the same path.

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
