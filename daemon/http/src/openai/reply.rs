//! OpenAI response bodies: `chat.completion` and `text_completion` objects, and their streams
//! as server-sent events (`data: {chunk}`, ending with `data: [DONE]`). Thinking comes back as
//! `reasoning_content`, native tool calls as structured `tool_calls` (`finish_reason:
//! "tool_calls"`); a call cut short by `max_tokens` is left out and the answer ends `length`.

use bytes::Bytes;
use serde_json::{json, Value};

use super::super::state::Submitted;
use qwenedge_api::{EventBody, FinishReason, Usage};
use qwenedge_toolcall::{Piece, Splitter, ToolCall};

/// What every object of one answer carries.
#[derive(Debug, Clone)]
pub struct Meta {
    /// `chatcmpl-…` / `cmpl-…`.
    pub id: String,
    /// The model's name.
    pub model: String,
    /// Unix seconds.
    pub created: u64,
}

/// An answer split into its parts.
#[derive(Debug, Default)]
pub struct Answer {
    /// The text.
    pub content: String,
    /// The thinking.
    pub reasoning: String,
    /// Complete tool calls.
    pub calls: Vec<ToolCall>,
    /// A call was cut short.
    pub cut_call: bool,
}

impl Answer {
    fn add(&mut self, pieces: Vec<Piece>) {
        for p in pieces {
            match p {
                Piece::Content(t) => self.content.push_str(&t),
                Piece::Reasoning(t) => self.reasoning.push_str(&t),
                Piece::Call(c) => self.calls.push(c),
            }
        }
    }

    /// `text` (a whole answer) split.
    pub fn of(text: &str, thinking: bool, tools: &[Value]) -> Self {
        let mut s = Splitter::new(thinking, tools);
        let mut a = Answer::default();
        a.add(s.push(text));
        let end = s.finish();
        a.add(end.pieces);
        a.cut_call = end.cut_call;
        if !a.calls.is_empty() {
            a.content = a.content.trim_end().to_string();
        }
        a
    }
}

/// `finish_reason` of an answer that ended for `reason`.
pub fn finish_reason(reason: FinishReason, calls: usize, cut_call: bool) -> &'static str {
    match (reason, calls, cut_call) {
        (_, _, true) | (FinishReason::Length | FinishReason::ContextFull, _, _) => "length",
        (FinishReason::Stop, 0, false) => "stop",
        (FinishReason::Stop, _, false) => "tool_calls",
    }
}

/// A tool call in OpenAI's shape (`arguments` as a JSON string).
pub fn tool_call(meta: &Meta, index: usize, call: &ToolCall) -> Value {
    json!({
        "id": format!("call_{}_{index}", meta.id.trim_start_matches("chatcmpl-")),
        "type": "function",
        "function": {"name": call.name, "arguments": Value::Object(call.arguments.clone()).to_string()},
    })
}

/// `usage`.
pub fn usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// A whole `chat.completion`.
pub fn chat_completion(meta: &Meta, answer: &Answer, reason: FinishReason, u: &Usage) -> Value {
    let mut message = json!({"role": "assistant", "content": if answer.calls.is_empty() || !answer.content.is_empty() {
        Value::String(answer.content.clone())
    } else {
        Value::Null
    }});
    if !answer.reasoning.is_empty() {
        message["reasoning_content"] = answer.reasoning.clone().into();
    }
    if !answer.calls.is_empty() {
        message["tool_calls"] = answer.calls.iter().enumerate().map(|(i, c)| tool_call(meta, i, c)).collect();
    }
    json!({
        "id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
        "choices": [{"index": 0, "message": message, "logprobs": null,
                     "finish_reason": finish_reason(reason, answer.calls.len(), answer.cut_call)}],
        "usage": usage(u),
    })
}

/// A whole `text_completion`.
pub fn text_completion(meta: &Meta, text: &str, reason: FinishReason, u: &Usage) -> Value {
    json!({
        "id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model,
        "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason(reason, 0, false)}],
        "usage": usage(u),
    })
}

/// The stream's last line.
pub const DONE: &str = "data: [DONE]\n\n";

/// A chat answer streamed as chunks.
pub struct ChatStream {
    /// The request.
    pub running: Submitted,
    /// The ids and model.
    pub meta: Meta,
    /// Splits the text.
    pub splitter: Option<Splitter>,
    /// Send a last chunk with the usage.
    pub include_usage: bool,
    /// Tool calls sent so far.
    pub calls: usize,
    /// The first chunk (the role) was sent.
    pub started: bool,
    /// The stream has ended.
    pub ended: bool,
}

impl ChatStream {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({"id": self.meta.id, "object": "chat.completion.chunk", "created": self.meta.created, "model": self.meta.model,
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    }

    fn pieces(&mut self, pieces: Vec<Piece>, out: &mut String) {
        for p in pieces {
            let delta = match p {
                Piece::Content(t) => json!({"content": t}),
                Piece::Reasoning(t) => json!({"reasoning_content": t}),
                Piece::Call(c) => {
                    let mut call = tool_call(&self.meta, self.calls, &c);
                    call["index"] = self.calls.into();
                    self.calls += 1;
                    json!({"tool_calls": [call]})
                }
            };
            out.push_str(&format!("data: {}\n\n", self.chunk(delta, None)));
        }
    }

    /// The next frames (`None` once the stream has ended).
    pub async fn next_frames(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        let event = self.running.next().await;
        let mut out = String::new();
        if !self.started {
            self.started = true;
            out.push_str(&format!("data: {}\n\n", self.chunk(json!({"role": "assistant", "content": ""}), None)));
        }
        match event {
            Some(EventBody::Token { text }) => {
                let pieces = self.splitter.as_mut().map(|s| s.push(&text)).unwrap_or_default();
                self.pieces(pieces, &mut out);
            }
            Some(EventBody::Done { finish_reason: reason, usage: u, .. }) => {
                let end = self.splitter.take().map(Splitter::finish);
                let cut = end.as_ref().is_some_and(|e| e.cut_call);
                self.pieces(end.map(|e| e.pieces).unwrap_or_default(), &mut out);
                let finish = finish_reason(reason, self.calls, cut);
                out.push_str(&format!("data: {}\n\n", self.chunk(json!({}), Some(finish))));
                if self.include_usage {
                    out.push_str(&usage_frame(&self.meta, "chat.completion.chunk", &u));
                }
                out.push_str(DONE);
                self.ended = true;
            }
            other => self.ended = end_frames(other, &mut out),
        }
        Some(Bytes::from(out))
    }
}

/// The last chunk of a stream that asked for `stream_options.include_usage`.
fn usage_frame(meta: &Meta, object: &str, u: &Usage) -> String {
    let last = json!({"id": meta.id, "object": object, "created": meta.created, "model": meta.model, "choices": [], "usage": usage(u)});
    format!("data: {last}\n\n")
}

/// The frames that end a stream on an event other than a token or `done` (an error is sent as
/// OpenAI's error object before `[DONE]`). Returns whether the stream has ended: any such event
/// ends it.
fn end_frames(event: Option<EventBody>, out: &mut String) -> bool {
    if let Some(EventBody::Error { code, message }) = event {
        out.push_str(&format!("data: {}\n\n", super::super::error::OpenAiError::from_code(code, message).body()));
    }
    out.push_str(DONE);
    true
}

/// A text completion streamed as chunks.
pub struct TextStream {
    /// The request.
    pub running: Submitted,
    /// The ids and model.
    pub meta: Meta,
    /// Send a last chunk with the usage.
    pub include_usage: bool,
    /// The stream has ended.
    pub ended: bool,
}

impl TextStream {
    fn chunk(&self, text: &str, finish: Option<&str>) -> Value {
        json!({"id": self.meta.id, "object": "text_completion", "created": self.meta.created, "model": self.meta.model,
               "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]})
    }

    /// The next frames (`None` once the stream has ended).
    pub async fn next_frames(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        let event = self.running.next().await;
        let mut out = String::new();
        match event {
            Some(EventBody::Token { text }) => out.push_str(&format!("data: {}\n\n", self.chunk(&text, None))),
            Some(EventBody::Done { finish_reason: reason, usage: u, .. }) => {
                out.push_str(&format!("data: {}\n\n", self.chunk("", Some(finish_reason(reason, 0, false)))));
                if self.include_usage {
                    out.push_str(&usage_frame(&self.meta, "text_completion", &u));
                }
                out.push_str(DONE);
                self.ended = true;
            }
            other => self.ended = end_frames(other, &mut out),
        }
        Some(Bytes::from(out))
    }
}
