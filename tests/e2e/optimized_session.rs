//! The saved optimized session (`cache.optimized_dir`): ONNX Runtime's optimized graph with its
//! pre-packed weights, saved at the first load and mapped on later ones. Every fixture answers
//! with the same tokens and bit-identical logits whether the weights were packed at load, saved
//! just now, or mapped from the saved files; a truncated, damaged (graph or weights), foreign
//! or unwritable cache is replaced or bypassed, never used.

use std::path::{Path, PathBuf};

use crate::common::{greedy, model_dir, reference, CONFIGS};
use qwenedge_engine::backend::ort::{OptimizedCache, OrtOptions};
use qwenedge_engine::backend::select::BackendKind;
use qwenedge_engine::backend::{Logits, LogitsWanted};
use qwenedge_engine::{Engine, EngineOptions};

fn engine(dir: &Path, cache: Option<&Path>) -> Engine {
    crate::common::ort_engine(dir, |o| {
        o.optimized = cache.map(|d| OptimizedCache { dir: d.to_path_buf(), max_bytes: 8 << 30, room_bytes: None })
    })
}

/// Greedy tokens of every reference prompt, and the first prompt's last logits.
fn answers(e: &mut Engine, config: &str) -> (Vec<Vec<u32>>, Vec<f32>) {
    let prompts = reference(config).prompts;
    let tokens = prompts.iter().map(|p| greedy(e, &p.ids, 16)).collect();
    let mut seq = e.new_sequence().unwrap();
    let mut logits = Logits::default();
    e.backend_mut().forward(&mut seq, &prompts[0].ids, LogitsWanted::Last, &mut logits).unwrap();
    (tokens, logits.data)
}

/// The cache's entries (directories, scratch ones excluded), sorted.
/// Asserts that two answers agree: tokens (shown when not) and logits bit for bit.
fn same(got: &(Vec<Vec<u32>>, Vec<f32>), want: &(Vec<Vec<u32>>, Vec<f32>), what: &str) {
    assert_eq!(got.0, want.0, "{what}: tokens");
    let differ = got.1.iter().zip(&want.1).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert!(got.1.len() == want.1.len() && differ == 0, "{what}: {differ} of {} logits differ", want.1.len());
}

fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(cache)
        .map(|es| es.flatten().map(|e| e.path()).filter(|p| p.is_dir() && !p.to_string_lossy().contains(".tmp-")).collect())
        .unwrap_or_default();
    all.sort();
    all
}

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino()
}

#[test]
fn saved_and_mapped_sessions_answer_like_packed_ones() {
    for config in CONFIGS {
        for precision in ["fp32", "int4"] {
            let dir = model_dir(config, precision);
            let cache = tempfile::tempdir().unwrap();
            let want = answers(&mut engine(&dir, None), config);
            let saved = answers(&mut engine(&dir, Some(cache.path())), config);
            let [entry] = entries(cache.path()).try_into().expect("one entry saved");
            let data = entry.join("model.onnx.data");
            let before = inode(&data);
            let mapped = answers(&mut engine(&dir, Some(cache.path())), config);
            assert_eq!(inode(&data), before, "{config} {precision}: the second load must map the saved entry, not rebuild it");
            same(&saved, &want, &format!("{config} {precision}, saved now"));
            same(&mapped, &want, &format!("{config} {precision}, mapped"));
        }
    }
}

#[test]
fn truncated_damaged_and_foreign_entries_are_rebuilt() {
    let (a, b) = (model_dir("tiny-a", "int4"), model_dir("tiny-b", "int4"));
    let want = answers(&mut engine(&a, None), "tiny-a");
    let cache = tempfile::tempdir().unwrap();
    engine(&a, Some(cache.path()));
    let [entry] = entries(cache.path()).try_into().expect("one entry");
    let description = std::fs::read_to_string(entry.join("entry.json")).unwrap();
    let data = entry.join("model.onnx.data");
    let len = std::fs::metadata(&data).unwrap().len();

    // Truncated weights: the size check catches it, the entry is built again.
    std::fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(len / 2).unwrap();
    same(&answers(&mut engine(&a, Some(cache.path())), "tiny-a"), &want, "tiny-a");
    assert_eq!(std::fs::metadata(&data).unwrap().len(), len);

    // Weights damaged in place (same size, graph intact): the probe's logits differ from those
    // recorded at the save, the entry is built again.
    let original = std::fs::read(&data).unwrap();
    let mut damaged = original.clone();
    damaged[original.len() / 2..].fill(0xff);
    std::fs::write(&data, &damaged).unwrap();
    same(&answers(&mut engine(&a, Some(cache.path())), "tiny-a"), &want, "weights damaged");
    assert!(std::fs::read(&data).unwrap() == original, "the damaged entry is rebuilt");

    // A graph damaged in place (same size): ONNX Runtime refuses it, the entry is built again.
    let graph = entry.join("model.onnx");
    let mut bytes = std::fs::read(&graph).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 64].fill(0xff);
    std::fs::write(&graph, &bytes).unwrap();
    same(&answers(&mut engine(&a, Some(cache.path())), "tiny-a"), &want, "tiny-a");
    assert_ne!(std::fs::read(&graph).unwrap(), bytes);

    // Another model's entry under this one's name: its description says so.
    engine(&b, Some(cache.path()));
    let other = entries(cache.path()).into_iter().find(|e| *e != entry).expect("tiny-b's entry");
    std::fs::remove_dir_all(&entry).unwrap();
    std::fs::rename(&other, &entry).unwrap();
    same(&answers(&mut engine(&a, Some(cache.path())), "tiny-a"), &want, "tiny-a");
    assert_eq!(std::fs::read_to_string(entry.join("entry.json")).unwrap(), description, "the foreign entry is replaced");
}

#[test]
fn unwritable_or_too_small_cache_serves_packed() {
    let a = model_dir("tiny-a", "int4");
    let want = answers(&mut engine(&a, None), "tiny-a");
    let scratch = tempfile::tempdir().unwrap();
    // The cache directory's place is taken by a file: nothing can be saved.
    let blocked = scratch.path().join("blocked");
    std::fs::write(&blocked, b"not a directory").unwrap();
    same(&answers(&mut engine(&a, Some(&blocked)), "tiny-a"), &want, "tiny-a");
    // A budget smaller than the entry: nothing is kept.
    let small = scratch.path().join("small");
    let opts = EngineOptions {
        backend: BackendKind::Ort,
        ort: OrtOptions {
            threads: 2,
            optimized: Some(OptimizedCache { dir: small.clone(), max_bytes: 1 << 20, room_bytes: None }),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut e = Engine::load(&a, &opts).unwrap();
    same(&answers(&mut e, "tiny-a"), &want, "over budget");
    assert!(entries(&small).is_empty(), "an entry over budget must not be kept");
    assert!(std::fs::read_dir(&small).map(|d| d.count()).unwrap_or(0) == 0, "no scratch directory left");
    // Too little memory free to save: packed at load, nothing written.
    let tight = scratch.path().join("tight");
    let opts = EngineOptions {
        backend: BackendKind::Ort,
        ort: OrtOptions {
            threads: 2,
            optimized: Some(OptimizedCache { dir: tight.clone(), max_bytes: 8 << 30, room_bytes: Some(1 << 20) }),
            ..Default::default()
        },
        ..Default::default()
    };
    same(&answers(&mut Engine::load(&a, &opts).unwrap(), "tiny-a"), &want, "little memory");
    assert!(!tight.exists(), "nothing is saved without the memory to save it");
}
