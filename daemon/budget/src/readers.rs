//! Readers for `/sys` and `/proc` under a configurable root: thermal zones, memory, the
//! process's cgroup v2 limits, pressure stall information and CPU identification.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where `/sys` and `/proc` are found (`/` on a device).
#[derive(Debug, Clone)]
pub struct SysRoot(PathBuf);

impl Default for SysRoot {
    fn default() -> Self {
        Self(PathBuf::from("/"))
    }
}

impl SysRoot {
    /// A root at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self(dir.into())
    }

    /// `rel` (an absolute path such as `/proc/meminfo`) under this root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel.trim_start_matches('/'))
    }

    fn read(&self, rel: impl AsRef<Path>) -> Option<String> {
        let p = self.0.join(rel.as_ref().strip_prefix("/").unwrap_or(rel.as_ref()));
        std::fs::read_to_string(p).ok().map(|s| s.trim_end().to_string())
    }
}

/// A trip point of a thermal zone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TripPoint {
    /// `passive`, `active`, `hot`, `critical`.
    pub kind: String,
    /// Temperature in °C.
    pub temp_c: f64,
}

/// One `/sys/class/thermal/thermal_zone*`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThermalZone {
    /// Directory name (`thermal_zone0`).
    pub zone: String,
    /// The zone's `type` (`cpu-thermal`, `x86_pkg_temp`, …).
    pub kind: String,
    /// Current temperature in °C, if readable.
    pub temp_c: Option<f64>,
    /// Trip points.
    pub trips: Vec<TripPoint>,
}

fn millidegrees(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|m| m.is_finite()).map(|m| m / 1000.0)
}

/// Every thermal zone, sorted by name.
pub fn thermal_zones(root: &SysRoot) -> Vec<ThermalZone> {
    let dir = root.path("/sys/class/thermal");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut zones: Vec<ThermalZone> = entries
        .flatten()
        .filter_map(|e| {
            let zone = e.file_name().to_string_lossy().into_owned();
            if !zone.starts_with("thermal_zone") {
                return None;
            }
            let base = Path::new("/sys/class/thermal").join(&zone);
            let mut trips = Vec::new();
            for i in 0.. {
                let (Some(kind), Some(temp)) = (
                    root.read(base.join(format!("trip_point_{i}_type"))),
                    root.read(base.join(format!("trip_point_{i}_temp"))).and_then(|t| millidegrees(&t)),
                ) else {
                    break;
                };
                trips.push(TripPoint { kind, temp_c: temp });
            }
            Some(ThermalZone {
                kind: root.read(base.join("type")).unwrap_or_default(),
                temp_c: root.read(base.join("temp")).and_then(|t| millidegrees(&t)),
                zone,
                trips,
            })
        })
        .collect();
    zones.sort_by_key(|z| natural_key(&z.zone));
    zones
}

fn natural_key(s: &str) -> (String, u64) {
    let digits: String = s.chars().rev().take_while(char::is_ascii_digit).collect::<Vec<_>>().into_iter().rev().collect();
    (s[..s.len() - digits.len()].to_string(), digits.parse().unwrap_or(0))
}

/// `/proc/meminfo` figures in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total_mb: f64,
    /// `MemAvailable`.
    pub available_mb: f64,
}

/// Reads `/proc/meminfo`.
pub fn meminfo(root: &SysRoot) -> Option<MemInfo> {
    let text = root.read("/proc/meminfo")?;
    let field = |name: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok().filter(|v: &f64| v.is_finite())?;
        Some(kb / 1024.0)
    };
    Some(MemInfo { total_mb: field("MemTotal:")?, available_mb: field("MemAvailable:")? })
}

/// The process's cgroup v2 memory controls, in MiB (`None` = unlimited or unreadable).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CgroupMemory {
    /// The cgroup path (`/system.slice/qwenedge.service`).
    pub path: String,
    /// `memory.max`.
    pub max_mb: Option<f64>,
    /// `memory.high`.
    pub high_mb: Option<f64>,
    /// `memory.current`.
    pub current_mb: Option<f64>,
    /// `oom_kill` count from `memory.events`.
    pub oom_kills: Option<u64>,
}

/// Finds the process's cgroup (v2 unified line `0::/path` of `/proc/self/cgroup`) and reads its
/// memory files.
pub fn cgroup_memory(root: &SysRoot) -> Option<CgroupMemory> {
    let text = root.read("/proc/self/cgroup")?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?.to_string();
    let dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let mb = |file: &str| -> Option<f64> {
        let v = root.read(dir.join(file))?;
        if v == "max" {
            return None;
        }
        v.parse::<f64>().ok().filter(|b| b.is_finite()).map(|b| b / (1024.0 * 1024.0))
    };
    let oom_kills = root
        .read(dir.join("memory.events"))
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse().ok()));
    Some(CgroupMemory { max_mb: mb("memory.max"), high_mb: mb("memory.high"), current_mb: mb("memory.current"), oom_kills, path })
}

/// Pressure stall information (`some`/`full` avg10, percent).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pressure {
    /// Share of time some task stalled.
    pub some_avg10: f64,
    /// Share of time all tasks stalled (absent for `cpu` on older kernels).
    pub full_avg10: Option<f64>,
}

/// Reads `/proc/pressure/<resource>` (`memory`, `cpu`, `io`).
pub fn pressure(root: &SysRoot, resource: &str) -> Option<Pressure> {
    let text = root.read(format!("/proc/pressure/{resource}"))?;
    let avg10 = |prefix: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(prefix))?;
        line.split_whitespace().find_map(|f| f.strip_prefix("avg10="))?.parse().ok().filter(|v: &f64| v.is_finite())
    };
    Some(Pressure { some_avg10: avg10("some")?, full_avg10: avg10("full") })
}

/// What `/proc/cpuinfo` says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuInfo {
    /// Model name (x86 `model name`, ARM `Model` or `CPU part`).
    pub model: String,
    /// Logical CPUs listed.
    pub cores: usize,
    /// Instruction-set features that matter for inference kernels.
    pub features: Vec<String>,
}

/// Features ONNX Runtime's CPU kernels use when present.
const INTERESTING: &[&str] = &[
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
    "sve2",
    "fphp",
    "asimdhp",
    "bf16",
];

/// Reads `/proc/cpuinfo`.
pub fn cpu_info(root: &SysRoot) -> Option<CpuInfo> {
    let text = root.read("/proc/cpuinfo")?;
    let value = |key: &str| -> Option<String> {
        text.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model =
        value("model name").or_else(|| value("Model")).or_else(|| value("CPU part").map(|p| format!("CPU part {p}"))).unwrap_or_default();
    let cores = text.lines().filter(|l| l.starts_with("processor")).count();
    let flags = value("flags").or_else(|| value("Features")).unwrap_or_default();
    let features = flags.split_whitespace().filter(|f| INTERESTING.contains(f)).map(String::from).collect();
    Some(CpuInfo { model, cores, features })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn reads_a_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, "/sys/class/thermal/thermal_zone10/type", "gpu-thermal\n");
        put(r, "/sys/class/thermal/thermal_zone2/type", "cpu-thermal\n");
        put(r, "/sys/class/thermal/thermal_zone2/temp", "61250\n");
        put(r, "/sys/class/thermal/thermal_zone2/trip_point_0_type", "passive\n");
        put(r, "/sys/class/thermal/thermal_zone2/trip_point_0_temp", "80000\n");
        put(r, "/sys/class/thermal/cooling_device0/type", "fan\n");
        put(r, "/proc/meminfo", "MemTotal:        8000000 kB\nMemFree: 1 kB\nMemAvailable:    4096000 kB\n");
        put(r, "/proc/self/cgroup", "0::/system.slice/qwenedge.service\n");
        put(r, "/sys/fs/cgroup/system.slice/qwenedge.service/memory.max", "1677721600\n");
        put(r, "/sys/fs/cgroup/system.slice/qwenedge.service/memory.high", "max\n");
        put(r, "/sys/fs/cgroup/system.slice/qwenedge.service/memory.events", "low 0\nhigh 3\nmax 0\noom 0\noom_kill 2\n");
        put(r, "/proc/pressure/memory", "some avg10=1.50 avg60=0.20 avg300=0.00 total=1\nfull avg10=0.25 avg60=0 avg300=0 total=0\n");
        put(r, "/proc/cpuinfo", "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd0b\n\nprocessor\t: 1\n");
        let root = SysRoot::new(r);
        let zones = thermal_zones(&root);
        assert_eq!(zones.iter().map(|z| z.zone.as_str()).collect::<Vec<_>>(), ["thermal_zone2", "thermal_zone10"]);
        assert_eq!(zones[0].temp_c, Some(61.25));
        assert_eq!(zones[0].trips, vec![TripPoint { kind: "passive".into(), temp_c: 80.0 }]);
        assert_eq!(zones[1].temp_c, None);
        let m = meminfo(&root).unwrap();
        assert_eq!((m.total_mb.round(), m.available_mb.round()), (7813.0, 4000.0));
        let cg = cgroup_memory(&root).unwrap();
        assert_eq!((cg.max_mb, cg.high_mb, cg.oom_kills), (Some(1600.0), None, Some(2)));
        assert_eq!(pressure(&root, "memory").unwrap(), Pressure { some_avg10: 1.5, full_avg10: Some(0.25) });
        let cpu = cpu_info(&root).unwrap();
        assert_eq!((cpu.cores, cpu.features.clone()), (2, vec!["asimd".to_string(), "asimddp".into(), "i8mm".into()]));
        assert!(pressure(&root, "cpu").is_none(), "missing files are not errors");
    }
}
