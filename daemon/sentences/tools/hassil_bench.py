"""Python hassil's figures on a corpus, for `qwenedge bench --local-intents`: load time of one
language, and per-sentence CPU time of `recognize_best` (p50/p99 over three passes, the lists
built outside the timing), called as Home Assistant calls it.

    python hassil_bench.py DATA_DIR LANGUAGE CORPUS.jsonl
"""

import json
import sys
import time
from pathlib import Path

import hassil
from hassil import Intents, TextSlotList, recognize_best


def main(data, language, corpus):
    started = time.perf_counter()
    intents = Intents.from_dict(json.loads((Path(data) / "intents" / f"{language}.json").read_text(encoding="utf-8")))
    for intent in intents.intents.values():  # templates are parsed on first use: parse them now
        for block in intent.data:
            _ = block.sentences
    load_ms = (time.perf_counter() - started) * 1e3
    home = {}
    lines = []
    for raw in Path(corpus).read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        line = json.loads(raw)
        for key in ("devices", "areas", "floors"):
            if key in line:
                home[key] = line[key]
        lists = {
            "name": TextSlotList.from_tuples(
                [(d["name"], d["name"], {"domain": d["domain"]}) for d in home.get("devices", [])], allow_template=False
            ),
            "area": TextSlotList.from_strings([a["name"] for a in home.get("areas", [])], allow_template=False),
            "floor": TextSlotList.from_strings([f["name"] for f in home.get("floors", [])], allow_template=False),
        }
        lines.append((line["text"], line.get("context", {}), lists))
    times = []
    for _ in range(3):
        times = []
        for text, context, lists in lines:
            t = time.process_time()
            recognize_best(text, intents, slot_lists=lists, intent_context=context,
                           best_metadata_key="hass_custom_sentence", best_slot_name="name")
            times.append((time.process_time() - t) * 1e6)
    times.sort()
    print(json.dumps({
        "version": getattr(hassil, "__version__", "3.12.1"),
        "load_ms": round(load_ms, 1),
        "p50_us": round(times[len(times) // 2]),
        "p99_us": round(times[min(len(times) - 1, len(times) * 99 // 100)]),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:4])
