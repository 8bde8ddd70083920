"""Steered rollouts: every (prompt, concept, strength) generated in mixed batches, as a tidy table.

One :func:`steerjax.generate` call per chunk of ``batch_size`` rows; each row carries its own
vector and multiplier (a batch axis of the :class:`~steerjax.steering.core.Steering`), so concepts
and strengths mix freely in a batch and a batch compiles once. A short last chunk is padded with
unsteered rows to a power of two (:func:`bucket_rows`), and prompts are left-padded to multiples of
16 tokens, so a run compiles a handful of programs at most.

Steered token positions (``positions``): ``"all"`` (default) steers the prompt and every generated
token, as most activation-steering work does (CAA, steering-vectors' default); ``"generated"``
steers only generated tokens (the first new token is then predicted from the unsteered prompt).
SteerBoost (Fan et al.'s code) steers every position, prompt included: its hook adds ``alpha * v``
to the block's output on the prompt pass and on every decoding step.

Strength scale (``scale``, :data:`steerjax.studies.steerability_prediction.concepts.SCALES`): ``"norm"`` (default)
reads strengths as fractions of the residual norm, ``"raw"`` as alphas multiplying the vector as
estimated (SteerBoost's ``h + alpha * v``). In both, a row's ``strength`` is the grid value as
given and its ``multiplier`` the factor actually applied to the concept's vector (the added
vector is ``multiplier * vector``), so ``multiplier == strength`` under ``"raw"``; the row's
``scale`` column says which. Sampling (``temperature > 0``, ``top_p``) draws with ``seed + c``
for chunk ``c``; SteerBoost samples at temperature 0.7 (:data:`steerjax.data.steerboost.STEERBOOST`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from steerjax.data.batch import encode, pow2
from steerjax.errors import SteeringError, SteerjaxError
from steerjax.generate import generate
from steerjax.runs import MODEL_FINGERPRINT, digest
from steerjax.runs.chunks import RunDirectory, map_chunks
from steerjax.steering.core import Steering, normalize_layer
from steerjax.studies.steerability_prediction.concepts import UNSTEERED, Concept, check_scale
from steerjax.studies.steerability_prediction.config import POSITIONS, testbed_run_config

COLUMNS = ("prompt_id", "prompt", "concept", "layer", "strength", "multiplier", "scale", "seed", "text", "tokens",
           "n_tokens")


def rollouts(
    model,
    prompts: Sequence[Any],
    concepts: Sequence[Concept],
    strengths: Sequence[float] | Mapping[str, Sequence[float]],
    *,
    layer: int,
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int = 32,
    positions: str = "all",
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    scale: str = "norm",
    chat: bool | None = None,
    progress: bool = True,
    run_dir: str | None = None,
    mesh=None,
) -> pd.DataFrame:
    """Generate every prompt under every (concept, strength), plus once unsteered.

    Args:
      model: a ``LanguageModel``.
      prompts: texts (user messages, chat-formatted when the tokenizer has a template, see
        :func:`steerjax.data.batch.encode` with ``chat=None``), chats, or token-id lists.
      concepts: :class:`Concept` objects, all at block ``layer``, with distinct names.
      strengths: one grid for all concepts or ``{concept name: grid}``, in ``scale``. A grid may
        hold a single strength (a run can be extended strength by strength); what needs two or
        more is downstream: the strength-only baseline and the paper's evaluation
        (:func:`steerjax.studies.steerability_prediction.evaluation.paper_evaluation` refuses a single strength).
      layer: the steered block (negative counts from the end).
      max_new_tokens: tokens generated per row (rows stop at EOS; ``n_tokens`` counts up to it).
      seed: sampling seed; chunk ``c`` uses ``seed + c`` (recorded per row). With the default
        greedy decoding (``temperature=0``) rows do not depend on it nor on their batch.
      batch_size: rows per ``generate`` call (a short chunk is padded to a power of two).
      positions: ``"all"`` or ``"generated"`` (see the module docstring).
      temperature, top_p, top_k: sampling (``temperature=0``: greedy, the default; ``top_k=0``: no
        limit), as :func:`steerjax.generate`.
      scale: ``"norm"`` (strengths are fractions of the residual norm) or ``"raw"`` (alphas
        multiplying the vector as estimated); see the module docstring.
      run_dir: resumable run directory (:class:`steerjax.runs.chunks.RunDirectory`): finished chunks
        are kept, a run with another config is refused.
      mesh: a ``("data", "model")`` mesh for :func:`steerjax.generate` (rows over ``data``,
        parameters over ``model``); the table is the same. Default: one device.

    Returns:
      One row per prompt x (``"none"``, strength 0) then per concept x strength, in that order:
      ``prompt_id, prompt, concept, layer, strength, multiplier, scale, seed, text, tokens,
      n_tokens`` (``text`` is None without a tokenizer; ``tokens`` the new token ids up to EOS).

    Raises:
      SteerjaxError: empty prompts or concepts, non-finite strengths, bad options;
      LayerIndexError: ``layer`` out of range; SteeringError: a concept at another layer or of
      the wrong width.
    """

    cfg = model.config
    li = normalize_layer(layer, cfg.num_layers)
    ids, labels = prompts_and_labels(model, prompts, chat)
    concepts = check_concepts(cfg, concepts, li)
    grid = strength_grid(concepts, strengths)
    check_options(max_new_tokens, batch_size, positions, seed, scale=scale, temperature=temperature, top_p=top_p,
                  top_k=top_k)
    jobs = [j for p in range(len(ids)) for j in [(p, None, 0.0)] + [(p, c, s) for c in concepts for s in grid[c.name]]]
    chunks = [jobs[i:i + batch_size] for i in range(0, len(jobs), batch_size)]

    store = None
    if run_dir is not None:
        store = RunDirectory(run_dir, dict(testbed_run_config(
            model=str(model.source), dtype=model.dtype, layer=li, max_new_tokens=max_new_tokens, seed=seed,
            batch_size=batch_size, positions=positions, temperature=temperature, top_p=top_p, scale=scale,
            top_k=top_k, prompts_sha256=digest(ids), concepts=concept_digests(concepts),
            strengths={k: [float(s) for s in v] for k, v in grid.items()}),
            **{MODEL_FINGERPRINT: getattr(model, "fingerprint", None)}))

    def work(ci, chunk):
        size = bucket_rows(len(chunk), batch_size)
        steering, mults = job_steering(cfg, chunk, li, size, positions, scale=scale)
        rows = [ids[p] for p, _, _ in chunk] + [ids[chunk[0][0]]] * (size - len(chunk))
        out = generate(model, rows, steering=steering, max_new_tokens=int(max_new_tokens),
                       temperature=temperature, top_p=top_p, top_k=top_k, seed=int(seed) + ci, mesh=mesh)
        records = []
        for r, (p, c, s) in enumerate(chunk):
            n = int(out.lengths[r])
            records.append({
                "prompt_id": p, "prompt": labels[p], "concept": UNSTEERED if c is None else c.name,
                "layer": li, "strength": float(s), "multiplier": float(mults[r]), "scale": scale,
                "seed": int(seed) + ci,
                "text": None if out.texts is None else out.texts[r],
                "tokens": [int(t) for t in out.tokens[r, :n]], "n_tokens": n,
            })
        return pd.DataFrame.from_records(records, columns=list(COLUMNS))

    table = map_chunks(chunks, work, store=store, desc="rollouts", progress=progress)
    table["tokens"] = table["tokens"].map(lambda t: [int(x) for x in t])
    return table


# ----------------------------------------------------------------------------- shared with features


def prompts_and_labels(model, prompts, chat) -> tuple[list[list[int]], list[str]]:
    """Token ids of the prompts (:func:`steerjax.data.batch.encode`) and their labels in a table
    (the text, or a chat or token list as JSON)."""
    if prompts is None or isinstance(prompts, str) or len(prompts) == 0:
        if isinstance(prompts, str):
            prompts = [prompts]
        else:
            raise SteerjaxError("prompts is empty: give at least one prompt")
    ids = encode(model, list(prompts), chat=chat)
    labels = [p if isinstance(p, str) else json.dumps(p if not isinstance(p, np.ndarray) else p.tolist(), default=str)
              for p in prompts]
    return ids, labels


def check_concepts(cfg, concepts: Sequence[Concept], layer: int) -> list[Concept]:
    """Concepts as a list, checked: at least one, distinct names, at ``layer``, of the model's width."""
    if isinstance(concepts, Concept):
        concepts = [concepts]
    concepts = list(concepts) if concepts is not None else []
    if not concepts:
        raise SteerjaxError("concepts is empty: give at least one Concept")
    names = set()
    for c in concepts:
        if not isinstance(c, Concept):
            raise SteerjaxError(f"concepts must be Concept objects, got {type(c).__name__}")
        if c.name in names:
            raise SteerjaxError(f"concept {c.name!r} is given twice")
        names.add(c.name)
        if c.layer != layer:
            raise SteeringError(f"concept {c.name!r} was made at block {c.layer}, but layer={layer}: "
                                "make the concepts at the steered block")
        if c.vector.shape[0] != cfg.hidden_size:
            raise SteeringError(f"concept {c.name!r} has width {c.vector.shape[0]}; the model's hidden size "
                                f"is {cfg.hidden_size}")
    return concepts


def strength_grid(concepts: Sequence[Concept], strengths) -> dict[str, list[float]]:
    """``{concept name: [strengths]}`` from one shared grid or a per-concept mapping; finite only."""
    if isinstance(strengths, Mapping):
        unknown = sorted(set(strengths) - {c.name for c in concepts})
        if unknown:
            raise SteerjaxError(f"strengths name unknown concept(s) {unknown}")
        missing = [c.name for c in concepts if c.name not in strengths]
        if missing:
            raise SteerjaxError(f"no strengths for concept(s) {missing}")
        grid = {c.name: strengths[c.name] for c in concepts}
    else:
        grid = {c.name: strengths for c in concepts}
    out = {}
    for name, g in grid.items():
        arr = np.atleast_1d(np.asarray(g, dtype=np.float64)) if g is not None else np.zeros(0)
        if arr.ndim != 1 or arr.size == 0:
            raise SteerjaxError(f"strengths for {name!r} must be a non-empty list of numbers, got {g!r}")
        if not np.all(np.isfinite(arr)):
            raise SteerjaxError(f"strengths must be finite, got {arr.tolist()} for {name!r}")
        out[name] = [float(s) for s in arr]
    return out


def check_options(max_new_tokens, batch_size, positions, seed, *, scale: str = "norm", temperature: float = 0.0,
                  top_p: float = 1.0, top_k: int = 0) -> None:
    """Raise :class:`SteerjaxError` on a bad decoding length, batch size, ``positions``, seed,
    ``scale``, ``temperature`` (``>= 0``) or ``top_p`` (in ``(0, 1]``)."""
    for name, v in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise SteerjaxError(f"{name} must be a positive int, got {v!r}")
    if positions not in POSITIONS:
        raise SteerjaxError(f"positions={positions!r}: use one of {POSITIONS}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise SteerjaxError(f"seed must be an int, got {seed!r}")
    check_scale(scale)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)) \
            or not np.isfinite(temperature) or temperature < 0:
        raise SteerjaxError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float, np.number)) or not 0 < top_p <= 1:
        raise SteerjaxError(f"top_p must be in (0, 1], got {top_p!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise SteerjaxError(f"top_k must be an int >= 0 (0: no limit), got {top_k!r}")


def job_steering(cfg, chunk, layer: int, rows: int, positions: str, *,
                 scale: str = "norm") -> tuple[Steering, np.ndarray]:
    """A per-example :class:`Steering` for ``(prompt, concept or None, strength)`` jobs, padded
    to ``rows`` with unsteered rows; also the multipliers ``[rows]`` (strengths in ``scale``,
    :meth:`Concept.multiplier`)."""
    vecs = np.zeros((rows, cfg.hidden_size), np.float32)
    mults = np.zeros((rows,), np.float32)
    for r, (_, c, s) in enumerate(chunk):
        if c is not None:
            vecs[r] = c.vector
            mults[r] = c.multiplier(s, scale)
    return Steering.create(cfg, {layer: vecs}, mults, positions=positions), mults


def bucket_rows(n: int, batch_size: int) -> int:
    """Rows of a compiled batch for ``n`` jobs: the next power of two (:func:`steerjax.data.batch.pow2`),
    at most ``batch_size``, so small calls do not pay for a full batch and a run compiles a few
    batch shapes at most."""
    return min(int(batch_size), pow2(n))


def concept_digests(concepts: Sequence[Concept]) -> list[list]:
    return [[c.name, hashlib.sha256(c.vector.tobytes()).hexdigest()[:16], round(c.residual_norm, 6)] for c in concepts]
