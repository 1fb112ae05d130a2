//! What the runtime maps of the weight files, and how those pages stay out of the resident set
//! when they are read a row at a time: the embedding table is read one row per token, so the
//! kernel's read-around (tens of kB per fault) and, over a long uptime, every row ever used
//! would otherwise stay resident — up to the whole table (150 MB at 0.8B q4) for a lookup that
//! needs a few kB per step.

use std::path::Path;

/// The address ranges this process maps of `file` (from `/proc/self/maps`); with `private`,
/// only the private maps (copy-on-write: the file is never changed through them).
fn mappings(file: &Path, private: bool) -> Vec<(usize, usize)> {
    let (Ok(file), Ok(maps)) = (file.canonicalize(), std::fs::read_to_string("/proc/self/maps")) else { return Vec::new() };
    maps.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (range, perms) = (parts.next()?, parts.next()?);
            let path = parts.nth(3)?;
            if Path::new(path) != file || (private && !perms.ends_with('p')) {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?);
            (b > a).then_some((a, b - a))
        })
        .collect()
}

/// Kilobytes written to the private map starting at `addr` (`Private_Dirty` in
/// `/proc/self/smaps`); `None` when it is not found.
fn private_dirty_kb(addr: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let start = format!("{addr:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start)).skip(1);
    lines.find_map(|l| l.strip_prefix("Private_Dirty:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Tells the kernel that the runtime's maps of `file` are read at random. After prepacking, the
/// only reads from the decoder's mapped weights are embedding rows; without the hint each row
/// read pulls in a read-ahead window that is never used.
pub(super) fn advise_random_access(file: &Path) {
    for (addr, len) in mappings(file, false) {
        advise_random(addr, len);
    }
}

/// Read-ahead off for one mapping of this process.
fn advise_random(addr: usize, len: usize) {
    // SAFETY: the range is a mapping of this process read from /proc/self/maps; MADV_RANDOM
    // only changes read-ahead and never the contents or validity of the mapping.
    unsafe {
        libc::madvise(addr as *mut libc::c_void, len, libc::MADV_RANDOM);
    }
}

/// The runtime's maps of a split layout's embedding table, found once its session exists.
/// [`release`](Self::release) lets go of the pages a lookup touched: they stay in the page
/// cache, so the next lookup of the same rows is a minor fault, not a read.
#[derive(Debug, Default)]
pub(super) struct Resident {
    ranges: Vec<(usize, usize)>,
}

impl Resident {
    /// The private maps of `files`, made read-only (the runtime maps external data writable but
    /// never writes a constant initializer; read-only, no page can come to differ from the file,
    /// which is what lets [`release`](Self::release) drop them) and read-ahead off. Empty where
    /// the runtime read the files instead of mapping them (then there is nothing to let go).
    pub(super) fn of<'a>(files: impl Iterator<Item = &'a Path>) -> Self {
        let mut ranges = Vec::new();
        for (addr, len) in files.flat_map(|f| mappings(f, true)) {
            // A page already written differs from the file: such a map is left alone.
            if private_dirty_kb(addr) != Some(0) {
                continue;
            }
            // SAFETY: a private mapping of this process (from /proc/self/maps) that holds the
            // table's constant initializers; removing write permission changes no content, and a
            // write through it, which no kernel makes to a constant, would fault instead of
            // silently diverging from the file.
            let protected = unsafe { libc::mprotect(addr as *mut libc::c_void, len, libc::PROT_READ) } == 0;
            if !protected {
                continue;
            }
            advise_random(addr, len);
            ranges.push((addr, len));
        }
        Self { ranges }
    }

    /// Drops the resident pages of the maps (after a lookup).
    pub(super) fn release(&mut self) {
        for &(addr, len) in &self.ranges {
            // SAFETY: the ranges are the runtime's maps of the table files, made when the
            // embedding session was created and kept until it is dropped — this value lives in
            // the same backend and goes with it. They are read-only since `of`, so every page
            // holds the file's bytes and MADV_DONTNEED changes no content: the next read maps
            // the file's page again from the page cache.
            let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) };
            if rc != 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "the embedding table's pages are kept resident");
                self.ranges.clear();
                return;
            }
        }
    }
}
