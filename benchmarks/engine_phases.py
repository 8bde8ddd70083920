"""Where the batching engine's time goes, in process (no HTTP): the steady workload of
``benchmarks/serve.py`` (16 clients, each sending ``--requests`` requests back to back, max_tokens
8..256, end of sequence removed) on one :class:`steerjax.serve.Engine`, after one untimed round.

Prints tokens/s, the seconds spent in each engine phase (chunks, admissions with their prefills,
cache shifts, batch resizes) and how many chunks ran at each (rows, cache slots) shape, from which
the busy fraction of the rows follows. ``--chunk`` compares chunk lengths (default: the server's).

Usage::

    python benchmarks/engine_phases.py [--requests 3] [--chunk 8]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import time

from serve import QUESTIONS, in_threads, workload  # benchmarks/ is sys.path[0] when a script runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=3, help="requests per client (default 3)")
    p.add_argument("--chunk", type=int, default=None, help="decoding steps per chunk (default: the server's)")
    args = p.parse_args(argv)

    import steerjax
    from steerjax import serve
    from steerjax.data.batch import encode

    model = steerjax.load_model(args.model)
    model = dataclasses.replace(model, config=dataclasses.replace(model.config, eos_token_ids=()))
    seconds, calls, shapes = collections.defaultdict(float), collections.Counter(), collections.Counter()

    def timed(name, fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds[name] += time.perf_counter() - t0
                calls[name] += 1
        return run

    for name in ("_admit", "_step", "_resize"):
        setattr(serve.Engine, name, timed(name, getattr(serve.Engine, name)))
    serve._reslot = timed("_reslot", serve._reslot)
    chunk_program = serve._serve_chunk

    def counted(params, rows, *a, **k):
        shapes[rows.state.tok.shape[0], rows.state.cache.valid.shape[1]] += 1
        return chunk_program(params, rows, *a, **k)

    serve._serve_chunk = counted
    bodies = workload(args.clients)
    prompts = [encode(model, [b["messages"]], chat=True)[0] for b in bodies]
    engine = serve.Engine(model, max_batch=args.clients, chunk=args.chunk)

    def run(reps):
        def client(i):
            for j in range(reps):
                k = (i + 5 * j) % len(bodies)
                engine.submit(serve.Job(prompts[k], bodies[k]["max_tokens"])).event.wait()
        return in_threads(client, len(bodies))

    try:
        run(1)  # compiles
        seconds.clear(), calls.clear(), shapes.clear()
        wall = run(args.requests)
    finally:
        engine.close()
    tokens = sum(bodies[(i + 5 * j) % len(bodies)]["max_tokens"] for i in range(len(bodies))
                 for j in range(args.requests))
    capacity = sum(rows * n for (rows, _), n in shapes.items()) * engine.chunk
    print(f"# engine phases: {os.path.basename(str(model.source))}, {args.clients} clients x {args.requests} requests "
          f"({tokens} tokens; prompts from {len(QUESTIONS)} questions), chunks of {engine.chunk} steps")
    print(f"wall {wall:.1f} s, {tokens / wall:.1f} tokens/s, rows busy {tokens / capacity:.0%} of the row-steps run")
    for name, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<8} {s:7.1f} s  ({calls[name]} calls, {s / wall:.0%} of the wall time)")
    print("chunks per (rows, cache slots):", dict(sorted(shapes.items())))


if __name__ == "__main__":
    main()
