"""A local server speaking the Hugging Face Hub's routes, for testing model pulls.

Serves the repositories under ROOT (ROOT/<owner>/<name>/...) as the Hub does, per the routes
`huggingface_hub` (2.4) uses and the Hub documents:

- GET  /api/models/{repo}/revision/{rev}          -> {"id", "sha", "siblings"}; 404 with
                                                     X-Error-Code RepoNotFound / RevisionNotFound
- GET  /api/models/{repo}/tree/{rev}?recursive=1  -> [{"type","oid","size","path","lfs"}], paged by
                                                     `cursor` with a Link: <...>; rel="next" header
- HEAD/GET /{repo}/resolve/{rev}/{path}           -> small files: 307 to a relative
                                                     /api/resolve-cache/… answered chunked (gzip
                                                     when accepted), ETag the git blob id;
                                                     LFS files: 302 to the storage host with
                                                     X-Linked-Etag (sha256), X-Linked-Size;
                                                     both with X-Repo-Commit
- GET  /cdn/{sha256}                               -> the bytes, Range requests answered 206

The storage host is the same server reached by another name (`localhost` when the Hub is
`127.0.0.1`), so a client sending its token there is seen. Files named *.onnx, *.onnx_data* or
larger than 1 MiB are LFS files, as the Hub's default .gitattributes makes them. A private
repository (listed in the control state) answers 401 without the token.

Test controls (not Hub routes): POST /_control with JSON {"cut": {path: bytes}} (the next
transfer of that file stops after so many bytes, once), {"corrupt": [path]} (its bytes are served
with one byte changed), {"private": {repo: token}}, {"page_size": n}, {"stall": {path: bytes}}
(the transfer pauses after so many bytes until the client goes away); GET /_log lists the
requests seen (method, path, range, whether a token came).

Usage: hub_server.py ROOT PORTFILE  (binds 127.0.0.1:0, writes the port to PORTFILE)
"""

import gzip
import hashlib
import json
import os
import select
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.abspath(sys.argv[1])
STATE = {"cut": {}, "corrupt": [], "private": {}, "page_size": 1000, "stall": {}}
LOG = []
LOCK = threading.Lock()


def is_lfs(path, size):
    name = os.path.basename(path)
    return name.endswith(".onnx") or ".onnx_data" in name or size > (1 << 20)


def git_blob_id(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


CACHE = {}


def repo_files(repo):
    """Every file of `repo` with its checksums; the commit id is a hash of them all."""
    base = os.path.join(ROOT, repo)
    if not os.path.isdir(base):
        return None, None
    files = []
    for dirpath, _, names in os.walk(base):
        for n in sorted(names):
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, base)
            st = os.stat(full)
            key = (full, st.st_size, st.st_mtime_ns)
            if key not in CACHE:
                data = open(full, "rb").read()
                CACHE[key] = (git_blob_id(data), hashlib.sha256(data).hexdigest())
            blob, sha = CACHE[key]
            files.append({"path": rel, "size": st.st_size, "blob": blob, "sha256": sha, "lfs": is_lfs(rel, st.st_size), "full": full})
    files.sort(key=lambda f: f["path"])
    commit = hashlib.sha1("".join(f["path"] + f["blob"] for f in files).encode()).hexdigest()
    return files, commit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self):
        with LOCK:
            LOG.append({
                "method": self.command,
                "path": urllib.parse.unquote(self.path.split("?")[0]),
                "host": self.headers.get("Host", ""),
                "range": self.headers.get("Range"),
                "token": self.headers.get("Authorization"),
            })

    def send_json(self, status, value, headers=()):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status, code, message):
        self.send_json(status, {"error": message}, [("X-Error-Code", code), ("X-Error-Message", message)])

    def do_POST(self):
        self.record()
        n = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(n) or b"{}")
        if self.path == "/_control":
            with LOCK:
                STATE.update(body)
            return self.send_json(200, STATE)
        self.error(404, "NotFound", "no such route")

    def do_HEAD(self):
        self.do_GET()

    def authorized(self, repo):
        token = STATE["private"].get(repo)
        return token is None or self.headers.get("Authorization") == f"Bearer {token}"

    def resolve(self, repo, rev):
        files, commit = repo_files(repo)
        if files is None or not self.authorized(repo):
            # The Hub hides private repositories from those without access.
            self.error(401 if files is not None else 404, "RepoNotFound", "Repository Not Found")
            return None, None
        if rev not in ("main", commit):
            self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None, None
        return files, commit

    def do_GET(self):
        self.record()
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/")[1:]]
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/_log":
            with LOCK:
                return self.send_json(200, LOG)
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo = "/".join(parts[2:4])
            files, commit = self.resolve(repo, parts[5])
            if files is None:
                return
            if parts[4] == "revision":
                siblings = [{"rfilename": f["path"]} for f in files]
                return self.send_json(200, {"id": repo, "modelId": repo, "sha": commit, "private": repo in STATE["private"], "siblings": siblings})
            entries = []
            dirs = sorted({os.path.dirname(f["path"]) for f in files} - {""})
            for d in dirs:
                entries.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d})
            for f in files:
                e = {"type": "file", "oid": f["blob"], "size": f["size"], "path": f["path"]}
                if f["lfs"]:
                    e["lfs"] = {"oid": f["sha256"], "size": f["size"], "pointerSize": 134}
                entries.append(e)
            start = int(query.get("cursor", ["0"])[0])
            size = STATE["page_size"]
            page = entries[start:start + size]
            headers = []
            if start + size < len(entries):
                nxt = f"http://{self.headers['Host']}{url.path}?recursive=true&cursor={start + size}"
                headers.append(("Link", f'<{nxt}>; rel="next"'))
            return self.send_json(200, page, headers)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = "/".join(parts[:2])
            path = "/".join(parts[4:])
            f, commit = self.entry(repo, parts[3], path)
            if f is None:
                return
            if f["lfs"]:
                host, port = self.headers["Host"].rsplit(":", 1)
                cdn = "localhost" if host == "127.0.0.1" else "127.0.0.1"
                self.send_response(302)
                self.send_header("Location", f"http://{cdn}:{port}/cdn/{f['sha256']}?path={urllib.parse.quote(path)}&repo={urllib.parse.quote(repo)}")
                self.send_header("X-Repo-Commit", commit)
                self.send_header("X-Linked-Etag", f'"{f["sha256"]}"')
                self.send_header("X-Linked-Size", str(f["size"]))
                self.send_header("ETag", f'"{f["blob"]}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            # Small files: a relative redirect to the resolve cache, as the Hub answers them.
            self.send_response(307)
            self.send_header("Location", f"/api/resolve-cache/models/{repo}/{commit}/{urllib.parse.quote(path)}")
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{f["blob"]}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if parts[:3] == ["api", "resolve-cache", "models"] and len(parts) >= 7:
            repo = "/".join(parts[3:5])
            path = "/".join(parts[6:])
            f, commit = self.entry(repo, parts[5], path)
            if f is None:
                return
            return self.send_small(f, path, [("X-Repo-Commit", commit), ("ETag", f'"{f["blob"]}"')])
        if len(parts) == 2 and parts[0] == "cdn":
            repo = query.get("repo", [""])[0]
            path = query.get("path", [""])[0]
            files, _ = repo_files(repo)
            f = next((f for f in files or [] if f["sha256"] == parts[1]), None)
            if f is None:
                return self.error(404, "NotFound", "no such object")
            return self.send_file(f, path, [("ETag", f'"{f["sha256"]}"')])
        self.error(404, "RepoNotFound", "Repository Not Found")

    def entry(self, repo, rev, path):
        """The file `path` of `repo` at `rev` and the commit, else an error answered (None, None)."""
        files, commit = self.resolve(repo, rev)
        if files is None:
            return None, None
        f = next((f for f in files if f["path"] == path), None)
        if f is None:
            self.error(404, "EntryNotFound", f"{path} does not exist on \"{rev}\"")
            return None, None
        return f, commit

    @staticmethod
    def served_bytes(f, path):
        """The file's bytes as served: one byte changed when the test asked for it corrupt."""
        data = open(f["full"], "rb").read()
        if path in STATE["corrupt"] and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    def send_small(self, f, path, headers):
        """A small file as the resolve cache sends it: chunked, gzip when the client accepts it."""
        data = self.served_bytes(f, path)
        gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
        if gzipped:
            data = gzip.compress(data)
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Content-Type", "application/octet-stream")
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        for i in range(0, len(data), 4096):
            piece = data[i:i + 4096]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def send_file(self, f, path, headers):
        data = self.served_bytes(f, path)
        start = 0
        status = 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first = rng[len("bytes="):].split("-")[0]
            start = int(first) if first else 0
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        with LOCK:
            cut = STATE["cut"].pop(path, None)
            stall = STATE["stall"].pop(path, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if stall is not None:
            self.wfile.write(body[:stall])
            self.wfile.flush()
            try:
                while True:
                    readable, _, _ = select.select([self.connection], [], [], 0.2)
                    if readable and self.connection.recv(1) == b"":  # the client went away
                        break
            except OSError:
                pass
            self.close_connection = True
            return
        for i in range(0, len(body), 1 << 16):
            self.wfile.write(body[i:i + (1 << 16)])


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])
    server.serve_forever()


if __name__ == "__main__":
    main()
