//! The test clients' Python (tests/clients/venv.sh: the real client libraries, pinned) and a
//! runner for their check scripts, which print one JSON line when they pass. The scripts scale
//! their own waits by `QWENEDGE_TEST_TIME_SCALE`, which is set here to the tests' whole scale.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::daemon::Daemon;
use super::wait::{self, Bounded};
use serde_json::Value;

/// How long a check script may run as a whole (before scaling); its own waits are shorter.
pub const SCRIPT: Duration = Duration::from_secs(900);

/// How long tests/clients/venv.sh may take to install the clients (before scaling).
const VENV: Duration = Duration::from_secs(900);

/// The clients' Python: `QWENEDGE_CLIENT_PYTHON`, else the venv tests/clients/venv.sh makes.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("QWENEDGE_CLIENT_PYTHON") {
        return p.into();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients/venv.sh");
    let out = Command::new(script).output_within(VENV);
    assert!(out.status.success(), "tests/clients/venv.sh: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim().into()
}

/// The path of a script under tests/clients.
pub fn script(name: &str) -> String {
    format!("{}/../tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A command running the check script `name` with the tests' time scale in its environment.
pub fn command(name: &str) -> Command {
    let mut c = Command::new(python());
    c.arg(script(name)).env(wait::SCALE_VAR, wait::scale().to_string());
    c
}

/// Runs `script` with `args`, asserts it passed (showing its output and the daemon's log if
/// not) and returns its last line as JSON.
pub fn run(script_name: &str, args: &[&str], d: &Daemon) -> Value {
    let began = Instant::now();
    let out = command(script_name).args(args).output_within(SCRIPT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script_name} {args:?} failed after {:?}:\n{stdout}\n{}\ndaemon log:\n{}",
        began.elapsed(),
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    let line: Value = serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap();
    eprintln!("{script_name} {}: {:.1?}", args.first().unwrap_or(&""), began.elapsed());
    line
}
