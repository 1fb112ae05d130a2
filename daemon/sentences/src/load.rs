//! A language's intents from the data of `home-assistant-intents` (`<lang>.json`) merged with
//! custom sentence files in Home Assistant's format (`custom_sentences/<lang>/*.yaml`), and the
//! number words of its ranges (`numbers/<lang>.json`). Every template is parsed here, once;
//! a reference to a rule or list that nothing defines is an error naming it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::lists::{Fractions, Number, NumberWords, RangeKey, RangeList, SlotList, TextList, TextValue};
use crate::template::{self, Expr, Sentence};
use crate::{Block, Intent, Language};

/// Metadata key that marks a custom sentence's block (Home Assistant's).
pub const CUSTOM_SENTENCE: &str = "hass_custom_sentence";

/// Why a language could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is not valid JSON or YAML.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The data has a wrong shape or a template does not parse.
    #[error("{origin}: {message}")]
    Invalid {
        /// The file, or the data's name.
        origin: String,
        /// What is wrong, and where.
        message: String,
    },
    /// No data for the language.
    #[error("no sentence templates for language '{language}' in {dir} (languages: {available})")]
    UnknownLanguage {
        /// The language asked for.
        language: String,
        /// Where the data was looked for.
        dir: PathBuf,
        /// What is there.
        available: String,
    },
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })
}

/// The languages with data in `dir` (`<lang>.json`), sorted.
pub fn languages(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir.join("intents"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_string))
        .collect();
    out.sort();
    out
}

/// Hassil's `merge_dict`: objects merged key by key, lists extended, anything else replaced.
pub fn merge(base: &mut Map<String, Value>, new: Map<String, Value>) {
    for (key, value) in new {
        match (base.get_mut(&key), value) {
            (Some(Value::Object(old)), Value::Object(new)) => merge(old, new),
            (Some(Value::Array(old)), Value::Array(new)) => old.extend(new),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Loads `language` from `dir` (holding `intents/` and `numbers/`), with the custom sentence
/// files `custom` merged in (their blocks marked [`CUSTOM_SENTENCE`]).
pub fn load(dir: &Path, language: &str, custom: &[PathBuf]) -> Result<Language, LoadError> {
    let path = dir.join("intents").join(format!("{language}.json"));
    if !path.is_file() {
        return Err(LoadError::UnknownLanguage { language: language.into(), dir: dir.to_path_buf(), available: languages(dir).join(", ") });
    }
    let mut data = parse_json(&path)?;
    for file in custom {
        let text = read(file)?;
        let yaml: Value = serde_yaml_ng::from_str(&text).map_err(|e| LoadError::Syntax { path: file.clone(), message: e.to_string() })?;
        let Value::Object(mut yaml) = yaml else {
            return Err(LoadError::Invalid { origin: file.display().to_string(), message: "not a mapping".into() });
        };
        mark_custom(&mut yaml, file);
        yaml.remove("language");
        merge(&mut data, yaml);
    }
    let numbers_path = dir.join("numbers").join(format!("{language}.json"));
    let numbers = if numbers_path.is_file() { Some(parse_json(&numbers_path)?) } else { None };
    from_data(Value::Object(data), numbers.map(Value::Object), &path.display().to_string())
}

fn parse_json(path: &Path) -> Result<Map<String, Value>, LoadError> {
    match serde_json::from_str(&read(path)?) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(LoadError::Invalid { origin: path.display().to_string(), message: "not an object".into() }),
        Err(e) => Err(LoadError::Syntax { path: path.to_path_buf(), message: e.to_string() }),
    }
}

fn mark_custom(yaml: &mut Map<String, Value>, file: &Path) {
    let Some(Value::Object(intents)) = yaml.get_mut("intents") else { return };
    for intent in intents.values_mut() {
        let Some(Value::Array(blocks)) = intent.get_mut("data") else { continue };
        for block in blocks {
            let Value::Object(block) = block else { continue };
            let meta = block.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(meta) = meta {
                meta.insert(CUSTOM_SENTENCE.into(), Value::Bool(true));
                meta.insert("hass_custom_file".into(), Value::String(file.display().to_string()));
            }
        }
    }
}

fn invalid(origin: &str, message: String) -> LoadError {
    LoadError::Invalid { origin: origin.to_string(), message }
}

fn object<'a>(v: Option<&'a Value>, origin: &str, what: &str) -> Result<Option<&'a Map<String, Value>>, LoadError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(invalid(origin, format!("{what} is not a mapping"))),
    }
}

fn strings(v: Option<&Value>, origin: &str, what: &str) -> Result<Vec<String>, LoadError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(|| invalid(origin, format!("{what}: {i} is not a string"))))
            .collect(),
        Some(_) => Err(invalid(origin, format!("{what} is not a list"))),
    }
}

fn rules(v: Option<&Value>, origin: &str, what: &str) -> Result<crate::Names<Sentence>, LoadError> {
    let mut out = crate::Names::default();
    for (name, body) in object(v, origin, what)?.into_iter().flatten() {
        let body = body.as_str().ok_or_else(|| invalid(origin, format!("{what}.{name} is not a string")))?;
        out.insert(name.clone(), template::parse(body).map_err(|e| invalid(origin, format!("{what}.{name}: {e}")))?);
    }
    Ok(out)
}

/// A slot list from the data (`values`, `range` or `wildcard`).
pub fn slot_list(name: &str, v: &Value, origin: &str) -> Result<SlotList, LoadError> {
    let what = format!("lists.{name}");
    let map = object(Some(v), origin, &what)?.ok_or_else(|| invalid(origin, format!("{what} is empty")))?;
    if let Some(values) = map.get("values") {
        let Value::Array(values) = values else { return Err(invalid(origin, format!("{what}.values is not a list"))) };
        let mut out = Vec::with_capacity(values.len());
        for value in values {
            out.push(match value {
                Value::String(s) if template::is_template(s) => TextValue {
                    input: template::value_input(s, true).map_err(|e| invalid(origin, format!("{what}: {e}")))?,
                    out: None,
                    context: None,
                    metadata: None,
                },
                Value::String(s) => TextValue {
                    input: template::value_input(s, false).expect("plain text"),
                    out: Some(Value::String(s.clone())),
                    context: None,
                    metadata: None,
                },
                Value::Object(o) => {
                    let input =
                        o.get("in").and_then(Value::as_str).ok_or_else(|| invalid(origin, format!("{what}: a value without 'in'")))?;
                    TextValue {
                        input: template::value_input(input, true).map_err(|e| invalid(origin, format!("{what}: {e}")))?,
                        out: o.get("out").filter(|v| !v.is_null()).cloned(),
                        context: object(o.get("context"), origin, &what)?.cloned(),
                        metadata: o.get("metadata").filter(|v| !v.is_null()).cloned(),
                    }
                }
                other => return Err(invalid(origin, format!("{what}: {other} is not a value"))),
            });
        }
        return Ok(SlotList::Text(TextList::new(out)));
    }
    if let Some(range) = map.get("range") {
        let r = object(Some(range), origin, &what)?.ok_or_else(|| invalid(origin, format!("{what}.range is empty")))?;
        let int = |key: &str, default: Option<i64>| -> Result<i64, LoadError> {
            match r.get(key) {
                Some(v) => v
                    .as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| invalid(origin, format!("{what}.range.{key} is not an integer"))),
                None => default.ok_or_else(|| invalid(origin, format!("{what}.range.{key} is required"))),
            }
        };
        let fractions = match r.get("fractions").and_then(Value::as_str) {
            Some(f) => {
                Some(Fractions::parse(f).ok_or_else(|| invalid(origin, format!("{what}.range.fractions: '{f}' is not halves or tenths")))?)
            }
            None => None,
        };
        let list = RangeList {
            start: int("from", None)?,
            stop: int("to", None)?,
            step: int("step", Some(1))?,
            fractions,
            multiplier: r.get("multiplier").and_then(Value::as_f64),
            digits: r.get("digits").is_none_or(crate::context::truthy),
            words: r.get("words").is_none_or(crate::context::truthy),
            words_language: r.get("words_language").and_then(Value::as_str).map(str::to_string),
        };
        if list.start > list.stop || list.step <= 0 || !(list.digits || list.words) {
            return Err(invalid(origin, format!("{what}.range: from must not exceed to, step must be positive, digits or words on")));
        }
        return Ok(SlotList::Range(list));
    }
    if map.get("wildcard").is_some_and(crate::context::truthy) {
        return Ok(SlotList::Wildcard);
    }
    Err(invalid(origin, format!("{what}: neither values, range nor wildcard")))
}

/// A language from its data (and number-word tables).
pub fn from_data(data: Value, numbers: Option<Value>, origin: &str) -> Result<Language, LoadError> {
    let Value::Object(data) = data else { return Err(invalid(origin, "not an object".into())) };
    let code = data.get("language").and_then(Value::as_str).ok_or_else(|| invalid(origin, "no 'language'".into()))?.to_string();
    let mut lists = crate::Names::default();
    let mut wildcards = Vec::new();
    for (name, v) in object(data.get("lists"), origin, "lists")?.into_iter().flatten() {
        let list = slot_list(name, v, origin)?;
        if matches!(list, SlotList::Wildcard) {
            wildcards.push(name.clone());
        }
        lists.insert(name.clone(), list);
    }
    let global_rules = rules(data.get("expansion_rules"), origin, "expansion_rules")?;
    let settings = object(data.get("settings"), origin, "settings")?;
    let ignore_whitespace = settings.and_then(|s| s.get("ignore_whitespace")).is_some_and(crate::context::truthy);
    let mut intents = Vec::new();
    for (name, intent) in object(data.get("intents"), origin, "intents")?.into_iter().flatten() {
        let mut blocks = Vec::new();
        let blocks_v =
            intent.get("data").and_then(Value::as_array).ok_or_else(|| invalid(origin, format!("intents.{name}.data is not a list")))?;
        for (i, b) in blocks_v.iter().enumerate() {
            let what = format!("intents.{name}.data[{i}]");
            let b = object(Some(b), origin, &what)?.ok_or_else(|| invalid(origin, format!("{what} is empty")))?;
            let mut sentences = Vec::new();
            for s in strings(b.get("sentences"), origin, &format!("{what}.sentences"))? {
                sentences.push(template::parse(&s).map_err(|e| invalid(origin, format!("{what}: {e}")))?);
            }
            let mut block_lists = crate::Names::default();
            for (ln, lv) in object(b.get("lists"), origin, &what)?.into_iter().flatten() {
                block_lists.insert(ln.clone(), slot_list(ln, lv, origin)?);
            }
            let block_rules = rules(b.get("expansion_rules"), origin, &format!("{what}.expansion_rules"))?;
            // Templates that mention a global wildcard list go first, most text chunks first.
            sentences.sort_by_key(|s: &Sentence| if mentions(&s.expr, &wildcards) { -(text_chunks(&s.expr) as i64) } else { 0 });
            let required_keywords = b.get("required_keywords").map(|_| strings(b.get("required_keywords"), origin, &what)).transpose()?;
            blocks.push(Block {
                sentences,
                slots: object(b.get("slots"), origin, &what)?.cloned().unwrap_or_default(),
                requires_context: object(b.get("requires_context"), origin, &what)?.cloned().unwrap_or_default(),
                excludes_context: object(b.get("excludes_context"), origin, &what)?.cloned().unwrap_or_default(),
                rules: block_rules,
                lists: block_lists,
                metadata: object(b.get("metadata"), origin, &what)?.cloned(),
                response: b.get("response").and_then(Value::as_str).map(str::to_string),
                required_keywords,
                clauses: Vec::new(),
            });
        }
        intents.push(Intent { name: name.clone(), blocks });
    }
    let skip_words = crate::text::skip_word_order(&strings(data.get("skip_words"), origin, "skip_words")?);
    let mut numbers_by_range = HashMap::new();
    if let Some(Value::Object(n)) = numbers {
        for table in n.get("ranges").and_then(Value::as_array).into_iter().flatten() {
            let key: RangeKey = (
                table["from"].as_i64().unwrap_or(0),
                table["to"].as_i64().unwrap_or(0),
                table["step"].as_i64().unwrap_or(1),
                table["fractions"].as_str().and_then(Fractions::parse),
            );
            let words = table["words"].as_array().into_iter().flatten().filter_map(|w| {
                let text = w.get(0)?.as_str()?.to_string();
                let n = w.get(1)?;
                let n = n.as_i64().map(Number::Int).or_else(|| n.as_f64().map(Number::Float))?;
                Some((text, n))
            });
            numbers_by_range.insert(key, NumberWords::new(words));
        }
    }
    let vocabulary = crate::prefilter::Vocabulary::build(&[]).0;
    let mut lang = Language {
        code,
        intents,
        lists,
        rules: global_rules,
        skip_words,
        ignore_whitespace,
        numbers: numbers_by_range,
        vocabulary,
        index: Default::default(),
    };
    lang.check(origin)?;
    lang.compute_clauses();
    Ok(lang)
}

fn mentions(e: &Expr, lists: &[String]) -> bool {
    match e {
        Expr::List(r) => lists.contains(&r.list),
        Expr::Seq(items) | Expr::Alt(items) | Expr::Perm(items) => items.iter().any(|i| mentions(i, lists)),
        _ => false,
    }
}

fn text_chunks(e: &Expr) -> usize {
    match e {
        Expr::Seq(items) | Expr::Alt(items) | Expr::Perm(items) => {
            items.iter().map(|i| if matches!(i, Expr::Text(_)) { 1 } else { text_chunks(i) }).sum()
        }
        _ => 0,
    }
}
