//! Living under systemd: readiness and status notifications, the watchdog, socket activation
//! and where logs go. Everything here degrades to a no-op outside systemd.

use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// First file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Sends one `sd_notify` message (`READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1`) when
/// `NOTIFY_SOCKET` is set; otherwise does nothing.
pub fn notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
    } else {
        socket.send_to(message.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when it is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// The listening socket systemd passed in (`LISTEN_FDS`), if any. The variables are removed so
/// child processes do not inherit them.
pub fn activated_listener() -> Option<std::os::unix::net::UnixListener> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: i32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    // SAFETY: called once at start-up, before any other thread exists.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if pid != std::process::id() || fds < 1 {
        return None;
    }
    let fd = LISTEN_FDS_START;
    // SAFETY: systemd hands this descriptor to the process; nothing else owns it. Setting
    // FD_CLOEXEC keeps it out of child processes.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        Some(std::os::unix::net::UnixListener::from_raw_fd(fd))
    }
}

/// The log filter when `QWENEDGE_LOG` is unset: `level`, minus tract's warning that the
/// export's opset is newer than the ones tract is tested with (the backend's own tests check
/// these graphs against ONNX Runtime).
pub fn default_filter(level: &str) -> String {
    format!("{level},tract_onnx::model=error")
}

/// Logs go to the journal when the daemon runs under systemd with a journal socket, to stderr
/// otherwise. `QWENEDGE_LOG` takes a `tracing` filter (default `default_level`).
pub fn init_logging(default_level: &str) {
    let filter = EnvFilter::try_from_env("QWENEDGE_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter(default_level)));
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some();
    if under_systemd && std::path::Path::new("/run/systemd/journal/socket").exists() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry().with(filter).with(journald.with_syslog_identifier("qwenedge".into())).init();
            return;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A log that cannot be written (a full disk) is dropped; the default reports it with
        // `eprintln!`, which panics when stderr is what failed.
        .log_internal_errors(false)
        .init();
}
