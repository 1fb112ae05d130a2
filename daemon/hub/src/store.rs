//! The model store: `<root>/<owner>/<name>/<variant>/` holds a complete model with its
//! `qwenedge-pull.json` (repository, revision, commit, each file's checksum), written last;
//! `<root>/.partial/<owner>--<name>--<variant>/` holds a pull in progress (kept for resume),
//! locked by a `.lock` file beside it so two pulls of one model never interleave. A finished
//! pull replaces the old directory in one `rename` (an exchange where one exists), so a
//! directory under the store's model paths is always complete.

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::HubError;

/// The manifest's file name in each model directory.
pub const MANIFEST: &str = "qwenedge-pull.json";
const PARTIAL: &str = ".partial";

/// One file as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path in the model directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// The LFS sha256, or the git blob id for files outside LFS.
    pub checksum: String,
}

/// What a pull wrote, saved as [`MANIFEST`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `owner/name`.
    pub repo: String,
    /// The revision asked for (`main` by default).
    pub revision: String,
    /// The commit it named when pulled.
    pub commit: String,
    /// The variant (`q4`, `fp32`, … or a genai folder).
    pub variant: String,
    /// The Hub's address.
    pub endpoint: String,
    /// Seconds since the epoch when the pull finished.
    pub pulled_at_s: u64,
    /// Every file.
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    /// Total bytes of the model's files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A model in the store.
#[derive(Debug, Clone)]
pub struct StoredModel {
    /// Its directory (what `model.path` takes).
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

/// The store's root directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// An exclusive hold on one model's pull, released when dropped.
pub(crate) struct PullLock {
    _file: std::fs::File,
}

fn variant_dir_name(variant: &str) -> String {
    variant.replace('/', "--")
}

impl Store {
    /// A store rooted at `root` (created on the first pull).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `repo`'s `variant` lives once complete.
    pub fn model_dir(&self, repo: &str, variant: &str) -> PathBuf {
        self.root.join(repo).join(variant_dir_name(variant))
    }

    pub(crate) fn partial_dir(&self, repo: &str, variant: &str) -> PathBuf {
        self.root.join(PARTIAL).join(format!("{}--{}", repo.replace('/', "--"), variant_dir_name(variant)))
    }

    /// Prepares `partial` for a pull of `commit`: what an interrupted pull of the same commit
    /// left is kept for resume; files of another commit are removed (their checksums may differ).
    pub(crate) fn start_partial(&self, partial: &Path, commit: &str) -> Result<(), HubError> {
        let marker = partial.join(".commit");
        if partial.exists() && std::fs::read_to_string(&marker).ok().as_deref() != Some(commit) {
            std::fs::remove_dir_all(partial).map_err(|e| HubError::io(partial, e))?;
        }
        std::fs::create_dir_all(partial).map_err(|e| HubError::io(partial, e))?;
        std::fs::write(&marker, commit).map_err(|e| HubError::io(&marker, e))
    }

    /// Takes the lock of `repo`'s pulls (one per repository: the variant is not known before
    /// the file list is read).
    pub(crate) fn lock(&self, repo: &str) -> Result<PullLock, HubError> {
        let dir = self.root.join(PARTIAL);
        std::fs::create_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
        let path = dir.join(format!("{}.lock", repo.replace('/', "--")));
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| HubError::io(&path, e))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let held = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !held {
            return Err(HubError::Busy(repo.to_string()));
        }
        Ok(PullLock { _file: file })
    }

    /// The model of `repo` and `variant` if the store holds it complete.
    pub fn get(&self, repo: &str, variant: &str) -> Option<StoredModel> {
        let dir = self.model_dir(repo, variant);
        let manifest = read_manifest(&dir)?;
        Some(StoredModel { dir, manifest })
    }

    /// Every complete model, sorted by repository and variant.
    pub fn list(&self) -> Vec<StoredModel> {
        let mut out = Vec::new();
        let dirs = |p: &Path| -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .collect();
            v.sort();
            v
        };
        for owner in dirs(&self.root) {
            for name in dirs(&owner) {
                for variant in dirs(&name) {
                    if let Some(manifest) = read_manifest(&variant) {
                        out.push(StoredModel { dir: variant, manifest });
                    }
                }
            }
        }
        out
    }

    /// Removes `repo`'s `variant` (every variant when `None`) and its partial downloads;
    /// returns the directories removed.
    pub fn remove(&self, repo: &str, variant: Option<&str>) -> Result<Vec<PathBuf>, HubError> {
        crate::api::check_repo(repo)?;
        let _lock = self.lock(repo)?;
        let mut removed = Vec::new();
        let targets: Vec<StoredModel> =
            self.list().into_iter().filter(|m| m.manifest.repo == repo && variant.is_none_or(|v| m.manifest.variant == v)).collect();
        for m in &targets {
            std::fs::remove_dir_all(&m.dir).map_err(|e| HubError::io(&m.dir, e))?;
            removed.push(m.dir.clone());
        }
        let prefix = format!("{}--", repo.replace('/', "--"));
        for entry in std::fs::read_dir(self.root.join(PARTIAL)).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let matches = match variant {
                Some(v) => name == format!("{prefix}{}", variant_dir_name(v)),
                None => name.starts_with(&prefix) && entry.path().is_dir(),
            };
            if matches {
                std::fs::remove_dir_all(entry.path()).map_err(|e| HubError::io(entry.path(), e))?;
                removed.push(entry.path());
            }
        }
        for dir in [self.root.join(repo), self.root.join(repo.split('/').next().unwrap_or(repo))] {
            let _ = std::fs::remove_dir(dir);
        }
        if removed.is_empty() {
            return Err(HubError::NotStored(match variant {
                Some(v) => format!("{repo}:{v}"),
                None => repo.to_string(),
            }));
        }
        Ok(removed)
    }

    /// Writes `manifest` into `partial` and puts it in place of `repo`'s `variant`, replacing an
    /// older pull in one step where the kernel can exchange directories.
    pub(crate) fn install(&self, partial: &Path, manifest: &Manifest) -> Result<PathBuf, HubError> {
        let _ = std::fs::remove_file(partial.join(".commit"));
        let path = partial.join(MANIFEST);
        let tmp = partial.join(format!("{MANIFEST}.tmp"));
        let text = serde_json::to_vec_pretty(manifest).map_err(|e| HubError::io(&path, e))?;
        std::fs::write(&tmp, text).map_err(|e| HubError::io(&tmp, e))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| HubError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| HubError::io(&path, e))?;
        let target = self.model_dir(&manifest.repo, &manifest.variant);
        let parent = target.parent().expect("a model directory has a parent");
        std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
        if target.exists() {
            if exchange(partial, &target).is_ok() {
                // `partial` now holds the old model.
                std::fs::remove_dir_all(partial).map_err(|e| HubError::io(partial, e))?;
                return Ok(target);
            }
            let old = partial.with_extension("old");
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&target, &old).map_err(|e| HubError::io(&target, e))?;
            std::fs::rename(partial, &target).map_err(|e| HubError::io(&target, e))?;
            let _ = std::fs::remove_dir_all(&old);
            return Ok(target);
        }
        std::fs::rename(partial, &target).map_err(|e| HubError::io(&target, e))?;
        Ok(target)
    }
}

/// Swaps two directories atomically (`renameat2(RENAME_EXCHANGE)`, Linux 3.15+).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let b = std::ffi::CString::new(b.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call; AT_FDCWD makes them
    // relative to the working directory (they are absolute or relative as given).
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("no directory exchange here"))
}

/// The manifest of `dir`, if it holds one that parses.
pub fn read_manifest(dir: &Path) -> Option<Manifest> {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(variant: &str, commit: &str) -> Manifest {
        Manifest {
            repo: "o/m".into(),
            revision: "main".into(),
            commit: commit.into(),
            variant: variant.into(),
            endpoint: "http://hub".into(),
            pulled_at_s: 1,
            files: vec![ManifestFile { path: "config.json".into(), size: 2, checksum: "x".into() }],
        }
    }

    #[test]
    fn install_replaces_a_model_whole_and_rm_removes_it() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        let partial = store.partial_dir("o/m", "q4");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("config.json"), "{}").unwrap();
        assert!(store.list().is_empty(), "a partial pull is not a model");
        let dir = store.install(&partial, &manifest("q4", "c1")).unwrap();
        assert_eq!(dir, root.path().join("o/m/q4"));
        assert!(!partial.exists());
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("new.json"), "{}").unwrap();
        store.install(&partial, &manifest("q4", "c2")).unwrap();
        assert!(dir.join("new.json").exists() && !dir.join("config.json").exists());
        assert!(!partial.exists(), "the old model is removed");
        let listed = store.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].manifest.commit, "c2");
        let _lock = store.lock("o/m").unwrap();
        assert!(matches!(store.lock("o/m"), Err(HubError::Busy(_))), "a second pull waits for none");
        drop(_lock);
        assert_eq!(store.remove("o/m", None).unwrap(), vec![dir.clone()]);
        assert!(store.list().is_empty() && !root.path().join("o").exists());
        assert!(matches!(store.remove("o/m", Some("q4")), Err(HubError::NotStored(_))));
    }
}
