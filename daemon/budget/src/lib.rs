//! The device's budgets: what the kernel says about temperature, memory and pressure, and the
//! governors that turn it into a [`BudgetState`] the scheduler obeys. The readers take a root
//! directory (`/` on a device, a fake tree in tests), and a missing or garbled file is never an
//! error — it only means less is known.

pub mod memory;
pub mod monitor;
pub mod readers;
pub mod thermal;

use qwenedge_api::ThermalLevel;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[budget]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetSettings {
    /// Prefix for `/sys` and `/proc` (tests point it at a fake tree).
    pub root: PathBuf,
    /// Thermal zone `type` to watch (e.g. `cpu-thermal`); empty = the hottest zone.
    pub thermal_zone: String,
    /// Warm from this temperature (°C); unset = 10 °C below the hot threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thermal_warm_c: Option<f64>,
    /// Hot from this temperature; unset = the zone's passive trip point, else 80 °C.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thermal_hot_c: Option<f64>,
    /// Critical from this temperature; unset = the zone's critical trip point minus 5 °C,
    /// else 10 °C above hot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thermal_critical_c: Option<f64>,
    /// A level is left only this far below its threshold.
    pub thermal_hysteresis_c: f64,
    /// Share of time spent computing while warm (0.1–1.0): decoding sleeps between tokens.
    pub warm_duty_cycle: f64,
    /// `max_tokens` cap while hot.
    pub hot_max_tokens: usize,
    /// A smaller model directory to switch to while hot (unset = keep the model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot_model: Option<PathBuf>,
    /// How often the sensors are read.
    pub poll_ms: u64,
    /// Memory kept free for the rest of the system.
    pub memory_reserve_mb: u64,
    /// Memory pressure (`/proc/pressure/memory` some avg10, %) above which background
    /// requests are refused and caches shrink.
    pub memory_pressure_max: f64,
    /// Unload the model after this long without requests (0 = never); the next request
    /// reloads it.
    pub idle_unload_s: u64,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            thermal_zone: String::new(),
            thermal_warm_c: None,
            thermal_hot_c: None,
            thermal_critical_c: None,
            thermal_hysteresis_c: 3.0,
            warm_duty_cycle: 0.5,
            hot_max_tokens: 64,
            hot_model: None,
            poll_ms: 1000,
            memory_reserve_mb: 128,
            memory_pressure_max: 20.0,
            idle_unload_s: 0,
        }
    }
}

impl BudgetSettings {
    /// Checks ranges; the message starts with the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((format!("budget.{k}"), m));
        if !(0.1..=1.0).contains(&self.warm_duty_cycle) {
            return err("warm_duty_cycle", format!("{} is outside 0.1..=1.0", self.warm_duty_cycle));
        }
        if self.hot_max_tokens == 0 {
            return err("hot_max_tokens", "must be at least 1".into());
        }
        if !(50..=60_000).contains(&self.poll_ms) {
            return err("poll_ms", format!("{} is outside 50..=60000", self.poll_ms));
        }
        if !(self.thermal_hysteresis_c >= 0.0 && self.thermal_hysteresis_c <= 20.0) {
            return err("thermal_hysteresis_c", format!("{} is outside 0..=20", self.thermal_hysteresis_c));
        }
        if let (Some(w), Some(h)) = (self.thermal_warm_c, self.thermal_hot_c) {
            if w >= h {
                return err("thermal_warm_c", format!("{w} must be below budget.thermal_hot_c ({h})"));
            }
        }
        if let (Some(h), Some(c)) = (self.thermal_hot_c, self.thermal_critical_c) {
            if h >= c {
                return err("thermal_hot_c", format!("{h} must be below budget.thermal_critical_c ({c})"));
            }
        }
        if let Some(p) = &self.hot_model {
            if !p.is_dir() {
                return err("hot_model", format!("{} is not a directory", p.display()));
            }
        }
        Ok(())
    }
}

/// What the governors decided, for admission, the engine thread and `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct BudgetState {
    /// Thermal level.
    pub level: ThermalLevel,
    /// Temperature of the watched zone (°C).
    pub temperature_c: Option<f64>,
    /// The zone read.
    pub zone: Option<String>,
    /// Thresholds in use.
    pub thresholds: Option<thermal::Thresholds>,
    /// Memory the daemon may still use (MiB): min(MemAvailable, cgroup headroom) − reserve.
    pub memory_room_mb: Option<f64>,
    /// `MemAvailable` (MiB).
    pub memory_available_mb: Option<f64>,
    /// The cgroup's `memory.max` (MiB), if limited.
    pub cgroup_max_mb: Option<f64>,
    /// Memory pressure, some avg10 (%).
    pub memory_pressure: Option<f64>,
    /// Pressure above `memory_pressure_max`.
    pub under_pressure: bool,
}

impl BudgetState {
    /// The state as `status` reports it.
    pub fn report(&self) -> qwenedge_api::BudgetReport {
        qwenedge_api::BudgetReport {
            level: self.level,
            temperature_c: self.temperature_c,
            zone: self.zone.clone(),
            thresholds: self.thresholds.map(|t| qwenedge_api::ThermalThresholds {
                warm_c: t.warm_c,
                hot_c: t.hot_c,
                critical_c: t.critical_c,
                hysteresis_c: t.hysteresis_c,
            }),
            memory_room_mb: self.memory_room_mb,
            memory_available_mb: self.memory_available_mb,
            cgroup_max_mb: self.cgroup_max_mb,
            memory_pressure: self.memory_pressure,
            under_pressure: self.under_pressure,
        }
    }
}
