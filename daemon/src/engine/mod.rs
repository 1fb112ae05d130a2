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
use generate::{Completion, GenerateParams, Generation, TokenSink};
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

    /// Generates after `prompt` from a fresh sequence, stopping on the model's EOS ids.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        sink: &mut dyn TokenSink,
    ) -> Result<Completion, BackendError> {
        let mut seq = self.backend.new_sequence()?;
        let eos = self.spec.eos_token_ids.clone();
        self.generate_with(&mut seq, prompt, params, &eos, sink)
    }

    /// Generates after `prompt` on top of `seq`, stopping on `eos` (empty: never on a token).
    pub fn generate_with(
        &mut self,
        seq: &mut Sequence,
        prompt: &[u32],
        params: &GenerateParams,
        eos: &[u32],
        sink: &mut dyn TokenSink,
    ) -> Result<Completion, BackendError> {
        Generation {
            backend: self.backend.as_mut(),
            tokenizer: &self.tokenizer,
            eos,
            context_length: self.spec.context_length,
        }
        .run(seq, prompt, params, sink)
    }
}
