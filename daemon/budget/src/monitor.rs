//! The sensor loop: reads the thermal zone, memory and pressure every `poll_ms`, runs the
//! thermal governor and hands each [`BudgetState`] to a callback (the scheduler). Transitions
//! are logged once. A vanished or garbled file reads as "unknown", never as an error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::readers::{self, SysRoot};
use super::thermal::{ThermalGovernor, Thresholds};
use super::{memory, BudgetSettings, BudgetState};

/// Reads sensors and keeps the governor's state between reads.
pub struct Monitor {
    settings: BudgetSettings,
    root: SysRoot,
    governor: Option<ThermalGovernor>,
}

impl Monitor {
    /// A monitor for `settings`.
    pub fn new(settings: BudgetSettings) -> Self {
        let root = SysRoot::new(&settings.root);
        Self { settings, root, governor: None }
    }

    /// Thresholds: configured values, else derived from the zone's trip points.
    fn thresholds(&self, trips: &[readers::TripPoint]) -> Thresholds {
        let s = &self.settings;
        let trip = |kinds: &[&str]| trips.iter().filter(|t| kinds.contains(&t.kind.as_str())).map(|t| t.temp_c).reduce(f64::min);
        let hot = s.thermal_hot_c.or_else(|| trip(&["passive", "hot"])).unwrap_or(80.0);
        let critical = s.thermal_critical_c.or_else(|| trip(&["critical"]).map(|c| c - 5.0)).filter(|c| *c > hot).unwrap_or(hot + 10.0);
        let warm = s.thermal_warm_c.filter(|w| *w < hot).unwrap_or(hot - 10.0);
        Thresholds { warm_c: warm, hot_c: hot, critical_c: critical, hysteresis_c: s.thermal_hysteresis_c }
    }

    /// One reading of every sensor, through the governor.
    pub fn read(&mut self) -> BudgetState {
        let zones = readers::thermal_zones(&self.root);
        let zone = zones
            .iter()
            .filter(|z| self.settings.thermal_zone.is_empty() || z.kind == self.settings.thermal_zone)
            .filter(|z| z.temp_c.is_some())
            .max_by(|a, b| a.temp_c.unwrap_or(f64::MIN).total_cmp(&b.temp_c.unwrap_or(f64::MIN)));
        let thresholds = self.thresholds(zone.map_or(&[][..], |z| &z.trips));
        let governor = self.governor.get_or_insert_with(|| ThermalGovernor::new(thresholds));
        if governor.thresholds() != thresholds {
            *governor = ThermalGovernor::with_level(thresholds, governor.level());
        }
        if let Some(t) = governor.update(zone.and_then(|z| z.temp_c)) {
            let zone_name = zone.map_or("?", |z| z.kind.as_str());
            if t.to > t.from {
                warn!(from = t.from.as_str(), to = t.to.as_str(), temperature_c = t.temp_c, zone = zone_name, "thermal level raised");
            } else {
                info!(from = t.from.as_str(), to = t.to.as_str(), temperature_c = t.temp_c, zone = zone_name, "thermal level lowered");
            }
        }
        let room = memory::room(&self.root, self.settings.memory_reserve_mb);
        let pressure = readers::pressure(&self.root, "memory").map(|p| p.some_avg10);
        BudgetState {
            level: governor.level(),
            temperature_c: zone.and_then(|z| z.temp_c),
            zone: zone.map(|z| if z.kind.is_empty() { z.zone.clone() } else { z.kind.clone() }),
            thresholds: Some(thresholds),
            memory_room_mb: room.room_mb,
            memory_available_mb: room.available_mb,
            cgroup_max_mb: room.cgroup_max_mb,
            memory_pressure: pressure,
            under_pressure: pressure.is_some_and(|p| p > self.settings.memory_pressure_max),
        }
    }
}

/// Stops the sensor thread when dropped.
pub struct MonitorHandle {
    stop: Arc<AtomicBool>,
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts the sensor thread; `update` receives every reading (the first one at once).
pub fn spawn(settings: BudgetSettings, update: impl Fn(BudgetState) + Send + 'static) -> std::io::Result<MonitorHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let period = Duration::from_millis(settings.poll_ms);
    let mut monitor = Monitor::new(settings);
    std::thread::Builder::new().name("qwenedge-budget".into()).spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            update(monitor.read());
            std::thread::sleep(period);
        }
    })?;
    Ok(MonitorHandle { stop })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ThermalLevel;
    use rand::{Rng, SeedableRng};

    fn put(root: &std::path::Path, rel: &str, bytes: &[u8]) {
        let p = root.join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    #[test]
    fn thresholds_follow_trip_points_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, "/sys/class/thermal/thermal_zone0/type", b"cpu-thermal");
        put(r, "/sys/class/thermal/thermal_zone0/temp", b"72000");
        put(r, "/sys/class/thermal/thermal_zone0/trip_point_0_type", b"passive");
        put(r, "/sys/class/thermal/thermal_zone0/trip_point_0_temp", b"85000");
        put(r, "/sys/class/thermal/thermal_zone0/trip_point_1_type", b"critical");
        put(r, "/sys/class/thermal/thermal_zone0/trip_point_1_temp", b"100000");
        let mut m = Monitor::new(BudgetSettings { root: r.into(), ..Default::default() });
        let s = m.read();
        let t = s.thresholds.unwrap();
        assert_eq!((t.warm_c, t.hot_c, t.critical_c), (75.0, 85.0, 95.0));
        assert_eq!(s.level, ThermalLevel::Normal);
        let mut m = Monitor::new(BudgetSettings { root: r.into(), thermal_hot_c: Some(70.0), ..Default::default() });
        assert_eq!(m.read().level, ThermalLevel::Hot);
    }

    #[test]
    fn garbage_and_vanishing_files_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let files = [
            "/sys/class/thermal/thermal_zone0/temp",
            "/sys/class/thermal/thermal_zone0/type",
            "/sys/class/thermal/thermal_zone0/trip_point_0_temp",
            "/sys/class/thermal/thermal_zone0/trip_point_0_type",
            "/proc/meminfo",
            "/proc/self/cgroup",
            "/sys/fs/cgroup/a/memory.max",
            "/sys/fs/cgroup/a/memory.current",
            "/sys/fs/cgroup/a/memory.events",
            "/proc/pressure/memory",
            "/proc/cpuinfo",
        ];
        let samples: [&[u8]; 8] =
            [b"", b"\xff\xfe\x00", b"-1", b"99999999999999999999999", b"max\n", b"0::/a\n", b"MemAvailable: x kB", b"some avg10=NaN"];
        let mut m = Monitor::new(BudgetSettings { root: r.into(), ..Default::default() });
        for _ in 0..2000 {
            let f = files[rng.random_range(0..files.len())];
            match rng.random_range(0..3) {
                0 => {
                    let _ = std::fs::remove_file(r.join(f.trim_start_matches('/')));
                }
                1 => put(r, f, samples[rng.random_range(0..samples.len())]),
                _ => {
                    let n = rng.random_range(0..64);
                    let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                    put(r, f, &bytes);
                }
            }
            let s = m.read();
            assert!(s.temperature_c.is_none_or(|t| t.is_finite()));
            let _ = readers::cpu_info(&SysRoot::new(r));
        }
    }
}
