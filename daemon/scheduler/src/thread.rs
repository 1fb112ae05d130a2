//! The engine thread: a short loop around the scheduling core. It asks the core for work under
//! the board's lock (waiting on the condition variable when there is none), does it outside
//! the lock, sleeps to keep to the warm duty cycle, and applies the outcome. A panic anywhere
//! in it is caught here: every queued request is answered `model_error` (running ones are
//! answered by their responders as they drop), and the thread reports the failure, so the
//! daemon exits with an error and systemd restarts it.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::error;

use super::core::{Core, Next, SchedulerState};
use super::model::Loader;
use super::pacer::Pacer;
use qwenedge_api::{ErrorCode, EventBody, Phase};

/// The board and what wakes the engine thread.
pub(super) struct Shared {
    board: Mutex<SchedulerState>,
    pub(super) wake: Condvar,
    /// Milliseconds since `started` at the engine thread's last loop turn.
    heartbeat_ms: AtomicU64,
    pub(super) started: Instant,
}

impl Shared {
    pub(super) fn new(board: SchedulerState) -> Self {
        Self { board: Mutex::new(board), wake: Condvar::new(), heartbeat_ms: AtomicU64::new(0), started: Instant::now() }
    }

    /// The board (a panic elsewhere does not make it unusable).
    pub(super) fn lock(&self) -> MutexGuard<'_, SchedulerState> {
        self.board.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn beat(&self) {
        self.heartbeat_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the engine thread last showed life.
    pub(super) fn silence(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }
}

/// Runs the engine thread until draining has finished (`Ok`) or it panicked (`Err` with the
/// panic's message).
pub(super) fn run<L: Loader>(shared: &Shared, core: Core<L>) -> Result<(), String> {
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(move || serve(shared, core)));
    let mut board = shared.lock();
    board.phase = Phase::Stopped;
    let Err(panic) = outcome else { return Ok(()) };
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    error!(panic = %message, "the engine thread panicked; answering every open request and exiting");
    let queued = board.queue.take_where(|_| true);
    board.stats.running.clear();
    for job in queued {
        board.answer(job, EventBody::error(ErrorCode::ModelError, "the engine failed; the daemon is restarting"));
    }
    Err(message)
}

fn serve<L: Loader>(shared: &Shared, mut core: Core<L>) {
    let mut pacer = Pacer::default();
    loop {
        shared.beat();
        let (work, snapshot, duty) = {
            let mut board = shared.lock();
            loop {
                match core.next(&mut board, Instant::now()) {
                    Next::Exit => return,
                    Next::Run(work, snapshot) => break (work, snapshot, board.duty()),
                    Next::Wait(timeout) => {
                        board = shared.wake.wait_timeout(board, timeout).unwrap_or_else(|p| p.into_inner()).0;
                        shared.beat();
                    }
                }
            }
        };
        let ran = core.perform(work, &snapshot);
        let sleep = pacer.after(ran.busy, duty);
        if !sleep.is_zero() {
            let began = Instant::now();
            std::thread::sleep(sleep);
            let slept = began.elapsed();
            pacer.slept(slept);
            core.charge_pause(ran.charged, slept);
        }
        core.after(&mut shared.lock(), ran);
    }
}
