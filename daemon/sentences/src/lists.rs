//! Slot lists: text values (each a template, with an output value, context and metadata),
//! number ranges (digits, and number words from the language's table), and wildcards. A text
//! list indexes its plain values by their case-folded text, so a list of a thousand device
//! names offers only the few that can match where the matcher stands, in hassil's order.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::template::Expr;
use crate::text::{casefold, lstrip, strip};

/// A list of values a `{slot}` may take.
#[derive(Debug, Clone)]
pub enum SlotList {
    /// Values given as text (or templates).
    Text(TextList),
    /// A range of numbers.
    Range(RangeList),
    /// Any text.
    Wildcard,
}

/// One value of a text list.
#[derive(Debug, Clone)]
pub struct TextValue {
    /// What is said: a template or a text.
    pub input: Expr,
    /// The slot's value (the matched text when `None`).
    pub out: Option<Value>,
    /// Context this value adds (`{"domain": "light"}`), which blocks' `requires_context` filter.
    pub context: Option<Map<String, Value>>,
    /// Metadata returned with the slot.
    pub metadata: Option<Value>,
}

/// A text list with its prefix index.
#[derive(Debug, Clone)]
pub struct TextList {
    values: Vec<TextValue>,
    /// Case-folded text of a plain value → the values with that text, in list order.
    index: HashMap<String, Vec<usize>>,
    /// The longest indexed text, in characters.
    longest: usize,
    /// Values that are templates or do not fold character for character: always tried.
    unindexed: Vec<usize>,
}

impl TextList {
    /// A list of `values`, indexed.
    pub fn new(values: Vec<TextValue>) -> Self {
        let mut index: HashMap<String, Vec<usize>> = HashMap::new();
        let mut unindexed = Vec::new();
        let mut longest = 0;
        for (i, v) in values.iter().enumerate() {
            match &v.input {
                Expr::Text(t) if strip(t).is_empty() => {}
                Expr::Text(t) => {
                    let t = lstrip(t);
                    let folded = casefold(t);
                    let n = folded.chars().count();
                    if n == t.chars().count() {
                        longest = longest.max(n);
                        index.entry(folded).or_default().push(i);
                    } else {
                        unindexed.push(i);
                    }
                }
                _ => unindexed.push(i),
            }
        }
        Self { values, index, longest, unindexed }
    }

    /// Every value, in list order.
    pub fn values(&self) -> &[TextValue] {
        &self.values
    }

    /// The values that can match at the start of `text` (hassil's `get_candidates`): indexed
    /// values whose text is a prefix of it, shortest first — also of the text with `-`/`_`
    /// as spaces — then the unindexed ones.
    pub(crate) fn candidates(&self, text: &str) -> Vec<usize> {
        let head: String = text.chars().take(self.longest + 1).collect();
        let folded = casefold(&head);
        let mut out = Vec::new();
        self.prefixes(&folded, &mut out);
        if folded.contains(['-', '_']) {
            self.prefixes(&folded.replace(['-', '_'], " "), &mut out);
        }
        out.extend_from_slice(&self.unindexed);
        out
    }

    fn prefixes(&self, folded: &str, out: &mut Vec<usize>) {
        for (n, (i, c)) in folded.char_indices().enumerate() {
            if n >= self.longest {
                break;
            }
            if let Some(found) = self.index.get(&folded[..i + c.len_utf8()]) {
                out.extend_from_slice(found);
            }
        }
    }
}

/// Fractions a range includes between its integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fractions {
    /// `.5`
    Halves,
    /// `.1` … `.9`
    Tenths,
}

impl Fractions {
    fn values(self) -> &'static [f64] {
        match self {
            Fractions::Halves => &[0.5],
            Fractions::Tenths => &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        }
    }

    /// The name in the data (`halves`, `tenths`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "halves" => Some(Fractions::Halves),
            "tenths" => Some(Fractions::Tenths),
            _ => None,
        }
    }
}

/// A number range.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeList {
    /// First value.
    pub start: i64,
    /// Last value (included).
    pub stop: i64,
    /// Step between values.
    pub step: i64,
    /// Fractions between the integers.
    pub fractions: Option<Fractions>,
    /// The slot's value is the number times this.
    pub multiplier: Option<f64>,
    /// Digits are accepted.
    pub digits: bool,
    /// Number words are accepted.
    pub words: bool,
    /// The language of the number words, when not the sentence's.
    pub words_language: Option<String>,
}

impl RangeList {
    /// An inline `{N..M[,step]:slot}` range.
    pub fn inline(start: i64, stop: i64, step: i64) -> Self {
        Self { start, stop, step, fractions: None, multiplier: None, digits: true, words: true, words_language: None }
    }

    /// Whether `number` (from digits) is one of the range's values.
    pub(crate) fn contains(&self, number: f64) -> bool {
        if self.step == 1 && self.fractions.is_none() {
            return (self.start as f64) <= number && number <= (self.stop as f64);
        }
        let mut i = self.start;
        while i <= self.stop {
            if i as f64 == number {
                return true;
            }
            if let Some(f) = self.fractions {
                if f.values().iter().any(|x| i as f64 + x == number) {
                    return true;
                }
            }
            i += self.step;
        }
        false
    }

    /// The key of the range's number-word table.
    pub(crate) fn key(&self) -> RangeKey {
        (self.start, self.stop, self.step, self.fractions)
    }
}

/// `(from, to, step, fractions)`.
pub(crate) type RangeKey = (i64, i64, i64, Option<Fractions>);

/// A number, as a range yields it: an integer from words, a float from digits or fractions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// A whole number said in words.
    Int(i64),
    /// A number given in digits, a fraction, or a multiplied value.
    Float(f64),
}

impl Number {
    /// The number times `m` (a float, as in Python).
    pub fn times(self, m: Option<f64>) -> Number {
        match (self, m) {
            (n, None) => n,
            (Number::Int(i), Some(m)) => Number::Float(i as f64 * m),
            (Number::Float(f), Some(m)) => Number::Float(f * m),
        }
    }

    /// As a JSON value.
    pub fn to_value(self) -> Value {
        match self {
            Number::Int(i) => Value::from(i),
            Number::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        }
    }
}

/// The number words of one range: each text with its numbers, grouped by first character.
#[derive(Debug, Clone, Default)]
pub struct NumberWords {
    /// (words as written, numbers) in insertion order, one entry per lower-cased text.
    entries: Vec<(String, Vec<Number>)>,
    /// First character (lower-cased) → entries, shortest first.
    by_first: HashMap<char, Vec<usize>>,
}

impl NumberWords {
    /// Words in the order the table lists them.
    pub fn new(words: impl IntoIterator<Item = (String, Number)>) -> Self {
        let mut entries: Vec<(String, Vec<Number>)> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        let mut by_first: HashMap<char, Vec<usize>> = HashMap::new();
        for (text, n) in words {
            let lower = text.to_lowercase();
            let Some(first) = lower.chars().next() else { continue };
            match at.get(&lower) {
                Some(&i) => entries[i].1.push(n),
                None => {
                    at.insert(lower, entries.len());
                    by_first.entry(first).or_default().push(entries.len());
                    entries.push((text, vec![n]));
                }
            }
        }
        for list in by_first.values_mut() {
            list.sort_by_key(|&i| entries[i].0.chars().count());
        }
        Self { entries, by_first }
    }

    /// Words found in `text` (only at its start when `anywhere` is false), as (start, end,
    /// words as written, number), by start then length, each text once — hassil's
    /// `Trie.find(text, ignore_case=True)`: the text is lower-cased, and a character that is not
    /// in the trie is tried once more with its case swapped.
    pub(crate) fn find(&self, text: &str, anywhere: bool) -> Vec<(usize, usize, &str, Number)> {
        // The whole text is lower-cased at once, as Python does (a final sigma becomes `ς`).
        let whole = text.to_lowercase();
        let lower: Vec<(usize, char)> = if whole.chars().count() == text.chars().count() {
            text.char_indices().map(|(i, _)| i).zip(whole.chars()).collect()
        } else {
            text.char_indices().flat_map(|(i, c)| c.to_lowercase().map(move |x| (i, x))).collect()
        };
        let mut out = Vec::new();
        let mut seen = vec![false; self.entries.len()];
        for start in 0..lower.len() {
            if start > 0 && !anywhere {
                break;
            }
            let c0 = lower[start].1;
            let other = swapped(c0).and_then(|u| u.to_lowercase().next()).filter(|l| *l != c0);
            let lists = [self.by_first.get(&c0), other.and_then(|o| self.by_first.get(&o))];
            for &i in lists.into_iter().flatten().flatten() {
                let (written, numbers) = &self.entries[i];
                if seen[i] {
                    continue;
                }
                let mut n = 0;
                let mut ok = true;
                for k in written.chars() {
                    match lower.get(start + n) {
                        Some(&(_, c)) if c == k || swapped(c) == Some(k) => n += 1,
                        _ => {
                            ok = false;
                            break;
                        }
                    }
                }
                if ok {
                    seen[i] = true;
                    let end = lower.get(start + n).map_or(text.len(), |&(b, _)| b);
                    for num in numbers {
                        out.push((lower[start].0, end, written.as_str(), *num));
                    }
                }
            }
        }
        out.sort_by_key(|&(st, end, _, _)| (st, end));
        out
    }
}

/// Python's `c.upper()` for a lower-case character, `c.lower()` otherwise, when one character.
fn swapped(c: char) -> Option<char> {
    let one = |mut it: std::iter::Peekable<std::vec::IntoIter<char>>| {
        let x = it.next()?;
        it.peek().is_none().then_some(x)
    };
    if c.is_lowercase() {
        one(c.to_uppercase().collect::<Vec<_>>().into_iter().peekable())
    } else {
        one(c.to_lowercase().collect::<Vec<_>>().into_iter().peekable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> TextValue {
        TextValue { input: Expr::Text(text.into()), out: None, context: None, metadata: None }
    }

    #[test]
    fn candidates_are_prefixes_shortest_first_then_templates() {
        let mut values = vec![value("kitchen light"), value("Kitchen"), value("garage"), value(" ")];
        values.push(TextValue { input: Expr::Seq(vec![]), out: None, context: None, metadata: None });
        let list = TextList::new(values);
        assert_eq!(list.candidates("kitchen light on"), vec![1, 0, 4]);
        assert_eq!(list.candidates("kitchen-light"), vec![1, 1, 0, 4]);
        assert_eq!(list.candidates("garden"), vec![4]);
    }

    #[test]
    fn ranges_with_steps_and_fractions() {
        let mut r = RangeList::inline(0, 100, 1);
        assert!(r.contains(100.0) && !r.contains(100.5));
        r.fractions = Some(Fractions::Halves);
        assert!(r.contains(20.5) && !r.contains(20.25));
        let r = RangeList::inline(1000, 10000, 100);
        assert!(r.contains(2700.0) && !r.contains(2750.0));
    }

    #[test]
    fn number_words_are_found_at_the_start_shortest_first() {
        let words = NumberWords::new([
            ("twenty".to_string(), Number::Int(20)),
            ("twenty-one".into(), Number::Int(21)),
            ("one".into(), Number::Int(1)),
        ]);
        let found = words.find("Twenty-one percent", false);
        assert_eq!(found.iter().map(|f| (f.1, f.3)).collect::<Vec<_>>(), vec![(6, Number::Int(20)), (10, Number::Int(21))]);
        let found = words.find("at twenty-one", true);
        assert_eq!(found.len(), 3);
    }
}
