//! The request and event types every transport speaks (one JSON object per line on the Unix
//! socket, one per message over MQTT), and the parser that turns untrusted bytes into a typed
//! [`Request`] or a [`BadRequest`] naming the field at fault.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::constrain::Grammar;
use crate::engine::generate::{FinishReason, Usage};
use crate::engine::sampler::SamplingParams;

/// Longest request id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Scheduling class of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// A person is waiting (voice assistant turn): served first.
    #[default]
    Interactive,
    /// Batch work: yields to interactive requests at the next token.
    Background,
}

/// What the model is asked to continue.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Messages rendered with the model's chat template.
    Chat {
        /// OpenAI-style messages.
        messages: Vec<Value>,
        /// Tool definitions, if any.
        tools: Option<Vec<Value>>,
        /// Thinking mode.
        thinking: bool,
    },
    /// Raw text, no template.
    Text(String),
    /// An utterance to resolve against the intent catalog.
    Intent {
        /// What was said.
        text: String,
        /// Only these intents may be answered (`None`: any).
        filter: Option<Vec<String>>,
    },
}

/// A `chat` or `complete` request after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// What to continue.
    pub prompt: Prompt,
    /// Most tokens to generate (`None`: the configured default).
    pub max_tokens: Option<usize>,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Send `token` events (else only `done`).
    pub stream: bool,
    /// Scheduling class.
    pub priority: Priority,
    /// Time allowed from arrival to the last token (`None`: the configured default).
    pub deadline_ms: Option<u64>,
    /// A grammar the output must follow (`response_format`).
    pub format: Option<Grammar>,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Generate text.
    Generate(Box<GenerateRequest>),
    /// Cancel the request with this id on the same connection.
    Cancel,
    /// Report the daemon's state.
    Status,
    /// List the loaded model.
    Models,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Client-chosen id; every event for this request carries it.
    pub id: String,
    /// The operation.
    pub op: Op,
}

/// A request that could not be accepted, with the id when it could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadRequest {
    /// The request id, if it was readable.
    pub id: Option<String>,
    /// What is wrong, naming the field.
    pub message: String,
}

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed.
    BadRequest,
    /// The queue is full.
    Overloaded,
    /// The device is too hot.
    Thermal,
    /// Not enough memory.
    Memory,
    /// Cancelled by the client.
    Cancelled,
    /// The deadline passed.
    Timeout,
    /// The model failed.
    ModelError,
    /// The daemon is stopping.
    ShuttingDown,
    /// The peer may not use this daemon.
    Forbidden,
}

/// Where a request's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestTimings {
    /// Waiting in the queue (ms).
    pub queue_ms: f64,
    /// Loading the model first, when it had been unloaded (ms; 0 otherwise).
    pub load_ms: f64,
    /// Prompt processing (ms).
    pub prefill_ms: f64,
    /// Arrival to the first generated token (ms).
    pub ttft_ms: f64,
    /// Generated tokens per second after the first.
    pub decode_tok_s: f64,
    /// Time spent pausing between tokens to keep to the warm duty cycle (ms; 0 when cool).
    pub paced_ms: f64,
    /// Arrival to the end (ms).
    pub total_ms: f64,
}

/// An event sent to a client.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// The request id (`null` when the request had none readable).
    pub id: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
}

/// The kinds of events.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventBody {
    /// A piece of generated text.
    Token {
        /// The text (whole characters).
        text: String,
    },
    /// Generation finished (terminal).
    Done {
        /// All generated text.
        text: String,
        /// Why it ended.
        finish_reason: FinishReason,
        /// Token counts.
        usage: Usage,
        /// Timings.
        timings: RequestTimings,
    },
    /// The request failed (terminal).
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// Answer to `intent` (terminal).
    Intent {
        /// Whether an intent was recognised (at or above the configured confidence).
        recognized: bool,
        /// The intent and the model's confidence; present when one was chosen, even below the
        /// threshold.
        intent: Option<IntentSummary>,
        /// The filled slots (empty when not recognised).
        slots: Vec<crate::intent::Slot>,
        /// The model's answer as written.
        text: String,
        /// Token counts.
        usage: Usage,
        /// Timings.
        timings: RequestTimings,
    },
    /// Answer to `status` (terminal).
    Status(Value),
    /// Answer to `models` (terminal).
    Models {
        /// The models.
        models: Vec<Value>,
    },
}

impl Event {
    /// An error event.
    pub fn error(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { id, body: EventBody::Error { code, message: message.into() } }
    }

    /// Whether this is the last event of its request.
    pub fn is_terminal(&self) -> bool {
        !matches!(self.body, EventBody::Token { .. })
    }

    /// One JSON line (with the trailing newline).
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self)
            .unwrap_or_else(|e| format!(r#"{{"id":null,"event":"error","code":"model_error","message":"unserialisable event: {e}"}}"#));
        s.push('\n');
        s
    }
}

/// The intent of an `intent` event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntentSummary {
    /// Intent name.
    pub name: String,
    /// The model's confidence, 0–1.
    pub confidence: f64,
}

/// The body of `chat` / `complete`; every field optional here, required ones checked per op.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    messages: Option<Vec<Value>>,
    tools: Option<Vec<Value>>,
    thinking: Option<bool>,
    prompt: Option<String>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<StopField>,
    stream: Option<bool>,
    priority: Option<Priority>,
    deadline_ms: Option<u64>,
    response_format: Option<Value>,
}

/// The body of `intent`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntentBody {
    text: Option<String>,
    intent_filter: Option<Vec<String>>,
    site_id: Option<String>,
    temperature: Option<f32>,
    seed: Option<u64>,
    priority: Option<Priority>,
    deadline_ms: Option<u64>,
}

/// Longest utterance accepted by `intent`, in bytes.
pub const MAX_INTENT_TEXT: usize = 2000;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// Parses one request line. `max_tokens_limit` bounds `max_tokens`.
pub fn parse_request(line: &[u8], max_tokens_limit: usize) -> Result<Request, BadRequest> {
    let bad = |id: Option<&str>, message: String| BadRequest { id: id.map(str::to_string), message };
    let text = std::str::from_utf8(line).map_err(|e| bad(None, format!("request is not valid UTF-8 (byte {})", e.valid_up_to())))?;
    let value: Value = serde_json::from_str(text).map_err(|e| bad(None, format!("invalid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(bad(None, "a request must be a JSON object".into()));
    };
    let id = match obj.remove("id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => s,
        Some(Value::String(_)) => return Err(bad(None, format!("id: must be 1 to {MAX_ID_LEN} bytes"))),
        Some(_) => return Err(bad(None, "id: must be a string".into())),
        None => return Err(bad(None, "id: missing".into())),
    };
    let id_ref = Some(id.as_str());
    let op = match obj.remove("op") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad(id_ref, "op: must be a string".into())),
        None => return Err(bad(id_ref, "op: missing".into())),
    };
    let no_fields = |obj: &serde_json::Map<String, Value>, op: &str| match obj.keys().next() {
        Some(k) => Err(bad(id_ref, format!("{k}: unknown field for op '{op}'"))),
        None => Ok(()),
    };
    let op = match op.as_str() {
        "chat" | "complete" => {
            let body: GenerateBody = serde_json::from_value(Value::Object(obj)).map_err(|e| bad(id_ref, field_message(&e.to_string())))?;
            Op::Generate(Box::new(generate(&op, body, max_tokens_limit).map_err(|m| bad(id_ref, m))?))
        }
        "intent" => {
            let body: IntentBody = serde_json::from_value(Value::Object(obj)).map_err(|e| bad(id_ref, field_message(&e.to_string())))?;
            Op::Generate(Box::new(intent(body).map_err(|m| bad(id_ref, m))?))
        }
        "cancel" => no_fields(&obj, &op).map(|()| Op::Cancel)?,
        "status" => no_fields(&obj, &op).map(|()| Op::Status)?,
        "models" => no_fields(&obj, &op).map(|()| Op::Models)?,
        other => return Err(bad(id_ref, format!("op: unknown operation '{other}' (chat, complete, intent, cancel, status, models)"))),
    };
    Ok(Request { id, op })
}

/// serde's "unknown field `x`, expected …" → "x: unknown field (expected …)".
fn field_message(e: &str) -> String {
    if let Some(rest) = e.strip_prefix("unknown field `") {
        if let Some((field, tail)) = rest.split_once('`') {
            return format!(
                "{field}: unknown field{}",
                tail.split(" at line").next().unwrap_or("").replacen(", expected", " (expected", 1) + ")"
            );
        }
    }
    e.split(" at line").next().unwrap_or(e).to_string()
}

fn intent(b: IntentBody) -> Result<GenerateRequest, String> {
    let text = b.text.ok_or("text: missing")?;
    if text.trim().is_empty() || text.len() > MAX_INTENT_TEXT {
        return Err(format!("text: must be 1 to {MAX_INTENT_TEXT} bytes and not blank"));
    }
    if b.site_id.as_ref().is_some_and(|s| s.len() > MAX_ID_LEN) {
        return Err(format!("site_id: must be at most {MAX_ID_LEN} bytes"));
    }
    if b.intent_filter.as_ref().is_some_and(|f| f.len() > 1000) {
        return Err("intent_filter: at most 1000 names".into());
    }
    let sampling = SamplingParams { temperature: b.temperature.unwrap_or(0.0), seed: b.seed, ..SamplingParams::default() };
    sampling.validate().map_err(|e| e.to_string())?;
    if b.deadline_ms.is_some_and(|d| d == 0 || d > 86_400_000) {
        return Err("deadline_ms: must be between 1 and 86400000".into());
    }
    Ok(GenerateRequest {
        prompt: Prompt::Intent { text, filter: b.intent_filter },
        max_tokens: None,
        sampling,
        stop: Vec::new(),
        stream: false,
        priority: b.priority.unwrap_or_default(),
        deadline_ms: b.deadline_ms,
        format: None,
    })
}

fn generate(op: &str, b: GenerateBody, max_tokens_limit: usize) -> Result<GenerateRequest, String> {
    let prompt = if op == "chat" {
        if b.prompt.is_some() {
            return Err("prompt: not a field of chat (use messages, or op complete)".into());
        }
        let messages = b.messages.ok_or("messages: missing")?;
        if messages.is_empty() {
            return Err("messages: must not be empty".into());
        }
        for (i, m) in messages.iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str).ok_or(format!("messages[{i}].role: missing or not a string"))?;
            if !ROLES.contains(&role) {
                return Err(format!("messages[{i}].role: '{role}' is not one of {}", ROLES.join(", ")));
            }
            match m.get("content") {
                Some(Value::String(_)) => {}
                Some(Value::Null) | None if role == "assistant" && m.get("tool_calls").is_some() => {}
                _ => return Err(format!("messages[{i}].content: missing or not a string")),
            }
        }
        Prompt::Chat { messages, tools: b.tools, thinking: b.thinking.unwrap_or(false) }
    } else {
        for (present, field) in [(b.messages.is_some(), "messages"), (b.tools.is_some(), "tools"), (b.thinking.is_some(), "thinking")] {
            if present {
                return Err(format!("{field}: not a field of complete (use op chat)"));
            }
        }
        Prompt::Text(b.prompt.ok_or("prompt: missing")?)
    };
    if let Some(n) = b.max_tokens {
        if n == 0 || n > max_tokens_limit {
            return Err(format!("max_tokens: must be between 1 and {max_tokens_limit} (got {n})"));
        }
    }
    let d = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: b.temperature.unwrap_or(d.temperature),
        top_k: b.top_k.unwrap_or(d.top_k),
        top_p: b.top_p.unwrap_or(d.top_p),
        min_p: b.min_p.unwrap_or(d.min_p),
        repetition_penalty: b.repetition_penalty.unwrap_or(d.repetition_penalty),
        presence_penalty: b.presence_penalty.unwrap_or(d.presence_penalty),
        frequency_penalty: b.frequency_penalty.unwrap_or(d.frequency_penalty),
        seed: b.seed,
    };
    sampling.validate().map_err(|e| e.to_string())?;
    let stop = match b.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    if stop.len() > 8 || stop.iter().any(|s| s.is_empty() || s.len() > 128) {
        return Err("stop: at most 8 strings of 1 to 128 bytes".into());
    }
    if b.deadline_ms.is_some_and(|d| d == 0 || d > 86_400_000) {
        return Err("deadline_ms: must be between 1 and 86400000".into());
    }
    let format = match b.response_format {
        Some(v) => Grammar::from_response_format(&v)?,
        None => None,
    };
    Ok(GenerateRequest {
        prompt,
        format,
        max_tokens: b.max_tokens,
        sampling,
        stop,
        stream: b.stream.unwrap_or(true),
        priority: b.priority.unwrap_or_default(),
        deadline_ms: b.deadline_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, BadRequest> {
        parse_request(s.as_bytes(), 1000)
    }

    #[test]
    fn chat_with_defaults() {
        let r = parse(r#"{"id":"a","op":"chat","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        let Op::Generate(g) = r.op else { panic!() };
        assert!(g.stream);
        assert_eq!(g.priority, Priority::Interactive);
        assert!(matches!(g.prompt, Prompt::Chat { thinking: false, .. }));
    }

    #[test]
    fn bad_requests_name_the_field_and_keep_the_id() {
        let cases = [
            (r#"{"id":"a","op":"chat","messages":[{"role":"user","content":"x"}],"temprature":1}"#, "temprature: unknown field"),
            (r#"{"id":"a","op":"chat","messages":[{"role":"user","content":"x"}],"top_p":2}"#, "top_p must be"),
            (r#"{"id":"a","op":"chat","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#, "max_tokens:"),
            (r#"{"id":"a","op":"chat","messages":[{"role":"robot","content":"x"}]}"#, "messages[0].role"),
            (r#"{"id":"a","op":"chat","messages":[]}"#, "messages: must not be empty"),
            (r#"{"id":"a","op":"complete","prompt":"x","priority":"urgent"}"#, "unknown variant"),
            (r#"{"id":"a","op":"complete","prompt":"x","stream":"yes"}"#, "invalid type"),
            (r#"{"id":"a","op":"dance"}"#, "op: unknown operation 'dance'"),
            (r#"{"id":"a","op":"status","verbose":true}"#, "verbose: unknown field"),
            (r#"{"id":"a","op":"complete"}"#, "prompt: missing"),
        ];
        for (line, want) in cases {
            let e = parse(line).unwrap_err();
            assert_eq!(e.id.as_deref(), Some("a"), "{line}");
            assert!(e.message.contains(want), "{line}: {}", e.message);
        }
    }

    #[test]
    fn unreadable_requests_have_no_id() {
        for line in ["not json", "[1,2]", r#"{"op":"status"}"#, r#"{"id":5,"op":"status"}"#] {
            assert_eq!(parse(line).unwrap_err().id, None, "{line}");
        }
        assert!(parse_request(b"{\"id\":\"\xff\"}", 10).unwrap_err().message.contains("UTF-8"));
    }

    #[test]
    fn events_serialise_flat() {
        let e = Event { id: Some("a".into()), body: EventBody::Token { text: "hé".into() } };
        assert_eq!(e.to_line(), "{\"id\":\"a\",\"event\":\"token\",\"text\":\"hé\"}\n");
        let e = Event::error(None, ErrorCode::ShuttingDown, "bye");
        assert_eq!(e.to_line(), "{\"id\":null,\"event\":\"error\",\"code\":\"shutting_down\",\"message\":\"bye\"}\n");
        assert!(e.is_terminal());
    }
}
