//! The model's own way of writing an assistant turn (Qwen3.5's chat format): a thinking block
//! (`<think>…</think>`), free text, and native tool calls
//! (`<tool_call>\n<function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>\n…</function>\n</tool_call>`).
//! Pure text work with no model or I/O:
//!
//! - [`format`]: the call syntax itself — written, read, and the pieces of a grammar — its one
//!   owner, used by the chat tools here and by the intent catalog;
//! - [`grammar`]: the Lark grammar (llguidance's dialect) that holds an answer to the tool
//!   choice of a request — one call, one named call, or free text in which any call that is
//!   opened is a valid one — with each argument valid under the tool's `parameters` schema.
//! - [`parse`]: a streaming splitter of generated text into reasoning, content and parsed tool
//!   calls, which the transports turn into their APIs' shapes.
//!
//! It depends only on `qwenedge-api`, so the scheduler (which compiles the grammar), the intent
//! catalog and the transports (which parse the output) can all use it.

pub mod format;
pub mod grammar;
pub mod parse;

pub use grammar::{tool_grammar, Markers, ToolConstraint};
pub use parse::{Piece, Splitter, ToolCall};

/// Opens a tool call.
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
/// Closes a tool call.
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";
/// Opens a thinking block.
pub const THINK_OPEN: &str = "<think>";
/// Closes a thinking block.
pub const THINK_CLOSE: &str = "</think>";
