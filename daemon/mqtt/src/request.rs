//! One MQTT request message → a typed request and the place its answers go. The payload is the
//! socket's JSON plus one MQTT-only field, `reply_to`, which is taken out here before the
//! shared parser (which refuses unknown fields) sees the rest. Answers go to the MQTT 5
//! response topic (with its correlation data), else to `reply_to`, else to the default
//! response topic of the request id.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::topics::Topics;
use qwenedge_api::{parse_request, BadRequest, Limits, Request, MAX_ID_LEN};
use qwenedge_config::mqtt::is_topic_name;

/// Where a request's events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Topic.
    pub topic: String,
    /// MQTT 5 correlation data, echoed on every event.
    pub correlation: Option<Bytes>,
}

/// A request message as received.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The payload.
    pub payload: &'a [u8],
    /// MQTT 5 response topic.
    pub response_topic: Option<&'a str>,
    /// MQTT 5 correlation data.
    pub correlation: Option<&'a Bytes>,
    /// Arrived on the fleet topic (default replies go to `qwenedge/fleet/response/<id>`).
    pub fleet: bool,
}

/// The outcome of reading one request message.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// Where answers go, when that can be told.
    pub reply: Option<Reply>,
    /// The request, or why it is refused.
    pub request: Result<Request, BadRequest>,
}

/// Just enough of a request to answer it.
#[derive(Deserialize)]
struct Envelope {
    id: Option<Value>,
    reply_to: Option<Value>,
}

fn readable_id(id: Option<&Value>) -> Option<String> {
    id.and_then(Value::as_str).filter(|s| !s.is_empty() && s.len() <= MAX_ID_LEN).map(str::to_string)
}

/// Reads a request message of at most `max_payload` bytes, under `limits`.
pub fn route(msg: Incoming<'_>, topics: &Topics, max_payload: usize, limits: &Limits) -> Routed {
    let v5_reply =
        msg.response_topic.filter(|t| is_topic_name(t)).map(|t| Reply { topic: t.to_string(), correlation: msg.correlation.cloned() });
    let reply_for = |reply_to: Option<String>, id: Option<&str>| {
        v5_reply
            .clone()
            .or_else(|| reply_to.map(|topic| Reply { topic, correlation: None }))
            .or_else(|| id.and_then(|id| topics.default_reply(msg.fleet, id)).map(|topic| Reply { topic, correlation: None }))
    };
    if msg.payload.len() > max_payload {
        let envelope = serde_json::from_slice::<Envelope>(msg.payload).ok();
        let id = envelope.as_ref().and_then(|e| readable_id(e.id.as_ref()));
        let reply_to = envelope.and_then(|e| e.reply_to).and_then(|v| v.as_str().map(str::to_string)).filter(|t| is_topic_name(t));
        let message = format!("payload is {} bytes, more than mqtt.max_payload_bytes ({max_payload})", msg.payload.len());
        return Routed { reply: reply_for(reply_to, id.as_deref()), request: Err(BadRequest { id, message }) };
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(msg.payload) else {
        // Not a JSON object: the shared parser says what is wrong in the socket's words.
        let request = parse_request(msg.payload, limits);
        let id = request.as_ref().ok().map(|r| r.id.as_str().to_string());
        return Routed { reply: reply_for(None, id.as_deref()), request };
    };
    let id = readable_id(obj.get("id"));
    let bad = |message: String| Err(BadRequest { id: id.clone(), message });
    let (reply_to, problem) = match obj.remove("reply_to") {
        None => (None, None),
        Some(Value::String(t)) if is_topic_name(&t) => (Some(t), None),
        Some(Value::String(t)) => (None, Some(format!("reply_to: {t:?} is not a topic name (1-65535 bytes, no '+', '#')"))),
        Some(_) => (None, Some("reply_to: must be a string".to_string())),
    };
    let reply = reply_for(reply_to, id.as_deref());
    if let Some(message) = problem {
        return Routed { reply, request: bad(message) };
    }
    let body = serde_json::to_vec(&Value::Object(obj)).unwrap_or_default();
    Routed { reply, request: parse_request(&body, limits) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwenedge_api::Op;

    fn topics() -> Topics {
        Topics::new("dev", None, "homeassistant")
    }

    fn route_plain(payload: &str) -> Routed {
        route(
            Incoming { payload: payload.as_bytes(), response_topic: None, correlation: None, fleet: false },
            &topics(),
            1024,
            &Limits { max_tokens: 100 },
        )
    }

    #[test]
    fn reply_to_is_taken_out_before_parsing() {
        let r = route_plain(r#"{"id":"a","op":"status","reply_to":"my/inbox"}"#);
        assert_eq!(r.reply.unwrap().topic, "my/inbox");
        assert_eq!(r.request.unwrap().op, Op::Status);
    }

    #[test]
    fn the_response_topic_wins_and_carries_its_correlation_data() {
        let corr = Bytes::from_static(b"\x01\x02");
        let payload = br#"{"id":"a","op":"models","reply_to":"ignored"}"#;
        let r = route(
            Incoming { payload, response_topic: Some("v5/inbox"), correlation: Some(&corr), fleet: false },
            &topics(),
            1024,
            &Limits { max_tokens: 100 },
        );
        assert_eq!(r.reply, Some(Reply { topic: "v5/inbox".into(), correlation: Some(corr) }));
        assert!(r.request.is_ok());
    }

    #[test]
    fn default_replies_follow_the_id_and_the_topic_it_came_on() {
        assert_eq!(route_plain(r#"{"id":"r7","op":"status"}"#).reply.unwrap().topic, "qwenedge/dev/response/r7");
        let payload = br#"{"id":"r7","op":"status"}"#;
        let r =
            route(Incoming { payload, response_topic: None, correlation: None, fleet: true }, &topics(), 1024, &Limits { max_tokens: 100 });
        assert_eq!(r.reply.unwrap().topic, "qwenedge/fleet/response/r7");
    }

    #[test]
    fn bad_payloads_are_refused_with_a_reply_when_one_can_be_told() {
        let cases = [
            (
                r#"{"id":"big","op":"complete","prompt":"PAD"}"#.replace("PAD", &"x".repeat(2000)),
                Some("qwenedge/dev/response/big"),
                "max_payload_bytes",
            ),
            ("{not json".to_string(), None, "invalid JSON"),
            (r#"{"id":"t","op":"complete","prompt":"x","stream":"yes"}"#.to_string(), Some("qwenedge/dev/response/t"), "invalid type"),
            (r#"{"id":"w","op":"status","reply_to":5}"#.to_string(), Some("qwenedge/dev/response/w"), "reply_to: must be a string"),
            (r#"{"id":"w","op":"status","reply_to":"a/#"}"#.to_string(), Some("qwenedge/dev/response/w"), "reply_to:"),
            (r#"{"id":"c","op":"chat","messages":[],"reply_to":"box"}"#.to_string(), Some("box"), "messages"),
            (r#"{"id":"a+b","op":"status"}"#.to_string(), None, ""),
        ];
        for (payload, reply, needle) in cases {
            let r = route_plain(&payload);
            assert_eq!(r.reply.map(|r| r.topic).as_deref(), reply, "{payload}");
            if needle.is_empty() {
                continue;
            }
            let e = r.request.unwrap_err();
            assert!(e.message.contains(needle), "{needle}: {}", e.message);
        }
    }
}
