//! The Unix-socket transport: newline-delimited JSON, many clients, many requests per
//! connection with their events interleaved (each carries its request id). Peers are checked
//! with `SO_PEERCRED`; a client that disconnects cancels its requests. This module only
//! decodes bytes into typed requests for the scheduler and encodes events back.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::api::{parse_request, ErrorCode, Event, EventBody, Op};
use crate::config::{socket_mode, Settings};
use crate::scheduler::{Job, Scheduler};

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
pub fn bind(settings: &Settings, activated: Option<std::os::unix::net::UnixListener>) -> Result<BoundSocket, SocketError> {
    let path = settings.socket_path();
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
    let mode = socket_mode(&settings.socket.mode).unwrap_or(0o660);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    if let Some(group) = &settings.socket.group {
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
pub async fn serve(socket: &BoundSocket, scheduler: Scheduler, mut life: watch::Receiver<Lifecycle>) -> std::io::Result<()> {
    let listener = UnixListener::from_std(socket.listener.try_clone()?)?;
    let settings = scheduler.settings();
    let slots = Arc::new(Semaphore::new(settings.socket.max_connections));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let scheduler = scheduler.clone();
                let life = life.clone();
                match Arc::clone(&slots).try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(async move {
                            connection(stream, scheduler, life).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        connections.spawn(refuse(stream, ErrorCode::Overloaded, "too many connections"));
                    }
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
    drop(listener);
    while *life.borrow() != Lifecycle::Closing {
        if life.changed().await.is_err() {
            break;
        }
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn refuse(mut stream: UnixStream, code: ErrorCode, message: &str) {
    let _ = stream.write_all(Event::error(None, code, message).to_line().as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Requests of one connection that have not received their terminal event.
#[derive(Default)]
struct InFlight {
    running: HashMap<String, Arc<AtomicBool>>,
    finished: VecDeque<String>,
}

const FINISHED_REMEMBERED: usize = 64;

fn allowed(settings: &Settings, uid: u32, gid: u32) -> bool {
    let s = &settings.socket;
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    (s.allowed_uids.is_empty() && s.allowed_gids.is_empty())
        || uid == 0
        || uid == own
        || s.allowed_uids.contains(&uid)
        || s.allowed_gids.contains(&gid)
}

async fn connection(stream: UnixStream, scheduler: Scheduler, mut life: watch::Receiver<Lifecycle>) {
    let settings = scheduler.settings();
    let cred = stream.peer_cred();
    let (uid, gid, pid) = cred.as_ref().map_or((u32::MAX, u32::MAX, None), |c| (c.uid(), c.gid(), c.pid()));
    if cred.is_err() || !allowed(&settings, uid, gid) {
        warn!(uid, gid, pid, "refused a peer that is not in socket.allowed_uids / allowed_gids");
        refuse(stream, ErrorCode::Forbidden, "this user may not use the qwenedge socket").await;
        return;
    }
    debug!(uid, pid, "client connected");
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let inflight = Arc::new(Mutex::new(InFlight::default()));
    let writer_inflight = Arc::clone(&inflight);
    let writer = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            if event.is_terminal() {
                if let Some(id) = &event.id {
                    let mut f = writer_inflight.lock().unwrap_or_else(|p| p.into_inner());
                    if f.running.remove(id).is_some() {
                        f.finished.push_back(id.clone());
                        if f.finished.len() > FINISHED_REMEMBERED {
                            f.finished.pop_front();
                        }
                    }
                }
            }
            if write.write_all(event.to_line().as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    });
    let mut reader = BufReader::new(read);
    let max = settings.socket.max_request_bytes;
    let limit = settings.scheduler.max_tokens_limit;
    loop {
        let line = tokio::select! {
            line = read_line(&mut reader, max) => line,
            _ = life.wait_for(|l| *l == Lifecycle::Closing) => break,
        };
        match line {
            Ok(Line::Data(bytes)) if bytes.iter().all(u8::is_ascii_whitespace) => {}
            Ok(Line::Data(bytes)) => handle(&bytes, limit, &scheduler, &tx, &inflight),
            Ok(Line::TooLong) => {
                let _ = tx.send(Event::error(
                    None,
                    ErrorCode::BadRequest,
                    format!("request line longer than socket.max_request_bytes ({max})"),
                ));
            }
            Ok(Line::Eof) | Err(_) => break,
        }
    }
    // The client is gone (or the daemon is closing): its requests are cancelled.
    let flags: Vec<_> = inflight.lock().unwrap_or_else(|p| p.into_inner()).running.values().cloned().collect();
    if !flags.is_empty() && *life.borrow() != Lifecycle::Closing {
        info!(requests = flags.len(), "client disconnected; cancelling its requests");
    }
    for flag in flags {
        flag.store(true, Ordering::Relaxed);
    }
    scheduler.nudge();
    drop(tx);
    let _ = writer.await;
}

fn handle(bytes: &[u8], limit: usize, scheduler: &Scheduler, tx: &mpsc::UnboundedSender<Event>, inflight: &Arc<Mutex<InFlight>>) {
    let request = match parse_request(bytes, limit) {
        Ok(r) => r,
        Err(bad) => {
            let _ = tx.send(Event::error(bad.id, ErrorCode::BadRequest, bad.message));
            return;
        }
    };
    let id = request.id;
    let reply = |body| {
        let _ = tx.send(Event { id: Some(id.clone()), body });
    };
    match request.op {
        Op::Generate(req) => {
            let cancel = Arc::new(AtomicBool::new(false));
            {
                let mut f = inflight.lock().unwrap_or_else(|p| p.into_inner());
                if f.running.contains_key(&id) {
                    drop(f);
                    reply(EventBody::Error {
                        code: ErrorCode::BadRequest,
                        message: format!("id: '{id}' is already in progress on this connection"),
                    });
                    return;
                }
                f.running.insert(id.clone(), Arc::clone(&cancel));
            }
            let job = Job { id: id.clone(), request: *req, received: Instant::now(), cancel, events: tx.clone() };
            if let Err((job, refusal)) = scheduler.submit(job) {
                inflight.lock().unwrap_or_else(|p| p.into_inner()).running.remove(&job.id);
                reply(EventBody::Error { code: refusal.code, message: refusal.message });
            }
        }
        Op::Cancel => {
            let f = inflight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(flag) = f.running.get(&id) {
                flag.store(true, Ordering::Relaxed);
                drop(f);
                scheduler.nudge();
            } else if !f.finished.contains(&id) {
                drop(f);
                reply(EventBody::Error {
                    code: ErrorCode::BadRequest,
                    message: format!("cancel: no request '{id}' in progress on this connection"),
                });
            }
        }
        Op::Status => reply(EventBody::Status(scheduler.status())),
        Op::Models => reply(EventBody::Models { models: scheduler.models() }),
    }
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
