"""Concepts of the steerability testbed: steering vectors, their layer, and the residual norm.

A :class:`Concept` is one steering direction at one block: a one-layer
:class:`~steerjax.vectors.SteeringVector` whose metadata holds its ``source`` and
``residual_norm``. A strength becomes the multiplier of the vector in one of two scales
(:data:`SCALES`, :meth:`Concept.multiplier`):

* ``"norm"`` (the default): strengths are relative to the residual stream: strength ``s`` gives
  the multiplier ``s * residual_norm / |v|``, so the added vector ``multiplier * v`` has norm
  ``s * residual_norm`` whatever the vector's own norm (``residual_norm`` is the mean norm of the
  residual stream at that block over neutral prompts, see :func:`residual_norm`). ``s = 1`` thus
  adds a vector as long as a typical residual.
* ``"raw"``: the strength is the multiplier itself, ``alpha x v`` with the vector as estimated
  (Fan et al. and their SteerBoost code: ``h + alpha * v`` on a grid of alphas 0.2, 0.4, ... 9.0).
  The added norm then depends on the vector's norm, so a grid carries over between concepts only
  when their vectors are alike (DiffMean vectors of one model, say).

Four sources of vectors (:func:`make_concepts` picks one of the first two by name), all read with
:func:`steerjax.vectors.read_activations`:

* :func:`statement_concepts`: Anthropic persona statements, each dimension's against all
  dimensions' (data from ``$STEERJAX_DATA``);
* :func:`persona_concepts`: CAA (Rimsky et al. 2024) on Anthropic persona dimensions, the mean
  difference of the answer-letter activations of matching vs non-matching A/B answers
  (:func:`steerjax.vectors.train_vector`, data from ``$STEERJAX_DATA``); 135 dimensions.
* :func:`text_concepts`: concept texts vs neutral texts, the difference of mean token activations
  (needs no data; works with token ids for models without a tokenizer).
* :func:`concepts_from_examples`: example banks of positive and negative texts per concept (a
  JSONL file, :func:`read_examples`), by DiffMean or a logistic-regression probe, as Fan et al.
  build their 150 concepts (SteerBoost's banks load with
  :func:`steerjax.data.steerboost.steerboost_examples`).

Concepts are saved as a vector set (:func:`save_concepts`, one safetensors file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from steerjax.data import batch
from steerjax.data.example_banks import UNSTEERED, read_examples
from steerjax.errors import SteeringError, SteerjaxError
from steerjax.steering import normalize_layer
from steerjax.studies.steerability_prediction.config import CONCEPT_SOURCES, EXAMPLE_METHODS, SCALES
from steerjax.vectors import SteeringVector, mean_difference, read_activations

SOURCES = CONCEPT_SOURCES

NEUTRAL_PROMPTS: tuple[str, ...] = (
    "Tell me about your weekend plans.",
    "Describe a city you would like to visit.",
    "What is a good way to spend a rainy afternoon?",
    "Tell me about a hobby you find interesting.",
    "Describe your ideal breakfast.",
    "What should I cook for dinner tonight?",
    "Tell me a short story about a lighthouse.",
    "Describe the view from a mountain top.",
    "What do you think about when you look at the ocean?",
    "Give me some tips for organizing my desk.",
    "Tell me about a book you would recommend.",
    "Describe a typical day at a busy train station.",
    "What makes a good birthday present?",
    "Tell me about the changing of the seasons.",
    "How would you plan a picnic in the park?",
    "Describe a walk through a forest in autumn.",
    "What are some fun things to do at the beach?",
    "Tell me about an interesting animal.",
    "Describe a small village market.",
    "How do I start learning to play the guitar?",
    "What is your favorite kind of weather, and why?",
    "Tell me about a memorable meal.",
    "Describe a cozy living room.",
    "What would you pack for a weekend trip?",
    "Tell me about the night sky.",
    "How can I make my mornings more pleasant?",
    "Describe a garden in early summer.",
    "What are some good games to play with friends?",
    "Tell me about a famous bridge.",
    "Describe the sounds of a city at night.",
    "What is a nice way to thank a neighbor?",
    "Tell me about learning a new language.",
    "Describe a bakery early in the morning.",
    "How would you describe the color blue to someone?",
    "Tell me about a river and the towns along it.",
    "What should I know before adopting a cat?",
    "Describe a snowy winter day.",
    "Tell me about your favorite season.",
    "How do people celebrate the new year?",
    "Describe a long train journey.",
    "What makes a room feel welcoming?",
    "Tell me about a museum you would like to see.",
    "Describe a sunset over the fields.",
    "How can I keep my houseplants healthy?",
    "Tell me about a day at the zoo.",
    "Describe the smell of fresh bread.",
    "What is a good routine for an evening walk?",
    "Tell me about the history of tea.",
    "Describe a quiet library.",
    "What would you do with a free afternoon?",
    "Tell me about a festival in a small town.",
    "Describe a boat trip on a lake.",
    "How would you decorate a small apartment?",
    "Tell me about the moon.",
    "Describe a friendly conversation between two strangers.",
    "What is a simple recipe for soup?",
    "Tell me about a bicycle ride in the countryside.",
    "Describe what a school looks like on the first day of term.",
    "What do you enjoy about music?",
    "Tell me about planning a family dinner.",
)


class Concept(SteeringVector):
    """One steering direction: ``Concept(name, source, vector, layer, residual_norm)``.

    A one-layer :class:`~steerjax.vectors.SteeringVector` (``vectors == {layer: vector}``) whose
    metadata holds ``source`` and ``residual_norm``; the attributes below are views of them.

    Attributes:
      name: unique; ``"none"`` is reserved for unsteered rows.
      source: where the vector came from, e.g. ``"persona:agreeableness"`` or ``"text"``.
      vector: float32 ``[D]``, added at block ``layer``.
      layer: block index (``>= 0``).
      residual_norm: mean residual-stream norm at ``layer`` over neutral prompts; strengths are
        fractions of it (:meth:`multiplier`).
    """

    def __init__(self, name: str, source: str, vector, layer: int, residual_norm: float,
                 metadata: Mapping[str, Any] | None = None):
        if not isinstance(name, str) or not name or name == UNSTEERED:
            raise SteeringError(f"concept name must be a non-empty string other than {UNSTEERED!r}, got {name!r}")
        vector = np.asarray(vector, np.float32)
        if vector.ndim != 1:
            raise SteeringError(f"concept {name!r}: vector must be 1-D [D], got shape {vector.shape}")
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0:
            raise SteeringError(f"concept {name!r}: vector must be finite and non-zero")
        if not (np.isfinite(residual_norm) and residual_norm > 0):
            raise SteeringError(f"concept {name!r}: residual_norm must be > 0, got {residual_norm}")
        meta = {**(metadata or {}), "source": str(source), "residual_norm": float(residual_norm)}
        super().__init__({int(layer): vector}, meta, name)

    @classmethod
    def from_vector(cls, vec: SteeringVector) -> Concept:
        """The concept a one-layer named vector with ``residual_norm`` (and ``source``) in its
        metadata stands for (what :func:`load_concepts` reads back)."""
        if len(vec.vectors) != 1 or "residual_norm" not in vec.metadata:
            raise SteeringError(f"vector {vec.name!r} is not a concept: a concept has one layer and a residual_norm "
                                f"in its metadata (this one has layers {vec.layers})")
        meta = dict(vec.metadata)
        source, rnorm = meta.pop("source", "vector"), meta.pop("residual_norm")
        [(layer, vector)] = vec.vectors.items()
        return cls(vec.name, source, vector, layer, rnorm, meta)

    @property
    def layer(self) -> int:
        return next(iter(self.vectors))

    @property
    def vector(self) -> np.ndarray:
        return self.vectors[self.layer]

    @property
    def source(self) -> str:
        return self.metadata["source"]

    @property
    def residual_norm(self) -> float:
        return self.metadata["residual_norm"]

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector))

    def multiplier(self, strength, scale: str = "norm") -> np.ndarray | float:
        """The factor of :attr:`vector` for ``strength`` in ``scale`` (see the module docstring):
        ``strength * residual_norm / |v|`` for ``"norm"`` (the added vector has norm
        ``|strength| * residual_norm``), ``strength`` itself for ``"raw"`` (alpha x the vector).

        Raises:
          SteerjaxError: an unknown ``scale``.
        """
        check_scale(scale)
        s = np.asarray(strength, np.float64)
        return s * 1.0 if scale == "raw" else s * self.residual_norm / self.norm


def check_scale(scale) -> str:
    """``scale`` if it is one of :data:`SCALES`; else a :class:`SteerjaxError` saying which exist."""
    if scale not in SCALES:
        raise SteerjaxError(f"scale={scale!r}: use 'norm' (strengths are fractions of the residual norm) or "
                            "'raw' (strengths multiply the vector as estimated, alpha x v)")
    return scale


def select(concepts: Sequence[Concept], names: Sequence[str] | None) -> list[Concept]:
    """The concepts named ``names`` (in that order); all of them for ``None``.

    Raises:
      SteerjaxError: an unknown or repeated name.
    """
    by_name = {c.name: c for c in concepts}
    if names is None:
        return list(concepts)
    out = []
    for n in names:
        if n not in by_name:
            import difflib

            close = difflib.get_close_matches(str(n), list(by_name), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise SteerjaxError(f"unknown concept {n!r}{hint} (known: {len(by_name)} concepts)")
        out.append(by_name[n])
    if len({c.name for c in out}) != len(out):
        raise SteerjaxError(f"concept names repeat in {list(names)}")
    return out


# ----------------------------------------------------------------------------- reading


def _stats(model, ids, layer: int, batch_size: int, mesh) -> tuple[np.ndarray, np.ndarray]:
    """Per text: the mean residual after block ``layer`` and its mean norm, over the text's tokens
    but the first (an attention-sink outlier), as float64 ``[N, D]`` and ``[N]``."""
    mean, norm = read_activations(model, ids, [layer], reduce=("mean", "norm"), skip_first=True, side="left",
                                  buckets=batch.ACTIVATIONS, batch_size=batch_size, mesh=mesh)
    return mean[:, 0].astype(np.float64), norm[:, 0].astype(np.float64)


def residual_norm(model, prompts=NEUTRAL_PROMPTS, layer: int = 0, *, chat: bool | None = None,
                  batch_size: int = 16, mesh=None) -> float:
    """Mean norm of the (unsteered) residual stream after block ``layer``: averaged over each
    prompt's tokens (all but the first, whose norm is often an outlier) and then over prompts.
    Prompts are encoded by :func:`steerjax.data.batch.encode` (texts become user messages when the
    tokenizer has a chat template, ``chat=None``); ``mesh`` as in :func:`steerjax.vectors.read_activations`."""
    li = normalize_layer(layer, model.config.num_layers)
    _, norms = _stats(model, batch.encode(model, prompts, chat=chat), li, batch_size, mesh)
    return float(norms.mean())


# ----------------------------------------------------------------------------- concept sources


def make_concepts(model, names: Sequence[str] | None, *, layer: int, source: str = "statements", n: int = 32,
                  seed: int = 0, mesh=None, progress: bool = True) -> list[Concept]:
    """The testbed's concepts: :func:`statement_concepts` (``source="statements"``, ``n``
    statements per dimension) or :func:`persona_concepts` (``source="ab"``, ``n`` A/B pairs per
    dimension) for the persona dimensions ``names`` (``None``: all of them).

    Raises:
      SteerjaxError: an unknown ``source``; DataError: ``STEERJAX_DATA`` unset or an unknown
        dimension.
    """
    if source == "ab":
        return persona_concepts(model, names, layer=layer, n_pairs=n, seed=seed, mesh=mesh, progress=progress)
    if source != "statements":
        raise SteerjaxError(f"concept source {source!r}: use one of {SOURCES}")
    from steerjax.data import list_datasets

    return statement_concepts(model, names or list_datasets("persona"), layer=layer, n_statements=n, seed=seed,
                              mesh=mesh, progress=progress)


def text_concepts(model, texts: Mapping[str, Sequence[Any]], neutral_texts: Sequence[Any], layer: int, *,
                  norm_prompts=None, chat: bool | None = False, batch_size: int = 16, mesh=None) -> list[Concept]:
    """Concepts from concept texts vs neutral texts: ``mean_t h(concept) - mean_t h(neutral)``
    where ``h`` is a text's mean residual after block ``layer`` (first token excluded).

    Args:
      texts: concept name -> texts (or token-id lists).
      neutral_texts: the contrast texts (or token-id lists).
      norm_prompts: prompts for :func:`residual_norm`; default ``neutral_texts``.
      chat: encode texts as chat user messages (default: plain text).
      mesh: as in :func:`steerjax.vectors.read_activations`.
    """
    if not texts:
        raise SteerjaxError("texts is empty: give at least one {concept: [texts]} entry")
    li = normalize_layer(layer, model.config.num_layers)
    neutral_ids = batch.encode(model, list(neutral_texts), chat=chat)
    neutral_mean, neutral_norm = _stats(model, neutral_ids, li, batch_size, mesh)
    if norm_prompts is None:
        rnorm = float(neutral_norm.mean())
    else:
        rnorm = residual_norm(model, norm_prompts, li, batch_size=batch_size, mesh=mesh)
    out = []
    for name, items in texts.items():
        mean, _ = _stats(model, batch.encode(model, list(items), chat=chat), li, batch_size, mesh)
        out.append(Concept(str(name), "text", mean_difference(mean, neutral_mean), li, rnorm))
    select(out, [c.name for c in out])  # rejects repeats
    return out


def statement_concepts(model, names: Sequence[str], *, layer: int, n_statements: int = 32, seed: int = 0,
                       norm_prompts=NEUTRAL_PROMPTS, batch_size: int = 16, mesh=None,
                       progress: bool = True) -> list[Concept]:
    """Contrastive concepts from Anthropic persona statements (``$STEERJAX_DATA``).

    For each dimension, ``n_statements`` of its positive statements (what the persona would say,
    sampled with ``seed``) give ``m_c``, the mean over statements of their mean residual after
    block ``layer`` (plain text, first token excluded). The vector is ``m_c - mean_c' m_c'``: the
    dimension's statements against all dimensions' statements, so what every statement shares
    (first-person, declarative style) cancels and what is particular to the dimension remains.
    Unlike :func:`persona_concepts` (A/B answer letters), these directions are about what the
    text says, so steering with them shows in the rollouts. Needs at least two dimensions.
    ``mesh`` as in :func:`steerjax.vectors.read_activations`.
    """
    from tqdm.auto import tqdm

    from steerjax.data import list_datasets, load_dataset
    from steerjax.data.prompt_steering import persona_statements

    names = list(names)
    available = set(list_datasets("persona"))
    for n in names:
        if n not in available:
            load_dataset(n)  # raises DataError with close matches
            raise SteerjaxError(f"{n!r} is not a persona dimension")
    if len(names) < 2 or len(set(names)) != len(names):
        raise SteerjaxError(f"statement concepts contrast dimensions with each other: give two or more distinct "
                            f"names, got {names}")
    if n_statements < 1:
        raise SteerjaxError(f"n_statements must be >= 1, got {n_statements}")
    li = normalize_layer(layer, model.config.num_layers)
    statement_means = []  # per dimension: [statements, D]
    for n in tqdm(names, desc="concept vectors", unit="concept", disable=None if progress else True):
        rows = persona_statements(n)
        pos = rows.loc[rows["direction"] == "positive", "statement"]
        texts = pos.sample(n=min(n_statements, len(pos)), random_state=seed).tolist()
        statement_means.append(_stats(model, batch.encode(model, texts, chat=False), li, batch_size, mesh)[0])
    means = np.stack([m.mean(axis=0) for m in statement_means])  # m_c per dimension
    rnorm = residual_norm(model, norm_prompts, li, batch_size=batch_size, mesh=mesh)
    return [Concept(n, f"persona-statements:{n}", mean_difference(m, means), li, rnorm)
            for n, m in zip(names, statement_means)]


def persona_concepts(model, names: Sequence[str] | None = None, *, layer: int, n_pairs: int = 32, seed: int = 0,
                     norm_prompts=NEUTRAL_PROMPTS, batch_size: int = 16, mesh=None,
                     progress: bool = True) -> list[Concept]:
    """CAA concepts from Anthropic persona dimensions (``$STEERJAX_DATA/anthropic-evals/persona``).

    For each dimension, ``n_pairs`` A/B questions (``steerjax.data.load_dataset``, shuffled with
    ``seed``) give the mean difference of the residual after block ``layer`` at the answer letter,
    matching minus non-matching answer (``train_vector(method="caa")``).

    Args:
      names: persona dimensions (``steerjax.data.list_datasets("persona")``, 135 of them);
        ``None``: all of them.
      norm_prompts: prompts for :func:`residual_norm` (default: :data:`NEUTRAL_PROMPTS`).
      mesh: as in :func:`steerjax.vectors.read_activations`.

    Raises:
      DataError: ``STEERJAX_DATA`` unset, an unknown dimension (with suggestions).
    """
    from tqdm.auto import tqdm

    from steerjax.data import list_datasets, load_dataset
    from steerjax.vectors import train_vector

    if isinstance(n_pairs, bool) or not isinstance(n_pairs, (int, np.integer)) or n_pairs < 1:
        raise SteerjaxError(f"n_pairs must be a positive int, got {n_pairs!r}")
    li = normalize_layer(layer, model.config.num_layers)
    available = list_datasets("persona")
    if names is None:
        names = available
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise SteerjaxError("names is empty: give persona dimensions, or None for all")
    for n in names:
        if n not in available:
            load_dataset(n)  # raises DataError with close matches
            raise SteerjaxError(f"{n!r} is not a persona dimension")
    if len(set(names)) != len(names):
        raise SteerjaxError(f"persona dimensions repeat in {names}")
    rnorm = residual_norm(model, norm_prompts, li, batch_size=batch_size, mesh=mesh)
    out = []
    for n in tqdm(names, desc="concept vectors", unit="concept", disable=None if progress else True):
        examples = load_dataset(n, seed=seed, max_examples=int(n_pairs))
        vec = train_vector(model, examples, layers=[li], method="caa", batch_size=batch_size, mesh=mesh,
                           progress=False)
        out.append(Concept(n, f"persona:{n}", vec.vectors[li], li, rnorm))
    return out


def concepts_from_examples(model, path_or_mapping, *, layer: int, method: str = "diffmean",
                           n_examples: int | None = None, norm_prompts=NEUTRAL_PROMPTS, chat: bool | None = False,
                           probe_c: float = 1.0, batch_size: int = 16, mesh=None,
                           progress: bool = True) -> list[Concept]:
    """Concepts from example banks of positive and negative texts (Fan et al.'s construction).

    Each text is read once, as SteerBoost reads it: the residual after block ``layer``, averaged
    over the text's tokens but the first (plain text by default, ``chat=False``). Then per concept:

    * ``method="diffmean"``: mean over positive texts minus mean over negative texts, unnormalised
      (SteerBoost's ``DiffMean`` with its default ``normalize=False``);
    * ``method="probe"``: the weight vector of scikit-learn's ``LogisticRegression`` (L2,
      ``C=probe_c``, with an intercept) separating positive from negative texts, scaled to unit
      norm. SteerBoost's ``LinearProbe`` differs: a bias-free linear layer trained by AdamW
      (lr 0.005, weight decay 0.001, an L2 term on the weights) for 10 full-batch epochs from a
      random initialisation, whose raw weights are the vector; that direction is not converged
      and its norm is set by the optimiser, so it is not reproduced here. With ``scale="raw"``
      rollouts, a probe concept's alpha is therefore the norm of the added vector.

    Args:
      model: a ``LanguageModel``.
      path_or_mapping: a JSONL file or a mapping (:func:`read_examples`).
      layer: the block (negative counts from the end).
      n_examples: use the first ``n`` examples of each side (SteerBoost uses the first 50);
        default all.
      norm_prompts: prompts for each concept's ``residual_norm`` (:func:`residual_norm`, the
        ``"norm"`` scale); ``None``: the mean token norm of the example texts themselves.
      chat: encode examples as chat user messages (default plain text, as SteerBoost).
      probe_c: inverse L2 strength of the probe.
      mesh: as in :func:`steerjax.vectors.read_activations`.

    Returns:
      One :class:`Concept` per bank, in order, with source ``"examples:{method}"`` and metadata
      ``method``, ``n_positive``, ``n_negative`` and ``level`` (when the bank has one).

    Raises:
      SteerjaxError: an unknown ``method``, a bad ``n_examples`` or a bad bank (:func:`read_examples`).
    """
    if method not in EXAMPLE_METHODS:
        raise SteerjaxError(f"method={method!r}: use one of {EXAMPLE_METHODS}")
    if n_examples is not None and (isinstance(n_examples, bool) or not isinstance(n_examples, (int, np.integer))
                                   or n_examples < 1):
        raise SteerjaxError(f"n_examples must be a positive int or None, got {n_examples!r}")
    if not probe_c > 0:
        raise SteerjaxError(f"probe_c must be > 0, got {probe_c!r}")
    banks = read_examples(path_or_mapping)
    li = normalize_layer(layer, model.config.num_layers)
    texts, spans = [], {}
    for name, ex in banks.items():
        pos = list(ex.positive[:n_examples])
        neg = list(ex.negative[:n_examples])
        spans[name] = (len(texts), len(texts) + len(pos), len(texts) + len(pos) + len(neg))
        texts += pos + neg
    mean, norm = read_activations(model, batch.encode(model, texts, chat=chat), [li], reduce=("mean", "norm"),
                                  skip_first=True, side="left", buckets=batch.ACTIVATIONS, batch_size=batch_size,
                                  mesh=mesh, progress=progress, desc="example activations")
    mean, norm = mean[:, 0].astype(np.float64), norm[:, 0].astype(np.float64)
    if norm_prompts is None:
        rnorm = float(norm.mean())
    else:
        rnorm = residual_norm(model, norm_prompts, li, batch_size=batch_size, mesh=mesh)
    out = []
    for name, (start, mid, end) in spans.items():
        pos, neg = mean[start:mid], mean[mid:end]
        vec = mean_difference(pos, neg) if method == "diffmean" else probe_weights(pos, neg, c=probe_c)
        meta = {"method": method, "n_positive": mid - start, "n_negative": end - mid}
        if banks[name].level is not None:
            meta["level"] = banks[name].level
        out.append(Concept(name, f"examples:{method}", vec, li, rnorm, meta))
    return out


def probe_weights(pos_acts, neg_acts, *, c: float = 1.0) -> np.ndarray:
    """Unit weight vector of scikit-learn's L2 ``LogisticRegression(C=c)`` (with an intercept,
    L-BFGS, float64) fitted to ``pos_acts`` (label 1) against ``neg_acts`` (label 0), two
    ``[n, D]`` and ``[m, D]`` arrays that need not pair up (unlike
    :func:`steerjax.vectors.probe_direction`, which centres each contrastive pair)."""
    from sklearn.linear_model import LogisticRegression

    pos = np.asarray(pos_acts, np.float64)
    neg = np.asarray(neg_acts, np.float64)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1] or not len(pos) or not len(neg):
        raise SteeringError(f"probe activations must be [n, D] and [m, D] with n, m >= 1, got {pos.shape} and "
                            f"{neg.shape}")
    x = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    w = LogisticRegression(C=float(c), max_iter=1000).fit(x, y).coef_[0]
    n = np.linalg.norm(w)
    if not np.isfinite(n) or n == 0:
        raise SteeringError("the probe found no direction (all weights zero): the positive and negative "
                            "examples read the same at this block")
    return (w / n).astype(np.float32)


def save_concepts(path, concepts: Sequence[Concept]) -> None:
    """Write concepts to one safetensors vector set (:meth:`SteeringVector.save_many`: each
    concept's vector under its name, with its source and residual norm in its metadata)."""
    SteeringVector.save_many(path, concepts)


def load_concepts(path) -> list[Concept]:
    """Concepts written by :func:`save_concepts`, in order."""
    return [Concept.from_vector(v) for v in SteeringVector.load_many(path)]
