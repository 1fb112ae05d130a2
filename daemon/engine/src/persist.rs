//! Prefix snapshots on disk, so a restart restores the intent catalog's state instead of
//! prefilling it again.
//!
//! One file per prefix, named by a hash of its key: the identity of everything that determines
//! the state (model files, backend, provider, threads, prefill chunking; see
//! `Engine::state_identity`) and the exact prefix tokens. A file is
//!
//! ```text
//! "QWENEDGE-PREFIX\n"  u32 header length (LE)  header (JSON)  f32 data (LE)  SHA-256 of all before
//! ```
//!
//! where the header repeats the identity and the tokens (checked on load, not only hashed) and
//! gives the length of each part. Files are written to a temporary name and renamed, so a crash
//! leaves the old file or the new one; a truncated, corrupt, foreign or unreadable file is
//! reported as a [`PersistError`] for the caller to log, and is replaced by the next save. The
//! directory is kept under its byte budget by deleting the oldest files.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 16] = b"QWENEDGE-PREFIX\n";
const FORMAT: u32 = 1;
const EXTENSION: &str = "prefix";
/// Largest header accepted (the tokens of a long prefix plus the identity).
const MAX_HEADER: usize = 16 << 20;

/// Why a snapshot file could not be used or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading or writing failed (unreadable file, full disk, no permission).
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file ends early.
    #[error("{}: truncated ({have} bytes, {want} expected)", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes it has.
        have: u64,
        /// Bytes its header promises.
        want: u64,
    },
    /// The file is not a snapshot, or its checksum does not match its content.
    #[error("{}: corrupt ({})", .0.display(), .1)]
    Corrupt(PathBuf, String),
    /// The file belongs to another model, backend, setting or prefix.
    #[error("{}: made for {}", .0.display(), .1)]
    Foreign(PathBuf, String),
    /// The snapshot is larger than the directory's budget.
    #[error("a snapshot of {bytes} bytes does not fit cache.max_disk_mb ({max} bytes)")]
    TooLarge {
        /// Bytes it needs.
        bytes: u64,
        /// The budget.
        max: u64,
    },
}

/// A saved state: the backend's arrays, in its order (it holds as many positions as the
/// prefix has tokens).
pub(crate) type SavedState = Vec<Vec<f32>>;

/// Hands a state's arrays, always in the same order, to the function it is given.
pub(crate) type VisitParts<'a> = dyn Fn(&mut dyn FnMut(&[f32])) + 'a;

#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    identity: String,
    tokens: Vec<u32>,
    parts: Vec<usize>,
}

/// A directory of prefix snapshots for one loaded model.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    max_bytes: u64,
    identity: String,
}

impl SnapshotStore {
    /// A store in `dir` (created on the first save) holding at most `max_bytes`, for states
    /// whose origin `identity` describes.
    pub fn new(dir: PathBuf, max_bytes: u64, identity: String) -> Self {
        Self { dir, max_bytes, identity }
    }

    /// The same directory for states that also depend on `what` (a setting of the prefill).
    pub fn variant(&self, what: &str) -> Self {
        Self { identity: format!("{} {what}", self.identity), ..self.clone() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds the snapshot of `tokens`.
    pub fn path(&self, tokens: &[u32]) -> PathBuf {
        let mut ctx = Context::new(&SHA256);
        ctx.update(self.identity.as_bytes());
        ctx.update(&[0]);
        for t in tokens {
            ctx.update(&t.to_le_bytes());
        }
        let hex: String = ctx.finish().as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.{EXTENSION}"))
    }

    /// The saved state of `tokens`: `Ok(None)` when there is no file, else its parts, or why
    /// the file cannot be used.
    pub fn load(&self, tokens: &[u32]) -> Result<Option<SavedState>, PersistError> {
        let path = self.path(tokens);
        let io = |source| PersistError::Io { path: path.clone(), source };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let size = file.metadata().map_err(io)?.len();
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut ctx = Context::new(&SHA256);
        let truncated = |want: u64| PersistError::Truncated { path: path.clone(), have: size, want };
        let mut head = [0u8; 20];
        read_hashed(&mut r, &mut head, &mut ctx).map_err(|e| eof_or(e, || truncated(20), io))?;
        if &head[..16] != MAGIC {
            return Err(PersistError::Corrupt(path.clone(), "not a qwenedge prefix snapshot".into()));
        }
        let header_len = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes")) as usize;
        if header_len > MAX_HEADER {
            return Err(PersistError::Corrupt(path.clone(), format!("a header of {header_len} bytes")));
        }
        let mut header = vec![0u8; header_len];
        read_hashed(&mut r, &mut header, &mut ctx).map_err(|e| eof_or(e, || truncated(20 + header_len as u64), io))?;
        let header: Header = serde_json::from_slice(&header).map_err(|e| PersistError::Corrupt(path.clone(), format!("header: {e}")))?;
        let floats: u64 = header.parts.iter().map(|&n| n as u64).sum();
        let want = 20 + header_len as u64 + floats * 4 + 32;
        if size < want {
            return Err(truncated(want));
        }
        if size > want {
            return Err(PersistError::Corrupt(path.clone(), format!("{} bytes after the data", size - want)));
        }
        let mut parts = Vec::with_capacity(header.parts.len());
        for &n in &header.parts {
            let mut part = vec![0f32; n];
            read_hashed(&mut r, as_bytes_mut(&mut part), &mut ctx).map_err(|e| eof_or(e, || truncated(want), io))?;
            from_le(&mut part);
            parts.push(part);
        }
        let mut sum = [0u8; 32];
        r.read_exact(&mut sum).map_err(|e| eof_or(e, || truncated(want), io))?;
        if ctx.finish().as_ref() != sum {
            return Err(PersistError::Corrupt(path.clone(), "checksum mismatch".into()));
        }
        if header.format != FORMAT || header.identity != self.identity {
            return Err(PersistError::Foreign(path.clone(), format!("format {}, {}", header.format, header.identity)));
        }
        if header.tokens != tokens {
            return Err(PersistError::Foreign(path.clone(), format!("another prefix ({} tokens)", header.tokens.len())));
        }
        Ok(Some(parts))
    }

    /// Writes the state after `tokens` (its parts as `visit` gives them, in the same order every
    /// call), then deletes the oldest other files until the directory fits its
    /// budget. Returns the file and its size.
    pub fn save(&self, tokens: &[u32], visit: &VisitParts<'_>) -> Result<(PathBuf, u64), PersistError> {
        let mut sizes = Vec::new();
        visit(&mut |p| sizes.push(p.len()));
        let floats: u64 = sizes.iter().map(|&n| n as u64).sum();
        let header = Header { format: FORMAT, identity: self.identity.clone(), tokens: tokens.to_vec(), parts: sizes };
        let header = serde_json::to_vec(&header).expect("a header serializes");
        let bytes = 20 + header.len() as u64 + floats * 4 + 32;
        if bytes > self.max_bytes {
            return Err(PersistError::TooLarge { bytes, max: self.max_bytes });
        }
        let path = self.path(tokens);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| PersistError::Io { path: p, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let tmp = self.dir.join(format!(".{}.{}.tmp", path.file_stem().unwrap_or_default().to_string_lossy(), std::process::id()));
        let written = write_file(&tmp, &header, visit);
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(PersistError::Io { path: tmp, source: e });
        }
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.trim(&path);
        Ok((path, bytes))
    }

    /// Deletes the file of `tokens`, if any (after it was found unusable).
    pub fn remove(&self, tokens: &[u32]) {
        let path = self.path(tokens);
        if path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Deletes the oldest snapshot files other than `keep` while the directory is over budget.
    fn trim(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == EXTENSION))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, size, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                tracing::info!(file = %path.display(), "deleted an old prefix snapshot to stay inside cache.max_disk_mb");
                total -= size;
            }
        }
    }
}

fn write_file(tmp: &Path, header: &[u8], visit: &VisitParts<'_>) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(tmp)?);
    let mut ctx = Context::new(&SHA256);
    let mut result = Ok(());
    let mut put = |bytes: &[u8], w: &mut BufWriter<File>| {
        ctx.update(bytes);
        if result.is_ok() {
            result = w.write_all(bytes);
        }
    };
    put(MAGIC, &mut w);
    put(&(header.len() as u32).to_le_bytes(), &mut w);
    put(header, &mut w);
    visit(&mut |part| {
        let mut le = Vec::with_capacity(part.len() * 4);
        for x in part {
            le.extend_from_slice(&x.to_le_bytes());
        }
        put(&le, &mut w);
    });
    result?;
    w.write_all(ctx.finish().as_ref())?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

fn read_hashed(r: &mut impl Read, buf: &mut [u8], ctx: &mut Context) -> std::io::Result<()> {
    r.read_exact(buf)?;
    ctx.update(buf);
    Ok(())
}

fn eof_or(e: std::io::Error, truncated: impl FnOnce() -> PersistError, io: impl FnOnce(std::io::Error) -> PersistError) -> PersistError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        truncated()
    } else {
        io(e)
    }
}

fn as_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: f32 has no invalid bit patterns and no padding; the byte view covers exactly the
    // slice's memory and borrows it mutably for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Converts values read as little-endian bytes to native order.
fn from_le(v: &mut [f32]) {
    if cfg!(target_endian = "big") {
        for x in v {
            *x = f32::from_bits(u32::from_le(x.to_bits()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Vec<Vec<f32>> {
        vec![vec![1.0, -2.5, f32::MIN_POSITIVE], vec![], (0..1000).map(|i| i as f32 * 0.5).collect()]
    }

    fn save(store: &SnapshotStore, tokens: &[u32]) -> PathBuf {
        let p = parts();
        store.save(tokens, &|each| p.iter().for_each(|x| each(x))).unwrap().0
    }

    #[test]
    fn a_saved_state_loads_back_exactly_and_only_for_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().join("prefix"), 1 << 20, "model a".into());
        assert!(store.load(&[1, 2, 3]).unwrap().is_none(), "no file yet");
        let path = save(&store, &[1, 2, 3]);
        assert_eq!(store.load(&[1, 2, 3]).unwrap(), Some(parts()));
        assert!(store.load(&[1, 2]).unwrap().is_none(), "another prefix has another file");
        let other = SnapshotStore::new(dir.path().join("prefix"), 1 << 20, "model b".into());
        assert!(other.load(&[1, 2, 3]).unwrap().is_none());
        // A file from another identity under this key's name (copied, renamed) is foreign.
        std::fs::copy(&path, other.path(&[1, 2, 3])).unwrap();
        let e = other.load(&[1, 2, 3]).unwrap_err();
        assert!(matches!(e, PersistError::Foreign(..)) && e.to_string().contains("model a"), "{e}");
        let leftovers: Vec<_> =
            std::fs::read_dir(store.dir()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn truncated_corrupt_and_unreadable_files_are_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().to_path_buf(), 1 << 20, "m".into());
        let path = save(&store, &[7]);
        let good = std::fs::read(&path).unwrap();
        for cut in [5, 30, good.len() - 40, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            let e = store.load(&[7]).unwrap_err();
            assert!(matches!(e, PersistError::Truncated { .. } | PersistError::Corrupt(..)), "cut at {cut}: {e}");
        }
        std::fs::write(&path, &good[..good.len() - 40]).unwrap();
        assert!(store.load(&[7]).unwrap_err().to_string().contains("truncated"));
        let mut flipped = good.clone();
        flipped[good.len() - 100] ^= 0x10;
        std::fs::write(&path, &flipped).unwrap();
        let e = store.load(&[7]).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        std::fs::write(&path, b"not a snapshot at all, but long enough").unwrap();
        assert!(store.load(&[7]).unwrap_err().to_string().contains("not a qwenedge prefix snapshot"));
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = store.load(&[7]).unwrap_err();
        assert!(matches!(e, PersistError::Io { .. }), "{e}");
        store.remove(&[7]);
        save(&store, &[7]);
        assert_eq!(store.load(&[7]).unwrap(), Some(parts()), "a new save replaces the bad file");
    }

    #[test]
    fn the_directory_keeps_to_its_budget_by_dropping_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let one = {
            let s = SnapshotStore::new(dir.path().to_path_buf(), u64::MAX, "m".into());
            std::fs::metadata(save(&s, &[0])).unwrap().len()
        };
        let store = SnapshotStore::new(dir.path().to_path_buf(), one * 2 + one / 2, "m".into());
        for t in 1..=3u32 {
            save(&store, &[t]);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let kept: Vec<bool> = (0..=3u32).map(|t| store.path(&[t]).exists()).collect();
        assert_eq!(kept, [false, false, true, true]);
        let tiny = SnapshotStore::new(dir.path().to_path_buf(), 10, "m".into());
        let p = parts();
        let e = tiny.save(&[9], &|each| p.iter().for_each(|x| each(x))).unwrap_err();
        assert!(matches!(e, PersistError::TooLarge { .. }), "{e}");
    }
}
