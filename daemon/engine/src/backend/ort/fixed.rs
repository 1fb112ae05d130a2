//! The static-graph backend: the two fixed-shape graphs that `models/npu/static_graphs.py`
//! makes from a builder export (described by `static.json` beside them) — a decode graph of one
//! token and a prefill graph of a chunk of C tokens, batch 1, a KV buffer of T positions — for
//! execution providers that compile static graphs only (QNN's HTP). A prompt is fed C tokens at
//! a time, the last chunk padded at its end; a single token goes through the decode graph. The
//! state tensors are those of the dynamic backend with the KV buffers at their full capacity T,
//! so snapshots, forks and the disk store work as there ([`Layout`]). With an accelerator the
//! provider's compiled graphs are kept in the optimized-model cache ([`ep_context`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorValueType};

use super::ep_context::{self, context_model};
use super::optimized;
use super::session::session_builder;
use super::state::{Layout, OrtState};
use super::{placement, run_err, Placement};
use crate::backend::{runtime, runtime::Runtime, Backend, BackendError, BackendInfo, Logits, LogitsWanted, Sequence, Snapshot};
use crate::files::ModelFiles;
use crate::model::{ModelSpec, PositionIds, StateType};

/// The file naming a directory's static graphs.
pub const STATIC_JSON: &str = "static.json";

/// Operators that may run outside the accelerator without `strict_providers` refusing the
/// decode graph: the 4-bit embedding lookup, which QNN runs on its GPU backend only.
const ALLOWED_ELSEWHERE: &[&str] = &["GatherBlockQuantized"];

#[derive(serde::Deserialize)]
struct Description {
    chunk: usize,
    context: usize,
    graphs: BTreeMap<String, GraphEntry>,
}

#[derive(serde::Deserialize)]
struct GraphEntry {
    file: String,
    tokens: usize,
}

/// What `static.json` says: the two graph files, the prefill chunk and the KV capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticGraphs {
    /// Tokens of one prefill run (C).
    pub chunk: usize,
    /// Positions of the KV buffer (T): the most tokens a sequence holds.
    pub context: usize,
    /// The one-token graph.
    pub decode: PathBuf,
    /// The C-token graph.
    pub prefill: PathBuf,
}

impl StaticGraphs {
    /// Reads `dir/static.json`; every problem is one message naming the file.
    pub fn read(dir: &Path) -> Result<Self, BackendError> {
        let path = dir.join(STATIC_JSON);
        let err = |msg: String| BackendError::Load { path: path.clone(), msg };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| err(format!("{e} (a directory of static graphs comes from models/npu/static_graphs.py)")))?;
        let d: Description = serde_json::from_str(&text).map_err(|e| err(format!("not a static-graph description: {e}")))?;
        let graph = |kind: &str, tokens: usize| -> Result<PathBuf, BackendError> {
            let entry = d.graphs.get(kind).ok_or_else(|| err(format!("no '{kind}' graph")))?;
            if entry.tokens != tokens {
                return Err(err(format!("the {kind} graph takes {} tokens, expected {tokens}", entry.tokens)));
            }
            let file = dir.join(&entry.file);
            if entry.file.contains('/') || !file.is_file() {
                return Err(err(format!("the {kind} graph '{}' is not a file in {}", entry.file, dir.display())));
            }
            Ok(file)
        };
        if d.chunk < 2 || d.context < d.chunk {
            return Err(err(format!("chunk {} and context {}: the chunk must be 2 or more and fit the context", d.chunk, d.context)));
        }
        Ok(Self { chunk: d.chunk, context: d.context, decode: graph("decode", 1)?, prefill: graph("prefill", d.chunk)? })
    }
}

/// The decode and prefill sessions over a model's static graphs.
pub struct StaticBackend {
    decode: Session,
    prefill: Session,
    graphs: StaticGraphs,
    layout: Layout,
    spec: ModelSpec,
    info: BackendInfo,
}

impl StaticBackend {
    /// Loads the runtime and creates both sessions with `opts`' providers. With
    /// `strict_providers` and an accelerator first, a decode graph that does not run wholly on
    /// it (but for the embedding lookup) is refused.
    pub fn load(spec: &ModelSpec, opts: &super::OrtOptions) -> Result<Self, BackendError> {
        let rt = runtime::load(opts.library.as_deref())?;
        let graphs = StaticGraphs::read(&spec.dir)?;
        let refuse = |path: &Path, msg: String| BackendError::Load { path: path.to_path_buf(), msg };
        if spec.embedding.is_some() || super::all_states(spec).any(|t| t.dtype != StateType::F32) {
            return Err(refuse(
                &graphs.decode,
                "static graphs are made from a builder export with float32 state (one decoder graph)".into(),
            ));
        }
        // `context`: where the provider is to write its compiled form of the graph.
        let create = |path: &Path, context: Option<PathBuf>| -> Result<(Session, Vec<_>, String, Option<Placement>), BackendError> {
            let (mut builder, reports, primary) = session_builder(rt, spec, opts)?;
            if let Some(out) = context {
                let entries = [
                    ("ep.context_enable", "1".to_string()),
                    ("ep.context_embed_mode", "0".into()),
                    ("ep.context_file_path", out.display().to_string()),
                ];
                for (key, value) in entries {
                    builder = builder.with_config_entry(key, value).map_err(|e| refuse(path, e.to_string()))?;
                }
            }
            let started = std::time::Instant::now();
            let session = builder.commit_from_file(path).map_err(|e| refuse(path, e.to_string()))?;
            let placement = placement::read(&session, &reports);
            tracing::info!(
                graph = %path.display(),
                ms = started.elapsed().as_millis() as u64,
                placement = %placement.as_ref().map(Placement::summary).unwrap_or_default(),
                "static graph loaded"
            );
            Ok((session, reports, primary, placement))
        };
        let started = std::time::Instant::now();
        let cache = compiled_cache(rt, spec, opts);
        let mut sessions = None;
        if let Some((entry, identity)) = &cache {
            match ep_context::check(entry, identity) {
                Ok(()) => match (create(&context_model(entry, "decode"), None), create(&context_model(entry, "prefill"), None)) {
                    (Ok(mut decode), Ok(mut prefill)) => {
                        // The context models hold the compiled partitions as single nodes: the
                        // placement of the graphs they came from was saved with them.
                        if let Some(saved) = ep_context::saved_placements(entry) {
                            (decode.3, prefill.3) = (saved.decode, saved.prefill);
                        }
                        sessions = Some((decode, prefill, "loaded the compiled graphs"));
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(entry = %entry.display(), reason = %e, "compiled graphs do not load; preparing them again");
                        let _ = std::fs::remove_dir_all(entry);
                    }
                },
                Err(why) if entry.exists() => {
                    tracing::warn!(entry = %entry.display(), reason = %why, "compiled graphs unusable; preparing them again");
                    let _ = std::fs::remove_dir_all(entry);
                }
                Err(_) => {}
            }
        }
        let ((decode, reports, primary, decode_placement), (prefill, _, _, prefill_placement), how) = match sessions {
            Some(found) => found,
            None => {
                let staging = cache.as_ref().and_then(|(entry, _)| {
                    ep_context::staging(entry).inspect_err(|e| tracing::warn!(reason = %e, "the compiled graphs will not be saved")).ok()
                });
                let decode = create(&graphs.decode, staging.as_ref().map(|t| context_model(t, "decode")))?;
                let prefill = create(&graphs.prefill, staging.as_ref().map(|t| context_model(t, "prefill")))?;
                let mut how = "prepared the graphs";
                if let (Some(tmp), Some((entry, identity))) = (&staging, &cache) {
                    let placements = ep_context::Placements { decode: decode.3.clone(), prefill: prefill.3.clone() };
                    match ep_context::save_placements(tmp, &placements).and_then(|()| ep_context::finish(tmp, entry, identity)) {
                        Ok(()) => how = "prepared the graphs and saved them compiled",
                        Err(e) => tracing::warn!(reason = %e, "the compiled graphs could not be saved"),
                    }
                }
                (decode, prefill, how)
            }
        };
        tracing::info!(ms = started.elapsed().as_millis() as u64, "static graphs ready: {how}");
        if opts.strict_providers && primary != "cpu" {
            let elsewhere = stray_nodes(decode_placement.as_ref(), &primary);
            if !elsewhere.is_empty() {
                return Err(refuse(
                    &graphs.decode,
                    format!("model.strict_providers: the decode graph does not run wholly on '{primary}' ({})", elsewhere.join(", ")),
                ));
            }
        }
        let info = BackendInfo {
            name: "onnxruntime-static",
            version: rt.version.clone(),
            library: Some(rt.path.display().to_string()),
            execution_provider: primary,
            providers: reports,
            threads: opts.threads,
            chosen: String::new(),
            placement: decode_placement,
            prefill_placement,
        };
        let layout = Layout::of(spec, graphs.context);
        Ok(Self { decode, prefill, graphs, layout, spec: spec.clone(), info })
    }

    /// One run of a graph: `tokens` (at most its size) after `past` positions, the state
    /// replaced by the graph's; the logits rows wanted are appended to `out`.
    fn run(&mut self, state: &mut OrtState, past: usize, tokens: &[u32], want: LogitsWanted, out: &mut Logits) -> Result<(), BackendError> {
        let n = tokens.len();
        let (size, session) = if n == 1 { (1, &mut self.decode) } else { (self.graphs.chunk, &mut self.prefill) };
        let spec = &self.spec;
        let mut ids = vec![0i64; size];
        for (slot, &t) in ids.iter_mut().zip(tokens) {
            *slot = i64::from(t);
        }
        let mut inputs: Vec<(String, SessionInputValue<'_>)> =
            vec![(spec.input_ids.clone(), Tensor::from_array(([1, size], ids)).map_err(run_err)?.into())];
        if let Some(name) = &spec.attention_mask {
            let mask: Vec<i64> = (0..self.graphs.context).map(|i| i64::from(i < past + n)).collect();
            inputs.push((name.clone(), Tensor::from_array(([1, self.graphs.context], mask)).map_err(run_err)?.into()));
        }
        if let Some(name) = &spec.position_ids_name {
            let positions: Vec<i64> = (past as i64..(past + size) as i64).collect();
            let value = match spec.position_ids {
                PositionIds::Sections(rows) => Tensor::from_array(([rows, 1, size], positions.repeat(rows))),
                _ => Tensor::from_array(([1, size], positions)),
            };
            inputs.push((name.clone(), value.map_err(run_err)?.into()));
        }
        let layout = &self.layout;
        let tensors = layout.kv.iter().zip(&state.kv).chain(layout.linear.iter().zip(&state.linear));
        inputs.extend(tensors.map(|(t, buf)| (t.input.clone(), SessionInputValue::from(buf))));
        let mut outputs = session.run(inputs).map_err(run_err)?;
        let logits = outputs.remove(&spec.logits).ok_or_else(|| BackendError::Run(format!("the graph gave no '{}'", spec.logits)))?;
        let (_, data) = logits.try_extract_tensor::<f32>().map_err(run_err)?;
        let vocab = spec.vocab_size;
        // The prefill graph applies the LM head to the last real token only (one row).
        let rows = match (data.len() / vocab, want) {
            (1, _) if n == 1 || want == LogitsWanted::Last => 0..1,
            (1, _) => return Err(BackendError::Run("the static prefill graph gives the last position's logits only".into())),
            (_, LogitsWanted::Last) => n - 1..n,
            (_, LogitsWanted::All) => 0..n,
        };
        out.vocab = vocab;
        out.rows += rows.len();
        out.data.extend_from_slice(&data[rows.start * vocab..rows.end * vocab]);
        let mut next = |name: &str| -> Result<Tensor<f32>, BackendError> {
            let value = outputs.remove(name).ok_or_else(|| BackendError::Run(format!("the graph gave no '{name}'")))?;
            value.downcast::<TensorValueType<f32>>().map_err(run_err)
        };
        let kv = layout.kv.iter().map(|t| next(&t.output)).collect::<Result<Vec<_>, _>>()?;
        let linear = layout.linear.iter().map(|t| next(&t.output)).collect::<Result<Vec<_>, _>>()?;
        state.kv = kv;
        state.linear = linear;
        Ok(())
    }
}

/// The compiled-graph cache entry and its identity, when an accelerator runs the graphs and the
/// optimized-model cache is on (the CPU compiles nothing worth keeping).
fn compiled_cache(rt: &Runtime, spec: &ModelSpec, opts: &super::OrtOptions) -> Option<(PathBuf, String)> {
    let cache = opts.optimized.as_ref().filter(|_| opts.providers.first().is_some_and(|p| p.name != "cpu"))?;
    let providers: Vec<String> = opts.providers.iter().map(|p| format!("{} {:?} {:?}", p.name, p.options, p.plugin)).collect();
    let edits = format!("static graphs; compiled by {}", providers.join("; "));
    let identity = optimized::identity(&rt.version, &rt.path, &ModelFiles::read(&spec.dir).identity(), &edits);
    Some((ep_context::entry_dir(cache, &identity), identity))
}

/// Nodes of `placement` that run elsewhere than `primary`, but for [`ALLOWED_ELSEWHERE`].
fn stray_nodes(placement: Option<&Placement>, primary: &str) -> Vec<String> {
    let Some(p) = placement else { return vec!["ONNX Runtime recorded no placement".into()] };
    p.providers
        .iter()
        .filter(|e| e.ep != primary)
        .flat_map(|e| {
            e.op_types
                .iter()
                .filter(|(op, _)| !ALLOWED_ELSEWHERE.contains(&op.as_str()))
                .map(move |(op, n)| format!("{op} {n} on {}", e.ep))
        })
        .collect()
}

impl Backend for StaticBackend {
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn new_sequence(&self) -> Result<Sequence, BackendError> {
        self.layout.new_sequence()
    }

    fn forward(&mut self, seq: &mut Sequence, tokens: &[u32], want: LogitsWanted, out: &mut Logits) -> Result<(), BackendError> {
        if tokens.is_empty() {
            return Err(BackendError::Limit("no tokens to process".into()));
        }
        let (past, context) = (seq.len, self.graphs.context);
        if past + tokens.len() > context {
            return Err(BackendError::Limit(format!(
                "{} tokens exceed the static graphs' context of {context} (static_graphs.py --context)",
                past + tokens.len()
            )));
        }
        let mut state_box = std::mem::replace(&mut seq.state, Box::new(()));
        let result = (|| -> Result<(), BackendError> {
            let state = state_box.downcast_mut::<OrtState>().ok_or(BackendError::ForeignState)?;
            state.usable()?;
            self.layout.reserve(state, past, context)?;
            out.rows = 0;
            out.data.clear();
            let pieces = if tokens.len() == 1 { tokens.chunks(1) } else { tokens.chunks(self.graphs.chunk) };
            let last = pieces.len() - 1;
            let mut at = past;
            for (i, piece) in pieces.enumerate() {
                let mut scratch = Logits::default();
                let sink = if want == LogitsWanted::All || i == last { &mut *out } else { &mut scratch };
                self.run(state, at, piece, want, sink).inspect_err(|_| state.broken = true)?;
                at += piece.len();
            }
            Ok(())
        })();
        seq.state = state_box;
        result?;
        seq.len += tokens.len();
        Ok(())
    }

    fn fork(&self, seq: &Sequence) -> Result<Sequence, BackendError> {
        self.layout.fork(seq)
    }

    fn snapshot(&self, seq: &Sequence) -> Result<Snapshot, BackendError> {
        self.layout.snapshot(seq)
    }

    fn restore(&self, snap: &Snapshot, room: usize) -> Result<Sequence, BackendError> {
        self.layout.restore(snap, room)
    }

    fn snapshot_parts(&self, snap: &Snapshot, each: &mut dyn FnMut(&[f32])) -> Result<(), BackendError> {
        self.layout.parts(snap, each)
    }

    fn snapshot_from_parts(&self, len: usize, parts: Vec<Vec<f32>>) -> Result<Snapshot, BackendError> {
        self.layout.snapshot_of_parts(len, parts)
    }
}
