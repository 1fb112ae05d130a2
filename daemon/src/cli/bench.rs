//! `qwenedge bench`: prefill and decode throughput, time to first token and peak memory on a
//! fixed synthetic prompt (or, with `--intent`, the prefix cache's effect on an intent
//! request's time to first token). A human table goes to stderr, one JSON line to stdout.

use anyhow::Context;
use std::ops::ControlFlow;
use std::time::Instant;

use clap::Args;
use qwenedge_engine::generate::{Completion, GenerateParams};

use super::{peak_rss_mb, rss_mb, ModelArgs};

/// Text the benchmark prompt is cut from (its content does not matter for speed).
pub(super) const PARAGRAPH: &str = "The quick brown fox jumps over the lazy dog while the kitchen lights dim to forty \
percent, the thermostat settles at twenty-one degrees, and a voice assistant on a small board answers \
without sending a single word to the cloud. ";

/// Arguments of `qwenedge bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Measure the sentence templates instead (no model needed; with --model, the daemon's
    /// local answers are also timed while it generates).
    #[arg(long)]
    local_intents: bool,
    /// The sentences for --local-intents (JSON Lines, as `qwenedge intents match` reads them).
    #[arg(long, requires = "local_intents")]
    corpus: Option<std::path::PathBuf>,
    /// Language of --corpus.
    #[arg(long, default_value = "en", requires = "local_intents")]
    language: String,
    /// Python with hassil, to measure it on the same corpus in the same run.
    #[arg(long, requires = "local_intents")]
    hassil_python: Option<std::path::PathBuf>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to generate (EOS is ignored so every run generates exactly this many).
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Measure, through the daemon, a short chat's time to first token while another client's
    /// 4,096-token prompt prefills and while its 2,000-token generation runs, beside the idle
    /// daemon's.
    #[arg(long, conflicts_with_all = ["intent", "local_intents", "tokenizer"])]
    sharing: bool,
    /// Measured runs after one warm-up; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Measure time to first token of an intent request (catalog prompt + utterance), cold
    /// and with the catalog's prefix state cached, instead of throughput.
    #[arg(long)]
    intent: bool,
    /// Utterance length in tokens for --intent.
    #[arg(long, default_value_t = 12)]
    utterance_tokens: usize,
    /// Intent catalog for --intent (default: the built-in catalog).
    #[arg(long)]
    catalog: Option<std::path::PathBuf>,
    /// Time the tokenizer alone on 1 MiB of each hostile input shape instead.
    #[arg(long, conflicts_with = "intent")]
    tokenizer: bool,
    /// Also run through this execution-provider plugin (`qnn=/path/libonnxruntime_providers_qnn.so`)
    /// and print its speed, node placement and agreement beside the CPU provider's.
    #[arg(long, value_name = "EP=PATH", conflicts_with_all = ["intent", "tokenizer"])]
    ep_library: Option<String>,
    /// Options for the plugin provider (`backend_type=htp`); repeat for several.
    #[arg(long, value_name = "KEY=VALUE", requires = "ep_library")]
    ep_option: Vec<String>,
}

/// The benchmark prompt: `n` tokens of [`PARAGRAPH`] repeated.
pub(super) fn prompt(engine: &qwenedge_engine::Engine, n: usize) -> anyhow::Result<Vec<u32>> {
    let unit = engine.tokenizer.encode(PARAGRAPH)?;
    Ok(unit.iter().copied().cycle().take(n).collect())
}

/// Medians of the measured runs, and the tokens the last one generated.
pub(super) struct Speed {
    /// Prompt tokens per second.
    pub prefill: f64,
    /// Generated tokens per second.
    pub decode: f64,
    /// Time to first token (ms).
    pub ttft: f64,
    /// Greedy tokens of the last run.
    pub tokens: Vec<u32>,
}

/// Generates `new_tokens` after `prompt` once to warm up and `runs` times measured.
pub(super) fn speed(engine: &mut qwenedge_engine::Engine, prompt: &[u32], new_tokens: usize, runs: usize) -> anyhow::Result<Speed> {
    let params = GenerateParams { max_tokens: new_tokens, ..Default::default() };
    let mut results: Vec<Completion> = Vec::new();
    for i in 0..=runs {
        let seq = engine.new_sequence()?;
        let mut sink = |_: &str, _: u32| ControlFlow::Continue(());
        let done = engine.generate_with(seq, prompt, &params, &[], &mut sink)?;
        anyhow::ensure!(done.tokens.len() == new_tokens, "generated {} tokens", done.tokens.len());
        if i > 0 {
            results.push(done);
        }
    }
    let median = |f: fn(&Completion) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(Speed {
        prefill: median(|c| c.timings.prefill_tok_s),
        decode: median(|c| c.timings.decode_tok_s),
        ttft: median(|c| c.timings.ttft_ms),
        tokens: results.pop().map(|c| c.tokens).unwrap_or_default(),
    })
}

/// Runs `bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.local_intents {
        let corpus = args.corpus.as_deref().context("--local-intents needs --corpus")?;
        let model = args.model.model.as_deref();
        let bench = super::bench_local::LocalBench {
            language: &args.language,
            corpus,
            hassil_python: args.hassil_python.as_deref(),
            model,
            threads: args.model.threads,
        };
        return super::bench_local::run(&bench);
    }
    let model = &args.model;
    anyhow::ensure!(args.prompt_tokens > 0 && args.new_tokens > 1, "--prompt-tokens must be > 0 and --new-tokens > 1");
    anyhow::ensure!(args.runs > 0, "--runs must be > 0");
    if args.tokenizer {
        return super::bench_tokenizer::run(model.path()?);
    }
    if args.sharing {
        return super::bench_sharing::run(model, args.runs);
    }
    if let Some(spec) = &args.ep_library {
        return super::bench_ep::run(model, spec, &args.ep_option, args.prompt_tokens, args.new_tokens, args.runs);
    }
    let load_start = Instant::now();
    let mut engine = model.load()?;
    let load_ms = load_start.elapsed().as_secs_f64() * 1e3;
    if args.intent {
        anyhow::ensure!(args.utterance_tokens > 0, "--utterance-tokens must be > 0");
        let catalog = qwenedge_intent::Catalog::load(args.catalog.as_deref(), None)?;
        let mut line = super::bench_intent::run(&mut engine, &catalog, args.utterance_tokens, args.runs, model.threads)?;
        drop(engine);
        let figures = super::bench_daemon::run(model, args.catalog.as_deref())?;
        super::bench_intent::report_daemon(&mut line, &figures);
        println!("{line}");
        return Ok(());
    }
    let prompt = prompt(&engine, args.prompt_tokens)?;
    let Speed { prefill, decode, ttft, .. } = speed(&mut engine, &prompt, args.new_tokens, args.runs)?;
    let rss = peak_rss_mb().unwrap_or(0.0);
    let rss_now = rss_mb().unwrap_or(0.0);
    let info = engine.backend_info();
    let weights_mb = engine.spec.weight_bytes() as f64 / (1024.0 * 1024.0);
    eprintln!("qwenedge bench  {}", engine.spec.dir.display());
    eprintln!("  runtime          {} {} ({} threads)", info.name, info.version, model.threads);
    eprintln!("  prompt / new     {} / {} tokens, {} runs (median)", args.prompt_tokens, args.new_tokens, args.runs);
    eprintln!("  load             {load_ms:>9.1} ms");
    eprintln!("  prefill          {prefill:>9.1} tok/s");
    eprintln!("  decode           {decode:>9.1} tok/s");
    eprintln!("  time to first    {ttft:>9.1} ms");
    eprintln!("  peak RSS         {rss:>9.1} MiB  (weights {weights_mb:.1} MiB; {rss_now:.1} MiB resident at the end)");
    let json = serde_json::json!({
        "engine": "qwenedge",
        "backend": info.name,
        "runtime_version": info.version,
        "model": engine.spec.dir.display().to_string(),
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "threads": model.threads,
        "runs": args.runs,
        "load_ms": load_ms,
        "prefill_tok_s": prefill,
        "decode_tok_s": decode,
        "ttft_ms": ttft,
        "peak_rss_mb": rss,
        "rss_mb": rss_now,
        "weights_mb": weights_mb,
    });
    println!("{json}");
    Ok(())
}
