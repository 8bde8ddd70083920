"""The prompt-steerability experiment runs end to end (smoke preset) and writes its outputs."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest


@pytest.mark.slow
@pytest.mark.requires_data
@pytest.mark.requires_smollm2
def test_prompt_steerability_experiment_smoke(tmp_path):
    from experiments.prompt_steerability.run import main

    out = tmp_path / "run"
    main(["--preset", "smoke", "--out", str(out)])
    cfg = json.loads((out / "config.json").read_text())
    info = json.loads((out / "run.json").read_text())  # what the run found; config.json is what was asked
    assert cfg["preset"] == "smoke" and info["seconds"] > 0 and info["layer"] == 15
    indices = pd.read_parquet(out / "indices.parquet")
    assert set(indices.dimension) == set(cfg["dims"]) and indices["index"].between(-1, 1).all()
    comparison = pd.read_csv(out / "prompt_vs_activation.csv")
    assert set(comparison.columns) >= {"dimension", "direction", "prompt_index", "activation_index"}
    assert len(comparison) == 2 * len(cfg["dims"])
    joint = pd.read_csv(out / "joint_steerability.csv")
    assert set(joint.direction) == {"positive", "negative"} and (joint.w_extremes > 0).all()
    w = pd.read_csv(out / "w1_exact_vs_reference.csv")
    assert (w.w1_exact > 0).all() and (w.w1_reference_formula > 0).all()
    for png in ("index_curves", "index_heatmap", "base_profiles", "activation_index_curves"):
        assert os.path.getsize(out / f"{png}.png") > 5000
