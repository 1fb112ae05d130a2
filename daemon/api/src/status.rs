//! The `status` and `models` answers as typed reports, serialised once for every transport
//! (and read field by field by the MQTT status and sensor topics).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::event::RequestTimings;
use super::request::Priority;

/// The daemon's lifecycle as `status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Serving.
    Ready,
    /// Loading a model (start or reload).
    Loading,
    /// Finishing in-flight work before exit.
    Draining,
    /// The engine thread has exited.
    Stopped,
}

impl Phase {
    /// The name shown in `status` and on the MQTT state sensor.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Ready => "ready",
            Phase::Loading => "loading",
            Phase::Draining => "draining",
            Phase::Stopped => "stopped",
        }
    }
}

/// How hot the device is, in the thermal governor's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ThermalLevel {
    /// No restrictions.
    #[default]
    Normal,
    /// Background work deferred; decoding paced to the duty cycle.
    Warm,
    /// Only interactive requests, with capped answers.
    Hot,
    /// New requests refused, running ones stopped.
    Critical,
}

impl ThermalLevel {
    /// Name as shown in status and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Warm => "warm",
            Self::Hot => "hot",
            Self::Critical => "critical",
        }
    }
}

/// The answer to `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// Lifecycle phase.
    pub state: Phase,
    /// The daemon's version.
    pub version: String,
    /// Seconds since start (left out of the MQTT status topic, which only changes when
    /// something happens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u64>,
    /// The model (the last one loaded, when `model_loaded` is false).
    pub model: ModelReport,
    /// Waiting requests.
    pub queue: QueueReport,
    /// Requests the engine is working on (each holds a sequence of model state).
    pub running: Vec<RunningReport>,
    /// The sequences of model state held: how many, how many wait for their turn, and their
    /// memory.
    pub sequences: SequenceReport,
    /// Counters.
    pub requests: RequestCounts,
    /// Timings of the last completed request.
    pub last_request: Option<RequestTimings>,
    /// Whether a model is loaded (false after an idle unload or a failed load).
    pub model_loaded: bool,
    /// The governors' latest decision.
    pub budget: BudgetReport,
    /// The prefix cache of the loaded model.
    pub cache: Option<CacheReport>,
    /// Where the home's names come from and how fresh they are (`[homeassistant]`); absent
    /// when they come from the configuration alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub home: Option<HomeReport>,
}

/// The home's names as Home Assistant gave them: the link and the age of the copy in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeReport {
    /// Home Assistant's address.
    pub url: String,
    /// `live` (connected, following changes), `connecting` (no copy yet), or `stale` (the
    /// last copy serves while Home Assistant is unreachable or refuses the token).
    pub sync: HomeSync,
    /// When the copy in use was taken (Unix time, milliseconds); `None` before the first.
    pub synced_at_ms: Option<u64>,
    /// Home Assistant's version, as it said when the copy was taken.
    pub ha_version: Option<String>,
    /// Entities exposed to Assist, areas and floors in the copy.
    pub entities: usize,
    /// Areas in the copy.
    pub areas: usize,
    /// Floors in the copy.
    pub floors: usize,
    /// Why the link is down, while it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The state of the link to Home Assistant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HomeSync {
    /// No copy yet, first connection under way.
    Connecting,
    /// Connected; changes are followed.
    Live,
    /// Home Assistant unreachable or the token refused: the last copy serves.
    Stale,
}

impl HomeSync {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Live => "live",
            Self::Stale => "stale",
        }
    }
}

impl StatusReport {
    /// Requests waiting, both classes.
    pub fn queued(&self) -> usize {
        self.queue.interactive + self.queue.background
    }
}

/// Waiting requests per class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueReport {
    /// Interactive requests waiting.
    pub interactive: usize,
    /// Background requests waiting.
    pub background: usize,
    /// Requests that may wait.
    pub capacity: usize,
}

/// A running request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunningReport {
    /// Its id.
    pub id: String,
    /// Its class.
    pub priority: Priority,
    /// Whether the engine works on it now or it waits for its turn.
    pub state: SequenceState,
}

/// Where a request in progress stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SequenceState {
    /// The engine's last step was one of its own.
    Running,
    /// It waits for its turn (another request's, or interactive work before a background one).
    Paused,
}

/// The sequences of model state the engine holds for requests in progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SequenceReport {
    /// Requests in progress, each with its own state.
    pub in_progress: usize,
    /// Of those, the ones waiting for their turn.
    pub paused: usize,
    /// Memory their states hold now (MiB, the estimate admission uses).
    pub held_mb: f64,
}

/// Requests answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// Completed.
    pub done: u64,
    /// Ended with an error.
    pub failed: u64,
}

/// A model as `status` and `models` describe it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelReport {
    /// The model directory's name.
    pub id: Option<String>,
    /// The model directory.
    pub path: PathBuf,
    /// `model_type` of its configuration.
    #[serde(rename = "type")]
    pub model_type: String,
    /// Context a request may use.
    pub context_length: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Of which full-attention layers (with a KV cache).
    pub full_attention_layers: usize,
    /// Weights as stored (MiB).
    pub weights_mb: u64,
    /// Width of the hidden state.
    pub hidden_size: usize,
    /// How the weights are stored: `int4` (4-bit blocks), else `fp32`/`fp16`.
    pub quantization: String,
    /// The directory's layout: `onnxruntime-genai`, or the Hub's (`transformers.js, …`) with its
    /// variant.
    pub layout: String,
    /// Whether the model ships a chat template.
    pub chat_template: bool,
    /// The runtime that runs it.
    pub backend: BackendReport,
}

impl ModelReport {
    /// No model: the daemon serves intents from the sentence templates alone.
    pub fn none() -> Self {
        Self {
            id: None,
            path: PathBuf::new(),
            model_type: "none".into(),
            context_length: 0,
            vocab_size: 0,
            layers: 0,
            full_attention_layers: 0,
            weights_mb: 0,
            hidden_size: 0,
            quantization: "none".into(),
            layout: "none".into(),
            chat_template: false,
            backend: BackendReport {
                name: "none".into(),
                version: String::new(),
                library: None,
                execution_provider: "none".into(),
                providers: Vec::new(),
                threads: 0,
                chosen: String::new(),
                placement: None,
                prefill_placement: None,
            },
        }
    }
}

/// The runtime of the loaded model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendReport {
    /// Backend name (`onnxruntime`, `tract`).
    pub name: String,
    /// Runtime version.
    pub version: String,
    /// Where the runtime library was loaded from.
    pub library: Option<String>,
    /// The execution provider that runs first.
    pub execution_provider: String,
    /// What happened to each requested provider.
    pub providers: Vec<ProviderReport>,
    /// Intra-op threads.
    pub threads: usize,
    /// Why this backend runs the model.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub chosen: String,
    /// Which execution provider runs which nodes of the graph (ONNX Runtime only; the static
    /// backend's decode graph).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementReport>,
    /// The same for the static backend's prefill graph.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_placement: Option<PlacementReport>,
}

/// What happened to one requested execution provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderReport {
    /// Configured name.
    pub name: String,
    /// Whether the session uses it.
    pub active: bool,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The plugin library it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    /// The plugin device it runs on (`NPU (Qualcomm)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// How the graph's nodes are spread over the execution providers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlacementReport {
    /// Nodes in the session's graph.
    pub total_nodes: usize,
    /// One line (`qnn took 2 of 687 nodes (Cast 1, Gather 1); cpu 685`).
    pub summary: String,
    /// Per provider, configured order, CPU last.
    pub providers: Vec<ProviderNodes>,
}

/// The nodes one execution provider took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderNodes {
    /// Configured name (`qnn`, `cpu`).
    pub ep: String,
    /// Nodes it runs.
    pub nodes: usize,
    /// Of which, by operator type.
    pub op_types: std::collections::BTreeMap<String, usize>,
    /// Nodes it did not take, by operator type, with the reason it gave.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub declined: Vec<DeclinedNodes>,
}

/// Nodes of one operator type a provider did not take, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeclinedNodes {
    /// Operator type.
    pub op_type: String,
    /// The provider's reason.
    pub reason: String,
    /// How many nodes.
    pub nodes: usize,
}

/// The thermal and memory governors' view.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct BudgetReport {
    /// Thermal level.
    pub level: ThermalLevel,
    /// Temperature of the watched zone (°C).
    pub temperature_c: Option<f64>,
    /// The zone read.
    pub zone: Option<String>,
    /// Thresholds in use.
    pub thresholds: Option<ThermalThresholds>,
    /// Memory the daemon may still use (MiB).
    pub memory_room_mb: Option<f64>,
    /// `MemAvailable` (MiB).
    pub memory_available_mb: Option<f64>,
    /// The cgroup's `memory.max` (MiB), if limited.
    pub cgroup_max_mb: Option<f64>,
    /// Memory pressure, some avg10 (%).
    pub memory_pressure: Option<f64>,
    /// Pressure above `budget.memory_pressure_max`.
    pub under_pressure: bool,
}

/// Temperatures (°C) at which each thermal level starts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ThermalThresholds {
    /// Warm from here.
    pub warm_c: f64,
    /// Hot from here.
    pub hot_c: f64,
    /// Critical from here.
    pub critical_c: f64,
    /// A level is left only below its threshold minus this.
    pub hysteresis_c: f64,
}

/// The prefix cache's counters and sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheReport {
    /// Lookups that found a cached prefix.
    pub hits: u64,
    /// Lookups that found none.
    pub misses: u64,
    /// Prompt tokens that were not prefilled thanks to a hit.
    pub reused_tokens: u64,
    /// Entries stored.
    pub insertions: u64,
    /// Entries dropped to stay inside the budget.
    pub evictions: u64,
    /// Entries held now.
    pub entries: usize,
    /// Of which pinned.
    pub pinned: usize,
    /// Bytes held now.
    pub bytes: usize,
    /// The budget in bytes (0: the cache is off).
    pub max_bytes: usize,
}
