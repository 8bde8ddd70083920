"""Predictor-guided search for a steering strength that succeeds, at a fraction of the decoding cost.

Grid search decodes a full rollout at every candidate strength and keeps one the judge calls a
success. Guided search decodes only the first ``k`` tokens per candidate (the early-decoding
features), asks the predictor, and decodes one full rollout at the chosen strength to confirm.
With ``max_rollouts=R > 1`` a failed confirmation moves on to the candidate with the next
highest predicted success probability, up to ``R`` full rollouts (stopping at the first success):
the paper's ranked search, which decodes only the top of the predictor's ranking.

Strategies (:func:`choose_strength`):

* ``argmax``: every candidate is evaluated (one batch); the one with the highest predicted
  probability of success is chosen (the smaller strength on ties).
* ``bisect``: candidates sorted by strength; predicted under-steer moves up, over-steer moves
  down, success stops; ``ceil(log2(n)) + 1`` evaluations at most. The chosen strength is the
  evaluated one with the highest predicted success probability.
* ``feedback``: scored and ranked as ``argmax``, but the confirming rollouts feed back
  (:func:`confirm_ranked`): a judged under-steer at ``s`` removes every remaining candidate
  ``<= s``, a judged over-steer at ``s`` every one ``>= s`` (the monotone order of strength that
  IGS-A / IGS-D exploit), and the next rollout is the best-ranked candidate left. With one
  rollout, or when the first confirmation succeeds, it is ``argmax``.

Decoded tokens are counted as: guided, ``k`` per evaluated candidate plus the confirming
rollouts; grid, ``max_new_tokens`` per candidate. Neither counts the prompt's unsteered rollout,
which both need only because the default judge scores against it (the features' teacher-forced
reference is a forward over the steered tokens, not a decode, and is not counted either).

The paper's comparison (:func:`simulate_strategies`, :func:`compare_strategies`): the grid-search
baselines of Fan et al.'s reference code (SteerBoost ``alphasearch.py``): IGS, CGS, TCGS, IGS-A,
IGS-D; the guided search; and a threshold sweep on P(success), all replayed on one labelled
rollout table with held-out class probabilities (:func:`held_out_proba`, or any held-out
prediction table), reported as success rate and decoded tokens, also relative to IGS on the same
items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from steerjax.errors import PredictorError
from steerjax.studies.steerability_prediction.classifier import (
    SteerabilityPredictor,
    concept_folds,
    feature_columns_of,
    feature_step,
    fit,
    group_folds,
)
from steerjax.studies.steerability_prediction.config import DEFAULT_FEATURE_SET, PRUNING, STRATEGIES
from steerjax.studies.steerability_prediction.judge import LABELS


def choose_strength(strengths: Sequence[float], proba: pd.DataFrame, strategy: str = "argmax"):
    """``(chosen strength, evaluated strengths)`` from per-candidate class probabilities.

    Args:
      strengths: candidate strengths, aligned with the rows of ``proba``.
      proba: columns ``under-steer``, ``success``, ``over-steer`` (predicted probabilities).
    """
    ranking, evaluated = rank_strengths(strengths, proba, strategy)
    return ranking[0], evaluated


def rank_strengths(strengths: Sequence[float], proba: pd.DataFrame, strategy: str = "argmax"):
    """``(ranking, evaluated)``: the evaluated strengths by predicted success probability (highest
    first, the smaller strength on ties), and the strengths in the order evaluated."""
    s = np.asarray(strengths, float)
    if s.size == 0 or s.size != len(proba):
        raise PredictorError(f"{s.size} strengths for {len(proba)} predictions")
    order = np.argsort(s, kind="stable")
    # a predictor fitted on rows without some class has no column for it: probability 0
    table = proba.reindex(columns=list(LABELS), fill_value=0.0).iloc[order].reset_index(drop=True)
    return _search(s[order], lambda idx: table.iloc[list(idx)], strategy)


def _search(strengths, predict, strategy):
    """The search itself: ``predict(indices)`` gives class probabilities for candidates
    ``strengths[indices]`` (sorted ascending), evaluated lazily (bisect asks for one at a time).
    Returns ``(ranking, evaluated)`` as :func:`rank_strengths`."""
    if strategy not in STRATEGIES:
        raise PredictorError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    s = [float(x) for x in strengths]
    seen: dict[int, pd.Series] = {}

    def ask(idx):
        rows = predict([i for i in idx if i not in seen])
        for i, (_, row) in zip([i for i in idx if i not in seen], rows.iterrows()):
            seen[i] = row
        return [seen[i] for i in idx]

    if strategy in ("argmax", "feedback"):
        ask(range(len(s)))
    else:
        lo, hi = 0, len(s) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            (row,) = ask([mid])
            predicted = row[list(LABELS)].astype(float).idxmax()
            if predicted == "success":
                break
            if predicted == "over-steer":
                hi = mid - 1
            else:
                lo = mid + 1
    ranking = sorted(seen, key=lambda i: (-float(seen[i]["success"]), i))  # the smaller strength on ties
    return [s[i] for i in ranking], [s[i] for i in seen]


def confirm_ranked(ranking: Sequence[float], label_of, max_rollouts: int, *, prune: bool = False) -> list:
    """Confirm ranked candidates with full rollouts, in turn, until one succeeds.

    Args:
      ranking: candidate strengths, best first (:func:`rank_strengths`).
      label_of: ``label_of(strength)`` decodes (or looks up) the rollout at ``strength`` and returns
        its judged label (one of ``LABELS``), or None when there is no judge (no further rollout).
      max_rollouts: at most this many rollouts.
      prune: the ``feedback`` strategy: an ``under-steer`` at ``s`` removes every remaining
        candidate ``<= s``, an ``over-steer`` at ``s`` every one ``>= s`` (strength is assumed
        monotone: a weaker push under-steers too, a stronger one over-steers too); the next rollout
        is the best-ranked candidate left, and none left ends the search early.

    Returns:
      ``[(strength, label), ...]`` in the order decoded; it ends at the first ``success`` (or
      None label), after ``max_rollouts``, or when no candidate is left.
    """
    max_rollouts = _check_rollouts(max_rollouts)
    lo, hi = -np.inf, np.inf  # with pruning, the candidates left are those strictly between
    tried = []
    for s in ranking:
        if len(tried) >= max_rollouts:
            break
        if not lo < s < hi:
            continue
        label = label_of(s)
        tried.append((s, label))
        if label is None or label == "success":
            break
        if prune and label == "under-steer":
            lo = max(lo, s)
        elif prune and label == "over-steer":
            hi = min(hi, s)
    return tried


def _check_rollouts(max_rollouts) -> int:
    if int(max_rollouts) != max_rollouts or max_rollouts < 1:
        raise PredictorError(f"max_rollouts must be a positive integer, got {max_rollouts!r}")
    return int(max_rollouts)


def _cells(table: pd.DataFrame, n_folds: int, prompt_folds: int | None, prompt_holdout: float, seed: int):
    """``(fold, prompt_fold, train mask, test mask)`` per cell of :func:`held_out_proba`'s split."""
    pids = np.asarray(sorted(set(table["prompt_id"])))
    if prompt_folds is None:
        if not 0 < prompt_holdout < 1:
            raise PredictorError(f"prompt_holdout must be in (0, 1), got {prompt_holdout}")
        n_test = max(1, int(round(prompt_holdout * len(pids))))
        if n_test >= len(pids):
            raise PredictorError(f"{len(pids)} prompts: too few to hold some out for the search")
        groups = [np.random.default_rng(seed).permutation(pids)[:n_test]]
    else:
        if not 2 <= prompt_folds <= len(pids):
            raise PredictorError(f"prompt_folds must be in 2..{len(pids)} (the prompts), got {prompt_folds}")
        groups = group_folds(pids, prompt_folds, seed, "prompts")
    for f, concepts in enumerate(concept_folds(table["concept"], n_folds, seed)):
        unseen = table["concept"].isin(concepts)
        for g, test_p in enumerate(groups):
            held = table["prompt_id"].isin(set(test_p.tolist()))
            yield f, g, ~unseen & ~held, unseen & held


def held_out_proba(table: pd.DataFrame, *, n_folds: int, k: int, prompt_folds: int | None = None,
                   prompt_holdout: float = 0.2, seed: int = 0, label_col: str = "label",
                   feature_columns: Sequence[str] | None = None, feature_set: str = DEFAULT_FEATURE_SET,
                   **fit_kw) -> pd.DataFrame:
    """Class probabilities for unseen concepts on unseen prompts, one row per held-out row of ``table``.

    The split: concept folds by
    :func:`~steerjax.studies.steerability_prediction.classifier.concept_folds` times prompt folds (``prompt_folds``) or
    one seeded hold-out of ``prompt_holdout`` of the prompts; each cell's rows are scored by a
    predictor fitted on the other concepts' rows of the other prompts, with the features of the
    first ``k`` steps: of ``feature_columns`` when given (those of steps ``<= k``), else of the
    named ``feature_set`` (:func:`~steerjax.studies.steerability_prediction.classifier.feature_columns_of`). This is the
    probability table :func:`simulate_strategies` takes.

    Returns:
      A frame indexed like the held-out rows of ``table``: columns ``under-steer``, ``success``,
      ``over-steer`` (0 for a class the cell's training rows lacked), ``fold`` and ``prompt_fold``.
    """
    if feature_columns is None:
        cols = feature_columns_of(table, max_step=k, feature_set=feature_set)
    else:
        cols = [c for c in feature_columns if (step := feature_step(c)) is None or step <= k]
        if not [c for c in cols if c != "strength"]:
            raise PredictorError(f"none of the {len(feature_columns)} feature columns given is from steps <= {k}: "
                                 "give columns of the first k steps, or a larger k")
    out = []
    for f, g, train, test in _cells(table, n_folds, prompt_folds, prompt_holdout, seed):
        m = fit(table[train], feature_columns=cols, label_col=label_col, seed=seed, **fit_kw)
        proba = m.predict_proba(table[test]).reindex(columns=list(LABELS), fill_value=0.0)
        out.append(proba.assign(fold=f, prompt_fold=g))
    return pd.concat(out)


# ----------------------------------------------------------------------------- the paper's baselines
#
# Fan et al.'s AlphaSearch (SteerBoost ``alphasearch.py``), replayed on one labelled table so
# that every strategy is scored on the same (prompt, concept) items and the same rollouts.

BASELINES = ("IGS", "CGS", "TCGS", "IGS-A", "IGS-D")
THRESHOLD_ORDERS = ("ranked", "ascending")
THRESHOLDS = tuple(round(0.02 * i, 2) for i in range(46))  # 0.00 .. 0.90, the reference's sweep
MISSING_LABELS = ("error", "drop")


def simulate_strategies(table: pd.DataFrame, proba: pd.DataFrame | None = None, *, k: int,
                        test=None, train=None, groups=None, max_rollouts: Sequence[int] = (1,),
                        guided: Sequence[str] = ("argmax",), thresholds: Sequence[float] = THRESHOLDS,
                        threshold_orders: Sequence[str] = THRESHOLD_ORDERS, rollout_tokens: float | None = None,
                        label_col: str = "label", missing_labels: str = "error") -> pd.DataFrame:
    """Every strength-selection strategy replayed on a labelled table, one row per item and setting.

    An item is one (prompt, concept) under evaluation; its grid is its rows' strengths (the
    unsteered ``concept == "none"`` rows are not candidates and are ignored). A strategy's
    *rollouts* are the full rollouts it decodes, each costing that row's ``n_tokens`` (or
    ``rollout_tokens`` each); the predictor's *early tokens* are ``k`` per candidate it scores.
    Success is the judge's ``success`` label at a decoded strength. Strategies (SteerBoost
    ``alphasearch.py``; ties between strengths go to the smaller one, as its ascending alpha list
    and stable sorts do):

    * ``IGS``: item-level grid search, the upper bound: every strength of the item decoded; a
      success if any is one (``compute_upper_bound``; cost ``K`` rollouts per prompt).
    * ``CGS``: concept-level grid search, an oracle: per concept (and group), the one strength with
      the most successes over the concept's evaluated prompts, applied to each of them; it needs the
      whole grid of every evaluated prompt to choose, so its cost is the item's grid, as IGS's
      (``setting2_concept_gs_test``; cost ``K``).
    * ``TCGS``: per concept, the strength with the most successes over its ``train`` rows (other
      prompts), one rollout per evaluated prompt (``setting1_concept_gs_train``, cost 1). The
      training grid is not in ``tokens`` (the reference amortises it); its tokens, shared among
      the concept's evaluated prompts, are in ``setup_tokens``. A concept with no ``train`` rows
      (an unseen concept) has no TCGS: its items are not ``covered`` (the reference runs TCGS on
      seen concepts only).
    * ``IGS-A`` / ``IGS-D``: the grid in ascending / descending strength, stopping at the first
      success (``setting5_ascending_ranked`` / ``setting5_descending_ranked`` with
      ``evaluate_topk`` at budget ``K``: every strength if none succeeds).
    * ``guided-argmax`` / ``guided-bisect``: :func:`rank_strengths` with that strategy (argmax
      scores every candidate: the paper's ranked search by P(success), ``setting4_ours_ranked``),
      then up to ``R`` rollouts down the ranking, stopping at the first success (``evaluate_topk``),
      for each ``R`` in ``max_rollouts``.
    * ``guided-feedback``: argmax's scores and ranking, but each failed rollout's judged label (the
      item's labelled row at that strength) prunes the candidates: under-steer at ``s`` removes
      those ``<= s``, over-steer those ``>= s``; the next rollout is the best-ranked one left
      (:func:`confirm_ranked`; not in the reference).
    * ``threshold-ranked``: every candidate scored; of the top ``R`` by P(success), only those with
      P(success) >= ``t`` are decoded, best first, stopping at the first success; none passing
      means no rollout and a failure (``evaluate_threshold_sweep``; "accept the best").
    * ``threshold-ascending``: strengths scored one at a time upward; one with P(success) >= ``t``
      is decoded; stop at the first success, after ``R`` rollouts, or at the grid's end ("accept
      the first"; not in the reference, whose sweep is ``threshold-ranked``). Early tokens are ``k``
      per strength scored, so it can cost less than ``threshold-ranked``.

    Monotone in ``t``: for ``threshold-ranked``, success, rollouts and tokens never rise with ``t``
    (the passing candidates are a prefix of the ranking); for ``threshold-ascending`` with ``R`` at
    least the grid's size, success never rises (tokens may: a skipped early success makes it decode
    further up).

    A one-strength grid: every strategy decodes that strength (guided ones after scoring it), so
    the comparison is trivial; a table where every item has one strength is refused.

    Args:
      table: one row per (``prompt_id``, ``concept``, ``strength``) with ``label_col`` (one of
        ``LABELS``) and ``n_tokens`` (decoded tokens of that rollout) unless ``rollout_tokens``.
      proba: class probabilities (columns ``LABELS``; a missing class is 0) for at least the
        evaluated rows, indexed like ``table``: e.g. :func:`held_out_proba`, or a held-out
        prediction table. Needed for the guided and threshold strategies only.
      k: early tokens per candidate the predictor scores (its features' decoding steps).
      test: the rows under evaluation (held-out prompts, unseen concepts): a boolean mask aligned
        with ``table`` (Series or array); default: the rows ``proba`` covers, else every row.
      train: rows TCGS may learn from; default: every row not in ``test``.
      groups: a name per row, reported per group (e.g. ``"seen"`` / ``"unseen"``): a column name
        of ``table`` or a Series / array aligned with it; default: one group ``"all"``.
      max_rollouts: budgets ``R`` for the guided and threshold strategies.
      guided: :data:`STRATEGIES` to run as guided search (empty: none).
      thresholds: P(success) thresholds ``t`` (empty: no sweep).
      threshold_orders: which threshold strategies (:data:`THRESHOLD_ORDERS`).
      rollout_tokens: the cost of every full rollout, instead of each row's ``n_tokens`` (the
        reference uses the mean steered response length).
      missing_labels: ``"error"`` (default) refuses rows without a label; ``"drop"`` drops them,
        so those strengths are not candidates (a CGS / TCGS choice missing from an item's grid
        leaves that item uncovered). The reference counts a missing judgment as a failure.

    Returns:
      One row per (item, strategy, setting): ``group``, ``prompt_id``, ``concept``, ``strategy``,
      ``max_rollouts`` and ``threshold`` (NaN where they do not apply), ``covered``, ``success``,
      ``strength`` (the succeeding or last decoded one; NaN for none), ``rollouts``,
      ``early_tokens``, ``rollout_tokens``, ``tokens`` (their sum) and ``setup_tokens``.
      :func:`compare_strategies` summarises it.

    Raises:
      PredictorError: missing columns, labels (with ``missing_labels="error"``) or probabilities;
        unknown labels, strategies or orders; duplicated rows; a bad budget, threshold or ``k``;
        masks not aligned with ``table``; no rows to evaluate; every grid a single strength.
    """
    budgets = [_check_rollouts(r) for r in max_rollouts]
    guided = list(guided)
    for g in guided:
        if g not in STRATEGIES:
            raise PredictorError(f"unknown strategy {g!r}; choose one of {STRATEGIES}")
    orders = list(threshold_orders) if len(thresholds) else []
    for o in orders:
        if o not in THRESHOLD_ORDERS:
            raise PredictorError(f"unknown threshold order {o!r}; choose one of {THRESHOLD_ORDERS}")
    ts = np.asarray(sorted({float(t) for t in thresholds}), float)
    if ts.size and not (np.isfinite(ts).all() and (ts >= 0).all() and (ts <= 1).all()):
        raise PredictorError(f"thresholds are probabilities in [0, 1], got {list(thresholds)}")
    if int(k) != k or k < 0:
        raise PredictorError(f"k (early tokens per scored candidate) must be a non-negative integer, got {k!r}")
    rows, test, train, group = _strategy_rows(table, proba, test, train, groups, label_col, missing_labels,
                                              rollout_tokens)
    needs_proba = bool(guided or orders)
    if needs_proba:
        proba = _aligned_proba(proba, rows.index[test])
    evaluated = rows[test].assign(_group=group[test])
    cgs = _best_strengths(evaluated, ["_group", "concept"])
    tcgs = _best_strengths(rows[train], ["concept"])
    train_tokens = rows[train].groupby("concept")["_tokens"].sum()
    n_items = evaluated.groupby("concept")["prompt_id"].nunique()
    blocks = []
    for (grp, pid, concept), item in evaluated.groupby(["_group", "prompt_id", "concept"], sort=True):
        item = item.sort_values("strength")
        s = item["strength"].to_numpy(float)
        ok = item["_success"].to_numpy(bool)
        tok = item["_tokens"].to_numpy(float)
        mine = [{**_decode(s, ok, tok, np.arange(len(s)), stop=False), "strategy": "IGS"},
                {**_decode(s, ok, tok, np.arange(len(s))), "strategy": "IGS-A"},
                {**_decode(s, ok, tok, np.arange(len(s))[::-1]), "strategy": "IGS-D"},
                {**_single(s, ok, tok, cgs.get((grp, concept)), grid_cost=True), "strategy": "CGS"}]
        tc = _single(s, ok, tok, tcgs.get(concept), grid_cost=False)
        if tc["covered"]:
            tc["setup_tokens"] = float(train_tokens.get(concept, 0.0)) / n_items[concept]
        mine.append({**tc, "strategy": "TCGS"})
        if needs_proba:
            p = proba.loc[item.index]
            # each decoded rollout's judged label (a success where the item's row succeeds)
            label_at = dict(zip(s.tolist(), np.where(ok, "success", item[label_col].astype(str))))
            for strategy in guided if budgets else ():
                ranking, scored = rank_strengths(s, p, strategy)
                # a smaller budget decodes a prefix of the largest budget's rollouts
                tried = [x for x, _ in confirm_ranked(ranking, label_at.get, max(budgets), prune=strategy in PRUNING)]
                order = np.searchsorted(s, tried)
                mine += [{**_decode(s, ok, tok, order[:r], early=k * len(scored)), "strategy": f"guided-{strategy}",
                          "max_rollouts": r} for r in budgets]
            p_ok = p["success"].to_numpy(float)
            for o in orders:
                sweep = _ranked_sweep if o == "ranked" else _ascending_sweep
                mine += [{**sweep(s, ok, tok, p_ok, r, ts, k), "strategy": f"threshold-{o}", "max_rollouts": r}
                         for r in budgets]
        blocks += [{"group": grp, "prompt_id": pid, "concept": concept, **m} for m in mine]
    return _frame(blocks)


def _strategy_rows(table, proba, test, train, groups, label_col, missing_labels, rollout_tokens):
    """The steered rows checked, with ``_success`` and ``_tokens`` columns, and the test, train
    and group Series (aligned with the rows)."""
    from steerjax.studies.steerability_prediction.concepts import UNSTEERED

    if missing_labels not in MISSING_LABELS:
        raise PredictorError(f"missing_labels must be one of {MISSING_LABELS}, got {missing_labels!r}")
    need = {"prompt_id", "concept", "strength", label_col} | ({"n_tokens"} if rollout_tokens is None else set())
    if need - set(table.columns):
        lack = sorted(need - set(table.columns))
        hint = " (or pass rollout_tokens=, the decoded tokens of one full rollout)" if "n_tokens" in lack else ""
        raise PredictorError(f"the rollout table lacks {lack}{hint}")
    if not table.index.is_unique:
        raise PredictorError("the rollout table's index has duplicates: reset_index() it (masks and "
                             "probabilities are matched by index)")
    test = _mask(test, table, "test", default=None if proba is None else table.index.isin(proba.index))
    train = _mask(train, table, "train", default=~test)
    if isinstance(groups, str):
        if groups not in table:
            raise PredictorError(f"groups={groups!r} is not a column of the rollout table")
        group = table[groups].astype(str)
    elif groups is None:
        group = pd.Series("all", index=table.index)
    else:
        group = _aligned(groups, table, "groups").astype(str)
    steered = (table["concept"] != UNSTEERED).to_numpy()
    rows = table.loc[steered, sorted(need)].copy()  # only what the strategies read: a wide table stays as it is
    test, train, group = test[steered], train[steered], group[steered]
    missing = rows[label_col].isna()
    if missing.any():
        if missing_labels == "error":
            eg = rows.loc[missing, ["prompt_id", "concept", "strength"]].head(3).to_dict("records")
            raise PredictorError(f"{int(missing.sum())} rollouts have no label, e.g. {eg}: label them, or pass "
                                 "missing_labels='drop' to leave those strengths out of their items' grids")
        rows, test, train, group = rows[~missing], test[~missing], train[~missing], group[~missing]
    bad = sorted(set(rows[label_col].astype(str)) - set(LABELS))
    if bad:
        raise PredictorError(f"unknown labels {bad}; expected {LABELS}")
    dup = rows.duplicated(["prompt_id", "concept", "strength"])
    if dup.any():
        eg = rows.loc[dup, ["prompt_id", "concept", "strength"]].head(3).to_dict("records")
        raise PredictorError(f"{int(dup.sum())} duplicated (prompt_id, concept, strength) rows, e.g. {eg}: "
                             "one rollout per strength")
    if not np.isfinite(rows["strength"].to_numpy(float)).all():
        raise PredictorError("strengths must be finite numbers")
    if rollout_tokens is None:
        tokens = rows["n_tokens"].to_numpy(float)
    else:
        if not (np.isfinite(rollout_tokens) and rollout_tokens > 0):
            raise PredictorError(f"rollout_tokens must be a positive number, got {rollout_tokens!r}")
        tokens = np.full(len(rows), float(rollout_tokens))
    if not (np.isfinite(tokens).all() and (tokens >= 0).all()):
        raise PredictorError("n_tokens must be non-negative token counts")
    rows = rows.assign(_success=rows[label_col].astype(str).to_numpy() == "success", _tokens=tokens)
    if not test.any():
        raise PredictorError("no rows to evaluate: test= selects none (or proba covers no steered row)")
    sizes = rows[test].groupby(["prompt_id", "concept"]).size()
    if (sizes == 1).all():
        raise PredictorError("every item's grid is a single strength: each strategy would decode that one strength "
                             "and there is nothing to search; pass two or more strengths per (prompt, concept)")
    gcount = pd.DataFrame({"g": group[test], "p": rows.loc[test, "prompt_id"], "c": rows.loc[test, "concept"]})
    if (gcount.groupby(["p", "c"])["g"].nunique() > 1).any():
        raise PredictorError("groups must name one group per (prompt_id, concept): its rows are one search")
    return rows, test, train, group


def _aligned(values, table, name):
    if isinstance(values, pd.Series):
        if not values.index.equals(table.index):
            if not table.index.isin(values.index).all():
                raise PredictorError(f"{name} does not cover the rollout table's index: align it with the table")
            values = values.loc[table.index]
        return values
    values = np.asarray(values)
    if values.shape != (len(table),):
        raise PredictorError(f"{name} has shape {values.shape}, the rollout table {len(table)} rows: one value a row")
    return pd.Series(values, index=table.index)


def _mask(mask, table, name, default):
    if mask is None:
        return pd.Series(True, index=table.index) if default is None else pd.Series(np.asarray(default, bool),
                                                                                    index=table.index)
    mask = _aligned(mask, table, name)
    if not pd.api.types.is_bool_dtype(mask) or mask.isna().any():
        raise PredictorError(f"{name} must be a boolean mask over the table's rows (no missing values), got dtype "
                             f"{mask.dtype}")
    return mask.astype(bool)


def _aligned_proba(proba, index):
    if proba is None:
        raise PredictorError("the guided and threshold strategies need proba= (class probabilities of the evaluated "
                             "rows, e.g. held_out_proba(...)); pass guided=() and thresholds=() for the baselines only")
    lack = index.difference(proba.index)
    if len(lack):
        raise PredictorError(f"proba lacks {len(lack)} evaluated rows (e.g. index {list(lack[:3])}): give every "
                             "evaluated row its held-out probabilities, or restrict test=")
    if "success" not in proba:
        raise PredictorError("proba has no 'success' column: columns are the classes "
                             f"{LABELS}, as SteerabilityPredictor.predict_proba gives them")
    p = proba.loc[index].reindex(columns=list(LABELS), fill_value=0.0).astype(float)
    if not np.isfinite(p.to_numpy()).all():
        raise PredictorError("proba has non-finite values on evaluated rows")
    return p


def _best_strengths(rows: pd.DataFrame, by: list[str]) -> dict:
    """Per ``by`` key, the strength with the most successes (the smaller on ties)."""
    if rows.empty:
        return {}
    counts = rows.groupby(by + ["strength"])["_success"].sum().reset_index()
    counts = counts.sort_values(by + ["_success", "strength"], ascending=[True] * len(by) + [False, True])
    best = counts.drop_duplicates(by)
    keys = best[by[0]] if len(by) == 1 else list(zip(*(best[c] for c in by)))
    return dict(zip(keys, best["strength"].astype(float)))


def _decode(s, ok, tok, order, *, stop=True, early=0):
    """Decode ``order`` (indices into the grid) in turn, stopping at the first success if ``stop``.
    ``strength``: the first success decoded, else the last strength decoded."""
    order = np.asarray(order, int)
    hit = np.flatnonzero(ok[order])
    n = int(hit[0]) + 1 if stop and hit.size else len(order)
    strength = s[order[hit[0]]] if hit.size else (s[order[n - 1]] if n else np.nan)
    return {"covered": True, "success": bool(hit.size), "strength": float(strength), "rollouts": n,
            "early_tokens": float(early), "rollout_tokens": float(tok[order[:n]].sum())}


def _single(s, ok, tok, chosen, *, grid_cost):
    """One chosen strength per item (CGS, TCGS); uncovered when there is no choice or the item lacks it."""
    i = np.flatnonzero(s == chosen) if chosen is not None else np.array([], int)
    if not i.size:
        return {"covered": False, "success": False, "strength": np.nan, "rollouts": 0, "early_tokens": 0.0,
                "rollout_tokens": 0.0}
    i = int(i[0])
    return {"covered": True, "success": bool(ok[i]), "strength": float(s[i]),
            "rollouts": len(s) if grid_cost else 1, "early_tokens": 0.0,
            "rollout_tokens": float(tok.sum() if grid_cost else tok[i])}


def _ranked_sweep(s, ok, tok, p, r, ts, k):
    """``threshold-ranked`` for every threshold: the top ``r`` by P(success), those >= t, best first."""
    order = sorted(range(len(s)), key=lambda i: (-p[i], i))[:r]  # rank_strengths's order
    order = np.asarray(order, int)
    pass_n = (p[order][:, None] >= ts[None, :]).sum(0)  # a prefix: p falls along the ranking
    hit = np.flatnonzero(ok[order])
    first = int(hit[0]) if hit.size else len(order)
    success = first < pass_n
    n = np.where(success, first + 1, pass_n)
    spent = np.concatenate([[0.0], np.cumsum(tok[order])])[n]
    last = np.where(n > 0, s[order][np.maximum(n - 1, 0)], np.nan)
    return {"threshold": ts, "covered": np.ones(ts.size, bool), "success": success, "strength": last,
            "rollouts": n, "early_tokens": np.full(ts.size, float(k * len(s))), "rollout_tokens": spent}


def _ascending_sweep(s, ok, tok, p, r, ts, k):
    """``threshold-ascending`` for every threshold: score upward, decode those >= t, at most ``r``."""
    passing = p[:, None] >= ts[None, :]  # (strength, threshold)
    used = np.cumsum(passing, 0)
    stop = passing & (ok[:, None] | (used >= r))  # a success, or the last rollout the budget allows
    any_stop = stop.any(0)
    at = np.where(any_stop, stop.argmax(0), len(s) - 1)  # the last strength scored
    cols = np.arange(ts.size)
    n = used[at, cols]
    success = any_stop & ok[at] & passing[at, cols]
    spent = np.cumsum(passing * tok[:, None], 0)[at, cols]
    dec_idx = np.where(passing, np.arange(len(s))[:, None], -1)
    last_i = np.maximum.accumulate(dec_idx, 0)[at, cols]
    last = np.where(last_i >= 0, s[np.maximum(last_i, 0)], np.nan)
    return {"threshold": ts, "covered": np.ones(ts.size, bool), "success": success, "strength": last,
            "rollouts": n, "early_tokens": k * (at + 1.0), "rollout_tokens": spent}


def _frame(blocks) -> pd.DataFrame:
    cols = ["group", "prompt_id", "concept", "strategy", "max_rollouts", "threshold", "covered", "success",
            "strength", "rollouts", "early_tokens", "rollout_tokens", "setup_tokens"]
    defaults = {"max_rollouts": np.nan, "threshold": np.nan, "setup_tokens": 0.0}
    lens = [max((np.size(v) for v in b.values() if isinstance(v, np.ndarray)), default=1) for b in blocks]
    data = {}
    for c in cols:
        parts = []
        for b, n in zip(blocks, lens):
            v = b.get(c, defaults.get(c))
            scalar = not isinstance(v, np.ndarray)
            parts.append(np.full(n, v, dtype=object if isinstance(v, str) else None) if scalar else v)
        data[c] = np.concatenate(parts) if parts else np.array([])
    out = pd.DataFrame(data)
    out = out.astype({"max_rollouts": float, "threshold": float, "covered": bool, "success": bool, "strength": float,
                      "rollouts": int, "early_tokens": float, "rollout_tokens": float, "setup_tokens": float})
    out["tokens"] = out["early_tokens"] + out["rollout_tokens"]
    return out


def held_out_strategies(table: pd.DataFrame, *, feature_columns: Sequence[str], n_folds: int, prompt_folds: int,
                        k: int, max_rollouts: Sequence[int] = (1,), thresholds: Sequence[float] | None = None,
                        guided: Sequence[str] = STRATEGIES, seed: int = 0,
                        **fit_kw) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(items, summary)``: every strategy on unseen concepts x held-out prompts (concept folds x
    prompt folds), replayed with the held-out probabilities of a predictor on ``feature_columns``
    (:func:`held_out_proba`, steps ``<= k``): the baselines, guided search and the threshold sweep
    (``thresholds``; ``None``: :data:`THRESHOLDS`) of :func:`simulate_strategies`, with TCGS per
    cell learning each concept's strength on the cell's other prompts; ``summary`` is
    :func:`compare_strategies` of the items. The study and ``steerjax predictor train`` both
    report this table."""
    proba = held_out_proba(table, n_folds=n_folds, k=k, feature_columns=feature_columns, prompt_folds=prompt_folds,
                           seed=seed, **fit_kw)
    kw = dict(k=k, max_rollouts=list(max_rollouts))
    thresholds = list(thresholds) if thresholds is not None else THRESHOLDS
    items = simulate_strategies(table, proba[list(LABELS)], guided=guided, thresholds=thresholds, **kw)
    tcgs = []
    for _, cell in proba.groupby(["fold", "prompt_fold"], sort=True):
        test = table.index.isin(cell.index)
        cell_concepts = set(table.loc[test, "concept"])
        cell_prompts = set(table.loc[test, "prompt_id"])
        train = table["concept"].isin(cell_concepts) & ~table["prompt_id"].isin(cell_prompts)
        part = simulate_strategies(table, None, test=test, train=train.to_numpy(), guided=(), thresholds=(), **kw)
        tcgs.append(part[part["strategy"] == "TCGS"])
    items = pd.concat([items[items["strategy"] != "TCGS"], *tcgs], ignore_index=True)
    return items, compare_strategies(items)


def compare_strategies(items: pd.DataFrame) -> pd.DataFrame:
    """The tidy comparison: one row per (group, strategy, max_rollouts, threshold).

    Args:
      items: a :func:`simulate_strategies` table.

    Returns:
      Columns ``group``, ``strategy``, ``max_rollouts``, ``threshold``, ``items`` (covered),
      ``uncovered``, ``success_rate``, ``tokens_per_item``, ``early_tokens_per_item``,
      ``rollouts_per_item``, ``setup_tokens`` (total), and relative to IGS on the same items:
      ``success_vs_igs`` (successes / IGS's successes; NaN when IGS has none) and
      ``tokens_vs_igs`` (decoded tokens / IGS's; NaN when IGS decodes none).
    """
    key, igs = _igs_items(items, {"group", "prompt_id", "concept", "strategy", "covered", "success", "tokens"})
    out = []
    for (grp, strategy, r, t), g in items.groupby(["group", "strategy", "max_rollouts", "threshold"], sort=False,
                                                  dropna=False):
        cov = g[g["covered"]]
        ref = igs.reindex(pd.MultiIndex.from_frame(cov[key]))
        n = len(cov)
        ref_ok, ref_tok = float(ref["success"].sum()), float(ref["tokens"].sum())
        out.append({
            "group": grp, "strategy": strategy, "max_rollouts": r, "threshold": t, "items": n,
            "uncovered": int(len(g) - n),
            "success_rate": float(cov["success"].mean()) if n else np.nan,
            "tokens_per_item": float(cov["tokens"].mean()) if n else np.nan,
            "early_tokens_per_item": float(cov["early_tokens"].mean()) if n else np.nan,
            "rollouts_per_item": float(cov["rollouts"].mean()) if n else np.nan,
            "setup_tokens": float(cov["setup_tokens"].sum()),
            "success_vs_igs": float(cov["success"].sum()) / ref_ok if ref_ok else np.nan,
            "tokens_vs_igs": float(cov["tokens"].sum()) / ref_tok if ref_tok else np.nan,
        })
    order = {name: i for i, name in enumerate(BASELINES)}
    out = pd.DataFrame(out)
    out["_o"] = out["strategy"].map(lambda x: order.get(x, len(order)))
    out = out.sort_values(["group", "_o", "strategy", "max_rollouts", "threshold"], na_position="first")
    return out.drop(columns="_o").reset_index(drop=True)


def _igs_items(items: pd.DataFrame, need: set[str]):
    """``(item key columns, IGS's success and tokens by item)`` of a :func:`simulate_strategies`
    table that has the columns ``need``; refuses other tables and tables without IGS rows."""
    if need - set(items.columns):
        raise PredictorError(f"not a simulate_strategies table: lacks {sorted(need - set(items.columns))}")
    key = ["group", "prompt_id", "concept"]
    igs = items[items["strategy"] == "IGS"].set_index(key)[["success", "tokens"]]
    if igs.empty:
        raise PredictorError("the items have no IGS rows: relative figures are against IGS")
    return key, igs


def bootstrap_strategies(items: pd.DataFrame, *, n_draws: int = 1000, seed: int = 0,
                         level: float = 0.95) -> pd.DataFrame:
    """:func:`compare_strategies`'s figures relative to IGS with a bootstrap over concepts.

    Within each group the concepts are resampled with replacement (every item of a drawn concept
    counted as often as it is drawn; the same draws for every strategy, so they stay paired), and
    ``success_vs_igs`` and ``tokens_vs_igs`` recomputed per draw on the covered items, as
    :func:`compare_strategies` computes them.

    Args:
      items: a :func:`simulate_strategies` table (e.g. without the threshold rows, to keep it short).
      n_draws, seed: the draws (:func:`steerjax.studies.steerability_prediction.evaluation.concept_draws`).
      level: the intervals' coverage (percentile intervals).

    Returns:
      One row per (``group``, ``strategy``, ``max_rollouts``, ``threshold``): ``concepts``,
      ``success_vs_igs`` and ``tokens_vs_igs`` (the point figures, on every item) with
      ``success_vs_igs_low`` / ``_high`` and ``tokens_vs_igs_low`` / ``_high``.

    Raises:
      PredictorError: not a :func:`simulate_strategies` table, no IGS rows, a group with fewer
        than 2 concepts.
    """
    from steerjax.studies.steerability_prediction.evaluation import concept_draws, interval

    key, igs = _igs_items(items, {"group", "prompt_id", "concept", "strategy", "max_rollouts", "threshold",
                                  "covered", "success", "tokens"})
    out = []
    for grp, g in items.groupby("group", sort=False):
        names, weights = concept_draws(g["concept"], n_draws, seed)
        cov = g[g["covered"]]
        ref = igs.reindex(pd.MultiIndex.from_frame(cov[key])).to_numpy(float)
        cov = cov.assign(_ok=cov["success"].astype(float), _tok=cov["tokens"].astype(float), _ref_ok=ref[:, 0],
                         _ref_tok=ref[:, 1])
        for (strategy, r, t), s in g.groupby(["strategy", "max_rollouts", "threshold"], sort=False, dropna=False):
            c = cov.loc[cov.index.intersection(s.index)]
            sums = c.groupby("concept")[["_ok", "_tok", "_ref_ok", "_ref_tok"]].sum().reindex(names, fill_value=0.0)
            total, drawn = sums.sum().to_numpy(), weights @ sums.to_numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                ratios = {"success_vs_igs": (total[0] / total[2], drawn[:, 0] / drawn[:, 2]),
                          "tokens_vs_igs": (total[1] / total[3], drawn[:, 1] / drawn[:, 3])}
            row = {"group": grp, "strategy": strategy, "max_rollouts": r, "threshold": t, "concepts": len(names)}
            for name, (point, d) in ratios.items():
                lo, hi = interval(d, level)
                row.update({name: float(point), f"{name}_low": lo, f"{name}_high": hi})
            out.append(row)
    return pd.DataFrame(out)


def guided_search(model, predictor: SteerabilityPredictor, prompt: str, concept, strengths: Sequence[float], *,
                  layer: int, max_new_tokens: int, strategy: str = "argmax", max_rollouts: int = 1, steps=None,
                  judge=None, calibration: pd.DataFrame | None = None, positions: str = "all",
                  seed: int = 0) -> dict:
    """Search a strength for one prompt and concept with the predictor, then decode to confirm.

    ``steps``: the decoding steps whose features the predictor uses (default: those its feature
    columns name). The confirming rollout comes with the prompt's unsteered rollout (the
    testbed's unit, and the judge's reference); with a ``judge`` it is labelled against
    ``calibration``, unsteered rollouts of many prompts (e.g. the testbed's ``concept == "none"``
    rows: the judge's thresholds and concept-score units come from their spread, which one
    prompt's unsteered rollout cannot give), and with
    ``max_rollouts > 1`` (which needs the judge) a rollout the judge does not call a success is
    followed by one at the next-ranked strength, up to ``max_rollouts`` (with ``feedback``, the
    next-ranked one its judged labels have not pruned: :func:`confirm_ranked`). Returns the chosen
    strength (the first success, else the top-ranked one), the evaluated candidates with their
    predictions, every confirming rollout (``tried``), the chosen rollout's text and label (or
    None), ``decoded_tokens`` counted as :func:`simulate_strategies` counts them (``k`` per evaluated
    candidate plus the confirming rollouts) and ``reference_tokens`` (the prompt's unsteered
    rollout, decoded for the judge).
    """
    from steerjax.studies.steerability_prediction.features import early_features
    from steerjax.studies.steerability_prediction.testbed import rollouts

    max_rollouts = _check_rollouts(max_rollouts)
    if max_rollouts > 1 and judge is None:
        raise PredictorError("max_rollouts > 1 confirms with the judge: pass a judge")
    if judge is not None:
        calibration = _calibration(calibration)
    steps = tuple(steps) if steps else _steps_of(predictor)
    cands = sorted({float(x) for x in strengths})
    if not cands or not all(np.isfinite(cands)):
        raise PredictorError(f"strengths must be finite numbers, got {list(strengths)}")
    rows = []

    def predict(idx):
        if not idx:
            return pd.DataFrame(columns=list(LABELS))
        feats, _ = early_features(model, [prompt], [concept], [cands[i] for i in idx], layer=layer, steps=steps,
                                  batch_size=len(cands), positions=positions)
        proba = predictor.predict_proba(feats).reindex(columns=list(LABELS), fill_value=0.0)
        rows.append(pd.concat([feats[["strength"]].reset_index(drop=True), proba.reset_index(drop=True)], axis=1))
        return proba

    ranking, evaluated = _search(cands, predict, strategy)
    tried, reference = [], 0

    def confirm(strength):
        nonlocal reference
        roll = rollouts(model, [prompt], [concept], [strength], layer=layer, max_new_tokens=max_new_tokens,
                        seed=seed, positions=positions, progress=False)
        steered = roll[roll["concept"] != "none"].iloc[0]
        reference = int(roll.loc[roll["concept"] == "none", "n_tokens"].sum())
        label = None
        if judge is not None:  # the new prompt joins the calibration rollouts under a fresh id
            roll = roll.assign(prompt_id=int(calibration["prompt_id"].max()) + 1)
            scores, _ = judge(pd.concat([calibration.set_axis(range(-len(calibration), 0)), roll]))
            label = str(scores.loc[steered.name, "label"])
        tried.append({"strength": strength, "label": label, "text": steered["text"],
                      "n_tokens": int(steered["n_tokens"])})
        return label

    confirm_ranked(ranking, confirm, max_rollouts, prune=strategy in PRUNING)
    best = next((t for t in tried if t["label"] == "success"), tried[0])
    return {
        "strength": best["strength"], "evaluated": evaluated, "label": best["label"], "text": best["text"],
        "tried": tried, "predictions": pd.concat(rows, ignore_index=True),
        "decoded_tokens": len(evaluated) * max(steps) + sum(t["n_tokens"] for t in tried),
        "reference_tokens": reference,
    }


def _calibration(table) -> pd.DataFrame:
    """The unsteered rows of ``table``, checked: the judge calibrates on them."""
    from steerjax.studies.steerability_prediction.concepts import UNSTEERED

    if table is None:
        raise PredictorError("a judge needs calibration=: unsteered rollouts of many prompts (e.g. the testbed's "
                             "concept == 'none' rows); one prompt's own unsteered rollout gives no spread")
    need = {"prompt_id", "prompt", "concept", "strength", "text", "tokens"}
    if need - set(table.columns):
        raise PredictorError(f"calibration rollouts lack {sorted(need - set(table.columns))}")
    cal = table[table["concept"] == UNSTEERED]
    if cal["prompt_id"].nunique() < 2:
        raise PredictorError(f"calibration needs unsteered rollouts of 2 or more prompts, got "
                             f"{cal['prompt_id'].nunique()}")
    return cal.reset_index(drop=True)


def _steps_of(predictor: SteerabilityPredictor) -> tuple[int, ...]:
    steps = sorted({s for c in predictor.feature_columns if (s := feature_step(c)) is not None})
    if not steps:
        raise PredictorError("the predictor's features name no decoding steps (columns ..._k{step})")
    return tuple(steps)
