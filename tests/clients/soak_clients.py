"""The soak's HTTP and Wyoming traffic through the real client libraries: one OpenAI SDK client
(streamed chats), one Ollama client at Home Assistant's pin (streamed chats) and Home Assistant's
Wyoming conversation turns (a new connection per transcript), each looping while a traffic window
is open. Every request must end exactly once: one finish_reason and the end of the stream for
OpenAI, one `done` chunk for Ollama, one answer event for Wyoming. Run by tests/e2e/soak.rs; prints
one JSON line of counts per client and every failure met.

usage: soak_clients.py --base-url URL --model NAME --wyoming-port PORT --windows START:END[,START:END…]
(the windows in seconds since the epoch)
"""

import argparse
import asyncio
import json
import threading
import time

import ollama
import openai
from wyoming.asr import Transcript
from wyoming.client import AsyncTcpClient
from wyoming.handle import Handled, HandledStop

from checks import patience

UTTERANCES = ["turn on the kitchen light", "set the living room lamp to 40 percent", "what time is it",
              "start a timer for 5 minutes", "tell me a joke", "never mind"]
ANSWERS = ("intent", "not-recognized", "handled", "not-handled", "error")


def windows(spec):
    return [tuple(float(x) for x in w.split(":")) for w in spec.split(",")]


def loop(name, spans, one, counts, failures):
    """Runs `one(n)` while a window is open; counts what ended well and records what did not."""
    n = 0
    for start, end in spans:
        time.sleep(max(0.0, start - time.time()))
        while time.time() < end:
            try:
                one(n)
                counts[name] = counts.get(name, 0) + 1
            except Exception as e:  # every failure is reported, whatever raised it
                failures.append(f"{name} #{n}: {type(e).__name__}: {e}")
            n += 1


def openai_chat(client, model):
    def one(n):
        stream = client.chat.completions.create(
            model=model, stream=True, max_tokens=12, temperature=0.7, seed=n,
            messages=[{"role": "user", "content": f"say something about number {n}"}])
        finishes = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
        if len(finishes) != 1:
            raise AssertionError(f"{len(finishes)} finish reasons: {finishes}")
    return one


def ollama_chat(client, model):
    def one(n):
        chunks = list(client.chat(model=model, stream=True, options={"num_predict": 12, "seed": n},
                                  messages=[{"role": "user", "content": f"hello number {n}"}]))
        done = [c for c in chunks if c.done]
        if len(done) != 1 or not chunks[-1].done:
            raise AssertionError(f"{len(done)} done chunks of {len(chunks)}")
    return one


async def turn(port, text):
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcript(text=text, language="en").event())
        while True:
            event = await asyncio.wait_for(client.read_event(), patience(120))
            if event is None:
                raise AssertionError("the connection closed before an answer")
            if Handled.is_type(event.type):
                stop = await asyncio.wait_for(client.read_event(), patience(10))
                if stop is None or not HandledStop.is_type(stop.type):
                    raise AssertionError(f"handled without handled-stop: {stop}")
                return event.type
            if event.type in ANSWERS:
                if event.type == "error":
                    raise AssertionError(f"error: {event.data}")
                return event.type


def wyoming_turn(port):
    def one(n):
        asyncio.run(turn(port, UTTERANCES[n % len(UTTERANCES)]))
    return one


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--wyoming-port", type=int, required=True)
    p.add_argument("--windows", required=True)
    a = p.parse_args()
    spans = windows(a.windows)
    counts, failures = {}, []
    oa = openai.OpenAI(base_url=f"{a.base_url}/v1", api_key="none", max_retries=0, timeout=patience(300))
    ol = ollama.Client(host=a.base_url, timeout=patience(300))
    clients = {"openai": openai_chat(oa, a.model), "ollama": ollama_chat(ol, a.model), "wyoming": wyoming_turn(a.wyoming_port)}
    threads = [threading.Thread(target=loop, args=(name, spans, one, counts, failures)) for name, one in clients.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"counts": counts, "failures": failures[:20], "failed": len(failures)}), flush=True)


if __name__ == "__main__":
    main()
