"""Reading the residual stream: the one activation reader every vector method uses.

:func:`read_activations` runs the model on token sequences (one jitted program per batch shape)
and keeps the residual stream after the requested blocks (the steering site, ``block_output``),
reduced over each sequence's real tokens:

* an int ``k``: the activation at token ``k`` of the sequence (negative counts from its end:
  ``-2`` is the answer letter of an ``"(A)"`` completion, as CAA reads it);
* ``"mean"``: the mean activation over the sequence's tokens;
* ``"norm"``: the mean L2 norm of the activations over the sequence's tokens (the residual-norm
  scale of the predictor's strengths);
* a tuple of these: all of them from the same pass.

``skip_first=True`` leaves each sequence's first token out of ``"mean"`` and ``"norm"`` (its
residual is an attention-sink outlier) unless it is the only one. Tokens are located among each
sequence's own real tokens, so padding never moves them. Only the blocks up to the deepest one
read are run (:func:`first_blocks`): a block's output does not depend on the blocks after it.

Example::

    acts = read_activations(model, encode(model, texts), [9, 12], reduce=-1)   # [N, 2, D]
    mean, norm = read_activations(model, ids, [9], reduce=("mean", "norm"), skip_first=True)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from steerjax import sharding as shd
from steerjax.data.batch import ACTIVATIONS, Buckets, TokenBatch, round_up
from steerjax.errors import DataError, SteeringError
from steerjax.models.transformer import forward
from steerjax.progress import tqdm
from steerjax.steering import normalize_layer

REDUCTIONS = ("mean", "norm")


def read_activations(
    model,
    batch_or_seqs: TokenBatch | Sequence[Sequence[int]],
    layers: Sequence[int] | int,
    *,
    reduce: int | str | tuple = -1,
    skip_first: bool = False,
    batch_size: int = 16,
    side: str = "right",
    buckets: Buckets | None = ACTIVATIONS,
    mesh=None,
    progress: bool = False,
    desc: str = "reading activations",
):
    """Residual-stream activations after ``layers``, reduced over each sequence's tokens.

    Args:
      model: a ``LanguageModel``.
      batch_or_seqs: token-id lists (padded here) or a :class:`~steerjax.data.batch.TokenBatch`.
      layers: block indices (negative counts from the end), all read in one pass.
      reduce: a token index, ``"mean"``, ``"norm"``, or a tuple of them (see the module docstring).
      skip_first: leave each sequence's first token out of ``"mean"`` and ``"norm"``.
      batch_size: sequences per forward pass (every pass has this many rows: one compiled
        program per width); rounded up to a multiple of the mesh's ``data`` axis.
      side, buckets: how token-id lists are padded (:meth:`TokenBatch.pad`); ``buckets=None``
        pads each batch to its longest sequence.
      mesh: a ``("data", "model")`` mesh (:func:`steerjax.sharding.make_mesh`; default
        :func:`steerjax.sharding.default_mesh`): sequences split over ``data``, parameters over
        ``model``.
      progress: show a progress bar (only on a terminal), labelled ``desc``.

    Returns:
      float32 ``[N, len(layers), D]`` for a token index or ``"mean"``, ``[N, len(layers)]`` for
      ``"norm"``; a tuple of those for a tuple ``reduce``.

    Raises:
      DataError: a token index outside a sequence.
      SteeringError: an unknown reduction or a bad ``batch_size``.
      LayerIndexError: a block out of range.
    """
    cfg = model.config
    modes = reduce if isinstance(reduce, tuple) else (reduce,)
    index = None
    for mode in modes:
        if isinstance(mode, str):
            if mode not in REDUCTIONS:
                raise SteeringError(f"reduce={mode!r}: use a token index or one of {REDUCTIONS}")
        elif isinstance(mode, bool) or not isinstance(mode, (int, np.integer)):
            raise SteeringError(f"reduce must be a token index (int), {REDUCTIONS}, or a tuple of them; got {mode!r}")
        elif index is not None and index != mode:
            raise SteeringError(f"reduce names two token indices ({index} and {mode}); read them in two calls")
        else:
            index = int(mode)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise SteeringError(f"batch_size must be a positive int, got {batch_size!r}")
    idx = layer_indices(layers, cfg.num_layers)
    if isinstance(batch_or_seqs, TokenBatch):
        full, seqs = batch_or_seqs, None
        lengths = np.asarray(full.lengths)
    else:
        full, seqs = None, [list(s) for s in batch_or_seqs]
        lengths = np.asarray([len(s) for s in seqs])
    n = len(lengths)
    if n == 0:
        raise DataError("no sequences to read")
    reads = np.zeros(n, np.int32)
    if index is not None:
        reads = np.asarray([token_position(int(length), index, f"sequence {i}") for i, length in enumerate(lengths)],
                           np.int32)

    mesh = shd.default_mesh(mesh)
    params = model.params
    if mesh is not None:
        shd.check_mesh(mesh, cfg)
        params = shd.shard_params(params, cfg, mesh)
    rows = round_up(min(batch_size, n), shd.data_size(mesh))
    layer_idx = shd.put(np.asarray(idx, np.int32), mesh, batch=False)
    kinds = tuple("index" if not isinstance(m, str) else m for m in modes)
    parts = []
    for start in tqdm(range(0, n, rows), desc=desc, unit="batch", disable=None if progress else True):
        m = min(rows, n - start)
        picked = start + np.minimum(np.arange(rows), m - 1)  # a fixed batch shape: the last row repeats
        if full is None:
            batch = TokenBatch.pad([seqs[i] for i in picked], side=side, buckets=buckets)
        else:
            batch = full.take(picked)
        # the token to read, as a column of the padded row (left padding shifts it)
        cols = np.argmax(np.asarray(batch.valid), axis=-1) + reads[picked]
        placed, cols = shd.put_batch((batch, cols.astype(np.int32)), mesh)
        out = _read(params, cfg, placed.ids, placed.valid, placed.positions, layer_idx, cols, kinds=kinds,
                    skip_first=bool(skip_first), blocks=max(idx) + 1)
        parts.append([shd.to_host(o)[:m] for o in out])
    results = tuple(np.concatenate([p[k] for p in parts]) for k in range(len(kinds)))
    return results if isinstance(reduce, tuple) else results[0]


def token_position(length: int, token_index: int, what: str) -> int:
    """The position among ``length`` real tokens that ``token_index`` names (negative counts
    from the end).

    Raises:
      SteeringError: ``token_index`` is not an int.
      DataError: it is outside the sequence (``what`` names the sequence in the message).
    """
    if isinstance(token_index, bool) or not isinstance(token_index, (int, np.integer)):
        raise SteeringError(f"token_index must be an int, got {token_index!r}")
    pos = length + token_index if token_index < 0 else token_index
    if not 0 <= pos < length:
        raise DataError(f"token_index {token_index} is outside {what} of {length} tokens; use a smaller |token_index|")
    return int(pos)


def layer_indices(layers: Sequence[int] | int, num_layers: int) -> list[int]:
    """Block indices in ``[0, num_layers)`` (negative counts from the end), each named once.

    Raises:
      SteeringError: no block, or a block named twice.
      LayerIndexError: a block out of range.
    """
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [layers]
    idx = [normalize_layer(layer, num_layers) for layer in layers]
    if not idx:
        raise SteeringError("layers is empty: name at least one block")
    if len(set(idx)) != len(idx):
        raise SteeringError(f"layers {list(layers)} name a block twice")
    return idx


def first_blocks(params, cfg, count: int):
    """The model cut after its first ``count`` blocks: ``(params, cfg)`` for
    :func:`steerjax.models.transformer.forward`, whose residual stream after block ``l < count``
    equals the whole model's (a block's output does not depend on the blocks after it).

    Slices the stacked layer parameters (free inside ``jit``); ``cfg`` keeps every other field, so
    the final norm and the head are the model's own (unused by a reader of block outputs).

    Raises:
      SteeringError: ``count`` is not in ``[1, cfg.num_layers]``.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= cfg.num_layers:
        raise SteeringError(f"count must be a number of blocks in [1, {cfg.num_layers}], got {count!r}")
    count = int(count)
    if count == cfg.num_layers:
        return params, cfg
    cut = dataclasses.replace(cfg, num_layers=count, layer_windows=cfg.layer_windows[:count],
                              layer_local=cfg.layer_local[:count])
    return {**params, "layers": jax.tree.map(lambda x: x[:count], params["layers"])}, cut


@functools.partial(jax.jit, static_argnames=("cfg", "kinds", "skip_first", "blocks"))
def _read(params, cfg, ids, valid, positions, layer_idx, cols, *, kinds, skip_first, blocks):
    params, cfg = first_blocks(params, cfg, blocks)
    out = forward(params, cfg, ids, positions=positions, valid=valid, collect_layers=True)
    h = out.layers[layer_idx].astype(jnp.float32)  # [L, B, T, D]
    use = valid
    if skip_first:  # skip the attention-sink first token, unless it is the only one
        n_real = jnp.sum(valid, axis=-1)
        use = valid & ((positions > 0) | (n_real[:, None] == 1))
    w = use.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(w, axis=-1), 1.0)
    results = []
    for kind in kinds:
        if kind == "index":
            results.append(h[:, jnp.arange(h.shape[1]), cols].swapaxes(0, 1))  # [B, L, D]
        elif kind == "mean":
            results.append(jnp.einsum("bt,lbtd->bld", w, h) / count[:, None, None])
        else:
            results.append((jnp.sum(w[None] * jnp.linalg.norm(h, axis=-1), axis=-1) / count[None]).T)  # [B, L]
    return tuple(results)
