//! The tokenizer encodes a multilingual corpus exactly as the tiktoken reference does, and
//! streaming detokenization reproduces the text without ever splitting a character.

use qwenedge_engine::bpe::Bpe;
use qwenedge_engine::detok::Utf8Stream;
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
    #[serde(default)]
    shapes: Vec<Shape>,
}

/// 64 KiB of one hostile input shape and the reference tokenizer's ids.
#[derive(Deserialize)]
struct Shape {
    shape: String,
    text: String,
    ids: Vec<u32>,
}

fn load() -> (Bpe, Vec<Case>) {
    let dir = crate::common::fixtures();
    let bpe = Bpe::from_json(&std::fs::read(dir.join("tokenizer/tokenizer.json")).unwrap()).unwrap();
    let cases: Cases = serde_json::from_slice(&std::fs::read(dir.join("tokenizer_reference.json")).unwrap()).unwrap();
    assert!(cases.cases.len() >= 30, "corpus too small");
    (bpe, cases.cases)
}

#[test]
fn encodes_the_multilingual_corpus_like_tiktoken() {
    let (bpe, cases) = load();
    let mut failures = Vec::new();
    for case in &cases {
        let ids = bpe.encode(&case.text).unwrap();
        if ids != case.ids {
            failures.push(format!("{:?}: got {:?}, want {:?}", case.text, ids, case.ids));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn streaming_decode_round_trips_without_splitting_characters() {
    let (bpe, cases) = load();
    for case in &cases {
        let mut stream = Utf8Stream::default();
        let mut pieces = Vec::new();
        for &id in &case.ids {
            pieces.push(stream.push(bpe.piece(id)));
        }
        pieces.push(stream.finish());
        let text: String = pieces.concat();
        assert_eq!(text, case.text.nfc().collect::<String>(), "round trip of {:?}", case.text);
        // Every piece is whole characters: re-joining at piece boundaries never yields U+FFFD.
        assert!(!text.contains('\u{fffd}') || case.text.contains('\u{fffd}'));
    }
}

#[test]
fn special_tokens_in_text_map_to_their_ids() {
    let (bpe, _) = load();
    assert_eq!(bpe.encode("<|im_start|>user\nhi<|im_end|>").unwrap()[0], 248045);
    assert_eq!(bpe.token_id("<think>"), Some(248068));
    assert_eq!(bpe.token_id("</think>"), Some(248069));
}

#[test]
fn hostile_input_shapes_encode_like_the_reference() {
    let dir = crate::common::fixtures();
    let bpe = Bpe::from_json(&std::fs::read(dir.join("tokenizer/tokenizer.json")).unwrap()).unwrap();
    let cases: Cases = serde_json::from_slice(&std::fs::read(dir.join("tokenizer_reference.json")).unwrap()).unwrap();
    let names: Vec<&str> = cases.shapes.iter().map(|s| s.shape.as_str()).collect();
    assert_eq!(names, ["one_letter", "random_letters", "spaces", "random_code_points", "cjk", "emoji"]);
    for s in &cases.shapes {
        assert!(s.text.len() >= 64 * 1024, "{}: {} bytes", s.shape, s.text.len());
        let ids = bpe.encode(&s.text).unwrap();
        let first = ids.iter().zip(&s.ids).position(|(a, b)| a != b);
        assert!(ids == s.ids, "{}: {} ids vs {}, first difference at {first:?}", s.shape, ids.len(), s.ids.len());
    }
}
