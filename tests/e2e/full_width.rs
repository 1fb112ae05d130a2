//! tract against ONNX Runtime on a model of a published size's full width (run by
//! `models/verify-sizes.sh`, which sets `QWENEDGE_VERIFY_MODEL`; ignored otherwise).
//!
//! The two runtimes' 4-bit products agree to float rounding (`tests/e2e/tract.rs`), but both
//! quantize each layer's activations to int8 per block, so a rounding apart can move a value by
//! a quantization step, and on random weights such differences grow from layer to layer (the
//! last logits of the 2B-width model differ by up to 0.08 between them; ONNX Runtime differs
//! from itself by as much between a one-row and a many-row pass on the 0.8B shape). Greedy
//! tokens therefore agree wherever the choice is clear and may part at a near-tie. So the check
//! is teacher-forced along ONNX Runtime's greedy tokens: at every step where its two best logits
//! are further apart than [`CLEAR`] times the root mean square difference between the runtimes'
//! logits, tract's best token is ONNX Runtime's.

use qwenedge_engine::backend::ort::OrtOptions;
use qwenedge_engine::backend::select::BackendKind;
use qwenedge_engine::backend::{Logits, LogitsWanted};
use qwenedge_engine::{Engine, EngineOptions};

/// A choice is clear when ONNX Runtime's two best logits are further apart than this many times
/// the root mean square difference between the runtimes' logits: were the differences
/// independent and normal, the gap would change by more than that once in 400 steps.
pub(crate) const CLEAR: f32 = 4.0;

/// The root mean square of `a - b`.
pub(crate) fn rms_diff(a: &[f32], b: &[f32]) -> f32 {
    let sum: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    (sum / a.len().max(1) as f64).sqrt() as f32
}

/// The best two entries of `l`: (index, value) each.
pub(crate) fn best_two(l: &[f32]) -> ((usize, f32), (usize, f32)) {
    let (mut a, mut b) = ((0, f32::MIN), (0, f32::MIN));
    for (i, &x) in l.iter().enumerate() {
        if x > a.1 {
            b = a;
            a = (i, x);
        } else if x > b.1 {
            b = (i, x);
        }
    }
    (a, b)
}

#[test]
#[ignore = "needs a full-width model; models/verify-sizes.sh runs it"]
fn tract_follows_onnxruntime_wherever_the_greedy_choice_is_clear() {
    let dir = std::env::var("QWENEDGE_VERIFY_MODEL").expect("QWENEDGE_VERIFY_MODEL names the model directory");
    let prompt = std::env::var("QWENEDGE_VERIFY_PROMPT").unwrap_or_else(|_| "The kitchen light is on, and the weather today is".into());
    let steps: usize = std::env::var("QWENEDGE_VERIFY_TOKENS").ok().and_then(|s| s.parse().ok()).unwrap_or(32);
    let opts = |backend| EngineOptions { backend, ort: OrtOptions { threads: 2, ..Default::default() }, ..Default::default() };
    let mut ort = Engine::load(&dir, &opts(BackendKind::Ort)).unwrap();
    let mut tract = Engine::load(&dir, &opts(BackendKind::Tract)).unwrap();
    let ids = ort.tokenizer.encode(&prompt).unwrap();
    let (mut so, mut st) = (ort.new_sequence().unwrap(), tract.new_sequence().unwrap());
    let (mut lo, mut lt) = (Logits::default(), Logits::default());
    let (mut input, mut clear, mut near_ties, mut widest) = (ids, 0, Vec::new(), 0f32);
    for step in 0..steps {
        ort.backend_mut().forward(&mut so, &input, LogitsWanted::Last, &mut lo).unwrap();
        tract.backend_mut().forward(&mut st, &input, LogitsWanted::Last, &mut lt).unwrap();
        let ((best, top), (_, second)) = best_two(lo.last());
        let ((tract_best, _), _) = best_two(lt.last());
        let apart = rms_diff(lo.last(), lt.last());
        widest = widest.max(crate::common::max_abs_diff(lo.last(), lt.last()));
        if top - second > CLEAR * apart {
            clear += 1;
            let gap = top - second;
            assert_eq!(tract_best, best, "step {step}: a clear choice (gap {gap:.4}, runtimes {apart:.4} apart, RMS) taken differently");
        } else {
            near_ties.push((step, top - second, tract_best == best));
        }
        input = vec![best as u32];
    }
    println!(
        "{dir}: tract took ONNX Runtime's token at all {clear} clear steps of {steps}; near-ties (step, gap, same token): {near_ties:?}; logits at most {widest:.4} apart"
    );
    assert!(clear * 4 >= steps, "a quarter of the steps or more are clear choices: {clear} of {steps}");
}
