//! The daemon as a library: [`Daemon::start`] turns loaded settings into a running daemon —
//! the model loaded, every listener bound, the engine thread, the budget monitor and the
//! transports started, READY sent — and hands back a handle that reloads the configuration and
//! shuts down with a grace period. `qwenedge serve` is a thin wrapper that maps signals onto the
//! handle; a test or an embedding program starts a daemon the same way, in its own process.
//!
//! The transports run on a thread of their own with a single-threaded async runtime; the
//! engine runs on its thread. On shutdown the lifecycle goes Draining (no new connections or
//! requests; running ones get the grace period), then Closing once the engine has stopped (each
//! connection flushes what it holds); MQTT closes last so that the final events still go out.
//! If the engine thread panics, every open request is answered `model_error`, the transports
//! flush and close, and the daemon ends with [`DaemonError::Engine`].

mod home;
mod models;
mod run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use qwenedge_budget::monitor::{self, MonitorHandle};
use qwenedge_config::{Loaded, Settings};
use qwenedge_mqtt::{MqttError, MqttTransport};
use qwenedge_runner::{EngineLoader, LoadError, Runner};
use qwenedge_scheduler::Scheduler;
use tokio::sync::watch;
use tracing::info;

use crate::service;

/// Why the daemon could not start, or how it ended.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The MQTT settings are unusable, or the transport could not start.
    #[error("MQTT: {0}")]
    Mqtt(MqttError),
    /// The model could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The sentence templates (data or custom sentences) could not be loaded.
    #[error("sentence templates: {0}")]
    Sentences(#[from] qwenedge_sentences::LoadError),
    /// The Unix socket could not be bound.
    #[error(transparent)]
    Socket(#[from] qwenedge_unix::SocketError),
    /// An HTTP listen address could not be bound.
    #[error(transparent)]
    Http(#[from] qwenedge_http::HttpError),
    /// A Wyoming listen address could not be bound.
    #[error(transparent)]
    Wyoming(#[from] qwenedge_wyoming::WyomingError),
    /// A thread (engine, budget monitor, transports) or the async runtime could not start.
    #[error("starting {what}: {error}")]
    Start {
        /// What was starting.
        what: &'static str,
        /// The failure.
        error: std::io::Error,
    },
    /// The engine thread failed; a service manager should restart the daemon.
    #[error("the engine thread failed ({0}); exiting so that the service manager restarts the daemon")]
    Engine(String),
    /// The transports' thread ended without a result (it panicked).
    #[error("the transports' thread ended without a result")]
    Lost,
}

impl From<MqttError> for DaemonError {
    fn from(e: MqttError) -> Self {
        Self::Mqtt(e)
    }
}

/// What the handle asks of the running daemon: one slot per kind of order, which the latest
/// order overwrites, so nothing queues however often the handle is used (a second SIGTERM, a
/// burst of SIGHUPs: the newest grace and the newest configuration are what count).
pub(crate) struct Orders {
    /// Stop: running requests get this grace, then are cancelled.
    shutdown: watch::Receiver<Option<Duration>>,
    /// New settings and catalog (a configuration reload).
    reload: watch::Receiver<Option<Loaded>>,
}

/// Where a running daemon listens.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The Unix socket.
    pub socket: PathBuf,
    /// The HTTP addresses (empty when HTTP is off).
    pub http: Vec<SocketAddr>,
    /// The Wyoming addresses (empty when Wyoming is off).
    pub wyoming: Vec<SocketAddr>,
}

/// A running daemon.
pub struct Daemon {
    shutdown: watch::Sender<Option<Duration>>,
    reload: watch::Sender<Option<Loaded>>,
    thread: std::thread::JoinHandle<Result<(), DaemonError>>,
    ended: watch::Receiver<bool>,
    endpoints: Endpoints,
    grace: Duration,
}

impl Daemon {
    /// Starts a daemon from `loaded` (see [`qwenedge_config::load`]); `activated` is a listening
    /// socket the service manager passed in, used instead of binding `socket.path`. Returns
    /// once every transport serves; any failure before that is returned and nothing is left
    /// running.
    pub fn start(loaded: Loaded, activated: Option<std::os::unix::net::UnixListener>) -> Result<Self, DaemonError> {
        let settings = Arc::clone(&loaded.settings);
        if settings.mqtt.enabled {
            MqttTransport::check(&settings.mqtt)?;
        }
        // With `[homeassistant]`, the last copy of its home serves until Home Assistant answers.
        let copy = home::last_copy(&loaded);
        let mut served = home::Served::default();
        let catalog = served.compose(&loaded, copy.as_ref());
        let local = home::local_stage(&loaded, &catalog, copy.as_ref())?;
        let load = settings.model.load_settings();
        // Without a model directory (`intents.local = "only"`) the sentence templates answer alone.
        let engine = match &settings.model.path {
            Some(path) => {
                service::notify("STATUS=loading the model");
                info!(model = %path.display(), "loading the model");
                Some(Runner(qwenedge_runner::load_engine(&load, &settings)?))
            }
            None => {
                info!(language = %settings.intents.language, "no model: intents are answered from the sentence templates alone");
                None
            }
        };
        // The TCP listeners first: a client that sees the socket file may connect to them at once.
        let bound = run::Bound {
            http: settings.http.enabled.then(|| qwenedge_http::bind(&settings.http)).transpose()?,
            wyoming: settings.wyoming.enabled.then(|| qwenedge_wyoming::bind(&settings.wyoming)).transpose()?,
            socket: qwenedge_unix::bind(&settings.socket, activated)?,
        };
        let endpoints = Endpoints {
            socket: bound.socket.path.clone(),
            http: bound.http.as_ref().map(|b| b.addrs.clone()).unwrap_or_default(),
            wyoming: bound.wyoming.as_ref().map(|b| b.addrs.clone()).unwrap_or_default(),
        };
        let (scheduler, stopped) = Scheduler::start(EngineLoader, engine, load, Arc::clone(&settings), catalog, local)
            .map_err(|error| DaemonError::Start { what: "the engine thread", error })?;
        let budget = match budget_monitor(&scheduler, &settings) {
            Ok(b) => b,
            Err(e) => {
                scheduler.shutdown(Duration::ZERO);
                bound.socket.remove();
                return Err(e);
            }
        };
        let (shutdown, shutdown_orders) = watch::channel(None);
        let (reload, reload_orders) = watch::channel(None);
        let orders = Orders { shutdown: shutdown_orders, reload: reload_orders };
        let (ended_tx, ended) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let serving = run::Serving { loaded, scheduler: scheduler.clone(), stopped, budget, served, copy };
        let thread = std::thread::Builder::new()
            .name("qwenedge-transports".into())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|error| DaemonError::Start { what: "the async runtime", error })
                    .and_then(|rt| rt.block_on(run::serve(serving, bound, orders, ready_tx)));
                service::notify("STATUS=stopped");
                let _ = ended_tx.send(true);
                result
            })
            .map_err(|error| {
                scheduler.shutdown(Duration::ZERO);
                DaemonError::Start { what: "the transports' thread", error }
            })?;
        let grace = Duration::from_millis(settings.service.shutdown_grace_ms);
        match ready_rx.recv() {
            Ok(()) => Ok(Self { shutdown, reload, thread, ended, endpoints, grace }),
            // The serving thread ended before it was ready: its result says why.
            Err(_) => Err(thread.join().map_or(DaemonError::Lost, |r| r.err().unwrap_or(DaemonError::Lost))),
        }
    }

    /// Where the daemon listens.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The configured grace period (`service.shutdown_grace_ms`).
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Asks the daemon to stop: no new requests, running ones get `grace`. Returns at once;
    /// [`wait`](Self::wait) for the end.
    pub fn begin_shutdown(&self, grace: Duration) {
        self.shutdown.send_replace(Some(grace));
    }

    /// Applies new settings and catalog (what SIGHUP does with the configuration file).
    pub fn reload(&self, loaded: Loaded) {
        self.reload.send_replace(Some(loaded));
    }

    /// Resolves once the daemon has ended (shut down, or its engine failed).
    pub async fn ended(&mut self) {
        let _ = self.ended.wait_for(|e| *e).await;
    }

    /// Waits for the daemon to end and says how it ended.
    pub fn wait(self) -> Result<(), DaemonError> {
        self.thread.join().unwrap_or(Err(DaemonError::Lost))
    }

    /// Stops the daemon (running requests get `grace`) and waits for the end.
    pub fn shutdown(self, grace: Duration) -> Result<(), DaemonError> {
        self.begin_shutdown(grace);
        self.wait()
    }
}

/// Starts the thermal/memory sensor thread feeding the scheduler (replacing the previous one
/// when the returned handle is swapped in and the old one dropped).
fn budget_monitor(scheduler: &Scheduler, settings: &Settings) -> Result<MonitorHandle, DaemonError> {
    let sink = scheduler.clone();
    monitor::spawn(settings.budget.clone(), move |state| sink.set_budget(state))
        .map_err(|error| DaemonError::Start { what: "the budget monitor", error })
}
