"""The prompt-steerability study (Miehling et al. 2024) as a library object: Config, check, run, Result.

- ``check()`` refuses every bad input before a model loads (Python, the CLI and the experiment),
  naming the option as the caller spells it. The study takes no user-given steering vector (its
  activation vectors are built from the steering statements), so there is no vector width to check.
- ``Result.save`` / ``Result.load`` round trip and ``summary()``'s documented keys.
- ``reference_compat`` (the reference code's W1 formula) through ``run_profiles``, the study, the
  CLI and the experiment, against indices built by hand with the reference's own expression
  ``scipy.stats.wasserstein_distance(beta.cdf(x, ...), beta.cdf(x, ...))`` on ``linspace(0, 1, 200)``.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from steerjax.cli import profile as cli_profile
from steerjax.errors import DataError, LayerIndexError, ProfileError, RunConfigError, TokenizerError
from steerjax.studies.prompt_steerability import PRESETS, Config, Result, check, run

pytestmark = pytest.mark.requires_data

TINY = dict(dims=("agreeableness",), budgets=(1, 2), benchmark_trials=2, steering_trials=1, num_questions=2)


@pytest.fixture
def model_dir():
    from tests.helpers import TINYSTORIES_MISSING, tinystories_path

    path = tinystories_path()
    if path is None:
        pytest.skip(TINYSTORIES_MISSING)
    return path


# ----------------------------------------------------------------------------- Config


def test_presets_and_defaults():
    assert set(PRESETS) >= {"smoke", "quick", "full", "paper"}
    paper = Config.preset("paper")
    assert paper.budgets == (1, 2, 3, 4, 5, 10, 20, 50, 100) and paper.dims == "paper"
    assert (paper.benchmark_trials, paper.steering_trials, paper.num_questions) == (5, 5, 25)
    assert paper.prompt_format == "reference" and not paper.reference_compat and paper.profiles_only
    smoke = Config.preset("smoke", reference_compat=True, layer=None)
    assert smoke.reference_compat and smoke.formats == ("reference", "steerjax-v1") and not smoke.profiles_only
    with pytest.raises(Exception, match="unknown preset"):
        Config.preset("tiny")
    with pytest.raises(Exception, match="unknown option"):
        Config.preset("smoke", dimz=("x",))


def test_one_run_config_builder():
    cfg = Config(**TINY).run_config("some/model", extra=1)
    assert cfg["kind"] == "profiles" and cfg["model"] == "some/model" and cfg["extra"] == 1
    assert cfg["dims"] == ["agreeableness"] and cfg["budgets"] == [1, 2] and cfg["reference_compat"] is False
    study = Config.preset("smoke").run_config("m")
    assert study["kind"] == "prompt-steerability" and study["formats"] == ["reference", "steerjax-v1"]
    assert study["preset"] == "smoke" and study["multipliers"] == [1.0]
    assert Config.preset("paper").run_config("m")["dims"][:2] == ["agreeableness", "conscientiousness"]


# ----------------------------------------------------------------------------- check


@pytest.mark.parametrize("options, error, message", [
    (dict(dims=("agreeablenes",)), DataError, "dims: unknown persona dimension 'agreeablenes'; did you mean "
                                              "'agreeableness'"),
    (dict(dims=()), ProfileError, "no dimensions given"),
    (dict(dims=("paper", "all")), ProfileError, "'paper' and 'all' stand alone"),
    (dict(budgets=(150,)), DataError, "budgets: dimension 'agreeableness' has only 100 positive statements; "
                                      "budget 150: use a budget of at most 100"),
    (dict(budgets=(0, 1)), ProfileError, "budgets must be integers >= 1"),
    (dict(budgets=()), ProfileError, "budgets must be integers >= 1"),
    (dict(num_questions=5000), DataError, "num_questions, confidence_threshold: dimension 'agreeableness' has only"),
    (dict(confidence_threshold=1.0), DataError, "has no profiling statements after filtering"),  # an empty split
    (dict(confidence_threshold=1.5), ProfileError, "confidence_threshold must be a number in [0, 1]"),
    (dict(benchmark_trials=0), ProfileError, "benchmark_trials must be an integer >= 1"),
    (dict(steering_trials=True), ProfileError, "steering_trials must be an integer >= 1"),
    (dict(prompt_format="chatml"), DataError, "prompt_format: unknown prompt format 'chatml'"),
    (dict(template_category="llama3"), DataError, "template_category 'llama3' is not one of the reference's wrappers"),
    (dict(multipliers=(-1.0,)), ProfileError, "multipliers must be finite numbers > 0"),
    (dict(multipliers=(math.nan,)), ProfileError, "multipliers must be finite numbers > 0"),
    (dict(joint_dims=("agreeableness",)), ProfileError, "joint_dims needs two or more different dimensions"),
    (dict(joint_dims=("agreeableness", "narcisism")), DataError, "joint_dims: unknown persona dimension"),
    (dict(joint_dims=("agreeableness", "narcissism"), joint_budgets=(101,)), DataError, "joint_budgets: "),
])
def test_check_refuses_bad_input(options, error, message, no_model):
    with pytest.raises(error, match=None) as info:
        check(Config(**{**TINY, **options}))
    assert message in str(info.value)


def test_check_names_the_flags(no_model):
    with pytest.raises(DataError, match=r"^--dims: unknown persona dimension"):
        check(Config(**{**TINY, "dims": ("agreeablenes",)}), names={"dims": "--dims"})
    with pytest.raises(DataError, match=r"^--budgets: "):
        check(Config(**{**TINY, "budgets": (101,)}), names={"budgets": "--budgets"})


def test_check_against_the_model_and_the_run_directory(model_dir, chat_model_dir, tmp_path, no_model):
    from steerjax.model import load_config

    header = load_config(chat_model_dir)  # 2 blocks, a chat template
    check(Config(**TINY, multipliers=(1.0,), layer=1), model_config=header)
    with pytest.raises(LayerIndexError, match=r"--layer 2 is out of range: the model has 2 blocks \(0..1\)"):
        check(Config(**TINY, multipliers=(1.0,), layer=2), model_config=header, names={"layer": "--layer"})
    with pytest.raises(LayerIndexError, match="out of range"):
        check(Config(**TINY, multipliers=(1.0,), layer=-1), model_config=header.config)
    with pytest.raises(TokenizerError, match="has no chat template: pass template_category"):
        check(Config(**TINY), model_config=load_config(model_dir))
    check(Config(**TINY, template_category="llama-3"), model_config=load_config(model_dir))
    # a directory holding another run, or something else, is refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(Config(**{**TINY, "seed": 1}).run_config(header.source)))
    (other / "manifest.jsonl").write_text("")
    with pytest.raises(RunConfigError, match="differs in: seed"):
        check(Config(**TINY), out=str(other), model_config=header)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(Exception, match="holds no steerjax run"):
        check(Config(**TINY), out=str(tmp_path / "notes"), model_config=header, names={"out": "--out"})
    assert not (tmp_path / "new").exists()
    check(Config(**TINY), out=str(tmp_path / "new"), model_config=header)
    assert not (tmp_path / "new").exists()  # checking writes nothing


@pytest.mark.parametrize("argv, message", [
    (["--dims", "agreeablenes"], "--dims: unknown persona dimension 'agreeablenes'; did you mean 'agreeableness'"),
    (["--budgets", "150"], "--budgets: dimension 'agreeableness' has only 100"),
    (["--questions", "5000"], "--questions, --confidence-threshold: dimension 'agreeableness' has only"),
    (["--confidence-threshold", "1.0"], "has no profiling statements after filtering"),
    (["--template-category", "llama3"], "--template-category 'llama3' is not one of the reference's wrappers"),
    (["--prompt-format", "chatml"], "argument --prompt-format: invalid choice: 'chatml'"),
])
def test_cli_refuses_before_loading(argv, message, chat_model_dir, tmp_path, capsys, no_model):
    from steerjax.cli import main

    out = tmp_path / "run"
    base = ["profile", chat_model_dir, "--dims", "agreeableness", "--budgets", "1", "2", "--out", str(out)]
    try:
        code = main(base + argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    _, err = capsys.readouterr()
    assert code == 2 and message in err and "Traceback" not in err
    assert err.startswith("error: ") or "error: argument" in err
    assert not out.exists()


def test_experiment_refuses_before_loading(chat_model_dir, tmp_path, no_model):
    from experiments.prompt_steerability.run import main

    with pytest.raises(LayerIndexError, match=r"--layer 7 is out of range"):
        main(["--preset", "smoke", "--model", chat_model_dir, "--layer", "7", "--out", str(tmp_path / "a")])
    with pytest.raises(DataError, match=r"--template-category 'llama3' is not one of"):
        main(["--preset", "smoke", "--model", chat_model_dir, "--template-category", "llama3",
              "--out", str(tmp_path / "a")])
    assert not (tmp_path / "a").exists()


def test_experiment_and_cli_pass_reference_compat(chat_model_dir, tmp_path, monkeypatch):
    """The flags reach the study's Config (the run itself is replaced: the wiring is what is tested)."""
    import experiments.prompt_steerability.run as experiment
    import steerjax
    from steerjax.cli import main
    from steerjax.studies import prompt_steerability

    seen = []

    class Stop(Exception):
        pass

    def fake_run(model, config, out, **kwargs):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(steerjax, "load_model", lambda *a, **k: None)
    monkeypatch.setattr(experiment, "run", fake_run)
    monkeypatch.setattr(prompt_steerability, "run", fake_run)
    monkeypatch.setattr(cli_profile, "run", fake_run)  # the command's own name for it
    with pytest.raises(Stop):
        experiment.main(["--preset", "smoke", "--model", chat_model_dir, "--reference-compat", "--out",
                         str(tmp_path / "e")])
    with pytest.raises(Stop):
        main(["profile", chat_model_dir, "--dims", "agreeableness", "--reference-compat", "--out",
              str(tmp_path / "c")])
    with pytest.raises(Stop):
        main(["profile", chat_model_dir, "--dims", "agreeableness", "--out", str(tmp_path / "d")])
    assert [c.reference_compat for c in seen] == [True, True, False]
    assert seen[0].preset_name == "smoke" and seen[1].profiles_only


# ----------------------------------------------------------------------------- run, Result, reference_compat


def _hand_reference_w1(a1, b1, a2, b2):
    """IBM/prompt-steering's W1: the CDF values on a 200-point grid compared as two samples."""
    x = np.linspace(0, 1, 200)
    return stats.wasserstein_distance(stats.beta.cdf(x, a1, b1), stats.beta.cdf(x, a2, b2))


def _hand_indices(profiles: pd.DataFrame, extremes: pd.DataFrame) -> pd.Series:
    """Every steered profile's index with the reference formula, row by row from the tables."""
    keys = ["dimension", "benchmark_trial"]
    ex = extremes.set_index([*keys, "direction"])
    base = profiles[profiles.direction == "base"].set_index(keys)
    out = {}
    for r in profiles[profiles.direction != "base"].itertuples():
        k = (r.dimension, r.benchmark_trial)
        pos, neg = ex.loc[(*k, "positive")], ex.loc[(*k, "negative")]
        target = pos if r.direction == "positive" else neg
        b = base.loc[k]
        span = _hand_reference_w1(pos.alpha, pos.beta, neg.alpha, neg.beta)
        w_base = _hand_reference_w1(b.alpha, b.beta, target.alpha, target.beta)
        w_steered = _hand_reference_w1(r.alpha, r.beta, target.alpha, target.beta)
        out[(r.dimension, r.benchmark_trial, r.direction, r.budget, r.trial)] = (w_base - w_steered) / span
    return pd.Series(out)


@pytest.fixture(scope="module")
def study_run(chat_model, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("study") / "run")
    config = Config(**TINY, reference_compat=True)
    return run(chat_model, config, out, progress=False), out


def _steered(indices):
    s = indices[indices.budget > 0]
    return pd.Series(s["index"].to_numpy(), index=pd.MultiIndex.from_frame(
        s[["dimension", "benchmark_trial", "direction", "budget", "trial"]])).sort_index()


def test_reference_compat_indices_as_built_by_hand(study_run):
    result, out = study_run
    main = result.main
    hand = _hand_indices(main.profiles, main.extremes).sort_index()
    got = _steered(main.indices)
    np.testing.assert_allclose(got.to_numpy(), hand.to_numpy(), rtol=0, atol=1e-12)
    assert list(got.index) == list(hand.index)
    # the exact W1 gives other numbers on the same profiles (the base-vs-extreme distances differ)
    w = result.w1
    assert np.all(np.abs(w.w1_exact - w.w1_reference_formula) > 1e-6)
    for r in w.itertuples():
        assert r.w1_reference_formula == pytest.approx(_hand_reference_w1(r.alpha, r.beta, r.alpha_ext, r.beta_ext),
                                                       abs=1e-13)
    assert json.loads(open(os.path.join(out, "config.json")).read())["reference_compat"] is True


def test_run_profiles_reference_compat_switch(chat_model):
    from steerjax.studies.prompt_steerability.indices import steerability_indices
    from steerjax.studies.prompt_steerability.profiles import run_profiles

    kw = dict(TINY, progress=False)
    kw.pop("dims")
    exact = run_profiles(chat_model, ["agreeableness"], **kw)
    ref = run_profiles(chat_model, ["agreeableness"], reference_compat=True, **kw)
    pd.testing.assert_frame_equal(exact.profiles, ref.profiles)
    pd.testing.assert_frame_equal(ref.indices, steerability_indices(ref.profiles, ref.extremes, reference_compat=True))
    pd.testing.assert_frame_equal(exact.indices, steerability_indices(exact.profiles, exact.extremes))
    hand = _hand_indices(ref.profiles, ref.extremes).sort_index()
    np.testing.assert_allclose(_steered(ref.indices).to_numpy(), hand.to_numpy(), rtol=0, atol=1e-12)


def test_result_round_trip_and_summary(study_run, tmp_path):
    result, out = study_run
    loaded = Result.load(out)
    assert loaded.config == result.config
    for name in ("answers", "profiles", "extremes", "indices"):
        pd.testing.assert_frame_equal(getattr(loaded.main, name), getattr(result.main, name))
    for name in ("curves", "asymmetry", "base"):
        pd.testing.assert_frame_equal(getattr(loaded.main, name), getattr(result.main, name), check_exact=False,
                                      rtol=0, atol=1e-15)
    pd.testing.assert_frame_equal(loaded.yes_rates, result.yes_rates)
    assert loaded.info == json.loads(json.dumps(result.info))
    # saved again elsewhere (with the config beside it): the same tables
    loaded.save(str(tmp_path / "copy"))
    with open(tmp_path / "copy" / "config.json", "w") as f:
        json.dump(result.config.run_config("m"), f)
    pd.testing.assert_frame_equal(Result.load(str(tmp_path / "copy")).main.indices, result.main.indices)
    for name in ("curves.csv", "asymmetry.csv", "base_summary.csv", "yes_rates.csv", "w1_exact_vs_reference.csv"):
        assert (tmp_path / "copy" / name).read_bytes() == open(os.path.join(out, name), "rb").read()
    summary = result.summary()
    assert summary == loaded.summary()
    assert all(isinstance(v, (int, float, str)) for v in summary.values())
    assert summary["budget"] == 2 and summary["n_dimensions"] == 1 and summary["w1"] == "reference"
    assert summary["prompt_format"] == "reference" and summary["benchmark_trials"] == 2
    curves = result.main.curves
    at2 = curves[curves.budget == 2].set_index("direction")
    for direction, sign in (("positive", "pos"), ("negative", "neg")):
        key = f"agreeableness/gamma_{sign}"
        assert summary[key] == at2.loc[direction, "mean"]
        assert summary[f"{key}_std"] == at2.loc[direction, "std"]
        assert summary[f"{key}_lo"] == pytest.approx(summary[key] - summary[f"{key}_std"])
        assert summary[f"{key}_hi"] == pytest.approx(summary[key] + summary[f"{key}_std"])
    assert summary["agreeableness/asymmetry"] == summary["agreeableness/gamma_pos"] - summary["agreeableness/gamma_neg"]
    assert summary["agreeableness/base_mean"] == result.main.base.set_index("dimension").loc["agreeableness", "mean"]
    assert {"mean_gamma_pos", "mean_gamma_neg", "model", "steering_trials", "agreeableness/base_std"} <= set(summary)


def test_figures_and_resume(study_run, chat_model):
    result, out = study_run
    paths = result.figures(out)
    assert [os.path.basename(p) for p in paths] == ["index_curves.png", "index_heatmap.png", "base_profiles.png"]
    assert all(os.path.getsize(p) > 5000 for p in paths)
    again = run(chat_model, result.config, out, progress=False)  # resumed: the stored answers are reused
    pd.testing.assert_frame_equal(again.main.indices, result.main.indices)
    with pytest.raises(RunConfigError, match="differs in: reference_compat"):
        run(chat_model, Config(**TINY), out, progress=False)
