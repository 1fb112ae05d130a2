//! TCP listening for the network transports (HTTP, Wyoming): every configured address bound
//! before the daemon reports ready (a port in use stops start-up), then connections accepted
//! from whichever listener has one.

use std::net::SocketAddr;

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::accept::Listen;
use crate::Lifecycle;

/// How long open connections may take to finish once the daemon closes.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Listening sockets, bound before READY.
#[derive(Debug)]
pub struct BoundTcp {
    listeners: Vec<std::net::TcpListener>,
    /// Where clients connect (the bound addresses, with the ports chosen for port 0).
    pub addrs: Vec<SocketAddr>,
}

/// Binds every address of `addrs`; the first that cannot be bound is returned with its error.
pub fn bind(addrs: &[SocketAddr]) -> Result<BoundTcp, (SocketAddr, std::io::Error)> {
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for &addr in addrs {
        let listener = std::net::TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)).map_err(|e| (addr, e))?;
        bound.push(listener.local_addr().unwrap_or(addr));
        listeners.push(listener);
    }
    Ok(BoundTcp { listeners, addrs: bound })
}

/// The listeners on the runtime.
pub struct Listeners(Vec<TcpListener>);

impl BoundTcp {
    /// Moves the listeners onto the current tokio runtime.
    pub fn into_listeners(self) -> std::io::Result<Listeners> {
        self.listeners.into_iter().map(TcpListener::from_std).collect::<std::io::Result<Vec<_>>>().map(Listeners)
    }
}

impl Listen for Listeners {
    type Stream = TcpStream;
    type Peer = SocketAddr;

    /// The next connection on any listener (with `TCP_NODELAY` set: replies are small).
    async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        let accepts = self.0.iter().map(|l| Box::pin(l.accept()));
        let (accepted, _, _) = futures_util::future::select_all(accepts).await;
        let (stream, peer) = accepted?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }
}

/// The end of a transport's accept loop: waits until the lifecycle reaches `Closing`, runs
/// `closing` (a transport's signal to its connections), then gives the connections
/// [`CLOSE_GRACE`] to finish and aborts the rest. Returns whether any had to be aborted.
pub async fn close(connections: &mut JoinSet<()>, life: &mut watch::Receiver<Lifecycle>, closing: impl FnOnce()) -> bool {
    while *life.borrow() != Lifecycle::Closing {
        if life.changed().await.is_err() {
            break;
        }
    }
    closing();
    let drained = tokio::time::timeout(CLOSE_GRACE, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        connections.abort_all();
    }
    drained.is_err()
}
