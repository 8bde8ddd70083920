"""Predictor-guided search for a steering strength that succeeds, at a fraction of the decoding cost.

Grid search decodes a full rollout at every candidate strength and keeps one the judge calls a
success. Guided search decodes only the first ``k`` tokens per candidate (the early-decoding
features), asks the predictor, and decodes one full rollout at the chosen strength to confirm.

Strategies (:func:`choose_strength`):

* ``argmax``: every candidate is evaluated (one batch); the one with the highest predicted
  probability of success is chosen (the smaller strength on ties).
* ``bisect``: candidates sorted by strength; predicted under-steer moves up, over-steer moves
  down, success stops; ``ceil(log2(n)) + 1`` evaluations at most. The chosen strength is the
  evaluated one with the highest predicted success probability.

Decoded tokens are counted as: guided, ``k`` per evaluated candidate plus the confirming
rollout; grid, ``max_new_tokens`` per candidate. Neither counts the prompt's unsteered rollout,
which both need only because the default judge scores against it (the features' teacher-forced
reference is a forward over the steered tokens, not a decode, and is not counted either).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from steerjax.predictor.classifier import _STEP, PredictorError, SteerabilityPredictor
from steerjax.predictor.judge import LABELS

STRATEGIES = ("argmax", "bisect")


def choose_strength(strengths: Sequence[float], proba: pd.DataFrame, strategy: str = "argmax"):
    """``(chosen strength, evaluated strengths)`` from per-candidate class probabilities.

    Args:
      strengths: candidate strengths, aligned with the rows of ``proba``.
      proba: columns ``under-steer``, ``success``, ``over-steer`` (predicted probabilities).
    """
    s = np.asarray(strengths, float)
    if s.size == 0 or s.size != len(proba):
        raise PredictorError(f"{s.size} strengths for {len(proba)} predictions")
    order = np.argsort(s, kind="stable")
    table = proba.iloc[order].reset_index(drop=True)
    return search(s[order], lambda idx: table.iloc[list(idx)], strategy)


def search(strengths: Sequence[float], predict, strategy: str = "argmax"):
    """The search itself: ``predict(indices)`` gives class probabilities for candidates
    ``strengths[indices]`` (sorted ascending), evaluated lazily (bisect asks for one at a time).
    Returns ``(chosen strength, evaluated strengths in the order evaluated)``."""
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
    best = max(seen, key=lambda i: (float(seen[i]["success"]), -i))  # the smaller strength on ties
    return s[best], [s[i] for i in seen]


@dataclasses.dataclass
class SearchOutcome:
    prompt_id: object
    concept: str
    strength: float
    evaluated: list
    decoded_tokens: int


def simulate(features: pd.DataFrame, predictor: SteerabilityPredictor, *, strategy: str = "argmax",
             k: int, max_new_tokens: int, label_col: str = "label") -> pd.DataFrame:
    """Guided vs grid search over a labelled testbed, one row per (prompt, concept).

    ``features`` holds every candidate strength of each (prompt, concept) with its features and
    judge label (the testbed's rollouts are greedy, so the confirming rollout at the chosen
    strength is the testbed's rollout at that strength). Columns of the result: chosen strength,
    ``guided_success``, ``grid_success`` (some candidate succeeds), ``sequential_success``
    (the same), token counts ``guided_tokens``, ``grid_tokens`` (every candidate decoded) and
    ``sequential_tokens`` (grid from the smallest strength, stopping at the first success).
    """
    need = {"prompt_id", "concept", "strength", label_col}
    if need - set(features.columns):
        raise PredictorError(f"features table lacks {sorted(need - set(features.columns))}")
    proba = predictor.predict_proba(features)
    rows = []
    for (pid, concept), g in features.groupby(["prompt_id", "concept"], sort=True):
        g = g.sort_values("strength")
        chosen, evaluated = choose_strength(g["strength"].to_numpy(), proba.loc[g.index], strategy)
        labels = g[label_col].astype(str).to_numpy()
        hit = np.flatnonzero(labels == "success")
        rows.append({
            "prompt_id": pid, "concept": concept, "chosen_strength": chosen, "n_evaluated": len(evaluated),
            "guided_success": bool(labels[np.flatnonzero(g["strength"].to_numpy() == chosen)[0]] == "success"),
            "grid_success": bool(hit.size), "guided_tokens": len(evaluated) * k + max_new_tokens,
            "grid_tokens": len(g) * max_new_tokens,
            "sequential_tokens": (int(hit[0]) + 1 if hit.size else len(g)) * max_new_tokens,
        })
    return pd.DataFrame(rows)


def cross_validated(table: pd.DataFrame, *, n_folds: int, k: int, max_new_tokens: int,
                    strategies: Sequence[str] = STRATEGIES, prompt_holdout: float = 0.2, seed: int = 0,
                    label_col: str = "label", **fit_kw) -> pd.DataFrame:
    """Guided vs grid search for unseen concepts on held-out prompts.

    Prompts are split once (``prompt_holdout`` of them held out, seeded); concepts by
    :func:`~steerjax.predictor.classifier.concept_folds`. Each fold's predictor is fitted on the
    other concepts' rows of the training prompts, with the features of the first ``k`` steps, and
    searches the fold's concepts on the held-out prompts. One :func:`simulate` table for all
    folds and strategies, with ``fold`` and ``strategy`` columns.
    """
    from steerjax.predictor.classifier import concept_folds, feature_columns_of, fit

    if not 0 < prompt_holdout < 1:
        raise PredictorError(f"prompt_holdout must be in (0, 1), got {prompt_holdout}")
    pids = np.asarray(sorted(set(table["prompt_id"])))
    n_test = max(1, int(round(prompt_holdout * len(pids))))
    if n_test >= len(pids):
        raise PredictorError(f"{len(pids)} prompts: too few to hold some out for the search")
    test_p = set(np.random.default_rng(seed).permutation(pids)[:n_test].tolist())
    cols = feature_columns_of(table, max_step=k)
    out = []
    for f, concepts in enumerate(concept_folds(table["concept"], n_folds, seed)):
        unseen = table["concept"].isin(concepts)
        held = table["prompt_id"].isin(test_p)
        m = fit(table[~unseen & ~held], feature_columns=cols, label_col=label_col, seed=seed, **fit_kw)
        for strategy in strategies:
            sim = simulate(table[unseen & held], m, strategy=strategy, k=k, max_new_tokens=max_new_tokens,
                           label_col=label_col)
            out.append(sim.assign(fold=f, strategy=strategy))
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
    }


def guided_search(model, predictor: SteerabilityPredictor, prompt: str, concept, strengths: Sequence[float], *,
                  layer: int, max_new_tokens: int, strategy: str = "argmax", steps=None, judge=None,
                  positions: str = "all", seed: int = 0) -> dict:
    """Search a strength for one prompt and concept with the predictor, then decode one rollout.

    ``steps``: the decoding steps whose features the predictor uses (default: those its feature
    columns name). The confirming rollout comes with the prompt's unsteered rollout (the
    testbed's unit, and the judge's reference); with a ``judge`` it is labelled. Returns the
    chosen strength, the evaluated candidates with their predictions, the rollout text, its
    label (or None), ``decoded_tokens`` counted as :func:`simulate` counts them (``k`` per
    evaluated candidate plus the confirming rollout) and ``reference_tokens`` (the prompt's
    unsteered rollout, decoded for the judge).
    """
    from steerjax.predictor.features import early_features
    from steerjax.predictor.testbed import rollouts

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

    chosen, evaluated = search(cands, predict, strategy)
    roll = rollouts(model, [prompt], [concept], [chosen], layer=layer, max_new_tokens=max_new_tokens, seed=seed,
                    positions=positions, progress=False)
    steered = roll[roll["concept"] != "none"].iloc[0]
    label = None
    if judge is not None:
        scores, _ = judge(roll)
        label = str(scores.loc[steered.name, "label"])
    return {
        "strength": chosen, "evaluated": evaluated, "label": label, "text": steered["text"],
        "predictions": pd.concat(rows, ignore_index=True),
        "decoded_tokens": len(evaluated) * max(steps) + int(steered["n_tokens"]),
        "reference_tokens": int(roll.loc[roll["concept"] == "none", "n_tokens"].sum()),
    }


def _steps_of(predictor: SteerabilityPredictor) -> tuple[int, ...]:
    steps = sorted({int(m.group(1)) for c in predictor.feature_columns if (m := _STEP.search(c))})
    if not steps:
        raise PredictorError("the predictor's features name no decoding steps (columns ..._k{step})")
    return tuple(steps)
