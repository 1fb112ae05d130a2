"""Ollama's /api/pull into the daemon's model store through the `ollama` client at Home Assistant's
pin: streamed progress as the client parses it, the non-streamed pull Home Assistant's config flow
makes, the pulled model listed and answering a chat by its name, and unknown names refused with
the client's ResponseError. Run by tests/e2e/hub.rs; prints one JSON line when it passes.

usage: check_pull.py --base-url http://127.0.0.1:PORT --repo OWNER/NAME --alias NAME
"""

import argparse
import json
import time

import ollama

from checks import check, fail, patience


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--alias", required=True)
    args = ap.parse_args()
    client = ollama.Client(host=args.base_url, timeout=patience(120))

    began = time.monotonic()
    updates = list(client.pull(args.repo, stream=True))
    pull_s = time.monotonic() - began
    statuses = [u.status for u in updates]
    check(statuses[0] == "pulling manifest", f"first status: {statuses[:3]}")
    check(statuses[-1] == "success", f"last status: {statuses[-3:]}")
    files = {}
    for u in updates:
        if u.digest:
            check(u.status == f"pulling {u.digest.removeprefix('sha256:')[:12]}", f"status of a file: {u}")
            check(u.total and u.completed is not None and u.completed <= u.total, f"byte counts: {u}")
            files[u.digest] = (u.completed, u.total)
    check(files and all(c == t for c, t in files.values()), f"every file ends complete: {files}")
    check("verifying sha256 digest" in statuses, f"statuses: {sorted(set(statuses))}")

    names = [m.model for m in client.list().models]
    pulled = f"{args.repo}:q4"
    check(pulled in names, f"{pulled} not in /api/tags: {names}")

    # Home Assistant's config flow: pull(model) without streaming, then the entry chats with that name.
    done = client.pull(args.alias)
    check(done.status == "success", f"non-streamed pull: {done}")
    reply = client.chat(model=args.alias, messages=[{"role": "user", "content": "hello"}], stream=False,
                        options={"num_predict": 8, "temperature": 0})
    check(reply.done and reply.message.content is not None, f"chat with the pulled model: {reply}")
    check(reply.model == args.alias, f"the answer echoes the model's name as asked, as Ollama does: {reply.model}")
    ps = [m.model for m in client.ps().models]
    check(ps == [pulled], f"/api/ps: {ps}")

    for name in ["llama3.2:latest", "onnx-community/Does-Not-Exist"]:
        try:
            client.pull(name)
            fail(f"pulling {name} succeeded")
        except ollama.ResponseError as e:
            check(e.error, f"an error text for {name}")
            last_error = e.error
    print(json.dumps({"pull_s": round(pull_s, 3), "files": len(files), "updates": len(updates), "error": last_error}))


if __name__ == "__main__":
    main()
