"""Rollout throughput: unsteered vs steered vs per-example steered generation (steerjax, jit, KV cache).

The same prompts (the predictor's neutral prompts, chat-formatted) and ``--new-tokens`` greedy new
tokens under three steerings of one batch:

* ``unsteered``: ``steering=None``;
* ``shared``: one vector at ``--layer`` and one multiplier for the whole batch;
* ``per-example``: every row its own vector and multiplier (``--batch`` distinct configurations),
  as the steerability testbed runs them.

Each configuration is compiled and run once untimed, then timed ``--repeats`` times, the calls
interleaved so that load from other processes hits them alike. The table reports new tokens/s
from the fastest and the median call (every row decodes all ``--new-tokens`` steps: EOS rows keep
running in the compiled loop); the ratios shared/unsteered and per-example/shared use the fastest
calls, the estimate least disturbed by other processes on a shared machine (targets >= 0.95; EasySteer reports 0.76 at
best for steered vs unsteered, and 0.18 with 256 distinct configurations).

``--early-stop`` times the rows of issue 26 instead: 32 chat prompts whose greedy answers end
(EOS) between 8 and 48 tokens (picked from a pool by a first untimed call), generated

* at ``max_new_tokens=256`` against the same batch at ``max_new_tokens=48`` (target: the wall
  time within 1.3x: decoding stops once every row has stopped);
* steered (one shared vector at ``--layer``), at ``max_new_tokens=256``, against transformers'
  ``generate`` with steering-vectors' hook on the same model, prompts and vector, which also stops
  at EOS (target: at least 2x the generated tokens per second).

Usage::

    python benchmarks/generate.py [--batch 32] [--new-tokens 32] [--repeats 5] [--peer]
    python benchmarks/generate.py --early-stop [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
from _machine import cpu_name  # benchmarks/ is sys.path[0] when a script runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="steerjax alias or path")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per configuration (default 5)")
    p.add_argument("--layer", type=int, default=12, help="steered block (default 12)")
    p.add_argument("--strength", type=float, default=0.5, help="added norm / residual norm (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--early-stop", action="store_true",
                   help="time early stopping and steered rollouts against the peer instead (see the module doc)")
    p.add_argument("--peer", action="store_true",
                   help="also time transformers generate (unsteered; steered with steering-vectors' "
                        "SteeringVector.apply, one shared configuration per call; and per example, one batch-1 "
                        "call per row with its own vector), interleaved with the rest")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.early_stop:
        return early_stop(args)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    import jax

    import steerjax
    from steerjax.studies.steerability_prediction import NEUTRAL_PROMPTS, residual_norm

    t0 = time.perf_counter()
    model = steerjax.load_model(args.model, dtype="float32")
    load_s = time.perf_counter() - t0
    cfg = model.config
    prompts = [[{"role": "user", "content": NEUTRAL_PROMPTS[i % len(NEUTRAL_PROMPTS)]}] for i in range(args.batch)]
    rnorm = residual_norm(model, NEUTRAL_PROMPTS[:16], args.layer)
    rng = np.random.default_rng(args.seed)
    vecs = rng.standard_normal((args.batch, cfg.hidden_size)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=-1, keepdims=True)
    mults = (args.strength * rnorm * rng.uniform(0.5, 1.5, args.batch)).astype(np.float32)
    steerings = {
        "unsteered": None,
        "shared": steerjax.Steering.create(cfg, {args.layer: vecs[0]}, float(mults[0])),
        "per-example": steerjax.Steering.create(cfg, {args.layer: vecs}, mults),
    }
    outputs = {}

    def call(name):
        def run():
            outputs[name] = steerjax.generate(model, prompts, steering=steerings[name],
                                              max_new_tokens=args.new_tokens)
        return run

    calls = {name: call(name) for name in steerings}
    peer_info = None
    if args.peer:
        peer_calls, peer_info = peer_generate(model, prompts, vecs * mults[:, None], args)
        calls |= peer_calls
    first, times = {}, {name: [] for name in calls}
    for name, fn in calls.items():
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
    for _ in range(args.repeats):  # interleaved: load from other processes hits every configuration alike
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    n_new = args.batch * args.new_tokens
    tps = {name: n_new / min(t) for name, t in times.items()}
    prompt_len = max(len(x) for x in outputs["unsteered"].prompt_tokens)
    changed = np.mean([a != b for a, b in zip(outputs["unsteered"].texts, outputs["per-example"].texts)])

    print(f"# generation: {os.path.basename(model.source)} (float32), batch {args.batch}, prompts up to "
          f"{prompt_len} tokens, {args.new_tokens} new tokens (greedy)")
    print(f"# machine: {cpu_name()}, {cores} usable cores, python {platform.python_version()}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"# load {load_s:.1f} s; steering: block {args.layer}, added norm ~ {args.strength:g} x residual norm "
          f"({rnorm:.1f}); per-example texts differing from unsteered: {changed:.0%}; {args.repeats} timed calls each")
    print()
    header = (f"| {'steering':<11} | {'median s':>8} | {'min s':>7} | {'new tok/s (min)':>15} | "
              f"{'new tok/s (median)':>18} | {'first call s':>12} |")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for name, t in times.items():
        if name.startswith("peer"):
            continue
        med = statistics.median(t)
        print(f"| {name:<11} | {med:8.3f} | {min(t):7.3f} | {tps[name]:15.1f} | {n_new / med:18.1f} | "
              f"{first[name]:12.2f} |")
    print()
    if args.peer:
        print(f"peer: transformers {peer_info['version']} generate (torch {peer_info['torch']}, "
              f"{peer_info['threads']} threads), steering-vectors' hook on the same block and vector, the same "
              f"prompts and {args.new_tokens} new tokens (min_new_tokens), fastest of {args.repeats} "
              "interleaved calls:")
        for name in ("unsteered", "shared", "per-example"):
            peer = tps["peer " + name]
            print(f"  {name:<11}: {peer:7.1f} new tokens/s; steerjax / peer {tps[name] / peer:.2f}x")
        print(f"  peer steered / unsteered: {tps['peer shared'] / tps['peer unsteered']:.3f}; a hook applies one "
              "configuration per call, so the peer's per-example rollouts are one batch-1 call per row")
        print()
    r1 = tps["shared"] / tps["unsteered"]
    r2 = tps["per-example"] / tps["shared"]
    print(f"ratio shared / unsteered:    {r1:.3f}  (target >= 0.95: {'OK' if r1 >= 0.95 else 'MISSED'})")
    print(f"ratio per-example / shared:  {r2:.3f}  (target >= 0.95: {'OK' if r2 >= 0.95 else 'MISSED'})")


def peer_generate(model, prompts, deltas, args):
    """Callables running transformers' greedy generate on the same batch, unsteered and steered
    (steering-vectors' ``SteeringVector.apply``: ``deltas[0]`` added at ``args.layer``), and per
    example (a hook applies one configuration per call: one batch-1 call per row, ``deltas[i]``
    for row ``i``), and versions."""
    import torch
    import transformers
    from steering_vectors import SteeringVector
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    tm = AutoModelForCausalLM.from_pretrained(os.path.dirname(model.source), gguf_file=os.path.basename(model.source),
                                              dtype=torch.float32).eval()
    tok = model.tokenizer
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    sv = SteeringVector(layer_activations={args.layer: torch.tensor(deltas[0])}, layer_type="decoder_block")
    per_row = [SteeringVector(layer_activations={args.layer: torch.tensor(d)}, layer_type="decoder_block")
               for d in deltas]
    rows = [tok(t, return_tensors="pt", add_special_tokens=False) for t in texts]
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
              pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    def plain():
        with torch.inference_mode():
            tm.generate(**enc, **kw)

    def steered():
        with torch.inference_mode(), sv.apply(tm, multiplier=1.0):
            tm.generate(**enc, **kw)

    def per_example():
        with torch.inference_mode():
            for one, v in zip(rows, per_row):
                with v.apply(tm, multiplier=1.0):
                    tm.generate(**one, **kw)

    info = {"version": transformers.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()}
    return {"peer unsteered": plain, "peer shared": steered, "peer per-example": per_example}, info


#: candidate questions for --early-stop: short answers of varied length
QUESTIONS = [f"{ask} {what}" for what in (
    "the sun", "a cat", "rain", "music", "the sea", "a bicycle", "coffee", "winter", "a library", "friendship",
    "mountains", "a garden", "the moon", "bread", "a river", "chess") for ask in (
    "In one short sentence, what is", "Give a three-word description of", "In about twenty words, describe",
    "Name one fact about")]


def early_stop(args):
    import jax

    import steerjax

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = steerjax.load_model(args.model, dtype="float32")
    cfg = model.config
    pool = [[{"role": "user", "content": q}] for q in QUESTIONS]
    first = steerjax.generate(model, pool, max_new_tokens=256)
    eos = np.isin(first.tokens, cfg.eos_token_ids)
    ended = [i for i in range(len(pool)) if eos[i].any() and 8 <= first.lengths[i] <= 48]
    if not ended:
        raise SystemExit("no candidate answer ends between 8 and 48 tokens")
    rows = [pool[ended[i % len(ended)]] for i in range(args.batch)]
    rng = np.random.default_rng(args.seed)
    vec = rng.standard_normal(cfg.hidden_size).astype(np.float32)
    from steerjax.data.batch import TokenBatch, encode

    batch = TokenBatch.pad(encode(model, rows[:8], chat=True))
    h = np.asarray(model.hidden_states(batch, layers=[args.layer]))[0]  # [B, T, D]
    delta = vec / np.linalg.norm(vec) * args.strength * float(np.linalg.norm(h, axis=-1)[batch.valid].mean())
    steering = steerjax.Steering.create(cfg, {args.layer: delta}, 1.0)
    out = {}

    def ours(name, m, st=None):
        def run():
            out[name] = steerjax.generate(model, rows, steering=st, max_new_tokens=m)
        return run

    calls = {"max_new_tokens=48": ours("48", 48), "max_new_tokens=256": ours("256", 256),
             "steered, 256": ours("steered", 256, steering)}
    peer, info = peer_rollouts(model, rows, delta, args, out)
    calls["peer steered, 256"] = peer
    times = {name: [] for name in calls}
    for fn in calls.values():  # compile / warm up
        fn()
    for _ in range(args.repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    lengths = out["256"].lengths
    steered_tokens = int(out["steered"].lengths.sum())
    peer_tokens = out["peer tokens"]
    print(f"# early stop: {os.path.basename(model.source)} (float32), {args.batch} chat prompts whose greedy answers "
          f"end between {lengths.min()} and {lengths.max()} tokens (mean {lengths.mean():.1f}); {args.repeats} timed "
          "calls each, interleaved, after an untimed one")
    print(f"# machine: {cpu_name()}, {cores} usable cores, shared with other jobs; jax {jax.__version__}; "
          f"peer: transformers {info['version']} + steering-vectors hook, torch {info['torch']} "
          f"({info['threads']} threads)")
    print()
    header = f"| {'call':<20} | {'min s':>7} | {'median s':>8} | {'new tokens':>10} | {'tokens/s (min)':>14} |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    counted = {"max_new_tokens=48": int(out["48"].lengths.sum()), "max_new_tokens=256": int(lengths.sum()),
               "steered, 256": steered_tokens, "peer steered, 256": peer_tokens}
    for name, t in times.items():
        print(f"| {name:<20} | {min(t):7.3f} | {statistics.median(t):8.3f} | {counted[name]:10d} | "
              f"{counted[name] / min(t):14.1f} |")
    print()
    r1 = min(times["max_new_tokens=256"]) / min(times["max_new_tokens=48"])
    r2 = (steered_tokens / min(times["steered, 256"])) / (peer_tokens / min(times["peer steered, 256"]))
    same = np.mean([a == b for a, b in zip(out["steered"].texts, out["peer texts"])])
    print(f"wall 256 / 48:                 {r1:.2f}x  (target <= 1.3: {'OK' if r1 <= 1.3 else 'MISSED'})")
    print(f"steered tokens/s, ours / peer: {r2:.2f}x  (target >= 2: {'OK' if r2 >= 2 else 'MISSED'}); "
          f"identical steered texts: {same:.0%}")


def peer_rollouts(model, rows, delta, args, out):
    """transformers' greedy generate with steering-vectors' hook (``delta`` at ``args.layer``) on
    the same chat prompts, up to 256 new tokens, stopping at EOS: a callable that puts the count of
    generated tokens and the texts in ``out`` ("peer tokens", "peer texts"), and versions."""
    import torch
    import transformers
    from steering_vectors import SteeringVector
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    tm = AutoModelForCausalLM.from_pretrained(os.path.dirname(model.source), gguf_file=os.path.basename(model.source),
                                              dtype=torch.float32).eval()
    tok = model.tokenizer
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in rows]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    sv = SteeringVector(layer_activations={args.layer: torch.tensor(delta)}, layer_type="decoder_block")
    eos = list(model.config.eos_token_ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    def steered():
        with torch.inference_mode(), sv.apply(tm, multiplier=1.0, min_token_index=0):
            new = tm.generate(**enc, max_new_tokens=256, do_sample=False, eos_token_id=eos,
                              pad_token_id=pad)[:, enc["input_ids"].shape[1]:].numpy()
        from steerjax.generate import eos_lengths

        n = eos_lengths(new, eos)
        out["peer tokens"] = int(n.sum())
        out["peer texts"] = [tok.decode(r[:k].tolist(), skip_special_tokens=True) for r, k in zip(new, n)]

    info = {"version": transformers.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()}
    return steered, info


if __name__ == "__main__":
    main()
