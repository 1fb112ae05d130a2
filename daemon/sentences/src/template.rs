//! Sentence templates: hassil's syntax (`(a|b)` alternatives, `[optional]`, `(a;b)`
//! permutations, `{list}` / `{list:slot}` / `{1..10:slot}` / `{@capture}`, `<rule>`, `\` escapes)
//! parsed into an expression tree, chunk by chunk as hassil's `parser.py` and
//! `parse_expression.py` do, so that whitespace ends up in the same text chunks.

use crate::text::{is_space, normalize};

/// A template that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template {template:?}: {message}")]
pub struct ParseError {
    /// The template as written.
    pub template: String,
    /// What is wrong.
    pub message: String,
}

/// A node of a parsed template.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Literal text (normalized; matched case-insensitively as a prefix).
    Text(String),
    /// Every item in order.
    Seq(Vec<Expr>),
    /// One of the items; `[optional]` is an alternative with an empty text last.
    Alt(Vec<Expr>),
    /// Every item in any order.
    Perm(Vec<Expr>),
    /// A slot list.
    List(ListRef),
    /// An expansion rule, by name.
    Rule(String),
}

/// `{list}`, `{list:slot}`, `{list:@capture}`, `{@capture}` or `{N..M[,step]:slot}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListRef {
    /// The list's name.
    pub list: String,
    /// The slot the value goes into.
    pub slot: std::sync::Arc<str>,
    /// A capture (the response's only), not a slot.
    pub capture: bool,
    /// Whitespace follows the reference in the template.
    pub end_of_word: bool,
    /// `{N..M[,step]:slot}`: a range defined inline.
    pub inline_range: Option<(i64, i64, i64)>,
}

/// A parsed template and its text as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Sentence {
    /// The expression (always a group).
    pub expr: Expr,
    /// The template as written.
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Word,
    Group,
    Opt,
    List,
    Rule,
    AltSep,
    PermSep,
}

struct Chunk {
    text: Vec<char>,
    end: usize,
    kind: Kind,
}

fn peek(text: &[char], at: usize) -> Option<Kind> {
    Some(match *text.get(at)? {
        '(' => Kind::Group,
        '[' => Kind::Opt,
        '{' => Kind::List,
        '<' => Kind::Rule,
        '|' => Kind::AltSep,
        ';' => Kind::PermSep,
        _ => Kind::Word,
    })
}

fn find_end_delimiter(text: &[char], start: usize, open: char, close: char) -> Option<usize> {
    let mut depth = 1;
    let mut escaped = false;
    for (i, &c) in text.iter().enumerate().skip(start) {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
            continue;
        }
        if c == close {
            depth -= 1;
            if depth == 0 {
                return Some(i + 1);
            }
        }
        if c == open {
            depth += 1;
        }
    }
    None
}

fn find_end_word(text: &[char], start: usize) -> Option<usize> {
    let mut escaped = false;
    let mut separator = false;
    for (i, &c) in text.iter().enumerate().skip(start) {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
            continue;
        }
        if i > start && c == ' ' {
            separator = true;
            continue;
        }
        if separator && c != ' ' {
            return Some(i);
        }
        if matches!(c, '|' | ';' | '(' | '[' | '{' | '<' | ')' | ']' | '}' | '>') {
            return Some(i);
        }
    }
    (start < text.len()).then_some(text.len())
}

fn next_chunk(text: &[char], err: &impl Fn(&str) -> ParseError) -> Result<Option<Chunk>, ParseError> {
    let Some(kind) = peek(text, 0) else { return Ok(None) };
    let end = match kind {
        Kind::Word => find_end_word(text, 0).ok_or_else(|| err("unable to find the end of a word"))?,
        Kind::Group => find_end_delimiter(text, 1, '(', ')').ok_or_else(|| err("unable to find the end of group ')'"))?,
        Kind::Opt => find_end_delimiter(text, 1, '[', ']').ok_or_else(|| err("unable to find the end of optional ']'"))?,
        Kind::List => find_end_delimiter(text, 1, '{', '}').ok_or_else(|| err("unable to find the end of list '}'"))?,
        Kind::Rule => find_end_delimiter(text, 1, '<', '>').ok_or_else(|| err("unable to find the end of rule '>'"))?,
        Kind::AltSep | Kind::PermSep => 1,
    };
    Ok(Some(Chunk { text: text[..end].to_vec(), end, kind }))
}

fn remove_escapes(text: &[char]) -> String {
    let mut out = String::new();
    let mut it = text.iter();
    while let Some(&c) = it.next() {
        if c == '\\' {
            if let Some(&n) = it.next() {
                out.push(n);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// What a group is while its items are being read.
enum Building {
    Seq(Vec<Expr>),
    Alt(Vec<Expr>),
    Perm(Vec<Expr>),
}

impl Building {
    /// The group as an item of an enclosing alternative or permutation: hassil adds a
    /// permutation's spaces only when the permutation is the finished group itself.
    fn raw(self) -> Expr {
        match self {
            Building::Seq(items) => Expr::Seq(items),
            Building::Alt(items) => Expr::Alt(items),
            Building::Perm(items) => Expr::Perm(items),
        }
    }

    /// The finished group; each item of a permutation gets a space before and after
    /// (hassil's `_add_spaces_between_items`, which accepts only sequences as items).
    fn finish(self, err: &impl Fn(&str) -> ParseError) -> Result<Expr, ParseError> {
        let Building::Perm(items) = self else { return Ok(self.raw()) };
        let items = items
            .into_iter()
            .map(|item| match item {
                Expr::Seq(mut seq) => {
                    seq.insert(0, Expr::Text(" ".into()));
                    seq.push(Expr::Text(" ".into()));
                    Ok(Expr::Seq(seq))
                }
                _ => Err(err("a permutation's item is an alternative")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Expr::Perm(items))
    }
}

fn parse_group(chunk: &Chunk, err: &impl Fn(&str) -> ParseError) -> Result<Expr, ParseError> {
    let inner = &chunk.text[1..chunk.text.len() - 1];
    let mut grp = Building::Seq(Vec::new());
    let mut rest: &[char] = inner;
    while let Some(item) = next_chunk(rest, err)? {
        match item.kind {
            Kind::AltSep => {
                grp = match grp {
                    Building::Alt(mut items) => {
                        items.push(Expr::Seq(Vec::new()));
                        Building::Alt(items)
                    }
                    other => Building::Alt(vec![other.raw(), Expr::Seq(Vec::new())]),
                };
            }
            Kind::PermSep => {
                grp = match grp {
                    Building::Perm(mut items) => {
                        items.push(Expr::Seq(Vec::new()));
                        Building::Perm(items)
                    }
                    other => Building::Perm(vec![other.raw(), Expr::Seq(Vec::new())]),
                };
            }
            _ => {
                let end_of_word = rest.get(item.end).is_some_and(|c| is_space(*c));
                let expr = parse_expression(&item, end_of_word, err)?;
                match &mut grp {
                    Building::Seq(items) => items.push(expr),
                    Building::Alt(items) | Building::Perm(items) => match items.last_mut() {
                        Some(Expr::Seq(seq)) => seq.push(expr),
                        _ => return Err(err("an alternative or permutation continues after a group")),
                    },
                }
            }
        }
        rest = &rest[item.end..];
    }
    grp.finish(err)
}

fn parse_expression(chunk: &Chunk, end_of_word: bool, err: &impl Fn(&str) -> ParseError) -> Result<Expr, ParseError> {
    match chunk.kind {
        Kind::Word => Ok(Expr::Text(normalize(&remove_escapes(&chunk.text)))),
        Kind::Group => parse_group(chunk, err),
        Kind::Opt => {
            let mut items = match parse_group(chunk, err)? {
                Expr::Alt(items) => items,
                other => vec![other],
            };
            items.push(Expr::Text(String::new()));
            Ok(Expr::Alt(items))
        }
        Kind::List => {
            let text = remove_escapes(&chunk.text);
            let name = &text[1..text.len() - 1];
            Ok(Expr::List(list_ref(name, end_of_word)))
        }
        Kind::Rule => {
            let text = remove_escapes(&chunk.text);
            Ok(Expr::Rule(text[1..text.len() - 1].to_string()))
        }
        Kind::AltSep | Kind::PermSep => Err(err("unexpected separator")),
    }
}

fn list_ref(name: &str, end_of_word: bool) -> ListRef {
    if let Some((list, slot)) = name.split_once(':') {
        let (slot, capture) = match slot.strip_prefix('@') {
            Some(s) => (s, true),
            None => (slot, false),
        };
        ListRef { list: list.into(), slot: slot.into(), capture, end_of_word, inline_range: inline_range(list) }
    } else if let Some(list) = name.strip_prefix('@') {
        ListRef { list: list.into(), slot: list.into(), capture: true, end_of_word, inline_range: None }
    } else {
        ListRef { list: name.into(), slot: name.into(), capture: false, end_of_word, inline_range: None }
    }
}

/// `^(\d+)..(\d+)(?:,(\d+))?$` (the `..` being any two characters, as in hassil's pattern).
fn inline_range(list: &str) -> Option<(i64, i64, i64)> {
    let digits = |s: &str| s.chars().take_while(|c| c.is_ascii_digit()).map(char::len_utf8).sum::<usize>();
    let n = digits(list);
    if n == 0 {
        return None;
    }
    let start: i64 = list[..n].parse().ok()?;
    let mut rest = list[n..].chars();
    rest.next()?;
    rest.next()?;
    let rest = rest.as_str();
    let m = digits(rest);
    if m == 0 {
        return None;
    }
    let stop: i64 = rest[..m].parse().ok()?;
    let tail = &rest[m..];
    if tail.is_empty() {
        return Some((start, stop, 1));
    }
    let step = tail.strip_prefix(',')?;
    if step.is_empty() || !step.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((start, stop, step.parse().ok()?))
}

/// Parses one template (hassil's `parse_sentence`).
pub fn parse(template: &str) -> Result<Sentence, ParseError> {
    let err = |message: &str| ParseError { template: template.to_string(), message: message.to_string() };
    let wrapped: Vec<char> = format!("({})", template.trim_matches(is_space)).chars().collect();
    let chunk = next_chunk(&wrapped, &err)?.ok_or_else(|| err("empty template"))?;
    if chunk.kind != Kind::Group || chunk.end != wrapped.len() {
        return Err(err("unbalanced brackets"));
    }
    let mut expr = parse_expression(&chunk, true, &err)?;
    if let Expr::Seq(items) | Expr::Alt(items) | Expr::Perm(items) = &expr {
        if items.len() == 1 && matches!(items[0], Expr::Seq(_) | Expr::Alt(_) | Expr::Perm(_)) {
            expr = items[0].clone();
        }
    }
    Ok(Sentence { expr, text: template.to_string() })
}

/// True if `text` uses template syntax (hassil's `is_template`).
pub fn is_template(text: &str) -> bool {
    text.contains(['(', ')', '{', '}', '<', '>', '[', ']', '|', '@'])
}

/// A list value's input: a template if it uses the syntax, else its normalized text.
pub fn value_input(text: &str, allow_template: bool) -> Result<Expr, ParseError> {
    if allow_template && is_template(text) {
        Ok(parse(text)?.expr)
    } else {
        Ok(Expr::Text(normalize(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Expr {
        Expr::Text(s.into())
    }

    #[test]
    fn words_keep_their_trailing_space() {
        let s = parse("turn on [the] {name}").unwrap();
        let Expr::Seq(items) = s.expr else { panic!() };
        assert_eq!(items[0], t("turn "));
        assert_eq!(items[1], t("on "));
        assert_eq!(items[2], Expr::Alt(vec![Expr::Seq(vec![t("the")]), t("")]));
        assert_eq!(items[3], t(" "));
        assert!(matches!(&items[4], Expr::List(l) if l.list == "name" && &*l.slot == "name" && !l.end_of_word));
    }

    #[test]
    fn alternatives_permutations_and_ranges() {
        let s = parse("(a|b c)").unwrap();
        assert_eq!(s.expr, Expr::Alt(vec![Expr::Seq(vec![t("a")]), Expr::Seq(vec![t("b "), t("c")])]));
        let s = parse("(x;y)").unwrap();
        assert_eq!(s.expr, Expr::Perm(vec![Expr::Seq(vec![t(" "), t("x"), t(" ")]), Expr::Seq(vec![t(" "), t("y"), t(" ")])]));
        let s = parse("{1..100,5:pct}").unwrap();
        let Expr::Seq(items) = s.expr else { panic!() };
        assert!(matches!(&items[0], Expr::List(l) if l.inline_range == Some((1, 100, 5)) && &*l.slot == "pct"));
        assert!(parse("(unclosed").is_err());
    }
}
