//! What the model directory held when a model was loaded: each file's name, size, modification
//! time and inode. Saved prefix snapshots are keyed by it, and a reload compares it with the
//! directory as it is now, to see that the files were replaced, changed or deleted.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One file of the model directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    name: String,
    len: u64,
    mtime_ns: i128,
    inode: u64,
}

/// The model directory's files at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelFiles {
    dir: PathBuf,
    /// `None` when the directory could not be read.
    stamps: Option<Vec<Stamp>>,
}

impl ModelFiles {
    /// The files directly in `dir` now, and in its `onnx/` (where the Hub's layouts keep the
    /// graphs); other subdirectories are not part of a model.
    pub(crate) fn read(dir: &Path) -> Self {
        let stamps = std::fs::read_dir(dir).ok().map(|entries| {
            let graphs = std::fs::read_dir(dir.join("onnx")).into_iter().flatten().flatten().map(|e| (e, "onnx/"));
            let mut stamps: Vec<Stamp> = entries
                .flatten()
                .map(|e| (e, ""))
                .chain(graphs)
                .filter_map(|(e, prefix)| {
                    let m = e.metadata().ok().filter(|m| m.is_file())?;
                    let mtime_ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
                    let name = format!("{prefix}{}", e.file_name().to_string_lossy());
                    Some(Stamp { name, len: m.len(), mtime_ns, inode: m.ino() })
                })
                .collect();
            stamps.sort_by(|a, b| a.name.cmp(&b.name));
            stamps
        });
        Self { dir: dir.to_path_buf(), stamps }
    }

    /// The files as `name:size:mtime` words, sorted (part of a snapshot's identity).
    pub(crate) fn identity(&self) -> String {
        let stamps = self.stamps.as_deref().unwrap_or_default();
        stamps.iter().map(|s| format!("{}:{}:{}", s.name, s.len, s.mtime_ns)).collect::<Vec<_>>().join(" ")
    }

    /// What differs between these files and the directory now, in a few words; `None` when
    /// nothing does.
    pub(crate) fn changed(&self) -> Option<String> {
        let now = Self::read(&self.dir);
        let (Some(then), Some(now)) = (&self.stamps, &now.stamps) else {
            return (self.stamps != now.stamps).then(|| format!("{} can no longer be read", self.dir.display()));
        };
        let mut what = Vec::new();
        for s in then {
            match now.iter().find(|n| n.name == s.name) {
                None => what.push(format!("{} was deleted", s.name)),
                Some(n) if n != s => what.push(format!("{} was replaced or changed", s.name)),
                Some(_) => {}
            }
        }
        what.extend(now.iter().filter(|n| !then.iter().any(|s| s.name == n.name)).map(|n| format!("{} was added", n.name)));
        (!what.is_empty()).then(|| what.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"1").unwrap();
        std::fs::write(dir.path().join("b"), b"2").unwrap();
        let files = ModelFiles::read(dir.path());
        assert_eq!(files.changed(), None);
        assert!(files.identity().starts_with("a:1:"), "{}", files.identity());
        // Replaced by a rename, with the same size: a new inode.
        std::fs::write(dir.path().join("new"), b"3").unwrap();
        std::fs::rename(dir.path().join("new"), dir.path().join("a")).unwrap();
        std::fs::remove_file(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("c"), b"").unwrap();
        assert_eq!(files.changed().unwrap(), "a was replaced or changed, b was deleted, c was added");
        let gone = dir.path().to_path_buf();
        drop(dir);
        assert!(files.changed().unwrap().contains("can no longer be read"), "{gone:?}");
    }
}
