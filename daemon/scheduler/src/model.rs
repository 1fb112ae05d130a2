//! The scheduler's view of a model: the few calls the scheduling core makes, as traits, so the
//! core can be driven by a fake in its unit tests. The real implementation is the engine
//! adapter in `engine.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use super::admission::Refusal;
use qwenedge_api::{CacheReport, EventBody, GenerateRequest, ModelReport, RequestTimings};
use qwenedge_config::{LoadSettings, Settings};
use qwenedge_intent::Catalog;

/// What a request is prepared under.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The settings in force.
    pub settings: &'a Settings,
    /// The intent catalog in force.
    pub catalog: &'a Arc<Catalog>,
    /// Most tokens to generate, after the request's own value, the default, the limit and the
    /// thermal cap (an `intent` request uses its grammar's bound instead).
    pub max_tokens: usize,
}

/// A request ready to run, and what it will cost.
#[derive(Debug)]
pub struct Prepared<P> {
    /// The model's own form of it (tokens, grammar, …).
    pub job: P,
    /// Prompt plus generated tokens it may hold.
    pub tokens: usize,
    /// Memory its state needs beyond the loaded model (MiB).
    pub need_mb: f64,
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A chunk of the prompt was processed.
    Prefilled,
    /// A token; the text that became final with it (may be empty).
    Token(String),
    /// Generation ended; text still held back that belongs to the output.
    Finished(String),
}

/// The times the scheduler knows about a request, to combine with the engine's own.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Arrival.
    pub received: Instant,
    /// When the engine started it.
    pub started: Instant,
    /// Loading the model first (ms).
    pub load_ms: f64,
    /// Sleeping to keep to the warm duty cycle.
    pub paced: Duration,
}

impl Clock {
    /// The request's timings, given the engine's prefill time, its time to the first token
    /// and its decode speed.
    pub fn timings(&self, prefill_ms: f64, engine_ttft_ms: f64, decode_tok_s: f64) -> RequestTimings {
        let waited_ms = (self.started - self.received).as_secs_f64() * 1e3;
        RequestTimings {
            queue_ms: (waited_ms - self.load_ms).max(0.0),
            load_ms: self.load_ms,
            prefill_ms,
            ttft_ms: waited_ms + engine_ttft_ms,
            decode_tok_s,
            paced_ms: self.paced.as_secs_f64() * 1e3,
            total_ms: self.received.elapsed().as_secs_f64() * 1e3,
            model_steps: 0,
            forced_tokens: 0,
        }
    }
}

/// A loaded model, as the scheduler drives it.
pub trait Model: Send + 'static {
    /// A request ready to start.
    type Prepared: Send;
    /// A request in progress.
    type Running: Send;
    /// Why a step, a finish or the warm-up failed (a model error, logged and answered).
    type Error: std::error::Error + Send + 'static;

    /// Renders and tokenizes the prompt, compiles its grammar, finds its prefix boundary and
    /// what it needs.
    fn prepare(&mut self, request: &GenerateRequest, ctx: &Context<'_>) -> Result<Prepared<Self::Prepared>, Refusal>;

    /// Starts a prepared request (restores a cached prefix, creates its decoder).
    fn start(&mut self, prepared: Self::Prepared) -> Result<Self::Running, Refusal>;

    /// Advances one prefill chunk or one token; an error is a model error.
    fn step(&mut self, running: &mut Self::Running) -> Result<Progress, Self::Error>;

    /// Tokens generated so far.
    fn generated(&self, running: &Self::Running) -> usize;

    /// Whether the whole prompt has been prefilled (a step after this one makes a token).
    fn prompt_done(&self, running: &Self::Running) -> bool;

    /// Memory the request's state holds now (MiB; the estimate [`Prepared::need_mb`] is made
    /// with, for the tokens held so far).
    fn held_mb(&self, running: &Self::Running) -> f64;

    /// The terminal event of a request whose step said [`Progress::Finished`] (`done`, or
    /// `intent` for an intent request); an error is a model error.
    fn finish(&mut self, running: Self::Running, clock: &Clock, ctx: &Context<'_>) -> Result<EventBody, Self::Error>;

    /// One piece of the work to do after loading while idle (caching the intent catalog's
    /// prefix, a chunk at a time so that requests run between the chunks). Returns whether
    /// more remains; an error says why the work failed (it may be tried again).
    fn warm_up(&mut self, ctx: &Context<'_>) -> Result<bool, Self::Error>;

    /// Nothing is in progress or waiting: hands back to the system the memory the last requests
    /// freed (the allocator keeps it otherwise).
    fn release_memory(&mut self);

    /// Applies settings that need no reload (the prefix cache's size).
    fn reconfigure(&mut self, settings: &Settings);

    /// Memory pressure on or off (off: caches may grow again).
    fn set_pressure(&mut self, on: bool);

    /// The model for `status` and `models`.
    fn report(&self, settings: &Settings) -> ModelReport;

    /// The prefix cache's counters.
    fn cache(&self) -> Option<CacheReport>;

    /// What changed in the model's files on disk since it was loaded, in a few words; `None`
    /// when nothing did.
    fn files_changed(&self) -> Option<String>;
}

/// Loads models.
pub trait Loader: Send + 'static {
    /// What it loads.
    type Model: Model;
    /// Why a model could not be loaded or checked.
    type Error: std::error::Error + Send + 'static;

    /// Loads the model `load` describes (checking first that it fits in memory); the error is
    /// one line for the log.
    fn load(&mut self, load: &LoadSettings, settings: &Settings) -> Result<Self::Model, Self::Error>;

    /// Checks, without loading, what can be checked of the model `load` describes before the
    /// loaded one is freed for it (its files); the error is one line for the log.
    fn check(&mut self, load: &LoadSettings) -> Result<(), Self::Error>;
}
