"""First and second turn of a Home Assistant conversation over the Ollama API, timed at the client
(used by models/bench_http_turns.sh). Each round is a new conversation whose system prompt starts with
a line of its own, so its first turn finds nothing in the prefix cache (as the first conversation
after the daemon starts); its second turn (the tool call and its result) finds the first; then a
new conversation with the same system prompt (another user request) finds the system prompt and
tools, as every conversation after the first one does in Home Assistant."""

import argparse
import asyncio
import json
import statistics
import time

import ollama

from check_http import HA_TOOLS, ha_system_prompt, metrics

REQUESTS = ["Turn on the kitchen light", "Turn off the garage fan", "Set the office lamp to 30 percent",
            "Close the bedroom blinds", "Turn on the coffee maker", "Turn off the hallway light", "Dim the living room lamp"]


def counters(base):
    m = metrics(base)
    return m[("qwenedge_prompt_tokens_total", ())], m[("qwenedge_cached_prompt_tokens_total", ())]


async def turn(client, base, model, messages):
    p0, c0 = counters(base)
    began = time.perf_counter()
    first = None
    last = None
    async for part in await client.chat(model=model, messages=messages, tools=HA_TOOLS, stream=True, keep_alive="-1s",
                                        options={"num_ctx": 8192, "num_predict": 8}, think=False):
        if first is None:
            first = time.perf_counter() - began
        last = part
    p1, c1 = counters(base)
    return first * 1e3, (last.prompt_eval_count, (c1 - c0) / max(p1 - p0, 1))


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--label", default="")
    args = p.parse_args()
    client = ollama.AsyncClient(host=args.base_url)
    firsts, seconds, news, prompts = [], [], [], []
    for r in range(args.rounds):
        system = {"role": "system", "content": f"Conversation {r}.\n" + ha_system_prompt()}
        user = {"role": "user", "content": REQUESTS[r % len(REQUESTS)]}
        t1, p1 = await turn(client, args.base_url, args.model, [system, user])
        call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "HassTurnOn", "arguments": {"name": "kitchen light"}}}]}
        result = {"role": "tool", "content": json.dumps({"speech": {}, "success": True})}
        t2, p2 = await turn(client, args.base_url, args.model, [system, user, call, result])
        other = {"role": "user", "content": REQUESTS[(r + 1) % len(REQUESTS)]}
        t3, p3 = await turn(client, args.base_url, args.model, [system, other])
        firsts.append(t1)
        seconds.append(t2)
        news.append(t3)
        prompts.append((p1, p2, p3))
    f, s, n = statistics.median(firsts), statistics.median(seconds), statistics.median(news)
    print(f"HTTP turns  {args.label}, {args.rounds} rounds (median)")
    for label, (tokens, reused), ms in [("first turn, nothing cached", prompts[0][0], f), ("second turn", prompts[0][1], s),
                                        ("new conversation, same system", prompts[0][2], n)]:
        print(f"  {label:<30} {tokens:>5} prompt tokens  {reused:4.0%} reused   time to first token {ms:8.0f} ms   ratio {ms / f:.3f}")
    print(json.dumps({"first_turn_ttft_ms": round(f, 1), "second_turn_ttft_ms": round(s, 1), "ratio": round(s / f, 3),
                      "new_conversation_ttft_ms": round(n, 1), "new_conversation_ratio": round(n / f, 3),
                      "first_turn_prompt_tokens": prompts[0][0][0], "second_turn_prompt_tokens": prompts[0][1][0],
                      "second_turn_reused": round(prompts[0][1][1], 3), "new_conversation_reused": round(prompts[0][2][1], 3)}))


asyncio.run(main())
