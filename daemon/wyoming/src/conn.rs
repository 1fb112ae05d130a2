//! One Wyoming connection: frames are read as they arrive (bounded by the decoder's limits),
//! each event is answered in order, and while a transcript is being answered the connection is
//! still read, so a peer that goes away cancels its request. A bad frame is logged once per
//! connection (later ones at debug level) and answered with an `error` event; when the framing
//! cannot be trusted any more (a size over a limit, a length that is no byte count, a frame cut
//! short) the connection is closed. Other connections are never affected.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info_span, warn, Instrument};

use super::codec::{self, Decoder, Limits};
use super::events::{self, Incoming};
use super::{turn, Service};
use qwenedge_transport::Lifecycle;

/// The writing half: each event framed and written whole, within the idle timeout.
pub(super) struct Out {
    wr: OwnedWriteHalf,
    timeout: Duration,
}

impl Out {
    /// Writes one event.
    pub(super) async fn send(&mut self, kind: &str, data: &Value) -> std::io::Result<()> {
        let frame = codec::encode(kind, data);
        match tokio::time::timeout(self.timeout, self.wr.write_all(&frame)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the peer does not read")),
        }
    }
}

/// The reading half and its frames.
struct In {
    rd: OwnedReadHalf,
    dec: Decoder,
    buf: Vec<u8>,
    /// Most bytes buffered while a turn runs (then reading pauses).
    cap: usize,
    warned: bool,
}

impl In {
    /// Reads more bytes into the decoder; `false` when the peer closed.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let want = self.dec.wants().min(self.buf.len());
        let n = self.rd.read(&mut self.buf[..want]).await?;
        self.dec.push(&self.buf[..n]);
        Ok(n > 0)
    }

    /// Logs a problem with the peer's bytes: once at warning level, then at debug level.
    fn complain(&mut self, what: &dyn Display) {
        if self.warned {
            debug!(problem = %what, "Wyoming: bad frame");
        } else {
            warn!(problem = %what, "Wyoming: bad frame (further ones on this connection are logged at debug level)");
            self.warned = true;
        }
    }
}

/// Answers a connection over `wyoming.max_connections` with an `error` and closes it.
pub(super) async fn refuse(mut stream: TcpStream, peer: SocketAddr, message: String) {
    debug!(%peer, "Wyoming: refusing a connection over the limit");
    let frame = codec::encode("error", &events::error(&message, "overloaded"));
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&frame)).await;
}

/// Serves one connection until the peer closes, it idles out, its framing breaks, or the daemon
/// closes.
pub(super) async fn serve(stream: TcpStream, peer: SocketAddr, service: Arc<Service>, life: watch::Receiver<Lifecycle>) {
    let span = info_span!("wyoming", %peer);
    run(stream, service, life).instrument(span).await;
}

async fn run(stream: TcpStream, service: Arc<Service>, mut life: watch::Receiver<Lifecycle>) {
    let s = &service.settings;
    let limits = Limits { header: s.max_header_bytes, data: s.max_data_bytes, payload: s.max_payload_bytes };
    let idle = Duration::from_millis(s.idle_timeout_ms);
    let (rd, wr) = stream.into_split();
    let cap = s.max_header_bytes + s.max_data_bytes + 2;
    let mut input = In { rd, dec: Decoder::new(limits), buf: vec![0; 64 << 10], cap, warned: false };
    let mut out = Out { wr, timeout: idle };
    loop {
        let event = match input.dec.next() {
            Ok(Some(frame)) => Incoming::parse(frame),
            Ok(None) => {
                tokio::select! {
                    more = tokio::time::timeout(idle, input.fill()) => match more {
                        Ok(Ok(true)) => continue,
                        Ok(Ok(false)) => {
                            if input.dec.mid_frame() {
                                input.complain(&"the connection closed in the middle of a frame");
                            }
                            return;
                        }
                        Ok(Err(e)) => {
                            debug!(error = %e, "Wyoming: read failed");
                            return;
                        }
                        Err(_) => {
                            debug!("Wyoming: closing an idle connection");
                            return;
                        }
                    },
                    _ = life.wait_for(|l| *l == Lifecycle::Closing) => return,
                }
            }
            Err(e) => {
                input.complain(&e);
                let sent = out.send("error", &events::error(&e.to_string(), "bad_frame")).await;
                if sent.is_err() || !e.recoverable() {
                    return;
                }
                continue;
            }
        };
        let result = match event {
            Err(e) => {
                input.complain(&e);
                out.send("error", &events::error(&e.to_string(), e.code())).await
            }
            Ok(Incoming::Describe) => {
                let model = service.scheduler.models().into_iter().next().and_then(|m| m.id).unwrap_or_else(|| "qwenedge".into());
                out.send("info", &events::info(&service.settings, &model)).await
            }
            Ok(Incoming::Ping { text }) => out.send("pong", &text.map_or_else(|| json!({}), |t| json!({"text": t}))).await,
            Ok(Incoming::Transcript { text, language, context }) => {
                let request = turn::Transcript { text, language, context };
                let answer = turn::answer(&service, request, &mut out);
                tokio::pin!(answer);
                loop {
                    let reading = input.dec.buffered() < input.cap;
                    tokio::select! {
                        r = &mut answer => break r,
                        more = input.fill(), if reading => match more {
                            Ok(true) => {}
                            Ok(false) | Err(_) => {
                                debug!("Wyoming: the peer left during a turn; its request is cancelled");
                                return;
                            }
                        },
                    }
                }
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "Wyoming: write failed; closing");
            return;
        }
    }
}
