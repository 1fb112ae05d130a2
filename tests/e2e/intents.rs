//! Intents end to end: grammar-constrained answers on the random-weight fixtures (an adversarial
//! model) always parse into a catalog intent with in-type slot values, or into "no intent";
//! the socket `intent` op; `response_format` on chat; Hermes NLU over a real Mosquitto.

use std::time::Duration;

use crate::common::daemon::{chat, Daemon};
use crate::common::model_dir;
use crate::common::mqtt::{mqtt_section, Broker, Tester};
use crate::common::utterances::{markers, utterances};
use crate::common::wait::Bounded;
use qwenedge_engine::backend::ort::OrtOptions;
use qwenedge_engine::backend::select::BackendKind;
use qwenedge_engine::constrain::{Allowed, Constrainer, Grammar};
use qwenedge_engine::generate::{FinishReason, GenerateParams, Step};
use qwenedge_engine::sampler::SamplingParams;
use qwenedge_engine::{Engine, EngineOptions};
use qwenedge_intent::catalog::SlotKind;
use qwenedge_intent::{self as intent, Catalog};
use serde_json::{json, Value};

/// Checks a parsed intent against the catalog independently of the parser.
fn check_in_type(catalog: &Catalog, i: &intent::Intent) {
    let def = catalog.intent(&i.name).unwrap_or_else(|| panic!("unknown intent {}", i.name));
    for s in &i.slots {
        let slot = def.slots.iter().find(|d| d.name == s.name).unwrap_or_else(|| panic!("{}: unknown slot {}", i.name, s.name));
        match &slot.kind {
            SlotKind::Enum { values } => assert!(values.contains(&s.raw_value), "{s:?}"),
            SlotKind::Entity { source } => assert!(catalog.entity_values(*source).contains(&s.raw_value.as_str()), "{s:?}"),
            SlotKind::Text { max_len } => assert!((1..=*max_len).contains(&s.raw_value.chars().count()), "{s:?}"),
            SlotKind::Number { min, max, .. } => {
                let x = s.value.as_f64().unwrap_or_else(|| panic!("{s:?} is not a number"));
                assert!(x >= *min as f64 && x <= *max as f64, "{s:?}");
            }
        }
    }
    for required in def.slots.iter().filter(|d| d.required) {
        assert!(i.slots.iter().any(|s| s.name == required.name), "{}: {} missing", i.name, required.name);
    }
}

#[test]
fn sampled_answers_on_random_weights_are_always_catalog_intents_or_none() {
    let catalog = Catalog::builtin().unwrap();
    let utterances = utterances(&catalog, 300);
    let opts = EngineOptions { backend: BackendKind::Ort, ort: OrtOptions { threads: 2, ..Default::default() }, ..Default::default() };
    let mut engine = Engine::load(model_dir("tiny-a", "fp32"), &opts).unwrap();
    let constrainer = engine.constrainer().unwrap();
    // The catalog part of the prompt is prefilled once (the prefix cache), as the daemon does.
    let render = |e: &Engine, text: &str| {
        e.tokenizer.encode(&e.render_chat(&intent::prepare(&catalog, text, None, &markers(e)).chat).unwrap()).unwrap()
    };
    let (a, b) = (render(&engine, "one"), render(&engine, "two words"));
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    engine.configure_cache(512 << 20, 1);
    engine.pin_prefix(&a[..common]).unwrap();
    let context = engine.spec.context_length;
    let (mut calls, mut names) = (0, std::collections::BTreeSet::new());
    for (k, text) in utterances.iter().enumerate() {
        let prepared = intent::prepare(&catalog, text, None, &markers(&engine));
        let prompt = engine.tokenizer.encode(&engine.render_chat(&prepared.chat).unwrap()).unwrap();
        let sampling = SamplingParams { temperature: 1.0, seed: Some(k as u64), ..Default::default() };
        let params = GenerateParams { max_tokens: prepared.max_tokens, sampling, ..Default::default() };
        let mut d = engine.cached_decoder(prompt, &[], params, context).unwrap();
        assert_eq!(d.reused_tokens(), common, "the catalog prefix is reused");
        d.constrain(constrainer.constraint(&Grammar::Lark(prepared.grammar.clone())).unwrap());
        while !matches!(engine.step(&mut d).unwrap(), Step::Finished { .. }) {}
        let done = d.completion();
        assert_eq!(done.finish_reason, FinishReason::Stop, "utterance {k} {text:?}: the grammar must end the answer: {:?}", done.text);
        let confidence = d.constraint().unwrap().confidence();
        assert!((0.0..=1.0).contains(&confidence), "{confidence}");
        match intent::result::parse(&catalog, &done.text, text, confidence) {
            Ok(Some(i)) => {
                check_in_type(&catalog, &i);
                calls += 1;
                names.insert(i.name);
            }
            Ok(None) => {}
            Err(e) => panic!("utterance {k} {text:?}: {e}\n{}", done.text),
        }
    }
    // An adversarial model still takes the call branch often enough to exercise it.
    assert!(calls >= 30 && names.len() >= 5, "{calls} calls over {} intents", names.len());
}

fn intent_daemon(extra: &str) -> Daemon {
    // The model's path: the sentence templates (tests/e2e/local_intents.rs) are off.
    Daemon::start(&format!("[intents]\nlocal = \"off\"\nmin_confidence = 0.0\n{extra}"))
}

fn intent_request(id: &str, text: &str, extra: Value) -> Value {
    let mut r = json!({"id": id, "op": "intent", "text": text, "temperature": 1.0});
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            r[k] = v;
        }
    }
    r
}

#[test]
fn the_socket_intent_op_answers_with_typed_slots_and_honours_the_filter() {
    let d = intent_daemon("");
    let catalog = Catalog::builtin().unwrap();
    let mut c = d.client();
    let mut recognized = 0;
    for seed in 0..12 {
        let id = format!("i{seed}");
        c.send(&intent_request(&id, "set the kitchen light to 40 percent", json!({"seed": seed})));
        let e = c.until_terminal(&id).pop().unwrap();
        assert_eq!(e["event"], "intent", "{e}");
        assert!(e["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{e}");
        if e["recognized"] == true {
            recognized += 1;
            let name = e["intent"]["name"].as_str().unwrap();
            let conf = e["intent"]["confidence"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&conf), "{e}");
            let slots: Vec<qwenedge_api::Slot> = serde_json::from_value(e["slots"].clone()).unwrap();
            check_in_type(&catalog, &intent::Intent { name: name.into(), confidence: conf, slots });
        } else {
            assert!(e["slots"].as_array().unwrap().is_empty(), "{e}");
        }
    }
    assert!(recognized > 0, "min_confidence 0 recognises every call");

    for seed in 0..8 {
        let id = format!("f{seed}");
        c.send(&intent_request(&id, "pause the music", json!({"seed": seed, "intent_filter": ["HassMediaPause", "HassNevermind"]})));
        let e = c.until_terminal(&id).pop().unwrap();
        if let Some(name) = e["intent"]["name"].as_str() {
            assert!(["HassMediaPause", "HassNevermind"].contains(&name), "{e}");
        }
    }

    let ask = std::process::Command::new(env!("CARGO_BIN_EXE_qwenedge"))
        .args(["ask", "--intent", "--intent-filter", "HassGetCurrentTime", "what time is it", "--socket"])
        .arg(&d.socket)
        .output_in_time();
    let said = String::from_utf8_lossy(&ask.stdout);
    assert!(ask.status.success() && (said.starts_with("HassGetCurrentTime (confidence") || said.starts_with("not recognized")), "{said}");

    let dataset = d.dir.path().join("eval.jsonl");
    std::fs::write(
        &dataset,
        "{\"text\": \"what time is it\", \"intent\": \"HassGetCurrentTime\"}\n{\"text\": \"tell me a joke\", \"intent\": null}\n",
    )
    .unwrap();
    let eval = std::process::Command::new(env!("CARGO_BIN_EXE_qwenedge"))
        .args(["eval-intents", "--dataset"])
        .arg(&dataset)
        .arg("--socket")
        .arg(&d.socket)
        .output_in_time();
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let summary: Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(summary["utterances"], 2, "{summary}");
    for key in ["intent_accuracy", "exact_match"] {
        assert!((0.0..=1.0).contains(&summary[key].as_f64().unwrap()), "{summary}");
    }
    assert!(summary["latency_ms"]["p95"].as_f64().unwrap() >= summary["latency_ms"]["p50"].as_f64().unwrap(), "{summary}");

    c.send(&json!({"id": "bad", "op": "intent"}));
    let e = c.recv();
    assert_eq!((e["event"].as_str(), e["code"].as_str()), (Some("error"), Some("bad_request")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("text"), "{e}");
}

#[test]
fn a_confidence_threshold_of_one_recognises_nothing_uncertain() {
    let daemon = Daemon::start("[intents]\nlocal = \"off\"\nmin_confidence = 1.0\n");
    let mut c = daemon.client();
    for seed in 0..4 {
        let id = format!("t{seed}");
        c.send(&intent_request(&id, "turn on the kitchen light", json!({"seed": seed})));
        let e = c.until_terminal(&id).pop().unwrap();
        assert_eq!(e["event"], "intent", "{e}");
        let conf = e["intent"]["confidence"].as_f64();
        assert_eq!(e["recognized"], conf == Some(1.0), "{e}");
    }
}

#[test]
fn the_compiler_without_vocabulary_slices_allows_the_same_tokens() {
    let opts = EngineOptions { backend: BackendKind::Ort, ort: OrtOptions { threads: 1, ..Default::default() }, ..Default::default() };
    let engine = Engine::load(model_dir("tiny-a", "int4"), &opts).unwrap();
    let (vocab, eos) = (engine.spec.vocab_size, engine.spec.eos_token_ids.clone());
    let sliced = Constrainer::new(&engine.tokenizer, vocab, &eos).unwrap();
    let unsliced = Constrainer::unsliced(&engine.tokenizer, vocab, &eos).unwrap();
    let catalog = Catalog::builtin().unwrap();
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "note": {"type": "string", "maxLength": 40},
                        "n": {"type": "integer"}}, "required": ["name", "note", "n"]});
    let grammars = [
        Grammar::Lark(intent::prepare(&catalog, "x", None, &markers(&engine)).grammar),
        Grammar::JsonSchema(schema),
        Grammar::Lark("start: /[a-z ]{1,30}/ \".\"".into()),
    ];
    let mut rng = crate::common::utterances::Lcg(7);
    for (g, grammar) in grammars.iter().enumerate() {
        for walk in 0..8 {
            let (mut a, mut b) = (sliced.constraint(grammar).unwrap(), unsliced.constraint(grammar).unwrap());
            for step in 0..60 {
                let what = format!("grammar {g}, walk {walk}, step {step}");
                let forced = a.take_forced().unwrap();
                assert_eq!(forced, b.take_forced().unwrap(), "{what}: forced tokens");
                let random: Vec<f32> = (0..vocab).map(|_| rng.next(1000) as f32 / 100.0).collect();
                let (mut la, mut lb) = (random.clone(), random);
                let allowed = a.mask(&mut la).unwrap();
                assert_eq!(allowed, b.mask(&mut lb).unwrap(), "{what}");
                let masked = |l: &[f32]| l.iter().map(|x| x.is_finite()).collect::<Vec<_>>();
                assert!(masked(&la) == masked(&lb), "{what}: the masks differ");
                if allowed == Allowed::EndOnly {
                    break;
                }
                let token = (0..vocab).filter(|&i| la[i].is_finite()).max_by(|&i, &j| la[i].total_cmp(&la[j])).unwrap() as u32;
                a.commit(token, &la).unwrap();
                b.commit(token, &lb).unwrap();
                if a.is_finished() {
                    assert!(b.is_finished(), "{what}");
                    break;
                }
            }
        }
    }
}

#[test]
fn chat_response_format_holds_the_answer_to_a_schema_or_lark_grammar() {
    let d = Daemon::start("");
    let mut c = d.client();
    let schema = json!({"type": "object", "properties": {"room": {"enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}},
                        "required": ["room", "on"], "additionalProperties": false});
    for seed in 0..4 {
        let id = format!("s{seed}");
        let fmt = json!({"type": "json_schema", "json_schema": {"name": "light", "schema": schema}});
        c.send(&chat(&id, "kitchen on?", json!({"response_format": fmt, "temperature": 1.0, "seed": seed, "max_tokens": 200})));
        let done = c.until_terminal(&id).pop().unwrap();
        assert_eq!(done["finish_reason"], "stop", "{done}");
        let v: Value = serde_json::from_str(done["text"].as_str().unwrap()).unwrap_or_else(|e| panic!("{done}: {e}"));
        assert!(["kitchen", "hall"].contains(&v["room"].as_str().unwrap()) && v["on"].is_boolean(), "{v}");
    }
    let fmt = json!({"type": "lark", "lark": "start: (\"yes\" | \"no\") \".\""});
    c.send(&chat("l", "well?", json!({"response_format": fmt, "temperature": 1.0, "max_tokens": 20})));
    let done = c.until_terminal("l").pop().unwrap();
    assert!(["yes.", "no."].contains(&done["text"].as_str().unwrap()), "{done}");

    c.send(&chat("g", "x", json!({"response_format": {"type": "lark", "lark": "start: undefined_rule"}})));
    let e = c.until_terminal("g").pop().unwrap();
    assert_eq!((e["event"].as_str(), e["code"].as_str()), (Some("error"), Some("bad_request")), "{e}");
    c.send(&chat("h", "x", json!({"response_format": {"type": "xml"}})));
    assert!(c.recv()["message"].as_str().unwrap().contains("response_format.type"));
}

#[test]
fn hermes_queries_get_real_intents_and_respect_the_filter() {
    let broker = Broker::start();
    let d = Daemon::start(&format!(
        "[intents]\nlocal = \"off\"\nmin_confidence = 0.0\ntemperature = 1.0\n{}",
        mqtt_section(broker.port, "h1", "hermes = true\n")
    ));
    let t = Tester::connect(broker.port, "ht");
    t.wait_online("h1");
    t.subscribe("hermes/#");
    let wait = Duration::from_secs(60);
    let mut parsed = 0;
    for i in 0..30 {
        let q = json!({"input": "turn off the bedroom light", "id": format!("q{i}"), "siteId": "hall", "sessionId": format!("s{i}")});
        t.publish("hermes/nlu/query", q.to_string());
        let msgs = t.collect(&format!("the answer to query q{i}"), wait, |m| {
            m.topic != "hermes/nlu/query" && m.json()["id"] == format!("q{i}") && m.topic != "hermes/nlu/intentParsed"
        });
        let last = msgs.last().unwrap();
        let v = last.json();
        assert_eq!(
            (v["input"].as_str(), v["siteId"].as_str(), v["sessionId"].as_str()),
            (Some("turn off the bedroom light"), Some("hall"), Some(&*format!("s{i}"))),
            "{v}"
        );
        if last.topic == "hermes/nlu/intentNotRecognized" {
            continue;
        }
        parsed += 1;
        let name = v["intent"]["intentName"].as_str().unwrap();
        assert_eq!(last.topic, format!("hermes/intent/{name}"));
        assert!(
            msgs.iter().any(|m| m.topic == "hermes/nlu/intentParsed" && m.payload == last.payload),
            "intentParsed carries the same payload"
        );
        assert!(v["intent"]["confidenceScore"].as_f64().is_some(), "{v}");
        for s in v["slots"].as_array().unwrap() {
            for key in ["entity", "slotName", "rawValue", "value", "confidence"] {
                assert!(s.get(key).is_some(), "{key} missing in {s}");
            }
            assert!(s["value"]["kind"].is_string(), "{s}");
        }
        if parsed == 3 {
            break;
        }
    }
    assert!(parsed > 0, "some queries were parsed into intents");

    // Only HassGetCurrentTime may answer: anything else must be "not recognized".
    for i in 0..4 {
        let q = json!({"input": "turn off the bedroom light", "id": format!("f{i}"), "intentFilter": ["HassGetCurrentTime"]});
        t.publish("hermes/nlu/query", q.to_string());
        let msgs = t.collect(&format!("the answer to filtered query f{i}"), wait, |m| {
            m.topic != "hermes/nlu/query" && m.json()["id"] == format!("f{i}") && m.topic != "hermes/nlu/intentParsed"
        });
        let last = msgs.last().unwrap();
        assert!(
            last.topic == "hermes/nlu/intentNotRecognized" || last.topic == "hermes/intent/HassGetCurrentTime",
            "{} {:?}",
            last.topic,
            last.json()
        );
    }
    drop(d);
}

/// Hermes queries go through the same checks as socket requests: one over
/// `mqtt.max_payload_bytes`, an utterance over the intent text limit and an intent filter over
/// its limit are each answered on `hermes/error/nlu` with the limit named, and the daemon goes
/// on answering.
#[test]
fn hermes_queries_over_the_limits_get_an_nlu_error_naming_the_limit() {
    let broker = Broker::start();
    let d = Daemon::start(&mqtt_section(broker.port, "h2", "hermes = true\nmax_payload_bytes = 8192\n"));
    let t = Tester::connect(broker.port, "ht2");
    t.wait_online("h2");
    t.subscribe("hermes/#");
    let wait = Duration::from_secs(60);
    let too_big = json!({"input": "x".repeat(10_000), "sessionId": "big", "siteId": "hall"});
    let too_long = json!({"input": "word ".repeat(500), "sessionId": "long"});
    let filter: Vec<String> = (0..1001).map(|i| format!("I{i}")).collect();
    let too_many = json!({"input": "hi", "sessionId": "filter", "intentFilter": filter});
    for (query, session, needle) in [
        (too_big, "big", "more than mqtt.max_payload_bytes (8192)"),
        (too_long, "long", "text: must be 1 to 2000 bytes"),
        (too_many, "filter", "intent_filter: at most 1000 names"),
    ] {
        t.publish("hermes/nlu/query", query.to_string());
        let msgs = t.collect(&format!("hermes/error/nlu for session {session}"), wait, |m| {
            m.topic == "hermes/error/nlu" && m.json()["sessionId"] == session
        });
        let v = msgs.last().unwrap().json();
        assert!(v["error"].as_str().unwrap().contains(needle), "{session}: {v}");
    }
    assert_eq!(d.status()["requests"]["done"], 0, "none of them reached the engine");
    t.publish("hermes/nlu/query", json!({"input": "turn on the kitchen light", "id": "ok"}).to_string());
    let msgs = t.collect("the answer to query ok", wait, |m| {
        m.topic != "hermes/nlu/query" && m.topic != "hermes/nlu/intentParsed" && m.json()["id"] == "ok"
    });
    assert_ne!(msgs.last().unwrap().topic, "hermes/error/nlu", "a query within the limits is answered");
}

#[test]
fn the_shipped_dataset_covers_the_catalog_with_valid_labels() {
    let catalog = Catalog::builtin().unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/eval/intents.jsonl")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut negatives = 0;
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 150, "{} utterances", lines.len());
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap();
        let Some(name) = v["intent"].as_str() else {
            negatives += 1;
            continue;
        };
        assert!(catalog.intent(name).is_some(), "{line}: unknown intent");
        seen.insert(name.to_string());
        let mut call = format!("<tool_call>\n<function={name}>\n");
        for (slot, value) in v["slots"].as_object().unwrap() {
            let raw = value.as_str().map_or_else(|| value.to_string(), str::to_string);
            call.push_str(&format!("<parameter={slot}>\n{raw}\n</parameter>\n"));
        }
        call.push_str("</function>\n</tool_call>");
        if let Err(e) = intent::result::parse(&catalog, &call, "", 1.0) {
            panic!("{line}: {e}");
        }
    }
    assert_eq!(seen.len(), catalog.intents.len(), "every intent has examples");
    assert!(negatives >= 15, "{negatives} negatives");
}
