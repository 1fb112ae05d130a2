//! The grammar of an answer with tools, in llguidance's Lark dialect.
//!
//! A call is written in the model's native format; each parameter is one of the tool's
//! `parameters.properties`, in their order, the required ones always there. A string value is
//! written raw (as the chat template renders it), so its grammar is a bounded run of text that
//! cannot contain the closing `\n</parameter>`: `enum`/`const` become alternatives, `minLength`
//! and `maxLength` its bounds. Any other value is JSON under its own schema, with compact
//! whitespace (free whitespace lets a weak model pad an answer until it runs out of tokens). A
//! string without `maxLength` is unbounded: a model that never closes it ends at `max_tokens`.
//!
//! Choices: `required` and a named function admit exactly one call; `auto` admits text in which
//! any call that is opened is a valid call (and several calls one after another); `none`
//! admits text without calls. With thinking on, the answer starts with free reasoning up to
//! `</think>`. Where the tokenizer writes `<tool_call>` as a special token (Qwen3.5's does),
//! free text cannot contain it, so `auto` holds nothing until the model picks that token and
//! `none` only bans it: free text then costs no grammar work per token.

use crate::format::{self, lit};
use serde_json::{json, Value};

use qwenedge_api::ToolChoice;

/// How the markers are written in the grammar: as the special token of the model's tokenizer
/// (`<[248058]>`), or as text when the tokenizer has no such token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markers {
    /// `<tool_call>`.
    pub tool_call_open: Marker,
    /// `</tool_call>`.
    pub tool_call_close: Marker,
    /// `</think>`.
    pub think_close: Marker,
}

/// One marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// A special token with this id.
    Token(u32),
    /// Plain text.
    Text(&'static str),
}

impl Marker {
    /// The marker as a Lark grammar item.
    pub fn rule(&self) -> String {
        match self {
            Marker::Token(id) => format!("<[{id}]>"),
            Marker::Text(t) => lit(t),
        }
    }
}

impl Markers {
    /// The markers of a tokenizer: `special` gives the id of a text's special token, if it has
    /// one; the others are written as text.
    pub fn from_special(special: impl Fn(&str) -> Option<u32>) -> Self {
        let marker = |text: &'static str| special(text).map_or(Marker::Text(text), Marker::Token);
        Self {
            tool_call_open: marker(super::TOOL_CALL_OPEN),
            tool_call_close: marker(super::TOOL_CALL_CLOSE),
            think_close: marker(super::THINK_CLOSE),
        }
    }
}

impl Default for Markers {
    /// Markers written as text.
    fn default() -> Self {
        Self {
            tool_call_open: Marker::Text(super::TOOL_CALL_OPEN),
            tool_call_close: Marker::Text(super::TOOL_CALL_CLOSE),
            think_close: Marker::Text(super::THINK_CLOSE),
        }
    }
}

/// Free text that cannot hold `marker` (a special token cannot be produced by text anyway).
fn text_without(marker: &Marker) -> String {
    match marker {
        Marker::Token(_) => "/(?s:.*)/".to_string(),
        Marker::Text(t) => format!("/(?s:.*)/ & ~/(?s:.*){}(?s:.*)/", regex_escape(t)),
    }
}

/// A regex matching `s` literally, for use inside `/…/`.
fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~/".contains(c) {
            out.push('\\');
        }
        match c {
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The schema with compact JSON whitespace.
fn compact(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| json!({"whitespace_flexible": false}));
    }
    schema
}

/// Whether a parameter's value is written raw: a schema of type `string` (or an `enum` or
/// `const` of strings only).
pub fn is_raw_string(schema: &Value) -> bool {
    let all_strings = |v: &Value| v.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string));
    schema.get("type").and_then(Value::as_str) == Some("string")
        || schema.get("enum").is_some_and(all_strings)
        || schema.get("const").is_some_and(Value::is_string)
}

/// The grammar of one parameter value (a rule body) and the terminal definitions it needs.
fn value_rule(name: &str, schema: &Value, terminals: &mut Vec<String>) -> Result<String, String> {
    if !is_raw_string(schema) {
        let body = serde_json::to_string(&compact(schema)).map_err(|e| e.to_string())?;
        return Ok(format!("%json {body}"));
    }
    if let Some(c) = schema.get("const").and_then(Value::as_str) {
        return Ok(lit(c));
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let alts: Vec<String> = values.iter().filter_map(Value::as_str).map(lit).collect();
        return Ok(alts.join(" | "));
    }
    let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0);
    let bounds = match schema.get("maxLength").and_then(Value::as_u64) {
        Some(max) if max < min => return Err(format!("{name}: maxLength {max} is below minLength {min}")),
        Some(max) => format!("{{{min},{max}}}"),
        None => format!("{{{min},}}"),
    };
    let terminal = format!("V_{}", terminals.len());
    terminals.push(format!("{terminal}: /(?s:.){bounds}/ & ~/(?s:.*)\\n<\\/parameter>(?s:.*)/"));
    Ok(terminal)
}

/// The rules of one tool's call body (`NAME>\n` and its parameters), as rule `rule`.
fn tool_rules(rule: &str, tool: &Value, rules: &mut Vec<String>, terminals: &mut Vec<String>) -> Result<(), String> {
    let f = &tool["function"];
    let name = f["name"].as_str().ok_or("a tool has no name")?;
    let params = &f["parameters"];
    let required: Vec<&str> = params["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let mut body = format::function_name(name);
    if let Some(props) = params["properties"].as_object() {
        for (k, (key, schema)) in props.iter().enumerate() {
            let p = format!("{rule}_p{k}");
            let value = value_rule(&format!("{name}.{key}"), schema, terminals)?;
            rules.push(format!("{p}: {}", format::parameter_rule(key, &format!("{p}_v"))));
            rules.push(format!("{p}_v: {value}"));
            body.push_str(&format!(" {p}{}", if required.contains(&key.as_str()) { "" } else { "?" }));
        }
    }
    for r in &required {
        if params["properties"].get(r).is_none() {
            return Err(format!("tool '{name}': required parameter '{r}' is not among its properties"));
        }
    }
    rules.push(format!("{rule}: {body}"));
    Ok(())
}

/// How an answer is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolConstraint {
    /// Every token follows this grammar.
    Grammar(String),
    /// Free until the special token `trigger`; from there on this grammar (which starts with it).
    Triggered {
        /// The special token that opens a tool call.
        trigger: u32,
        /// The grammar of the calls.
        grammar: String,
    },
    /// Free but for these special tokens.
    Banned(Vec<u32>),
}

/// How an answer to `choice` among `tools` is held (`None` without tools: then nothing needs
/// holding). `format` is the JSON Schema of `response_format`, which the text part then
/// follows. The error names what is wrong with a tool's schema.
pub fn tool_grammar(
    tools: &[Value],
    choice: &ToolChoice,
    thinking: bool,
    format: Option<&Value>,
    markers: &Markers,
) -> Result<Option<ToolConstraint>, String> {
    if tools.is_empty() {
        return Ok(None);
    }
    if let (Marker::Token(open), None) = (&markers.tool_call_open, format) {
        match choice {
            ToolChoice::None => return Ok(Some(ToolConstraint::Banned(vec![*open]))),
            ToolChoice::Auto => {
                let grammar = full_grammar(tools, &ToolChoice::Required, false, None, markers)?;
                let grammar = grammar.replacen("answer: call\n", "answer: calls\n", 1);
                return Ok(Some(ToolConstraint::Triggered { trigger: *open, grammar }));
            }
            _ => {}
        }
    }
    full_grammar(tools, choice, thinking, format, markers).map(|g| Some(ToolConstraint::Grammar(g)))
}

/// The grammar every token of the answer follows.
fn full_grammar(tools: &[Value], choice: &ToolChoice, thinking: bool, format: Option<&Value>, markers: &Markers) -> Result<String, String> {
    let mut rules = Vec::new();
    let mut terminals = Vec::new();
    let chosen: Vec<(usize, &Value)> = tools
        .iter()
        .enumerate()
        .filter(|(_, t)| match choice {
            ToolChoice::Function(name) => t["function"]["name"].as_str() == Some(name.as_str()),
            _ => true,
        })
        .collect();
    let mut fns = Vec::new();
    for (i, tool) in &chosen {
        let rule = format!("f{i}");
        tool_rules(&rule, tool, &mut rules, &mut terminals)?;
        fns.push(rule);
    }
    rules.push(format!("call: {}", format::call_rule(markers, &fns)));
    let text = match format {
        Some(schema) => {
            let body = serde_json::to_string(&compact(schema)).map_err(|e| e.to_string())?;
            rules.push(format!("text: %json {body}"));
            "text".to_string()
        }
        None => {
            terminals.push(format!("TEXT: {}", text_without(&markers.tool_call_open)));
            "TEXT".to_string()
        }
    };
    let answer = match choice {
        ToolChoice::Required | ToolChoice::Function(_) => "call".to_string(),
        ToolChoice::None => text,
        ToolChoice::Auto if format.is_some() => format!("{text} | calls"),
        ToolChoice::Auto => format!("{text} calls?"),
    };
    rules.push(format!("calls: call ({} call)*", lit("\n")));
    let start = if thinking {
        terminals.push(format!("REASONING: {}", text_without(&markers.think_close)));
        format!("start: REASONING {} NL answer\nNL: /\\n{{0,2}}/", markers.think_close.rule())
    } else {
        "start: answer".to_string()
    };
    let mut g = vec![start, format!("answer: {answer}")];
    g.extend(rules);
    g.extend(terminals);
    Ok(g.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "HassTurnOn", "parameters": {"type": "object",
                "properties": {"name": {"type": "string", "maxLength": 40}, "area": {"type": "string", "enum": ["kitchen", "hall"]},
                               "brightness": {"type": "integer", "minimum": 0, "maximum": 100}},
                "required": ["name"], "additionalProperties": false}}}),
            json!({"type": "function", "function": {"name": "GetTime", "parameters": {"type": "object", "properties": {}}}}),
        ]
    }

    fn grammar(hold: Option<ToolConstraint>) -> String {
        match hold {
            Some(ToolConstraint::Grammar(g)) => g,
            other => panic!("not a full grammar: {other:?}"),
        }
    }

    #[test]
    fn a_required_call_names_every_tool_and_bounds_its_values() {
        let g = grammar(tool_grammar(&tools(), &ToolChoice::Required, false, None, &Markers::default()).unwrap());
        assert!(g.contains("answer: call\n"), "{g}");
        assert!(g.contains("\"HassTurnOn>\\n\" f0_p0 f0_p1? f0_p2?"), "{g}");
        assert!(g.contains("\"kitchen\" | \"hall\""), "{g}");
        assert!(g.contains("/(?s:.){0,40}/"), "{g}");
        assert!(g.contains("\"maximum\":100") && g.contains("whitespace_flexible"), "{g}");
        assert!(g.contains("f1: \"GetTime>\\n\""), "{g}");
    }

    #[test]
    fn choices_shape_the_answer() {
        let m = Markers { tool_call_open: Marker::Token(7), tool_call_close: Marker::Token(8), think_close: Marker::Token(9) };
        let named = grammar(tool_grammar(&tools(), &ToolChoice::Function("GetTime".into()), false, None, &m).unwrap());
        assert!(!named.contains("HassTurnOn") && named.contains("<[7]>") && named.contains("<[8]>"), "{named}");
        let thinking = grammar(tool_grammar(&tools(), &ToolChoice::Required, true, None, &m).unwrap());
        assert!(thinking.contains("REASONING <[9]> NL answer"), "{thinking}");
        match tool_grammar(&tools(), &ToolChoice::Auto, true, None, &m).unwrap() {
            Some(ToolConstraint::Triggered { trigger: 7, grammar }) => assert!(grammar.contains("answer: calls\n"), "{grammar}"),
            other => panic!("auto with a special opener waits for it: {other:?}"),
        }
        assert_eq!(tool_grammar(&tools(), &ToolChoice::None, false, None, &m).unwrap(), Some(ToolConstraint::Banned(vec![7])));
        let text = grammar(tool_grammar(&tools(), &ToolChoice::None, false, None, &Markers::default()).unwrap());
        assert!(text.contains("~/(?s:.*)<tool_call>(?s:.*)/"), "{text}");
        let auto = grammar(tool_grammar(&tools(), &ToolChoice::Auto, true, None, &Markers::default()).unwrap());
        assert!(auto.contains("answer: TEXT calls?") && auto.contains("REASONING \"</think>\""), "{auto}");
        let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}});
        let with_format = grammar(tool_grammar(&tools(), &ToolChoice::Auto, false, Some(&schema), &m).unwrap());
        assert!(with_format.contains("answer: text | calls"), "{with_format}");
        assert!(tool_grammar(&[], &ToolChoice::Auto, false, None, &m).unwrap().is_none());
    }

    #[test]
    fn broken_schemas_are_named() {
        let bad = vec![json!({"type": "function", "function": {"name": "T", "parameters": {"type": "object",
            "properties": {"s": {"type": "string", "minLength": 5, "maxLength": 2}}}}})];
        assert!(tool_grammar(&bad, &ToolChoice::Required, false, None, &Markers::default()).unwrap_err().contains("T.s"));
        let missing = vec![json!({"type": "function", "function": {"name": "T", "parameters": {"type": "object",
            "properties": {}, "required": ["x"]}}})];
        assert!(tool_grammar(&missing, &ToolChoice::Required, false, None, &Markers::default()).unwrap_err().contains("'x'"));
    }
}
