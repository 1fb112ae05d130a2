//! Property tests of every parser that takes bytes from outside: socket NDJSON requests, MQTT
//! payloads (generic and Hermes), HTTP bodies (OpenAI and Ollama), Wyoming frames, the TOML
//! configuration and the intent catalog. Inputs are random bytes, random JSON over the fields
//! each parser knows, and valid examples truncated or with a bit flipped. Each parser must
//! return, never panic, and an error must say something. `QWENEDGE_PROPTEST_CASES` sets the
//! cases per parser (10,000 by default; `tests/fuzz-long.sh` runs 1,000,000).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

use crate::api::Limits;

/// Cases per parser.
fn cases() -> u32 {
    std::env::var("QWENEDGE_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

/// Field names the parsers look for, so random JSON reaches past the first check.
const KEYS: &[&str] = &[
    "id",
    "op",
    "prompt",
    "messages",
    "role",
    "content",
    "text",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "tools",
    "tool_choice",
    "format",
    "response_format",
    "priority",
    "deadline_ms",
    "thinking",
    "intent_filter",
    "reply_to",
    "model",
    "options",
    "num_predict",
    "num_ctx",
    "keep_alive",
    "think",
    "input",
    "sessionId",
    "siteId",
    "intentFilter",
    "type",
    "function",
    "name",
    "parameters",
    "json_schema",
    "schema",
    "stream_options",
    "include_usage",
    "n",
    "images",
    "system",
    "raw",
    "suffix",
    "logprobs",
    "user",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![3 => prop::sample::select(KEYS).prop_map(str::to_string), 1 => "[a-z_]{1,8}"]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        prop::sample::select(&["chat", "complete", "intent", "cancel", "status", "models", "user", "system", "tool", "assistant"][..])
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Random bytes, random JSON, or one of `valid` truncated or with a bit flipped.
fn input(valid: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let example = prop::sample::select(valid);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json().prop_map(|v| v.to_string().into_bytes()),
        (example.clone(), any::<usize>()).prop_map(|(s, at)| s.as_bytes()[..at % (s.len() + 1)].to_vec()),
        (example.clone(), any::<usize>(), 0u8..8).prop_map(|(s, at, bit)| {
            let mut b = s.as_bytes().to_vec();
            let i = at % b.len();
            b[i] ^= 1 << bit;
            b
        }),
        example.prop_map(|s| s.as_bytes().to_vec()),
    ]
}

/// Runs `check` on `cases()` inputs drawn from `strategy`.
fn run<S: Strategy>(strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    run_cases(cases(), strategy, check);
}

/// Runs `check` on `n` inputs drawn from `strategy`.
fn run_cases<S: Strategy>(n: u32, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config { cases: n, failure_persistence: None, ..Config::default() });
    if let Err(e) = runner.run(&strategy, check) {
        panic!("{e}");
    }
}

fn said(msg: &str) -> Result<(), TestCaseError> {
    prop_assert!(!msg.trim().is_empty(), "an error without a message");
    Ok(())
}

const SOCKET: &[&str] = &[
    r#"{"id":"a","op":"chat","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"temperature":0.5}"#,
    r#"{"id":"b","op":"complete","prompt":"once","stop":["\n"],"seed":3,"priority":"background"}"#,
    r#"{"id":"c","op":"intent","text":"turn on the light","intent_filter":["HassTurnOn"]}"#,
    r#"{"id":"d","op":"cancel","target":"a"}"#,
    r#"{"id":"e","op":"chat","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"schema":{"type":"object"}}}}"#,
];

#[test]
fn socket_requests() {
    let limits = Limits { max_tokens: 4096 };
    run(input(SOCKET), |line| match crate::api::parse_request(&line, &limits) {
        Ok(_) => Ok(()),
        Err(e) => said(&e.to_string()),
    });
}

const HERMES: &[&str] = &[
    r#"{"input":"turn on the kitchen light","sessionId":"s1","siteId":"kitchen","intentFilter":["HassTurnOn"]}"#,
    r#"{"input":"what time is it","id":"q2"}"#,
];

#[test]
fn hermes_queries() {
    use crate::transport::mqtt::hermes;
    let limits = Limits { max_tokens: 4096 };
    run(input(HERMES), |payload| match hermes::parse_query(&payload, 65536) {
        Ok(q) => match hermes::request(&q, 0.0, &limits) {
            Ok(_) => Ok(()),
            Err(e) => said(&e.to_string()),
        },
        Err(e) => said(&e.to_string()),
    });
}

#[test]
fn mqtt_requests() {
    use crate::transport::mqtt::request::{route, Incoming};
    let topics = crate::transport::mqtt::topics::Topics::new("fuzz", None, "homeassistant");
    let limits = Limits { max_tokens: 4096 };
    run((input(SOCKET), any::<bool>()), |(payload, fleet)| {
        let routed = route(Incoming { payload: &payload, response_topic: None, correlation: None, fleet }, &topics, 65536, &limits);
        match routed.request {
            Ok(_) => Ok(()),
            Err(e) => said(&e.to_string()),
        }
    });
}

const OPENAI: &[&str] = &[
    r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":8}"#,
    r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"string"}}}}}],"tool_choice":"required"}"#,
    r#"{"model":"m","prompt":"once upon","max_tokens":4,"stop":"\n","seed":1}"#,
];

const OLLAMA: &[&str] = &[
    r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_ctx":2048,"temperature":0.2},"keep_alive":"5m","think":false}"#,
    r#"{"model":"m","prompt":"hello","format":{"type":"object"},"keep_alive":-1,"options":{"num_predict":3}}"#,
];

#[test]
fn http_bodies() {
    use crate::transport::http::{error::parse_body, ollama, openai};
    let limits = Limits { max_tokens: 4096 };
    let outcome = |r: Result<crate::api::GenerateRequest, String>| match r {
        Ok(_) => Ok(()),
        Err(e) => said(&e),
    };
    run(input(OPENAI), |body| {
        outcome(parse_body::<openai::request::ChatBody>(&body).and_then(|b| b.request(&limits)))?;
        outcome(parse_body::<openai::request::CompletionBody>(&body).and_then(|b| b.request(&limits)))
    });
    run(input(OLLAMA), |body| {
        outcome(parse_body::<ollama::request::ChatBody>(&body).and_then(|b| b.request(&limits)))?;
        outcome(parse_body::<ollama::request::GenerateBody>(&body).and_then(|b| b.request(&limits)))?;
        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
            if let Err(e) = ollama::request::keep_alive(&v["keep_alive"]) {
                said(&e)?;
            }
        }
        Ok(())
    });
}

const WYOMING: &[&str] = &[
    "{\"type\":\"describe\"}\n",
    "{\"type\":\"transcript\",\"data\":{\"text\":\"turn on the light\",\"language\":\"en\"}}\n",
    "{\"type\":\"transcript\",\"data_length\":16}\n{\"text\":\"lights on\"}",
    "{\"type\":\"audio-chunk\",\"data_length\":2,\"payload_length\":4}\n{}\u{1}\u{2}\u{3}\u{4}",
];

#[test]
fn wyoming_frames() {
    use crate::transport::wyoming::codec::{Decoder, Limits as FrameLimits};
    let strategy = (prop::collection::vec(input(WYOMING), 1..4), 1usize..64);
    run(strategy, |(pieces, chunk)| {
        let mut d = Decoder::new(FrameLimits { header: 4096, data: 8192, payload: 8192 });
        let bytes: Vec<u8> = pieces.concat();
        for part in bytes.chunks(chunk) {
            d.push(part);
            // Every frame the bytes hold, until more are needed or the stream is unusable.
            for _ in 0..bytes.len() + 2 {
                match d.next() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        said(&e.to_string())?;
                        if !e.recoverable() {
                            return Ok(());
                        }
                    }
                }
            }
            prop_assert!(d.buffered() <= 4096 + 8192 + 8192 + chunk, "{} bytes buffered", d.buffered());
        }
        Ok(())
    });
}

const CONFIG: &[&str] = &[
    "[model]\npath = \"/nonexistent\"\nthreads = 2\ncontext_length = 4096\n[socket]\npath = \"/tmp/q.sock\"\n[cache]\nmax_mb = 64\nmax_disk_mb = 0\n",
    "[mqtt]\nenabled = true\nurl = \"mqtt://localhost:1883\"\nhermes = true\n[http]\nenabled = true\nlisten = \"127.0.0.1:11434\"\n",
    "[wyoming]\nenabled = true\nlisten = [\"127.0.0.1:10800\"]\nprograms = [\"intent\", \"handle\"]\n[budget]\nwarm_c = 70\n",
];

#[test]
fn configuration_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let env = std::collections::BTreeMap::new();
    // File writes bound this one: a tenth of the cases.
    run_cases(cases() / 10, input(CONFIG), |text| {
        std::fs::write(&path, &text).unwrap();
        match crate::config::load(Some(&path), &env) {
            Ok(_) => Ok(()),
            Err(e) => said(&e.to_string()),
        }
    });
}

const CATALOG: &[&str] = &[
    "[[intent]]\nname = \"HassTurnOn\"\ndescription = \"on\"\n[[intent.slots]]\nname = \"name\"\ntype = \"entity\"\nsource = \"name\"\nrequired = true\n[[device]]\nname = \"kitchen light\"\nentity_id = \"light.kitchen\"\narea = \"kitchen\"\n",
    "[[intent]]\nname = \"HassLightSet\"\n[[intent.slots]]\nname = \"brightness\"\ntype = \"number\"\nmin = 0\nmax = 100\nunit = \"%\"\n[[intent.slots]]\nname = \"color\"\ntype = \"enum\"\nvalues = [\"red\", \"blue\"]\n",
];

#[test]
fn intent_catalogs() {
    run(input(CATALOG), |bytes| match crate::intent::Catalog::parse(&String::from_utf8_lossy(&bytes), "fuzz") {
        Ok(_) => Ok(()),
        Err(e) => said(&e.to_string()),
    });
}
