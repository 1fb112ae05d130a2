//! Creating the ONNX Runtime session: the builder's options and providers, the graph edits, and
//! the saved optimized session (see [`optimized`](super::optimized)) when one is configured.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;

use super::optimized::{self, Lookup, OptimizedCache};
use super::{placement, OrtOptions};
use crate::backend::providers::{self, ProviderReport};
use crate::backend::runtime::Runtime;
use crate::backend::BackendError;
use crate::model::ModelSpec;
use crate::onnx::edit;

/// A session, the providers' reports, the primary provider and the weight files it maps.
pub(super) type Created = (Session, Vec<ProviderReport>, String, Vec<PathBuf>);

/// The model directory's weight files (what a session that reads them maps).
fn original_weights(spec: &ModelSpec) -> Vec<PathBuf> {
    spec.data_files.iter().map(|(d, _)| d.clone()).collect()
}

fn load_err(spec: &ModelSpec, e: impl std::fmt::Display) -> BackendError {
    BackendError::Load { path: spec.onnx_path.clone(), msg: e.to_string() }
}

/// The builder with this backend's options and the requested providers.
pub(super) fn session_builder(
    rt: &Runtime,
    spec: &ModelSpec,
    opts: &OrtOptions,
) -> Result<(SessionBuilder, Vec<ProviderReport>, String), BackendError> {
    let err = |e: ort::Error| load_err(spec, e);
    let mut builder = Session::builder(&rt.env)
        .map_err(err)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| err(e.into()))?
        .with_inter_threads(1)
        .map_err(|e| err(e.into()))?
        .with_intra_op_spinning(opts.spinning)
        .map_err(|e| err(e.into()))?;
    builder = builder.with_config_entry(placement::RECORD_KEY, "1").map_err(|e| err(e.into()))?;
    let (b, reports, primary) = providers::register(builder, &opts.providers, opts.strict_providers, rt).map_err(|(name, why)| {
        load_err(spec, format!("execution provider '{name}' is unavailable and model.strict_providers is set: {why}"))
    })?;
    builder = b;
    if !opts.memory_arena {
        // Without the arena and memory patterns, activations are plain allocations freed
        // after each step instead of a pool sized for the largest prefill ever seen.
        builder = builder
            .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(false).build()])
            .map_err(|e| err(e.into()))?
            .with_memory_pattern(false)
            .map_err(|e| err(e.into()))?;
    }
    if opts.threads > 0 {
        builder = builder.with_intra_threads(opts.threads).map_err(|e| err(e.into()))?;
    }
    if let Some(prefix) = &opts.profile {
        builder = builder.with_profiling(prefix).map_err(|e| err(e.into()))?;
    }
    Ok((builder, reports, primary))
}

/// A session over the embedding graph of a split layout (CPU, the configured threads): a lookup
/// per step, too small for providers or the optimized-model cache. Graph optimizations are off:
/// a lookup has nothing to fuse, and constant folding would copy the table onto the heap where
/// the graph reshapes it (the whole vocabulary's rows, 120 MB at 0.8B q4) instead of mapping it.
pub(super) fn embedding(rt: &Runtime, spec: &ModelSpec, opts: &OrtOptions) -> Result<Option<Session>, BackendError> {
    let Some(e) = &spec.embedding else { return Ok(None) };
    let err = |x: ort::Error| BackendError::Load { path: e.onnx_path.clone(), msg: x.to_string() };
    let mut builder = Session::builder(&rt.env)
        .map_err(err)?
        .with_inter_threads(1)
        .map_err(|x| err(x.into()))?
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(|x| err(x.into()))?;
    if opts.threads > 0 {
        builder = builder.with_intra_threads(opts.threads).map_err(|x| err(x.into()))?;
    }
    builder.commit_from_file(&e.onnx_path).map(Some).map_err(err)
}

/// The decoder graph as the runtime is to see it: initializers reshaped in place, and (unless
/// every position's logits are wanted) the LM head applied to the last position only. `None`
/// when the file is used as it is; the flag says whether only the last logits are computed.
pub(super) fn edited_graph(spec: &ModelSpec, all_logits: bool) -> Result<(Option<Vec<u8>>, bool), BackendError> {
    let graph = std::fs::read(&spec.onnx_path).map_err(|e| load_err(spec, e))?;
    let aliased = edit::alias_reshaped_initializers(&graph).map_err(|e| load_err(spec, e))?;
    let base = aliased.as_deref().unwrap_or(&graph);
    let last = if all_logits { None } else { edit::last_position_logits(base, &spec.logits).map_err(|e| load_err(spec, e))? };
    let last_only = last.is_some();
    Ok((last.or(aliased), last_only))
}

/// Creates the session from the edited graph (its external data read from the model
/// directory) or from the file.
fn commit(mut builder: SessionBuilder, spec: &ModelSpec, graph: Option<&[u8]>) -> Result<Session, BackendError> {
    match graph {
        Some(bytes) => {
            let dir = spec.onnx_path.parent().unwrap_or(&spec.dir).to_string_lossy().into_owned();
            builder
                .with_config_entry("session.model_external_initializers_file_folder_path", dir)
                .map_err(|e| load_err(spec, e))?
                .commit_from_memory(bytes)
                .map_err(|e| load_err(spec, e))
        }
        None => builder.commit_from_file(&spec.onnx_path).map_err(|e| load_err(spec, e)),
    }
}

/// A saved session's graph, loaded as it is (it was optimized when saved).
pub(super) fn load_saved(rt: &Runtime, spec: &ModelSpec, opts: &OrtOptions, model: &Path) -> Result<Created, BackendError> {
    let (builder, reports, primary) = session_builder(rt, spec, opts)?;
    let session = builder
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(|e| load_err(spec, e))?
        .commit_from_file(model)
        .map_err(|e| BackendError::Load { path: model.to_path_buf(), msg: e.to_string() })?;
    Ok((session, reports, primary, vec![model.with_file_name(optimized::DATA)]))
}

/// Creates a session that saves its optimized graph and pre-packed weights into `tmp`.
fn save(rt: &Runtime, spec: &ModelSpec, opts: &OrtOptions, graph: Option<&[u8]>, tmp: &Path) -> Result<Created, String> {
    let (builder, reports, primary) = session_builder(rt, spec, opts).map_err(|e| e.to_string())?;
    let err = |e: ort::Error<SessionBuilder>| e.to_string();
    let builder = builder
        .with_optimized_model_path(tmp.join(optimized::MODEL))
        .map_err(err)?
        .with_config_entry("session.save_external_prepacked_constant_initializers", "1")
        .map_err(err)?
        .with_config_entry("session.optimized_model_external_initializers_file_name", optimized::DATA)
        .map_err(err)?
        .with_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        .map_err(err)?;
    let session = commit(builder, spec, graph).map_err(|e| e.to_string())?;
    Ok((session, reports, primary, original_weights(spec)))
}

/// What [`load_optimized`] found or did.
pub(super) enum Optimized {
    /// A complete entry, loaded: its probe must hash to `probe` before it is used.
    Mapped {
        /// The session on the saved files.
        created: Created,
        /// The probe hash recorded when it was saved.
        probe: String,
        /// The entry's directory (deleted when the probe differs).
        entry: PathBuf,
    },
    /// ONNX Runtime saved the optimized graph into `tmp` while creating `packed` (a session
    /// that packed its weights at load); to be prepared, checked and published.
    Saving {
        /// The packing session.
        packed: Created,
        /// The scratch directory with the saved files.
        tmp: PathBuf,
        /// Where the entry goes.
        entry: PathBuf,
    },
    /// Nothing could be saved (the warning says why): a session packed at load.
    Plain(Created),
}

/// Loads the saved session for `identity` (unless `use_saved` is false or there is none, or it
/// fails to load), else creates a session that saves one; falls back to a plain session when
/// the save cannot even start.
pub(super) fn load_optimized(
    rt: &Runtime,
    spec: &ModelSpec,
    opts: &OrtOptions,
    graph: Option<&[u8]>,
    cache: &OptimizedCache,
    identity: &str,
    use_saved: bool,
) -> Result<Optimized, BackendError> {
    let started = Instant::now();
    if let (true, Lookup::Hit(model, probe)) = (use_saved, cache.lookup(identity)) {
        let entry = model.parent().unwrap_or(&model).to_path_buf();
        match load_saved(rt, spec, opts, &model) {
            Ok(created) => {
                tracing::info!(entry = %entry.display(), load_ms = started.elapsed().as_millis() as u64, "optimized model mapped from the cache");
                return Ok(Optimized::Mapped { created, probe, entry });
            }
            Err(e) => {
                tracing::warn!(error = %e, "saved optimized model failed to load; building it again");
                let _ = std::fs::remove_dir_all(&entry);
            }
        }
    }
    let weights: u64 = spec.data_files.iter().map(|(_, len)| *len).sum();
    if let Some(room) = cache.room_bytes.filter(|&room| room < weights.saturating_mul(2)) {
        tracing::info!(
            weights_mb = weights >> 20,
            free_mb = room >> 20,
            "not saving the optimized model: saving holds every weight in memory once more; packing at load instead"
        );
        return Ok(Optimized::Plain(plain(rt, spec, opts, graph)?));
    }
    let (tmp, entry) = cache.paths(identity);
    match cache.begin(&tmp).map_err(|e| format!("{}: {e}", tmp.display())).and_then(|()| save(rt, spec, opts, graph, &tmp)) {
        Ok(packed) => Ok(Optimized::Saving { packed, tmp, entry }),
        Err(why) => {
            let _ = std::fs::remove_dir_all(&tmp);
            tracing::warn!(dir = %cache.dir.display(), reason = %why, "could not save the optimized model; serving without it");
            Ok(Optimized::Plain(plain(rt, spec, opts, graph)?))
        }
    }
}

/// A session packed at load, nothing saved. When a plugin provider was added but the session
/// cannot be created with it (the EP refused the graph or its options) and
/// `model.strict_providers` is off, the session is created without the plugin providers and
/// their reports say why.
pub(super) fn plain(rt: &Runtime, spec: &ModelSpec, opts: &OrtOptions, graph: Option<&[u8]>) -> Result<Created, BackendError> {
    let (builder, mut reports, primary) = session_builder(rt, spec, opts)?;
    let plugin = reports.iter().position(|r| r.active && r.library.is_some());
    let (created, rejections) = match plugin {
        Some(_) => rt.node_reasons(|| commit(builder, spec, graph)),
        None => (commit(builder, spec, graph), Vec::new()),
    };
    match created {
        Ok(session) => {
            // What the plugin said about the nodes it left to the others (ONNX Runtime does not
            // say which provider a message comes from; with one plugin it is that one).
            if let Some(i) = plugin {
                reports[i].rejections = rejections;
            }
            Ok((session, reports, primary, original_weights(spec)))
        }
        Err(e) if plugin.is_some() && !opts.strict_providers => {
            let why = format!("the session could not be created with it: {}", e.to_string().trim());
            let without = OrtOptions { providers: opts.providers.iter().filter(|p| p.plugin.is_none()).cloned().collect(), ..opts.clone() };
            let (builder, rest, primary) = session_builder(rt, spec, &without)?;
            let reports = reports
                .into_iter()
                .map(|r| match rest.iter().find(|x| x.name == r.name) {
                    Some(x) => x.clone(),
                    None => ProviderReport { active: false, reason: Some(why.clone()), device: None, ..r },
                })
                .collect();
            Ok((commit(builder, spec, graph)?, reports, primary, original_weights(spec)))
        }
        Err(e) => Err(e),
    }
}
