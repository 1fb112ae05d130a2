//! Local-first intents through the daemon: Home Assistant's sentence templates answer a
//! matching command at once (`source: "local"`, Home Assistant's slot names) on the socket, over
//! Hermes and through the Wyoming intent program — while a long generation runs; what no
//! template matches goes to the model; `intents.local = "only"` serves without a model
//! directory; custom sentences win over the built-in ones.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::clients;
use crate::common::daemon::Daemon;
use crate::common::mqtt::{free_port, mqtt_section, Broker, Tester};

const DEVICES: &str = r#"
[[device]]
name = "Kitchen Light"
aliases = ["ceiling light"]
domain = "light"
area = "Kitchen"
entity_id = "light.kitchen"

[[device]]
name = "Garage Door"
domain = "cover"
device_class = "garage_door"
area = "Garage"

[[area]]
name = "Living Room"
aliases = ["lounge"]
floor = "Ground Floor"
"#;

/// `[intents]` with the home above written next to the daemon's configuration.
fn intents_section(dir: &std::path::Path, extra: &str) -> String {
    let devices = dir.join("devices.toml");
    std::fs::write(&devices, DEVICES).unwrap();
    format!("[intents]\ndevices = {:?}\n{extra}\n", devices.display().to_string())
}

/// The terminal event of one `intent` request on a fresh connection, and how long it took.
fn ask(d: &Daemon, id: &str, fields: Value) -> (Value, Duration) {
    let mut c = d.client();
    let mut request = json!({"id": id, "op": "intent"});
    for (k, v) in fields.as_object().unwrap() {
        request[k] = v.clone();
    }
    let started = Instant::now();
    c.send(&request);
    let e = c.until_terminal(id).pop().unwrap();
    (e, started.elapsed())
}

fn slots(e: &Value) -> Vec<(String, Value)> {
    e["slots"].as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap().to_string(), s["value"].clone())).collect()
}

#[test]
fn a_matching_command_is_answered_locally_while_a_long_generation_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&format!("[scheduler]\nmax_tokens_limit = 4000\n{}", intents_section(dir.path(), "")));
    // A background generation of 2,000 tokens keeps the engine busy.
    let mut long = d.client();
    long.send(&json!({"id": "long", "op": "complete", "prompt": "Once upon a time", "max_tokens": 2000, "priority": "background", "temperature": 0.8, "seed": 1}));
    let first = long.recv();
    assert_eq!(first["event"], "token", "the generation runs: {first}");

    let (e, took) = ask(&d, "light", json!({"text": "Turn on the ceiling light, please!"}));
    assert_eq!(e["event"], "intent", "{e}");
    assert_eq!((e["recognized"].as_bool(), e["source"].as_str()), (Some(true), Some("local")), "{e}");
    assert_eq!(e["intent"], json!({"name": "HassTurnOn", "confidence": 1.0}));
    assert_eq!(slots(&e), vec![("name".to_string(), json!("ceiling light"))]);
    assert_eq!(e["slots"][0]["entity"], "light.kitchen");
    assert_eq!(e["metadata"]["slot_combination"], "name_only");

    // The satellite's area: given by the request, or by its site through intents.site_areas.
    let (e, _) = ask(&d, "here", json!({"text": "turn off the lights", "area": "Kitchen"}));
    assert_eq!(e["intent"]["name"], "HassTurnOff", "{e}");
    assert_eq!(slots(&e), vec![("domain".into(), json!("light")), ("area".into(), json!("Kitchen"))]);
    let (e, _) = ask(&d, "cover", json!({"text": "open the garage door"}));
    assert_eq!((e["intent"]["name"].as_str(), e["source"].as_str()), (Some("HassTurnOn"), Some("local")), "{e}");
    let (e, _) = ask(&d, "number", json!({"text": "set the kitchen light brightness to 40%"}));
    assert_eq!(e["intent"]["name"], "HassLightSet", "{e}");
    assert!(slots(&e).contains(&("brightness".into(), json!(40.0))), "{e}");
    let status = d.status();
    assert_eq!(status["running"].as_array().map(Vec::len), Some(1), "the generation still runs: {status}");
    println!("local answer at the client while a generation ran: {took:?}");

    let done = long.until_terminal("long").pop().unwrap();
    assert_eq!(done["event"], "done", "the generation was not disturbed: {done}");
}

#[test]
fn what_no_template_matches_goes_to_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&intents_section(dir.path(), "min_confidence = 0.0"));
    let (e, _) = ask(&d, "m", json!({"text": "sing me a song about the sea"}));
    assert_eq!((e["event"].as_str(), e["source"].as_str()), (Some("intent"), Some("model")), "{e}");
    assert!(e["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "the model read the prompt: {e}");
    // A filter that excludes the matching intent sends the command to the model too.
    let (e, _) = ask(&d, "f", json!({"text": "turn on the ceiling light", "intent_filter": ["HassTurnOff"]}));
    assert_eq!(e["source"], "model", "{e}");
    // local = "off": everything goes to the model.
    let off = Daemon::start(&intents_section(dir.path(), "local = \"off\""));
    let (e, _) = ask(&off, "o", json!({"text": "turn on the ceiling light"}));
    assert_eq!(e["source"], "model", "{e}");
}

#[test]
fn local_only_serves_intents_without_a_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_without_model(&intents_section(
        dir.path(),
        "local = \"only\"\nlanguage = \"en\"\n[intents.site_areas]\nkitchen-satellite = \"Kitchen\"",
    ));
    let (e, _) = ask(&d, "1", json!({"text": "turn off the lights", "site_id": "kitchen-satellite"}));
    assert_eq!((e["intent"]["name"].as_str(), e["source"].as_str()), (Some("HassTurnOff"), Some("local")), "{e}");
    assert!(slots(&e).contains(&("area".into(), json!("Kitchen"))), "{e}");
    let (e, _) = ask(&d, "2", json!({"text": "sing me a song"}));
    assert_eq!((e["recognized"].as_bool(), e["source"].as_str()), (Some(false), Some("local")), "{e}");
    let (e, _) = ask(&d, "3", json!({"text": "schalte das Licht in der Garage aus", "language": "de"}));
    assert_eq!((e["intent"]["name"].as_str(), e["source"].as_str()), (Some("HassTurnOff"), Some("local")), "{e}");
    let mut c = d.client();
    c.send(&json!({"id": "c", "op": "chat", "messages": [{"role": "user", "content": "hi"}]}));
    let e = c.until_terminal("c").pop().unwrap();
    assert_eq!(e["event"], "error", "{e}");
    assert!(e["message"].as_str().unwrap().contains("no model is configured"), "{e}");
    let status = d.status();
    assert_eq!(status["model"]["type"], "none", "{status}");
}

#[test]
fn custom_sentences_win_over_the_built_in_ones() {
    let dir = tempfile::tempdir().unwrap();
    let custom = dir.path().join("custom_sentences/en");
    std::fs::create_dir_all(&custom).unwrap();
    std::fs::write(
        custom.join("kitchen.yaml"),
        r#"language: "en"
intents:
  KitchenScene:
    data:
      - sentences:
          - "turn on the kitchen light [{brightness}]"
          - "make (coffee|tea) in the {place}"
lists:
  brightness:
    range:
      from: 1
      to: 3
  place:
    values:
      - in: "(kitchen|cook room)"
        out: "kitchen"
"#,
    )
    .unwrap();
    let extra = format!("custom_sentences = {:?}", dir.path().join("custom_sentences").display().to_string());
    let d = Daemon::start_without_model(&intents_section(dir.path(), &format!("local = \"only\"\n{extra}")));
    let (e, _) = ask(&d, "1", json!({"text": "turn on the kitchen light"}));
    assert_eq!(e["intent"]["name"], "KitchenScene", "the custom sentence wins over HassTurnOn: {e}");
    assert_eq!(e["metadata"]["hass_custom_sentence"], true, "{e}");
    let (e, _) = ask(&d, "2", json!({"text": "make tea in the cook room"}));
    assert_eq!((e["intent"]["name"].as_str(), slots(&e)), (Some("KitchenScene"), vec![("place".into(), json!("kitchen"))]), "{e}");
    let (e, _) = ask(&d, "3", json!({"text": "turn off the kitchen light"}));
    assert_eq!(e["intent"]["name"], "HassTurnOff", "the built-in templates still answer: {e}");
}

#[test]
fn hermes_queries_and_wyoming_transcripts_are_answered_locally() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let port = free_port();
    let wyoming = format!("[wyoming]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n");
    let hermes = mqtt_section(broker.port, "loc", "hermes = true\n");
    let intents = intents_section(dir.path(), "[intents.site_areas]\nkitchen = \"Kitchen\"\nkitchen-satellite = \"Kitchen\"");
    let d = Daemon::start(&format!("[scheduler]\nmax_tokens_limit = 4000\n{wyoming}{hermes}{intents}"));
    let t = Tester::connect(broker.port, "loc-t");
    t.wait_online("loc");
    t.subscribe("hermes/#");

    // Each answer comes while a generation of 4,000 tokens, started just before, still runs.
    let mut long = busy(&d, "long-hermes");
    t.publish("hermes/nlu/query", json!({"input": "turn off the lights", "id": "q1", "siteId": "kitchen", "sessionId": "s1"}).to_string());
    let m = t.collect("the answer to q1", Duration::from_secs(30), |m| m.topic.starts_with("hermes/intent/")).pop().unwrap();
    still_running(&d, "long-hermes");
    assert_eq!(m.topic, "hermes/intent/HassTurnOff");
    let v = m.json();
    assert_eq!(v["intent"]["confidenceScore"], 1.0, "{v}");
    let names: Vec<&str> = v["slots"].as_array().unwrap().iter().map(|s| s["slotName"].as_str().unwrap()).collect();
    assert_eq!(names, ["domain", "area"], "{v}");
    long.send(&json!({"id": "long-hermes", "op": "cancel"}));

    let mut long = busy(&d, "long-wyoming");
    let turns = clients::run(
        "check_wyoming.py",
        &["turns", "--port", &port.to_string(), "--count", "1", "--text", "turn on the ceiling light"],
        &d,
    );
    still_running(&d, "long-wyoming");
    let answer = &turns[0][0];
    assert_eq!(answer["type"], "intent", "{turns}");
    assert_eq!(answer["data"]["name"], "HassTurnOn", "{turns}");
    assert_eq!(answer["data"]["entities"][0]["name"], "name", "{turns}");
    assert_eq!(answer["data"]["entities"][0]["value"], "ceiling light", "{turns}");
    long.send(&json!({"id": "long-wyoming", "op": "cancel"}));
    // The transcript's context names the satellite (check_wyoming.py: device_id
    // "kitchen-satellite"), whose area intents.site_areas gives.
    let turns =
        clients::run("check_wyoming.py", &["turns", "--port", &port.to_string(), "--count", "1", "--text", "turn off the lights"], &d);
    let answer = &turns[0][0];
    assert_eq!(answer["data"]["name"], "HassTurnOff", "{turns}");
    let area = answer["data"]["entities"].as_array().unwrap().iter().find(|e| e["name"] == "area").cloned();
    assert_eq!(area.map(|e| e["value"].clone()), Some(json!("Kitchen")), "{turns}");
}

/// A background generation of 4,000 tokens under `id`, producing tokens when this returns.
fn busy(d: &Daemon, id: &str) -> crate::common::daemon::Client {
    let mut c = d.client();
    c.send(&json!({"id": id, "op": "complete", "prompt": "Once upon a time", "max_tokens": 4000, "priority": "background", "temperature": 0.8, "seed": 1}));
    assert_eq!(c.recv()["event"], "token", "the generation {id} runs");
    c
}

/// The generation `id` is still running.
fn still_running(d: &Daemon, id: &str) {
    let status = d.status();
    let running: Vec<&Value> = status["running"].as_array().unwrap().iter().map(|r| &r["id"]).collect();
    assert!(running.iter().any(|r| *r == id), "the answer came while {id} ran: {status}");
}

#[test]
fn a_home_without_floors_starts_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let devices = dir.path().join("devices.toml");
    std::fs::write(&devices, "[[device]]\nname = \"Kitchen Light\"\ndomain = \"light\"\narea = \"Kitchen\"\n").unwrap();
    let d = Daemon::start(&format!("[intents]\ndevices = {:?}\nmin_confidence = 0.0\n", devices.display().to_string()));
    let log = d.log_text();
    assert!(log.contains("without its slot 'floor': the home has no floors"), "one line per slot left out:\n{log}");
    let (e, _) = ask(&d, "local", json!({"text": "turn on the kitchen light"}));
    assert_eq!((e["intent"]["name"].as_str(), e["source"].as_str()), (Some("HassTurnOn"), Some("local")), "{e}");
    let (e, _) = ask(&d, "model", json!({"text": "sing me a song about the sea"}));
    assert_eq!((e["event"].as_str(), e["source"].as_str()), (Some("intent"), Some("model")), "the model's catalog serves: {e}");
}
