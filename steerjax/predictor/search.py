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

Decoded tokens are counted as: guided, ``k`` per evaluated candidate plus the confirming
rollouts; grid, ``max_new_tokens`` per candidate. Neither counts the prompt's unsteered rollout,
which both need only because the default judge scores against it (the features' teacher-forced
reference is a forward over the steered tokens, not a decode, and is not counted either).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from steerjax.errors import PredictorError
from steerjax.predictor.classifier import (
    SteerabilityPredictor,
    concept_folds,
    feature_columns_of,
    feature_step,
    fit,
    group_folds,
)
from steerjax.predictor.judge import LABELS

STRATEGIES = ("argmax", "bisect")


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

    if strategy == "argmax":
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


def _check_rollouts(max_rollouts) -> int:
    if int(max_rollouts) != max_rollouts or max_rollouts < 1:
        raise PredictorError(f"max_rollouts must be a positive integer, got {max_rollouts!r}")
    return int(max_rollouts)


def simulate(features: pd.DataFrame, predictor: SteerabilityPredictor, *, strategy: str = "argmax",
             k: int, max_new_tokens: int, max_rollouts: int = 1, label_col: str = "label",
             proba: pd.DataFrame | None = None) -> pd.DataFrame:
    """Guided vs grid search over a labelled testbed, one row per (prompt, concept).

    ``features`` holds every candidate strength of each (prompt, concept) with its features and
    judge label (the testbed's rollouts are greedy, so a confirming rollout at a strength is the
    testbed's rollout at that strength). Guided search confirms the ranked candidates in order,
    at most ``max_rollouts`` of them, and stops at the first success. Columns of the result:
    ``chosen_strength`` (the first success, else the top-ranked one), ``n_rollouts``,
    ``guided_success``, ``grid_success`` (some candidate succeeds), token counts
    ``guided_tokens``, ``grid_tokens`` (every candidate decoded) and ``sequential_tokens`` (grid
    from the smallest strength, stopping at the first success). ``proba``: the predictor's
    probabilities for ``features`` when already computed.
    """
    max_rollouts = _check_rollouts(max_rollouts)
    need = {"prompt_id", "concept", "strength", label_col}
    if need - set(features.columns):
        raise PredictorError(f"features table lacks {sorted(need - set(features.columns))}")
    proba = predictor.predict_proba(features) if proba is None else proba
    rows = []
    for (pid, concept), g in features.groupby(["prompt_id", "concept"], sort=True):
        g = g.sort_values("strength")
        ranking, evaluated = rank_strengths(g["strength"].to_numpy(), proba.loc[g.index], strategy)
        label_at = dict(zip(g["strength"].to_numpy().tolist(), g[label_col].astype(str)))
        tried = ranking[:max_rollouts]
        ok = [label_at[x] == "success" for x in tried]
        n_roll = ok.index(True) + 1 if any(ok) else len(tried)
        hit = np.flatnonzero(g[label_col].astype(str).to_numpy() == "success")
        rows.append({
            "prompt_id": pid, "concept": concept, "chosen_strength": tried[n_roll - 1] if any(ok) else ranking[0],
            "n_evaluated": len(evaluated), "n_rollouts": n_roll, "guided_success": any(ok),
            "grid_success": bool(hit.size), "guided_tokens": len(evaluated) * k + n_roll * max_new_tokens,
            "grid_tokens": len(g) * max_new_tokens,
            "sequential_tokens": (int(hit[0]) + 1 if hit.size else len(g)) * max_new_tokens,
        })
    return pd.DataFrame(rows)


def cross_validated(table: pd.DataFrame, *, n_folds: int, k: int, max_new_tokens: int,
                    strategies: Sequence[str] = STRATEGIES, max_rollouts: Sequence[int] = (1,),
                    prompt_folds: int | None = None, prompt_holdout: float = 0.2, seed: int = 0,
                    label_col: str = "label", **fit_kw) -> pd.DataFrame:
    """Guided vs grid search for unseen concepts on unseen prompts.

    Concepts are split by :func:`~steerjax.predictor.classifier.concept_folds`. Prompts: with
    ``prompt_folds`` they are split into that many seeded folds too
    (:func:`~steerjax.predictor.classifier.group_folds`) and every (concept fold,
    prompt fold) cell is searched by a predictor fitted on the other concepts' rows of the other
    prompts, so every (prompt, concept) pair is searched once; without it, one seeded split holds
    out ``prompt_holdout`` of the prompts. The predictors use the features of the first ``k``
    steps. One :func:`simulate` table for all cells, strategies and ``max_rollouts`` values,
    with ``fold``, ``prompt_fold``, ``strategy`` and ``max_rollouts`` columns.
    """
    budgets = [_check_rollouts(r) for r in max_rollouts]
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
    cols = feature_columns_of(table, max_step=k)
    out = []
    for f, concepts in enumerate(concept_folds(table["concept"], n_folds, seed)):
        unseen = table["concept"].isin(concepts)
        for g, test_p in enumerate(groups):
            held = table["prompt_id"].isin(set(test_p.tolist()))
            m = fit(table[~unseen & ~held], feature_columns=cols, label_col=label_col, seed=seed, **fit_kw)
            test = table[unseen & held]
            proba = m.predict_proba(test)
            for strategy in strategies:
                for r in budgets:
                    sim = simulate(test, m, strategy=strategy, k=k, max_new_tokens=max_new_tokens,
                                   max_rollouts=r, label_col=label_col, proba=proba)
                    out.append(sim.assign(fold=f, prompt_fold=g, strategy=strategy, max_rollouts=r))
    return pd.concat(out, ignore_index=True)


def summarize(sim: pd.DataFrame) -> dict:
    """Success rates and token ratios of a :func:`simulate` table (the issue's two targets)."""
    grid = float(sim["grid_success"].mean())
    guided = float(sim["guided_success"].mean())
    return {
        "pairs": int(len(sim)),
        "grid_success_rate": grid,
        "guided_success_rate": guided,
        "success_ratio": guided / grid if grid else float("nan"),
        "tokens_vs_grid": float(sim["guided_tokens"].sum() / sim["grid_tokens"].sum()),
        "tokens_vs_sequential_grid": float(sim["guided_tokens"].sum() / sim["sequential_tokens"].sum()),
        "mean_evaluated": float(sim["n_evaluated"].mean()),
        "mean_rollouts": float(sim["n_rollouts"].mean()),
    }


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
    followed by one at the next-ranked strength, up to ``max_rollouts``. Returns the chosen
    strength (the first success, else the top-ranked one), the evaluated candidates with their
    predictions, every confirming rollout (``tried``), the chosen rollout's text and label (or
    None), ``decoded_tokens`` counted as :func:`simulate` counts them (``k`` per evaluated
    candidate plus the confirming rollouts) and ``reference_tokens`` (the prompt's unsteered
    rollout, decoded for the judge).
    """
    from steerjax.predictor.features import early_features
    from steerjax.predictor.testbed import rollouts

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
    for strength in ranking[:max_rollouts]:
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
        if label in (None, "success"):
            break
    best = next((t for t in tried if t["label"] == "success"), tried[0])
    return {
        "strength": best["strength"], "evaluated": evaluated, "label": best["label"], "text": best["text"],
        "tried": tried, "predictions": pd.concat(rows, ignore_index=True),
        "decoded_tokens": len(evaluated) * max(steps) + sum(t["n_tokens"] for t in tried),
        "reference_tokens": reference,
    }


def _calibration(table) -> pd.DataFrame:
    """The unsteered rows of ``table``, checked: the judge calibrates on them."""
    from steerjax.predictor.concepts import UNSTEERED

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
