//! The local stage of every intent request: Home Assistant's sentence templates
//! (`qwenedge-sentences`) tried when the request is submitted, on the submitter's own task, so
//! a matching command is answered at once — while a long generation runs, while the model
//! loads, or with no model at all (`intents.local = "only"`). What no template matches goes
//! to the model as before (or is "not recognized" with `only`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use qwenedge_api::{EventBody, GenerateRequest, IntentSource, IntentSummary, Place, Prompt, RequestTimings, Slot, Usage};
use qwenedge_config::{LocalMode, Settings};
use qwenedge_intent::Catalog;
use qwenedge_sentences::local::{default_data_dir, recognize, Languages};
use qwenedge_sentences::{Area, Device, Floor, Home, LoadError, SlotLists};
use serde_json::{Map, Value};
use tracing::{debug, warn};

/// What the local stage made of a request.
#[derive(Debug)]
pub enum LocalAnswer {
    /// The events to answer with, the last one terminal (a match, or "not recognized" with
    /// `only`; a tool call's text, then its end).
    Answer(Vec<EventBody>),
    /// Not an intent request, or no template matched: the model decides.
    ToModel,
}

/// The sentence templates, the home's names, and how to use them.
#[derive(Debug)]
pub struct LocalStage {
    mode: LocalMode,
    language: String,
    /// Satellites' areas from the configuration (`intents.site_areas`).
    site_areas: BTreeMap<String, String>,
    /// Satellites' areas from the home (Home Assistant's device registry); the configuration's win.
    home_sites: BTreeMap<String, String>,
    /// The templates, shared by the stages made for later homes of the same configuration.
    languages: Arc<Mutex<Languages>>,
    lists: SlotLists,
}

impl LocalStage {
    /// The stage `settings` ask for, with the home from `catalog`; the default language is
    /// loaded now, so bad data or custom sentences stop start-up with the file named.
    pub fn new(settings: &Settings, catalog: &Catalog) -> Result<Self, LoadError> {
        let i = &settings.intents;
        let dir = i.sentences_dir.clone().unwrap_or_else(default_data_dir);
        let mut languages = Languages::new(&dir, i.custom_sentences.as_deref());
        if i.local != LocalMode::Off {
            let lang = languages.get(&i.language)?;
            debug!(language = %i.language, templates = lang.template_count(), "sentence templates loaded");
        }
        Ok(Self {
            mode: i.local,
            language: i.language.clone(),
            site_areas: i.site_areas.clone(),
            home_sites: BTreeMap::new(),
            languages: Arc::new(Mutex::new(languages)),
            lists: home(catalog).slot_lists(),
        })
    }

    /// The home's satellite areas, by the ids a transcript names them with (`intents.site_areas`
    /// wins).
    pub fn with_sites(mut self, sites: &BTreeMap<String, String>) -> Self {
        self.home_sites = sites.clone();
        self
    }

    /// This stage with another home (`catalog`'s names, `sites`): the templates already loaded
    /// are shared, not read again.
    pub fn for_home(&self, catalog: &Catalog, sites: &BTreeMap<String, String>) -> Self {
        Self {
            mode: self.mode,
            language: self.language.clone(),
            site_areas: self.site_areas.clone(),
            home_sites: sites.clone(),
            languages: Arc::clone(&self.languages),
            lists: home(catalog).slot_lists(),
        }
    }

    /// The stage that never answers (`intents.local = "off"`).
    pub fn off() -> Self {
        Self {
            mode: LocalMode::Off,
            language: String::new(),
            site_areas: BTreeMap::new(),
            home_sites: BTreeMap::new(),
            languages: Arc::new(Mutex::new(Languages::new(std::path::Path::new(""), None))),
            lists: SlotLists::default(),
        }
    }

    /// Whether intents are answered without the model.
    pub fn mode(&self) -> LocalMode {
        self.mode
    }

    /// Tries the templates on `request`: an intent request, or a chat whose offered tools
    /// include a matched intent's tool.
    pub fn answer(&self, request: &GenerateRequest) -> LocalAnswer {
        if self.mode == LocalMode::Off {
            return LocalAnswer::ToModel;
        }
        match request.prompt() {
            Prompt::Intent { text, filter, place } => self.answer_intent(text, filter.as_deref(), place),
            Prompt::Chat { messages, tools: Some(tools), thinking } => {
                crate::local_tools::answer(self, messages, tools, *thinking, request.tool_choice())
            }
            _ => LocalAnswer::ToModel,
        }
    }

    /// The best match of `text` in `language` (`None`: the default) among `filter`'s intents.
    pub(crate) fn recognize(
        &self,
        text: &str,
        language: Option<&str>,
        filter: Option<&[String]>,
        place: &Place,
    ) -> (Option<qwenedge_sentences::local::Match>, Instant) {
        let started = Instant::now();
        let code = language.unwrap_or(&self.language);
        let mut languages = self.languages.lock().unwrap_or_else(|p| p.into_inner());
        let lang = match resolve(&mut languages, code) {
            Ok(lang) => lang,
            Err(e) => {
                warn!(language = code, error = %e, "no sentence templates for the request's language");
                return (None, started);
            }
        };
        let mut context = Map::new();
        if let Some(area) = self.area(place) {
            context.insert("area".into(), Value::String(area));
        }
        let answer = recognize(lang, text, &self.lists, context, filter);
        if answer.too_complex {
            debug!(steps = answer.steps, "the sentence templates' step budget ran out");
        }
        (answer.found, started)
    }

    fn answer_intent(&self, text: &str, filter: Option<&[String]>, place: &Place) -> LocalAnswer {
        let (found, started) = self.recognize(text, place.language.as_deref(), filter, place);
        match found {
            Some(m) => {
                let texts = m.texts;
                let slots = m
                    .slots
                    .into_iter()
                    .map(|(name, value)| Slot {
                        raw_value: match (texts.get(&name).and_then(Value::as_str), &value) {
                            (Some(t), _) if !t.is_empty() => t.to_string(),
                            (_, Value::String(s)) => s.clone(),
                            (_, other) => other.to_string(),
                        },
                        entity: (name == "name").then(|| self.entity_id(&value)).flatten(),
                        name,
                        value,
                        range: None,
                    })
                    .collect();
                LocalAnswer::Answer(vec![EventBody::Intent {
                    recognized: true,
                    intent: Some(IntentSummary { name: m.intent, confidence: 1.0 }),
                    slots,
                    text: String::new(),
                    source: IntentSource::Local,
                    metadata: Some(m.metadata),
                    usage: Usage::default(),
                    timings: timings(started),
                }])
            }
            None => self.unmatched(started),
        }
    }

    fn unmatched(&self, started: Instant) -> LocalAnswer {
        if self.mode != LocalMode::Only {
            return LocalAnswer::ToModel;
        }
        LocalAnswer::Answer(vec![EventBody::Intent {
            recognized: false,
            intent: None,
            slots: Vec::new(),
            text: String::new(),
            source: IntentSource::Local,
            metadata: None,
            usage: Usage::default(),
            timings: timings(started),
        }])
    }

    /// The speaker's area: the request's own, else its satellite's.
    fn area(&self, place: &Place) -> Option<String> {
        place.area.clone().or_else(|| {
            let site = place.site_id.as_ref()?;
            self.site_areas.get(site).or_else(|| self.home_sites.get(site)).cloned()
        })
    }

    /// The entity id of the device a `{name}` value names.
    fn entity_id(&self, value: &Value) -> Option<String> {
        let qwenedge_sentences::SlotList::Text(names) = self.lists.get("name")? else { return None };
        let said = value.as_str()?;
        names
            .values()
            .iter()
            .find(|v| v.out.as_ref().and_then(Value::as_str) == Some(said))
            .and_then(|v| v.metadata.as_ref()?.get("entity_id")?.as_str().map(str::to_string))
    }
}

/// A language of the data for `code`: itself, else with `_` as `-`, else its family (`en-US` →
/// `en`), as Home Assistant picks one.
fn resolve<'a>(languages: &'a mut Languages, code: &str) -> Result<&'a qwenedge_sentences::Language, LoadError> {
    let normalized = code.replace('_', "-");
    let family = normalized.split('-').next().unwrap_or("").to_string();
    let mut last = None;
    for candidate in [code.to_string(), normalized, family] {
        match languages.get(&candidate) {
            Ok(_) => return languages.get(&candidate),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("three candidates"))
}

pub(crate) fn timings(started: Instant) -> RequestTimings {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    RequestTimings { total_ms: ms, ttft_ms: ms, ..RequestTimings::default() }
}

/// The home as the catalog describes it: its devices, and its areas and floors — declared, or
/// named by a device (or an area's floor).
pub fn home(catalog: &Catalog) -> Home {
    let devices = catalog
        .devices
        .iter()
        .map(|d| Device {
            name: d.name.clone(),
            aliases: d.aliases.clone(),
            domain: d.domain.clone().unwrap_or_default(),
            device_class: d.device_class.clone(),
            area: d.area.clone(),
            floor: d.floor.clone(),
            entity_id: d.entity_id.clone(),
        })
        .collect();
    let mut areas: Vec<Area> =
        catalog.areas.iter().map(|a| Area { name: a.name.clone(), aliases: a.aliases.clone(), floor: a.floor.clone() }).collect();
    for name in catalog.devices.iter().filter_map(|d| d.area.as_ref()) {
        if !areas.iter().any(|a| &a.name == name) {
            areas.push(Area { name: name.clone(), aliases: Vec::new(), floor: None });
        }
    }
    let mut floors: Vec<Floor> = catalog.floors.iter().map(|f| Floor { name: f.name.clone(), aliases: f.aliases.clone() }).collect();
    let named = catalog.devices.iter().filter_map(|d| d.floor.as_ref()).chain(catalog.areas.iter().filter_map(|a| a.floor.as_ref()));
    for name in named {
        if !floors.iter().any(|f| &f.name == name) {
            floors.push(Floor { name: name.clone(), aliases: Vec::new() });
        }
    }
    Home { devices, areas, floors }
}
