//! The model's own tokenizer (`tokenizer.json`, pure-Rust `tokenizers`) plus a byte table for
//! exact streaming detokenization, checked against the model spec so a tokenizer from another
//! model family is refused at load time instead of producing garbage.

use std::path::PathBuf;

use tokenizers::DecoderWrapper;

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

/// Tokenizer bound to one model.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// Raw bytes of every token id (byte-level BPE pieces decoded; added tokens verbatim).
    pieces: Vec<Box<[u8]>>,
    /// Ids that are added special tokens (`<|im_start|>` …).
    special: Vec<bool>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("vocab", &self.pieces.len()).finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads `spec.tokenizer_path` and checks it against the model.
    pub fn load(spec: &ModelSpec) -> Result<Self, TokenizerError> {
        let path = spec.tokenizer_path.clone();
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| TokenizerError::Load { path: path.clone(), msg: e.to_string() })?;
        let mismatch = |msg: String| TokenizerError::Mismatch { path: path.clone(), msg };
        if !matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            return Err(mismatch("expected a byte-level BPE tokenizer (as Qwen models use)".into()));
        }
        let size = inner.get_vocab_size(true);
        if size > spec.vocab_size {
            return Err(mismatch(format!(
                "it has {size} tokens but the model's vocabulary has {}",
                spec.vocab_size
            )));
        }
        for &eos in &spec.eos_token_ids {
            if inner.id_to_token(eos).is_none() {
                return Err(mismatch(format!(
                    "it has no token with id {eos}, which genai_config.json names as end-of-sequence"
                )));
            }
        }
        let (pieces, special) = byte_table(&inner).map_err(mismatch)?;
        Ok(Self { inner, pieces, special })
    }

    /// Encodes text; special tokens written in the text (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The raw bytes of a token (empty for ids outside the tokenizer).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[][..], |p| &p[..])
    }

    /// True for added special tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The id of a token string, if it exists.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Decodes ids to text (invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id).iter().copied()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Number of ids the tokenizer knows.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }
}

/// GPT-2's byte ↔ printable-character mapping used by byte-level BPE.
fn byte_level_decoder() -> std::collections::HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF).map(u32::from).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..=255u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    printable
        .into_iter()
        .zip(chars)
        .map(|(b, c)| (char::from_u32(c).expect("valid"), b as u8))
        .collect()
}

type ByteTable = (Vec<Box<[u8]>>, Vec<bool>);

fn byte_table(tok: &tokenizers::Tokenizer) -> Result<ByteTable, String> {
    let decode = byte_level_decoder();
    let added = tok.get_added_tokens_decoder();
    let size = tok.get_vocab_size(true);
    let mut pieces = Vec::with_capacity(size);
    let mut special = vec![false; size];
    for id in 0..size as u32 {
        if let Some(t) = added.get(&id) {
            special[id as usize] = t.special;
            pieces.push(t.content.as_bytes().into());
            continue;
        }
        let Some(token) = tok.id_to_token(id) else {
            pieces.push(Box::default());
            continue;
        };
        let bytes: Option<Vec<u8>> = token.chars().map(|c| decode.get(&c).copied()).collect();
        let bytes = bytes.ok_or_else(|| format!("token {id} ({token:?}) is not byte-level encoded"))?;
        pieces.push(bytes.into());
    }
    Ok((pieces, special))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_mapping_is_a_bijection() {
        let d = byte_level_decoder();
        assert_eq!(d.len(), 256);
        assert_eq!(d[&'Ġ'], b' ');
        assert_eq!(d[&'Ċ'], b'\n');
        assert_eq!(d[&'A'], b'A');
        let mut bytes: Vec<u8> = d.values().copied().collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
    }
}
