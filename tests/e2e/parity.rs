//! Numerical parity with the reference implementations on every fixture: transformers' fp32
//! prefill logits, onnxruntime-genai's greedy tokens (fp32 and int4, single-token decode after a
//! multi-token prefill), chunked prefill, and engine reuse without leaked state.

use std::ops::ControlFlow;

use crate::common::{greedy, max_abs_diff, model_dir, reference, CONFIGS};
use qwenedge_engine::backend::{Logits, LogitsWanted};
use qwenedge_engine::generate::{FinishReason, GenerateParams};
use qwenedge_engine::model::LayerKind;
use qwenedge_engine::sampler::SamplingParams;
use qwenedge_engine::Engine;

fn engine(dir: &std::path::Path, all_logits: bool) -> Engine {
    crate::common::ort_engine(dir, |o| o.all_logits = all_logits)
}

#[test]
fn fp32_prefill_logits_match_transformers() {
    for config in CONFIGS {
        let mut e = engine(&model_dir(config, "fp32"), true);
        for (i, p) in reference(config).prompts.iter().enumerate() {
            let want = crate::common::hf_logits(config, &p.hf_logits_file);
            let mut seq = e.new_sequence().unwrap();
            let mut got = Logits::default();
            e.backend_mut().forward(&mut seq, &p.ids, LogitsWanted::All, &mut got).unwrap();
            assert_eq!(got.rows, p.ids.len());
            let diff = max_abs_diff(&got.data, &want);
            assert!(diff < 1e-2, "{config} prompt {i}: max |Δlogit| = {diff}");
        }
    }
}

#[test]
fn greedy_tokens_match_onnxruntime_genai() {
    for config in CONFIGS {
        for precision in ["fp32", "int4"] {
            let mut e = engine(&model_dir(config, precision), false);
            for (i, p) in reference(config).prompts.iter().enumerate() {
                let want = if precision == "fp32" { &p.genai_greedy.fp32 } else { &p.genai_greedy.int4 };
                assert_eq!(want.len(), 32);
                let got = greedy(&mut e, &p.ids, 32);
                assert_eq!(&got, want, "{config} {precision} prompt {i}");
            }
        }
    }
}

#[test]
fn older_state_names_load_and_match() {
    let fixtures = crate::common::fixtures();
    let dir = fixtures.join("tiny-a/fp32-oldnames");
    let mut e = engine(&dir, false);
    let kinds = e.spec.layers.iter().filter(|l| matches!(l, LayerKind::LinearAttention { .. })).count();
    assert_eq!(kinds, 3);
    let LayerKind::LinearAttention { conv, .. } = &e.spec.layers[0] else { panic!("layer 0 is linear") };
    assert_eq!(conv.input, "past_key_values.0.conv_state");
    for p in &reference("tiny-a").prompts {
        assert_eq!(greedy(&mut e, &p.ids, 32), p.genai_greedy.fp32);
    }
}

#[test]
fn layer_kinds_and_state_shapes_come_from_the_graph() {
    let e = engine(&model_dir("tiny-b", "int4"), false);
    let full: Vec<usize> =
        e.spec.layers.iter().enumerate().filter(|(_, l)| matches!(l, LayerKind::FullAttention { .. })).map(|(i, _)| i).collect();
    let config = reference("tiny-b").config;
    let expected: Vec<usize> = config["layer_types"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, t)| t.as_str() == Some("full_attention"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(full, expected);
    assert_eq!(e.spec.eos_token_ids, vec![248046, 248044]);
    let LayerKind::LinearAttention { recurrent, conv } = &e.spec.layers[0] else { panic!() };
    let heads = config["linear_num_value_heads"].as_u64().unwrap() as usize;
    let dk = config["linear_key_head_dim"].as_u64().unwrap() as usize;
    let dv = config["linear_value_head_dim"].as_u64().unwrap() as usize;
    assert_eq!(recurrent.shape, vec![heads, dk, dv]);
    assert_eq!(conv.shape[1], config["linear_conv_kernel_dim"].as_u64().unwrap() as usize - 1);
}

#[test]
fn chunked_prefill_gives_the_same_next_token_logits() {
    for config in CONFIGS {
        let mut e = engine(&model_dir(config, "fp32"), false);
        let r = reference(config);
        let prompt = &r.prompts.iter().max_by_key(|p| p.ids.len()).unwrap().ids;
        let mut whole = Logits::default();
        let mut seq = e.new_sequence().unwrap();
        e.backend_mut().forward(&mut seq, prompt, LogitsWanted::Last, &mut whole).unwrap();
        for chunks in [vec![prompt.len() / 2], vec![1, prompt.len() / 3, prompt.len() - 2]] {
            let mut seq = e.new_sequence().unwrap();
            let mut got = Logits::default();
            let mut at = 0;
            for end in chunks.iter().copied().chain([prompt.len()]) {
                e.backend_mut().forward(&mut seq, &prompt[at..end], LogitsWanted::Last, &mut got).unwrap();
                at = end;
            }
            assert_eq!(seq.len(), prompt.len());
            let diff = max_abs_diff(got.last(), whole.last());
            assert!(diff < 1e-4, "{config} chunks {chunks:?}: max |Δlogit| = {diff}");
        }
    }
}

#[test]
fn reusing_the_engine_does_not_leak_state_and_forks_are_independent() {
    let mut e = engine(&model_dir("tiny-b", "int4"), false);
    let r = reference("tiny-b");
    let (a, b) = (&r.prompts[0].ids, &r.prompts[1].ids);
    let first = greedy(&mut e, a, 12);
    greedy(&mut e, b, 12);
    assert_eq!(greedy(&mut e, a, 12), first);

    let mut seq = e.new_sequence().unwrap();
    let mut logits = Logits::default();
    e.backend_mut().forward(&mut seq, a, LogitsWanted::Last, &mut logits).unwrap();
    let fork = e.fork(&seq).unwrap();
    e.backend_mut().forward(&mut seq, b, LogitsWanted::Last, &mut logits).unwrap();
    let mut fork = fork;
    let mut from_fork = Logits::default();
    e.backend_mut().forward(&mut fork, b, LogitsWanted::Last, &mut from_fork).unwrap();
    assert_eq!(max_abs_diff(logits.last(), from_fork.last()), 0.0);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let mut e = engine(&model_dir("tiny-a", "int4"), false);
    let prompt = &reference("tiny-a").prompts[0].ids;
    let run = |e: &mut Engine, seed| {
        let sampling = SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, seed: Some(seed), ..Default::default() };
        let params = GenerateParams { max_tokens: 16, sampling, ..Default::default() };
        let mut sink = |_: &str, _: u32| ControlFlow::Continue(());
        e.generate(prompt, &params, &mut sink).unwrap().tokens
    };
    let first = run(&mut e, 11);
    assert_eq!(run(&mut e, 11), first);
    assert_ne!(run(&mut e, 12), first);
}

#[test]
fn stop_strings_max_tokens_and_cancellation() {
    let mut e = engine(&model_dir("tiny-a", "fp32"), false);
    let p = &reference("tiny-a").prompts[0];
    let params = GenerateParams { max_tokens: 20, ..Default::default() };
    let mut sink = |_: &str, _: u32| ControlFlow::Continue(());
    let full = e.generate(&p.ids, &params, &mut sink).unwrap();
    assert_eq!(full.finish_reason, FinishReason::Length);
    assert_eq!(full.usage.completion_tokens, 20);

    // A stop string taken from the middle of the greedy text ends generation before it.
    let cut = full.text.char_indices().nth(full.text.chars().count() / 2).unwrap().0;
    let stop: String = full.text[cut..].chars().take(3).collect();
    let params = GenerateParams { max_tokens: 20, stop: vec![stop.clone()], ..Default::default() };
    let mut streamed = String::new();
    let mut sink = |piece: &str, _: u32| {
        streamed.push_str(piece);
        ControlFlow::Continue(())
    };
    let stopped = e.generate(&p.ids, &params, &mut sink).unwrap();
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert_eq!(stopped.text, full.text[..full.text.find(&stop).unwrap()]);
    assert_eq!(streamed, stopped.text, "streamed pieces add up to the text");

    let mut n = 0;
    let mut sink = |_: &str, _: u32| {
        n += 1;
        if n == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let cancelled = e.generate(&p.ids, &GenerateParams { max_tokens: 20, ..Default::default() }, &mut sink).unwrap();
    assert_eq!(cancelled.finish_reason, FinishReason::Cancelled);
    assert_eq!(cancelled.tokens.len(), 3);
}

#[test]
fn kv_cache_growth_keeps_the_state() {
    let mut e = engine(&model_dir("tiny-b", "fp32"), false);
    let base = &reference("tiny-b").prompts[1].ids;
    let tokens: Vec<u32> = base.iter().copied().cycle().take(300).collect();
    let mut whole = Logits::default();
    let mut seq = e.new_sequence().unwrap();
    e.backend_mut().forward(&mut seq, &tokens, LogitsWanted::Last, &mut whole).unwrap();
    // 250 at once, then one at a time across the first capacity boundary (256).
    let mut seq = e.new_sequence().unwrap();
    let mut step = Logits::default();
    e.backend_mut().forward(&mut seq, &tokens[..250], LogitsWanted::Last, &mut step).unwrap();
    for &t in &tokens[250..] {
        e.backend_mut().forward(&mut seq, &[t], LogitsWanted::Last, &mut step).unwrap();
    }
    let diff = max_abs_diff(step.last(), whole.last());
    assert!(diff < 1e-3, "max |Δlogit| = {diff}");
}
