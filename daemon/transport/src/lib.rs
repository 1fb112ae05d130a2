//! Transports: each decodes its own wire format into `api` requests, registers them in the
//! scheduler's request table (one client per connection or session, with its bounded event
//! queue), submits them, and encodes the events back. They never touch the engine and never
//! import each other; a new transport is a thin codec over the same path.

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
