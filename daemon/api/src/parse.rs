//! The socket's wire format (also the payload of MQTT requests): one JSON object per request,
//! parsed from untrusted bytes into a typed [`Request`] or a [`BadRequest`] naming the field at
//! fault. Field shapes are checked here; every limit is checked by the constructors in
//! `request`.

use serde::Deserialize;
use serde_json::Value;

use super::request::{
    FieldError, GenerateRequest, GenerateSpec, Limits, Op, Place, Priority, Prompt, Request, RequestId, ResponseFormat, ToolChoice,
};
use super::sampling::Sampling;

/// A request that could not be accepted, with the id when it could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadRequest {
    /// The request id, if it was readable.
    pub id: Option<String>,
    /// What is wrong, naming the field.
    pub message: String,
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
    tool_choice: Option<Value>,
}

/// The body of `intent`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntentBody {
    text: Option<String>,
    intent_filter: Option<Vec<String>>,
    site_id: Option<String>,
    language: Option<String>,
    area: Option<String>,
    temperature: Option<f32>,
    seed: Option<u64>,
    priority: Option<Priority>,
    deadline_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

/// Parses one request line; `limits` bound what the configuration limits.
pub fn parse_request(line: &[u8], limits: &Limits) -> Result<Request, BadRequest> {
    let bad = |id: Option<&str>, message: String| BadRequest { id: id.map(str::to_string), message };
    let text = std::str::from_utf8(line).map_err(|e| bad(None, format!("request is not valid UTF-8 (byte {})", e.valid_up_to())))?;
    let value: Value = serde_json::from_str(text).map_err(|e| bad(None, format!("invalid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(bad(None, "a request must be a JSON object".into()));
    };
    let id = match obj.remove("id") {
        Some(Value::String(s)) => RequestId::new(s).map_err(|e| bad(None, e.message))?,
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
            Op::Generate(Box::new(generate(&op, body, limits).map_err(|e| bad(id_ref, e.message))?))
        }
        "intent" => {
            let body: IntentBody = serde_json::from_value(Value::Object(obj)).map_err(|e| bad(id_ref, field_message(&e.to_string())))?;
            Op::Generate(Box::new(intent(body, limits).map_err(|e| bad(id_ref, e.message))?))
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

fn intent(b: IntentBody, limits: &Limits) -> Result<GenerateRequest, FieldError> {
    let text = b.text.ok_or_else(|| FieldError::at("text", "missing"))?;
    let place = Place { language: b.language, area: b.area, site_id: b.site_id };
    let mut spec = GenerateSpec::new(Prompt::Intent { text, filter: b.intent_filter, place });
    spec.sampling = Sampling { temperature: b.temperature.unwrap_or(0.0), seed: b.seed, ..Sampling::default() };
    spec.priority = b.priority.unwrap_or_default();
    spec.deadline_ms = b.deadline_ms;
    GenerateRequest::new(spec, limits)
}

fn generate(op: &str, b: GenerateBody, limits: &Limits) -> Result<GenerateRequest, FieldError> {
    let prompt = if op == "chat" {
        if b.prompt.is_some() {
            return Err(FieldError::at("prompt", "not a field of chat (use messages, or op complete)"));
        }
        Prompt::Chat {
            messages: b.messages.ok_or_else(|| FieldError::at("messages", "missing"))?,
            tools: b.tools,
            thinking: b.thinking.unwrap_or(false),
        }
    } else {
        let chat_only = [
            (b.messages.is_some(), "messages"),
            (b.tools.is_some(), "tools"),
            (b.thinking.is_some(), "thinking"),
            (b.tool_choice.is_some(), "tool_choice"),
        ];
        for (present, field) in chat_only {
            if present {
                return Err(FieldError::at(field, "not a field of complete (use op chat)"));
            }
        }
        Prompt::Text(b.prompt.ok_or_else(|| FieldError::at("prompt", "missing"))?)
    };
    let d = Sampling::default();
    let sampling = Sampling {
        temperature: b.temperature.unwrap_or(d.temperature),
        top_k: b.top_k.unwrap_or(d.top_k),
        top_p: b.top_p.unwrap_or(d.top_p),
        min_p: b.min_p.unwrap_or(d.min_p),
        repetition_penalty: b.repetition_penalty.unwrap_or(d.repetition_penalty),
        presence_penalty: b.presence_penalty.unwrap_or(d.presence_penalty),
        frequency_penalty: b.frequency_penalty.unwrap_or(d.frequency_penalty),
        seed: b.seed,
    };
    let stop = match b.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    let format = match b.response_format {
        Some(v) => ResponseFormat::parse(&v)?,
        None => None,
    };
    let tool_choice = match b.tool_choice {
        Some(v) => ToolChoice::parse(&v)?,
        None => ToolChoice::Auto,
    };
    let spec = GenerateSpec {
        prompt,
        max_tokens: b.max_tokens,
        sampling,
        stop,
        stream: b.stream.unwrap_or(true),
        priority: b.priority.unwrap_or_default(),
        deadline_ms: b.deadline_ms,
        format,
        tool_choice,
    };
    GenerateRequest::new(spec, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, BadRequest> {
        parse_request(s.as_bytes(), &Limits { max_tokens: 1000 })
    }

    #[test]
    fn chat_with_defaults() {
        let r = parse(r#"{"id":"a","op":"chat","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        let Op::Generate(g) = r.op else { panic!() };
        assert!(g.stream());
        assert_eq!(g.priority(), Priority::Interactive);
        assert!(matches!(g.prompt(), Prompt::Chat { thinking: false, .. }));
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
        assert!(parse_request(b"{\"id\":\"\xff\"}", &Limits { max_tokens: 10 }).unwrap_err().message.contains("UTF-8"));
    }
}
