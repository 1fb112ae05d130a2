//! The sections of the layers above the engine (`[model]`, `[socket]`, `[scheduler]`,
//! `[service]`, `[intents]`), with their defaults and their checks. Values that have a shape
//! (`socket.mode`) are parsed into typed values once, when the file is read.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use qwenedge_engine::backend::plugins::EpLibrary;
use qwenedge_engine::backend::providers;
use qwenedge_engine::backend::select::{BackendKind, TRACT_BUILT};

/// A key and what is wrong with its value (the message starts with the key).
pub type Invalid = (String, String);

/// `model.prefill_chunk_tokens` by default: at 0.8B on two x86-64 cores a chunk takes 1.7 s (what a
/// request arriving behind a long prompt waits at most), and a 4,096-token prompt prefills 3%
/// slower in chunks than in one pass.
pub const DEFAULT_PREFILL_CHUNK_TOKENS: usize = 256;

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
    /// Prompt tokens per forward pass during prefill (0 = the whole prompt at once). Each chunk
    /// is one turn on the engine: a request that arrives while a long prompt prefills waits for
    /// one chunk at most.
    pub prefill_chunk_tokens: usize,
    /// Give the model the tokens a grammar forces (the fixed parts of a tool call or an
    /// intent) in one forward pass instead of one pass each. The tokens are the same either way.
    pub batch_forced_tokens: bool,
    /// Execution providers in priority order (`qnn`, `xnnpack`, `cuda`, `tensorrt`,
    /// `openvino`, `acl`, `rknpu`, `nnapi`, `coreml`, `cpu`, or an `ep` of `ep_library`).
    /// Unavailable ones are skipped.
    pub execution_providers: Vec<String>,
    /// Execution providers shipped as plugin libraries (`[[model.ep_library]]`: `ep`, `path`,
    /// optional `device` = `cpu`/`gpu`/`npu` and `vendor`), registered once per process.
    pub ep_library: Vec<EpLibrary>,
    /// Refuse to start when a requested provider is unavailable, instead of skipping it.
    pub strict_providers: bool,
    /// Options per provider, passed to ONNX Runtime as given
    /// (`[model.provider_options.qnn] backend_path = "libQnnHtp.so"`).
    pub provider_options: BTreeMap<String, BTreeMap<String, String>>,
    /// Runtime: `ort`, `tract` (pure Rust, builds with the `tract` feature) or `auto` (ONNX
    /// Runtime when its library loads, else tract).
    pub backend: BackendKind,
    /// Which variant to load from a directory in the Hugging Face Hub's layout (`q4`, `fp32`,
    /// `q4f16`, `fp16`, `quantized`: the file suffix); unset: `q4` where present, else the first
    /// of that list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            path: None,
            onnxruntime_library: None,
            threads: 0,
            context_length: 0,
            prefill_chunk_tokens: DEFAULT_PREFILL_CHUNK_TOKENS,
            batch_forced_tokens: true,
            execution_providers: vec!["cpu".into()],
            ep_library: Vec::new(),
            strict_providers: false,
            provider_options: BTreeMap::new(),
            backend: BackendKind::default(),
            variant: None,
        }
    }
}

/// Everything loading a model reads from `[model]`. The loader takes only this, so comparing
/// it (derived `PartialEq`) tells whether a new configuration needs the model loaded again.
/// [`ModelSettings::load_settings`] names every key of `[model]`, so a new key must be placed
/// here or explicitly left out before the crate compiles.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSettings {
    /// The model directory.
    pub path: PathBuf,
    /// `model.backend`.
    pub backend: BackendKind,
    /// `model.onnxruntime_library` (changing it needs a restart: one runtime per process).
    pub onnxruntime_library: Option<PathBuf>,
    /// `model.threads`.
    pub threads: usize,
    /// `model.context_length` (the memory estimate and the context requests may use).
    pub context_length: usize,
    /// `model.execution_providers`.
    pub execution_providers: Vec<String>,
    /// `model.ep_library`.
    pub ep_library: Vec<EpLibrary>,
    /// `model.strict_providers`.
    pub strict_providers: bool,
    /// `model.provider_options`.
    pub provider_options: BTreeMap<String, BTreeMap<String, String>>,
    /// `model.variant`.
    pub variant: Option<String>,
}

impl ModelSettings {
    /// What loading reads. Every key of `[model]` is named here — the ones loading reads and,
    /// as `_`, the ones it does not — so a new key does not compile until it is placed on one
    /// side (and a key that loading reads makes a reload compare it).
    pub fn load_settings(&self) -> LoadSettings {
        let Self {
            path,
            onnxruntime_library,
            threads,
            context_length,
            prefill_chunk_tokens: _,
            batch_forced_tokens: _,
            execution_providers,
            ep_library,
            strict_providers,
            provider_options,
            backend,
            variant,
        } = self;
        LoadSettings {
            // Validation requires it; an unvalidated configuration loads nothing from "".
            path: path.clone().unwrap_or_default(),
            backend: *backend,
            onnxruntime_library: onnxruntime_library.clone(),
            threads: *threads,
            context_length: *context_length,
            execution_providers: execution_providers.clone(),
            ep_library: ep_library.clone(),
            strict_providers: *strict_providers,
            provider_options: provider_options.clone(),
            variant: variant.clone(),
        }
    }

    /// The files `[model]` names: the model directory can be read, the ONNX Runtime library
    /// exists.
    pub(super) fn check_files(&self) -> Result<(), Invalid> {
        let fail = |key: &str, msg: String| Err((key.to_string(), msg));
        if let Some(p) = &self.path {
            if let Err(e) = std::fs::read_dir(p) {
                return fail("model.path", format!("cannot read {}: {e}", p.display()));
            }
        }
        if let Some(lib) = &self.onnxruntime_library {
            if !lib.is_file() {
                return fail("model.onnxruntime_library", format!("{} does not exist", lib.display()));
            }
        }
        Ok(())
    }

    /// Checks `[model]`; `path_required` is false when the sentence templates serve intents
    /// alone (`intents.local = "only"`).
    pub(super) fn validate(&self, path_required: bool) -> Result<(), Invalid> {
        let fail = |key: &str, msg: String| Err((key.to_string(), msg));
        if self.path.is_none() && path_required {
            return fail("model.path", "is required (the model directory; intents.local = \"only\" serves intents without one)".into());
        }
        let variants = qwenedge_engine::model::hub::VARIANTS;
        if let Some(v) = self.variant.as_deref().filter(|v| !variants.iter().any(|(name, _)| name == v)) {
            let known: Vec<&str> = variants.iter().map(|(name, _)| *name).collect();
            return fail("model.variant", format!("'{v}' is not one of {}", known.join(", ")));
        }
        for (i, lib) in self.ep_library.iter().enumerate() {
            let key = format!("model.ep_library[{i}]");
            if lib.ep.is_empty() || !lib.ep.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return fail(&format!("{key}.ep"), format!("'{}' is not a provider name (letters, digits, '_', '-')", lib.ep));
            }
            if lib.ep == "cpu" {
                return fail(&format!("{key}.ep"), "'cpu' is built into ONNX Runtime and takes no plugin".into());
            }
            if self.ep_library[..i].iter().any(|o| o.ep == lib.ep) {
                return fail(&format!("{key}.ep"), format!("'{}' has two libraries; give each provider one", lib.ep));
            }
            if lib.path.as_os_str().is_empty() {
                return fail(&format!("{key}.path"), "is required (the plugin library file)".into());
            }
        }
        for name in &self.execution_providers {
            if providers::ort_name(name).is_none() && !self.ep_library.iter().any(|l| &l.ep == name) {
                let known: Vec<&str> = providers::PROVIDERS.iter().map(|(n, _)| *n).collect();
                return fail(
                    "model.execution_providers",
                    format!("unknown provider '{name}' (known: {}; a plugin's name needs a [[model.ep_library]] entry)", known.join(", ")),
                );
            }
        }
        if let Some(name) = self.provider_options.keys().find(|k| !self.execution_providers.contains(k)) {
            return fail(&format!("model.provider_options.{name}"), format!("'{name}' is not in model.execution_providers"));
        }
        if self.threads > 256 {
            return fail("model.threads", format!("{} is more than 256", self.threads));
        }
        if self.backend == BackendKind::Tract && !TRACT_BUILT {
            return fail("model.backend", "\"tract\" needs a build with the `tract` cargo feature".into());
        }
        Ok(())
    }
}

/// A file mode, written in octal (`"0660"`), parsed once when the configuration is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileMode(u32);

impl FileMode {
    /// The mode bits.
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl TryFrom<String> for FileMode {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .map(FileMode)
            .ok_or_else(|| format!("{s:?} is not an octal file mode such as \"0660\""))
    }
}

impl From<FileMode> for String {
    fn from(m: FileMode) -> String {
        format!("{:04o}", m.0)
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
    pub mode: FileMode,
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
    /// Most bytes of events a client may leave unread, counted as the memory they hold (a token
    /// event holds about 300 bytes however short its text). Past it, the client's requests are
    /// cancelled (their `cancelled` answers are still queued) and its further requests are
    /// not read until it catches up.
    pub max_unread_bytes: usize,
}

impl Default for SocketSettings {
    fn default() -> Self {
        Self {
            path: None,
            mode: FileMode(0o660),
            group: None,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            max_request_bytes: 256 * 1024,
            max_connections: 64,
            max_unread_bytes: 1 << 20,
        }
    }
}

impl SocketSettings {
    /// The socket path: configured, else the default for this user.
    pub fn path(&self) -> PathBuf {
        if let Some(p) = &self.path {
            return p.clone();
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|_| !root) {
            Some(dir) => PathBuf::from(dir).join("qwenedge.sock"),
            None => PathBuf::from("/run/qwenedge/qwenedge.sock"),
        }
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let fail = |key: &str, msg: String| Err((key.to_string(), msg));
        if !(1024..=16 << 20).contains(&self.max_request_bytes) {
            return fail("socket.max_request_bytes", format!("{} is outside 1024..=16777216", self.max_request_bytes));
        }
        if self.max_connections == 0 {
            return fail("socket.max_connections", "must be at least 1".into());
        }
        if !(1024..=1 << 30).contains(&self.max_unread_bytes) {
            return fail("socket.max_unread_bytes", format!("{} is outside 1024..=1073741824", self.max_unread_bytes));
        }
        if self.path.as_ref().is_some_and(|p| p.as_os_str().len() > 107) {
            return fail("socket.path", "is longer than a Unix socket path may be (107 bytes)".into());
        }
        Ok(())
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
    /// Interactive requests in progress at once, each with its own model state; they take
    /// turns on the engine. One more waits in the queue until one ends.
    pub max_sequences: usize,
    /// Tokens a generation makes in one turn before the next request in progress has its turn
    /// (a turn of a prompt is one prefill chunk).
    pub turn_tokens: usize,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            queue_capacity: 16,
            default_deadline_ms: 0,
            default_max_tokens: 256,
            max_tokens_limit: 4096,
            max_sequences: 4,
            turn_tokens: 4,
        }
    }
}

impl SchedulerSettings {
    /// The limits requests are parsed under.
    pub fn limits(&self) -> qwenedge_api::Limits {
        qwenedge_api::Limits { max_tokens: self.max_tokens_limit }
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let fail = |key: &str, msg: String| Err((key.to_string(), msg));
        if self.queue_capacity == 0 {
            return fail("scheduler.queue_capacity", "must be at least 1".into());
        }
        if self.max_tokens_limit == 0 {
            return fail("scheduler.max_tokens_limit", "must be at least 1".into());
        }
        if self.max_sequences == 0 {
            return fail("scheduler.max_sequences", "must be at least 1".into());
        }
        if self.turn_tokens == 0 {
            return fail("scheduler.turn_tokens", "must be at least 1".into());
        }
        if self.default_max_tokens == 0 || self.default_max_tokens > self.max_tokens_limit {
            return fail(
                "scheduler.default_max_tokens",
                format!("{} must be between 1 and scheduler.max_tokens_limit ({})", self.default_max_tokens, self.max_tokens_limit),
            );
        }
        Ok(())
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
    /// Sampling temperature of Hermes NLU queries and Wyoming transcripts, which carry none
    /// (0 = greedy).
    pub temperature: f32,
    /// Home Assistant's sentence templates: tried before the model (`first`), instead of it
    /// (`only`: no model is needed), or not at all (`off`).
    pub local: LocalMode,
    /// Language of utterances that name none: a language of the sentence data (`en`, `de`,
    /// `zh-CN`, …).
    pub language: String,
    /// The sentence data (`intents/<lang>.json`, `numbers/<lang>.json`); unset: the data
    /// installed with the daemon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentences_dir: Option<PathBuf>,
    /// Custom sentences in Home Assistant's layout (`<dir>/<language>/*.yaml`), ranked before
    /// the built-in ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_sentences: Option<PathBuf>,
    /// The area of each satellite (`site_id` of Hermes queries and `intent` requests), for
    /// commands that mean "here" ("turn on the lights").
    pub site_areas: BTreeMap<String, String>,
}

/// Where the sentence templates are tried (`intents.local`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalMode {
    /// Before the model: a match answers at once, anything else goes to the model.
    #[default]
    First,
    /// Instead of the model: what no template matches is not recognized.
    Only,
    /// Never: every utterance goes to the model.
    Off,
}

impl Default for IntentSettings {
    fn default() -> Self {
        Self {
            catalog: None,
            devices: None,
            min_confidence: 0.5,
            temperature: 0.0,
            local: LocalMode::First,
            language: "en".into(),
            sentences_dir: None,
            custom_sentences: None,
            site_areas: BTreeMap::new(),
        }
    }
}

impl IntentSettings {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let fail = |key: &str, msg: String| Err((key.to_string(), msg));
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return fail("intents.min_confidence", format!("{} is outside 0..=1", self.min_confidence));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return fail("intents.temperature", format!("{} is outside 0..=2", self.temperature));
        }
        let code = |l: &str| !l.is_empty() && l.len() <= 16 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !code(&self.language) {
            return fail("intents.language", format!("'{}' is not a language code such as 'en' or 'zh-CN'", self.language));
        }
        if let Some((site, _)) = self.site_areas.iter().find(|(s, a)| s.is_empty() || a.trim().is_empty()) {
            return fail("intents.site_areas", format!("'{site}': a satellite and its area must not be empty"));
        }
        Ok(())
    }

    /// The directories `[intents]` names can be read.
    pub(super) fn check_files(&self) -> Result<(), Invalid> {
        for (key, dir) in [("intents.sentences_dir", &self.sentences_dir), ("intents.custom_sentences", &self.custom_sentences)] {
            if let Some(d) = dir {
                if let Err(e) = std::fs::read_dir(d) {
                    return Err((key.to_string(), format!("cannot read {}: {e}", d.display())));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_modes_parse_once_and_print_back() {
        assert_eq!(FileMode::try_from("0660".to_string()).unwrap().bits(), 0o660);
        assert_eq!(FileMode::try_from("0o600".to_string()).unwrap().bits(), 0o600);
        assert!(FileMode::try_from("0999".to_string()).is_err());
        assert!(FileMode::try_from("1777".to_string()).is_err());
        assert_eq!(String::from(FileMode(0o640)), "0640");
    }
}
