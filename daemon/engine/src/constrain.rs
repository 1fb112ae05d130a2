//! Grammar-constrained decoding: before each token the logits of every token that would break
//! the grammar are set to −∞, so whatever the sampler picks keeps the output inside the
//! grammar (Lark or JSON Schema, compiled by `llguidance`). The token trie is built once per
//! model from our own tokenizer's token bytes; each request gets its own [`Constraint`], which
//! also measures how sure the model was of the choices the grammar left open.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::earley::SlicedBiasComputer;
use llguidance::toktrie::{InferenceCapabilities, SimpleVob, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use super::tokenizer::TextTokenizer;

/// A grammar the output must follow.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Lark syntax (llguidance's dialect; `%json {…}` embeds a JSON Schema).
    Lark(String),
    /// A JSON Schema; the output is one JSON value valid under it.
    JsonSchema(Value),
    /// Free output until the model picks the special token `trigger`; from there on (that
    /// token included) the output follows `lark`. Free text costs no mask computation.
    Triggered {
        /// The token that starts the held part.
        trigger: u32,
        /// The grammar of the held part, starting with `trigger`.
        lark: String,
    },
    /// Free output without these tokens.
    Banned(Vec<u32>),
}

/// Why a grammar cannot be used or decoding under it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstrainError {
    /// The token trie could not be built for this tokenizer.
    #[error("constrained decoding is unavailable for this tokenizer: {0}")]
    Setup(String),
    /// The grammar does not compile.
    #[error("the grammar is invalid: {0}")]
    Grammar(String),
    /// The grammar rejected a token or left no token allowed.
    #[error("constrained decoding failed: {0}")]
    Decode(String),
}

/// The tokenizer as llguidance sees it: token bytes in a trie, special tokens marked, and the
/// model's own BPE for text the grammar forces, so forced output is tokenized as the model
/// would tokenize it (llguidance's fast-forward needs a canonical tokenizer).
struct Env {
    trie: TokTrie,
    tokenizer: TextTokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.tokenizer.encode_plain(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        true
    }
}

/// Compiled grammars kept for reuse: an intent prompt's grammar is the same for every
/// request, and compiling it takes longer than a copy.
const COMPILED_KEPT: usize = 4;

/// Compiles grammars for one model's vocabulary (built once; cheap to share).
pub struct Constrainer {
    factory: ParserFactory,
    eos: Vec<u32>,
    /// The last grammars compiled, most recent last, each with its fresh matcher.
    compiled: std::sync::Mutex<Vec<(Grammar, Matcher)>>,
}

impl std::fmt::Debug for Constrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constrainer").field("eos", &self.eos).finish_non_exhaustive()
    }
}

impl Constrainer {
    /// Builds the token trie of `tokenizer` for a model whose logits have `vocab` entries and
    /// which ends on `eos`, with llguidance's slices of the vocabulary (which make the masks of
    /// JSON strings fast; computing them takes most of the time).
    pub fn new(tokenizer: &TextTokenizer, vocab: usize, eos: &[u32]) -> Result<Arc<Self>, ConstrainError> {
        Self::unsliced(tokenizer, vocab, eos)?.sliced()
    }

    /// The same compiler with the vocabulary's slices (see [`new`](Self::new)).
    fn sliced(&self) -> Result<Arc<Self>, ConstrainError> {
        let factory = self.factory.with_slices(&SlicedBiasComputer::general_slices()).map_err(|e| ConstrainError::Setup(e.to_string()))?;
        Ok(Arc::new(Self { factory, eos: self.eos.clone(), compiled: std::sync::Mutex::new(Vec::new()) }))
    }

    /// The trie without slices: the same grammars, the same masks, a JSON string's mask
    /// computed more slowly; ready in a third of the time, with 80 MB less for Qwen's
    /// vocabulary. Grammars without JSON strings (intents) lose nothing.
    pub fn unsliced(tokenizer: &TextTokenizer, vocab: usize, eos: &[u32]) -> Result<Arc<Self>, ConstrainError> {
        let vocab = vocab.max(tokenizer.vocab_size());
        if eos.is_empty() || eos.iter().any(|&e| e as usize >= vocab) {
            return Err(ConstrainError::Setup(format!("end-of-sequence ids {eos:?} are not inside the vocabulary of {vocab}")));
        }
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                if tokenizer.is_special(id) && !bytes.is_empty() {
                    let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    marked.extend_from_slice(bytes);
                    marked
                } else {
                    bytes.to_vec()
                }
            })
            .collect();
        let info = TokRxInfo::new(vocab as u32, eos[0]);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eos);
        let env: llguidance::toktrie::TokEnv = Arc::new(Env { trie, tokenizer: tokenizer.clone() });
        let mut factory =
            ParserFactory::new(&env, InferenceCapabilities::default(), &[]).map_err(|e| ConstrainError::Setup(e.to_string()))?;
        factory.quiet();
        Ok(Arc::new(Self { factory, eos: eos.to_vec(), compiled: std::sync::Mutex::new(Vec::new()) }))
    }

    /// A fresh constraint for one generation under `grammar` (compiled once for the last few
    /// grammars asked for, then copied).
    pub fn constraint(&self, grammar: &Grammar) -> Result<Constraint, ConstrainError> {
        let mode = match grammar {
            Grammar::Triggered { trigger, .. } => Mode::Waiting(*trigger),
            Grammar::Banned(ids) => Mode::Banned(ids.clone()),
            Grammar::Lark(_) | Grammar::JsonSchema(_) => Mode::Held,
        };
        let mut compiled = self.compiled.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let matcher = match compiled.iter().position(|(g, _)| g == grammar) {
            Some(i) => {
                let entry = compiled.remove(i);
                let matcher = entry.1.deep_clone();
                compiled.push(entry);
                matcher
            }
            None => {
                let matcher = self.compile(grammar)?;
                if compiled.len() == COMPILED_KEPT {
                    compiled.remove(0);
                }
                compiled.push((grammar.clone(), matcher.deep_clone()));
                matcher
            }
        };
        Ok(Constraint { mode, matcher, eos: self.eos.clone(), lse: None, log_sum: 0.0, free: 0 })
    }

    /// Compiles `grammar` into a matcher at its start.
    fn compile(&self, grammar: &Grammar) -> Result<Matcher, ConstrainError> {
        let top = match grammar {
            Grammar::Lark(s) | Grammar::Triggered { lark: s, .. } => TopLevelGrammar::from_lark(s.clone()),
            Grammar::Banned(_) => TopLevelGrammar::from_lark("start: /(?s:.*)/".to_string()),
            Grammar::JsonSchema(v) => {
                // Compact JSON unless the schema says otherwise: free whitespace would let a
                // weak model pad the answer until it runs out of tokens.
                let mut schema = v.clone();
                if let Some(obj) = schema.as_object_mut() {
                    obj.entry("x-guidance").or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
                }
                TopLevelGrammar::from_json_schema(schema)
            }
        };
        let parser = self.factory.create_parser(top).map_err(|e| ConstrainError::Grammar(format!("{e:#}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstrainError::Grammar(e));
        }
        Ok(matcher)
    }
}

/// The [`Constrainer`]s of one model. The one without slices is built on first use, or on a
/// thread of its own while the runtime loads ([`spawn`](Self::spawn)), since the token trie of
/// a large vocabulary takes a while and a daemon serving intents needs it for its first
/// request; the one with slices (about 80 MB more for Qwen's vocabulary, and half a second) only
/// when a grammar with JSON strings asks for it.
#[derive(Default)]
pub(crate) struct ConstrainerSlot {
    plain: Plain,
    sliced: Option<Arc<Constrainer>>,
}

#[derive(Default)]
enum Plain {
    #[default]
    Empty,
    Building(std::thread::JoinHandle<Result<Arc<Constrainer>, ConstrainError>>),
    Built(Arc<Constrainer>),
}

impl std::fmt::Debug for ConstrainerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = match self.plain {
            Plain::Empty => "empty",
            Plain::Building(_) => "building",
            Plain::Built(_) => "built",
        };
        f.debug_struct("ConstrainerSlot").field("plain", &plain).field("sliced", &self.sliced.is_some()).finish()
    }
}

impl ConstrainerSlot {
    /// Starts building the compiler without slices for `tokenizer` (see
    /// [`Constrainer::unsliced`]) on a thread of its own; if no thread can be started it is
    /// built on first use instead.
    pub(crate) fn spawn(tokenizer: &TextTokenizer, vocab: usize, eos: &[u32]) -> Self {
        let (tokenizer, eos) = (tokenizer.clone(), eos.to_vec());
        let built = std::thread::Builder::new().name("constrainer".into()).spawn(move || Constrainer::unsliced(&tokenizer, vocab, &eos));
        match built {
            Ok(handle) => Self { plain: Plain::Building(handle), sliced: None },
            Err(e) => {
                tracing::debug!(error = %e, "no thread for the constrainer; building it on first use");
                Self::default()
            }
        }
    }

    /// The compiler with slices when `slices` (built from the one without, once), else the one
    /// without (the one the thread built, waited for, or one built now from `tokenizer`).
    /// Both allow the same tokens. A failure is returned each time and nothing is kept.
    pub(crate) fn get(
        &mut self,
        slices: bool,
        tokenizer: &TextTokenizer,
        vocab: usize,
        eos: &[u32],
    ) -> Result<Arc<Constrainer>, ConstrainError> {
        if let (true, Some(c)) = (slices, &self.sliced) {
            return Ok(Arc::clone(c));
        }
        let plain = match std::mem::take(&mut self.plain) {
            Plain::Built(c) => c,
            Plain::Building(handle) => {
                handle.join().unwrap_or_else(|_| Err(ConstrainError::Setup("building the token trie panicked".into())))?
            }
            Plain::Empty => Constrainer::unsliced(tokenizer, vocab, eos)?,
        };
        self.plain = Plain::Built(Arc::clone(&plain));
        if !slices {
            return Ok(plain);
        }
        let sliced = plain.sliced()?;
        self.sliced = Some(Arc::clone(&sliced));
        Ok(sliced)
    }
}

/// What [`Constraint::mask`] left allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Some tokens (the logits of the others are −∞).
    Tokens,
    /// The grammar is complete: only ending is allowed.
    EndOnly,
}

/// Whether the grammar holds the output yet.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// Every token goes through the grammar.
    Held,
    /// Free until this token.
    Waiting(u32),
    /// Free but for these tokens (there is no grammar).
    Banned(Vec<u32>),
}

/// The grammar state of one generation.
pub struct Constraint {
    mode: Mode,
    matcher: Matcher,
    eos: Vec<u32>,
    /// log Σ exp(logit) over the allowed tokens of the current step, when it was a free choice.
    lse: Option<f32>,
    log_sum: f64,
    free: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("free_choices", &self.free).finish_non_exhaustive()
    }
}

impl Constraint {
    fn matcher_error(&self, what: &str) -> ConstrainError {
        ConstrainError::Decode(self.matcher.get_error().unwrap_or_else(|| what.to_string()))
    }

    /// Sets the logits of disallowed tokens to −∞.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<Allowed, ConstrainError> {
        self.lse = None;
        match &self.mode {
            Mode::Held => {}
            Mode::Waiting(_) => return Ok(Allowed::Tokens),
            Mode::Banned(ids) => {
                for &id in ids {
                    if let Some(l) = logits.get_mut(id as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
                return Ok(Allowed::Tokens);
            }
        }
        if self.matcher.is_stopped() {
            return Ok(Allowed::EndOnly);
        }
        let mask: SimpleVob = self.matcher.compute_mask().map_err(|e| ConstrainError::Decode(e.to_string()))?;
        let mut allowed = 0usize;
        let mut only_eos = true;
        let mut max = f32::NEG_INFINITY;
        for (i, l) in logits.iter_mut().enumerate() {
            if i < mask.len() && mask.get(i) && !l.is_nan() {
                allowed += 1;
                only_eos &= self.eos.contains(&(i as u32));
                max = max.max(*l);
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        if allowed == 0 {
            return Err(self.matcher_error("no token is allowed"));
        }
        if only_eos {
            return Ok(Allowed::EndOnly);
        }
        if allowed > 1 && max.is_finite() {
            let sum: f32 = logits.iter().filter(|l| l.is_finite()).map(|l| (l - max).exp()).sum();
            self.lse = Some(max + sum.ln());
        }
        Ok(Allowed::Tokens)
    }

    /// Records the chosen token (`logits` as masked): its probability among the allowed tokens
    /// counts towards the confidence; a non-EOS token advances the grammar.
    pub fn commit(&mut self, token: u32, logits: &[f32]) -> Result<(), ConstrainError> {
        if let (Some(lse), Some(&l)) = (self.lse.take(), logits.get(token as usize)) {
            if l.is_finite() {
                self.log_sum += f64::from(l - lse);
                self.free += 1;
            }
        }
        if self.eos.contains(&token) {
            return Ok(());
        }
        match self.mode {
            Mode::Held => {}
            Mode::Waiting(trigger) if trigger == token => self.mode = Mode::Held,
            Mode::Waiting(_) | Mode::Banned(_) => return Ok(()),
        }
        self.matcher.consume_token(token).map_err(|e| ConstrainError::Decode(e.to_string()))?;
        if self.matcher.is_error() {
            return Err(self.matcher_error("the token broke the grammar"));
        }
        Ok(())
    }

    /// The tokens the grammar forces next (its only continuation, tokenized as the model's
    /// tokenizer would), already advanced past: the decoder emits them without sampling. Empty
    /// when the next token is a choice, or while the grammar does not hold the output yet. The
    /// last forced bytes may be left to the next choice when a token could join them.
    pub fn take_forced(&mut self) -> Result<Vec<u32>, ConstrainError> {
        if self.mode != Mode::Held || self.matcher.is_stopped() {
            return Ok(Vec::new());
        }
        let tokens = self.matcher.consume_ff_tokens();
        if self.matcher.is_error() {
            return Err(self.matcher_error("the forced tokens broke the grammar"));
        }
        Ok(tokens)
    }

    /// True when the grammar admits nothing more.
    pub fn is_finished(&self) -> bool {
        self.mode == Mode::Held && self.matcher.is_stopped()
    }

    /// Geometric mean of the probabilities (renormalised over the allowed tokens) of the tokens
    /// chosen where the grammar allowed more than one; 1 when it never did.
    pub fn confidence(&self) -> f64 {
        if self.free == 0 {
            1.0
        } else {
            (self.log_sum / self.free as f64).exp()
        }
    }
}
