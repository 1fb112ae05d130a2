//! Drives the real `qwenedge serve` binary: a temporary configuration and socket, a client that
//! speaks raw NDJSON, and helpers to collect a request's events. Every wait here is a base
//! scaled by [`super::wait`]; one that runs out fails with what it waited for and the log.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::wait::{self, Wait};

/// How long a daemon may take to load the tiny model and listen (before scaling).
pub const START: Duration = Duration::from_secs(60);

/// How long a client waits for the next event of a request (before scaling).
pub const NEXT_EVENT: Duration = Duration::from_secs(60);

/// A running daemon; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// What every wait on this daemon is multiplied by besides the scale ([`wait::EMULATED`]
    /// under an emulator, else 1).
    pub slowdown: f64,
    _watch: wait::Watch,
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
        let slowdown = if wrapper.is_empty() { 1.0 } else { wait::EMULATED };
        Self::start_slowed(wrapper, slowdown, model, model_keys, extra, customize)
    }

    /// As [`start_customized`](Self::start_customized), every wait for this daemon `slowdown`
    /// times longer (a simulated accelerator: start-up and each step take seconds).
    pub fn start_slowed(
        wrapper: &[&str],
        slowdown: f64,
        model: &Path,
        model_keys: &str,
        extra: &str,
        customize: impl FnOnce(&mut Command),
    ) -> Self {
        let text = |socket: &Path| config_text(model, socket, extra).replacen("threads = 1\n", &format!("threads = 1\n{model_keys}\n"), 1);
        Self::start_configured(wrapper, slowdown, text, customize)
    }

    /// A daemon without a model directory (`[model]` left out), `extra` as its configuration.
    pub fn start_without_model(extra: &str) -> Self {
        let text = |socket: &Path| format!("[socket]\npath = {:?}\n{extra}\n", socket.display().to_string());
        Self::start_configured(&[], 1.0, text, |_| {})
    }

    /// A daemon on the configuration `text` makes for its socket path.
    fn start_configured(wrapper: &[&str], slowdown: f64, text: impl FnOnce(&Path) -> String, customize: impl FnOnce(&mut Command)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qwenedge.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text(&socket)).unwrap();
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
        let _watch = wait::watch("daemon", &log);
        let mut daemon = Daemon { child, dir, socket, config, log, slowdown, _watch };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let wait = Wait::slowed(format!("the daemon to listen on {}", self.socket.display()), START, self.slowdown);
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("daemon exited with {status} during start-up:\n{}", self.log_text());
            }
            wait.tick(String::new);
        }
    }

    /// A wait on this daemon: `base` scaled, and slowed as the daemon is.
    pub fn wait(&self, what: impl Into<String>, base: Duration) -> Wait {
        Wait::slowed(what, base, self.slowdown)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).slowed(self.slowdown)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a valid pid and signal number has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits (`base`, scaled) for the process to exit and returns its status code.
    pub fn wait_exit(&mut self, base: Duration) -> Option<i32> {
        let wait = self.wait("the daemon to exit", base);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            wait.tick(String::new);
        }
    }

    /// Waits (`base`, scaled) until the log holds `needle` at least `count` times.
    pub fn wait_log(&self, needle: &str, count: usize, base: Duration) {
        let wait = self.wait(format!("{count} × {needle:?} in the daemon's log"), base);
        loop {
            let seen = self.log_text().matches(needle).count();
            if seen >= count {
                return;
            }
            wait.tick(|| format!("seen {seen} times"));
        }
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
        self.proc_status_kb("VmRSS:")
    }

    /// The daemon's resident memory that is its own (heap, stacks: `RssAnon`) in KiB, without
    /// the pages of the files it maps (the model's weights, the tokenizer), which the kernel
    /// may drop and read again.
    pub fn anon_kb(&self) -> u64 {
        self.proc_status_kb("RssAnon:")
    }

    fn proc_status_kb(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// `status` through a fresh connection.
    pub fn status(&self) -> Value {
        let mut c = self.client();
        c.send(&json!({"id": "status", "op": "status"}));
        c.recv()
    }

    /// Asks `status` until `ok` holds and returns that report; fails naming `what` (with the
    /// last report and the log) after `base` (scaled).
    pub fn wait_status(&self, what: &str, base: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let wait = self.wait(what, base);
        loop {
            let status = self.status();
            if ok(&status) {
                return status;
            }
            wait.tick(|| format!("last status: {status}"));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw NDJSON client. Each event is waited for [`NEXT_EVENT`] (scaled) unless told
/// otherwise; a wait that runs out fails naming the request and showing the daemon's log.
pub struct Client {
    pub writer: UnixStream,
    reader: BufReader<UnixStream>,
    socket: PathBuf,
    patience: Duration,
    slowdown: f64,
}

impl Client {
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).unwrap_or_else(|e| panic!("connecting to {}: {e}\n{}", socket.display(), wait::logs()));
        Client {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
            socket: socket.to_path_buf(),
            patience: NEXT_EVENT,
            slowdown: 1.0,
        }
    }

    /// Waits `base` (scaled) for each event instead of [`NEXT_EVENT`].
    pub fn patience(mut self, base: Duration) -> Self {
        self.patience = base;
        self
    }

    /// Every wait multiplied by `slowdown` as well (a daemon under an emulator).
    pub fn slowed(mut self, slowdown: f64) -> Self {
        self.slowdown = slowdown;
        self
    }

    pub fn send(&mut self, request: &Value) {
        self.send_raw(format!("{request}\n").as_bytes());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// The next event; fails when none comes in time or the daemon closes the connection.
    pub fn recv(&mut self) -> Value {
        self.recv_for("the next event")
    }

    /// The next event, waited for as `what`.
    fn recv_for(&mut self, what: &str) -> Value {
        let wait = Wait::slowed(format!("{what} on {}", self.socket.display()), self.patience, self.slowdown);
        match self.read_line(&wait) {
            Ok(Some(line)) => serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad event line {line:?}: {e}")),
            Ok(None) => panic!("the daemon closed the connection while the test waited for {what}\n{}", wait::logs()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => wait.fail("nothing arrived"),
            Err(e) => panic!("reading {what}: {e}\n{}", wait::logs()),
        }
    }

    /// One line within `wait`; `None` when the connection closed.
    fn read_line(&mut self, wait: &Wait) -> std::io::Result<Option<String>> {
        self.reader.get_ref().set_read_timeout(Some(wait.left().max(Duration::from_millis(1))))?;
        let mut line = String::new();
        match self.reader.read_line(&mut line)? {
            0 => Ok(None),
            _ => Ok(Some(line)),
        }
    }

    /// The next event, or `None` when the daemon closed the connection or sent nothing in time.
    pub fn try_recv(&mut self) -> Option<Value> {
        let wait = Wait::slowed("an event", self.patience, self.slowdown);
        match self.read_line(&wait) {
            Ok(Some(line)) => Some(serde_json::from_str(&line).unwrap()),
            Ok(None) | Err(_) => None,
        }
    }

    /// Events until the terminal one of request `id` (events of other ids are kept too).
    pub fn until_terminal(&mut self, id: &str) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let what = format!("the terminal event of request {id:?} (after {} events)", events.len());
            let e = self.recv_for(&what);
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
