"""A minimal OpenAI-compatible chat-completions server: a local judge for
:class:`steerjax.studies.steerability_prediction.llm_judge.LLMJudge`, and the server its tests talk to.

Routes (the subset of the OpenAI API that a chat client needs):

* ``POST /v1/chat/completions``: ``{"model", "messages", "temperature", "top_p", "max_tokens"
  (or "max_completion_tokens"), "seed"}``; answered with one choice (``n`` > 1 and ``stream`` are
  refused with a 400). ``response_format`` is accepted and ignored: the model is not constrained.
* ``GET /v1/models``: the one model served.

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 401 for a missing
or wrong key (when the server has one), 404 for another route, 400 for a malformed request or a
prompt that does not fit the model's context.

Two kinds of server, one class (:class:`ChatServer`), which takes a reply function
``respond(request: dict) -> dict | Reply``:

* :class:`ModelResponder`: a steerjax :class:`~steerjax.LanguageModel` answers; the messages go
  through the tokenizer's chat template (:func:`steerjax.data.batch.encode`), the reply is
  :func:`steerjax.generate` (greedy at ``temperature`` 0, else nucleus sampling). One request is
  generated at a time (a lock): the server is for a local judge and for tests, not for throughput.
* any function: scripted replies (a status, a body that need not be JSON, headers, a delay), to
  test a client against rate limits, outages and malformed answers.

From the shell::

    python -m steerjax.serve smollm2-135m-instruct --port 8000 [--api-key KEY] [--name NAME]
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 STEERJAX_JUDGE_MODEL=NAME ...
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from steerjax.errors import SteerjaxError

#: the API prefix of every route (a client's base URL ends with it)
PREFIX = "/v1"


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


class ChatServer:
    """An HTTP server on ``host:port`` (port 0: a free one), answering in background threads.

    Args:
      respond: ``respond(request) -> dict | Reply`` for each well-formed ``POST
        /v1/chat/completions`` (``request`` is the parsed JSON body); a dict is a 200 JSON reply.
        An exception it raises becomes a 500 naming it.
      host, port: where to listen.
      api_key: when set, requests without ``Authorization: Bearer <api_key>`` get a 401.
      model_name: the id listed by ``GET /v1/models``.

    Attributes:
      requests: chat-completion requests received (including refused ones).
      max_in_flight: the most requests answered at once so far.
      bodies: the parsed request bodies, in arrival order.

    Use as a context manager (``with ChatServer(...) as server: server.url``) or call
    :meth:`start` and :meth:`close`; :meth:`serve_forever` blocks (the command line).
    """

    def __init__(self, respond: Callable[[dict], Any], *, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, model_name: str = "steerjax"):
        self.respond, self.api_key, self.model_name = respond, api_key, model_name
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.httpd = ThreadingHTTPServer((host, int(port)), _handler(self))
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        """The base URL a client takes (``http://host:port/v1``)."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{PREFIX}"

    def start(self) -> ChatServer:
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.httpd.serve_forever, name="steerjax-chat-server",
                                            daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()

    def close(self) -> None:
        """Stop serving and free the port."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

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
            if body is not None:
                self.bodies.append(body)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


def _handler(server: ChatServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

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
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type or ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in reply.headers.items():
                self.send_header(k, str(v))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                pass

        def _authorized(self) -> bool:
            if server.api_key is None:
                return True
            return self.headers.get("Authorization", "") == f"Bearer {server.api_key}"

        def do_GET(self):
            if not self._authorized():
                return self._send(Reply(401, error_body("Incorrect API key provided.", code="invalid_api_key")))
            if self.path.rstrip("/") == f"{PREFIX}/models":
                return self._send(Reply(200, {"object": "list", "data": [
                    {"id": server.model_name, "object": "model", "created": 0, "owned_by": "steerjax"}]}))
            self._send(Reply(404, error_body(f"no route GET {self.path}", code="not_found")))

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            if self.path.rstrip("/") != f"{PREFIX}/chat/completions":
                return self._send(Reply(404, error_body(f"no route POST {self.path}", code="not_found")))
            try:
                body = json.loads(raw or b"null")
            except json.JSONDecodeError:
                body = None
            server._enter(body if isinstance(body, dict) else None)
            try:
                if not self._authorized():
                    reply = Reply(401, error_body("Incorrect API key provided.", code="invalid_api_key"))
                elif not isinstance(body, dict):
                    reply = Reply(400, error_body("the request body must be a JSON object"))
                else:
                    try:
                        reply = server.respond(body)
                    except Exception as e:  # a reply function's bug is the client's 500, not a dead server
                        reply = Reply(500, error_body(f"{type(e).__name__}: {e}", type="server_error"))
                    if not isinstance(reply, Reply):
                        reply = Reply(200, reply)
                if reply.delay:
                    time.sleep(reply.delay)
                self._send(reply)
            finally:
                server._leave()

    return Handler


class ModelResponder:
    """Answers chat requests with a steerjax model (see the module doc).

    Args:
      model: a :class:`steerjax.LanguageModel` with a tokenizer that has a chat template.
      name: the model id put in replies (default: the model's source).
      max_tokens: new tokens when a request does not say (``max_tokens`` / ``max_completion_tokens``).
      max_tokens_limit: the most new tokens a request may ask for.

    A request without ``temperature`` is sampled at 1 (OpenAI's default); without ``seed``, each
    request takes the next seed of a counter from 0, so repeated sampled requests differ.
    """

    def __init__(self, model, *, name: str | None = None, max_tokens: int = 256, max_tokens_limit: int = 2048):
        if model.tokenizer is None:
            raise SteerjaxError(f"{model.source} has no tokenizer: a chat server needs one")
        self.model, self.name = model, name or str(model.source)
        self.max_tokens, self.max_tokens_limit = int(max_tokens), int(max_tokens_limit)
        self._lock = threading.Lock()
        self._seeds = itertools.count()

    def __call__(self, request: dict) -> Reply | dict:
        try:
            messages, opts = self.parse(request)
        except SteerjaxError as e:  # parse raises only for the request
            return Reply(400, error_body(str(e)))
        from steerjax.data.batch import encode
        from steerjax.errors import ContextLengthError
        from steerjax.generate import generate

        with self._lock:
            try:
                prompt = encode(self.model, [messages], chat=True)[0]
                out = generate(self.model, [prompt], **opts)
            except ContextLengthError as e:
                return Reply(400, error_body(str(e), code="context_length_exceeded", param="messages"))
        n = int(out.lengths[0])
        eos = set(self.model.config.eos_token_ids or ())
        stopped = n > 0 and int(out.tokens[0, n - 1]) in eos
        finish = "stop" if stopped or n < opts["max_new_tokens"] else "length"
        text = out.texts[0] if out.texts is not None else ""
        return completion(text, model=self.name, finish_reason=finish, prompt_tokens=len(prompt),
                          completion_tokens=n)

    def parse(self, request: dict) -> tuple[list[dict], dict]:
        """``(messages, generate options)`` of a request.

        Raises:
          SteerjaxError: no messages, a message without a role or text content, ``n`` > 1,
            ``stream``, or a bad temperature / top_p / max_tokens / seed.
        """
        msgs = request.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise SteerjaxError("'messages' must be a non-empty list of {role, content} objects")
        messages = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise SteerjaxError(f"messages[{i}] must be an object with a 'role'")
            content = m.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
                if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
                    raise SteerjaxError(f"messages[{i}].content: only text parts are supported")
                content = "".join(texts)
            if not isinstance(content, str):
                raise SteerjaxError(f"messages[{i}].content must be a string")
            messages.append({"role": m["role"], "content": content})
        if request.get("stream"):
            raise SteerjaxError("stream is not supported: send stream=false")
        if request.get("n", 1) not in (1, None):
            raise SteerjaxError("only n=1 is supported")
        temperature = request.get("temperature")
        temperature = 1.0 if temperature is None else temperature
        top_p = request.get("top_p")
        top_p = 1.0 if top_p is None else top_p
        max_new = request.get("max_tokens") or request.get("max_completion_tokens") or self.max_tokens
        seed = request.get("seed")
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise SteerjaxError(f"temperature must be a number in [0, 2], got {temperature!r}")
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise SteerjaxError(f"top_p must be in (0, 1], got {top_p!r}")
        if not isinstance(max_new, int) or not 1 <= max_new <= self.max_tokens_limit:
            raise SteerjaxError(f"max_tokens must be an int in [1, {self.max_tokens_limit}], got {max_new!r}")
        if seed is not None and not isinstance(seed, int):
            raise SteerjaxError(f"seed must be an int, got {seed!r}")
        return messages, {"max_new_tokens": max_new, "temperature": float(temperature), "top_p": float(top_p),
                          "seed": int(next(self._seeds) if seed is None else seed)}


def model_server(model, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 name: str | None = None, max_tokens: int = 256) -> ChatServer:
    """A :class:`ChatServer` (not started) answering with ``model`` (:class:`ModelResponder`)."""
    responder = ModelResponder(model, name=name, max_tokens=max_tokens)
    return ChatServer(responder, host=host, port=port, api_key=api_key, model_name=responder.name)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m steerjax.serve", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a model source for steerjax.load_model (path, alias or hub id)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", default=None, help="require this bearer key (default: none)")
    ap.add_argument("--name", default=None, help="model id clients pass (default: the model source)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-tokens", type=int, default=256, help="new tokens when a request does not say")
    args = ap.parse_args(argv)
    import steerjax

    model = steerjax.load_model(args.model, dtype=args.dtype)
    server = model_server(model, host=args.host, port=args.port, api_key=args.api_key, name=args.name or args.model,
                          max_tokens=args.max_tokens)
    print(f"serving {server.model_name!r} at {server.url} (POST /chat/completions); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
