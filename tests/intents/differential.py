"""Differential test: qwenedge's matcher against hassil itself.

For every language of the shipped data, sentences are generated at random from each template
(alternatives, optionals, permutations, list values, numbers as digits and as words, wildcards,
varied case, punctuation and skip words), and others are made from them that should not match
(words dropped, shuffled, replaced). Each is recognized by hassil's `recognize_best` and by
`qwenedge intents match` with the same home (names with domain context, areas, floors) and the
same satellite area; intent, slots (numbers by value) and metadata must be equal.

    python differential.py QWENEDGE_BINARY DATA_DIR [--per-template N] [--seed S] [--report FILE]

Needs hassil==3.12.1 (and its unicode-rbnf); exits 1 on any difference, listing them.
"""

import argparse
import functools
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from hassil import Intents, TextSlotList, recognize_best
from hassil.expression import Alternative, ListReference, Permutation, RuleReference, Sequence, TextChunk
from hassil.intents import RangeSlotList, WildcardSlotList
from hassil.numbers import get_rbnf_engine
from hassil import string_matcher


def _key_number_words_by_multiplier_too():
    """hassil caches a range's number words under (from, to, step, fractions) but not its
    multiplier, so in one process "volume down fifty percent" gets +50 or -50 depending on
    which 0..100 list was matched with words first. qwenedge applies each list's own
    multiplier; the reference is hassil with the cache keyed by the multiplier as well."""
    build = string_matcher._build_range_trie

    @functools.lru_cache(maxsize=None)
    def cached(language, start, stop, step, fraction_type, multiplier):
        return build(language, RangeSlotList(name=None, start=start, stop=stop, step=step, fraction_type=fraction_type, multiplier=multiplier))

    class NeverCached(dict):
        def get(self, key, default=None):
            return None

        def __setitem__(self, key, value):
            pass

    string_matcher._build_range_trie = lambda language, r: cached(language, r.start, r.stop, r.step, r.fraction_type, r.multiplier)
    string_matcher._RANGE_TRIE_CACHE = __import__("collections").defaultdict(NeverCached)


_key_number_words_by_multiplier_too()

DEVICES = [
    ("Kitchen Light", "light", None),
    ("Living Room Lamp", "light", None),
    ("Light", "light", None),
    ("Garage Door", "cover", "garage_door"),
    ("Window Blind", "cover", "blind"),
    ("Bedroom Fan", "fan", None),
    ("TV", "media_player", "tv"),
    ("Thermostat", "climate", None),
    ("Front Door", "lock", None),
    ("Coffee Maker", "switch", "outlet"),
    ("Robot", "vacuum", None),
    ("Kitchen", "switch", None),
    ("Shopping List", "todo", None),
    ("Movie Time", "scene", None),
    ("Good Night", "script", None),
    ("Sprinkler", "valve", None),
    ("Outdoor Temperature", "sensor", "temperature"),
]
AREAS = ["Kitchen", "Living Room", "Bedroom", "Garage", "Office"]
FLOORS = ["Ground Floor", "First Floor", "Upstairs"]
WILDCARD_WORDS = ["bohemian rhapsody", "milk", "the beatles", "eggs and bread", "jazz", "mom", "dinner is ready"]
NOISE = ["banana", "quickly", "the", "42", "zzz", "purple", "and", "xylophone"]


def home_lists():
    names = TextSlotList.from_tuples(
        [
            (name, name, {"domain": domain, **({"device_class": dc} if dc else {})})
            for name, domain, dc in DEVICES
        ],
        allow_template=False,
        name="name",
    )
    return {
        "name": names,
        "area": TextSlotList.from_strings(AREAS, allow_template=False, name="area"),
        "floor": TextSlotList.from_strings(FLOORS, allow_template=False, name="floor"),
    }


def home_json():
    return {
        "devices": [
            {"name": n, "domain": d, **({"device_class": dc} if dc else {})} for n, d, dc in DEVICES
        ],
        "areas": [{"name": a} for a in AREAS],
        "floors": [{"name": f} for f in FLOORS],
    }


class Sampler:
    """Random sentences from hassil's parsed templates."""

    def __init__(self, intents, lists, rng):
        self.intents = intents
        self.lists = {**intents.slot_lists, **lists}
        self.rng = rng
        try:
            self.engine = get_rbnf_engine(intents.language)
        except ValueError:
            self.engine = None

    def number(self, slot_list):
        numbers = list(slot_list.get_numbers())
        n = self.rng.choice(numbers)
        if slot_list.words and self.engine is not None and self.rng.random() < 0.4:
            try:
                texts = list(self.engine.format_number(n).text_by_ruleset.values())
                if texts:
                    return self.rng.choice(texts)
            except Exception:  # pylint: disable=broad-except
                pass
        if isinstance(n, float):
            text = f"{n:g}"
            return text.replace(".", ",") if self.rng.random() < 0.3 else text
        return str(n)

    def sample(self, e, rules, lists, depth=0):
        if depth > 40:
            return ""
        if isinstance(e, TextChunk):
            return e.original_text
        if isinstance(e, Alternative):
            return self.sample(self.rng.choice(e.items), rules, lists, depth + 1)
        if isinstance(e, Permutation):
            items = list(e.items)
            self.rng.shuffle(items)
            return "".join(self.sample(i, rules, lists, depth + 1) for i in items)
        if isinstance(e, Sequence):
            return "".join(self.sample(i, rules, lists, depth + 1) for i in e.items)
        if isinstance(e, RuleReference):
            rule = rules.get(e.rule_name)
            return "" if rule is None else self.sample(rule.expression, rules, lists, depth + 1)
        if isinstance(e, ListReference):
            slot_list = lists.get(e.list_name)
            if slot_list is None and e.is_inline_range:
                start, stop, step = e.get_inline_range()
                slot_list = RangeSlotList(name=None, start=start, stop=stop, step=step)
            if isinstance(slot_list, TextSlotList):
                if not slot_list.values:
                    return ""
                return self.sample(self.rng.choice(slot_list.values).text_in, rules, lists, depth + 1)
            if isinstance(slot_list, RangeSlotList):
                return self.number(slot_list)
            if isinstance(slot_list, WildcardSlotList):
                return self.rng.choice(WILDCARD_WORDS)
            return ""
        return ""

    def decorate(self, text):
        r = self.rng.random()
        if r < 0.15:
            text = text.upper()
        elif r < 0.3:
            text = text.capitalize()
        r = self.rng.random()
        if r < 0.15:
            text += self.rng.choice(["?", "!", ".", " ?", "…"])
        elif r < 0.25:
            words = text.split(" ")
            if len(words) > 2:
                i = self.rng.randrange(1, len(words))
                words[i - 1] += ","
                text = " ".join(words)
        if self.intents.skip_words and self.rng.random() < 0.15:
            skip = self.rng.choice(self.intents.skip_words)
            text = f"{skip} {text}" if self.rng.random() < 0.5 else f"{text} {skip}"
        return " ".join(text.split()) if self.rng.random() < 0.9 else "  " + text + " "

    def spoil(self, text):
        words = text.split()
        r = self.rng.random()
        if len(words) > 1 and r < 0.35:
            del words[self.rng.randrange(len(words))]
        elif len(words) > 1 and r < 0.6:
            self.rng.shuffle(words)
        elif r < 0.85:
            words.insert(self.rng.randrange(len(words) + 1), self.rng.choice(NOISE))
        else:
            words = [self.rng.choice(NOISE) for _ in range(self.rng.randrange(1, 6))]
        return " ".join(words)

    def sentences(self, per_template):
        out = []
        for intent in self.intents.intents.values():
            for block in intent.data:
                rules = {**self.intents.expansion_rules, **block.expansion_rules}
                lists = {**self.lists, **block.slot_lists}
                for sentence in block.sentences:
                    for _ in range(per_template):
                        out.append(self.decorate(self.sample(sentence.expression, rules, lists)))
        return out


def expected(intents, text, lists, context):
    result = recognize_best(
        text,
        intents,
        slot_lists=lists,
        intent_context=context,
        best_metadata_key="hass_custom_sentence",
        best_slot_name="name",
    )
    if result is None:
        return None
    return {
        "intent": result.intent.name,
        "slots": {name: e.value for name, e in result.entities.items()},
        "metadata": result.intent_metadata or {},
    }


def same(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("data")
    parser.add_argument("--per-template", type=int, default=1)
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--languages", default="")
    parser.add_argument("--report", default="")
    args = parser.parse_args()

    data = Path(args.data)
    languages = [p.stem for p in sorted((data / "intents").glob("*.json"))]
    if args.languages:
        languages = [l for l in languages if l in args.languages.split(",")]
    lists = home_lists()
    lines, wants, kinds = [], [], []
    hassil_seconds = 0.0
    first = True
    for language in languages:
        intents = Intents.from_dict(json.loads((data / "intents" / f"{language}.json").read_text(encoding="utf-8")))
        rng = random.Random(f"{args.seed}-{language}")
        sampler = Sampler(intents, lists, rng)
        generated = sampler.sentences(args.per_template)
        spoiled = [sampler.spoil(t) for t in rng.sample(generated, min(len(generated), max(40, len(generated) // 8)))]
        for kind, texts in (("generated", generated), ("spoiled", spoiled)):
            for text in texts:
                context = {"area": rng.choice(AREAS)} if rng.random() < 0.5 else {}
                started = time.process_time()
                want = expected(intents, text, lists, context)
                hassil_seconds += time.process_time() - started
                line = {"text": text, "language": language, "context": context}
                if first:
                    line.update(home_json())
                    first = False
                lines.append(line)
                wants.append(want)
                kinds.append(kind)
    proc = subprocess.run(
        [args.binary, "intents", "match", "--data", str(data)],
        input="".join(json.dumps(l, ensure_ascii=False) + "\n" for l in lines),
        capture_output=True,
        text=True,
        check=True,
    )
    answers = [json.loads(l) for l in proc.stdout.splitlines()]
    assert len(answers) == len(lines), f"{len(answers)} answers for {len(lines)} lines"
    differences = []
    counts = {"matched": 0, "not matched": 0}
    ours_us = []
    steps = []
    for line, want, got in zip(lines, wants, answers):
        ours_us.append(got.get("elapsed_us", 0))
        steps.append(got.get("steps", 0))
        counts["matched" if want else "not matched"] += 1
        if "error" in got and "step budget" not in got["error"]:
            differences.append(f"{line['language']} {line['text']!r}: error {got['error']}")
            continue
        mine = None
        if got.get("recognized"):
            mine = {"intent": got["intent"], "slots": got["slots"], "metadata": got["metadata"]}
        if not same(mine, want):
            differences.append(f"{line['language']} {line['text']!r} context={line['context']}: hassil {want} qwenedge {mine}")
    ours_us.sort()
    summary = {
        "languages": len(languages),
        "sentences": len(lines),
        "generated": kinds.count("generated"),
        "spoiled": kinds.count("spoiled"),
        "hassil matched": counts["matched"],
        "hassil did not match": counts["not matched"],
        "differences": len(differences),
        "hassil cpu s": round(hassil_seconds, 1),
        "qwenedge p50 us": ours_us[len(ours_us) // 2],
        "qwenedge p99 us": ours_us[len(ours_us) * 99 // 100],
        "qwenedge most steps": max(steps),
    }
    print(json.dumps(summary))
    if args.report:
        Path(args.report).write_text("\n".join(differences) + "\n", encoding="utf-8")
    for d in differences[:40]:
        print(d, file=sys.stderr)
    sys.exit(1 if differences else 0)


if __name__ == "__main__":
    main()
