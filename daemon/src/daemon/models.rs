//! The model store as the HTTP APIs see it ([`qwenedge_http::ModelStore`]), made of `[hub]`
//! and the Hub client: names resolve through `hub.aliases` and `owner/name[:variant]`; a pull
//! runs on a thread of its own (its own small async runtime, so hashing and writing gigabytes
//! never stall the transports) and reports Ollama-style progress on a bounded channel: steps
//! are dropped when a client reads slower than they come, the result never (it is sent once
//! the pull's runtime has returned, waiting for room).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use qwenedge_config::HubSettings;
use qwenedge_http::{ModelStore, PullUpdate, StoredModel};
use qwenedge_hub::{Hub, Progress, PullRequest, Store};
use tokio::sync::mpsc;

/// How often one file's byte count is reported at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// `[hub]` and its store.
pub(crate) struct HubStore {
    settings: HubSettings,
    store: Store,
}

impl HubStore {
    /// The store `settings` name; `None` when no directory is known for it.
    pub(crate) fn open(settings: &HubSettings) -> Option<Arc<dyn ModelStore>> {
        let store = Store::new(settings.models_path()?);
        Some(Arc::new(Self { settings: settings.clone(), store }))
    }
}

fn stored(m: qwenedge_hub::StoredModel) -> StoredModel {
    let hub_variant = !m.dir.join("genai_config.json").exists();
    StoredModel {
        name: format!("{}:{}", m.manifest.repo, m.manifest.variant),
        variant: hub_variant.then(|| m.manifest.variant.clone()),
        bytes: m.manifest.bytes(),
        modified: SystemTime::UNIX_EPOCH + Duration::from_secs(m.manifest.pulled_at_s),
        commit: m.manifest.commit.clone(),
        dir: m.dir,
    }
}

impl ModelStore for HubStore {
    fn find(&self, name: &str) -> Option<StoredModel> {
        let (repo, variant) = self.settings.resolve(name)?;
        // Without a variant: the one a pull would choose (q4 first), else any stored.
        let rank = |v: &str| qwenedge_engine::model::hub::VARIANTS.iter().position(|(name, _)| *name == v).unwrap_or(usize::MAX);
        self.store
            .list()
            .into_iter()
            .filter(|m| m.manifest.repo == repo && variant.as_ref().is_none_or(|v| m.manifest.variant == *v))
            .min_by_key(|m| rank(&m.manifest.variant))
            .map(stored)
    }

    fn list(&self) -> Vec<StoredModel> {
        self.store.list().into_iter().map(stored).collect()
    }

    fn pull(&self, name: &str) -> Result<mpsc::Receiver<PullUpdate>, String> {
        if !self.settings.api_pull {
            return Err(format!(
                "pulling models through the API is off (hub.api_pull = false); run `qwenedge model pull {name}` on the device"
            ));
        }
        let Some((repo, variant)) = self.settings.resolve(name) else {
            return Err(format!(
                "'{name}' is not a model qwenedge can pull: name a Hugging Face Hub repository of Qwen3.5 ONNX exports (onnx-community/Qwen3.5-0.8B-ONNX-OPT, optionally :q4 or :fp32) or an alias of [hub.aliases] ({})",
                self.settings.aliases.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        };
        let endpoint = qwenedge_hub::endpoint(self.settings.endpoint.as_deref());
        let token = qwenedge_hub::token(self.settings.token_file.as_deref()).map_err(|e| e.to_string())?;
        let hub = Hub::new(&endpoint, token, self.store.clone()).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel(64);
        let request = PullRequest { repo, variant, revision: "main".into() };
        let spawned = std::thread::Builder::new().name("qwenedge-pull".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(PullUpdate::Failed(format!("starting the pull: {e}")));
                    return;
                }
            };
            let mut last_shown: Option<(String, Instant)> = None;
            let mut report = |p: Progress| match p {
                Progress::Listing => {
                    let _ = tx.try_send(PullUpdate::Status("pulling manifest".into()));
                }
                Progress::Selected { .. } => {}
                Progress::File { path, digest, total, completed } => {
                    let due = last_shown.as_ref().is_none_or(|(p, at)| *p != path || at.elapsed() >= PROGRESS_EVERY);
                    if due || completed == total {
                        let update = PullUpdate::File { digest: format!("sha256:{digest}"), total, completed };
                        let _ = tx.try_send(update);
                        last_shown = Some((path, Instant::now()));
                    }
                }
                Progress::Verifying => {
                    let _ = tx.try_send(PullUpdate::Status("verifying sha256 digest".into()));
                }
                Progress::Done { .. } => {
                    let _ = tx.try_send(PullUpdate::Status("writing manifest".into()));
                }
            };
            let result = runtime.block_on(hub.pull(&request, &mut report));
            let last = match result {
                Ok(pulled) => {
                    tracing::info!(model = %format!("{}:{}", pulled.manifest.repo, pulled.manifest.variant), dir = %pulled.dir.display(), up_to_date = pulled.up_to_date, "model pulled");
                    PullUpdate::Success
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pulling a model failed");
                    PullUpdate::Failed(e.to_string())
                }
            };
            let _ = tx.blocking_send(last);
        });
        spawned.map(|_| rx).map_err(|e| format!("starting the pull: {e}"))
    }
}
