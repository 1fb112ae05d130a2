//! Command-line parsing and dispatch. Each subcommand lives in its own file; `anyhow` is used
//! only here, at the edge.

mod ask;
mod bench;
mod bench_daemon;
mod bench_ep;
mod bench_intent;
mod bench_local;
mod bench_sharing;
mod bench_thermal;
mod bench_tokenizer;
mod doctor;
mod eval_intents;
mod generate;
mod intents;
mod model;
mod mqtt_forget;
mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use qwenedge_engine::backend::ort::OrtOptions;
use qwenedge_engine::backend::select::BackendKind;
use qwenedge_engine::{Engine, EngineOptions};

/// On-device inference daemon for Qwen3.5 Small ONNX models.
#[derive(Debug, Parser)]
#[command(name = "qwenedge", version, about)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug); QWENEDGE_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text from a prompt and stream it to stdout.
    Generate(generate::GenerateArgs),
    /// Measure prefill and decode speed, time to first token and peak memory.
    Bench(bench::BenchArgs),
    /// Simulate a board heating up under load, with and without the thermal governor.
    BenchThermal(bench_thermal::BenchThermalArgs),
    /// Run the daemon: load the model and serve requests on the Unix socket.
    Serve(serve::ServeArgs),
    /// Ask the running daemon (over its socket) and stream the answer.
    Ask(ask::AskArgs),
    /// Measure intent recognition on a labelled dataset through the running daemon.
    EvalIntents(eval_intents::EvalIntentsArgs),
    /// Match utterances against Home Assistant's sentence templates, locally (no daemon, no model).
    Intents(intents::IntentsArgs),
    /// Check this device, the ONNX Runtime library, the socket and the configured model.
    Doctor(doctor::DoctorArgs),
    /// Remove this device's Home Assistant discovery entries from the MQTT broker.
    MqttForget(mqtt_forget::MqttForgetArgs),
    /// Models from the Hugging Face Hub: pull, list, rm.
    Model(model::ModelCmdArgs),
}

/// Model and runtime options shared by the subcommands that load a model.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model directory (output of the onnxruntime-genai model builder); required except by
    /// `bench --local-intents`.
    #[arg(long, short = 'm', env = "QWENEDGE__MODEL__PATH")]
    pub model: Option<PathBuf>,
    /// Intra-op threads for inference (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Path to libonnxruntime.so (else ORT_DYLIB_PATH, then the documented search order).
    #[arg(long, env = "QWENEDGE__MODEL__ONNXRUNTIME_LIBRARY")]
    pub onnxruntime: Option<PathBuf>,
    /// Runtime: ONNX Runtime, the pure-Rust tract backend, or ONNX Runtime when it loads.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto, env = "QWENEDGE__MODEL__BACKEND")]
    pub backend: BackendKind,
    /// The variant of a model in the Hugging Face Hub's layout (`q4`, `fp32`, `q4f16`, `fp16`,
    /// `quantized`; default: `q4` where present).
    #[arg(long, env = "QWENEDGE__MODEL__VARIANT")]
    pub variant: Option<String>,
    /// Write ONNX Runtime's per-operator profile (Chrome trace JSON) to files starting with
    /// this path.
    #[arg(long)]
    pub ort_profile: Option<PathBuf>,
    /// Pack ONNX Runtime's weights at load instead of saving the optimized model with its
    /// pre-packed weights (as the daemon does, see `cache.optimized_dir`) and mapping it.
    #[arg(long)]
    pub no_optimized_cache: bool,
}

impl ModelArgs {
    /// The model directory (`--model`).
    pub fn path(&self) -> anyhow::Result<&std::path::Path> {
        self.model.as_deref().ok_or_else(|| anyhow::anyhow!("--model is required (the model directory)"))
    }

    fn load(&self) -> anyhow::Result<Engine> {
        self.load_with(Vec::new())
    }

    /// Loads the model with `providers` in front of ONNX Runtime's CPU provider.
    fn load_with(&self, providers: Vec<qwenedge_engine::backend::providers::ProviderRequest>) -> anyhow::Result<Engine> {
        let ort = OrtOptions {
            library: self.onnxruntime.clone(),
            threads: self.threads,
            profile: self.ort_profile.clone(),
            optimized: if self.no_optimized_cache { None } else { qwenedge_config::CacheSettings::default().optimized() },
            providers,
            ..Default::default()
        };
        let opts = EngineOptions { backend: self.backend, ort, variant: self.variant.clone(), ..Default::default() };
        let started = std::time::Instant::now();
        let path = self.path()?;
        let engine = Engine::load(path, &opts)?;
        let info = engine.backend_info();
        tracing::info!(
            model = %path.display(),
            backend = info.name,
            chosen = %info.chosen,
            runtime = %info.version,
            library = info.library.as_deref().unwrap_or(""),
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(engine)
    }
}

/// Sets up logging to stderr for the one-shot commands.
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("QWENEDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(qwenedge::service::default_filter(default)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A log that cannot be written (a full disk) is dropped; the default reports it with
        // `eprintln!`, which panics when stderr is what failed.
        .log_internal_errors(false)
        .init();
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        command => {
            init_logging(cli.verbose);
            match command {
                Command::Generate(args) => generate::run(args),
                Command::Bench(args) => bench::run(args),
                Command::BenchThermal(args) => bench_thermal::run(args),
                Command::Ask(args) => ask::run(args),
                Command::Doctor(args) => doctor::run(args),
                Command::EvalIntents(args) => eval_intents::run(args),
                Command::Intents(args) => intents::run(args),
                Command::MqttForget(args) => mqtt_forget::run(args),
                Command::Model(args) => model::run(args),
                Command::Serve(_) => unreachable!("handled above"),
            }
        }
    }
}

/// Peak resident set size of this process in MiB (`VmHWM`), if the kernel reports it.
pub fn peak_rss_mb() -> Option<f64> {
    status_mb("VmHWM:")
}

/// Current resident set size of this process in MiB (`VmRSS`).
pub fn rss_mb() -> Option<f64> {
    status_mb("VmRSS:")
}

fn status_mb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
