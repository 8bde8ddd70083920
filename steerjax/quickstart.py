"""The quickstart as a library function: steer a model from sad to happy and measure it.

Builds a contrastive mean-difference vector from a few happy/sad sentence pairs at one block,
scores the next-token margin ``log p(positive) - log p(negative)`` after a prompt over a
multiplier sweep (one batched, jit-compiled forward pass), and generates steered answers (chat
answers with the tokenizer's chat template; a model without one gets the question as plain text).
Any supported model works, base or chat: the default block is :data:`DEFAULT_DEPTH` of the depth,
and the answer words are checked to be one token each (:func:`answer_tokens`) before any work.
``experiments/quickstart/run.py`` parses flags, calls :func:`run` and prints.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np

from steerjax.data.batch import encode
from steerjax.errors import TokenizerError
from steerjax.generate import generate
from steerjax.plotting import save_figure, subplots
from steerjax.steering import Steering, normalize_layer
from steerjax.vectors import mean_difference, read_activations, save_vectors
from steerjax.version import __version__

HAPPY = ("I feel happy", "I am so joyful today", "What a wonderful, delightful day",
         "I love my life, everything is great", "This makes me glad and cheerful")
SAD = ("I feel sad", "I am so miserable today", "What a terrible, depressing day",
       "I hate my life, everything is awful", "This makes me gloomy and upset")
#: the default block as a fraction of the depth: block 9 of SmolLM2-135M's 30
DEFAULT_DEPTH = 0.3
MULTIPLIERS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)


def default_layer(num_layers: int) -> int:
    """The block steered by default: :data:`DEFAULT_DEPTH` of the way through the model."""
    return min(num_layers - 1, int(round(DEFAULT_DEPTH * num_layers)))


def resolve_layer(layer: int | None, num_layers: int, flag: str = "--layer") -> int:
    """``layer`` (negative counts from the end) as a block index, or the default block for None."""
    return default_layer(num_layers) if layer is None else normalize_layer(layer, num_layers, name=flag)


def answer_tokens(tokenizer, prompt: str, positive: str, negative: str) -> tuple[list[int], int, int]:
    """``(prompt ids, positive id, negative id)``: the tokenizations of ``prompt + positive`` and
    ``prompt + negative`` (with the tokenizer's own special tokens, such as a BOS) split after their
    longest common prefix, so a tokenizer that merges the prompt's end with the answer (a trailing
    space) still scores the answers as one token each.

    Raises:
      TokenizerError: an answer is not one token after the shared prefix (the word is named).
    """
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


@dataclasses.dataclass
class Result:
    """What :func:`run` measured: the vector, one propensity row per multiplier and the steered
    answers; :meth:`save` writes them, :meth:`figure` draws the margin curve."""

    layer: int
    vector: np.ndarray
    rows: list[dict[str, float]]
    texts: list[str]
    chat: bool
    config: dict[str, Any]

    def save(self, out: str) -> list[str]:
        """Write ``vector.safetensors``, ``propensity.csv``, ``generations.jsonl`` and
        ``config.json`` into ``out``; returns their paths."""
        os.makedirs(out, exist_ok=True)
        c = self.config
        paths = [os.path.join(out, name) for name in
                 ("vector.safetensors", "propensity.csv", "generations.jsonl", "config.json")]
        save_vectors(paths[0], {self.layer: self.vector},
                     metadata={"model": c["model_source"],
                               **({"model_commit": c["model_commit"]} if c.get("model_commit") else {}),
                               "method": "mean_diff", "site": "block_output", "token_index": -1,
                               "pairs": len(HAPPY)})
        with open(paths[1], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            w.writeheader()
            w.writerows(self.rows)
        with open(paths[2], "w") as f:
            for r, text in zip(self.rows, self.texts):
                f.write(json.dumps({"multiplier": r["multiplier"], "question": c["question"], "chat": self.chat,
                                    "text": text}) + "\n")
        with open(paths[3], "w") as f:
            json.dump(c, f, indent=2)
        return paths

    def figure(self, out: str) -> str:
        """``propensity.png``: the margin against the multiplier, its axis naming the two words."""
        fig, ax = subplots(figsize=(5, 3.2))
        ax.plot([r["multiplier"] for r in self.rows], [r["margin"] for r in self.rows], "o-")
        ax.axhline(0, color="grey", lw=0.5)
        c = self.config
        ax.set(xlabel="multiplier", ylabel=f"log p({c['positive']!r}) - log p({c['negative']!r}) (nats)",
               title=f"{c['model_source']}, block {self.layer}, |v| = {c['vector_norm']:.1f}")
        return save_figure(fig, os.path.join(out, "propensity.png"))


def run(model, *, layer: int | None = None, multipliers: Sequence[float] = MULTIPLIERS,
        prompt: str = "Today I feel", positive: str = " happy", negative: str = " sad",
        question: str = "How do you feel about Mondays? Answer in one sentence.", max_new_tokens: int = 32,
        seed: int = 0, facts: dict[str, Any] | None = None) -> Result:
    """The quickstart on a loaded model (``facts``, such as the command's flags, are recorded in
    the result's config).

    Raises:
      TokenizerError: no tokenizer, or an answer word that is not one token (before any work).
      LayerIndexError: ``layer`` out of range.
    """
    tok = model.tokenizer
    if tok is None:
        raise TokenizerError(f"{model.source} has no tokenizer: the quickstart works on text")
    layer = resolve_layer(layer, model.config.num_layers)
    prompt_ids, pos, neg = answer_tokens(tok, prompt, positive, negative)  # before any work
    chat = bool(getattr(tok, "chat_template", None))

    acts = read_activations(model, encode(model, list(HAPPY + SAD)), [layer], reduce=-1)[:, 0]  # last tokens
    vector = mean_difference(acts[:len(HAPPY)], acts[len(HAPPY):])
    mults = np.asarray(multipliers, np.float32)
    n = len(mults)
    steer = Steering.create(model, {layer: np.broadcast_to(vector, (n, vector.size))}, multipliers=mults)
    logits = np.asarray(model.logits(np.array([prompt_ids] * n), steering=steer))[:, -1]
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    rows = [{"multiplier": float(m), "logp_happy": float(lp[pos]), "logp_sad": float(lp[neg]),
             "margin": float(lp[pos] - lp[neg])} for m, lp in zip(mults, logp)]
    asked = [{"role": "user", "content": question}] if chat else question
    texts = generate(model, [asked] * n, steering=steer, max_new_tokens=max_new_tokens, seed=seed).texts
    config = {**(facts or {}), "layer": layer, "multipliers": [float(m) for m in mults], "prompt": prompt,
              "positive": positive, "negative": negative, "question": question, "max_new_tokens": max_new_tokens,
              "seed": seed, "chat_template": chat, "model_source": model.source,
              "model_commit": getattr(model, "commit", None), "vector_norm": float(np.linalg.norm(vector)),
              "steerjax": __version__, "python": platform.python_version()}
    return Result(layer, vector, rows, list(texts), chat, config)
