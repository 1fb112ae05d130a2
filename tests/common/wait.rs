//! How long the tests wait, from one place, and what they say when a wait runs out.
//!
//! Every wait is a *base* — what it may take on an idle machine, with room to spare — times one
//! [`scale`]: `QWENEDGE_TEST_TIME_SCALE` (for a slow or busy machine), times the build's own
//! factor (a debug build, the fault-injection build), times [`EMULATED`] where a daemon runs
//! under an emulator. No test asserts on wall-clock time: a wait that runs out is a failure that
//! says what it waited for, how long, and the last lines of the logs of the daemons and brokers
//! the test started, so a slow machine and a real fault can be told apart. The Python check
//! scripts get the same scale in their environment (`tests/clients/checks.py`'s `patience`).

use std::fmt::Display;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The environment variable that scales every wait (a positive number; 1 when unset).
pub const SCALE_VAR: &str = "QWENEDGE_TEST_TIME_SCALE";

/// A debug build: the daemon's own code unoptimized (tokenizer, grammar, the tract kernels).
const DEBUG_BUILD: f64 = 4.0;

/// The fault-injection build: its tests make the daemon fail runs and try again.
const FAULT_INJECTION_BUILD: f64 = 1.5;

/// A daemon run under an emulator (qemu-user): every instruction is translated.
pub const EMULATED: f64 = 10.0;

/// How often a polling wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// Lines of each watched log shown when a wait runs out.
const TAIL_LINES: usize = 30;

/// How long a command run by [`Bounded::output_in_time`] may take (before scaling).
pub const COMMAND: Duration = Duration::from_secs(120);

/// The factor every wait is multiplied by: `QWENEDGE_TEST_TIME_SCALE` times the build's own.
/// Panics naming the variable when it is not a positive number.
pub fn scale() -> f64 {
    static SCALE: OnceLock<f64> = OnceLock::new();
    *SCALE.get_or_init(|| {
        let asked = match std::env::var(SCALE_VAR) {
            Err(_) => 1.0,
            Ok(v) => match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() && x > 0.0 => x,
                _ => panic!("{SCALE_VAR}={v:?}: not a positive number (it multiplies every wait of the tests)"),
            },
        };
        let debug = if cfg!(debug_assertions) { DEBUG_BUILD } else { 1.0 };
        let faults = if cfg!(feature = "fault-injection") { FAULT_INJECTION_BUILD } else { 1.0 };
        asked * debug * faults
    })
}

/// `base` times [`scale`].
pub fn patience(base: Duration) -> Duration {
    base.mul_f64(scale())
}

/// A wait under way: what for, and until when.
pub struct Wait {
    what: String,
    base: Duration,
    factor: f64,
    began: Instant,
    until: Instant,
}

impl Wait {
    /// A wait for `what` of `base` times [`scale`].
    pub fn new(what: impl Into<String>, base: Duration) -> Self {
        Self::slowed(what, base, 1.0)
    }

    /// A wait of `base` times [`scale`] times `slowdown` (e.g. [`EMULATED`]).
    pub fn slowed(what: impl Into<String>, base: Duration, slowdown: f64) -> Self {
        let factor = scale() * slowdown;
        let began = Instant::now();
        Self { what: what.into(), base, factor, began, until: began + base.mul_f64(factor) }
    }

    /// Time left (zero once it ran out).
    pub fn left(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.until
    }

    /// Starts the wait again from now (for waits that allow so long between two signs of
    /// progress).
    pub fn renew(&mut self) {
        self.began = Instant::now();
        self.until = self.began + self.base.mul_f64(self.factor);
    }

    /// Sleeps one poll interval, or fails with `detail` once the wait ran out.
    pub fn tick(&self, detail: impl FnOnce() -> String) {
        if self.expired() {
            self.fail(detail());
        }
        std::thread::sleep(POLL.min(self.left()));
    }

    /// Panics: what the test waited for, how long, `detail`, and the logs' last lines.
    pub fn fail(&self, detail: impl Display) -> ! {
        let waited = self.began.elapsed().as_secs_f64();
        let detail = detail.to_string();
        let sep = if detail.is_empty() { "" } else { "\n" };
        panic!(
            "timed out waiting {waited:.1} s for {} (allowed {:.1} s: base {:.1} s × scale {:.2}; {SCALE_VAR} raises it on a slow machine){sep}{detail}\n{}",
            self.what,
            self.base.mul_f64(self.factor).as_secs_f64(),
            self.base.as_secs_f64(),
            self.factor,
            logs()
        )
    }
}

/// Polls `ready` until it holds; fails naming `what` after `base` (scaled).
pub fn until(what: &str, base: Duration, mut ready: impl FnMut() -> bool) {
    poll(what, base, || if ready() { Ok(()) } else { Err(String::new()) })
}

/// Polls `check` until it gives a value; fails naming `what` and the last `Err` (the state it
/// saw) after `base` (scaled).
pub fn poll<T>(what: &str, base: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let wait = Wait::new(what, base);
    loop {
        match check() {
            Ok(v) => return v,
            Err(seen) => wait.tick(|| if seen.is_empty() { seen } else { format!("last seen: {seen}") }),
        }
    }
}

/// Waits for `child` to exit within `base` (scaled); kills it and fails naming `what` when it
/// does not.
pub fn exit(child: &mut Child, what: &str, base: Duration) -> ExitStatus {
    let wait = Wait::new(what, base);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if wait.expired() {
            let _ = child.kill();
            let _ = child.wait();
            wait.fail("killed it");
        }
        std::thread::sleep(POLL);
    }
}

/// A log file shown when a wait of the test that watches it runs out.
struct Watched {
    key: u64,
    test: Option<String>,
    label: String,
    path: PathBuf,
}

static WATCHED: Mutex<Vec<Watched>> = Mutex::new(Vec::new());

/// Shows `path` (as `label`) in the report of any wait of this test that runs out, until the
/// guard drops.
#[must_use]
pub struct Watch(u64);

/// Watches `path`, a log of something this test started.
pub fn watch(label: impl Into<String>, path: &Path) -> Watch {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let key = NEXT.fetch_add(1, Ordering::Relaxed);
    let test = std::thread::current().name().map(str::to_string);
    let entry = Watched { key, test, label: label.into(), path: path.to_path_buf() };
    WATCHED.lock().unwrap_or_else(|p| p.into_inner()).push(entry);
    Watch(key)
}

impl Drop for Watch {
    fn drop(&mut self) {
        WATCHED.lock().unwrap_or_else(|p| p.into_inner()).retain(|w| w.key != self.0);
    }
}

/// The last lines of the logs this test watches: those started on this thread (the test's,
/// named after it), or every watched log when this thread is a helper without a name.
pub fn logs() -> String {
    let watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
    let here = std::thread::current().name().map(str::to_string);
    let mine: Vec<&Watched> = watched.iter().filter(|w| here.is_some() && w.test == here).collect();
    let shown = if mine.is_empty() { watched.iter().collect() } else { mine };
    if shown.is_empty() {
        return "(no daemon or broker log is watched by this test)".into();
    }
    shown.iter().map(|w| tail(&w.label, &w.path)).collect::<Vec<_>>().join("\n")
}

fn tail(label: &str, path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Err(e) => format!("--- {label} log {}: unreadable ({e}) ---", path.display()),
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(TAIL_LINES);
            format!(
                "--- {label} log {} (last {} of {} lines) ---\n{}",
                path.display(),
                lines.len() - from,
                lines.len(),
                lines[from..].join("\n")
            )
        }
    }
}

/// A command run to its end within a scaled time: killed, and the test failed with what it
/// printed, when it takes longer.
pub trait Bounded {
    /// Runs to the end within [`COMMAND`] (scaled); stdout and stderr captured, stdin empty.
    fn output_in_time(&mut self) -> Output {
        self.output_within(COMMAND)
    }

    /// Runs to the end within `base` (scaled).
    fn output_within(&mut self, base: Duration) -> Output;
}

impl Bounded for Command {
    fn output_within(&mut self, base: Duration) -> Output {
        let line = std::iter::once(self.get_program()).chain(self.get_args()).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {line}: {e}"));
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        };
        let stdout = drain(Box::new(child.stdout.take().unwrap()));
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        let wait = Wait::new(format!("{line} to finish"), base);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if wait.expired() {
                let _ = child.kill();
                let _ = child.wait();
                let err = stderr.join().unwrap_or_default();
                let text = String::from_utf8_lossy(&err);
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(TAIL_LINES);
                wait.fail(format!("killed it; the last lines of its stderr:\n{}", lines[from..].join("\n")));
            }
            std::thread::sleep(POLL);
        };
        Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
    }
}
