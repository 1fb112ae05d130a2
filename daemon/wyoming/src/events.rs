//! The Wyoming events this server takes and sends, as the `wyoming` Python package defines
//! them (`wyoming/info.py`, `asr.py`, `intent.py`, `handle.py`, `error.py`, `ping.py`), and what
//! each refusal sounds like when Home Assistant speaks it.

use serde_json::{json, Map, Value};

use super::codec::Frame;
use qwenedge_api::{ErrorCode, Slot};
use qwenedge_config::{WyomingProgram, WyomingSettings};

/// An event from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// `describe`: asks for `info`.
    Describe,
    /// `transcript` (what Home Assistant sends) or `recognize`: text to turn into an intent
    /// or an answer.
    Transcript {
        /// What was said.
        text: String,
        /// Its language, when given.
        language: Option<String>,
        /// Echoed in the answer (Home Assistant's `conversation_id`, `device_id`, …).
        context: Option<Value>,
    },
    /// `ping`: answered `pong`.
    Ping {
        /// Echoed.
        text: Option<String>,
    },
}

/// Why a frame is no event this server takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// An event type this server does not take.
    #[error("unknown event type '{0}' (this server takes describe, transcript, recognize and ping)")]
    Unknown(String),
    /// A payload on an event that has none.
    #[error("a {0} event carries no payload ({1} bytes were sent)")]
    Payload(String, usize),
    /// A field is missing or of the wrong type.
    #[error("{0}: {1}")]
    Field(String, &'static str),
}

impl EventError {
    /// The `code` of the `error` event.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::Unknown(_) => "unknown_event",
            EventError::Payload(..) => "unexpected_payload",
            EventError::Field(..) => "bad_event",
        }
    }
}

fn text_field(data: &Map<String, Value>, kind: &str, key: &str, required: bool) -> Result<Option<String>, EventError> {
    match data.get(key) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(EventError::Field(format!("{kind}.{key}"), "missing")),
        Some(_) => Err(EventError::Field(format!("{kind}.{key}"), "must be a string")),
    }
}

impl Incoming {
    /// The event a frame holds.
    pub fn parse(frame: Frame) -> Result<Self, EventError> {
        let kind = frame.kind.as_str();
        if !matches!(kind, "describe" | "transcript" | "recognize" | "ping") {
            return Err(EventError::Unknown(frame.kind.chars().take(64).collect()));
        }
        if frame.payload_len > 0 {
            return Err(EventError::Payload(frame.kind, frame.payload_len));
        }
        let d = &frame.data;
        Ok(match kind {
            "describe" => Incoming::Describe,
            "ping" => Incoming::Ping { text: text_field(d, kind, "text", false)? },
            _ => Incoming::Transcript {
                text: text_field(d, kind, "text", true)?.unwrap_or_default(),
                language: text_field(d, kind, "language", false)?,
                context: d.get("context").filter(|c| !c.is_null()).cloned(),
            },
        })
    }
}

fn attribution() -> Value {
    json!({"name": "qwenedge", "url": env!("CARGO_PKG_REPOSITORY")})
}

/// The `info` answer to `describe`: the advertised programs, each with the served model and
/// the configured languages.
pub fn info(settings: &WyomingSettings, model: &str) -> Value {
    let version = env!("CARGO_PKG_VERSION");
    let model = |what: &str| {
        json!({"name": model, "attribution": attribution(), "installed": true, "version": version,
               "description": format!("{model} on this device ({what})"), "languages": settings.languages})
    };
    let mut intent = Vec::new();
    let mut handle = Vec::new();
    if settings.offers(WyomingProgram::Intent) {
        intent.push(json!({"name": "qwenedge", "attribution": attribution(), "installed": true, "version": version,
                           "description": "Intent recognition on the device (Home Assistant intents)",
                           "models": [model("intents")]}));
    }
    if settings.offers(WyomingProgram::Handle) {
        handle.push(json!({"name": "qwenedge", "attribution": attribution(), "installed": true, "version": version,
                           "description": "Short spoken answers on the device",
                           "models": [model("answers")], "supports_handled_streaming": true,
                           "supports_home_control": false}));
    }
    json!({"asr": [], "tts": [], "handle": handle, "intent": intent, "wake": [], "mic": [], "snd": []})
}

fn with_context(mut data: Value, context: &Option<Value>) -> Value {
    if let Some(c) = context {
        data["context"] = c.clone();
    }
    data
}

/// `intent`: the intent's name and its slots as entities (Home Assistant's slot names; values
/// as Home Assistant resolves them: names and areas as written in the catalog, numbers as
/// numbers).
pub fn intent(name: &str, slots: &[Slot], context: &Option<Value>) -> Value {
    let entities: Vec<Value> = slots.iter().map(|s| json!({"name": s.name, "value": s.value})).collect();
    with_context(json!({"name": name, "entities": entities}), context)
}

/// `not-recognized`, with what Home Assistant says.
pub fn not_recognized(text: &str, context: &Option<Value>) -> Value {
    with_context(json!({"text": text}), context)
}

/// `handled` / `not-handled` / `handled-start`: text (when any) and the context.
pub fn handled(text: Option<&str>, context: &Option<Value>) -> Value {
    with_context(text.map_or_else(|| json!({}), |t| json!({"text": t})), context)
}

/// `error`.
pub fn error(text: &str, code: &str) -> Value {
    json!({"text": text, "code": code})
}

/// What Home Assistant says when a request is refused or fails.
pub fn spoken_reason(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Thermal => "The assistant's device is too hot right now. Please try again in a few minutes.",
        ErrorCode::Overloaded => "The assistant is busy right now. Please try again in a moment.",
        ErrorCode::Memory => "The assistant's device is short of memory right now. Please try again later.",
        ErrorCode::ShuttingDown => "The assistant is restarting. Please try again in a moment.",
        ErrorCode::Timeout => "That took too long. Please try again.",
        ErrorCode::Cancelled => "The request was cancelled.",
        ErrorCode::BadRequest | ErrorCode::Forbidden | ErrorCode::ModelError => "Sorry, something went wrong on the assistant's device.",
    }
}

/// What Home Assistant says when the words were no intent.
pub const NOT_UNDERSTOOD: &str = "Sorry, I did not understand that.";

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: &str, data: Value, payload_len: usize) -> Frame {
        Frame { kind: kind.into(), data: data.as_object().cloned().unwrap_or_default(), payload_len }
    }

    #[test]
    fn events_parse_with_their_fields_and_refuse_what_they_cannot_carry() {
        let t =
            Incoming::parse(frame("transcript", json!({"text": "lights on", "language": "en", "context": {"conversation_id": "c"}}), 0));
        assert_eq!(
            t,
            Ok(Incoming::Transcript {
                text: "lights on".into(),
                language: Some("en".into()),
                context: Some(json!({"conversation_id": "c"}))
            })
        );
        assert!(matches!(Incoming::parse(frame("recognize", json!({"text": "x"}), 0)), Ok(Incoming::Transcript { .. })));
        assert_eq!(Incoming::parse(frame("describe", json!({}), 0)), Ok(Incoming::Describe));
        assert_eq!(Incoming::parse(frame("describe", json!({}), 10)), Err(EventError::Payload("describe".into(), 10)));
        assert_eq!(Incoming::parse(frame("audio-chunk", json!({}), 0)).unwrap_err().code(), "unknown_event");
        assert_eq!(Incoming::parse(frame("transcript", json!({}), 0)), Err(EventError::Field("transcript.text".into(), "missing")));
        assert_eq!(Incoming::parse(frame("transcript", json!({"text": 5}), 0)).unwrap_err().code(), "bad_event");
    }

    #[test]
    fn info_lists_the_configured_programs_with_the_fields_home_assistant_reads() {
        let s = WyomingSettings { programs: vec![WyomingProgram::Intent, WyomingProgram::Handle], ..Default::default() };
        let i = info(&s, "qwen3.5-0.8b");
        assert_eq!(i["intent"][0]["installed"], true);
        assert_eq!(i["intent"][0]["models"][0]["languages"], json!(["en"]));
        assert_eq!(i["handle"][0]["supports_handled_streaming"], true);
        let only = info(&WyomingSettings::default(), "m");
        assert_eq!((only["intent"].as_array().unwrap().len(), only["handle"].as_array().unwrap().len()), (1, 0));
        let slot = Slot { name: "brightness".into(), value: json!(40), raw_value: "40".into(), entity: None, range: None };
        let e = intent("HassLightSet", &[slot], &Some(json!({"conversation_id": "c"})));
        assert_eq!(
            e,
            json!({"name": "HassLightSet", "entities": [{"name": "brightness", "value": 40}], "context": {"conversation_id": "c"}})
        );
    }
}
