//! A lean reader and encoder for byte-level BPE `tokenizer.json` files (the format Qwen ships).
//!
//! Why not the `tokenizers` crate: loading Qwen3.5's 248k-token file through it peaks at over
//! 450 MB of heap — more than the 0.8B model's int4 weights — which a small board cannot spare.
//! This reader streams the JSON straight into compact tables (ids, merge ranks, token bytes) and
//! implements exactly the pipeline such files describe: added-token splitting, NFC
//! normalisation, regex pre-tokenisation ("Isolated" splits) and rank-ordered BPE merges.
//! Anything outside that pipeline is refused with a message naming the unsupported part.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// GPT-2's pre-tokenizer pattern, used by `ByteLevel { use_regex: true }`.
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// A small, fast hasher for integer pair keys (merges are looked up once per pair per step).
#[derive(Default, Clone, Copy)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type PairMap = HashMap<(u32, u32), (u32, u32), BuildHasherDefault<PairHasher>>;

/// An added token (`<|im_start|>` …) as declared in `added_tokens`.
#[derive(Debug, Clone, Deserialize)]
pub struct AddedToken {
    /// Token id.
    pub id: u32,
    /// Literal text.
    pub content: String,
    /// Only match as a whole word.
    #[serde(default)]
    pub single_word: bool,
    /// Absorb whitespace on the left.
    #[serde(default)]
    pub lstrip: bool,
    /// Absorb whitespace on the right.
    #[serde(default)]
    pub rstrip: bool,
    /// Matched against normalised text (else against the raw input).
    #[serde(default)]
    pub normalized: bool,
    /// A control token rather than text.
    #[serde(default)]
    pub special: bool,
}

/// The encoder built from a `tokenizer.json`.
pub struct Bpe {
    /// Raw bytes of every id.
    pieces: Vec<Box<[u8]>>,
    /// Byte-level token bytes → id, for whole-piece lookups.
    vocab: HashMap<Box<[u8]>, u32>,
    /// (left, right) → (rank, merged id).
    merges: PairMap,
    /// Id of each single byte.
    byte_ids: [u32; 256],
    ignore_merges: bool,
    nfc: bool,
    split: fancy_regex::Regex,
    added: Vec<AddedToken>,
    raw_matcher: Option<aho_corasick::AhoCorasick>,
    raw_ids: Vec<usize>,
    norm_matcher: Option<aho_corasick::AhoCorasick>,
    norm_ids: Vec<usize>,
}

/// The byte-level alphabet: byte → printable char, and back.
fn byte_alphabet() -> ([char; 256], HashMap<char, u8>) {
    let mut to_char = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            u32::from(b)
        } else {
            extra += 1;
            255 + extra
        };
        to_char[b as usize] = char::from_u32(c).expect("valid scalar");
    }
    let back = to_char.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
    (to_char, back)
}

/// Converts a byte-level token string to its raw bytes.
fn token_bytes(s: &str, back: &HashMap<char, u8>) -> Result<Box<[u8]>, String> {
    s.chars()
        .map(|c| back.get(&c).copied().ok_or_else(|| format!("token {s:?} is not byte-level encoded")))
        .collect::<Result<Vec<u8>, _>>()
        .map(Vec::into_boxed_slice)
}

#[derive(Deserialize)]
struct FileJson {
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
    #[serde(default)]
    normalizer: Option<serde_json::Value>,
    #[serde(default)]
    pre_tokenizer: Option<serde_json::Value>,
    #[serde(default)]
    decoder: Option<serde_json::Value>,
    model: ModelJson,
}

#[derive(Deserialize)]
struct ModelJson {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    dropout: Option<f32>,
    #[serde(default)]
    byte_fallback: bool,
    #[serde(default)]
    ignore_merges: bool,
    #[serde(default)]
    continuing_subword_prefix: Option<String>,
    #[serde(default)]
    end_of_word_suffix: Option<String>,
    vocab: VocabJson,
    merges: MergesJson,
}

/// `vocab` streamed into (byte-level string → id) without intermediate `String`s.
struct VocabJson(Vec<(Box<str>, u32)>);

impl<'de> Deserialize<'de> for VocabJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = VocabJson;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of token → id")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<VocabJson, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((k, v)) = map.next_entry::<std::borrow::Cow<'de, str>, u32>()? {
                    out.push((k.into(), v));
                }
                Ok(VocabJson(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// `merges`, as `"a b"` strings or `["a", "b"]` pairs, packed into one arena.
struct MergesJson {
    arena: String,
    /// (start, len of left, len of right) into `arena`.
    spans: Vec<(u32, u32, u32)>,
}

impl<'de> Deserialize<'de> for MergesJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Seq;
        impl<'de> Visitor<'de> for Seq {
            type Value = MergesJson;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of merges")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MergesJson, A::Error> {
                let mut m = MergesJson { arena: String::new(), spans: Vec::with_capacity(seq.size_hint().unwrap_or(0)) };
                while seq.next_element_seed(Entry(&mut m))?.is_some() {}
                Ok(m)
            }
        }
        d.deserialize_seq(Seq)
    }
}

struct Entry<'m>(&'m mut MergesJson);

impl<'de> DeserializeSeed<'de> for Entry<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Entry<'_> {
    fn push(self, left: &str, right: &str) {
        let m = self.0;
        m.spans.push((m.arena.len() as u32, left.len() as u32, right.len() as u32));
        m.arena.push_str(left);
        m.arena.push_str(right);
    }
}

impl<'de> Visitor<'de> for Entry<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a merge as \"a b\" or [\"a\", \"b\"]")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        let (l, r) = s.split_once(' ').ok_or_else(|| E::custom(format!("merge {s:?} has no space")))?;
        self.push(l, r);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let l: std::borrow::Cow<'de, str> = seq.next_element()?.ok_or_else(|| de::Error::custom("empty merge"))?;
        let r: std::borrow::Cow<'de, str> = seq.next_element()?.ok_or_else(|| de::Error::custom("merge with one part"))?;
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom("merge with more than two parts"));
        }
        self.push(&l, &r);
        Ok(())
    }
}

fn pipeline_type(v: &serde_json::Value) -> &str {
    v.get("type").and_then(|t| t.as_str()).unwrap_or("?")
}

/// NFC only, possibly inside a Sequence; anything else is refused.
fn parse_normalizer(v: Option<&serde_json::Value>) -> Result<bool, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(false) };
    match pipeline_type(v) {
        "NFC" => Ok(true),
        "Sequence" => {
            let list = v.get("normalizers").and_then(|l| l.as_array()).ok_or("normalizer Sequence without a list")?;
            list.iter().try_fold(false, |acc, n| Ok(acc | parse_normalizer(Some(n))?))
        }
        other => Err(format!("normalizer '{other}' is not supported (only NFC)")),
    }
}

/// The split pattern: `Split(Regex, Isolated)` + `ByteLevel(use_regex=false)`, or a lone
/// `ByteLevel(use_regex=true)`.
fn parse_pre_tokenizer(v: Option<&serde_json::Value>) -> Result<String, String> {
    let v = v.filter(|v| !v.is_null()).ok_or("no pre_tokenizer (expected byte-level)")?;
    let steps: Vec<&serde_json::Value> = match pipeline_type(v) {
        "Sequence" => v.get("pretokenizers").and_then(|l| l.as_array()).ok_or("pre_tokenizer Sequence without a list")?.iter().collect(),
        _ => vec![v],
    };
    let mut pattern = None;
    let mut byte_level = false;
    for step in steps {
        match pipeline_type(step) {
            "Split" => {
                let p = step.get("pattern").ok_or("Split without a pattern")?;
                let regex = match (p.get("Regex").and_then(|r| r.as_str()), p.get("String").and_then(|s| s.as_str())) {
                    (Some(r), _) => r.to_string(),
                    (None, Some(s)) => fancy_regex::escape(s).into_owned(),
                    _ => return Err("Split pattern is neither Regex nor String".into()),
                };
                let behavior = step.get("behavior").and_then(|b| b.as_str()).unwrap_or("Isolated");
                let invert = step.get("invert").and_then(|b| b.as_bool()).unwrap_or(false);
                if behavior != "Isolated" || invert || pattern.is_some() {
                    return Err(format!("Split with behavior '{behavior}' (invert {invert}) is not supported"));
                }
                pattern = Some(regex);
            }
            "ByteLevel" => {
                if step.get("add_prefix_space").and_then(|b| b.as_bool()).unwrap_or(false) {
                    return Err("ByteLevel add_prefix_space is not supported".into());
                }
                if step.get("use_regex").and_then(|b| b.as_bool()).unwrap_or(true) {
                    if pattern.is_some() {
                        return Err("two split patterns".into());
                    }
                    pattern = Some(GPT2_PATTERN.to_string());
                }
                byte_level = true;
            }
            other => return Err(format!("pre_tokenizer '{other}' is not supported")),
        }
    }
    if !byte_level {
        return Err("pre_tokenizer has no ByteLevel step".into());
    }
    pattern.ok_or_else(|| "pre_tokenizer has no split pattern".into())
}

fn matcher(tokens: &[AddedToken], normalized: bool) -> Result<(Option<aho_corasick::AhoCorasick>, Vec<usize>), String> {
    let idx: Vec<usize> = (0..tokens.len()).filter(|&i| tokens[i].normalized == normalized && !tokens[i].content.is_empty()).collect();
    if idx.is_empty() {
        return Ok((None, idx));
    }
    let ac = aho_corasick::AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostLongest)
        .build(idx.iter().map(|&i| tokens[i].content.as_str()))
        .map_err(|e| e.to_string())?;
    Ok((Some(ac), idx))
}

impl Bpe {
    /// Parses a `tokenizer.json`. Errors say which part is unsupported or malformed.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let file: FileJson = serde_json::from_slice(bytes).map_err(|e| format!("invalid tokenizer JSON: {e}"))?;
        let m = &file.model;
        if m.kind.as_deref().is_some_and(|k| k != "BPE") {
            return Err(format!("model type '{}' is not supported (expected BPE)", m.kind.as_deref().unwrap_or("")));
        }
        if m.dropout.is_some_and(|d| d > 0.0) || m.byte_fallback {
            return Err("BPE dropout / byte_fallback are not supported".into());
        }
        if m.continuing_subword_prefix.as_deref().is_some_and(|s| !s.is_empty())
            || m.end_of_word_suffix.as_deref().is_some_and(|s| !s.is_empty())
        {
            return Err("BPE subword prefixes/suffixes are not supported".into());
        }
        match file.decoder.as_ref().map(pipeline_type) {
            Some("ByteLevel") => {}
            other => return Err(format!("decoder '{}' is not supported (expected ByteLevel)", other.unwrap_or("none"))),
        }
        let nfc = parse_normalizer(file.normalizer.as_ref())?;
        let pattern = parse_pre_tokenizer(file.pre_tokenizer.as_ref())?;
        let split = fancy_regex::Regex::new(&pattern).map_err(|e| format!("split pattern does not compile: {e}"))?;

        let (to_char, back) = byte_alphabet();
        let max_id = m.vocab.0.iter().map(|(_, id)| *id).chain(file.added_tokens.iter().map(|t| t.id)).max().unwrap_or(0);
        let mut pieces: Vec<Box<[u8]>> = vec![Box::default(); max_id as usize + 1];
        let mut vocab = HashMap::with_capacity(m.vocab.0.len());
        for (s, id) in &m.vocab.0 {
            let bytes = token_bytes(s, &back)?;
            pieces[*id as usize] = bytes.clone();
            vocab.insert(bytes, *id);
        }
        let mut byte_ids = [0u32; 256];
        for (b, c) in to_char.iter().enumerate() {
            byte_ids[b] = *vocab
                .get(&[b as u8][..])
                .ok_or_else(|| format!("the vocabulary has no token for byte {b:#04x} ({c:?})"))?;
        }
        let mut merges = PairMap::with_capacity_and_hasher(m.merges.spans.len(), Default::default());
        let arena = &m.merges.arena;
        let id_of = |s: &str| -> Result<u32, String> {
            let bytes = token_bytes(s, &back)?;
            vocab.get(&bytes).copied().ok_or_else(|| format!("merge part {s:?} is not in the vocabulary"))
        };
        for (rank, &(start, l, r)) in m.merges.spans.iter().enumerate() {
            let (start, l, r) = (start as usize, l as usize, r as usize);
            let (left, right) = (&arena[start..start + l], &arena[start + l..start + l + r]);
            let merged = id_of(&arena[start..start + l + r])?;
            merges.entry((id_of(left)?, id_of(right)?)).or_insert((rank as u32, merged));
        }
        for t in &file.added_tokens {
            pieces[t.id as usize] = t.content.as_bytes().into();
        }
        let (raw_matcher, raw_ids) = matcher(&file.added_tokens, false)?;
        let (norm_matcher, norm_ids) = matcher(&file.added_tokens, true)?;
        Ok(Self {
            pieces,
            vocab,
            merges,
            byte_ids,
            ignore_merges: m.ignore_merges,
            nfc,
            split,
            added: file.added_tokens,
            raw_matcher,
            raw_ids,
            norm_matcher,
            norm_ids,
        })
    }

    /// Number of ids (highest id + 1).
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// True when there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Raw bytes of `id` (empty for unknown ids).
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[][..], |p| p)
    }

    /// The added tokens.
    pub fn added_tokens(&self) -> &[AddedToken] {
        &self.added
    }

    /// The id of a token given as text (added tokens and regular tokens).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        if let Some(t) = self.added.iter().find(|t| t.content == text) {
            return Some(t.id);
        }
        self.vocab.get(text.as_bytes()).copied()
    }

    /// Encodes `text`; added tokens written in the text become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.split_added(text, &self.raw_matcher, &self.raw_ids, &mut out, &mut |s, out| {
            let normalized = if self.nfc && is_nfc_quick(s.chars()) != IsNormalized::Yes {
                std::borrow::Cow::Owned(s.nfc().collect::<String>())
            } else {
                std::borrow::Cow::Borrowed(s)
            };
            self.split_added(&normalized, &self.norm_matcher, &self.norm_ids, out, &mut |s, out| self.pre_tokenize(s, out))
        })?;
        Ok(out)
    }

    /// Splits on added tokens; text between them goes to `rest`.
    fn split_added(
        &self,
        text: &str,
        matcher: &Option<aho_corasick::AhoCorasick>,
        ids: &[usize],
        out: &mut Vec<u32>,
        rest: &mut dyn FnMut(&str, &mut Vec<u32>) -> Result<(), String>,
    ) -> Result<(), String> {
        let Some(ac) = matcher else { return rest(text, out) };
        let mut pos = 0;
        for m in ac.find_iter(text) {
            let token = &self.added[ids[m.pattern().as_usize()]];
            let (mut start, mut end) = (m.start(), m.end());
            if start < pos {
                continue;
            }
            if token.single_word {
                let before = text[..start].chars().next_back();
                let after = text[end..].chars().next();
                if before.is_some_and(char::is_alphanumeric) || after.is_some_and(char::is_alphanumeric) {
                    continue;
                }
            }
            if token.lstrip {
                start = pos + text[pos..start].trim_end().len();
            }
            if token.rstrip {
                end += text[end..].len() - text[end..].trim_start().len();
            }
            if start > pos {
                rest(&text[pos..start], out)?;
            }
            out.push(token.id);
            pos = end;
        }
        if pos < text.len() {
            rest(&text[pos..], out)?;
        }
        Ok(())
    }

    /// Regex pre-tokenisation with "Isolated" behaviour: matches and the gaps between them are
    /// pieces.
    fn pre_tokenize(&self, text: &str, out: &mut Vec<u32>) -> Result<(), String> {
        let mut pos = 0;
        for m in self.split.find_iter(text) {
            let m = m.map_err(|e| format!("pre-tokenizer regex failed: {e}"))?;
            if m.start() > pos {
                self.bpe(&text.as_bytes()[pos..m.start()], out);
            }
            if m.end() > m.start() {
                self.bpe(m.as_str().as_bytes(), out);
            }
            pos = m.end();
        }
        if pos < text.len() {
            self.bpe(&text.as_bytes()[pos..], out);
        }
        Ok(())
    }

    /// Byte-pair merges of one piece, lowest rank first (leftmost on ties).
    fn bpe(&self, piece: &[u8], out: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(&id) = self.vocab.get(piece) {
                out.push(id);
                return;
            }
        }
        let mut symbols: Vec<u32> = piece.iter().map(|&b| self.byte_ids[b as usize]).collect();
        // Ranks of each adjacent pair; u32::MAX = no merge.
        let rank_of = |a: u32, b: u32| self.merges.get(&(a, b)).copied();
        let mut pairs: Vec<Option<(u32, u32)>> = symbols.windows(2).map(|w| rank_of(w[0], w[1])).collect();
        loop {
            let best = pairs
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.map(|(rank, merged)| (rank, i, merged)))
                .min_by_key(|&(rank, i, _)| (rank, i));
            let Some((_, i, merged)) = best else { break };
            symbols[i] = merged;
            symbols.remove(i + 1);
            pairs.remove(i);
            if i > 0 {
                pairs[i - 1] = rank_of(symbols[i - 1], symbols[i]);
            }
            if i < pairs.len() {
                pairs[i] = rank_of(symbols[i], symbols[i + 1]);
            }
        }
        out.extend_from_slice(&symbols);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Bpe {
        // A vocabulary with every byte plus a few merges, in the byte-level alphabet.
        let (to_char, _) = byte_alphabet();
        let mut vocab = serde_json::Map::new();
        for (b, c) in to_char.iter().enumerate() {
            vocab.insert(c.to_string(), b.into());
        }
        for (i, t) in ["he", "ll", "hell", "hello", "Ġw", "or", "Ġwor"].iter().enumerate() {
            vocab.insert(t.to_string(), (256 + i).into());
        }
        let json = serde_json::json!({
            "added_tokens": [{"id": 300, "content": "<|x|>", "special": true}],
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": " ?\\p{L}+|\\s+|[^\\s\\p{L}]+"}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
            "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": vocab, "merges": ["h e", ["l", "l"], "he ll", ["hell", "o"], "Ġ w", "o r", "Ġw or"]}
        });
        Bpe::from_json(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn merges_apply_in_rank_order_and_added_tokens_split_first() {
        let t = tiny();
        assert_eq!(t.encode("hello").unwrap(), vec![259]);
        assert_eq!(t.encode(" world").unwrap(), vec![262, b'l' as u32, b'd' as u32]);
        assert_eq!(t.encode(" wo").unwrap(), vec![260, b'o' as u32]);
        assert_eq!(t.encode("hello<|x|>hello").unwrap(), vec![259, 300, 259]);
        assert_eq!(t.piece(259), b"hello");
    }

    #[test]
    fn nfc_is_applied_before_splitting() {
        let t = tiny();
        assert_eq!(t.encode("e\u{301}").unwrap(), t.encode("é").unwrap());
    }

    #[test]
    fn merges_with_unknown_parts_are_refused() {
        let (to_char, _) = byte_alphabet();
        let vocab: serde_json::Map<String, serde_json::Value> =
            to_char.iter().enumerate().map(|(b, c)| (c.to_string(), b.into())).collect();
        let json = serde_json::json!({"decoder": {"type": "ByteLevel"},
            "pre_tokenizer": {"type": "ByteLevel", "use_regex": true},
            "model": {"type": "BPE", "vocab": vocab, "merges": ["a b"]}});
        let err = Bpe::from_json(json.to_string().as_bytes()).err().unwrap();
        assert!(err.contains("\"ab\" is not in the vocabulary"), "{err}");
    }

    #[test]
    fn unsupported_pipelines_are_named() {
        let json = serde_json::json!({"decoder": {"type": "WordPiece"}, "model": {"type": "BPE", "vocab": {}, "merges": []}});
        let err = Bpe::from_json(json.to_string().as_bytes()).err().unwrap();
        assert!(err.contains("WordPiece"), "{err}");
    }
}
