//! The Hermes protocol (Rhasspy / Snips voice assistants), NLU side: a query on
//! `hermes/nlu/query` is answered with `hermes/nlu/intentParsed` plus `hermes/intent/<name>`
//! when an intent is recognised, else `hermes/nlu/intentNotRecognized`; a payload that is not a
//! query gets `hermes/error/nlu`. Recognition is an `intent` request through the scheduler
//! ([`request`]); its terminal event becomes the Hermes messages ([`reply`]). Everything here
//! is the wire format, without I/O.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use qwenedge_api::{EventBody, GenerateRequest, GenerateSpec, Limits, Place, Prompt, Sampling};

/// Where queries arrive.
pub const QUERY: &str = "hermes/nlu/query";

/// A `hermes/nlu/query`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NluQuery {
    /// The text to understand.
    pub input: String,
    /// Only these intents may be answered (`None` = any).
    #[serde(default)]
    pub intent_filter: Option<Vec<String>>,
    /// Query id, echoed.
    #[serde(default)]
    pub id: Option<String>,
    /// Satellite that heard it.
    #[serde(default = "default_site")]
    pub site_id: String,
    /// Dialogue session, echoed.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Opaque data, echoed.
    #[serde(default)]
    pub custom_data: Option<Value>,
}

fn default_site() -> String {
    "default".into()
}

/// A recognised intent.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    /// Intent name (`ChangeLightState`).
    pub name: String,
    /// 0–1.
    pub confidence: f64,
    /// Filled slots.
    pub slots: Vec<Slot>,
}

/// One slot of an intent.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    /// Entity type (`color`, `rhasspy/number`).
    pub entity: String,
    /// Slot name in the intent.
    pub slot_name: String,
    /// The words as spoken.
    pub raw_value: String,
    /// The normalised value: `{"kind": "Custom" | "Number" | …, "value": …}`.
    pub value: SlotValue,
    /// Character range in `input`, when the value was heard there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<SlotRange>,
    /// 0–1.
    pub confidence: f64,
}

/// A slot's normalised value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlotValue {
    /// `Custom`, `Number`, …
    pub kind: String,
    /// The value.
    pub value: Value,
}

/// A range of characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SlotRange {
    /// First character.
    pub start: usize,
    /// One past the last character.
    pub end: usize,
}

/// A payload on the query topic that is not a query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct NluError {
    /// The session, when it could be read.
    pub session_id: Option<String>,
    /// The site, when it could be read.
    pub site_id: String,
    /// What is wrong.
    pub error: String,
    /// The start of the offending payload.
    pub context: String,
}

/// Reads a query of at most `max_payload` bytes (`mqtt.max_payload_bytes`).
pub fn parse_query(payload: &[u8], max_payload: usize) -> Result<NluQuery, NluError> {
    let error = |message: String| {
        // The link bounds what arrives (16 × the payload limit); reading the session back lets
        // the dialogue manager match the error to its query.
        let loose: Option<Map<String, Value>> = serde_json::from_slice(payload).ok();
        let field = |k: &str| loose.as_ref().and_then(|m| m.get(k)).and_then(Value::as_str).map(str::to_string);
        let text = String::from_utf8_lossy(&payload[..payload.len().min(800)]);
        NluError {
            session_id: field("sessionId"),
            site_id: field("siteId").unwrap_or_else(default_site),
            error: message,
            context: text.chars().take(200).collect(),
        }
    };
    if payload.len() > max_payload {
        return Err(error(format!("payload is {} bytes, more than mqtt.max_payload_bytes ({max_payload})", payload.len())));
    }
    serde_json::from_slice::<NluQuery>(payload).map_err(|e| error(format!("not an NLU query: {e}")))
}

/// The `intent` request that recognises `query`: its input, restricted to its intent filter,
/// sampled at `temperature`, under the same limits as every other request (the error names
/// the limit).
pub fn request(query: &NluQuery, temperature: f32, limits: &Limits) -> Result<GenerateRequest, NluError> {
    let place = Place { site_id: Some(query.site_id.clone()), ..Place::default() };
    let mut spec = GenerateSpec::new(Prompt::Intent { text: query.input.clone(), filter: query.intent_filter.clone(), place });
    spec.sampling = Sampling { temperature, ..Sampling::default() };
    GenerateRequest::new(spec, limits).map_err(|e| NluError {
        session_id: query.session_id.clone(),
        site_id: query.site_id.clone(),
        error: format!("not accepted: {e}"),
        context: query.input.chars().take(200).collect(),
    })
}

/// The messages that answer `query` once its request ended with `event`: the intent when one
/// was recognised, `intentNotRecognized` when none was, `hermes/error/nlu` when it failed.
pub fn reply(query: &NluQuery, event: &EventBody) -> Vec<(String, Vec<u8>)> {
    match event {
        EventBody::Intent { recognized: true, intent: Some(i), slots, .. } => {
            let intent = Intent {
                name: i.name.clone(),
                confidence: i.confidence,
                slots: slots.iter().map(|s| hermes_slot(s, i.confidence)).collect(),
            };
            answer(query, Some(&intent))
        }
        EventBody::Error { message, .. } => {
            let e = NluError {
                session_id: query.session_id.clone(),
                site_id: query.site_id.clone(),
                error: message.clone(),
                context: query.input.chars().take(200).collect(),
            };
            vec![error_message(&e)]
        }
        _ => answer(query, None),
    }
}

/// A slot of an `intent` event in Hermes' shape.
fn hermes_slot(s: &qwenedge_api::Slot, confidence: f64) -> Slot {
    let kind = if s.value.is_number() { "Number" } else { "Custom" };
    Slot {
        entity: s.name.clone(),
        slot_name: s.name.clone(),
        raw_value: s.raw_value.clone(),
        value: SlotValue { kind: kind.into(), value: s.value.clone() },
        range: s.range.map(|r| SlotRange { start: r.start, end: r.end }),
        confidence,
    }
}

/// The messages that answer `query` given what was recognised (topic, payload).
pub fn answer(query: &NluQuery, intent: Option<&Intent>) -> Vec<(String, Vec<u8>)> {
    let allowed = |i: &&Intent| query.intent_filter.as_ref().is_none_or(|f| f.iter().any(|n| n == &i.name));
    let mut base = Map::new();
    base.insert("input".into(), query.input.clone().into());
    match intent.filter(allowed) {
        Some(intent) => {
            base.insert("intent".into(), json!({"intentName": intent.name, "confidenceScore": intent.confidence}));
            base.insert("slots".into(), serde_json::to_value(&intent.slots).unwrap_or_default());
            base.insert("id".into(), json!(query.id));
            base.insert("siteId".into(), query.site_id.clone().into());
            base.insert("sessionId".into(), json!(query.session_id));
            if let Some(c) = &query.custom_data {
                base.insert("customData".into(), c.clone());
            }
            let payload = serde_json::to_vec(&base).unwrap_or_default();
            vec![("hermes/nlu/intentParsed".into(), payload.clone()), (format!("hermes/intent/{}", intent.name), payload)]
        }
        None => {
            base.insert("id".into(), json!(query.id));
            base.insert("siteId".into(), query.site_id.clone().into());
            base.insert("sessionId".into(), json!(query.session_id));
            if let Some(c) = &query.custom_data {
                base.insert("customData".into(), c.clone());
            }
            vec![("hermes/nlu/intentNotRecognized".into(), serde_json::to_vec(&base).unwrap_or_default())]
        }
    }
}

/// The `hermes/error/nlu` message for a payload that is not a query.
pub fn error_message(e: &NluError) -> (String, Vec<u8>) {
    let payload = json!({"sessionId": e.session_id, "siteId": e.site_id, "error": e.error, "context": e.context});
    ("hermes/error/nlu".into(), serde_json::to_vec(&payload).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_tokens: 100 };

    fn parsed(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn parse_query_1k(payload: &[u8]) -> Result<NluQuery, NluError> {
        parse_query(payload, 1024)
    }

    #[test]
    fn queries_over_the_limits_are_nlu_errors_naming_the_limit() {
        let big = format!(r#"{{"input":"{}","sessionId":"s1"}}"#, "x".repeat(2000));
        let e = parse_query(big.as_bytes(), 1024).unwrap_err();
        assert!(e.error.contains("mqtt.max_payload_bytes (1024)"), "{}", e.error);
        let long = format!(r#"{{"input":"{}","sessionId":"s2"}}"#, "word ".repeat(500));
        let q = parse_query(long.as_bytes(), 1 << 20).unwrap();
        let e = request(&q, 0.0, &LIMITS).unwrap_err();
        assert!(e.error.contains("text: must be 1 to 2000 bytes"), "{}", e.error);
        assert_eq!(e.session_id.as_deref(), Some("s2"));
        let names: Vec<String> = (0..1001).map(|i| format!("I{i}")).collect();
        let q = NluQuery { intent_filter: Some(names), ..parse_query_1k(br#"{"input":"hi"}"#).unwrap() };
        assert!(request(&q, 0.0, &LIMITS).unwrap_err().error.contains("intent_filter: at most 1000"));
        assert_eq!(error_message(&e).0, "hermes/error/nlu");
    }

    fn light_intent() -> Intent {
        Intent {
            name: "ChangeLightState".into(),
            confidence: 0.75,
            slots: vec![Slot {
                entity: "room".into(),
                slot_name: "room".into(),
                raw_value: "kitchen".into(),
                value: SlotValue { kind: "Custom".into(), value: "kitchen".into() },
                range: Some(SlotRange { start: 12, end: 19 }),
                confidence: 1.0,
            }],
        }
    }

    #[test]
    fn a_query_with_defaults() {
        let q = parse_query(br#"{"input":"turn on the kitchen light","futureField":1}"#, 1024).unwrap();
        assert_eq!((q.site_id.as_str(), q.id.as_deref(), q.intent_filter.as_ref()), ("default", None, None));
        let r = request(&q, 0.0, &LIMITS).unwrap();
        let place = Place { site_id: Some("default".into()), ..Place::default() };
        assert_eq!(r.prompt(), &Prompt::Intent { text: "turn on the kitchen light".into(), filter: None, place });
    }

    #[test]
    fn unrecognised_queries_echo_their_fields() {
        let q = parse_query_1k(br#"{"input":"hello","id":"q1","siteId":"hall","sessionId":"s1","customData":{"k":1}}"#).unwrap();
        let out = answer(&q, None);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "hermes/nlu/intentNotRecognized");
        assert_eq!(parsed(&out[0].1), json!({"input":"hello","id":"q1","siteId":"hall","sessionId":"s1","customData":{"k":1}}));
    }

    #[test]
    fn a_recognised_intent_is_parsed_and_published_under_its_name() {
        let q = parse_query_1k(br#"{"input":"turn on the kitchen light","id":"q2","siteId":"hall","sessionId":"s2"}"#).unwrap();
        let out = answer(&q, Some(&light_intent()));
        let topics: Vec<&str> = out.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(topics, ["hermes/nlu/intentParsed", "hermes/intent/ChangeLightState"]);
        let want = json!({
            "input": "turn on the kitchen light",
            "intent": {"intentName": "ChangeLightState", "confidenceScore": 0.75},
            "slots": [{"entity": "room", "slotName": "room", "rawValue": "kitchen",
                       "value": {"kind": "Custom", "value": "kitchen"}, "range": {"start": 12, "end": 19}, "confidence": 1.0}],
            "id": "q2", "siteId": "hall", "sessionId": "s2",
        });
        assert_eq!(parsed(&out[0].1), want);
        assert_eq!(out[0].1, out[1].1);
    }

    #[test]
    fn intent_events_become_hermes_messages() {
        let q = parse_query_1k(br#"{"input":"kitchen light to 40","id":"q3"}"#).unwrap();
        let slot = qwenedge_api::Slot {
            name: "brightness".into(),
            value: json!(40),
            raw_value: "40".into(),
            entity: None,
            range: Some(qwenedge_api::SlotRange { start: 17, end: 19 }),
        };
        let event = EventBody::Intent {
            recognized: true,
            intent: Some(qwenedge_api::IntentSummary { name: "HassLightSet".into(), confidence: 0.5 }),
            slots: vec![slot],
            text: String::new(),
            source: Default::default(),
            metadata: None,
            usage: Default::default(),
            timings: Default::default(),
        };
        let out = reply(&q, &event);
        assert_eq!(out[1].0, "hermes/intent/HassLightSet");
        let v = parsed(&out[1].1);
        assert_eq!(v["slots"][0]["value"], json!({"kind": "Number", "value": 40}));
        assert_eq!(v["slots"][0]["range"], json!({"start": 17, "end": 19}));
        let failed = reply(&q, &EventBody::Error { code: qwenedge_api::ErrorCode::Overloaded, message: "busy".into() });
        assert_eq!(failed[0].0, "hermes/error/nlu");
    }

    #[test]
    fn the_intent_filter_is_obeyed() {
        let q = parse_query_1k(br#"{"input":"x","intentFilter":["GetTime"]}"#).unwrap();
        assert_eq!(answer(&q, Some(&light_intent()))[0].0, "hermes/nlu/intentNotRecognized");
    }

    #[test]
    fn malformed_queries_become_nlu_errors() {
        for (payload, session) in
            [(&br#"{"sessionId":"s9","siteId":"hall"}"#[..], Some("s9")), (b"not json", None), (br#"{"input":5}"#, None)]
        {
            let e = parse_query(payload, 1024).unwrap_err();
            assert_eq!(e.session_id.as_deref(), session);
            let (topic, bytes) = error_message(&e);
            assert_eq!(topic, "hermes/error/nlu");
            let v = parsed(&bytes);
            assert!(v["error"].as_str().unwrap().contains("not an NLU query"), "{v}");
            assert_eq!(v["context"], String::from_utf8_lossy(payload).as_ref());
        }
    }
}
