//! The daemon's configuration: one TOML file (default `/etc/qwenedge/config.toml`) with every key
//! overridable by a `QWENEDGE__SECTION__KEY` environment variable, parsed once into typed,
//! defaulted and validated [`Settings`] (shared as `Arc`; each layer reads its own section).
//! Any problem stops start-up with one [`ConfigError`] line naming the key and where the value
//! came from; nothing starts half-configured.
//!
//! Sections of the layers below (`[budget]`, `[cache]`) are defined by those layers; the rest
//! here (`sections`, `mqtt`, `http`, `wyoming`), so that no transport is imported by the configuration.

mod cache;
pub mod homeassistant;
pub mod http;
pub mod hub;
pub mod mqtt;
mod sections;
pub mod wyoming;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use cache::CacheSettings;
pub use homeassistant::HomeAssistantSettings;
pub use http::HttpSettings;
pub use hub::HubSettings;
pub use mqtt::MqttSettings;
pub use sections::{FileMode, IntentSettings, LoadSettings, LocalMode, ModelSettings, SchedulerSettings, ServiceSettings, SocketSettings};
pub use wyoming::{Program as WyomingProgram, WyomingSettings};

use qwenedge_intent::Catalog;

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/qwenedge/config.toml";

/// Environment variable prefix; `QWENEDGE__MODEL__PATH` sets `model.path`.
pub const ENV_PREFIX: &str = "QWENEDGE";

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] =
    &["socket.allowed_uids", "socket.allowed_gids", "model.execution_providers", "wyoming.programs", "wyoming.languages"];

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
    pub budget: qwenedge_budget::BudgetSettings,
    /// The MQTT transport.
    pub mqtt: MqttSettings,
    /// The HTTP APIs (OpenAI and Ollama compatible).
    pub http: HttpSettings,
    /// The Wyoming server (Home Assistant's Assist pipelines).
    pub wyoming: WyomingSettings,
    /// The prefix-state cache.
    pub cache: CacheSettings,
    /// Intent recognition.
    pub intents: IntentSettings,
    /// The home's names from Home Assistant.
    pub homeassistant: HomeAssistantSettings,
    /// Pulling models from the Hugging Face Hub.
    pub hub: HubSettings,
}

/// A configuration problem, naming the key and where its value came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {msg}")]
pub struct ConfigError {
    /// The file, or the environment variable.
    pub origin: String,
    /// The key at fault (`socket.mode`), when one is.
    pub key: Option<String>,
    /// What is wrong, starting with the key.
    pub msg: String,
}

/// A configuration as read: the settings and the intent catalog they name, both validated.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings.
    pub settings: Arc<Settings>,
    /// The intent catalog (`intents.catalog` / `intents.devices`, else the built-in one).
    pub catalog: Arc<Catalog>,
    /// Where the values came from.
    pub sources: Sources,
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
pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Loaded, ConfigError> {
    let (settings, sources) = read(file, env)?;
    validate(&settings, &sources)?;
    check_files(&settings, &sources)?;
    let i = &settings.intents;
    let catalog = Catalog::load(i.catalog.as_deref(), i.devices.as_deref()).map_err(|e| {
        let from_devices = i.devices.as_deref().is_some_and(|d| e.origin() == d.display().to_string());
        let key = if from_devices { "intents.devices" } else { "intents.catalog" };
        ConfigError { origin: sources.origin_of(key), key: Some(key.into()), msg: format!("{key}: {e}") }
    })?;
    Ok(Loaded { settings: Arc::new(settings), catalog: Arc::new(catalog), sources })
}

/// The settings as written (types checked, values not validated) and where they came from.
fn read(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<(Settings, Sources), ConfigError> {
    let file = match file {
        Some(p) => {
            if !p.is_file() {
                return Err(ConfigError { origin: p.display().to_string(), key: None, msg: "configuration file not found".into() });
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
    let settings: Settings = merged.try_deserialize().map_err(|e| describe(&e, &sources))?;
    Ok((settings, sources))
}

/// Reads the configuration as [`load`] does but checks `[hub]` alone: the model store's commands
/// need no model, socket or broker.
pub fn load_hub(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<HubSettings, ConfigError> {
    let (settings, sources) = read(file, env)?;
    if let Err((key, msg)) = settings.hub.validate() {
        return Err(ConfigError { origin: sources.origin_of(&key), msg: format!("{key}: {msg}"), key: Some(key) });
    }
    Ok(settings.hub)
}

/// Turns a `config` crate error into one line naming the key and its origin, from the error's
/// own fields (the key a type or custom error carries; the file a parse error names).
fn describe(e: &config::ConfigError, sources: &Sources) -> ConfigError {
    use config::ConfigError as E;
    let (key, what) = match e {
        E::Type { key, unexpected, expected, .. } => (key.clone(), format!("invalid type: {unexpected}, expected {expected}")),
        E::At { error, key, .. } => (key.clone(), inner_text(error)),
        E::FileParse { uri, cause } => {
            let origin = uri.clone().unwrap_or_else(|| sources.origin_of(""));
            return ConfigError { origin, key: None, msg: cause.to_string() };
        }
        E::NotFound(key) => (Some(key.clone()), "not found".into()),
        other => (None, other.to_string()),
    };
    // An unknown key inside a section: serde names the field (`unknown field `thraeds``), the
    // error carries the section.
    let unknown = unknown_field(&what);
    let key = match (key, unknown) {
        (Some(k), Some(u)) => Some(format!("{k}.{u}")),
        (None, Some(u)) => sources.env.keys().find(|k| k.ends_with(&format!(".{u}")) || **k == u).cloned().or(Some(u)),
        (k, None) => k,
    };
    let origin = sources.origin_of(key.as_deref().unwrap_or(""));
    let msg = match &key {
        Some(k) => format!("{what} for key `{k}`"),
        None => what,
    };
    ConfigError { origin, key, msg }
}

/// The text of an error a key was added to, without the key.
fn inner_text(e: &config::ConfigError) -> String {
    match e {
        config::ConfigError::Message(m) => m.clone(),
        config::ConfigError::At { error, .. } => inner_text(error),
        other => other.to_string(),
    }
}

/// The field serde's `deny_unknown_fields` refused (its message: "unknown field `x`, expected …").
fn unknown_field(message: &str) -> Option<String> {
    message.strip_prefix("unknown field `").and_then(|r| r.split('`').next()).map(str::to_string)
}

/// The second step, after [`validate`]: the files the settings name exist and can be read
/// (the model directory, the ONNX Runtime library, MQTT's password and certificates). The
/// intent catalog and device list are read after this, by [`Catalog::load`].
fn check_files(s: &Settings, src: &Sources) -> Result<(), ConfigError> {
    match [s.model.check_files(), s.mqtt.check_files(), s.intents.check_files()].into_iter().find_map(Result::err) {
        Some((key, msg)) => Err(ConfigError { origin: src.origin_of(&key), msg: format!("{key}: {msg}"), key: Some(key) }),
        None => Ok(()),
    }
}

/// The first step: every value within its range and consistent with the others; no file is
/// read.
fn validate(s: &Settings, src: &Sources) -> Result<(), ConfigError> {
    let checks = [
        s.model.validate(s.intents.local != LocalMode::Only),
        s.socket.validate(),
        s.budget.validate(),
        s.mqtt.validate(),
        s.http.validate(),
        s.wyoming.validate(),
        s.cache.validate(),
        s.intents.validate(),
        s.scheduler.validate(),
        s.homeassistant.validate(),
        s.hub.validate(),
    ];
    match checks.into_iter().find_map(Result::err) {
        Some((key, msg)) => Err(ConfigError { origin: src.origin_of(&key), msg: format!("{key}: {msg}"), key: Some(key) }),
        None => Ok(()),
    }
}

impl Settings {
    /// The sections that only a restart applies and that differ between `self` and `new`
    /// (whole sections are compared, so no key is forgotten).
    pub fn restart_needed(&self, new: &Settings) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.socket != new.socket {
            keys.push("[socket]");
        }
        if self.mqtt != new.mqtt {
            keys.push("[mqtt]");
        }
        if self.http != new.http {
            keys.push("[http]");
        }
        if self.wyoming != new.wyoming {
            keys.push("[wyoming]");
        }
        if self.service != new.service {
            keys.push("[service]");
        }
        if self.homeassistant != new.homeassistant {
            keys.push("[homeassistant]");
        }
        if self.model.onnxruntime_library != new.model.onnxruntime_library {
            keys.push("model.onnxruntime_library");
        }
        keys
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
        let s = load(Some(&f), &env(&[("QWENEDGE__MODEL__THREADS", "3"), ("QWENEDGE__SOCKET__ALLOWED_GIDS", "20,30")])).unwrap().settings;
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

        // A plugin's name is known once a [[model.ep_library]] entry gives it; its file is
        // checked when the model loads (strict_providers decides what a missing one does).
        let lib = "[[model.ep_library]]\nep = \"npu9000\"\npath = \"/opt/npu9000/libplugin.so\"\ndevice = \"npu\"\n";
        let f = write(dir.path(), &format!("[model]\npath = {model:?}\nexecution_providers = [\"npu9000\", \"cpu\"]\n{lib}"));
        let loaded = load(Some(&f), &BTreeMap::new()).unwrap();
        assert_eq!(loaded.settings.model.ep_library[0].ep, "npu9000");
        let f = write(dir.path(), &format!("[model]\npath = {model:?}\n{lib}{lib}"));
        let e = load(Some(&f), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("model.ep_library[1].ep") && e.contains("two libraries"), "{e}");
        let f = write(dir.path(), &format!("[model]\npath = {model:?}\n{}", lib.replace("\"npu\"", "\"dsp\"")));
        let e = load(Some(&f), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("device") && e.contains("dsp"), "{e}");
        let f = write(dir.path(), &format!("[model]\npath = {model:?}\n{}", lib.replace("npu9000", "cpu")));
        let e = load(Some(&f), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("model.ep_library[0].ep") && e.contains("built into"), "{e}");

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

        let f = write(dir.path(), &format!("[model]\npath = {model:?}\n[mqtt]\nurl = \"http://broker\"\n"));
        let e = load(Some(&f), &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("mqtt.url") && e.to_string().contains("mqtt://"), "{e}");
        assert_eq!(e.key.as_deref(), Some("mqtt.url"));
    }

    #[test]
    fn a_hub_variant_is_one_of_the_known_suffixes() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().display().to_string();
        let f = write(dir.path(), &format!("[model]\npath = {model:?}\nvariant = \"q3\"\n"));
        let e = load(Some(&f), &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("model.variant") && e.contains("q4, fp32"), "{e}");
        let s = load(Some(&f), &env(&[("QWENEDGE__MODEL__VARIANT", "fp32")])).unwrap().settings;
        assert_eq!(s.model.load_settings().variant.as_deref(), Some("fp32"));
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
        let s = load(Some(&f), &BTreeMap::new()).unwrap().settings;
        let f2 = write(dir.path(), &s.to_toml());
        assert_eq!(load(Some(&f2), &BTreeMap::new()).unwrap().settings, s);
    }
}
