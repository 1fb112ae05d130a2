//! Reading `tokenizer.json` into [`Bpe`]'s tables: the JSON is streamed (vocabulary and merges
//! go straight into compact buffers, never into per-token `String`s) and the pipeline sections
//! are checked against what the encoder implements.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{AddedToken, Bpe, PairMap, Pieces};

/// GPT-2's pre-tokenizer pattern, used by `ByteLevel { use_regex: true }`.
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The byte-level alphabet: byte → printable char (GPT-2's mapping), as `tokenizer.json`
/// writes token bytes.
pub fn byte_char(b: u8) -> char {
    let c = match b {
        b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF => u32::from(b),
        0x00..=0x20 => 256 + u32::from(b),
        0x7F..=0xA0 => 256 + 33 + u32::from(b - 0x7F),
        0xAD => 256 + 67,
    };
    char::from_u32(c).expect("valid scalar")
}

/// The inverse of [`byte_char`].
fn char_byte(c: char) -> Option<u8> {
    match c as u32 {
        c @ (0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF) => Some(c as u8),
        c @ 256..=288 => Some((c - 256) as u8),
        c @ 289..=322 => Some((c - 289) as u8 + 0x7F),
        323 => Some(0xAD),
        _ => None,
    }
}

/// Appends the raw bytes of a byte-level token string to `out`.
fn push_token_bytes(s: &str, out: &mut Vec<u8>) -> Result<(), String> {
    for c in s.chars() {
        out.push(char_byte(c).ok_or_else(|| format!("token {s:?} is not byte-level encoded"))?);
    }
    Ok(())
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

/// `vocab` streamed into raw token bytes (one buffer) and `(id, start, len)` entries.
#[derive(Default)]
struct VocabJson {
    bytes: Vec<u8>,
    entries: Vec<(u32, u32, u32)>,
}

impl<'de> Deserialize<'de> for VocabJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = VocabJson;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of token → id")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<VocabJson, A::Error> {
                let mut out = VocabJson { bytes: Vec::new(), entries: Vec::with_capacity(map.size_hint().unwrap_or(0)) };
                while let Some((k, id)) = map.next_entry::<std::borrow::Cow<'de, str>, u32>()? {
                    let start = out.bytes.len();
                    push_token_bytes(&k, &mut out.bytes).map_err(de::Error::custom)?;
                    out.entries.push((id, start as u32, (out.bytes.len() - start) as u32));
                }
                Ok(out)
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

        let pieces = build_pieces(&m.vocab, &file.added_tokens)?;
        let mut byte_ids = [0u32; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot =
                pieces.id(&[b as u8]).ok_or_else(|| format!("the vocabulary has no token for byte {b:#04x} ({:?})", byte_char(b as u8)))?;
        }
        let mut merges = PairMap::with_capacity_and_hasher(m.merges.spans.len(), Default::default());
        let arena = &m.merges.arena;
        let mut scratch = Vec::new();
        let mut id_of = |s: &str| -> Result<u32, String> {
            scratch.clear();
            push_token_bytes(s, &mut scratch)?;
            pieces.id(&scratch).ok_or_else(|| format!("merge part {s:?} is not in the vocabulary"))
        };
        for (rank, &(start, l, r)) in m.merges.spans.iter().enumerate() {
            let (start, l, r) = (start as usize, l as usize, r as usize);
            let (left, right) = (&arena[start..start + l], &arena[start + l..start + l + r]);
            let merged = id_of(&arena[start..start + l + r])?;
            let pair = (id_of(left)?, id_of(right)?);
            merges.entry(pair).or_insert((rank as u32, merged));
        }
        let (raw_matcher, raw_ids) = matcher(&file.added_tokens, false)?;
        let (norm_matcher, norm_ids) = matcher(&file.added_tokens, true)?;
        let max_piece = (0..pieces.len() as u32).map(|id| pieces.get(id).len()).max().unwrap_or(1).max(1);
        Ok(Self {
            pieces,
            max_piece,
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
}

/// Lays out every token's bytes by id (added tokens verbatim) and indexes the regular ones.
fn build_pieces(vocab: &VocabJson, added: &[AddedToken]) -> Result<Pieces, String> {
    let max_id = vocab.entries.iter().map(|e| e.0).chain(added.iter().map(|t| t.id)).max().unwrap_or(0) as usize;
    let mut lens = vec![0u32; max_id + 1];
    for &(id, _, len) in &vocab.entries {
        lens[id as usize] = len;
    }
    for t in added {
        lens[t.id as usize] = t.content.len() as u32;
    }
    let mut offsets = Vec::with_capacity(max_id + 2);
    let mut total = 0u32;
    offsets.push(0);
    for len in &lens {
        total = total.checked_add(*len).ok_or("tokenizer vocabulary too large")?;
        offsets.push(total);
    }
    let mut arena = vec![0u8; total as usize];
    for &(id, start, len) in &vocab.entries {
        let at = offsets[id as usize] as usize;
        arena[at..at + len as usize].copy_from_slice(&vocab.bytes[start as usize..(start + len) as usize]);
    }
    for t in added {
        let at = offsets[t.id as usize] as usize;
        arena[at..at + t.content.len()].copy_from_slice(t.content.as_bytes());
    }
    let mut pieces = Pieces { arena, offsets, index: hashbrown::HashTable::with_capacity(vocab.entries.len()) };
    for &(id, _, _) in &vocab.entries {
        if pieces.id(pieces.get(id)).is_some() {
            return Err(format!("token {:?} appears twice in the vocabulary", String::from_utf8_lossy(pieces.get(id))));
        }
        pieces.index_id(id);
    }
    Ok(pieces)
}
