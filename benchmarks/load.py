"""Load time: from ``load_model`` to the first logits of SmolLM2-135M-Instruct, three ways.

* ``GGUF (dequantize)``: ``steerjax.load_model(gguf, cache=False)``: parse the GGUF, dequantize
  every tensor, convert (what every start did before the conversion cache);
* ``orbax cache``: ``steerjax.load_model(gguf)`` once the conversion cache holds the model: the
  converted state restored with orbax-checkpoint, the tokenizer from its files;
* ``transformers GGUF``: ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` (float32).

Each is timed in a fresh Python process (imports done before the clock starts: ``jax``,
``steerjax`` and ``transformers`` (the tokenizer's library, which imports ``torch``: 5-10 s that
every path pays alike), or ``torch`` and ``transformers``), from the load call to the logits of one
16-token prompt being on the host; so steerjax's times include compiling the forward pass
(the persistent XLA compilation cache is switched off). The cache lives in a temporary
``STEERJAX_CACHE``, filled by an untimed run first (which also builds the GGUF tokenizer's
cache, used by both steerjax rows alike). One run, side by side; the table gives seconds and
each row's speed-up over dequantizing, for the load alone and to the first logits (the
forward pass's compilation, the same for both steerjax rows, is in the second).

Usage::

    python benchmarks/load.py [--model smollm2-135m-instruct] [--dtype float32] [--skip-torch]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from _machine import cpu_name  # benchmarks/ is sys.path[0] when a script runs

PROMPT = list(range(1, 17))


def child(kind: str, model: str, dtype: str) -> dict:
    """Run in the timed subprocess: returns the seconds of load and of the first logits."""
    import numpy as np

    if kind == "torch":
        import torch
        from transformers import AutoModelForCausalLM

        from steerjax.model import resolve_source

        _, path = resolve_source(model)
        t0 = time.perf_counter()
        m = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32).eval()
        t1 = time.perf_counter()
        with torch.no_grad():
            logits = m(torch.tensor([PROMPT])).logits.numpy()
        t2 = time.perf_counter()
    else:
        from transformers import AutoTokenizer  # noqa: F401 - the tokenizer's library: every path imports it

        import steerjax

        t0 = time.perf_counter()
        m = steerjax.load_model(model, dtype=dtype, cache=kind != "dequantize")
        t1 = time.perf_counter()
        logits = np.asarray(m.logits(np.asarray([PROMPT])))
        t2 = time.perf_counter()
    return {"load": t1 - t0, "first_logits": t2 - t1, "total": t2 - t0, "logit0": float(logits[0, -1].max())}


def run_child(kind: str, args, env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--model", args.model, "--dtype", args.dtype],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the {kind} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="steerjax alias or .gguf path")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--skip-torch", action="store_true", help="leave out transformers' GGUF loading")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.model, args.dtype)))
        return

    cache = tempfile.mkdtemp(prefix="steerjax-load-bench-")
    env = dict(os.environ, STEERJAX_CACHE=cache, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TQDM_DISABLE="1", JAX_ENABLE_COMPILATION_CACHE="false")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    try:
        run_child("fill", args, env)  # fills the conversion cache and the GGUF tokenizer cache
        rows = [("GGUF (dequantize)", run_child("dequantize", args, env)),
                ("orbax cache", run_child("cache", args, env))]
        if not args.skip_torch:
            rows.append(("transformers GGUF", run_child("torch", args, env)))
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(cache, "models"))
                   for f in fs)
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"load_model -> first logits: {args.model} ({args.dtype}), 1 x {len(PROMPT)} tokens; "
          f"{cpu_name()}, {cores} cores, Python {platform.python_version()}")
    print(f"cache entry: {size / 2**20:.0f} MiB\n")
    base = rows[0][1]
    print(f"| {'path':<20} | load (s) | first logits (s) | total (s) | load vs dequantize | total vs dequantize |")
    print(f"|{'-' * 22}|---------:|-----------------:|----------:|-------------------:|--------------------:|")
    for name, r in rows:
        print(f"| {name:<20} | {r['load']:8.2f} | {r['first_logits']:16.2f} | {r['total']:9.2f} | "
              f"{base['load'] / r['load']:17.1f}x | {base['total'] / r['total']:18.1f}x |")


if __name__ == "__main__":
    main()
