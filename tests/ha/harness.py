"""The pieces of the Home Assistant test: a Home Assistant Core process in the chroot that
tests/ha/setup.sh builds (its REST and WebSocket APIs, onboarding, config flows,
`conversation/process`), and the qwenedge daemon it drives (its socket, its log)."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

from websockets.sync.client import connect

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, predicate, timeout, step=0.1):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(step)


class HomeAssistant:
    """A Home Assistant process in the chroot, and its REST and WebSocket APIs."""

    def __init__(self, root, run_dir, port, log):
        self.root, self.run_dir, self.port, self.log_path = root, run_dir, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None
        self.token = None
        self.ws = None
        self.next_id = 0

    def start(self):
        config = os.path.join(self.root, self.run_dir.lstrip("/"))
        os.makedirs(config, exist_ok=True)
        env = ["HOME=/root", "LANG=C.UTF-8", "PATH=/opt/ha/bin:/usr/bin:/bin", f"HA_PORT={self.port}"]
        cmd = ["chroot", self.root, "/usr/bin/env", "-i", *env, "/opt/ha/bin/hass", "-c", self.run_dir,
               "--log-file", f"{self.run_dir}/home-assistant.log"]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        started = time.monotonic()
        wait_for("Home Assistant's HTTP API", lambda: self.alive() and self.status("/api/onboarding") == 200, 240, 0.25)
        return time.monotonic() - started

    def alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"Home Assistant exited ({self.proc.returncode}); see {self.log_path}")
        return True

    def stop(self):
        if self.ws:
            self.ws.close()
            self.ws = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def request(self, method, path, body=None, form=None, token=None):
        headers = {}
        data = None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if form is not None:
            data = "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in form.items()).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=120) as r:
                raw, status = r.read(), r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        except OSError:
            return None, None
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def status(self, path):
        return self.request("GET", path)[0]

    def rest(self, method, path, body=None):
        status, answer = self.request(method, path, body, token=self.token)
        if status not in (200, 201):
            raise RuntimeError(f"{method} {path}: {status} {answer}")
        return answer

    def onboard(self):
        """An administrator and a long-lived token, as a new user's browser would make them."""
        client = f"{self.url}/"
        status, user = self.request("POST", "/api/onboarding/users", {
            "client_id": client, "name": "Test", "username": "test", "password": "qwenedge-test-password",
            "language": "en"})
        assert status == 200, (status, user)
        status, tokens = self.request("POST", "/auth/token", form={
            "grant_type": "authorization_code", "code": user["auth_code"], "client_id": client})
        assert status == 200, (status, tokens)
        self.token = tokens["access_token"]
        # The core_config step is left out: finishing it makes HA set up integrations that
        # install packages and reach the Internet.
        self.rest("POST", "/api/onboarding/analytics", {})
        self.rest("POST", "/api/onboarding/integration", {"client_id": client, "redirect_uri": client})
        self.connect()
        self.token = self.call("auth/long_lived_access_token", client_name="qwenedge", lifespan=30)
        self.connect()
        wait_for("Home Assistant RUNNING", lambda: self.call("get_config")["state"] == "RUNNING", 120, 0.25)
        return self.token

    def connect(self):
        if self.ws:
            self.ws.close()
        self.ws = connect(f"ws://127.0.0.1:{self.port}/api/websocket", max_size=64 << 20, proxy=None)
        assert json.loads(self.ws.recv())["type"] == "auth_required"
        self.ws.send(json.dumps({"type": "auth", "access_token": self.token}))
        answer = json.loads(self.ws.recv())
        assert answer["type"] == "auth_ok", answer

    def call(self, kind, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "type": kind, **params}))
        while True:
            m = json.loads(self.ws.recv(timeout=180))
            if m.get("id") == self.next_id and m.get("type") == "result":
                if not m.get("success"):
                    raise RuntimeError(f"{kind}: {m.get('error')}")
                return m.get("result")

    def state(self, entity_id):
        return self.rest("GET", f"/api/states/{entity_id}")["state"]

    def flow(self, handler, user_input):
        form = self.rest("POST", "/api/config/config_entries/flow", {"handler": handler, "show_advanced_options": False})
        done = self.rest("POST", f"/api/config/config_entries/flow/{form['flow_id']}", user_input)
        if done.get("type") != "create_entry":
            raise RuntimeError(f"{handler} config flow: {done}")
        return done["result"]["entry_id"]

    def agent(self, entry_id, subentry_id=None):
        def find():
            for e in self.call("config/entity_registry/list"):
                if e["config_entry_id"] == entry_id and e["entity_id"].startswith("conversation.") and (
                        subentry_id is None or e.get("config_subentry_id") == subentry_id):
                    return e["entity_id"]
            return None
        return wait_for(f"the conversation agent of {entry_id}", find, 60, 0.25)

    def say_from(self, agent, text, device_id):
        """`text` as said to a device (HA passes its id on to the agent)."""
        result = self.call("conversation/process", text=text, language="en", agent_id=agent, device_id=device_id)
        return result, None

    def say(self, agent, text, conversation_id=None):
        started = time.monotonic()
        params = {"text": text, "language": "en", "agent_id": agent}
        if conversation_id:
            params["conversation_id"] = conversation_id
        result = self.call("conversation/process", **params)
        return result, (time.monotonic() - started) * 1000


class Daemon:
    """qwenedge serving Home Assistant."""

    def __init__(self, binary, work, config_text):
        self.binary, self.work = binary, work
        self.config = os.path.join(work, "config.toml")
        self.log_path = os.path.join(work, "qwenedge.log")
        self.socket = os.path.join(work, "qwenedge.sock")
        with open(self.config, "w") as f:
            f.write(config_text)
        self.proc = None

    def start(self):
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
        self.proc = subprocess.Popen([self.binary, "serve", "--config", self.config], stdout=open(self.log_path, "ab"),
                                     stderr=subprocess.STDOUT, env=env)
        wait_for("the daemon's socket", lambda: self.proc.poll() is None and os.path.exists(self.socket), 120, 0.1)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def ask(self, request):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(120)
            s.connect(self.socket)
            s.sendall((json.dumps({"id": "1", **request}) + "\n").encode())
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError(f"the daemon closed the connection on {request}")
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    event = json.loads(line)
                    if event.get("event") not in ("token", "progress"):
                        return event

    def home(self):
        return self.ask({"op": "status"}).get("home") or {}

    def intent(self, text):
        event = self.ask({"op": "intent", "text": text})
        if event.get("source") != "local" or not event.get("recognized"):
            return None
        return {s["name"]: s["value"] for s in event["slots"]} | {"intent": event["intent"]["name"]}

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()
