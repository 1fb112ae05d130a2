//! Matching one template against a text: hassil's `match_expression`, written as a
//! depth-first search that hands each way the template can consume the text to a
//! continuation, in the order hassil's generators yield them. Every step is counted against a
//! budget, so no text and no template can make the work unbounded.

use std::rc::Rc;

use serde_json::{Map, Value};

use crate::context::{excluded_ok, required_ok};
use crate::lists::{RangeList, SlotList, TextList};
use crate::template::{Expr, ListRef};
use crate::text::{is_space, lstrip, match_first, match_start, remove_cjk_whitespace, strip};
use crate::Block;

/// A slot found in the text.
#[derive(Debug, Clone)]
pub(crate) struct Entity {
    pub name: std::sync::Arc<str>,
    pub value: Value,
    pub text: String,
    pub metadata: Option<Value>,
    pub wildcard: bool,
    pub open: bool,
    pub end_of_word: bool,
}

/// Where a match stands: the text left, the slots so far, the context.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    text: Rc<str>,
    at: usize,
    /// The text holds a `-` or `_` (which the matcher retries as spaces).
    dashes: bool,
    pub entities: Rc<Vec<Entity>>,
    pub context: Rc<Map<String, Value>>,
    start_of_word: bool,
    pub chunks: usize,
}

impl Ctx {
    pub fn new(text: Rc<str>, context: Rc<Map<String, Value>>) -> Self {
        let dashes = text.contains(['-', '_']);
        Self { text, at: 0, dashes, entities: Rc::new(Vec::new()), context, start_of_word: true, chunks: 0 }
    }

    pub fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn with_text(&self, text: &Rc<str>, at: usize) -> Ctx {
        let dashes = if Rc::ptr_eq(text, &self.text) { self.dashes } else { text.contains(['-', '_']) };
        Ctx { text: text.clone(), at, dashes, ..self.clone() }
    }

    fn open_wildcard(&self) -> Option<&Entity> {
        self.entities.last().filter(|e| e.wildcard && e.open)
    }

    /// Closes open wildcards (hassil's `close_wildcards`).
    fn close_wildcards(&mut self) {
        if self.entities.iter().any(|e| e.wildcard && e.open) {
            let ents = Rc::make_mut(&mut self.entities);
            for e in ents.iter_mut() {
                e.open = false;
            }
        }
    }

    fn push(&mut self, e: Entity) {
        Rc::make_mut(&mut self.entities).push(e);
    }

    pub fn take_rest(&mut self) {
        self.at = self.text.len();
    }
}

/// The work a recognition may do: steps of the search.
#[derive(Debug)]
pub(crate) struct Budget {
    pub left: u64,
    pub exceeded: bool,
}

/// Bytes of text one step pays for when a step scans the text (a wildcard looking ahead for
/// the next word, numbers searched anywhere), so long inputs cost steps in proportion.
const BYTES_PER_STEP: usize = 64;

impl Budget {
    fn step(&mut self) -> bool {
        self.charge(1)
    }

    /// Takes `steps` from the budget; false (and `exceeded`) once it is spent.
    fn charge(&mut self, steps: u64) -> bool {
        if self.left < steps {
            self.left = 0;
            self.exceeded = true;
            return false;
        }
        self.left -= steps;
        true
    }

    /// Pays for scanning `bytes` of text.
    fn scan(&mut self, bytes: usize) -> bool {
        self.charge((bytes / BYTES_PER_STEP) as u64)
    }
}

/// What a match may use: the block, the lists and rules in scope, the number words.
pub(crate) struct Scope<'a> {
    pub block: &'a Block,
    pub lang: &'a crate::Language,
    pub caller: &'a crate::SlotLists,
    pub words_language: &'a str,
}

impl Scope<'_> {
    fn list(&self, name: &str) -> Option<&SlotList> {
        self.block.lists.get(name).or_else(|| self.caller.get(name)).or_else(|| self.lang.lists.get(name))
    }

    fn rule(&self, name: &str) -> Option<&Expr> {
        self.block.rules.get(name).or_else(|| self.lang.rules.get(name)).map(|s| &s.expr)
    }
}

type K<'k> = &'k mut dyn FnMut(Ctx, &mut Budget);

mod range;
use range::range_list;

/// Hands every way `expr` matches at `ctx` to `k`.
pub(crate) fn m(s: &Scope, ctx: &Ctx, expr: &Expr, b: &mut Budget, k: K) {
    if !b.step() {
        return;
    }
    match expr {
        Expr::Text(chunk) => text(s, ctx, chunk, expr, b, k),
        Expr::Alt(items) => {
            for item in items {
                m(s, ctx, item, b, k);
            }
        }
        Expr::Seq(items) => {
            if !items.is_empty() {
                seq(s, ctx, items, b, k);
            }
        }
        Expr::Perm(items) => perm(s, ctx, items, 0, b, k),
        Expr::List(r) => list(s, ctx, r, b, k),
        Expr::Rule(name) => {
            if let Some(body) = s.rule(name) {
                m(s, ctx, body, b, k);
            }
        }
    }
}

fn seq(s: &Scope, ctx: &Ctx, items: &[Expr], b: &mut Budget, k: K) {
    match items {
        [] => k(ctx.clone(), b),
        [only] => m(s, ctx, only, b, k),
        [first, rest @ ..] => m(s, ctx, first, b, &mut |c, b| seq(s, &c, rest, b, k)),
    }
}

/// A permutation: each unused item first, then the rest in any order (`used` is a bit set).
fn perm(s: &Scope, ctx: &Ctx, items: &[Expr], used: u64, b: &mut Budget, k: K) {
    let left: Vec<usize> = (0..items.len()).filter(|i| used & (1 << i) == 0).collect();
    match left.as_slice() {
        [] => k(ctx.clone(), b),
        [only] => m(s, ctx, &items[*only], b, k),
        _ => {
            for &i in &left {
                m(s, ctx, &items[i], b, &mut |c, b| perm(s, &c, items, used | (1 << i), b, k));
            }
        }
    }
}

fn next_char(text: &str) -> usize {
    text.chars().next().map_or(text.len(), char::len_utf8)
}

fn text(s: &Scope, ctx: &Ctx, chunk: &str, expr: &Expr, b: &mut Budget, k: K) {
    let ignore_ws = s.lang.ignore_whitespace;
    if (ctx.dashes && !b.scan(ctx.rest().len())) || (ignore_ws && !b.scan(ctx.rest().len() * 8)) {
        return;
    }
    let (chunk_text, buf, mut at): (std::borrow::Cow<str>, Rc<str>, usize) = if ignore_ws {
        let ct = remove_cjk_whitespace(ctx.rest());
        let chunk_text = remove_cjk_whitespace(chunk);
        if ct.len() == ctx.rest().len() {
            (chunk_text.into(), ctx.text.clone(), ctx.at)
        } else {
            (chunk_text.into(), ct.into(), 0)
        }
    } else if ctx.start_of_word {
        let rest = ctx.rest();
        let stripped = lstrip(rest);
        (lstrip(chunk).into(), ctx.text.clone(), ctx.at + (rest.len() - stripped.len()))
    } else {
        (chunk.into(), ctx.text.clone(), ctx.at)
    };
    let context_text = &buf[at..];
    let context_empty = strip(context_text).is_empty();
    if chunk.is_empty() {
        k(ctx.clone(), b);
        return;
    }
    if let Some(w) = ctx.open_wildcard().filter(|w| strip(&w.text).is_empty()) {
        if strip(&chunk_text).is_empty() {
            let mut c = ctx.with_text(&buf, at);
            c.start_of_word = true;
            k(c, b);
            return;
        }
        let eow = !ignore_ws && w.end_of_word;
        if !b.scan(context_text.len()) {
            return;
        }
        let Some(mut start) = match_first(context_text, &chunk_text, 0, eow) else { return };
        if start == 0 {
            match match_first(context_text, &chunk_text, next_char(context_text), eow) {
                Some(i) => start = i,
                None => return,
            }
        }
        let mut without = (*ctx.entities).clone();
        let name = without.pop().expect("an open wildcard").name;
        while start > 0 {
            let wildcard_text = &context_text[..start];
            if !b.scan(start * 2) {
                return;
            }
            let mut ents = without.clone();
            ents.push(Entity {
                name: name.clone(),
                value: Value::String(wildcard_text.to_string()),
                text: wildcard_text.to_string(),
                metadata: None,
                wildcard: true,
                open: false,
                end_of_word: false,
            });
            let mut c = ctx.with_text(&buf, at + start);
            c.entities = Rc::new(ents);
            c.start_of_word = true;
            m(s, &c, expr, b, k);
            if b.exceeded {
                return;
            }
            let from = start + next_char(&context_text[start..]);
            if from > context_text.len() {
                break;
            }
            if !b.scan(context_text.len() - from) {
                return;
            }
            match match_first(context_text, &chunk_text, from, false) {
                Some(i) => start = i,
                None => break,
            }
        }
        return;
    }
    if let Some(end) = match_start(context_text, &chunk_text) {
        let stripped = strip(&chunk_text);
        let mut c = ctx.with_text(&buf, at + end);
        c.start_of_word = chunk.ends_with([' ', '\'']);
        if !stripped.is_empty() {
            c.chunks += stripped.chars().count();
            c.close_wildcards();
        }
        k(c, b);
    } else if context_empty && !chunk_text.is_empty() && chunk_text.chars().all(is_space) {
        k(ctx.clone(), b);
    } else if (if Rc::ptr_eq(&buf, &ctx.text) { ctx.dashes } else { true }) && context_text.contains(['-', '_']) {
        let broken: Rc<str> = context_text.replace(['-', '_'], " ").into();
        at = 0;
        if let Some(end) = match_start(&broken, &chunk_text) {
            let mut c = ctx.with_text(&broken, at + end);
            if !strip(&chunk_text).is_empty() {
                c.close_wildcards();
            }
            k(c, b);
        }
    }
}

fn list(s: &Scope, ctx: &Ctx, r: &ListRef, b: &mut Budget, k: K) {
    let inline;
    let slot_list = match (s.list(&r.list), r.inline_range) {
        (Some(l), _) => l,
        (None, Some((start, stop, step))) => {
            inline = SlotList::Range(RangeList::inline(start, stop, step));
            &inline
        }
        (None, None) => return,
    };
    if ctx.rest().is_empty() {
        return;
    }
    match slot_list {
        SlotList::Text(list) => text_list(s, ctx, r, list, b, k),
        SlotList::Range(range) => range_list(s, ctx, r, range, b, k),
        SlotList::Wildcard => {
            let mut c = ctx.clone();
            c.push(Entity {
                name: r.slot.clone(),
                value: Value::String(String::new()),
                text: String::new(),
                metadata: None,
                wildcard: true,
                open: true,
                end_of_word: r.end_of_word,
            });
            k(c, b);
        }
    }
}

fn text_list(s: &Scope, ctx: &Ctx, r: &ListRef, list: &TextList, b: &mut Budget, k: K) {
    let required = &s.block.requires_context;
    let excluded = &s.block.excludes_context;
    let anchored = ctx.open_wildcard().is_none() && !s.lang.ignore_whitespace && ctx.start_of_word;
    let anchored_text = lstrip(ctx.rest());
    let candidates: Vec<usize> =
        if anchored && !anchored_text.is_empty() { list.candidates(anchored_text) } else { (0..list.values().len()).collect() };
    if !b.scan(ctx.rest().len()) {
        return;
    }
    let rest_chars = ctx.rest().chars().count();
    let slot = &r.slot;
    for i in candidates {
        let value = &list.values()[i];
        if let Expr::Text(t) = &value.input {
            if strip(t).is_empty() || rest_chars < t.chars().count() {
                continue;
            }
        }
        if !required.is_empty() && !required_ok(required, value.context.as_ref(), true) {
            continue;
        }
        if !excluded.is_empty() && !excluded_ok(excluded, value.context.as_ref()) {
            continue;
        }
        let outer = &ctx;
        m(s, ctx, &value.input, b, &mut |vc: Ctx, b| {
            let text = outer.rest();
            let remaining = match vc.entities.last().filter(|e| e.wildcard) {
                Some(w) if text.starts_with(w.text.as_str()) => &text[w.text.len()..],
                _ => text,
            };
            let vrest = vc.rest();
            let entity_text = if vrest.is_empty() {
                remaining.to_string()
            } else if Rc::ptr_eq(&vc.text, &outer.text) && remaining.len() >= vrest.len() {
                // The value's match ended in the same text: what it consumed is the difference.
                remaining[..remaining.len() - vrest.len()].to_string()
            } else {
                let n = vrest.chars().count();
                let keep = remaining.chars().count().saturating_sub(n);
                remaining.chars().take(keep).collect()
            };
            let mut c = Ctx {
                text: vc.text.clone(),
                at: vc.at,
                dashes: vc.dashes,
                entities: vc.entities.clone(),
                context: vc.context.clone(),
                start_of_word: outer.start_of_word,
                chunks: outer.chunks,
            };
            if !r.capture {
                c.push(Entity {
                    name: slot.clone(),
                    value: value.out.clone().unwrap_or_else(|| Value::String(entity_text.clone())),
                    text: entity_text,
                    metadata: value.metadata.clone(),
                    wildcard: false,
                    open: false,
                    end_of_word: false,
                });
            }
            if let Some(extra) = &value.context {
                let mut merged = (*outer.context).clone();
                for (key, v) in extra {
                    merged.insert(key.clone(), v.clone());
                }
                c.context = Rc::new(merged);
            }
            k(c, b);
        });
        if b.exceeded {
            return;
        }
    }
}

pub(super) fn extend_wildcard(w: &Entity, extra: &str) -> Entity {
    let text = format!("{}{}", w.text, extra);
    Entity {
        name: w.name.clone(),
        value: Value::String(text.clone()),
        text,
        metadata: w.metadata.clone(),
        wildcard: true,
        open: false,
        end_of_word: w.end_of_word,
    }
}
