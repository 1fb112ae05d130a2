//! Drives the real `qwenedge serve` binary: a temporary configuration and socket, a client that
//! speaks raw NDJSON, and helpers to collect a request's events.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running daemon; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

/// A command running the `qwenedge` binary, through `wrapper` (an emulator and its arguments)
/// when that is not empty.
pub fn qwenedge_via(wrapper: &[&str]) -> Command {
    match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(env!("CARGO_BIN_EXE_qwenedge"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_qwenedge")),
    }
}

/// The configuration every daemon test starts from; `extra` is appended (TOML).
pub fn config_text(model: &Path, socket: &Path, extra: &str) -> String {
    format!(
        "[model]\npath = {:?}\nthreads = 1\n\n[socket]\npath = {:?}\n{extra}\n",
        model.display().to_string(),
        socket.display().to_string()
    )
}

impl Daemon {
    /// Starts a daemon on the tiny int4 model with `extra` configuration and waits until its
    /// socket answers.
    pub fn start(extra: &str) -> Self {
        Self::start_with_model(&super::model_dir("tiny-a", "int4"), extra)
    }

    /// Starts a daemon on `model`.
    pub fn start_with_model(model: &Path, extra: &str) -> Self {
        Self::start_customized(model, "", extra, |_| {})
    }

    /// Starts a daemon on `model` with `model_keys` (TOML lines) added to its `[model]` section,
    /// `extra` appended, and `customize` applied to the command (environment, say, or another
    /// stderr than the log file) before it is spawned.
    pub fn start_customized(model: &Path, model_keys: &str, extra: &str, customize: impl FnOnce(&mut Command)) -> Self {
        Self::start_via(&[], model, model_keys, extra, customize)
    }

    /// As [`start_customized`](Self::start_customized), the binary run through `wrapper` (an
    /// emulator and its arguments) when it is not empty; start-up may then take minutes.
    pub fn start_via(wrapper: &[&str], model: &Path, model_keys: &str, extra: &str, customize: impl FnOnce(&mut Command)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qwenedge.sock");
        let config = dir.path().join("config.toml");
        let text = config_text(model, &socket, extra).replacen("threads = 1\n", &format!("threads = 1\n{model_keys}\n"), 1);
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("daemon.log");
        let mut command = qwenedge_via(wrapper);
        // Saved prefix snapshots stay with this daemon (the default directory is under here).
        command
            .args(["serve", "--config"])
            .arg(&config)
            .env("QWENEDGE_LOG", "info")
            .env("XDG_CACHE_HOME", dir.path())
            .env_remove("STATE_DIRECTORY")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        customize(&mut command);
        let child = command.spawn().unwrap();
        let mut daemon = Daemon { child, dir, socket, config, log };
        daemon.wait_ready(Duration::from_secs(if wrapper.is_empty() { 60 } else { 300 }));
        daemon
    }

    fn wait_ready(&mut self, within: Duration) {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("daemon exited with {status} during start-up:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not start listening:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a valid pid and signal number has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit and returns its status code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not exit within {within:?}:\n{}", self.log_text());
    }

    /// Waits for what the daemon builds beside the model at start (the grammar compiler, the
    /// catalog prefix): an intent request needs both. Memory measured after this is the
    /// daemon's working set.
    pub fn settle(&self) {
        let mut c = self.client();
        c.send(&json!({"id": "settle", "op": "intent", "text": "turn on the light"}));
        let end = c.until_terminal("settle").pop().unwrap();
        assert_eq!(end["event"], "intent", "{end}");
    }

    /// Resident memory of the daemon in KiB.
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// `status` through a fresh connection.
    pub fn status(&self) -> Value {
        let mut c = self.client();
        c.send(&json!({"id": "status", "op": "status"}));
        c.recv()
    }

    /// Asks `status` until `ok` holds and returns that report; panics naming `what` (with the
    /// last report and the log) after `within`.
    pub fn wait_status(&self, what: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + within;
        loop {
            let status = self.status();
            if ok(&status) {
                return status;
            }
            assert!(Instant::now() < until, "{what}: {status}\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw NDJSON client.
pub struct Client {
    pub writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Client { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) }
    }

    pub fn send(&mut self, request: &Value) {
        self.send_raw(format!("{request}\n").as_bytes());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// The next event; panics on timeout or a closed connection.
    pub fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("reading an event");
        assert!(n > 0, "the daemon closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad event line {line:?}: {e}"))
    }

    /// The next event, or `None` when the daemon closed the connection.
    pub fn try_recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap()),
        }
    }

    /// Events until the terminal one of request `id` (events of other ids are kept too).
    pub fn until_terminal(&mut self, id: &str) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let e = self.recv();
            let done = e["id"] == id && e["event"] != "token";
            events.push(e);
            if done {
                return events;
            }
        }
    }
}

/// A chat request.
pub fn chat(id: &str, text: &str, extra: Value) -> Value {
    let mut r = json!({"id": id, "op": "chat", "messages": [{"role": "user", "content": text}]});
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            r[k] = v;
        }
    }
    r
}

/// The concatenated text of `id`'s token events.
pub fn streamed_text(events: &[Value], id: &str) -> String {
    events.iter().filter(|e| e["id"] == id && e["event"] == "token").map(|e| e["text"].as_str().unwrap().to_string()).collect()
}
