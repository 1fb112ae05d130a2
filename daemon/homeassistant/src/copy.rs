//! The last copy of the home, kept in a file (written whole to a temporary file and renamed, so
//! a crash leaves the previous copy), read at start so the names are known before Home Assistant
//! answers — or while it does not.

use std::path::Path;

use crate::{HaError, HaHome};

/// Reads the copy at `path`; `Ok(None)` when there is none yet.
pub fn load_copy(path: &Path) -> Result<Option<HaHome>, HaError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| HaError::Copy(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HaError::Copy(format!("{}: {e}", path.display()))),
    }
}

/// Writes `home` to `path` atomically (the directory is created).
pub fn save_copy(path: &Path, home: &HaHome) -> Result<(), HaError> {
    let fail = |e: std::io::Error| HaError::Copy(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(home).map_err(|e| HaError::Copy(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_survives_the_round_trip_and_a_damaged_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/home-assistant.json");
        assert_eq!(load_copy(&path).unwrap(), None);
        let home = HaHome {
            ha_version: "2026.11.0".into(),
            synced_at_ms: 5,
            devices: vec![],
            areas: vec![],
            floors: vec![],
            site_areas: Default::default(),
        };
        save_copy(&path, &home).unwrap();
        assert_eq!(load_copy(&path).unwrap(), Some(home));
        std::fs::write(&path, "{").unwrap();
        let e = load_copy(&path).unwrap_err().to_string();
        assert!(e.contains("home-assistant.json"), "{e}");
    }
}
