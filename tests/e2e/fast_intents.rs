//! Fast intents are exact. On every fixture (fp32 and int4, ONNX Runtime and tract), 100
//! greedy intent requests give the same tokens, intents and confidences (to float rounding;
//! to ONNX Runtime's int4 rounding there) whether the tokens the grammar forces go to the model
//! in one forward pass or one pass each, and batching takes fewer passes than tokens; and the
//! catalog state restored from disk gives the same answers, bit for bit, as the state prefilled.

use crate::common::model_dir;
use crate::common::utterances::{markers, utterances};
use qwenedge_engine::backend::ort::OrtOptions;
use qwenedge_engine::backend::select::BackendKind;
use qwenedge_engine::constrain::Grammar;
use qwenedge_engine::generate::{FinishReason, GenerateParams, Step};
use qwenedge_engine::persist::SnapshotStore;
use qwenedge_engine::{Engine, EngineOptions};
use qwenedge_intent::{self as intent, Catalog};

/// How far two confidences may differ from float rounding alone (they are reported to 1e-4).
const CONFIDENCE_ROUNDING: f64 = 1e-5;
/// How far they may differ through ONNX Runtime's 4-bit kernels, which round a pass over one
/// row differently from a pass over many (they quantize activations per block): measured up to
/// 0.053 on the fixtures, with equal tokens and intents throughout.
const INT4_ORT_CONFIDENCE: f64 = 0.1;

/// What one greedy intent answer came to.
#[derive(Debug, PartialEq)]
struct Answer {
    tokens: Vec<u32>,
    intent: Option<(String, Vec<(String, String)>)>,
    confidence: f64,
}

/// Totals over a run.
#[derive(Debug, Default)]
struct Counts {
    tokens: usize,
    steps: usize,
    forced: usize,
}

fn answer(engine: &mut Engine, catalog: &Catalog, text: &str, one_by_one: bool, counts: &mut Counts) -> Answer {
    let prepared = intent::prepare(catalog, text, None, &markers(engine));
    let prompt = engine.tokenizer.encode(&engine.render_chat(&prepared.chat).unwrap()).unwrap();
    let params = GenerateParams { max_tokens: prepared.max_tokens, forced_one_by_one: one_by_one, ..Default::default() };
    let context = engine.spec.context_length;
    let mut d = engine.cached_decoder(prompt, &[], params, context).unwrap();
    assert!(d.reused_tokens() > 0, "the catalog prefix is reused");
    let constraint = engine.constrainer().unwrap().constraint(&Grammar::Lark(prepared.grammar)).unwrap();
    d.constrain(constraint);
    while !matches!(engine.step(&mut d).unwrap(), Step::Finished { .. }) {}
    let done = d.completion();
    assert_eq!(done.finish_reason, FinishReason::Stop, "{text:?}: {:?}", done.text);
    counts.tokens += done.tokens.len();
    counts.steps += done.timings.model_steps;
    counts.forced += done.timings.forced_tokens;
    let confidence = d.constraint().unwrap().confidence();
    let parsed = intent::result::parse(catalog, &done.text, text, confidence).unwrap_or_else(|e| panic!("{text:?}: {e}: {}", done.text));
    let intent = parsed.map(|i| (i.name, i.slots.into_iter().map(|s| (s.name, s.raw_value)).collect()));
    Answer { tokens: done.tokens, intent, confidence }
}

/// The built-in catalog, cut to the intents whose prompt fits half of `engine`'s context.
fn catalog_for(engine: &Engine) -> Catalog {
    let mut catalog = Catalog::builtin().unwrap();
    loop {
        let chat = intent::prepare(&catalog, "set the kitchen light to 40 percent", None, &markers(engine)).chat;
        let tokens = engine.tokenizer.encode(&engine.render_chat(&chat).unwrap()).unwrap().len();
        if tokens * 2 <= engine.spec.context_length {
            return catalog;
        }
        catalog.intents.pop();
    }
}

/// Loads `config`/`precision` on `backend` with its catalog prefix pinned, saving it under
/// `store` or restoring it from there; says which.
fn pinned(config: &str, precision: &str, backend: BackendKind, store: &std::path::Path) -> (Engine, Catalog, bool) {
    let opts = EngineOptions { backend, ort: OrtOptions { threads: 2, ..Default::default() }, ..Default::default() };
    let mut engine = Engine::load(model_dir(config, precision), &opts).unwrap();
    let catalog = catalog_for(&engine);
    engine.configure_cache(512 << 20, 1);
    engine.set_snapshot_store(Some(SnapshotStore::new(store.to_path_buf(), 1 << 30, engine.state_identity())));
    let chat = intent::prepare(&catalog, "", None, &markers(&engine)).chat;
    loop {
        let p = engine.pin_chat_prefix_step(&chat, 256).unwrap();
        if p.pinned {
            assert!(p.tokens > 100, "{} catalog tokens pinned", p.tokens);
            return (engine, catalog, p.restored);
        }
    }
}

fn check(config: &str, precision: &str, backend: BackendKind) {
    let store = tempfile::tempdir().unwrap();
    let (mut engine, catalog, restored) = pinned(config, precision, backend, store.path());
    assert!(!restored, "nothing is saved yet");
    let (mut batched, mut stepwise) = (Counts::default(), Counts::default());
    let tolerance = if precision == "int4" && backend == BackendKind::Ort { INT4_ORT_CONFIDENCE } else { CONFIDENCE_ROUNDING };
    let mut widest = 0f64;
    let mut answers = Vec::new();
    for text in utterances(&catalog, 100) {
        let a = answer(&mut engine, &catalog, &text, false, &mut batched);
        let b = answer(&mut engine, &catalog, &text, true, &mut stepwise);
        let what = format!("{config}/{precision} {backend:?} {text:?}: batched {a:?} vs one by one {b:?}");
        assert_eq!((&a.tokens, &a.intent), (&b.tokens, &b.intent), "{what}");
        let gap = (a.confidence - b.confidence).abs();
        assert!(gap <= tolerance, "{what}: confidences {gap} apart");
        widest = widest.max(gap);
        answers.push((text, a));
    }
    drop(engine);
    // A new engine restores the saved catalog state instead of prefilling: the same state, so
    // the same answers, confidences included, bit for bit.
    let (mut engine, catalog, restored) = pinned(config, precision, backend, store.path());
    assert!(restored, "{config}/{precision} {backend:?}: the saved catalog state is restored");
    for (text, a) in &answers {
        let r = answer(&mut engine, &catalog, text, false, &mut Counts::default());
        assert_eq!(&r, a, "{config}/{precision} {backend:?} {text:?}: restored from disk vs prefilled");
    }
    println!("{config}/{precision} {backend:?}: {batched:?} batched, {stepwise:?} one by one; confidences at most {widest:.2e} apart");
    assert_eq!(batched.tokens, stepwise.tokens);
    assert_eq!(batched.forced, stepwise.forced);
    assert!(batched.forced * 2 > batched.tokens, "most tokens of a call are forced: {batched:?}");
    assert!(batched.steps * 2 <= batched.tokens, "at most one pass per two tokens: {batched:?}");
    assert!(stepwise.steps > batched.steps * 2, "one by one takes a pass per token: {stepwise:?}");
}

#[test]
fn ort_batching_forced_tokens_changes_nothing_but_the_number_of_passes() {
    for config in crate::common::CONFIGS {
        for precision in ["fp32", "int4"] {
            check(config, precision, BackendKind::Ort);
        }
    }
}

#[cfg(feature = "tract")]
#[test]
fn tract_batching_forced_tokens_changes_nothing_but_the_number_of_passes() {
    for config in crate::common::CONFIGS {
        for precision in ["fp32", "int4"] {
            check(config, precision, BackendKind::Tract);
        }
    }
}
