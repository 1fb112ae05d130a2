//! Requests after validation. A [`GenerateRequest`] can only be made by
//! [`GenerateRequest::new`], which checks every limit, so a transport that builds one from its
//! own wire format (the socket's JSON, a Hermes query, an HTTP body) cannot skip a check.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sampling::Sampling;

/// Longest request id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest utterance accepted by `intent`, in bytes.
pub const MAX_INTENT_TEXT: usize = 2000;
/// Most names in an `intent_filter`.
pub const MAX_INTENT_FILTER: usize = 1000;
/// Most stop strings.
pub const MAX_STOP: usize = 8;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 128;
/// Longest deadline a request may set (a day).
pub const MAX_DEADLINE_MS: u64 = 86_400_000;

const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// A value outside what a request may carry: the field at fault (`messages[0].role`,
/// `top_p`) and the whole message, which starts with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    /// The field, as the request names it.
    pub field: String,
    /// What is wrong, starting with the field.
    pub message: String,
}

impl FieldError {
    /// `field: what`.
    pub fn at(field: impl Into<String>, what: impl AsRef<str>) -> Self {
        let field = field.into();
        Self { message: format!("{field}: {}", what.as_ref()), field }
    }

    /// A message already written (it names `field` in its own words).
    pub fn whole(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Limits that come from the configuration rather than the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `max_tokens` a request may ask for (`scheduler.max_tokens_limit`).
    pub max_tokens: usize,
}

/// A client-chosen request id: 1 to [`MAX_ID_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RequestId(String);

impl RequestId {
    /// Checks the length.
    pub fn new(id: impl Into<String>) -> Result<Self, FieldError> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(FieldError::at("id", format!("must be 1 to {MAX_ID_LEN} bytes")));
        }
        Ok(Self(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

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

/// Where an utterance was said: its language and the speaker's area, as the request gives
/// them (a satellite's `site_id` is mapped to an area by the configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    /// Language code (`en`, `de`); `None`: `intents.language`.
    pub language: Option<String>,
    /// The area the speaker is in.
    pub area: Option<String>,
    /// The satellite (Hermes `siteId`, the socket's `site_id`).
    pub site_id: Option<String>,
}

impl Place {
    /// The language is a code (`en`, `zh-CN`); area and satellite are at most
    /// [`MAX_ID_LEN`] bytes.
    pub fn check(&self) -> Result<(), FieldError> {
        let code = |l: &String| !l.is_empty() && l.len() <= 16 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if self.language.as_ref().is_some_and(|l| !code(l)) {
            return Err(FieldError::at("language", "must be a language code such as 'en' or 'zh-CN'"));
        }
        if self.area.as_ref().is_some_and(|a| a.trim().is_empty() || a.len() > MAX_ID_LEN) {
            return Err(FieldError::at("area", format!("must be 1 to {MAX_ID_LEN} bytes and not blank")));
        }
        if self.site_id.as_ref().is_some_and(|s| s.len() > MAX_ID_LEN) {
            return Err(FieldError::at("site_id", format!("must be at most {MAX_ID_LEN} bytes")));
        }
        Ok(())
    }
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
        /// Where it was said (the sentence templates' satellite area, `None`: unknown).
        place: Place,
    },
}

/// Whether and which tool the model must call (`tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// No tool call: the answer is text.
    None,
    /// Text or tool calls, as the model decides; a call that is opened is held to its schema.
    #[default]
    Auto,
    /// Exactly one call of one of the tools.
    Required,
    /// Exactly one call of this tool.
    Function(String),
}

impl ToolChoice {
    /// `tool_choice` as OpenAI writes it: `"none"`, `"auto"`, `"required"`, or
    /// `{"type": "function", "function": {"name": "…"}}`.
    pub fn parse(v: &Value) -> Result<Self, FieldError> {
        match v {
            Value::String(s) => match s.as_str() {
                "none" => Ok(Self::None),
                "auto" => Ok(Self::Auto),
                "required" => Ok(Self::Required),
                other => Err(FieldError::at("tool_choice", format!("'{other}' is not one of none, auto, required, or a function"))),
            },
            Value::Object(o) => match o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
                Some(name) => Ok(Self::Function(name.to_string())),
                None => Err(FieldError::at("tool_choice.function.name", "missing or not a string")),
            },
            _ => Err(FieldError::at("tool_choice", "must be a string or {\"type\": \"function\", \"function\": {\"name\": …}}")),
        }
    }
}

/// Longest tool name accepted (OpenAI's limit).
pub const MAX_TOOL_NAME: usize = 64;
/// Most tools one request may carry.
pub const MAX_TOOLS: usize = 128;

/// A grammar the answer must follow (`response_format` of `chat`).
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// One JSON value valid under this JSON Schema.
    JsonSchema(Value),
    /// llguidance's Lark dialect.
    Lark(String),
}

impl ResponseFormat {
    /// `response_format`: `{"type": "text"}` (no grammar), `{"type": "json_object"}`,
    /// `{"type": "json_schema", "json_schema": {"schema": {…}}}` or `{"type": "lark", "lark": "…"}`.
    pub fn parse(v: &Value) -> Result<Option<Self>, FieldError> {
        let kind =
            v.get("type").and_then(Value::as_str).ok_or_else(|| FieldError::at("response_format.type", "missing or not a string"))?;
        match kind {
            "text" => Ok(None),
            "json_object" => Ok(Some(Self::JsonSchema(serde_json::json!({"type": "object"})))),
            "json_schema" => {
                let spec = v.get("json_schema").ok_or_else(|| FieldError::at("response_format.json_schema", "missing"))?;
                let schema = spec.get("schema").unwrap_or(spec);
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(FieldError::at("response_format.json_schema.schema", "must be a JSON Schema object"));
                }
                Ok(Some(Self::JsonSchema(schema.clone())))
            }
            "lark" => match v.get("lark") {
                Some(Value::String(g)) if !g.trim().is_empty() => Ok(Some(Self::Lark(g.clone()))),
                _ => Err(FieldError::at("response_format.lark", "missing or not a grammar string")),
            },
            other => Err(FieldError::at("response_format.type", format!("'{other}' is not one of text, json_object, json_schema, lark"))),
        }
    }
}

/// Everything a generation request may say, before validation. Transports fill it from their
/// wire format and hand it to [`GenerateRequest::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateSpec {
    /// What to continue.
    pub prompt: Prompt,
    /// Most tokens to generate (`None`: the configured default).
    pub max_tokens: Option<usize>,
    /// Sampling settings.
    pub sampling: Sampling,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Send `token` events (else only the terminal event).
    pub stream: bool,
    /// Scheduling class.
    pub priority: Priority,
    /// Time allowed from arrival to the last token (`None`: the configured default).
    pub deadline_ms: Option<u64>,
    /// A grammar the output must follow.
    pub format: Option<ResponseFormat>,
    /// Whether and which tool to call (`chat` with `tools` only).
    pub tool_choice: ToolChoice,
}

impl GenerateSpec {
    /// A streamed, interactive request for `prompt` with default sampling (an `intent`
    /// prompt is not streamed and samples greedily by default).
    pub fn new(prompt: Prompt) -> Self {
        let stream = !matches!(prompt, Prompt::Intent { .. });
        Self {
            prompt,
            max_tokens: None,
            sampling: Sampling::default(),
            stop: Vec::new(),
            stream,
            priority: Priority::Interactive,
            deadline_ms: None,
            format: None,
            tool_choice: ToolChoice::Auto,
        }
    }
}

/// A `chat`, `complete` or `intent` request that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    spec: GenerateSpec,
}

impl GenerateRequest {
    /// Checks `spec` against the protocol's limits and `limits`.
    pub fn new(mut spec: GenerateSpec, limits: &Limits) -> Result<Self, FieldError> {
        match &mut spec.prompt {
            Prompt::Chat { messages, tools, .. } => {
                check_messages(messages)?;
                check_tools(tools.as_deref().unwrap_or_default(), &spec.tool_choice)?;
            }
            Prompt::Text(_) => {}
            Prompt::Intent { text, filter, place } => {
                place.check()?;
                if text.trim().is_empty() || text.len() > MAX_INTENT_TEXT {
                    return Err(FieldError::at("text", format!("must be 1 to {MAX_INTENT_TEXT} bytes and not blank")));
                }
                if filter.as_ref().is_some_and(|f| f.len() > MAX_INTENT_FILTER) {
                    return Err(FieldError::at("intent_filter", format!("at most {MAX_INTENT_FILTER} names")));
                }
                if spec.max_tokens.is_some() || spec.format.is_some() || !spec.stop.is_empty() {
                    return Err(FieldError::whole(
                        "max_tokens",
                        "max_tokens, stop and response_format: not fields of intent (the grammar bounds the answer)",
                    ));
                }
            }
        }
        if spec.tool_choice != ToolChoice::Auto && !matches!(spec.prompt, Prompt::Chat { .. }) {
            return Err(FieldError::at("tool_choice", "only chat requests take one"));
        }
        if let Some(n) = spec.max_tokens {
            if n == 0 || n > limits.max_tokens {
                return Err(FieldError::at("max_tokens", format!("must be between 1 and {} (got {n})", limits.max_tokens)));
            }
        }
        spec.sampling.validate()?;
        if spec.stop.len() > MAX_STOP || spec.stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
            return Err(FieldError::at("stop", format!("at most {MAX_STOP} strings of 1 to {MAX_STOP_LEN} bytes")));
        }
        if spec.deadline_ms.is_some_and(|d| d == 0 || d > MAX_DEADLINE_MS) {
            return Err(FieldError::at("deadline_ms", format!("must be between 1 and {MAX_DEADLINE_MS}")));
        }
        Ok(Self { spec })
    }

    /// What to continue.
    pub fn prompt(&self) -> &Prompt {
        &self.spec.prompt
    }

    /// Most tokens to generate (`None`: the configured default).
    pub fn max_tokens(&self) -> Option<usize> {
        self.spec.max_tokens
    }

    /// Sampling settings.
    pub fn sampling(&self) -> &Sampling {
        &self.spec.sampling
    }

    /// Stop strings.
    pub fn stop(&self) -> &[String] {
        &self.spec.stop
    }

    /// Whether `token` events are sent.
    pub fn stream(&self) -> bool {
        self.spec.stream
    }

    /// Scheduling class.
    pub fn priority(&self) -> Priority {
        self.spec.priority
    }

    /// The request's own deadline.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.spec.deadline_ms
    }

    /// The grammar the answer must follow.
    pub fn format(&self) -> Option<&ResponseFormat> {
        self.spec.format.as_ref()
    }

    /// Whether and which tool to call.
    pub fn tool_choice(&self) -> &ToolChoice {
        &self.spec.tool_choice
    }
}

/// Checks the messages; the `arguments` of an assistant's earlier tool calls, which OpenAI
/// clients send as a JSON string, become the object the chat template renders.
fn check_messages(messages: &mut [Value]) -> Result<(), FieldError> {
    if messages.is_empty() {
        return Err(FieldError::at("messages", "must not be empty"));
    }
    for (i, m) in messages.iter_mut().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| FieldError::at(format!("messages[{i}].role"), "missing or not a string"))?;
        if !ROLES.contains(&role) {
            return Err(FieldError::at(format!("messages[{i}].role"), format!("'{role}' is not one of {}", ROLES.join(", "))));
        }
        let is_assistant = role == "assistant";
        match m.get("content") {
            Some(Value::String(_)) => {}
            Some(Value::Null) | None if is_assistant && m.get("tool_calls").is_some() => {}
            _ => return Err(FieldError::at(format!("messages[{i}].content"), "missing or not a string")),
        }
        let Some(calls) = m.get_mut("tool_calls").filter(|c| !c.is_null()) else { continue };
        let Value::Array(calls) = calls else { return Err(FieldError::at(format!("messages[{i}].tool_calls"), "must be a list")) };
        for (j, call) in calls.iter_mut().enumerate() {
            let at = format!("messages[{i}].tool_calls[{j}]");
            let function = call
                .get_mut("function")
                .filter(|f| f.is_object())
                .ok_or_else(|| FieldError::at(format!("{at}.function"), "missing or not an object"))?;
            if !function.get("name").is_some_and(Value::is_string) {
                return Err(FieldError::at(format!("{at}.function.name"), "missing or not a string"));
            }
            let args = function.get("arguments").cloned().unwrap_or(Value::Object(Default::default()));
            let args = match args {
                Value::String(text) if text.trim().is_empty() => Value::Object(Default::default()),
                Value::String(text) => serde_json::from_str::<Value>(&text)
                    .map_err(|e| FieldError::at(format!("{at}.function.arguments"), format!("not JSON: {e}")))?,
                other => other,
            };
            if !args.is_object() {
                return Err(FieldError::at(format!("{at}.function.arguments"), "must be a JSON object"));
            }
            function["arguments"] = args;
        }
    }
    Ok(())
}

/// Checks the tool definitions (`{"type": "function", "function": {"name", "description",
/// "parameters"}}`) and that the tool choice names one of them.
fn check_tools(tools: &[Value], choice: &ToolChoice) -> Result<(), FieldError> {
    if tools.len() > MAX_TOOLS {
        return Err(FieldError::at("tools", format!("at most {MAX_TOOLS}")));
    }
    let mut names = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        if tool.get("type").is_some_and(|t| t != "function") {
            return Err(FieldError::at(format!("tools[{i}].type"), "only \"function\" tools are supported"));
        }
        let f = tool
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| FieldError::at(format!("tools[{i}].function"), "missing or not an object"))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| FieldError::at(format!("tools[{i}].function.name"), "missing or not a string"))?;
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if name.is_empty() || name.len() > MAX_TOOL_NAME || !name.chars().all(valid) {
            return Err(FieldError::at(
                format!("tools[{i}].function.name"),
                format!("{name:?} must be 1 to {MAX_TOOL_NAME} of a-z, A-Z, 0-9, _, - and ."),
            ));
        }
        if names.contains(&name) {
            return Err(FieldError::at(format!("tools[{i}].function.name"), format!("'{name}' is defined twice")));
        }
        if let Some(p) = f.get("parameters").filter(|p| !p.is_null()) {
            if !p.is_object() || p.get("type").is_some_and(|t| t != "object") {
                return Err(FieldError::at(format!("tools[{i}].function.parameters"), "must be a JSON Schema of type object"));
            }
            if p.get("properties").is_some_and(|props| !props.is_object()) {
                return Err(FieldError::at(format!("tools[{i}].function.parameters.properties"), "must be an object"));
            }
        }
        names.push(name);
    }
    match choice {
        ToolChoice::Required if tools.is_empty() => Err(FieldError::at("tool_choice", "\"required\" needs tools")),
        ToolChoice::Function(name) if !names.contains(&name.as_str()) => {
            Err(FieldError::at("tool_choice.function.name", format!("'{name}' is not one of the tools")))
        }
        _ => Ok(()),
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Generate text (or an intent).
    Generate(Box<GenerateRequest>),
    /// Cancel the request with this id from the same client.
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
    pub id: RequestId,
    /// The operation.
    pub op: Op,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_tokens: 100 };

    fn intent(text: &str) -> GenerateSpec {
        GenerateSpec::new(Prompt::Intent { text: text.into(), filter: None, place: Default::default() })
    }

    #[test]
    fn every_constructor_path_checks_the_limits() {
        let long = "x".repeat(MAX_INTENT_TEXT + 1);
        let cases: Vec<(GenerateSpec, &str)> = vec![
            (intent(&long), "text: must be 1 to 2000 bytes"),
            (intent("  "), "text:"),
            (
                GenerateSpec {
                    prompt: Prompt::Intent { text: "x".into(), filter: Some(vec![String::new(); 1001]), place: Default::default() },
                    ..intent("x")
                },
                "intent_filter",
            ),
            (
                GenerateSpec { max_tokens: Some(101), ..GenerateSpec::new(Prompt::Text("x".into())) },
                "max_tokens: must be between 1 and 100",
            ),
            (GenerateSpec { stop: vec![String::new()], ..GenerateSpec::new(Prompt::Text("x".into())) }, "stop:"),
            (GenerateSpec { deadline_ms: Some(0), ..GenerateSpec::new(Prompt::Text("x".into())) }, "deadline_ms:"),
            (GenerateSpec { sampling: Sampling { top_p: 2.0, ..Default::default() }, ..intent("x") }, "top_p"),
            (GenerateSpec::new(Prompt::Chat { messages: vec![], tools: None, thinking: false }), "messages: must not be empty"),
            (GenerateSpec { format: Some(ResponseFormat::Lark("start: \"a\"".into())), ..intent("x") }, "response_format"),
        ];
        for (spec, want) in cases {
            let e = GenerateRequest::new(spec, &LIMITS).unwrap_err();
            assert!(e.message.contains(want), "{want}: {e}");
        }
        let ok = GenerateRequest::new(intent("turn on the light"), &LIMITS).unwrap();
        assert!(!ok.stream());
        assert_eq!(ok.priority(), Priority::Interactive);
    }

    #[test]
    fn ids_are_bounded() {
        assert!(RequestId::new("").is_err());
        assert!(RequestId::new("x".repeat(MAX_ID_LEN + 1)).is_err());
        assert_eq!(RequestId::new("r1").unwrap().as_str(), "r1");
    }

    #[test]
    fn response_formats() {
        use serde_json::json;
        assert_eq!(ResponseFormat::parse(&json!({"type": "text"})).unwrap(), None);
        assert!(matches!(ResponseFormat::parse(&json!({"type": "json_object"})).unwrap(), Some(ResponseFormat::JsonSchema(_))));
        assert!(ResponseFormat::parse(&json!({"type": "yaml"})).unwrap_err().field == "response_format.type");
        assert!(ResponseFormat::parse(&json!({"type": "lark", "lark": " "})).is_err());
    }
}
