"""The reliability experiment runs end to end (smoke preset) and writes its tables and plots."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest


@pytest.mark.slow
@pytest.mark.requires_data
@pytest.mark.requires_smollm2
def test_reliability_experiment_smoke(tmp_path):
    from experiments.steering_reliability.run import main

    out = tmp_path / "run"
    main(["--preset", "smoke", "--out", str(out)])
    cfg = json.loads((out / "config.json").read_text())
    info = json.loads((out / "run.json").read_text())  # what the run found; config.json is what was asked
    assert cfg["preset"] == "smoke" and 0 <= info["layer"] < 30 and info["seconds"] > 0
    layer_sweep = pd.read_parquet(out / "layer_sweep.parquet")
    assert set(layer_sweep.layer) == {0, 10, 20}
    per_example = pd.read_parquet(out / "per_example.parquet")
    assert set(per_example.dataset) == set(cfg["datasets"]) and per_example.slope.notna().all()
    summary = pd.read_csv(out / "summary.csv")
    assert summary.anti_steerable_fraction.between(0, 1).all()
    gen = pd.read_csv(out / "generalisation.csv")
    assert len(gen) == 2 * 9 and gen.in_distribution.sum() == 2 * 3
    assert pd.read_csv(out / "spurious_variance.csv").shape[0] == 3
    for png in ("layer_sweep", "steerability_violin", "propensity_curves", "id_ood_scatter"):
        assert os.path.getsize(out / f"{png}.png") > 5000
    # resumable: a second run reuses vectors and sweep chunks and gives the same tables
    config_bytes = (out / "config.json").read_bytes()
    main(["--preset", "smoke", "--out", str(out)])
    pd.testing.assert_frame_equal(pd.read_parquet(out / "per_example.parquet"), per_example)
    assert (out / "config.json").read_bytes() == config_bytes  # written once
    from steerjax.errors import RunConfigError

    with pytest.raises(RunConfigError, match="differs in: seed"):  # another command: refused before any work
        main(["--preset", "smoke", "--seed", "1", "--out", str(out)])
