"""The batching server against a one-request-at-a-time server on the same model, in one run.

Workload: ``--clients`` concurrent clients (16) sending chat requests with ``max_tokens`` spread
from 8 to 256 and three steerings (none, vector A, vector B with a negative multiplier). The
model's end-of-sequence id is removed for the run, so that every request generates exactly its
``max_tokens`` (the figures measure scheduling, not the model's whims). Two patterns:

* ``steady``: each client sends ``--requests`` (4) requests one after another, the next as soon as
  its reply arrives (a closed loop, as users and judges do): every workload request is sent by
  every client once in a different order. The targets are measured here.
* ``burst``: each client sends one request, all at once, and the round ends with the longest
  (``--rounds`` times). Its tail is the longest request running alone, so its throughput is bounded
  by ``1 + (tokens / longest - 1) * cost(1 row) / cost(16 rows)`` whatever the scheduler does
  (about 3x on 2 CPU cores); it is shown for comparison.

Both servers take the same requests over HTTP on 127.0.0.1:

* ``batching``: :func:`steerjax.serve.model_server` (continuous batching, steering per request);
* ``serial``: a :class:`steerjax.serve.ChatServer` whose reply function calls
  :func:`steerjax.generate` under a lock, one request at a time (the server before issue 26, with
  today's early-stopping ``generate``, which only helps it).

Every server first runs ``--warmup`` untimed burst rounds (compiles). Targets (steady): throughput
(completion tokens / wall time) at least 4x the serial server's; the p95 latency of the 8-token
requests under load below 20% of the longest request's time; RSS after ``--rss-requests`` (1,000)
short requests within 10% of RSS after 100.

Usage::

    python benchmarks/serve.py [--model smollm2-135m-instruct] [--clients 16] [--requests 4] [--rounds 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import threading
import time
import urllib.request

import numpy as np
from _machine import cpu_name  # benchmarks/ is sys.path[0] when a script runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

QUESTIONS = ["Tell me about the sea.", "What is a good breakfast?", "Describe a city at night.",
             "Why do cats purr?", "Write about autumn.", "How do bicycles work?", "What is music?",
             "Tell me a story about a fox."]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="steerjax alias or path (needs a chat template)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=4, help="requests per client, steady pattern (default 4)")
    p.add_argument("--rounds", type=int, default=1, help="timed rounds of the burst pattern (default 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed burst rounds first (compiles; default 2)")
    p.add_argument("--rss-requests", type=int, default=1000)
    p.add_argument("--layer", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def workload(n: int) -> list[dict]:
    """``n`` requests: max_tokens spread over 8..256 (a quarter of them 8), three steerings."""
    lengths = np.unique(np.geomspace(16, 256, max(1, n - n // 4)).astype(int)).tolist()
    lengths = ([8] * (n // 4) + lengths + [256] * n)[:n]
    steer = [None, {"vector": "a", "multiplier": 1.0}, {"vector": "b", "multiplier": -1.0}]
    return [{"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], "max_tokens": int(m),
             "temperature": 0, "steering": steer[i % 3]} for i, m in enumerate(lengths)]


def post(url: str, body: dict) -> tuple[float, dict]:
    req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer k"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=3600) as f:
        out = json.loads(f.read())
    return time.perf_counter() - t0, out


def concurrent(url: str, bodies: list[dict]) -> tuple[float, list[float], list[dict]]:
    """Send every body at once (a client each); ``(wall s, latencies, replies)``."""
    wall, lat, replies, _ = closed_loop(url, [[b] for b in bodies])
    return wall, lat, replies


def in_threads(fn, n: int) -> float:
    """Run ``fn(0) .. fn(n - 1)`` in a thread each; the wall seconds until all have returned."""
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def closed_loop(url: str, per_client: list[list[dict]]) -> tuple[float, list[float], list[dict], list[dict]]:
    """Each client (a thread) sends its bodies one after another; ``(wall s, latencies, replies,
    bodies)`` in the order the bodies were listed, client by client."""
    lat = [[0.0] * len(bs) for bs in per_client]
    replies = [[None] * len(bs) for bs in per_client]

    def one(i):
        for j, body in enumerate(per_client[i]):
            lat[i][j], replies[i][j] = post(url, body)

    wall = in_threads(one, len(per_client))
    flat = [b for bs in per_client for b in bs]
    return wall, [x for xs in lat for x in xs], [r for rs in replies for r in rs], flat


def serial_server(model, vectors):
    """The server before issue 26: one ``generate`` at a time behind a lock."""
    import steerjax
    from steerjax.data.batch import encode
    from steerjax.serve import ChatServer, completion

    lock = threading.Lock()

    def respond(request):
        s = request.get("steering")
        steering = None if not s else vectors[s["vector"]].to_steering(model, s["multiplier"])
        prompt = encode(model, [request["messages"]], chat=True)
        with lock:
            out = steerjax.generate(model, prompt, steering=steering, max_new_tokens=request["max_tokens"])
        return completion(out.texts[0], model="serial", completion_tokens=int(out.lengths[0]))

    return ChatServer(respond, keep_bodies=False)


def main(argv=None):
    args = parse_args(argv)
    import jax

    import steerjax
    from steerjax.data.batch import TokenBatch, encode
    from steerjax.serve import model_server
    from steerjax.vectors import SteeringVector

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = steerjax.load_model(args.model, dtype="float32")
    model = dataclasses.replace(model, config=dataclasses.replace(model.config, eos_token_ids=()))
    cfg = model.config
    batch = TokenBatch.pad(encode(model, [[{"role": "user", "content": q}] for q in QUESTIONS], chat=True))
    h = np.asarray(model.hidden_states(batch, layers=[args.layer]))[0]
    scale = 0.5 * float(np.linalg.norm(h, axis=-1)[batch.valid].mean())
    rng = np.random.default_rng(args.seed)
    vectors = {}
    for name in ("a", "b"):
        v = rng.standard_normal(cfg.hidden_size).astype(np.float32)
        vectors[name] = SteeringVector({args.layer: v / np.linalg.norm(v) * scale}, name=name)
    compiling, compiled = [], {}
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **kw: compiling.append(seconds) if event.endswith("backend_compile_duration") else None)
    bodies = workload(args.clients)
    # steady: client i sends workload[(i + 5 j) % n], j < --requests: each request once per j
    per_client = [[bodies[(i + 5 * j) % len(bodies)] for j in range(args.requests)] for i in range(len(bodies))]
    tokens = {"burst": sum(b["max_tokens"] for b in bodies),
              "steady": sum(b["max_tokens"] for bs in per_client for b in bs)}
    results = {}
    with model_server(model, name="bench", api_key="k", vectors=vectors, max_batch=args.clients,
                      queue_size=4 * args.clients) as batching, serial_server(model, vectors) as serial:
        for name, server in (("batching", batching), ("serial", serial)):
            for _ in range(args.warmup):  # compiles the shapes this workload meets
                concurrent(server.url, bodies)
            compiling.clear()
            results[name, "steady"] = closed_loop(server.url, per_client)
            results[name, "burst"] = [concurrent(server.url, bodies) for _ in range(args.rounds)]
            compiled[name] = sum(compiling)
        # memory: many short requests through the batching server, 16 at a time
        short = [{**b, "max_tokens": 8} for b in workload(args.clients)]
        rss, done = {}, 0
        while done < args.rss_requests:
            concurrent(batching.url, short)
            done += len(short)
            if done >= 100 and 100 not in rss:
                rss[100] = rss_mb()
        rss[done] = rss_mb()

    for name in ("batching", "serial"):
        _, _, replies, sent = results[name, "steady"]
        assert all(r["usage"]["completion_tokens"] == b["max_tokens"] for r, b in zip(replies, sent))
    same = np.mean([a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
                    for a, b in zip(results["batching", "steady"][2], results["serial", "steady"][2])])
    lo, hi = min(b["max_tokens"] for b in bodies), max(b["max_tokens"] for b in bodies)
    print(f"# serving: {os.path.basename(str(model.source))} (float32, end-of-sequence removed), {args.clients} "
          f"concurrent clients, max_tokens {lo}..{hi}, steering none / a / b; steady: {args.requests} requests per "
          f"client in a closed loop ({tokens['steady']} completion tokens); burst: {args.clients} requests at once "
          f"({tokens['burst']} tokens), {args.rounds} round(s); after {args.warmup} untimed burst rounds")
    print(f"# machine: {cpu_name()}, {cores} usable cores, shared with other jobs; python "
          f"{platform.python_version()}, jax {jax.__version__} on {jax.devices()[0].platform}; compiling during the "
          f"timed runs: batching {compiled['batching']:.1f} s, serial {compiled['serial']:.1f} s (a batch pattern "
          f"not met in the warm-up compiles its shapes); texts equal to the serial server's: {same:.0%}")
    print()
    header = (f"| {'pattern':<7} | {'server':<9} | {'wall s':>8} | {'tokens/s':>8} | {'p95 8-token s':>13} | "
              f"{'longest s':>9} |")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    figures = {}
    for pattern in ("steady", "burst"):
        for name in ("batching", "serial"):
            got = results[name, pattern]
            runs = [got] if pattern == "steady" else got
            wall = min(r[0] for r in runs)
            lat = np.asarray([x for r in runs for x in r[1]])
            sent = got[3] if pattern == "steady" else bodies * len(runs)
            eight = np.asarray([b["max_tokens"] == 8 for b in sent])
            longest = np.asarray([b["max_tokens"] == hi for b in sent])
            p95, long_s = float(np.percentile(lat[eight], 95)), float(lat[longest].max())
            figures[name, pattern] = (wall, p95, long_s)
            print(f"| {pattern:<7} | {name:<9} | {wall:8.2f} | {tokens[pattern] / wall:8.1f} | {p95:13.2f} | "
                  f"{long_s:9.2f} |")
    print()
    r1 = figures["serial", "steady"][0] / figures["batching", "steady"][0]
    r_burst = figures["serial", "burst"][0] / figures["batching", "burst"][0]
    _, p95_8, longest_s = figures["batching", "steady"]
    r2 = p95_8 / longest_s
    first, last = min(rss), max(rss)
    r3 = rss[last] / rss[first]
    print(f"throughput batching / serial, steady:  {r1:.2f}x  (target >= 4: {'OK' if r1 >= 4 else 'MISSED'}); "
          f"burst: {r_burst:.2f}x")
    print(f"p95 8-token latency / longest request: {r2:.1%}  (target < 20%: {'OK' if r2 < 0.2 else 'MISSED'}); "
          f"serial: {figures['serial', 'steady'][1]:.2f} s")
    print(f"RSS after {last} / after {first} requests: {rss[last]:.0f} / {rss[first]:.0f} MB = {r3:.3f}  "
          f"(target <= 1.10: {'OK' if r3 <= 1.10 else 'MISSED'})")


if __name__ == "__main__":
    main()
