//! Property tests of the HTTP bodies (OpenAI and Ollama): random bytes, random JSON over the
//! fields the parsers know, valid bodies truncated or with a bit flipped. Each parser must
//! return, never panic, and an error must say something.

#[allow(dead_code)]
#[path = "../../../tests/common/fuzz_input.rs"]
mod input;

use input::*;
use qwenedge_api::Limits;
use serde_json::Value;

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
    use crate::error::{parse_body, BodyError};
    use crate::{ollama, openai};
    let limits = Limits { max_tokens: 4096 };
    let outcome = |r: Result<qwenedge_api::GenerateRequest, BodyError>| match r {
        Ok(_) => Ok(()),
        Err(e) => said(&e.to_string()),
    };
    run(input(OPENAI), |body| {
        outcome(parse_body::<openai::request::ChatBody>(&body).and_then(|b| b.request(&limits).map_err(BodyError::from)))?;
        outcome(parse_body::<openai::request::CompletionBody>(&body).and_then(|b| b.request(&limits).map_err(BodyError::from)))
    });
    run(input(OLLAMA), |body| {
        outcome(parse_body::<ollama::request::ChatBody>(&body).and_then(|b| b.request(&limits).map_err(BodyError::from)))?;
        outcome(parse_body::<ollama::request::GenerateBody>(&body).and_then(|b| b.request(&limits).map_err(BodyError::from)))?;
        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
            if let Err(e) = ollama::request::keep_alive(&v["keep_alive"]) {
                said(&e.to_string())?;
            }
        }
        Ok(())
    });
}
