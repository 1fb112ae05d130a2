//! The local stage for chat requests that offer intent tools (Home Assistant's Assist API
//! through the Ollama or OpenAI endpoint): when the last message is the user's and the
//! sentence templates match it to an intent whose tool is offered — by its name, or prefixed as
//! Home Assistant 2026.11 names them (`intent__HassTurnOn`, `light__HassLightSet`) — the answer
//! is that tool call, at once, written in the model's own tool-call format so every endpoint
//! parses it as it parses the model's. The next turn (the tool's result) goes to the model.

use std::collections::BTreeMap;

use qwenedge_api::{EventBody, FinishReason, Place, ToolChoice, Usage};
use qwenedge_toolcall::{format::write_call, THINK_CLOSE};
use serde_json::Value;

use crate::local::{timings, LocalAnswer, LocalStage};

/// The intent an offered tool stands for: its name after the last `__`.
fn intent_of(tool: &str) -> &str {
    tool.rsplit_once("__").map_or(tool, |(_, intent)| intent)
}

/// The value of `slot` as a parameter of the schema `property`: arrays for array parameters,
/// strings as they are, other values as JSON.
fn parameter(property: &Value, value: &Value) -> String {
    let wants_array = property["type"] == "array" || property["type"].as_array().is_some_and(|t| t.iter().any(|t| t == "array"));
    match value {
        Value::Array(_) => value.to_string(),
        _ if wants_array => Value::Array(vec![value.clone()]).to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The answer to a chat with `tools`: a tool call when the last message is the user's and
/// matches an offered intent's templates, else the model.
pub(crate) fn answer(stage: &LocalStage, messages: &[Value], tools: &[Value], thinking: bool, choice: &ToolChoice) -> LocalAnswer {
    let Some(last) = messages.last().filter(|m| m["role"] == "user") else { return LocalAnswer::ToModel };
    // (Requests are validated with string contents; the transports join content parts.)
    let Some(text) = last["content"].as_str().filter(|t| !t.trim().is_empty()) else { return LocalAnswer::ToModel };
    let mut offered: BTreeMap<String, &Value> = BTreeMap::new();
    for tool in tools {
        let Some(name) = tool["function"]["name"].as_str() else { continue };
        let allowed = match choice {
            ToolChoice::None => false,
            ToolChoice::Auto | ToolChoice::Required => true,
            ToolChoice::Function(f) => f == name,
        };
        if allowed {
            offered.entry(intent_of(name).to_string()).or_insert(tool);
        }
    }
    if offered.is_empty() {
        return LocalAnswer::ToModel;
    }
    let filter: Vec<String> = offered.keys().cloned().collect();
    let (found, started) = stage.recognize(text, None, Some(&filter), &Place::default());
    let Some(m) = found else { return LocalAnswer::ToModel };
    let Some(tool) = offered.get(&m.intent) else { return LocalAnswer::ToModel };
    let function = &tool["function"];
    let name = function["name"].as_str().unwrap_or_default();
    let properties = function["parameters"]["properties"].as_object();
    let params: Vec<(String, String)> =
        m.slots.iter().filter_map(|(slot, value)| Some((slot.clone(), parameter(properties?.get(slot)?, value)))).collect();
    let required = function["parameters"]["required"].as_array().into_iter().flatten().filter_map(Value::as_str);
    if required.into_iter().any(|r| !params.iter().any(|(k, _)| k == r)) {
        return LocalAnswer::ToModel;
    }
    let borrowed: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut call = write_call(name, &borrowed);
    if thinking {
        call = format!("{THINK_CLOSE}\n\n{call}");
    }
    tracing::debug!(intent = %m.intent, tool = name, "a chat's tool call answered from the sentence templates");
    LocalAnswer::Answer(vec![
        EventBody::Token { text: call.clone() },
        EventBody::Done { text: call, finish_reason: FinishReason::Stop, usage: Usage::default(), timings: timings(started) },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prefixed_tools_name_their_intent_and_parameters_follow_the_schema() {
        assert_eq!(intent_of("intent__HassTurnOn"), "HassTurnOn");
        assert_eq!(intent_of("HassTurnOn"), "HassTurnOn");
        assert_eq!(intent_of("assist_satellite__HassBroadcast"), "HassBroadcast");
        assert_eq!(parameter(&json!({"type": "array", "items": {"type": "string"}}), &json!("light")), r#"["light"]"#);
        assert_eq!(parameter(&json!({"type": "string"}), &json!("Kitchen Light")), "Kitchen Light");
        assert_eq!(parameter(&json!({"type": "integer"}), &json!(50)), "50");
    }
}
