//! What every HTTP handler shares, and where its generation requests go (the transports'
//! shared [`Submitted`]: a request-table client of its own, so a client that disconnects cancels
//! its request).

use std::sync::Arc;
use std::time::SystemTime;

use qwenedge_api::{GenerateRequest, ModelReport};
use qwenedge_config::HttpSettings;
use qwenedge_scheduler::{Refusal, Requests, Scheduler};
use qwenedge_transport::running::RequestPath;
pub(crate) use qwenedge_transport::running::Submitted;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The queue in front of the engine.
    pub scheduler: Scheduler,
    /// The request table.
    pub requests: Requests,
    /// `[http]`.
    pub settings: Arc<HttpSettings>,
    /// Accepted bearer tokens (empty: no authentication).
    pub keys: Arc<Vec<String>>,
    /// When the daemon started (the models' `created` time).
    pub started: SystemTime,
}

impl AppState {
    /// The model as the APIs name it: `http.model_name`, else the model directory's name.
    pub fn model_name(&self) -> String {
        if let Some(n) = &self.settings.model_name {
            return n.clone();
        }
        self.model().id.filter(|id| !id.is_empty()).unwrap_or_else(|| "qwenedge".into())
    }

    /// Whether `requested` names the served model (also as Ollama's `name:latest`).
    pub fn is_our_model(&self, requested: &str) -> bool {
        let ours = self.model_name();
        requested == ours || requested.strip_suffix(":latest") == Some(ours.as_str()) || ours.strip_suffix(":latest") == Some(requested)
    }

    /// The loaded (or last loaded) model.
    pub fn model(&self) -> ModelReport {
        self.scheduler.models().into_iter().next().expect("the scheduler always reports its model")
    }

    /// Submits `request` from `transport` (the counters' label) through the request table.
    pub fn submit(&self, transport: &'static str, request: GenerateRequest) -> Result<Submitted, Refusal> {
        let route = RequestPath {
            scheduler: &self.scheduler,
            requests: &self.requests,
            max_unread_bytes: self.settings.max_unread_bytes,
            unread_key: "http.max_unread_bytes",
            transport,
        };
        Submitted::submit(route, request)
    }
}
