//! Ollama response bodies: NDJSON lines of `/api/chat` (`message.content`, `message.thinking`,
//! `message.tool_calls` with object arguments) and `/api/generate` (`response`, `thinking`),
//! the last one with `done: true`, `done_reason` and the counters in nanoseconds; an error
//! mid-stream is one `{"error": …}` line.

use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{json, Value};

use super::super::error::OllamaError;
use super::super::state::Submitted;
use super::super::time::rfc3339;
use qwenedge_api::{EventBody, FinishReason, RequestTimings, Usage};
use qwenedge_toolcall::{Piece, Splitter};

/// Which endpoint's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `/api/chat`: `message`.
    Chat,
    /// `/api/generate`: `response`.
    Generate,
}

fn ns(ms: f64) -> u64 {
    (ms.max(0.0) * 1e6) as u64
}

/// The counters of the last object.
pub fn done_fields(obj: &mut Value, reason: &str, u: &Usage, t: &RequestTimings) {
    obj["done"] = true.into();
    obj["done_reason"] = reason.into();
    obj["total_duration"] = ns(t.total_ms).into();
    obj["load_duration"] = ns(t.load_ms).into();
    obj["prompt_eval_count"] = u.prompt_tokens.into();
    obj["prompt_eval_duration"] = ns(t.prefill_ms).into();
    obj["eval_count"] = u.completion_tokens.into();
    obj["eval_duration"] = ns(t.total_ms - t.ttft_ms).into();
}

/// `done_reason`.
pub fn done_reason(reason: FinishReason, cut_call: bool) -> &'static str {
    match (reason, cut_call) {
        (FinishReason::Stop, false) => "stop",
        _ => "length",
    }
}

/// One object of the answer with `pieces`, before the last.
pub fn object(shape: Shape, model: &str, content: &str, thinking: &str, calls: &[qwenedge_toolcall::ToolCall]) -> Value {
    let mut obj = json!({"model": model, "created_at": rfc3339(SystemTime::now())});
    match shape {
        Shape::Chat => {
            let mut message = json!({"role": "assistant", "content": content});
            if !thinking.is_empty() {
                message["thinking"] = thinking.into();
            }
            if !calls.is_empty() {
                message["tool_calls"] = calls
                    .iter()
                    .map(|c| json!({"function": {"name": c.name, "arguments": super::request::arguments(&c.arguments)}}))
                    .collect();
            }
            obj["message"] = message;
        }
        Shape::Generate => {
            obj["response"] = content.into();
            if !thinking.is_empty() {
                obj["thinking"] = thinking.into();
            }
        }
    }
    obj["done"] = false.into();
    obj
}

/// An answer streamed as NDJSON.
pub struct Stream {
    /// The request.
    pub running: Submitted,
    /// Endpoint.
    pub shape: Shape,
    /// The model's name.
    pub model: String,
    /// Splits the text.
    pub splitter: Option<Splitter>,
    /// The stream has ended.
    pub ended: bool,
}

impl Stream {
    fn line(v: &Value, out: &mut String) {
        out.push_str(&v.to_string());
        out.push('\n');
    }

    fn pieces(&self, pieces: Vec<Piece>, out: &mut String) {
        for p in pieces {
            let obj = match p {
                Piece::Content(t) => object(self.shape, &self.model, &t, "", &[]),
                Piece::Reasoning(t) => object(self.shape, &self.model, "", &t, &[]),
                Piece::Call(c) => object(self.shape, &self.model, "", "", &[c]),
            };
            Self::line(&obj, out);
        }
    }

    /// The next lines (`None` once the stream has ended).
    pub async fn next_lines(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        let event = self.running.next().await;
        let mut out = String::new();
        match event {
            Some(EventBody::Token { text }) => {
                let pieces = self.splitter.as_mut().map(|s| s.push(&text)).unwrap_or_default();
                self.pieces(pieces, &mut out);
            }
            Some(EventBody::Done { finish_reason, usage, timings, .. }) => {
                let end = self.splitter.take().map(Splitter::finish);
                let cut = end.as_ref().is_some_and(|e| e.cut_call);
                self.pieces(end.map(|e| e.pieces).unwrap_or_default(), &mut out);
                let mut last = object(self.shape, &self.model, "", "", &[]);
                done_fields(&mut last, done_reason(finish_reason, cut), &usage, &timings);
                Self::line(&last, &mut out);
                self.ended = true;
            }
            Some(EventBody::Error { code, message }) => {
                Self::line(&OllamaError::from_code(code, message).body(), &mut out);
                self.ended = true;
            }
            Some(_) | None => {
                Self::line(&json!({"error": "the request ended without an answer"}), &mut out);
                self.ended = true;
            }
        }
        Some(Bytes::from(out))
    }
}
