//! Reading the model's answer back: a native tool call (`<tool_call>\n<function=NAME>\n
//! <parameter=SLOT>\nVALUE\n</parameter>\n…</function>\n</tool_call>`) becomes an [`Intent`]
//! with typed slot values, the entity a value names and where it was heard in the input; any
//! other answer is "no intent". Every value is checked against the catalog again, so an answer
//! that did not come through the grammar is never trusted.

use qwenedge_toolcall::format;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::catalog::{Catalog, SlotKind};
use qwenedge_api::{Slot, SlotRange};

/// A recognised intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// Intent name (`HassLightSet`).
    pub name: String,
    /// The model's confidence, 0–1.
    pub confidence: f64,
    /// Filled slots, in the order the model wrote them.
    pub slots: Vec<Slot>,
}

/// Why an answer is not a valid intent call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid intent call: {0}")]
pub struct ParseError(pub String);

/// Reads `output`: `Ok(None)` for a call of `NoIntent`, `Ok(Some)` for a valid call of a
/// catalog intent, `Err` for a call that is malformed or breaks the catalog's types.
pub fn parse(catalog: &Catalog, output: &str, input: &str, confidence: f64) -> Result<Option<Intent>, ParseError> {
    let err = |m: String| ParseError(m);
    let call = format::read_call(output).map_err(|e| err(e.to_string()))?;
    let name = call.name;
    if name == super::grammar::NO_INTENT {
        return match call.params.is_empty() {
            true => Ok(None),
            false => Err(err(format!("{name} takes no parameters"))),
        };
    }
    let def = catalog.intent(name).ok_or_else(|| err(format!("unknown intent '{name}'")))?;
    let mut slots: Vec<Slot> = Vec::new();
    for (slot_name, raw) in call.params {
        let pos = def.slots.iter().position(|s| s.name == slot_name).ok_or_else(|| err(format!("{name} has no slot '{slot_name}'")))?;
        if slots.iter().any(|s| s.name == slot_name) {
            return Err(err(format!("slot '{slot_name}' given twice")));
        }
        let slot = &def.slots[pos];
        let (value, entity) = typed(catalog, &slot.kind, raw).map_err(|m| err(format!("{name}.{slot_name}: {m}")))?;
        slots.push(Slot { name: slot_name.into(), value, raw_value: raw.into(), entity, range: find(input, raw) });
    }
    if let Some(missing) = def.slots.iter().find(|s| s.required && !slots.iter().any(|f| f.name == s.name)) {
        return Err(err(format!("{name}: required slot '{}' missing", missing.name)));
    }
    Ok(Some(Intent { name: name.into(), confidence, slots }))
}

/// The typed value of `raw` and the entity it names, or why it is outside the slot's type.
fn typed(catalog: &Catalog, kind: &SlotKind, raw: &str) -> Result<(Value, Option<String>), String> {
    match kind {
        SlotKind::Enum { values } if values.iter().any(|v| v == raw) => Ok((raw.into(), None)),
        SlotKind::Enum { .. } => Err(format!("{raw:?} is not one of the values")),
        SlotKind::Entity { source } if catalog.entity_values(*source).contains(&raw) => {
            let entity = match source {
                super::catalog::EntitySource::Name => catalog.device(raw).and_then(|d| d.entity_id.clone()),
                _ => Some(raw.to_string()),
            };
            Ok((raw.into(), entity))
        }
        SlotKind::Entity { source } => Err(format!("{raw:?} is not a device {}", source.as_str())),
        SlotKind::Text { max_len } => {
            let n = raw.chars().count();
            if n == 0 || n > *max_len || raw.contains(['<', '\n', '\r']) {
                return Err(format!("text of {n} characters is outside 1..={max_len} or has '<' or a newline"));
            }
            Ok((raw.into(), None))
        }
        SlotKind::Number { min, max, decimals, .. } => {
            let (whole, frac) = raw.split_once('.').unwrap_or((raw, ""));
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            let whole_ok =
                digits(whole.strip_prefix('-').unwrap_or(whole)) && (whole == "0" || !whole.trim_start_matches('-').starts_with('0'));
            let frac_ok = raw.contains('.') != frac.is_empty() && (frac.is_empty() || (digits(frac) && frac.len() <= *decimals as usize));
            let x: f64 = raw.parse().map_err(|_| format!("{raw:?} is not a number"))?;
            if !whole_ok || !frac_ok || x < *min as f64 || x > *max as f64 {
                return Err(format!("{raw:?} is not a number in {min}..={max} with at most {decimals} decimals"));
            }
            let value = if frac.is_empty() { Value::from(x as i64) } else { Value::from(x) };
            Ok((value, None))
        }
    }
}

/// Where `needle` occurs in `hay`, ignoring case, in characters.
fn find(hay: &str, needle: &str) -> Option<SlotRange> {
    let hay: Vec<char> = hay.chars().flat_map(char::to_lowercase).collect();
    let needle: Vec<char> = needle.chars().flat_map(char::to_lowercase).collect();
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    let start = (0..=hay.len() - needle.len()).find(|&i| hay[i..i + needle.len()] == needle[..])?;
    Some(SlotRange { start, end: start + needle.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, params: &[(&str, &str)]) -> String {
        qwenedge_toolcall::format::write_call(name, params)
    }

    #[test]
    fn a_call_becomes_typed_slots_with_ranges_and_entities() {
        let c = Catalog::builtin().unwrap();
        let input = "Set the Kitchen light to 40 percent";
        let out = call("HassLightSet", &[("name", "kitchen light"), ("brightness", "40")]);
        let i = parse(&c, &out, input, 0.9).unwrap().unwrap();
        assert_eq!(i.name, "HassLightSet");
        assert_eq!(i.slots[0].entity.as_deref(), Some("light.kitchen"));
        assert_eq!(i.slots[0].range, Some(SlotRange { start: 8, end: 21 }));
        assert_eq!(i.slots[1].value, Value::from(40));
        let out = call("HassClimateSetTemperature", &[("temperature", "19.5")]);
        assert_eq!(parse(&c, &out, "", 1.0).unwrap().unwrap().slots[0].value, Value::from(19.5));
        assert_eq!(parse(&c, &call("NoIntent", &[]), "x", 1.0).unwrap(), None);
        assert!(parse(&c, "Sorry, I can't do that.", "x", 1.0).is_err());
    }

    #[test]
    fn values_outside_their_types_are_refused() {
        let c = Catalog::builtin().unwrap();
        for (name, params) in [
            ("HassLightSet", vec![("brightness", "101")]),
            ("HassLightSet", vec![("brightness", "07")]),
            ("HassLightSet", vec![("color", "plaid")]),
            ("HassTurnOn", vec![("name", "toaster")]),
            ("HassTurnOn", vec![("name", "kitchen light"), ("name", "kitchen light")]),
            ("HassClimateSetTemperature", vec![("temperature", "19.55")]),
            ("HassClimateSetTemperature", vec![]),
            ("HassDance", vec![]),
        ] {
            assert!(parse(&c, &call(name, &params), "", 1.0).is_err(), "{name} {params:?}");
        }
    }
}
