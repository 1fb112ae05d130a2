//! `requires_context` and `excludes_context`: hassil's `check_required_context`,
//! `check_excluded_context` and `_copy_and_check_required_context`, over JSON values
//! (a string, a list of allowed values, `null` for "any value", or `{value, slot}`).

use serde_json::{Map, Value};

/// Python's `==` between two JSON values (numbers by value).
pub(crate) fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Bool(x), Value::Number(y)) | (Value::Number(y), Value::Bool(x)) => y.as_f64() == Some(f64::from(u8::from(*x))),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q)),
        _ => a == b,
    }
}

/// Python's `x in collection` for a list (or the keys of an object).
fn contains(collection: &Value, x: &Value) -> Option<bool> {
    match collection {
        Value::Array(items) => Some(items.iter().any(|i| same(i, x))),
        Value::Object(map) => Some(x.as_str().is_some_and(|k| map.contains_key(k))),
        _ => None,
    }
}

/// A `{value: …}` object stands for its value.
fn unwrap(v: &Value) -> Value {
    match v {
        Value::Object(map) => map.get("value").cloned().unwrap_or(Value::Null),
        other => other.clone(),
    }
}

/// True if `actual` does not contradict `required` (keys it lacks pass when `allow_missing`).
pub(crate) fn required_ok(required: &Map<String, Value>, actual: Option<&Map<String, Value>>, allow_missing: bool) -> bool {
    for (key, want) in required {
        let Some(have) = actual.filter(|a| !a.is_empty()).and_then(|a| a.get(key)) else {
            if allow_missing {
                continue;
            }
            return false;
        };
        let want = unwrap(want);
        let have = unwrap(have);
        match contains(&want, &have) {
            Some(true) => {}
            Some(false) => return false,
            None => {
                if !want.is_null() && !same(&have, &want) {
                    return false;
                }
            }
        }
    }
    true
}

/// True if `actual` has none of the excluded values.
pub(crate) fn excluded_ok(excluded: &Map<String, Value>, actual: Option<&Map<String, Value>>) -> bool {
    for (key, unwanted) in excluded {
        let Some(have) = actual.filter(|a| !a.is_empty()).and_then(|a| a.get(key)) else { continue };
        let unwanted = unwrap(unwanted);
        let have = unwrap(have);
        match contains(&unwanted, &have) {
            Some(true) => return false,
            Some(false) => {}
            None => {
                if same(&have, &unwanted) {
                    return false;
                }
            }
        }
    }
    true
}

/// A slot copied from the context (`{area: {slot: true}}`).
pub(crate) struct ContextSlot {
    pub name: String,
    pub value: Value,
    pub text: String,
    pub metadata: Option<Value>,
}

/// Checks `required` against the context a match ended with, and collects the slots it copies
/// (`None` when the context does not satisfy it).
pub(crate) fn copy_required(required: &Map<String, Value>, context: &Map<String, Value>) -> Option<Vec<ContextSlot>> {
    let mut slots = Vec::new();
    for (key, want) in required {
        let mut copy_to = None;
        let mut want = want.clone();
        if let Value::Object(map) = &want {
            match map.get("slot") {
                Some(Value::String(name)) => copy_to = Some(name.clone()),
                Some(v) if truthy(v) => copy_to = Some(key.clone()),
                _ => {}
            }
            want = map.get("value").cloned().unwrap_or(Value::Null);
        }
        let mut actual = context.get(key).cloned().unwrap_or(Value::Null);
        let mut text = String::new();
        let mut metadata = None;
        if let Value::Object(map) = &actual {
            text = map.get("text").and_then(Value::as_str).unwrap_or("").to_string();
            metadata = map.get("metadata").cloned();
            actual = map.get("value").cloned().unwrap_or(Value::Null);
        }
        let ok = (!want.is_null() && same(&actual, &want))
            || (want.is_null() && !actual.is_null())
            || (!want.is_string() && contains(&want, &actual) == Some(true));
        if !ok {
            return None;
        }
        if let Some(name) = copy_to {
            slots.push(ContextSlot { name, value: actual, text, metadata });
        }
    }
    Some(slots)
}

/// Python's truthiness of a JSON value.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn required_and_excluded_context() {
        let req = map(json!({"domain": ["light", "switch"], "area": {"slot": true}}));
        assert!(required_ok(&req, Some(&map(json!({"domain": "light"}))), true));
        assert!(!required_ok(&req, Some(&map(json!({"domain": "fan"}))), true));
        assert!(required_ok(&req, None, true));
        assert!(!required_ok(&req, None, false));
        let exc = map(json!({"domain": "scene"}));
        assert!(!excluded_ok(&exc, Some(&map(json!({"domain": "scene"})))));
        assert!(excluded_ok(&exc, Some(&map(json!({"domain": "light"})))));
        let slots = copy_required(&req, &map(json!({"domain": "light", "area": "Kitchen"}))).unwrap();
        assert_eq!(slots.len(), 1);
        assert_eq!((slots[0].name.as_str(), &slots[0].value), ("area", &json!("Kitchen")));
        assert!(copy_required(&req, &map(json!({"domain": "light"}))).is_none());
    }
}
