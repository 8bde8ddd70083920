"""A loopback HTTP server standing in for the Hugging Face Hub (``HF_ENDPOINT``) in the hub tests.

It answers the two kinds of request ``huggingface_hub`` makes for a model: the repository listing
at a revision (``GET /api/models/{org}/{name}[/revision/{rev}]``: the commit and its files) and a
file at a revision (``HEAD``/``GET /{org}/{name}/resolve/{rev}/{path}``, with the commit, ETag and
size headers). Every request is recorded, so a test can say exactly which files were fetched.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import threading
import urllib.parse


class HubServer:
    """``with HubServer() as hub:`` then ``hub.add(repo, files, refs=("main",))`` -> commit.

    ``hub.requests``: ``(method, path)`` of every request; :meth:`fetched` the file names fetched
    (GET) from a repository; :meth:`listings` the listing requests.
    """

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="hub-server", daemon=True)

    def add(self, repo: str, files: dict[str, bytes], refs=("main",)) -> str:
        """Add a commit holding ``files`` to ``repo``, pointed to by ``refs``; returns its hash."""
        digest = hashlib.sha1(repr((repo, sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items()),
                                    refs)).encode()).hexdigest()
        spec = self.repos.setdefault(repo, {"commits": {}, "refs": {}})
        spec["commits"][digest] = dict(files)
        for ref in refs:
            spec["refs"][ref] = digest
        return digest

    def fetched(self, repo: str) -> list[str]:
        """File names GET-requested from ``repo`` (any revision), in order."""
        prefix = f"/{repo}/resolve/"
        return [urllib.parse.unquote(p[len(prefix):].split("/", 1)[1])
                for m, p in self.requests if m == "GET" and p.startswith(prefix)]

    def listings(self, repo: str) -> list[str]:
        return [p for m, p in self.requests if p.startswith(f"/api/models/{repo}")]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def _commit(self, repo: str, rev: str) -> str | None:
        spec = self.repos.get(repo)
        if spec is None:
            return None
        rev = urllib.parse.unquote(rev)
        return rev if rev in spec["commits"] else spec["refs"].get(rev)

    def _handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, head: bool):
                self.head = head
                with hub.lock:
                    hub.requests.append((self.command, self.path))
                path = urllib.parse.urlsplit(self.path).path
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    repo = "/".join(parts[2:4])
                    rev = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
                    commit = self._commit_or_404(repo, rev)
                    if commit is None:
                        return
                    files = hub.repos[repo]["commits"][commit]
                    body = json.dumps({"id": repo, "modelId": repo, "sha": commit, "private": False,
                                       "siblings": [{"rfilename": f} for f in sorted(files)]}).encode()
                    return self._send(200, body, {"Content-Type": "application/json"}, head)
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo = "/".join(parts[:2])
                    commit = self._commit_or_404(repo, parts[3])
                    if commit is None:
                        return
                    name = urllib.parse.unquote("/".join(parts[4:]))
                    files = hub.repos[repo]["commits"][commit]
                    if name not in files:
                        return self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound",
                                                                     "X-Repo-Commit": commit}, head)
                    body = files[name]
                    return self._send(200, body, {"X-Repo-Commit": commit,
                                                  "ETag": f'"{hashlib.sha256(body).hexdigest()}"',
                                                  "Content-Type": "application/octet-stream"}, head)
                self._send(404, b"not served", {}, head)

            def _commit_or_404(self, repo, rev):
                if repo not in hub.repos:
                    self._send(404, b"Repository not found", {"X-Error-Code": "RepoNotFound"}, self.head)
                    return None
                commit = hub._commit(repo, rev)
                if commit is None:
                    self._send(404, b"Revision not found", {"X-Error-Code": "RevisionNotFound"}, self.head)
                return commit

            def _send(self, code, body, headers, head):
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                self._answer(head=False)

            def do_HEAD(self):  # noqa: N802
                self._answer(head=True)

            def log_message(self, *args):
                pass

        return Handler
