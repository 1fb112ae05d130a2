//! Loading: the memory check first (the model's shape, the runtime that will hold it, the
//! budget's room), then the engine with its providers, prefix cache and snapshot store; and the
//! scheduler's [`Loader`] of [`Runner`]s.

use tracing::info;

use qwenedge_budget::memory::{self, Holder, ModelShape};
use qwenedge_budget::readers::SysRoot;
use qwenedge_config::{LoadSettings, Settings};
use qwenedge_engine::backend::ort::{OptimizedCache, OrtOptions};
use qwenedge_engine::backend::providers::ProviderRequest;
use qwenedge_engine::backend::runtime;
use qwenedge_engine::backend::select::{BackendKind, TRACT_BUILT};
use qwenedge_engine::model::ModelSpec;
use qwenedge_engine::persist::SnapshotStore;
use qwenedge_engine::{Engine, EngineError, EngineOptions};
use qwenedge_scheduler::Loader;

use crate::Runner;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The files or the runtime failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The model does not fit in the memory the device leaves.
    #[error("{0}")]
    Memory(String),
    /// No model directory is configured.
    #[error("no model is configured (model.path): with intents.local = \"only\" the daemon answers intents from the sentence templates alone and has no model for other requests")]
    NoModel,
}

/// The sizes of `spec` that memory estimates read.
pub fn model_shape(spec: &ModelSpec) -> ModelShape {
    let w = &spec.weights;
    ModelShape {
        weight_bytes: spec.weight_bytes(),
        matmul_bytes: w.matmul,
        head_bytes: w.head,
        gathered_bytes: w.gathered,
        gathered_large_f32_bytes: w.gathered_large_f32,
        positional_bytes: w.positional,
        other_bytes: w.other,
        layers: spec.layers.len(),
        attention_heads: spec.attention_heads,
        widest: w.widest.max(spec.hidden_size),
        kv_bytes_per_token: spec.kv_bytes_per_token(),
        fixed_state_bytes: spec.fixed_state_bytes(),
        vocab_size: spec.vocab_size,
        tokenizer_bytes: std::fs::metadata(&spec.tokenizer_path).map_or(0, |m| m.len()),
    }
}

/// The runtime that will hold the model, for its memory estimate: `auto` takes ONNX Runtime
/// when its library can be found (as loading will), else tract.
pub fn holder(kind: BackendKind, library: Option<&std::path::Path>) -> Holder {
    match kind {
        BackendKind::Ort | BackendKind::Static => Holder::OnnxRuntime,
        BackendKind::Tract => Holder::Tract,
        BackendKind::Auto if !TRACT_BUILT || runtime::locate(library).is_ok() => Holder::OnnxRuntime,
        BackendKind::Auto => Holder::Tract,
    }
}

/// Loads the engine `load` describes, after checking that it fits in the memory `settings`'
/// budget leaves.
pub fn load_engine(load: &LoadSettings, settings: &Settings) -> Result<Engine, LoadError> {
    let path = &load.path;
    if path.as_os_str().is_empty() {
        return Err(LoadError::NoModel);
    }
    let spec = ModelSpec::load_variant(path, load.variant.as_deref()).map_err(EngineError::from)?;
    let context = memory::load_context(load.context_length, spec.context_length);
    let estimate = memory::model_estimate(&model_shape(&spec), context, holder(load.backend, load.onnxruntime_library.as_deref()));
    let root = SysRoot::new(&settings.budget.root);
    let room = memory::room(&root, settings.budget.memory_reserve_mb);
    if room.room_mb.is_some_and(|free| estimate.total_mb > free) {
        let mut msg = format!("{}: the model needs {estimate}, but {room}", path.display());
        if let Some(hot) = &settings.budget.hot_model {
            msg.push_str(&format!("; a smaller variant is configured (budget.hot_model = {}): point model.path at it", hot.display()));
        }
        if context > 4096 {
            msg.push_str(&format!("; a lower model.context_length (now {context}) shrinks the KV cache"));
        }
        return Err(LoadError::Memory(msg));
    }
    let providers = load
        .execution_providers
        .iter()
        .map(|name| ProviderRequest {
            name: name.clone(),
            options: load.provider_options.get(name).cloned().unwrap_or_default(),
            plugin: load.ep_library.iter().find(|l| &l.ep == name).cloned(),
        })
        .collect();
    let opts = EngineOptions {
        backend: load.backend,
        ort: OrtOptions {
            library: load.onnxruntime_library.clone(),
            threads: load.threads,
            providers,
            strict_providers: load.strict_providers,
            optimized: settings
                .cache
                .optimized()
                .map(|c| OptimizedCache { room_bytes: room.room_mb.map(|mb| (mb.max(0.0) * 1048576.0) as u64), ..c }),
            ..Default::default()
        },
        // Intent requests need the grammar compiler at once.
        parallel_setup: settings.cache.pin_intents,
        variant: load.variant.clone(),
    };
    let mut engine = Engine::load(path, &opts)?;
    let info = engine.backend_info();
    info!(model = %path.display(), backend = info.name, runtime = %info.version, chosen = %info.chosen, "backend chosen");
    engine.configure_cache(settings.cache.max_bytes(), settings.cache.min_tokens);
    configure_store(&mut engine, settings);
    Ok(engine)
}

/// Saves and restores pinned prefixes under `cache.dir` (when `cache.max_disk_mb` allows).
pub(crate) fn configure_store(engine: &mut Engine, settings: &Settings) {
    let dir = settings.cache.disk_dir();
    let store = dir.map(|d| SnapshotStore::new(d, settings.cache.max_disk_bytes(), engine.state_identity()));
    engine.set_snapshot_store(store);
}

/// Loads engines for the scheduler.
#[derive(Debug, Default)]
pub struct EngineLoader;

impl Loader for EngineLoader {
    type Error = LoadError;
    type Model = Runner;

    fn load(&mut self, load: &LoadSettings, settings: &Settings) -> Result<Runner, LoadError> {
        load_engine(load, settings).map(Runner)
    }

    fn check(&mut self, load: &LoadSettings) -> Result<(), LoadError> {
        Ok(Engine::check(&load.path)?)
    }
}
