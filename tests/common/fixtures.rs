//! Where the generated fixtures live: `$QWENEDGE_FIXTURES`, else `$QWENEDGE_CACHE/fixtures/current`,
//! else `~/.cache/qwenedge/fixtures/current`. Shared by the end-to-end tests and the crate's
//! unit test that says whether they can run.

use std::path::PathBuf;

/// The fixture directory the tests read (it may not exist).
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("QWENEDGE_FIXTURES").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("QWENEDGE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/qwenedge"));
        cache.join("fixtures/current")
    })
}
