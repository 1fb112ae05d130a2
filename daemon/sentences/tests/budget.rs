//! The matcher's work is bounded: random and adversarial inputs (long, repetitive, made of the
//! templates' own words, shaped for the wildcard templates) never take more steps than the
//! budget, never panic, and a spent budget is reported instead of a result. Times are printed
//! for information, never asserted.

use std::path::Path;
use std::time::Instant;

use qwenedge_sentences::{load, recognize_best, Area, Device, Home, Language, Options, DEFAULT_STEP_LIMIT};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn language(code: &str) -> Language {
    load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data"), code, &[]).expect("shipped data loads")
}

fn home() -> Home {
    Home {
        devices: ["Kitchen Light", "TV", "Garage Door", "Shopping List", "Music"]
            .iter()
            .zip(["light", "media_player", "cover", "todo", "media_player"])
            .map(|(n, d)| Device {
                name: n.to_string(),
                aliases: vec![],
                domain: d.into(),
                device_class: None,
                area: None,
                floor: None,
                entity_id: None,
            })
            .collect(),
        areas: vec![Area { name: "Kitchen".into(), aliases: vec![], floor: None }],
        floors: vec![],
    }
}

/// Words of the language's templates (literal text only), to build inputs the templates almost match.
fn vocabulary(code: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("data/intents/{code}.json"))).unwrap();
    let mut words: Vec<String> =
        text.split(|c: char| !c.is_alphanumeric() && c != '\'').filter(|w| !w.is_empty() && w.len() < 20).map(str::to_string).collect();
    words.sort();
    words.dedup();
    words
}

fn inputs(code: &str, rng: &mut ChaCha8Rng) -> Vec<String> {
    let vocab = vocabulary(code);
    let mut out = Vec::new();
    for _ in 0..150 {
        let mut s = String::new();
        let target = rng.random_range(1..2000);
        while s.len() < target {
            s.push_str(&vocab[rng.random_range(0..vocab.len())]);
            s.push(if rng.random_bool(0.9) { ' ' } else { '-' });
        }
        out.push(s);
    }
    for word in ["add", "to", "play", "on", "broadcast", "the", "set", "timer", "for", "minutes", "1", "kitchen light"] {
        out.push(format!("{word} ").repeat(2000 / (word.len() + 1)));
    }
    out.push(format!("add {} to my shopping list", "milk and ".repeat(220)));
    out.push(format!("play {} on TV", "on the radio ".repeat(150)));
    out.push(format!("{} in 5 minutes", "remind me to ".repeat(150)));
    out.push("1 2 3 4 5 6 7 8 9 ".repeat(100));
    out.push("-_".repeat(1000));
    out.push("\u{200b}ä\u{301}".repeat(300));
    out
}

fn check(code: &str) {
    let lang = language(code);
    let lists = home().slot_lists();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut worst_steps, mut worst_us, mut spent) = (0, 0, 0);
    let mut slowest = String::new();
    for text in inputs(code, &mut rng) {
        let started = Instant::now();
        let steps = match recognize_best(&lang, &text, &lists, &Options::default()) {
            Ok(outcome) => outcome.steps,
            Err(e) => {
                spent += 1;
                e.steps
            }
        };
        assert!(steps <= DEFAULT_STEP_LIMIT, "{code}: {steps} steps for {:?}", &text[..text.len().min(60)]);
        worst_steps = worst_steps.max(steps);
        let us = started.elapsed().as_micros();
        if us > worst_us {
            worst_us = us;
            slowest = text.chars().take(40).collect();
        }
    }
    println!("{code}: most steps {worst_steps}, slowest {worst_us} us ({slowest:?}…), budget spent on {spent} inputs");
    let small = Options { step_limit: 10, ..Options::default() };
    let e = recognize_best(&lang, "turn on the kitchen light", &lists, &small).expect_err("10 steps do not suffice");
    assert!(e.steps <= 10);
}

#[test]
fn english_inputs_stay_within_the_budget() {
    check("en");
}

#[test]
fn german_inputs_stay_within_the_budget() {
    check("de");
}

#[test]
fn chinese_inputs_stay_within_the_budget() {
    check("zh-CN");
}
