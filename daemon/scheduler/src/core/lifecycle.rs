//! The model's life cycle on the engine thread: loading (the previous model freed first),
//! reloading for new settings or changed files (the new files checked before the loaded
//! model is freed), and the warm-up after a load (tried again after a failure).

use std::sync::Arc;

use tracing::{info, warn};

use super::{context, Core, ModelChange, Ran, Reload, WorkInputs};
use crate::model::{Loader, Model};
use qwenedge_config::{LoadSettings, Settings};

/// How many times a failed warm-up is tried before it waits for the next reload.
const WARM_UP_TRIES: u32 = 3;

impl<L: Loader> Core<L> {
    /// One piece of the warm-up. A failure (the runtime failing a run, say) is tried again
    /// from the start when next idle, up to [`WARM_UP_TRIES`] times; requests are answered
    /// uncached meanwhile.
    pub(super) fn warm_up(&mut self, snap: &WorkInputs) {
        let Some(model) = self.model.as_mut() else {
            self.warm_up_pending = false;
            return;
        };
        self.warm_up_pending = match model.warm_up(&context(snap, 0)) {
            Ok(more) => more,
            Err(error) => {
                self.warm_up_failures += 1;
                let again = self.warm_up_failures < WARM_UP_TRIES;
                let next = if again { "trying again when idle" } else { "giving up until the next reload" };
                warn!(%error, tries = self.warm_up_failures, "caching the intent catalog prefix failed; {next}");
                again
            }
        };
    }

    /// Loads `load` in place of the current model (freed first: a board rarely has room for
    /// two). On failure the slot stays empty and the next request tries again.
    pub(super) fn load(&mut self, load: &LoadSettings, settings: &Settings, ran: &mut Ran) {
        self.model = None;
        self.loaded = None;
        self.warm_up_pending = true;
        self.warm_up_failures = 0;
        self.pressure = false;
        match self.loader.load(load, settings) {
            Ok(m) => {
                ran.model = Some(ModelChange::Loaded(Box::new(m.report(settings))));
                self.model = Some(m);
                self.loaded = Some(load.clone());
                self.last_error = None;
            }
            Err(error) => {
                warn!(%error, model = %load.path.display(), "loading the model failed");
                ran.model = Some(ModelChange::Gone);
                self.last_error = Some(error.to_string());
            }
        }
    }

    /// Applies new settings; loads the model again when what loading reads changed or its
    /// files changed on disk. The new model's files are checked before the loaded one is
    /// freed for it: when they are missing or broken the loaded model keeps serving; when it
    /// fails later (in the runtime) the previous model is loaded again.
    pub(super) fn reload(&mut self, reload: Reload, snap: &WorkInputs, ran: &mut Ran) {
        let (old, new) = (&snap.settings, &reload.settings);
        for section in old.restart_needed(new) {
            warn!(section, "changed in the configuration; only a restart applies it");
        }
        let mut applied = reload.clone();
        let load = new.model.load_settings();
        let settings_changed = old.model.load_settings() != load;
        let files_changed = if settings_changed { None } else { self.model.as_ref().and_then(|m| m.files_changed()) };
        if let Some(what) = &files_changed {
            info!(model = %load.path.display(), changed = %what, "the model's files changed on disk");
        }
        let wants_load = settings_changed || files_changed.is_some();
        let refused = match &self.model {
            Some(_) if wants_load => self.loader.check(&load).err(),
            _ => None,
        };
        if let Some(error) = &refused {
            warn!(%error, "the new model cannot be loaded; the model loaded before keeps serving");
            applied.settings = Arc::new(Settings { model: old.model.clone(), ..(**new).clone() });
        }
        if self.model.is_none() || (wants_load && refused.is_none()) {
            info!(model = %load.path.display(), backend = ?new.model.backend, "loading the model for the new configuration");
            self.load(&load, new, ran);
            if self.model.is_none() {
                warn!("going back to the previous model");
                self.load(&old.model.load_settings(), old, ran);
                applied.settings = Arc::new(Settings { model: old.model.clone(), ..(**new).clone() });
            } else {
                info!("configuration reloaded");
            }
        } else if let Some(m) = self.model.as_mut() {
            m.reconfigure(&applied.settings);
            ran.model = Some(ModelChange::Loaded(Box::new(m.report(&applied.settings))));
            self.warm_up_pending = true;
            self.warm_up_failures = 0;
            info!("configuration reloaded");
        }
        ran.applied = Some(applied);
    }
}
