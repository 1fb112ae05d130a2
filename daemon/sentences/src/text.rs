//! Text as hassil sees it: whitespace and Unicode normalization, punctuation removed only at
//! word edges, skip words, and the character classes and case-insensitive comparisons of
//! Python's `re` (`\w`, `\s`, `IGNORECASE`) that its matcher is written in.

use unicode_general_category::{get_general_category, GeneralCategory as G};
use unicode_normalization::UnicodeNormalization;

/// Punctuation that is removed at word edges (hassil's `PUNCTUATION_STR`).
const PUNCTUATION: &str = ".。,，?¿？؟!¡！;；:：’…—–―";

/// Python's `str.isspace()` (and `\s` in a `str` pattern).
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}

/// Python's `\w` in a `str` pattern: letters (L*), numbers with a numeric value, `_`.
pub(crate) fn is_word(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    matches!(
        get_general_category(c),
        G::UppercaseLetter
            | G::LowercaseLetter
            | G::TitlecaseLetter
            | G::ModifierLetter
            | G::OtherLetter
            | G::DecimalNumber
            | G::LetterNumber
            | G::OtherNumber
    )
}

fn is_punct(c: char) -> bool {
    PUNCTUATION.contains(c)
}

fn is_punct_no_period(c: char) -> bool {
    c != '.' && is_punct(c)
}

/// A character of CJK scripts, between which whitespace is ignored (`ignore_whitespace`).
pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c, '\u{4e00}'..='\u{9fff}' | '\u{3400}'..='\u{4dbf}' | '\u{3040}'..='\u{30ff}' | '\u{ac00}'..='\u{d7af}')
}

/// Case-insensitive equality of two characters as Python's `re.IGNORECASE` decides it.
pub(crate) fn same_ignoring_case(a: char, b: char) -> bool {
    if a == b {
        return true;
    }
    let lower = |c: char| {
        let mut l = c.to_lowercase();
        match (l.next(), l.next()) {
            (Some(x), None) => x,
            _ => c,
        }
    };
    let upper = |c: char| {
        let mut u = c.to_uppercase();
        match (u.next(), u.next()) {
            (Some(x), None) => x,
            _ => c,
        }
    };
    lower(a) == lower(b) || upper(a) == upper(b)
}

/// The byte length in `text` of `prefix` matched case-insensitively at its start (hassil's
/// `match_start`), if it matches.
pub(crate) fn match_start(text: &str, prefix: &str) -> Option<usize> {
    if prefix.is_ascii() {
        let (t, p) = (text.as_bytes(), prefix.as_bytes());
        // An ASCII prefix matches ASCII text byte for byte; only non-ASCII text (the Kelvin
        // sign, a dotless i) needs the character comparison below.
        if t.len() >= p.len() && text.is_char_boundary(p.len()) && t[..p.len()].is_ascii() {
            return t[..p.len()].eq_ignore_ascii_case(p).then_some(p.len());
        }
    }
    let mut t = text.char_indices();
    for p in prefix.chars() {
        match t.next() {
            Some((_, c)) if same_ignoring_case(c, p) => {}
            _ => return None,
        }
    }
    Some(t.next().map_or(text.len(), |(i, _)| i))
}

/// The byte offset of the first case-insensitive occurrence of `prefix` in `text` at or after
/// byte `from`, optionally only where a `\b` word boundary precedes it (hassil's `match_first`:
/// the text is sliced at `from` first, so the boundary does not see the character before it).
pub(crate) fn match_first(text: &str, prefix: &str, from: usize, start_of_word: bool) -> Option<usize> {
    let slice = &text[from..];
    let first = prefix.chars().next();
    let mut prev: Option<char> = None;
    for (i, c) in slice.char_indices() {
        let boundary_ok = !start_of_word || {
            let before = prev.is_some_and(is_word);
            let after = first.is_some() && is_word(c);
            before != after
        };
        if boundary_ok && match_start(&slice[i..], prefix).is_some() {
            return Some(from + i);
        }
        prev = Some(c);
    }
    if prefix.is_empty() {
        let boundary_ok = !start_of_word || prev.is_some_and(is_word);
        return boundary_ok.then_some(text.len());
    }
    None
}

/// Each run of whitespace as one space (`\s+` → ` `).
fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if is_space(c) {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out
}

/// Whitespace runs as one space, NFC, `’` as `'` (hassil's `normalize_text`).
pub fn normalize(text: &str) -> String {
    let nfc: String = collapse_whitespace(text).nfc().collect();
    nfc.replace('’', "'")
}

/// Python's `str.strip()`.
pub(crate) fn strip(text: &str) -> &str {
    rstrip(lstrip(text))
}

fn rstrip(text: &str) -> &str {
    let ascii = text.bytes().rev().take_while(|b| b.is_ascii_whitespace() || *b == 0x0b).count();
    let t = &text[..text.len() - ascii];
    if t.as_bytes().last().is_some_and(|b| !b.is_ascii()) {
        return t.trim_end_matches(is_space);
    }
    t
}

/// Python's `str.lstrip()`.
pub(crate) fn lstrip(text: &str) -> &str {
    let ascii = text.bytes().take_while(|b| b.is_ascii_whitespace() || *b == 0x0b).count();
    let t = &text[ascii..];
    if t.as_bytes().first().is_some_and(|b| !b.is_ascii()) {
        return t.trim_start_matches(is_space);
    }
    t
}

/// Punctuation removed from the start and end of the text and of words (hassil's
/// `remove_punctuation`, regular expression by regular expression).
pub fn remove_punctuation(text: &str) -> String {
    if !text.contains(is_punct) {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    let chars = remove_leading(&chars);
    let chars = if initialism_at_end(&chars) { chars } else { remove_trailing(&chars) };
    let chars = remove_runs(&chars, is_punct, |before| before.is_some_and(|c| !is_word(c)), |after| after.is_some_and(is_word), false);
    let chars =
        remove_runs(&chars, is_punct_no_period, |before| before.is_some_and(is_word), |after| after.is_some_and(|c| !is_word(c)), true);
    let chars = remove_end_periods(&chars);
    let chars =
        remove_runs(&chars, is_punct, |before| before.is_some_and(|c| !is_word(c)), |after| after.is_some_and(|c| !is_word(c)), true);
    chars.into_iter().collect()
}

/// `^[P]+`
fn remove_leading(chars: &[char]) -> Vec<char> {
    let n = chars.iter().take_while(|c| is_punct(**c)).count();
    chars[n..].to_vec()
}

/// `[P]+$`
fn remove_trailing(chars: &[char]) -> Vec<char> {
    let n = chars.iter().rev().take_while(|c| is_punct(**c)).count();
    chars[..chars.len() - n].to_vec()
}

/// `\b(?:\w\.){2,}$`
fn initialism_at_end(chars: &[char]) -> bool {
    let mut end = chars.len();
    let mut pairs = 0;
    while end >= 2 && chars[end - 1] == '.' && is_word(chars[end - 2]) {
        pairs += 1;
        end -= 2;
        if pairs >= 2 && (end == 0 || !is_word(chars[end - 1])) {
            return true;
        }
    }
    false
}

/// `(?<=before)[class]+(?=after)` replaced by nothing, with the regex engine's backtracking:
/// when the whole run is not followed by `after`, a run one shorter is (the next character
/// being punctuation, which is not a word character) if `shorter_ok`.
fn remove_runs(
    chars: &[char],
    class: fn(char) -> bool,
    before: impl Fn(Option<char>) -> bool,
    after: impl Fn(Option<char>) -> bool,
    shorter_ok: bool,
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let prev = i.checked_sub(1).map(|p| chars[p]);
        if class(chars[i]) && before(prev) {
            let run = chars[i..].iter().take_while(|c| class(**c)).count();
            let take = if after(chars.get(i + run).copied()) {
                run
            } else if shorter_ok && run >= 2 && after(Some(chars[i + run - 1])) {
                run - 1
            } else {
                0
            };
            if take > 0 {
                i += take;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// `(?<!\w\.\w)\.(?=\W)`
fn remove_end_periods(chars: &[char]) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == '.' && chars.get(i + 1).is_some_and(|n| !is_word(*n)) {
            let initialism = i >= 3 && is_word(chars[i - 3]) && chars[i - 2] == '.' && is_word(chars[i - 1]);
            if !initialism {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// The text a sentence is matched against: normalized, punctuation removed, stripped
/// (hassil's `normalize_for_matching`).
pub fn for_matching(text: &str) -> String {
    strip(&remove_punctuation(&normalize(text))).to_string()
}

/// Removes whitespace between two CJK characters.
pub(crate) fn remove_cjk_whitespace(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if is_space(chars[i]) && i > 0 && is_cjk(chars[i - 1]) {
            let run = chars[i..].iter().take_while(|c| is_space(**c)).count();
            if chars.get(i + run).is_some_and(|c| is_cjk(*c)) {
                i += run;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Which skip words to remove (hassil's `remove_skip_words` `start`/`end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SkipAt {
    Anywhere,
    Start,
    End,
}

/// Skip words, longest first, without duplicates or blanks (the order hassil's alternation
/// tries them in).
pub(crate) fn skip_word_order(words: &[String]) -> Vec<String> {
    let mut unique: Vec<String> = Vec::new();
    for w in words {
        let w = strip(w).to_string();
        if !w.is_empty() && !unique.contains(&w) {
            unique.push(w);
        }
    }
    // Python sorts a set, whose order among equal lengths is arbitrary; among equal
    // lengths the regex alternation's outcome does not depend on the order.
    unique.sort_by_key(|w| std::cmp::Reverse(w.chars().count()));
    unique
}

fn collapse_and_strip(text: &str) -> String {
    strip(&collapse_whitespace(text)).to_string()
}

/// The byte length of the first skip word that matches at the start of `text` with
/// `accept(next char)` true after it.
fn skip_word_at(text: &str, words: &[String], accept: impl Fn(Option<char>) -> bool) -> Option<usize> {
    words.iter().find_map(|w| match_start(text, w).filter(|&end| accept(text[end..].chars().next())))
}

/// Skip words removed from `text` (hassil's `remove_skip_words_tracked`); `words` in
/// [`skip_word_order`].
pub(crate) fn remove_skip_words(text: &str, words: &[String], ignore_whitespace: bool, at: SkipAt) -> String {
    if words.is_empty() {
        return text.to_string();
    }
    match (ignore_whitespace, at) {
        (true, SkipAt::Anywhere) => {
            let mut out = String::with_capacity(text.len());
            let mut i = 0;
            while i < text.len() {
                if let Some(n) = skip_word_at(&text[i..], words, |_| true) {
                    if n > 0 {
                        i += n;
                        continue;
                    }
                }
                let c = text[i..].chars().next().expect("in bounds");
                out.push(c);
                i += c.len_utf8();
            }
            out
        }
        (true, SkipAt::Start) => {
            let mut t = text.to_string();
            while let Some(n) = skip_word_at(&t, words, |_| true).filter(|n| *n > 0) {
                t = t[n..].to_string();
            }
            t
        }
        (true, SkipAt::End) => {
            let mut t = text.to_string();
            while let Some(start) = suffix_skip_word(&t, words, false) {
                t.truncate(start);
            }
            t
        }
        (false, SkipAt::Anywhere) => {
            let mut out = String::with_capacity(text.len());
            let mut i = 0;
            let mut prev: Option<char> = None;
            while i < text.len() {
                if !prev.is_some_and(is_word) {
                    if let Some(n) = skip_word_at(&text[i..], words, |next| !next.is_some_and(is_word)) {
                        out.push(' ');
                        i += n;
                        prev = text[..i].chars().next_back();
                        continue;
                    }
                }
                let c = text[i..].chars().next().expect("in bounds");
                out.push(c);
                prev = Some(c);
                i += c.len_utf8();
            }
            collapse_and_strip(&out)
        }
        (false, SkipAt::Start) => {
            let mut t = text.to_string();
            loop {
                let trimmed = lstrip(&t);
                let next = match skip_word_at(trimmed, words, |next| next.is_none_or(|c| is_space(c) || !is_word(c))) {
                    Some(n) => collapse_and_strip(lstrip(&trimmed[n..])),
                    None => collapse_and_strip(&t),
                };
                if next == t {
                    return t;
                }
                t = next;
            }
        }
        (false, SkipAt::End) => {
            let mut t = text.to_string();
            loop {
                let next = match suffix_skip_word(t.trim_end_matches(is_space), words, true) {
                    Some(start) => collapse_and_strip(&t[..start]),
                    None => collapse_and_strip(&t),
                };
                if next == t {
                    return t;
                }
                t = next;
            }
        }
    }
}

/// The start of the earliest skip word that ends `text` (optionally not preceded by a word
/// character).
fn suffix_skip_word(text: &str, words: &[String], boundary: bool) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, _) in text.char_indices() {
        if boundary && text[..i].chars().next_back().is_some_and(is_word) {
            continue;
        }
        if words.iter().any(|w| match_start(&text[i..], w) == Some(text.len() - i)) {
            best = Some(i);
            break;
        }
    }
    best
}

/// Full Unicode case folding (Python's `str.casefold`).
pub(crate) fn casefold(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    caseless::default_case_fold_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctuation_goes_only_at_word_edges() {
        assert_eq!(for_matching("Turn on the light, please!"), "Turn on the light please");
        assert_eq!(for_matching("  set it to 20.5 degrees. "), "set it to 20.5 degrees");
        assert_eq!(for_matching("what's the temperature?"), "what's the temperature");
        assert_eq!(for_matching("the U.S.A."), "the U.S.A.");
        assert_eq!(for_matching("a,,b"), "a,b");
        assert_eq!(for_matching("l’entrée"), "l'entrée");
    }

    #[test]
    fn skip_words_are_whole_words() {
        let words = skip_word_order(&["please".into(), "can you".into()]);
        assert_eq!(remove_skip_words("can you turn on the light please", &words, false, SkipAt::Anywhere), "turn on the light");
        assert_eq!(remove_skip_words("pleased", &words, false, SkipAt::Anywhere), "pleased");
        assert_eq!(remove_skip_words("please play please", &words, false, SkipAt::Start), "play please");
        assert_eq!(remove_skip_words("please play please", &words, false, SkipAt::End), "please play");
    }

    #[test]
    fn prefix_matching_ignores_case_and_word_boundaries_come_from_the_caller() {
        assert_eq!(match_start("Kitchen light ", "kitchen"), Some(7));
        assert_eq!(match_first("the lights on", "light", 0, true), Some(4));
        assert_eq!(match_first("flight", "light", 0, true), None);
        assert_eq!(match_first("flight", "light", 0, false), Some(1));
    }
}
