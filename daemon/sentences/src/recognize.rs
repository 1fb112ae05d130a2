//! Recognition: the text prepared as hassil prepares it (normalized, punctuation and skip
//! words removed, tried with skip words first when removing them changed it), every template
//! that can match tried in the data's order, and the matches ranked as hassil's
//! `recognize_best` ranks them.

use std::collections::HashSet;
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::context::{copy_required, excluded_ok, required_ok, truthy};
use crate::matcher::{m, Budget, Ctx, Entity, Scope};
use crate::template::Expr;
use crate::text::{casefold, for_matching, remove_cjk_whitespace, remove_punctuation, remove_skip_words, strip, SkipAt};
use crate::{prefilter, Language, SlotList, SlotLists};

/// How to recognize.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    /// The caller's context (`{"area": "Kitchen"}`: the satellite's area).
    pub context: Map<String, Value>,
    /// Matches whose block metadata has this key win (Home Assistant: custom sentences).
    pub best_metadata_key: Option<&'a str>,
    /// Matches that fill this slot win, the longest text first (Home Assistant: `name`).
    pub best_slot_name: Option<&'a str>,
    /// The language of number words, when not the data's.
    pub words_language: Option<&'a str>,
    /// Search steps allowed for the whole recognition.
    pub step_limit: u64,
    /// Only these intents may match (`None`: any).
    pub allowed: Option<&'a [String]>,
}

/// Steps a recognition may take by default: far more than any sentence of the data needs
/// (the English test sentences take at most a few thousand), small enough to stay in
/// milliseconds.
pub const DEFAULT_STEP_LIMIT: u64 = 200_000;

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            context: Map::new(),
            best_metadata_key: None,
            best_slot_name: Some("name"),
            words_language: None,
            step_limit: DEFAULT_STEP_LIMIT,
            allowed: None,
        }
    }
}

/// The search ran out of steps: the text is not recognized locally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recognition stopped after {steps} steps (the step budget)")]
pub struct TooComplex {
    /// Steps taken.
    pub steps: u64,
}

/// A slot of a recognition.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// Slot name.
    pub name: String,
    /// Its value (a list value's `out`, a number, the text).
    pub value: Value,
    /// The text it was matched from (empty for fixed and context slots).
    pub text: String,
    /// The list value's metadata.
    pub metadata: Option<Value>,
}

/// A recognized intent.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognition {
    /// The intent's name.
    pub intent: String,
    /// Slots by name, each once (the last found wins, as in hassil's `entities`).
    pub slots: Vec<Slot>,
    /// The block's metadata.
    pub metadata: Option<Map<String, Value>>,
    /// The block's response key.
    pub response: Option<String>,
    /// The template that matched, as written.
    pub template: String,
    /// The context the match ended with.
    pub context: Map<String, Value>,
}

/// What a recognition found, and the work it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The best match, if any.
    pub best: Option<Recognition>,
    /// Search steps taken (see [`Options::step_limit`]).
    pub steps: u64,
}

struct Found {
    intent: usize,
    block: usize,
    sentence: usize,
    entities: Vec<Entity>,
    chunks: usize,
    context: Map<String, Value>,
}

impl Found {
    fn slot(&self, name: &str) -> Option<&Entity> {
        self.entities.iter().rev().find(|e| &*e.name == name)
    }
}

/// The best match of `text` in `lang`, with the caller's `lists` (`name`, `area`, `floor`).
pub fn recognize_best(lang: &Language, text: &str, lists: &SlotLists, opts: &Options) -> Result<Outcome, TooComplex> {
    let mut budget = Budget { left: opts.step_limit, exceeded: false };
    let found = recognize_all(lang, text, lists, opts, &mut budget);
    let steps = opts.step_limit - budget.left;
    if budget.exceeded {
        return Err(TooComplex { steps });
    }
    let Some(best) = rank(lang, found, opts) else { return Ok(Outcome { best: None, steps }) };
    let intent = &lang.intents[best.intent];
    let block = &intent.blocks[best.block];
    let mut slots: Vec<Slot> = Vec::new();
    for e in &best.entities {
        let slot = Slot { name: e.name.to_string(), value: e.value.clone(), text: e.text.clone(), metadata: e.metadata.clone() };
        match slots.iter_mut().find(|s| s.name == slot.name) {
            Some(s) => *s = slot,
            None => slots.push(slot),
        }
    }
    let best = Recognition {
        intent: intent.name.clone(),
        slots,
        metadata: block.metadata.clone(),
        response: block.response.clone(),
        template: block.sentences[best.sentence].text.clone(),
        context: best.context,
    };
    Ok(Outcome { best: Some(best), steps })
}

fn rank(lang: &Language, found: Vec<Found>, opts: &Options) -> Option<Found> {
    let mut metadata_found = false;
    let mut slot_found = false;
    let mut best: Vec<Found> = Vec::new();
    let mut best_quality: Option<usize> = None;
    for r in found {
        if let Some(key) = opts.best_metadata_key {
            let block = &lang.intents[r.intent].blocks[r.block];
            let is_meta = block.metadata.as_ref().and_then(|m| m.get(key)).is_some_and(truthy);
            if metadata_found && !is_meta {
                continue;
            }
            if !metadata_found && is_meta {
                metadata_found = true;
                slot_found = false;
                best.clear();
                best_quality = None;
            }
        }
        if let Some(name) = opts.best_slot_name {
            let entity = r.slot(name).filter(|e| !e.wildcard);
            let is_slot = entity.is_some();
            if slot_found && !is_slot {
                continue;
            }
            if !slot_found && is_slot {
                slot_found = true;
                best.clear();
            }
            if let Some(e) = entity.filter(|e| e.value.is_string()) {
                let q = e.text.chars().count();
                if best_quality.is_none_or(|b| q > b) {
                    best_quality = Some(q);
                    best.clear();
                } else if best_quality.is_some_and(|b| q < b) {
                    continue;
                }
            }
        }
        best.push(r);
    }
    let score = |r: &Found| {
        let wildcards = r.entities.iter().filter(|e| e.wildcard).count();
        let wildcard_text: usize = r.entities.iter().filter(|e| e.wildcard).map(|e| e.text.chars().count()).sum();
        (wildcards, std::cmp::Reverse(r.chunks), wildcard_text, lang.intents[r.intent].name.as_str())
    };
    best.into_iter().enumerate().min_by(|(i, a), (j, b)| score(a).cmp(&score(b)).then(i.cmp(j))).map(|(_, r)| r)
}

fn matchable(lang: &Language, text: &str) -> String {
    if lang.ignore_whitespace {
        remove_cjk_whitespace(text)
    } else {
        format!("{text} ")
    }
}

fn recognize_all(lang: &Language, text: &str, caller: &SlotLists, opts: &Options, budget: &mut Budget) -> Vec<Found> {
    let with_skip = for_matching(text);
    let no_skip = if lang.skip_words.is_empty() {
        with_skip.clone()
    } else {
        remove_skip_words(&with_skip, &lang.skip_words, lang.ignore_whitespace, SkipAt::Anywhere)
    };
    let had_skip_words = no_skip != with_skip;
    let keywords: Vec<&str> = no_skip.split(crate::text::is_space).filter(|w| !w.is_empty()).collect();
    let mut haystack = format!("{}\n{}", casefold(&with_skip), casefold(&no_skip));
    if lang.ignore_whitespace {
        haystack = format!("{haystack}\n{}", remove_cjk_whitespace(&haystack));
    }
    let present = lang.vocabulary.present(&haystack);
    let no_skip_m: Rc<str> = matchable(lang, &no_skip).into();
    let with_skip_m: Rc<str> = matchable(lang, &with_skip).into();
    let with_skip: Rc<str> = with_skip.into();
    let context = Rc::new(opts.context.clone());
    let mut at_start: Option<Rc<str>> = None;
    let mut at_end: Option<Rc<str>> = None;
    let is_wildcard = |e: &Expr| match e {
        Expr::List(r) => matches!(caller.get(&r.list).or_else(|| lang.lists.get(&r.list)), Some(SlotList::Wildcard)),
        _ => false,
    };
    let words_language = opts.words_language.unwrap_or(&lang.code);
    let mut found = Vec::new();
    let wanted = lang.index.wanted(&present);
    let mut current: Option<(u32, u32)> = None;
    let mut block_ok = false;
    for (g, &(ii, bi, si)) in lang.index.order.iter().enumerate() {
        if !wanted[g] {
            continue;
        }
        let block = &lang.intents[ii as usize].blocks[bi as usize];
        if current != Some((ii, bi)) {
            current = Some((ii, bi));
            let name = &lang.intents[ii as usize].name;
            block_ok = opts.allowed.is_none_or(|a| a.contains(name)) && block_applies(block, &keywords, &opts.context);
        }
        if !block_ok || !prefilter::satisfied(&block.clauses[si as usize], &present) {
            continue;
        }
        let sentence = &block.sentences[si as usize];
        let scope = Scope { block, lang, caller, words_language };
        let mut target = &no_skip_m;
        if let Expr::Seq(items) = &sentence.expr {
            if items.len() == 1 && is_wildcard(&items[0]) {
                target = &with_skip;
            } else if items.len() > 1 && is_wildcard(&items[0]) {
                target = at_end.get_or_insert_with(|| {
                    matchable(lang, &remove_skip_words(&with_skip, &lang.skip_words, lang.ignore_whitespace, SkipAt::End)).into()
                });
            } else if items.len() > 1 && is_wildcard(items.last().expect("not empty")) {
                target = at_start.get_or_insert_with(|| {
                    matchable(lang, &remove_skip_words(&with_skip, &lang.skip_words, lang.ignore_whitespace, SkipAt::Start)).into()
                });
            }
        }
        // A skip word may belong to the template: the text with skip words is tried first.
        let mut candidates: Vec<&Rc<str>> = vec![target];
        if had_skip_words && *target == no_skip_m {
            candidates.insert(0, &with_skip_m);
        }
        for candidate in candidates {
            let ctx = Ctx::new(candidate.clone(), context.clone());
            m(&scope, &ctx, &sentence.expr, budget, &mut |c, _| {
                if let Some(f) = finish(c, block) {
                    found.push(Found { intent: ii as usize, block: bi as usize, sentence: si as usize, ..f });
                }
            });
            if budget.exceeded {
                return found;
            }
        }
    }
    found
}

/// Whether a block can apply at all: one of its required keywords is said, and the caller's
/// context does not contradict its required or excluded context.
fn block_applies(block: &crate::Block, keywords: &[&str], context: &Map<String, Value>) -> bool {
    if let Some(kw) = &block.required_keywords {
        if !kw.is_empty() && !kw.iter().any(|k| keywords.contains(&k.as_str())) {
            return false;
        }
    }
    if !context.is_empty() {
        if !block.requires_context.is_empty() && !required_ok(&block.requires_context, Some(context), true) {
            return false;
        }
        if !block.excludes_context.is_empty() && !excluded_ok(&block.excludes_context, Some(context)) {
            return false;
        }
    }
    true
}

/// A way the template consumed the text, made a result if it is a whole match (hassil's
/// `_process_match_contexts`).
fn finish(mut c: Ctx, block: &crate::Block) -> Option<Found> {
    let mut entities: Vec<Entity> = (*c.entities).clone();
    let rest = strip(c.rest()).to_string();
    if !rest.is_empty() {
        if let Some(w) = entities.last_mut().filter(|e| e.wildcard && e.open) {
            w.text.push_str(&rest);
            w.value = Value::String(w.text.clone());
            w.open = false;
            c.take_rest();
        }
    }
    if !strip(&remove_punctuation(c.rest())).is_empty() {
        return None;
    }
    if entities.iter().any(|e| e.wildcard && strip(&e.text).is_empty()) {
        return None;
    }
    if !block.excludes_context.is_empty() && !excluded_ok(&block.excludes_context, Some(&c.context)) {
        return None;
    }
    let from_context = if block.requires_context.is_empty() { Vec::new() } else { copy_required(&block.requires_context, &c.context)? };
    for e in entities.iter_mut().filter(|e| e.wildcard) {
        e.text = strip(&e.text).to_string();
        if let Value::String(v) = &e.value {
            e.value = Value::String(strip(v).to_string());
        }
    }
    let names: HashSet<String> = entities.iter().map(|e| e.name.to_string()).collect();
    for (name, value) in &block.slots {
        if !names.contains(name) {
            entities.push(Entity {
                name: name.as_str().into(),
                value: value.clone(),
                text: String::new(),
                metadata: None,
                wildcard: false,
                open: false,
                end_of_word: false,
            });
        }
    }
    for s in from_context {
        if !names.contains(&s.name) {
            entities.push(Entity {
                name: s.name.as_str().into(),
                value: s.value,
                text: s.text,
                metadata: s.metadata,
                wildcard: false,
                open: false,
                end_of_word: false,
            });
        }
    }
    Some(Found { intent: 0, block: 0, sentence: 0, entities, chunks: c.chunks, context: (*c.context).clone() })
}
