"""The steerability-predictor experiment: the smoke preset end to end, and bad inputs refused
before any model loads."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from steerjax.errors import PredictorError
from tests.helpers import ModelLoaded


@pytest.mark.slow
@pytest.mark.requires_data
def test_steerability_predictor_experiment_smoke(tmp_path, capsys, monkeypatch):
    from experiments.steerability_predictor.run import PRESETS, main
    from steerjax.studies.steerability_prediction.judge import LABELS
    from tests.helpers import TINYSTORIES_MISSING, tinystories_path

    # TinyStories, not the default SmolLM2: the pipeline end to end in half the time (compiling for
    # SmolLM2 was most of it); the bad-input tests below keep the default model's path
    if tinystories_path() is None:
        pytest.skip(TINYSTORIES_MISSING)
    out = tmp_path / "run"
    model = ["--model", tinystories_path()]
    summary = main(["--preset", "smoke", "--out", str(out), *model])
    p = PRESETS["smoke"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == "smoke" and len(cfg["concept_names"]) == p["concepts"]
    assert cfg["feature_set"] == "steerboost+steerjax+relative" and cfg["judge"] == "hidden"
    roll = pd.read_parquet(out / "rollouts.parquet")
    n_steered = p["prompts"] * p["concepts"] * len(p["strengths"])
    assert len(roll) == p["prompts"] + n_steered
    labels = pd.read_parquet(out / "labels.parquet")
    assert set(labels["label"]) <= set(LABELS) and labels["nll"].gt(0).all()
    feats = pd.read_parquet(out / "features.parquet")
    assert len(feats) == n_steered and {"kl_next_k1", "sb_Alpha", "read_nll_k1", "rel_kl_next_k1",
                                        "n_tokens"} <= set(feats)
    assert summary["unlabelled_dropped"] == 0 and not summary["feature_set_replays_judge"]

    # concept-grouped CV (the extra), with the CGS baseline
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores["model"]) == ["predictor", "multiplier-only", "strength-only", "majority", "CGS"]
    assert scores["macro_f1"].between(0, 1).all()

    # the paper's evaluation: seen / unseen concepts, per-class and macro-F1, CGS beside the baselines
    paper = pd.read_csv(out / "paper" / "scores.csv")
    subsets = set(zip(paper["concepts"], paper["prompts"]))
    assert subsets == {("seen", "test"), ("unseen", "test"), ("unseen", "all")}
    for part in subsets:
        models = set(paper.loc[(paper["concepts"] == part[0]) & (paper["prompts"] == part[1]), "model"])
        assert {"predictor", "strength-only", "majority", "CGS"} <= models
    per_class = pd.read_csv(out / "paper" / "per_class.csv")
    assert set(per_class["class"]) == set(LABELS)
    params = pd.read_csv(out / "paper" / "params.csv")
    assert len(params) == 1 and params["chosen"].all()  # the smoke grid is one setting
    assert summary["paper"]["concepts"] == {"seen": 3, "unseen": 1}

    # the ablation: every set on the same folds, judge-aware rows flagged
    abl = pd.read_csv(out / "ablation.csv")
    pooled = abl[abl["fold"] == "all"].set_index("set")
    assert {"steerboost", "steerjax", "relative", "judge-aware", "steerboost+steerjax", "steerboost+steerjax+relative",
            "strength-only"} <= set(pooled.index)
    assert pooled["replays_judge"].to_dict() == {s: "judge-aware" in s for s in pooled.index}
    assert pooled["n_rows"].eq(n_steered).all()
    cv = scores.set_index("model")["macro_f1"]
    # same folds, same model (the smoke preset has no nested search)
    assert pooled.loc["steerboost+steerjax+relative", "macro_f1"] == pytest.approx(cv["predictor"])

    # judges: kappa of every pair that ran
    judges = pd.read_csv(out / "judges.csv")
    assert judges[["judge_a", "judge_b"]].values.tolist() == [["hidden-state", "embedding"]]
    assert judges["n"].iloc[0] == p["kappa_sample"] and -1 <= judges["kappa"].iloc[0] <= 1

    # strategies on unseen concepts x held-out prompts, relative to IGS
    st = pd.read_csv(out / "strategies.csv")
    items = p["prompts"] * p["concepts"]
    assert {"IGS", "CGS", "TCGS", "IGS-A", "IGS-D", "guided-argmax", "guided-bisect", "guided-feedback",
            "threshold-ranked"} <= set(st["strategy"])
    assert st.loc[st["strategy"] != "TCGS", "items"].eq(items).all() and st["items"].le(items).all()
    igs = st[st["strategy"] == "IGS"].iloc[0]
    assert igs["success_vs_igs"] in (1.0,) or np.isnan(igs["success_vs_igs"])
    assert igs["tokens_vs_igs"] == 1.0
    guided = st[st["strategy"] == "guided-argmax"]
    assert sorted(guided["max_rollouts"]) == p["max_rollouts"] and guided["tokens_vs_igs"].lt(1).all()
    # bootstrap intervals over concepts: the CV margin and every guided setting (the smoke preset's
    # paper split has one unseen concept: nothing to resample there)
    iv = pd.read_csv(out / "intervals.csv")
    assert set(iv["evaluation"]) == {"cv", "search"} and (iv["draws"] == 1000).all()
    margin = iv[(iv["evaluation"] == "cv") & (iv["quantity"] == "predictor - best of strength-only/CGS")].iloc[0]
    cv_scores = scores.set_index("model")["macro_f1"]
    assert margin["point"] == pytest.approx(cv_scores["predictor"] - max(cv_scores["strength-only"], cv_scores["CGS"]))
    assert margin["low"] <= margin["high"] and margin["concepts"] == p["concepts"]
    for r in p["max_rollouts"]:
        for ratio in ("success_vs_igs", "tokens_vs_igs"):
            q = iv[iv["quantity"] == f"guided-feedback R={r} {ratio}"]
            shown = summary["intervals"][f"search: guided-feedback R={r} {ratio}"]
            assert len(q) == 1 and shown["concepts"] == p["concepts"]
    for png in ("confusion", "importance", "importance_layer_step", "labels_by_strength", "f1_by_step",
                "strategies"):
        assert os.path.getsize(out / f"{png}.png") > 5000
    assert set(summary["targets"]) and summary["wall_seconds"] > 0
    printed = capsys.readouterr().out
    assert "judge-independent" in printed and "target guided" in printed and "concept-grouped CV" in printed

    # steps 4-5 again from the run's features, without a model: the same figures
    import steerjax
    import steerjax.model

    def refuse(*a, **k):
        raise AssertionError("--reuse-features loaded a model")

    monkeypatch.setattr(steerjax, "load_model", refuse)
    monkeypatch.setattr(steerjax.model, "load_model", refuse)
    again = main(["--preset", "smoke", "--reuse-features", str(out), "--out", str(tmp_path / "again"), *model])
    assert again["reused_features"] == str(out) and again["label_shares"] == summary["label_shares"]
    for key in ("paper", "evaluation", "ablation", "strategies", "targets", "intervals"):  # as JSON: NaN equals NaN
        assert json.dumps(again[key], sort_keys=True, default=str) == json.dumps(summary[key], sort_keys=True,
                                                                                 default=str), key
    with pytest.raises(steerjax.errors.RunConfigError, match="other seed"):
        main(["--preset", "smoke", "--seed", "1", "--reuse-features", str(out), "--out", str(tmp_path / "other"),
              *model])


def test_experiment_help(capsys):
    from experiments.steerability_predictor.run import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--feature-set", "--judge", "--judge-url", "--judge-model", "--steerboost-data", "steerboost"):
        assert flag in text


@pytest.mark.parametrize("argv, error, msg", [
    (["--feature-set", "nope"], "PredictorError", "unknown feature set 'nope'"),
    (["--prompts", "1"], "SteerjaxError", "--prompts must be >= 2"),
    (["--judge-url", "http://127.0.0.1:9/v1"], "JudgeError", "for --judge llm"),
    (["--judge", "embedding", "--no-kappa"], "JudgeError", "drop --no-kappa"),
    (["--prompts", "99"], "SteerjaxError", "--prompts must be at most"),
    (["--judge", "llm"], "JudgeError", "no judge model"),
    (["--reuse-features", "/nonexistent/run"], "RunConfigError", "missing config.json"),
])
def test_bad_inputs_before_the_model_loads(argv, error, msg, tmp_path, no_model, monkeypatch, capsys):
    from experiments.steerability_predictor.run import main
    from steerjax.errors import SteerjaxError

    monkeypatch.delenv("STEERJAX_JUDGE_MODEL", raising=False)
    args = ["--preset", "smoke", "--out", str(tmp_path / "run")] + argv
    if error == "exit":
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2 and msg in capsys.readouterr().err
    else:
        with pytest.raises(SteerjaxError) as e:
            main(args)
        assert type(e.value).__name__ == error and msg in str(e.value)
    assert not (tmp_path / "run").exists()  # refused before the run directory is claimed


def test_llm_judge_endpoint_checked_before_the_model_loads(tmp_path, no_model, monkeypatch):
    from experiments.steerability_predictor.run import main
    from steerjax.errors import JudgeError
    from steerjax.serve import ChatServer, completion

    def answer(request):
        return completion('{"judgment": 1}', model=request["model"])

    server = ChatServer(answer)
    url = server.url
    server.close()  # nothing listens there now
    base = ["--preset", "smoke", "--judge", "llm", "--judge-model", "m", "--out", str(tmp_path / "run")]
    with pytest.raises(JudgeError, match="unreachable") as e:
        main(base + ["--judge-url", url])
    assert url in str(e.value)
    with ChatServer(answer, api_key="right") as live:
        monkeypatch.setenv("OPENAI_API_KEY", "wrong")
        with pytest.raises(JudgeError, match="refused the API key") as e:
            main(base + ["--judge-url", live.url])
        assert live.url in str(e.value)
        monkeypatch.setenv("OPENAI_API_KEY", "right")
        with pytest.raises(ModelLoaded):  # reachable, key accepted: on to the model
            main(base + ["--judge-url", live.url])
        assert live.requests == 0  # the check asked GET /models only; no rollout was judged
    assert not os.path.exists(tmp_path / "run" / "labels.parquet")


def test_a_different_run_in_the_same_directory_is_refused(tmp_path, no_model):
    from experiments.steerability_predictor.run import main
    from steerjax.errors import RunConfigError

    out = str(tmp_path / "run")
    with pytest.raises(ModelLoaded):
        main(["--preset", "smoke", "--out", out])
    with pytest.raises(ModelLoaded):  # the same command resumes
        main(["--preset", "smoke", "--out", out])
    with pytest.raises(RunConfigError, match="feature_set"):
        main(["--preset", "smoke", "--feature-set", "steerjax", "--out", out])


#: three more concepts: two of each abstraction level, as the paper's stratified split needs
MORE = [(1, "exclamations"), (46, "legal jargon"), (91, "pessimism")]


def steerboost_data(root, *, banks=True, one_sided=None, more=False):
    """SteerBoost's data in the format its code reads: concepts.json (a list of {concept_id,
    concept_name}), training/{id}.json ({positive, negative}) and alpaca_eval.json (a list of
    {instruction, dataset, ...}); ``more``: seven concepts, two or more per level."""
    os.makedirs(root / "training")
    concepts = [{"concept_id": i, "concept_name": name} for i, name in
                [(0, "emojis"), (45, "formal tone"), (90, "optimism"), (121, "pirate speech"), *(MORE if more else [])]]
    (root / "concepts.json").write_text(json.dumps(concepts))
    for c in concepts if banks else ():
        bank = {"positive": [f"{c['concept_name']} text {j}" for j in range(3)],
                "negative": [] if c["concept_id"] == one_sided else [f"plain text {j}" for j in range(3)]}
        (root / "training" / f"{c['concept_id']}.json").write_text(json.dumps(bank))
    (root / "alpaca_eval.json").write_text(json.dumps(
        [{"instruction": f"Question {i}?", "dataset": "helpful_base", "output": "", "generator": "x"}
         for i in range(10)]))
    return root


def test_steerboost_preset_checks_its_data_first(tmp_path, no_model):
    from experiments.steerability_predictor.run import main
    from steerjax.data import steerboost as sources
    from steerjax.errors import DataError, SteerjaxError

    base = ["--preset", "steerboost", "--concepts", "4", "--prompts", "3", "--out", str(tmp_path / "run")]
    with pytest.raises(DataError) as e:
        main(base + ["--steerboost-data", str(tmp_path / "missing")])
    assert "concepts.json" in str(e.value) and "steerjax data download steerboost" in str(e.value)
    no_banks = steerboost_data(tmp_path / "nobanks", banks=False)
    with pytest.raises(DataError, match=r"lacks the example banks of concepts \[0, 45, 90, 121\]") as e:
        main(base + ["--steerboost-data", str(no_banks)])
    assert "--steerboost-data" in str(e.value)
    one_sided = steerboost_data(tmp_path / "onesided", one_sided=45)
    with pytest.raises(SteerjaxError, match="no negative examples"):
        main(base + ["--steerboost-data", str(one_sided)])
    assert not (tmp_path / "run").exists()

    # four concepts (1 mid, 1 high): the stratified seen/unseen split would leave a level empty
    few = steerboost_data(tmp_path / "few")
    with pytest.raises(SteerjaxError, match="2 concepts per level"):
        main(base + ["--steerboost-data", str(few)])
    assert not (tmp_path / "run").exists()

    good = steerboost_data(tmp_path / "good", more=True)
    with pytest.raises(SteerjaxError, match="prompt_folds 5 is more than the 3 prompts"):  # the preset's 5 folds
        main(base[:2] + ["--concepts", "7"] + base[4:] + ["--steerboost-data", str(good)])
    assert not (tmp_path / "run").exists()
    with pytest.raises(ModelLoaded):
        main(base[:2] + ["--concepts", "7", "--prompts", "5"] + base[6:] + ["--steerboost-data", str(good)])
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    names = ["emojis", "formal tone", "optimism", "pirate speech", "exclamations", "legal jargon", "pessimism"]
    assert cfg["concept_names"] == names
    assert cfg["strengths"] == list(sources.STEERBOOST_ALPHAS) and cfg["n_prompts"] == 5

    from steerjax.studies.steerability_prediction import Config
    from steerjax.studies.steerability_prediction.study import inputs

    got = inputs(Config.preset("steerboost", steerboost_data=str(good), prompts=5))
    assert got.names == names
    assert got.prompts == sources.alpaca_eval_prompts(good / "alpaca_eval.json", n=5, seed=42)
    assert got.levels == {"emojis": "low", "formal tone": "mid", "optimism": "high", "pirate speech": "low",
                          "exclamations": "low", "legal jargon": "mid", "pessimism": "high"}
    assert got.source["rollouts"]["scale"] == "raw" and got.source["rollouts"]["temperature"] == 0.7
    assert got.source["rollouts"]["positions"] == "all" and got.source["evaluation"]["prompt_split"] == "per-concept"


def test_cgs_baseline_is_leave_one_prompt_out():
    from steerjax.studies.steerability_prediction.evaluation import concept_strength

    t = pd.DataFrame({"prompt_id": [0, 1, 2, 0, 1, 2, 0, 1],
                      "concept": ["a"] * 6 + ["b"] * 2,
                      "strength": [0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.1, 0.1],
                      "label": ["success", "success", "under-steer", "over-steer", "success", "over-steer",
                                "under-steer", "over-steer"]})
    got = concept_strength(t).tolist()
    # a@0.1: the others of prompt 0 are {success, under-steer}: a tie, the first of LABELS (under-steer)
    assert got[:3] == ["under-steer", "under-steer", "success"]
    assert got[3:6] == ["success", "over-steer", "success"]
    assert got[6:] == ["over-steer", "under-steer"]
    # the paper's concept-strength: training prompts' rows counted for other rows; a concept or
    # strength without counted rows falls back to the strength, then to the majority
    rows = pd.DataFrame({"prompt_id": [3, 3, 3], "concept": ["a", "c", "c"], "strength": [0.2, 0.1, 0.3]})
    assert concept_strength(t, rows).tolist() == ["over-steer", "under-steer", "success"]
    assert concept_strength(t, rows, majority="over-steer")[2] == "over-steer"
    assert concept_strength(t.iloc[:3]).tolist() == ["under-steer", "under-steer", "success"]
    with pytest.raises(PredictorError, match="lacks columns"):
        concept_strength(t.drop(columns=["strength"]))
