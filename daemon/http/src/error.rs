//! Errors as each API writes them: OpenAI's `{"error": {"message", "type", "param", "code"}}`
//! and Ollama's `{"error": "…"}`, each with the status its clients expect. One enum per API,
//! both built from the daemon's stable error codes.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use qwenedge_api::{ErrorCode, FieldError};

/// Seconds a client is told to wait before retrying a refused request.
pub(crate) const RETRY_AFTER_S: &str = "2";

/// Why a request body is refused: a field at fault, or the body as a whole (not JSON).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// A field's value.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The body is not JSON (or not the JSON of the endpoint).
    #[error("{0}")]
    Malformed(String),
}

impl BodyError {
    /// The field at fault, where there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Field(e) => Some(&e.field),
            Self::Malformed(_) => None,
        }
    }
}

/// An error in OpenAI's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What is wrong.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`, `server_error`, …
    pub kind: &'static str,
    /// The field at fault.
    pub param: Option<String>,
    /// A code (`model_not_found`, `invalid_api_key`, or the daemon's error code).
    pub code: Option<String>,
}

impl OpenAiError {
    /// A request that is malformed or out of range, with no single field at fault.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, param: None, message: message.into(), kind: "invalid_request_error", code: None }
    }

    /// A body refused: `param` is the field at fault.
    pub fn invalid(e: impl Into<BodyError>) -> Self {
        let e = e.into();
        Self { param: e.field().map(str::to_string), ..Self::bad_request(e.to_string()) }
    }

    /// A model this server does not serve.
    pub fn unknown_model(requested: &str, ours: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("The model '{requested}' does not exist; this server serves '{ours}'"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found".into()),
        }
    }

    /// No or a wrong bearer token.
    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "Incorrect or missing API key: send one of http.api_key_file's tokens as 'Authorization: Bearer <token>'".into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key".into()),
        }
    }

    /// An answer that ended with the daemon's error `code`.
    pub fn from_code(code: ErrorCode, message: impl Into<String>) -> Self {
        let message = message.into();
        let (status, kind) = match code {
            ErrorCode::BadRequest => return Self::bad_request(message),
            ErrorCode::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
            ErrorCode::Thermal | ErrorCode::Memory | ErrorCode::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
            ErrorCode::Timeout => (StatusCode::GATEWAY_TIMEOUT, "server_error"),
            ErrorCode::Forbidden => (StatusCode::FORBIDDEN, "permission_error"),
            ErrorCode::Cancelled | ErrorCode::ModelError => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        Self { status, message, kind, param: None, code: Some(code.as_str().into()) }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let retry = matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE);
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if retry {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
        }
        response
    }
}

/// An error in Ollama's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaError {
    /// HTTP status.
    pub status: StatusCode,
    /// What is wrong.
    pub message: String,
}

impl OllamaError {
    /// A malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    /// A model this server does not serve (Ollama's wording, so clients recognise it).
    pub fn unknown_model(requested: &str, ours: &str) -> Self {
        Self { status: StatusCode::NOT_FOUND, message: format!("model '{requested}' not found (this server serves '{ours}')") }
    }

    /// No or a wrong bearer token.
    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "unauthorized: send one of http.api_key_file's tokens as 'Authorization: Bearer <token>'".into(),
        }
    }

    /// An answer that ended with the daemon's error `code` (Ollama answers a full queue 503).
    pub fn from_code(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = match code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Overloaded | ErrorCode::Thermal | ErrorCode::Memory | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::Cancelled | ErrorCode::ModelError => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self { status, message: message.into() }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": self.message})
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if retry {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
        }
        response
    }
}

impl From<BytesRejection> for OpenAiError {
    /// A body that could not be read (over `http.max_body_bytes`: 413).
    fn from(r: BytesRejection) -> Self {
        Self { status: r.status(), param: None, message: body_message(&r), kind: "invalid_request_error", code: None }
    }
}

impl From<BytesRejection> for OllamaError {
    /// A body that could not be read (over `http.max_body_bytes`: 413).
    fn from(r: BytesRejection) -> Self {
        Self { status: r.status(), message: body_message(&r) }
    }
}

fn body_message(r: &BytesRejection) -> String {
    match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => "request body: larger than http.max_body_bytes".into(),
        _ => format!("request body: {}", r.body_text()),
    }
}

/// A JSON body read into `T`, the error naming the field (`messages[2].role: invalid type …`).
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let malformed = e.inner().is_syntax() || e.inner().is_eof();
        let inner = e.into_inner().to_string();
        let inner = inner.split(" at line").next().unwrap_or(&inner).to_string();
        if malformed || path == "." || path.is_empty() {
            BodyError::Malformed(format!("invalid JSON body: {inner}"))
        } else {
            BodyError::Field(FieldError::at(path, inner))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field_and_map_the_codes() {
        let e = OpenAiError::invalid(FieldError::at("messages[0].role", "'robot' is not one of system, user"));
        assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some("messages[0].role")));
        assert_eq!(e.message, "messages[0].role: 'robot' is not one of system, user");
        let e = OpenAiError::invalid(FieldError::whole("top_p", "top_p must be in (0, 1] (got 2)"));
        assert_eq!(e.param.as_deref(), Some("top_p"));
        assert_eq!(OpenAiError::invalid(BodyError::Malformed("invalid JSON body: EOF".into())).param, None);
        assert_eq!(OpenAiError::bad_request("The request is bad").param, None);
        assert_eq!(OpenAiError::from_code(ErrorCode::Overloaded, "full").status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(OllamaError::from_code(ErrorCode::Overloaded, "full").status, StatusCode::SERVICE_UNAVAILABLE);
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            temperature: f32,
        }
        let e = parse_body::<T>(br#"{"temperature": "hot"}"#).unwrap_err();
        assert!(e.to_string().starts_with("temperature: invalid type") && e.field() == Some("temperature"), "{e}");
        let e = parse_body::<T>(b"{").unwrap_err();
        assert!(e.to_string().starts_with("invalid JSON body") && e.field().is_none(), "{e}");
    }
}
