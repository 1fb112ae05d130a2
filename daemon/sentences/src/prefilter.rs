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
pub(crate) fn clauses(sentence: &Sentence, local: &HashMap<String, Sentence>, global: &HashMap<String, Sentence>) -> Clauses {
    let mut out = required(&sentence.expr, local, global, 0);
    out.sort();
    out.dedup();
    out
}

fn required(e: &Expr, local: &HashMap<String, Sentence>, global: &HashMap<String, Sentence>, depth: usize) -> Clauses {
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

/// True if every clause has a word in `haystack`.
pub(crate) fn satisfied(clauses: &Clauses, haystack: &str) -> bool {
    clauses.iter().all(|clause| clause.iter().any(|w| haystack.contains(w.as_str())))
}
