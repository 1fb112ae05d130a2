//! The model's own tokenizer (`tokenizer.json`, read by the lean byte-level BPE in
//! `engine::bpe`), checked against the model spec so a tokenizer from another model family is
//! refused at load time instead of producing garbage.

use std::path::PathBuf;
use std::sync::Arc;

use super::bpe::Bpe;
use super::model::ModelSpec;
/// Why the tokenizer cannot be used with this model.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// tokenizer.json could not be parsed.
    #[error("{path}: not a usable tokenizer: {msg}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Parser message.
        msg: String,
    },
    /// The tokenizer does not belong to this model.
    #[error("{path}: does not match the model: {msg}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What disagrees.
        msg: String,
    },
    /// Encoding failed.
    #[error("tokenizing failed: {0}")]
    Encode(String),
}

/// Tokenizer bound to one model (cheap to clone: the tables are shared).
#[derive(Clone)]
pub struct TextTokenizer {
    bpe: Arc<Bpe>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("vocab", &self.bpe.len()).finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads `spec.tokenizer_path` and checks it against the model.
    pub fn load(spec: &ModelSpec) -> Result<Self, TokenizerError> {
        let path = spec.tokenizer_path.clone();
        let bytes = std::fs::read(&path).map_err(|e| TokenizerError::Load { path: path.clone(), msg: e.to_string() })?;
        let bpe = Bpe::from_json(&bytes).map_err(|msg| TokenizerError::Load { path: path.clone(), msg })?;
        drop(bytes);
        let mismatch = |msg: String| TokenizerError::Mismatch { path: path.clone(), msg };
        if bpe.len() > spec.vocab_size {
            return Err(mismatch(format!("it has {} tokens but the model's vocabulary has {}", bpe.len(), spec.vocab_size)));
        }
        for &eos in &spec.eos_token_ids {
            if bpe.piece(eos).is_empty() {
                return Err(mismatch(format!("it has no token with id {eos}, which genai_config.json names as end-of-sequence")));
            }
        }
        Ok(Self { bpe: Arc::new(bpe) })
    }

    /// Encodes text; special tokens written in the text (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.bpe.encode(text).map_err(TokenizerError::Encode)
    }

    /// Encodes raw bytes as plain text (added tokens written in it stay text, nothing is
    /// normalised): the tokens whose bytes are exactly `bytes`, as the tokenizer would split them.
    pub fn encode_plain(&self, bytes: &[u8]) -> Vec<u32> {
        self.bpe.encode_plain(bytes)
    }

    /// The raw bytes of a token (empty for ids outside the tokenizer).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bpe.piece(id)
    }

    /// True for added special tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.bpe.added_tokens().iter().any(|t| t.id == id && t.special)
    }

    /// The id of a token string, if it exists.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.bpe.token_id(token)
    }

    /// Decodes ids to text (invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id).iter().copied()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Bytes of the longest token: a text of n bytes has at least n / this many tokens.
    pub fn max_token_bytes(&self) -> usize {
        self.bpe.max_piece_bytes()
    }

    /// Number of ids the tokenizer knows.
    pub fn vocab_size(&self) -> usize {
        self.bpe.len()
    }
}
