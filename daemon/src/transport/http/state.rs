//! What every HTTP handler shares, and the path of one generation request: a table client of
//! its own (so a client that disconnects cancels it), the scheduler's admission, and its
//! events read back in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use crate::api::{EventBody, GenerateRequest, ModelReport};
use crate::config::HttpSettings;
use crate::scheduler::{Client, ClientPolicy, Job, Outbound, Refusal, Requests, Scheduler};

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
}

/// A generation request handed to the scheduler, and its events as they come.
pub struct Running {
    _client: Client,
    out: Arc<Outbound>,
    pending: VecDeque<EventBody>,
    done: bool,
}

impl Running {
    /// Submits `request` from `transport`; a refusal (queue full, shutting down, too hot)
    /// comes back at once.
    pub fn submit(state: &AppState, transport: &'static str, request: GenerateRequest) -> Result<Self, Refusal> {
        let out = Arc::new(Outbound::new(state.settings.max_unread_bytes));
        let policy = ClientPolicy { remember: 1, reject_recent: false, unread_key: "http.max_unread_bytes", transport };
        let client = state.requests.client(policy, Arc::clone(&out));
        let id = format!("http-{}", super::next_id());
        let ticket = client.begin("request", &id).map_err(|_| Refusal::new(crate::api::ErrorCode::ModelError, "request table"))?;
        if let Err(rejected) = state.scheduler.submit(Job::new(ticket, request)) {
            let refusal = rejected.refusal.clone();
            drop(rejected);
            return Err(refusal);
        }
        Ok(Self { _client: client, out, pending: VecDeque::new(), done: false })
    }

    /// The next event; `None` after the terminal one.
    pub async fn next(&mut self) -> Option<EventBody> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                self.done |= e.is_terminal();
                return Some(e);
            }
            if self.done {
                return None;
            }
            self.out.ready().await;
            self.pending.extend(self.out.take().into_iter().map(|d| d.event.body));
        }
    }

    /// Everything up to the terminal event: the streamed text and the terminal event.
    pub async fn collect(mut self) -> (String, EventBody) {
        let mut text = String::new();
        while let Some(e) = self.next().await {
            match e {
                EventBody::Token { text: t } => text.push_str(&t),
                terminal => return (text, terminal),
            }
        }
        (text, EventBody::error(crate::api::ErrorCode::ModelError, "the request ended without an answer"))
    }
}
