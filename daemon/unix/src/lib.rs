//! The Unix-socket transport: newline-delimited JSON, many clients, many requests per
//! connection with their events interleaved (each carries its request id). Peers are checked
//! with `SO_PEERCRED`; a client that disconnects cancels its requests, and one that leaves more
//! than `socket.max_unread_bytes` of events unread has its requests cancelled and is not read
//! from until it catches up. This module only decodes bytes into typed requests for the
//! scheduler's request table and queue, and encodes events back.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use qwenedge_api::{parse_request, ErrorCode, Event, EventBody};
use qwenedge_config::SocketSettings;
use qwenedge_scheduler::{CancelReason, Cancelled, Client, ClientPolicy, Duplicate, Outbound, Requests, Scheduler, Ticket};
use qwenedge_transport::accept::{accept_loop, Limit};
use qwenedge_transport::dispatch::{dispatch, Session};
use qwenedge_transport::Lifecycle;

/// Finished request ids a connection remembers (a late `cancel` of one is not an error).
const FINISHED_REMEMBERED: usize = 64;
/// How long a closing connection may take to flush its last events.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(2);

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process serves this path.
    #[error("{0}: another process is already listening on this socket")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0}: exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// `socket.group` names no group.
    #[error("socket.group: no group named '{0}'")]
    NoGroup(String),
    /// An I/O failure.
    #[error("{path}: {error}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        error: std::io::Error,
    },
}

/// A listening socket, ready before the daemon reports READY.
#[derive(Debug)]
pub struct BoundSocket {
    listener: std::os::unix::net::UnixListener,
    /// The file to remove on exit (`None` when systemd owns it).
    owned_path: Option<PathBuf>,
    /// Where clients connect.
    pub path: PathBuf,
}

/// Binds `socket.path` (or takes the socket systemd passed in), replacing a stale socket file,
/// and applies the configured mode and group.
pub fn bind(settings: &SocketSettings, activated: Option<std::os::unix::net::UnixListener>) -> Result<BoundSocket, SocketError> {
    let path = settings.path();
    let io = |error| SocketError::Io { path: path.clone(), error };
    if let Some(listener) = activated {
        listener.set_nonblocking(true).map_err(io)?;
        let path = listener.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf)).unwrap_or(path);
        return Ok(BoundSocket { listener, owned_path: None, path });
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(SocketError::InUse(path));
            }
            std::fs::remove_file(&path).map_err(io)?;
        }
        Ok(_) => return Err(SocketError::NotASocket(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = std::os::unix::net::UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(settings.mode.bits())).map_err(io)?;
    if let Some(group) = &settings.group {
        let gid = gid_of(group).ok_or_else(|| SocketError::NoGroup(group.clone()))?;
        std::os::unix::fs::chown(&path, None, Some(gid)).map_err(io)?;
    }
    listener.set_nonblocking(true).map_err(io)?;
    Ok(BoundSocket { listener, owned_path: Some(path.clone()), path })
}

impl BoundSocket {
    /// Removes the socket file if this process created it.
    pub fn remove(&self) {
        if let Some(p) = &self.owned_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn gid_of(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; `buf` outlives it and `out` is only read
    // when getgrnam_r reports success.
    let rc = unsafe { libc::getgrnam_r(cname.as_ptr(), &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

/// Accepts connections until the lifecycle leaves `Running`, then waits for every connection
/// to flush and close once it reaches `Closing`.
pub async fn serve(
    socket: &BoundSocket,
    settings: Arc<SocketSettings>,
    scheduler: Scheduler,
    requests: Requests,
    mut life: watch::Receiver<Lifecycle>,
) -> std::io::Result<()> {
    let listener = UnixListener::from_std(socket.listener.try_clone()?)?;
    let limit = Limit { transport: "socket", max: settings.max_connections, key: "socket.max_connections" };
    let mut connections = JoinSet::new();
    let serve = |stream, _peer, permit| {
        let conn = Connection { settings: Arc::clone(&settings), scheduler: scheduler.clone(), requests: requests.clone() };
        let life = life.clone();
        async move {
            conn.run(stream, life).await;
            drop(permit);
        }
    };
    let refuse_busy = |stream, _peer, message: String| refuse(stream, ErrorCode::Overloaded, message);
    accept_loop(&listener, limit, &mut life.clone(), &mut connections, serve, refuse_busy).await;
    drop(listener);
    while *life.borrow() != Lifecycle::Closing {
        if life.changed().await.is_err() {
            break;
        }
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn refuse(mut stream: UnixStream, code: ErrorCode, message: impl Into<String>) {
    let _ = stream.write_all(Event::error(None, code, message).to_line().as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn allowed(s: &SocketSettings, uid: u32, gid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    (s.allowed_uids.is_empty() && s.allowed_gids.is_empty())
        || uid == 0
        || uid == own
        || s.allowed_uids.contains(&uid)
        || s.allowed_gids.contains(&gid)
}

/// What every connection shares.
struct Connection {
    settings: Arc<SocketSettings>,
    scheduler: Scheduler,
    requests: Requests,
}

impl Connection {
    async fn run(self, stream: UnixStream, mut life: watch::Receiver<Lifecycle>) {
        let cred = stream.peer_cred();
        let (uid, gid, pid) = cred.as_ref().map_or((u32::MAX, u32::MAX, None), |c| (c.uid(), c.gid(), c.pid()));
        if cred.is_err() || !allowed(&self.settings, uid, gid) {
            warn!(uid, gid, pid, "refused a peer that is not in socket.allowed_uids / allowed_gids");
            refuse(stream, ErrorCode::Forbidden, "this user may not use the qwenedge socket").await;
            return;
        }
        debug!(uid, pid, "client connected");
        let (read, write) = stream.into_split();
        let out = Arc::new(Outbound::new(self.settings.max_unread_bytes));
        let policy =
            ClientPolicy { remember: FINISHED_REMEMBERED, reject_recent: false, unread_key: "socket.max_unread_bytes", transport: "unix" };
        let client = self.requests.client(policy, Arc::clone(&out));
        let mut writer = tokio::spawn(write_events(write, Arc::clone(&out)));
        let mut reader = BufReader::new(read);
        let max = self.settings.max_request_bytes;
        loop {
            // A client that does not read its events is not read from either.
            let line = tokio::select! {
                line = async { out.room().await; read_line(&mut reader, max).await } => line,
                _ = life.wait_for(|l| *l == Lifecycle::Closing) => break,
            };
            match line {
                Ok(Line::Data(bytes)) if bytes.iter().all(u8::is_ascii_whitespace) => {}
                Ok(Line::Data(bytes)) => self.handle(&bytes, &client),
                Ok(Line::TooLong) => {
                    client.reply(Event::error(
                        None,
                        ErrorCode::BadRequest,
                        format!("request line longer than socket.max_request_bytes ({max})"),
                    ));
                }
                Ok(Line::Eof) | Err(_) => break,
            }
        }
        // The client is gone (or the daemon is closing): its requests are cancelled, and
        // their last answers flushed while it still reads.
        let open = client.cancel_all(CancelReason::Disconnected);
        if open > 0 && *life.borrow() != Lifecycle::Closing {
            info!(requests = open, "client disconnected; cancelling its requests");
        }
        self.scheduler.nudge();
        let _ = tokio::time::timeout(FLUSH_ON_CLOSE, client.settled()).await;
        drop(client);
        out.close();
        if tokio::time::timeout(FLUSH_ON_CLOSE, &mut writer).await.is_err() {
            writer.abort();
        }
    }

    fn handle(&self, bytes: &[u8], client: &Client) {
        match parse_request(bytes, &self.scheduler.limits()) {
            Ok(request) => dispatch(&self.scheduler, request.id.as_str(), request.op, &mut SocketSession(client)),
            Err(bad) => client.reply(Event::error(bad.id, ErrorCode::BadRequest, bad.message)),
        }
    }
}

/// A socket connection's side of its requests: ids are the connection's own.
struct SocketSession<'a>(&'a Client);

impl Session for SocketSession<'_> {
    fn begin(&mut self, id: &str) -> Result<Ticket, Duplicate> {
        self.0.begin(id, id)
    }

    fn duplicate(&mut self, id: &str) {
        self.reply(id, EventBody::error(ErrorCode::BadRequest, format!("id: '{id}' is already in progress on this connection")));
    }

    fn cancel(&mut self, id: &str) -> Cancelled {
        self.0.cancel(id)
    }

    fn unknown_cancel(&mut self, id: &str) {
        self.reply(id, EventBody::error(ErrorCode::BadRequest, format!("cancel: no request '{id}' in progress on this connection")));
    }

    fn reply(&mut self, id: &str, body: EventBody) {
        self.0.reply(Event { id: Some(id.to_string()), body });
    }
}

/// Writes what the connection's queue holds, in batches, until the queue is closed and empty
/// or the peer stops taking bytes.
async fn write_events(mut write: OwnedWriteHalf, out: Arc<Outbound>) {
    let mut buf = Vec::new();
    loop {
        out.ready().await;
        let batch = out.take();
        if batch.is_empty() {
            if out.is_closed() {
                break;
            }
            continue;
        }
        buf.clear();
        for d in batch {
            buf.extend_from_slice(d.event.to_line().as_bytes());
        }
        if write.write_all(&buf).await.is_err() {
            out.close();
            return;
        }
    }
    let _ = write.shutdown().await;
}

enum Line {
    Data(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line of at most `max` bytes; a longer line is skipped to its end
/// and reported as [`Line::TooLong`] so the connection stays usable.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() && !too_long {
                Line::Eof
            } else if too_long {
                Line::TooLong
            } else {
                Line::Data(line)
            });
        }
        let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = found.unwrap_or(buf.len());
        reader.consume(used);
        if found.is_some() {
            return Ok(if too_long { Line::TooLong } else { Line::Data(line) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_skipped_whole() {
        let data = b"short\nxxxxxxxxxxxxxxxxxxxx\nafter\nlast";
        let mut r = BufReader::with_capacity(4, &data[..]);
        let mut got = Vec::new();
        loop {
            match read_line(&mut r, 8).await.unwrap() {
                Line::Data(d) => got.push(String::from_utf8(d).unwrap()),
                Line::TooLong => got.push("<too long>".into()),
                Line::Eof => break,
            }
        }
        assert_eq!(got, vec!["short", "<too long>", "after", "last"]);
    }
}
