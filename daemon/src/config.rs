//! The daemon's configuration: one TOML file (default `/etc/qwenedge/config.toml`) with every key
//! overridable by a `QWENEDGE__SECTION__KEY` environment variable, read into one typed, defaulted
//! and validated [`Settings`]. Any problem stops start-up with one line naming the key and where
//! the value came from; nothing starts half-configured.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/qwenedge/config.toml";

/// Environment variable prefix; `QWENEDGE__MODEL__PATH` sets `model.path`.
pub const ENV_PREFIX: &str = "QWENEDGE";

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &["socket.allowed_uids", "socket.allowed_gids", "model.execution_providers"];

/// Everything the daemon reads at start (and again on SIGHUP).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The model and its runtime.
    pub model: ModelSettings,
    /// The Unix-socket transport.
    pub socket: SocketSettings,
    /// Queueing in front of the engine.
    pub scheduler: SchedulerSettings,
    /// Process lifecycle.
    pub service: ServiceSettings,
    /// Thermal and memory budgets.
    pub budget: crate::budget::BudgetSettings,
    /// The MQTT transport.
    pub mqtt: crate::transport::mqtt::MqttSettings,
    /// The prefix-state cache.
    pub cache: crate::engine::cache::CacheSettings,
    /// Intent recognition.
    pub intents: IntentSettings,
}

/// `[model]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// Model directory (output of the onnxruntime-genai builder). Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// `libonnxruntime.so` to load (else `ORT_DYLIB_PATH`, then the documented search order).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onnxruntime_library: Option<PathBuf>,
    /// Intra-op threads for inference (0 = one per core).
    pub threads: usize,
    /// Upper bound on prompt + generated tokens (0 = the model's own context length).
    pub context_length: usize,
    /// Prompt tokens per forward pass during prefill (0 = the whole prompt at once). Smaller
    /// chunks let an interactive request start sooner behind a long background prompt.
    pub prefill_chunk_tokens: usize,
    /// Execution providers in priority order (`qnn`, `xnnpack`, `cuda`, `tensorrt`,
    /// `openvino`, `acl`, `rknpu`, `nnapi`, `coreml`, `cpu`). Unavailable ones are skipped.
    pub execution_providers: Vec<String>,
    /// Refuse to start when a requested provider is unavailable, instead of skipping it.
    pub strict_providers: bool,
    /// Options per provider, passed to ONNX Runtime as given
    /// (`[model.provider_options.qnn] backend_path = "libQnnHtp.so"`).
    pub provider_options: BTreeMap<String, BTreeMap<String, String>>,
    /// Runtime: `ort`, `tract` (pure Rust, builds with the `tract` feature) or `auto` (ONNX
    /// Runtime when its library loads, else tract).
    pub backend: crate::engine::backend::select::BackendKind,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            path: None,
            onnxruntime_library: None,
            threads: 0,
            context_length: 0,
            prefill_chunk_tokens: 0,
            execution_providers: vec!["cpu".into()],
            strict_providers: false,
            provider_options: BTreeMap::new(),
            backend: Default::default(),
        }
    }
}

/// `[socket]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketSettings {
    /// Socket path (default `/run/qwenedge/qwenedge.sock` as root, else
    /// `$XDG_RUNTIME_DIR/qwenedge.sock`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// File mode of the socket, octal (`"0660"`).
    pub mode: String,
    /// Group owning the socket file (clients in this group may connect).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Peer uids allowed to use the socket (empty = anyone who can open it). Root and the
    /// daemon's own uid are always allowed.
    pub allowed_uids: Vec<u32>,
    /// Peer primary gids allowed to use the socket.
    pub allowed_gids: Vec<u32>,
    /// Longest request line accepted, in bytes.
    pub max_request_bytes: usize,
    /// Most simultaneous connections.
    pub max_connections: usize,
}

impl Default for SocketSettings {
    fn default() -> Self {
        Self {
            path: None,
            mode: "0660".into(),
            group: None,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            max_request_bytes: 256 * 1024,
            max_connections: 64,
        }
    }
}

/// `[scheduler]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSettings {
    /// Requests that may wait for the engine; one more gets `overloaded` at once.
    pub queue_capacity: usize,
    /// Deadline of requests that do not set `deadline_ms` (0 = none).
    pub default_deadline_ms: u64,
    /// `max_tokens` of requests that do not set it.
    pub default_max_tokens: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_limit: usize,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self { queue_capacity: 16, default_deadline_ms: 0, default_max_tokens: 256, max_tokens_limit: 4096 }
    }
}

/// `[service]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings {
    /// On SIGTERM, how long running requests may take to finish before they are cancelled.
    pub shutdown_grace_ms: u64,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self { shutdown_grace_ms: 10_000 }
    }
}

/// `[intents]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntentSettings {
    /// Intent catalog (TOML); unset: the built-in catalog of Home Assistant intents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog: Option<PathBuf>,
    /// A file of `[[device]]` tables that replaces the catalog's devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<PathBuf>,
    /// Intents the model chose with a lower confidence (0–1) are answered "not recognized".
    pub min_confidence: f64,
    /// Sampling temperature of Hermes NLU queries, which carry none (0 = greedy).
    pub temperature: f32,
    /// The catalog as read and validated at load (not a configuration key).
    #[serde(skip)]
    pub loaded: Option<std::sync::Arc<crate::intent::Catalog>>,
}

impl Default for IntentSettings {
    fn default() -> Self {
        Self { catalog: None, devices: None, min_confidence: 0.5, temperature: 0.0, loaded: None }
    }
}

impl IntentSettings {
    /// The loaded catalog, else the built-in one.
    pub fn catalog(&self) -> Result<std::sync::Arc<crate::intent::Catalog>, crate::intent::CatalogError> {
        match &self.loaded {
            Some(c) => Ok(c.clone()),
            None => crate::intent::Catalog::builtin().map(std::sync::Arc::new),
        }
    }
}

/// A configuration problem, naming the key and where its value came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {msg}")]
pub struct ConfigError {
    /// The file, or the environment variable.
    pub origin: String,
    /// What is wrong, starting with the key.
    pub msg: String,
}

/// Where the settings came from, for messages.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// `QWENEDGE__…` variables that were set, by dotted key.
    pub env: BTreeMap<String, String>,
}

impl Sources {
    fn origin_of(&self, key: &str) -> String {
        if let Some(var) = self.env.get(key) {
            return format!("environment variable {var}");
        }
        match &self.file {
            Some(f) => f.display().to_string(),
            None => "defaults (no configuration file)".into(),
        }
    }
}

/// Reads `file` (if `Some`, it must exist; if `None`, [`DEFAULT_PATH`] is used when present)
/// plus the `QWENEDGE__` variables in `env`, and validates the result.
pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<(Settings, Sources), ConfigError> {
    let file = match file {
        Some(p) => {
            if !p.is_file() {
                return Err(ConfigError { origin: p.display().to_string(), msg: "configuration file not found".into() });
            }
            Some(p.to_path_buf())
        }
        None => Some(PathBuf::from(DEFAULT_PATH)).filter(|p| p.is_file()),
    };
    let mut vars = BTreeMap::new();
    let mut env_keys = BTreeMap::new();
    let prefix = format!("{ENV_PREFIX}__");
    for (name, value) in env {
        if let Some(rest) = name.strip_prefix(&prefix) {
            let key = rest.to_lowercase().replace("__", ".");
            env_keys.insert(key, name.clone());
            vars.insert(name.clone(), value.clone());
        }
    }
    let sources = Sources { file: file.clone(), env: env_keys };
    let mut builder = config::Config::builder();
    if let Some(f) = &file {
        builder = builder.add_source(config::File::new(&f.to_string_lossy(), config::FileFormat::Toml));
    }
    let mut environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .source(Some(vars.into_iter().collect()));
    for key in LIST_KEYS {
        environment = environment.with_list_parse_key(key);
    }
    let merged = builder.add_source(environment).build().map_err(|e| describe(&e, &sources))?;
    let mut settings: Settings = merged.try_deserialize().map_err(|e| describe(&e, &sources))?;
    validate(&settings, &sources)?;
    let i = &settings.intents;
    let catalog = crate::intent::Catalog::load(i.catalog.as_deref(), i.devices.as_deref()).map_err(|e| {
        let key = if i.devices.is_some() && e.to_string().contains("device") { "intents.devices" } else { "intents.catalog" };
        ConfigError { origin: sources.origin_of(key), msg: format!("{key}: {e}") }
    })?;
    settings.intents.loaded = Some(std::sync::Arc::new(catalog));
    Ok((settings, sources))
}

/// Turns a `config` crate error into one line naming the key and its origin.
fn describe(e: &config::ConfigError, sources: &Sources) -> ConfigError {
    let text = e.to_string();
    // The crate reports "... for key `section.key` in <file>"; find the key to name its origin.
    let key = text.split("for key `").nth(1).and_then(|r| r.split('`').next()).map(str::to_string);
    let unknown = text.strip_prefix("unknown field `").and_then(|r| r.split('`').next()).map(str::to_string);
    let origin = match (&key, &unknown) {
        (Some(k), Some(u)) if sources.env.contains_key(&format!("{k}.{u}")) => sources.origin_of(&format!("{k}.{u}")),
        (Some(k), _) => sources.origin_of(k),
        (None, Some(u)) => sources
            .env
            .iter()
            .find(|(k, _)| k.ends_with(&format!(".{u}")) || k == &u)
            .map(|(k, _)| sources.origin_of(k))
            .unwrap_or_else(|| sources.origin_of("")),
        _ => sources.origin_of(""),
    };
    let msg = text.split(" in /").next().unwrap_or(&text).to_string();
    ConfigError { origin, msg }
}

fn validate(s: &Settings, src: &Sources) -> Result<(), ConfigError> {
    let fail = |key: &str, msg: String| Err(ConfigError { origin: src.origin_of(key), msg: format!("{key}: {msg}") });
    match &s.model.path {
        None => return fail("model.path", "is required (the model directory)".into()),
        Some(p) => match std::fs::read_dir(p) {
            Ok(_) => {}
            Err(e) => return fail("model.path", format!("cannot read {}: {e}", p.display())),
        },
    }
    if let Some(lib) = &s.model.onnxruntime_library {
        if !lib.is_file() {
            return fail("model.onnxruntime_library", format!("{} does not exist", lib.display()));
        }
    }
    for name in &s.model.execution_providers {
        if crate::engine::backend::providers::ort_name(name).is_none() {
            let known: Vec<&str> = crate::engine::backend::providers::PROVIDERS.iter().map(|(n, _)| *n).collect();
            return fail("model.execution_providers", format!("unknown provider '{name}' (known: {})", known.join(", ")));
        }
    }
    if let Some(name) = s.model.provider_options.keys().find(|k| !s.model.execution_providers.contains(k)) {
        return fail(&format!("model.provider_options.{name}"), format!("'{name}' is not in model.execution_providers"));
    }
    if s.model.threads > 256 {
        return fail("model.threads", format!("{} is more than 256", s.model.threads));
    }
    if socket_mode(&s.socket.mode).is_none() {
        return fail("socket.mode", format!("{:?} is not an octal file mode such as \"0660\"", s.socket.mode));
    }
    if !(1024..=16 << 20).contains(&s.socket.max_request_bytes) {
        return fail("socket.max_request_bytes", format!("{} is outside 1024..=16777216", s.socket.max_request_bytes));
    }
    if s.socket.max_connections == 0 {
        return fail("socket.max_connections", "must be at least 1".into());
    }
    if s.socket.path.as_ref().is_some_and(|p| p.as_os_str().len() > 107) {
        return fail("socket.path", "is longer than a Unix socket path may be (107 bytes)".into());
    }
    if let Err((key, msg)) = s.budget.validate() {
        return fail(&key, msg);
    }
    if let Err((key, msg)) = s.mqtt.validate() {
        return fail(&key, msg);
    }
    if let Err((key, msg)) = s.cache.validate() {
        return fail(&key, msg);
    }
    if s.model.backend == crate::engine::backend::select::BackendKind::Tract && !crate::engine::backend::select::TRACT_BUILT {
        return fail("model.backend", "\"tract\" needs a build with the `tract` cargo feature".into());
    }
    if !(0.0..=1.0).contains(&s.intents.min_confidence) {
        return fail("intents.min_confidence", format!("{} is outside 0..=1", s.intents.min_confidence));
    }
    if !(0.0..=2.0).contains(&s.intents.temperature) {
        return fail("intents.temperature", format!("{} is outside 0..=2", s.intents.temperature));
    }
    if s.scheduler.queue_capacity == 0 {
        return fail("scheduler.queue_capacity", "must be at least 1".into());
    }
    if s.scheduler.max_tokens_limit == 0 {
        return fail("scheduler.max_tokens_limit", "must be at least 1".into());
    }
    if s.scheduler.default_max_tokens == 0 || s.scheduler.default_max_tokens > s.scheduler.max_tokens_limit {
        return fail(
            "scheduler.default_max_tokens",
            format!(
                "{} must be between 1 and scheduler.max_tokens_limit ({})",
                s.scheduler.default_max_tokens, s.scheduler.max_tokens_limit
            ),
        );
    }
    Ok(())
}

/// Parses an octal mode string.
pub fn socket_mode(mode: &str) -> Option<u32> {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8).ok().filter(|m| *m <= 0o777)
}

impl Settings {
    /// The socket path: configured, else the default for this user.
    pub fn socket_path(&self) -> PathBuf {
        if let Some(p) = &self.socket.path {
            return p.clone();
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|_| !root) {
            Some(dir) => PathBuf::from(dir).join("qwenedge.sock"),
            None => PathBuf::from("/run/qwenedge/qwenedge.sock"),
        }
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// The process environment as a map (for [`load`]).
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("config.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn file_and_environment_merge_with_env_winning() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().display().to_string();
        let f = write(dir.path(), &format!("[model]\npath = {model:?}\nthreads = 2\n[socket]\nallowed_uids = [1000]\n"));
        let (s, _) = load(Some(&f), &env(&[("QWENEDGE__MODEL__THREADS", "3"), ("QWENEDGE__SOCKET__ALLOWED_GIDS", "20,30")])).unwrap();
        assert_eq!(s.model.threads, 3);
        assert_eq!(s.socket.allowed_uids, vec![1000]);
        assert_eq!(s.socket.allowed_gids, vec![20, 30]);
        assert_eq!(s.scheduler.queue_capacity, 16);
    }

    #[test]
    fn errors_name_the_key_and_the_origin() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().display().to_string();
        let f = write(dir.path(), &format!("[model]\npath = {model:?}\nthreads = \"many\"\n"));
        let e = load(Some(&f), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("model.threads") && e.contains("config.toml"), "{e}");

        let f = write(dir.path(), &format!("[model]\npath = {model:?}\nthraeds = 2\n"));
        let e = load(Some(&f), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("thraeds") && e.contains("config.toml"), "{e}");

        let f = write(dir.path(), &format!("[model]\npath = {model:?}\n"));
        let e = load(Some(&f), &env(&[("QWENEDGE__SCHEDULER__QUEUE_CAPACITY", "-4")])).unwrap_err().to_string();
        assert!(e.contains("scheduler.queue_capacity") && e.contains("QWENEDGE__SCHEDULER__QUEUE_CAPACITY"), "{e}");

        let f = write(dir.path(), "[model]\npath = \"/nonexistent/model\"\n");
        let e = load(Some(&f), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("model.path") && e.contains("/nonexistent/model"), "{e}");

        let f = write(dir.path(), &format!("[model]\npath = {model:?}\nexecution_providers = [\"npu9000\"]\n"));
        let e = load(Some(&f), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("model.execution_providers") && e.contains("npu9000"), "{e}");

        let f = write(dir.path(), &format!("[model]\npath = {model:?}\n[cache]\nmin_tokens = 0\n"));
        let e = load(Some(&f), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("cache.min_tokens") && e.contains("config.toml"), "{e}");

        let f = write(dir.path(), &format!("[model]\npath = {model:?}\n[intents]\nmin_confidence = 1.5\n"));
        let e = load(Some(&f), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("intents.min_confidence"), "{e}");

        let catalog = dir.path().join("intents.toml");
        std::fs::write(&catalog, "[[intent]]\nname = \"Dim\"\n[[intent.slots]]\nname = \"level\"\ntype = \"number\"\nmin = 9\nmax = 1\n")
            .unwrap();
        let f = write(dir.path(), &format!("[model]\npath = {model:?}\n[intents]\ncatalog = {catalog:?}\n"));
        let e = load(Some(&f), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("intents.catalog") && e.contains("intent 'Dim', slot 'level'") && e.contains("min (9)"), "{e}");

        let f = write(dir.path(), &format!("[model]\npath = {model:?}\n[socket]\nmode = \"0999\"\n"));
        let e = load(Some(&f), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("socket.mode"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }

    #[test]
    fn missing_explicit_file_and_missing_model_path_are_errors() {
        let e = load(Some(Path::new("/nonexistent/qwenedge.toml")), &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/qwenedge.toml"));
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "");
        let e = load(Some(&f), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("model.path: is required"), "{e}");
    }

    #[test]
    fn printed_configuration_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().display().to_string();
        let f = write(dir.path(), &format!("[model]\npath = {model:?}\n"));
        let (s, _) = load(Some(&f), &BTreeMap::new()).unwrap();
        let f2 = write(dir.path(), &s.to_toml());
        assert_eq!(load(Some(&f2), &BTreeMap::new()).unwrap().0, s);
    }
}
