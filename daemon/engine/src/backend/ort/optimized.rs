//! Saved optimized sessions: ONNX Runtime's optimized graph with its pre-packed weights
//! (`session.save_external_prepacked_constant_initializers`), written once per model, runtime
//! and CPU, and memory-mapped on later loads.
//!
//! ONNX Runtime repacks every 4-bit weight for its int8 kernels when a session is created; the
//! packed copies are anonymous memory beside the mapped originals. Loading the saved session
//! instead maps the packed weights from the saved data file, so they are clean file pages the
//! kernel can reclaim and share, no packing work is done, and nothing is held twice.
//!
//! One directory per entry, named by a hash of its identity (see [`identity`]):
//!
//! ```text
//! <dir>/<hash>/model.onnx  model.onnx.data  entry.json
//! ```
//!
//! An entry is built in `<hash>.tmp-<pid>` and renamed when complete; `entry.json`, written last,
//! repeats the identity and the size of each file, checked on every load (a truncated, replaced
//! or foreign entry is deleted and built again). The directory is kept under its byte budget by
//! deleting the least recently used entries.

use std::path::{Path, PathBuf};

use ring::digest::{digest, SHA256};

use crate::onnx::edit::align_external_data;
use serde::{Deserialize, Serialize};

/// Version of the entry layout and of what [`identity`] covers.
const FORMAT: u32 = 1;
/// The saved graph's name inside an entry.
pub(super) const MODEL: &str = "model.onnx";
/// The saved weights' name, beside the graph (ONNX Runtime resolves it relative to it).
pub(super) const DATA: &str = "model.onnx.data";
const ENTRY: &str = "entry.json";

/// Where saved sessions go, and how much disk they may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptimizedCache {
    /// The directory (created when first needed).
    pub dir: PathBuf,
    /// Bytes all entries together may take; an entry larger than this is not saved.
    pub max_bytes: u64,
    /// Memory free for the first load (`None`: unknown). Saving holds every weight in memory
    /// once more while ONNX Runtime writes it (the 9B-width fixture's save peaked at 5.4 GB of
    /// anonymous memory for a 5.1 GB data file, where packing at load peaks at 2.2 GB), so it
    /// is skipped when less than twice the weights' size is free.
    pub room_bytes: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct EntryFile {
    format: u32,
    identity: String,
    files: Vec<(String, u64)>,
    /// SHA-256 of the saved graph (small; checked before it is loaded).
    graph_sha256: String,
    /// SHA-256 of the probe's logits when saved (see `OrtBackend::probe`), checked after
    /// every load: a damaged data file answers differently.
    probe_sha256: String,
}

/// Where an entry stands.
pub(super) enum Lookup {
    /// A complete entry for this identity: load its graph (the path), then check the probe's
    /// logits hash to the value given.
    Hit(PathBuf, String),
    /// None (or a bad one, deleted; the reason is logged): build it in the scratch directory
    /// [`OptimizedCache::paths`] names, then [`OptimizedCache::publish`] it.
    Miss,
}

/// The CPU's model and feature flags (the packed layout depends on the instructions the
/// kernels use): the first processor's `model name`/`flags` (x86) or
/// `CPU implementer`/`CPU part`/`Features` (Arm) lines of `/proc/cpuinfo`.
fn cpu_features() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let keys = ["model name", "flags", "CPU implementer", "CPU part", "Features"];
    let first = info.split("\n\n").next().unwrap_or_default();
    first
        .lines()
        .filter(|l| keys.iter().any(|k| l.split(':').next().is_some_and(|n| n.trim() == *k)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A file's path, size and modification time, or that it could not be read.
fn stamp(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!("{}:{}:{}.{}", path.display(), m.len(), m.mtime(), m.mtime_nsec()),
        Err(_) => format!("{}:unreadable", path.display()),
    }
}

/// Everything that determines a saved session: this build, the runtime (version and library
/// file), the CPU, the model files, and the graph edits applied before ONNX Runtime saw it.
pub(super) fn identity(runtime_version: &str, library: &Path, model_files: &str, edits: &str) -> String {
    format!(
        "format {FORMAT}\nqwenedge {}\nonnxruntime {runtime_version} {}\nmodel {model_files}\nedits {edits}\ncpu {}",
        env!("CARGO_PKG_VERSION"),
        stamp(library),
        cpu_features()
    )
}

/// An entry's directory name: the first 16 hex digits of its identity's SHA-256.
fn hash(identity: &str) -> String {
    sha256_hex(identity.as_bytes())[..16].to_string()
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|es| es.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// SHA-256 of `bytes`, in hex.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    digest(&SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The entry's probe hash, or why the entry cannot be used.
fn check_entry(entry: &Path, identity: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(entry.join(ENTRY)).map_err(|e| format!("{}: {e}", entry.join(ENTRY).display()))?;
    let file =
        serde_json::from_str::<EntryFile>(&text).map_err(|_| format!("{} is not an entry description", entry.join(ENTRY).display()))?;
    if file.format != FORMAT || file.identity != identity {
        return Err(format!("{} was made for another model, runtime or CPU", entry.display()));
    }
    for (name, len) in &file.files {
        match std::fs::metadata(entry.join(name)) {
            Ok(m) if m.len() == *len => {}
            Ok(m) => return Err(format!("{} has {} bytes, {len} expected", entry.join(name).display(), m.len())),
            Err(e) => return Err(format!("{}: {e}", entry.join(name).display())),
        }
    }
    let graph = std::fs::read(entry.join(MODEL)).map_err(|e| format!("{}: {e}", entry.join(MODEL).display()))?;
    if sha256_hex(&graph) != file.graph_sha256 {
        return Err(format!("{} does not match its checksum", entry.join(MODEL).display()));
    }
    Ok(file.probe_sha256)
}

/// Lays the saved data file out again with every region aligned (see
/// [`align_external_data`]), and rewrites the saved graph to match.
fn realign(tmp: &Path) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let (model, data, aligned) = (tmp.join(MODEL), tmp.join(DATA), tmp.join(format!("{DATA}.aligned")));
    let bytes = std::fs::read(&model).map_err(|e| io(&model, e))?;
    let plan = align_external_data(&bytes).map_err(|e| format!("{}: {e}", model.display()))?;
    let mut src = std::fs::File::open(&data).map_err(|e| io(&data, e))?;
    let mut dst = std::io::BufWriter::new(std::fs::File::create(&aligned).map_err(|e| io(&aligned, e))?);
    let mut at = 0u64;
    for m in &plan.moves {
        let pad = usize::try_from(m.to - at).unwrap_or(0);
        dst.write_all(&vec![0u8; pad]).map_err(|e| io(&aligned, e))?;
        src.seek(SeekFrom::Start(m.from)).map_err(|e| io(&data, e))?;
        let copied = std::io::copy(&mut (&mut src).take(m.len), &mut dst).map_err(|e| io(&aligned, e))?;
        if copied != m.len {
            return Err(format!("{} ends inside a tensor (offset {} + {} bytes)", data.display(), m.from, m.len));
        }
        at = m.to + m.len;
    }
    dst.flush().map_err(|e| io(&aligned, e))?;
    drop(dst);
    std::fs::rename(&aligned, &data).map_err(|e| io(&data, e))?;
    std::fs::write(&model, &plan.model).map_err(|e| io(&model, e))
}

impl OptimizedCache {
    /// Finds the entry for `identity`, deleting one that cannot be used.
    pub(super) fn lookup(&self, identity: &str) -> Lookup {
        let (_, entry) = self.paths(identity);
        if !entry.exists() {
            return Lookup::Miss;
        }
        match check_entry(&entry, identity) {
            Ok(probe) => {
                // Marks the entry used (least recently used entries are pruned first).
                let _ = std::fs::File::open(entry.join(ENTRY)).and_then(|f| f.set_modified(std::time::SystemTime::now()));
                Lookup::Hit(entry.join(MODEL), probe)
            }
            Err(why) => {
                tracing::warn!(entry = %entry.display(), reason = %why, "saved optimized model unusable; building it again");
                let _ = std::fs::remove_dir_all(&entry);
                Lookup::Miss
            }
        }
    }

    /// The scratch directory this process saves `identity`'s entry in, and the entry's place.
    pub(super) fn paths(&self, identity: &str) -> (PathBuf, PathBuf) {
        let name = hash(identity);
        (self.dir.join(format!("{name}.tmp-{}", std::process::id())), self.dir.join(name))
    }

    /// Makes an empty scratch directory for a save.
    pub(super) fn begin(&self, tmp: &Path) -> std::io::Result<()> {
        let _ = std::fs::remove_dir_all(tmp);
        std::fs::create_dir_all(tmp)
    }

    /// Readies what ONNX Runtime saved in `tmp` for loading: aligns the data file and checks
    /// that the entry fits the budget. Returns the graph to load.
    pub(super) fn prepare(&self, tmp: &Path) -> Result<PathBuf, String> {
        let result = self.try_prepare(tmp);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(tmp);
        }
        result
    }

    fn try_prepare(&self, tmp: &Path) -> Result<PathBuf, String> {
        realign(tmp)?;
        let total: u64 = [MODEL, DATA].iter().map(|n| std::fs::metadata(tmp.join(n)).map(|m| m.len()).unwrap_or(0)).sum();
        if total > self.max_bytes {
            return Err(format!(
                "the saved model takes {} MiB, more than cache.optimized_max_disk_mb ({} MiB)",
                total >> 20,
                self.max_bytes >> 20
            ));
        }
        Ok(tmp.join(MODEL))
    }

    /// Completes a prepared entry whose session answered the probe with logits hashing to
    /// `probe`: writes `entry.json`, renames the scratch directory into place and prunes older
    /// entries. On error the scratch directory is removed and the message says why.
    pub(super) fn publish(&self, tmp: &Path, entry: &Path, identity: &str, probe: &str) -> Result<(), String> {
        let result = self.try_publish(tmp, entry, identity, probe);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(tmp);
        }
        result
    }

    fn try_publish(&self, tmp: &Path, entry: &Path, identity: &str, probe: &str) -> Result<(), String> {
        let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
        let mut files = Vec::new();
        for name in [MODEL, DATA] {
            let p = tmp.join(name);
            let f = std::fs::File::open(&p).map_err(|e| io(&p, e))?;
            f.sync_all().map_err(|e| io(&p, e))?;
            files.push((name.to_string(), f.metadata().map_err(|e| io(&p, e))?.len()));
        }
        let graph = std::fs::read(tmp.join(MODEL)).map_err(|e| io(&tmp.join(MODEL), e))?;
        let file = EntryFile {
            format: FORMAT,
            identity: identity.to_string(),
            files,
            graph_sha256: sha256_hex(&graph),
            probe_sha256: probe.to_string(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
        let p = tmp.join(ENTRY);
        std::fs::write(&p, text).and_then(|()| std::fs::File::open(&p)?.sync_all()).map_err(|e| io(&p, e))?;
        if let Err(e) = std::fs::rename(tmp, entry) {
            // Another process may have saved the same entry first: that one is used next time.
            if check_entry(entry, identity).is_err() {
                return Err(io(entry, e));
            }
            let _ = std::fs::remove_dir_all(tmp);
        }
        self.prune(entry);
        Ok(())
    }

    /// Deletes the least recently used entries (and scratch directories of dead processes)
    /// until the rest fit the budget; `keep` is never deleted.
    fn prune(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut all: Vec<(std::time::SystemTime, PathBuf, u64)> = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path == keep || !path.is_dir() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((_, pid)) = name.split_once(".tmp-") {
                let alive = pid.parse::<u32>().is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
                if !alive {
                    let _ = std::fs::remove_dir_all(&path);
                }
                continue;
            }
            let used = std::fs::metadata(path.join(ENTRY)).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
            all.push((used, path.clone(), dir_size(&path)));
        }
        all.sort();
        let mut total = dir_size(keep) + all.iter().map(|e| e.2).sum::<u64>();
        for (_, path, size) in all {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_dir_all(&path).is_ok() {
                tracing::info!(entry = %path.display(), "saved optimized model deleted (cache.optimized_max_disk_mb)");
                total -= size;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, max_bytes: u64) -> OptimizedCache {
        OptimizedCache { dir: dir.to_path_buf(), max_bytes, room_bytes: None }
    }

    /// A model whose one initializer is the whole `len`-byte data file.
    fn graph_over(len: usize) -> Vec<u8> {
        fn field(num: u8, payload: &[u8]) -> Vec<u8> {
            let mut out = vec![num << 3 | 2];
            let mut n = payload.len();
            while n >= 0x80 {
                out.push((n as u8 & 0x7f) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
            out.extend_from_slice(payload);
            out
        }
        let entry = |k: &str, v: &str| field(13, &[field(1, k.as_bytes()), field(2, v.as_bytes())].concat());
        let tensor = [entry("location", DATA), entry("offset", "0"), entry("length", &len.to_string())].concat();
        field(7, &field(5, &tensor))
    }

    fn save(c: &OptimizedCache, identity: &str, bytes: usize) -> Result<PathBuf, String> {
        assert!(matches!(c.lookup(identity), Lookup::Miss));
        let (tmp, entry) = c.paths(identity);
        c.begin(&tmp).unwrap();
        std::fs::write(tmp.join(MODEL), graph_over(bytes)).unwrap();
        std::fs::write(tmp.join(DATA), vec![7u8; bytes]).unwrap();
        c.prepare(&tmp)?;
        c.publish(&tmp, &entry, identity, "probe")?;
        Ok(entry.join(MODEL))
    }

    #[test]
    fn saved_entry_is_found_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 1 << 20);
        let model = save(&c, "a", 100).unwrap();
        assert!(matches!(c.lookup("a"), Lookup::Hit(p, probe) if p == model && probe == "probe"));
        assert!(matches!(c.lookup("b"), Lookup::Miss));
        // Truncated weights: deleted and missed.
        std::fs::write(model.with_file_name(DATA), b"short").unwrap();
        assert!(matches!(c.lookup("a"), Lookup::Miss));
        assert!(!model.parent().unwrap().exists());
        // A damaged graph.
        let model = save(&c, "a", 100).unwrap();
        let mut graph = std::fs::read(&model).unwrap();
        *graph.last_mut().unwrap() ^= 1;
        std::fs::write(&model, graph).unwrap();
        assert!(matches!(c.lookup("a"), Lookup::Miss));
        // A damaged description.
        let model = save(&c, "a", 100).unwrap();
        std::fs::write(model.with_file_name(ENTRY), b"{").unwrap();
        assert!(matches!(c.lookup("a"), Lookup::Miss));
    }

    #[test]
    fn budget_prunes_oldest_and_refuses_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let old = save(&cache(dir.path(), 1 << 20), "old", 1000).unwrap();
        // Room for two entries of this size, not three.
        let c = cache(dir.path(), dir_size(old.parent().unwrap()) * 5 / 2);
        std::thread::sleep(std::time::Duration::from_millis(20));
        save(&c, "mid", 1000).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // "old" is used again, so "mid" is now the least recently used.
        assert!(matches!(c.lookup("old"), Lookup::Hit(..)));
        std::thread::sleep(std::time::Duration::from_millis(20));
        save(&c, "new", 1000).unwrap();
        assert!(matches!(c.lookup("mid"), Lookup::Miss));
        assert!(matches!(c.lookup("old"), Lookup::Hit(..)));
        assert!(matches!(c.lookup("new"), Lookup::Hit(..)));
        let err = save(&c, "huge", 10_000).unwrap_err();
        assert!(err.contains("cache.optimized_max_disk_mb"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn identity_names_runtime_cpu_and_model() {
        let id = identity("1.31.1", Path::new("/nonexistent/libonnxruntime.so"), "model.onnx:1:2", "last-logits");
        assert!(id.contains("onnxruntime 1.31.1"));
        assert!(id.contains("model model.onnx:1:2"));
        assert!(id.contains("edits last-logits"));
        assert_ne!(hash(&id), hash(&id.replace("1.31.1", "1.32.0")));
    }
}
