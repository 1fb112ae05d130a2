//! `POST /api/pull`: the served model is there already; a name the model store resolves
//! (`owner/name[:variant]` of the Hugging Face Hub, or an alias of `[hub.aliases]`) is pulled
//! into the store, with Ollama's progress lines (`pulling manifest`, `pulling <digest>` with
//! `total`/`completed`, `verifying sha256 digest`, `writing manifest`, `success`) or, with
//! `stream: false`, one answer at the end. A client that goes away does not stop the pull.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::tag_name;
use crate::error::{parse_body, OllamaError};
use crate::models::PullUpdate;
use crate::state::AppState;

fn line(update: &PullUpdate) -> Value {
    match update {
        PullUpdate::Status(s) => json!({"status": s}),
        PullUpdate::File { digest, total, completed } => {
            let short: String = digest.trim_start_matches("sha256:").chars().take(12).collect();
            json!({"status": format!("pulling {short}"), "digest": digest, "total": total, "completed": completed})
        }
        PullUpdate::Success => json!({"status": "success"}),
        PullUpdate::Failed(message) => json!({"error": message}),
    }
}

/// `POST /api/pull`.
pub async fn pull(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, OllamaError> {
    let body = body?;
    let v: Value = parse_body(&body).map_err(|e| OllamaError::bad_request(e.to_string()))?;
    let requested = v.get("model").or_else(|| v.get("name")).and_then(Value::as_str).ok_or(OllamaError::bad_request("model: missing"))?;
    let stream = v.get("stream").and_then(Value::as_bool) != Some(false);
    let mut updates = if state.is_our_model(requested) {
        None
    } else {
        let Some(store) = &state.store else {
            return Err(OllamaError {
                status: StatusCode::NOT_FOUND,
                message: format!("this daemon pulls no models (no model store); it serves '{}'", tag_name(&state)),
            });
        };
        let rx = store.pull(requested).map_err(|message| OllamaError { status: StatusCode::NOT_FOUND, message })?;
        Some(rx)
    };
    if !stream {
        let Some(rx) = updates.as_mut() else { return Ok(Json(json!({"status": "success"})).into_response()) };
        while let Some(update) = rx.recv().await {
            match update {
                PullUpdate::Success => return Ok(Json(json!({"status": "success"})).into_response()),
                PullUpdate::Failed(message) => return Err(OllamaError { status: StatusCode::INTERNAL_SERVER_ERROR, message }),
                _ => {}
            }
        }
        return Err(OllamaError { status: StatusCode::INTERNAL_SERVER_ERROR, message: "the pull ended without a result".into() });
    }
    let Some(rx) = updates else {
        let lines =
            ["{\"status\":\"pulling manifest\"}\n", "{\"status\":\"verifying sha256 digest\"}\n", "{\"status\":\"success\"}\n"].concat();
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], lines).into_response());
    };
    let lines = futures_util::stream::unfold((rx, false), |(mut rx, ended)| async move {
        if ended {
            return None;
        }
        let update = rx.recv().await.unwrap_or_else(|| PullUpdate::Failed("the pull ended without a result".into()));
        let last = matches!(update, PullUpdate::Success | PullUpdate::Failed(_));
        let mut text = line(&update).to_string();
        text.push('\n');
        Some((Ok::<_, Infallible>(Bytes::from(text)), (rx, last)))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_ollamas() {
        let f = PullUpdate::File { digest: "sha256:0123456789abcdef".into(), total: 10, completed: 4 };
        assert_eq!(line(&f), json!({"status": "pulling 0123456789ab", "digest": "sha256:0123456789abcdef", "total": 10, "completed": 4}));
        assert_eq!(line(&PullUpdate::Failed("x".into())), json!({"error": "x"}));
    }
}
