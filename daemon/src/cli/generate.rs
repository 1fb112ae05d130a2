//! `qwenedge generate`: one prompt in, generated text streamed to stdout (nothing else on
//! stdout), timings on stderr with `-v`.

use std::io::Write;
use std::ops::ControlFlow;

use anyhow::Context;
use clap::Args;
use qwenedge_engine::chat::ChatInput;
use qwenedge_engine::generate::GenerateParams;

use super::ModelArgs;

/// Arguments of `qwenedge generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt (raw text unless --chat).
    #[arg(long, short = 'p')]
    prompt: String,
    /// Treat the prompt as a user message and apply the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Let the model think first (with --chat; the template's thinking mode).
    #[arg(long, requires = "chat")]
    thinking: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Top-p (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Min-p (0 = off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Presence penalty (0 = off).
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Random seed for sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

/// Runs `generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let sampling = qwenedge_api::Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        presence_penalty: args.presence_penalty,
        frequency_penalty: 0.0,
        seed: args.seed,
    };
    sampling.validate()?;
    let sampling = qwenedge_runner::sampling_params(&sampling);
    let mut engine = args.model.load()?;
    let text = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(serde_json::json!({"role": "system", "content": system}));
        }
        messages.push(serde_json::json!({"role": "user", "content": args.prompt}));
        let input = ChatInput { messages, tools: None, add_generation_prompt: true, enable_thinking: Some(args.thinking) };
        engine.render_chat(&input)?
    } else {
        args.prompt.clone()
    };
    let prompt = engine.tokenizer.encode(&text)?;
    let params = GenerateParams { max_tokens: args.max_tokens, stop: args.stop.clone(), sampling, ..Default::default() };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error = None;
    let mut sink = |piece: &str, _token: u32| {
        if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
            write_error = Some(e);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    };
    let done = engine.generate(&prompt, &params, &mut sink)?;
    if let Some(e) = write_error {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("writing to stdout");
        }
        return Ok(());
    }
    writeln!(std::io::stdout())?;
    tracing::info!(
        finish = ?done.finish_reason,
        prompt_tokens = done.usage.prompt_tokens,
        completion_tokens = done.usage.completion_tokens,
        ttft_ms = done.timings.ttft_ms,
        decode_tok_s = done.timings.decode_tok_s,
        "done"
    );
    Ok(())
}
