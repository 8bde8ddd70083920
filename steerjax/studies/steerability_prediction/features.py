"""Early-decoding diff features: how far steering has moved the model after ``k`` new tokens.

For each (prompt, concept, strength) row, one jitted program per batch decodes ``K = max(steps)``
tokens with steering (greedy, or a sampled rollout's own tokens fed back, teacher-forced:
``tokens=``) and, in the same forward calls, runs an unsteered *reference* row that
is teacher-forced on the steered row's tokens: the batch holds ``2B`` rows (``B`` steered, ``B``
references with multiplier 0) and at every step both halves are fed the steered row's token. The
two rows therefore see the same positions and the same token history, and every difference comes
from steering alone. A reference row cannot be shared between strengths of one prompt (after the
first step its history is the steered row's own tokens), but its prompt pass can: the unsteered
prompt KV cache is computed once per distinct prompt of a batch and gathered into the reference
rows, and, with ``positions="generated"`` (prompt not steered), into the steered rows as well, so a
strength search on one prompt pays for one prompt pass.

Decoding step ``j`` (``1..K``) is the forward call that predicts new token ``j``: its input is the
last prompt token for ``j = 1`` and new token ``j - 1`` after. At each step, with ``s`` / ``u`` the
steered / reference residual after block ``l`` at that token and ``d = s - u``:

* ``cos_L{l}``: cos(s, u); ``norm_ratio_L{l}``: |s| / |u|; ``diff_norm_L{l}``: |d|;
* ``diff_proj_L{l}``: d . v / |v| (the steering vector's direction);
* ``diff_growth_L{l}``: |d_l| - |d_{l-1}| (``|d_{-1}| = 0``);
* ``kl_next``: KL(p_steered || p_reference) of the next-token distribution (nats);
  ``entropy_change``: H(p_steered) - H(p_reference);
* ``lens_kl_L{l}``: the same KL through the logit lens (final norm + unembedding) of block ``l``,
  for ``l`` in :func:`lens_layers` (every 8th block, the last one excluded: it is ``kl_next``;
  each lens block costs an unembedding per step, the dearest part of a decoding step).
* ``read_nll``: the negative log-likelihood of the steered row's new token under the reference
  (unsteered) row: the judge's fluency signal, read on the tokens decoded so far;
* ``concept_read``: how far the tokens decoded so far move the *unsteered* model along the
  concept: the reference row's residual at the steered block projected on the unit steering
  vector, averaged over the new tokens it has read (step ``j`` reads new token ``j - 1``, so
  step 1 reads none and the column is 0 at ``k = 1``), minus the same for the prompt's
  zero-strength row (its own greedy tokens), divided by the concept's mean residual norm. It is
  the hidden-state judge's concept score on the first tokens, from the same pass (zero-strength
  rows are decoded alongside when the grid lacks them, and dropped from the table).

A column ``{name}_k{k}`` is the **mean over the first k decoding steps** (so ``k1`` is step 1
alone, and larger ``k`` smooth over more tokens). Blocks at or below the steered block carry no
information beyond ``m |v|`` (steering adds after the block), but are kept so that every layer
has the same columns. Rows keep decoding after an EOS (teacher forcing makes the comparison
well defined anyway).

**SteerBoost's features** (Fan et al.'s code, ``Fcr09/SteerBoost``: ``xgb/utils.py``
``get_handcrafted_features``, column names after ``xgb/train.py`` ``build_feature_names``), from
the same pass, prefixed ``sb_``. SteerBoost reads the residual after block ``l`` (a forward hook on
``model.layers[l]``) at *token n*: ``token_0`` is the last prompt position of the prompt pass (the
state that predicts the first new token) and ``token_n`` the forward call of generated token
``n`` (``steering.py`` counts hook calls; ``raw_hidden_state.py`` reads positions
``prompt_len - 1 + n`` of prompt + steered response), so token ``n`` is our decoding step
``n + 1``: tokens :data:`STEERBOOST_TOKENS` = 0, 1, 3, 5 are steps 1, 2, 4, 6, and a token is
kept when ``n + 1 <= max(steps)``. Its reference ("raw") rows are the unsteered model
teacher-forced on the steered response, as ours. Blocks ``L + k`` for ``k`` in
:data:`STEERBOOST_OFFSETS` (0, 1, 2, 3, 5, 10, 15) are **clipped to the last block and
deduplicated** (:func:`steerboost_layers`), as SteerBoost's steering hooks do
(``min(L + k, n_layers - 1)``); its raw pass drops blocks past the last and its feature code then
leaves those entries 0, which we do not copy by default (no always-zero columns;
``steerboost_compat=True`` does, with columns named by ``L + k``). With ``s``, ``u`` the
steered and reference residuals, ``d = s - u``, ``v`` the steering vector and ``m`` the multiplier
(SteerBoost's alpha: the added vector is ``m v``):

* ``MagDiff``: ``|d|``; ``CosSim``: cos(s, u); ``SteerAlign``: cos(d, m v), block ``L`` excluded;
  ``SteerProj``: cos(s, m v) (at ``L`` after the addition); each per (token, block)
  ``sb_{group}_T{n}_L{l}``;
* ``MagDiffRatio`` / ``CosSimDelta`` / ``SteerAlignDelta``: token ``n`` against token 0
  (``MagDiff_n / MagDiff_0``, 0 where ``MagDiff_0 <= 1e-8``; differences for the others);
* summary statistics of each matrix as SteerBoost emits them: ``Mean/Std/Max/Min_Global``,
  ``Mean/Std/Max_T{n}_AllLayers`` and ``Mean/Std/Max_L{l}_AllTokens`` (``AllNonZeroTokens`` for
  the three against token 0); std is numpy's population std;
* ``sb_InterventionMag`` (group AfterSteering): ``|m v| / m`` (0 at ``m = 0``), i.e. the vector's
  norm signed by ``m``; ``sb_Alpha``: ``m``.

A column that needs token ``n`` ends ``_k{n + 1}``, and a statistic over several tokens ends
``_k`` of the last one, so ``max_step`` filters them like ours. Cosines with a vector of norm
``<= 1e-8`` are 0 (SteerBoost's rule), so ``SteerAlign`` and ``SteerProj`` are 0 at ``m = 0``.
Where we differ: at block ``L`` the steered row's residual *before* the addition is the
reference row's (both read the same tokens and steering is added after the block), so we use it
exactly there (``MagDiff`` 0, ``CosSim`` 1, ``MagDiffRatio`` 0 by the zero rule) instead of
subtracting ``m v`` in floating point; the intervention ``m v`` is the configured one, not read off
token 0 (with ``positions="generated"`` token 0 is not steered, so its ``MagDiff`` is 0 at every
block and every ``MagDiffRatio`` is 0); SteerBoost's hidden states are bfloat16 and its raw pass
re-tokenizes the decoded text (without the chat template), ours are float32 on the same token ids;
a rollout that ends (EOS) before token ``n``: SteerBoost's unsteered pass on the decoded text has no
position there and leaves token ``n``'s entries 0, ours reads the steps after the EOS
(``steerboost_compat=True`` zeroes them as SteerBoost).

**Relative features** (the ``relative`` set, prefixed ``rel_``; judge-independent, computed from
the columns above by :func:`relative_features`, so a cached table can get them without a new
pass). With ``R`` the concept's residual norm at the steered block ``L`` and ``|m v|`` the norm of
the added vector:

* ``rel_vector_norm``: ``|v| / R``; ``rel_injection``: ``|m v| / R`` (the strength in the ``"norm"``
  scale, the alpha made comparable across concepts in the ``"raw"`` one); no step;
* ``rel_kl_next_k{k}``: ``kl_next / rel_injection**2`` (a small push moves the next-token
  distribution by a KL quadratic in its size: the row's sensitivity) and
  ``rel_entropy_change_k{k}``: ``entropy_change / rel_injection``;
* ``rel_diff_norm_{last,mean}_k{k}``: ``|d|`` at the last block, and its mean over the blocks
  after ``L``, over ``|m v|`` (how the push grows or fades downstream);
  ``rel_diff_proj_{last,mean}_k{k}``: the same for ``d . v / |v|`` (how much of it stays along
  the vector).

Every ratio is 0 where ``m = 0``. Trees split on one column at a time, so a ratio the table only
holds as two columns is a feature they could not otherwise use in one split.

**Judge-aware columns.** ``read_nll`` and ``concept_read`` replay the hidden-state judge (its
fluency NLL and its concept score, on the first tokens): they are computed by default (so an
ablation can show what they add) but belong to the ``judge-aware`` set, which no default selects
(:data:`DEFAULT_FEATURE_SET`); ``judge_aware=False`` leaves them out and skips the zero-strength
rows ``concept_read`` needs. :data:`FEATURE_SETS` names the sets; :func:`feature_set_columns`
selects a table's columns for ``"steerboost"``, ``"steerjax"``, ``"judge-aware"`` or a ``+``
combination.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from steerjax import sharding as shd
from steerjax.data.batch import GENERATION, TokenBatch
from steerjax.errors import PredictorError, SteerjaxError
from steerjax.models.transformer import KVCache, final_norm, forward, param_dtype, unembed
from steerjax.steering.core import normalize_layer
from steerjax.studies.steerability_prediction.concepts import UNSTEERED, Concept
from steerjax.studies.steerability_prediction.config import (  # noqa: F401 (FEATURE_SETS, replays_judge: re-exported)
    DEFAULT_FEATURE_SET,
    FEATURE_SETS,
    JUDGE_AWARE,
    parse_feature_set,
    replays_judge,
)
from steerjax.studies.steerability_prediction.testbed import (
    bucket_rows,
    check_concepts,
    check_options,
    job_steering,
    prompts_and_labels,
    strength_grid,
)

FEATURE_STEPS = (1, 2, 4, 8)
LENS_EVERY = 8
LAYER_FEATURES = ("cos", "norm_ratio", "diff_norm", "diff_proj", "diff_growth")
NEXT_FEATURES = ("kl_next", "entropy_change")
READ_FEATURES = ("read_nll", "concept_read")
ID_COLUMNS = ("prompt_id", "concept", "strength", "multiplier")
STEERBOOST_TOKENS = (0, 1, 3, 5)
STEERBOOST_OFFSETS = (0, 1, 2, 3, 5, 10, 15)
STEERBOOST_GROUPS = ("MagDiff", "CosSim", "SteerAlign", "SteerProj", "MagDiffRatio", "CosSimDelta",
                     "SteerAlignDelta", "AfterSteering")
SB_PREFIX = "sb_"
REL_PREFIX = "rel_"
RELATIVE_STEP_FEATURES = ("kl_next", "entropy_change", "diff_norm_last", "diff_norm_mean", "diff_proj_last",
                          "diff_proj_mean")
_EPS = 1e-8
_STEERJAX_COLUMN = re.compile(r"^(?:(?:%s)_L\d+|(?:%s)|lens_kl_L\d+)_k\d+$"
                              % ("|".join(LAYER_FEATURES), "|".join(NEXT_FEATURES)))
_JUDGE_COLUMN = re.compile(r"^(?:%s)_k\d+$" % "|".join(READ_FEATURES))


def lens_layers(cfg) -> tuple[int, ...]:
    """Blocks read through the logit lens: ``0, 8, 16, ...`` below the last block."""
    cfg = getattr(cfg, "config", cfg)
    return tuple(range(0, cfg.num_layers - 1, LENS_EVERY))


def steerboost_layers(cfg, layer: int, steerboost_compat: bool = False) -> tuple[int, ...]:
    """SteerBoost's blocks ``layer + k`` (``k`` in :data:`STEERBOOST_OFFSETS`), clipped to the last
    block and deduplicated, ascending; with ``steerboost_compat`` not clipped (a block past the last
    is a column of zeros, as SteerBoost's feature code leaves it)."""
    cfg = getattr(cfg, "config", cfg)
    li = normalize_layer(layer, cfg.num_layers)
    if steerboost_compat:
        return tuple(sorted({li + k for k in STEERBOOST_OFFSETS}))
    return tuple(sorted({min(li + k, cfg.num_layers - 1) for k in STEERBOOST_OFFSETS}))


def steerboost_tokens(steps: Sequence[int] = FEATURE_STEPS) -> tuple[int, ...]:
    """SteerBoost's tokens (:data:`STEERBOOST_TOKENS`) that ``max(steps)`` decoding steps reach
    (token ``n`` is decoding step ``n + 1``)."""
    k_max = max(_check_steps(steps))
    return tuple(n for n in STEERBOOST_TOKENS if n + 1 <= k_max)


def steerboost_columns(cfg, layer: int, steps: Sequence[int] = FEATURE_STEPS, *,
                       steerboost_compat: bool = False) -> list[str]:
    """The ``sb_`` column names of :func:`early_features` for a concept at block ``layer``, in
    SteerBoost's order (groups as :data:`STEERBOOST_GROUPS`, each matrix then its statistics);
    ``steerboost_compat`` as there (blocks past the last named by ``layer + k``)."""
    return [name for name, _ in _steerboost_names(cfg, layer, steerboost_tokens(steps), steerboost_compat)]


def feature_columns(cfg, steps: Sequence[int] = FEATURE_STEPS, *, layer: int | None = None,
                    judge_aware: bool = True, steerboost_compat: bool = False) -> list[str]:
    """Feature column names, in the order :func:`early_features` returns them (ids excluded).

    Args:
      cfg: a model or its config.
      steps: the ``k`` of the columns.
      layer: the steered block; None leaves SteerBoost's columns (named by block) and the
        relative ones (read after it) out.
      judge_aware: include ``read_nll`` / ``concept_read`` (as :func:`early_features` does by
        default).
      steerboost_compat: SteerBoost's columns as :func:`early_features` with that option names them.
    """
    cfg = getattr(cfg, "config", cfg)
    steps = _check_steps(steps)
    cols = []
    for k in steps:
        cols += [f"{f}_L{b}_k{k}" for b in range(cfg.num_layers) for f in LAYER_FEATURES]
        cols += [f"{f}_k{k}" for f in NEXT_FEATURES]
        cols += [f"lens_kl_L{b}_k{k}" for b in lens_layers(cfg)]
        if judge_aware:
            cols += [f"{f}_k{k}" for f in READ_FEATURES]
    if layer is not None:
        cols += steerboost_columns(cfg, layer, steps, steerboost_compat=steerboost_compat) + relative_columns(steps)
    return cols


def relative_columns(steps: Sequence[int] = FEATURE_STEPS) -> list[str]:
    """The ``rel_`` column names of :func:`relative_features`, in its order."""
    steps = _check_steps(steps)
    return [f"{REL_PREFIX}vector_norm", f"{REL_PREFIX}injection"] + [
        f"{REL_PREFIX}{f}_k{k}" for k in steps for f in RELATIVE_STEP_FEATURES]


def relative_features(table: pd.DataFrame, layer: int, residual_norms: Mapping[str, float],
                      vector_norms: Mapping[str, float], num_layers: int | None = None) -> pd.DataFrame:
    """The ``relative`` set (module docstring) of a features table, as a frame indexed like it.

    Args:
      table: an :func:`early_features` table (``concept``, ``multiplier``, ``kl_next_k*``,
        ``entropy_change_k*``, ``diff_norm_L*_k*``, ``diff_proj_L*_k*``), e.g. a cached run's.
      layer: the steered block (negative counts from the end).
      residual_norms, vector_norms: per concept name, ``R`` and ``|v|`` (``Concept.residual_norm``
        and ``Concept.norm``).
      num_layers: the model's blocks; None: read off the table's ``diff_norm_L{l}`` columns.

    Raises:
      PredictorError: a concept without a norm; a table without the columns needed.
    """
    if num_layers is None:
        blocks = [int(m.group(1)) for c in table.columns if (m := re.match(r"^diff_norm_L(\d+)_k\d+$", c))]
        if not blocks:
            raise PredictorError("the table has no diff_norm_L*_k* columns: give an early_features table")
        num_layers = max(blocks) + 1
    cfg = types.SimpleNamespace(num_layers=int(num_layers))
    li = normalize_layer(layer, cfg.num_layers)
    names = table["concept"].astype(str)
    missing = sorted(set(names) - (set(residual_norms) & set(vector_norms)))
    if missing:
        raise PredictorError(f"no residual or vector norm for concepts {missing[:5]}: pass both for every concept "
                             "of the table (Concept.residual_norm, Concept.norm)")
    steps = sorted({int(m.group(1)) for c in table.columns if (m := re.match(r"^kl_next_k(\d+)$", c))})
    after = list(range(li + 1, cfg.num_layers)) or [cfg.num_layers - 1]
    need = [f"{f}_k{k}" for k in steps for f in NEXT_FEATURES] + [
        f"{f}_L{b}_k{k}" for k in steps for f in ("diff_norm", "diff_proj") for b in after]
    lacking = [c for c in need if c not in table]
    if not steps or lacking:
        raise PredictorError(f"the table lacks the columns relative features are computed from "
                             f"({lacking[:3] or ['kl_next_k*']}): give an early_features table")
    r = names.map(lambda c: float(residual_norms[c])).to_numpy(np.float64)
    v = names.map(lambda c: float(vector_norms[c])).to_numpy(np.float64)
    push = np.abs(table["multiplier"].to_numpy(np.float64)) * v  # |m v|
    inj = push / r

    def per(x, by):
        return np.where(by > _EPS, x / np.where(by > _EPS, by, 1.0), 0.0)

    cols = {f"{REL_PREFIX}vector_norm": v / r, f"{REL_PREFIX}injection": inj}
    last = cfg.num_layers - 1
    for k in steps:
        cols[f"{REL_PREFIX}kl_next_k{k}"] = per(table[f"kl_next_k{k}"].to_numpy(np.float64), inj ** 2)
        cols[f"{REL_PREFIX}entropy_change_k{k}"] = per(table[f"entropy_change_k{k}"].to_numpy(np.float64), inj)
        for f in ("diff_norm", "diff_proj"):
            blocks = {b: table[f"{f}_L{b}_k{k}"].to_numpy(np.float64) for b in {*after, last}}
            cols[f"{REL_PREFIX}{f}_last_k{k}"] = per(blocks[last], push)
            cols[f"{REL_PREFIX}{f}_mean_k{k}"] = per(np.mean([blocks[b] for b in after], axis=0), push)
    return pd.DataFrame(cols, index=table.index)[relative_columns(steps)]


def feature_set_of(column: str) -> str | None:
    """The named set (a key of :data:`FEATURE_SETS`) a feature column belongs to, by its name;
    None for any other column (ids, labels, ``strength``, unknown columns)."""
    if column.startswith(SB_PREFIX):
        return "steerboost"
    if column.startswith(REL_PREFIX):
        return "relative"
    if _STEERJAX_COLUMN.match(column):
        return "steerjax"
    if _JUDGE_COLUMN.match(column):
        return JUDGE_AWARE
    return None


def feature_set_columns(columns: Sequence[str], name: str = DEFAULT_FEATURE_SET) -> list[str]:
    """The columns of ``columns`` (in their order) in the feature set ``name``, plus ``strength``
    (the knob a search chooses, known before decoding) where present.

    Raises:
      PredictorError: an unknown set name (:func:`parse_feature_set`).
    """
    wanted = set(parse_feature_set(name))
    return [c for c in columns if c == "strength" or feature_set_of(c) in wanted]


def early_features(
    model,
    prompts: Sequence[Any],
    concepts: Sequence[Concept],
    strengths: Sequence[float] | Mapping[str, Sequence[float]],
    *,
    layer: int,
    steps: Sequence[int] = FEATURE_STEPS,
    batch_size: int = 32,
    positions: str = "all",
    chat: bool | None = None,
    judge_aware: bool = True,
    tokens: Mapping[tuple[int, str, float], Sequence[int]] | None = None,
    steerboost_compat: bool = False,
    progress: bool = False,
    mesh=None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Diff features of the first ``max(steps)`` decoding steps (see the module docstring): greedy,
    or read on given tokens (a sampled rollout's own, teacher-forced).

    Args:
      model, prompts, concepts, strengths, layer, positions, chat: as in
        :func:`steerjax.studies.steerability_prediction.testbed.rollouts` (no unsteered rows are added here).
      steps: the ``k`` of the columns; ``max(steps)`` tokens are decoded (SteerBoost's tokens
        need 6 for all of 0, 1, 3, 5).
      batch_size: (prompt, concept, strength) rows per jitted call (``2 * batch_size`` model rows;
        a short call is padded to a power of two). One program per (rows, distinct prompts per
        batch, both powers of two; prompt length in steps of 16): new prompts, concepts and
        strengths reuse it.
      mesh: a ``("data", "model")`` mesh (:func:`steerjax.sharding.make_mesh`): a batch's rows
        (and its distinct prompts) split over ``data``, parameters over ``model``; the table is
        the same. Default: one device (or the :func:`steerjax.sharding.use_mesh` mesh).
      judge_aware: also compute ``read_nll`` / ``concept_read`` (the judge-aware set: never
        selected by default, see the module docstring); False leaves them out and decodes no
        zero-strength rows for them.
      tokens: ``{(prompt index, concept name, strength): new token ids}``, e.g. the rollouts'
        own (:func:`steerjax.studies.steerability_prediction.testbed.rollouts`, sampled at a temperature): each row is
        fed its first ``max(steps)`` tokens instead of its greedy ones, so its features are read
        on the tokens the judge reads; a row's steps past its tokens (a rollout that stopped at
        EOS) decode greedily. Every (prompt, concept, strength) row needs an entry; the
        zero-strength rows of ``concept_read`` take ``(prompt, "none", 0.0)`` (the unsteered
        rollout) when present, else decode greedily. None: every row greedy.
      steerboost_compat: SteerBoost's columns exactly as its feature code leaves them where ours
        differ: a block ``layer + k`` past the last block is a column of zeros named by
        ``layer + k`` (default: clipped to the last block); and a token past the end of its
        rollout (token ``n`` when fewer than ``n`` new tokens come before the first EOS, or before
        the end of the given ``tokens``) is zero in every SteerBoost matrix, as its unsteered pass
        on the decoded text leaves it, the ratios, deltas and statistics then following (default:
        read on the greedy continuation). The other sets are unchanged.

    Returns:
      ``(table, tokens)``: one row per prompt x concept x strength with ``prompt_id, concept,
      strength, multiplier`` then :func:`feature_columns` (with ``layer`` and ``judge_aware``);
      ``tokens [rows, max(steps)]`` the steered rows' tokens: the greedy ones (equal to those of
      :func:`rollouts` with the same ``positions``) or those given.

    Raises:
      PredictorError: ``tokens`` lacking a row's entry.
    """
    cfg = model.config
    li = normalize_layer(layer, cfg.num_layers)
    steps = _check_steps(steps)
    ids, _ = prompts_and_labels(model, prompts, chat)
    concepts = check_concepts(cfg, concepts, li)
    grid = strength_grid(concepts, strengths)
    check_options(max(steps), batch_size, positions, 0)
    k_max = max(steps)
    longest = max(len(x) for x in ids)
    if longest + k_max > cfg.max_position_embeddings:
        raise SteerjaxError(f"a prompt of {longest} tokens + {k_max} steps exceeds the context "
                            f"of {cfg.max_position_embeddings}")
    jobs = [(p, c, s) for p in range(len(ids)) for c in concepts for s in grid[c.name]]
    n_jobs = len(jobs)
    if judge_aware:  # the zero-strength rows concept_read is measured against, where the grid lacks them
        jobs += [(p, c, 0.0) for p in range(len(ids)) for c in concepts if 0.0 not in grid[c.name]]
    forced = np.full((len(jobs), k_max), -1, np.int32)
    if tokens is not None:
        lacking = [(p, c.name, s) for p, c, s in jobs[:n_jobs] if (p, c.name, s) not in tokens]
        if lacking:
            raise PredictorError(f"tokens has no entry for {len(lacking)} rows, e.g. (prompt, concept, strength) "
                                 f"{lacking[0]}: give every row's tokens, or tokens=None for greedy decoding")
        for i, (p, c, s) in enumerate(jobs):
            own = tokens.get((p, c.name, s)) if i < n_jobs else tokens.get((p, UNSTEERED, 0.0))
            own = [] if own is None else [int(t) for t in own][:k_max]
            forced[i, :len(own)] = own
    lens = lens_layers(cfg)
    mesh = shd.default_mesh(mesh)
    params = model.params if mesh is None else shd.shard_params(model.params, cfg, mesh)

    from tqdm.auto import tqdm

    raw, toks, mults = [], [], []
    for i in tqdm(range(0, len(jobs), batch_size), desc="features", unit="batch", disable=None if progress else True):
        chunk = jobs[i:i + batch_size]
        size = bucket_rows(len(chunk), batch_size)
        steering, m = job_steering(cfg, chunk, li, size, positions)
        uniq = list(dict.fromkeys(p for p, _, _ in chunk))  # the chunk's prompts, each once
        row_prompt = np.zeros((size,), np.int32)
        row_prompt[:len(chunk)] = [uniq.index(p) for p, _, _ in chunk]
        prompt = TokenBatch.pad([ids[p] for p in uniq], side="left", buckets=GENERATION,
                                rows=bucket_rows(len(uniq), size))
        units = np.zeros((size, cfg.hidden_size), np.float32)
        for r, (_, c, _) in enumerate(chunk):
            units[r] = c.vector / c.norm
        fed = np.full((size, k_max), -1, np.int32)
        fed[:len(chunk)] = forced[i:i + len(chunk)]
        prompt = shd.put_batch(prompt, mesh)
        row_prompt, steering, units, fed = shd.put_batch((row_prompt, steering, units, fed), mesh)
        out = _early(params, cfg, prompt, row_prompt, steering, units, fed, steps=k_max, lens=lens, layer=li,
                     steer_prompt=positions == "all")
        out = jax.tree.map(shd.to_host, out)
        n = len(chunk)
        raw.append({k: np.asarray(v)[..., :n] for k, v in out["feats"].items()})
        toks.append(np.asarray(out["tokens"])[:n])
        mults.append(m[:n])
    ends = None
    if steerboost_compat:  # each row's rollout length: new tokens before its first EOS or its given end
        new = np.concatenate(toks)
        is_eos = np.isin(new, np.asarray(cfg.eos_token_ids or (), np.int64))
        ends = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1), k_max)
        if tokens is not None:
            given = [tokens.get((p, c.name, s)) if i < n_jobs else tokens.get((p, UNSTEERED, 0.0))
                     for i, (p, c, s) in enumerate(jobs)]
            ends = np.minimum(ends, [k_max if g is None else len(g) for g in given])
    table = _table(cfg, jobs, raw, np.concatenate(mults), steps, lens, li, judge_aware, steerboost_compat, ends)
    return table.iloc[:n_jobs].reset_index(drop=True), np.concatenate(toks)[:n_jobs].astype(np.int32)


# ----------------------------------------------------------------------------- internals


def _check_steps(steps) -> tuple[int, ...]:
    try:
        out = tuple(int(k) for k in steps)
    except (TypeError, ValueError):
        raise SteerjaxError(f"steps must be positive ints, got {steps!r}") from None
    if not out or any(k < 1 for k in out) or len(set(out)) != len(out) or any(
            isinstance(k, bool) or float(k) != k for k in steps):
        raise SteerjaxError(f"steps must be distinct positive ints, got {steps!r}")
    return out


def _step_features(params, cfg, layers, logits, unit, lens, layer_index, tok):
    """Features of one decoding step. layers [L, 2B, D] (steered rows first); logits [2B, V]; tok [B]
    the steered row's next token (the one fed at the next step)."""
    b = unit.shape[0]
    h = layers.astype(jnp.float32)
    s, u = h[:, :b], h[:, b:]
    d = s - u
    ns, nu, nd = (jnp.linalg.norm(x, axis=-1) for x in (s, u, d))
    cos = jnp.sum(s * u, axis=-1) / jnp.maximum(ns * nu, 1e-30)
    growth = nd - jnp.concatenate([jnp.zeros_like(nd[:1]), nd[:-1]], axis=0)
    layer = jnp.stack([cos, ns / jnp.maximum(nu, 1e-30), nd, jnp.einsum("lbd,bd->lb", d, unit), growth])  # [5, L, B]

    def kl_ent(lg):
        lp = jax.nn.log_softmax(lg.astype(jnp.float32), axis=-1)
        ls, lu = lp[..., :b, :], lp[..., b:, :]
        ps = jnp.exp(ls)
        kl = jnp.sum(ps * (ls - lu), axis=-1)
        ent = -jnp.sum(ps * ls, axis=-1) + jnp.sum(jnp.exp(lu) * lu, axis=-1)
        return jnp.maximum(kl, 0.0), ent

    kl, ent = kl_ent(logits)
    lens_logits = unembed(params, cfg, final_norm(params, cfg, layers[jnp.asarray(lens, jnp.int32)]))
    lens_kl, _ = kl_ent(lens_logits)  # [nl, B]
    ref_lp = jax.nn.log_softmax(logits[b:].astype(jnp.float32), axis=-1)
    read_nll = -jnp.take_along_axis(ref_lp, tok[:, None], axis=-1)[:, 0]
    read_proj = jnp.einsum("bd,bd->b", u[layer_index], unit)  # the reference row's reading of its input token
    # SteerBoost's SteerProj: cos(s, v) per block (the sign of m is applied on the host)
    proj = jnp.where(ns > _EPS, jnp.einsum("lbd,bd->lb", s, unit) / jnp.maximum(ns, 1e-30), 0.0)
    return {"layer": layer, "next": jnp.stack([kl, ent]), "lens": lens_kl, "read": jnp.stack([read_nll, read_proj]),
            "proj": proj}


def _gather_cache(cache: KVCache, rows) -> KVCache:
    return KVCache(cache.k[:, rows], cache.v[:, rows], cache.valid[rows], cache.index)


def _concat_cache(a: KVCache, b: KVCache) -> KVCache:
    return KVCache(jnp.concatenate([a.k, b.k], axis=1), jnp.concatenate([a.v, b.v], axis=1),
                   jnp.concatenate([a.valid, b.valid]), a.index)


def _next(logits, forced):
    """The steered rows' next tokens: ``forced`` where it is >= 0, else greedy. logits [B, V]; forced [B]."""
    return jnp.where(forced >= 0, forced, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "steps", "lens", "layer", "steer_prompt"))
def _early(params, cfg, prompt, row_prompt, steering, unit, forced, *, steps, lens, layer, steer_prompt):
    """Steered decoding of ``steps`` tokens with a teacher-forced reference half.

    ``prompt [E, T]`` (a :class:`TokenBatch`): the chunk's distinct prompts; ``row_prompt [B]``:
    each row's prompt; ``forced [B, steps]``: the token each steered row is fed after each step
    (its rollout's own token, teacher-forced), or -1 for the greedy one.
    The unsteered prompt pass runs once per distinct prompt and its KV cache is gathered into the
    reference rows (and into the steered rows too when only generated tokens are steered, since
    their prompt pass is then the same: ``E`` prompt rows in all). With ``steer_prompt`` the steered
    rows and the distinct prompts share one pass of ``B + E`` rows instead of ``2B``.
    """
    e, t = prompt.ids.shape
    b = row_prompt.shape[0]
    dtype = param_dtype(params)
    lengths = prompt.lengths[row_prompt]
    if steer_prompt:
        # steered rows and the distinct prompts in one batch: zero steering then gives bit-equal rows
        p = jax.tree.map(lambda x: jnp.concatenate([x[row_prompt], x]), prompt)
        pre = steering.pad(b, b + e, fill="unsteered")
    else:  # the prompt is not steered: the steered rows' prompt pass is the plain one
        p, pre = prompt, None
    out = forward(params, cfg, p.ids, positions=p.positions, valid=p.valid, steering=pre, generation_start=p.lengths,
                  cache=KVCache.empty(cfg, p.ids.shape[0], t + steps, dtype), collect_layers=True)
    last_layers, last_hidden = out.layers[:, :, -1], out.hidden[:, -1]
    plain = jnp.arange(e) + (b if steer_prompt else 0)  # rows of the unsteered prompt pass
    ref = plain[row_prompt]
    ref_cache, ref_layers, ref_hidden = _gather_cache(out.cache, ref), last_layers[:, ref], last_hidden[ref]
    if steer_prompt:
        own = jnp.arange(b)
        st_cache, st_layers, st_hidden = _gather_cache(out.cache, own), last_layers[:, own], last_hidden[own]
    else:
        st_cache, st_layers, st_hidden = ref_cache, ref_layers, ref_hidden
    cache = _concat_cache(st_cache, ref_cache)
    logits = unembed(params, cfg, jnp.concatenate([st_hidden, ref_hidden]))
    tok = _next(logits[:b], forced[:, 0])
    f0 = _step_features(params, cfg, jnp.concatenate([st_layers, ref_layers], axis=1), logits, unit, lens, layer, tok)
    both = steering.concat(steering.zero_strength())
    lengths2 = jnp.concatenate([lengths, lengths])
    rows = 2 * b

    def step(carry, fed):
        cache, tok, pos = carry
        o = forward(params, cfg, jnp.concatenate([tok, tok])[:, None], positions=pos[:, None],
                    valid=jnp.ones((rows, 1), bool), steering=both, generation_start=lengths2, cache=cache,
                    collect_layers=True)
        lg = unembed(params, cfg, o.hidden[:, -1])
        nxt = _next(lg[:b], fed)
        f = _step_features(params, cfg, o.layers[:, :, -1], lg, unit, lens, layer, nxt)
        return (o.cache, nxt, pos + 1), (f, nxt)

    _, (fs, rest) = jax.lax.scan(step, (cache, tok, lengths2), forced[:, 1:].T, length=steps - 1)
    feats = jax.tree.map(lambda a, r: jnp.concatenate([a[None], r]), f0, fs)  # [K, ...]
    new = jnp.concatenate([tok[:, None], rest.T], axis=1)
    return {"feats": feats, "tokens": new}


def _table(cfg, jobs, raw, mults, steps, lens, li, judge_aware, compat=False, ends=None) -> pd.DataFrame:
    layer = np.concatenate([r["layer"] for r in raw], axis=-1)  # [K, 5, L, N]
    proj = np.concatenate([r["proj"] for r in raw], axis=-1)  # [K, L, N]
    norms = np.asarray([c.norm for _, c, _ in jobs])
    sb = _steerboost(cfg, li, steerboost_tokens(steps), layer, proj, mults.astype(np.float64), norms, compat, ends)
    nxt = np.concatenate([r["next"] for r in raw], axis=-1)  # [K, 2, N]
    lensk = np.concatenate([r["lens"] for r in raw], axis=-1)  # [K, nl, N]
    read = np.concatenate([r["read"] for r in raw], axis=-1).astype(np.float64)  # [K, 2, N]
    denom = np.arange(1, layer.shape[0] + 1, dtype=np.float64)
    mean = lambda a: np.cumsum(a.astype(np.float64), axis=0) / denom.reshape(-1, *[1] * (a.ndim - 1))  # noqa: E731
    layer, nxt, lensk, read_nll = mean(layer), mean(nxt), mean(lensk), mean(read[:, 0])
    # concept_read: mean over steps 2..k (new tokens 1..k-1), relative to the zero-strength row
    if judge_aware:
        reading = np.cumsum(read[:, 1], axis=0)
        reading = np.concatenate([np.zeros_like(reading[:1]), (reading[1:] - reading[:1]) / denom[:-1, None]])  # [K, N]
        zero = {(p, c.name): i for i, (p, c, s) in enumerate(jobs) if s == 0.0}
        ref = np.asarray([zero[(p, c.name)] for p, c, _ in jobs])
        scale = np.asarray([float(c.residual_norm) for _, c, _ in jobs])
        concept_read = (reading - reading[:, ref]) / scale
    cols: dict[str, Any] = {
        "prompt_id": [p for p, _, _ in jobs],
        "concept": [c.name for _, c, _ in jobs],
        "strength": [float(s) for _, _, s in jobs],
        "multiplier": mults.astype(np.float64),
    }
    for k in steps:
        j = k - 1
        for b in range(cfg.num_layers):
            for fi, f in enumerate(LAYER_FEATURES):
                cols[f"{f}_L{b}_k{k}"] = layer[j, fi, b]
        for fi, f in enumerate(NEXT_FEATURES):
            cols[f"{f}_k{k}"] = nxt[j, fi]
        for lj, b in enumerate(lens):
            cols[f"lens_kl_L{b}_k{k}"] = lensk[j, lj]
        if judge_aware:
            cols[f"read_nll_k{k}"] = read_nll[j]
            cols[f"concept_read_k{k}"] = concept_read[j]
    cols.update(sb)
    table = pd.DataFrame(cols)
    by_name = {c.name: c for _, c, _ in jobs}
    rel = relative_features(table, li, {n: c.residual_norm for n, c in by_name.items()},
                            {n: c.norm for n, c in by_name.items()}, cfg.num_layers)
    return pd.concat([table, rel], axis=1)


def _steerboost_names(cfg, layer, tokens, compat=False) -> list[tuple[str, tuple]]:
    """``(column, where)`` for SteerBoost's columns: ``where`` says which matrix entry or statistic."""
    blocks = steerboost_layers(cfg, layer, compat)
    li = normalize_layer(layer, getattr(cfg, "config", cfg).num_layers)
    out = []
    for g in STEERBOOST_GROUPS:
        if g == "AfterSteering":
            out.append((f"{SB_PREFIX}InterventionMag", ("after",)))
            continue
        against_zero = g in ("MagDiffRatio", "CosSimDelta", "SteerAlignDelta")
        toks = [n for n in tokens if n != 0] if against_zero else list(tokens)
        bl = [b for b in blocks if b != li] if g.startswith("SteerAlign") else list(blocks)
        if not toks or not bl:
            continue  # SteerBoost emits no propagation features for a single token; no SteerAlign at the last block
        last = max(toks) + 1
        over = "AllNonZeroTokens" if against_zero else "AllTokens"
        p = f"{SB_PREFIX}{g}"
        out += [(f"{p}_T{n}_L{b}_k{n + 1}", (g, "cell", n, b)) for n in toks for b in bl]
        out += [(f"{p}_{st}_Global_k{last}", (g, "global", st, toks, bl)) for st in ("Mean", "Std", "Max", "Min")]
        out += [(f"{p}_{st}_T{n}_AllLayers_k{n + 1}", (g, "token", st, n, bl)) for n in toks
                for st in ("Mean", "Std", "Max")]
        out += [(f"{p}_{st}_L{b}_{over}_k{last}", (g, "block", st, b, toks)) for b in bl
                for st in ("Mean", "Std", "Max")]
    out.append((f"{SB_PREFIX}Alpha", ("alpha",)))
    return out


def _steerboost(cfg, layer, tokens, layer_steps, proj, mults, norms, compat=False, ends=None) -> dict[str, np.ndarray]:
    """SteerBoost's columns (module docstring) from the per-step arrays: ``layer_steps [K, 5, L, N]``
    (cos, norm ratio, |d|, d.v/|v|, growth), ``proj [K, L, N]`` (cos(s, v)), ``mults [N]``, ``norms [N]``
    (|v|); with ``compat`` (``steerboost_compat``) blocks past the last and tokens past ``ends [N]``
    (each row's rollout length) are zero in the four base matrices."""
    cfg = getattr(cfg, "config", cfg)
    li = normalize_layer(layer, cfg.num_layers)
    sign = np.sign(mults)
    t = list(tokens)  # token n is decoding step n + 1: index n of the step axis
    lay = layer_steps[t].astype(np.float64)  # [T, 5, L, N]
    mag, cos, dproj = lay[:, 2].copy(), lay[:, 0].copy(), lay[:, 3]
    mag[:, li], cos[:, li] = 0.0, 1.0  # before the addition the steered row is the reference row at L
    align = np.where(mag > _EPS, sign * dproj / np.where(mag > _EPS, mag, 1.0), 0.0)
    base = {"MagDiff": mag, "CosSim": cos, "SteerAlign": align,
            "SteerProj": sign * proj[t].astype(np.float64)}  # [T, L, N] over all blocks
    if compat:  # SteerBoost's zeros: blocks past the last (padded), tokens past the rollout's end
        past = max(steerboost_layers(cfg, li, True)) + 1 - cfg.num_layers
        gone = None if ends is None else (np.asarray(t)[:, None] > np.asarray(ends)[None, :])[:, None, :]
        for g in base:
            if past > 0:
                base[g] = np.concatenate([base[g], np.zeros((len(t), past, base[g].shape[-1]))], axis=1)
            if gone is not None:
                base[g] = np.where(gone, 0.0, base[g])
        mag, cos, align = base["MagDiff"], base["CosSim"], base["SteerAlign"]
    m0 = mag[:1]
    base["MagDiffRatio"] = np.where(np.abs(m0) > _EPS, mag / np.where(np.abs(m0) > _EPS, m0, 1.0), 0.0)
    base["CosSimDelta"] = cos - cos[:1]
    base["SteerAlignDelta"] = align - align[:1]
    stat = {"Mean": np.mean, "Std": np.std, "Max": np.max, "Min": np.min}
    cols = {}
    for name, where in _steerboost_names(cfg, li, tokens, compat):
        kind = where[0]
        if kind == "after":
            cols[name] = sign * norms  # |m v| / m, and 0 at m = 0
        elif kind == "alpha":
            cols[name] = mults
        elif where[1] == "cell":
            cols[name] = base[kind][t.index(where[2]), where[3]]
        else:
            f = stat[where[2]]
            if where[1] == "global":
                m = base[kind][np.ix_([t.index(n) for n in where[3]], list(where[4]))]
                cols[name] = f(m.reshape(-1, m.shape[-1]), axis=0)
            elif where[1] == "token":
                cols[name] = f(base[kind][t.index(where[3])][list(where[4])], axis=0)
            else:
                cols[name] = f(base[kind][[t.index(n) for n in where[4]], where[3]], axis=0)
    return cols
