"""Steering vectors from contrastive examples: extraction, training methods, and the vector object.

Every method starts from the same activations: for each example the model reads the full token
sequence ``prompt + positive`` and ``prompt + negative`` and keeps the residual stream after the
requested blocks (the steering site, ``block_output``) at one token, ``token_index`` (default
``-2``: the answer letter of a ``"(A)"`` completion). :func:`contrastive_activations` returns
them; :func:`train_vector` turns them into a :class:`SteeringVector`:

* ``"caa"``: contrastive activation addition, the mean of ``positive - negative``
  (steering-vectors' ``mean_aggregator``);
* ``"pca"``: the first principal component of the differences (:func:`pca_direction`);
* ``"probe"``: a logistic-regression direction (:func:`probe_direction`);
* ``"learned"``: a vector optimised by gradient ascent on the log-probability margin of the
  positive completion under steering (:func:`learn_vectors`).

Example::

    vec = train_vector(model, [(prompt, "(A)", "(B)"), ...], layers=[9, 12])
    vec.save("caa.safetensors")
    logits = model.logits(ids, steering=vec.to_steering(model, multipliers=2.0))
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from steerjax.data.examples import DataError, Encoded, Example, encode_all
from steerjax.errors import SteeringError
from steerjax.models.transformer import forward, positions_from_mask, unembed
from steerjax.steering import io
from steerjax.steering.core import NO_END, Steering, normalize_layer

METHODS = ("caa", "pca", "probe", "learned")
SITE = "block_output"
LEARNED_POSITIONS = ("completion", "all")
_OPTIONS: dict[str, dict[str, Any]] = {
    "caa": {},
    "pca": {},
    "probe": {"l2_penalty": 1.0, "max_iter": 100},
    "learned": {"steps": 100, "lr": 1e-2, "norm_penalty": 1e-3, "positions": "completion"},
}
_LENGTH_BUCKET = 16


# ----------------------------------------------------------------------------- the vector object


@dataclasses.dataclass
class SteeringVector:
    """One ``[D]`` vector per block, with how it was made.

    Attributes:
      vectors: block index (``>= 0``) -> float32 ``[D]`` vector, added to that block's output.
      metadata: JSON-serializable facts: ``model``, ``layers``, ``site`` (``"block_output"``),
        ``operator``, ``method``, ``dataset``, ``token_index``, ``n_examples``, method options...
    """

    vectors: dict[int, np.ndarray]
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.vectors, Mapping) or not self.vectors:
            raise SteeringError("a SteeringVector needs at least one {layer: vector} entry")
        vectors = {}
        for layer, vec in self.vectors.items():
            if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
                raise SteeringError(f"layer keys must be block indices >= 0, got {layer!r}")
            arr = np.asarray(vec, dtype=np.float32)
            if arr.ndim != 1:
                raise SteeringError(f"the vector for layer {layer} must be 1-D [D], got shape {arr.shape}")
            vectors[int(layer)] = arr
        widths = {v.shape[0] for v in vectors.values()}
        if len(widths) > 1:
            raise SteeringError(f"vectors have different widths {sorted(widths)}")
        self.vectors = dict(sorted(vectors.items()))
        self.metadata = dict(self.metadata or {})

    @property
    def layers(self) -> list[int]:
        return list(self.vectors)

    @property
    def width(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def norms(self) -> dict[int, float]:
        """L2 norm of each block's vector."""
        return {layer: float(np.linalg.norm(v)) for layer, v in self.vectors.items()}

    def save(self, path) -> None:
        """Write a steerjax safetensors file (``layer.{l}`` tensors plus the metadata)."""
        io.save_vectors(path, self.vectors, metadata=self.metadata)

    @classmethod
    def load(cls, path, *, layer: int | None = None) -> SteeringVector:
        """Read any file :func:`steerjax.steering.io.load_vectors` reads (safetensors, llama.cpp
        GGUF control vectors, ``.npy`` with ``layer=``)."""
        vectors, metadata = io.load_vectors(path, layer=layer)
        return cls(vectors, metadata)

    def export_gguf(self, path, *, model_hint: str | None = None) -> None:
        """Write a llama.cpp control vector (see :func:`steerjax.steering.io.export_control_vector_gguf`).

        Args:
          model_hint: llama.cpp model family; default: the ``family`` in the metadata.
        """
        hint = model_hint or self.metadata.get("model_hint") or self.metadata.get("family")
        if not hint:
            raise SteeringError("no model_hint: pass model_hint= (e.g. 'llama'); the metadata names no family")
        io.export_control_vector_gguf(path, self.vectors, model_hint=str(hint))

    def to_steering(self, model, multipliers: Any = 1.0, *, layers: Sequence[int] | None = None,
                    positions: Any = "all", operator: str | None = None) -> Steering:
        """A :class:`Steering` that applies these vectors to ``model``.

        Args:
          model: a ``LanguageModel`` (or its ``ModelConfig``).
          multipliers: a scalar or ``[B]``, as in :meth:`Steering.create`.
          layers: the blocks to steer (negative counts from the end); default: every stored block.
          positions: as in :meth:`Steering.create`.
          operator: default: the ``operator`` in the metadata, else ``"add"``.

        Raises:
          SteeringError: the vectors' width differs from the model's hidden size, or a requested
            block has no vector.
        """
        cfg = getattr(model, "config", model)
        if self.width != cfg.hidden_size:
            trained_on = self.metadata.get("model")
            where = f" (it was made on {trained_on})" if trained_on else ""
            raise SteeringError(
                f"this steering vector has width {self.width} but the model has hidden size "
                f"{cfg.hidden_size}{where}; use a vector trained on this model"
            )
        if layers is None:
            chosen = self.vectors
        else:
            if isinstance(layers, (int, np.integer)):
                layers = [layers]
            chosen = {}
            for layer in layers:
                li = normalize_layer(layer, cfg.num_layers)
                if li not in self.vectors:
                    raise SteeringError(f"no vector for block {layer}; this steering vector has blocks {self.layers}")
                chosen[li] = self.vectors[li]
        return Steering.create(cfg, chosen, multipliers, positions=positions,
                               operator=operator or self.metadata.get("operator", "add"))


# ----------------------------------------------------------------------------- training


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
        _check_learned(options["steps"], options["lr"], options["norm_penalty"], options["positions"])
    cfg = model.config
    idx = _layer_indices(layers, cfg.num_layers)
    items, encoded = encode_all(model, examples)
    pos, neg = _activations(model, encoded, idx, token_index, batch_size, progress)
    caa = (pos.astype(np.float64) - neg.astype(np.float64)).mean(axis=0).astype(np.float32)  # [L, D]

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
                                      progress=progress)
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
      progress: show a progress bar (only on a terminal).

    Returns:
      ``(positive, negative)``, each float32 ``[n_examples, len(layers), D]``.
    """
    idx = _layer_indices(layers, model.config.num_layers)
    _, encoded = encode_all(model, examples)
    return _activations(model, encoded, idx, token_index, batch_size, progress)


def mean_difference(pos_acts, neg_acts) -> np.ndarray:
    """CAA: ``mean(pos - neg)`` over examples (steering-vectors' ``mean_aggregator``).

    Args:
      pos_acts, neg_acts: ``[n, D]`` paired activations.
    """
    pos, neg = _paired(pos_acts, neg_acts)
    return (pos - neg).mean(axis=0).astype(np.float32)


def pca_direction(pos_acts, neg_acts) -> np.ndarray:
    """First principal component of the differences ``pos - neg``, as steering-vectors'
    ``pca_aggregator``.

    The PCA is *uncentered*: the top right-singular vector of the ``[n, D]`` difference matrix.
    (steering-vectors computes it on the differences and their negatives together, whose mean
    is zero, which gives the same vector.) The sign is chosen so that the mean projection of
    the differences is positive (a zero mean keeps the SVD's sign); the norm is 1.

    Args:
      pos_acts, neg_acts: ``[n, D]`` paired activations.
    """
    pos, neg = _paired(pos_acts, neg_acts)
    deltas = pos - neg
    _, _, vt = np.linalg.svd(deltas, full_matrices=False)
    vec = vt[0]
    if np.mean(deltas @ vec) < 0:
        vec = -vec
    return vec.astype(np.float32)


def probe_direction(pos_acts, neg_acts, *, l2_penalty: float = 1.0, max_iter: int = 100) -> np.ndarray:
    """Unit weight vector of an L2-regularised logistic regression, as steering-vectors'
    ``logistic_aggregator``.

    Each pair is centred on its own mean ``(pos + neg) / 2``; the centred positives get label
    +1, the centred negatives -1, and there is no intercept. The weights ``w`` minimise

    ``sum_i log(1 + exp(-y_i w.x_i)) + l2_penalty / 2 * |w|^2``,

    which is scikit-learn's ``LogisticRegression(fit_intercept=False, C=1 / l2_penalty)``
    (steering-vectors' default is ``C=1``). The fit is an exact Newton method in float64 (no
    scikit-learn); the result is normalised to unit length.

    Args:
      pos_acts, neg_acts: ``[n, D]`` paired activations.
      l2_penalty: the L2 penalty strength (``> 0``).
      max_iter: the most Newton steps.
    """
    if not l2_penalty > 0:
        raise SteeringError(f"l2_penalty must be > 0, got {l2_penalty}")
    pos, neg = _paired(pos_acts, neg_acts)
    mean = (pos + neg) / 2
    x = np.concatenate([pos - mean, neg - mean])
    y = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
    w = _logistic_newton(x, y, float(l2_penalty), int(max_iter))
    norm = np.linalg.norm(w)
    return (w / norm if norm > 0 else w).astype(np.float32)


def learn_vectors(
    model,
    examples: Iterable[Example | Encoded | Sequence[Any]],
    init: Mapping[int, Any],
    *,
    steps: int = 100,
    lr: float = 1e-2,
    norm_penalty: float = 1e-3,
    positions: str = "completion",
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """Optimise steering vectors for the log-probability margin of the positive completions.

    All blocks in ``init`` are trained jointly (steered together, one penalty). With ``v_l`` the
    vector of block ``l``, the loss minimised with Adam is

    ``-mean_i [log p(positive_i | prompt_i; v) - log p(negative_i | prompt_i; v)]
    + norm_penalty * sum_l |v_l|^2``,

    where ``log p(completion)`` sums the completion tokens' log-probabilities and the model is
    steered with operator ``add`` and multiplier 1. Gradients flow through
    :func:`steerjax.models.transformer.forward` with the vectors as traced arrays.

    Args:
      model: a ``LanguageModel``.
      examples: as in :func:`train_vector`.
      init: block index -> ``[D]`` starting vector (``train_vector`` uses the CAA vector).
      steps: Adam steps.
      lr: Adam learning rate, in activation units per step.
      norm_penalty: weight of the squared-L2 penalty (``>= 0``); at a stationary point
        ``|v| = |grad margin| / (2 norm_penalty)``, so larger values give shorter vectors.
      positions: ``"completion"``: steer the completion tokens only (from the first completion
        token on; the first completion token's own probability is then unaffected), or
        ``"all"``: every token.
      batch_size: examples per step; with more examples, steps cycle through seeded shuffles.
      seed: the shuffle seed.
      progress: show a progress bar (only on a terminal).

    Returns:
      ``({layer: float32 [D]}, info)`` with ``info``: ``objective_init``, ``objective_final``
      (mean margin over all examples, before and after), ``norm_init``, ``norm_final``.
    """
    import optax
    from tqdm.auto import tqdm

    _check_learned(steps, lr, norm_penalty, positions)
    cfg = model.config
    _, encoded = encode_all(model, examples)
    if not init:
        raise SteeringError("init is empty: give a starting {layer: vector}")
    idx = _layer_indices(list(init), cfg.num_layers)
    v0 = np.stack([np.asarray(init[layer], np.float32) for layer in init])
    if v0.ndim != 2 or v0.shape[1] != cfg.hidden_size:
        raise SteeringError(f"init vectors must be [{cfg.hidden_size}] (the model's hidden size), got {v0.shape[1:]}")
    if positions == "completion" and all(len(e.positive) == 1 and len(e.negative) == 1 for e in encoded):
        raise SteeringError(
            "every completion is a single token, so with positions='completion' the objective does "
            "not depend on the vector (the first completion token is predicted from the unsteered "
            "prompt); use positions='all'"
        )
    data = _completion_data(encoded, positions)
    layer_idx = jnp.asarray(idx, jnp.int32)
    n = len(encoded)
    b = max(1, min(batch_size, n))

    def objective(v) -> float:
        return float(np.mean(_margins_batched(model, data, layer_idx, v, b)))

    obj0 = objective(v0)
    opt = optax.adam(lr)
    v = jnp.asarray(v0)
    state = opt.init(v)
    rng = np.random.default_rng(seed)
    order = np.arange(0)
    bar = tqdm(range(steps), desc="learning vector", unit="step", disable=None if progress else True)
    for _ in bar:
        if len(order) < b:
            order = np.concatenate([order, rng.permutation(n)])
        rows, order = order[:b], order[b:]
        loss, grad = _loss_and_grad(model.params, cfg, v, layer_idx, jnp.float32(norm_penalty),
                                    *(jnp.asarray(a[rows]) for a in data))
        updates, state = opt.update(grad, state, v)
        v = optax.apply_updates(v, updates)
        bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
    v = np.asarray(v, np.float32)
    info = {
        "objective_init": obj0,
        "objective_final": objective(v),
        "norm_init": [float(x) for x in np.linalg.norm(v0, axis=-1)],
        "norm_final": [float(x) for x in np.linalg.norm(v, axis=-1)],
    }
    return {li: v[j] for j, li in enumerate(idx)}, info


def logprob_margins(
    model,
    examples: Iterable[Example | Encoded | Sequence[Any]],
    vectors: Mapping[int, Any] | SteeringVector | None = None,
    *,
    positions: str = "completion",
    batch_size: int = 32,
) -> np.ndarray:
    """Per-example ``log p(positive) - log p(negative)`` (summed over completion tokens), with
    ``vectors`` added (multiplier 1) from the first completion token on (``"completion"``) or
    everywhere (``"all"``): the objective of :func:`learn_vectors`. ``None``: unsteered."""
    if positions not in LEARNED_POSITIONS:
        raise SteeringError(f"positions={positions!r}: use one of {LEARNED_POSITIONS}")
    cfg = model.config
    _, encoded = encode_all(model, examples)
    if isinstance(vectors, SteeringVector):
        vectors = vectors.vectors
    if vectors:
        idx = _layer_indices(list(vectors), cfg.num_layers)
        v = np.stack([np.asarray(vectors[layer], np.float32) for layer in vectors])
        if v.shape[1] != cfg.hidden_size:
            raise SteeringError(f"vectors have width {v.shape[1]} but the model has hidden size {cfg.hidden_size}")
    else:
        idx, v = [0], np.zeros((1, cfg.hidden_size), np.float32)
    data = _completion_data(encoded, positions)
    return _margins_batched(model, data, jnp.asarray(idx, jnp.int32), v, max(1, min(batch_size, len(encoded))))


# ----------------------------------------------------------------------------- internals


def _layer_indices(layers, num_layers: int) -> list[int]:
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [layers]
    idx = [normalize_layer(layer, num_layers) for layer in layers]
    if not idx:
        raise SteeringError("layers is empty: name at least one block")
    if len(set(idx)) != len(idx):
        raise SteeringError(f"layers {list(layers)} name a block twice")
    return idx


def _check_learned(steps, lr, norm_penalty, positions) -> None:
    if positions not in LEARNED_POSITIONS:
        raise SteeringError(f"positions={positions!r}: use one of {LEARNED_POSITIONS}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise SteeringError(f"steps must be an int >= 0, got {steps!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise SteeringError(f"lr must be a number > 0, got {lr!r}")
    if not isinstance(norm_penalty, (int, float)) or not norm_penalty >= 0:
        raise SteeringError(f"norm_penalty must be a number >= 0, got {norm_penalty!r}")


def _read_index(length: int, token_index: int, i: int) -> int:
    if isinstance(token_index, bool) or not isinstance(token_index, (int, np.integer)):
        raise SteeringError(f"token_index must be an int, got {token_index!r}")
    pos = length + token_index if token_index < 0 else token_index
    if not 0 <= pos < length:
        raise DataError(
            f"token_index {token_index} is outside example {i}'s full sequence of {length} tokens; "
            "use a smaller |token_index|"
        )
    return pos


def _bucket(n: int) -> int:
    return -(-n // _LENGTH_BUCKET) * _LENGTH_BUCKET


def _activations(model, encoded: list[Encoded], idx: list[int], token_index: int, batch_size: int,
                 progress: bool) -> tuple[np.ndarray, np.ndarray]:
    from tqdm.auto import tqdm

    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise SteeringError(f"batch_size must be a positive int, got {batch_size!r}")
    seqs_pos = [e.prompt + e.positive for e in encoded]
    seqs_neg = [e.prompt + e.negative for e in encoded]
    read_pos = [_read_index(len(s), token_index, i) for i, s in enumerate(seqs_pos)]
    read_neg = [_read_index(len(s), token_index, i) for i, s in enumerate(seqs_neg)]
    n, b = len(encoded), min(batch_size, len(encoded))
    out = np.zeros((2, n, len(idx), model.config.hidden_size), np.float32)
    starts = range(0, n, b)
    for start in tqdm(starts, desc="extracting activations", unit="batch", disable=None if progress else True):
        chunk = list(range(start, min(start + b, n)))
        rows = [seqs_pos[i] for i in chunk] + [seqs_neg[i] for i in chunk]
        reads = [read_pos[i] for i in chunk] + [read_neg[i] for i in chunk]
        rows += [rows[0]] * (2 * b - len(rows))  # a fixed batch shape: one compiled program
        reads += [reads[0]] * (2 * b - len(reads))
        t = _bucket(max(map(len, rows)))
        ids = np.zeros((2 * b, t), np.int32)
        mask = np.zeros((2 * b, t), bool)
        for r, seq in enumerate(rows):
            ids[r, : len(seq)] = seq
            mask[r, : len(seq)] = True
        hs = model.hidden_states(ids, mask, layers=idx)  # [L, 2b, T, D]
        acts = np.asarray(_gather_tokens(hs, jnp.asarray(reads, jnp.int32)), np.float32)  # [L, 2b, D]
        m = len(chunk)
        out[0, start:start + m] = acts[:, :m].transpose(1, 0, 2)
        out[1, start:start + m] = acts[:, m:2 * m].transpose(1, 0, 2)
    return out[0], out[1]


@jax.jit
def _gather_tokens(hs, reads):
    return hs[:, jnp.arange(hs.shape[1]), reads].astype(jnp.float32)


def _paired(pos_acts, neg_acts) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(pos_acts, np.float64)
    neg = np.asarray(neg_acts, np.float64)
    if pos.ndim != 2 or pos.shape != neg.shape or pos.shape[0] == 0:
        raise SteeringError(
            f"positive and negative activations must be paired [n, D] arrays with n >= 1, got "
            f"{pos.shape} and {neg.shape}"
        )
    return pos, neg


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _logistic_newton(x: np.ndarray, y: np.ndarray, lam: float, max_iter: int) -> np.ndarray:
    """Minimise ``sum log(1 + exp(-y x.w)) + lam/2 |w|^2`` by damped Newton steps."""
    n, d = x.shape
    w = np.zeros(d)

    def f(w):
        return np.sum(np.logaddexp(0.0, -y * (x @ w))) + 0.5 * lam * (w @ w)

    fw = f(w)
    for _ in range(max_iter):
        z = x @ w
        g = -x.T @ (y * _sigmoid(-y * z)) + lam * w
        s = _sigmoid(z) * _sigmoid(-z)
        if n < d:  # Woodbury: (lam I + A^T A)^-1 g with A = sqrt(s) x, through an n x n system
            a = np.sqrt(s)[:, None] * x
            inner = np.linalg.solve(lam * np.eye(n) + a @ a.T, a @ g)
            step = (g - a.T @ inner) / lam
        else:
            step = np.linalg.solve(lam * np.eye(d) + (x * s[:, None]).T @ x, g)
        decrement = g @ step
        if decrement <= 1e-24 * max(1.0, fw):
            break
        t = 1.0
        while True:
            w_new = w - t * step
            f_new = f(w_new)
            if f_new <= fw - 0.25 * t * decrement or t < 1e-10:
                break
            t *= 0.5
        w, fw = w_new, f_new
        if decrement <= 1e-20 * max(1.0, fw):
            break
    return w


def _completion_data(encoded: list[Encoded], positions: str) -> tuple[np.ndarray, ...]:
    """Arrays with a leading example axis and a (positive, negative) axis: ids, valid, steering
    start, the positions whose logits predict completion tokens, those tokens, and their mask."""
    n = len(encoded)
    t = _bucket(max(len(e.prompt) + max(len(e.positive), len(e.negative)) for e in encoded))
    c = max(max(len(e.positive), len(e.negative)) for e in encoded)
    ids = np.zeros((n, 2, t), np.int32)
    valid = np.zeros((n, 2, t), bool)
    start = np.zeros((n, 2), np.int32)
    tgt_pos = np.zeros((n, 2, c), np.int32)
    tgt_tok = np.zeros((n, 2, c), np.int32)
    tgt_mask = np.zeros((n, 2, c), bool)
    for i, e in enumerate(encoded):
        p = len(e.prompt)
        for k, comp in enumerate((e.positive, e.negative)):
            seq = e.prompt + comp
            ids[i, k, : len(seq)] = seq
            valid[i, k, : len(seq)] = True
            start[i, k] = p if positions == "completion" else 0
            tgt_pos[i, k, : len(comp)] = np.arange(p - 1, p - 1 + len(comp))
            tgt_tok[i, k, : len(comp)] = comp
            tgt_mask[i, k, : len(comp)] = True
    return ids, valid, start, tgt_pos, tgt_tok, tgt_mask


def _margins_batched(model, data, layer_idx, v, b: int) -> np.ndarray:
    n = data[0].shape[0]
    out = []
    for s in range(0, n, b):
        rows = np.arange(s, s + b) % n  # a fixed batch shape; the wrapped rows are dropped
        m = _margins(model.params, model.config, jnp.asarray(v, jnp.float32), layer_idx,
                     *(jnp.asarray(a[rows]) for a in data))
        out.append(np.asarray(m)[: min(b, n - s)])
    return np.concatenate(out).astype(np.float64)


def _margins_fn(params, cfg, v, layer_idx, ids, valid, start, tgt_pos, tgt_tok, tgt_mask):
    b = ids.shape[0]
    flat = lambda a: a.reshape((2 * b,) + a.shape[2:])  # noqa: E731
    ids, valid, start, tgt_pos, tgt_tok, tgt_mask = map(flat, (ids, valid, start, tgt_pos, tgt_tok, tgt_mask))
    vectors = jnp.zeros((cfg.num_layers, 1, cfg.hidden_size), jnp.float32).at[layer_idx, 0].set(v)
    steering = Steering(vectors=vectors, multipliers=jnp.ones((1,), jnp.float32), start=start,
                        end=jnp.full((2 * b,), NO_END, jnp.int32), operator="add")
    out = forward(params, cfg, ids, positions=positions_from_mask(valid), valid=valid, steering=steering)
    hidden = jnp.take_along_axis(out.hidden, tgt_pos[..., None], axis=1)  # [2b, C, D]
    logp = jax.nn.log_softmax(unembed(params, cfg, hidden), axis=-1)
    tok = jnp.take_along_axis(logp, tgt_tok[..., None], axis=-1)[..., 0]
    seq = jnp.sum(jnp.where(tgt_mask, tok, 0.0), axis=-1).reshape(b, 2)
    return seq[:, 0] - seq[:, 1]


_margins = jax.jit(_margins_fn, static_argnames=("cfg",))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _loss_and_grad(params, cfg, v, layer_idx, norm_penalty, *data):
    def loss(v):
        return -jnp.mean(_margins_fn(params, cfg, v, layer_idx, *data)) + norm_penalty * jnp.sum(v * v)

    return jax.value_and_grad(loss)(v)


__all__ = [
    "METHODS", "SteeringVector", "contrastive_activations", "learn_vectors",
    "logprob_margins", "mean_difference", "pca_direction", "probe_direction", "train_vector",
]
