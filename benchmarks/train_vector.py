"""CAA vector training: steerjax ``train_vector`` vs steering-vectors' ``train_steering_vector``.

Same model (SmolLM2-135M-Instruct from its GGUF, float32 on both sides, or ``--model``), same
examples (the first ``--examples`` of corrigible-neutral-HHH from ``$STEERJAX_DATA``, chat prompts
with "(A)"/"(B)" completions), same blocks (``--layers``, default 8-16), the answer letter read
(``token_index`` / ``read_token_index`` -2), the mean of positive - negative.

steerjax: :func:`steerjax.vectors.train_vector` (``method="caa"``): each example's prompt is
computed once and both completions continue its KV cache; only the blocks up to the deepest
read one run. Timed twice: the first call (compiling one program per batch shape) and a second,
warm call; both include tokenization.
The peer runs in a process of its own (no JAX runtime competes with its threads), on the full
strings ``rendered prompt + completion`` (checked to tokenize to steerjax's ids), with its
default ``batch_size=1``: one forward pass of the whole model per full sequence. Its torch
thread count is the fastest of 1..usable cores, probed on one forward pass (on shared cores
more OpenMP threads can be much slower). One run on this machine.

    STEERJAX_DATA=/path/to/data python benchmarks/train_vector.py                  # 400 examples, blocks 8-16
    STEERJAX_DATA=/path/to/data python benchmarks/train_vector.py --examples 40 --layers 8,12
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from _machine import best_torch_threads, cpu_name  # benchmarks/ is sys.path[0] when a script runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATASET = "corrigible-neutral-HHH"


def parse_layers(text: str) -> list[int]:
    """``"8-16"`` (inclusive range) or ``"8,12,16"``, or a mix (``"4,8-10"``)."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    if not out:
        raise argparse.ArgumentTypeError(f"no blocks in {text!r}")
    return out


def format_layers(layers: list[int]) -> str:
    """``8-16`` for a run of blocks, else ``8,12``."""
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def torch_model(source: str):
    """``(model, tokenizer)``: transformers' model from the same checkpoint as
    ``steerjax.load_model(source)``, and steerjax's tokenizer of it (transformers' GGUF conversion
    adds a BOS token SmolLM2's own tokenizer does not; steerjax applies the file's settings)."""
    import torch
    import transformers

    from steerjax.model import resolve_source

    kind, path = resolve_source(source)
    if kind == "gguf":
        from gguf import GGUFReader

        from steerjax.models.gguf import load_tokenizer

        tok = load_tokenizer(path, GGUFReader(path))
        tm = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                               dtype=torch.float32)
    else:
        tok = transformers.AutoTokenizer.from_pretrained(path)
        tm = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return tm.eval(), tok


def peer_main(args, cores):
    """The peer in a process of its own: probes torch's best thread count on one forward pass,
    trains the vector on the pairs in ``args.peer_in``, writes it and the seconds to ``args.peer_out``."""
    import steering_vectors
    import torch
    import transformers
    from steering_vectors import train_steering_vector

    tm, tok = torch_model(args.model)
    with open(args.peer_in) as f:
        sent = json.load(f)
    pairs = [tuple(p) for p in sent["pairs"]]
    # the peer tokenizes each full string as steering-vectors does (tokenizer(text)): the same ids as steerjax?
    mismatched = sum(tok(s)["input_ids"] != ids for p, i in zip(pairs, sent["ids"]) for s, ids in zip(p, i))
    best = {}
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        ids = tok(pairs[0][0], return_tensors="pt")["input_ids"]
        best = best_torch_threads(tm, ids, cores)
    t = time.perf_counter()
    vec = train_steering_vector(tm, tok, pairs, layers=args.layers, read_token_index=-2,
                                batch_size=args.peer_batch_size, show_progress=False)
    seconds = time.perf_counter() - t
    np.savez(args.peer_out, **{f"layer_{k}": v.float().numpy() for k, v in vec.layer_activations.items()},
             seconds=seconds, threads=torch.get_num_threads(), probe=json.dumps(best), mismatched=mismatched,
             versions=json.dumps([torch.__version__, transformers.__version__,
                                  getattr(steering_vectors, "__version__", "?")]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=400, help=f"the first N examples of {DATASET} (default 400)")
    ap.add_argument("--layers", type=parse_layers, default=parse_layers("8-16"),
                    help="blocks: a range 8-16 (inclusive), a list 8,12, or both (default 8-16)")
    ap.add_argument("--model", default=None, help="steerjax alias or path (default: steerjax.DEFAULT_MODEL)")
    ap.add_argument("--batch-size", type=int, default=32, help="steerjax train_vector batch_size (default 32)")
    ap.add_argument("--peer-batch-size", type=int, default=1, help="steering-vectors batch_size (default 1, its own)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: the fastest of 1..usable cores, probed on one forward)")
    ap.add_argument("--peer-in", default=None, help=argparse.SUPPRESS)  # internal: run as the peer process
    ap.add_argument("--peer-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.model is None:
        from steerjax.model import DEFAULT_MODEL

        args.model = DEFAULT_MODEL
    if args.peer_out:
        return peer_main(args, cores)

    import jax

    import steerjax
    from steerjax.data import encode, load_dataset
    from steerjax.data.examples import render_example
    from steerjax.vectors import train_vector

    model = steerjax.load_model(args.model, dtype="float32")
    examples = load_dataset(DATASET, split="0%:100%", max_examples=args.examples)
    tok = model.tokenizer
    encoded = [encode(tok, e) for e in examples]
    pairs = []
    for e in examples:
        text, _ = render_example(tok, e)
        pairs.append((text + e.positive, text + e.negative))
    ids = [(e.prompt + e.positive, e.prompt + e.negative) for e in encoded]
    prompt_lens = [len(e.prompt) for e in encoded]
    comp_lens = sorted({len(c) for e in encoded for c in (e.positive, e.negative)})

    def ours():
        return train_vector(model, examples, layers=args.layers, batch_size=args.batch_size, progress=False)

    t = time.perf_counter()
    ours()
    first = time.perf_counter() - t
    t = time.perf_counter()
    vec = ours()
    warm = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "pairs.json"), os.path.join(tmp, "peer.npz")
        with open(src, "w") as f:
            json.dump({"pairs": pairs, "ids": ids}, f)
        cmd = [sys.executable, os.path.abspath(__file__), "--peer-in", src, "--peer-out", out, "--model", args.model,
               "--layers", ",".join(map(str, args.layers)), "--peer-batch-size", str(args.peer_batch_size)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        subprocess.run(cmd, check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
        with np.load(out) as z:
            peer = {layer: z[f"layer_{layer}"] for layer in args.layers}
            peer_s, threads, mismatched = float(z["seconds"]), int(z["threads"]), int(z["mismatched"])
            best = json.loads(str(z["probe"]))
            torch_v, tf_v, sv_v = json.loads(str(z["versions"]))
    probe = "; forward s by threads " + ", ".join(f"{n}: {v:.2f}" for n, v in best.items()) if best else ""

    diffs = {layer: np.abs(vec.vectors[layer] - peer[layer]).max() for layer in args.layers}
    rel = {layer: diffs[layer] / np.linalg.norm(peer[layer]) for layer in args.layers}
    worst = max(rel, key=rel.get)
    print(f"# CAA training: {os.path.basename(model.source)} (float32), {len(examples)} examples of {DATASET} "
          f"(prompts {min(prompt_lens)}-{max(prompt_lens)} tokens, mean {np.mean(prompt_lens):.0f}; completions "
          f"{comp_lens} tokens; {mismatched} of the peer's full strings tokenize differently from steerjax's ids), "
          f"blocks {format_layers(args.layers)}, token -2")
    print(f"# machine: {cpu_name()}, {cores} usable cores; jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"torch {torch_v} ({threads} threads{probe}), transformers {tf_v}, steering-vectors {sv_v}")
    print(f"# steerjax: train_vector(method='caa', batch_size={args.batch_size}); peer: train_steering_vector("
          f"batch_size={args.peer_batch_size}) in its own process; one run each\n")
    print("| | seconds | peer / this |")
    print("|---|---|---|")
    print(f"| steerjax, first call (compiles) | {first:.1f} | {peer_s / first:.1f}x |")
    print(f"| steerjax, warm call | {warm:.1f} | {peer_s / warm:.1f}x |")
    print(f"| steering-vectors train_steering_vector | {peer_s:.1f} | 1.0x |")
    print()
    print(f"max |steerjax - peer| over blocks: {max(diffs.values()):.2e} (absolute), "
          f"{rel[worst]:.2e} relative to the vector's norm (block {worst}; norms "
          f"{min(np.linalg.norm(v) for v in peer.values()):.2f}-{max(np.linalg.norm(v) for v in peer.values()):.2f})")
    ok = peer_s / warm >= 3 and rel[worst] <= 1e-4
    print(f"target: warm ratio >= 3x and difference <= 1e-4 of the norm -> {'OK' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
