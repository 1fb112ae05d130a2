//! The local stage as callers use it: languages loaded once on first use and kept, the home's
//! lists built once per home, and one utterance turned into a [`Match`] — the same code for
//! `qwenedge intents match` and the daemon's intent path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{load, recognize_best, Area, Device, Floor, Home, Language, LoadError, Options, SlotLists, CUSTOM_SENTENCE};

/// Where the shipped data is: `QWENEDGE_SENTENCES_DIR`, else beside an installed binary
/// (`<prefix>/share/qwenedge/sentences`), else `/usr/share/qwenedge/sentences`, else this
/// crate's own `data/` (a build from source).
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QWENEDGE_SENTENCES_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let beside = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.join("share/qwenedge/sentences")));
    for dir in beside.into_iter().chain([PathBuf::from("/usr/share/qwenedge/sentences")]) {
        if dir.join("intents").is_dir() {
            return dir;
        }
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// A recognition as callers report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Match {
    /// The intent.
    pub intent: String,
    /// Slot values by name.
    pub slots: Map<String, Value>,
    /// The text each slot was matched from, by name (empty for fixed and context slots).
    pub texts: Map<String, Value>,
    /// The block's metadata.
    pub metadata: Map<String, Value>,
    /// The block's response key.
    pub response: Option<String>,
    /// The template that matched.
    pub template: String,
}

/// One line of `qwenedge intents match` (and of a benchmark corpus): an utterance, its
/// language and context, and — when they change — the home's devices, areas and floors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Utterance {
    /// What was said.
    pub text: String,
    /// Its language (`None`: the caller's default).
    #[serde(default)]
    pub language: Option<String>,
    /// The caller's context (`{"area": …}`).
    #[serde(default)]
    pub context: Map<String, Value>,
    #[serde(default)]
    devices: Option<Vec<Device>>,
    #[serde(default)]
    areas: Option<Vec<Area>>,
    #[serde(default)]
    floors: Option<Vec<Floor>>,
}

impl Utterance {
    /// Puts the lists this line gives into `home`; the ones it leaves out stay as they were.
    pub fn update(&mut self, home: &mut Home) {
        if let Some(d) = self.devices.take() {
            home.devices = d;
        }
        if let Some(a) = self.areas.take() {
            home.areas = a;
        }
        if let Some(f) = self.floors.take() {
            home.floors = f;
        }
    }
}

/// The local stage's answer to one utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The match, if any (`None` also when the step budget ran out).
    pub found: Option<Match>,
    /// Search steps taken.
    pub steps: u64,
    /// The budget ran out before the search ended: not recognized locally.
    pub too_complex: bool,
    /// Time taken, in microseconds.
    pub elapsed_us: u64,
}

/// Languages by code, loaded on first use, with the custom sentence files of each.
#[derive(Debug)]
pub struct Languages {
    dir: PathBuf,
    custom: Option<PathBuf>,
    loaded: HashMap<String, Language>,
}

impl Languages {
    /// Data from `dir`; custom sentences from `custom/<lang>/*.yaml` when given.
    pub fn new(dir: &Path, custom: Option<&Path>) -> Self {
        Self { dir: dir.to_path_buf(), custom: custom.map(Path::to_path_buf), loaded: HashMap::new() }
    }

    /// The language, loaded now if it was not.
    pub fn get(&mut self, code: &str) -> Result<&Language, LoadError> {
        if !self.loaded.contains_key(code) {
            let files = self.custom_files(code)?;
            let lang = load(&self.dir, code, &files)?;
            self.loaded.insert(code.to_string(), lang);
        }
        Ok(&self.loaded[code])
    }

    fn custom_files(&self, code: &str) -> Result<Vec<PathBuf>, LoadError> {
        let Some(dir) = self.custom.as_ref().map(|c| c.join(code)).filter(|d| d.is_dir()) else { return Ok(Vec::new()) };
        let entries = std::fs::read_dir(&dir).map_err(|source| LoadError::Read { path: dir.clone(), source })?;
        let mut files: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml")).collect();
        files.sort();
        Ok(files)
    }
}

/// The home's lists, rebuilt only when the home changes.
#[derive(Debug, Default)]
pub struct HomeLists {
    home: Option<Home>,
    lists: SlotLists,
}

impl HomeLists {
    /// The lists of `home`.
    pub fn of(&mut self, home: &Home) -> &SlotLists {
        if self.home.as_ref() != Some(home) {
            self.lists = home.slot_lists();
            self.home = Some(home.clone());
        }
        &self.lists
    }
}

/// Recognizes `text` in `lang` as Home Assistant does (custom sentences first, the longest
/// `{name}` next); `context` is the caller's (`{"area": "Kitchen"}`).
/// `allowed` limits the intents that may match (an intent filter).
pub fn recognize(lang: &Language, text: &str, lists: &SlotLists, context: Map<String, Value>, allowed: Option<&[String]>) -> Answer {
    let started = Instant::now();
    let opts = Options { context, best_metadata_key: Some(CUSTOM_SENTENCE), best_slot_name: Some("name"), allowed, ..Options::default() };
    let (found, steps, too_complex) = match recognize_best(lang, text, lists, &opts) {
        Ok(outcome) => {
            let found = outcome.best.map(|r| Match {
                intent: r.intent,
                texts: r.slots.iter().map(|s| (s.name.clone(), Value::String(crate::text::strip(&s.text).to_string()))).collect(),
                slots: r.slots.into_iter().map(|s| (s.name, s.value)).collect(),
                metadata: r.metadata.unwrap_or_default(),
                response: r.response,
                template: r.template,
            });
            (found, outcome.steps, false)
        }
        Err(e) => (None, e.steps, true),
    };
    Answer { found, steps, too_complex, elapsed_us: started.elapsed().as_micros() as u64 }
}
