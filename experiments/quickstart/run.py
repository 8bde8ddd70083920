"""Quickstart: steer SmolLM2-135M-Instruct (offline default) from sad to happy and measure it.

Builds a contrastive mean-difference vector from a few happy/sad sentence pairs at one block,
scores the next-token margin log p(" happy") - log p(" sad") after "Today I feel" over a
multiplier sweep (one batched, jit-compiled forward pass), and generates steered answers (chat
answers with the tokenizer's chat template; a model without one gets the question as plain text,
and says so). Any supported model works, base or chat (``--model``): the default block is 30% of
the depth, and the answer words are checked to be one token each before any work
(:mod:`steerjax.quickstart` holds the logic).

    python experiments/quickstart/run.py --out runs/quickstart

Writes ``config.json``, ``propensity.csv`` (one row per multiplier), ``generations.jsonl``,
``vector.safetensors`` and ``propensity.png`` into ``--out`` (checked before the model loads: a
non-empty directory is replaced only with ``--force``, and a resumable run directory never).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MPLBACKEND", "Agg")  # the plot is a file; no display needed

import steerjax  # noqa: E402
from steerjax import quickstart  # noqa: E402
from steerjax.model import load_config  # noqa: E402
from steerjax.runs import check_output_dir  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=steerjax.DEFAULT_MODEL,
                    help="any supported model: a local directory, .gguf, alias or hub id (default: %(default)s)")
    ap.add_argument("--revision", default=None, help="a branch, tag or commit of a hub id")
    ap.add_argument("--layer", type=int, default=None, help="the block to steer (negative counts from the end; "
                    f"default: {quickstart.DEFAULT_DEPTH:.0%} of the depth)")
    ap.add_argument("--multipliers", type=float, nargs="+", default=list(quickstart.MULTIPLIERS),
                    help="the steering multipliers swept (default: %(default)s)")
    ap.add_argument("--prompt", default="Today I feel", help="the text whose next token is scored")
    ap.add_argument("--positive", default=" happy", help="the answer word the vector steers toward (one token)")
    ap.add_argument("--negative", default=" sad", help="the answer word it steers away from (one token)")
    ap.add_argument("--question", default="How do you feel about Mondays? Answer in one sentence.",
                    help="the question the steered model answers")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per answer")
    ap.add_argument("--seed", type=int, default=0, help="the sampling seed")
    ap.add_argument("--out", default="runs/quickstart", help="the output directory")
    ap.add_argument("--force", action="store_true", help="replace the files of a non-empty --out directory")
    args = ap.parse_args(argv)
    check_output_dir(args.out, force=args.force)
    t0 = time.time()
    header = load_config(args.model, revision=args.revision)  # the depth, before the weights load
    layer = quickstart.resolve_layer(args.layer, header.config.num_layers)
    model = steerjax.load_model(args.model, revision=args.revision)
    print(f"loaded {model.source} ({model.config.family}, {model.config.num_layers} layers) in "
          f"{time.time() - t0:.1f}s; steering block {layer}"
          + (f" (default: {quickstart.DEFAULT_DEPTH:.0%} of the depth)" if args.layer is None else ""))
    if not getattr(model.tokenizer, "chat_template", None):
        print("no chat template: the question is sent as plain text")
    options = {k: v for k, v in vars(args).items() if k not in ("model", "revision", "out", "force")}
    result = quickstart.run(model, **dict(options, layer=layer), facts=vars(args))
    result.config["seconds"] = round(time.time() - t0, 1)
    result.save(args.out)
    result.figure(args.out)
    print(f"\nlayer {layer}, |v| = {result.config['vector_norm']:.1f}")
    print(f"{'multiplier':>10}  {'margin':>7}  generation")
    for r, text in zip(result.rows, result.texts):
        print(f"{r['multiplier']:>10.2f}  {r['margin']:>7.2f}  {text.strip()[:90]!r}")
    print(f"\nresults in {args.out} ({result.config['seconds']}s)")


if __name__ == "__main__":
    from steerjax.cli import guarded

    guarded(main)
