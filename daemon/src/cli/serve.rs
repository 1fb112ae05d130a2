//! `qwenedge serve`: configuration → model → socket → MQTT (when enabled) → READY, then serve
//! until a signal. SIGTERM drains (running requests get the grace period), SIGINT stops at once,
//! SIGHUP reloads the configuration. Any start-up failure is one line and exit status 1, before
//! READY. The MQTT transport closes last, once the engine has stopped, so the final events
//! still go out. If the engine thread panics, every open request is answered `model_error`,
//! the transports flush and close, and the exit status is 1 so that systemd restarts the
//! daemon.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use qwenedge::service;
use qwenedge_budget::monitor::{self, MonitorHandle};
use qwenedge_config as config;
use qwenedge_http as http;
use qwenedge_mqtt::MqttTransport;
use qwenedge_scheduler::{self as scheduler, EngineLoader, Requests, Scheduler};
use qwenedge_transport::tcp::BoundTcp;
use qwenedge_transport::Lifecycle;
use qwenedge_unix as unix;
use qwenedge_wyoming as wyoming;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

/// How long the last MQTT events may take to reach the broker after the engine stopped.
const MQTT_CLOSE: Duration = Duration::from_secs(5);

/// Arguments of `qwenedge serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (default /etc/qwenedge/config.toml when it exists).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Print the effective configuration (file + QWENEDGE__ variables) and exit.
    #[arg(long)]
    print_config: bool,
}

/// Runs `serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let loaded = config::load(args.config.as_deref(), &config::process_env())?;
    let settings = Arc::clone(&loaded.settings);
    if args.print_config {
        print!("{}", settings.to_toml());
        return Ok(());
    }
    service::init_logging("info");
    if settings.mqtt.enabled {
        MqttTransport::check(&settings.mqtt).context("MQTT")?;
    }
    let activated = service::activated_listener();
    service::notify("STATUS=loading the model");
    info!(model = ?settings.model.path, "loading the model");
    let load = settings.model.load_settings();
    let engine = scheduler::load_engine(&load, &settings)?;
    // The TCP listeners first: a client that sees the socket file may connect to them at once.
    let bound = Bound {
        http: settings.http.enabled.then(|| http::bind(&settings.http)).transpose()?,
        wyoming: settings.wyoming.enabled.then(|| wyoming::bind(&settings.wyoming)).transpose()?,
    };
    let socket = unix::bind(&settings.socket, activated)?;
    let (scheduler, stopped) =
        Scheduler::start(EngineLoader, engine, load, Arc::clone(&settings), loaded.catalog).context("starting the engine thread")?;
    let mut budget = budget_monitor(&scheduler, &settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(serve(&socket, bound, &settings, scheduler, stopped, args.config, &mut budget));
    socket.remove();
    service::notify("STATUS=stopped");
    result
}

/// The TCP listeners of the network transports, bound before READY.
struct Bound {
    http: Option<BoundTcp>,
    wyoming: Option<BoundTcp>,
}

async fn serve(
    socket: &unix::BoundSocket,
    bound: Bound,
    settings: &config::Settings,
    scheduler: Scheduler,
    mut stopped: scheduler::Stopped,
    config_path: Option<PathBuf>,
    budget: &mut MonitorHandle,
) -> anyhow::Result<()> {
    let requests = Requests::default();
    let (life_tx, life_rx) = tokio::sync::watch::channel(Lifecycle::Running);
    let server = unix::serve(socket, Arc::new(settings.socket.clone()), scheduler.clone(), requests.clone(), life_rx.clone());
    tokio::pin!(server);
    let http_addrs: Vec<String> = bound.http.as_ref().map(|b| b.addrs.iter().map(|a| a.to_string()).collect()).unwrap_or_default();
    let wyoming_addrs: Vec<std::net::SocketAddr> = bound.wyoming.as_ref().map(|b| b.addrs.clone()).unwrap_or_default();
    let wyoming_server = bound.wyoming.map(|b| {
        let server = wyoming::serve(
            b,
            Arc::new(settings.wyoming.clone()),
            settings.intents.temperature,
            scheduler.clone(),
            requests.clone(),
            life_rx.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = server.await {
                error!(error = %e, "Wyoming: the server failed");
            }
        })
    });
    let announcement = match wyoming::zeroconf::record(&settings.wyoming, &wyoming_addrs, None) {
        Some(record) if settings.wyoming.enabled => match wyoming::zeroconf::Announcement::start(&record) {
            Ok(a) => {
                info!(name = a.fullname(), port = record.port, "Wyoming: announced over zeroconf");
                Some(a)
            }
            Err(e) => {
                warn!(error = %e, "Wyoming: zeroconf announcement failed; Home Assistant can still add the server by host and port");
                None
            }
        },
        _ => None,
    };
    let http_server = bound.http.map(|bound| {
        let server = http::serve(bound, Arc::new(settings.http.clone()), scheduler.clone(), requests.clone(), life_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = server.await {
                error!(error = %e, "HTTP: the server failed");
            }
        })
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let watchdog = service::watchdog_interval();
    let mut ticker = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let grace = Duration::from_millis(settings.service.shutdown_grace_ms);
    let mqtt = match settings.mqtt.enabled {
        true => Some(MqttTransport::start(Arc::new(settings.mqtt.clone()), scheduler.clone(), &requests).context("MQTT")?),
        false => None,
    };
    info!(socket = %socket.path.display(), http = ?http_addrs, wyoming = ?wyoming_addrs, "ready");
    service::notify(&format!("READY=1\nSTATUS=serving on {}", socket.path.display()));
    let mut server_done = false;
    let engine = loop {
        tokio::select! {
            _ = term.recv() => {
                info!(grace_ms = grace.as_millis() as u64, "SIGTERM: finishing running requests, then exiting");
                service::notify("STOPPING=1\nSTATUS=draining");
                let _ = life_tx.send(Lifecycle::Draining);
                scheduler.shutdown(grace);
            }
            _ = int.recv() => {
                info!("SIGINT: cancelling everything and exiting");
                service::notify("STOPPING=1\nSTATUS=stopping");
                let _ = life_tx.send(Lifecycle::Draining);
                scheduler.shutdown(Duration::ZERO);
            }
            _ = hup.recv() => {
                match config::load(config_path.as_deref(), &config::process_env()) {
                    Ok(loaded) => {
                        info!("SIGHUP: reloading the configuration");
                        service::notify("STATUS=reloading the configuration");
                        match budget_monitor(&scheduler, &loaded.settings) {
                            Ok(m) => *budget = m,
                            Err(e) => error!(error = %e, "restarting the budget monitor failed"),
                        }
                        scheduler.reload(loaded.settings, loaded.catalog);
                    }
                    Err(e) => error!(error = %e, "SIGHUP: the new configuration is invalid; keeping the current one"),
                }
            }
            _ = ticker.tick(), if watchdog.is_some() => {
                // Ping only while the engine thread shows life; a hung engine gets restarted.
                if scheduler.worker_silence() < watchdog.unwrap_or_default() * 4 {
                    service::notify("WATCHDOG=1");
                } else {
                    warn!("the engine thread has not responded; withholding the watchdog ping");
                }
            }
            result = &mut server, if !server_done => {
                server_done = true;
                if let Err(e) = result {
                    error!(error = %e, "the socket listener failed; shutting down");
                    scheduler.shutdown(Duration::ZERO);
                }
            }
            outcome = &mut stopped => break outcome.unwrap_or_else(|_| Err("the engine thread ended without a word".into())),
        }
    };
    if engine.is_err() {
        service::notify("STOPPING=1\nSTATUS=the engine failed");
        let _ = life_tx.send(Lifecycle::Draining);
    }
    let _ = life_tx.send(Lifecycle::Closing);
    if let Some(mqtt) = mqtt {
        mqtt.close(MQTT_CLOSE).await;
    }
    if !server_done {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    if let Some(h) = http_server {
        let _ = tokio::time::timeout(Duration::from_secs(6), h).await;
    }
    if let Some(a) = announcement {
        a.stop();
    }
    if let Some(w) = wyoming_server {
        let _ = tokio::time::timeout(Duration::from_secs(6), w).await;
    }
    match engine {
        Ok(()) => {
            info!("stopped");
            Ok(())
        }
        Err(panic) => Err(anyhow::anyhow!("the engine thread failed ({panic}); exiting so that the service manager restarts the daemon")),
    }
}

/// Starts the thermal/memory sensor thread feeding the scheduler (replacing the previous one
/// when the returned handle is swapped in and the old one dropped).
fn budget_monitor(scheduler: &Scheduler, settings: &config::Settings) -> anyhow::Result<MonitorHandle> {
    let sink = scheduler.clone();
    monitor::spawn(settings.budget.clone(), move |state| sink.set_budget(state)).context("starting the budget monitor")
}
