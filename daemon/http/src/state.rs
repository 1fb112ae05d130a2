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
