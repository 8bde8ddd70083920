"""Quickstart: steer SmolLM2-135M-Instruct (offline default) from sad to happy and measure it.

Builds a contrastive mean-difference vector from a few happy/sad sentence pairs at one layer,
scores the next-token margin log p(" happy") - log p(" sad") after "Today I feel" over a
multiplier sweep (one batched, jit-compiled forward pass), and generates steered answers (chat
answers with the tokenizer's chat template; a model without one gets the question as plain text,
and says so). Any supported model works, base or chat (``--model``): the default block is 30% of
the depth, and the answer words are checked to be one token each before any work.

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
from steerjax.errors import LayerIndexError, TokenizerError  # noqa: E402
from steerjax.model import load_config  # noqa: E402
from steerjax.runs import check_output_dir  # noqa: E402
from steerjax.vectors import mean_difference, read_activations, save_vectors  # noqa: E402

HAPPY = ["I feel happy", "I am so joyful today", "What a wonderful, delightful day",
         "I love my life, everything is great", "This makes me glad and cheerful"]
SAD = ["I feel sad", "I am so miserable today", "What a terrible, depressing day",
       "I hate my life, everything is awful", "This makes me gloomy and upset"]


#: the default block as a fraction of the depth: block 9 of SmolLM2-135M's 30
DEFAULT_DEPTH = 0.3


def default_layer(num_layers: int) -> int:
    """The block steered by default: :data:`DEFAULT_DEPTH` of the way through the model."""
    return min(num_layers - 1, int(round(DEFAULT_DEPTH * num_layers)))


def answer_tokens(tokenizer, prompt: str, positive: str, negative: str) -> tuple[list[int], int, int]:
    """``(prompt ids, positive id, negative id)``: the tokenizations of ``prompt + positive`` and
    ``prompt + negative`` (with the tokenizer's own special tokens, such as a BOS) split after their
    longest common prefix, so a tokenizer that merges the prompt's end with the answer (a trailing
    space) still scores the answers as one token each.

    Raises:
      TokenizerError: an answer is not one token after the shared prefix (the word is named).
    """
    from steerjax.errors import TokenizerError

    pos_ids, neg_ids = (list(tokenizer(prompt + w)["input_ids"]) for w in (positive, negative))
    keep = next((i for i, (a, b) in enumerate(zip(pos_ids, neg_ids)) if a != b), min(len(pos_ids), len(neg_ids)))
    for word, ids in ((positive, pos_ids), (negative, neg_ids)):
        rest = ids[keep:]
        if len(rest) != 1:
            pieces = tokenizer.convert_ids_to_tokens(rest)
            raise TokenizerError(f"the answer word {word!r} is {len(rest)} tokens {pieces} after {prompt!r} for this "
                                 "tokenizer; the quickstart scores one-token answers: choose another word with "
                                 "--positive/--negative")
    if keep == 0:
        raise TokenizerError(f"{prompt!r} shares no token with its answers for this tokenizer; choose another "
                             "--prompt")
    return pos_ids[:keep], pos_ids[keep], neg_ids[keep]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=steerjax.DEFAULT_MODEL,
                    help="any supported model: a local directory, .gguf, alias or hub id (default: %(default)s)")
    ap.add_argument("--revision", default=None, help="a branch, tag or commit of a hub id")
    ap.add_argument("--layer", type=int, default=None,
                    help=f"the block to steer (negative counts from the end; default: {DEFAULT_DEPTH:.0%} of the "
                         "depth)")
    ap.add_argument("--multipliers", type=float, nargs="+", default=[-1.5, -1, -0.5, 0, 0.5, 1, 1.5])
    ap.add_argument("--prompt", default="Today I feel", help="the text whose next token is scored")
    ap.add_argument("--positive", default=" happy", help="the answer word the vector steers toward (one token)")
    ap.add_argument("--negative", default=" sad", help="the answer word it steers away from (one token)")
    ap.add_argument("--question", default="How do you feel about Mondays? Answer in one sentence.")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/quickstart")
    ap.add_argument("--force", action="store_true", help="replace the files of a non-empty --out directory")
    args = ap.parse_args(argv)
    check_output_dir(args.out, force=args.force)
    t0 = time.time()

    header = load_config(args.model, revision=args.revision)  # the depth, before the weights load
    num_layers = header.config.num_layers
    layer = default_layer(num_layers) if args.layer is None else args.layer
    if not -num_layers <= layer < num_layers:
        raise LayerIndexError(f"--layer {args.layer} is out of range: the model has {num_layers} blocks "
                              f"(valid: {-num_layers}..{num_layers - 1})")
    layer %= num_layers
    model = steerjax.load_model(args.model, revision=args.revision)
    tok = model.tokenizer
    if tok is None:
        raise TokenizerError(f"{model.source} has no tokenizer: the quickstart works on text")
    prompt_ids, happy, sad = answer_tokens(tok, args.prompt, args.positive, args.negative)  # before any work
    chat = bool(getattr(tok, "chat_template", None))
    print(f"loaded {model.source} ({model.config.family}, {num_layers} layers) in {time.time() - t0:.1f}s; "
          f"steering block {layer}" + (f" (default: {DEFAULT_DEPTH:.0%} of the depth)" if args.layer is None else ""))
    if not chat:
        print("no chat template: the question is sent as plain text")

    acts = read_activations(model, encode(model, HAPPY + SAD), [layer], reduce=-1)[:, 0]  # last tokens
    vector = mean_difference(acts[:len(HAPPY)], acts[len(HAPPY):])

    mults = np.asarray(args.multipliers, np.float32)
    n = len(mults)
    prompt = np.array([prompt_ids] * n)
    steer = steerjax.Steering.create(model, {layer: np.broadcast_to(vector, (n, vector.size))}, multipliers=mults)
    logits = np.asarray(model.logits(prompt, steering=steer))[:, -1]
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    rows = [{"multiplier": float(m), "logp_happy": float(lp[happy]), "logp_sad": float(lp[sad]),
             "margin": float(lp[happy] - lp[sad])} for m, lp in zip(mults, logp)]

    question = [{"role": "user", "content": args.question}] if chat else args.question
    gen = steerjax.generate(model, [question] * n, steering=steer, max_new_tokens=args.max_new_tokens, seed=args.seed)

    os.makedirs(args.out, exist_ok=True)
    save_vectors(os.path.join(args.out, "vector.safetensors"), {layer: vector},
                 metadata={"model": model.source, **({"model_commit": model.commit} if model.commit else {}),
                           "method": "mean_diff", "site": "block_output", "token_index": -1, "pairs": len(HAPPY)})
    with open(os.path.join(args.out, "propensity.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, "generations.jsonl"), "w") as f:
        for m, text in zip(mults, gen.texts):
            f.write(json.dumps({"multiplier": float(m), "question": args.question, "chat": chat, "text": text}) + "\n")
    config = dict(vars(args), layer=layer, chat_template=chat, model_source=model.source, model_commit=model.commit,
                  vector_norm=float(np.linalg.norm(vector)), steerjax=steerjax.__version__,
                  python=platform.python_version(), seconds=round(time.time() - t0, 1))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    _plot(rows, layer, args)

    print(f"\nlayer {layer}, |v| = {config['vector_norm']:.1f}")
    print(f"{'multiplier':>10}  {'margin':>7}  generation")
    for r, text in zip(rows, gen.texts):
        print(f"{r['multiplier']:>10.2f}  {r['margin']:>7.2f}  {text.strip()[:90]!r}")
    print(f"\nresults in {args.out} ({config['seconds']}s)")


def _plot(rows, layer, args):
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["multiplier"] for r in rows], [r["margin"] for r in rows], "o-")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="multiplier", ylabel=f"log p({args.positive!r}) - log p({args.negative!r})", title=f"layer {layer}")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "propensity.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    from steerjax.cli import guarded

    guarded(main)
