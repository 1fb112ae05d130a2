//! The Hub's API routes a pull uses, as `huggingface_hub` does: the revision resolved to a
//! commit (`/api/models/{repo}/revision/{rev}`), the commit's files with sizes and LFS sha256
//! (`/api/models/{repo}/tree/{commit}?recursive=true`, pages followed by their `Link` header),
//! and each file's address (`/{repo}/resolve/{commit}/{path}`).

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::http::{Failure, Http};
use crate::HubError;

/// Characters kept as they are in a path segment (as Python's `quote(…, safe="")`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// Pages of a file list followed at most (the Hub gives 1,000 entries a page).
const MAX_PAGES: usize = 100;

/// One file of a repository at a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFile {
    /// Path in the repository (`onnx/decoder_model_merged_q4.onnx`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// The git blob id (sha1 of `blob {size}\0` + content) — the check for small files.
    pub blob_id: String,
    /// The LFS object's sha256 — the check for large files.
    pub lfs_sha256: Option<String>,
}

/// `owner/name` checked: two non-empty parts of the characters the Hub allows.
pub fn check_repo(repo: &str) -> Result<(), HubError> {
    let ok_part = |p: &str| !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    match repo.split_once('/') {
        Some((owner, name)) if ok_part(owner) && ok_part(name) && !name.contains('/') => Ok(()),
        _ => Err(HubError::BadName(repo.to_string())),
    }
}

fn encode(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// The address of `path` at `commit`.
pub(crate) fn resolve_path(repo: &str, commit: &str, path: &str) -> String {
    let path: Vec<String> = path.split('/').map(encode).collect();
    format!("/{repo}/resolve/{}/{}", encode(commit), path.join("/"))
}

fn failure(http: &Http, repo: &str, what: &str, f: Failure) -> HubError {
    let hint = |s: &str| if f.message.is_empty() { s.to_string() } else { format!(" ({}){s}", f.message) };
    match f.status.as_u16() {
        401 | 403 => HubError::Refused {
            repo: repo.to_string(),
            status: f.status.as_u16(),
            hint: hint(if f.code == "GatedRepo" {
                ": the repository is gated; accept its terms on the Hub and set HF_TOKEN"
            } else {
                ": a private repository needs HF_TOKEN (or hub.token_file) with read access"
            }),
        },
        404 => HubError::NotFound {
            repo: repo.to_string(),
            what: if f.code == "RevisionNotFound" { what.to_string() } else { "repository".to_string() },
            endpoint: http.endpoint(),
            hint: hint(if f.code == "RepoNotFound" || f.code.is_empty() {
                " — check the name, or set HF_TOKEN for a private one"
            } else {
                ""
            }),
        },
        _ => HubError::http(&format!("{}/api/models/{repo}", http.endpoint()), format!("{} {}", f.status, f.message)),
    }
}

/// The commit `revision` (a branch, tag or commit) names.
pub(crate) async fn resolve_revision(http: &Http, repo: &str, revision: &str) -> Result<String, HubError> {
    let path = format!("/api/models/{repo}/revision/{}", encode(revision));
    let (info, _) = http.get_json(&path).await?.map_err(|f| failure(http, repo, &format!("revision '{revision}'"), f))?;
    info["sha"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| HubError::http(&format!("{}{path}", http.endpoint()), "the answer has no 'sha'"))
}

/// Whether `path` stays inside the directory it is written under: relative, no empty, `.` or
/// `..` component, no backslash or NUL.
pub(crate) fn is_safe_path(path: &str) -> bool {
    !path.is_empty() && !path.contains(['\\', '\0']) && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fn parse_entry(v: &Value) -> Option<RepoFile> {
    if v["type"].as_str() != Some("file") {
        return None;
    }
    Some(RepoFile {
        path: v["path"].as_str()?.to_string(),
        size: v["size"].as_u64()?,
        blob_id: v["oid"].as_str().unwrap_or_default().to_string(),
        lfs_sha256: v["lfs"]["oid"].as_str().map(str::to_string),
    })
}

/// The `next` address of a `Link` header (`<url>; rel="next"`).
fn next_link(headers: &hyper::HeaderMap) -> Option<String> {
    let link = headers.get(hyper::header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_string())
    })
}

/// Every file of the repository at `commit`.
pub(crate) async fn list_files(http: &Http, repo: &str, commit: &str) -> Result<Vec<RepoFile>, HubError> {
    let mut files = Vec::new();
    let mut next = Some(format!("/api/models/{repo}/tree/{}?recursive=true", encode(commit)));
    let mut pages = 0;
    while let Some(url) = next.take() {
        pages += 1;
        if pages > MAX_PAGES {
            return Err(HubError::http(&url, format!("more than {MAX_PAGES} pages of files")));
        }
        let (page, headers) = http.get_json(&url).await?.map_err(|f| failure(http, repo, &format!("commit {commit}"), f))?;
        let entries = page.as_array().ok_or_else(|| HubError::http(&url, "the file list is not a JSON array"))?;
        for file in entries.iter().filter_map(parse_entry) {
            // A listed path becomes a path under the store: one that could leave it is refused.
            if !is_safe_path(&file.path) {
                return Err(HubError::http(&url, format!("the file list names a path outside the repository: {:?}", file.path)));
            }
            files.push(file);
        }
        next = next_link(&headers);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_quoted_as_the_hub_expects() {
        assert!(check_repo("onnx-community/Qwen3.5-0.8B-ONNX-OPT").is_ok());
        for bad in ["qwen", "a/b/c", "/b", "a/", "a/../b", "a/b c", "a/.git"] {
            assert!(check_repo(bad).is_err(), "{bad}");
        }
        assert_eq!(resolve_path("o/m", "refs/pr/1", "onnx/a b.onnx"), "/o/m/resolve/refs%2Fpr%2F1/onnx/a%20b.onnx");
    }

    #[test]
    fn listed_paths_must_stay_inside_the_model_directory() {
        for ok in ["config.json", "onnx/model_q4.onnx", "cpu-int4/genai_config.json"] {
            assert!(is_safe_path(ok), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "onnx/../../x", "a//b", "./a", "a\\b", "a/"] {
            assert!(!is_safe_path(bad), "{bad}");
        }
    }

    #[test]
    fn tree_entries_and_links() {
        let v: Value = serde_json::json!([
            {"type": "directory", "oid": "x", "size": 0, "path": "onnx"},
            {"type": "file", "oid": "abc", "size": 12, "path": "config.json"},
            {"type": "file", "oid": "def", "size": 99, "path": "onnx/m.onnx", "lfs": {"oid": "f00d", "size": 99, "pointerSize": 130}}
        ]);
        let files: Vec<RepoFile> = v.as_array().unwrap().iter().filter_map(parse_entry).collect();
        assert_eq!(files.len(), 2);
        assert_eq!(files[1].lfs_sha256.as_deref(), Some("f00d"));
        let mut h = hyper::HeaderMap::new();
        h.insert(hyper::header::LINK, "<https://hub/api/models/o/m/tree/c?cursor=x>; rel=\"next\"".parse().unwrap());
        assert_eq!(next_link(&h).as_deref(), Some("https://hub/api/models/o/m/tree/c?cursor=x"));
    }
}
