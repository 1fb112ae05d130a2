//! Voice-assistant intents: the catalog (`catalog`), how a catalog becomes the model's prompt
//! and the grammar its answer is held to (`grammar`), and how the answer becomes an
//! [`Intent`] with typed slots and a confidence (`result`). The engine only sees a chat prompt
//! and a grammar; everything intent-specific lives here.

pub mod catalog;
pub mod grammar;
pub mod result;

pub use catalog::{AreaDef, Catalog, CatalogError, Device, FloorDef, MAX_TEXT_LEN};
pub use result::{Intent, ParseError};

use qwenedge_api::{EventBody, IntentSource, IntentSummary, RequestTimings, Usage};
use qwenedge_engine::chat::ChatInput;
use qwenedge_toolcall::Markers;

/// What the engine needs to answer one utterance: the chat to render and the grammar.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// System prompt, the catalog as tools, and the utterance.
    pub chat: ChatInput,
    /// Lark grammar of the allowed answers.
    pub grammar: String,
    /// Whether any intent is allowed at all (a filter may exclude them all).
    pub any_intent: bool,
    /// Tokens enough for the longest answer the grammar admits (every token has a byte).
    pub max_tokens: usize,
}

/// Builds the prompt and grammar for `text` against the intents `filter` allows, with the
/// tool-call markers written as the model's tokenizer writes them (`markers`). The prompt
/// always lists the whole catalog — it is the same for every request, so the pinned catalog
/// prefix serves filtered requests too — and the filter applies in the grammar only.
pub fn prepare(catalog: &Catalog, text: &str, filter: Option<&[String]>, markers: &Markers) -> Prepared {
    let intents = grammar::select(catalog, filter);
    let all = grammar::select(catalog, None);
    let messages = vec![
        serde_json::json!({"role": "system", "content": grammar::system_prompt(catalog)}),
        // Whitespace around an utterance means nothing; without it the user turn's header
        // ends a pre-token, so the pinned catalog prefix (which ends there) is always found.
        serde_json::json!({"role": "user", "content": text.trim()}),
    ];
    let tools = (!all.is_empty()).then(|| grammar::tools(catalog, &all));
    Prepared {
        chat: ChatInput { messages, tools, add_generation_prompt: true, enable_thinking: Some(false) },
        grammar: grammar::lark(catalog, &intents, markers),
        any_intent: !intents.is_empty(),
        max_tokens: grammar::max_bytes(catalog, &intents) + 1,
    }
}

/// The terminal `intent` event for the model's answer `output` to `input`: recognised when it
/// is a call of a catalog intent whose confidence reaches `min_confidence`. An answer that is
/// not a valid call (it did not come through the grammar) is an error.
pub fn event(
    catalog: &Catalog,
    output: &str,
    input: &str,
    confidence: f64,
    min_confidence: f64,
    usage: Usage,
    timings: RequestTimings,
) -> Result<EventBody, result::ParseError> {
    // Four decimals: what a threshold needs, without float noise of the last digits.
    let confidence = (confidence * 1e4).round() / 1e4;
    let parsed = result::parse(catalog, output, input, confidence)?;
    let recognized = parsed.as_ref().is_some_and(|i| i.confidence >= min_confidence);
    let (intent, slots) = match parsed {
        Some(i) => {
            let slots = if recognized { i.slots } else { Vec::new() };
            (Some(IntentSummary { name: i.name, confidence: i.confidence }), slots)
        }
        None => (None, Vec::new()),
    };
    Ok(EventBody::Intent {
        recognized,
        intent,
        slots,
        text: output.to_string(),
        source: IntentSource::Model,
        metadata: None,
        usage,
        timings,
    })
}
