"""Home Assistant Core itself driving qwenedge, end to end (run by tests/ha/run.sh).

Starts Home Assistant with a fresh state, onboards an administrator and makes a long-lived token
through HA's REST and WebSocket APIs, puts the four test devices in areas and the kitchen on a
floor, starts the daemon with `[homeassistant]` pointing at it, and checks, through HA's own
integrations set up with their config flows:

- Wyoming: on/off for each of the four devices and an area command are executed by HA (entity
  states read back); a sentence no template matches gets the handle program's answer.
- Ollama (Assist control, `llm_hass_api: ["assist"]`): a conversation of two turns with tool calls
  completes without an error and the calls were executed; the model is named by the model.
- The home sync: a rename, an added alias and an un-exposed entity reach the daemon's matcher
  within 5 s without a restart; with HA stopped the last copy serves and the log says so once,
  also across a daemon restart; HA back, the daemon reads the home again.

Prints one JSON line per check with its figures; exits 1 if any failed.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

from harness import Daemon, HomeAssistant, free_port, wait_for

SYNC_LIMIT_S = 5.0
DEVICES = {
    "light.kitchen_light": ("kitchen light", "kitchen"),
    "light.living_room_lamp": ("living room lamp", "living_room"),
    "switch.coffee_maker": ("coffee maker", "kitchen"),
    "switch.living_room_fan": ("living room fan", "living_room"),
}
DOWN_LINE = "serves; retrying"
FAILED = []


def report(check, ok, **figures):
    print(json.dumps({"check": check, "ok": bool(ok), **figures}), flush=True)
    if not ok:
        FAILED.append(check)


def home_setup(ha):
    """Areas for the devices, the kitchen on a floor with an alias."""
    areas = {a["name"]: a["area_id"] for a in ha.call("config/area_registry/list")}
    for name in ("Kitchen", "Living Room"):
        if name not in areas:
            areas[name] = ha.call("config/area_registry/create", name=name)["area_id"]
    floor = ha.call("config/floor_registry/create", name="Ground Floor", aliases=["downstairs"], level=0)
    ha.call("config/area_registry/update", area_id=areas["Kitchen"], floor_id=floor["floor_id"])
    ids = {"kitchen": areas["Kitchen"], "living_room": areas["Living Room"]}
    for entity_id, (_, area) in DEVICES.items():
        ha.call("config/entity_registry/update", entity_id=entity_id, area_id=ids[area])


def switch_all(ha, state):
    service = "turn_on" if state == "on" else "turn_off"
    ha.call("call_service", domain="homeassistant", service=service, target={"entity_id": list(DEVICES)})
    wait_for(f"every device {state}", lambda: all(ha.state(e) == state for e in DEVICES), 10)


def expect_states(ha, wanted, settle_s=5.0):
    """Waits for `wanted` states; returns the states seen."""
    try:
        wait_for("the states", lambda: all(ha.state(e) == s for e, s in wanted.items()), settle_s)
    except TimeoutError:
        pass
    return {e: ha.state(e) for e in wanted}


def speech(result):
    return (((result.get("response") or {}).get("speech") or {}).get("plain") or {}).get("speech") or ""


def check_wyoming(ha, port):
    entry = ha.flow("wyoming", {"host": "127.0.0.1", "port": port})
    agent = ha.agent(entry)
    switch_all(ha, "off")
    times = []
    for entity_id, (name, _) in DEVICES.items():
        for state in ("on", "off"):
            result, ms = ha.say(agent, f"turn {state} the {name}")
            times.append(ms)
            seen = expect_states(ha, {entity_id: state})
            report(f"wyoming: turn {state} the {name}", seen[entity_id] == state and result["response"]["response_type"] != "error",
                   ms=round(ms, 1), state=seen[entity_id], response_type=result["response"]["response_type"])
    ha.call("call_service", domain="homeassistant", service="turn_on",
            target={"entity_id": ["light.kitchen_light", "switch.coffee_maker", "light.living_room_lamp"]})
    expect_states(ha, {"light.kitchen_light": "on", "switch.coffee_maker": "on", "light.living_room_lamp": "on"})
    result, ms = ha.say(agent, "turn off the lights in the kitchen")
    seen = expect_states(ha, {"light.kitchen_light": "off", "switch.coffee_maker": "on", "light.living_room_lamp": "on"})
    report("wyoming: turn off the lights in the kitchen", seen == {"light.kitchen_light": "off", "switch.coffee_maker": "on",
                                                                   "light.living_room_lamp": "on"}, ms=round(ms, 1), states=seen)
    before = {e: ha.state(e) for e in DEVICES}
    result, ms = ha.say(agent, "tell me a story about a dragon who loves tea")
    after = {e: ha.state(e) for e in DEVICES}
    kind = result["response"]["response_type"]
    report("wyoming: a sentence no template matches gets the handle program's answer",
           kind != "error" and speech(result).strip() != "" and before == after, ms=round(ms, 1), response_type=kind,
           speech=speech(result)[:80])
    report("wyoming: command round trips", True, ms_mean=round(sum(times) / len(times), 1), ms_max=round(max(times), 1))
    return agent


def check_satellite(ha, agent):
    """A device in the kitchen says "turn on the lights": HA's device registry gives the daemon
    the speaker's area (the transcript's `device_id`), followed without a restart. The device is
    the one the Ollama agent's set-up made (the test's home has no other)."""
    device = ha.call("config/device_registry/list")[0]
    kitchen = [a["area_id"] for a in ha.call("config/area_registry/list") if a["name"] == "Kitchen"][0]
    switch_all(ha, "off")
    ha.call("config/device_registry/update", device_id=device["id"], area_id=kitchen)
    started = time.monotonic()
    conversation = None

    def lit():
        nonlocal conversation
        result, _ = ha.say_from(agent, "turn on the lights", device["id"])
        return ha.state("light.kitchen_light") == "on" and result

    try:
        wait_for("the kitchen lights from a kitchen device", lit, 5, 0.2)
        seconds = round(time.monotonic() - started, 2)
    except TimeoutError:
        seconds = None
    others = {e: ha.state(e) for e in DEVICES if e != "light.kitchen_light"}
    report("wyoming: \"turn on the lights\" from a device in the kitchen lights the kitchen only",
           seconds is not None and all(s == "off" for s in others.values()), seconds=seconds, others=others)


def check_ollama(ha, http_port):
    entry = ha.flow("ollama", {"url": f"http://127.0.0.1:{http_port}"})
    form = ha.rest("POST", "/api/config/config_entries/subentries/flow", {"handler": [entry, "conversation"]})
    options = [o for f in form.get("data_schema", []) if f.get("name") == "model"
               for o in f.get("selector", {}).get("select", {}).get("options", [])]
    downloaded = [o["value"] for o in options if "(downloaded)" in o.get("label", "")]
    report("ollama: the model is named by the model, not its directory", downloaded == ["tiny-a-int4:latest"], offered=downloaded)
    done = ha.rest("POST", f"/api/config/config_entries/subentries/flow/{form['flow_id']}",
                   {"name": "qwenedge", "model": downloaded[0], "llm_hass_api": ["assist"]})
    if done.get("type") != "create_entry":
        raise RuntimeError(f"ollama subentry flow: {done}")
    subentry = [s for s in ha.call("config_entries/subentries/list", entry_id=entry) if s["title"] == "qwenedge"][0]
    agent = ha.agent(entry, subentry["subentry_id"])
    switch_all(ha, "off")
    conversation = None
    for state in ("on", "off"):
        result, ms = ha.say(agent, f"turn {state} the living room lamp", conversation)
        conversation = result.get("conversation_id")
        seen = expect_states(ha, {"light.living_room_lamp": state})
        kind = result["response"]["response_type"]
        report(f"ollama: turn {state} the living room lamp (turn of one conversation, with a tool call)",
               kind != "error" and seen["light.living_room_lamp"] == state, ms=round(ms, 1), response_type=kind,
               state=seen["light.living_room_lamp"], speech=speech(result)[:60])


def synced_within(daemon, text, wanted, limit=SYNC_LIMIT_S):
    """Seconds until the daemon's matcher answers `text` as `wanted` wants (None: too late)."""
    started = time.monotonic()
    try:
        wait_for(text, lambda: wanted(daemon.intent(text)), limit, 0.05)
    except TimeoutError:
        return None
    return round(time.monotonic() - started, 3)


def check_sync(ha, daemon):
    ha.call("config/entity_registry/update", entity_id="light.kitchen_light", name="Pantry Light")
    s = synced_within(daemon, "turn on the pantry light", lambda m: m and m.get("name") == "Pantry Light")
    report("sync: an entity renamed in HA is matched by its new name", s is not None, seconds=s)
    ha.call("config/entity_registry/update", entity_id="switch.coffee_maker", aliases=[None, "Espresso Machine"])
    s = synced_within(daemon, "turn on the espresso machine", lambda m: m and m.get("intent") == "HassTurnOn")
    report("sync: an alias added in HA is matched", s is not None, seconds=s)
    ha.call("homeassistant/expose_entity", assistants=["conversation"], entity_ids=["switch.living_room_fan"], should_expose=False)
    # "turn on the living room fan" still matches HA's template "{area} fan" (area and domain);
    # the entity's own name must be gone.
    s = synced_within(daemon, "turn on the living room fan", lambda m: m is None or m.get("name") != "Living Room Fan")
    gone = daemon.intent("turn on the living room fan")
    report("sync: an entity un-exposed in HA is no longer matched by its name", s is not None, seconds=s, now=gone)


def check_outage(ha, daemon):
    ha.stop()
    wait_for("the daemon to notice", lambda: daemon.home().get("sync") == "stale", 60, 0.2)
    time.sleep(7)  # several retries (retry_max_ms = 2000)
    matched = daemon.intent("turn on the pantry light")
    lines = daemon.log().count(DOWN_LINE)
    report("outage: HA stopped, the last copy serves and the log says so once", matched and lines == 1,
           log_lines=lines, home=daemon.home())
    daemon.stop()
    mark = len(daemon.log())
    daemon.start()
    matched = daemon.intent("turn on the pantry light")
    time.sleep(5)
    log = daemon.log()[mark:]
    report("outage: restarted while HA is down, the daemon serves the last copy", matched and "last copy" in log
           and log.count(DOWN_LINE) == 1, log_lines=log.count(DOWN_LINE))
    good = open(daemon.token_file).read()
    with open(daemon.token_file, "w") as f:
        f.write("not-a-token\n")
    started = ha.start()
    ha.connect()
    refused = wait_for("the refusal", lambda: "token was refused" in (daemon.home().get("error") or ""), 60, 0.2)
    report("outage: a token HA refuses leaves the last copy serving, the error says so",
           refused and daemon.home().get("sync") == "stale" and daemon.intent("turn on the pantry light"),
           error=daemon.home().get("error"))
    with open(daemon.token_file, "w") as f:
        f.write(good)
    wait_for("Home Assistant RUNNING", lambda: ha.call("get_config")["state"] == "RUNNING", 120, 0.25)
    back = time.monotonic()
    wait_for("the daemon to read the home again", lambda: daemon.home().get("sync") == "live", 60, 0.2)
    report("outage: HA back, the daemon reads the home again", True, ha_start_s=round(started, 1),
           resync_s=round(time.monotonic() - back, 2), reconnected="reconnected" in daemon.log()[mark:])
    ha.call("config/entity_registry/update", entity_id="light.living_room_lamp", aliases=[None, "Reading Lamp"])
    s = synced_within(daemon, "turn on the reading lamp", lambda m: m and m.get("intent") == "HassTurnOn")
    report("outage: changes after the reconnection are followed", s is not None, seconds=s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="the chroot tests/ha/setup.sh built")
    ap.add_argument("--binary", required=True, help="the qwenedge binary")
    ap.add_argument("--model", required=True, help="the model directory the daemon serves")
    ap.add_argument("--work", required=True, help="an empty directory for the daemon's files and the logs")
    a = ap.parse_args()
    ha_port, http_port, wyoming_port = free_port(), free_port(), free_port()
    ha = HomeAssistant(a.root, "/srv/qwenedge-test", ha_port, os.path.join(a.work, "home-assistant.out"))
    token_file = os.path.join(a.work, "ha-token")
    config = f"""[model]
path = {json.dumps(a.model)}
threads = 1

[socket]
path = {json.dumps(os.path.join(a.work, "qwenedge.sock"))}

[http]
enabled = true
listen = "127.0.0.1:{http_port}"

[wyoming]
enabled = true
listen = "127.0.0.1:{wyoming_port}"
programs = ["intent", "handle"]

[cache]
max_disk_mb = 0

# Commands come from the sentence templates alone; what they do not match is a chat answer of
# the model (the handle program). A test model has random weights: asked for an intent, it picks
# one at random, which Home Assistant would then execute.
[intents]
local = "only"

[homeassistant]
url = "http://127.0.0.1:{ha_port}"
token_file = {json.dumps(token_file)}
copy_file = {json.dumps(os.path.join(a.work, "home-assistant.json"))}
retry_max_ms = 2000
"""
    daemon = Daemon(a.binary, a.work, config)
    daemon.token_file = token_file
    try:
        report("ha: started and onboarded", True, start_s=round(ha.start(), 1))
        token = ha.onboard()
        home_setup(ha)
        with open(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(token + "\n")
        started = time.monotonic()
        daemon.start()
        wait_for("the home from HA", lambda: daemon.home().get("sync") == "live" and daemon.home().get("entities") == 4, 60)
        first = daemon.intent("turn on the kitchen light")
        report("sync: the daemon reads the home from HA", first and first.get("name") == "Kitchen Light",
               seconds=round(time.monotonic() - started, 2), home=daemon.home())
        doctor = subprocess.run([a.binary, "doctor", "--json", "--config", daemon.config], capture_output=True, text=True,
                                env=dict(os.environ, NO_COLOR="1"), timeout=120)
        found = json.loads(doctor.stdout.strip().splitlines()[-1]).get("homeassistant", {})
        report("doctor: reaches HA with the token and reads the home", found.get("status") == "ok" and found.get("entities") == 4
               and found.get("daemon", {}).get("sync") == "live", summary=found.get("summary"))
        wyoming = check_wyoming(ha, wyoming_port)
        check_ollama(ha, http_port)
        check_satellite(ha, wyoming)
        check_sync(ha, daemon)
        check_outage(ha, daemon)
    except Exception as e:  # noqa: BLE001 - any failure is reported with the logs' place
        traceback.print_exc()
        report("ha: the run", False, error=f"{type(e).__name__}: {e}", logs=a.work)
    finally:
        daemon.stop()
        ha.stop()
    print(json.dumps({"summary": "home assistant", "failed": FAILED}), flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
