//! The Ollama API, as Home Assistant's Ollama integration and other Ollama clients use it:
//! `GET /api/tags` (the served model and the model store's), `GET /api/ps`, `GET /api/version`,
//! `POST /api/show`, `POST /api/pull` (into the model store, `pull.rs`), `POST /api/chat` and
//! `POST /api/generate` (NDJSON, or one object with `stream: false`). An empty conversation or
//! prompt with `keep_alive` loads or unloads the model, as in Ollama.

mod pull;
mod reply;
pub(crate) mod request;

pub use pull::pull;

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::{parse_body, OllamaError};
use super::state::{AppState, Outcome};
use super::time::rfc3339;
use qwenedge_api::{GenerateRequest, ModelReport, Prompt};
use qwenedge_scheduler::KeepAlive;
use qwenedge_toolcall::Splitter;
use reply::{done_fields, done_reason, object, Shape, Stream};
use request::{keep_alive, ChatBody, Common, GenerateBody};

/// The transport label of these requests in the counters.
pub const TRANSPORT: &str = "ollama";

/// The Ollama API version these endpoints follow.
pub const API_VERSION: &str = "0.12.6";

/// `GET /`: what Ollama answers, so clients that probe for it find it.
pub async fn root() -> Response {
    ([(header::SERVER, concat!("qwenedge/", env!("CARGO_PKG_VERSION")))], "Ollama is running").into_response()
}

/// `GET /api/version`.
pub async fn version() -> Json<Value> {
    Json(json!({"version": API_VERSION, "qwenedge": env!("CARGO_PKG_VERSION")}))
}

/// The model's tag name (`name:latest` when the name has no tag).
pub(crate) fn tag_name(state: &AppState) -> String {
    let name = state.model_name();
    if name.contains(':') {
        name
    } else {
        format!("{name}:latest")
    }
}

/// A stable digest-like id of the served model.
fn digest(m: &ModelReport) -> String {
    use std::hash::{Hash, Hasher};
    (0u64..4)
        .map(|seed| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (seed, &m.path, m.weights_mb, m.vocab_size, m.layers).hash(&mut h);
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// `parameter_size` as Ollama writes it, from the published shapes, else the weights.
fn parameter_size(m: &ModelReport) -> String {
    match (m.hidden_size, m.layers) {
        (1024, 24) => "0.8B".into(),
        (2048, 24) => "2B".into(),
        (2560, 32) => "4B".into(),
        (4096, 32) => "9B".into(),
        _ => {
            let per_param = match m.quantization.as_str() {
                "int4" => 0.6,
                "fp16" => 2.0,
                _ => 4.0,
            };
            let params = m.weights_mb as f64 * 1024.0 * 1024.0 / per_param;
            if params >= 1e9 {
                format!("{:.1}B", params / 1e9)
            } else {
                format!("{:.0}M", params / 1e6)
            }
        }
    }
}

fn details(m: &ModelReport) -> Value {
    let family = m.model_type.trim_end_matches("_text").replace('_', "");
    let quantization = match m.quantization.as_str() {
        "int4" => "Q4_0",
        "fp16" => "F16",
        _ => "F32",
    };
    json!({"parent_model": "", "format": "onnx", "family": family, "families": [family],
           "parameter_size": parameter_size(m), "quantization_level": quantization})
}

fn modified_at(m: &ModelReport) -> String {
    let modified = std::fs::metadata(&m.path).and_then(|md| md.modified()).unwrap_or_else(|_| SystemTime::now());
    rfc3339(modified)
}

/// `GET /api/tags`.
pub async fn tags(State(state): State<AppState>) -> Json<Value> {
    let m = state.model();
    let name = tag_name(&state);
    let mut models = vec![json!({"name": name, "model": name, "modified_at": modified_at(&m), "size": m.weights_mb * 1024 * 1024,
                                 "digest": digest(&m), "details": details(&m)})];
    for stored in state.store.as_ref().map(|s| s.list()).unwrap_or_default() {
        if stored.dir == m.path {
            continue;
        }
        let quantization = match stored.variant.as_deref() {
            Some("q4") => "Q4_0",
            Some("fp16" | "q4f16") => "F16",
            _ => "F32",
        };
        models.push(json!({"name": stored.name, "model": stored.name, "modified_at": rfc3339(stored.modified), "size": stored.bytes,
                           "digest": stored.commit, "details": {"parent_model": "", "format": "onnx", "family": "qwen35",
                           "families": ["qwen35"], "parameter_size": "", "quantization_level": quantization}}));
    }
    Json(json!({"models": models}))
}

/// `GET /api/ps`: the model while it is loaded, with when it will be unloaded.
pub async fn ps(State(state): State<AppState>) -> Json<Value> {
    let status = state.scheduler.status();
    if !status.model_loaded {
        return Json(json!({"models": []}));
    }
    let m = status.model;
    let until = match state.scheduler.unload_at() {
        Some(at) => SystemTime::now() + at.saturating_duration_since(std::time::Instant::now()),
        None => SystemTime::now() + Duration::from_secs(100 * 365 * 86_400),
    };
    let name = tag_name(&state);
    Json(json!({"models": [{"name": name, "model": name, "size": m.weights_mb * 1024 * 1024, "digest": digest(&m),
                            "details": details(&m), "expires_at": rfc3339(until), "size_vram": 0, "context_length": m.context_length}]}))
}

/// `POST /api/show`.
pub async fn show(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, OllamaError> {
    let body = body?;
    let v: Value = parse_body(&body).map_err(|e| OllamaError::bad_request(e.to_string()))?;
    let requested = v.get("model").or_else(|| v.get("name")).and_then(Value::as_str).ok_or(OllamaError::bad_request("model: missing"))?;
    if !state.is_our_model(requested) {
        return Err(OllamaError::unknown_model(requested, &tag_name(&state)));
    }
    let m = state.model();
    let arch = m.model_type.trim_end_matches("_text").replace('_', "");
    let mut capabilities = vec!["completion", "tools"];
    if m.chat_template {
        capabilities.push("thinking");
    }
    Ok(Json(json!({
        "license": "", "modelfile": format!("# served by qwenedge\nFROM {}\n", m.path.display()), "parameters": "", "template": "",
        "details": details(&m),
        "model_info": {"general.architecture": arch, "general.parameter_count": parameter_size(&m),
                       format!("{arch}.context_length"): m.context_length, format!("{arch}.embedding_length"): m.hidden_size,
                       format!("{arch}.block_count"): m.layers},
        "capabilities": capabilities, "modified_at": modified_at(&m),
    })))
}

fn check_model(state: &AppState, common: &Common) -> Result<(), OllamaError> {
    match common.model.as_deref() {
        None | Some("") => Err(OllamaError::bad_request("model: missing")),
        Some(m) if state.accept_model(m) => Ok(()),
        Some(m) => Err(OllamaError::unknown_model(m, &tag_name(state))),
    }
}

/// Applies `keep_alive`; with nothing to generate, loads or unloads the model and answers.
fn keep_alive_or_load(state: &AppState, common: &Common, empty: bool, shape: Shape) -> Result<Option<Response>, OllamaError> {
    let keep = common.keep_alive.as_ref().map(keep_alive).transpose().map_err(|e| OllamaError::bad_request(e.to_string()))?;
    if let Some(k) = keep {
        state.scheduler.keep_alive(k);
    }
    if !empty {
        return Ok(None);
    }
    let reason = if keep == Some(KeepAlive::For(Duration::ZERO)) {
        "unload"
    } else {
        state.scheduler.load();
        "load"
    };
    let mut obj = object(shape, &tag_name(state), "", "", &[]);
    obj["done"] = true.into();
    obj["done_reason"] = reason.into();
    Ok(Some(Json(obj).into_response()))
}

/// Runs `request` and answers in Ollama's shape; `model` is the name the client gave (Ollama
/// echoes it).
async fn answer(state: AppState, request: GenerateRequest, shape: Shape, model: String) -> Result<Response, OllamaError> {
    let (thinking, tools) = match request.prompt() {
        Prompt::Chat { thinking, tools, .. } => (*thinking, tools.clone().unwrap_or_default()),
        _ => (false, Vec::new()),
    };
    let running = match state.run(TRANSPORT, request).await.map_err(|(code, message)| OllamaError::from_code(code, message))? {
        Outcome::Whole { text, finish_reason, usage, timings } => {
            let mut s = Splitter::new(thinking, &tools);
            let (mut content, mut reasoning, mut calls) = (String::new(), String::new(), Vec::new());
            let mut pieces = s.push(&text);
            let end = s.finish();
            pieces.extend(end.pieces);
            for p in pieces {
                match p {
                    qwenedge_toolcall::Piece::Content(t) => content.push_str(&t),
                    qwenedge_toolcall::Piece::Reasoning(t) => reasoning.push_str(&t),
                    qwenedge_toolcall::Piece::Call(c) => calls.push(c),
                }
            }
            if !calls.is_empty() {
                content = content.trim_end().to_string();
            }
            let mut obj = object(shape, &model, &content, &reasoning, &calls);
            done_fields(&mut obj, done_reason(finish_reason, end.cut_call), &usage, &timings);
            return Ok(Json(obj).into_response());
        }
        Outcome::Stream(running) => running,
    };
    let s = Stream { running, shape, model, splitter: Some(Splitter::new(thinking, &tools)), ended: false };
    let lines = futures_util::stream::unfold(s, |mut s| async move { s.next_lines().await.map(|b| (Ok::<_, Infallible>(b), s)) });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

/// `POST /api/chat`.
pub async fn chat(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, OllamaError> {
    let body = body?;
    let chat: ChatBody = parse_body(&body).map_err(|e| OllamaError::bad_request(e.to_string()))?;
    check_model(&state, &chat.common)?;
    if let Some(done) = keep_alive_or_load(&state, &chat.common, chat.messages.is_empty(), Shape::Chat)? {
        return Ok(done);
    }
    let model = chat.common.model.clone().unwrap_or_default();
    let request = chat.request(&state.scheduler.limits()).map_err(|e| OllamaError::bad_request(e.to_string()))?;
    answer(state, request, Shape::Chat, model).await
}

/// `POST /api/generate`.
pub async fn generate(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, OllamaError> {
    let body = body?;
    let generate: GenerateBody = parse_body(&body).map_err(|e| OllamaError::bad_request(e.to_string()))?;
    check_model(&state, &generate.common)?;
    if let Some(done) = keep_alive_or_load(&state, &generate.common, generate.prompt.is_empty(), Shape::Generate)? {
        return Ok(done);
    }
    let model = generate.common.model.clone().unwrap_or_default();
    let request = generate.request(&state.scheduler.limits()).map_err(|e| OllamaError::bad_request(e.to_string()))?;
    answer(state, request, Shape::Generate, model).await
}
