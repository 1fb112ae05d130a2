//! The accept loop every connection transport runs (the Unix socket, HTTP, Wyoming): a
//! connection within the transport's `max_connections` is served while it holds a slot; one
//! over the limit gets the protocol's own "busy" answer (an `overloaded` error event, an HTTP
//! 503) and a log line — never a silent drop. The refusals are bounded too: while as many are
//! being answered as there are slots, a further connection is closed at once and counted in
//! the next log line. The loop ends when the lifecycle leaves `Submitted`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::warn;

use crate::Lifecycle;

/// How often at most a refusal is logged (the rest are counted into the next line).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A listening socket of some kind.
pub trait Listen {
    /// An accepted connection.
    type Stream: Send + 'static;
    /// Who connected, for the logs.
    type Peer: std::fmt::Display + Send + 'static;
    /// The next connection.
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, Self::Peer)>> + Send;
}

/// A transport's connection limit, as its configuration names it.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// The transport, in log lines (`socket`, `HTTP`, `Wyoming`).
    pub transport: &'static str,
    /// Connections served at once.
    pub max: usize,
    /// The setting (`http.max_connections`).
    pub key: &'static str,
}

impl Limit {
    /// What a refused client is told.
    pub fn message(&self) -> String {
        format!("too many connections ({} = {})", self.key, self.max)
    }
}

/// Counts refusals and says when one may be logged.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// Records a refusal at `now`; `Some(n)` when it is to be logged, with `n` refusals since
    /// the last line (this one included).
    pub fn refused(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Accepts connections on `listener` until the lifecycle leaves `Submitted`. Each connection
/// within `limit` runs `serve` (holding its slot until it returns); one over it runs `refuse`
/// (the protocol's busy answer), itself bounded by `limit.max`. Every task goes into
/// `connections`, which the caller drains when it closes.
pub async fn accept_loop<L, S, SF, R, RF>(
    listener: &L,
    limit: Limit,
    life: &mut watch::Receiver<Lifecycle>,
    connections: &mut JoinSet<()>,
    serve: S,
    refuse: R,
) where
    L: Listen,
    S: Fn(L::Stream, L::Peer, OwnedSemaphorePermit) -> SF,
    SF: Future<Output = ()> + Send + 'static,
    R: Fn(L::Stream, L::Peer, String) -> RF,
    RF: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limit.max));
    let refusing = Arc::new(Semaphore::new(limit.max));
    let mut log = RefusalLog::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "{}: accept failed", limit.transport);
                        continue;
                    }
                };
                if let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
                    connections.spawn(serve(stream, peer, permit));
                    continue;
                }
                if let Some(refused) = log.refused(Instant::now()) {
                    warn!(%peer, refused, max = limit.max, "{}: too many connections ({} = {}); refusing new ones with a busy answer", limit.transport, limit.key, limit.max);
                }
                match Arc::clone(&refusing).try_acquire_owned() {
                    Ok(permit) => {
                        let answer = refuse(stream, peer, limit.message());
                        connections.spawn(async move {
                            answer.await;
                            drop(permit);
                        });
                    }
                    // As many refusals in flight as there are slots: this one is closed unanswered
                    // (counted in the log line above).
                    Err(_) => drop(stream),
                }
            }
            changed = life.changed() => {
                if changed.is_err() || *life.borrow() != Lifecycle::Running {
                    break;
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_at_most_every_ten_seconds_with_a_count() {
        let mut log = RefusalLog::default();
        let t = Instant::now();
        assert_eq!(log.refused(t), Some(1));
        assert_eq!(log.refused(t + Duration::from_secs(1)), None);
        assert_eq!(log.refused(t + Duration::from_secs(9)), None);
        assert_eq!(log.refused(t + Duration::from_secs(10)), Some(3));
        assert_eq!(log.refused(t + Duration::from_secs(30)), Some(1));
    }

    #[test]
    fn the_message_names_the_setting() {
        let limit = Limit { transport: "HTTP", max: 2, key: "http.max_connections" };
        assert_eq!(limit.message(), "too many connections (http.max_connections = 2)");
    }
}
