"""Writes a benchmark corpus (JSON Lines for `qwenedge intents match` / `bench --local-intents`)
from Home Assistant's intent tests of one language: every test sentence, with the test file's
entities, areas and floors (given on the first line of each file) and its satellite area.

    python corpus.py TESTS_DIR LANGUAGE > corpus.jsonl
"""

import json
import sys
from pathlib import Path

import yaml


def main(tests, language):
    for path in sorted((Path(tests) / language).glob("*/*.yaml")):
        test = yaml.safe_load(path.read_text(encoding="utf-8"))
        home = {
            "devices": [{"name": e["name"], "domain": e["domain"]} for e in test.get("entities", [])],
            "areas": [{"name": a["name"]} for a in test.get("areas", [])],
            "floors": [{"name": f["name"]} for f in test.get("floors", [])],
        }
        area = next((a["name"] for a in test.get("areas", []) if a.get("context_area")), "__context_area__")
        first = True
        for group in test["tests"]:
            for sentence in group["sentences"]:
                line = {"text": sentence, "language": language, "context": {"area": area}}
                if first:
                    line.update(home)
                    first = False
                print(json.dumps(line, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
