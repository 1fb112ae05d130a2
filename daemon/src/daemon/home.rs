//! The home the daemon serves: the configuration's catalog, with its devices, areas and floors
//! replaced by Home Assistant's when `[homeassistant]` is set (the last copy until Home
//! Assistant answers), applied to the local matcher and the model's catalog alike.

use std::sync::Arc;

use qwenedge_config::Loaded;
use qwenedge_homeassistant::{load_copy, HaHome};
use qwenedge_intent::Catalog;
use qwenedge_scheduler::{LocalStage, Scheduler};
use tracing::{error, info, warn};

/// What the catalog was composed from last, so notes are said once, not at every update.
#[derive(Default)]
pub(super) struct Served {
    notes: Vec<String>,
}

/// The last copy of Home Assistant's home, when `[homeassistant]` is set and one was kept.
pub(super) fn last_copy(loaded: &Loaded) -> Option<HaHome> {
    let s = &loaded.settings.homeassistant;
    let path = s.copy_path().filter(|_| s.enabled())?;
    match load_copy(&path) {
        Ok(Some(home)) => {
            info!(entities = home.devices.len(), path = %path.display(), "Home Assistant: starting with the last copy of the home");
            Some(home)
        }
        Ok(None) => None,
        Err(e) => {
            warn!(error = %e, "Home Assistant: the last copy of the home is unreadable; waiting for Home Assistant");
            None
        }
    }
}

impl Served {
    /// The catalog of `loaded` with `home`'s names, its notes logged when new.
    pub(super) fn compose(&mut self, loaded: &Loaded, home: Option<&HaHome>) -> Arc<Catalog> {
        let catalog = match home {
            Some(h) => match loaded.catalog.with_home(h.devices.clone(), h.areas.clone(), h.floors.clone(), "Home Assistant") {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    error!(error = %e, "Home Assistant's home cannot be used; the configured devices serve");
                    Arc::clone(&loaded.catalog)
                }
            },
            None => Arc::clone(&loaded.catalog),
        };
        if catalog.notes != self.notes {
            for note in catalog.notes.iter().filter(|n| !self.notes.contains(n)) {
                info!("{note}");
            }
            self.notes = catalog.notes.clone();
        }
        catalog
    }

    /// Applies a new configuration `loaded` (with `home`) to the running scheduler: the
    /// templates read again and the matcher's lists now, the model's catalog once nothing runs.
    pub(super) fn apply(&mut self, scheduler: &Scheduler, loaded: &Loaded, home: Option<&HaHome>) {
        let catalog = self.compose(loaded, home);
        match local_stage(loaded, &catalog, home) {
            Ok(local) => scheduler.set_local(local),
            Err(e) => error!(error = %e, "loading the sentence templates failed; the previous ones stay"),
        }
        scheduler.reload(Arc::clone(&loaded.settings), catalog);
    }

    /// Applies a new `home` under the same configuration: the matcher's lists now (the
    /// templates loaded stay), the model's catalog once nothing runs.
    pub(super) fn apply_home(&mut self, scheduler: &Scheduler, loaded: &Loaded, home: Option<&HaHome>) {
        let catalog = self.compose(loaded, home);
        let sites = home.map(|h| h.site_areas.clone()).unwrap_or_default();
        scheduler.set_local(scheduler.local().for_home(&catalog, &sites));
        scheduler.reload(Arc::clone(&loaded.settings), catalog);
    }
}

/// The sentence templates with `catalog`'s names and the satellites' areas `home` adds.
pub(super) fn local_stage(loaded: &Loaded, catalog: &Catalog, home: Option<&HaHome>) -> Result<LocalStage, qwenedge_sentences::LoadError> {
    let local = LocalStage::new(&loaded.settings, catalog)?;
    Ok(match home {
        Some(h) => local.with_sites(&h.site_areas),
        None => local,
    })
}
