//! Listening and connections: the sockets are bound before the daemon reports ready
//! (`transport::tcp`; a port in use stops start-up), each connection is served by hyper's HTTP/1.1 server with the router,
//! and each is watched for the header and idle timeouts. On `Draining` no more connections are
//! taken; on `Closing` the open ones finish their responses and close.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use qwenedge_config::HttpSettings;
use qwenedge_transport::tcp::{self, BoundTcp};
use qwenedge_transport::Lifecycle;

/// Why the HTTP transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A listen address could not be bound.
    #[error("http.listen: cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        error: std::io::Error,
    },
    /// The token file could not be read.
    #[error("{0}")]
    Keys(String),
}

/// Binds every `http.listen` address.
pub fn bind(settings: &HttpSettings) -> Result<BoundTcp, HttpError> {
    tcp::bind(settings.listen.addrs()).map_err(|(addr, error)| HttpError::Bind { addr, error })
}

/// What a connection's watchdog reads: requests whose response has not ended, when the
/// connection last became idle and when the first byte of the next request arrived.
#[derive(Debug)]
pub(super) struct ConnState {
    started: Instant,
    in_flight: AtomicUsize,
    idle_since_ms: AtomicU64,
    first_byte_ms: AtomicU64,
}

impl ConnState {
    fn new() -> Self {
        Self { started: Instant::now(), in_flight: AtomicUsize::new(0), idle_since_ms: AtomicU64::new(0), first_byte_ms: AtomicU64::new(0) }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// A request's headers were read.
    pub(super) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.first_byte_ms.store(0, Ordering::Release);
    }

    /// A response ended.
    pub(super) fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since_ms.store(self.now_ms(), Ordering::Release);
            self.first_byte_ms.store(0, Ordering::Release);
        }
    }

    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 && self.first_byte_ms.load(Ordering::Acquire) == 0 {
            self.first_byte_ms.store(self.now_ms(), Ordering::Release);
        }
    }

    /// Which timeout, if any, has run out.
    fn expired(&self, header: Duration, idle: Duration) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = self.now_ms();
        match self.first_byte_ms.load(Ordering::Acquire) {
            0 => (now.saturating_sub(self.idle_since_ms.load(Ordering::Acquire)) > idle.as_millis() as u64).then_some("idle"),
            t => (now.saturating_sub(t) > header.as_millis() as u64).then_some("header"),
        }
    }
}

/// A TCP stream that tells its connection's watchdog when bytes arrive.
struct Watched {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `router` on the bound sockets until the lifecycle reaches `Closing` and the open
/// connections have finished (or `grace` has passed after that).
pub async fn serve(
    bound: BoundTcp,
    settings: Arc<HttpSettings>,
    router: impl Fn(Arc<ConnState>) -> Router,
    mut life: watch::Receiver<Lifecycle>,
) -> std::io::Result<()> {
    let listeners = bound.into_listeners()?;
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let header = Duration::from_millis(settings.header_timeout_ms);
    let idle = Duration::from_millis(settings.idle_timeout_ms);
    loop {
        tokio::select! {
            accepted = listeners.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "HTTP: accept failed");
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    debug!(%peer, "HTTP: too many connections; closing a new one");
                    continue;
                };
                let state = Arc::new(ConnState::new());
                let service = TowerToHyperService::new(router(Arc::clone(&state)));
                let mut stop = stop_rx.clone();
                connections.spawn(async move {
                    let io = TokioIo::new(Watched { inner: stream, state: Arc::clone(&state) });
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
                    let conn = builder.serve_connection(io, service);
                    tokio::pin!(conn);
                    let mut tick = tokio::time::interval(Duration::from_millis(250));
                    let mut closing = false;
                    loop {
                        tokio::select! {
                            result = conn.as_mut() => {
                                if let Err(e) = result {
                                    debug!(%peer, error = %e, "HTTP: connection ended");
                                }
                                break;
                            }
                            _ = tick.tick(), if !closing => {
                                if let Some(which) = state.expired(header, idle) {
                                    debug!(%peer, which, "HTTP: closing a connection past its timeout");
                                    conn.as_mut().graceful_shutdown();
                                    closing = true;
                                }
                            }
                            _ = stop.wait_for(|s| *s), if !closing => {
                                conn.as_mut().graceful_shutdown();
                                closing = true;
                            }
                        }
                    }
                    drop(permit);
                });
            }
            changed = life.changed() => {
                if changed.is_err() || *life.borrow() != Lifecycle::Running {
                    break;
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listeners);
    tcp::close(&mut connections, &mut life, || {
        let _ = stop_tx.send(true);
    })
    .await;
    Ok(())
}
