//! The literal words a template cannot match without (hassil's `get_required_clauses`): a
//! conjunction of clauses, each satisfied by any one of its words appearing in the text. It
//! only skips templates that provably cannot match, so it changes no result, only the time.

use std::collections::HashMap;

use crate::template::{Expr, Sentence};
use crate::text::casefold;

const MAX_DEPTH: usize = 24;
const PUNCTUATION: &str = ".。,，?¿？؟!¡！;；:：’…—–―";

/// Clauses of required words.
pub(crate) type Clauses = Vec<Vec<String>>;

/// The clauses of `sentence`, with rules resolved in `local` then `global`.
pub(crate) fn clauses(sentence: &Sentence, local: &crate::Names<Sentence>, global: &crate::Names<Sentence>) -> Clauses {
    let mut out = required(&sentence.expr, local, global, 0);
    out.sort();
    out.dedup();
    out
}

fn required(e: &Expr, local: &crate::Names<Sentence>, global: &crate::Names<Sentence>, depth: usize) -> Clauses {
    if depth > MAX_DEPTH {
        return Vec::new();
    }
    match e {
        Expr::Text(t) => t
            .split(crate::text::is_space)
            .filter(|p| !p.is_empty() && !p.contains(|c| PUNCTUATION.contains(c)))
            .map(|p| vec![casefold(p)])
            .collect(),
        Expr::Alt(items) => {
            let branches: Vec<Clauses> = items.iter().map(|i| required(i, local, global, depth + 1)).collect();
            if branches.is_empty() || branches.iter().any(Vec::is_empty) {
                return Vec::new();
            }
            let mut merged: Vec<String> = Vec::new();
            for branch in branches {
                let smallest = branch.into_iter().min_by_key(Vec::len).expect("not empty");
                for w in smallest {
                    if !merged.contains(&w) {
                        merged.push(w);
                    }
                }
            }
            vec![merged]
        }
        Expr::Seq(items) | Expr::Perm(items) => items.iter().flat_map(|i| required(i, local, global, depth + 1)).collect(),
        Expr::Rule(name) => match local.get(name).or_else(|| global.get(name)) {
            Some(rule) => required(&rule.expr, local, global, depth + 1),
            None => Vec::new(),
        },
        Expr::List(_) => Vec::new(),
    }
}

/// Every word any clause of a language names, found in a text in one pass.
#[derive(Debug, Clone)]
pub(crate) struct Vocabulary {
    words: Vec<String>,
    finder: Option<aho_corasick::AhoCorasick>,
}

/// Clauses as indices into a [`Vocabulary`].
pub(crate) type Compiled = Vec<Vec<usize>>;

impl Vocabulary {
    /// The vocabulary of `all`, and each clause list with its words as indices.
    pub(crate) fn build(all: &[&Clauses]) -> (Self, Vec<Compiled>) {
        let mut words: Vec<String> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        let compiled = all
            .iter()
            .map(|clauses| {
                clauses
                    .iter()
                    .map(|clause| {
                        clause
                            .iter()
                            .map(|w| {
                                *at.entry(w.clone()).or_insert_with(|| {
                                    words.push(w.clone());
                                    words.len() - 1
                                })
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let finder = (!words.is_empty()).then(|| aho_corasick::AhoCorasick::new(&words).expect("plain words build an automaton"));
        (Self { words, finder }, compiled)
    }

    /// Number of words.
    pub(crate) fn len(&self) -> usize {
        self.words.len()
    }

    /// Which words occur in `haystack` (anywhere, overlapping).
    pub(crate) fn present(&self, haystack: &str) -> Vec<bool> {
        let mut seen = vec![false; self.words.len()];
        if let Some(f) = &self.finder {
            for m in f.find_overlapping_iter(haystack) {
                seen[m.pattern().as_usize()] = true;
            }
        }
        seen
    }
}

/// True if every clause has a word that occurs.
pub(crate) fn satisfied(clauses: &Compiled, present: &[bool]) -> bool {
    clauses.iter().all(|clause| clause.iter().any(|&w| present[w]))
}

/// Every template of a language in the data's order, and which ones a word can let through:
/// each template is listed under the words of one of its clauses (or always, having none), so
/// a recognition visits only the templates whose words it found.
#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    /// (intent, block, sentence) of each template.
    pub order: Vec<(u32, u32, u32)>,
    always: Vec<u32>,
    by_word: Vec<Vec<u32>>,
}

impl Index {
    /// The index of `templates` (in order, with their clauses) over `words` words.
    pub(crate) fn build(templates: Vec<((u32, u32, u32), &Compiled)>, words: usize) -> Self {
        let mut index = Index { order: Vec::with_capacity(templates.len()), always: Vec::new(), by_word: vec![Vec::new(); words] };
        for (g, (at, clauses)) in templates.into_iter().enumerate() {
            index.order.push(at);
            match clauses.iter().min_by_key(|c| c.len()) {
                None => index.always.push(g as u32),
                Some(clause) => clause.iter().for_each(|&w| index.by_word[w].push(g as u32)),
            }
        }
        index
    }

    /// Which templates may match, given the words present.
    pub(crate) fn wanted(&self, present: &[bool]) -> Vec<bool> {
        let mut wanted = vec![false; self.order.len()];
        for &t in &self.always {
            wanted[t as usize] = true;
        }
        for (w, templates) in self.by_word.iter().enumerate() {
            if present[w] {
                for &t in templates {
                    wanted[t as usize] = true;
                }
            }
        }
        wanted
    }
}
