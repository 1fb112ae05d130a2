//! `qwenedge ask`: a small client for the daemon's socket. Streams the answer to stdout, or
//! every event as JSON with `--json`; with `--intent` the text is resolved against the intent
//! catalog and the intent and its slots are printed. An error event becomes the exit status and
//! a message.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use clap::Args;
use qwenedge_api::Priority;
use qwenedge_config::SocketSettings;
use serde_json::{json, Value};

/// Arguments of `qwenedge ask`.
#[derive(Debug, Args)]
pub struct AskArgs {
    /// What to ask.
    text: String,
    /// The daemon's socket (default: as the daemon chooses it).
    #[arg(long, env = "QWENEDGE__SOCKET__PATH")]
    socket: Option<PathBuf>,
    /// System message.
    #[arg(long)]
    system: Option<String>,
    /// Send the text as a raw completion prompt instead of a chat message.
    #[arg(long)]
    raw: bool,
    /// Resolve the text to an intent of the catalog instead of chatting.
    #[arg(long, conflicts_with_all = ["raw", "system", "thinking", "max_tokens"])]
    intent: bool,
    /// With `--intent`: only this intent may be answered (repeat for several).
    #[arg(long = "intent-filter", requires = "intent")]
    intent_filter: Vec<String>,
    /// Let the model think first.
    #[arg(long)]
    thinking: bool,
    /// Most tokens to generate.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Sampling temperature (0 = greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Scheduling class.
    #[arg(long, value_enum, default_value = "interactive")]
    priority: PriorityArg,
    /// Give up after this many milliseconds.
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Print every event as a JSON line instead of the text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PriorityArg {
    Interactive,
    Background,
}

/// Runs `ask`.
pub fn run(args: AskArgs) -> anyhow::Result<()> {
    let path = args.socket.clone().unwrap_or_else(|| SocketSettings::default().path());
    let stream = UnixStream::connect(&path).map_err(|e| anyhow::anyhow!("{}: cannot connect to the daemon: {e}", path.display()))?;
    let id = format!("ask-{}", std::process::id());
    let mut request = if args.intent {
        let mut r = json!({"id": id, "op": "intent", "text": args.text});
        if !args.intent_filter.is_empty() {
            r["intent_filter"] = json!(args.intent_filter);
        }
        r
    } else if args.raw {
        json!({"id": id, "op": "complete", "prompt": args.text})
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": args.text}));
        json!({"id": id, "op": "chat", "messages": messages, "thinking": args.thinking})
    };
    let priority = match args.priority {
        PriorityArg::Interactive => Priority::Interactive,
        PriorityArg::Background => Priority::Background,
    };
    request["priority"] = serde_json::to_value(priority)?;
    for (key, value) in [
        ("max_tokens", args.max_tokens.map(Value::from)),
        ("temperature", args.temperature.map(Value::from)),
        ("seed", args.seed.map(Value::from)),
        ("deadline_ms", args.deadline_ms.map(Value::from)),
    ] {
        if let Some(v) = value {
            request[key] = v;
        }
    }
    let mut writer = stream.try_clone()?;
    // A refused peer is told why before the daemon hangs up, so a failed write is reported
    // only if no answer can be read either.
    let sent = writeln!(writer, "{request}");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let event: Value = serde_json::from_str(&line)?;
        if args.json {
            writeln!(out, "{line}")?;
        }
        match event["event"].as_str() {
            Some("token") if !args.json => {
                write!(out, "{}", event["text"].as_str().unwrap_or(""))?;
                out.flush()?;
            }
            Some("intent") => {
                if !args.json {
                    print_intent(&mut out, &event)?;
                }
                return Ok(());
            }
            Some("done") => {
                if !args.json {
                    writeln!(out)?;
                }
                return Ok(());
            }
            Some("error") => {
                anyhow::bail!("{}: {}", event["code"].as_str().unwrap_or("error"), event["message"].as_str().unwrap_or(""));
            }
            _ => {}
        }
    }
    sent?;
    anyhow::bail!("the daemon closed the connection before answering")
}

/// One line for the intent, then one per slot; or `not recognized`.
fn print_intent(out: &mut impl Write, event: &Value) -> std::io::Result<()> {
    let name = event["intent"]["name"].as_str();
    let confidence = event["intent"]["confidence"].as_f64().unwrap_or(0.0);
    if event["recognized"] != true {
        return match name {
            Some(n) => writeln!(out, "not recognized (best guess {n}, confidence {confidence:.2})"),
            None => writeln!(out, "not recognized"),
        };
    }
    writeln!(out, "{} (confidence {confidence:.2})", name.unwrap_or("?"))?;
    for slot in event["slots"].as_array().into_iter().flatten() {
        let entity = slot["entity"].as_str().map(|e| format!(" ({e})")).unwrap_or_default();
        writeln!(out, "  {} = {}{entity}", slot["name"].as_str().unwrap_or("?"), slot["raw_value"].as_str().unwrap_or(""))?;
    }
    Ok(())
}
