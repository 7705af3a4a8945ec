"""A local stand-in for the Hugging Face hub: just enough HTTP for `snapshot_download`.

It answers what huggingface-hub 2.4 asks for a plain (non-Xet) download:

* `GET /api/models/{repo}/revision/{rev}`: the model info, with `sha` and `siblings`;
* `GET /api/models/{repo}/tree/{rev}?recursive=...`: the file list (`type`, `path`, `size`, `oid`);
* `HEAD /{repo}/resolve/{rev}/{file}`: `X-Repo-Commit`, `ETag`, `Content-Length`;
* `GET /{repo}/resolve/{rev}/{file}`: the bytes, honouring `Range: bytes=N-` with a 206.

Unknown repos and files get 404 with the `X-Error-Code` the real hub sends. Faults for tests:
`drop_after[file] = n` sends the full `Content-Length` but closes the connection after `n` bytes
(once), and `fail_once` answers 500 to the first GET of the named files. Every request is recorded
in `requests` as `(method, path, headers)`. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    def __init__(self, repo_id: str, files: dict[str, bytes], *,
                 drop_after: dict[str, int] | None = None, fail_once: set[str] | None = None,
                 stall: set[str] | None = None):
        self.repo_id = repo_id
        self.files = files
        self.drop_after = dict(drop_after or {})
        self.fail_once = set(fail_once or ())
        # Files whose body stops halfway until the stand-in closes (a download in flight).
        self.stall = set(stall or ())
        self._closing = threading.Event()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "HubStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def gets(self, file: str) -> list[dict[str, str]]:
        """The headers of every GET of `file`, in order."""
        suffix = f"/resolve/{COMMIT}/{file}"
        with self._lock:
            return [h for m, p, h in self.requests if m == "GET" and p.endswith(suffix)]

    # -- HTTP ----------------------------------------------------------------------------

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, head=True)

            def do_GET(self) -> None:
                hub._answer(self, head=False)

        return Handler

    def _answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests.append(("HEAD" if head else "GET", path, dict(h.headers.items())))
        repo = re.escape(self.repo_id)
        if re.fullmatch(rf"/api/models/{repo}/revision/[^/]+", path):
            siblings = [{"rfilename": name} for name in self.files]
            return self._json(h, {"id": self.repo_id, "sha": COMMIT, "private": False,
                                  "siblings": siblings})
        if re.fullmatch(rf"/api/models/{repo}/tree/[^/]+", path):
            tree = [{"type": "file", "path": name, "size": len(data), "oid": _git_oid(data)}
                    for name, data in self.files.items()]
            return self._json(h, tree)
        if m := re.fullmatch(rf"/{repo}/resolve/[^/]+/(.+)", path):
            return self._file(h, m.group(1), head)
        if path.startswith("/api/models/") or "/resolve/" in path:
            return self._error(h, 404, "RepoNotFound")
        return self._error(h, 404, None)

    def _file(self, h: BaseHTTPRequestHandler, name: str, head: bool) -> None:
        data = self.files.get(name)
        if data is None:
            return self._error(h, 404, "EntryNotFound")
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        start = 0
        if not head and (rng := h.headers.get("Range")):
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
        body = data[start:]
        fail, drop = False, None
        if not head:
            with self._lock:
                fail = name in self.fail_once
                self.fail_once.discard(name)
                drop = self.drop_after.pop(name, None)
        if fail:
            return self._error(h, 500, None)
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("ETag", etag)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(body)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        if name in self.stall:
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            self._closing.wait(timeout=120)
            h.close_connection = True
            return
        if drop is not None:
            h.wfile.write(body[:drop])
            h.wfile.flush()
            h.close_connection = True  # the client sees a body shorter than Content-Length
            return
        h.wfile.write(body)

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, obj) -> None:
        body = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    @staticmethod
    def _error(h: BaseHTTPRequestHandler, status: int, code: str | None) -> None:
        body = json.dumps({"error": code or "error"}).encode()
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


def _git_oid(data: bytes) -> str:
    """The git blob id, as the hub reports in `oid`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
