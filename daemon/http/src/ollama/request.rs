//! Ollama request bodies (`/api/chat`, `/api/generate`) read into the daemon's validated
//! requests: `options` onto sampling and limits, `format` onto a JSON grammar, `think` onto
//! thinking, `keep_alive` onto the idle-unload machinery.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use qwenedge_api::{FieldError, GenerateRequest, GenerateSpec, Limits, Prompt, ResponseFormat, Sampling};
use qwenedge_scheduler::KeepAlive;

/// `options` (the ones that matter here; the others, `num_ctx` among them — the model's
/// context, capped by `model.context_length`, is used — are accepted and ignored).
#[derive(Debug, Default, Deserialize)]
pub struct Options {
    /// Most tokens to generate (-1: as many as the limit allows).
    pub num_predict: Option<i64>,
    /// Temperature.
    pub temperature: Option<f32>,
    /// Top-k.
    pub top_k: Option<i64>,
    /// Top-p.
    pub top_p: Option<f32>,
    /// Min-p.
    pub min_p: Option<f32>,
    /// Seed.
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<Vec<String>>,
    /// Repetition penalty.
    pub repeat_penalty: Option<f32>,
    /// Presence penalty.
    pub presence_penalty: Option<f32>,
    /// Frequency penalty.
    pub frequency_penalty: Option<f32>,
}

/// Fields `/api/chat` and `/api/generate` share.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    /// The model (must be the one served).
    pub model: Option<String>,
    /// `"json"` or a JSON Schema.
    pub format: Option<Value>,
    /// Sampling and limits.
    pub options: Option<Options>,
    /// Stream NDJSON (Ollama's default) or answer once.
    pub stream: Option<bool>,
    /// How long the model stays loaded afterwards.
    pub keep_alive: Option<Value>,
    /// Thinking: `true`/`false` or `"low"`/`"medium"`/`"high"`.
    pub think: Option<Value>,
}

/// `POST /api/chat`.
#[derive(Debug, Deserialize)]
pub struct ChatBody {
    /// The conversation (empty with `keep_alive`: load or unload the model).
    #[serde(default)]
    pub messages: Vec<Value>,
    /// Tool definitions.
    pub tools: Option<Vec<Value>>,
    /// The shared fields.
    #[serde(flatten)]
    pub common: Common,
}

/// `POST /api/generate`.
#[derive(Debug, Deserialize)]
pub struct GenerateBody {
    /// The prompt (empty with `keep_alive`: load or unload the model).
    #[serde(default)]
    pub prompt: String,
    /// A system message (with the chat template).
    pub system: Option<String>,
    /// The prompt as it is, without the chat template.
    #[serde(default)]
    pub raw: bool,
    /// Images (not supported).
    pub images: Option<Vec<Value>>,
    /// Text after the answer (not supported).
    pub suffix: Option<String>,
    /// The shared fields.
    #[serde(flatten)]
    pub common: Common,
}

/// A Go duration (`"5m"`, `"1h30m"`, `"-1s"`, `"300ms"`) or a number of seconds; negative is
/// "keep loaded".
pub fn keep_alive(v: &Value) -> Result<KeepAlive, FieldError> {
    let seconds = match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| FieldError::at("keep_alive", "not a number"))?,
        Value::String(s) => duration_seconds(s.trim())
            .ok_or_else(|| FieldError::at("keep_alive", format!("{s:?} is not a duration such as \"5m\", \"30s\" or \"-1\"")))?,
        _ => return Err(FieldError::at("keep_alive", "must be a duration string or a number of seconds")),
    };
    if seconds < 0.0 {
        Ok(KeepAlive::Forever)
    } else {
        Ok(KeepAlive::For(Duration::from_secs_f64(seconds.min(1e9))))
    }
}

fn duration_seconds(s: &str) -> Option<f64> {
    if let Ok(n) = s.parse::<f64>() {
        return Some(n);
    }
    let (sign, mut rest) = match s.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, s.strip_prefix('+').unwrap_or(s)),
    };
    let mut total = 0.0;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * unit;
        rest = &rest[unit_len..];
    }
    Some(sign * total)
}

impl Common {
    /// Thinking on (`think: true` or an effort level).
    pub fn thinking(&self) -> bool {
        matches!(&self.think, Some(Value::Bool(true)))
            || matches!(self.think.as_ref().and_then(Value::as_str), Some("low" | "medium" | "high"))
    }

    /// Whether to stream (Ollama streams unless told not to).
    pub fn streaming(&self) -> bool {
        self.stream.unwrap_or(true)
    }

    fn spec(&self, prompt: Prompt, limits: &Limits) -> Result<GenerateSpec, FieldError> {
        let o = self.options.as_ref();
        let d = Sampling::default();
        let seed = match o.and_then(|o| o.seed) {
            Some(s) if s < 0 => None,
            s => s.map(|s| s as u64),
        };
        let top_k = match o.and_then(|o| o.top_k) {
            Some(k) if k < 0 => return Err(FieldError::at("options.top_k", format!("must not be negative (got {k})"))),
            k => k.map_or(d.top_k, |k| k as usize),
        };
        let sampling = Sampling {
            temperature: o.and_then(|o| o.temperature).unwrap_or(d.temperature),
            top_k,
            top_p: o.and_then(|o| o.top_p).unwrap_or(d.top_p),
            min_p: o.and_then(|o| o.min_p).unwrap_or(d.min_p),
            repetition_penalty: o.and_then(|o| o.repeat_penalty).unwrap_or(d.repetition_penalty),
            presence_penalty: o.and_then(|o| o.presence_penalty).unwrap_or(d.presence_penalty),
            frequency_penalty: o.and_then(|o| o.frequency_penalty).unwrap_or(d.frequency_penalty),
            seed,
        };
        let max_tokens = match o.and_then(|o| o.num_predict) {
            None | Some(0) => None,
            Some(n) if n < 0 => Some(limits.max_tokens),
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        };
        let format = match &self.format {
            None => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) if s == "json" => Some(ResponseFormat::JsonSchema(json!({"type": "object"}))),
            Some(schema @ Value::Object(_)) => Some(ResponseFormat::JsonSchema(schema.clone())),
            Some(other) => return Err(FieldError::at("format", format!("must be \"json\" or a JSON Schema object (got {other})"))),
        };
        Ok(GenerateSpec {
            max_tokens,
            sampling,
            stop: o.and_then(|o| o.stop.clone()).unwrap_or_default(),
            stream: self.streaming(),
            format,
            ..GenerateSpec::new(prompt)
        })
    }
}

/// Ollama messages in the daemon's shape: `thinking` is the template's `reasoning_content`.
fn messages(raw: Vec<Value>) -> Result<Vec<Value>, FieldError> {
    raw.into_iter()
        .enumerate()
        .map(|(i, m)| {
            let Value::Object(mut m) = m else { return Err(FieldError::at(format!("messages[{i}]"), "must be an object")) };
            if m.get("images").is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())) {
                return Err(FieldError::at(format!("messages[{i}].images"), "images are not supported by this model"));
            }
            m.remove("images");
            if let Some(thinking) = m.remove("thinking").filter(|t| t.as_str().is_some_and(|s| !s.is_empty())) {
                m.insert("reasoning_content".into(), thinking);
            }
            if !m.contains_key("content") || m["content"].is_null() {
                m.insert("content".into(), Value::String(String::new()));
            }
            Ok(Value::Object(m))
        })
        .collect()
}

impl ChatBody {
    /// The daemon's request.
    pub fn request(self, limits: &Limits) -> Result<GenerateRequest, FieldError> {
        let prompt = Prompt::Chat {
            messages: messages(self.messages)?,
            tools: self.tools.filter(|t| !t.is_empty()),
            thinking: self.common.thinking(),
        };
        GenerateRequest::new(self.common.spec(prompt, limits)?, limits)
    }
}

impl GenerateBody {
    /// The daemon's request: the prompt raw, or as one user turn (after `system`) with the
    /// chat template.
    pub fn request(self, limits: &Limits) -> Result<GenerateRequest, FieldError> {
        if self.images.as_ref().is_some_and(|i| !i.is_empty()) {
            return Err(FieldError::at("images", "images are not supported by this model"));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(FieldError::at("suffix", "not supported"));
        }
        let prompt = if self.raw {
            Prompt::Text(self.prompt)
        } else {
            let mut msgs = Vec::new();
            if let Some(system) = self.system.filter(|s| !s.is_empty()) {
                msgs.push(json!({"role": "system", "content": system}));
            }
            msgs.push(json!({"role": "user", "content": self.prompt}));
            Prompt::Chat { messages: msgs, tools: None, thinking: self.common.thinking() }
        };
        GenerateRequest::new(self.common.spec(prompt, limits)?, limits)
    }
}

/// Arguments of a tool call as an object (Ollama's shape).
pub fn arguments(args: &Map<String, Value>) -> Value {
    Value::Object(args.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_tokens: 4096 };

    #[test]
    fn keep_alive_reads_durations_and_seconds() {
        let k = |v: Value| keep_alive(&v).unwrap();
        assert_eq!(k(json!("-1s")), KeepAlive::Forever);
        assert_eq!(k(json!(-1)), KeepAlive::Forever);
        assert_eq!(k(json!("0")), KeepAlive::For(Duration::ZERO));
        assert_eq!(k(json!("5m")), KeepAlive::For(Duration::from_secs(300)));
        assert_eq!(k(json!("1h30m")), KeepAlive::For(Duration::from_secs(5400)));
        assert_eq!(k(json!("300ms")), KeepAlive::For(Duration::from_millis(300)));
        assert_eq!(k(json!(30)), KeepAlive::For(Duration::from_secs(30)));
        assert_eq!(keep_alive(&json!("soon")).unwrap_err().field, "keep_alive");
    }

    #[test]
    fn home_assistant_requests_become_the_daemons() {
        let body: ChatBody = serde_json::from_value(json!({
            "model": "qwen:latest", "stream": true, "keep_alive": "-1s", "options": {"num_ctx": 8192},
            "messages": [{"role": "system", "content": "You control a house."}, {"role": "user", "content": "light on"},
                         {"role": "assistant", "content": "", "thinking": "hm", "tool_calls": [{"function": {"name": "HassTurnOn", "arguments": {"name": "light"}}}]},
                         {"role": "tool", "content": "{\"success\": true}"}],
            "tools": [{"type": "function", "function": {"name": "HassTurnOn", "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}}],
        }))
        .unwrap();
        let r = body.request(&LIMITS).unwrap();
        let Prompt::Chat { messages, thinking, .. } = r.prompt() else { panic!() };
        assert!(!thinking);
        assert_eq!(messages[2]["reasoning_content"], "hm");
        assert!(r.stream());
        let body: GenerateBody = serde_json::from_value(json!({"model": "m", "prompt": "x", "raw": true, "stream": false,
            "options": {"num_predict": -1, "repeat_penalty": 1.1, "stop": ["\n"]}, "format": "json"}))
        .unwrap();
        let r = body.request(&LIMITS).unwrap();
        assert_eq!((r.max_tokens(), r.stream(), r.stop().len()), (Some(4096), false, 1));
        assert!(matches!(r.prompt(), Prompt::Text(_)));
        let bad: ChatBody =
            serde_json::from_value(json!({"model": "m", "messages": [{"role": "user", "content": "x", "images": ["AAAA"]}]})).unwrap();
        assert_eq!(bad.request(&LIMITS).unwrap_err().field, "messages[0].images");
    }
}
