//! The layering rule, checked on the workspace's manifests: a member may depend on another only
//! where the table below allows it. The compiler then keeps every import inside those edges, so
//! a forbidden import is a build error and a forbidden edge a failing test.
//!
//! Bottom up: `api` (wire types) and the `engine` (model files, tokenizer, backends,
//! generation) depend on no other member; `toolcall`, `budget` and `intent` sit above them;
//! `config` above those; the `scheduler` on the wire types, budgets, settings and catalog but
//! no engine type; the `runner` (the engine behind the scheduler's Model trait, request
//! preparation) on all of those; the shared `transport` pieces on the scheduler; each transport
//! on those, never on the engine, the runner, the intent catalog or another transport; the
//! `qwenedge` crate (service and binary) composes them. The `hub` (models from the Hugging Face
//! Hub and the model store) sits on the engine alone, whose reader checks what it fetched.

use std::collections::{BTreeMap, BTreeSet};

/// Each member and the members it may depend on (any kind: normal, dev, build).
const ALLOWED: &[(&str, &[&str])] = &[
    ("qwenedge-api", &[]),
    ("qwenedge-engine", &[]),
    ("qwenedge-toolcall", &["qwenedge-api"]),
    ("qwenedge-budget", &["qwenedge-api"]),
    ("qwenedge-intent", &["qwenedge-api", "qwenedge-engine", "qwenedge-toolcall"]),
    ("qwenedge-sentences", &[]),
    ("qwenedge-config", &["qwenedge-api", "qwenedge-engine", "qwenedge-budget", "qwenedge-intent"]),
    (
        "qwenedge-scheduler",
        &["qwenedge-api", "qwenedge-toolcall", "qwenedge-budget", "qwenedge-intent", "qwenedge-sentences", "qwenedge-config"],
    ),
    (
        "qwenedge-runner",
        &[
            "qwenedge-api",
            "qwenedge-engine",
            "qwenedge-toolcall",
            "qwenedge-budget",
            "qwenedge-intent",
            "qwenedge-config",
            "qwenedge-scheduler",
        ],
    ),
    ("qwenedge-transport", &["qwenedge-api", "qwenedge-config", "qwenedge-scheduler"]),
    ("qwenedge-unix", TRANSPORT),
    ("qwenedge-mqtt", TRANSPORT),
    ("qwenedge-http", TRANSPORT),
    ("qwenedge-wyoming", TRANSPORT),
    ("qwenedge-homeassistant", &["qwenedge-api", "qwenedge-config", "qwenedge-intent"]),
    ("qwenedge-hub", &["qwenedge-engine"]),
    ("qwenedge", &["*"]),
];

/// What a transport may depend on: the wire types, its settings, the tool-call parser, the
/// scheduler's handle and the shared transport pieces.
const TRANSPORT: &[&str] = &["qwenedge-api", "qwenedge-config", "qwenedge-toolcall", "qwenedge-scheduler", "qwenedge-transport"];

/// Each workspace member and the members it depends on, from `cargo metadata`.
fn member_edges() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let members: BTreeSet<String> = packages.iter().filter_map(|p| p["name"].as_str().map(String::from)).collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["name"].as_str())
                .filter(|name| members.contains(*name))
                .map(String::from)
                .collect();
            (p["name"].as_str().unwrap_or_default().to_string(), deps)
        })
        .collect()
}

/// The edges that the table does not allow, and the members it does not place.
fn violations(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut found = Vec::new();
    for (member, deps) in edges {
        let Some(may) = allowed.get(member.as_str()) else {
            found.push(format!("{member} is not placed in the layering table (daemon/src/crate_graph.rs)"));
            continue;
        };
        for dep in deps {
            if !may.contains(&"*") && !may.contains(&dep.as_str()) {
                found.push(format!("{member} depends on {dep}, which the layering does not allow"));
            }
        }
    }
    found
}

#[test]
fn every_dependency_between_members_is_one_the_layering_allows() {
    let edges = member_edges();
    assert!(edges.len() >= ALLOWED.len(), "cargo metadata listed {} members: {:?}", edges.len(), edges.keys());
    let found = violations(&edges);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn a_forbidden_edge_is_named() {
    let mut edges = member_edges();
    edges.get_mut("qwenedge-http").expect("the http member").insert("qwenedge-engine".into());
    edges.get_mut("qwenedge-mqtt").expect("the mqtt member").insert("qwenedge-wyoming".into());
    edges.insert("qwenedge-new".into(), BTreeSet::new());
    let found = violations(&edges);
    assert!(found.contains(&"qwenedge-http depends on qwenedge-engine, which the layering does not allow".to_string()), "{found:?}");
    assert!(found.contains(&"qwenedge-mqtt depends on qwenedge-wyoming, which the layering does not allow".to_string()), "{found:?}");
    assert!(found.iter().any(|f| f.starts_with("qwenedge-new is not placed")), "{found:?}");
}
