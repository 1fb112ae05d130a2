//! A catalog as the model sees it and as the decoder enforces it: the `tools` list the chat
//! template renders (the model's native function-calling prompt), and a Lark grammar for
//! `engine::constrain` that admits exactly one native tool call: of a catalog intent with slot
//! values inside their types, or of [`NO_INTENT`], the explicit "none of these" answer. Every
//! branch of the grammar has a bounded length, so a generation under it always ends.

use qwenedge_toolcall::format::{self, lit, CALL_BYTES, PARAMETER_BYTES};
use serde_json::{json, Value};

use super::catalog::{Catalog, IntentDef, SlotKind};
use qwenedge_toolcall::Markers;

/// The function the model calls when no intent fits (a reserved intent name).
pub const NO_INTENT: &str = "NoIntent";

/// The intents of `catalog` that `filter` allows (`None` or empty: all), in catalog order.
pub fn select<'a>(catalog: &'a Catalog, filter: Option<&[String]>) -> Vec<&'a IntentDef> {
    match filter {
        Some(f) if !f.is_empty() => catalog.intents.iter().filter(|i| f.iter().any(|n| n == &i.name)).collect(),
        _ => catalog.intents.iter().collect(),
    }
}

/// The system message of an intent prompt.
pub fn system_prompt(catalog: &Catalog) -> String {
    catalog.system.clone().unwrap_or_else(|| {
        "You are a voice assistant. If the request matches one of the functions, call it; otherwise answer in one short sentence.".into()
    })
}

/// The intents as OpenAI-style tool definitions for the chat template, followed by
/// [`NO_INTENT`].
pub fn tools(catalog: &Catalog, intents: &[&IntentDef]) -> Vec<Value> {
    let none = json!({
        "type": "function",
        "function": {
            "name": NO_INTENT,
            "description": "Call this when the request matches none of the other functions.",
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    });
    intents
        .iter()
        .map(|intent| {
            let mut properties = serde_json::Map::new();
            for slot in &intent.slots {
                let mut p = match &slot.kind {
                    SlotKind::Enum { values } => json!({"type": "string", "enum": values}),
                    SlotKind::Number { min, max, decimals, .. } => {
                        json!({"type": if *decimals == 0 { "integer" } else { "number" }, "minimum": min, "maximum": max})
                    }
                    SlotKind::Text { max_len } => json!({"type": "string", "maxLength": max_len}),
                    SlotKind::Entity { source } => json!({"type": "string", "enum": catalog.entity_values(*source)}),
                };
                let unit = match &slot.kind {
                    SlotKind::Number { unit: Some(u), .. } => format!(" (unit: {u})"),
                    _ => String::new(),
                };
                if !slot.description.is_empty() || !unit.is_empty() {
                    p["description"] = format!("{}{unit}", slot.description).trim().into();
                }
                properties.insert(slot.name.clone(), p);
            }
            let required: Vec<&str> = intent.slots.iter().filter(|s| s.required).map(|s| s.name.as_str()).collect();
            json!({
                "type": "function",
                "function": {
                    "name": intent.name,
                    "description": intent.description,
                    "parameters": {"type": "object", "properties": properties, "required": required},
                },
            })
        })
        .chain(std::iter::once(none))
        .collect()
}

fn alternatives<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    values.into_iter().map(lit).collect::<Vec<_>>().join(" | ")
}

fn integer(min: i64, max: i64) -> String {
    if min == max {
        lit(&min.to_string())
    } else {
        format!("%json {{\"type\": \"integer\", \"minimum\": {min}, \"maximum\": {max}}}")
    }
}

/// The rule body of a slot value.
fn value_rule(catalog: &Catalog, kind: &SlotKind) -> String {
    match kind {
        SlotKind::Enum { values } => alternatives(values.iter().map(String::as_str)),
        SlotKind::Entity { source } => alternatives(catalog.entity_values(*source)),
        SlotKind::Text { max_len } => format!("/[^<\\n\\r]{{1,{max_len}}}/"),
        SlotKind::Number { min, max, decimals: 0, .. } => integer(*min, *max),
        SlotKind::Number { min, max, decimals, .. } if min == max => integer(*min, *max) + &format!(" /\\.0{{1,{decimals}}}/?"),
        // x.f for whole x in min..max (so x.f stays below max), or max itself.
        SlotKind::Number { min, max, decimals, .. } => {
            format!("({} /\\.[0-9]{{1,{decimals}}}/?) | {}", integer(*min, *max - 1), lit(&max.to_string()))
        }
    }
}

/// The most bytes any answer under [`lark`] can have.
pub fn max_bytes(catalog: &Catalog, intents: &[&IntentDef]) -> usize {
    let longest = |vals: &[&str]| vals.iter().map(|v| v.len()).max().unwrap_or(0);
    let calls = intents.iter().map(|intent| {
        let slots: usize = intent
            .slots
            .iter()
            .map(|slot| {
                let value = match &slot.kind {
                    SlotKind::Enum { values } => longest(&values.iter().map(String::as_str).collect::<Vec<_>>()),
                    SlotKind::Entity { source } => longest(&catalog.entity_values(*source)),
                    SlotKind::Text { max_len } => max_len * 4,
                    SlotKind::Number { min, max, decimals, .. } => {
                        min.to_string().len().max(max.to_string().len()) + *decimals as usize + 1
                    }
                };
                PARAMETER_BYTES + slot.name.len() + value
            })
            .sum();
        CALL_BYTES + intent.name.len() + slots
    });
    calls.max().unwrap_or(0).max(CALL_BYTES + NO_INTENT.len())
}

/// The Lark grammar admitting one call, in the model's native tool-call format with its
/// `markers` (the special tokens where the tokenizer has them), of one of `intents` or of
/// [`NO_INTENT`].
pub fn lark(catalog: &Catalog, intents: &[&IntentDef], markers: &Markers) -> String {
    let mut names: Vec<String> = (0..intents.len()).map(|i| format!("i{i}")).collect();
    names.push("none".into());
    let mut g = format!("start: {}\n", format::call_rule(markers, &names));
    g.push_str(&format!("none: {}\n", format::function_name(NO_INTENT)));
    for (i, intent) in intents.iter().enumerate() {
        let mut body = format::function_name(&intent.name);
        for (j, slot) in intent.slots.iter().enumerate() {
            body.push_str(&format!(" i{i}s{j}{}", if slot.required { "" } else { "?" }));
            g.push_str(&format!("i{i}s{j}: {}\n", format::parameter_rule(&slot.name, &format!("i{i}v{j}"))));
            g.push_str(&format!("i{i}v{j}: {}\n", value_rule(catalog, &slot.kind)));
        }
        g.push_str(&format!("i{i}: {body}\n"));
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_names_every_intent_and_bounds_numbers() {
        let c = Catalog::builtin().unwrap();
        let all = select(&c, None);
        assert_eq!(all.len(), c.intents.len());
        let g = lark(&c, &all, &Markers::default());
        assert!(g.contains("\"HassLightSet>\\n\""), "{g}");
        assert!(g.contains("\"maximum\": 100"), "{g}");
        let only = select(&c, Some(&["HassNevermind".to_string(), "NotThere".to_string()]));
        assert_eq!(only.len(), 1);
        assert!(!lark(&c, &only, &Markers::default()).contains("HassTurnOn"));
        assert!(lark(&c, &[], &Markers::default()).contains("start: \"<tool_call>\" \"\\n<function=\" (none)"));
        let special = Markers::from_special(|t| (t == "<tool_call>").then_some(7));
        assert!(lark(&c, &[], &special).starts_with("start: <[7]> \"\\n<function=\" (none) \"</function>\\n\" \"</tool_call>\""));
        let t = tools(&c, &only);
        assert_eq!(t[0]["function"]["name"], "HassNevermind");
        assert_eq!(t[1]["function"]["name"], NO_INTENT);
    }
}
