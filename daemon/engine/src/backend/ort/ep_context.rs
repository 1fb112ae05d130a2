//! The static backend's compiled-model cache: what an accelerator's provider makes of each static
//! graph (QNN: a context binary, which the HTP simulator took 15 s to 15 min to prepare), saved
//! once per model, runtime, provider options and CPU (ONNX Runtime's `ep.context_enable`) and
//! loaded by later starts in its place. An entry is written in a temporary directory and renamed
//! whole; its description names its identity and each file's SHA-256, checked before it is
//! used, so a damaged or foreign entry is built again rather than handed to the provider.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::optimized::{sha256_hex, OptimizedCache};
use super::Placement;

/// The entry's description.
const ENTRY: &str = "entry.json";

/// Where an entry of the cache keeps its files: a folder of the optimized-model cache.
const FOLDER: &str = "ep-context";

/// The placement of the graphs an entry was compiled from.
const PLACEMENTS: &str = "placement.json";

/// Which provider ran which nodes of each graph when it was compiled (the context models show
/// one node per compiled partition instead).
#[derive(Serialize, Deserialize)]
pub(super) struct Placements {
    pub(super) decode: Option<Placement>,
    pub(super) prefill: Option<Placement>,
}

/// Writes `placements` into the entry being made in `tmp`.
pub(super) fn save_placements(tmp: &Path, placements: &Placements) -> Result<(), String> {
    let text = serde_json::to_string(placements).map_err(|e| e.to_string())?;
    std::fs::write(tmp.join(PLACEMENTS), text).map_err(|e| format!("{}: {e}", tmp.join(PLACEMENTS).display()))
}

/// The placements saved in a checked entry.
pub(super) fn saved_placements(entry: &Path) -> Option<Placements> {
    serde_json::from_str(&std::fs::read_to_string(entry.join(PLACEMENTS)).ok()?).ok()
}

#[derive(Serialize, Deserialize)]
struct EntryFile {
    identity: String,
    /// File name → SHA-256.
    files: BTreeMap<String, String>,
}

/// The context model of one graph (`decode_ctx.onnx`) in an entry directory.
pub(super) fn context_model(dir: &Path, kind: &str) -> PathBuf {
    dir.join(format!("{kind}_ctx.onnx"))
}

/// The entry directory for `identity`.
pub(super) fn entry_dir(cache: &OptimizedCache, identity: &str) -> PathBuf {
    cache.dir.join(FOLDER).join(&sha256_hex(identity.as_bytes())[..16])
}

/// `Ok` when `entry` holds a whole entry made for `identity`; otherwise why not.
pub(super) fn check(entry: &Path, identity: &str) -> Result<(), String> {
    let path = entry.join(ENTRY);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = serde_json::from_str::<EntryFile>(&text).map_err(|_| format!("{} is not an entry description", path.display()))?;
    if file.identity != identity {
        return Err(format!("{} was made for another model, runtime or provider options", entry.display()));
    }
    for (name, sum) in &file.files {
        let bytes = std::fs::read(entry.join(name)).map_err(|e| format!("{}: {e}", entry.join(name).display()))?;
        if &sha256_hex(&bytes) != sum {
            return Err(format!("{} does not match its checksum", entry.join(name).display()));
        }
    }
    Ok(())
}

/// A fresh directory beside `entry` to write a new entry into.
pub(super) fn staging(entry: &Path) -> Result<PathBuf, String> {
    let tmp = entry.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    Ok(tmp)
}

/// Describes what the provider wrote into `tmp` and puts it in `entry`'s place.
pub(super) fn finish(tmp: &Path, entry: &Path, identity: &str) -> Result<(), String> {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(tmp).map_err(|e| format!("{}: {e}", tmp.display()))?.flatten() {
        let bytes = std::fs::read(e.path()).map_err(|x| format!("{}: {x}", e.path().display()))?;
        files.insert(e.file_name().to_string_lossy().into_owned(), sha256_hex(&bytes));
    }
    let text = serde_json::to_string_pretty(&EntryFile { identity: identity.to_string(), files }).map_err(|e| e.to_string())?;
    std::fs::write(tmp.join(ENTRY), text).map_err(|e| format!("{}: {e}", tmp.join(ENTRY).display()))?;
    let _ = std::fs::remove_dir_all(entry);
    std::fs::rename(tmp, entry).map_err(|e| format!("{} -> {}: {e}", tmp.display(), entry.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_used_only_whole_and_for_its_identity() {
        let root = tempfile::tempdir().unwrap();
        let cache = OptimizedCache { dir: root.path().to_path_buf(), max_bytes: 1 << 30, room_bytes: None };
        let entry = entry_dir(&cache, "model a");
        assert!(check(&entry, "model a").is_err(), "nothing written yet");
        let tmp = staging(&entry).unwrap();
        std::fs::write(context_model(&tmp, "decode"), b"graph").unwrap();
        std::fs::write(tmp.join("decode_ctx_qnn.bin"), b"binary").unwrap();
        finish(&tmp, &entry, "model a").unwrap();
        assert!(!tmp.exists());
        check(&entry, "model a").unwrap();
        assert!(check(&entry, "model b").unwrap_err().contains("another model"));
        std::fs::write(entry.join("decode_ctx_qnn.bin"), b"binarY").unwrap();
        assert!(check(&entry, "model a").unwrap_err().contains("checksum"));
    }

    #[test]
    fn the_placements_saved_with_an_entry_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = |ep: &str, n: usize| super::super::EpNodes {
            ep: ep.into(),
            nodes: n,
            op_types: [("MatMulNBits".to_string(), n)].into_iter().collect(),
            declined: Vec::new(),
        };
        let decode = Placement { total_nodes: 280, providers: vec![nodes("qnn", 279), nodes("cpu", 1)] };
        save_placements(dir.path(), &Placements { decode: Some(decode.clone()), prefill: None }).unwrap();
        let back = saved_placements(dir.path()).expect("read back");
        assert_eq!((back.decode, back.prefill), (Some(decode), None));
    }
}
