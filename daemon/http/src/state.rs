//! What every HTTP handler shares, where its generation requests go (the transports' shared
//! [`Submitted`]: a request-table client of its own, so a client that disconnects cancels its
//! request), and the one skeleton every generating endpoint answers with ([`Outcome`]): the
//! whole answer, or a stream that starts only once the first event shows no refusal.

use std::sync::Arc;
use std::time::SystemTime;

use qwenedge_api::{ErrorCode, EventBody, FinishReason, GenerateRequest, ModelReport, RequestTimings, Usage};
use qwenedge_config::HttpSettings;
use qwenedge_scheduler::{Refusal, Requests, Scheduler};
use qwenedge_transport::running::RequestPath;

use crate::models::{ModelStore, StoredModel};
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
    /// The model store: models loaded by name and pulled by `/api/pull` (`None`: only the
    /// configured model).
    pub store: Option<Arc<dyn ModelStore>>,
}

impl AppState {
    /// The model as the APIs name it: `http.model_name`, else the model directory's name.
    pub fn model_name(&self) -> String {
        let model = self.model();
        let configured = self.scheduler.settings().model.path.as_deref() == Some(model.path.as_path());
        if let (Some(n), true) = (&self.settings.model_name, configured) {
            return n.clone();
        }
        model.id.filter(|id| !id.is_empty()).unwrap_or_else(|| "qwenedge".into())
    }

    /// Whether `requested` is the served model's name (also as Ollama's `name:latest`).
    pub(crate) fn names_served(&self, requested: &str) -> bool {
        let ours = self.model_name();
        requested == ours || requested.strip_suffix(":latest") == Some(ours.as_str()) || ours.strip_suffix(":latest") == Some(requested)
    }

    /// Whether the stored model `m` is the one served.
    pub(crate) fn serves(&self, m: &StoredModel) -> bool {
        m.dir == self.model().path
    }

    /// Whether `requested` names the served model (also as Ollama's `name:latest`, or a name
    /// the store resolves to its directory).
    pub fn is_our_model(&self, requested: &str) -> bool {
        self.names_served(requested) || self.stored(requested).is_some_and(|m| self.serves(&m))
    }

    /// The stored model `requested` names, if the store holds it.
    pub fn stored(&self, requested: &str) -> Option<StoredModel> {
        self.store.as_ref()?.find(requested)
    }

    /// Whether a request naming `requested` may run: the served model, or a stored one, which
    /// is then loaded in its place (the request waits for it, as Ollama loads a model on use).
    pub fn accept_model(&self, requested: &str) -> bool {
        if self.names_served(requested) {
            return true;
        }
        match self.stored(requested) {
            Some(m) if self.serves(&m) => true,
            Some(m) => {
                tracing::info!(model = %m.name, dir = %m.dir.display(), "a request names a stored model: loading it");
                self.scheduler.use_model(m.dir, m.variant);
                true
            }
            None => false,
        }
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

/// What a generating endpoint answers with.
pub(crate) enum Outcome {
    /// The whole answer (a request that does not stream).
    Whole {
        /// The generated text.
        text: String,
        /// Why generation stopped.
        finish_reason: FinishReason,
        /// Token counts.
        usage: Usage,
        /// Where the time went.
        timings: RequestTimings,
    },
    /// The events to stream; the first is not an error.
    Stream(Submitted),
}

impl AppState {
    /// Submits `request` and waits for what its endpoint answers with: the whole answer when it
    /// does not stream, else the first event — a refusal or an error that comes at once is
    /// returned as one (`code`, `message`) before any byte of a stream is sent.
    pub(crate) async fn run(&self, transport: &'static str, request: GenerateRequest) -> Result<Outcome, (ErrorCode, String)> {
        let stream = request.stream();
        let mut running = self.submit(transport, request).map_err(|r| (r.code, r.message))?;
        if !stream {
            return match running.collect().await.1 {
                EventBody::Done { text, finish_reason, usage, timings } => Ok(Outcome::Whole { text, finish_reason, usage, timings }),
                EventBody::Error { code, message } => Err((code, message)),
                other => Err((ErrorCode::ModelError, format!("unexpected answer {other:?}"))),
            };
        }
        if let Some(EventBody::Error { code, message }) = running.peek().await {
            return Err((*code, message.clone()));
        }
        Ok(Outcome::Stream(running))
    }
}
