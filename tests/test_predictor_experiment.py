"""The steerability-predictor experiment runs end to end (smoke preset) and writes its outputs."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest


@pytest.mark.slow
@pytest.mark.requires_data
@pytest.mark.requires_smollm2
def test_steerability_predictor_experiment_smoke(tmp_path):
    from experiments.steerability_predictor.run import PRESETS, main
    from steerjax.predictor.judge import LABELS

    out = tmp_path / "run"
    summary = main(["--preset", "smoke", "--out", str(out)])
    p = PRESETS["smoke"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == "smoke" and len(cfg["concept_names"]) == p["concepts"]
    roll = pd.read_parquet(out / "rollouts.parquet")
    assert len(roll) == p["prompts"] * (1 + p["concepts"] * len(p["strengths"]))
    labels = pd.read_parquet(out / "labels.parquet")
    assert set(labels["label"]) <= set(LABELS) and labels["nll"].gt(0).all()
    feats = pd.read_parquet(out / "features.parquet")
    assert len(feats) == p["prompts"] * p["concepts"] * len(p["strengths"]) and "kl_next_k1" in feats
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores["model"]) == ["predictor", "multiplier-only", "strength-only", "majority"]
    assert scores["macro_f1"].between(0, 1).all()
    search = pd.read_csv(out / "search.csv")
    assert set(search["strategy"]) == {"argmax", "bisect"} and set(search["max_rollouts"]) == set(p["max_rollouts"])
    assert (search.groupby("max_rollouts").size() == p["prompts"] * p["concepts"] * 2).all()  # every pair, 2 strategies
    assert (search["n_rollouts"] <= search["max_rollouts"]).all()
    assert set(summary["search"]) == {f"{s}_R{r}" for s in ("argmax", "bisect") for r in p["max_rollouts"]}
    assert -1 <= summary["kappa"]["kappa"] <= 1 and set(summary["targets"]) and summary["wall_seconds"] > 0
    for png in ("confusion", "importance", "importance_layer_step", "labels_by_strength", "f1_by_step", "search"):
        assert os.path.getsize(out / f"{png}.png") > 5000
