//! `qwenedge bench --local-intents`: the sentence templates' speed. Prints, as one JSON line:
//! the time and memory to load one language; per-sentence p50/p99 over a corpus (JSON Lines as
//! `qwenedge intents match` reads them); the worst case over adversarial inputs (2,000-byte
//! texts of the templates' own words, repeated words, wildcard-heavy commands) with the steps
//! it took; the latency at a client of a daemon that answers from the templates (p50/p99, and
//! with `--model` while a background generation runs); and Python hassil's figures on the same
//! corpus, measured in the same run when `--hassil-python` names an interpreter with hassil.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use qwenedge_sentences::local::{default_data_dir, recognize, HomeLists, Utterance};
use qwenedge_sentences::{load, Home};
use serde_json::{json, Map, Value};

use super::bench_daemon::quantile;
use super::rss_mb;

/// What the benchmark reads.
pub struct LocalBench<'a> {
    /// Language of the corpus.
    pub language: &'a str,
    /// The corpus (JSON Lines).
    pub corpus: &'a Path,
    /// Python with hassil, for the reference figures.
    pub hassil_python: Option<&'a Path>,
    /// A model, to measure the daemon's local answers while it generates.
    pub model: Option<&'a Path>,
    /// The model's intra-op threads (0: one per core).
    pub threads: usize,
}

/// The corpus, each line with the home in force for it.
fn corpus(path: &Path) -> anyhow::Result<Vec<(Utterance, Home)>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut home = Home::default();
    let mut out = Vec::new();
    for (n, l) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let mut line: Utterance = serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), n + 1))?;
        line.update(&mut home);
        out.push((line, home.clone()));
    }
    anyhow::ensure!(!out.is_empty(), "{}: no sentences", path.display());
    Ok(out)
}

/// Inputs made to be hard: long texts of the templates' words, repetitions, wildcard shapes.
fn adversarial(language: &str, data: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(data.join("intents").join(format!("{language}.json")))?;
    let mut words: Vec<&str> = text.split(|c: char| !c.is_alphanumeric() && c != '\'').filter(|w| !w.is_empty() && w.len() < 20).collect();
    words.sort_unstable();
    words.dedup();
    let mut out = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..100 {
        let mut s = String::new();
        while s.len() < 2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push_str(words[(x % words.len() as u64) as usize]);
            s.push(' ');
        }
        out.push(s);
    }
    for w in ["add", "to", "play", "on", "the", "set", "timer", "for", "1", "light"] {
        out.push(format!("{w} ").repeat(2000 / (w.len() + 1)));
    }
    out.push(format!("add {} to my shopping list", "milk and ".repeat(220)));
    out.push(format!("play {} on TV", "on the radio ".repeat(150)));
    out.push(format!("broadcast {}", "dinner is ready ".repeat(120)));
    Ok(out)
}

fn percentiles(us: &[f64]) -> Value {
    json!({"p50_us": quantile(us, 0.5).round(), "p99_us": quantile(us, 0.99).round(), "max_us": quantile(us, 1.0).round()})
}

/// Runs the benchmark and prints its line.
pub fn run(b: &LocalBench) -> anyhow::Result<()> {
    let data = default_data_dir();
    let rss_before = rss_mb().unwrap_or(0.0);
    let started = Instant::now();
    let lang = load(&data, b.language, &[])?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let load_mb = rss_mb().unwrap_or(0.0) - rss_before;
    let lines = corpus(b.corpus)?;
    let mut lists = HomeLists::default();
    let mut us = Vec::with_capacity(lines.len());
    let mut recognized = Vec::new();
    for _ in 0..3 {
        us.clear();
        recognized.clear();
        for (i, (line, home)) in lines.iter().enumerate() {
            let lists = lists.of(home);
            let started = Instant::now();
            let a = recognize(&lang, &line.text, lists, line.context.clone(), None);
            us.push(started.elapsed().as_secs_f64() * 1e6);
            if a.found.is_some() {
                recognized.push(i);
            }
        }
    }
    let lists_empty = Home::default().slot_lists();
    let (mut worst_us, mut worst_steps, mut spent) = (0.0f64, 0, 0);
    for text in adversarial(b.language, &data)? {
        let started = Instant::now();
        let a = recognize(&lang, &text, &lists_empty, Map::new(), None);
        worst_us = worst_us.max(started.elapsed().as_secs_f64() * 1e6);
        worst_steps = worst_steps.max(a.steps);
        spent += usize::from(a.too_complex);
    }
    let mut line = json!({
        "language": b.language,
        "templates": lang.template_count(),
        "load_ms": (load_ms * 10.0).round() / 10.0,
        "load_rss_mb": (load_mb * 10.0).round() / 10.0,
        "sentences": lines.len(),
        "recognized": recognized.len(),
        "qwenedge": percentiles(&us),
        "adversarial": {"inputs": 113, "worst_us": worst_us.round(), "most_steps": worst_steps, "budget_spent": spent},
    });
    let matched: Vec<&(Utterance, Home)> = recognized.iter().map(|&i| &lines[i]).collect();
    line["daemon"] = daemon(b, &matched)?;
    if let Some(python) = b.hassil_python {
        let hassil = hassil(python, &data, b.language, b.corpus)?;
        let ratio = hassil["p50_us"].as_f64().unwrap_or(0.0) / quantile(&us, 0.5).max(1e-9);
        line["hassil"] = hassil;
        line["p50_speedup_vs_hassil"] = json!((ratio * 10.0).round() / 10.0);
    }
    println!("{line}");
    Ok(())
}

/// Python hassil's figures on the same corpus (`tools/hassil_bench.py` beside the data).
fn hassil(python: &Path, data: &Path, language: &str, corpus: &Path) -> anyhow::Result<Value> {
    let script = data.join("../tools/hassil_bench.py");
    let out =
        Command::new(python).arg(&script).arg(data).arg(language).arg(corpus).output().with_context(|| python.display().to_string())?;
    anyhow::ensure!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A daemon answering from the templates: the latency at its client over the corpus' first
/// sentences, and (with a model) the same while a 2,000-token background generation runs.
fn daemon(b: &LocalBench, lines: &[&(Utterance, Home)]) -> anyhow::Result<Value> {
    anyhow::ensure!(!lines.is_empty(), "no sentence of the corpus was recognized");
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("q.sock");
    // One home for the daemon: every device, area and floor of the corpus, each name once.
    let mut devices = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for (_, home) in lines {
        for d in &home.devices {
            if seen.insert(("device", d.name.clone())) {
                devices.push_str(&format!("[[device]]\nname = {:?}\ndomain = {:?}\n", d.name, d.domain));
            }
        }
        for a in &home.areas {
            if seen.insert(("area", a.name.clone())) {
                devices.push_str(&format!("[[area]]\nname = {:?}\n", a.name));
            }
        }
        for f in &home.floors {
            if seen.insert(("floor", f.name.clone())) {
                devices.push_str(&format!("[[floor]]\nname = {:?}\n", f.name));
            }
        }
    }
    std::fs::write(dir.path().join("devices.toml"), devices)?;
    let model = match b.model {
        Some(m) => format!(
            "[model]\npath = {:?}\nthreads = {}\n[scheduler]\nmax_tokens_limit = 4000\n",
            m.canonicalize()?.display().to_string(),
            b.threads
        ),
        None => String::new(),
    };
    let local = if b.model.is_some() { "first" } else { "only" };
    let config = format!(
        "{model}[socket]\npath = {:?}\n[intents]\nlocal = {local:?}\nlanguage = {:?}\ndevices = {:?}\n",
        socket.display().to_string(),
        b.language,
        dir.path().join("devices.toml").display().to_string()
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config)?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--config"])
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(300);
        let stream = loop {
            match UnixStream::connect(&socket) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(e).context("the daemon did not start"),
            }
        };
        let mut background = None;
        if b.model.is_some() {
            let mut s = UnixStream::connect(&socket)?;
            s.write_all(b"{\"id\":\"bg\",\"op\":\"complete\",\"prompt\":\"Once upon a time\",\"max_tokens\":2000,\"priority\":\"background\",\"temperature\":0.8,\"seed\":1}\n")?;
            let mut r = BufReader::new(s.try_clone()?);
            let mut first = String::new();
            r.read_line(&mut first)?;
            background = Some((s, r));
        }
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream;
        let mut us = Vec::new();
        let mut local = 0;
        for (i, (line, _)) in lines.iter().copied().take(300).enumerate() {
            let mut req = json!({"id": format!("l{i}"), "op": "intent", "text": line.text});
            if let Some(area) = line.context.get("area") {
                req["area"] = area.clone();
            }
            let started = Instant::now();
            writer.write_all(format!("{req}\n").as_bytes())?;
            let mut answer = String::new();
            reader.read_line(&mut answer)?;
            us.push(started.elapsed().as_secs_f64() * 1e6);
            local += usize::from(answer.contains("\"source\":\"local\""));
        }
        let mut figures = percentiles(&us);
        figures["requests"] = json!(us.len());
        figures["answered_locally"] = json!(local);
        figures["during_generation"] = json!(background.is_some());
        if b.model.is_some() {
            figures["model_threads"] = json!(b.threads);
        }
        if let Some((mut s, _)) = background {
            s.write_all(b"{\"id\":\"bg\",\"op\":\"cancel\"}\n")?;
        }
        Ok(figures)
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}
