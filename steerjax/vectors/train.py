"""Steering vectors from contrastive examples: :func:`train_vector` and the activations it reads.

Every method starts from the same activations: for each example the model reads the full token
sequence ``prompt + positive`` and ``prompt + negative`` and keeps the residual stream after the
requested blocks (the steering site, ``block_output``) at one token, ``token_index`` (default
``-2``: the answer letter of a ``"(A)"`` completion). :func:`contrastive_activations` returns
them (through :func:`steerjax.vectors.read_activations`); :func:`train_vector` turns them into a
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

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from steerjax.data.batch import ACTIVATIONS
from steerjax.data.examples import Encoded, Example, encode_all
from steerjax.errors import SteeringError
from steerjax.vectors.activations import layer_indices, read_activations, token_position
from steerjax.vectors.estimators import mean_difference, pca_direction, probe_direction
from steerjax.vectors.learned import check_options, learn_vectors
from steerjax.vectors.vector import SteeringVector

METHODS = ("caa", "pca", "probe", "learned")
SITE = "block_output"
_OPTIONS: dict[str, dict[str, Any]] = {
    "caa": {},
    "pca": {},
    "probe": {"l2_penalty": 1.0, "max_iter": 100},
    "learned": {"steps": 100, "lr": 1e-2, "norm_penalty": 1e-3, "positions": "completion"},
}


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
      batch_size: examples per forward pass (each gives a positive and a negative sequence).
      seed: shuffles the mini-batches of ``"learned"``; the other methods are deterministic.
      dataset: recorded in the metadata; default: the examples' ``meta["dataset"]`` values.
      mesh: a ``("data", "model")`` mesh (:func:`steerjax.sharding.make_mesh`; default
        :func:`steerjax.sharding.default_mesh`): sequences split over ``data``, parameters over
        ``model``, for reading activations and for ``"learned"``'s steps.
      progress: show progress bars (only on a terminal).
      **method_kwargs: ``"probe"``: ``l2_penalty`` (1.0), ``max_iter`` (100), see
        :func:`probe_direction`. ``"learned"``: ``steps`` (100), ``lr`` (1e-2),
        ``norm_penalty`` (1e-3), ``positions`` (``"completion"``), see :func:`learn_vectors`.

    Returns:
      A :class:`SteeringVector`. ``"caa"`` and ``"learned"`` vectors are in activation units;
      ``"pca"`` and ``"probe"`` vectors have unit norm (as in steering-vectors), and the metadata
      keeps the CAA norms (``caa_norms``) to rescale them.

    Raises:
      DataError: no examples, or an example too short for ``token_index``.
      TokenizerError: text examples for a model without a tokenizer.
      SteeringError: an unknown method or option.
    """
    if method not in METHODS:
        raise SteeringError(f"unknown method {method!r}; choose one of {METHODS}")
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
                                      mesh=mesh, progress=progress)
        vecs = np.stack([learned[li] for li in idx])

    if dataset is None:
        names = sorted({str(ex.meta["dataset"]) for ex in items
                        if isinstance(ex, Example) and ex.meta.get("dataset") is not None})
        dataset = ",".join(names) if names else None
    metadata = {
        "model": str(model.source),
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
        **options,
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

    Positive and negative sequences share batches (right-padded, with an attention mask); the
    token is located from each sequence's own end (or start), so padding never moves it.

    Args:
      model: a ``LanguageModel``.
      examples: as in :func:`train_vector`.
      layers: block indices (negative counts from the end), all read in one pass per batch.
      token_index: as in :func:`train_vector`.
      batch_size: examples per forward pass.
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
    """``(positive, negative)`` activations: each pass reads ``batch_size`` examples' positive
    then negative sequences."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise SteeringError(f"batch_size must be a positive int, got {batch_size!r}")
    seqs = [e.prompt + e.positive for e in encoded] + [e.prompt + e.negative for e in encoded]
    n, b = len(encoded), min(batch_size, len(encoded))
    for i, s in enumerate(seqs):
        token_position(len(s), token_index, f"example {i % n}'s full sequence")
    order = np.concatenate([np.r_[np.arange(s, min(s + b, n)), n + np.arange(s, min(s + b, n))]
                            for s in range(0, n, b)])
    acts = read_activations(model, [seqs[i] for i in order], idx, reduce=token_index, batch_size=2 * b,
                            buckets=ACTIVATIONS, mesh=mesh, progress=progress, desc="extracting activations")
    out = np.empty_like(acts)
    out[order] = acts
    return out[:n], out[n:]


__all__ = ["METHODS", "SITE", "contrastive_activations", "train_vector"]
