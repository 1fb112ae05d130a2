//! Shared helpers for the end-to-end tests: where the generated fixtures live and how to read
//! their reference outputs. Fixtures come from `models/fixtures/generate.py`; the test command
//! in the README builds them (cached) before running cargo.

#![allow(dead_code)]

pub mod clients;
pub mod daemon;
mod fixtures;
pub mod mqtt;
pub mod utterances;
pub mod wait;

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The fixture directory: `$QWENEDGE_FIXTURES`, else `$QWENEDGE_CACHE/fixtures/current`,
/// else `~/.cache/qwenedge/fixtures/current`. Panics with the command to run when absent.
pub fn fixtures() -> PathBuf {
    let dir = fixtures::fixtures_dir();
    assert!(
        dir.join("manifest.json").is_file(),
        "test fixtures not found at {} — run deploy/test.sh (or python models/fixtures/generate.py)",
        dir.display()
    );
    dir
}

/// One prompt's reference outputs.
#[derive(Debug, Deserialize)]
pub struct PromptRef {
    pub text: String,
    pub ids: Vec<u32>,
    pub hf_logits_file: String,
    pub genai_greedy: GreedyRef,
}

/// onnxruntime-genai greedy tokens per precision.
#[derive(Debug, Deserialize)]
pub struct GreedyRef {
    pub fp32: Vec<u32>,
    pub int4: Vec<u32>,
}

/// A config's reference file.
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub config: serde_json::Value,
    pub prompts: Vec<PromptRef>,
}

/// The tiny model configs every parity test runs on.
pub const CONFIGS: &[&str] = &["tiny-a", "tiny-b"];

pub fn reference(config: &str) -> Reference {
    let path = fixtures().join(config).join("reference.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// transformers' fp32 prefill logits, `[len, vocab]` row-major.
pub fn hf_logits(config: &str, file: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixtures().join(config).join(file)).unwrap();
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

pub fn model_dir(config: &str, precision: &str) -> PathBuf {
    fixtures().join(config).join(precision)
}

/// An engine on ONNX Runtime (2 threads) over the model directory `dir`; `adjust` changes the
/// runtime's options (all logits, an optimized-model cache).
pub fn ort_engine(dir: &Path, adjust: impl FnOnce(&mut qwenedge_engine::backend::ort::OrtOptions)) -> qwenedge_engine::Engine {
    let mut ort = qwenedge_engine::backend::ort::OrtOptions { threads: 2, ..Default::default() };
    adjust(&mut ort);
    let opts = qwenedge_engine::EngineOptions { backend: qwenedge_engine::backend::select::BackendKind::Ort, ort, ..Default::default() };
    qwenedge_engine::Engine::load(dir, &opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Writes `text` to `rel` under the fake device root `root`, atomically (a reader polling the
/// file never sees half of it).
pub fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, p).unwrap();
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Copies a model directory into `dst` with its subdirectories, hard-linking the files (copied
/// where a link cannot be made); a file already in `dst` is kept, and dot-files (a cache's
/// markers) are left out.
pub fn copy_model(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.path().is_dir() {
            copy_model(&entry.path(), &to);
        } else if !to.exists() && !entry.file_name().to_string_lossy().starts_with('.') {
            std::fs::hard_link(entry.path(), &to).or_else(|_| std::fs::copy(entry.path(), &to).map(|_| ())).unwrap();
        }
    }
}

/// Every file under `dir`, its subdirectories included.
pub fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).unwrap().flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}

/// `n` greedy tokens after `prompt` on a fresh sequence of `engine`.
pub fn greedy(engine: &mut qwenedge_engine::Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    let params = qwenedge_engine::generate::GenerateParams { max_tokens: n, ..Default::default() };
    let seq = engine.new_sequence().unwrap();
    let mut sink = |_: &str, _: u32| std::ops::ControlFlow::Continue(());
    engine.generate_with(seq, prompt, &params, &[], &mut sink).unwrap().tokens
}
