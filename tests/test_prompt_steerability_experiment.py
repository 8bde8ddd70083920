"""The prompt-steerability experiment runs end to end (smoke preset, a tiny chat model) and writes its outputs."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest


@pytest.mark.slow
@pytest.mark.requires_data
def test_prompt_steerability_experiment_smoke(chat_model_dir, tmp_path):
    """The smoke preset end to end (the library's own padding buckets)."""
    from experiments.prompt_steerability.run import PRESETS, main
    from steerjax.data.prompt_steering import profiling_source

    out = tmp_path / "run"
    main(["--preset", "smoke", "--model", chat_model_dir, "--out", str(out)])
    cfg = json.loads((out / "config.json").read_text())
    info = json.loads((out / "run.json").read_text())  # what the run found; config.json is what was asked
    assert cfg["preset"] == "smoke" and info["seconds"] > 0 and info["layer"] == 1
    assert cfg["formats"] == ["reference", "steerjax-v1"] and cfg["profiling_source"] == profiling_source()
    smoke = PRESETS["smoke"]
    for fmt, where in (("reference", out), ("steerjax-v1", out / "steerjax-v1")):
        run_cfg = json.loads((out / f"profile_run_{fmt}" / "config.json").read_text())
        assert run_cfg["prompt_format"] == fmt and run_cfg["benchmark_trials"] == smoke["benchmark_trials"]
        indices = pd.read_parquet(where / "indices.parquet")
        assert set(indices.dimension) == set(cfg["dims"]) and indices["index"].between(-1, 1).all()
        assert indices.benchmark_trial.nunique() == smoke["benchmark_trials"]
        assert indices.trial.nunique() == smoke["steering_trials"]
        for png in ("index_curves", "index_heatmap", "base_profiles"):
            assert os.path.getsize(where / f"{png}.png") > 5000
    # the two formats asked the same questions
    ref = pd.read_parquet(out / "answers.parquet")
    v1 = pd.read_parquet(out / "steerjax-v1" / "answers.parquet")
    keys = ["dimension", "benchmark_trial", "direction", "budget", "trial", "statement"]
    pd.testing.assert_frame_equal(ref[keys], v1[keys])
    sens = pd.read_csv(out / "template_sensitivity.csv")
    assert set(sens.dimension) == set(cfg["dims"])
    assert {"base_mean[reference]", "base_mean[steerjax-v1]", "gamma+@2[reference]", "gamma-@2[steerjax-v1]"} \
        <= set(sens.columns)
    rates = pd.read_csv(out / "yes_rates.csv")
    assert set(rates.format) == {"reference", "steerjax-v1"} and rates.yes_rate.between(0, 1).all()
    base_rate = rates[(rates.format == "reference") & (rates.direction == "base")].yes_rate.iloc[0]
    assert base_rate == pytest.approx(ref[ref.direction == "base"].says_yes.mean())
    comparison = pd.read_csv(out / "prompt_vs_activation.csv")
    assert set(comparison.columns) >= {"dimension", "direction", "prompt_index", "activation_index"}
    assert len(comparison) == 2 * len(cfg["dims"])
    joint = pd.read_csv(out / "joint_steerability.csv")
    assert set(joint.direction) == {"positive", "negative"} and (joint.w_extremes > 0).all()
    w = pd.read_csv(out / "w1_exact_vs_reference.csv")
    assert (w.w1_exact > 0).all() and (w.w1_reference_formula > 0).all()
    assert len(w) == 2 * len(cfg["dims"]) * smoke["benchmark_trials"]  # base vs each extreme, per benchmark trial
    for png in ("format_comparison", "activation_index_curves"):
        assert os.path.getsize(out / f"{png}.png") > 5000
    # the study's Result reads the run directory back: every stage's tables, the same summary
    from steerjax.studies.prompt_steerability import Result

    result = Result.load(str(out))
    assert list(result.runs) == ["reference", "steerjax-v1"] and result.config.preset_name == "smoke"
    pd.testing.assert_frame_equal(result.runs["steerjax-v1"].answers, v1)
    pd.testing.assert_frame_equal(result.prompt_vs_activation, comparison)
    pd.testing.assert_frame_equal(result.joint, joint)
    summary = result.summary()
    assert summary["budget"] == 2 and summary["w1"] == "exact" and summary["model"] == info["model_source"]
    assert {"agreeableness/gamma_pos_lo", "agreeableness/activation_gamma_neg"} <= set(summary)


@pytest.mark.requires_data
def test_prompt_steerability_experiment_checks_first(chat_model_dir, tmp_path, monkeypatch):
    import steerjax
    from experiments.prompt_steerability.run import main
    from steerjax.errors import SteerjaxError

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(steerjax, "load_model", forbidden)
    with pytest.raises(SteerjaxError, match="--template-category 'llama3' is not one of"):
        main(["--preset", "smoke", "--model", chat_model_dir, "--template-category", "llama3",
              "--out", str(tmp_path / "a")])
    assert not (tmp_path / "a").exists()
