//! One file's transfer: written to `<name>.part`, resumed from its length with a `Range`
//! request (after a cut connection, up to [`ATTEMPTS`] times in one pull, or by the next pull),
//! hashed once complete — sha256 for LFS files, the git blob id (sha1) for the others — and
//! renamed to its name only once the checksum matches the Hub's. A mismatch removes the
//! `.part` file: its bytes are wrong, so nothing in it is worth resuming.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::StatusCode;
use ring::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY, SHA256};

use crate::api::{resolve_path, RepoFile};
use crate::http::{next_frame, Failure, Http};
use crate::HubError;

/// Transfers of one file tried in one pull before giving up (each resumes the last).
pub(crate) const ATTEMPTS: u32 = 5;

/// The file's checksum as the Hub lists it.
struct Expected {
    algorithm: &'static str,
    hex: String,
    context: Context,
}

impl Expected {
    fn new(file: &RepoFile) -> Self {
        match &file.lfs_sha256 {
            Some(sha) => Self { algorithm: "sha256", hex: sha.to_ascii_lowercase(), context: Context::new(&SHA256) },
            None => {
                let mut context = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
                context.update(format!("blob {}\0", file.size).as_bytes());
                Self { algorithm: "git blob sha1", hex: file.blob_id.to_ascii_lowercase(), context }
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `path` with `.part` added to its name.
pub(crate) fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// Hashes the `len` bytes already in `part` (a resumed transfer continues the digest).
fn hash_prefix(part: &Path, context: &mut Context) -> Result<u64, HubError> {
    let mut f = std::fs::File::open(part).map_err(|e| HubError::io(part, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| HubError::io(part, e))?;
        if n == 0 {
            return Ok(total);
        }
        context.update(&buf[..n]);
        total += n as u64;
    }
}

/// Progress of one file: bytes present of the total.
pub(crate) type OnBytes<'a> = &'a mut (dyn FnMut(u64) + Send);

/// Fetches `file` of `repo` at `commit` into `dest` (resuming `dest.part`), verifies it and
/// renames it into place. `on_bytes` hears the bytes present as they grow.
pub(crate) async fn fetch(
    http: &Http,
    repo: &str,
    commit: &str,
    file: &RepoFile,
    dest: &Path,
    on_bytes: OnBytes<'_>,
) -> Result<(), HubError> {
    let part = part_path(dest);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    }
    let url = resolve_path(repo, commit, &file.path);
    let mut attempt = 0;
    loop {
        match transfer(http, &url, file, &part, on_bytes).await? {
            Transfer::Done => break,
            Transfer::Retry(e) if attempt + 1 < ATTEMPTS => {
                tracing::warn!(file = %file.path, attempt = attempt + 1, error = %e, "transfer cut; resuming");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500 << attempt.min(4))).await;
            }
            Transfer::Retry(e) => return Err(e),
        }
    }
    let mut expected = Expected::new(file);
    let got = hash_prefix(&part, &mut expected.context)?;
    let actual = hex(expected.context.finish().as_ref());
    if got != file.size || actual != expected.hex {
        let _ = std::fs::remove_file(&part);
        return Err(HubError::Checksum {
            path: file.path.clone(),
            algorithm: expected.algorithm,
            expected: format!("{} ({} bytes)", expected.hex, file.size),
            actual: format!("{actual} ({got} bytes)"),
        });
    }
    std::fs::rename(&part, dest).map_err(|e| HubError::io(dest, e))
}

enum Transfer {
    Done,
    Retry(HubError),
}

/// One request: appends to `part` what the server sends from its current length on.
async fn transfer(http: &Http, url: &str, file: &RepoFile, part: &Path, on_bytes: OnBytes<'_>) -> Result<Transfer, HubError> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > file.size {
        std::fs::remove_file(part).map_err(|e| HubError::io(part, e))?;
        return Ok(Transfer::Retry(HubError::http(url, "a partial file longer than the file; started again")));
    }
    on_bytes(have);
    if have == file.size {
        return Ok(Transfer::Done);
    }
    let (response, uri) = match http.send(hyper::Method::GET, url, Some(have)).await {
        Ok(r) => r,
        Err(e @ HubError::Http { .. }) => return Ok(Transfer::Retry(e)),
        Err(e) => return Err(e),
    };
    let at = uri.to_string();
    let status = response.status();
    if let Some(encoding) =
        response.headers().get(hyper::header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).filter(|e| *e != "identity")
    {
        return Err(HubError::http(&at, format!("answered with Content-Encoding {encoding} though identity was asked")));
    }
    let mut offset = match status {
        StatusCode::PARTIAL_CONTENT => {
            let start = response
                .headers()
                .get(hyper::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(have) {
                return Err(HubError::http(&at, format!("asked for bytes from {have}, got a range from {start:?}")));
            }
            have
        }
        StatusCode::OK => 0,
        StatusCode::RANGE_NOT_SATISFIABLE => {
            std::fs::remove_file(part).map_err(|e| HubError::io(part, e))?;
            return Ok(Transfer::Retry(HubError::http(&at, "the server refused to resume; starting again")));
        }
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            return Ok(Transfer::Retry(HubError::http(&at, format!("{s}"))));
        }
        s => {
            let headers = response.headers().clone();
            let body = crate::http::read_limited(response.into_body(), &at, 1 << 16).await.unwrap_or_default();
            let f = Failure::new(s, &headers, &body);
            return Err(HubError::http(&at, format!("{} {}", f.status, f.message)));
        }
    };
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(offset > 0)
        .write(true)
        .truncate(offset == 0)
        .open(part)
        .map_err(|e| HubError::io(part, e))?;
    let mut body = response.into_body();
    loop {
        match next_frame(&mut body, &at).await {
            Ok(Some(data)) => {
                if offset + data.len() as u64 > file.size {
                    drop(out);
                    std::fs::remove_file(part).map_err(|e| HubError::io(part, e))?;
                    return Err(HubError::http(&at, format!("sent more than the {} bytes the Hub lists", file.size)));
                }
                out.write_all(&data).map_err(|e| HubError::io(part, e))?;
                offset += data.len() as u64;
                on_bytes(offset);
            }
            Ok(None) => break,
            Err(e) => {
                out.flush().map_err(|e| HubError::io(part, e))?;
                return Ok(Transfer::Retry(e));
            }
        }
    }
    out.sync_all().map_err(|e| HubError::io(part, e))?;
    if offset < file.size {
        return Ok(Transfer::Retry(HubError::http(&at, format!("the transfer ended at {offset} of {} bytes", file.size))));
    }
    Ok(Transfer::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_git_blob_id_is_computed_as_git_does() {
        // `printf 'hello\n' | git hash-object --stdin`
        let file = RepoFile { path: "a".into(), size: 6, blob_id: "ce013625030ba8dba906f756967f9e9ca394464a".into(), lfs_sha256: None };
        let mut e = Expected::new(&file);
        e.context.update(b"hello\n");
        assert_eq!(hex(e.context.finish().as_ref()), file.blob_id);
    }
}
