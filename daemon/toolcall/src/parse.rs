//! Generated text, as it streams, split into reasoning (inside `<think>…</think>`), content,
//! and native tool calls parsed into a name and an arguments object. Text that might be the
//! start of a marker is held back until the next piece decides it; a call is reported when it
//! is complete, and one cut short (by `max_tokens`) is reported as such, never half-parsed.

use crate::format;
use serde_json::{Map, Value};

use super::grammar::is_raw_string;
use super::{THINK_CLOSE, THINK_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN};

/// A parsed tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments: raw strings for string parameters, JSON values for the others.
    pub arguments: Map<String, Value>,
}

/// A piece of the answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Thinking.
    Reasoning(String),
    /// The answer's text.
    Content(String),
    /// A complete tool call.
    Call(ToolCall),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reasoning,
    Content,
    Call,
}

/// Splits one answer.
#[derive(Debug)]
pub struct Splitter {
    state: State,
    buf: String,
    /// Tool name → the parameters written raw (string-typed).
    raw: Vec<(String, Vec<String>)>,
    /// Content seen yet (leading newlines after the thinking block are dropped).
    started: bool,
}

/// The end of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// What was still held back.
    pub pieces: Vec<Piece>,
    /// A tool call was opened and not closed (the answer was cut short).
    pub cut_call: bool,
}

impl Splitter {
    /// A splitter for an answer that starts inside a thinking block when `thinking` (the chat
    /// template opens it), with the request's `tools` (to tell string parameters from others).
    pub fn new(thinking: bool, tools: &[Value]) -> Self {
        let raw = tools
            .iter()
            .filter_map(|t| {
                let f = &t["function"];
                let name = f["name"].as_str()?.to_string();
                let props = f["parameters"]["properties"].as_object();
                let raw = props.map(|p| p.iter().filter(|(_, s)| is_raw_string(s)).map(|(k, _)| k.clone()).collect()).unwrap_or_default();
                Some((name, raw))
            })
            .collect();
        Self { state: if thinking { State::Reasoning } else { State::Content }, buf: String::new(), raw, started: false }
    }

    /// Takes the next piece of text; returns what it settles.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            let (marker, next) = match self.state {
                State::Reasoning => (THINK_CLOSE, State::Content),
                State::Content => {
                    let call = self.buf.find(TOOL_CALL_OPEN);
                    let think = self.buf.find(THINK_OPEN);
                    match (call, think) {
                        (Some(c), Some(t)) if t < c => (THINK_OPEN, State::Reasoning),
                        (None, Some(_)) => (THINK_OPEN, State::Reasoning),
                        _ => (TOOL_CALL_OPEN, State::Call),
                    }
                }
                State::Call => (TOOL_CALL_CLOSE, State::Content),
            };
            match self.buf.find(marker) {
                Some(at) => {
                    let before: String = self.buf[..at].to_string();
                    self.buf.drain(..at + marker.len());
                    self.settle(before, true, &mut out);
                    self.state = next;
                }
                None => {
                    if self.state != State::Call {
                        let mut keep = held_back(&self.buf);
                        if self.state == State::Reasoning {
                            // Newlines before `</think>` are not part of the reasoning.
                            let body = &self.buf[..self.buf.len() - keep];
                            keep += body.len() - body.trim_end_matches('\n').len();
                        }
                        let ready: String = self.buf[..self.buf.len() - keep].to_string();
                        self.buf.drain(..self.buf.len() - keep);
                        self.settle(ready, false, &mut out);
                    }
                    return out;
                }
            }
        }
    }

    /// The text before a marker (`closed`) or text that is settled without one.
    fn settle(&mut self, text: String, closed: bool, out: &mut Vec<Piece>) {
        match self.state {
            State::Reasoning => {
                let text = if closed { text.trim_end_matches('\n').to_string() } else { text };
                let text = if out.is_empty() && !self.started { text.trim_start_matches('\n').to_string() } else { text };
                if !text.is_empty() {
                    out.push(Piece::Reasoning(text));
                }
            }
            State::Content => {
                let text = if self.started { text } else { text.trim_start_matches('\n').to_string() };
                if !text.is_empty() {
                    self.started = true;
                    out.push(Piece::Content(text));
                }
            }
            State::Call => match self.call(&text) {
                Some(call) => out.push(Piece::Call(call)),
                None => out.push(Piece::Content(format!("{TOOL_CALL_OPEN}{text}{TOOL_CALL_CLOSE}"))),
            },
        }
    }

    /// Parses the inside of `<tool_call>…</tool_call>`.
    fn call(&self, body: &str) -> Option<ToolCall> {
        let call = format::read_body_lenient(body).ok()?;
        let raw = self.raw.iter().find(|(n, _)| n == call.name).map(|(_, r)| r.as_slice()).unwrap_or_default();
        let mut arguments = Map::new();
        for (key, value) in call.params {
            let value = if raw.iter().any(|r| r == key) {
                Value::String(value.to_string())
            } else {
                serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()))
            };
            arguments.insert(key.to_string(), value);
        }
        Some(ToolCall { name: call.name.to_string(), arguments })
    }

    /// Ends the answer.
    pub fn finish(mut self) -> Finished {
        let rest = std::mem::take(&mut self.buf);
        let mut pieces = Vec::new();
        let cut_call = self.state == State::Call;
        if !cut_call {
            self.settle(rest, false, &mut pieces);
        }
        Finished { pieces, cut_call }
    }
}

/// How many bytes at the end of `buf` could begin a marker.
fn held_back(buf: &str) -> usize {
    let mut keep = 0;
    for marker in [TOOL_CALL_OPEN, THINK_OPEN, THINK_CLOSE] {
        for n in (1..marker.len()).rev() {
            if n <= buf.len() && buf.is_char_boundary(buf.len() - n) && buf.ends_with(&marker[..n]) {
                keep = keep.max(n);
                break;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<Value> {
        vec![json!({"type": "function", "function": {"name": "HassLightSet", "parameters": {"type": "object",
            "properties": {"name": {"type": "string"}, "brightness": {"type": "integer"}, "code": {"type": "string"}}}}})]
    }

    fn split(thinking: bool, chunks: &[&str]) -> (Vec<Piece>, bool) {
        let mut s = Splitter::new(thinking, &tools());
        let mut out: Vec<Piece> = chunks.iter().flat_map(|c| s.push(c)).collect();
        let end = s.finish();
        out.extend(end.pieces);
        (merge(out), end.cut_call)
    }

    /// Adjacent text pieces of one kind joined (streaming splits them anywhere).
    fn merge(pieces: Vec<Piece>) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::new();
        for p in pieces {
            match (out.last_mut(), p) {
                (Some(Piece::Content(a)), Piece::Content(b)) => a.push_str(&b),
                (Some(Piece::Reasoning(a)), Piece::Reasoning(b)) => a.push_str(&b),
                (_, p) => out.push(p),
            }
        }
        out
    }

    #[test]
    fn thinking_content_and_calls_are_told_apart_wherever_the_text_is_cut() {
        let text = "Let me see.\n</think>\n\nSure.\n\n<tool_call>\n<function=HassLightSet>\n<parameter=name>\nkitchen 42\n</parameter>\n<parameter=brightness>\n40\n</parameter>\n<parameter=code>\n007\n</parameter>\n</function>\n</tool_call>";
        let want = vec![
            Piece::Reasoning("Let me see.".into()),
            Piece::Content("Sure.\n\n".into()),
            Piece::Call(ToolCall {
                name: "HassLightSet".into(),
                arguments: json!({"name": "kitchen 42", "brightness": 40, "code": "007"}).as_object().unwrap().clone(),
            }),
        ];
        for cut in 1..text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            assert_eq!(split(true, &[&text[..cut], &text[cut..]]), (want.clone(), false), "cut at {cut}");
        }
        let bytes: Vec<String> = text.chars().map(String::from).collect();
        assert_eq!(split(true, &bytes.iter().map(String::as_str).collect::<Vec<_>>()), (want, false), "one character at a time");
    }

    #[test]
    fn plain_text_cut_calls_and_calls_that_do_not_parse() {
        assert_eq!(split(false, &["Hello <b>world</b>", " <thin"]), (vec![Piece::Content("Hello <b>world</b> <thin".into())], false));
        let (pieces, cut) = split(false, &["On it.<tool_call>\n<function=HassLightSet>\n<parameter=name>\nkit"]);
        assert_eq!((pieces, cut), (vec![Piece::Content("On it.".into())], true), "a call cut short is not half-parsed");
        let (pieces, _) = split(false, &["<tool_call>not a call</tool_call>"]);
        assert_eq!(pieces, vec![Piece::Content("<tool_call>not a call</tool_call>".into())], "nothing is lost");
        let (pieces, _) = split(false, &["<tool_call>\n<function=GetTime>\n</function>\n</tool_call>"]);
        assert!(matches!(&pieces[0], Piece::Call(c) if c.name == "GetTime" && c.arguments.is_empty()));
    }
}
