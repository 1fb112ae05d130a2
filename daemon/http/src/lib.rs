//! The HTTP transport: the OpenAI API (`/v1/…`) and the Ollama API (`/api/…`), so that Home
//! Assistant's Ollama integration and every OpenAI client plug in unchanged, plus `/health`
//! and Prometheus `/metrics`. It is a thin codec over the same request path as the socket:
//! requests go into the request table and the scheduler, answers come back through the
//! responder. The pieces: `server` (listening, connections, timeouts), `state` (what handlers
//! share; one generation request), `error` (each API's error shape), `openai`, `ollama`,
//! `models` (the model store the APIs load and pull by name: a trait the binary implements),
//! `monitor` (health and metrics), `time`.

pub(crate) mod error;
pub mod models;
mod monitor;
pub(crate) mod ollama;
pub(crate) mod openai;
mod server;
mod state;
mod time;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;

pub use models::{ModelStore, PullUpdate, StoredModel};

use qwenedge_transport::tcp::BoundTcp;
pub use server::{bind, HttpError};
pub use state::AppState;

use error::{OllamaError, OpenAiError};
use qwenedge_config::HttpSettings;
use qwenedge_scheduler::{Requests, Scheduler};
use qwenedge_transport::Lifecycle;
use server::ConnState;

/// A number for ids, unique in this process.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Whether `token` equals one of `keys`, compared in constant time per key.
fn token_ok(keys: &[String], token: &str) -> bool {
    keys.iter().any(|k| k.len() == token.len() && k.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
}

/// Refuses requests without one of the configured bearer tokens (`/health` needs none), in the
/// error shape of the API the path belongs to.
async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.keys.is_empty() || request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|t| token_ok(&state.keys, t.trim())) {
        return next.run(request).await;
    }
    if request.uri().path().starts_with("/v1/") {
        OpenAiError::unauthorized().into_response()
    } else {
        OllamaError::unauthorized().into_response()
    }
}

/// A response body that tells its connection when the response has ended.
struct Tracked {
    inner: Body,
    conn: Arc<ConnState>,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.conn.end();
    }
}

/// The routes, for one connection (whose watchdog learns when each request begins and ends).
fn router(state: AppState, conn: Arc<ConnState>) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .route("/", get(ollama::root))
        .route("/health", get(monitor::health))
        .route("/metrics", get(monitor::metrics))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/pull", post(ollama::pull))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let conn = Arc::clone(&conn);
            async move {
                conn.begin();
                let response = next.run(request).await;
                let (parts, body) = response.into_parts();
                Response::from_parts(parts, Body::new(Tracked { inner: body, conn }))
            }
        }))
        .with_state(state)
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path().to_string();
    if path.starts_with("/v1/") {
        let mut e = OpenAiError::bad_request(format!("no such endpoint: {} {path}", request.method()));
        e.status = axum::http::StatusCode::NOT_FOUND;
        e.into_response()
    } else {
        OllamaError { status: axum::http::StatusCode::NOT_FOUND, message: format!("no such endpoint: {} {path}", request.method()) }
            .into_response()
    }
}

/// Serves the HTTP APIs on `bound` until the lifecycle reaches `Closing`.
pub async fn serve(
    bound: BoundTcp,
    settings: Arc<HttpSettings>,
    scheduler: Scheduler,
    requests: Requests,
    life: watch::Receiver<Lifecycle>,
    store: Option<Arc<dyn ModelStore>>,
) -> Result<(), HttpError> {
    let keys = settings.api_keys().map_err(HttpError::Keys)?;
    let state = AppState { scheduler, requests, settings: Arc::clone(&settings), keys: Arc::new(keys), started: SystemTime::now(), store };
    server::serve(bound, settings, move |conn| router(state.clone(), conn), life)
        .await
        .map_err(|error| HttpError::Bind { addr: ([0, 0, 0, 0], 0).into(), error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_match_exactly() {
        let keys = vec!["secret-1".to_string(), "other".to_string()];
        assert!(token_ok(&keys, "secret-1") && token_ok(&keys, "other"));
        assert!(!token_ok(&keys, "secret-") && !token_ok(&keys, "secret-12") && !token_ok(&keys, ""));
    }
}

#[cfg(test)]
mod fuzz;
