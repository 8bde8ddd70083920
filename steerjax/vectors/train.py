"""Steering vectors from contrastive examples: :func:`train_vector` and the activations it reads.

Every method starts from the same activations: for each example, the residual stream of the full
token sequences ``prompt + positive`` and ``prompt + negative`` after the requested blocks (the
steering site, ``block_output``) at one token, ``token_index`` (default ``-2``: the answer
letter of a ``"(A)"`` completion). :func:`contrastive_activations` returns them, computing each
example's prompt once (its KV cache, continued by both completions: the numbers of reading
each full sequence on its own); :func:`train_vector` turns them into a
:class:`~steerjax.vectors.SteeringVector`:

* ``"caa"``: contrastive activation addition, the mean of ``positive - negative``
  (:func:`~steerjax.vectors.estimators.mean_difference`, steering-vectors' ``mean_aggregator``);
* ``"pca"``: the first principal component of the differences (:func:`~steerjax.vectors.estimators.pca_direction`);
* ``"probe"``: a logistic-regression direction (:func:`~steerjax.vectors.estimators.probe_direction`);
* ``"learned"``: a vector optimised by gradient ascent on the log-probability margin of the
  positive completion under steering (:func:`~steerjax.vectors.learned.learn_vectors`).

Example::

    vec = train_vector(model, [(prompt, "(A)", "(B)"), ...], layers=[9, 12])
    vec.save("caa.safetensors")
    logits = model.logits(ids, steering=vec.to_steering(model, multipliers=2.0))
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from steerjax import memory
from steerjax import sharding as shd
from steerjax.data.batch import ACTIVATIONS, TokenBatch, pow2
from steerjax.data.examples import Encoded, Example, encode_all
from steerjax.errors import SteeringError
from steerjax.models.transformer import forward, param_dtype, prefill
from steerjax.progress import tqdm
from steerjax.vectors.activations import first_blocks, layer_indices, token_position
from steerjax.vectors.estimators import mean_difference, pca_direction, probe_direction
from steerjax.vectors.learned import check_options, learn_vectors
from steerjax.vectors.vector import SteeringVector

METHODS = ("caa", "pca", "probe", "learned")
#: other names of the methods, in one table: CAA's vector is the mean difference (SteerBoost's
#: ``DiffMean``)
METHOD_ALIASES = {"mean_difference": "caa", "diffmean": "caa"}
SITE = "block_output"
_OPTIONS: dict[str, dict[str, Any]] = {
    "caa": {},
    "pca": {},
    "probe": {"l2_penalty": 1.0, "max_iter": 100},
    "learned": {"steps": 100, "lr": 1e-2, "norm_penalty": 1e-3, "positions": "completion",
                "checkpoint_dir": None, "checkpoint_every": 10},
}
#: MiB (per device) one pass's prefix activations, attention scores and KV cache may take: long
#: prompts are read fewer examples at a time (at least one)
MEMORY_BUDGET_MB = 2048


def canonical_method(method: str) -> str:
    """``method``'s name in :data:`METHODS` (an alias of :data:`METHOD_ALIASES` resolved).

    Raises:
      SteeringError: an unknown method.
    """
    method = METHOD_ALIASES.get(method, method)
    if method not in METHODS:
        raise SteeringError(f"unknown method {method!r}; choose one of {METHODS} (or an alias: "
                            f"{', '.join(f'{a} = {m}' for a, m in METHOD_ALIASES.items())})")
    return method


def train_vector(
    model,
    examples: Iterable[Example | Encoded | Sequence[Any]],
    *,
    layers: Sequence[int] | int,
    method: str = "caa",
    token_index: int = -2,
    batch_size: int = 32,
    seed: int = 0,
    dataset: str | None = None,
    mesh=None,
    progress: bool = True,
    **method_kwargs,
) -> SteeringVector:
    """Train a steering vector for each block in ``layers`` from contrastive examples.

    Args:
      model: a ``LanguageModel``.
      examples: :class:`Example` objects, ``(prompt, positive, negative)`` tuples, or
        :class:`Encoded` token ids (for models without a tokenizer).
      layers: block indices (negative counts from the end); all are read in one pass per batch.
      method: ``"caa"`` (mean of differences), ``"pca"``, ``"probe"`` or ``"learned"``.
      token_index: the token whose activation is read; negative counts from the end of each
        full sequence (``-2``: the answer letter of ``"(A)"``), non-negative from its start.
      batch_size: examples per forward pass (each example's prompt once, then its positive and
        negative completions); fewer for prompts too long for :data:`MEMORY_BUDGET_MB`.
      seed: shuffles the mini-batches of ``"learned"``; the other methods are deterministic.
      dataset: recorded in the metadata; default: the examples' ``meta["dataset"]`` values.
      mesh: a ``("data", "model")`` mesh (:func:`steerjax.sharding.make_mesh`; default
        :func:`steerjax.sharding.default_mesh`): sequences split over ``data``, parameters over
        ``model``, for reading activations and for ``"learned"``'s steps.
      progress: show progress bars (only on a terminal).
      **method_kwargs: ``"probe"``: ``l2_penalty`` (1.0), ``max_iter`` (100), see
        :func:`probe_direction`. ``"learned"``: ``steps`` (100), ``lr`` (1e-2),
        ``norm_penalty`` (1e-3), ``positions`` (``"completion"``), ``checkpoint_dir`` (None: a run
        directory to checkpoint the optimisation in and resume it from) and ``checkpoint_every``
        (10), see :func:`learn_vectors`; the checkpoint options are not recorded in the metadata.

    Returns:
      A :class:`SteeringVector`. ``"caa"`` and ``"learned"`` vectors are in activation units;
      ``"pca"`` and ``"probe"`` vectors have unit norm (as in steering-vectors), and the metadata
      keeps the CAA norms (``caa_norms``) to rescale them.

    Raises:
      DataError: no examples, or an example too short for ``token_index``.
      TokenizerError: text examples for a model without a tokenizer.
      SteeringError: an unknown method or option.
    """
    method = canonical_method(method)
    allowed = _OPTIONS[method]
    unknown = sorted(set(method_kwargs) - set(allowed))
    if unknown:
        accepts = f"it accepts {sorted(allowed)}" if allowed else "it takes no options"
        raise SteeringError(f"method {method!r} has no option(s) {unknown}; {accepts}")
    options = {**allowed, **method_kwargs}
    if method == "learned":
        check_options(options["steps"], options["lr"], options["norm_penalty"], options["positions"])
    cfg = model.config
    idx = layer_indices(layers, cfg.num_layers)
    items, encoded = encode_all(model, examples)
    pos, neg = _contrastive(model, encoded, idx, token_index, batch_size, progress, mesh)
    caa = np.stack([mean_difference(pos[:, j], neg[:, j]) for j in range(len(idx))])  # [L, D]

    info: dict[str, Any] = {}
    if method == "caa":
        vecs = caa
    elif method == "pca":
        vecs = np.stack([pca_direction(pos[:, j], neg[:, j]) for j in range(len(idx))])
    elif method == "probe":
        vecs = np.stack([probe_direction(pos[:, j], neg[:, j], l2_penalty=options["l2_penalty"],
                                         max_iter=options["max_iter"]) for j in range(len(idx))])
    else:
        learned, info = learn_vectors(model, encoded, dict(zip(idx, caa)), steps=options["steps"],
                                      lr=options["lr"], norm_penalty=options["norm_penalty"],
                                      positions=options["positions"], batch_size=batch_size, seed=seed,
                                      mesh=mesh, progress=progress, checkpoint_dir=options["checkpoint_dir"],
                                      checkpoint_every=options["checkpoint_every"])
        vecs = np.stack([learned[li] for li in idx])

    if dataset is None:
        names = sorted({str(ex.meta["dataset"]) for ex in items
                        if isinstance(ex, Example) and ex.meta.get("dataset") is not None})
        dataset = ",".join(names) if names else None
    metadata = {
        "model": str(model.source),
        **({"model_commit": model.commit} if getattr(model, "commit", None) else {}),
        "family": cfg.family,
        "num_layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "layers": list(idx),
        "site": SITE,
        "operator": "add",
        "method": method,
        "dataset": dataset,
        "token_index": int(token_index),
        "n_examples": len(encoded),
        "caa_norms": [float(np.linalg.norm(v)) for v in caa],
        **{k: v for k, v in options.items() if k not in ("checkpoint_dir", "checkpoint_every")},
        **({"seed": int(seed)} if method == "learned" else {}),
        **info,
    }
    return SteeringVector({li: vecs[j] for j, li in enumerate(idx)}, metadata)


def contrastive_activations(
    model,
    examples: Iterable[Example | Encoded | Sequence[Any]],
    layers: Sequence[int] | int,
    token_index: int = -2,
    *,
    batch_size: int = 32,
    mesh=None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Residual-stream activations of the positive and negative full sequences at one token.

    The token is located from each full sequence's own end (or start). Each example's prompt is
    computed once and both completions continue its KV cache; a token inside the shared prompt
    (``-2`` with a one-token completion) is read there, the same for both. The numbers are those
    of reading each full sequence on its own (:func:`steerjax.vectors.read_activations`), up to
    float rounding (~1e-6). Examples of similar prompt lengths share a pass (sorted, padded to a
    bucket), so the last batch alone may be short.

    Args:
      model: a ``LanguageModel``.
      examples: as in :func:`train_vector`.
      layers: block indices (negative counts from the end), all read in one pass per batch.
      token_index: as in :func:`train_vector`.
      batch_size: examples per forward pass (fewer for prompts too long for :data:`MEMORY_BUDGET_MB`).
      mesh: as in :func:`train_vector`.
      progress: show a progress bar (only on a terminal).

    Returns:
      ``(positive, negative)``, each float32 ``[n_examples, len(layers), D]``.
    """
    idx = layer_indices(layers, model.config.num_layers)
    _, encoded = encode_all(model, examples)
    return _contrastive(model, encoded, idx, token_index, batch_size, progress, mesh)


def _contrastive(model, encoded: list[Encoded], idx: list[int], token_index: int, batch_size: int,
                 progress: bool, mesh) -> tuple[np.ndarray, np.ndarray]:
    """``(positive, negative)`` activations, each example's shared prefix computed once.

    An example's two full sequences agree up to the end of its prompt, and causal attention makes
    their activations there equal. Each example is split at ``min(prompt length, both read
    positions)``: the prefix before the split runs once (its KV cache), and the two
    continuations (the rest of each full sequence, holding its read token) run against it
    (:func:`steerjax.models.transformer.forward` with ``prefix=``). With ``token_index=-2`` and a
    completion of one token the read token is the prompt's last, so the split moves one token
    back and both continuations start with it. Only the blocks up to the deepest read one run.

    Examples are sorted by prefix length and batched ``batch_size`` at a time (fewer where a long
    prompt would exceed :data:`MEMORY_BUDGET_MB`); a batch's prefixes are left-padded to an
    :data:`~steerjax.data.batch.ACTIVATIONS` bucket, its continuations right-padded to a power
    of two.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise SteeringError(f"batch_size must be a positive int, got {batch_size!r}")
    n = len(encoded)
    reads = np.asarray([[token_position(len(e.prompt) + len(c), token_index, f"example {i}'s full sequence")
                         for c in (e.positive, e.negative)] for i, e in enumerate(encoded)], np.int64)  # [N, 2]
    split = np.minimum(reads.min(axis=1), [len(e.prompt) for e in encoded])
    conts = [((e.prompt + e.positive)[s:], (e.prompt + e.negative)[s:]) for e, s in zip(encoded, split.tolist())]
    cols = (reads - split[:, None]).astype(np.int32)  # the read token's column in its continuation

    cfg = model.config
    mesh = shd.default_mesh(mesh)
    params = model.params
    if mesh is not None:
        shd.check_mesh(mesh, cfg)
        params = shd.shard_params(params, cfg, mesh)
    blocks = max(idx) + 1
    dtype = param_dtype(params)
    reserved = memory.block_bytes(cfg, dtype) // shd.axis_sizes(mesh)["model"]
    d = shd.data_size(mesh)

    def cap(chunk) -> tuple[int, int, int]:
        tp = ACTIVATIONS(int(split[chunk].max()))
        tc = pow2(max(len(c) for i in chunk for c in conts[i]))
        per_example = _bytes_per_example(cfg, blocks, tp, tc, dtype)
        return tp, tc, memory.examples_per_chunk(per_example, MEMORY_BUDGET_MB, data=d, reserved=reserved,
                                                 cap=batch_size)

    order = np.argsort(split, kind="stable")
    batches = []
    start = 0
    while start < n:
        k = min(batch_size, n - start)
        tp, tc, most = cap(order[start:start + k])
        if most < k:  # long prompts: fewer examples per pass (the width can only shrink)
            k = most
            tp, tc, _ = cap(order[start:start + k])
        batches.append((order[start:start + k], tp, tc))
        start += k

    layer_idx = shd.put(np.asarray(idx, np.int32), mesh, batch=False)
    out = np.empty((n, 2, len(idx), cfg.hidden_size), np.float32)
    for chunk, tp, tc in tqdm(batches, desc="extracting activations", unit="batch", disable=None if progress else True):
        prompt = TokenBatch.pad([encoded[i].prompt[:split[i]] for i in chunk], side="left", width=tp)
        cont = TokenBatch.pad([c for i in chunk for c in conts[i]], side="right", width=tc)
        cont_ids, cont_valid = (x.reshape(len(chunk), 2, tc) for x in (cont.ids, cont.valid))
        cont_pos = np.broadcast_to(split[chunk][:, None, None] + np.arange(tc)[None, None, :],
                                   (len(chunk), 2, tc)).astype(np.int32)  # continuing the prefix
        placed = shd.put_batch((prompt.ids, prompt.valid, cont_ids, cont_valid, cont_pos, cols[chunk]), mesh)
        acts = _pair_reads(params, cfg, *placed, layer_idx, blocks=blocks)
        out[chunk] = shd.to_host(acts)[:len(chunk)]
    return out[:, 0], out[:, 1]


def _bytes_per_example(cfg, blocks: int, tp: int, tc: int, dtype) -> int:
    """Peak bytes one example adds to a pass of :func:`_pair_reads` (upper estimate, parameters
    excluded): its prefix (activations, float32 attention scores and softmax, the KV cache of
    ``blocks`` blocks) and its two continuations (activations, attention scores against the
    prefix, every block's output)."""
    f = jnp.dtype(dtype).itemsize
    width = cfg.hidden_size * 6 + cfg.intermediate_size * 3
    return int(tp * width * f + 3 * cfg.num_heads * tp * tp * 4
               + blocks * 2 * cfg.num_kv_heads * tp * cfg.head_dim * f
               + 2 * tc * (width * f + 3 * cfg.num_heads * (tp + tc) * 4 + blocks * cfg.hidden_size * f))


@functools.partial(jax.jit, static_argnames=("cfg", "blocks"))
def _pair_reads(params, cfg, prompt_ids, prompt_valid, cont_ids, cont_valid, cont_pos, cols, layer_idx, *, blocks):
    """float32 ``[E, 2, len(layer_idx), D]``: the residual stream after blocks ``layer_idx`` at
    column ``cols [E, 2]`` of each example's two continuations ``[E, 2, TC]`` of its left-padded
    prefix ``[E, TP]``."""
    params, cfg = first_blocks(params, cfg, blocks)
    e, _, tc = cont_ids.shape
    cache = prefill(params, cfg, prompt_ids, prompt_valid, dtype=param_dtype(params))
    flat = lambda x: x.reshape(2 * e, *x.shape[2:])  # noqa: E731 - row 2e + c continues prefix e
    out = forward(params, cfg, flat(cont_ids), positions=flat(cont_pos), valid=flat(cont_valid), prefix=cache,
                  collect_layers=True)
    h = out.layers[layer_idx][:, jnp.arange(2 * e), flat(cols)]  # [L, 2E, D]
    return h.astype(jnp.float32).swapaxes(0, 1).reshape(e, 2, h.shape[0], h.shape[-1])


__all__ = ["MEMORY_BUDGET_MB", "METHODS", "METHOD_ALIASES", "SITE", "canonical_method", "contrastive_activations",
           "train_vector"]
