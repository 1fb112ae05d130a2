//! Property tests of the parsers this crate's dependencies read bytes with: socket NDJSON
//! requests, MQTT payloads (generic and Hermes), the TOML configuration and the intent catalog
//! (the HTTP bodies and Wyoming frames are fuzzed in their own crates). Inputs are random bytes,
//! random JSON over the fields each parser knows, and valid examples truncated or with a bit
//! flipped. Each parser must return, never panic, and an error must say something.

#[allow(dead_code)]
#[path = "../../tests/common/fuzz_input.rs"]
mod input;

use input::*;
use qwenedge_api::Limits;

const SOCKET: &[&str] = &[
    r#"{"id":"a","op":"chat","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"temperature":0.5}"#,
    r#"{"id":"b","op":"complete","prompt":"once","stop":["\n"],"seed":3,"priority":"background"}"#,
    r#"{"id":"c","op":"intent","text":"turn on the light","intent_filter":["HassTurnOn"]}"#,
    r#"{"id":"d","op":"cancel","target":"a"}"#,
    r#"{"id":"e","op":"chat","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"schema":{"type":"object"}}}}"#,
];

#[test]
fn socket_requests() {
    let limits = Limits { max_tokens: 4096 };
    run(input(SOCKET), |line| match qwenedge_api::parse_request(&line, &limits) {
        Ok(_) => Ok(()),
        Err(e) => said(&e.to_string()),
    });
}

const HERMES: &[&str] = &[
    r#"{"input":"turn on the kitchen light","sessionId":"s1","siteId":"kitchen","intentFilter":["HassTurnOn"]}"#,
    r#"{"input":"what time is it","id":"q2"}"#,
];

#[test]
fn hermes_queries() {
    use qwenedge_mqtt::hermes;
    let limits = Limits { max_tokens: 4096 };
    run(input(HERMES), |payload| match hermes::parse_query(&payload, 65536) {
        Ok(q) => match hermes::request(&q, 0.0, &limits) {
            Ok(_) => Ok(()),
            Err(e) => said(&e.to_string()),
        },
        Err(e) => said(&e.to_string()),
    });
}

#[test]
fn mqtt_requests() {
    use qwenedge_mqtt::request::{route, Incoming};
    let topics = qwenedge_mqtt::topics::Topics::new("fuzz", None, "homeassistant");
    let limits = Limits { max_tokens: 4096 };
    run((input(SOCKET), any::<bool>()), |(payload, fleet)| {
        let routed = route(Incoming { payload: &payload, response_topic: None, correlation: None, fleet }, &topics, 65536, &limits);
        match routed.request {
            Ok(_) => Ok(()),
            Err(e) => said(&e.to_string()),
        }
    });
}

const CONFIG: &[&str] = &[
    "[model]\npath = \"/nonexistent\"\nthreads = 2\ncontext_length = 4096\n[socket]\npath = \"/tmp/q.sock\"\n[cache]\nmax_mb = 64\nmax_disk_mb = 0\n",
    "[mqtt]\nenabled = true\nurl = \"mqtt://localhost:1883\"\nhermes = true\n[http]\nenabled = true\nlisten = \"127.0.0.1:11434\"\n",
    "[wyoming]\nenabled = true\nlisten = [\"127.0.0.1:10800\"]\nprograms = [\"intent\", \"handle\"]\n[budget]\nwarm_c = 70\n",
];

#[test]
fn configuration_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let env = std::collections::BTreeMap::new();
    // File writes bound this one: a tenth of the cases.
    run_cases(cases() / 10, input(CONFIG), |text| {
        std::fs::write(&path, &text).unwrap();
        match qwenedge_config::load(Some(&path), &env) {
            Ok(_) => Ok(()),
            Err(e) => said(&e.to_string()),
        }
    });
}

const CATALOG: &[&str] = &[
    "[[intent]]\nname = \"HassTurnOn\"\ndescription = \"on\"\n[[intent.slots]]\nname = \"name\"\ntype = \"entity\"\nsource = \"name\"\nrequired = true\n[[device]]\nname = \"kitchen light\"\nentity_id = \"light.kitchen\"\narea = \"kitchen\"\n",
    "[[intent]]\nname = \"HassLightSet\"\n[[intent.slots]]\nname = \"brightness\"\ntype = \"number\"\nmin = 0\nmax = 100\nunit = \"%\"\n[[intent.slots]]\nname = \"color\"\ntype = \"enum\"\nvalues = [\"red\", \"blue\"]\n",
];

#[test]
fn intent_catalogs() {
    run(input(CATALOG), |bytes| match qwenedge_intent::Catalog::parse(&String::from_utf8_lossy(&bytes), "fuzz") {
        Ok(_) => Ok(()),
        Err(e) => said(&e.to_string()),
    });
}
