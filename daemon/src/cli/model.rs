//! `qwenedge model pull|list|rm`: models from the Hugging Face Hub in the local model store
//! (`[hub]` of the configuration). A pull shows its progress on a terminal (a line per file
//! otherwise) and prints the model's directory — what `model.path` takes.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use qwenedge_config::{self as config, HubSettings};
use qwenedge_hub::{Hub, Progress, PullRequest, Store};

#[derive(Debug, Args)]
pub struct ModelCmdArgs {
    /// Configuration file (default /etc/qwenedge/config.toml when it exists): `[hub]`.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The model store (else hub.models_dir, else the default for this user).
    #[arg(long, global = true, env = "QWENEDGE__HUB__MODELS_DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Download a model from the Hugging Face Hub (only the files of one variant) and print
    /// its directory.
    Pull {
        /// Repository (`onnx-community/Qwen3.5-0.8B-ONNX-OPT`) or an alias of `[hub.aliases]`.
        repo: String,
        /// Variant: `q4` (default where present), `fp32`, `q4f16`, `fp16`, `quantized`, or the
        /// folder of an onnxruntime-genai model.
        #[arg(long)]
        variant: Option<String>,
        /// Branch, tag or commit.
        #[arg(long, default_value = "main")]
        revision: String,
    },
    /// List the models in the store.
    List {
        /// JSON Lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a model (`owner/name`, or `owner/name:variant` for one variant) from the store.
    Rm { name: String },
}

fn settings(args: &ModelCmdArgs) -> anyhow::Result<HubSettings> {
    let mut hub = config::load_hub(args.config.as_deref(), &config::process_env())?;
    if let Some(store) = &args.store {
        hub.models_dir = Some(store.clone());
    }
    Ok(hub)
}

fn store(hub: &HubSettings) -> anyhow::Result<Store> {
    let dir = hub.models_path().context("no model store: set hub.models_dir (or --store)")?;
    Ok(Store::new(dir))
}

fn mb(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", bytes as f64 / 1e6),
        _ => format!("{:.2} GB", bytes as f64 / 1e9),
    }
}

/// Runs `qwenedge model …`.
pub fn run(args: ModelCmdArgs) -> anyhow::Result<()> {
    let hub = settings(&args)?;
    match &args.command {
        ModelCommand::Pull { repo, variant, revision } => {
            let (repo, alias_variant) = hub.resolve(repo).unwrap_or_else(|| (repo.clone(), None));
            let request = PullRequest { repo, variant: variant.clone().or(alias_variant), revision: revision.clone() };
            pull(&hub, &request)
        }
        ModelCommand::List { json } => {
            let models = store(&hub)?.list();
            let mut out = std::io::stdout().lock();
            if *json {
                for m in &models {
                    let line = serde_json::json!({
                        "name": format!("{}:{}", m.manifest.repo, m.manifest.variant),
                        "repo": m.manifest.repo, "variant": m.manifest.variant, "revision": m.manifest.revision,
                        "commit": m.manifest.commit, "bytes": m.manifest.bytes(), "dir": m.dir, "pulled_at_s": m.manifest.pulled_at_s,
                    });
                    writeln!(out, "{line}")?;
                }
            } else if models.is_empty() {
                writeln!(out, "no models in {}", store(&hub)?.root().display())?;
            } else {
                for m in &models {
                    let commit: String = m.manifest.commit.chars().take(12).collect();
                    writeln!(
                        out,
                        "{}:{}\t{}\t{}\t{}",
                        m.manifest.repo,
                        m.manifest.variant,
                        commit,
                        mb(m.manifest.bytes()),
                        m.dir.display()
                    )?;
                }
            }
            Ok(())
        }
        ModelCommand::Rm { name } => {
            let (repo, variant) = match name.split_once(':') {
                Some((r, v)) => (r, Some(v)),
                None => (name.as_str(), None),
            };
            for dir in store(&hub)?.remove(repo, variant)? {
                println!("removed {}", dir.display());
            }
            Ok(())
        }
    }
}

fn pull(hub: &HubSettings, request: &PullRequest) -> anyhow::Result<()> {
    let endpoint = qwenedge_hub::endpoint(hub.endpoint.as_deref());
    let token = qwenedge_hub::token(hub.token_file.as_deref())?;
    let client = Hub::new(&endpoint, token, store(hub)?)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut shown = Shown { terminal: std::io::stderr().is_terminal(), started: Instant::now(), last: None, finished: None };
    let pulled = runtime.block_on(client.pull(request, &mut |p| shown.show(p)))?;
    shown.finish();
    if pulled.up_to_date {
        eprintln!("{}:{} is up to date (commit {})", pulled.manifest.repo, pulled.manifest.variant, pulled.manifest.commit);
    }
    println!("{}", pulled.dir.display());
    Ok(())
}

/// Progress on stderr: one line rewritten on a terminal, a line per finished file otherwise.
struct Shown {
    terminal: bool,
    started: Instant,
    /// The file shown and when the line was last drawn.
    last: Option<(String, Instant)>,
    /// The last file finished (its end is shown once).
    finished: Option<String>,
}

impl Shown {
    fn show(&mut self, p: Progress) {
        let mut err = std::io::stderr().lock();
        match p {
            Progress::Listing => {}
            Progress::Selected { variant, files, bytes } => {
                let _ = writeln!(err, "pulling variant {variant}: {files} files, {}", mb(bytes));
            }
            Progress::File { path, total, completed, .. } => {
                let now = Instant::now();
                if self.finished.as_deref() == Some(path.as_str()) {
                    return;
                }
                let new_file = self.last.as_ref().is_none_or(|(p, _)| *p != path);
                let due = self.last.as_ref().is_none_or(|(_, t)| now.duration_since(*t).as_millis() >= 200);
                if self.terminal && (new_file || due || completed == total) {
                    let rate = completed as f64 / 1e6 / self.started.elapsed().as_secs_f64().max(1e-3);
                    let _ = write!(err, "\r\x1b[K{path}  {} / {}  ({rate:.1} MB/s)", mb(completed), mb(total));
                    if completed == total {
                        let _ = writeln!(err);
                    }
                } else if !self.terminal && completed == total {
                    let _ = writeln!(err, "{path}  {}", mb(total));
                }
                if completed == total {
                    self.finished = Some(path.clone());
                }
                self.last = Some((path, now));
            }
            Progress::Verifying => {
                let _ = writeln!(err, "checking that the model loads");
            }
            Progress::Done { .. } => {}
        }
    }

    fn finish(&self) {
        let _ = writeln!(std::io::stderr(), "done in {:.1} s", self.started.elapsed().as_secs_f64());
    }
}
