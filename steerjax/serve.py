"""An OpenAI-compatible chat-completions server with continuous batching and per-request steering.

Routes (the subset of the OpenAI API that a chat client needs):

* ``POST /v1/chat/completions``: ``{"model", "messages", "temperature", "top_p", "top_k",
  "max_tokens" (or "max_completion_tokens"), "seed", "stop"}`` and steerjax's extra field
  ``"steering": {"vector": NAME, "multiplier": x}`` (``openai`` clients send it with
  ``extra_body``); answered with one choice (``n`` > 1, ``stream``, tools, logprobs and penalties
  are refused with a 400). ``response_format`` is accepted and ignored: the model is not constrained.
* ``GET /v1/models``: the model served, its steering vectors under ``"steering"``.

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad field
(naming it in ``param``) or a prompt that does not fit the model's context, 401 for a missing or
wrong key (compared in constant time), 404 for another route, 408 past the request time limit,
411/413 for a body without a length or over the cap, 503 with ``Retry-After`` when the queue or
the connection limit is full or the server is shutting down.

Two kinds of server, one class (:class:`ChatServer`), which takes a reply function
``respond(request: dict) -> dict | Reply | Pending``:

* :class:`ModelResponder`: a steerjax :class:`~steerjax.LanguageModel` answers through an
  :class:`Engine`. Requests wait in a bounded queue; at each chunk boundary (:data:`SERVE_CHUNK`
  decoding steps) the engine adds what waits to the running batch and
  drops the rows that finished, were cancelled (the client disconnected or timed out) or hit a
  stop string: a short request is never stuck behind a long one. Steering is data, so one batch
  mixes requests with different vectors and multipliers. A request's text is the text
  :func:`steerjax.generate` gives for it alone (same seed, same steering).
* any function: scripted replies (a status, a body that need not be JSON, headers, a delay), to
  test a client against rate limits, outages and malformed answers.

Nothing is kept per request once it is answered (:class:`ChatServer` records bodies only when
``keep_bodies``, for tests). From the shell: ``steerjax serve MODEL`` (:mod:`steerjax.cli.serve`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hmac
import ipaddress
import json
import math
import select
import socket
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from steerjax.data.batch import GENERATION, TokenBatch, encode, pow2, round_up
from steerjax.errors import SteerjaxError, TokenizerError
from steerjax.generate import DecodeState, decode_chunk, eos_array, pad_id, sample, step_keys
from steerjax.models.transformer import KVCache, forward, param_dtype, unembed
from steerjax.steering.core import GENERATED, Steering

#: the API prefix of every route (a client's base URL ends with it)
PREFIX = "/v1"
#: roles a message may have (``developer`` is OpenAI's newer name for ``system``)
ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 4  # OpenAI's limit on stop strings
SEED_RANGE = (-(2**63), 2**64)  # int64 or uint64
#: the fewest free cache slots the engine makes room for when it grows the cache (see Engine._fit)
LOOKAHEAD = 64
#: decoding steps per engine chunk: a request joins and leaves the running batch at chunk
#: boundaries, so a shorter chunk than generate's wastes fewer row-steps (a finished row waits at
#: most this many steps for its successor) at the cost of more host round trips (a few ms each)
SERVE_CHUNK = 4


@dataclasses.dataclass
class Reply:
    """One scripted HTTP reply.

    Attributes:
      status: HTTP status.
      body: a dict or list (sent as JSON), a str or bytes (sent as they are), or None (no body).
      headers: extra headers (e.g. ``{"Retry-After": "0"}``).
      delay: seconds to wait before answering (to test client timeouts and concurrency).
      content_type: default ``application/json`` for dict/list bodies, ``text/plain`` otherwise.
    """

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0
    content_type: str | None = None


def error_body(message: str, *, type: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict:
    """An error body in OpenAI's shape."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def completion(content: str, *, model: str, finish_reason: str = "stop", prompt_tokens: int = 0,
               completion_tokens: int = 0) -> dict:
    """A ``chat.completion`` body with one assistant message ``content``."""
    return {
        "id": f"chatcmpl-steerjax-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class RequestError(SteerjaxError, ValueError):
    """A request the server refuses with a 400 (``param``: the field at fault)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


class Busy(SteerjaxError):
    """The queue is full or the server is shutting down: a 503 with ``Retry-After``."""


class Pending:
    """A reply that an :class:`Engine` is still generating: the HTTP handler waits on it, checks
    the client's socket meanwhile and cancels it when the client goes away or the time is up."""

    def __init__(self, job: Job, engine: Engine, answer: Callable[[Job], Reply | dict]):
        self.job, self.engine, self.answer = job, engine, answer

    def wait(self, timeout: float) -> bool:
        return self.job.event.wait(timeout)

    def cancel(self) -> None:
        self.engine.cancel(self.job)

    def reply(self) -> Reply | dict:
        return self.answer(self.job)


# ----------------------------------------------------------------------------- the HTTP server


class _HTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once (more get a 503 at once)."""

    daemon_threads = True
    max_connections = 64

    def __init__(self, *args, **kw):
        self.open_connections = 0
        self._count = threading.Lock()
        super().__init__(*args, **kw)

    def process_request(self, request, client_address):
        with self._count:
            full = self.open_connections >= self.max_connections
            if not full:
                self.open_connections += 1
        if full:
            body = json.dumps(error_body("too many open connections; retry shortly", type="server_error",
                                         code="server_busy")).encode()
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
                                b"Content-Type: application/json\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count:
                self.open_connections -= 1


class ChatServer:
    """An HTTP server on ``host:port`` (port 0: a free one), answering in background threads.

    Args:
      respond: ``respond(request) -> dict | Reply | Pending`` for each well-formed ``POST
        /v1/chat/completions`` (``request`` is the parsed JSON body); a dict is a 200 JSON reply.
        An exception it raises becomes a 500 naming it. May be set after construction (the command
        line binds the port before the model loads).
      host, port: where to listen. The port is bound here: an ``OSError`` if it is taken.
      api_key: when set, requests without ``Authorization: Bearer <api_key>`` get a 401.
      model_name: the id listed by ``GET /v1/models``; ``model_info``: extra fields of that entry.
      max_body: the largest request body in bytes (a larger ``Content-Length``: 413).
      socket_timeout: seconds a connection may stay silent (reading a request, or idle between
        requests) before it is closed.
      request_timeout: seconds a :class:`Pending` reply may take: then it is cancelled and the
        client gets a 408.
      max_connections: connections open at once; more are answered 503 and closed.
      keep_bodies: record the parsed bodies in :attr:`bodies` (for tests; a long-lived server keeps
        nothing per request).

    Attributes:
      requests: chat-completion requests received (including refused ones).
      max_in_flight: the most requests answered at once so far.
      bodies: the parsed request bodies, in arrival order (with ``keep_bodies``).

    Use as a context manager (``with ChatServer(...) as server: server.url``) or call
    :meth:`start` and :meth:`close`; :meth:`serve_forever` blocks.
    """

    def __init__(self, respond: Callable[[dict], Any] | None, *, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, model_name: str = "steerjax", model_info: Mapping | None = None,
                 max_body: int = 1 << 20, socket_timeout: float = 30.0, request_timeout: float = 600.0,
                 max_connections: int = 64, keep_bodies: bool = True):
        self.respond, self.api_key, self.model_name = respond, api_key, model_name
        self.model_info = dict(model_info or {})
        self.max_body, self.socket_timeout, self.request_timeout = int(max_body), socket_timeout, request_timeout
        self.keep_bodies = keep_bodies
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.httpd = _HTTPServer((host, int(port)), _handler(self))
        self.httpd.max_connections = int(max_connections)

    @property
    def url(self) -> str:
        """The base URL a client takes (``http://host:port/v1``)."""
        host, port = self.httpd.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}{PREFIX}"

    def start(self) -> ChatServer:
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                            name="steerjax-chat-server", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()

    def stop_accepting(self) -> None:
        """Stop taking connections (requests in flight go on)."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight (or ``timeout`` s); whether it is idle."""
        end = time.monotonic() + timeout
        with self._idle:
            while self.in_flight:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        """Stop serving and free the port."""
        self.stop_accepting()
        self.httpd.server_close()
        closer = getattr(self.respond, "close", None)
        if closer is not None:
            closer()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- request accounting

    def _enter(self, body: dict | None) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if body is not None and self.keep_bodies:
                self.bodies.append(body)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self._idle.notify_all()


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _client_gone(sock: socket.socket) -> bool:
    """Whether the peer closed the connection (readable with nothing to read)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _handler(server: ChatServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = server.socket_timeout  # every read from the client (StreamRequestHandler.setup)

        def log_message(self, format, *args):  # quiet: tests and judges make many requests
            pass

        def _send(self, reply: Reply) -> None:
            body = reply.body
            if isinstance(body, (dict, list)):
                data, ctype = json.dumps(body).encode(), "application/json"
            elif isinstance(body, str):
                data, ctype = body.encode(), "text/plain; charset=utf-8"
            elif body is None:
                data, ctype = b"", "text/plain; charset=utf-8"
            else:
                data, ctype = bytes(body), "application/octet-stream"
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type or ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, str(v))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (its timeout) or the socket timed out
                self.close_connection = True

        def _refuse(self, status: int, message: str, *, code: str, type: str = "invalid_request_error",
                    headers: Mapping[str, str] | None = None) -> None:
            self.close_connection = True  # the body (if any) was not read: the stream cannot go on
            self._send(Reply(status, error_body(message, type=type, code=code), headers=dict(headers or {})))

        def _authorized(self) -> bool:
            if server.api_key is None:
                return True
            given = self.headers.get("Authorization", "").encode("utf-8", "replace")
            return hmac.compare_digest(given, f"Bearer {server.api_key}".encode())

        def do_GET(self):
            if not self._authorized():
                return self._send(Reply(401, error_body("Incorrect API key provided.", code="invalid_api_key")))
            if self.path.rstrip("/") == f"{PREFIX}/models":
                entry = {"id": server.model_name, "object": "model", "created": 0, "owned_by": "steerjax",
                         **server.model_info}
                return self._send(Reply(200, {"object": "list", "data": [entry]}))
            self._send(Reply(404, error_body(f"no route GET {self.path}", code="not_found")))

        def _body(self) -> bytes | None:
            """The request body within the cap, or None after answering why not."""
            if self.headers.get("Transfer-Encoding"):
                self._refuse(411, "chunked request bodies are not supported: send a Content-Length",
                             code="length_required")
                return None
            length = self.headers.get("Content-Length")
            if length is None:
                self._refuse(411, "a POST needs a Content-Length header", code="length_required")
                return None
            try:
                n = int(length)
                if n < 0:
                    raise ValueError
            except ValueError:
                self._refuse(400, f"invalid Content-Length {length!r}", code="invalid_content_length")
                return None
            if n > server.max_body:
                self._refuse(413, f"the request body of {n} bytes exceeds the server's limit of {server.max_body} "
                             "bytes", code="request_too_large")
                return None
            try:
                raw = self.rfile.read(n) if n else b""
            except (TimeoutError, OSError):
                self._refuse(408, f"the request body did not arrive within {server.socket_timeout:g} s",
                             code="timeout")
                return None
            if len(raw) < n:  # the client went away mid-body
                self.close_connection = True
                return None
            return raw

        def do_POST(self):
            raw = self._body()
            if raw is None:
                return
            if self.path.rstrip("/") != f"{PREFIX}/chat/completions":
                return self._send(Reply(404, error_body(f"no route POST {self.path}", code="not_found")))
            try:
                body = json.loads(raw or b"null", parse_constant=_reject_constant)
            except (ValueError, RecursionError):
                body = None
            server._enter(body if isinstance(body, dict) else None)
            left = False
            try:
                if not self._authorized():
                    reply = Reply(401, error_body("Incorrect API key provided.", code="invalid_api_key"))
                elif not isinstance(body, dict):
                    reply = Reply(400, error_body("the request body must be a JSON object"))
                elif server.respond is None:
                    reply = Reply(503, error_body("the model is still loading", type="server_error",
                                                  code="loading"), headers={"Retry-After": "5"})
                else:
                    try:
                        reply = server.respond(body)
                    except Exception as e:  # a reply function's bug is the client's 500, not a dead server
                        reply = Reply(500, error_body(f"{type(e).__name__}: {e}", type="server_error"))
                    if isinstance(reply, Pending):
                        reply = self._wait(reply)
                        if reply is None:
                            return
                    if not isinstance(reply, Reply):
                        reply = Reply(200, reply)
                del body
                if reply.delay:
                    time.sleep(reply.delay)
                # answered: counted out before the bytes go, so a client's next request (sent once it
                # reads them) never overlaps this one in the count
                server._leave()
                left = True
                self._send(reply)
            finally:
                if not left:
                    server._leave()

        def _wait(self, pending: Pending) -> Reply | dict | None:
            """The pending reply; None (cancelled) once the client has gone; 408 past the time limit."""
            end = time.monotonic() + server.request_timeout
            while not pending.wait(0.05):
                if _client_gone(self.connection):
                    pending.cancel()
                    self.close_connection = True
                    return None
                if time.monotonic() > end:
                    pending.cancel()
                    return Reply(408, error_body(f"no answer within the server's limit of "
                                                 f"{server.request_timeout:g} s", type="timeout", code="timeout"))
            return pending.reply()

    return Handler


def bind_warning(host: str, api_key: str | None) -> str | None:
    """The warning for listening on ``host`` without a key beyond this machine (None if fine)."""
    if api_key:
        return None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (f"listening on {host} without --api-key: anyone who can reach this address can use the model; "
            "pass --api-key KEY (or bind 127.0.0.1)")


# ----------------------------------------------------------------------------- the batching engine


@dataclasses.dataclass(eq=False)
class Job:
    """One request in the engine: its prompt ids and options in; tokens, text, finish reason out."""

    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = ()
    vector: int = 0  # row of the engine's vector table (0: none)
    multiplier: float = 0.0
    tokens: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    cancelled: bool = False
    event: threading.Event = dataclasses.field(default_factory=threading.Event)

    def finish(self, reason: str | None, error: str | None = None) -> None:
        self.finish_reason, self.error = reason, error
        self.event.set()


def key_data(seed: int):
    """``jax.random.key_data(jax.random.key(seed))`` computed on the host, for any seed in
    :data:`SEED_RANGE` (JAX keeps a seed's low 32 bits; 64-bit seeds wrap as int64 would)."""
    return np.asarray([0, int(seed) % (1 << 32)], np.uint32)


def _row_bucket(n: int, most: int) -> int:
    """Rows for ``n`` requests: a power of 4 (1, 4, 16, 64: few shapes to compile), at most ``most``."""
    b = 1
    while b < n:
        b *= 4
    return min(b, most)


def _slot_bucket(n: int) -> int:
    return max(128, pow2(n))


class Engine:
    """Continuous batching of chat requests over :func:`steerjax.generate.decode_chunk`.

    One thread owns the device. The running batch holds ``B`` rows (a power of 4 up to
    ``max_batch``) sharing one KV cache of ``S`` slots whose write index is shared: a newcomer's
    prompt is prefilled apart, then placed so that it ends at the shared index (slot offsets do not
    change attention: masks compare slots, rotary tables use positions). When the index would run
    past the cache, the cache is shifted left by the oldest live row's first slot and resized to a
    power of two fitting what the live rows span, with room to grow (:meth:`_fit`). When nothing
    waits and the live rows fit a smaller bucket, the batch shrinks to it; an empty batch is freed.
    So a step costs what its live rows need: few shapes (rows 1, 4, 16, ...; slots 128, 256, ...)
    and one compiled chunk program each. Newcomers are prefilled by a program per (rows, prompt
    width) bucket and placed by a small program without the model. Each loop: drop cancelled rows,
    admit waiting requests into free rows, run one chunk, hand finished requests back.

    Args:
      model: a :class:`steerjax.LanguageModel`.
      vectors: name -> :class:`~steerjax.vectors.SteeringVector` (the table requests pick from).
      positions: ``"all"`` or ``"generated"``: which tokens steering touches.
      max_batch: rows decoded at once. queue_size: requests waiting beyond them (more: :class:`Busy`).
      max_tokens_limit: the most new tokens a request may ask for.
    """

    def __init__(self, model, *, vectors: Mapping[str, Any] | None = None, positions: str = "all",
                 max_batch: int = 16, queue_size: int = 64, chunk: int | None = None,
                 max_tokens_limit: int = 2048):
        if positions not in ("all", "generated"):
            raise SteerjaxError(f"positions must be 'all' or 'generated', got {positions!r}")
        if max_batch < 1 or queue_size < 0:
            raise SteerjaxError("max_batch must be >= 1 and queue_size >= 0")
        self.model, self.cfg = model, model.config
        self.positions = positions
        self.max_batch = pow2(max_batch)
        self.queue_size = int(queue_size)
        self.chunk = int(chunk or SERVE_CHUNK)
        self.max_tokens_limit = int(max_tokens_limit)
        self.horizon = self.max_tokens_limit + self.chunk
        self.pad_id = pad_id(self.cfg)
        self.eos = frozenset(self.cfg.eos_token_ids or ())
        self.names = list(vectors or {})
        self.table, self.operator = None, "add"
        if vectors:
            ops = {v.metadata.get("operator", "add") for v in vectors.values()}
            if len(ops) > 1:
                raise SteerjaxError(f"the vectors use different operators {sorted(ops)}: serve one operator at a time")
            self.operator = ops.pop()
            table = np.zeros((self.cfg.num_layers, len(self.names) + 1, self.cfg.hidden_size), np.float32)
            for i, name in enumerate(self.names):
                for layer, vec in vectors[name].vectors.items():
                    table[layer, i + 1] = vec
            self.table = jnp.asarray(table)
        self._cond = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._closing = False
        self._drain_until = math.inf
        self.rows = None  # the device batch (a _Rows), None when empty
        self.slots: list[Job | None] = []
        self.first: list[int] = []  # each live row's first prompt slot
        self.n: list[int] = []  # tokens generated per live row
        self.index = 0  # the cache's shared write index (mirrors rows.state.cache.index)
        self.size = 0  # cache slots
        self.chunks = 0  # chunks run so far
        self.gather = 0.02  # seconds the engine waits for requests at a boundary (see _loop)
        self._freed = False  # the last chunk finished a request
        self._thread = threading.Thread(target=self._loop, name="steerjax-engine", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- the public side

    def submit(self, job: Job) -> Job:
        """Queue ``job``; raises :class:`Busy` when the queue is full or the engine is closing."""
        with self._cond:
            if self._closing:
                raise Busy("the server is shutting down")
            if len(self._queue) >= self.queue_size + max(0, self.max_batch - self.live()):
                raise Busy(f"the queue is full ({self.queue_size} waiting requests)")
            self._queue.append(job)
            self._cond.notify_all()
        return job

    def cancel(self, job: Job) -> None:
        """Drop ``job`` (at the next chunk boundary if it is running)."""
        with self._cond:
            job.cancelled = True
            try:
                self._queue.remove(job)
                job.finish(None, "cancelled")
            except ValueError:
                pass
            self._cond.notify_all()

    def live(self) -> int:
        return sum(j is not None for j in self.slots)

    def waiting(self) -> int:
        return len(self._queue)

    def close(self, drain: float = 0.0) -> None:
        """Stop taking requests; let running and queued ones finish for up to ``drain`` seconds,
        cancel the rest, and stop the engine's thread."""
        with self._cond:
            self._closing = True
            self._drain_until = time.monotonic() + drain
            self._cond.notify_all()
        self._thread.join()

    # ----------------------------------------------------------------- the loop

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._queue and not self.live():
                    self._cond.wait()
                if self._closing and (time.monotonic() > self._drain_until or not (self._queue or self.live())):
                    for job in list(self._queue) + [j for j in self.slots if j is not None]:
                        job.cancelled = True
                        job.finish(None, "the server is shutting down")
                    self._queue.clear()
                    self.slots = [None] * len(self.slots)
                    self.rows = None
                    return
                idle = not self.live() and len(self._queue) < self.max_batch
                if self.gather and (idle or (self._freed and not self._queue)):
                    # idle: let requests sent together arrive together (one prefill, fewer shapes);
                    # a request just answered: its client often sends the next one at once, and it
                    # joins at this boundary instead of a chunk later (the rows are kept for it)
                    self._cond.wait(self.gather)
                self._freed = False
                free = self.max_batch - self.live()
                newcomers = [self._queue.popleft() for _ in range(min(free, len(self._queue)))]
            try:
                self._reap()
                self._shrink(len(newcomers))
                if newcomers:
                    self._admit(newcomers)
                if self.live():
                    self._step()
            except Exception as e:  # noqa: BLE001 - a failed batch fails its requests, not the server
                err = f"{type(e).__name__}: {e}"
                for job in newcomers + [j for j in self.slots if j is not None]:
                    if not job.event.is_set():
                        job.finish(None, err)
                self.rows, self.slots, self.first, self.n = None, [], [], []
            finally:
                newcomers = job = None  # the loop waits next: it holds no finished request

    def _free(self, r: int) -> None:
        self.slots[r] = None

    def _reap(self) -> None:
        for r, job in enumerate(self.slots):
            if job is not None and job.cancelled:
                job.finish(None, "cancelled")
                self._free(r)

    def _shrink(self, arriving: int = 0) -> None:
        """Free an empty batch; when the live rows and the ``arriving`` requests fit a smaller row
        bucket, move them there (a step's cost follows its rows: the last long request of a burst
        runs alone, not in a batch of 16)."""
        live = [r for r, j in enumerate(self.slots) if j is not None]
        if not live:
            self.rows, self.slots, self.first, self.n = None, [], [], []
        elif (b := _row_bucket(len(live) + arriving, self.max_batch)) < len(self.slots):
            self._resize(b, live)

    def _fit(self, width: int) -> None:
        """Make room: the shared index at least ``width`` (newcomers' prompt width, 0 for none)
        and a free chunk after it.

        When there is none, the cache is shifted left by the oldest live row's first slot and
        sized (a power of two) for what the live rows span plus room ahead: as much again as that
        span (at least :data:`LOOKAHEAD` slots, at most what the rows have left). A step attends
        over about what the rows hold now, not what they may hold at their limits; the cache grows
        as they do, each time doubling."""
        live = [r for r, j in enumerate(self.slots) if j is not None]
        if width <= self.index and self.index + self.chunk <= self.size:
            return
        lo = min((self.first[r] for r in live), default=self.index)
        shift = min(lo, self.index - width)
        index = self.index - shift
        rem = max([self.slots[r].max_tokens - self.n[r] for r in live] + [1])
        ahead = round_up(max(1, min(rem, max(LOOKAHEAD, index))), self.chunk)
        size = _slot_bucket(index + ahead)
        self.rows = _reslot(self.rows, shift, size=size)
        self.first = [f - shift for f in self.first]
        self.index, self.size = index, size

    def _resize(self, b: int, keep: Sequence[int]) -> None:
        """``b`` rows: the rows ``keep`` first (in order), then empty ones."""
        idx = np.zeros(b, np.int32)
        ok = np.zeros(b, bool)
        idx[:len(keep)], ok[:len(keep)] = keep, True
        self.rows = _take_rows(self.rows, idx, ok)
        self.slots = [self.slots[r] for r in keep] + [None] * (b - len(keep))
        self.first = [self.first[r] for r in keep] + [0] * (b - len(keep))
        self.n = [self.n[r] for r in keep] + [0] * (b - len(keep))

    def _admit(self, jobs: list[Job]) -> None:
        need = self.live() + len(jobs)
        if self.rows is None:
            b = _row_bucket(need, self.max_batch)
            self.rows = _empty(self.cfg, b, 128, str(self.model.dtype))
            self.slots, self.first, self.n = [None] * b, [0] * b, [0] * b
            self.index, self.size = 0, 128
        elif need > len(self.slots):
            live = [r for r, j in enumerate(self.slots) if j is not None]
            self._resize(_row_bucket(need, self.max_batch), live)
        k = pow2(len(jobs))
        batch = TokenBatch.pad([j.prompt for j in jobs], side="left", buckets=GENERATION, rows=k)
        width = batch.shape[1]
        self._fit(width)
        free = [r for r, j in enumerate(self.slots) if j is None][:len(jobs)]
        rows_idx = np.full(k, len(self.slots), np.int32)  # padding rows: out of range, dropped
        rows_idx[:len(jobs)] = free

        def col(f, dtype, fill):
            out = np.full(k, fill, dtype)
            out[:len(jobs)] = [f(j) for j in jobs]
            return out

        opts = dict(
            limit=col(lambda j: j.max_tokens, np.int32, 1),
            temperature=col(lambda j: j.temperature, np.float32, 0.0),
            top_p=col(lambda j: j.top_p, np.float32, 1.0),
            top_k=col(lambda j: j.top_k, np.int32, 0),
            vector=col(lambda j: j.vector, np.int32, 0),
            multiplier=col(lambda j: j.multiplier, np.float32, 0.0),
        )
        keys = np.stack([key_data(j.seed) for j in jobs] + [key_data(0)] * (k - len(jobs)))
        self.rows, first = _join(self.model.params, self.rows, batch, self.table, keys, rows_idx,
                                 cfg=self.cfg, generated=self.positions == "generated", operator=self.operator,
                                 **opts)
        first = np.asarray(first)
        for i, (job, r) in enumerate(zip(jobs, free)):
            self.slots[r], self.first[r], self.n[r] = job, self.index - len(job.prompt), 1
            self._take(r, [int(first[i])])

    def _step(self) -> None:
        self._fit(0)
        live = np.asarray([j is not None for j in self.slots])
        self.rows, toks, n = _serve_chunk(self.model.params, self.rows, self.table, live, cfg=self.cfg,
                                          chunk=self.chunk, pad_id=self.pad_id, horizon=self.horizon,
                                          generated=self.positions == "generated", operator=self.operator)
        self.index += self.chunk
        self.chunks += 1
        toks, n = np.asarray(toks), np.asarray(n)
        for r, job in enumerate(self.slots):
            if job is not None:
                got = int(n[r]) - self.n[r]
                self.n[r] = int(n[r])
                self._take(r, toks[r, :got].tolist())
        if not self.live():
            self._shrink()  # free the batch before the loop sleeps

    def _take(self, r: int, new: list[int]) -> None:
        """Row ``r``'s new tokens: finish its job at EOS, its limit or a stop string."""
        job = self.slots[r]
        job.tokens.extend(new)
        ended = bool(new) and new[-1] in self.eos
        if not (job.stop or ended or len(job.tokens) >= job.max_tokens):
            return  # decoded when it ends (or each chunk, to look for its stop strings)
        tok = self.model.tokenizer
        text = tok.decode(job.tokens, skip_special_tokens=True) if tok is not None else ""
        cut = min((i for i in (text.find(s) for s in job.stop) if i >= 0), default=-1)
        if cut >= 0:
            job.text = text[:cut]
            job.finish("stop")
            self._free(r)
            self._freed = True
        elif ended or len(job.tokens) >= job.max_tokens:
            job.text = text
            job.finish("stop" if ended else "length")
            self._free(r)
            self._freed = True


# ----------------------------------------------------------------------------- the engine's programs


@struct.dataclass
class _Rows:
    """The running batch: the decode carry and each row's options (all ``[B]``)."""

    state: DecodeState
    start: Any  # the prompt length (first generated position)
    limit: Any
    key: Any  # [B, 2] uint32 key data
    temperature: Any
    top_p: Any
    top_k: Any
    vector: Any  # row of the vector table
    multiplier: Any


def _steering(table, vector, multiplier, generated: bool, operator: str):
    """The rows' :class:`Steering` from the vector table (None when no vectors are served)."""
    if table is None:
        return None
    start = jnp.full(vector.shape, GENERATED if generated else 0, jnp.int32)
    return Steering.build(table[:, vector], multiplier, start=start, operator=operator)


@functools.partial(jax.jit, static_argnames=("cfg", "b", "s", "dtype"))
def _empty(cfg, b, s, dtype):
    i32 = jnp.zeros((b,), jnp.int32)
    state = DecodeState(KVCache.empty(cfg, b, s, jnp.dtype(dtype)), i32, i32, i32, jnp.ones((b,), bool))
    return _Rows(state, i32, i32, jnp.zeros((b, 2), jnp.uint32), jnp.zeros((b,), jnp.float32),
                 jnp.ones((b,), jnp.float32), i32, i32, jnp.zeros((b,), jnp.float32))


@functools.partial(jax.jit, static_argnames=("size",))
def _reslot_program(rows, shift, *, size):
    c = rows.state.cache
    s_old = c.valid.shape[1]
    src = jnp.arange(size, dtype=jnp.int32) + shift
    ok = (src >= 0) & (src < s_old)
    src = jnp.clip(src, 0, s_old - 1)
    keep = ok[None, None, None, :, None]
    k = jnp.where(keep, jnp.take(c.k, src, axis=3), 0)
    v = jnp.where(keep, jnp.take(c.v, src, axis=3), 0)
    valid = jnp.where(ok[None, :], jnp.take(c.valid, src, axis=1), False)
    return rows.replace(state=rows.state.replace(cache=KVCache(k, v, valid, c.index - shift)))


@jax.jit
def _take_rows(rows, idx, ok):
    c = rows.state.cache
    cache = KVCache(jnp.take(c.k, idx, axis=1), jnp.take(c.v, idx, axis=1),
                    jnp.where(ok[:, None], jnp.take(c.valid, idx, axis=0), False), c.index)
    out = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), rows.replace(state=rows.state.replace(cache=None)))
    return out.replace(state=out.state.replace(cache=cache, done=jnp.where(ok, out.state.done, True)))


@functools.partial(jax.jit, static_argnames=("cfg", "generated", "operator"))
def _prefill(params, batch, table, keys, vector, multiplier, temperature, top_p, top_k, *, cfg, generated,
             operator):
    """Newcomers' prompts ``[k, T]`` alone: their cache (``T`` slots) and first tokens."""
    k, t = batch.ids.shape
    steering = _steering(table, vector, multiplier, generated, operator)
    out = forward(params, cfg, batch.ids, positions=batch.positions, valid=batch.valid, steering=steering,
                  generation_start=batch.lengths, cache=KVCache.empty(cfg, k, t, param_dtype(params)))
    first_keys = jax.vmap(lambda kd: jax.random.split(jax.random.wrap_key_data(kd), 1)[0])(keys)
    first = sample(unembed(params, cfg, out.hidden[:, -1]), first_keys, temperature, top_p, top_k)
    return out.cache, first


@jax.jit
def _place(rows, new, first, lengths, idx, keys, limit, temperature, top_p, top_k, vector, multiplier):
    """Newcomers into rows ``idx`` (out of range: dropped), their prompts ending at the shared index
    (a program without the model: cheap to compile for each shape)."""
    c = rows.state.cache
    k, t = new.valid.shape
    at = c.index - t
    s = c.valid.shape[1]
    new_k = jax.lax.dynamic_update_slice(jnp.zeros(c.k.shape[:1] + (k,) + c.k.shape[2:], c.k.dtype), new.k,
                                         (0, 0, 0, at, 0))
    new_v = jax.lax.dynamic_update_slice(jnp.zeros(c.v.shape[:1] + (k,) + c.v.shape[2:], c.v.dtype), new.v,
                                         (0, 0, 0, at, 0))
    new_valid = jax.lax.dynamic_update_slice(jnp.zeros((k, s), bool), new.valid, (0, at))
    cache = KVCache(c.k.at[:, idx].set(new_k, mode="drop"), c.v.at[:, idx].set(new_v, mode="drop"),
                    c.valid.at[idx].set(new_valid, mode="drop"), c.index)

    def put(x, y):
        return x.at[idx].set(y.astype(x.dtype), mode="drop")

    st = rows.state
    state = DecodeState(cache, put(st.tok, first), put(st.pos, lengths), put(st.n, jnp.ones((k,), jnp.int32)),
                        put(st.done, jnp.zeros((k,), bool)))
    return _Rows(state, put(rows.start, lengths), put(rows.limit, limit), put(rows.key, keys),
                 put(rows.temperature, temperature), put(rows.top_p, top_p), put(rows.top_k, top_k),
                 put(rows.vector, vector), put(rows.multiplier, multiplier))


@functools.partial(jax.jit, static_argnames=("cfg", "chunk", "pad_id", "horizon", "generated", "operator"))
def _serve_chunk(params, rows, table, live, *, cfg, chunk, pad_id, horizon, generated, operator):
    st = rows.state.replace(done=rows.state.done | ~live)
    keys = step_keys(jax.vmap(jax.random.wrap_key_data)(rows.key), st.n, chunk, horizon)
    steering = _steering(table, rows.vector, rows.multiplier, generated, operator)
    st, toks = decode_chunk(params, cfg, st, keys, steering=steering, generation_start=rows.start,
                            limit=rows.limit, temperature=rows.temperature, top_p=rows.top_p, top_k=rows.top_k,
                            eos=eos_array(cfg), pad_id=pad_id)
    return rows.replace(state=st), toks, st.n


def _reslot(rows, shift, *, size):
    return _reslot_program(rows, jnp.int32(shift), size=size)


def _join(params, rows, batch, table, keys, idx, *, cfg, generated, operator, limit, temperature, top_p, top_k,
          vector, multiplier):
    """Prefill newcomers apart (a program per prompt shape), then place them into ``rows``."""
    new, first = _prefill(params, batch, table, keys, vector, multiplier, temperature, top_p, top_k,
                          cfg=cfg, generated=generated, operator=operator)
    rows = _place(rows, new, first, jnp.asarray(batch.lengths), idx, keys, limit, temperature, top_p, top_k,
                  vector, multiplier)
    return rows, first


# ----------------------------------------------------------------------------- chat requests


def _number(request: dict, name: str, default, lo: float, hi: float, *, lo_open: bool = False,
            integer: bool = False, prefix: str = ""):
    """``request[name]`` checked (a number, or an integer, in range), or ``default`` when absent."""
    value = request.get(name)
    name = prefix + name
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise RequestError(f"'{name}' must be {kind}, got {json.dumps(value)}", name, "invalid_type")
    if value < lo or value > hi or (lo_open and value == lo):
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise RequestError(f"'{name}' must be {kind} in {rng}, got {value}", name, "invalid_value")
    return value


class ModelResponder:
    """Answers chat requests with a steerjax model through an :class:`Engine` (see the module doc).

    Args:
      model: a :class:`steerjax.LanguageModel` whose tokenizer has a chat template.
      name: the model id put in replies (default: the model's source).
      max_tokens: new tokens when a request does not say (``max_tokens`` / ``max_completion_tokens``).
      max_tokens_limit: the most new tokens a request may ask for (at most the model's context).
      vectors: name -> :class:`~steerjax.vectors.SteeringVector` a request may pick.
      default_vector, multiplier: the steering of a request that does not say (``None``: none);
        ``multiplier`` is also the strength of a request that names a vector but no multiplier.
      positions: ``"all"`` or ``"generated"``.
      max_batch, queue_size: as in :class:`Engine` (started with the first request).

    A request without ``temperature`` is sampled at 1 (OpenAI's default); without ``seed``, each
    request takes the next seed of a counter from 0, so repeated sampled requests differ.
    """

    def __init__(self, model, *, name: str | None = None, max_tokens: int = 256, max_tokens_limit: int = 2048,
                 vectors: Mapping[str, Any] | None = None, default_vector: str | None = None,
                 multiplier: float = 1.0, positions: str = "all", max_batch: int = 16, queue_size: int = 64):
        if model.tokenizer is None:
            raise SteerjaxError(f"{model.source} has no tokenizer: a chat server needs one")
        vectors = dict(vectors or {})
        if default_vector is not None and default_vector not in vectors:
            raise SteerjaxError(f"default vector {default_vector!r} is not among the vectors {sorted(vectors)}")
        if not math.isfinite(multiplier):
            raise SteerjaxError(f"multiplier must be finite, got {multiplier}")
        if positions not in ("all", "generated"):
            raise SteerjaxError(f"positions must be 'all' or 'generated', got {positions!r}")
        cfg = getattr(model, "config", None)
        self.model, self.name = model, name or str(model.source)
        self.max_tokens_limit = int(max_tokens_limit)
        if cfg is not None:
            self.max_tokens_limit = min(self.max_tokens_limit, cfg.max_position_embeddings)
        self.max_tokens = min(int(max_tokens), self.max_tokens_limit)
        self.vectors, self.names = vectors, list(vectors)
        self.default_vector, self.multiplier, self.positions = default_vector, float(multiplier), positions
        self._batching = {"max_batch": max_batch, "queue_size": queue_size}
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._seeds = iter(range(2**63))

    @property
    def engine(self) -> Engine:
        """The batching engine (started on first use)."""
        with self._lock:
            if self._engine is None:
                self._engine = Engine(self.model, vectors=self.vectors, positions=self.positions,
                                      max_tokens_limit=self.max_tokens_limit, **self._batching)
            return self._engine

    def info(self) -> dict:
        """The ``GET /v1/models`` entry's steering fields."""
        return {"steering": {
            "vectors": [{"name": n, "layers": v.layers, **({"method": v.metadata["method"]}
                                                           if "method" in v.metadata else {})}
                        for n, v in self.vectors.items()],
            "default": None if self.default_vector is None else {"vector": self.default_vector,
                                                                 "multiplier": self.multiplier},
            "positions": self.positions,
        }}

    def close(self, drain: float = 0.0) -> None:
        """Stop the engine: running requests get ``drain`` seconds, the rest a 503."""
        if self._engine is not None:
            self._engine.close(drain)

    def __call__(self, request: dict) -> Reply | Pending:

        try:
            messages, opts = self.parse(request)
            try:
                prompt = encode(self.model, [messages], chat=True)[0]
            except TokenizerError as e:
                raise RequestError(str(e), "messages") from None
            context = self.model.config.max_position_embeddings
            if len(prompt) + opts["max_new_tokens"] > context:
                raise RequestError(f"the prompt of {len(prompt)} tokens + max_tokens {opts['max_new_tokens']} "
                                   f"exceeds the model's context of {context} tokens", "messages",
                                   "context_length_exceeded")
        except RequestError as e:
            return Reply(400, error_body(str(e), param=e.param, code=e.code))
        vector, multiplier = opts.get("steering", (None, 0.0))
        job = Job(prompt, opts["max_new_tokens"], opts["temperature"], opts["top_p"], opts.get("top_k", 0),
                  opts["seed"], opts.get("stop", ()), 0 if vector is None else self.names.index(vector) + 1,
                  multiplier)
        try:
            self.engine.submit(job)
        except Busy as e:
            return Reply(503, error_body(f"{e}; retry shortly", type="server_error", code="server_busy"),
                         headers={"Retry-After": "1"})
        return Pending(job, self.engine, self._answer)

    def _answer(self, job: Job) -> Reply | dict:
        if job.error is not None:
            status = 503 if "shutting down" in job.error else 500
            return Reply(status, error_body(job.error, type="server_error"))
        body = completion(job.text, model=self.name, finish_reason=job.finish_reason,
                          prompt_tokens=len(job.prompt), completion_tokens=len(job.tokens))
        if self.vectors:
            name = None if job.vector == 0 else self.names[job.vector - 1]
            body["steering"] = {"vector": name, "multiplier": job.multiplier if name else 0.0}
        return body

    def parse(self, request: dict) -> tuple[list[dict], dict]:
        """``(messages, options)`` of a request. The options always hold ``max_new_tokens``,
        ``temperature``, ``top_p`` and ``seed`` (:func:`steerjax.generate`'s names); ``top_k``,
        ``stop`` (a tuple of strings) and ``steering`` (``(vector name or None, multiplier)``) when
        the request or the server's default steering sets them.

        Raises:
          RequestError: a bad field (named in its ``param``).
        """
        model = request.get("model")
        if model is not None and not isinstance(model, str):
            raise RequestError("'model' must be a string", "model", "invalid_type")
        msgs = request.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise RequestError("'messages' must be a non-empty list of {role, content} objects", "messages")
        messages = []
        for i, m in enumerate(msgs):
            where = f"messages[{i}]"
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise RequestError(f"{where} must be an object with a 'role'", f"{where}.role")
            if m["role"] not in ROLES:
                raise RequestError(f"{where}.role {m['role']!r} is not supported; use one of {list(ROLES)}",
                                   f"{where}.role", "invalid_value")
            content = m.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
                if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
                    raise RequestError(f"{where}.content: only text parts are supported", f"{where}.content")
                content = "".join(texts)
            if not isinstance(content, str):
                raise RequestError(f"{where}.content must be a string", f"{where}.content", "invalid_type")
            role = "system" if m["role"] == "developer" else m["role"]
            messages.append({"role": role, "content": content})
        if request.get("stream"):
            raise RequestError("stream is not supported: send stream=false", "stream", "unsupported_value")
        n = request.get("n")
        if n is not None and (isinstance(n, bool) or n != 1):
            raise RequestError("only n=1 is supported", "n", "unsupported_value")
        for name in ("tools", "functions", "logit_bias"):
            if request.get(name):
                raise RequestError(f"'{name}' is not supported", name, "unsupported_parameter")
        if request.get("logprobs") or request.get("top_logprobs"):
            raise RequestError("logprobs are not supported", "logprobs", "unsupported_parameter")
        for name in ("presence_penalty", "frequency_penalty"):
            if _number(request, name, 0, -2, 2):
                raise RequestError(f"'{name}' is not supported (send 0 or leave it out)", name,
                                   "unsupported_parameter")
        fmt = request.get("response_format")
        if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") in ("text", "json_object",
                                                                                   "json_schema")):
            raise RequestError("'response_format' must be {\"type\": \"text\" | \"json_object\" | \"json_schema\"}",
                               "response_format", "invalid_value")
        opts: dict[str, Any] = {}
        name = "max_completion_tokens" if request.get("max_completion_tokens") is not None else "max_tokens"
        opts["max_new_tokens"] = _number(request, name, self.max_tokens, 1, self.max_tokens_limit, integer=True)
        opts["temperature"] = float(_number(request, "temperature", 1.0, 0, 2))
        opts["top_p"] = float(_number(request, "top_p", 1.0, 0, 1, lo_open=True))
        if request.get("top_k") is not None:
            vocab = getattr(getattr(self.model, "config", None), "vocab_size", 2**31 - 1)
            opts["top_k"] = _number(request, "top_k", 0, 0, vocab, integer=True)
        seed = request.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RequestError(f"'seed' must be an integer, got {json.dumps(seed)}", "seed", "invalid_type")
        if seed is not None and not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
            raise RequestError(f"'seed' must fit in 64 bits ([-2**63, 2**64)), got {seed}", "seed", "invalid_value")
        stop = request.get("stop")
        if stop is not None:
            if isinstance(stop, str):
                stop = [stop]
            if not isinstance(stop, list) or not all(isinstance(x, str) for x in stop):
                raise RequestError("'stop' must be a string or a list of strings", "stop", "invalid_type")
            if len(stop) > MAX_STOP or any(not x for x in stop):
                raise RequestError(f"'stop' takes at most {MAX_STOP} non-empty strings", "stop", "invalid_value")
            opts["stop"] = tuple(stop)
        if self.vectors or "steering" in request:
            opts["steering"] = self._steering(request)
        if seed is None:
            with self._lock:
                seed = next(self._seeds)
        opts["seed"] = int(seed)
        return messages, opts

    def _steering(self, request: dict) -> tuple[str | None, float]:
        """``(vector name or None, multiplier)`` of a request's ``steering`` field."""
        if "steering" not in request:
            return self.default_vector, (self.multiplier if self.default_vector else 0.0)
        s = request["steering"]
        if s is None:
            return None, 0.0
        if not isinstance(s, dict):
            raise RequestError("'steering' must be an object {\"vector\": NAME, \"multiplier\": x} or null",
                               "steering", "invalid_type")
        unknown = sorted(set(s) - {"vector", "multiplier"})
        if unknown:
            raise RequestError(f"'steering' has unknown fields {unknown}; it takes 'vector' and 'multiplier'",
                               f"steering.{unknown[0]}", "invalid_value")
        only = self.names[0] if len(self.names) == 1 else None
        name = s.get("vector", self.default_vector or only)
        if name is not None and not isinstance(name, str):
            raise RequestError("'steering.vector' must be a string or null", "steering.vector", "invalid_type")
        if name is not None and name not in self.vectors:
            loaded = self.names or "none (start the server with --vector)"
            raise RequestError(f"unknown steering vector {name!r}; the server has {loaded}", "steering.vector",
                               "invalid_value")
        mult = _number(s, "multiplier", self.multiplier, -1e6, 1e6, prefix="steering.")
        if name is None:
            if s.get("multiplier") not in (None, 0):
                raise RequestError("'steering.multiplier' needs a vector: name one in 'steering.vector'",
                                   "steering.vector", "invalid_value")
            return None, 0.0
        return name, float(mult)


def model_server(model, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 name: str | None = None, max_tokens: int = 256, **kw) -> ChatServer:
    """A :class:`ChatServer` (not started) answering with ``model`` (:class:`ModelResponder`;
    ``kw``: its steering and batching options, and :class:`ChatServer`'s limits)."""
    limits = {k: kw.pop(k) for k in ("max_body", "socket_timeout", "request_timeout", "max_connections")
              if k in kw}
    warning = bind_warning(host, api_key)
    if warning:
        warnings.warn(warning, stacklevel=2)
    server = ChatServer(None, host=host, port=port, api_key=api_key, keep_bodies=False, **limits)
    responder = ModelResponder(model, name=name, max_tokens=max_tokens, **kw)
    server.respond, server.model_name, server.model_info = responder, responder.name, responder.info()
    return server
