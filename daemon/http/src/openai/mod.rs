//! The OpenAI API: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models` and
//! `GET /v1/models/{id}`. Requests go through the same request table and scheduler as every
//! transport; a streamed answer's status is chosen once its first event is known, so a request
//! refused by the model (a broken grammar, too little memory) still gets a proper status.

mod reply;
pub(crate) mod request;

use std::convert::Infallible;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::{parse_body, OpenAiError};
use super::models::StoredModel;
use super::state::{AppState, Outcome};
use super::time::unix_seconds;
use qwenedge_api::{FieldError, Prompt};
use qwenedge_toolcall::Splitter;
use reply::{Answer, ChatStream, Meta, TextStream};
use request::{ChatBody, CompletionBody};

/// The transport label of these requests in the counters.
pub const TRANSPORT: &str = "openai";

fn meta(state: &AppState, prefix: &str) -> Meta {
    Meta { id: format!("{prefix}-{}", super::next_id()), model: state.model_name(), created: unix_seconds(SystemTime::now()) }
}

fn check_model(state: &AppState, requested: Option<&str>) -> Result<(), OpenAiError> {
    match requested {
        None => Err(OpenAiError::invalid(FieldError::at("model", "missing"))),
        Some(m) if state.accept_model(m) => Ok(()),
        Some(m) => Err(OpenAiError::unknown_model(m, &state.model_name())),
    }
}

fn event_stream<S>(frames: S) -> Response
where
    S: futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    let headers = [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")];
    (StatusCode::OK, headers, Body::from_stream(frames)).into_response()
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, OpenAiError> {
    let body = body?;
    let chat: ChatBody = parse_body(&body).map_err(OpenAiError::invalid)?;
    check_model(&state, chat.common.model.as_deref())?;
    let include_usage = chat.common.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let request = chat.request(&state.scheduler.limits()).map_err(OpenAiError::invalid)?;
    let (thinking, tools) = match request.prompt() {
        Prompt::Chat { thinking, tools, .. } => (*thinking, tools.clone().unwrap_or_default()),
        _ => (false, Vec::new()),
    };
    let meta = meta(&state, "chatcmpl");
    let running = match state.run(TRANSPORT, request).await.map_err(|(code, message)| OpenAiError::from_code(code, message))? {
        Outcome::Whole { text, finish_reason, usage, .. } => {
            return Ok(Json(reply::chat_completion(&meta, &Answer::of(&text, thinking, &tools), finish_reason, &usage)).into_response());
        }
        Outcome::Stream(running) => running,
    };
    let state = ChatStream {
        running,
        meta,
        splitter: Some(Splitter::new(thinking, &tools)),
        include_usage,
        calls: 0,
        started: false,
        ended: false,
    };
    Ok(event_stream(futures_util::stream::unfold(state, |mut s| async move { s.next_frames().await.map(|b| (Ok(b), s)) })))
}

/// `POST /v1/completions`.
pub async fn completions(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, OpenAiError> {
    let body = body?;
    let completion: CompletionBody = parse_body(&body).map_err(OpenAiError::invalid)?;
    check_model(&state, completion.common.model.as_deref())?;
    let include_usage = completion.common.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let request = completion.request(&state.scheduler.limits()).map_err(OpenAiError::invalid)?;
    let meta = meta(&state, "cmpl");
    let running = match state.run(TRANSPORT, request).await.map_err(|(code, message)| OpenAiError::from_code(code, message))? {
        Outcome::Whole { text, finish_reason, usage, .. } => {
            return Ok(Json(reply::text_completion(&meta, &text, finish_reason, &usage)).into_response());
        }
        Outcome::Stream(running) => running,
    };
    let state = TextStream { running, meta, include_usage, ended: false };
    Ok(event_stream(futures_util::stream::unfold(state, |mut s| async move { s.next_frames().await.map(|b| (Ok(b), s)) })))
}

fn model_object(state: &AppState) -> Value {
    json!({"id": state.model_name(), "object": "model", "created": unix_seconds(state.started), "owned_by": "qwenedge"})
}

/// `GET /v1/models`.
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    let served = state.model().path;
    let mut data = vec![model_object(&state)];
    for stored in state.store.as_ref().map(|s| s.list()).unwrap_or_default().into_iter().filter(|m| m.dir != served) {
        data.push(stored_object(&stored));
    }
    Json(json!({"object": "list", "data": data}))
}

/// A stored model, not the one served, as `/v1/models` lists it.
fn stored_object(m: &StoredModel) -> Value {
    json!({"id": m.name, "object": "model", "created": unix_seconds(m.modified), "owned_by": "qwenedge"})
}

/// `GET /v1/models/{id}`.
pub async fn model(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, OpenAiError> {
    if state.names_served(&id) {
        return Ok(Json(model_object(&state)));
    }
    match state.stored(&id) {
        Some(m) if state.serves(&m) => Ok(Json(model_object(&state))),
        Some(m) => Ok(Json(stored_object(&m))),
        None => Err(OpenAiError::unknown_model(&id, &state.model_name())),
    }
}
