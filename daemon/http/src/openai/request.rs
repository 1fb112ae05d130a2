//! OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`) read into the daemon's
//! validated requests. Fields OpenAI defines and the daemon cannot honour are refused by name
//! (`n` > 1, `logprobs`, `echo`); fields it does not know are ignored, as OpenAI-compatible
//! servers do.

use serde::Deserialize;
use serde_json::Value;

use qwenedge_api::{FieldError, GenerateRequest, GenerateSpec, Limits, Prompt, ResponseFormat, Sampling, ToolChoice};

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    fn to_vec(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling and limit fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    /// The model to use (must be the one served).
    pub model: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: Option<u64>,
    /// Softmax temperature (default 0: greedy).
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Presence penalty.
    pub presence_penalty: Option<f32>,
    /// Frequency penalty.
    pub frequency_penalty: Option<f32>,
    /// RNG seed.
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Answers per request (only 1).
    pub n: Option<u32>,
    /// Log probabilities (not supported).
    pub logprobs: Option<Value>,
    /// Top-k (an extension many servers accept).
    pub top_k: Option<usize>,
    /// Min-p (an extension).
    pub min_p: Option<f32>,
    /// Repetition penalty (an extension).
    pub repetition_penalty: Option<f32>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatBody {
    /// The conversation.
    pub messages: Vec<Value>,
    /// Tool definitions.
    pub tools: Option<Vec<Value>>,
    /// Which tool to call.
    pub tool_choice: Option<Value>,
    /// A grammar for the answer.
    pub response_format: Option<Value>,
    /// The newer name of `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    /// `none`/`minimal` turn thinking off, `low`/`medium`/`high` on.
    pub reasoning_effort: Option<String>,
    /// `{"enable_thinking": bool}` (as vLLM and llama.cpp take it).
    pub chat_template_kwargs: Option<Value>,
    /// The shared fields.
    #[serde(flatten)]
    pub common: Common,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionBody {
    /// The text to continue (one string, or a list of one).
    pub prompt: Value,
    /// Echo the prompt (not supported).
    pub echo: Option<bool>,
    /// Text after the completion (not supported).
    pub suffix: Option<String>,
    /// The shared fields.
    #[serde(flatten)]
    pub common: Common,
}

/// Message content as text: a string, or a list of `{"type": "text", "text": …}` parts.
fn content_text(content: &Value, at: &str) -> Result<Option<String>, FieldError> {
    match content {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(FieldError::at(
                            format!("{at}.content[{j}]"),
                            format!("only text parts are supported (got {})", kind.unwrap_or("no type")),
                        ))
                    }
                }
            }
            Ok(Some(text))
        }
        _ => Err(FieldError::at(format!("{at}.content"), "must be a string or a list of text parts")),
    }
}

/// OpenAI messages in the daemon's shape: `developer` is `system`, content parts are joined.
fn messages(raw: Vec<Value>) -> Result<Vec<Value>, FieldError> {
    raw.into_iter()
        .enumerate()
        .map(|(i, mut m)| {
            let at = format!("messages[{i}]");
            if m["role"] == "developer" {
                m["role"] = "system".into();
            }
            if let Some(c) = m.get("content") {
                let text = content_text(c, &at)?;
                m["content"] = text.map_or(Value::Null, Value::String);
            }
            Ok(m)
        })
        .collect()
}

impl Common {
    fn sampling(&self) -> Result<Sampling, FieldError> {
        let d = Sampling::default();
        let seed = match self.seed {
            Some(s) if s < 0 => return Err(FieldError::at("seed", format!("must not be negative (got {s})"))),
            s => s.map(|s| s as u64),
        };
        Ok(Sampling {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            seed,
        })
    }

    fn check_unsupported(&self) -> Result<(), FieldError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(FieldError::at("n", format!("only 1 answer per request is supported (got {})", self.n.unwrap_or(0))));
        }
        if self.logprobs.as_ref().is_some_and(|l| l != &Value::Bool(false) && !l.is_null()) {
            return Err(FieldError::at("logprobs", "not supported"));
        }
        Ok(())
    }

    fn spec(&self, prompt: Prompt, max_tokens: Option<u64>) -> Result<GenerateSpec, FieldError> {
        self.check_unsupported()?;
        let max_tokens = max_tokens.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        Ok(GenerateSpec {
            max_tokens,
            sampling: self.sampling()?,
            stop: self.stop.as_ref().map(Stop::to_vec).unwrap_or_default(),
            stream: self.stream,
            ..GenerateSpec::new(prompt)
        })
    }
}

impl ChatBody {
    /// Whether the model thinks before answering (off unless asked).
    pub fn thinking(&self) -> bool {
        if let Some(e) = self.chat_template_kwargs.as_ref().and_then(|k| k.get("enable_thinking")).and_then(Value::as_bool) {
            return e;
        }
        matches!(self.reasoning_effort.as_deref(), Some("low" | "medium" | "high"))
    }

    /// The daemon's request.
    pub fn request(self, limits: &Limits) -> Result<GenerateRequest, FieldError> {
        let thinking = self.thinking();
        let prompt = Prompt::Chat { messages: messages(self.messages)?, tools: self.tools.filter(|t| !t.is_empty()), thinking };
        let max = self.max_completion_tokens.or(self.common.max_tokens);
        let mut spec = self.common.spec(prompt, max)?;
        spec.format = match &self.response_format {
            Some(v) => ResponseFormat::parse(v)?,
            None => None,
        };
        spec.tool_choice = match &self.tool_choice {
            Some(v) => ToolChoice::parse(v)?,
            None => ToolChoice::Auto,
        };
        GenerateRequest::new(spec, limits)
    }
}

impl CompletionBody {
    /// The daemon's request (OpenAI's default `max_tokens` here is 16).
    pub fn request(self, limits: &Limits) -> Result<GenerateRequest, FieldError> {
        if self.echo == Some(true) {
            return Err(FieldError::at("echo", "not supported"));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(FieldError::at("suffix", "not supported"));
        }
        let prompt = match self.prompt {
            Value::String(s) => s,
            Value::Array(a) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
            Value::Array(_) => return Err(FieldError::at("prompt", "only one prompt (a string) per request is supported")),
            _ => return Err(FieldError::at("prompt", "must be a string")),
        };
        let max = Some(self.common.max_tokens.unwrap_or(16));
        let spec = self.common.spec(Prompt::Text(prompt), max)?;
        GenerateRequest::new(spec, limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits { max_tokens: 4096 };

    fn chat(v: Value) -> Result<GenerateRequest, FieldError> {
        serde_json::from_value::<ChatBody>(v).expect("a chat body").request(&LIMITS)
    }

    #[test]
    fn openai_shapes_become_the_daemons() {
        let r = chat(json!({"model": "m", "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}}, "max_completion_tokens": 7, "stream": true}))
        .unwrap();
        let Prompt::Chat { messages, .. } = r.prompt() else { panic!() };
        assert_eq!(messages[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(messages[2]["tool_calls"][0]["function"]["arguments"], json!({"a": 1}));
        assert_eq!((r.max_tokens(), r.stream(), r.tool_choice()), (Some(7), true, &ToolChoice::Function("f".into())));
    }

    #[test]
    fn unsupported_and_bad_fields_are_named() {
        let base = || json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            chat(b).unwrap_err()
        };
        assert!(with("n", json!(2)).field == "n");
        assert!(with("logprobs", json!(true)).field == "logprobs");
        assert!(with("temperature", json!(500)).field == "temperature");
        assert!(with("seed", json!(-1)).field == "seed");
        assert!(with("tool_choice", json!("always")).message.starts_with("tool_choice:"));
        assert!(with("response_format", json!({"type": "xml"})).field == "response_format.type");
        let mut image = base();
        image["messages"][0]["content"] = json!([{"type": "image_url", "image_url": {"url": "x"}}]);
        assert!(chat(image).unwrap_err().field == "messages[0].content[0]");
        let c: CompletionBody = serde_json::from_value(json!({"model": "m", "prompt": ["a", "b"]})).unwrap();
        assert!(c.request(&LIMITS).unwrap_err().field == "prompt");
        let c: CompletionBody = serde_json::from_value(json!({"model": "m", "prompt": "Once"})).unwrap();
        assert_eq!(c.request(&LIMITS).unwrap().max_tokens(), Some(16));
    }
}
