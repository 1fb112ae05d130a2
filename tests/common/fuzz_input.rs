//! What the parser property tests share: random bytes, random JSON over the field names the
//! parsers know, valid examples truncated or with a bit flipped, and the runner.
//! `QWENEDGE_PROPTEST_CASES` sets the cases per parser (10,000 by default; `tests/fuzz-long.sh`
//! runs 1,000,000). Each crate with a parser that takes bytes from outside includes this file in
//! its own `fuzz` test module.

pub use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

/// Cases per parser.
pub fn cases() -> u32 {
    std::env::var("QWENEDGE_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

/// Field names the parsers look for, so random JSON reaches past the first check.
pub const KEYS: &[&str] = &[
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

pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![3 => prop::sample::select(KEYS).prop_map(str::to_string), 1 => "[a-z_]{1,8}"]
}

pub fn json() -> impl Strategy<Value = Value> {
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
pub fn input(valid: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
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
pub fn run<S: Strategy>(strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    run_cases(cases(), strategy, check);
}

/// Runs `check` on `n` inputs drawn from `strategy`.
pub fn run_cases<S: Strategy>(n: u32, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config { cases: n, failure_persistence: None, ..Config::default() });
    if let Err(e) = runner.run(&strategy, check) {
        panic!("{e}");
    }
}

pub fn said(msg: &str) -> Result<(), TestCaseError> {
    prop_assert!(!msg.trim().is_empty(), "an error without a message");
    Ok(())
}
