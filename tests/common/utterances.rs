//! Utterances for intent tests: a fixed, varied set over the built-in catalog, and the
//! tool-call markers of a loaded model.

use qwenedge_engine::Engine;
use qwenedge_intent::catalog::EntitySource;
use qwenedge_intent::Catalog;
use qwenedge_toolcall::Markers;

/// The tool-call markers as the daemon writes them for `engine`'s tokenizer.
pub fn markers(engine: &Engine) -> Markers {
    Markers::from_special(|text| engine.tokenizer.token_id(text).filter(|&id| engine.tokenizer.is_special(id)))
}

/// A small deterministic generator for utterances and seeds.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.next(items.len())]
    }
}

/// `n` varied utterances over the catalog: device commands with numbers, colours, areas,
/// timers, media, questions and chatter that matches no intent.
pub fn utterances(catalog: &Catalog, n: usize) -> Vec<String> {
    let names = catalog.entity_values(EntitySource::Name);
    let areas = catalog.entity_values(EntitySource::Area);
    let colors = ["red", "blue", "warm white", "green", "purple"];
    let mut r = Lcg(42);
    (0..n)
        .map(|i| match i % 10 {
            0 => format!("turn on the {}", r.pick(&names)),
            1 => format!("switch off all the lights in the {}", r.pick(&areas)),
            2 => format!("set the {} to {} percent", r.pick(&names), r.next(101)),
            3 => format!("make the {} lights {}", r.pick(&areas), r.pick(&colors)),
            4 => format!("set the temperature to {}.{} degrees", 15 + r.next(10), r.next(10)),
            5 => format!("start a timer for {} minutes", 1 + r.next(90)),
            6 => format!("{} the music in the {}", r.pick(&["pause", "resume", "skip", "stop"]), r.pick(&areas)),
            7 => format!("set the volume to {}", r.next(101)),
            8 => r.pick(&["what time is it", "what's the weather like tomorrow", "never mind", "is the garage door open"]).to_string(),
            _ => r.pick(&["tell me a joke", "who wrote hamlet", "bonjour, ça va ?", "order a pizza with extra cheese"]).to_string(),
        })
        .collect()
}
