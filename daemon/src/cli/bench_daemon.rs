//! `qwenedge bench --intent`, through the daemon: starts `qwenedge serve` on the model with a
//! private socket and prefix-snapshot directory and measures what a voice assistant sees —
//! the time from the request to the intent over the socket for a fixed set of utterances, the
//! model passes and forced tokens of each answer, and the time from process start to the first
//! intent answered, without a saved catalog state and then with one. The set runs twice: with
//! the tokens the grammar forces batched into one model pass (the default), and one pass per
//! token as before, for the ratio in the same run.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::ModelArgs;

/// The utterances measured, one per request, in this order: commands with and without slots,
/// questions and chatter that matches no intent.
pub const UTTERANCES: &[&str] = &[
    "turn on the kitchen lights",
    "switch off the living room lamp",
    "set the bedroom light to 40 percent",
    "make the kitchen lights blue",
    "turn off all the lights in the hallway",
    "set the temperature to 21.5 degrees",
    "start a timer for 10 minutes",
    "cancel the timer",
    "pause the music",
    "resume the music in the living room",
    "skip this song",
    "set the volume to 30",
    "what time is it",
    "what's the weather like tomorrow",
    "is the garage door open",
    "open the garage door",
    "lock the front door",
    "turn on the coffee maker",
    "never mind",
    "tell me a joke",
    "who wrote hamlet",
    "order a pizza with extra cheese",
    "dim the office light to 10 percent",
    "turn the fan off",
];

/// Starts with the saved catalog state measured (the median is reported).
const READY_STARTS: usize = 3;

/// The utterance set measured once.
#[derive(Debug, Clone, Default)]
pub struct SetFigures {
    /// Request to intent result, each utterance (ms, client side).
    pub intent_ms: Vec<f64>,
    /// Model passes after the prompt, each answer.
    pub model_steps: Vec<f64>,
    /// Tokens the grammar forced, each answer.
    pub forced_tokens: Vec<f64>,
    /// Tokens generated, each answer.
    pub completion_tokens: Vec<f64>,
    /// Answers recognised as an intent.
    pub recognized: usize,
    /// The answers' texts, to compare both ways.
    pub texts: Vec<String>,
}

/// What the daemon runs measured.
#[derive(Debug, Clone)]
pub struct DaemonFigures {
    /// The set with forced tokens batched.
    pub batched: SetFigures,
    /// The set with one model pass per token.
    pub one_by_one: SetFigures,
    /// Process start to the first intent answered, with no saved catalog state (ms).
    pub ready_ms_cold: f64,
    /// The same with the catalog state saved by the first run (ms; median of three starts).
    pub ready_ms_snapshot: f64,
}

/// A daemon started for the benchmark; killed when dropped.
pub(super) struct Served {
    child: Child,
    started: Instant,
    socket: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    pub(super) fn start(config: &Path, socket: &Path, log: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let started = Instant::now();
        let child = Command::new(exe).args(["serve", "--config"]).arg(config).stdout(Stdio::null()).stderr(log).spawn()?;
        Ok(Self { child, started, socket: socket.to_path_buf() })
    }

    /// Connects, waiting for the socket to appear (and the daemon to stay up).
    pub(super) fn connect(&mut self) -> anyhow::Result<Connection> {
        let until = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok(s) = UnixStream::connect(&self.socket) {
                return Ok(Connection { reader: BufReader::new(s.try_clone()?), writer: s });
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the daemon exited ({status}) before it listened");
            }
            anyhow::ensure!(Instant::now() < until, "the daemon did not listen within 10 minutes");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the daemon with SIGTERM (it saves nothing more; the snapshot is written when the
    /// catalog is pinned).
    pub(super) fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on the pid of a child this process spawned and has not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait()?;
        Ok(())
    }
}

/// One client connection speaking the socket's NDJSON.
pub(super) struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Connection {
    /// Sends `request` without waiting.
    pub(super) fn send(&mut self, request: &Value) -> anyhow::Result<()> {
        writeln!(self.writer, "{request}")?;
        Ok(())
    }

    /// The next event.
    pub(super) fn event(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        anyhow::ensure!(self.reader.read_line(&mut line)? > 0, "the daemon closed the connection");
        Ok(serde_json::from_str(&line)?)
    }

    /// Sends `request` and returns its terminal event.
    pub(super) fn call(&mut self, request: &Value) -> anyhow::Result<Value> {
        let id = request["id"].clone();
        self.send(request)?;
        loop {
            let event = self.event()?;
            if event["id"] == id && matches!(event["event"].as_str(), Some("done" | "intent" | "error" | "status")) {
                anyhow::ensure!(event["event"] != "error", "the daemon answered with an error: {event}");
                return Ok(event);
            }
        }
    }

    fn intent(&mut self, id: &str, text: &str) -> anyhow::Result<Value> {
        self.call(&json!({"id": id, "op": "intent", "text": text}))
    }
}

/// Asks for `status` until `ok` says yes, for at most `within`; the error names `what`.
pub(super) fn wait_status(c: &mut Connection, what: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> anyhow::Result<()> {
    let until = Instant::now() + within;
    loop {
        let status = c.call(&json!({"id": "status", "op": "status"}))?;
        if ok(&status) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < until, "{what} did not happen within {within:?}: {status}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the daemon has the catalog prefix pinned.
pub(super) fn wait_pinned(c: &mut Connection) -> anyhow::Result<()> {
    wait_status(c, "caching the catalog prefix", Duration::from_secs(3600), |s| s["cache"]["pinned"].as_u64() >= Some(1))
}

/// Runs the utterance set on `c`.
fn measure(c: &mut Connection) -> anyhow::Result<SetFigures> {
    // One unmeasured request settles the session (first-run allocations), then the set.
    c.intent("warm", UTTERANCES[1])?;
    let mut set = SetFigures::default();
    for (i, text) in UTTERANCES.iter().enumerate() {
        let began = Instant::now();
        let e = c.intent(&format!("u{i}"), text)?;
        set.intent_ms.push(began.elapsed().as_secs_f64() * 1e3);
        let number = |v: &Value| v.as_f64().unwrap_or(0.0);
        set.model_steps.push(number(&e["timings"]["model_steps"]));
        set.forced_tokens.push(number(&e["timings"]["forced_tokens"]));
        set.completion_tokens.push(number(&e["usage"]["completion_tokens"]));
        set.recognized += usize::from(e["recognized"] == true);
        set.texts.push(e["text"].as_str().unwrap_or_default().to_string());
    }
    Ok(set)
}

/// A daemon's configuration for a benchmark: the model as `model` says, its socket and prefix
/// snapshot directory, the catalog, and whether forced tokens are batched.
pub(super) fn config_text(model: &ModelArgs, catalog: Option<&Path>, socket: &Path, prefix: &Path, batched: bool) -> String {
    let backend = format!("{:?}", model.backend).to_lowercase();
    let given = model.model.clone().unwrap_or_default();
    let path = given.canonicalize().unwrap_or(given);
    let mut c = format!(
        "[model]\npath = {:?}\nthreads = {}\nbackend = {backend:?}\nbatch_forced_tokens = {batched}\n",
        path.display().to_string(),
        model.threads
    );
    if let Some(lib) = &model.onnxruntime {
        c.push_str(&format!("onnxruntime_library = {:?}\n", lib.display().to_string()));
    }
    c.push_str(&format!("[socket]\npath = {:?}\n", socket.display().to_string()));
    c.push_str(&format!("[cache]\ndir = {:?}\n", prefix.display().to_string()));
    if let Some(cat) = catalog {
        c.push_str(&format!("[intents]\ncatalog = {:?}\n", cat.display().to_string()));
    }
    c
}

/// Runs the daemon part of the intent benchmark.
pub fn run(model: &ModelArgs, catalog: Option<&Path>) -> anyhow::Result<DaemonFigures> {
    let dir = tempfile::tempdir()?;
    let (socket, prefix, log) = (dir.path().join("qwenedge.sock"), dir.path().join("prefix"), dir.path().join("daemon.log"));
    let catalog = catalog.map(|c| c.canonicalize()).transpose()?;
    let config = |batched: bool| -> anyhow::Result<PathBuf> {
        let path = dir.path().join(format!("config-{batched}.toml"));
        std::fs::write(&path, config_text(model, catalog.as_deref(), &socket, &prefix, batched))?;
        Ok(path)
    };
    let (batched, one_by_one) = (config(true)?, config(false)?);
    let with_log = |e: anyhow::Error| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        e.context(format!("daemon log (last lines, newest first):\n{}", tail.join("\n")))
    };
    let session = |config: &Path, pinned: bool| -> anyhow::Result<(f64, SetFigures)> {
        let mut served = Served::start(config, &socket, &log)?;
        let mut c = served.connect()?;
        c.intent("first", UTTERANCES[0])?;
        let ready_ms = served.started.elapsed().as_secs_f64() * 1e3;
        let set = if pinned {
            wait_pinned(&mut c)?;
            measure(&mut c)?
        } else {
            SetFigures::default()
        };
        drop(c);
        served.stop()?;
        Ok((ready_ms, set))
    };

    // No saved state: the first answer comes during or after the catalog prefill.
    let (ready_ms_cold, batched_set) = session(&batched, true).map_err(with_log)?;
    anyhow::ensure!(std::fs::read_dir(&prefix).map(|d| d.count()).unwrap_or(0) > 0, "the daemon saved no catalog snapshot");
    // The saved state, read back at start (three starts, the median: a start takes seconds,
    // and one start alone varies by a tenth on a shared machine).
    let mut starts = Vec::new();
    for _ in 0..READY_STARTS {
        let _ = std::fs::remove_file(&log);
        starts.push(session(&batched, false).map_err(with_log)?.0);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        anyhow::ensure!(text.contains("restored a prefix snapshot from disk"), "a start with the saved state did not restore it");
    }
    let ready_ms_snapshot = quantile(&starts, 0.5);
    // One pass per token, for the ratio.
    let (_, one_by_one_set) = session(&one_by_one, true).map_err(with_log)?;
    Ok(DaemonFigures { batched: batched_set, one_by_one: one_by_one_set, ready_ms_cold, ready_ms_snapshot })
}

/// The `q`-quantile (0–1) of `v`, nearest rank.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// The mean of `v`.
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}
