//! The engine behind the scheduler's [`Model`] trait, and everything that turns a wire request
//! into what the engine runs: preparing a request (chat template, tokens, the prefix boundary
//! worth caching, the tool or intent grammar, the memory its state needs), stepping it, and
//! turning the engine's results into wire events; loading a model (with the memory check
//! first); the conversions between the engine's types and the wire's. The scheduler schedules
//! and knows no engine type; this crate is the one place where requests meet the engine.
//!
//! The API: [`EngineLoader`] (the scheduler's [`Loader`] of [`Engine`]s), [`load_engine`],
//! [`LoadError`] and [`RunError`], and the helpers the CLI's tools share — [`holder`],
//! [`model_shape`] (the memory estimate's inputs) and [`sampling_params`].

use std::sync::Arc;

mod load;

use load::configure_store;
pub use load::{holder, load_engine, model_shape, EngineLoader, LoadError};

use tracing::info;

use qwenedge_api::{self as api, ErrorCode, EventBody, GenerateRequest, Prompt, ResponseFormat};
use qwenedge_budget::memory;
use qwenedge_config::Settings;
use qwenedge_engine::backend::BackendError;
use qwenedge_engine::chat::ChatInput;
use qwenedge_engine::constrain::{ConstrainError, Constraint, Grammar};
use qwenedge_engine::generate::{Decoder, FinishReason, GenerateParams, Step};
use qwenedge_engine::sampler::SamplingParams;
use qwenedge_engine::{Engine, PinError};
use qwenedge_intent::Catalog;
use qwenedge_scheduler::{Clock, Context, Model, Prepared, Progress, Refusal};
use qwenedge_toolcall::{self as toolcall, Markers, ToolConstraint};

/// Why the engine failed a step, a finish or the warm-up.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The backend failed a step.
    #[error(transparent)]
    Step(#[from] BackendError),
    /// An intent answer could not be read back.
    #[error(transparent)]
    Intent(#[from] qwenedge_intent::ParseError),
    /// Caching the intent catalog's prefix failed.
    #[error(transparent)]
    Pin(#[from] PinError),
}

/// Tokens of the intent catalog's prefix prefilled per warm-up chunk (when
/// `model.prefill_chunk_tokens` does not say): a request that arrives meanwhile waits for one
/// chunk at most.
const WARM_UP_CHUNK_TOKENS: usize = 256;

/// A loaded engine as the scheduler's [`Model`].
pub struct Runner(pub Engine);

impl std::ops::Deref for Runner {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.0
    }
}

impl std::ops::DerefMut for Runner {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.0
    }
}

/// A request ready for the engine.
pub struct PreparedRun {
    prompt: Vec<u32>,
    store_at: Vec<usize>,
    params: GenerateParams,
    context: usize,
    constraint: Option<Constraint>,
    intent: Option<IntentRun>,
}

/// What an intent request needs at the end: the catalog it was asked against, the utterance,
/// and the confidence required.
struct IntentRun {
    catalog: Arc<Catalog>,
    text: String,
    min_confidence: f64,
}

/// A request on the engine.
pub struct Run {
    decoder: Decoder,
    intent: Option<IntentRun>,
}

/// The context a request may use: the model's, capped by `model.context_length`.
fn context_length(engine: &Engine, settings: &Settings) -> usize {
    match settings.model.context_length {
        0 => engine.spec.context_length,
        n => n.min(engine.spec.context_length),
    }
}

/// Where a run of the conversation's messages ends inside `prompt` (before the next message or
/// the assistant turn opener): the state there is what a later prompt with the same messages
/// starts with. `history` is those messages rendered without the generation prompt; `None`
/// unless its tokens are a prefix of `prompt`.
fn message_boundary(engine: &Engine, prompt: &[u32], history: &str) -> Option<usize> {
    let tokens = engine.tokenizer.encode(history).ok()?;
    (!tokens.is_empty() && prompt.starts_with(&tokens)).then_some(tokens.len())
}

/// Memory a request's state takes at `tokens` positions (MiB): `memory::request_bytes` from the
/// spec's figures (what it reads of the model shape; the files are not read again).
fn state_mb(spec: &qwenedge_engine::model::ModelSpec, tokens: usize) -> f64 {
    let shape = memory::ModelShape {
        kv_bytes_per_token: spec.kv_bytes_per_token(),
        fixed_state_bytes: spec.fixed_state_bytes(),
        ..Default::default()
    };
    memory::request_bytes(&shape, tokens) as f64 / (1024.0 * 1024.0)
}

/// The engine's sampling parameters for a request's.
pub fn sampling_params(s: &api::Sampling) -> SamplingParams {
    SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repetition_penalty: s.repetition_penalty,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        seed: s.seed,
    }
}

/// How this model's tokenizer writes the tool-call and thinking markers.
fn markers(engine: &Engine) -> Markers {
    Markers::from_special(|text| engine.tokenizer.token_id(text).filter(|&id| engine.tokenizer.is_special(id)))
}

fn grammar(format: &ResponseFormat) -> Grammar {
    match format {
        ResponseFormat::JsonSchema(schema) => Grammar::JsonSchema(schema.clone()),
        ResponseFormat::Lark(lark) => Grammar::Lark(lark.clone()),
    }
}

fn finish_reason(r: FinishReason) -> api::FinishReason {
    match r {
        FinishReason::Stop | FinishReason::Cancelled => api::FinishReason::Stop,
        FinishReason::Length => api::FinishReason::Length,
        FinishReason::ContextFull => api::FinishReason::ContextFull,
    }
}

/// Test builds only, at each step of the engine thread: while the file
/// `QWENEDGE_FAULT_HOLD_FILE` names exists the thread waits (a hung daemon, for as long as the
/// test wants: what does a test waiting on it say? or a request held mid-run while the test
/// sets the scene), and once the file `QWENEDGE_FAULT_PANIC_FILE` names exists it panics (what
/// does a panic on the engine thread do?). Files, not step counts, so that a test triggers a
/// fault when it has set the scene, however fast or slow the machine.
#[cfg(feature = "fault-injection")]
fn injected_fault() {
    let file = |var: &str| std::env::var_os(var).map(std::path::PathBuf::from).filter(|f| f.exists());
    if let Some(hold) = file("QWENEDGE_FAULT_HOLD_FILE") {
        tracing::warn!(file = %hold.display(), "injected fault: the engine thread holds here while the file exists (QWENEDGE_FAULT_HOLD_FILE)");
        while hold.exists() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    if file("QWENEDGE_FAULT_PANIC_FILE").is_some() {
        panic!("injected fault (QWENEDGE_FAULT_PANIC_FILE)");
    }
}

impl Model for Runner {
    type Error = RunError;
    type Prepared = PreparedRun;
    type Running = Run;

    fn prepare(&mut self, request: &GenerateRequest, ctx: &Context<'_>) -> Result<Prepared<PreparedRun>, Refusal> {
        let mut boundaries = Vec::new();
        let mut grammar = request.format().map(grammar);
        let mut intent = None;
        let mut max_tokens = ctx.max_tokens;
        let text = match request.prompt() {
            Prompt::Text(t) => t.clone(),
            Prompt::Intent { text, filter, .. } => {
                let prepared = qwenedge_intent::prepare(ctx.catalog, text, filter.as_deref(), &markers(self));
                let rendered = self.render_chat(&prepared.chat).map_err(|e| Refusal::new(ErrorCode::ModelError, e.to_string()))?;
                grammar = Some(Grammar::Lark(prepared.grammar));
                // The grammar ends every answer within this many tokens; a lower cap would cut it.
                max_tokens = prepared.max_tokens;
                let min_confidence = ctx.settings.intents.min_confidence;
                intent = Some(IntentRun { catalog: Arc::clone(ctx.catalog), text: text.clone(), min_confidence });
                rendered
            }
            Prompt::Chat { messages, tools, thinking } => {
                let listed = tools.as_deref().unwrap_or_default();
                if !listed.is_empty() && !matches!(request.format(), Some(ResponseFormat::Lark(_))) {
                    let schema = match request.format() {
                        Some(ResponseFormat::JsonSchema(s)) => Some(s),
                        _ => None,
                    };
                    let held = toolcall::tool_grammar(listed, request.tool_choice(), *thinking, schema, &markers(self))
                        .map_err(|e| Refusal::new(ErrorCode::BadRequest, format!("tools: {e}")))?;
                    grammar = match held {
                        Some(ToolConstraint::Grammar(lark)) => Some(Grammar::Lark(lark)),
                        Some(ToolConstraint::Triggered { trigger, grammar }) => Some(Grammar::Triggered { trigger, lark: grammar }),
                        Some(ToolConstraint::Banned(ids)) => Some(Grammar::Banned(ids)),
                        None => grammar,
                    };
                }
                let mut input = ChatInput {
                    messages: messages.clone(),
                    tools: tools.clone(),
                    add_generation_prompt: true,
                    enable_thinking: Some(*thinking),
                };
                let text = self.render_chat(&input).map_err(|e| Refusal::new(ErrorCode::BadRequest, e.to_string()))?;
                if self.cache_stats().max_bytes > 0 {
                    input.add_generation_prompt = false;
                    // What every conversation with this system prompt and these tools shares
                    // (Home Assistant starts each one so), then the whole conversation so far.
                    let system = messages.iter().take_while(|m| m["role"] == "system").count();
                    if system > 0 && system < messages.len() {
                        let shared = ChatInput { messages: messages[..system].to_vec(), ..input.clone() };
                        boundaries.extend(self.render_chat(&shared).ok());
                    }
                    boundaries.extend(self.render_chat(&input).ok());
                }
                text
            }
        };
        let context = context_length(self, ctx.settings);
        // No token is longer than the longest one: a text past this cannot fit, whatever it is.
        let most = context.saturating_mul(self.tokenizer.max_token_bytes());
        if text.len() > most {
            let msg = format!("the prompt has {} bytes; the model's context of {context} tokens holds at most {most}", text.len());
            return Err(Refusal::new(ErrorCode::BadRequest, msg));
        }
        let prompt = self.encode_prompt(&text).map_err(|e| Refusal::new(ErrorCode::BadRequest, e.to_string()))?;
        let store_at = boundaries.iter().filter_map(|h| message_boundary(self, &prompt, h)).collect();
        let tokens = (prompt.len() + max_tokens).min(context);
        let need_mb = state_mb(&self.spec, tokens);
        // An intent grammar has no JSON strings, where the vocabulary's slices would help.
        let compiler = |e: &mut Self| if intent.is_some() { e.plain_constrainer() } else { e.constrainer() };
        let constraint = match grammar.map(|g| compiler(self).and_then(|c| c.constraint(&g))) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e @ ConstrainError::Grammar(_))) => return Err(Refusal::new(ErrorCode::BadRequest, e.to_string())),
            Some(Err(e)) => return Err(Refusal::new(ErrorCode::ModelError, e.to_string())),
        };
        let params = GenerateParams {
            max_tokens,
            stop: request.stop().to_vec(),
            sampling: sampling_params(request.sampling()),
            prefill_chunk: ctx.settings.model.prefill_chunk_tokens,
            forced_one_by_one: !ctx.settings.model.batch_forced_tokens,
        };
        Ok(Prepared { job: PreparedRun { prompt, store_at, params, context, constraint, intent }, tokens, need_mb })
    }

    fn start(&mut self, p: PreparedRun) -> Result<Run, Refusal> {
        match self.cached_decoder(p.prompt, &p.store_at, p.params, p.context) {
            Ok(mut decoder) => {
                if let Some(c) = p.constraint {
                    decoder.constrain(c);
                }
                Ok(Run { decoder, intent: p.intent })
            }
            Err(e @ BackendError::Limit(_)) => Err(Refusal::new(ErrorCode::BadRequest, e.to_string())),
            Err(e) => Err(Refusal::new(ErrorCode::ModelError, e.to_string())),
        }
    }

    fn step(&mut self, run: &mut Run) -> Result<Progress, RunError> {
        #[cfg(feature = "fault-injection")]
        injected_fault();
        match Engine::step(self, &mut run.decoder) {
            Ok(Step::Prefilled { .. }) => Ok(Progress::Prefilled),
            Ok(Step::Token { piece, .. }) => Ok(Progress::Token(piece)),
            Ok(Step::Finished { tail, .. }) => Ok(Progress::Finished(tail)),
            Err(e) => Err(e.into()),
        }
    }

    fn generated(&self, run: &Run) -> usize {
        run.decoder.completion().usage.completion_tokens
    }

    fn prompt_done(&self, run: &Run) -> bool {
        run.decoder.prefill_done()
    }

    fn held_mb(&self, run: &Run) -> f64 {
        state_mb(&self.spec, run.decoder.state_tokens())
    }

    fn finish(&mut self, run: Run, clock: &Clock, _ctx: &Context<'_>) -> Result<EventBody, RunError> {
        let done = run.decoder.completion();
        let mut timings = clock.timings(done.timings.prefill_ms, done.timings.ttft_ms, done.timings.decode_tok_s);
        timings.model_steps = done.timings.model_steps;
        timings.forced_tokens = done.timings.forced_tokens;
        let usage = api::Usage {
            prompt_tokens: done.usage.prompt_tokens,
            completion_tokens: done.usage.completion_tokens,
            cached_tokens: done.usage.cached_tokens,
        };
        match run.intent {
            Some(i) => {
                let confidence = run.decoder.constraint().map_or(0.0, |c| c.confidence());
                Ok(qwenedge_intent::event(&i.catalog, &done.text, &i.text, confidence, i.min_confidence, usage, timings)?)
            }
            None => Ok(EventBody::Done { text: done.text, finish_reason: finish_reason(done.finish_reason), usage, timings }),
        }
    }

    fn warm_up(&mut self, ctx: &Context<'_>) -> Result<bool, RunError> {
        let cache = &ctx.settings.cache;
        if !cache.pin_intents || cache.max_mb == 0 {
            self.unpin_prefixes();
            return Ok(false);
        }
        let chat = qwenedge_intent::prepare(ctx.catalog, "", None, &Markers::default()).chat;
        let chunk = match ctx.settings.model.prefill_chunk_tokens {
            0 => WARM_UP_CHUNK_TOKENS,
            n => n,
        };
        match self.pin_chat_prefix_step(&chat, chunk) {
            Ok(p) if p.pinned => {
                let how = if p.restored { "restored from disk" } else { "prefilled" };
                info!(tokens = p.tokens, ms = p.elapsed_ms, how, "intent catalog prefix cached");
                // The prefill's buffers are freed: the allocator hands them back.
                qwenedge_engine::release_freed_memory();
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    fn release_memory(&mut self) {
        let began = std::time::Instant::now();
        qwenedge_engine::release_freed_memory();
        tracing::debug!(ms = began.elapsed().as_secs_f64() * 1e3, "handed freed memory back after the last request");
    }

    fn reconfigure(&mut self, settings: &Settings) {
        self.configure_cache(settings.cache.max_bytes(), settings.cache.min_tokens);
        configure_store(self, settings);
    }

    fn set_pressure(&mut self, on: bool) {
        self.set_cache_pressure(on);
    }

    fn report(&self, settings: &Settings) -> api::ModelReport {
        let spec = &self.spec;
        let info = self.backend_info();
        api::ModelReport {
            id: model_id(&spec.dir),
            path: spec.dir.clone(),
            model_type: spec.model_type.clone(),
            context_length: context_length(self, settings),
            vocab_size: spec.vocab_size,
            layers: spec.layers.len(),
            full_attention_layers: spec.full_attention_layers(),
            weights_mb: spec.weight_bytes() / (1 << 20),
            hidden_size: spec.hidden_size,
            quantization: if spec.ops.iter().any(|o| o.rsplit(':').next() == Some("MatMulNBits")) {
                "int4".into()
            } else if spec.logits_dtype == qwenedge_engine::model::StateType::F16 {
                "fp16".into()
            } else {
                "fp32".into()
            },
            layout: spec.layout.describe(),
            chat_template: self.has_chat_template(),
            backend: api::BackendReport {
                name: info.name.to_string(),
                version: info.version,
                library: info.library,
                execution_provider: info.execution_provider,
                providers: info
                    .providers
                    .into_iter()
                    .map(|p| api::ProviderReport { name: p.name, active: p.active, reason: p.reason, library: p.library, device: p.device })
                    .collect(),
                threads: info.threads,
                chosen: info.chosen,
                placement: info.placement.map(placement_report),
                prefill_placement: info.prefill_placement.map(placement_report),
            },
        }
    }

    fn cache(&self) -> Option<api::CacheReport> {
        let s = self.cache_stats();
        Some(api::CacheReport {
            hits: s.hits,
            misses: s.misses,
            reused_tokens: s.reused_tokens,
            insertions: s.insertions,
            evictions: s.evictions,
            entries: s.entries,
            pinned: s.pinned,
            bytes: s.bytes,
            max_bytes: s.max_bytes,
        })
    }

    fn files_changed(&self) -> Option<String> {
        Engine::files_changed(self)
    }
}

/// A graph's node placement as `status` reports it.
fn placement_report(p: qwenedge_engine::backend::ort::Placement) -> api::PlacementReport {
    api::PlacementReport {
        total_nodes: p.total_nodes,
        summary: p.summary(),
        providers: p
            .providers
            .into_iter()
            .map(|n| api::ProviderNodes {
                ep: n.ep,
                nodes: n.nodes,
                op_types: n.op_types,
                declined: n
                    .declined
                    .into_iter()
                    .map(|d| api::DeclinedNodes { op_type: d.op_type, reason: d.reason, nodes: d.nodes })
                    .collect(),
            })
            .collect(),
    }
}

/// The model's name for `status` and the HTTP APIs: the directory's name, with its parent's in
/// front when the directory is only named for its precision (`qwen3.5-0.8b/int4` →
/// `qwen3.5-0.8b-int4`, never a bare `int4`); a pulled model goes by `owner/name:variant`.
fn model_id(dir: &std::path::Path) -> Option<String> {
    // A model of the store (`qwenedge model pull`) goes by its repository and variant, as pulled.
    if let Ok(bytes) = std::fs::read(dir.join("qwenedge-pull.json")) {
        let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if let (Some(repo), Some(variant)) = (m["repo"].as_str(), m["variant"].as_str()) {
            return Some(format!("{repo}:{variant}"));
        }
    }
    const PRECISIONS: &[&str] = &["int4", "int8", "fp16", "fp32", "bf16", "q4", "q4f16", "q8", "quantized", "onnx", "model"];
    let name = dir.file_name()?.to_string_lossy().into_owned();
    if !PRECISIONS.contains(&name.to_ascii_lowercase().as_str()) {
        return Some(name);
    }
    match dir.parent().and_then(|p| p.file_name()) {
        Some(parent) => Some(format!("{}-{name}", parent.to_string_lossy())),
        None => Some(name),
    }
}

#[cfg(test)]
mod tests {
    use super::model_id;
    use std::path::Path;

    #[test]
    fn a_directory_named_for_its_precision_takes_its_parents_name() {
        assert_eq!(model_id(Path::new("/m/qwen3.5-0.8b/int4")).as_deref(), Some("qwen3.5-0.8b-int4"));
        assert_eq!(model_id(Path::new("/m/qwen3.5-0.8b-int4")).as_deref(), Some("qwen3.5-0.8b-int4"));
        assert_eq!(model_id(Path::new("int4")).as_deref(), Some("int4"));
    }
}
