//! Models from the Hugging Face Hub. A pull resolves the revision to a commit, lists that
//! commit's files, chooses one variant's files ([`select`]), fetches them with resume and
//! checksums ([`download`]), checks that the engine's reader loads them and installs the
//! directory into the [`Store`] in one step. Used by `qwenedge model pull` and by the Ollama
//! API's `/api/pull`.

mod api;
mod download;
mod error;
mod http;
mod select;
mod store;

use std::path::{Path, PathBuf};

pub use api::{check_repo, RepoFile};
pub use error::HubError;
pub use select::{select, NoVariant, Selection};
pub use store::{read_manifest, Manifest, ManifestFile, Store, StoredModel, MANIFEST};

/// The Hub's public address.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// What a pull asks for.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// `owner/name`.
    pub repo: String,
    /// A variant (`q4`, `fp32`, … or a genai folder); `None`: `q4` where present.
    pub variant: Option<String>,
    /// Branch, tag or commit (`main` by default).
    pub revision: String,
}

/// Progress of a pull, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// The revision is being resolved and the files listed.
    Listing,
    /// The variant chosen: its files and their total size.
    Selected { variant: String, files: usize, bytes: u64 },
    /// Bytes of one file present so far (`completed` of `total`); `digest` is its checksum.
    File { path: String, digest: String, total: u64, completed: u64 },
    /// Every file fetched; the engine's reader checks the directory.
    Verifying,
    /// Installed in the store.
    Done { dir: PathBuf },
}

/// The result of a pull.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The model's directory (for `model.path`).
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The store already held this commit: nothing was fetched.
    pub up_to_date: bool,
}

/// The Hub's address: `HF_ENDPOINT` when set, else `configured`, else [`DEFAULT_ENDPOINT`].
pub fn endpoint(configured: Option<&str>) -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| configured.map(str::to_string))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
        .trim_end_matches('/')
        .to_string()
}

/// The access token: `HF_TOKEN`, else the file `token_file`, `HF_TOKEN_PATH`, `$HF_HOME/token`
/// or `~/.cache/huggingface/token` (the first that exists); `None` for public repositories.
pub fn token(token_file: Option<&Path>) -> Result<Option<String>, HubError> {
    if let Some(t) = std::env::var("HF_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let candidates = [
        token_file.map(Path::to_path_buf),
        var("HF_TOKEN_PATH"),
        var("HF_HOME").map(|h| h.join("token")),
        var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache"))).map(|c| c.join("huggingface/token")),
    ];
    if let Some(path) = token_file.filter(|p| !p.exists()) {
        return Err(HubError::io(path, "hub.token_file does not exist"));
    }
    for path in candidates.into_iter().flatten() {
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => return Ok(Some(t.trim().to_string())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(HubError::io(&path, e)),
        }
    }
    Ok(None)
}

/// A Hub client and the store it pulls into.
#[derive(Clone)]
pub struct Hub {
    http: http::Http,
    store: Store,
}

impl Hub {
    /// A client for `endpoint` with `token`, pulling into `store`.
    pub fn new(endpoint: &str, token: Option<String>, store: Store) -> Result<Self, HubError> {
        Ok(Self { http: http::Http::new(endpoint, token)?, store })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Pulls `request` into the store; `progress` hears each step. A pull interrupted at any
    /// point leaves its partial files for the next one to resume, and no model directory.
    pub async fn pull(&self, request: &PullRequest, progress: &mut (dyn FnMut(Progress) + Send)) -> Result<Pulled, HubError> {
        let repo = request.repo.as_str();
        check_repo(repo)?;
        let _lock = self.store.lock(repo)?;
        progress(Progress::Listing);
        let commit = api::resolve_revision(&self.http, repo, &request.revision).await?;
        let files = api::list_files(&self.http, repo, &commit).await?;
        let selection = select(&files, request.variant.as_deref()).map_err(|e| HubError::NoVariant { repo: repo.to_string(), why: e.0 })?;
        if let Some(stored) =
            self.store.get(repo, &selection.variant).filter(|m| m.manifest.commit == commit && complete(&m.dir, &m.manifest))
        {
            progress(Progress::Done { dir: stored.dir.clone() });
            return Ok(Pulled { dir: stored.dir, manifest: stored.manifest, up_to_date: true });
        }
        let bytes = selection.files.iter().map(|(f, _)| f.size).sum();
        progress(Progress::Selected { variant: selection.variant.clone(), files: selection.files.len(), bytes });
        let partial = self.store.partial_dir(repo, &selection.variant);
        self.store.start_partial(&partial, &commit)?;
        let previous = self.store.get(repo, &selection.variant);
        // Small files first: the configuration says early whether the model is one this engine runs.
        let mut ordered: Vec<&(RepoFile, String)> = selection.files.iter().collect();
        ordered.sort_by_key(|(f, _)| f.size);
        for (file, to) in &ordered {
            let dest = partial.join(to);
            let digest = checksum(file);
            if !dest.exists() && !reuse(previous.as_ref(), to, &digest, &dest) {
                let mut on_bytes = |completed| {
                    progress(Progress::File { path: to.clone(), digest: digest.clone(), total: file.size, completed });
                };
                download::fetch(&self.http, repo, &commit, file, &dest, &mut on_bytes).await?;
            }
            progress(Progress::File { path: to.clone(), digest: digest.clone(), total: file.size, completed: file.size });
            if to == "config.json" {
                check_model_type(repo, &dest)?;
            }
        }
        progress(Progress::Verifying);
        let hub_variant = (!partial.join("genai_config.json").exists()).then_some(selection.variant.as_str());
        let dir = partial.clone();
        let variant = hub_variant.map(str::to_string);
        tokio::task::spawn_blocking(move || qwenedge_engine::model::ModelSpec::load_variant(&dir, variant.as_deref()))
            .await
            .map_err(|e| HubError::Unloadable { repo: repo.to_string(), why: e.to_string() })?
            .map_err(|e| HubError::Unloadable { repo: repo.to_string(), why: e.to_string() })?;
        let manifest = Manifest {
            repo: repo.to_string(),
            revision: request.revision.clone(),
            commit,
            variant: selection.variant.clone(),
            endpoint: self.http.endpoint(),
            pulled_at_s: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            files: selection.files.iter().map(|(f, to)| ManifestFile { path: to.clone(), size: f.size, checksum: checksum(f) }).collect(),
        };
        let dir = self.store.install(&partial, &manifest)?;
        progress(Progress::Done { dir: dir.clone() });
        Ok(Pulled { dir, manifest, up_to_date: false })
    }
}

fn checksum(file: &RepoFile) -> String {
    file.lfs_sha256.clone().unwrap_or_else(|| file.blob_id.clone())
}

/// Whether every file of `manifest` is in `dir` with its size.
fn complete(dir: &Path, manifest: &Manifest) -> bool {
    manifest.files.iter().all(|f| std::fs::metadata(dir.join(&f.path)).is_ok_and(|m| m.len() == f.size))
}

/// Links the unchanged file `to` of the previous pull into the new one instead of fetching it.
fn reuse(previous: Option<&StoredModel>, to: &str, digest: &str, dest: &Path) -> bool {
    let Some(prev) = previous else { return false };
    let same = prev.manifest.files.iter().any(|f| f.path == to && f.checksum == digest);
    if !same {
        return false;
    }
    if let Some(parent) = dest.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::hard_link(prev.dir.join(to), dest).is_ok()
}

/// Refuses a repository whose `config.json` names a model type this engine does not run,
/// before its graphs are fetched.
fn check_model_type(repo: &str, config: &Path) -> Result<(), HubError> {
    let text = std::fs::read(config).map_err(|e| HubError::io(config, e))?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| HubError::Unloadable { repo: repo.to_string(), why: format!("config.json: not JSON: {e}") })?;
    let model_type = value["model_type"].as_str().unwrap_or_default();
    let supported = qwenedge_engine::model::SUPPORTED_TYPES;
    if !supported.contains(&model_type) {
        return Err(HubError::NoVariant {
            repo: repo.to_string(),
            why: format!("model type '{model_type}' is not one this engine runs ({})", supported.join(", ")),
        });
    }
    Ok(())
}
