"""The steps shared by ``steerjax predictor train`` and the predictor experiment: label a testbed's
rollouts, extract the early features of the same (prompt, concept, strength) rows, join them;
write an evaluation's tables and figures."""

from __future__ import annotations

import os

import pandas as pd

from steerjax.errors import JudgeError
from steerjax.predictor import classifier, plots
from steerjax.predictor.concepts import UNSTEERED
from steerjax.predictor.features import early_features
from steerjax.predictor.judge import HiddenStateJudge

KEYS = ["prompt_id", "concept", "strength"]


def label_and_featurize(model, concepts, rollouts: pd.DataFrame, *, layer: int, steps, batch_size: int = 32,
                        positions: str = "all", progress: bool = True):
    """``(labelled, thresholds, data)``: the rollout table with the hidden-state judge's scores and
    labels (``tokens`` dropped), the judge's thresholds, and one row per steered rollout with its
    early features and ``label``."""
    prompts = rollouts.drop_duplicates("prompt_id").sort_values("prompt_id")
    if list(prompts["prompt_id"]) != list(range(len(prompts))):
        raise JudgeError("prompt_id must number the rollouts' prompts 0..n-1 (as steerjax.predictor.rollouts does)")
    scores, thr = HiddenStateJudge(model, concepts, batch_size=batch_size, progress=progress)(rollouts)
    labelled = pd.concat([rollouts.drop(columns=["tokens"]), scores], axis=1)
    steered = labelled[labelled["concept"] != UNSTEERED]
    feats, _ = early_features(model, prompts["prompt"].tolist(), concepts, sorted(set(steered["strength"])),
                              layer=layer, steps=steps, batch_size=batch_size, positions=positions,
                              progress=progress)
    data = feats.merge(steered[KEYS + ["label"]], on=KEYS, validate="one_to_one")
    return labelled, thr, data


def save_evaluation(ev: classifier.Evaluation, out: str) -> None:
    """Scores, importance tables and the confusion / importance figures of ``ev`` into ``out``."""
    os.makedirs(out, exist_ok=True)
    ev.scores.to_csv(os.path.join(out, "scores.csv"), index=False)
    ev.importance.to_csv(os.path.join(out, "importance.csv"), index=False)
    by = classifier.importance_by_layer_and_step(ev.importance)
    by.to_csv(os.path.join(out, "importance_by_layer_step.csv"), index=False)
    plots.confusion_matrix(ev.confusion, os.path.join(out, "confusion.png"))
    plots.feature_importance(ev.importance, os.path.join(out, "importance.png"))
    plots.layer_step_importance(by, os.path.join(out, "importance_layer_step.png"))
