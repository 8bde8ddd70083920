"""The README's main job runs end to end on the offline default model."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest


@pytest.mark.slow
@pytest.mark.requires_smollm2
def test_quickstart_writes_a_monotone_propensity_table(tmp_path):
    from experiments.quickstart.run import main

    out = tmp_path / "run"
    main(["--out", str(out), "--max-new-tokens", "6", "--multipliers", "-1", "0", "1"])
    with open(out / "propensity.csv") as f:
        rows = list(csv.DictReader(f))
    margins = np.array([float(r["margin"]) for r in rows])
    assert [float(r["multiplier"]) for r in rows] == [-1.0, 0.0, 1.0]
    assert np.all(np.diff(margins) > 0), margins
    config = json.loads((out / "config.json").read_text())
    assert config["layer"] == 9 and config["model_source"].endswith(".gguf")
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 3 and all(g["text"] for g in gens)
    assert os.path.getsize(out / "propensity.png") > 1000
    assert os.path.exists(out / "vector.safetensors")
