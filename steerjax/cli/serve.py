"""``steerjax serve``: an OpenAI-compatible chat server for a (steered) model (:mod:`steerjax.serve`).

The order of things: arguments and vector files are checked against the model's config, the port
is bound (a taken port is an ``error:`` line and status 2, before the weights load), the model
loads, then requests are served until SIGTERM or Ctrl-C. SIGTERM is graceful: no new connection
is taken, running and queued requests get up to ``--drain`` seconds to finish, the rest are
answered 503, then the command exits 0.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import steerjax
from steerjax.cli import checks
from steerjax.errors import SteerjaxError
from steerjax.serve import ChatServer, ModelResponder, bind_warning


def add_commands(sub) -> None:
    p = sub.add_parser("serve", help="serve a model, optionally steered, on the OpenAI chat API",
                       description="Serve a model through the OpenAI chat-completions API with continuous batching. "
                                   "With --vector, every request is steered by default; a request picks another "
                                   "loaded vector and multiplier with \"steering\": {\"vector\": NAME, "
                                   "\"multiplier\": x} (the openai client's extra_body).")
    checks.add_model(p)
    p.add_argument("--vector", action="append", default=[], metavar="[NAME=]FILE",
                   help="a steering vector to load (repeatable); NAME defaults to the vector's own name or the file "
                        "name. The first is the default steering")
    p.add_argument("--layer", type=int, metavar="L",
                   help="the block to steer: picks one layer from each file, or moves a single-vector file to it")
    p.add_argument("--multiplier", type=checks.finite_float, default=None, metavar="M",
                   help="the default steering strength (default: 1.0 with --vector)")
    p.add_argument("--positions", choices=("all", "generated"), default="all",
                   help="steer every token or only generated ones (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s (0: any free port)")
    p.add_argument("--api-key", default=os.environ.get("STEERJAX_API_KEY"),
                   help="require this bearer key (default: $STEERJAX_API_KEY, else none)")
    p.add_argument("--name", default=None, help="model id clients pass (default: the model argument)")
    p.add_argument("--max-tokens", type=checks.positive_int, default=256, metavar="N",
                   help="new tokens when a request does not say (default: %(default)s)")
    p.add_argument("--max-tokens-limit", type=checks.positive_int, default=2048, metavar="N",
                   help="the most new tokens a request may ask for (default: %(default)s)")
    p.add_argument("--max-batch", type=checks.positive_int, default=16, metavar="B",
                   help="requests decoded at once (default: %(default)s)")
    p.add_argument("--queue", type=checks.nonnegative_int, default=64, metavar="Q",
                   help="requests waiting beyond the batch before a 503 (default: %(default)s)")
    p.add_argument("--max-body", type=checks.positive_int, default=1 << 20, metavar="BYTES",
                   help="largest request body (default: %(default)s)")
    p.add_argument("--socket-timeout", type=checks.positive_float, default=30.0, metavar="S",
                   help="seconds a connection may stay silent (default: %(default)s)")
    p.add_argument("--request-timeout", type=checks.positive_float, default=600.0, metavar="S",
                   help="seconds a request may take before a 408 (default: %(default)s)")
    p.add_argument("--drain", type=checks.nonnegative_float, default=30.0, metavar="S",
                   help="on SIGTERM, seconds running requests get to finish (default: %(default)s)")
    checks.add_dtype(p)
    p.set_defaults(run=run_serve)


def vector_specs(specs: list[str]) -> list[tuple[str | None, str]]:
    """``[NAME=]FILE`` arguments as ``(name or None, path)``."""
    out = []
    for spec in specs:
        name, eq, path = spec.partition("=")
        if eq and name and not os.path.exists(spec):
            out.append((name, path))
        else:
            out.append((None, spec))
    return out


def read_vectors(specs: list[str], layer: int | None, config) -> dict:
    """The named vectors of ``--vector`` arguments, checked against the model's config."""
    vectors = {}
    for name, path in vector_specs(specs):
        vec = checks.read_vectors(path, layer=layer, num_layers=config.num_layers)
        checks.check_width(path, vec, config)
        name = name or vec.name or os.path.splitext(os.path.basename(path))[0]
        if name in vectors:
            raise SteerjaxError(f"two vectors are named {name!r}: name them with --vector NAME=FILE")
        vectors[name] = vec
    return vectors


def run_serve(args) -> int:
    if not args.vector:
        for flag, value in (("--layer", args.layer), ("--multiplier", args.multiplier)):
            if value is not None:
                raise SteerjaxError(f"{flag} needs --vector FILE (the steering vector to serve)")
    if not 0 <= args.port < 65536:
        raise SteerjaxError(f"--port must be in [0, 65535], got {args.port}")
    header = checks.read_config(args.model)
    if not header.chat_template:
        raise SteerjaxError(f"{header.source} has no chat template: the chat API needs one")
    vectors = read_vectors(args.vector, args.layer, header.config)
    try:
        server = ChatServer(None, host=args.host, port=args.port, api_key=args.api_key, max_body=args.max_body,
                            socket_timeout=args.socket_timeout, request_timeout=args.request_timeout,
                            keep_bodies=False)
    except OSError as e:
        raise SteerjaxError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    warning = bind_warning(args.host, args.api_key)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    try:
        model = steerjax.load_model(args.model, dtype=args.dtype)
        multiplier = 1.0 if args.multiplier is None else args.multiplier
        responder = ModelResponder(model, name=args.name or args.model, max_tokens=args.max_tokens,
                                   max_tokens_limit=args.max_tokens_limit, vectors=vectors,
                                   default_vector=next(iter(vectors), None), multiplier=multiplier,
                                   positions=args.positions, max_batch=args.max_batch, queue_size=args.queue)
    except BaseException:
        server.httpd.server_close()
        raise
    server.respond, server.model_name, server.model_info = responder, responder.name, responder.info()
    stop = threading.Event()
    old = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if _main_thread() else None
    server.start()
    steered = (f"; steering: {', '.join(vectors)} (default {next(iter(vectors))} x {multiplier:g}, "
               f"positions {args.positions})" if vectors else "")
    print(f"serving {server.model_name!r} at {server.url} (POST /chat/completions){steered}; "
          "SIGTERM or Ctrl-C stops", flush=True)
    try:
        while not stop.wait(0.2):
            pass
        print(f"stopping: finishing running requests (up to {args.drain:g} s)", file=sys.stderr, flush=True)
        server.stop_accepting()
        responder.close(drain=args.drain)
        server.wait_idle(5.0)  # the handlers send the last answers
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        server.stop_accepting()
        server.httpd.server_close()
        responder.close()
    print("stopped", file=sys.stderr, flush=True)
    return 0


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()

