//! Home Assistant's sentence templates and a matcher with the semantics of hassil 3.12.1, so a
//! command is recognized the way Home Assistant's Assist recognizes it — before, and without,
//! a language model.
//!
//! - [`load`] reads a language: the data of `home-assistant-intents` (shipped in `data/`,
//!   CC BY 4.0) plus custom sentence files, every template parsed once.
//! - [`Home`] turns the home's device, area and floor names into the `{name}`, `{area}` and
//!   `{floor}` lists, each name carrying its domain and device class as context.
//! - [`recognize_best`] matches a text against every template and ranks the matches as
//!   hassil's `recognize_best` does; its work is bounded by a step budget.
//!
//! The matcher follows hassil's generators step by step (see `matcher`), so the order in which
//! matches are found — which decides ties — is hassil's.

mod context;
mod home;
mod lists;
mod load;
pub mod local;
mod matcher;
mod prefilter;
mod recognize;
pub mod template;
pub mod text;

use std::collections::HashMap;

use serde_json::{Map, Value};

pub use home::{Area, Device, Floor, Home};
pub use lists::{Fractions, Number, NumberWords, RangeList, SlotList, TextList, TextValue};
pub use load::{from_data, languages, load, merge, slot_list, LoadError, CUSTOM_SENTENCE};
pub use recognize::{recognize_best, Options, Outcome, Recognition, Slot, TooComplex, DEFAULT_STEP_LIMIT};

/// Lists the caller supplies (`name`, `area`, `floor`, …), by name.
pub type SlotLists = Names<SlotList>;

/// A map keyed by short names (lists, rules), hashed with FNV-1a: the matcher looks names up
/// at every reference, and the keys are the data's and the caller's list names.
pub type Names<V> = HashMap<String, V, std::hash::BuildHasherDefault<Fnv>>;

/// FNV-1a, for [`Names`].
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// One language's intents, lists, rules and settings.
#[derive(Debug, Clone)]
pub struct Language {
    /// Language code (`en`, `zh-CN`).
    pub code: String,
    intents: Vec<Intent>,
    lists: Names<SlotList>,
    rules: Names<template::Sentence>,
    skip_words: Vec<String>,
    ignore_whitespace: bool,
    numbers: HashMap<lists::RangeKey, NumberWords>,
    vocabulary: prefilter::Vocabulary,
    index: prefilter::Index,
}

#[derive(Debug, Clone)]
struct Intent {
    name: String,
    blocks: Vec<Block>,
}

/// A block of templates of one intent, with what a match of it carries.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    sentences: Vec<template::Sentence>,
    slots: Map<String, Value>,
    requires_context: Map<String, Value>,
    excludes_context: Map<String, Value>,
    rules: Names<template::Sentence>,
    lists: Names<SlotList>,
    metadata: Option<Map<String, Value>>,
    response: Option<String>,
    required_keywords: Option<Vec<String>>,
    /// Per sentence, the words it cannot match without (indices into the vocabulary).
    clauses: Vec<prefilter::Compiled>,
}

impl Language {
    /// The intents' names, in the data's order.
    pub fn intent_names(&self) -> impl Iterator<Item = &str> {
        self.intents.iter().map(|i| i.name.as_str())
    }

    /// Number of templates.
    pub fn template_count(&self) -> usize {
        self.intents.iter().flat_map(|i| &i.blocks).map(|b| b.sentences.len()).sum()
    }

    /// The number words of `range` in `language` (this language's tables only).
    pub(crate) fn number_words(&self, language: &str, range: &RangeList) -> Option<&NumberWords> {
        if language != self.code {
            return None;
        }
        self.numbers.get(&range.key())
    }

    /// Every rule a template uses is defined.
    fn check(&self, origin: &str) -> Result<(), LoadError> {
        fn walk(e: &template::Expr, defined: &dyn Fn(&str) -> bool, missing: &mut Vec<String>) {
            match e {
                template::Expr::Rule(name) if !defined(name) => missing.push(name.clone()),
                template::Expr::Seq(items) | template::Expr::Alt(items) | template::Expr::Perm(items) => {
                    items.iter().for_each(|i| walk(i, defined, missing));
                }
                _ => {}
            }
        }
        for intent in &self.intents {
            for (i, block) in intent.blocks.iter().enumerate() {
                let defined = |name: &str| block.rules.contains_key(name) || self.rules.contains_key(name);
                let mut missing = Vec::new();
                for s in &block.sentences {
                    walk(&s.expr, &defined, &mut missing);
                }
                for rule in block.rules.values().chain(self.rules.values()) {
                    walk(&rule.expr, &defined, &mut missing);
                }
                if let Some(name) = missing.first() {
                    return Err(LoadError::Invalid {
                        origin: origin.to_string(),
                        message: format!("intents.{}.data[{i}]: expansion rule <{name}> is not defined", intent.name),
                    });
                }
            }
        }
        Ok(())
    }

    fn compute_clauses(&mut self) {
        let mut all = Vec::new();
        for intent in &self.intents {
            for block in &intent.blocks {
                for s in &block.sentences {
                    all.push(prefilter::clauses(s, &block.rules, &self.rules));
                }
            }
        }
        let (vocabulary, compiled) = prefilter::Vocabulary::build(&all.iter().collect::<Vec<_>>());
        let mut compiled = compiled.into_iter();
        for intent in &mut self.intents {
            for block in &mut intent.blocks {
                block.clauses = block.sentences.iter().map(|_| compiled.next().expect("one per sentence")).collect();
            }
        }
        let mut templates = Vec::new();
        for (ii, intent) in self.intents.iter().enumerate() {
            for (bi, block) in intent.blocks.iter().enumerate() {
                for (si, clauses) in block.clauses.iter().enumerate() {
                    templates.push(((ii as u32, bi as u32, si as u32), clauses));
                }
            }
        }
        self.index = prefilter::Index::build(templates, vocabulary.len());
        self.vocabulary = vocabulary;
    }
}
