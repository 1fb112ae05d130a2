//! `qwenedge bench-thermal`: a closed-loop simulation of a board heating up under a mixed
//! interactive + background workload, run once with the thermal governor and once without.
//!
//! The simulated SoC follows a first-order model — it heats in proportion to the daemon's
//! measured CPU use and cools toward ambient with time constant τ — and its temperature is
//! written into a fake thermal zone that the governor reads, closing the loop. Prints the
//! maximum temperature, time at each level, interactive time to first token and background
//! throughput for both runs: a human table on stderr and one JSON line on stdout.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use qwenedge_api::{EventBody, GenerateRequest, GenerateSpec, Limits, Priority, Prompt};
use qwenedge_budget::{monitor, BudgetSettings};
use qwenedge_config::Settings;
use qwenedge_intent::Catalog;
use qwenedge_runner::EngineLoader;
use qwenedge_scheduler::{Client, ClientPolicy, Job, Outbound, Requests, Scheduler};
use serde_json::{json, Value};

/// Arguments of `qwenedge bench-thermal`.
#[derive(Debug, Args)]
pub struct BenchThermalArgs {
    /// Model directory.
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Interactive requests (one every --interval-ms).
    #[arg(long, default_value_t = 12)]
    interactive: usize,
    /// Background requests (all queued at the start).
    #[arg(long, default_value_t = 6)]
    background: usize,
    /// Tokens per background request.
    #[arg(long, default_value_t = 200)]
    background_tokens: usize,
    /// Milliseconds between interactive requests.
    #[arg(long, default_value_t = 2000)]
    interval_ms: u64,
    /// Ambient temperature (°C).
    #[arg(long, default_value_t = 40.0)]
    ambient_c: f64,
    /// Temperature rise at full CPU use (°C above ambient at equilibrium).
    #[arg(long, default_value_t = 60.0)]
    rise_c: f64,
    /// Thermal time constant (s), compressed so a run takes a minute rather than an hour.
    #[arg(long, default_value_t = 6.0)]
    tau_s: f64,
}

const WARM: f64 = 70.0;
const HOT: f64 = 80.0;
const CRITICAL: f64 = 90.0;

/// The simulated SoC: integrates the first-order model from the process's CPU time.
struct Soc {
    temp_c: f64,
    seconds_at: [f64; 4],
    max_c: f64,
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn write_temp(zone: &Path, c: f64) {
    let tmp = zone.join("temp.tmp");
    if std::fs::write(&tmp, format!("{}\n", (c * 1000.0) as i64)).is_ok() {
        let _ = std::fs::rename(tmp, zone.join("temp"));
    }
}

fn simulate(args: &BenchThermalArgs, zone: PathBuf, soc: Arc<Mutex<Soc>>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (ambient, rise, tau) = (args.ambient_c, args.rise_c, args.tau_s);
    // Full use means every engine thread busy (capped at the cores there are).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(args.threads.max(1)) as f64;
    std::thread::spawn(move || {
        let dt = 0.05;
        let mut last_cpu = cpu_seconds();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs_f64(dt));
            let cpu = cpu_seconds();
            let util = ((cpu - last_cpu) / dt / cores).clamp(0.0, 1.0);
            last_cpu = cpu;
            let mut s = soc.lock().unwrap_or_else(|p| p.into_inner());
            s.temp_c += dt / tau * (ambient + rise * util - s.temp_c);
            s.max_c = s.max_c.max(s.temp_c);
            let level = [WARM, HOT, CRITICAL].iter().filter(|&&t| s.temp_c >= t).count();
            s.seconds_at[level] += dt;
            write_temp(&zone, s.temp_c);
        }
    })
}

fn request(client: &Client, id: &str, priority: Priority, max_tokens: usize) -> anyhow::Result<Job> {
    let messages = vec![json!({"role": "user", "content": "Turn the living room lights to 30 percent and tell me the weather."})];
    let spec = GenerateSpec {
        max_tokens: Some(max_tokens),
        stream: false,
        priority,
        ..GenerateSpec::new(Prompt::Chat { messages, tools: None, thinking: false })
    };
    let request = GenerateRequest::new(spec, &Limits { max_tokens: 4096 })?;
    let ticket = client.begin(id, id).map_err(|e| anyhow::anyhow!("{id}: {e:?}"))?;
    Ok(Job::new(ticket, request))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0)
}

fn run_once(args: &BenchThermalArgs, governed: bool) -> anyhow::Result<Value> {
    let tree = tempfile::tempdir()?;
    let zone = tree.path().join("sys/class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone)?;
    std::fs::write(zone.join("type"), "simulated-soc\n")?;
    write_temp(&zone, args.ambient_c);
    let mut settings = Settings::default();
    settings.model.path = Some(args.model.clone());
    settings.model.threads = args.threads;
    settings.scheduler.queue_capacity = args.interactive + args.background + 4;
    let off = |t: f64| if governed { t } else { t + 1000.0 };
    settings.budget = BudgetSettings {
        root: tree.path().to_path_buf(),
        thermal_warm_c: Some(off(WARM)),
        thermal_hot_c: Some(off(HOT)),
        thermal_critical_c: Some(off(CRITICAL)),
        poll_ms: 100,
        ..Default::default()
    };
    let load = settings.model.load_settings();
    let engine = qwenedge_runner::load_engine(&load, &settings)?;
    let catalog = Arc::new(Catalog::builtin()?);
    let (sched, _stopped) = Scheduler::start(
        EngineLoader,
        Some(qwenedge_runner::Runner(engine)),
        load,
        Arc::new(settings.clone()),
        catalog,
        qwenedge_scheduler::LocalStage::off(),
    )?;
    let sink = sched.clone();
    let _monitor = monitor::spawn(settings.budget.clone(), move |s| sink.set_budget(s))?;
    let soc = Arc::new(Mutex::new(Soc { temp_c: args.ambient_c, seconds_at: [0.0; 4], max_c: args.ambient_c }));
    let stop = Arc::new(AtomicBool::new(false));
    let sim = simulate(args, zone.clone(), Arc::clone(&soc), Arc::clone(&stop));
    let requests = Requests::default();
    let out = Arc::new(Outbound::new(usize::MAX));
    let client =
        requests.client(ClientPolicy { remember: 16, reject_recent: false, unread_key: "bench", transport: "bench" }, Arc::clone(&out));
    let submit = |job: Job| sched.submit(job).map_err(|r| anyhow::anyhow!(r.refusal.message));
    let started = Instant::now();
    for i in 0..args.background {
        submit(request(&client, &format!("bg{i}"), Priority::Background, args.background_tokens)?)?;
    }
    let mut next_interactive = started + Duration::from_secs(1);
    let mut sent_interactive = 0;
    let (mut ttft, mut background_tokens, mut background_end) = (Vec::new(), 0u64, started);
    let mut remaining = args.background + args.interactive;
    while remaining > 0 {
        if sent_interactive < args.interactive && Instant::now() >= next_interactive {
            submit(request(&client, &format!("fg{sent_interactive}"), Priority::Interactive, 16)?)?;
            sent_interactive += 1;
            next_interactive += Duration::from_millis(args.interval_ms);
        }
        let events = out.take();
        if events.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        for event in events.into_iter().map(|d| d.event) {
            let id = event.id.unwrap_or_default();
            match event.body {
                EventBody::Done { timings, .. } if id.starts_with("fg") => ttft.push(timings.ttft_ms),
                EventBody::Done { usage, .. } => {
                    background_tokens += usage.completion_tokens as u64;
                    background_end = Instant::now();
                }
                EventBody::Error { message, .. } => anyhow::bail!("request {id} failed: {message}"),
                _ => continue,
            }
            remaining -= 1;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sim.join();
    sched.shutdown(Duration::ZERO);
    let s = soc.lock().unwrap_or_else(|p| p.into_inner());
    let background_s = (background_end - started).as_secs_f64();
    Ok(json!({
        "governor": governed,
        "max_temp_c": (s.max_c * 10.0).round() / 10.0,
        "seconds_at": {"normal": s.seconds_at[0], "warm": s.seconds_at[1], "hot": s.seconds_at[2], "critical": s.seconds_at[3]},
        "interactive_ttft_ms_p50": percentile(&mut ttft.clone(), 0.5),
        "interactive_ttft_ms_p95": percentile(&mut ttft, 0.95),
        "background_tok_s": background_tokens as f64 / background_s.max(1e-9),
        "wall_s": wall,
    }))
}

/// Runs `bench-thermal`.
pub fn run(args: BenchThermalArgs) -> anyhow::Result<()> {
    let on = run_once(&args, true).context("governed run")?;
    let off = run_once(&args, false).context("ungoverned run")?;
    eprintln!("thermal simulation  {} ({} interactive, {} background requests)", args.model.display(), args.interactive, args.background);
    eprintln!(
        "  ambient {:.0} °C, +{:.0} °C at full load, τ {:.1} s; warm/hot/critical {WARM}/{HOT}/{CRITICAL} °C",
        args.ambient_c, args.rise_c, args.tau_s
    );
    eprintln!("  {:<28}{:>12}{:>12}", "", "governor on", "off");
    let row = |name: &str, key: &str| {
        let f = |v: &Value| v.pointer(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
        eprintln!("  {name:<28}{:>12.1}{:>12.1}", f(&on), f(&off));
    };
    row("max temperature (°C)", "/max_temp_c");
    row("seconds warm", "/seconds_at/warm");
    row("seconds hot", "/seconds_at/hot");
    row("seconds critical", "/seconds_at/critical");
    row("interactive TTFT p50 (ms)", "/interactive_ttft_ms_p50");
    row("interactive TTFT p95 (ms)", "/interactive_ttft_ms_p95");
    row("background tokens/s", "/background_tok_s");
    row("wall time (s)", "/wall_s");
    println!("{}", json!({"governor_on": on, "governor_off": off}));
    Ok(())
}
