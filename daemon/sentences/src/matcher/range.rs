//! Number ranges: digits at the start (or, after an open wildcard, anywhere) and the number
//! words of the language's table, as hassil's range matcher finds them.

use std::rc::Rc;

use super::{extend_wildcard, lstrip, m, next_char, strip, Budget, Ctx, Entity, Scope, K};
use crate::lists::{Number, RangeList};
use crate::template::{Expr, ListRef};

/// `\s*-?[0-9]+` (and `([.,][0-9]+)?` with fractions) at `from`: (start, end) in bytes.
fn number_at(text: &str, from: usize, fractions: bool) -> Option<(usize, usize)> {
    let t = &text[from..];
    let mut i = t.len() - lstrip(t).len();
    if t[i..].starts_with('-') {
        i += 1;
    }
    let digits = t[i..].bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    i += digits;
    if fractions && (t[i..].starts_with('.') || t[i..].starts_with(',')) {
        let more = t[i + 1..].bytes().take_while(u8::is_ascii_digit).count();
        if more > 0 {
            i += 1 + more;
        }
    }
    Some((from, from + i))
}

/// Every non-overlapping number in `text`, left to right (`finditer`).
fn numbers_in(text: &str, fractions: bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while from < text.len() {
        match number_at(text, from, fractions) {
            Some((st, end)) => {
                out.push((st, end));
                from = end;
            }
            None => from += next_char(&text[from..]),
        }
    }
    out
}

pub(super) fn range_list(s: &Scope, ctx: &Ctx, r: &ListRef, range: &RangeList, b: &mut Budget, k: K) {
    let wildcard = ctx.open_wildcard().cloned();
    let text = ctx.rest();
    if !b.scan(if wildcard.is_some() { text.len() * 4 } else { 0 }) {
        return;
    }
    let fractions = range.fractions.is_some();
    let matches: Vec<(usize, usize)> = match &wildcard {
        None => number_at(text, 0, fractions).into_iter().collect(),
        Some(_) => numbers_in(text, fractions),
    };
    let slot = &r.slot;
    let mut digits_match = false;
    if range.digits {
        for &(start, end) in &matches {
            let number_text = &text[start..end];
            let Ok(number) = strip(number_text).replace(',', ".").parse::<f64>() else { continue };
            if !range.contains(number) {
                continue;
            }
            digits_match = true;
            let value = Number::Float(number).times(range.multiplier);
            let mut c = ctx.with_text(&ctx.text, ctx.at + end);
            let entity = Entity {
                name: slot.clone(),
                value: value.to_value(),
                text: number_text.to_string(),
                metadata: None,
                wildcard: false,
                open: false,
                end_of_word: false,
            };
            if let Some(w) = &wildcard {
                let ents = Rc::make_mut(&mut c.entities);
                let last = ents.len() - 1;
                ents[last] = extend_wildcard(w, &text[..start]);
                ents.push(entity);
                c.close_wildcards();
            } else {
                c.push(entity);
            }
            k(c, b);
            if b.exceeded {
                return;
            }
        }
    }
    if !range.words || digits_match || !matches.is_empty() {
        return;
    }
    let language = range.words_language.as_deref().unwrap_or(s.words_language);
    let Some(words) = s.lang.number_words(language, range) else { return };
    for (start, end, written, number) in words.find(text, wildcard.is_some()) {
        let _ = end;
        let value = number.times(range.multiplier);
        let entity = Entity {
            name: slot.clone(),
            value: value.to_value(),
            text: written.to_string(),
            metadata: None,
            wildcard: false,
            open: false,
            end_of_word: false,
        };
        let mut c = ctx.clone();
        match &wildcard {
            None => c.push(entity),
            Some(w) => {
                c.at += start;
                let ents = Rc::make_mut(&mut c.entities);
                let last = ents.len() - 1;
                ents[last] = extend_wildcard(w, &text[..start]);
                ents.push(entity);
                c.close_wildcards();
            }
        }
        m(s, &c, &Expr::Text(written.to_string()), b, k);
        if b.exceeded {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_as_pythons_patterns_find_them() {
        assert_eq!(number_at(" 20.5 degrees", 0, true), Some((0, 5)));
        assert_eq!(number_at("20.5", 0, false), Some((0, 2)));
        assert_eq!(number_at("-3,5", 0, true), Some((0, 4)));
        assert_eq!(number_at("x1", 0, false), None);
        assert_eq!(numbers_in("set 5 to 10", false), vec![(3, 5), (8, 11)]);
    }
}
