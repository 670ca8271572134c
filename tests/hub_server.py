"""A small Hugging Face Hub on 127.0.0.1: what huggingface_hub 2.4 asks for, answered as the Hub does.

Serves checkpoint directories (tiny Gemma 4 models from ``quantize.tiny``) as model repos:

- ``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true``: size, git blob id and LFS
  ``{sha256, size, pointerSize}`` per file), ``GET .../tree/{rev}``, ``POST .../paths-info/{rev}``,
  ``GET .../refs``, ``GET /api/whoami-v2``, ``GET /api/agent-harnesses``;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag`` (git blob id, or for
  LFS files a ``302`` to a CDN on another port with ``X-Linked-Etag`` = sha256 and
  ``X-Linked-Size``); the CDN answers with ``ETag`` = sha256; single ``Range`` requests get
  ``206`` + ``Content-Range``, unsatisfiable ones ``416``;
- errors as the Hub sends them: ``404`` + ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound``
  / ``EntryNotFound``; a gated repo's files answer ``401`` (no token) or ``403`` (a token without
  access) with ``X-Error-Code: GatedRepo``.

Switches for tests: ``cut(file, at)`` closes the connection at byte ``at`` of a file: no
transfer gets past it until ``heal()``; ``stall(file, at)`` stops sending at byte ``at`` until the
returned event is set; ``corrupt(file, offset)`` flips one byte of what is served;
``ranges = False`` answers every GET with the whole file (``200``, as a server without Range
support). ``log`` has
every request (method, path, file, Range, status, bytes sent, whether it carried a token).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_PATTERNS = ("*.safetensors", "tokenizer.json", "*.gguf")  # as the Gemma 4 repos' .gitattributes
CHUNK = 64 * 1024


@dataclass
class RepoFile:
    path: str
    source: Path
    size: int
    sha256: str
    git_oid: str  # the blob id git gives the file (the LFS pointer's, for LFS files)
    lfs: bool
    pointer_size: int = 0

    def entry(self) -> dict:
        """The file as the tree / paths-info API lists it."""
        out = {"type": "file", "oid": self.git_oid, "size": self.size, "path": self.path}
        if self.lfs:
            out["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return out


@dataclass
class Repo:
    repo_id: str
    commit: str
    files: dict[str, RepoFile]
    gated: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens of accounts that accepted the licence


@dataclass
class Request:
    method: str
    path: str
    file: str | None  # the repo file a resolve/CDN request is about
    range: str | None
    status: int = 0
    sent: int = 0
    auth: bool = False


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """The Hub (and its CDN, on a second port) in two threads; ``close()`` stops both."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[Request] = []
        self.cuts: dict[str, int] = {}
        self.stalls: dict[str, tuple[int, threading.Event]] = {}
        self.corruptions: dict[str, int] = {}
        self.ranges = True  # False: Range headers are ignored
        self._blobs: dict[str, RepoFile] = {}
        handler = type("Handler", (_Handler,), {"hub": self})
        self.api = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        for server in (self.api, self.cdn):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def add_repo(self, repo_id: str, directory: Path, *, gated: bool = False, tokens: tuple[str, ...] = ()) -> Repo:
        files = {}
        for p in sorted(Path(directory).iterdir()):
            data = p.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            lfs = any(fnmatch.fnmatch(p.name, pat) for pat in LFS_PATTERNS)
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()
            oid = _git_oid(pointer if lfs else data)
            files[p.name] = RepoFile(p.name, p, len(data), sha, oid, lfs, len(pointer) if lfs else 0)
            self._blobs[sha] = files[p.name]
        commit = hashlib.sha1("".join(f.git_oid for f in files.values()).encode()).hexdigest()
        self.repos[repo_id] = Repo(repo_id, commit, files, gated, set(tokens))
        return self.repos[repo_id]

    # --- switches ---------------------------------------------------------------------------

    def cut(self, file: str, at: int) -> None:
        self.cuts[file] = at

    def stall(self, file: str, at: int) -> threading.Event:
        event = threading.Event()
        self.stalls[file] = (at, event)
        return event

    def corrupt(self, file: str, offset: int) -> None:
        self.corruptions[file] = offset

    def heal(self) -> None:
        self.cuts.clear()
        self.corruptions.clear()
        for _, event in self.stalls.values():
            event.set()
        self.stalls.clear()

    def close(self) -> None:
        """Stop answering (the port refuses connections afterwards); safe to call twice."""
        self.heal()
        for server in (self.api, self.cdn):
            if server.socket.fileno() != -1:
                server.shutdown()
                server.server_close()

    # --- the log ----------------------------------------------------------------------------

    def requests(self, method: str | None = None, file: str | None = None) -> list[Request]:
        return [r for r in self.log if (method is None or r.method == method) and (file is None or r.file == file)]

    def served(self, file: str) -> int:
        """Bytes of ``file`` sent in response bodies (resolve and CDN)."""
        return sum(r.sent for r in self.requests("GET", file))


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    # --- dispatch ---------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        self.req = Request(self.command, path, None, self.headers.get("Range"), auth="authorization" in self.headers)
        self.hub.log.append(self.req)
        if self.command == "POST":
            self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        routes = [
            (r"/api/agent-harnesses", self._harnesses),
            (r"/api/whoami-v2", self._whoami),
            (r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?", self._model_info),
            (r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self._tree),
            (r"/api/models/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)", self._paths_info),
            (r"/api/models/(?P<repo>[^/]+/[^/]+)/refs", self._refs),
            (r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            (r"/cdn/(?P<sha>[0-9a-f]{64})", self._cdn),
        ]
        for pattern, route in routes:
            m = re.fullmatch(pattern, path)
            if m:
                return route(**m.groupdict(), query=parse_qs(url.query))
        self._error(404, "EntryNotFound", "no such route")

    # --- plumbing ---------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.req.status = status
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            self.req.sent += len(body)

    def _json(self, data: object, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str | None, message: str, extra: dict | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _repo(self, repo_id: str, rev: str | None) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if rev not in (None, "main", repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo

    # --- API routes -------------------------------------------------------------------------

    def _harnesses(self, query: dict) -> None:
        self._json({"standardEnvVars": [], "harnesses": {}})

    def _whoami(self, query: dict) -> None:
        self._error(401, None, "Invalid credentials in Authorization header")

    def _model_info(self, repo: str, rev: str | None, query: dict) -> None:
        r = self._repo(repo, rev)
        if r is None:
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in r.files.values():
            s: dict = {"rfilename": f.path}
            if blobs:
                s.update(size=f.size, blobId=f.git_oid)
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(s)
        self._json(
            {
                "_id": r.commit[:24],
                "id": r.repo_id,
                "modelId": r.repo_id,
                "author": r.repo_id.split("/")[0],
                "sha": r.commit,
                "lastModified": "2026-04-02T00:00:00.000Z",
                "private": False,
                "gated": "manual" if r.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "library_name": "transformers",
                "tags": ["transformers", "safetensors", "gemma4"],
                "pipeline_tag": "image-text-to-text",
                "siblings": siblings,
            }
        )

    def _tree(self, repo: str, rev: str, sub: str | None, query: dict) -> None:
        r = self._repo(repo, rev)
        if r is not None:
            self._json([f.entry() for f in r.files.values() if not sub or f.path.startswith(sub.rstrip("/") + "/")])

    def _paths_info(self, repo: str, rev: str, query: dict) -> None:
        r = self._repo(repo, rev)
        if r is None:
            return
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(self.body or b"{}").get("paths", [])
        else:
            paths = parse_qs(self.body.decode()).get("paths", [])
        self._json([r.files[p].entry() for p in paths if p in r.files])

    def _refs(self, repo: str, query: dict) -> None:
        r = self._repo(repo, None)
        if r is not None:
            main = {"name": "main", "ref": "refs/heads/main", "targetCommit": r.commit}
            self._json({"branches": [main], "converts": [], "tags": []})

    # --- files ------------------------------------------------------------------------------

    def _resolve(self, repo: str, rev: str, file: str, query: dict) -> None:
        self.req.file = file
        r = self._repo(repo, rev)
        if r is None:
            return
        commit = {"X-Repo-Commit": r.commit}
        if r.gated:
            token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not token:
                msg = f"Access to model {repo} is restricted. You must have access to it and be authenticated to access it. Please log in."  # noqa: E501
                return self._error(401, "GatedRepo", msg, commit)
            if token not in r.tokens:
                msg = f"Access to model {repo} is restricted and you are not in the authorized list. Visit {self.hub.url}/{repo} to ask for access."  # noqa: E501
                return self._error(403, "GatedRepo", msg, commit)
        f = r.files.get(file)
        if f is None:
            return self._error(404, "EntryNotFound", f"{file} does not exist on {rev}", commit)
        if f.lfs:  # the Hub redirects LFS files to its CDN, with the file's metadata on the redirect
            headers = {
                **commit,
                "ETag": f'"{f.git_oid}"',
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": f.size,
                "Location": f"{self.hub.cdn_url}/cdn/{f.sha256}?file={file}",
            }
            return self._send(302, b"", headers)
        self._file(f, {**commit, "ETag": f'"{f.git_oid}"'})

    def _cdn(self, sha: str, query: dict) -> None:
        f = self.hub._blobs.get(sha)
        if f is None:
            return self._error(404, None, "no such object")
        self.req.file = f.path
        self._file(f, {"ETag": f'"{f.sha256}"'})

    def _file(self, f: RepoFile, headers: dict) -> None:
        start, end = 0, f.size - 1
        status = 200
        if self.req.range and self.hub.ranges:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.req.range.strip())
            if not m or not (m.group(1) or m.group(2)):
                return self._error(416, None, "bad range", {"Content-Range": f"bytes */{f.size}"})
            if m.group(1):
                start, end = int(m.group(1)), min(int(m.group(2) or f.size - 1), f.size - 1)
            else:
                start = max(f.size - int(m.group(2)), 0)
            if start >= f.size or start > end:
                return self._error(416, None, "range not satisfiable", {"Content-Range": f"bytes */{f.size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        headers.update({"Content-Length": end - start + 1, "Accept-Ranges": "bytes"})
        headers["Content-Type"] = "application/octet-stream" if f.lfs else "text/plain; charset=utf-8"
        self.req.status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.end_headers()
        if self.command == "HEAD":
            return
        self._stream(f, start, end + 1)

    def _stream(self, f: RepoFile, start: int, stop: int) -> None:
        cut = self.hub.cuts.get(f.path)
        stall = self.hub.stalls.get(f.path)
        limit = min(x for x in (stop, cut, stall[0] if stall else None) if x is not None)
        flip = self.hub.corruptions.get(f.path)
        pos = start
        with open(f.source, "rb") as src:
            src.seek(start)
            while pos < max(limit, start):
                chunk = bytearray(src.read(min(CHUNK, limit - pos)))
                if flip is not None and pos <= flip < pos + len(chunk):
                    chunk[flip - pos] ^= 0xFF
                self.wfile.write(chunk)
                pos += len(chunk)
                self.req.sent += len(chunk)
            self.wfile.flush()
        if pos < stop:  # a cut or a stall: the body ends early, the connection dies
            if stall and pos == stall[0]:
                stall[1].wait(timeout=120)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
