//! Everything that touches a model: files → spec, tokenizer and chat template, the runtime
//! backend, sampling and the generation loop. Transports never reach in here directly.

pub mod backend;
pub mod bpe;
pub mod model;
pub mod onnx;
pub mod chat;
pub mod tokenizer;
pub mod sampler;
pub mod detok;
pub mod generate;

use std::path::Path;

use backend::ort::{OrtBackend, OrtOptions};
use backend::{Backend, BackendError, BackendInfo, Sequence};
use chat::{ChatInput, ChatTemplate, TemplateError};
use generate::{Completion, Decoder, GenerateParams, Step, TokenSink};
use model::{ModelError, ModelSpec};
use tokenizer::{TextTokenizer, TokenizerError};

/// Any failure of the engine, by layer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model directory is unusable.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The tokenizer is unusable or does not match.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The chat template is broken or absent.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The runtime failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Options for loading an engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// ONNX Runtime settings.
    pub ort: OrtOptions,
}

/// A loaded model: spec, tokenizer, chat template and a backend session.
pub struct Engine {
    /// What the model directory says.
    pub spec: ModelSpec,
    /// The model's tokenizer.
    pub tokenizer: TextTokenizer,
    chat: Option<ChatTemplate>,
    backend: Box<dyn Backend>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("model", &self.spec.dir).finish_non_exhaustive()
    }
}

impl Engine {
    /// Validates `dir` and loads everything; fails before touching the runtime when the files
    /// are wrong.
    pub fn load(dir: impl AsRef<Path>, opts: &EngineOptions) -> Result<Self, EngineError> {
        let spec = ModelSpec::load(dir)?;
        let tokenizer = TextTokenizer::load(&spec)?;
        let chat = match ChatTemplate::load(&spec) {
            Ok(t) => Some(t),
            Err(TemplateError::Absent) => None,
            Err(e) => return Err(e.into()),
        };
        let backend = Box::new(OrtBackend::load(&spec, &opts.ort)?);
        Ok(Self { spec, tokenizer, chat, backend })
    }

    /// The backend's description.
    pub fn backend_info(&self) -> BackendInfo {
        self.backend.info()
    }

    /// Renders a chat with the model's template.
    pub fn render_chat(&self, input: &ChatInput) -> Result<String, TemplateError> {
        self.chat.as_ref().ok_or(TemplateError::Absent)?.render(input)
    }

    /// Whether the model ships a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// A fresh sequence.
    pub fn new_sequence(&self) -> Result<Sequence, BackendError> {
        self.backend.new_sequence()
    }

    /// Forks a sequence (prefix snapshots).
    pub fn fork(&self, seq: &Sequence) -> Result<Sequence, BackendError> {
        self.backend.fork(seq)
    }

    /// Direct access to the backend (parity checks, benchmarks).
    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }

    /// A decoder for `prompt` on a fresh sequence, stopping on the model's EOS ids.
    pub fn decoder(&self, prompt: Vec<u32>, params: GenerateParams) -> Result<Decoder, BackendError> {
        let seq = self.backend.new_sequence()?;
        Decoder::new(seq, prompt, params, self.spec.eos_token_ids.clone(), self.spec.context_length)
    }

    /// Advances `decoder` by one prefill chunk or one token.
    pub fn step(&mut self, decoder: &mut Decoder) -> Result<Step, BackendError> {
        decoder.step(self.backend.as_mut(), &self.tokenizer)
    }

    /// Generates after `prompt` from a fresh sequence, stopping on the model's EOS ids.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        sink: &mut dyn TokenSink,
    ) -> Result<Completion, BackendError> {
        let mut decoder = self.decoder(prompt.to_vec(), params.clone())?;
        generate::run_to_end(&mut decoder, self.backend.as_mut(), &self.tokenizer, sink)
    }

    /// Generates after `prompt` on top of `seq`, stopping on `eos` (empty: never on a token).
    pub fn generate_with(
        &mut self,
        seq: Sequence,
        prompt: &[u32],
        params: &GenerateParams,
        eos: &[u32],
        sink: &mut dyn TokenSink,
    ) -> Result<Completion, BackendError> {
        let mut decoder = Decoder::new(seq, prompt.to_vec(), params.clone(), eos.to_vec(), self.spec.context_length)?;
        generate::run_to_end(&mut decoder, self.backend.as_mut(), &self.tokenizer, sink)
    }
}
