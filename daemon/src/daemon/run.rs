//! The transports' side of a running daemon: serves every transport until the handle asks it
//! to stop or the engine ends, keeps the watchdog fed while the engine thread shows life, and
//! closes the transports in order (MQTT last, so that the final events go out).

use std::sync::Arc;
use std::time::Duration;

use qwenedge_budget::monitor::MonitorHandle;
use qwenedge_config::{Loaded, Settings};
use qwenedge_mqtt::MqttTransport;
use qwenedge_scheduler::{Requests, Scheduler, Stopped};
use qwenedge_transport::tcp::BoundTcp;
use qwenedge_transport::Lifecycle;
use qwenedge_unix::BoundSocket;
use qwenedge_wyoming::zeroconf;
use tracing::{error, info, warn};

use super::{budget_monitor, DaemonError, Orders};
use crate::service;

/// How long the last MQTT events may take to reach the broker after the engine stopped.
const MQTT_CLOSE: Duration = Duration::from_secs(5);

/// Every listener, bound before READY.
pub(super) struct Bound {
    pub http: Option<BoundTcp>,
    pub wyoming: Option<BoundTcp>,
    pub socket: BoundSocket,
}

/// What the serving thread takes over.
pub(super) struct Serving {
    /// The configuration as loaded (its catalog before Home Assistant's home replaces devices).
    pub loaded: Loaded,
    /// What the served catalog was composed from.
    pub served: super::home::Served,
    /// The last copy of Home Assistant's home the daemon started with.
    pub copy: Option<qwenedge_homeassistant::HaHome>,
    pub scheduler: Scheduler,
    pub stopped: Stopped,
    pub budget: MonitorHandle,
}

/// Serves until the engine has stopped; `ready` is told once every transport serves.
pub(super) async fn serve(
    serving: Serving,
    bound: Bound,
    mut orders: Orders,
    ready: std::sync::mpsc::Sender<()>,
) -> Result<(), DaemonError> {
    let Serving { mut loaded, scheduler, mut stopped, mut budget, mut served, copy } = serving;
    let settings = Arc::clone(&loaded.settings);
    let Bound { http, wyoming, socket } = bound;
    let socket = &socket;
    {
        let requests = Requests::default();
        let (life_tx, life_rx) = tokio::sync::watch::channel(Lifecycle::Running);
        let server = qwenedge_unix::serve(socket, Arc::new(settings.socket.clone()), scheduler.clone(), requests.clone(), life_rx.clone());
        tokio::pin!(server);
        let wyoming_addrs = wyoming.as_ref().map(|b| b.addrs.clone()).unwrap_or_default();
        let http_addrs: Vec<String> = http.as_ref().map(|b| b.addrs.iter().map(|a| a.to_string()).collect()).unwrap_or_default();
        let wyoming_server = wyoming.map(|b| {
            let w = &settings.wyoming;
            let server = qwenedge_wyoming::serve(
                b,
                Arc::new(w.clone()),
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
        let announcement = announce(&settings, &wyoming_addrs);
        let http_server = http.map(|b| {
            let store = super::models::HubStore::open(&settings.hub);
            let server =
                qwenedge_http::serve(b, Arc::new(settings.http.clone()), scheduler.clone(), requests.clone(), life_rx.clone(), store);
            tokio::spawn(async move {
                if let Err(e) = server.await {
                    error!(error = %e, "HTTP: the server failed");
                }
            })
        });
        let watchdog = service::watchdog_interval();
        let mut ticker = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        let mqtt = match settings.mqtt.enabled {
            true => match MqttTransport::start(Arc::new(settings.mqtt.clone()), scheduler.clone(), &requests) {
                Ok(m) => Some(m),
                Err(e) => {
                    // Nothing half-started: the engine stops, the listeners close.
                    scheduler.shutdown(Duration::ZERO);
                    let _ = life_tx.send(Lifecycle::Closing);
                    socket.remove();
                    return Err(e.into());
                }
            },
            false => None,
        };
        // The home's names from Home Assistant, followed while the daemon runs.
        let sync = settings.homeassistant.enabled().then(|| qwenedge_homeassistant::start(&settings.homeassistant, copy));
        let mut home_rx = sync.as_ref().map(|s| s.home.clone());
        let mut report_rx = sync.as_ref().map(|s| s.report.clone());
        if let Some(r) = &report_rx {
            scheduler.set_home_report(Some(r.borrow().clone()));
        }
        info!(socket = %socket.path.display(), http = ?http_addrs, wyoming = ?wyoming_addrs, "ready");
        service::notify(&format!("READY=1\nSTATUS=serving on {}", socket.path.display()));
        let _ = ready.send(());
        let mut server_done = false;
        let mut orders_open = true;
        let engine = loop {
            tokio::select! {
                changed = orders.shutdown.changed(), if orders_open => match changed {
                    Ok(()) => {
                        let grace = orders.shutdown.borrow_and_update().unwrap_or_default();
                        service::notify(if grace.is_zero() { "STOPPING=1\nSTATUS=stopping" } else { "STOPPING=1\nSTATUS=draining" });
                        let _ = life_tx.send(Lifecycle::Draining);
                        scheduler.shutdown(grace);
                    }
                    // The handle is gone: nobody can ask for a stop any more, so stop now.
                    Err(_) => {
                        orders_open = false;
                        let _ = life_tx.send(Lifecycle::Draining);
                        scheduler.shutdown(Duration::ZERO);
                    }
                },
                Ok(()) = orders.reload.changed(), if orders_open => {
                    if let Some(new) = orders.reload.borrow_and_update().clone() {
                        loaded = new;
                        service::notify("STATUS=reloading the configuration");
                        match budget_monitor(&scheduler, &loaded.settings) {
                            Ok(m) => budget = m,
                            Err(e) => error!(error = %e, "restarting the budget monitor failed"),
                        }
                        let home = home_rx.as_ref().and_then(|h| h.borrow().clone());
                        served.apply(&scheduler, &loaded, home.as_deref());
                    }
                }
                Some(home) = changed(&mut home_rx) => served.apply_home(&scheduler, &loaded, home.as_deref()),
                Some(report) = changed(&mut report_rx) => scheduler.set_home_report(Some(report)),
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
        socket.remove();
        // The budget monitor stops with the daemon.
        drop(budget);
        match engine {
            Ok(()) => {
                info!("stopped");
                Ok(())
            }
            Err(panic) => Err(DaemonError::Engine(panic)),
        }
    }
}

/// The new value once `rx` changes (never without `[homeassistant]`, or once the session has
/// ended).
async fn changed<T: Clone>(rx: &mut Option<tokio::sync::watch::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => match r.changed().await {
            Ok(()) => Some(r.borrow_and_update().clone()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Announces the Wyoming server over zeroconf where enabled; a failure is logged, not fatal.
fn announce(settings: &Settings, addrs: &[std::net::SocketAddr]) -> Option<zeroconf::Announcement> {
    let record = zeroconf::record(&settings.wyoming, addrs, None).filter(|_| settings.wyoming.enabled)?;
    match zeroconf::Announcement::start(&record) {
        Ok(a) => {
            info!(name = a.fullname(), port = record.port, "Wyoming: announced over zeroconf");
            Some(a)
        }
        Err(e) => {
            warn!(error = %e, "Wyoming: zeroconf announcement failed; Home Assistant can still add the server by host and port");
            None
        }
    }
}
