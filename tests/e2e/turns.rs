//! Clients taking turns on the engine, on the real model: a small chat answered while a 250 KiB
//! prompt prefills (on the fixture declaring the real models' 262,144-token context), an intent
//! and a chat answered while a 2,000-token completion streams, and every interleaved request's
//! greedy output equal to its run alone. The first-token times are printed, not asserted: what
//! is asserted is the order of the answers.

use std::thread;
use std::time::{Duration, Instant};

use crate::common::daemon::{chat, Client, Daemon};
use crate::common::model_dir;
use serde_json::{json, Value};

/// A request's events with the time each arrived, counted from `began`.
struct Timed {
    events: Vec<(Duration, Value)>,
}

impl Timed {
    /// When the first token arrived, else the terminal event (an intent streams none).
    fn first(&self) -> Duration {
        self.events.iter().find(|(_, e)| e["event"] == "token").unwrap_or_else(|| self.events.last().unwrap()).0
    }

    fn end(&self) -> Duration {
        self.events.last().unwrap().0
    }

    fn terminal(&self) -> &Value {
        &self.events.last().unwrap().1
    }

    /// The streamed text, or the text of a terminal `done`.
    fn text(&self) -> String {
        let streamed: String =
            self.events.iter().filter(|(_, e)| e["event"] == "token").map(|(_, e)| e["text"].as_str().unwrap()).collect();
        if streamed.is_empty() {
            self.terminal()["text"].as_str().unwrap_or_default().to_string()
        } else {
            streamed
        }
    }
}

/// Sends `request` on a new connection and reads its events to the end, timing each from
/// `began`.
fn timed(mut client: Client, request: Value, began: Instant) -> Timed {
    client.send(&request);
    read_timed(&mut client, request["id"].as_str().unwrap(), began, Vec::new())
}

/// Reads `id`'s events to the end after `events`, timing each from `began`.
fn read_timed(client: &mut Client, id: &str, began: Instant, mut events: Vec<(Duration, Value)>) -> Timed {
    loop {
        let e = client.recv();
        let at = began.elapsed();
        let end = e["id"] == id && e["event"] != "token";
        events.push((at, e));
        if end {
            return Timed { events };
        }
    }
}

/// Runs `request` alone (nothing else in progress) to its end.
fn alone(d: &Daemon, request: &Value, patience: Duration) -> Timed {
    d.wait_status("the daemon to be idle", Duration::from_secs(60), |s| s["sequences"]["in_progress"] == 0);
    timed(d.client().patience(patience), request.clone(), Instant::now())
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[test]
fn a_small_chat_is_answered_while_a_250_kib_prompt_prefills() {
    let d = Daemon::start_with_model(&model_dir("tiny-a", "int4-long"), "");
    d.settle();
    let big = json!({"id": "big", "op": "complete", "prompt": "a".repeat(250 * 1024), "max_tokens": 8, "temperature": 0, "stream": true});
    let small = chat("small", "hi", json!({"max_tokens": 4, "temperature": 0, "stream": true}));
    let patience = Duration::from_secs(300);
    let small_alone = alone(&d, &small, patience);
    let big_alone = alone(&d, &big, patience);
    let prompt_tokens = big_alone.terminal()["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 4096, "the prompt is long: {prompt_tokens} tokens");

    let began = Instant::now();
    let reader = {
        let (client, big) = (d.client().patience(patience), big.clone());
        thread::spawn(move || timed(client, big, began))
    };
    d.wait_status("the big prompt to be prefilling", Duration::from_secs(30), |s| s["sequences"]["in_progress"] == 1);
    let asked = began.elapsed();
    let small_shared = timed(d.client().patience(patience), small.clone(), began);
    let big_shared = reader.join().unwrap();
    eprintln!(
        "250 KiB prompt ({prompt_tokens} tokens): first token after {} ms alone; shared, a chat sent at {} ms got its first token at {} ms \
         (alone: {} ms) and ended at {} ms, the big prompt's first token came at {} ms",
        ms(big_alone.first()),
        ms(asked),
        ms(small_shared.first()),
        ms(small_alone.first()),
        ms(small_shared.end()),
        ms(big_shared.first()),
    );
    assert_eq!(small_shared.terminal()["event"], "done", "{}", small_shared.terminal());
    assert!(small_shared.end() < big_shared.first(), "the chat was answered before the big prompt's prefill ended");
    assert_eq!(big_shared.terminal()["event"], "done", "{}", big_shared.terminal());
    assert_eq!(big_shared.text(), big_alone.text(), "the big request's tokens are those of its run alone");
    assert_eq!(big_shared.terminal()["usage"], big_alone.terminal()["usage"]);
    assert_eq!(small_shared.text(), small_alone.text(), "the chat's tokens are those of its run alone");
}

#[test]
fn an_intent_and_a_chat_are_answered_while_a_2000_token_completion_streams() {
    let d = Daemon::start("");
    d.settle();
    let long = json!({"id": "long", "op": "complete", "prompt": "Once upon a time", "max_tokens": 2000, "temperature": 0, "stream": true});
    let intent = json!({"id": "intent", "op": "intent", "text": "I would like some light to read by in the kitchen"});
    let small = chat("chat", "What is the capital of France?", json!({"max_tokens": 12, "temperature": 0, "stream": true}));
    let patience = Duration::from_secs(120);
    let long_alone = alone(&d, &long, patience);
    assert_eq!(long_alone.terminal()["usage"]["completion_tokens"], 2000, "{}", long_alone.terminal());
    let intent_alone = alone(&d, &intent, patience);
    let chat_alone = alone(&d, &small, patience);

    let began = Instant::now();
    let mut client = d.client().patience(patience);
    client.send(&long);
    // The completion is under way: its first tokens have come.
    let mut long_events = vec![(began.elapsed(), client.recv())];
    while long_events.len() < 8 {
        long_events.push((began.elapsed(), client.recv()));
    }
    let asked = began.elapsed();
    let (intent_client, chat_client) = (d.client().patience(patience), d.client().patience(patience));
    let (i, c) = (intent.clone(), small.clone());
    let intent_thread = thread::spawn(move || timed(intent_client, i, began));
    let chat_thread = thread::spawn(move || timed(chat_client, c, began));
    let long_shared = read_timed(&mut client, "long", began, long_events);
    let (intent_shared, chat_shared) = (intent_thread.join().unwrap(), chat_thread.join().unwrap());
    eprintln!(
        "2,000-token completion ({} ms alone, {} ms shared): asked at {} ms, the intent answered at {} ms (alone: {} ms), \
         the chat's first token at {} ms (alone: {} ms), its end at {} ms",
        ms(long_alone.end()),
        ms(long_shared.end()),
        ms(asked),
        ms(intent_shared.first()),
        ms(intent_alone.first()),
        ms(chat_shared.first()),
        ms(chat_alone.first()),
        ms(chat_shared.end()),
    );
    assert!(intent_shared.end() < long_shared.end() && chat_shared.end() < long_shared.end(), "both answered before the completion ended");
    assert_eq!(long_shared.text(), long_alone.text(), "the completion's tokens are those of its run alone");
    assert_eq!(long_shared.terminal()["usage"], long_alone.terminal()["usage"]);
    assert_eq!(chat_shared.text(), chat_alone.text());
    assert_eq!(intent_shared.terminal()["event"], "intent", "{}", intent_shared.terminal());
    for key in ["recognized", "intent", "text"] {
        assert_eq!(intent_shared.terminal()[key], intent_alone.terminal()[key], "{key}");
    }
}
