"""Multiplier sweeps: the propensity of every example under every (layer, multiplier).

Where the speed comes from (see the README):

1. Vectors, multipliers and layer choices are traced arrays: one compile per chunk shape.
2. Prefix sharing: with ``positions="completion"`` the prompt is not steered, so its KV cache is
   computed once per example and every (layer, multiplier, completion) row is scored against it
   in one batch (:func:`steerjax.models.forward` with ``prefix=``). The first completion token's
   log-prob comes from the prompt's last position and is shared by all rows. With
   ``positions="last_prompt"`` (the paper's code) the prompt minus its last token is shared and
   each row re-reads that token under steering. With
   ``positions="all"`` each (layer, multiplier) prompt is computed once and shared by both
   completions.
3. Logits only where they are read: the last prompt position and the completion tokens.
4. Prompt lengths are bucketed (multiples of 32: :data:`steerjax.data.batch.SWEEP_PROMPT`); a
   chunk holds examples of one bucket, as many as the memory budget allows (more for short
   prompts), and a bucket's last chunk is padded to a power of two: little padding, and a
   dataset compiles a handful of times.
5. Chunk sizes follow from a memory budget (:mod:`steerjax.memory`, per device).
6. With ``mesh=`` (:mod:`steerjax.sharding`) a chunk's examples are split over the ``data`` axis
   and the parameters over ``model``; the table is the same.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from steerjax import memory
from steerjax import sharding as shd
from steerjax.data.batch import SWEEP_PROMPT, TokenBatch, pow2, round_up
from steerjax.data.examples import Encoded, Example, encode_all
from steerjax.errors import ContextLengthError, SteeringError
from steerjax.models.transformer import KVCache, forward, param_dtype, positions_from_mask, unembed
from steerjax.runs import MODEL_FINGERPRINT, digest
from steerjax.runs.chunks import RunDirectory, map_chunks
from steerjax.steering.core import Steering, check_vector, normalize_layer

POSITIONS = ("completion", "last_prompt", "all")
PROPENSITIES = ("logprob", "logit")


def sweep(
    model,
    examples: Sequence[Example | Encoded | tuple],
    vector: Any,
    *,
    layers: Sequence[int],
    multipliers: Sequence[float],
    positions: str = "completion",
    propensity: str = "logprob",
    operator: str = "add",
    batch_size: int | None = None,
    memory_budget_mb: float = 2048,
    progress: bool = True,
    run_dir: str | None = None,
    mesh=None,
) -> pd.DataFrame:
    """Score every example under every (layer, multiplier): a tidy table.

    Args:
      model: a :class:`steerjax.LanguageModel`.
      examples: :class:`Example` objects, ``(prompt, positive, negative)`` tuples, or
        :class:`Encoded` token ids (models without a tokenizer).
      vector: a ``SteeringVector`` (``.vectors``), a ``{layer: [D]}`` mapping, or one ``[D]``
        array used at every layer in ``layers``; or several of these by name,
        ``{"baseline": vec, "mean": vec2, ...}`` (string keys): every example is then scored
        under every vector, sharing its prompt, and the table gets a ``vector`` column.
      layers: blocks to steer, one at a time (a layer sweep when several).
      multipliers: steering strengths.
      positions: ``"completion"`` steers from the first completion token on (the prompt is
        untouched: steering-bench, ``skip_first_n_generation_tokens=1``); ``"last_prompt"``
        from the prompt's last token on (the paper's code, repepo, ``skip_first_n_generation_tokens=0``:
        the first completion token is already predicted under steering); ``"all"`` steers the
        whole prompt too.
      propensity: what the ``propensity`` column holds: ``"logprob"``, the difference of the
        completions' summed log-probs (steering-bench's ``logprob_diff``), or ``"logit"``, the
        difference of their summed raw logits (repepo's ``logit_diff``, the paper's propensity).
        Both pairs of sums are always in the table.
      operator: ``"add"``, ``"ablate_then_add"`` or ``"clamp"``.
      batch_size: most examples per chunk; default from ``memory_budget_mb`` for each prompt
        length bucket (:func:`steerjax.memory.sweep_bytes_per_example`).
      memory_budget_mb: MiB (per device) a chunk's activations, caches, logits and working copy
        of one block's weights may take; the parameters themselves are not counted.
      progress: show a progress bar over chunks.
      run_dir: if given, finished chunks are stored there and skipped when the same sweep is
        started again (resume after a crash or kill).
      mesh: a ``("data", "model")`` mesh (:func:`steerjax.sharding.make_mesh`): examples are
        split over ``data`` (chunks padded to a multiple of its size, ``batch_size`` rounded up
        to one), parameters over ``model``. Default: one device.

    Returns:
      One row per example x (vector x) layer x multiplier: ``example`` (position in ``examples``),
      ``layer``, ``multiplier``, ``logp_positive``, ``logp_negative`` (log-probs summed over
      completion tokens), ``logit_positive``, ``logit_negative`` (raw logits of the completion
      tokens, summed), ``propensity`` (the difference chosen by ``propensity``),
      ``prob_positive`` (normalised over the two completions' log-probs), ``correct`` (the
      positive completion is more likely), and the examples' ``meta`` fields.
    """
    cfg = model.config
    if positions not in POSITIONS:
        raise SteeringError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if propensity not in PROPENSITIES:
        raise SteeringError(f"propensity must be one of {PROPENSITIES}, got {propensity!r}")
    examples, encoded = encode_all(model, examples)
    layer_ids = [normalize_layer(layer, cfg.num_layers) for layer in layers]
    if not layer_ids:
        raise SteeringError("layers is empty")
    if len(set(layer_ids)) != len(layer_ids):
        raise SteeringError(f"layers has duplicates: {list(layers)}")
    mults = np.asarray(multipliers, np.float32).reshape(-1)
    if mults.size == 0 or not np.all(np.isfinite(mults)):
        raise SteeringError(f"multipliers must be a non-empty list of finite numbers, got {multipliers!r}")
    names, table = vector_tables(cfg, vector, layer_ids)  # [V, L, D]
    Steering.create(cfg, {layer_ids[0]: table[0, layer_ids[0]]}, operator=operator)  # validates operator

    tc = max(max(len(e.positive), len(e.negative)) for e in encoded)
    for i, e in enumerate(encoded):
        if len(e.prompt) + tc > cfg.max_position_embeddings:
            raise ContextLengthError(
                f"example {i}: {len(e.prompt)} prompt + {tc} completion tokens exceed the model's "
                f"context of {cfg.max_position_embeddings}"
            )
    rows = len(table) * len(layer_ids) * len(mults) * 2
    mesh = shd.default_mesh(mesh)
    d = shd.data_size(mesh)
    if mesh is not None:
        shd.check_mesh(mesh, cfg)
        model = dataclasses.replace(model, params=shd.shard_params(model.params, cfg, mesh))
    dtype = param_dtype(model.params)
    reserved = memory.block_bytes(cfg, dtype) // shd.axis_sizes(mesh)["model"]
    chunks = _chunks(encoded, lambda tp: round_up(batch_size, d) if batch_size else memory.examples_per_chunk(
        memory.sweep_bytes_per_example(cfg, tp, tc, rows, positions, dtype, vectors=len(table)), memory_budget_mb,
        data=d,
        reserved=reserved), multiple=d)

    store = None
    if run_dir is not None:
        store = RunDirectory(run_dir, dict(run_config(
            model.source, dtype=model.dtype, layers=layer_ids, multipliers=mults, positions=positions,
            propensity=propensity, operator=operator, batch_size=batch_size, memory_budget_mb=memory_budget_mb,
            n_examples=len(examples), examples_sha256=digest(encoded, length=16),
            vector_sha256=digest(table[:, layer_ids].tobytes(), length=16), vector_names=names),
            **{MODEL_FINGERPRINT: getattr(model, "fingerprint", None)}))

    def work(_, chunk):
        idx, size = chunk
        scores = _score_chunk(model, cfg, [encoded[i] for i in idx], size, tc, table, layer_ids, mults,
                              positions, operator, mesh)
        return _rows(idx, scores, examples, layer_ids, mults, propensity, names)

    out = map_chunks(chunks, work, store=store, desc="sweep", progress=progress)
    order = ["example"] + (["vector"] if names is not None else []) + ["layer", "multiplier"]
    if names is not None:  # the given order of the vectors, not the alphabet's
        out["vector"] = pd.Categorical(out["vector"], categories=names)
    out = out.sort_values(order, kind="stable").reset_index(drop=True)
    if names is not None:
        out["vector"] = out["vector"].astype(str)
    return out


#: ``|multiplier| x vector norm`` above which a steered residual is the vector alone: residual
#: streams have norms of about 1 to 1e3, so past this the propensity no longer changes with the
#: multiplier (and near 1e19 float32 squares overflow in the normalisations)
SATURATION = 1e6


def check_multipliers(multipliers: Sequence[float], *, flag: str = "multipliers", slopes: bool = True) -> list[float]:
    """The multipliers as floats: finite, and (``slopes``) at least two distinct values, which a
    per-example slope needs.

    Raises:
      SteeringError: a non-finite multiplier, or fewer than two distinct values with ``slopes``.
    """
    values = [float(m) for m in multipliers]
    bad = [m for m in values if not np.isfinite(m)]
    if bad:
        raise SteeringError(f"{flag} must be finite, got {bad[0]}")
    if slopes and len(set(values)) < 2:
        raise SteeringError(f"{flag} {' '.join(f'{m:g}' for m in values)}: a steerability slope needs at least two "
                            "distinct multipliers (e.g. -1 0 1)")
    return values


def saturating_multipliers(multipliers: Sequence[float], norms: Sequence[float]) -> list[float]:
    """The multipliers whose ``|multiplier| x`` largest vector norm exceeds :data:`SATURATION`:
    there the steered residual is the vector alone and the propensity saturates."""
    top = max((float(n) for n in norms), default=0.0)
    return [float(m) for m in multipliers if abs(float(m)) * top > SATURATION]


def run_config(model_source: str, *, dtype: Any, layers: Sequence[int], multipliers: Sequence[float], positions: str,
               propensity: str, operator: str, batch_size: int | None, memory_budget_mb: float, n_examples: int,
               **digests: Any) -> dict[str, Any]:
    """The ``config.json`` of a sweep's run directory: the one builder, used by :func:`sweep` and by
    the command line's check before the model loads.

    ``layers`` are block indices as normalised (non-negative); ``multipliers`` are stored as the
    float32 values the sweep runs. ``digests`` (``examples_sha256``, ``vector_sha256``,
    ``vector_names``) are known once the examples are encoded: :func:`sweep` gives them; a check
    before the model loads leaves them out, and they are compared when the sweep starts.
    """
    return {
        "kind": "sweep", "model": model_source, "dtype": dtype, "layers": [int(layer) for layer in layers],
        "multipliers": np.asarray(multipliers, np.float32).reshape(-1).tolist(), "positions": positions,
        "propensity": propensity, "operator": operator, "batch_size": batch_size,
        "memory_budget_mb": memory_budget_mb, "n_examples": int(n_examples), **digests,
    }


def vector_table(cfg, vector: Any, layers: Sequence[int]) -> np.ndarray:
    """``[L, D]`` float32 with the steering vector of each block in ``layers`` (zeros elsewhere)."""
    vectors = getattr(vector, "vectors", vector)
    out = np.zeros((cfg.num_layers, cfg.hidden_size), np.float32)
    if isinstance(vectors, Mapping):
        by_layer = {normalize_layer(int(k), cfg.num_layers): v for k, v in vectors.items()}
        missing = [layer for layer in layers if layer not in by_layer]
        if missing:
            raise SteeringError(f"the vector has no direction for layer(s) {missing}; it has {sorted(by_layer)}")
        for layer in layers:
            out[layer] = check_vector(cfg, by_layer[layer], where=f"the steering vector for layer {layer}")
    else:
        vec = check_vector(cfg, vectors)
        for layer in layers:
            out[layer] = vec
    return out


def vector_tables(cfg, vector: Any, layers: Sequence[int]) -> tuple[list[str] | None, np.ndarray]:
    """``(names, [V, L, D])``: one :func:`vector_table` per named vector (``names`` is ``None``
    and ``V`` 1 for a single vector)."""
    if isinstance(vector, Mapping) and vector and all(isinstance(k, str) for k in vector):
        names = list(vector)
        tables = []
        for name in names:
            try:
                tables.append(vector_table(cfg, vector[name], layers))
            except SteeringError as e:
                raise SteeringError(f"vector {name!r}: {e}") from None
        return names, np.stack(tables)
    if isinstance(vector, Mapping) and any(isinstance(k, str) for k in vector):
        raise SteeringError("a vector mapping's keys must be all layers (ints) or all names (strings), "
                            f"got {list(vector)}")
    return None, vector_table(cfg, vector, layers)[None]


def _chunks(encoded, max_batch, multiple=1) -> list[tuple[list[int], int]]:
    """``(example indices, padded batch size)`` per chunk: one prompt bucket per chunk, at most
    ``max_batch(bucket)`` examples, the bucket's last chunk padded to a power of two (then to a
    multiple of ``multiple``, the mesh's data axis)."""
    buckets: dict[int, list[int]] = {}
    for i, e in enumerate(encoded):
        buckets.setdefault(SWEEP_PROMPT(len(e.prompt)), []).append(i)
    out = []
    for tp in sorted(buckets):
        idx, cap = buckets[tp], max_batch(tp)
        for start in range(0, len(idx), cap):
            part = idx[start:start + cap]
            size = cap if len(part) == cap else min(cap, pow2(len(part)))
            out.append((part, round_up(size, multiple)))
    return out


def _score_chunk(model, cfg, encoded, batch_size, tc, table, layers, mults, positions, operator, mesh=None):
    """``[n, V, n_layers, n_mults, 2, 2]`` summed completion log-probs and raw logits for one chunk
    (padded to batch_size)."""
    n = len(encoded)
    prompt = TokenBatch.pad([e.prompt for e in encoded], side="left", buckets=SWEEP_PROMPT)
    comp = TokenBatch.pad([c for e in encoded for c in (e.positive, e.negative)], side="right", width=tc)
    comp_ids, comp_valid = (x.reshape(n, 2, tc) for x in (comp.ids, comp.valid))
    # fixed chunk shape (one compile per bucket): padded with the last example; over the data axis
    prompt, comp_ids, comp_valid = shd.put_batch((prompt, comp_ids, comp_valid), mesh, rows=batch_size)
    onehot = np.zeros((len(layers), cfg.num_layers), bool)
    onehot[np.arange(len(layers)), layers] = True
    shared = functools.partial(shd.put, mesh=mesh, batch=False)
    out = _score(model.params, cfg, prompt.ids, prompt.valid, comp_ids, comp_valid, shared(table), shared(onehot),
                 shared(mults), positions=positions, operator=operator)
    return shd.to_host(out)[:n]


@functools.partial(jax.jit, static_argnames=("cfg", "positions", "operator"))
def _score(params, cfg, prompt, pvalid, comp, cvalid, table, onehot, mults, *, positions, operator):
    """Completion scores ``[E, V, n_layers, n_mults, 2, 2]``: ``[..., c, 0]`` the summed log-probs
    and ``[..., c, 1]`` the summed raw logits of completion ``c`` (0 positive, 1 negative) under
    vector ``v`` of ``table [V, L, D]``."""
    e, tp = prompt.shape
    nv, nl, nm = table.shape[0], onehot.shape[0], mults.shape[0]
    tc = comp.shape[-1]
    combos = nv * nl * nm  # (vector, layer, multiplier) triples, vector-major then layer-major
    combo_mask = jnp.tile(jnp.repeat(onehot, nm, axis=0).T, (1, nv))  # [L, combos]
    combo_mult = jnp.tile(mults, nv * nl)  # [combos]
    combo_vec = jnp.repeat(jnp.arange(nv), nl * nm)  # [combos]
    ppos = positions_from_mask(pvalid)
    lengths = jnp.sum(pvalid, axis=-1).astype(jnp.int32)
    dtype = param_dtype(params)

    def steering(reps_outer, reps_inner):
        # row = (example, combo, inner): layer mask and multiplier per row
        mask = jnp.tile(jnp.repeat(combo_mask, reps_inner, axis=1), (1, reps_outer))
        mult = jnp.tile(jnp.repeat(combo_mult, reps_inner), reps_outer)
        if nv == 1:
            vectors = table[0][:, None, :]  # [L, 1, D], shared by every row
        else:  # [L, rows, D]: each row its vector
            vectors = jnp.swapaxes(table[jnp.tile(jnp.repeat(combo_vec, reps_inner), reps_outer)], 0, 1)
        return Steering.build(vectors, mult, operator=operator, layer_mask=mask)

    def token_scores(hidden, targets):
        """(log-prob, raw logit) of ``targets`` under the logits of ``hidden``."""
        logits = unembed(params, cfg, hidden)
        raw = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        return raw - jax.nn.logsumexp(logits, axis=-1), raw

    row_tokens = jnp.broadcast_to(comp[:, None], (e, combos, 2, tc)).reshape(-1, tc)
    row_valid = jnp.broadcast_to(cvalid[:, None], (e, combos, 2, tc)).reshape(-1, tc)
    row_start = jnp.broadcast_to(lengths[:, None, None], (e, combos, 2)).reshape(-1)

    if positions == "last_prompt":
        # the prompt up to its last token is unsteered and shared; each (combo, completion) row
        # re-reads the last prompt token under steering, then the completion's first tc - 1 tokens
        pre = forward(params, cfg, prompt[:, :-1], positions=ppos[:, :-1], valid=pvalid[:, :-1],
                      cache=KVCache.empty(cfg, e, tp - 1, dtype))
        last = jnp.broadcast_to(prompt[:, None, None, -1:], (e, combos, 2, 1)).reshape(-1, 1)
        inputs = jnp.concatenate([last, row_tokens[:, :-1]], axis=1)
        in_valid = jnp.concatenate([jnp.ones_like(last, bool), row_valid[:, :-1]], axis=1)
        pos = row_start[:, None] - 1 + jnp.arange(tc, dtype=jnp.int32)[None, :]
        out = forward(params, cfg, inputs, positions=pos, valid=in_valid, steering=steering(e, 2), prefix=pre.cache)
        lp, raw = token_scores(out.hidden, row_tokens)
        sums = jnp.stack([jnp.sum(jnp.where(row_valid, x, 0.0), axis=-1) for x in (lp, raw)], axis=-1)
        return sums.reshape(e, nv, nl, nm, 2, 2)

    if positions == "completion":  # one unsteered prompt per example, shared by all its rows
        pre = forward(params, cfg, prompt, positions=ppos, valid=pvalid, cache=KVCache.empty(cfg, e, tp, dtype))
        first_hidden = pre.hidden[:, -1][:, None]  # [E, 1, D]
    else:  # one steered prompt per (example, layer, multiplier), shared by both completions
        rep = lambda x: jnp.repeat(x, combos, axis=0)  # noqa: E731 - prefix index e * combos + c
        pre = forward(params, cfg, rep(prompt), positions=rep(ppos), valid=rep(pvalid), steering=steering(e, 1),
                      cache=KVCache.empty(cfg, e * combos, tp, dtype))
        first_hidden = pre.hidden[:, -1].reshape(e, combos, -1)
    # the first completion token is predicted at the prompt's last position
    first_logits = unembed(params, cfg, first_hidden)  # [E, 1 or combos, V]
    first_raw = jnp.take_along_axis(first_logits, jnp.broadcast_to(comp[:, None, :, 0], (e, first_logits.shape[1], 2)),
                                    axis=-1)
    first_lp = first_raw - jax.nn.logsumexp(first_logits, axis=-1)[..., None]
    first = jnp.stack([first_lp, first_raw], axis=-1)  # [E, 1 or combos, 2, 2]
    first = jnp.broadcast_to(first, (e, combos, 2, 2))
    if tc == 1:
        return first.reshape(e, nv, nl, nm, 2, 2)
    # rows (example, combo, completion) feed completion tokens 0..tc-2 to predict tokens 1..tc-1
    inputs, targets, tvalid = row_tokens[:, :-1], row_tokens[:, 1:], row_valid[:, 1:]
    pos = row_start[:, None] + jnp.arange(tc - 1, dtype=jnp.int32)[None, :]
    out = forward(params, cfg, inputs, positions=pos, valid=row_valid[:, :-1], steering=steering(e, 2),
                  prefix=pre.cache)
    lp, raw = token_scores(out.hidden, targets)
    rest = jnp.stack([jnp.sum(jnp.where(tvalid, x, 0.0), axis=-1) for x in (lp, raw)], axis=-1)
    return (first + rest.reshape(e, combos, 2, 2)).reshape(e, nv, nl, nm, 2, 2)


def _rows(idx, scores, examples, layers, mults, propensity="logprob", names=None) -> pd.DataFrame:
    n, nv, nl, nm = scores.shape[:4]
    ex = np.repeat(np.asarray(idx), nv * nl * nm)
    lp_pos, lp_neg = (scores[..., c, 0].reshape(-1).astype(np.float64) for c in (0, 1))
    lg_pos, lg_neg = (scores[..., c, 1].reshape(-1).astype(np.float64) for c in (0, 1))
    margin = lp_pos - lp_neg
    data = {
        "example": ex,
        "layer": np.tile(np.repeat(np.asarray(layers), nm), n * nv),
        "multiplier": np.tile(mults, n * nv * nl).astype(np.float64),
        "logp_positive": lp_pos,
        "logp_negative": lp_neg,
        "logit_positive": lg_pos,
        "logit_negative": lg_neg,
        "propensity": margin if propensity == "logprob" else lg_pos - lg_neg,
        "prob_positive": 1.0 / (1.0 + np.exp(-margin)),
        "correct": margin > 0,
    }
    if names is not None:
        data = {"example": ex, "vector": np.tile(np.repeat(np.asarray(names, object), nl * nm), n),
                **{k: v for k, v in data.items() if k != "example"}}
    df = pd.DataFrame(data)
    meta = pd.DataFrame([dict(getattr(examples[i], "meta", {})) for i in idx])
    if not meta.empty:
        meta = meta.loc[np.repeat(np.arange(len(idx)), nv * nl * nm)].reset_index(drop=True)
        for col in meta.columns:
            if col not in df:
                df[col] = meta[col].to_numpy()
    return df
