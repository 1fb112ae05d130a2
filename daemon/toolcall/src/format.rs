//! Qwen3.5's tool-call syntax, written, read and put into grammars in this one place:
//!
//! ```text
//! <tool_call>
//! <function=NAME>
//! <parameter=KEY>
//! VALUE
//! </parameter>
//! …
//! </function>
//! </tool_call>
//! ```
//!
//! The chat tools ([`crate::grammar`], [`crate::parse`]) and the intent catalog (its grammar
//! and the reading of its answers) all use these functions, so the format cannot drift apart
//! between them.

use crate::grammar::Markers;
use crate::{TOOL_CALL_CLOSE, TOOL_CALL_OPEN};

/// What follows the opening marker, before the function name.
const FUNCTION_OPEN: &str = "\n<function=";
/// What ends the function name (and each parameter name).
const NAME_END: &str = ">\n";
/// What ends the call's parameters, before the closing marker.
const FUNCTION_CLOSE: &str = "</function>\n";
/// What opens a parameter, before its name.
const PARAMETER_OPEN: &str = "<parameter=";
/// What ends a parameter's value.
const PARAMETER_CLOSE: &str = "\n</parameter>\n";

/// The bytes of a whole call around its function name and parameters (markers as text).
pub const CALL_BYTES: usize = TOOL_CALL_OPEN.len() + FUNCTION_OPEN.len() + NAME_END.len() + FUNCTION_CLOSE.len() + TOOL_CALL_CLOSE.len();

/// The bytes of one parameter around its name and value.
pub const PARAMETER_BYTES: usize = PARAMETER_OPEN.len() + NAME_END.len() + PARAMETER_CLOSE.len();

/// A call as written: the function name and each parameter's raw text, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawCall<'a> {
    /// The function.
    pub name: &'a str,
    /// `(key, value)` as written (values not yet typed).
    pub params: Vec<(&'a str, &'a str)>,
}

/// Why text is not a tool call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// It does not start like one.
    #[error("the answer is not a tool call")]
    NotACall,
    /// The function name has no end.
    #[error("unterminated function name")]
    Name,
    /// A parameter name has no end.
    #[error("unterminated parameter name")]
    ParameterName,
    /// A parameter's value has no end.
    #[error("unterminated value of '{0}'")]
    Value(String),
    /// Something other than a parameter or the end follows the parameters.
    #[error("unexpected text after the parameters: {0:?}")]
    Trailing(String),
}

/// Writes a whole call, markers as text.
pub fn write_call(name: &str, params: &[(&str, &str)]) -> String {
    let mut s = format!("{TOOL_CALL_OPEN}{FUNCTION_OPEN}{name}{NAME_END}");
    for (key, value) in params {
        s.push_str(&format!("{PARAMETER_OPEN}{key}{NAME_END}{value}{PARAMETER_CLOSE}"));
    }
    s + FUNCTION_CLOSE + TOOL_CALL_CLOSE
}

/// Reads a whole call (markers as text, as the tokenizer decodes them), exactly as written:
/// nothing before the opening marker or after the closing one.
pub fn read_call(text: &str) -> Result<RawCall<'_>, CallError> {
    let body = text.strip_prefix(TOOL_CALL_OPEN).ok_or(CallError::NotACall)?;
    let body = body.strip_suffix(TOOL_CALL_CLOSE).ok_or_else(|| CallError::Trailing(tail(body)))?;
    read_body(body, false)
}

/// Reads the inside of `<tool_call>…</tool_call>` as a model writes it in free text: blank
/// lines before the function, between parameters and after `</function>` are allowed.
pub fn read_body_lenient(body: &str) -> Result<RawCall<'_>, CallError> {
    read_body(body, true)
}

fn read_body(body: &str, lenient: bool) -> Result<RawCall<'_>, CallError> {
    let body = if lenient { body.trim_start_matches('\n') } else { body.strip_prefix('\n').ok_or(CallError::NotACall)? };
    let rest = body.strip_prefix(&FUNCTION_OPEN[1..]).ok_or(CallError::NotACall)?;
    let (name, mut rest) = rest.split_once(NAME_END).ok_or(CallError::Name)?;
    let mut params = Vec::new();
    loop {
        if lenient {
            rest = rest.trim_start_matches('\n');
        }
        let done = if lenient { rest.trim_end() == FUNCTION_CLOSE.trim_end() } else { rest == FUNCTION_CLOSE };
        if done {
            return Ok(RawCall { name, params });
        }
        let Some(after) = rest.strip_prefix(PARAMETER_OPEN) else {
            return Err(CallError::Trailing(tail(rest)));
        };
        let (key, after) = after.split_once(NAME_END).ok_or(CallError::ParameterName)?;
        let close = if lenient { &PARAMETER_CLOSE[..PARAMETER_CLOSE.len() - 1] } else { PARAMETER_CLOSE };
        let (value, after) = after.split_once(close).ok_or_else(|| CallError::Value(key.to_string()))?;
        params.push((key, value));
        rest = after;
    }
}

/// The first characters of `s`, for an error message.
fn tail(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A Lark string literal for `s`.
pub fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The Lark rule body of a whole call whose function is one of the rules `functions` (each
/// of which starts with the function name and its [`name_end`]), with `markers`.
pub fn call_rule(markers: &Markers, functions: &[String]) -> String {
    format!(
        "{} {} ({}) {} {}",
        markers.tool_call_open.rule(),
        lit(FUNCTION_OPEN),
        functions.join(" | "),
        lit(FUNCTION_CLOSE),
        markers.tool_call_close.rule()
    )
}

/// The Lark literal of a function's name and what ends it.
pub fn function_name(name: &str) -> String {
    lit(&format!("{name}{NAME_END}"))
}

/// The Lark rule body of one parameter `key` whose value matches the rule `value`.
pub fn parameter_rule(key: &str, value: &str) -> String {
    format!("{} {value} {}", lit(&format!("{PARAMETER_OPEN}{key}{NAME_END}")), lit(PARAMETER_CLOSE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_call_reads_back() {
        let text = write_call("HassLightSet", &[("name", "kitchen"), ("brightness", "40")]);
        assert_eq!(
            text,
            "<tool_call>\n<function=HassLightSet>\n<parameter=name>\nkitchen\n</parameter>\n<parameter=brightness>\n40\n</parameter>\n</function>\n</tool_call>"
        );
        assert_eq!(read_call(&text), Ok(RawCall { name: "HassLightSet", params: vec![("name", "kitchen"), ("brightness", "40")] }));
        assert_eq!(read_call(&write_call("GetTime", &[])), Ok(RawCall { name: "GetTime", params: vec![] }));
        assert_eq!(CALL_BYTES, write_call("", &[]).len());
        assert_eq!(PARAMETER_BYTES, write_call("", &[("", "")]).len() - CALL_BYTES);
    }

    #[test]
    fn strict_reading_names_what_is_wrong_and_lenient_reading_allows_blank_lines() {
        assert_eq!(read_call("hello"), Err(CallError::NotACall));
        assert_eq!(read_call("<tool_call>\n<function=F"), Err(CallError::Trailing("\n<function=F".into())));
        assert_eq!(read_call("<tool_call>\n<function=F</tool_call>"), Err(CallError::Name));
        assert_eq!(read_call("<tool_call>\n<function=F>\n<parameter=a>\n1</function>\n</tool_call>"), Err(CallError::Value("a".into())));
        assert!(matches!(read_call("<tool_call>\n<function=F>\nx</function>\n</tool_call>"), Err(CallError::Trailing(_))));
        let loose = "\n\n<function=F>\n\n<parameter=a>\n1\n</parameter>\n\n</function>\n  ";
        assert_eq!(read_body_lenient(loose), Ok(RawCall { name: "F", params: vec![("a", "1")] }));
        assert!(read_call(&format!("<tool_call>{loose}</tool_call>")).is_err(), "strict reading allows no blank lines");
    }

    #[test]
    fn grammar_pieces_spell_the_same_format() {
        let call = call_rule(&Markers::default(), &["f0".into()]);
        assert_eq!(call, r#""<tool_call>" "\n<function=" (f0) "</function>\n" "</tool_call>""#);
        assert_eq!(function_name("F"), r#""F>\n""#);
        assert_eq!(parameter_rule("a", "v"), r#""<parameter=a>\n" v "\n</parameter>\n""#);
    }
}
