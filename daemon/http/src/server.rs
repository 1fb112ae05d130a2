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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;

use crate::error::{OllamaError, OpenAiError, RETRY_AFTER_S};
use qwenedge_api::ErrorCode;
use qwenedge_config::HttpSettings;
use qwenedge_transport::accept::{accept_loop, Limit};
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
    let limit = Limit { transport: "HTTP", max: settings.max_connections, key: "http.max_connections" };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let header = Duration::from_millis(settings.header_timeout_ms);
    let idle = Duration::from_millis(settings.idle_timeout_ms);
    let serve = |stream: TcpStream, peer: SocketAddr, permit| {
        let state = Arc::new(ConnState::new());
        let service = TowerToHyperService::new(router(Arc::clone(&state)));
        let mut stop = stop_rx.clone();
        async move {
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
        }
    };
    accept_loop(&listeners, limit, &mut life.clone(), &mut connections, serve, refuse).await;
    drop(listeners);
    tcp::close(&mut connections, &mut life, || {
        let _ = stop_tx.send(true);
    })
    .await;
    Ok(())
}

/// Answers a connection over `http.max_connections` and closes it: the request line is read
/// (at most 1 KiB, for at most a second) to answer in its API's shape — Ollama's under
/// `/api/`, OpenAI's elsewhere — with `overloaded` (429, `Retry-After`); what the client still
/// sends is read and dropped for a moment (at most 64 KiB) so that closing does not reset the
/// connection before the answer is read.
async fn refuse(mut stream: TcpStream, peer: SocketAddr, message: String) {
    debug!(%peer, "HTTP: refusing a connection over the limit");
    // The request line may come in several pieces: read until it ends (or 1 KiB, or the second).
    let mut head = [0u8; 1024];
    let mut n = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while n < head.len() && !head[..n].contains(&b'\n') {
        match tokio::time::timeout_at(until, stream.read(&mut head[n..])).await {
            Ok(Ok(got)) if got > 0 => n += got,
            _ => break,
        }
    }
    let path = std::str::from_utf8(&head[..n]).ok().and_then(|h| h.split(' ').nth(1)).unwrap_or("/");
    let (status, body) = if path.starts_with("/api/") {
        let e = OllamaError::from_code(ErrorCode::Overloaded, message);
        (e.status, e.body())
    } else {
        let e = OpenAiError::from_code(ErrorCode::Overloaded, message);
        (e.status, e.body())
    };
    let body = body.to_string();
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: {RETRY_AFTER_S}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut left = 64 * 1024usize;
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while left > 0 {
        match tokio::time::timeout_at(until, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}
