//! Start-up and systemd integration of `qwenedge serve`: configuration errors, stale and
//! foreign socket files, `--print-config`, socket activation, readiness and watchdog messages.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::daemon::{chat, config_text, Client, START};
use crate::common::wait::{self, Bounded, Wait};
use serde_json::json;

fn serve(config: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qwenedge"));
    c.args(["serve", "--config"]).arg(config).env("QWENEDGE_LOG", "info");
    c
}

fn write_config(dir: &std::path::Path, extra: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let socket = dir.join("q.sock");
    let config = dir.join("config.toml");
    std::fs::write(&config, config_text(&crate::common::model_dir("tiny-a", "int4"), &socket, extra)).unwrap();
    (config, socket)
}

#[test]
fn bad_configuration_stops_start_up_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (config, socket) = write_config(dir.path(), "[scheduler]\nqueue_capacity = -3\n");
    let out = serve(&config).output_in_time();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("scheduler.queue_capacity") && stderr.contains("config.toml"), "{stderr}");
    assert!(!socket.exists(), "nothing started");

    let out = serve(&config).env("QWENEDGE__SCHEDULER__QUEUE_CAPACITY", "4").env("QWENEDGE__MODEL__THREADZ", "1").output_in_time();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("threadz") && stderr.contains("QWENEDGE__MODEL__THREADZ"), "{stderr}");
}

#[test]
fn print_config_shows_the_effective_values() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(dir.path(), "");
    let out = serve(&config).arg("--print-config").env("QWENEDGE__SCHEDULER__QUEUE_CAPACITY", "7").output_in_time();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("queue_capacity = 7"), "{text}");
    assert!(text.contains("[socket]") && text.contains("mode = \"0660\""), "{text}");
}

#[test]
fn stale_socket_files_are_replaced_and_foreign_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let (config, socket) = write_config(dir.path(), "");
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists(), "a stale socket file is left behind");
    let mut d = serve(&config).stderr(Stdio::null()).spawn().unwrap();
    wait::until("the daemon to listen on the replaced socket", START, || std::os::unix::net::UnixStream::connect(&socket).is_ok());
    let mode = std::fs::metadata(&socket).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o660);
    // A second daemon on the same path refuses to steal the live socket.
    let out = serve(&config).output_in_time();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"));
    d.kill().unwrap();
    d.wait().unwrap();

    std::fs::remove_file(&socket).ok();
    std::fs::write(&socket, "not a socket").unwrap();
    let out = serve(&config).output_in_time();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("is not a socket"), "{stderr}");
}

#[test]
fn socket_activation_readiness_and_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(dir.path(), "");
    let activated_path = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&activated_path).unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let fd = listener.as_raw_fd();
    // As systemd does: the listening socket is descriptor 3, and LISTEN_PID names the process
    // that exec()s the daemon (the shell's own pid, which `exec` keeps).
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" serve --config {:?}", config.display().to_string()))
        .arg(env!("CARGO_BIN_EXE_qwenedge"))
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(Stdio::null());
    // SAFETY: only dup2/fcntl on this process's descriptors run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec set, so clear it explicitly.
            let ok = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let _reap = Reap(child.id());
    let mut buf = [0u8; 512];
    let mut messages = Vec::new();
    // One notification within `wait`'s time.
    let next = |wait: &Wait, buf: &mut [u8]| {
        notify.set_read_timeout(Some(wait.left().max(Duration::from_millis(1)))).unwrap();
        let n = notify.recv(buf).unwrap_or_else(|e| wait.fail(e));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = Wait::new("READY=1 on the notify socket", START);
    while !messages.iter().any(|m: &String| m.contains("READY=1")) {
        messages.push(next(&ready, &mut buf));
    }
    // READY means the model is loaded and the passed-in socket answers.
    let mut c = Client::connect(&activated_path).patience(Duration::from_secs(20));
    c.send(&chat("act", "hello", json!({"max_tokens": 2})));
    assert_eq!(c.until_terminal("act").last().unwrap()["event"], "done");
    // WATCHDOG_USEC is 200 ms: a ping comes every 100 ms.
    let ping = Wait::new("a WATCHDOG=1 ping", Duration::from_secs(10));
    while !next(&ping, &mut buf).contains("WATCHDOG=1") {}
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(wait::exit(&mut child, "the daemon to exit after SIGTERM", Duration::from_secs(30)).code(), Some(0));
    assert!(activated_path.exists(), "a socket owned by systemd is left in place");
    assert!(messages.iter().any(|m| m.contains("STATUS=loading")), "{messages:?}");
}

#[test]
fn the_shipped_example_configuration_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = std::fs::read_to_string(root.join("deploy/config.example.toml")).unwrap();
    let model = crate::common::model_dir("tiny-a", "int4");
    let text = example.replace("/var/lib/qwenedge/models/qwen3.5-0.8b-int4", &model.display().to_string());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text).unwrap();
    let out = serve(&config).arg("--print-config").output_in_time();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Everything a connection receives until the server closes it.
fn read_to_close(mut s: impl std::io::Read, what: &str) -> String {
    let wait = Wait::new(format!("{what}, then the connection closed"), Duration::from_secs(30));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return String::from_utf8_lossy(&got).into_owned(),
            Err(e) if wait.expired() => wait.fail(format!("{e}; got so far: {}", String::from_utf8_lossy(&got))),
            Err(_) => {}
        }
    }
}

#[test]
fn a_connection_over_the_limit_gets_a_busy_answer_on_every_transport() {
    use std::io::Write;
    let (http, wyoming) = (crate::common::mqtt::free_port(), crate::common::mqtt::free_port());
    let d = crate::common::daemon::Daemon::start(&format!(
        "max_connections = 1\n[http]\nenabled = true\nlisten = \"127.0.0.1:{http}\"\nmax_connections = 1\n[wyoming]\nenabled = true\nlisten = \"127.0.0.1:{wyoming}\"\nmax_connections = 1\n"
    ));
    let timeout = Some(Duration::from_millis(200));

    // The socket: one client served, the next told `overloaded` and closed.
    // (The start-up's own status connection may still hold the slot for a moment.)
    let first = wait::poll("a socket connection served", Duration::from_secs(30), || {
        let mut c = Client::connect(&d.socket);
        c.send(&json!({"id": "s", "op": "status"}));
        let e = c.recv();
        if e["event"] == "status" {
            Ok(c)
        } else {
            Err(e.to_string())
        }
    });
    let second = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    second.set_read_timeout(timeout).unwrap();
    let said = read_to_close(&second, "the socket's busy answer");
    let e: serde_json::Value = serde_json::from_str(said.trim()).unwrap_or_else(|_| panic!("one error event: {said:?}"));
    assert_eq!((e["event"].as_str(), e["code"].as_str()), (Some("error"), Some("overloaded")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("socket.max_connections = 1"), "{e}");
    drop(first);

    // HTTP: a held connection, then each API's own busy answer.
    let _held = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    for (path, ollama) in [("/v1/models", false), ("/api/tags", true)] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
        s.set_read_timeout(timeout).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let said = read_to_close(&s, &format!("HTTP's busy answer to {path}"));
        let (head, body) = said.split_once("\r\n\r\n").unwrap_or_else(|| panic!("an HTTP answer: {said:?}"));
        let body: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("a JSON body: {said:?}"));
        assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
        if ollama {
            assert!(head.starts_with("HTTP/1.1 503"), "{head}");
            assert!(body["error"].as_str().unwrap().contains("http.max_connections = 1"), "{body}");
        } else {
            assert!(head.starts_with("HTTP/1.1 429"), "{head}");
            assert_eq!(body["error"]["code"], "overloaded", "{body}");
            assert!(body["error"]["message"].as_str().unwrap().contains("http.max_connections = 1"), "{body}");
        }
    }

    // Wyoming: a held connection, then an `error` event.
    let _held = std::net::TcpStream::connect(("127.0.0.1", wyoming)).unwrap();
    let s = std::net::TcpStream::connect(("127.0.0.1", wyoming)).unwrap();
    s.set_read_timeout(timeout).unwrap();
    let said = read_to_close(&s, "Wyoming's busy answer");
    let header: serde_json::Value =
        serde_json::from_str(said.lines().next().unwrap_or_default()).unwrap_or_else(|_| panic!("a frame: {said:?}"));
    assert_eq!(header["type"], "error", "{said}");
    assert!(said.contains("overloaded") && said.contains("wyoming.max_connections = 1"), "{said}");

    let log = d.log_text();
    for transport in ["socket", "HTTP", "Wyoming"] {
        assert!(log.contains(&format!("{transport}: too many connections")), "a log line for {transport}:\n{log}");
    }
}

#[test]
fn a_daemon_started_in_process_serves_reloads_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let (config, socket) = write_config(dir.path(), "");
    let loaded = qwenedge_config::load(Some(&config), &Default::default()).expect("the configuration");
    let mut daemon = qwenedge::Daemon::start(loaded, None).expect("an in-process daemon");
    assert_eq!(daemon.endpoints().socket, socket);
    let mut c = Client::connect(&socket);
    c.send(&chat("a", "hello", json!({"max_tokens": 4})));
    let done = c.until_terminal("a").pop().unwrap();
    assert_eq!((done["event"].as_str(), done["usage"]["completion_tokens"].as_u64()), (Some("done"), Some(4)), "{done}");

    // A reload with a new scheduler limit takes effect for the next request.
    let reloaded = std::fs::read_to_string(&config).unwrap() + "\n[scheduler]\nmax_tokens_limit = 3\ndefault_max_tokens = 3\n";
    std::fs::write(&config, reloaded).unwrap();
    daemon.reload(qwenedge_config::load(Some(&config), &Default::default()).expect("the new configuration"));
    wait::poll("the reloaded limit to refuse 4 tokens", Duration::from_secs(30), || {
        c.send(&chat("b", "hello", json!({"max_tokens": 4})));
        let end = c.until_terminal("b").pop().unwrap();
        if end["event"] == "error" && end["message"].as_str().unwrap_or_default().contains("max_tokens") {
            Ok(())
        } else {
            Err(end.to_string())
        }
    });

    // A request still running when the shutdown comes is finished within the grace period.
    c.send(&chat("c", "hello", json!({"max_tokens": 3})));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert!(
        runtime.block_on(async { tokio::time::timeout(Duration::from_millis(50), daemon.ended()).await.is_err() }),
        "the daemon runs until it is told to stop"
    );
    daemon.shutdown(Duration::from_secs(30)).expect("a clean stop");
    let end = c.until_terminal("c").pop().unwrap();
    assert_eq!(end["event"], "done", "{end}");
    assert!(!socket.exists(), "the socket file is removed");
}
