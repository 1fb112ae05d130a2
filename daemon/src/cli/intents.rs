//! `qwenedge intents match`: Home Assistant's sentence templates matched locally, one JSON line
//! in and one out — the daemon's own local stage, without a daemon or a model. Each input line
//! is `{"text", "language"?, "context"?, "devices"?, "areas"?, "floors"?}`; omitted
//! `devices`/`areas`/`floors` keep the previous line's.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use qwenedge_sentences::local::{default_data_dir, recognize, HomeLists, Languages, Utterance};
use qwenedge_sentences::Home;
use serde_json::json;

/// Arguments of `qwenedge intents`.
#[derive(Debug, Args)]
pub struct IntentsArgs {
    #[command(subcommand)]
    command: IntentsCommand,
}

#[derive(Debug, Subcommand)]
enum IntentsCommand {
    /// Match utterances (JSON Lines on stdin) against the sentence templates.
    Match(MatchArgs),
}

#[derive(Debug, Args)]
struct MatchArgs {
    /// Language of lines that name none.
    #[arg(long, default_value = "en")]
    language: String,
    /// The sentence data (`intents/<lang>.json`, `numbers/<lang>.json`).
    #[arg(long, env = "QWENEDGE_SENTENCES_DIR")]
    data: Option<PathBuf>,
    /// Custom sentences in Home Assistant's layout (`<dir>/<lang>/*.yaml`).
    #[arg(long)]
    custom_sentences: Option<PathBuf>,
}

/// Runs `qwenedge intents`.
pub fn run(args: IntentsArgs) -> anyhow::Result<()> {
    let IntentsCommand::Match(args) = args.command;
    let data = args.data.unwrap_or_else(default_data_dir);
    let mut languages = Languages::new(&data, args.custom_sentences.as_deref());
    let mut home = Home::default();
    let mut lists = HomeLists::default();
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Utterance>(&line) {
            Err(e) => json!({"error": format!("line {}: {e}", n + 1)}),
            Ok(mut req) => {
                req.update(&mut home);
                let code = req.language.unwrap_or_else(|| args.language.clone());
                match languages.get(&code) {
                    Err(e) => json!({"error": format!("line {}: {e}", n + 1)}),
                    Ok(lang) => {
                        let a = recognize(lang, &req.text, lists.of(&home), req.context, None);
                        let mut answer = match a.found {
                            Some(m) => json!({
                                "recognized": true, "intent": m.intent, "slots": m.slots, "metadata": m.metadata,
                                "response": m.response, "template": m.template,
                            }),
                            None => json!({"recognized": false}),
                        };
                        answer["source"] = json!("local");
                        answer["elapsed_us"] = json!(a.elapsed_us);
                        answer["steps"] = json!(a.steps);
                        if a.too_complex {
                            answer["error"] = json!("the step budget ran out before the search ended: not recognized locally");
                        }
                        answer
                    }
                }
            }
        };
        serde_json::to_writer(&mut out, &answer)?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    Ok(())
}
