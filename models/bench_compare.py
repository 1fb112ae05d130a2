"""Summarises two sides of a benchmark run by models/bench_vs_peer.sh or models/bench_backends.sh.

usage: bench_compare.py MODEL_DIR N LABEL_A LABEL_B RUN_A_1..RUN_A_N RUN_B_1..RUN_B_N
Each RUN is one JSON line of `qwenedge bench` or bench_peer.py. Prints a table (medians over
the rounds, the largest peak RSS, ratio A/B) and one JSON line with both summaries and the ratios.
"""
import json
import os
import statistics
import sys

KEYS = ("prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb")


def summary(rs):
    out = dict(rs[0])
    for key in ("prefill_tok_s", "decode_tok_s", "ttft_ms"):
        out[key] = statistics.median(r[key] for r in rs)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
    out["rounds"] = [{k: r[k] for k in KEYS} for r in rs]
    return out


def main():
    model, n, la, lb = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    runs = [json.loads(x) for x in sys.argv[5:]]
    if len(runs) != 2 * n:
        sys.exit(f"bench_compare: expected {2 * n} runs, got {len(runs)}")
    a, b = summary(runs[:n]), summary(runs[n:])
    data_mb = os.path.getsize(os.path.join(model, "model.onnx.data")) / 2**20
    print(f"model {model}  (model.onnx.data {data_mb:.1f} MiB), {a.get('threads')} threads, median of {n} rounds")
    print(f"{'':16}{la:>12}{lb:>12}{'ratio':>8}")
    for key in KEYS:
        print(f"{key:16}{a[key]:>12.1f}{b[key]:>12.1f}{a[key] / b[key]:>8.2f}")
    print(f"{'rss/weights':16}{a['peak_rss_mb'] / data_mb:>12.2f}{b['peak_rss_mb'] / data_mb:>12.2f}")
    print(json.dumps({la: a, lb: b,
                      "decode_ratio": a["decode_tok_s"] / b["decode_tok_s"],
                      "prefill_ratio": a["prefill_tok_s"] / b["prefill_tok_s"],
                      "rss_over_weights": a["peak_rss_mb"] / data_mb}))


if __name__ == "__main__":
    main()
