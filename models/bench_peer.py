#!/usr/bin/env python3
"""Peer benchmark: prefill and decode throughput of onnxruntime-genai.

Runs greedy generation on an onnxruntime-genai model directory (for example an
int4 export produced by ``models/fixtures/generate.py``) with a fixed number
of CPU threads, and reports the same metrics as the daemon's own benchmark so
the two can be compared.

The prompt is a deterministic sequence of exactly ``--prompt-tokens`` token
ids (a fixed English paragraph, repeated and truncated). Each run measures:

* prefill: the time of ``append_tokens(prompt)``, which runs the prompt
  through the model and produces the first token's logits;
* ttft: from creating the generator until the first new token is chosen
  (generator setup + prefill + first greedy selection);
* decode: the time to generate ``--new-tokens`` further tokens greedily, one
  model step each.

One warm-up run precedes ``--runs`` measured runs; the reported figures are
per-metric medians. A table goes to stderr and exactly one JSON line to
stdout::

    {"engine": "onnxruntime-genai", "version": ..., "prompt_tokens": ...,
     "new_tokens": ..., "threads": ..., "prefill_tok_s": ..., "decode_tok_s": ...,
     "ttft_ms": ..., "peak_rss_mb": ...}

Usage::

    python models/bench_peer.py --model DIR --prompt-tokens 128 --new-tokens 64 --threads 2 [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime_genai as og

PARAGRAPH = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, "
    "counting the steps as his father had taught him. From the gallery he could "
    "see the fishing boats returning to the harbor, their lanterns swaying with "
    "the swell, while gulls circled above the breakwater. He trimmed the wick, "
    "polished the great lens, and wrote the weather in his logbook: wind from the "
    "northwest, visibility good, a low bank of fog gathering beyond the islands."
)


def load_model(model_dir: Path, threads: int) -> og.Model:
    """Load the model with the decoder session limited to ``threads`` intra-op threads."""
    config = og.Config(str(model_dir))
    overlay = {
        "model": {
            "decoder": {
                "session_options": {
                    "intra_op_num_threads": threads,
                    "inter_op_num_threads": 1,
                }
            }
        }
    }
    config.overlay(json.dumps(overlay))
    return og.Model(config)


def build_prompt(tokenizer: og.Tokenizer, count: int) -> np.ndarray:
    """Exactly ``count`` token ids from the paragraph, repeated as needed."""
    repeats = 1
    while True:
        ids = tokenizer.encode(" ".join([PARAGRAPH] * repeats))
        if len(ids) >= count:
            return np.ascontiguousarray(ids[:count], dtype=np.int32)
        repeats *= 2


def run_once(model: og.Model, prompt: np.ndarray, new_tokens: int) -> dict[str, float]:
    """One timed generation: prefill, first token, then ``new_tokens`` decode steps."""
    total = len(prompt) + 1 + new_tokens
    start = time.perf_counter()
    params = og.GeneratorParams(model)
    # min_length keeps an EOS from ending the run early.
    params.set_search_options(do_sample=False, max_length=total, min_length=total)
    generator = og.Generator(model, params)
    prefill_start = time.perf_counter()
    generator.append_tokens(prompt)
    prefill_end = time.perf_counter()
    generator.generate_next_token()
    first_token = time.perf_counter()
    for _ in range(new_tokens):
        generator.generate_next_token()
    end = time.perf_counter()
    produced = len(generator.get_sequence(0)) - len(prompt)
    if produced != 1 + new_tokens:
        raise RuntimeError(f"expected {1 + new_tokens} generated tokens, got {produced}")
    prefill_s = prefill_end - prefill_start
    decode_s = end - first_token
    return {
        "prefill_ms": prefill_s * 1e3,
        "prefill_tok_s": len(prompt) / prefill_s,
        "ttft_ms": (first_token - start) * 1e3,
        "decode_ms": decode_s * 1e3,
        "decode_tok_s": new_tokens / decode_s if new_tokens else 0.0,
    }


def context_length(model_dir: Path) -> int | None:
    try:
        config = json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))
        return int(config["model"]["context_length"])
    except (OSError, KeyError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="onnxruntime-genai model directory")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    parser.add_argument("--runs", type=int, default=3, help="measured runs after one warm-up")
    args = parser.parse_args(argv)
    if args.prompt_tokens < 1 or args.new_tokens < 0 or args.threads < 1 or args.runs < 1:
        parser.error("--prompt-tokens, --threads and --runs must be positive; --new-tokens non-negative")
    limit = context_length(args.model)
    if limit is not None and args.prompt_tokens + 1 + args.new_tokens > limit:
        parser.error(f"prompt + new tokens exceed the model's context length ({limit})")

    model = load_model(args.model, args.threads)
    prompt = build_prompt(og.Tokenizer(model), args.prompt_tokens)

    run_once(model, prompt, args.new_tokens)  # warm-up
    runs = [run_once(model, prompt, args.new_tokens) for _ in range(args.runs)]
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    columns = ["prefill_ms", "prefill_tok_s", "ttft_ms", "decode_ms", "decode_tok_s"]
    print(
        f"onnxruntime-genai {og.__version__}  model={args.model}  prompt={args.prompt_tokens}  "
        f"new={args.new_tokens}  threads={args.threads}",
        file=sys.stderr,
    )
    print(f"{'run':>8}" + "".join(f"{c:>15}" for c in columns), file=sys.stderr)
    for index, run in enumerate(runs, 1):
        print(f"{index:>8}" + "".join(f"{run[c]:>15.2f}" for c in columns), file=sys.stderr)
    print(f"{'median':>8}" + "".join(f"{median[c]:>15.2f}" for c in columns), file=sys.stderr)
    print(f"peak RSS: {peak_rss_mb:.1f} MB", file=sys.stderr)

    result = {
        "engine": "onnxruntime-genai",
        "version": og.__version__,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "prefill_tok_s": round(median["prefill_tok_s"], 3),
        "decode_tok_s": round(median["decode_tok_s"], 3),
        "ttft_ms": round(median["ttft_ms"], 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
