//! The layering rule, checked on the sources: imports point down only. `api` (wire types) is
//! the bottom and imports nothing else of the crate; the engine imports neither `api` nor any
//! layer above it; `budget` and `intent` sit above them, `config` above those, then the
//! `scheduler`, then the transports (which import neither the engine nor each other), then
//! `service` and the binary.

use std::path::{Path, PathBuf};

/// For each top-level module: the modules it must not name.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("api", &["engine", "intent", "dialect", "scheduler", "transport", "budget", "config", "service"]),
    ("engine", &["api", "scheduler", "transport", "budget", "config", "intent", "dialect", "service"]),
    ("budget", &["engine", "intent", "scheduler", "transport", "config", "service"]),
    ("intent", &["scheduler", "transport", "budget", "config", "service"]),
    ("dialect", &["engine", "intent", "scheduler", "transport", "budget", "config", "service"]),
    ("config", &["scheduler", "transport", "service"]),
    ("scheduler", &["transport", "service"]),
    ("transport", &["engine", "service"]),
];

/// Transports, which must not import each other.
const TRANSPORTS: &[&str] = &["unix", "mqtt", "http", "wyoming"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a source file (`engine/backend/mod.rs` → `engine::backend`).
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

/// Code without comments and string literals (so that docs may mention any module).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut kept = String::new();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_str && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                kept.push(c);
            }
            prev = c;
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// Every top-level module a path in `code` reaches (`crate::x`, `crate::{x, y}`, or
/// `super::` past the top of `module`).
fn targets(code: &str, module: &[String]) -> Vec<String> {
    let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let mut found = Vec::new();
    let mut rest = compact.as_str();
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + 7..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                found.push(name);
            }
        } else {
            found.push(after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
        rest = after;
    }
    let mut rest = compact.as_str();
    while let Some(i) = rest.find("super::") {
        let mut ups = 0;
        let mut after = &rest[i..];
        while let Some(t) = after.strip_prefix("super::") {
            ups += 1;
            after = t;
        }
        if ups >= module.len() {
            found.push(after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
        rest = after;
    }
    found
}

#[test]
fn imports_point_down_only() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let module = module_of(&root, &file);
        let Some(top) = module.first() else { continue };
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        let reached = targets(&code, &module);
        if let Some((_, forbidden)) = FORBIDDEN.iter().find(|(m, _)| m == top) {
            for t in reached.iter().filter(|t| forbidden.contains(&t.as_str())) {
                violations.push(format!("{}: {top} imports {t}", file.display()));
            }
        }
        if top == "transport" && module.len() > 1 {
            let own = &module[1];
            let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
            for other in TRANSPORTS.iter().filter(|t| *t != own) {
                if compact.contains(&format!("transport::{other}")) || compact.contains(&format!("super::{other}::")) && module.len() == 2 {
                    violations.push(format!("{}: transport {own} imports transport {other}", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "imports that point up or sideways:\n{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_grouped_and_relative_imports() {
    let m = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    assert_eq!(targets("use crate::{api::Event, engine};", &m("transport::unix")), ["api", "engine"]);
    assert_eq!(targets("use super::super::engine::Engine;", &m("scheduler::core")), ["engine"]);
    assert!(targets("use super::queue::JobQueue;", &m("scheduler::core")).is_empty());
    assert!(targets(&code_only("// crate::engine\nlet s = \"crate::engine\";"), &m("api")).is_empty());
}
