"""The daemon's HTTP APIs through the real client libraries: the OpenAI SDK, the Ollama client at
Home Assistant's pin (making the calls Home Assistant makes), prometheus_client's parser, and
jsonschema. Run by tests/e2e/http.rs; each check exits non-zero with one line saying what failed,
and prints one JSON line of figures when it passes.

usage: check_http.py CHECK --base-url http://127.0.0.1:PORT --model NAME [--api-key KEY]
"""

import argparse
import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import jsonschema
import ollama
import openai
from prometheus_client.parser import text_string_to_metric_families

from checks import check, fail, patience


# Tool schemas with bounded strings, arrays and numbers (a random-weight model closes a bounded
# value; an unbounded string it may never close).
TOOLS = [
    {"type": "function", "function": {"name": "HassTurnOn", "description": "Turns on a device or entity",
     "parameters": {"type": "object", "additionalProperties": False, "required": ["name"], "properties": {
         "name": {"type": "string", "maxLength": 24},
         "area": {"type": "string", "enum": ["kitchen", "living room", "bedroom"]},
         "domain": {"type": "array", "maxItems": 2, "items": {"type": "string", "enum": ["light", "switch", "fan"]}}}}}},
    {"type": "function", "function": {"name": "HassLightSet", "description": "Sets the brightness or color of a light",
     "parameters": {"type": "object", "additionalProperties": False, "required": ["brightness"], "properties": {
         "name": {"type": "string", "maxLength": 24},
         "brightness": {"type": "integer", "minimum": 0, "maximum": 100},
         "transition": {"type": "number", "minimum": 0, "maximum": 10},
         "on": {"type": "boolean"}}}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ANSWER_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["room", "level", "tags"], "properties": {
    "room": {"type": "string", "maxLength": 16},
    "level": {"type": "integer", "minimum": 0, "maximum": 100},
    "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 8}}}}
SYSTEM = {"role": "system", "content": "You control a smart home. Use the tools."}
USER = {"role": "user", "content": "Set the kitchen light to 40 percent"}


def metrics(base, headers=None):
    req = urllib.request.Request(base + "/metrics", headers=headers or {})
    text = urllib.request.urlopen(req, timeout=patience(30)).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def requests_total(m, transport, outcome=None):
    return sum(v for (name, labels), v in m.items()
               if name == "qwenedge_requests_total" and dict(labels).get("transport") == transport
               and (outcome is None or dict(labels).get("outcome") == outcome))


def check_openai(args):
    client = openai.OpenAI(base_url=args.base_url + "/v1", api_key=args.api_key, max_retries=0, timeout=patience(300))
    figures = {}
    before = metrics(args.base_url, auth(args))
    names = [m.id for m in client.models.list().data]
    check(args.model in names, f"models.list() shows {names}, not {args.model}")

    r = client.chat.completions.create(model=args.model, messages=[USER], max_tokens=12)
    check(r.choices[0].message.content is not None and r.usage.completion_tokens > 0, f"non-streaming chat: {r}")
    chunks = list(client.chat.completions.create(model=args.model, messages=[USER], max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    check(chunks and chunks[-1].choices == [] and chunks[-1].usage is not None, f"no usage chunk last: {chunks[-1:]}")
    check(chunks[-1].usage.completion_tokens == 12, f"usage {chunks[-1].usage}")
    check(any(c.choices and c.choices[0].finish_reason == "length" for c in chunks), "no finish_reason in the stream")

    for label, choice in [("required", "required"), ("named", {"type": "function", "function": {"name": "HassLightSet"}})]:
        good = 0
        for i in range(args.runs):
            r = client.chat.completions.create(model=args.model, messages=[SYSTEM, USER], tools=TOOLS, tool_choice=choice,
                                               temperature=1.0, max_tokens=200, seed=i)
            c = r.choices[0]
            check(c.finish_reason == "tool_calls", f"{label} #{i}: finish_reason {c.finish_reason}, message {c.message}")
            call = c.message.tool_calls[0]
            if label == "named":
                check(call.function.name == "HassLightSet", f"named #{i}: called {call.function.name}")
            arguments = json.loads(call.function.arguments)
            jsonschema.validate(arguments, SCHEMAS[call.function.name])
            check(call.id and call.type == "function", f"{label} #{i}: {call}")
            good += 1
        figures[f"tool_calls_{label}"] = f"{good}/{args.runs}"

    calls = {}
    for chunk in client.chat.completions.create(model=args.model, messages=[SYSTEM, USER], tools=TOOLS, tool_choice="required",
                                                temperature=1.0, max_tokens=200, seed=7, stream=True):
        for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            slot = calls.setdefault(d.index, {"name": "", "arguments": ""})
            slot["name"] += d.function.name or ""
            slot["arguments"] += d.function.arguments or ""
    check(len(calls) == 1, f"streamed tool calls: {calls}")
    jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS[calls[0]["name"]])

    good = 0
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True}}
    for i in range(args.runs):
        r = client.chat.completions.create(model=args.model, messages=[USER], response_format=fmt, temperature=1.0,
                                           max_tokens=100, seed=i)
        jsonschema.validate(json.loads(r.choices[0].message.content), ANSWER_SCHEMA)
        good += 1
    figures["json_schema"] = f"{good}/{args.runs}"

    try:
        client.chat.completions.create(model=args.model, messages=[USER], temperature=500)
        fail("temperature 500 was accepted")
    except openai.BadRequestError as e:
        check("temperature" in str(e), f"the error does not name the field: {e}")
    try:
        client.chat.completions.create(model=args.model, messages=[USER], n=3)
        fail("n=3 was accepted")
    except openai.BadRequestError as e:
        check("n:" in str(e), f"the error does not name n: {e}")
    try:
        client.chat.completions.create(model="gpt-4o", messages=[USER])
        fail("an unknown model was accepted")
    except openai.NotFoundError as e:
        check("gpt-4o" in str(e), f"{e}")
    r = client.completions.create(model=args.model, prompt="The capital of France is", max_tokens=5)
    check(r.choices[0].text is not None and r.usage.completion_tokens == 5, f"completions: {r}")

    after = metrics(args.base_url, auth(args))
    moved = requests_total(after, "openai") - requests_total(before, "openai")
    expected = 2 + 2 * args.runs + 1 + args.runs + 1
    check(moved >= expected, f"requests_total moved by {moved}, expected at least {expected}")
    figures["metrics_requests_moved"] = moved
    print(json.dumps(figures))


def auth(args):
    return {"Authorization": f"Bearer {args.api_key}"} if args.api_key not in (None, "none") else {}


async def ha_conversation(args):
    """The calls Home Assistant's Ollama integration makes."""
    client = ollama.AsyncClient(host=args.base_url, headers=auth(args), timeout=patience(300))
    figures = {}
    listed = await asyncio.wait_for(client.list(), patience(5))
    names = [m.model for m in listed.models]
    check(any(n.split(":")[0] == args.model.split(":")[0] for n in names), f"list() shows {names}")
    model = names[0]
    await client.ps()
    system = {"role": "system", "content": ha_system_prompt()}
    # A sentence the templates do not match: the model answers, from the prompt's prefix.
    messages = [system, {"role": "user", "content": "I would like some light to read by in the kitchen"}]
    before = metrics(args.base_url, auth(args))
    lines = []
    async for part in await client.chat(model=model, messages=messages, tools=HA_TOOLS, stream=True, keep_alive="-1s",
                                        options={"num_ctx": 8192}, think=False):
        lines.append(part)
    final = lines[-1]
    check(final.done and final.done_reason in ("stop", "length"), f"last line: {final}")
    check(final.prompt_eval_count > 1000 and final.eval_count > 0 and final.total_duration > 0, f"counters: {final}")
    first_prompt = final.prompt_eval_count
    mid = metrics(args.base_url, auth(args))
    # Second turn: the tool call and its result, as Home Assistant sends them back.
    messages += [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "HassTurnOn", "arguments": {"name": "kitchen light"}}}]},
                 {"role": "tool", "content": json.dumps({"speech": {}, "success": True})}]
    lines = []
    async for part in await client.chat(model=model, messages=messages, tools=HA_TOOLS, stream=True, keep_alive="-1s",
                                        options={"num_ctx": 8192}, think=False):
        lines.append(part)
    final = lines[-1]
    check(final.done, f"second turn: {final}")
    after = metrics(args.base_url, auth(args))
    prompt = after[("qwenedge_prompt_tokens_total", ())] - mid[("qwenedge_prompt_tokens_total", ())]
    cached = after[("qwenedge_cached_prompt_tokens_total", ())] - mid[("qwenedge_cached_prompt_tokens_total", ())]
    check(prompt == final.prompt_eval_count, f"prompt tokens {prompt} vs {final.prompt_eval_count}")
    figures["turn1_prompt_tokens"] = first_prompt
    figures["turn2_prompt_tokens"] = prompt
    figures["turn2_reused"] = round(cached / prompt, 3)
    check(cached / prompt >= 0.9, f"the second turn reused {cached} of {prompt} prompt tokens")
    check(requests_total(after, "ollama") - requests_total(before, "ollama") == 2, "the ollama requests are counted")
    # A new conversation (the next voice command): the same system prompt and tools, another user.
    r = await client.chat(model=model, messages=[system, {"role": "user", "content": "The garage feels far too warm this evening"}], tools=HA_TOOLS,
                          stream=False, keep_alive="-1s", options={"num_ctx": 8192, "num_predict": 8}, think=False)
    later = metrics(args.base_url, auth(args))
    prompt = later[("qwenedge_prompt_tokens_total", ())] - after[("qwenedge_prompt_tokens_total", ())]
    cached = later[("qwenedge_cached_prompt_tokens_total", ())] - after[("qwenedge_cached_prompt_tokens_total", ())]
    figures["new_conversation_reused"] = round(cached / prompt, 3)
    check(cached / prompt >= 0.9, f"a new conversation with the same system prompt reused {cached} of {prompt} prompt tokens")

    # What Home Assistant 2026.11 sends besides: tool names with their API's prefix, keep_alive as
    # a number, a tool result wrapped in {"data", "error"}.
    prefixed = [dict(t, function=dict(t["function"], name="intent__" + t["function"]["name"])) for t in HA_TOOLS] + [
        {"type": "function", "function": {"name": "llm__GetDateTime", "description": "Provides the current date and time.",
                                          "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {"name": "homeassistant__GetLiveContext", "description": "Provides real-time information.",
                                          "parameters": {"type": "object", "properties": {}}}}]
    names = {t["function"]["name"] for t in prefixed}
    # A command the sentence templates match is answered at once with the call of the offered
    # (prefixed) intent tool, arguments as its schema types them; no model pass.
    for tools, name in ((HA_TOOLS, "HassTurnOn"), (prefixed, "intent__HassTurnOn")):
        r = await client.chat(model=model, messages=[system, {"role": "user", "content": "Turn on the kitchen light"}], tools=tools,
                              stream=False, keep_alive=-1.0, options={"num_ctx": 8192}, think=False)
        calls = [(c.function.name, dict(c.function.arguments)) for c in r.message.tool_calls or []]
        check(calls == [(name, {"name": "kitchen light"})] and r.eval_count == 0, f"a templated command: {r}")
    parts = [p async for p in await client.chat(model=model, messages=[system, {"role": "user", "content": "turn off the kitchen light"}],
                                                tools=prefixed, stream=True, keep_alive=-1.0, think=False)]
    calls = [c.function.name for p in parts for c in p.message.tool_calls or []]
    check(calls == ["intent__HassTurnOff"] and parts[-1].done, f"a templated command, streamed: {parts}")
    turn = [system, {"role": "user", "content": "Turn on the kitchen light"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "intent__HassTurnOn", "arguments": {"name": "kitchen light"}}}]},
            {"role": "tool", "content": json.dumps({"data": {"speech": {}, "response_type": "action_done", "success": True}, "error": False})}]
    r = await client.chat(model=model, messages=turn, tools=prefixed, stream=False, keep_alive=-1.0,
                          options={"num_ctx": 8192, "num_predict": 24, "temperature": 1.0, "seed": 5}, think=False)
    check(r.done, f"Home Assistant 2026.11's turn: {r}")
    for call in r.message.tool_calls or []:
        check(call.function.name in names, f"a call of {call.function.name}, not one of the prefixed tools")
    check((await client.ps()).models, "keep_alive -1.0 keeps the model")

    r = await client.chat(model=model, messages=[{"role": "user", "content": "Which room and level?"}], format=ANSWER_SCHEMA,
                          options={"temperature": 1.0, "num_predict": 100, "seed": 3}, stream=False)
    jsonschema.validate(json.loads(r.message.content), ANSWER_SCHEMA)
    r = await client.generate(model=model, prompt="The capital of France is", options={"num_predict": 4}, stream=False)
    check(r.done and r.eval_count == 4, f"generate: {r}")
    show = await client.show(model)
    check("tools" in (show.capabilities or []), f"show: {show}")
    try:
        await client.chat(model="llama3:8b", messages=messages[-1:])
        fail("an unknown model was accepted")
    except ollama.ResponseError as e:
        check(e.status_code == 404, f"unknown model: {e.status_code} {e}")

    # keep_alive=0 unloads the model after the request; the next request loads it again.
    await client.chat(model=model, messages=[{"role": "user", "content": "hi"}], keep_alive=0, options={"num_predict": 2})
    deadline = time.time() + patience(30)
    while (await client.ps()).models and time.time() < deadline:
        await asyncio.sleep(0.1)
    check(not (await client.ps()).models, "keep_alive=0 did not unload the model")
    r = await client.chat(model=model, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2}, keep_alive="5m")
    check(r.done and r.load_duration > 0, f"the next request did not load the model: {r}")
    check((await client.ps()).models, "the model is loaded again")
    print(json.dumps(figures))


HA_TOOLS = [
    {"type": "function", "function": {"name": "HassTurnOn", "description": "Turns on/opens/presses a device or entity",
     "parameters": {"type": "object", "properties": {
         "name": {"type": "string"}, "area": {"type": "string"}, "floor": {"type": "string"},
         "domain": {"type": "array", "items": {"type": "string", "enum": ["light", "switch", "fan", "cover"]}},
         "device_class": {"type": "array", "items": {"type": "string", "enum": ["awning", "blind", "outlet", "switch"]}}},
         "required": []}}},
    {"type": "function", "function": {"name": "HassTurnOff", "description": "Turns off/closes a device or entity",
     "parameters": {"type": "object", "properties": {
         "name": {"type": "string"}, "area": {"type": "string"}, "floor": {"type": "string"},
         "domain": {"type": "array", "items": {"type": "string", "enum": ["light", "switch", "fan", "cover"]}}},
         "required": []}}},
    {"type": "function", "function": {"name": "HassLightSet", "description": "Sets the brightness percentage or color of a light",
     "parameters": {"type": "object", "properties": {
         "name": {"type": "string"}, "area": {"type": "string"}, "floor": {"type": "string"},
         "domain": {"type": "array", "items": {"type": "string", "enum": ["light"]}},
         "brightness": {"type": "integer", "minimum": 0, "maximum": 100, "description": "The brightness percentage of the light between 0 and 100, where 0 is off and 100 is fully lit"},
         "color": {"type": "string"}, "temperature": {"type": "integer", "minimum": 0}},
         "required": []}}},
]


def ha_system_prompt():
    """A system prompt the size Home Assistant's is with a few dozen exposed entities."""
    lines = ["You are a voice assistant for Home Assistant.",
             "Answer questions about the world truthfully.",
             "Answer in plain text. Keep it simple and to the point.",
             "When controlling Home Assistant always call the intent tools. Use HassTurnOn to lock and HassTurnOff to unlock a lock.",
             "When controlling a device, prefer passing just name and domain. When controlling an area, prefer passing just area name and domain.",
             "An overview of the areas and the devices in this smart home:"]
    areas = ["Kitchen", "Living Room", "Bedroom", "Office", "Garage", "Hallway", "Bathroom", "Garden"]
    kinds = [("light", "Ceiling Light"), ("light", "Lamp"), ("switch", "Coffee Maker"), ("sensor", "Temperature"),
             ("cover", "Blinds"), ("fan", "Fan")]
    for area in areas:
        for domain, kind in kinds:
            entity = f"{domain}.{area.lower().replace(' ', '_')}_{kind.lower().replace(' ', '_')}"
            lines.append(f"- names: {area} {kind}\n  domain: {domain}\n  state: 'off'\n  areas: {area}\n  entity_id: {entity}")
    return "\n".join(lines)


def check_load(args):
    """16 concurrent streaming clients x 5 requests, half OpenAI, half Ollama: each request ends with a
    complete answer or a 429/503, none hangs or is lost."""
    outcomes = {"complete": 0, "refused": 0}
    problems = []
    lock = threading.Lock()

    def openai_worker(w):
        client = openai.OpenAI(base_url=args.base_url + "/v1", api_key=args.api_key, max_retries=0, timeout=patience(300))
        for i in range(5):
            try:
                chunks = list(client.chat.completions.create(model=args.model, messages=[USER], max_tokens=24, stream=True,
                                                             stream_options={"include_usage": True}))
                ok = chunks and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
                with lock:
                    outcomes["complete" if ok else "broken"] = outcomes.get("complete" if ok else "broken", 0) + 1
            except (openai.RateLimitError, openai.InternalServerError) as e:
                with lock:
                    if getattr(e, "status_code", 0) in (429, 503):
                        outcomes["refused"] += 1
                    else:
                        problems.append(f"openai {w}/{i}: {e}")
            except Exception as e:
                with lock:
                    problems.append(f"openai {w}/{i}: {type(e).__name__}: {e}")

    def ollama_worker(w):
        client = ollama.Client(host=args.base_url, headers=auth(args), timeout=patience(300))
        for i in range(5):
            try:
                parts = list(client.chat(model=args.model, messages=[USER], stream=True, options={"num_predict": 24}))
                ok = parts and parts[-1].done and parts[-1].eval_count > 0
                with lock:
                    outcomes["complete" if ok else "broken"] = outcomes.get("complete" if ok else "broken", 0) + 1
            except ollama.ResponseError as e:
                with lock:
                    if e.status_code == 503:
                        outcomes["refused"] += 1
                    else:
                        problems.append(f"ollama {w}/{i}: {e.status_code} {e}")
            except Exception as e:
                with lock:
                    problems.append(f"ollama {w}/{i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=openai_worker, args=(w,)) for w in range(8)]
    threads += [threading.Thread(target=ollama_worker, args=(w,)) for w in range(8)]
    began = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=patience(600))
    check(not any(t.is_alive() for t in threads), "a client hung")
    check(not problems, f"{len(problems)} requests failed otherwise: {problems[:3]}")
    total = outcomes["complete"] + outcomes["refused"]
    check(total == 80 and outcomes.get("broken", 0) == 0, f"outcomes {outcomes}")
    print(json.dumps({**outcomes, "seconds": round(time.time() - began, 1)}))


def check_disconnect(args):
    """A client that goes away mid-stream cancels its generation."""
    client = openai.OpenAI(base_url=args.base_url + "/v1", api_key=args.api_key, max_retries=0, timeout=patience(300))
    before = requests_total(metrics(args.base_url, auth(args)), "openai", "cancelled")
    stream = client.chat.completions.create(model=args.model, messages=[USER], max_tokens=2000, stream=True)
    for n, _ in enumerate(stream):
        if n == 3:
            break
    stream.close()
    deadline = time.time() + patience(30)
    while requests_total(metrics(args.base_url, auth(args)), "openai", "cancelled") == before and time.time() < deadline:
        time.sleep(0.1)
    check(requests_total(metrics(args.base_url, auth(args)), "openai", "cancelled") == before + 1, "the disconnect was not a cancellation")
    print(json.dumps({"cancelled": 1}))


def check_auth(args):
    """Without or with a wrong bearer token: 401 from both APIs, in each API's error shape."""
    client = openai.OpenAI(base_url=args.base_url + "/v1", api_key="wrong-token", max_retries=0, timeout=patience(30))
    try:
        client.chat.completions.create(model=args.model, messages=[USER], max_tokens=2)
        fail("OpenAI accepted a wrong token")
    except openai.AuthenticationError as e:
        check(e.code == "invalid_api_key", f"{e}")
    try:
        ollama.Client(host=args.base_url, headers={"Authorization": "Bearer wrong-token"}, timeout=patience(30)).chat(model=args.model, messages=[USER], stream=False)
        fail("Ollama accepted a wrong token")
    except ollama.ResponseError as e:
        check(e.status_code == 401, f"ollama status {e.status_code}")
    for path, body in [("/v1/chat/completions", {"model": args.model, "messages": [USER]}), ("/api/chat", {"model": args.model, "messages": [USER]})]:
        req = urllib.request.Request(args.base_url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=patience(30))
            fail(f"{path} answered without a token")
        except urllib.error.HTTPError as e:
            check(e.code == 401, f"{path}: {e.code}")
            err = json.loads(e.read())["error"]
            check(err["code"] == "invalid_api_key" if path.startswith("/v1") else isinstance(err, str), f"{path}: {err}")
    good = openai.OpenAI(base_url=args.base_url + "/v1", api_key=args.api_key, max_retries=0, timeout=patience(60))
    r = good.chat.completions.create(model=args.model, messages=[USER], max_tokens=2)
    check(r.usage.completion_tokens == 2, "the right token is served")
    print(json.dumps({"unauthorized": 4, "authorized": 1}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("check", choices=["openai", "ollama", "load", "disconnect", "auth"])
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--api-key", default="none")
    p.add_argument("--runs", type=int, default=50)
    args = p.parse_args()
    if args.check == "openai":
        check_openai(args)
    elif args.check == "ollama":
        asyncio.run(ha_conversation(args))
    elif args.check == "load":
        check_load(args)
    elif args.check == "disconnect":
        check_disconnect(args)
    elif args.check == "auth":
        check_auth(args)


if __name__ == "__main__":
    main()
