//! The session loop: connect, subscribe to registry changes, read the home, publish it; read
//! it again after each change (a quarter second after, so a burst is read once) and every ten
//! minutes; ping while idle so a dead link is noticed. When the link fails the last copy keeps
//! serving, one warning says so, and reconnection is retried from one second up to
//! `retry_max_ms`; the first success after that says the home is back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qwenedge_api::{HomeReport, HomeSync as SyncState};
use qwenedge_config::HomeAssistantSettings;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{build, exposed_registry_ids, save_copy, Connection, HaError, HaHome, Registries};

/// How long a connection attempt may take.
const OPEN_LIMIT: Duration = Duration::from_secs(10);
/// How long one command may take.
const CALL_LIMIT: Duration = Duration::from_secs(30);
/// Quiet time between a change and reading the home again.
const SETTLE: Duration = Duration::from_millis(250);
/// A ping after this long without news.
const PING_EVERY: Duration = Duration::from_secs(30);
/// The home is read again this often even without events (exposure of entities that have no
/// registry entry sends none).
const REFRESH_EVERY: Duration = Duration::from_secs(600);
/// The registry events that change names, areas, floors or exposure.
const EVENTS: &[&str] = &["entity_registry_updated", "area_registry_updated", "floor_registry_updated", "device_registry_updated"];

/// The running link: the home and the link's state, as watch channels. Dropping it stops the
/// session.
pub struct HomeSync {
    /// The latest home (the last copy until Home Assistant answers).
    pub home: watch::Receiver<Option<Arc<HaHome>>>,
    /// The link's state.
    pub report: watch::Receiver<HomeReport>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HomeSync {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Reads the whole home over `conn`.
pub async fn fetch(conn: &mut Connection) -> Result<HaHome, HaError> {
    let empty = || json!({});
    let mut r = Registries {
        states: conn.call("get_states", empty(), CALL_LIMIT).await?,
        entities: conn.call("config/entity_registry/list", empty(), CALL_LIMIT).await?,
        exposed: conn.call("homeassistant/expose_entity/list", empty(), CALL_LIMIT).await?["exposed_entities"].take(),
        expose_new: conn.call("homeassistant/expose_new_entities/get", json!({"assistant": "conversation"}), CALL_LIMIT).await?
            ["expose_new"]
            .as_bool()
            .unwrap_or(true),
        extended: Value::Null,
        areas: conn.call("config/area_registry/list", empty(), CALL_LIMIT).await?,
        floors: conn.call("config/floor_registry/list", empty(), CALL_LIMIT).await?,
        devices: conn.call("config/device_registry/list", empty(), CALL_LIMIT).await?,
    };
    let ids = exposed_registry_ids(&r);
    if !ids.is_empty() {
        r.extended = conn.call("config/entity_registry/get_entries", json!({"entity_ids": ids}), CALL_LIMIT).await?;
    }
    Ok(build(&r, &conn.ha_version, now_ms()))
}

/// Starts following Home Assistant as `settings` say, from `copy` (the last copy, if any),
/// on the current Tokio runtime.
pub fn start(settings: &HomeAssistantSettings, copy: Option<HaHome>) -> HomeSync {
    let current = copy.map(Arc::new);
    let report = report(settings, SyncState::Connecting, current.as_deref());
    let (home_tx, home) = watch::channel(current.clone());
    let (report_tx, report_rx) = watch::channel(report);
    let link = Link {
        settings: settings.clone(),
        copy_path: settings.copy_path(),
        home_tx,
        report_tx,
        current,
        down_logged: false,
        backoff: Duration::from_secs(1),
    };
    let task = tokio::spawn(link.run());
    HomeSync { home, report: report_rx, task }
}

/// The link's state with `home` as the copy in use.
fn report(settings: &HomeAssistantSettings, sync: SyncState, home: Option<&HaHome>) -> HomeReport {
    HomeReport {
        url: settings.url.clone().unwrap_or_default(),
        sync,
        synced_at_ms: home.map(|h| h.synced_at_ms),
        ha_version: home.map(|h| h.ha_version.clone()),
        entities: home.map_or(0, |h| h.devices.len()),
        areas: home.map_or(0, |h| h.areas.len()),
        floors: home.map_or(0, |h| h.floors.len()),
        error: None,
    }
}

struct Link {
    settings: HomeAssistantSettings,
    copy_path: Option<PathBuf>,
    home_tx: watch::Sender<Option<Arc<HaHome>>>,
    report_tx: watch::Sender<HomeReport>,
    current: Option<Arc<HaHome>>,
    down_logged: bool,
    backoff: Duration,
}

impl Link {
    async fn run(mut self) {
        let max = Duration::from_millis(self.settings.retry_max_ms);
        loop {
            let e = self.session().await;
            self.report_tx.send_modify(|r| {
                r.sync = if self.current.is_some() { SyncState::Stale } else { SyncState::Connecting };
                r.error = Some(e.to_string());
            });
            if !self.down_logged {
                let serving = match &self.current {
                    Some(h) => format!("the copy of {} entities taken at Unix time {} s serves", h.devices.len(), h.synced_at_ms / 1000),
                    None => "no copy of the home yet: the configured devices serve".to_string(),
                };
                warn!(url = %self.settings.url.as_deref().unwrap_or(""), error = %e, "Home Assistant: {e}; {serving}; retrying");
                self.down_logged = true;
            } else {
                debug!(error = %e, "Home Assistant: still unreachable");
            }
            tokio::time::sleep(self.backoff).await;
            self.backoff = (self.backoff * 2).min(max);
        }
    }

    /// One connection, until it fails.
    async fn session(&mut self) -> HaError {
        match self.follow().await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn follow(&mut self) -> Result<std::convert::Infallible, HaError> {
        let token = self.settings.token().map_err(HaError::Token)?;
        let url = self.settings.websocket_url().ok_or_else(|| HaError::Connect("homeassistant.url is not http(s)".into()))?;
        let mut conn = Connection::open(&url, &token, OPEN_LIMIT).await?;
        for event in EVENTS {
            conn.subscribe(event, CALL_LIMIT).await?;
        }
        let home = fetch(&mut conn).await?;
        let back = std::mem::take(&mut self.down_logged);
        info!(
            ha_version = %conn.ha_version,
            entities = home.devices.len(),
            areas = home.areas.len(),
            floors = home.floors.len(),
            "Home Assistant: {} the home's names; following changes",
            if back { "reconnected, read again" } else { "read" }
        );
        self.publish(home);
        self.backoff = Duration::from_secs(1);
        let mut refreshed = Instant::now();
        loop {
            match tokio::time::timeout(PING_EVERY, conn.changed()).await {
                Ok(result) => {
                    result?;
                    tokio::time::sleep(SETTLE).await;
                }
                Err(_) if refreshed.elapsed() < REFRESH_EVERY => {
                    conn.call("ping", json!({}), OPEN_LIMIT).await?;
                    continue;
                }
                Err(_) => {}
            }
            let home = fetch(&mut conn).await?;
            refreshed = Instant::now();
            self.publish(home);
        }
    }

    /// Hands on `home` (when it differs from the current one, also to the copy file) and marks
    /// the link live.
    fn publish(&mut self, home: HaHome) {
        let changed = self.current.as_ref().is_none_or(|c| !c.same_home(&home));
        let home = Arc::new(home);
        if changed {
            if let Some(path) = &self.copy_path {
                if let Err(e) = save_copy(path, &home) {
                    warn!(error = %e, "Home Assistant: keeping the copy of the home failed; a restart while Home Assistant is down will not know the names");
                }
            }
            debug!(entities = home.devices.len(), "Home Assistant: the home changed");
            self.home_tx.send_replace(Some(Arc::clone(&home)));
        }
        self.report_tx.send_replace(report(&self.settings, SyncState::Live, Some(&home)));
        self.current = Some(home);
    }
}
