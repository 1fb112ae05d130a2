//! Events sent back to a client: streamed text, the one terminal event of each request
//! (`done`, `intent`, `error`, `status`, `models`), and the types inside them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::status::{ModelReport, StatusReport};

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// Cancelled by the client (or because it stopped reading).
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

impl ErrorCode {
    /// The code as it is written on the wire (`bad_request`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Thermal => "thermal",
            ErrorCode::Memory => "memory",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ModelError => "model_error",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The model's context is full.
    ContextFull,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt tokens restored from the prefix cache instead of prefilled.
    #[serde(default)]
    pub cached_tokens: usize,
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
    /// Forward passes of the model after the prompt: one per generated token, fewer when the
    /// tokens a grammar forced shared one.
    #[serde(default)]
    pub model_steps: usize,
    /// Generated tokens the grammar forced (emitted without sampling).
    #[serde(default)]
    pub forced_tokens: usize,
}

/// One filled slot of a recognised intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    /// Slot name (`brightness`).
    pub name: String,
    /// The value: a number for number slots, else a string.
    pub value: Value,
    /// The value as the model wrote it.
    pub raw_value: String,
    /// For entity slots: the entity id of a named device, else the area or floor name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// Where the value occurs in the input text (characters), when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<SlotRange>,
}

/// A range of characters in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRange {
    /// First character.
    pub start: usize,
    /// One past the last character.
    pub end: usize,
}

/// What recognized an intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentSource {
    /// The model, constrained by the catalog's grammar.
    #[default]
    Model,
    /// Home Assistant's sentence templates, matched before the model.
    Local,
}

/// The intent of an `intent` event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntentSummary {
    /// Intent name.
    pub name: String,
    /// The model's confidence, 0–1.
    pub confidence: f64,
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
        slots: Vec<Slot>,
        /// The model's answer as written (empty for a local match).
        text: String,
        /// Who answered: the sentence templates (`local`) or the model.
        source: IntentSource,
        /// A local match's block metadata (`slot_combination`, custom sentence marks).
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<serde_json::Map<String, Value>>,
        /// Token counts.
        usage: Usage,
        /// Timings.
        timings: RequestTimings,
    },
    /// Answer to `status` (terminal).
    Status(Box<StatusReport>),
    /// Answer to `models` (terminal).
    Models {
        /// The models.
        models: Vec<ModelReport>,
    },
}

impl EventBody {
    /// An error.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error { code, message: message.into() }
    }

    /// Whether this is the last event of its request.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, EventBody::Token { .. })
    }
}

impl Event {
    /// An error event.
    pub fn error(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { id, body: EventBody::error(code, message) }
    }

    /// Whether this is the last event of its request.
    pub fn is_terminal(&self) -> bool {
        self.body.is_terminal()
    }

    /// One JSON line (with the trailing newline).
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self)
            .unwrap_or_else(|e| format!(r#"{{"id":null,"event":"error","code":"model_error","message":"unserialisable event: {e}"}}"#));
        s.push('\n');
        s
    }

    /// About how many bytes the event takes on the wire and while it waits (exact enough to
    /// bound a client's unread events).
    pub fn approx_len(&self) -> usize {
        let id = self.id.as_ref().map_or(4, String::len);
        match &self.body {
            EventBody::Token { text } => 40 + id + text.len(),
            EventBody::Error { message, .. } => 64 + id + message.len(),
            other => 64 + id + serde_json::to_string(other).map_or(0, |s| s.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_flat() {
        let e = Event { id: Some("a".into()), body: EventBody::Token { text: "hé".into() } };
        assert_eq!(e.to_line(), "{\"id\":\"a\",\"event\":\"token\",\"text\":\"hé\"}\n");
        assert!(e.approx_len() >= e.to_line().len());
        let e = Event::error(None, ErrorCode::ShuttingDown, "bye");
        assert_eq!(e.to_line(), "{\"id\":null,\"event\":\"error\",\"code\":\"shutting_down\",\"message\":\"bye\"}\n");
        assert!(e.is_terminal());
        assert!(e.approx_len() >= e.to_line().len());
    }
}
