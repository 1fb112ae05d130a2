"""The daemon's Wyoming server through the wyoming package Home Assistant uses (and zeroconf's
browser). Run by tests/e2e/wyoming.rs; each check exits non-zero with one line saying what failed, and
prints one JSON line (figures, or the events received, for the Rust side to check against the
catalog) when it passes.

usage: check_wyoming.py CHECK --port PORT [--count N] [--clients N] [--turns N] [--name NAME]
"""

import argparse
import asyncio
import json
import socket
import time

from wyoming.asr import Transcript
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.handle import Handled, HandledStop, NotHandled
from wyoming.info import Describe, Info
from wyoming.intent import Intent, NotRecognized

from checks import check, fail, patience

UTTERANCES = ["turn on the kitchen light", "set the living room lamp to 40 percent", "turn off all the lights in the bedroom",
              "what time is it", "start a timer for 5 minutes", "tell me a joke", "set the temperature to 21 degrees",
              "pause the music in the office", "make the kitchen lights blue", "never mind"]
ANSWERS = ("intent", "not-recognized", "handled", "not-handled", "error")


async def describe(port):
    began = time.perf_counter()
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        event = await asyncio.wait_for(client.read_event(), patience(10))
    elapsed = (time.perf_counter() - began) * 1e3
    check(event is not None and Info.is_type(event.type), f"describe answered {event}")
    return Info.from_event(event), elapsed


async def turn(port, text, context):
    """One utterance as Home Assistant sends it: a new connection and a transcript; the events up to
    the answer (through handled-stop after a handled)."""
    events = []
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcript(text=text, language="en", context=context).event())
        while True:
            event = await asyncio.wait_for(client.read_event(), patience(120))
            check(event is not None, f"the connection closed after {[e['type'] for e in events]}")
            events.append({"type": event.type, "data": event.data})
            if Handled.is_type(event.type):
                stop = await asyncio.wait_for(client.read_event(), patience(10))
                check(stop is not None and HandledStop.is_type(stop.type), f"handled was not followed by handled-stop: {stop}")
                events.append({"type": stop.type, "data": stop.data})
                return events
            if event.type in ANSWERS:
                return events


def parse_answer(events):
    """The answer event, parsed by the package's own classes (a field it cannot read fails here)."""
    last = events[-1]
    e = Event(type=last["type"], data=last["data"])
    for cls in (Intent, NotRecognized, Handled, NotHandled, Error):
        if cls.is_type(e.type):
            return cls.from_event(e)
    fail(f"no answer in {events}")


async def check_describe(args):
    info, ms = await describe(args.port)
    print(json.dumps({"describe_ms": round(ms, 1),
                      "intent": [{"name": p.name, "installed": p.installed, "languages": [l for m in p.models for l in m.languages]} for p in info.intent],
                      "handle": [{"name": p.name, "installed": p.installed, "streaming": p.supports_handled_streaming,
                                  "languages": [l for m in p.models for l in m.languages]} for p in info.handle]}))


async def check_turns(args):
    """`count` utterances, one connection each: prints every answer for the Rust side."""
    out = []
    for i in range(args.count):
        context = {"conversation_id": f"conv-{i}", "device_id": "kitchen-satellite"}
        events = await turn(args.port, UTTERANCES[i % len(UTTERANCES)] if not args.text else args.text, context)
        parse_answer([e for e in events if e["type"] in ANSWERS])
        check(answer_context(events) == context, f"context not echoed: {events}")
        out.append(events)
    print(json.dumps(out))


def answer_context(events):
    for e in events:
        if e["type"] in ANSWERS:
            return e["data"].get("context")
    return None


async def check_load(args):
    """`clients` concurrent clients x `turns` utterances: every turn answered exactly once."""
    answered = {}

    async def client(c):
        for t in range(args.turns):
            key = f"{c}-{t}"
            events = await turn(args.port, UTTERANCES[(c + t) % len(UTTERANCES)], {"conversation_id": key})
            answers = [e for e in events if e["type"] in ANSWERS]
            check(len(answers) == 1, f"turn {key}: {len(answers)} answers in {events}")
            check(answers[0]["data"].get("context", {}).get("conversation_id") == key, f"turn {key}: context {answers[0]}")
            answered[key] = answers[0]["type"]

    began = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(args.clients)))
    kinds = {}
    for k in answered.values():
        kinds[k] = kinds.get(k, 0) + 1
    check(len(answered) == args.clients * args.turns, f"{len(answered)} turns answered")
    print(json.dumps({"turns": len(answered), "answers": kinds, "seconds": round(time.perf_counter() - began, 1)}))


def check_zeroconf(args):
    """Browses for the daemon's record. Multicast must work here: the check first announces a
    service of its own and looks for it; where it cannot see its own, it says so and stops (the
    record is then covered by the unit test of transport/wyoming/zeroconf.rs)."""
    from zeroconf import ServiceBrowser, ServiceInfo, Zeroconf
    zc = Zeroconf()
    own = ServiceInfo("_wyoming._tcp.local.", "probe-%d._wyoming._tcp.local." % args.port,
                      addresses=[socket.inet_aton("127.0.0.1")], port=1)
    zc.register_service(own)
    found = {}

    class Listener:
        def add_service(self, zc, type_, name):
            found[name] = zc.get_service_info(type_, name, int(patience(3) * 1000))

        def update_service(self, zc, type_, name):
            pass

        def remove_service(self, zc, type_, name):
            pass

    ServiceBrowser(zc, "_wyoming._tcp.local.", Listener())
    want = f"{args.name}._wyoming._tcp.local."
    deadline = time.time() + patience(10)
    # Both records, or the deadline: seeing the daemon's before this check's own would otherwise
    # pass for "multicast does not work here".
    while time.time() < deadline and not (want in found and own.name in found):
        time.sleep(0.2)
    multicast = own.name in found
    zc.unregister_service(own)
    zc.close()
    if not multicast:
        print(json.dumps({"multicast": False}))
        return
    info = found.get(want)
    check(info is not None, f"{want} not announced (seen: {sorted(found)})")
    check(info.port == args.expect_port, f"announced port {info.port}, not {args.expect_port}")
    print(json.dumps({"multicast": True, "name": want, "port": info.port,
                      "addresses": [socket.inet_ntoa(a) for a in info.addresses if len(a) == 4]}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("check", choices=["describe", "turns", "load", "zeroconf"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--text", default="")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--name", default="")
    p.add_argument("--expect-port", type=int, default=0)
    args = p.parse_args()
    if args.check == "zeroconf":
        check_zeroconf(args)
        return
    asyncio.run({"describe": check_describe, "turns": check_turns, "load": check_load}[args.check](args))


main()
