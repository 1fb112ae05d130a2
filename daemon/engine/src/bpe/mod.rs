//! A lean reader and encoder for byte-level BPE `tokenizer.json` files (the format Qwen ships).
//!
//! Why not the `tokenizers` crate: loading Qwen3.5's 248k-token file through it peaks at over
//! 450 MB of heap — more than the 0.8B model's int4 weights — which a small board cannot spare.
//! This reader streams the JSON straight into compact tables (ids, merge ranks, token bytes) and
//! implements exactly the pipeline such files describe: added-token splitting, NFC
//! normalisation, regex pre-tokenisation ("Isolated" splits) and rank-ordered BPE merges.
//! Anything outside that pipeline is refused with a message naming the unsupported part.
//!
//! `load` reads the JSON; this file holds the tables and the encoder.

mod load;

pub use load::byte_char;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use serde::Deserialize;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// A small, fast hasher for merge pairs and token bytes (looked up once per pair per step).
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl Hasher for FastHasher {
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

/// Bytes of text the pre-tokenizer regex sees at once.
const WINDOW: usize = 128 << 10;
/// A match ending this close to a window's end may continue past it.
const MARGIN: usize = 64;

type PairMap = HashMap<(u32, u32), (u32, u32), BuildHasherDefault<FastHasher>>;

/// Encodes a stretch of text between added tokens, appending ids.
type Encoder<'a> = dyn FnMut(&str, &mut Vec<u32>) -> Result<(), String> + 'a;

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

/// Every token's raw bytes in one buffer, plus an index from bytes to id for regular tokens.
/// About 3 bytes of overhead per token, where a `Vec<Box<[u8]>>` plus a `HashMap` would take 60.
struct Pieces {
    arena: Vec<u8>,
    /// `offsets[id]..offsets[id + 1]` is token `id`.
    offsets: Vec<u32>,
    index: hashbrown::HashTable<u32>,
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    BuildHasherDefault::<FastHasher>::default().hash_one(bytes)
}

impl Pieces {
    fn get(&self, id: u32) -> &[u8] {
        let id = id as usize;
        match (self.offsets.get(id), self.offsets.get(id + 1)) {
            (Some(&a), Some(&b)) => &self.arena[a as usize..b as usize],
            _ => &[],
        }
    }

    fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// The id of a regular (non-added) token.
    fn id(&self, bytes: &[u8]) -> Option<u32> {
        self.index.find(hash_bytes(bytes), |&id| self.get(id) == bytes).copied()
    }

    /// Indexes `id` under its bytes.
    fn index_id(&mut self, id: u32) {
        let hash = hash_bytes(self.get(id));
        let Self { arena, offsets, index } = self;
        let bytes_of = |i: u32| &arena[offsets[i as usize] as usize..offsets[i as usize + 1] as usize];
        index.insert_unique(hash, id, |&other| hash_bytes(bytes_of(other)));
    }
}

/// The encoder built from a `tokenizer.json`.
pub struct Bpe {
    pieces: Pieces,
    /// Bytes of the longest token.
    max_piece: usize,
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

impl Bpe {
    /// Number of ids (highest id + 1).
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// True when there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.pieces.len() == 0
    }

    /// Raw bytes of `id` (empty for unknown ids).
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id)
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
        self.pieces.id(text.as_bytes())
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

    /// Encodes `bytes` as plain text: no added tokens, no normalisation, so the tokens' bytes
    /// are exactly `bytes` (the canonical tokenization of a piece of output that a grammar
    /// forces). Bytes that are not UTF-8 are merged as one piece.
    pub fn encode_plain(&self, bytes: &[u8]) -> Vec<u32> {
        let mut out = Vec::with_capacity(bytes.len() / 3 + 1);
        let (text, rest) = match std::str::from_utf8(bytes) {
            Ok(s) => (s, &[][..]),
            Err(e) => (std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(), &bytes[e.valid_up_to()..]),
        };
        if self.pre_tokenize(text, &mut out).is_err() {
            out.clear();
            self.bpe(&bytes[..text.len()], &mut out);
        }
        if !rest.is_empty() {
            self.bpe(rest, &mut out);
        }
        out
    }

    /// Splits on added tokens; text between them goes to `rest`.
    fn split_added(
        &self,
        text: &str,
        matcher: &Option<aho_corasick::AhoCorasick>,
        ids: &[usize],
        out: &mut Vec<u32>,
        rest: &mut Encoder<'_>,
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
    /// pieces. The regex runs over windows of [`WINDOW`] bytes (its backtracking engine has a
    /// bounded stack, which a long run of spaces would overflow); a match that reaches into the
    /// last [`MARGIN`] bytes of a window is looked at again from the next window, and a single
    /// piece longer than a window is cut there.
    fn pre_tokenize(&self, text: &str, out: &mut Vec<u32>) -> Result<(), String> {
        let mut pos = 0;
        while pos < text.len() {
            let mut end = (pos + WINDOW).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let window = &text[pos..end];
            let last = end == text.len();
            let mut done = 0;
            for m in self.split.find_iter(window) {
                let m = match m {
                    Ok(m) => m,
                    // The engine's stack ran out inside this window: what is left of it is a piece.
                    Err(fancy_regex::Error::RuntimeError(_)) => break,
                    Err(e) => return Err(format!("pre-tokenizer regex failed: {e}")),
                };
                if !last && m.end() + MARGIN > window.len() {
                    break;
                }
                if m.start() > done {
                    self.bpe(&window.as_bytes()[done..m.start()], out);
                }
                if m.end() > m.start() {
                    self.bpe(m.as_str().as_bytes(), out);
                }
                done = m.end();
            }
            if last || done == 0 {
                if done < window.len() {
                    self.bpe(&window.as_bytes()[done..], out);
                }
                done = window.len();
            }
            pos += done;
        }
        Ok(())
    }

    /// Byte-pair merges of one piece, lowest rank first (leftmost on ties): the candidate pairs
    /// in a min-heap by (rank, position) over a linked list of symbols, stale entries skipped
    /// when popped, so a piece of n bytes costs O(n log n) whatever its content.
    fn bpe(&self, piece: &[u8], out: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(id) = self.pieces.id(piece) {
                out.push(id);
                return;
            }
        }
        let mut symbols: Vec<u32> = piece.iter().map(|&b| self.byte_ids[b as usize]).collect();
        let n = symbols.len();
        if n < 2 {
            out.extend_from_slice(&symbols);
            return;
        }
        // Symbols as a linked list over their first byte's position (u32::MAX: none); the
        // candidates as (rank << 32 | left position), checked against the list when popped.
        const NONE: u32 = u32::MAX;
        let rank_of = |a: u32, b: u32| self.merges.get(&(a, b)).map(|&(rank, _)| rank);
        let entry = |rank: u32, left: u32| Reverse((u64::from(rank) << 32) | u64::from(left));
        let mut next: Vec<u32> = (1..=n as u32).map(|k| if k as usize == n { NONE } else { k }).collect();
        let mut prev: Vec<u32> = (0..n as u32).map(|k| k.checked_sub(1).unwrap_or(NONE)).collect();
        let mut heap: BinaryHeap<Reverse<u64>> =
            (0..n - 1).filter_map(|k| rank_of(symbols[k], symbols[k + 1]).map(|r| entry(r, k as u32))).collect();
        while let Some(Reverse(e)) = heap.pop() {
            let (rank, left) = ((e >> 32) as u32, e as u32 as usize);
            let right = next[left];
            if symbols[left] == NONE || right == NONE {
                continue;
            }
            let right = right as usize;
            let Some(&(r, merged)) = self.merges.get(&(symbols[left], symbols[right])) else { continue };
            if r != rank {
                continue;
            }
            symbols[left] = merged;
            symbols[right] = NONE;
            next[left] = next[right];
            if let Some(&after) = next.get(left).filter(|&&a| a != NONE) {
                prev[after as usize] = left as u32;
                if let Some(r) = rank_of(merged, symbols[after as usize]) {
                    heap.push(entry(r, left as u32));
                }
            }
            if prev[left] != NONE {
                let before = prev[left] as usize;
                if let Some(r) = rank_of(symbols[before], merged) {
                    heap.push(entry(r, before as u32));
                }
            }
        }
        out.extend(symbols.iter().copied().filter(|&s| s != NONE));
    }

    /// The longest regular token, in bytes (no token of a prompt is longer).
    pub fn max_piece_bytes(&self) -> usize {
        self.max_piece
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Bpe {
        // A vocabulary with every byte plus a few merges, in the byte-level alphabet.
        let mut vocab = serde_json::Map::new();
        for b in 0..=255u8 {
            vocab.insert(load::byte_char(b).to_string(), b.into());
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
    fn plain_encoding_keeps_added_token_text_and_exact_bytes() {
        let t = tiny();
        assert_eq!(t.encode_plain(b"hello world"), t.encode("hello world").unwrap());
        let plain = t.encode_plain(b"<|x|>");
        assert!(!plain.contains(&300), "{plain:?}");
        let bytes: Vec<u8> = plain.iter().flat_map(|&id| t.piece(id).to_vec()).collect();
        assert_eq!(bytes, b"<|x|>");
        let odd = t.encode_plain(b"he\xffll");
        let bytes: Vec<u8> = odd.iter().flat_map(|&id| t.piece(id).to_vec()).collect();
        assert_eq!(bytes, b"he\xffll");
    }

    /// The textbook merge loop: the lowest-ranked adjacent pair, leftmost on ties, until none.
    fn reference_merges(t: &Bpe, piece: &[u8]) -> Vec<u32> {
        let mut symbols: Vec<u32> = piece.iter().map(|&b| t.byte_ids[b as usize]).collect();
        loop {
            let best = (0..symbols.len().saturating_sub(1))
                .filter_map(|i| t.merges.get(&(symbols[i], symbols[i + 1])).map(|&(rank, merged)| (rank, i, merged)))
                .min_by_key(|&(rank, i, _)| (rank, i));
            let Some((_, i, merged)) = best else { return symbols };
            symbols[i] = merged;
            symbols.remove(i + 1);
        }
    }

    /// A vocabulary over "abc" with 80 merges of random earlier tokens, in random rank order.
    fn dense() -> Bpe {
        let mut rand = lcg(11);
        let mut tokens: Vec<String> = (0..=255u8).map(|b| load::byte_char(b).to_string()).collect();
        let mut merges = Vec::new();
        while merges.len() < 80 {
            let pick = |r: &mut dyn FnMut(usize) -> usize, tokens: &[String]| {
                let small: Vec<&String> = tokens.iter().filter(|t| t.chars().all(|c| "abc".contains(c))).collect();
                small[r(small.len())].clone()
            };
            let (a, b) = (pick(&mut rand, &tokens), pick(&mut rand, &tokens));
            let joined = format!("{a}{b}");
            if joined.len() <= 6 && !tokens.contains(&joined) {
                tokens.push(joined);
                merges.push(format!("{a} {b}"));
            }
        }
        let vocab: serde_json::Map<String, serde_json::Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i.into())).collect();
        let json = serde_json::json!({"decoder": {"type": "ByteLevel"},
            "pre_tokenizer": {"type": "ByteLevel", "use_regex": true},
            "model": {"type": "BPE", "vocab": vocab, "merges": merges}});
        Bpe::from_json(json.to_string().as_bytes()).unwrap()
    }

    fn lcg(mut seed: u64) -> impl FnMut(usize) -> usize {
        move |n| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        }
    }

    #[test]
    fn heap_merges_equal_the_textbook_loop_on_a_dense_vocabulary() {
        let t = dense();
        let mut rand = lcg(3);
        for len in [2, 3, 4, 7, 16, 50, 300] {
            for _ in 0..200 {
                let piece: Vec<u8> = (0..len).map(|_| b"abc"[rand(3)]).collect();
                let mut got = Vec::new();
                t.bpe(&piece, &mut got);
                assert_eq!(got, reference_merges(&t, &piece), "{:?}", String::from_utf8_lossy(&piece));
            }
        }
    }

    #[test]
    fn heap_merges_equal_the_textbook_loop_on_every_shape() {
        let t = tiny();
        let mut seed = 7u64;
        let mut rand = |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let alphabet = b"helowrd ";
        for len in [0, 1, 2, 3, 5, 8, 13, 40, 200] {
            for _ in 0..50 {
                let piece: Vec<u8> = (0..len).map(|_| alphabet[rand(alphabet.len())]).collect();
                let mut got = Vec::new();
                t.bpe(&piece, &mut got);
                assert_eq!(got, reference_merges(&t, &piece), "{:?}", String::from_utf8_lossy(&piece));
            }
        }
        for piece in [&b"llllllllllllllll"[..], b"hhhhhheeeeellll", b"hellohellohello"] {
            let mut got = Vec::new();
            t.bpe(piece, &mut got);
            assert_eq!(got, reference_merges(&t, piece));
        }
    }

    #[test]
    fn nfc_is_applied_before_splitting() {
        let t = tiny();
        assert_eq!(t.encode("e\u{301}").unwrap(), t.encode("é").unwrap());
    }

    #[test]
    fn merges_with_unknown_parts_are_refused() {
        let vocab: serde_json::Map<String, serde_json::Value> = (0..=255u8).map(|b| (load::byte_char(b).to_string(), b.into())).collect();
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
