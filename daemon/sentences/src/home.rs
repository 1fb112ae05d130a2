//! The home's names as Home Assistant gives them to its matcher: `{name}` from the devices'
//! names and aliases, each value with the device's `domain` (and `device_class`) as context
//! so that "open the garage door" only finds covers; `{area}` and `{floor}` from the areas' and
//! floors' names and aliases.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::lists::{SlotList, TextList, TextValue};
use crate::template::Expr;
use crate::text::normalize;
use crate::SlotLists;

/// A device (an entity, in Home Assistant's terms) that can be named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Its name.
    pub name: String,
    /// Other names for it.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Home Assistant's domain (`light`, `cover`, `switch`, …); empty: unknown (the name then
    /// carries no domain, and any template that takes a name may match it).
    #[serde(default)]
    pub domain: String,
    /// Home Assistant's device class (`garage_door`, `window`, …).
    #[serde(default)]
    pub device_class: Option<String>,
    /// The area it is in.
    #[serde(default)]
    pub area: Option<String>,
    /// The floor it is on.
    #[serde(default)]
    pub floor: Option<String>,
    /// Home Assistant's entity id, when known.
    #[serde(default)]
    pub entity_id: Option<String>,
}

/// An area.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Area {
    /// Its name.
    pub name: String,
    /// Other names for it.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The floor it is on.
    #[serde(default)]
    pub floor: Option<String>,
}

/// A floor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Floor {
    /// Its name.
    pub name: String,
    /// Other names for it.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// What the home holds that a command can name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Home {
    /// Devices.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Areas.
    #[serde(default)]
    pub areas: Vec<Area>,
    /// Floors.
    #[serde(default)]
    pub floors: Vec<Floor>,
}

fn plain(text: &str, out: Value, context: Option<Map<String, Value>>, metadata: Option<Value>) -> TextValue {
    TextValue { input: Expr::Text(normalize(text)), out: Some(out), context, metadata }
}

impl Home {
    /// The `name`, `area` and `floor` lists (always present, possibly empty).
    pub fn slot_lists(&self) -> SlotLists {
        let mut names = Vec::new();
        for d in &self.devices {
            let mut context = Map::new();
            if !d.domain.is_empty() {
                context.insert("domain".into(), Value::String(d.domain.clone()));
            }
            if let Some(dc) = &d.device_class {
                context.insert("device_class".into(), Value::String(dc.clone()));
            }
            let metadata = json!({
                "domain": d.domain,
                "name": d.name,
                "entity_id": d.entity_id.clone().unwrap_or_else(|| format!("{}.{}", d.domain, slug(&d.name))),
            });
            for said in std::iter::once(&d.name).chain(&d.aliases) {
                names.push(plain(said, Value::String(said.clone()), Some(context.clone()), Some(metadata.clone())));
            }
        }
        let areas = self
            .areas
            .iter()
            .flat_map(|a| std::iter::once(&a.name).chain(&a.aliases))
            .map(|n| plain(n, Value::String(n.clone()), None, None))
            .collect();
        let floors = self
            .floors
            .iter()
            .flat_map(|f| std::iter::once(&f.name).chain(&f.aliases))
            .map(|n| plain(n, Value::String(n.clone()), None, None))
            .collect();
        let mut lists = SlotLists::default();
        lists.insert("name".into(), SlotList::Text(TextList::new(names)));
        lists.insert("area".into(), SlotList::Text(TextList::new(areas)));
        lists.insert("floor".into(), SlotList::Text(TextList::new(floors)));
        lists
    }
}

/// An id from a name, as Home Assistant's tests make one (`Living Room Lamp` → `living_room_lamp`).
pub(crate) fn slug(name: &str) -> String {
    crate::text::strip(name).to_lowercase().replace(' ', "_")
}
