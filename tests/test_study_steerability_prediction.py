"""The steerability-prediction study's interface: ``check()`` refuses every bad input before any
model loads (from Python, and through ``steerjax predictor study`` with exit status 2, an
``error:`` line and nothing written), ``Config`` and its one run-config builder, and the
``Result`` round trip (``save`` / ``load``, ``figures``, the flat ``summary()``)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from steerjax.errors import (
    DataError,
    JudgeError,
    LayerIndexError,
    PredictorError,
    RunConfigError,
    SteerjaxError,
)
from steerjax.studies.steerability_prediction import PRESETS, Config, Result, check
from steerjax.studies.steerability_prediction import study as study_mod
from steerjax.studies.steerability_prediction.config import JUDGES, POSITIONS, STRATEGIES
from tests.helpers import labelled_table

# ----------------------------------------------------------------------------- Config


def test_presets_and_the_run_config():
    assert {"smoke", "quick", "full", "steerboost"} <= set(PRESETS)
    smoke = Config.preset("smoke")
    assert smoke.preset_name == "smoke" and smoke.strengths == (0.1, 0.3, 0.6) and smoke.steps == (1, 2)
    assert Config.preset("smoke", concepts=None).concepts == 4  # None: the flag was not given
    assert Config.preset("smoke", seed=3).seed == 3
    assert Config().preset_name == "full" and Config().strengths == tuple(PRESETS["full"]["strengths"])
    cfg = smoke.run_config("some/model", concept_names=["a", "b"], n_prompts=4)
    assert cfg["preset"] == "smoke" and cfg["model"] == "some/model" and cfg["concept_names"] == ["a", "b"]
    assert cfg["strengths"] == [0.1, 0.3, 0.6] and "judge_url" not in cfg and "preset_name" not in cfg
    assert json.loads(json.dumps(cfg)) == cfg
    with pytest.raises(SteerjaxError, match="unknown preset 'smok'"):
        Config.preset("smok")
    with pytest.raises(SteerjaxError, match=r"unknown option\(s\) \['concept'\]"):
        Config.preset("smoke", concept=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        smoke.seed = 1  # type: ignore[misc]
    assert hash(Config.preset("quick")) == hash(Config.preset("quick")) and {smoke: 1}[Config.preset("smoke")] == 1
    assert JUDGES == ("hidden", "embedding", "llm") and "feedback" in STRATEGIES and "all" in POSITIONS


def test_config_module_imports_no_heavy_dependency():
    """config.py (what the command line reads first) imports no jax, pandas or matplotlib, and of
    steerjax only the errors."""
    import ast

    from steerjax.studies.steerability_prediction import config

    tree = ast.parse(open(config.__file__).read())
    names = [a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names]
    names += [node.module for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in ("jax", "pandas", "matplotlib", "numpy")]
    assert [n for n in names if n.startswith("steerjax")] == ["steerjax.errors"]


# ----------------------------------------------------------------------------- check()


class _Cfg:
    num_layers = 2


SMOKE = dict(preset="smoke")


@pytest.mark.parametrize("overrides, kw, error, msg", [
    (dict(feature_set="nope"), {}, PredictorError, "unknown feature set 'nope'"),
    (dict(judge="gpt"), {}, JudgeError, "judge must be one of"),
    (dict(source="web"), {}, SteerjaxError, "source must be one of"),
    (dict(prompts=1), {}, SteerjaxError, "prompts must be >= 2"),  # an empty split
    (dict(concepts=1), {}, SteerjaxError, "concepts must be >= 2"),
    (dict(prompts=999), {}, SteerjaxError, "prompts must be at most"),
    (dict(prompts=2), {}, PredictorError, "split needs at least 3 prompts"),  # the paper split's test part
    (dict(strengths=[0.1]), {}, SteerjaxError, "two or more strengths"),
    (dict(strengths=[0.1, math.nan]), {}, SteerjaxError, "strengths must be finite"),  # bad multipliers
    (dict(max_rollouts=[0, 2]), {}, SteerjaxError, "max_rollouts must be positive integers"),  # bad budget
    (dict(steps=[2], search_k=1), {}, SteerjaxError, "search_k 1 is below every steps value"),
    (dict(folds=1), {}, SteerjaxError, "folds must be >= 2"),
    (dict(folds=5), {}, SteerjaxError, "folds 5 is more than the 4 concepts"),  # an empty concept fold
    (dict(prompt_folds=5), {}, SteerjaxError, "prompt_folds 5 is more than the 4 prompts"),
    (dict(thresholds=[0.5, 2.0]), {}, SteerjaxError, "thresholds must be probabilities"),
    (dict(paper_grid={"depht": [4]}), {}, PredictorError, "paper_grid: grid has unknown keys"),
    (dict(judge_url="http://127.0.0.1:9/v1"), {}, JudgeError, "are for judge llm"),
    (dict(judge="embedding", no_kappa=True), {}, JudgeError, "drop no_kappa"),
    (dict(layer=5), dict(model_config=_Cfg()), LayerIndexError, "layer 5 is out of range"),
    (dict(reuse_features="/nonexistent/run"), dict(model_source="m"), RunConfigError, "missing config.json"),
])
def test_check_refuses_bad_input_with_the_field_names(overrides, kw, error, msg, no_model, monkeypatch):
    monkeypatch.setattr(study_mod, "list_datasets", lambda kind: [f"dim-{i}" for i in range(8)])
    with pytest.raises(error) as e:
        check(Config.preset("smoke", **overrides), **kw)
    assert msg in str(e.value)


def test_check_names_flags_and_refuses_unknown_concepts(tmp_path, no_model, monkeypatch):
    monkeypatch.setattr(study_mod, "list_datasets", lambda kind: ["agreeableness", "narcissism", "risk-seeking"])
    with pytest.raises(DataError, match=r"--concept-names: unknown concept 'agreeablenes'; did you mean "
                                        r"'agreeableness'\?"):
        check(Config.preset("smoke", concept_names=["agreeablenes", "narcissism"]),
              names={"concept_names": "--concept-names"})
    with pytest.raises(SteerjaxError, match="--prompts must be >= 2"):
        check(Config.preset("smoke", prompts=1), names={"prompts": "--prompts"})
    with pytest.raises(SteerjaxError, match="two or more concepts"):
        check(Config.preset("smoke", concept_names=["narcissism"]))
    good = Config.preset("smoke", concept_names=["narcissism", "risk-seeking"])
    check(good, out=str(tmp_path / "run"), model_source="m")  # passes, writes nothing
    assert not (tmp_path / "run").exists()
    # a directory holding another run is refused, naming what differs
    os.makedirs(tmp_path / "run")
    got = study_mod.inputs(good)
    (tmp_path / "run" / "config.json").write_text(json.dumps(good.run_config("m", **got.facts())))
    check(good, out=str(tmp_path / "run"), model_source="m")  # the same run: resumes
    with pytest.raises(RunConfigError, match="seed"):
        check(dataclasses.replace(good, seed=1), out=str(tmp_path / "run"), model_source="m")


@pytest.mark.parametrize("argv, msg", [
    (["--concept-names", "agreeablenes", "narcissism"], "did you mean 'agreeableness'"),
    (["--prompts", "1"], "--prompts must be >= 2"),
    (["--feature-set", "steerboost+nope"], "unknown feature set"),
    (["--judge", "embedding", "--no-kappa"], "drop --no-kappa"),
    (["--judge-url", "http://127.0.0.1:9/v1"], "--judge-url / --judge-model are for --judge llm"),
    (["--reuse-features", "/nonexistent/run"], "missing config.json"),
])
@pytest.mark.requires_data
def test_cli_refuses_bad_input_before_the_model_loads(argv, msg, tmp_path, no_model, capsys):
    from steerjax.cli import main

    out = tmp_path / "run"
    code = main(["predictor", "study", "--preset", "smoke", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and msg in err, err
    assert not out.exists()


def test_cli_layer_out_of_range_before_the_model_loads(tmp_path, no_model, monkeypatch, capsys):
    from steerjax.cli import main
    from tests.helpers import TINYSTORIES_MISSING, tinystories_path

    if tinystories_path() is None:
        pytest.skip(TINYSTORIES_MISSING)

    monkeypatch.setattr(study_mod, "list_datasets", lambda kind: [f"dim-{i}" for i in range(8)])
    out = tmp_path / "run"
    code = main(["predictor", "study", tinystories_path(), "--preset", "smoke", "--layer", "99",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--layer 99 is out of range" in err and not out.exists()


# ----------------------------------------------------------------------------- Result


def _features(n_concepts=4, n_prompts=6, seed=0):
    """A labelled features table shaped as the study's (ids, features of steps 1-2, n_tokens, label)."""
    def cols(effect, rng):
        return {"multiplier": 0.0, "kl_next_k1": effect + rng.normal(0, 0.3), "cos_L1_k1": 1 - effect / 10,
                "kl_next_k2": effect + rng.normal(0, 0.3), "diff_norm_L1_k2": rng.normal(),
                "sb_Alpha": 0.0}

    t = labelled_table(cols, n_concepts, n_prompts, strengths=(0.25, 1.0, 2.0, 5.0), seed=seed)
    t["multiplier"] = t["strength"]
    t["sb_Alpha"] = t["strength"]
    t.insert(len(t.columns) - 1, "n_tokens", 8)
    return t


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """A study's steps 4-6 on a synthetic features table (no model), saved in a run directory."""
    out = str(tmp_path_factory.mktemp("study"))
    config = Config.preset("smoke", feature_set="steerboost+steerjax")
    table = _features()
    got = study_mod.Inputs(sorted(set(table["concept"])), list(range(6)), None, None, config.strengths, None)
    details = {"model_source": "synthetic", "layer": 1, "judge": "hidden", "feature_set": config.feature_set,
               "feature_set_replays_judge": False}
    res = study_mod.evaluate_table(table, config, details, progress=False)
    res.config = config.run_config("synthetic", **got.facts())
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(res.config, f)
    res.save(out)
    return res, out


def _tables(r: Result) -> dict:
    names = [f.name for f in dataclasses.fields(Result) if f.name not in ("config", "details", "paper")]
    return {n: getattr(r, n) for n in names} | {f"paper/{k}": v for k, v in r.paper.items()}


def test_result_round_trip(result, tmp_path):
    res, out = result
    loaded = Result.load(out)
    assert loaded.details == json.loads(json.dumps(res.details, default=str)) and loaded.config == res.config
    saved = _tables(res)
    got = _tables(loaded)
    assert {k for k, v in got.items() if v is not None} == {k for k, v in saved.items() if v is not None}
    for name, table in got.items():
        if table is None:
            continue
        mine = saved[name].fillna(np.nan)  # a CSV writes None and NaN alike
        if name.startswith("paper/confusion_"):
            np.testing.assert_array_equal(table.to_numpy(), mine.to_numpy())
            continue
        pd.testing.assert_frame_equal(table.reset_index(drop=True), mine.reset_index(drop=True), check_dtype=False,
                                      check_exact=False, rtol=0, atol=1e-12, obj=name)
    # saving what was loaded writes the same files, byte for byte
    again = str(tmp_path / "again")
    loaded.save(again)
    for name, file in study_mod.TABLES.items():
        if file.endswith(".csv") and getattr(loaded, name) is not None:
            assert open(os.path.join(out, file)).read() == open(os.path.join(again, file)).read(), file
    paper = pd.read_csv(os.path.join(out, "paper", "scores.csv"))
    assert (paper["model"] == "CGS").sum() == 3  # the baseline in the paper's table, written once
    assert list(res.cv_scores["model"])[-1] == "CGS"
    with pytest.raises(SteerjaxError, match="holds no finished steerability-prediction run"):
        Result.load(str(tmp_path / "empty"))


def test_result_figures(result, tmp_path):
    res, _ = result
    paths = Result.load(result[1]).figures(str(tmp_path))
    names = {os.path.relpath(p, tmp_path) for p in paths}
    assert {"labels_by_strength.png", "confusion.png", "importance.png", "importance_layer_step.png",
            "f1_by_step.png", "strategies.png", os.path.join("paper", "confusion_unseen_all.png")} <= names
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_summary_is_flat_with_the_documented_keys(result):
    res, _ = result
    s = res.summary()
    assert all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in s.values())
    concepts = sorted(set(res.features["concept"]))
    for c in concepts:
        for strength in (0.25, 1, 2, 5):
            r, lo, hi = (s[f"{c}/success_rate@{strength:g}{x}"] for x in ("", "_lo", "_hi"))
            assert 0 <= lo <= r <= hi <= 1
        g = res.features[res.features["concept"] == c]
        rates = g.groupby("strength")["label"].agg(lambda x: (x == "success").mean())
        assert s[f"{c}/best_strength"] == rates[rates == rates.max()].index.min()  # the smallest of the best
        assert s[f"{c}/best_success_rate"] == rates.max()
        assert 0 <= s[f"{c}/predictor_macro_f1"] <= 1
        assert 0 <= s[f"{c}/predictor_macro_f1_lo"] <= s[f"{c}/predictor_macro_f1_hi"] <= 1  # over the prompts
        assert f"{c}/guided_success_vs_sweep" in s and s[f"{c}/guided_tokens_vs_sweep"] < 1
        for key in ("guided_success_vs_sweep", "guided_tokens_vs_sweep"):  # NaN where the sweep never succeeds
            value, lo, hi = (s[f"{c}/{key}{x}"] for x in ("", "_lo", "_hi"))
            assert np.isnan(value) and np.isnan(lo) or 0 <= lo <= hi, (key, value, lo, hi)
        assert s[f"{c}/guided_tokens_vs_sweep_lo"] < 1
    for key in ("predictor_macro_f1", "strength_only_macro_f1", "cgs_macro_f1", "predictor_margin",
                "guided_success_vs_sweep", "guided_tokens_vs_sweep"):
        assert s[f"{key}_lo"] <= s[key] <= s[f"{key}_hi"], key
    assert s["guided_setting"] == "guided-feedback R=2" and s["concepts"] == 4 and s["prompts"] == 6
    cv = res.cv_scores.set_index("model")["macro_f1"]
    assert s["predictor_macro_f1"] == pytest.approx(cv["predictor"]) and s["cgs_macro_f1"] == pytest.approx(cv["CGS"])
    assert s["model"] == "synthetic" and s["judge"] == "hidden" and "paper_macro_f1" in s
    assert "guided-feedback" in res.headline() or "target" in res.headline()


def test_steerboost_preset_sends_steerboosts_judge_request_and_keeps_its_feature_zeros():
    """``steerboost_compat`` is on in the steerboost preset
    (and a flag elsewhere); it makes the LLM judge SteerBoost's (verbatim names, no temperature) and
    is in the run config (only when on: older run directories keep resuming) and the reuse keys."""
    from steerjax.cli.predictor import STUDY_FLAGS, add_study_arguments
    from steerjax.studies.steerability_prediction.llm_judge import STEERBOOST_JUDGE_OPTIONS

    assert Config.preset("steerboost").steerboost_compat and not Config.preset("quick").steerboost_compat
    assert not Config.preset("steerboost", steerboost_compat=False).steerboost_compat
    on = Config.preset("smoke", judge="llm", judge_model="m", steerboost_compat=True)
    off = dataclasses.replace(on, steerboost_compat=False)
    assert study_mod.judge_options(on) == STEERBOOST_JUDGE_OPTIONS and study_mod.judge_options(off) == {}
    judge_on, judge_off = study_mod.inputs(on).llm, study_mod.inputs(off).llm
    assert (judge_on.concept_names, judge_on.temperature) == ("verbatim", None)
    assert (judge_off.concept_names, judge_off.temperature) == ("readable", 0.0)
    assert judge_on.concept_text("iambic-like") == "iambic-like"
    assert judge_off.concept_text("iambic-like") == "iambic like"
    assert on.run_config("m")["steerboost_compat"] is True and "steerboost_compat" not in off.run_config("m")
    assert "steerboost_compat" in study_mod.REUSE_KEYS and STUDY_FLAGS["steerboost_compat"] == "--steerboost-compat"
    import argparse

    ap = argparse.ArgumentParser()
    add_study_arguments(ap, default_out="x", model_flag=True)
    assert ap.parse_args([]).steerboost_compat is None  # the preset's
    assert ap.parse_args(["--no-steerboost-compat"]).steerboost_compat is False


def test_steerboost_search_protocol_runs_alphasearch_on_the_paper_split():
    """``search_protocol="steerboost"`` (the steerboost preset's
    default, ``--search-protocol``) searches the paper evaluation's split (seen concepts' test
    prompts, unseen concepts' every prompt) in two groups, budgets above the grid dropped, every
    rollout the mean length; the summary, intervals and headline read the unseen group unprefixed."""
    import argparse

    from steerjax.cli.predictor import add_study_arguments

    sb = Config.preset("steerboost")
    assert sb.search_protocol == "steerboost" and sb.max_rollouts == (5, 10, 15, 20)
    assert Config.preset("quick").search_protocol == "folds" and "search_protocol" not in Config().run_config("m")
    assert sb.run_config("m")["search_protocol"] == "steerboost"
    ap = argparse.ArgumentParser()
    add_study_arguments(ap, default_out="x", model_flag=True)
    assert ap.parse_args([]).search_protocol is None
    assert ap.parse_args(["--search-protocol", "steerboost"]).search_protocol == "steerboost"
    with pytest.raises(SteerjaxError, match="search_protocol must be one of"):
        study_mod.inputs(Config.preset("smoke", search_protocol="nope"))
    with pytest.raises(SteerjaxError, match="drops the budgets above the grid's 3 strengths"):  # before any model
        study_mod.inputs(Config.preset("smoke", search_protocol="steerboost", max_rollouts=[5, 10]))

    config = Config.preset("smoke", search_protocol="steerboost", max_rollouts=[2, 3, 9])
    table = _features(n_concepts=10)
    table["n_tokens"] = np.arange(len(table)) % 7 + 3
    details = {"model_source": "synthetic", "layer": 1, "judge": "hidden", "feature_set": config.feature_set,
               "feature_set_replays_judge": False}
    res = study_mod.evaluate_table(table, config, details, progress=False)
    parts = res.paper["split_prompts"].set_index(["concept", "prompt_id"])["part"]
    concept_part = dict(zip(res.paper["split_concepts"]["concept"], res.paper["split_concepts"]["part"]))
    igs = res.strategy_items[res.strategy_items["strategy"] == "IGS"]
    want = {(concept_part[c], p, c) for c in concept_part for p in range(6)
            if concept_part[c] == "unseen" or parts[(c, p)] == "test"}
    assert set(zip(igs["group"], igs["prompt_id"], igs["concept"])) == want
    assert set(res.strategies["max_rollouts"].dropna()) == {2, 3}  # 9 > the 4 strengths
    assert igs["tokens"].eq(4 * table["n_tokens"].mean()).all()  # the mean length per rollout
    st = res.details["strategies"]
    assert {"IGS", "seen/IGS", "seen/TCGS", "guided-argmax_R3", "seen/guided-argmax_R3"} <= set(st)
    assert st["TCGS"]["items"] == 0  # unseen concepts have no training prompts
    assert "seen IGS success_vs_igs" in set(res.intervals["quantity"])
    assert res.summary()["guided_setting"] == "guided-feedback R=3" and "search IGS" in res.headline()


def test_protocol_table_matches_the_docs():
    """config.PROTOCOL (what the report shows as deviations) has the elements of the protocol table
    (docs/protocols.md, which the README's section links to), in order."""
    from steerjax.studies.steerability_prediction.config import PROTOCOL

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    start = readme.index("## Predicting steerability early")
    assert "docs/protocols.md#predicting-steerability-early-fan-et-al" in readme[start:readme.index("\n## ", start)]
    docs = open(os.path.join(root, "docs", "protocols.md"), encoding="utf-8").read()
    start = docs.index("## Predicting steerability early (Fan et al.)")
    end = docs.find("\n## ", start)
    section = docs[start:] if end < 0 else docs[start:end]
    lines = section[section.index("| element | paper / SteerBoost"):].splitlines()
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines))  # the table, to its last row
    rows = [line.split("|")[1].strip() for line in table[2:]]
    assert table[1].startswith("| --- |") and rows
    assert [r[0] for r in PROTOCOL] == rows
    assert all(isinstance(d, bool) for *_, d in PROTOCOL)


@pytest.mark.requires_data
def test_one_concept_testbed_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """Statement concepts contrast dimensions: one concept is refused before the model loads, and
    nothing (not even an empty directory) is left behind."""
    import steerjax
    from steerjax.cli import main
    from tests.helpers import TINYSTORIES_MISSING, tinystories_path

    if tinystories_path() is None:
        pytest.skip(TINYSTORIES_MISSING)
    monkeypatch.setattr(steerjax, "load_model", lambda *a, **k: pytest.fail("the model loaded before the check"))
    out = tmp_path / "tb"
    code = main(["testbed", tinystories_path(), "--concepts", "agreeableness", "--layer", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --concepts: statement concepts contrast dimensions")
    assert not out.exists()
