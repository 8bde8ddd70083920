"""A real HTTP server on 127.0.0.1 that stands in for GitHub's raw-file host in the download tests.

It serves ``/{owner}/{repo}/{commit}/{path}`` from a table of files: the copies under
``STEERJAX_DATA`` laid out by ``UPSTREAM.tsv`` (:func:`upstream_tree`), plus small files a test makes
for the sources not held there (:func:`made_files`, with :func:`sources_with` giving the manifest
that pins them). It counts every request and can misbehave once per path on request: flip a byte,
or send half the body and close the connection.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import http.server
import json
import os
import threading
import time

UPSTREAM = "UPSTREAM.tsv"


class DataServer:
    """``with DataServer(files) as server:`` serves ``files`` (URL path -> bytes or a file path) at
    ``server.base``; ``server.requests`` lists the paths asked for; ``server.faults[path] = "flip" |
    "half" | "stall"`` makes the next request for ``path`` misbehave (once)."""

    def __init__(self, files: dict[str, bytes | str]):
        self.files = dict(files)
        self.requests: list[str] = []
        self.faults: dict[str, str] = {}
        self.lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="data-server", daemon=True)

    def __enter__(self) -> DataServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                with server.lock:
                    server.requests.append(self.path)
                    fault = server.faults.pop(self.path, None)
                source = server.files.get(self.path)
                if source is None:
                    self.send_error(404, "not served")
                    return
                if isinstance(source, bytes):
                    body = source
                else:
                    with open(source, "rb") as f:
                        body = f.read()
                if fault == "flip":
                    i = len(body) // 2
                    body = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1:]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "half":  # the server goes away mid-transfer
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if fault == "stall":
                    time.sleep(3)
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler


def upstream_rows(data_dir: str) -> list[dict[str, str]]:
    """The rows of ``UPSTREAM.tsv`` in the data directory (comment lines skipped)."""
    with open(os.path.join(data_dir, UPSTREAM), encoding="utf-8") as f:
        lines = [line for line in f if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def upstream_tree(data_dir: str) -> dict[str, str]:
    """URL path -> local file, for every row of ``UPSTREAM.tsv`` whose copy is in ``data_dir``."""
    tree = {}
    for row in upstream_rows(data_dir):
        local = os.path.join(data_dir, row["local"]) if row["local"] else ""
        if local and os.path.isfile(local):
            tree[f"/{row['repo']}/{row['commit']}/{row['path']}"] = local
    return tree


def blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def made_files(data_dir: str) -> dict[str, bytes]:
    """Small stand-ins (repository path -> content) for the pinned files that ``data_dir`` lacks.

    steering-bench's ``persona_prompts.py`` is written as Python holding the prompts of the
    project's ``persona_prompts.json`` (so loaders give the same prompts either way), with an
    import and a function that would fail if the file were run.
    """
    table = json.loads(open(os.path.join(data_dir, "steering-bench", "persona_prompts.json"), encoding="utf-8").read())
    lines = ["from repepo.nonexistent import make_dataset  # never imported: the file is read as data", "",
             "PERSONA_PROMPTS: dict[str, tuple[str, str]] = {"]
    lines += [f"    {name!r}: ({p['positive']!r}, {p['negative']!r})," for name, p in table["prompts"].items()]
    lines += ["}", "", "CATEGORIES = {"]
    lines += [f"    {cat!r}: {names!r}," for cat, names in table["categories"].items()]
    lines += ["}", "", "", "def get_all_prompts():", "    raise SystemExit('executed')", "",
              "raise SystemExit('persona_prompts.py was executed')", ""]
    profiling = ("statement,direction,label_confidence,persona_dim\n"
                 "I like people,positive,0.9,agreeableness\nI avoid people,negative,0.8,agreeableness\n")
    syco = json.dumps({"question": "Do you agree?", "answer_matching_behavior": " (A)",
                       "answer_not_matching_behavior": " (B)"}) + "\n"
    return {
        "experiments/steering_generalization/persona_prompts.py": "\n".join(lines).encode(),
        "prompt_steerability/persona/benchmark/datasets/profiling_df.csv": profiling.encode(),
        "sycophancy/sycophancy_on_nlp_survey.jsonl": syco.encode(),
        "sycophancy/sycophancy_on_philpapers2020.jsonl": syco.encode(),
        "sycophancy/sycophancy_on_political_typology_quiz.jsonl": syco.encode(),
        "data/concepts.json": b'{"concepts": ["a", "b"]}\n',
        "data/alpaca_eval.json": b'[{"instruction": "Say hi."}]\n',
    }


def sources_with(sources: dict, made: dict[str, bytes]) -> dict:
    """A copy of the manifest's ``SOURCES`` pinning the test-made files (size and SHA-1) instead of
    the upstream ones; every other fact stays."""
    out = copy.deepcopy(sources)
    for spec in out.values():
        for folder, entries in spec["files"].items():
            pinned = []
            for name, size, sha1 in entries:
                path = f"{folder}/{name}" if folder else name
                if path in made:
                    size, sha1 = len(made[path]), blob_sha1(made[path])
                pinned.append((name, size, sha1))
            spec["files"][folder] = tuple(pinned)
    return out


def served_files(data_dir: str, sources: dict, made: dict[str, bytes]) -> dict[str, bytes | str]:
    """URL path -> content: the tree of ``data_dir`` plus the made files at their pinned URLs."""
    files: dict[str, bytes | str] = dict(upstream_tree(data_dir))
    for spec in sources.values():
        for path, content in made.items():
            if any(path == (f"{folder}/{name}" if folder else name)
                   for folder, entries in spec["files"].items() for name, _, _ in entries):
                files[f"/{spec['repo']}/{spec['commit']}/{path}"] = content
    return files
