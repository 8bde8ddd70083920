"""Quickstart: steer SmolLM2-135M-Instruct (offline default) from sad to happy and measure it.

Builds a contrastive mean-difference vector from a few happy/sad sentence pairs at one layer,
scores the next-token margin log p(" happy") - log p(" sad") after "Today I feel" over a
multiplier sweep (one batched, jit-compiled forward pass), and generates steered chat answers.

    python experiments/quickstart/run.py --out runs/quickstart

Writes ``config.json``, ``propensity.csv`` (one row per multiplier), ``generations.jsonl``,
``vector.safetensors`` and, when matplotlib is installed, ``propensity.png`` into ``--out``
(checked before the model loads: a non-empty directory is replaced only with ``--force``, and a
resumable run directory never).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time

os.environ.setdefault("MPLBACKEND", "Agg")  # the plot is a file; no display needed

import numpy as np  # noqa: E402

import steerjax  # noqa: E402
from steerjax.data.batch import encode  # noqa: E402
from steerjax.runs import check_output_dir  # noqa: E402
from steerjax.vectors import mean_difference, read_activations, save_vectors  # noqa: E402

HAPPY = ["I feel happy", "I am so joyful today", "What a wonderful, delightful day",
         "I love my life, everything is great", "This makes me glad and cheerful"]
SAD = ["I feel sad", "I am so miserable today", "What a terrible, depressing day",
       "I hate my life, everything is awful", "This makes me gloomy and upset"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=steerjax.DEFAULT_MODEL)
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--multipliers", type=float, nargs="+", default=[-1.5, -1, -0.5, 0, 0.5, 1, 1.5])
    ap.add_argument("--question", default="How do you feel about Mondays? Answer in one sentence.")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/quickstart")
    ap.add_argument("--force", action="store_true", help="replace the files of a non-empty --out directory")
    args = ap.parse_args(argv)
    check_output_dir(args.out, force=args.force)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()

    model = steerjax.load_model(args.model)
    tok = model.tokenizer
    print(f"loaded {model.source} ({model.config.family}, {model.config.num_layers} layers) in {time.time() - t0:.1f}s")

    acts = read_activations(model, encode(model, HAPPY + SAD), [args.layer], reduce=-1)[:, 0]  # last tokens
    vector = mean_difference(acts[:len(HAPPY)], acts[len(HAPPY):])
    save_vectors(os.path.join(args.out, "vector.safetensors"), {args.layer: vector},
                 metadata={"model": model.source, "method": "mean_diff", "site": "block_output",
                           "token_index": -1, "pairs": len(HAPPY)})

    mults = np.asarray(args.multipliers, np.float32)
    n = len(mults)
    prompt = np.array([tok("Today I feel")["input_ids"]] * n)
    steer = steerjax.Steering.create(model, {args.layer: np.broadcast_to(vector, (n, vector.size))}, multipliers=mults)
    logits = np.asarray(model.logits(prompt, steering=steer))[:, -1]
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    (happy,), (sad,) = tok(" happy")["input_ids"], tok(" sad")["input_ids"]
    rows = [{"multiplier": float(m), "logp_happy": float(lp[happy]), "logp_sad": float(lp[sad]),
             "margin": float(lp[happy] - lp[sad])} for m, lp in zip(mults, logp)]
    with open(os.path.join(args.out, "propensity.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    chat = [{"role": "user", "content": args.question}]
    gen = steerjax.generate(model, [chat] * n, steering=steer, max_new_tokens=args.max_new_tokens, seed=args.seed)
    with open(os.path.join(args.out, "generations.jsonl"), "w") as f:
        for m, text in zip(mults, gen.texts):
            f.write(json.dumps({"multiplier": float(m), "question": args.question, "text": text}) + "\n")

    config = dict(vars(args), model_source=model.source, vector_norm=float(np.linalg.norm(vector)),
                  steerjax=steerjax.__version__, python=platform.python_version(), seconds=round(time.time() - t0, 1))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    _plot(rows, args)

    print(f"\nlayer {args.layer}, |v| = {config['vector_norm']:.1f}")
    print(f"{'multiplier':>10}  {'margin':>7}  generation")
    for r, text in zip(rows, gen.texts):
        print(f"{r['multiplier']:>10.2f}  {r['margin']:>7.2f}  {text.strip()[:90]!r}")
    print(f"\nresults in {args.out} ({config['seconds']}s)")


def _plot(rows, args):
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["multiplier"] for r in rows], [r["margin"] for r in rows], "o-")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="multiplier", ylabel='log p(" happy") - log p(" sad")', title=f"layer {args.layer}")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "propensity.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    from steerjax.cli import guarded

    guarded(main)
