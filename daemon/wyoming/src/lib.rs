//! The Wyoming transport: qwenedge as an intent (and optionally handle) service for Home
//! Assistant's Assist pipelines. Home Assistant's `wyoming` integration asks `describe` (with a
//! one-second timeout), adds a conversation agent for an installed intent or handle program,
//! and for each utterance opens a connection and sends a `transcript`; an intent program's
//! `intent` is executed by Home Assistant itself. The pieces: `codec` (framing, no I/O),
//! `events` (the events and `info`), `conn` (one connection: frames, turns, disconnects),
//! `turn` (a transcript through the shared request table and scheduler), `zeroconf` (the
//! `_wyoming._tcp.local.` announcement).

pub(crate) mod codec;
mod conn;
mod events;
mod turn;
pub mod zeroconf;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info};

use qwenedge_config::WyomingSettings;
use qwenedge_scheduler::{Requests, Scheduler};
use qwenedge_transport::accept::{accept_loop, Limit};
use qwenedge_transport::tcp;
use qwenedge_transport::tcp::BoundTcp;
use qwenedge_transport::Lifecycle;

/// The transport label of Wyoming requests in the counters.
pub const TRANSPORT: &str = "wyoming";

/// Why the Wyoming transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum WyomingError {
    /// A listen address could not be bound.
    #[error("wyoming.listen: cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        error: std::io::Error,
    },
    /// The listening sockets could not join the runtime.
    #[error("wyoming: {0}")]
    Io(#[from] std::io::Error),
}

/// Binds every `wyoming.listen` address.
pub fn bind(settings: &WyomingSettings) -> Result<BoundTcp, WyomingError> {
    tcp::bind(settings.listen.addrs()).map_err(|(addr, error)| WyomingError::Bind { addr, error })
}

/// What every connection shares.
pub(crate) struct Service {
    settings: Arc<WyomingSettings>,
    /// Sampling temperature of intent requests (`intents.temperature`).
    temperature: f32,
    scheduler: Scheduler,
    requests: Requests,
}

/// Serves the Wyoming protocol on `bound` until the lifecycle reaches `Closing`.
pub async fn serve(
    bound: BoundTcp,
    settings: Arc<WyomingSettings>,
    temperature: f32,
    scheduler: Scheduler,
    requests: Requests,
    mut life: watch::Receiver<Lifecycle>,
) -> Result<(), WyomingError> {
    let listeners = bound.into_listeners()?;
    let limit = Limit { transport: "Wyoming", max: settings.max_connections, key: "wyoming.max_connections" };
    let service = Arc::new(Service { settings, temperature, scheduler, requests });
    let mut connections = JoinSet::new();
    let serve = |stream, peer, permit| {
        let service = Arc::clone(&service);
        let life = life.clone();
        async move {
            conn::serve(stream, peer, service, life).await;
            drop(permit);
        }
    };
    accept_loop(&listeners, limit, &mut life.clone(), &mut connections, serve, conn::refuse).await;
    drop(listeners);
    info!("Wyoming: no longer accepting connections");
    if tcp::close(&mut connections, &mut life, || {}).await {
        debug!("Wyoming: closed connections that did not finish");
    }
    Ok(())
}

#[cfg(test)]
mod fuzz;
