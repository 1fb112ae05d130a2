//! The home as Home Assistant's registries describe it, turned into the catalog's devices,
//! areas and floors — with Home Assistant's own rules: an entity takes part when it is exposed to
//! Assist (its stored setting, else the default for new entities: the domains and device classes
//! Home Assistant exposes, never hidden or configuration entities); its names are its aliases,
//! where the computed name stands for the entity's name; its area is its own, else its device's;
//! its floor is its area's. No I/O here: the session feeds the registries in.

use std::collections::{BTreeMap, BTreeSet};

use qwenedge_intent::{AreaDef, Device, FloorDef, MAX_TEXT_LEN};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Domains Home Assistant exposes to Assist by default (`exposed_entities.py`).
const DEFAULT_EXPOSED_DOMAINS: &[&str] =
    &["climate", "cover", "fan", "humidifier", "light", "media_player", "scene", "switch", "todo", "vacuum", "water_heater"];
/// Binary-sensor device classes exposed by default.
const DEFAULT_EXPOSED_BINARY_SENSOR: &[&str] = &["door", "garage_door", "lock", "motion", "opening", "presence", "window"];
/// Sensor device classes exposed by default.
const DEFAULT_EXPOSED_SENSOR: &[&str] =
    &["aqi", "carbon_monoxide", "carbon_dioxide", "humidity", "pm10", "pm25", "temperature", "volatile_organic_compounds"];

/// A copy of the home: what the matcher and the model's catalog are fed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaHome {
    /// Home Assistant's version.
    pub ha_version: String,
    /// When it was taken (Unix time, milliseconds).
    pub synced_at_ms: u64,
    /// Entities exposed to Assist.
    pub devices: Vec<Device>,
    /// Areas.
    pub areas: Vec<AreaDef>,
    /// Floors.
    pub floors: Vec<FloorDef>,
    /// The area of each device with one (by device id) and of each Assist satellite entity
    /// (by entity id): the speaker's area of a Wyoming transcript that names its `device_id`
    /// or `satellite_id`.
    #[serde(default)]
    pub site_areas: BTreeMap<String, String>,
}

impl HaHome {
    /// Whether `other` describes the same home (the time it was taken aside).
    pub fn same_home(&self, other: &HaHome) -> bool {
        self.devices == other.devices && self.areas == other.areas && self.floors == other.floors && self.site_areas == other.site_areas
    }
}

/// Home Assistant's answers the home is built from.
#[derive(Debug, Default)]
pub struct Registries {
    /// `get_states`.
    pub states: Value,
    /// `config/entity_registry/list`.
    pub entities: Value,
    /// `homeassistant/expose_entity/list` (`exposed_entities`: entities with a stored setting).
    pub exposed: Value,
    /// `homeassistant/expose_new_entities/get` for `conversation`.
    pub expose_new: bool,
    /// `config/entity_registry/get_entries` for the exposed registry entities (their aliases).
    pub extended: Value,
    /// `config/area_registry/list`.
    pub areas: Value,
    /// `config/floor_registry/list`.
    pub floors: Value,
    /// `config/device_registry/list`.
    pub devices: Value,
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

/// A name the catalog can hold (no control characters or `<`, at most 200 bytes).
fn usable(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_TEXT_LEN && !name.chars().any(|c| c.is_control() || c == '<')
}

fn by_key<'a>(list: &'a Value, key: &str) -> BTreeMap<&'a str, &'a Value> {
    list.as_array().into_iter().flatten().filter_map(|v| Some((v.get(key)?.as_str()?, v))).collect()
}

/// Aliases of an area or floor, without its name, blanks or repeats.
fn aliases(v: &Value, name: &str) -> Vec<String> {
    let mut seen = BTreeSet::from([name.to_string()]);
    v.get("aliases")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::trim))
        .filter(|a| usable(a) && seen.insert(a.to_string()))
        .map(str::to_string)
        .collect()
}

/// The registry entities exposed to Assist that have a state (`entity_id`s), for which the
/// session asks their aliases.
pub fn exposed_registry_ids(r: &Registries) -> Vec<String> {
    let entries = by_key(&r.entities, "entity_id");
    state_ids(r).into_iter().filter(|id| entries.get(id.as_str()).is_some_and(|e| exposed(r, id, Some(e)))).collect()
}

fn state_ids(r: &Registries) -> Vec<String> {
    r.states.as_array().into_iter().flatten().filter_map(|s| s.get("entity_id")?.as_str().map(str::to_string)).collect()
}

fn device_class_of(state: Option<&Value>, entry: Option<&Value>) -> Option<String> {
    state
        .and_then(|s| s.get("attributes")?.get("device_class")?.as_str().map(str::to_string))
        .or_else(|| entry.and_then(|e| text(e, "device_class").or_else(|| text(e, "original_device_class"))))
}

/// Whether Assist may act on `id`: the stored setting, else Home Assistant's default.
fn exposed(r: &Registries, id: &str, entry: Option<&Value>) -> bool {
    let Some(entry) = entry else {
        // Entities without a registry entry: only a stored setting counts.
        return r.exposed.get(id).and_then(|a| a.get("conversation")).and_then(Value::as_bool).unwrap_or(false);
    };
    if let Some(stored) = entry.pointer("/options/conversation/should_expose").and_then(Value::as_bool) {
        return stored;
    }
    if !r.expose_new || !entry.get("entity_category").is_none_or(Value::is_null) || !entry.get("hidden_by").is_none_or(Value::is_null) {
        return false;
    }
    let domain = id.split('.').next().unwrap_or("");
    if DEFAULT_EXPOSED_DOMAINS.contains(&domain) {
        return true;
    }
    let states = by_key(&r.states, "entity_id");
    let class = device_class_of(states.get(id).copied(), Some(entry));
    match (domain, class.as_deref()) {
        ("binary_sensor", Some(c)) => DEFAULT_EXPOSED_BINARY_SENSOR.contains(&c),
        ("sensor", Some(c)) => DEFAULT_EXPOSED_SENSOR.contains(&c),
        _ => false,
    }
}

/// The home the registries describe, taken at `synced_at_ms`.
pub fn build(r: &Registries, ha_version: &str, synced_at_ms: u64) -> HaHome {
    let floors_by_id = by_key(&r.floors, "floor_id");
    let areas_by_id = by_key(&r.areas, "area_id");
    let devices_by_id = by_key(&r.devices, "id");
    let entries = by_key(&r.entities, "entity_id");
    let states = by_key(&r.states, "entity_id");
    let floor_name = |id: Option<&str>| id.and_then(|id| floors_by_id.get(id)).and_then(|f| text(f, "name")).filter(|n| usable(n));

    let floors: Vec<FloorDef> = floors_by_id
        .values()
        .filter_map(|f| {
            let name = text(f, "name").filter(|n| usable(n))?;
            Some(FloorDef { aliases: aliases(f, &name), name })
        })
        .collect();
    let areas: Vec<AreaDef> = areas_by_id
        .values()
        .filter_map(|a| {
            let name = text(a, "name").filter(|n| usable(n))?;
            Some(AreaDef { aliases: aliases(a, &name), floor: floor_name(a.get("floor_id").and_then(Value::as_str)), name })
        })
        .collect();
    let area_name = |id: Option<&str>| id.and_then(|id| areas_by_id.get(id)).and_then(|a| text(a, "name")).filter(|n| usable(n));

    let mut devices = Vec::new();
    let mut seen = BTreeSet::new();
    for (id, state) in &states {
        let entry = entries.get(id).copied();
        if entry.is_some_and(|e| !e.get("disabled_by").is_none_or(Value::is_null)) || !exposed(r, id, entry) {
            continue;
        }
        let attributes = state.get("attributes");
        let computed = entry
            .and_then(|e| text(e, "name"))
            .or_else(|| attributes.and_then(|a| text(a, "friendly_name")))
            .or_else(|| entry.and_then(|e| text(e, "original_name")))
            .unwrap_or_else(|| id.split_once('.').map_or(*id, |(_, o)| o).replace('_', " "));
        // Aliases in Home Assistant's order, `null` standing for the computed name; none stored:
        // the computed name alone.
        let stored = r.extended.get(*id).and_then(|e| e.get("aliases")).and_then(Value::as_array);
        let mut names: Vec<String> = match stored {
            Some(list) if !list.is_empty() => list
                .iter()
                .filter_map(|a| match a {
                    Value::Null => Some(computed.clone()),
                    Value::String(s) => Some(s.trim().to_string()),
                    _ => None,
                })
                .collect(),
            _ => vec![computed.clone()],
        };
        let mut unique = BTreeSet::new();
        names.retain(|n| usable(n) && unique.insert(n.clone()));
        let Some(name) = names.first().cloned() else { continue };
        let device = entry.and_then(|e| e.get("device_id")?.as_str()).and_then(|d| devices_by_id.get(d));
        let area_id = entry.and_then(|e| e.get("area_id")?.as_str()).or_else(|| device.and_then(|d| d.get("area_id")?.as_str()));
        let area = area_name(area_id);
        if !seen.insert((name.clone(), area.clone())) {
            continue;
        }
        let floor = area_id.and_then(|a| areas_by_id.get(a)).and_then(|a| floor_name(a.get("floor_id").and_then(Value::as_str)));
        devices.push(Device {
            name,
            aliases: names.split_off(1),
            entity_id: Some(id.to_string()),
            domain: id.split_once('.').map(|(d, _)| d.to_string()),
            device_class: device_class_of(Some(state), entry).filter(|c| usable(c)),
            area,
            floor,
        });
    }
    let mut site_areas = BTreeMap::new();
    for (id, device) in &devices_by_id {
        if let Some(area) = area_name(device.get("area_id").and_then(Value::as_str)) {
            site_areas.insert(id.to_string(), area);
        }
    }
    for (id, entry) in entries.iter().filter(|(id, _)| id.starts_with("assist_satellite.")) {
        let device_area =
            entry.get("device_id").and_then(Value::as_str).and_then(|d| devices_by_id.get(d)).and_then(|d| d.get("area_id")?.as_str());
        if let Some(area) = area_name(entry.get("area_id").and_then(Value::as_str).or(device_area)) {
            site_areas.insert(id.to_string(), area);
        }
    }
    HaHome { ha_version: ha_version.to_string(), synced_at_ms, devices, areas, floors, site_areas }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registries() -> Registries {
        Registries {
            states: json!([
                {"entity_id": "light.kitchen_light", "attributes": {"friendly_name": "Kitchen Light"}},
                {"entity_id": "switch.coffee_maker", "attributes": {"friendly_name": "Coffee Maker"}},
                {"entity_id": "light.hidden", "attributes": {"friendly_name": "Hidden"}},
                {"entity_id": "binary_sensor.front_door", "attributes": {"friendly_name": "Front Door", "device_class": "door"}},
                {"entity_id": "sensor.power", "attributes": {"friendly_name": "Power", "device_class": "power"}},
                {"entity_id": "input_boolean.x", "attributes": {"friendly_name": "X"}},
                {"entity_id": "light.legacy", "attributes": {"friendly_name": "Legacy Lamp"}},
                {"entity_id": "light.bad", "attributes": {"friendly_name": "bad<name"}}
            ]),
            entities: json!([
                {"entity_id": "light.kitchen_light", "area_id": null, "device_id": "dev1", "name": null, "original_name": "Kitchen Light",
                 "options": {"conversation": {"should_expose": true}}},
                {"entity_id": "switch.coffee_maker", "area_id": "kitchen", "name": "Espresso", "options": {}},
                {"entity_id": "light.hidden", "hidden_by": "user", "options": {}},
                {"entity_id": "binary_sensor.front_door", "options": {}, "area_id": "hall"},
                {"entity_id": "sensor.power", "options": {}},
                {"entity_id": "input_boolean.x", "options": {}},
                {"entity_id": "light.bad", "options": {}}
            ]),
            exposed: json!({"light.legacy": {"conversation": true}}),
            expose_new: true,
            extended: json!({"light.kitchen_light": {"aliases": [null, "Counter Lamp", " ", "Counter Lamp"]},
                             "switch.coffee_maker": {"aliases": ["Coffee Machine"]}}),
            areas: json!([
                {"area_id": "kitchen", "name": "Kitchen", "aliases": ["Cookhouse", "Kitchen"], "floor_id": "ground"},
                {"area_id": "hall", "name": "Hall", "aliases": [], "floor_id": null}
            ]),
            floors: json!([{"floor_id": "ground", "name": "Ground Floor", "aliases": ["downstairs"]}]),
            devices: json!([{"id": "dev1", "area_id": "kitchen"}, {"id": "sat1", "area_id": "hall"}, {"id": "nowhere", "area_id": null}]),
        }
    }

    #[test]
    fn home_assistants_rules_pick_the_entities_and_their_names() {
        let r = registries();
        let home = build(&r, "2026.11.0", 7);
        let by_id: BTreeMap<_, _> = home.devices.iter().map(|d| (d.entity_id.clone().unwrap(), d)).collect();
        let names: Vec<_> = by_id.keys().map(String::as_str).collect();
        assert_eq!(names, ["binary_sensor.front_door", "light.kitchen_light", "light.legacy", "switch.coffee_maker"]);
        let kitchen = by_id["light.kitchen_light"];
        assert_eq!((kitchen.name.as_str(), kitchen.aliases.clone()), ("Kitchen Light", vec!["Counter Lamp".to_string()]));
        assert_eq!((kitchen.area.as_deref(), kitchen.floor.as_deref()), (Some("Kitchen"), Some("Ground Floor")), "area from the device");
        // Aliases without the computed name: only the aliases name it.
        assert_eq!(by_id["switch.coffee_maker"].name, "Coffee Machine");
        assert!(by_id["switch.coffee_maker"].aliases.is_empty());
        let door = by_id["binary_sensor.front_door"];
        assert_eq!((door.device_class.as_deref(), door.domain.as_deref()), (Some("door"), Some("binary_sensor")));
        assert_eq!(home.areas[1].aliases, ["Cookhouse"], "the name is not its own alias");
        assert_eq!(home.floors[0].aliases, ["downstairs"]);
        let sites: Vec<_> = home.site_areas.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(sites, [("dev1", "Kitchen"), ("sat1", "Hall")]);
        assert_eq!(exposed_registry_ids(&r), ["light.kitchen_light", "switch.coffee_maker", "binary_sensor.front_door", "light.bad"]);
    }

    #[test]
    fn stored_settings_and_the_new_entity_default_decide_exposure() {
        let mut r = registries();
        r.entities[0]["options"] = json!({"conversation": {"should_expose": false}});
        r.expose_new = false;
        let home = build(&r, "x", 0);
        let ids: Vec<_> = home.devices.iter().filter_map(|d| d.entity_id.as_deref()).collect();
        assert_eq!(ids, ["light.legacy"], "only stored settings count when new entities are not exposed");
        let mut renamed = registries();
        renamed.entities[0]["name"] = json!("Pantry Light");
        let home = build(&renamed, "x", 0);
        assert!(home.devices.iter().any(|d| d.name == "Pantry Light" && d.aliases == ["Counter Lamp"]));
        assert!(home.same_home(&build(&renamed, "y", 99)));
        assert!(!home.same_home(&build(&registries(), "x", 0)));
    }
}
