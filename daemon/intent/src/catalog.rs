//! The intent catalog: which intents a voice request may resolve to, their slots and the
//! devices entity slots are drawn from, read from TOML and validated once at load so a mistake
//! (a duplicate intent, an enum without values, min above max) stops start-up with a message
//! naming the intent and the slot instead of producing a grammar that cannot be satisfied.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The catalog shipped with the daemon (Home Assistant's built-in intents and example devices),
/// used when the configuration names none.
pub const BUILTIN: &str = include_str!("../../../deploy/intents.toml");

/// Longest text slot, in characters.
pub const MAX_TEXT_LEN: usize = 200;

/// Why a catalog cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("{path}: {msg}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's message.
        msg: String,
    },
    /// The TOML does not have the catalog's shape.
    #[error("{origin}: {msg}")]
    Syntax {
        /// The file, or `built-in catalog`.
        origin: String,
        /// The parser's message.
        msg: String,
    },
    /// The catalog parses but is wrong.
    #[error("{origin}: {place}: {msg}")]
    Invalid {
        /// The file, or `built-in catalog`.
        origin: String,
        /// `intent 'X'`, `intent 'X', slot 'y'` or `device 'z'`.
        place: String,
        /// What is wrong.
        msg: String,
    },
}

impl CatalogError {
    /// The file the error is about (or `built-in catalog`).
    pub fn origin(&self) -> String {
        match self {
            Self::Read { path, .. } => path.display().to_string(),
            Self::Syntax { origin, .. } | Self::Invalid { origin, .. } => origin.clone(),
        }
    }
}

/// Where entity values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntitySource {
    /// Device names.
    Name,
    /// Areas devices are in.
    Area,
    /// Floors devices are on.
    Floor,
}

impl EntitySource {
    /// The key in the devices list.
    pub fn as_str(self) -> &'static str {
        match self {
            EntitySource::Name => "name",
            EntitySource::Area => "area",
            EntitySource::Floor => "floor",
        }
    }
}

/// A slot's type and the values it allows.
#[derive(Debug, Clone, PartialEq)]
pub enum SlotKind {
    /// One of `values`.
    Enum {
        /// Allowed values.
        values: Vec<String>,
    },
    /// A number within `min..=max`, with up to `decimals` fraction digits.
    Number {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
        /// Unit, for descriptions (`%`, `°C`).
        unit: Option<String>,
        /// Fraction digits allowed (0 = whole numbers).
        decimals: u32,
    },
    /// Free text of at most `max_len` characters (no newline, no `<`).
    Text {
        /// Longest value, in characters.
        max_len: usize,
    },
    /// A name drawn from the devices list.
    Entity {
        /// Which names.
        source: EntitySource,
    },
}

/// One slot of an intent.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotDef {
    /// Slot name (`brightness`).
    pub name: String,
    /// What it means, shown to the model.
    pub description: String,
    /// Whether the intent needs it.
    pub required: bool,
    /// Type and allowed values.
    pub kind: SlotKind,
}

/// One intent.
#[derive(Debug, Clone, PartialEq)]
pub struct IntentDef {
    /// Intent name (`HassLightSet`).
    pub name: String,
    /// What it does, shown to the model.
    pub description: String,
    /// Slots in the order the model writes them.
    pub slots: Vec<SlotDef>,
    /// Example utterances.
    pub examples: Vec<String>,
}

/// A device entity slots may name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Spoken name (`kitchen light`).
    pub name: String,
    /// Home Assistant entity id (`light.kitchen`).
    #[serde(default)]
    pub entity_id: Option<String>,
    /// Area (`kitchen`).
    #[serde(default)]
    pub area: Option<String>,
    /// Floor (`ground floor`).
    #[serde(default)]
    pub floor: Option<String>,
    /// Domain (`light`).
    #[serde(default)]
    pub domain: Option<String>,
    /// Other names it answers to (`ceiling light`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Home Assistant's device class (`garage_door`, `window`).
    #[serde(default)]
    pub device_class: Option<String>,
}

/// An area of the home (`[[area]]`), with the names it answers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AreaDef {
    /// Name (`Living Room`).
    pub name: String,
    /// Other names (`lounge`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The floor it is on.
    #[serde(default)]
    pub floor: Option<String>,
}

/// A floor of the home (`[[floor]]`), with the names it answers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloorDef {
    /// Name (`Ground Floor`).
    pub name: String,
    /// Other names (`downstairs`).
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// A validated catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    /// The intents, in file order.
    pub intents: Vec<IntentDef>,
    /// The devices.
    pub devices: Vec<Device>,
    /// Areas declared with their aliases (devices' areas are areas too).
    pub areas: Vec<AreaDef>,
    /// Floors declared with their aliases (devices' and areas' floors are floors too).
    pub floors: Vec<FloorDef>,
    /// What loading left out, one line each (an entity slot the home has no values for: a
    /// home without floors keeps its intents, without their floor slot).
    pub notes: Vec<String>,
    /// Extra instructions for the model (`system` in the file).
    pub system: Option<String>,
    /// The intents as declared, before a home without areas or floors trimmed them (another
    /// home may have them).
    declared: Vec<IntentDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    intent: Vec<RawIntent>,
    #[serde(default)]
    device: Vec<Device>,
    #[serde(default)]
    area: Vec<AreaDef>,
    #[serde(default)]
    floor: Vec<FloorDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntent {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    examples: Vec<String>,
    #[serde(default)]
    slots: Vec<RawSlot>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlot {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    required: bool,
    values: Option<Vec<String>>,
    min: Option<f64>,
    max: Option<f64>,
    unit: Option<String>,
    decimals: Option<u32>,
    max_len: Option<usize>,
    source: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevices {
    #[serde(default)]
    device: Vec<Device>,
    #[serde(default)]
    area: Vec<AreaDef>,
    #[serde(default)]
    floor: Vec<FloorDef>,
}

impl Catalog {
    /// The built-in catalog.
    pub fn builtin() -> Result<Self, CatalogError> {
        Self::parse(BUILTIN, "built-in catalog")
    }

    /// Reads and validates `path`; `devices` (a file of `[[device]]` tables) replaces the
    /// catalog's own devices when given.
    pub fn load(path: Option<&Path>, devices: Option<&Path>) -> Result<Self, CatalogError> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| CatalogError::Read { path: p.to_path_buf(), msg: e.to_string() });
        let mut catalog = match path {
            Some(p) => Self::parse(&read(p)?, &p.display().to_string())?,
            None => Self::builtin()?,
        };
        if let Some(d) = devices {
            let origin = d.display().to_string();
            let raw: RawDevices =
                toml::from_str(&read(d)?).map_err(|e| CatalogError::Syntax { origin: origin.clone(), msg: e.to_string() })?;
            catalog = catalog.with_home(raw.device, raw.area, raw.floor, &origin)?;
        }
        Ok(catalog)
    }

    /// This catalog's intents with another home: `devices`, `areas` and `floors` replace its
    /// own (checked as a devices file is, `origin` naming them in errors and notes).
    pub fn with_home(&self, devices: Vec<Device>, areas: Vec<AreaDef>, floors: Vec<FloorDef>, origin: &str) -> Result<Self, CatalogError> {
        check_devices(&devices, origin)?;
        check_places(&areas, &floors, origin)?;
        let mut catalog = Self { intents: self.declared.clone(), devices, areas, floors, notes: Vec::new(), ..self.clone() };
        catalog.prune_empty_entity_slots(origin);
        Ok(catalog)
    }

    /// Parses and validates catalog text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, CatalogError> {
        let raw: RawCatalog = toml::from_str(text).map_err(|e| CatalogError::Syntax { origin: origin.into(), msg: e.to_string() })?;
        let invalid = |place: String, msg: String| CatalogError::Invalid { origin: origin.into(), place, msg };
        if raw.intent.is_empty() {
            return Err(invalid("catalog".into(), "defines no intents ([[intent]] tables)".into()));
        }
        check_devices(&raw.device, origin)?;
        check_places(&raw.area, &raw.floor, origin)?;
        let mut names = BTreeSet::new();
        let mut intents = Vec::new();
        for ri in raw.intent {
            let place = format!("intent '{}'", ri.name);
            if !is_identifier(&ri.name, true) {
                return Err(invalid(place, "the name must be 1 to 64 letters, digits or '_', starting with a letter".into()));
            }
            if ri.name == super::grammar::NO_INTENT {
                return Err(invalid(place, "the name is reserved for the \"no intent\" answer".into()));
            }
            if !names.insert(ri.name.clone()) {
                return Err(invalid(place, "is defined twice".into()));
            }
            let mut slot_names = BTreeSet::new();
            let mut slots = Vec::new();
            for rs in ri.slots {
                let place = format!("intent '{}', slot '{}'", ri.name, rs.name);
                if !is_identifier(&rs.name, false) {
                    return Err(invalid(place, "the name must be 1 to 64 lowercase letters, digits or '_', starting with a letter".into()));
                }
                if !slot_names.insert(rs.name.clone()) {
                    return Err(invalid(place, "is defined twice".into()));
                }
                let kind = slot_kind(&rs).map_err(|msg| invalid(place.clone(), msg))?;
                slots.push(SlotDef { name: rs.name, description: rs.description, required: rs.required, kind });
            }
            intents.push(IntentDef { name: ri.name, description: ri.description, slots, examples: ri.examples });
        }
        let mut catalog = Catalog {
            declared: intents.clone(),
            intents,
            devices: raw.device,
            areas: raw.area,
            floors: raw.floor,
            system: raw.system,
            notes: Vec::new(),
        };
        catalog.prune_empty_entity_slots(origin);
        Ok(catalog)
    }

    /// Leaves out the entity slots the home has no values for (no device has a floor, say),
    /// and an intent whose required slot that is; each gets a line in `notes`.
    fn prune_empty_entity_slots(&mut self, origin: &str) {
        let empty: Vec<EntitySource> = [EntitySource::Name, EntitySource::Area, EntitySource::Floor]
            .into_iter()
            .filter(|s| self.entity_values(*s).is_empty())
            .collect();
        if empty.is_empty() {
            return;
        }
        let is_empty = |slot: &SlotDef| matches!(slot.kind, SlotKind::Entity { source } if empty.contains(&source));
        let mut notes = Vec::new();
        self.intents.retain_mut(|intent| {
            if let Some(slot) = intent.slots.iter().find(|s| s.required && is_empty(s)) {
                notes.push(format!(
                    "{origin}: intent '{}' left out: its required slot '{}' names {}s, and the home has none",
                    intent.name,
                    slot.name,
                    source_name(slot)
                ));
                return false;
            }
            for slot in intent.slots.iter().filter(|s| is_empty(s)) {
                notes.push(format!(
                    "{origin}: intent '{}' without its slot '{}': the home has no {}s",
                    intent.name,
                    slot.name,
                    source_name(slot)
                ));
            }
            intent.slots.retain(|s| !is_empty(s));
            true
        });
        self.notes.extend(notes);
    }

    /// The intent named `name`.
    pub fn intent(&self, name: &str) -> Option<&IntentDef> {
        self.intents.iter().find(|i| i.name == name)
    }

    /// The distinct values an entity slot allows, in list order.
    /// The values of areas and floors are the declared ones (`[[area]]`, `[[floor]]`) and
    /// those the devices (and areas) are in.
    pub fn entity_values(&self, source: EntitySource) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        let devices = self.devices.iter().filter_map(|d| match source {
            EntitySource::Name => Some(d.name.as_str()),
            EntitySource::Area => d.area.as_deref(),
            EntitySource::Floor => d.floor.as_deref(),
        });
        let declared: Vec<&str> = match source {
            EntitySource::Name => Vec::new(),
            EntitySource::Area => self.areas.iter().map(|a| a.name.as_str()).collect(),
            EntitySource::Floor => {
                self.floors.iter().map(|f| f.name.as_str()).chain(self.areas.iter().filter_map(|a| a.floor.as_deref())).collect()
            }
        };
        devices.chain(declared).filter(|v| seen.insert(*v)).collect()
    }

    /// The device named `name` (for an entity slot drawn from names).
    pub fn device(&self, name: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.name == name)
    }
}

/// True for names made of letters, digits and `_`, starting with a letter, at most 64 bytes;
/// `upper` allows capitals.
fn is_identifier(s: &str, upper: bool) -> bool {
    let ok_char = |c: char| c.is_ascii_digit() || c == '_' || c.is_ascii_lowercase() || (upper && c.is_ascii_uppercase());
    s.len() <= 64 && s.starts_with(|c: char| c.is_ascii_alphabetic()) && s.chars().all(ok_char)
}

/// A value the grammar can write between markup: non-empty, one line, no `<`.
fn check_value(v: &str) -> Result<(), String> {
    if v.trim().is_empty() || v.trim() != v {
        return Err(format!("value {v:?} is empty or has leading/trailing spaces"));
    }
    if v.chars().any(|c| c.is_control() || c == '<') || v.len() > MAX_TEXT_LEN {
        return Err(format!("value {v:?} has a control character or '<', or is longer than {MAX_TEXT_LEN} bytes"));
    }
    Ok(())
}

fn slot_kind(rs: &RawSlot) -> Result<SlotKind, String> {
    let extra = |allowed: &[&str]| -> Result<(), String> {
        let present = [
            ("values", rs.values.is_some()),
            ("min", rs.min.is_some()),
            ("max", rs.max.is_some()),
            ("unit", rs.unit.is_some()),
            ("decimals", rs.decimals.is_some()),
            ("max_len", rs.max_len.is_some()),
            ("source", rs.source.is_some()),
        ];
        match present.iter().find(|(k, set)| *set && !allowed.contains(k)) {
            Some((k, _)) => Err(format!("'{k}' does not apply to a slot of type '{}'", rs.kind)),
            None => Ok(()),
        }
    };
    match rs.kind.as_str() {
        "enum" => {
            extra(&["values"])?;
            let values = rs.values.clone().unwrap_or_default();
            if values.is_empty() {
                return Err("an enum slot needs a non-empty 'values' list".into());
            }
            let mut seen = BTreeSet::new();
            for v in &values {
                check_value(v)?;
                if !seen.insert(v.as_str()) {
                    return Err(format!("value {v:?} is listed twice"));
                }
            }
            Ok(SlotKind::Enum { values })
        }
        "number" => {
            extra(&["min", "max", "unit", "decimals"])?;
            let (Some(min), Some(max)) = (rs.min, rs.max) else {
                return Err("a number slot needs both 'min' and 'max'".into());
            };
            let whole = |x: f64| x.is_finite() && x.fract() == 0.0 && x.abs() < 1e12;
            if !whole(min) || !whole(max) {
                return Err(format!("min ({min}) and max ({max}) must be whole numbers"));
            }
            if min > max {
                return Err(format!("min ({min}) is greater than max ({max})"));
            }
            let decimals = rs.decimals.unwrap_or(0);
            if decimals > 3 {
                return Err(format!("decimals ({decimals}) must be 0 to 3"));
            }
            if decimals > 0 && min < 0.0 {
                return Err("fractions ('decimals') need min >= 0".into());
            }
            Ok(SlotKind::Number { min: min as i64, max: max as i64, unit: rs.unit.clone(), decimals })
        }
        "text" => {
            extra(&["max_len"])?;
            let max_len = rs.max_len.unwrap_or(64);
            if max_len == 0 || max_len > MAX_TEXT_LEN {
                return Err(format!("max_len ({max_len}) must be 1 to {MAX_TEXT_LEN}"));
            }
            Ok(SlotKind::Text { max_len })
        }
        "entity" => {
            extra(&["source"])?;
            let source = match rs.source.as_deref().unwrap_or("name") {
                "name" => EntitySource::Name,
                "area" => EntitySource::Area,
                "floor" => EntitySource::Floor,
                other => return Err(format!("source '{other}' is not one of name, area, floor")),
            };
            Ok(SlotKind::Entity { source })
        }
        other => Err(format!("type '{other}' is not one of enum, number, text, entity")),
    }
}

fn check_devices(devices: &[Device], origin: &str) -> Result<(), CatalogError> {
    let mut names = BTreeSet::new();
    for d in devices {
        let invalid = |msg: String| CatalogError::Invalid { origin: origin.into(), place: format!("device '{}'", d.name), msg };
        for v in [Some(&d.name), d.area.as_ref(), d.floor.as_ref(), d.domain.as_ref(), d.device_class.as_ref()]
            .into_iter()
            .flatten()
            .chain(&d.aliases)
        {
            check_value(v).map_err(invalid)?;
        }
        // Homes reuse names across rooms ("Ceiling Light" in each): the area tells them apart.
        if !names.insert((d.name.as_str(), d.area.as_deref())) {
            return Err(invalid("is listed twice".into()));
        }
    }
    Ok(())
}

fn check_places(areas: &[AreaDef], floors: &[FloorDef], origin: &str) -> Result<(), CatalogError> {
    let mut names = BTreeSet::new();
    for (kind, name, aliases, floor) in areas
        .iter()
        .map(|a| ("area", &a.name, &a.aliases, a.floor.as_ref()))
        .chain(floors.iter().map(|f| ("floor", &f.name, &f.aliases, None)))
    {
        let invalid = |msg: String| CatalogError::Invalid { origin: origin.into(), place: format!("{kind} '{name}'"), msg };
        for v in std::iter::once(name).chain(aliases).chain(floor) {
            check_value(v).map_err(invalid)?;
        }
        if !names.insert((kind, name.as_str())) {
            return Err(invalid("is listed twice".into()));
        }
    }
    Ok(())
}

fn source_name(slot: &SlotDef) -> &'static str {
    match slot.kind {
        SlotKind::Entity { source } => source.as_str(),
        _ => "value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Catalog::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn the_builtin_catalog_loads_with_home_assistant_intents() {
        let c = Catalog::builtin().unwrap();
        for name in ["HassTurnOn", "HassLightSet", "HassStartTimer", "HassNevermind", "HassGetWeather"] {
            assert!(c.intent(name).is_some(), "{name}");
        }
        let light = c.intent("HassLightSet").unwrap();
        let brightness = light.slots.iter().find(|s| s.name == "brightness").unwrap();
        assert!(matches!(brightness.kind, SlotKind::Number { min: 0, max: 100, .. }));
        assert!(!c.entity_values(EntitySource::Area).is_empty());
    }

    #[test]
    fn mistakes_name_the_intent_and_slot() {
        let e = err("[[intent]]\nname = \"A\"\n[[intent]]\nname = \"A\"\n");
        assert!(e.contains("intent 'A'") && e.contains("twice"), "{e}");
        let e = err("[[intent]]\nname = \"A\"\n[[intent.slots]]\nname = \"c\"\ntype = \"enum\"\nvalues = []\n");
        assert!(e.contains("intent 'A', slot 'c'") && e.contains("non-empty"), "{e}");
        let e = err("[[intent]]\nname = \"A\"\n[[intent.slots]]\nname = \"n\"\ntype = \"number\"\nmin = 5\nmax = 1\n");
        assert!(e.contains("slot 'n'") && e.contains("min (5) is greater than max (1)"), "{e}");
        let e = err("[[intent]]\nname = \"A\"\n[[intent.slots]]\nname = \"n\"\ntype = \"colour\"\n");
        assert!(e.contains("type 'colour'"), "{e}");
        let c =
            Catalog::parse("[[intent]]\nname = \"A\"\n[[intent.slots]]\nname = \"n\"\ntype = \"entity\"\nsource = \"area\"\n", "t.toml")
                .unwrap();
        assert!(c.intents[0].slots.is_empty() && c.notes[0].contains("slot 'n'") && c.notes[0].contains("no areas"), "{:?}", c.notes);
        let c = Catalog::parse("[[intent]]\nname = \"A\"\n[[intent.slots]]\nname = \"n\"\ntype = \"entity\"\nsource = \"floor\"\nrequired = true\n[[intent]]\nname = \"B\"\n", "t.toml").unwrap();
        assert_eq!(c.intents.len(), 1, "{:?}", c.notes);
        assert!(c.notes[0].contains("intent 'A' left out"), "{:?}", c.notes);
        let e = err("[[intent]]\nname = \"A\"\n[[intent.slots]]\nname = \"n\"\ntype = \"text\"\nvalues = [\"x\"]\n");
        assert!(e.contains("'values' does not apply"), "{e}");
        assert!(err("").contains("defines no intents"));
        assert!(err("[[intent]]\nnam = \"A\"\n").contains("t.toml"));
        let e = err("[[intent]]\nname = \"A\"\n[[device]]\nname = \"x\"\n[[device]]\nname = \"x\"\n");
        assert!(e.contains("device 'x'") && e.contains("twice"), "{e}");
    }
}
