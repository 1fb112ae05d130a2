"""Writes data/numbers/<language>.json: the number words of every range list in the language
files of home-assistant-intents, from CLDR's spell-out rules as the PyPI package unicode-rbnf
formats them -- the same source, engine selection and insertion order as hassil's range
matcher (hassil.string_matcher._build_range_trie), so the Rust matcher finds the same words.

Run with hassil==3.12.1 and unicode-rbnf installed:
    python3 tools/number_words.py data/intents data/numbers
"""

import json
import re
import sys
from pathlib import Path

from hassil.intents import RangeFractionType, RangeSlotList
from hassil.numbers import get_rbnf_engine
from hassil.string_matcher import BREAK_WORDS_TABLE

INLINE_RANGE = re.compile(r"\{(\d+)\.\.(\d+)(?:,(\d+))?:[^}]*\}")


def ranges_of(lang_dict):
    """Every (start, stop, step, fractions) a language's lists and templates use."""
    found = []
    for slot_list in lang_dict.get("lists", {}).values():
        r = slot_list.get("range")
        if r is not None and r.get("words", True):
            found.append((int(r["from"]), int(r["to"]), int(r.get("step", 1)), r.get("fractions")))
    texts = []
    for intent in lang_dict.get("intents", {}).values():
        for block in intent["data"]:
            texts.extend(block["sentences"])
    texts.extend(lang_dict.get("expansion_rules", {}).values())
    for text in texts:
        for m in INLINE_RANGE.finditer(text):
            found.append((int(m[1]), int(m[2]), int(m[3] or 1), None))
    unique = []
    for item in found:
        if item not in unique:
            unique.append(item)
    return unique


def words_for(language, start, stop, step, fractions):
    """(words, number) in the order hassil inserts them into its range trie."""
    engine = get_rbnf_engine(language)
    slot_list = RangeSlotList(
        name=None, start=start, stop=stop, step=step,
        fraction_type=RangeFractionType(fractions) if fractions else None,
    )
    entries = []
    for number in slot_list.get_numbers():
        result = engine.format_number(number)
        used = set()
        for words in result.text_by_ruleset.values():
            if words in used:
                continue
            entries.append([words, number])
            used.add(words)
            words = words.translate(BREAK_WORDS_TABLE)
            if words in used:
                continue
            entries.append([words, number])
            used.add(words)
    return entries


def main(intents_dir, out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(intents_dir).glob("*.json")):
        lang_dict = json.loads(path.read_text(encoding="utf-8"))
        language = lang_dict["language"]
        tables = []
        for start, stop, step, fractions in ranges_of(lang_dict):
            try:
                entries = words_for(language, start, stop, step, fractions)
            except ValueError as err:
                print(f"{language}: no number words ({err})", file=sys.stderr)
                break
            tables.append({"from": start, "to": stop, "step": step, "fractions": fractions, "words": entries})
        (out / path.name).write_text(
            json.dumps({"language": language, "ranges": tables}, ensure_ascii=False, separators=(",", ":")) + "\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
