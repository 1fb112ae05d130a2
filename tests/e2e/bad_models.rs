//! Broken model directories are refused with one error that names the file and what is wrong —
//! never a panic, and before any weights are loaded.

use std::path::Path;

use qwenedge_engine::{Engine, EngineOptions};

/// A copy of the tiny int4 model in a temp dir, broken by `f`; returns the load error text.
fn broken(f: impl FnOnce(&Path)) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    crate::common::copy_model(&crate::common::model_dir("tiny-a", "int4"), &dir);
    f(&dir);
    match Engine::load(&dir, &EngineOptions::default()) {
        Ok(_) => panic!("a broken model directory loaded"),
        Err(e) => e.to_string(),
    }
}

fn replace(path: &Path, contents: &[u8]) {
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, contents).unwrap();
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("genai_config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut config);
    replace(&path, &serde_json::to_vec_pretty(&config).unwrap());
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error {err:?} should mention {p:?}");
    }
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
}

#[test]
fn missing_files_are_named() {
    for (file, why) in [
        ("genai_config.json", "missing"),
        ("model.onnx", "missing"),
        ("tokenizer.json", "missing"),
        ("model.onnx.data", "missing (external weights"),
    ] {
        let err = broken(|d| std::fs::remove_file(d.join(file)).unwrap());
        assert_mentions(&err, &[file, why]);
    }
}

#[test]
fn missing_directory_is_named() {
    let err = Engine::load("/nonexistent/qwen", &EngineOptions::default()).unwrap_err().to_string();
    assert_mentions(&err, &["/nonexistent/qwen"]);
}

#[test]
fn truncated_weights_are_detected_before_loading() {
    let err = broken(|d| {
        let path = d.join("model.onnx.data");
        let data = std::fs::read(&path).unwrap();
        replace(&path, &data[..data.len() / 2]);
    });
    assert_mentions(&err, &["model.onnx.data", "truncated", "needs bytes up to"]);
}

#[test]
fn unknown_model_type_is_refused() {
    let err = broken(|d| edit_config(d, |c| c["model"]["type"] = "llama".into()));
    assert_mentions(&err, &["genai_config.json", "model type 'llama' is not supported"]);
}

#[test]
fn malformed_files_are_named() {
    let err = broken(|d| replace(&d.join("genai_config.json"), b"{\"model\": "));
    assert_mentions(&err, &["genai_config.json", "not a valid genai config"]);
    let err = broken(|d| replace(&d.join("model.onnx"), b"\x0a\xff\xff\xff\xff\xff garbage"));
    assert_mentions(&err, &["model.onnx", "not a readable ONNX model"]);
    let err = broken(|d| replace(&d.join("tokenizer.json"), b"[1, 2"));
    assert_mentions(&err, &["tokenizer.json", "invalid tokenizer JSON"]);
}

#[test]
fn a_tokenizer_from_another_model_is_refused() {
    // A valid byte-level BPE tokenizer whose vocabulary stops at 259: the model's EOS ids
    // (248046, 248044) do not exist in it.
    let mut vocab = serde_json::Map::new();
    let mut id = 0u32;
    for b in (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF) {
        vocab.insert(char::from(b).to_string(), id.into());
        id += 1;
    }
    for extra in 0..(256 - id) {
        vocab.insert(char::from_u32(256 + extra).unwrap().to_string(), (id + extra).into());
    }
    let json = serde_json::json!({
        "added_tokens": [{"id": 256, "content": "<|endoftext|>", "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": []}
    });
    let err = broken(|d| replace(&d.join("tokenizer.json"), json.to_string().as_bytes()));
    assert_mentions(&err, &["tokenizer.json", "does not match the model", "248046"]);
}

#[test]
fn config_and_graph_that_disagree_are_named() {
    let err = broken(|d| edit_config(d, |c| c["model"]["decoder"]["num_hidden_layers"] = 9.into()));
    assert_mentions(&err, &["model.onnx", "layer 4 has neither a KV cache nor a linear-attention state"]);
    let err = broken(|d| edit_config(d, |c| c["model"]["decoder"]["inputs"]["input_ids"] = "tokens".into()));
    assert_mentions(&err, &["model.onnx", "no input 'tokens'"]);
    let err = broken(|d| edit_config(d, |c| c["model"]["vocab_size"] = 1000.into()));
    assert_mentions(&err, &["model.onnx", "vocab_size 1000"]);
}

/// Runs `check` on `QWENEDGE_PROPTEST_CASES` (default 10,000) damages of `files`: one of them
/// truncated at a random point, with a random bit flipped, or replaced by random bytes.
fn each_damage(files: &[Vec<u8>], check: impl Fn(usize, &[u8]) -> Result<(), proptest::test_runner::TestCaseError>) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let cases = std::env::var("QWENEDGE_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000u32);
    let damage = (0..files.len(), 0u8..3, any::<usize>(), 0u8..8, prop::collection::vec(any::<u8>(), 0..64));
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&damage, |(file, how, at, bit, noise)| {
        let good = &files[file];
        let mut bytes = good.clone();
        match how {
            0 => bytes.truncate(at % (good.len() + 1)),
            1 => bytes[at % good.len()] ^= 1 << bit,
            _ => bytes = noise,
        }
        check(file, &bytes)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// An error must say something.
fn said(msg: &str) -> Result<(), proptest::test_runner::TestCaseError> {
    proptest::prop_assert!(!msg.trim().is_empty(), "an error without a message");
    Ok(())
}

/// Random damage to the files the model directory reader parses — `genai_config.json` and
/// the `model.onnx` graph truncated, bit-flipped or replaced by random bytes — is an error
/// with a message or a spec, never a panic.
#[test]
fn random_damage_to_the_model_files_never_panics_the_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    let src = crate::common::model_dir("tiny-a", "int4");
    crate::common::copy_model(&src, &dir);
    let names = ["genai_config.json", "model.onnx"];
    let originals: Vec<Vec<u8>> = names.iter().map(|f| std::fs::read(src.join(f)).unwrap()).collect();
    assert!(qwenedge_engine::model::ModelSpec::load(&dir).is_ok(), "the undamaged directory reads");
    each_damage(&originals, |file, bytes| {
        replace(&dir.join(names[file]), bytes);
        let outcome = qwenedge_engine::model::ModelSpec::load(&dir);
        replace(&dir.join(names[file]), &originals[file]);
        outcome.map(drop).or_else(|e| said(&e.to_string()))
    });
}

/// Random damage to a `tokenizer.json` (a small one: the real file takes half a second to
/// read) is refused with a message, never a panic.
#[test]
fn random_damage_to_a_tokenizer_file_never_panics_the_reader() {
    use qwenedge_engine::bpe::{byte_char, Bpe};
    let vocab: serde_json::Map<String, serde_json::Value> = (0..=255u8).map(|b| (byte_char(b).to_string(), b.into())).collect();
    let good = serde_json::json!({
        "added_tokens": [{"id": 300, "content": "<|x|>", "special": true}],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": " ?\\p{L}+|\\s+"}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": []}
    })
    .to_string()
    .into_bytes();
    assert!(Bpe::from_json(&good).is_ok(), "the undamaged file loads");
    each_damage(&[good], |_, bytes| Bpe::from_json(bytes).map(drop).or_else(|e| said(&e)));
}
