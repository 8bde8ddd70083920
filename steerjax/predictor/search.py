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

Decoded tokens are counted as: guided ``k`` per evaluated candidate, plus ``k`` for the
unsteered reference of the prompt, plus the confirming rollout; grid ``max_new_tokens`` per
candidate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from steerjax.predictor.classifier import PredictorError, SteerabilityPredictor

STRATEGIES = ("argmax", "bisect")


def choose_strength(strengths: Sequence[float], proba: pd.DataFrame, strategy: str = "argmax"):
    """``(chosen strength, evaluated strengths)`` from per-candidate class probabilities.

    Args:
      strengths: candidate strengths, aligned with the rows of ``proba``.
      proba: columns ``under-steer``, ``success``, ``over-steer`` (predicted probabilities).
    """
    if strategy not in STRATEGIES:
        raise PredictorError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    s = np.asarray(strengths, float)
    if s.size == 0 or s.size != len(proba):
        raise PredictorError(f"{s.size} strengths for {len(proba)} predictions")
    order = np.argsort(s, kind="stable")
    p_success = proba["success"].to_numpy()
    if strategy == "argmax":
        best = order[np.argmax(p_success[order])]  # argmax takes the first (smallest) on ties
        return float(s[best]), [float(x) for x in s[order]]
    lo, hi, seen = 0, len(order) - 1, []
    predicted = proba.idxmax(axis=1).to_numpy()
    while lo <= hi:
        mid = (lo + hi) // 2
        i = order[mid]
        seen.append(i)
        if predicted[i] == "success":
            break
        if predicted[i] == "over-steer":
            hi = mid - 1
        else:
            lo = mid + 1
    best = max(seen, key=lambda i: (p_success[i], -s[i]))
    return float(s[best]), [float(s[i]) for i in seen]


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
            "grid_success": bool(hit.size), "guided_tokens": (len(evaluated) + 1) * k + max_new_tokens,
            "grid_tokens": len(g) * max_new_tokens,
            "sequential_tokens": (int(hit[0]) + 1 if hit.size else len(g)) * max_new_tokens,
        })
    return pd.DataFrame(rows)


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
                  seed: int = 0, progress: bool = False) -> dict:
    """Search a strength for one prompt and concept with the predictor, then decode one rollout.

    ``steps`` are the decoding steps whose features the predictor uses (default: those named in
    its feature columns). With a ``judge`` (needs the unsteered rollout, decoded too), the
    rollout is labelled. Returns the chosen strength, the predictions per candidate, the rollout
    text, its label (or None), and the decoded-token count.
    """
    from steerjax.predictor.features import early_features
    from steerjax.predictor.testbed import rollouts

    steps = tuple(steps) if steps else _steps_of(predictor)
    feats, _ = early_features(model, [prompt], [concept], list(strengths), layer=layer, steps=steps,
                              batch_size=max(1, len(strengths)))
    proba = predictor.predict_proba(feats)
    chosen, evaluated = choose_strength(feats["strength"].to_numpy(), proba, strategy)
    roll = rollouts(model, [prompt], [concept], [chosen], layer=layer, max_new_tokens=max_new_tokens, seed=seed,
                    progress=progress)
    steered = roll[roll["concept"] != "none"].iloc[0]
    label = None
    if judge is not None:
        scores, _ = judge(roll)
        label = str(scores.loc[steered.name, "label"])
    k = max(steps)
    return {
        "strength": chosen, "evaluated": evaluated, "label": label, "text": steered["text"],
        "predictions": pd.concat([feats[["strength"]].reset_index(drop=True), proba.reset_index(drop=True)], axis=1),
        "decoded_tokens": (len(evaluated) + 1) * k + max_new_tokens * (1 if judge is None else 2),
    }


def _steps_of(predictor: SteerabilityPredictor) -> tuple[int, ...]:
    import re

    steps = sorted({int(m.group(1)) for c in predictor.feature_columns if (m := re.search(r"_k(\d+)$", c))})
    if not steps:
        raise PredictorError("the predictor's features name no decoding steps (columns ..._k{step})")
    return tuple(steps)
