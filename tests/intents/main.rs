//! Home Assistant's own intent tests (`ha-intents/`, CC BY 4.0: see its README) run through
//! `qwenedge intents match`, checked the way the intents repository's runner
//! (`tests/test_slot_combinations.py`) checks them: intent, `slot_combination`, slot names (the
//! satellite's area popped, inferred domains added) and values. Responses are not rendered.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Map, Value};

fn suite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/intents/ha-intents")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One sentence to check and what is expected of it.
struct Case {
    file: String,
    sentence: String,
    intent: String,
    combo: String,
    combo_info: Value,
    expected: Map<String, Value>,
    context_area: String,
    entity_domains: BTreeMap<String, Vec<String>>,
}

/// Python's `==` for the values that occur (numbers by value).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
        Value::Object(m) => m.values().flat_map(strings).collect(),
        Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Lines for `qwenedge intents match` and the cases they check, for one language.
fn cases(language: &str, intents: &Value) -> (Vec<Value>, Vec<Case>) {
    let mut lines = Vec::new();
    let mut cases = Vec::new();
    let dir = suite().join("tests").join(language);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten().map(|f| f.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let intent = path.parent().unwrap().file_name().unwrap().to_str().unwrap().to_string();
        let combo = path.file_stem().unwrap().to_str().unwrap().to_string();
        let combo_info = intents[&intent]["slot_combinations"][&combo].clone();
        assert!(!combo_info.is_null(), "{}: no slot combination {intent}/{combo} in intents.yaml", path.display());
        let test = yaml(&path);
        let entities = test["entities"].as_array().cloned().unwrap_or_default();
        let devices: Vec<Value> = entities.iter().map(|e| json!({"name": e["name"], "domain": e["domain"]})).collect();
        let mut entity_domains: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in &entities {
            entity_domains.entry(e["name"].as_str().unwrap().to_string()).or_default().push(e["domain"].as_str().unwrap().to_string());
        }
        let areas_v = test["areas"].as_array().cloned().unwrap_or_default();
        let areas: Vec<Value> = areas_v.iter().map(|a| json!({"name": a["name"]})).collect();
        let floors: Vec<Value> =
            test["floors"].as_array().cloned().unwrap_or_default().iter().map(|f| json!({"name": f["name"]})).collect();
        let context_area = areas_v
            .iter()
            .find(|a| a["context_area"].as_bool() == Some(true))
            .and_then(|a| a["name"].as_str())
            .unwrap_or("__context_area__")
            .to_string();
        let file = path.strip_prefix(suite()).unwrap().display().to_string();
        let mut first = true;
        for group in test["tests"].as_array().unwrap() {
            let mut expected = group["slots"].as_object().cloned().unwrap_or_default();
            let inferred = strings(&combo_info["inferred_domains"]);
            if !inferred.is_empty() {
                expected.insert("domain".into(), json!(inferred));
            }
            for sentence in group["sentences"].as_array().unwrap() {
                let sentence = sentence.as_str().unwrap().to_string();
                let mut line = json!({"text": sentence, "language": language, "context": {"area": context_area}});
                if first {
                    line["devices"] = json!(devices);
                    line["areas"] = json!(areas);
                    line["floors"] = json!(floors);
                    first = false;
                }
                lines.push(line);
                cases.push(Case {
                    file: file.clone(),
                    sentence,
                    intent: intent.clone(),
                    combo: combo.clone(),
                    combo_info: combo_info.clone(),
                    expected: expected.clone(),
                    context_area: context_area.clone(),
                    entity_domains: entity_domains.clone(),
                });
            }
        }
    }
    (lines, cases)
}

/// What is wrong with `answer` for `case`, if anything.
fn check(case: &Case, answer: &Value) -> Option<String> {
    if answer["recognized"] != json!(true) {
        return Some(format!("not recognized ({answer})"));
    }
    if answer["intent"] != json!(case.intent) {
        return Some(format!("intent {} instead of {}", answer["intent"], case.intent));
    }
    if answer["metadata"]["slot_combination"] != json!(case.combo) {
        return Some(format!("slot combination {} instead of {}", answer["metadata"]["slot_combination"], case.combo));
    }
    let mut slots = answer["slots"].as_object().cloned().unwrap_or_default();
    if case.combo_info["context_area"].as_bool() == Some(true) {
        match slots.remove("area") {
            Some(a) if a == json!(case.context_area) => {}
            other => return Some(format!("context area {other:?} instead of {}", case.context_area)),
        }
    }
    let name_domains = strings(&case.combo_info["name_domains"]);
    let inferred = strings(&case.combo_info["inferred_domains"]);
    if !name_domains.is_empty() {
        let name = slots.get("name").and_then(Value::as_str).unwrap_or("");
        match case.entity_domains.get(name) {
            None => return Some(format!("name {name:?} is not a test entity")),
            Some(domains) if !domains.iter().all(|d| name_domains.contains(d)) => {
                return Some(format!("entity {name:?} has domains {domains:?}, not within {name_domains:?}"));
            }
            Some(_) => {}
        }
    } else if !inferred.is_empty() && !slots.get("domain").and_then(Value::as_str).is_some_and(|d| inferred.iter().any(|i| i == d)) {
        return Some(format!("domain {:?} not in the inferred {inferred:?}", slots.get("domain")));
    }
    let mut expected_names: Vec<&String> = case.expected.keys().collect();
    let mut actual_names: Vec<&String> = slots.keys().collect();
    expected_names.sort();
    actual_names.sort();
    if expected_names != actual_names {
        return Some(format!("slots {actual_names:?} instead of {expected_names:?}"));
    }
    for (name, actual) in &slots {
        let want = &case.expected[name];
        let ok = match (actual, want) {
            (Value::Array(a), Value::Array(w)) => a.iter().all(|x| w.iter().any(|y| same(x, y))),
            (Value::Array(a), w) => a.iter().any(|x| same(x, w)),
            (a, Value::Array(w)) => w.iter().any(|y| same(a, y)),
            (a, w) => same(a, w),
        };
        if !ok {
            return Some(format!("slot {name} = {actual} instead of {want}"));
        }
    }
    None
}

fn run_language(language: &str) -> (usize, Vec<String>) {
    let intents = yaml(&suite().join("intents.yaml"));
    let (lines, cases) = cases(language, &intents);
    let mut input = String::new();
    for l in &lines {
        input.push_str(&l.to_string());
        input.push('\n');
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwenedge"))
        .args(["intents", "match"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qwenedge runs");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "qwenedge intents match failed: {}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), cases.len(), "one answer per line");
    let failures =
        cases.iter().zip(&answers).filter_map(|(c, a)| check(c, a).map(|why| format!("{} {:?}: {why}", c.file, c.sentence))).collect();
    (cases.len(), failures)
}

fn assert_language(language: &str, at_least: usize) {
    let (total, failures) = run_language(language);
    assert!(total >= at_least, "{language}: only {total} sentences found");
    assert!(failures.is_empty(), "{language}: {} of {total} sentences failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn english() {
    assert_language("en", 1110);
}

#[test]
fn german() {
    assert_language("de", 1);
}

#[test]
fn french() {
    assert_language("fr", 1);
}

#[test]
fn spanish() {
    assert_language("es", 1);
}

#[test]
fn italian() {
    assert_language("it", 1);
}

#[test]
fn russian() {
    assert_language("ru", 1);
}

#[test]
fn chinese() {
    assert_language("zh-CN", 1);
}

#[test]
fn shipped_data_matches_its_checksums() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("sentences/data");
    let out = Command::new("sha256sum").args(["--check", "--quiet", "SHA256SUMS"]).current_dir(&data).output().expect("sha256sum runs");
    assert!(out.status.success(), "{}: {}", data.display(), String::from_utf8_lossy(&out.stdout));
}
