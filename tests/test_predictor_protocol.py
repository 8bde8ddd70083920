"""The paper's setting and evaluation: raw-alpha strengths, concepts from example banks, SteerBoost's
files (small fixtures in the format its code reads: its data are not shipped), the seen/unseen and
train/validation/test split, and hyperparameters chosen on validation."""

from __future__ import annotations

import inspect
import json
import os
import random

import numpy as np
import pandas as pd
import pytest

from steerjax.data.example_banks import Examples, read_examples
from steerjax.data.steerboost import (
    LEVEL_POOLS,
    STEERBOOST,
    alpaca_eval_prompts,
    load_prompts,
    steerboost_concepts,
    steerboost_examples,
)
from steerjax.errors import DataError, PredictorError, SteerjaxError
from steerjax.studies.steerability_prediction import classifier, evaluation, rollouts, text_concepts
from steerjax.studies.steerability_prediction.concepts import concepts_from_examples
from steerjax.studies.steerability_prediction.evaluation import paper_evaluation, paper_split
from steerjax.studies.steerability_prediction.judge import LABELS
from steerjax.vectors import read_activations
from tests.helpers import token_concepts

LAYER = 1
PROMPTS = [[5, 17, 33, 9], [40, 41, 42, 43, 44, 45, 46], [7, 8]]


@pytest.fixture(scope="module")
def model(tiny_llama):
    return tiny_llama


@pytest.fixture(scope="module")
def concepts(model):
    return token_concepts(model, layer=LAYER)


def _banks():
    rng = np.random.default_rng(3)
    ids = lambda n, lo, hi: [rng.integers(lo, hi, size=int(rng.integers(3, 9))).tolist() for _ in range(n)]  # noqa: E731
    return {"upper": {"positive": ids(4, 3, 120), "negative": ids(3, 120, 256), "level": "low"},
            "polite": {"positive": ids(2, 3, 60), "negative": ids(5, 60, 256), "level": "high"}}


# ----------------------------------------------------------------------------- setting: scales


def test_raw_scale_multiplies_the_vector_as_estimated(model, concepts, tmp_path):
    c = concepts[0]
    assert c.multiplier(2.5, "raw") == 2.5
    assert np.isclose(c.multiplier(0.5, "norm"), 0.5 * c.residual_norm / c.norm)
    with pytest.raises(SteerjaxError, match="scale='alpha'.*'norm'.*'raw'"):
        c.multiplier(1.0, "alpha")
    run = str(tmp_path / "raw")
    kw = dict(layer=LAYER, max_new_tokens=4, batch_size=16, progress=False)  # one batch shape for every call
    raw = rollouts(model, PROMPTS, concepts, [0.5, 3.0], scale="raw", run_dir=run, **kw)
    steered = raw[raw.concept != "none"]
    assert (raw.scale == "raw").all()
    np.testing.assert_allclose(steered.multiplier, steered.strength, rtol=1e-6)  # alpha x v: multiplier == strength
    with open(os.path.join(run, "config.json")) as f:
        assert json.load(f)["scale"] == "raw"
    # the same added vectors in the norm scale give the same (greedy) rollouts
    grid = {x.name: [a * x.norm / x.residual_norm for a in (0.5, 3.0)] for x in concepts}
    norm = rollouts(model, PROMPTS, concepts, grid, **kw)
    assert (norm.scale == "norm").all()
    np.testing.assert_allclose(norm.multiplier, raw.multiplier, rtol=1e-5)
    assert list(map(tuple, norm.tokens)) == list(map(tuple, raw.tokens))
    with pytest.raises(SteerjaxError, match="different config"):  # the scale is part of the run's key
        rollouts(model, PROMPTS, concepts, [0.5, 3.0], scale="norm", run_dir=run, **kw)
    with pytest.raises(SteerjaxError, match="scale="):
        rollouts(model, PROMPTS, concepts, [1.0], scale="alpha", **kw)
    with pytest.raises(SteerjaxError, match="temperature"):
        rollouts(model, PROMPTS, concepts, [1.0], temperature=-0.5, **kw)
    with pytest.raises(SteerjaxError, match="top_p"):
        rollouts(model, PROMPTS, concepts, [1.0], top_p=0.0, **kw)
    with pytest.raises(SteerjaxError, match="top_k"):
        rollouts(model, PROMPTS, concepts, [1.0], top_k=-1, **kw)
    # a single strength is a valid grid for rollouts (it matters for the evaluation, tested below)
    one = rollouts(model, PROMPTS, concepts, [0.7], scale="raw", **kw)
    assert sorted(set(one.strength)) == [0.0, 0.7]


# ----------------------------------------------------------------------------- setting: example banks


def test_concepts_from_examples_is_a_mean_difference_of_token_means(model):
    banks = _banks()
    made = concepts_from_examples(model, banks, layer=LAYER, norm_prompts=None, progress=False)
    assert [c.name for c in made] == ["upper", "polite"]
    # every token's residual but the first, read one position at a time, then averaged in numpy
    texts = [ids for c in made for side in ("positive", "negative") for ids in banks[c.name][side]]
    tokens = [[] for _ in texts]
    for i in range(1, max(map(len, texts))):
        idx = [j for j, ids in enumerate(texts) if len(ids) > i]
        acts = read_activations(model, [texts[j] for j in idx], [LAYER], reduce=i, batch_size=1)
        for j, a in zip(idx, acts[:, 0].astype(np.float64)):
            tokens[j].append(a)
    text_means = iter([np.mean(t, axis=0) for t in tokens])
    norms = [np.linalg.norm(np.stack(t), axis=-1).mean() for t in tokens]
    for c in made:
        means = {side: np.mean([next(text_means) for _ in banks[c.name][side]], axis=0)
                 for side in ("positive", "negative")}
        np.testing.assert_allclose(c.vector, means["positive"] - means["negative"], rtol=2e-4, atol=2e-5)
        assert c.layer == LAYER and c.source == "examples:diffmean"
        assert c.metadata["level"] == banks[c.name]["level"] and c.metadata["method"] == "diffmean"
        assert (c.metadata["n_positive"], c.metadata["n_negative"]) == (len(banks[c.name]["positive"]),
                                                                         len(banks[c.name]["negative"]))
    assert np.isclose(made[0].residual_norm, np.mean(norms), rtol=1e-4)  # norm_prompts=None: the examples' own
    # the first n of each side, as SteerBoost's first 50
    two = concepts_from_examples(model, banks, layer=LAYER, n_examples=2, norm_prompts=None, progress=False)
    assert two[0].metadata["n_positive"] == 2 and not np.allclose(two[0].vector, made[0].vector)
    # a probe: a unit direction that separates the two sides, close to the mean difference
    probe = concepts_from_examples(model, banks, layer=LAYER, method="probe", norm_prompts=None, progress=False)
    for p, d in zip(probe, made):
        assert p.source == "examples:probe" and np.isclose(p.norm, 1.0, atol=1e-5)
        assert float(p.vector @ d.vector) > 0


def test_example_banks_from_jsonl_and_bad_banks(tmp_path, model):
    path = tmp_path / "banks.jsonl"
    lines = [{"concept": "emojis", "positive": ["a 🎉", "b 🎈"], "negative": ["a", "b"], "level": "low", "id": 3},
             {"concept": "formal", "positive": ["Dear sir"], "negative": ["hey"]}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    banks = read_examples(path)
    assert list(banks) == ["emojis", "formal"]
    assert banks["emojis"] == Examples(("a 🎉", "b 🎈"), ("a", "b"), "low") and banks["formal"].level is None
    assert read_examples({"x": (["p"], ["n"])})["x"] == Examples(("p",), ("n",))

    def bad(text, match, error=SteerjaxError):
        p = tmp_path / "bad.jsonl"
        p.write_text(text)
        with pytest.raises(error, match=match):
            read_examples(p)

    bad('{"concept": "a", "positive": ["x"], "negative": []}\n', "no negative examples")
    bad('{"concept": "a", "positive": [], "negative": ["x"]}\n', "no positive examples")
    bad('{"concept": "a", "positive": ["x"]}\n', "missing 'negative'")
    bad('{"concept": "a", "positive": "x", "negative": ["y"]}\n', "list of texts")
    bad('{"concept": "a", "positive": ["x"], "negative": ["y"]}\n' * 2, "given twice")
    bad('{"concept": "none", "positive": ["x"], "negative": ["y"]}\n', "other than 'none'")
    bad('{"concept": "a", "positive": ["x"], "negative": ["y"]\n', r"bad.jsonl:1 is not valid JSON", DataError)
    bad("\n", "no concepts")
    with pytest.raises(DataError, match="does not exist"):
        read_examples(tmp_path / "missing.jsonl")
    with pytest.raises(SteerjaxError, match="no negative examples"):
        concepts_from_examples(model, {"a": {"positive": [[5, 6, 7]], "negative": []}}, layer=LAYER)
    with pytest.raises(SteerjaxError, match="method="):
        concepts_from_examples(model, _banks(), layer=LAYER, method="pca")


def test_run_testbed_from_example_banks_in_the_raw_scale(model, tmp_path):
    from steerjax.studies.steerability_prediction.pipeline import load_testbed, run_testbed

    out = str(tmp_path / "tb")
    tb = run_testbed(model, None, PROMPTS, [0.5, 1.0], layer=LAYER, max_new_tokens=4, out=out, source="examples",
                     examples=_banks(), pairs=0, scale="raw", norm_prompts=None, batch_size=16, progress=False)
    assert [c.name for c in tb.concepts] == ["upper", "polite"] and tb.config["scale"] == "raw"
    assert (tb.rollouts.scale == "raw").all()
    again = load_testbed(out)
    assert [c.metadata["level"] for c in again.concepts] == ["low", "high"]
    assert evaluation.concept_levels(again.concepts) == {"upper": "low", "polite": "high"}
    with pytest.raises(SteerjaxError, match="needs examples="):
        run_testbed(model, None, PROMPTS, [1.0], layer=LAYER, max_new_tokens=3, out=str(tmp_path / "x"),
                    source="examples")


# ----------------------------------------------------------------------------- SteerBoost's files


def _steerboost_data(root, ids=(0, 1, 40, 41, 80, 121, 145), n=60):
    """A fixture in the format of SteerBoost's data/: concepts.json, training/{id}.json, alpaca_eval.json."""
    os.makedirs(root / "training")
    concepts = [{"concept_id": i, "concept_name": f"concept {i}"} for i in ids]
    concepts[-1]["level"] = "custom"  # an entry's own level wins over the id's pool
    (root / "concepts.json").write_text(json.dumps(concepts))
    for i in ids:
        bank = {"positive": [f"yes {i} {k}" for k in range(55)], "negative": [f"no {i} {k}" for k in range(52)]}
        (root / "training" / f"{i}.json").write_text(json.dumps(bank))
    alpaca = [{"instruction": f"Instruction number {k}.", "output": "", "generator": "x", "dataset": "helpful_base"}
              for k in range(n)]
    (root / "alpaca_eval.json").write_text(json.dumps(alpaca))
    return alpaca


def test_steerboost_loaders_on_fixtures(tmp_path):
    data = tmp_path / "data"
    alpaca = _steerboost_data(data)
    table = steerboost_concepts(data / "concepts.json")
    assert table.concept.tolist()[:2] == ["concept 0", "concept 1"]
    assert table.level.tolist() == ["low", "low", "mid", "mid", "high", "low", "custom"]
    banks = steerboost_examples(data)
    assert list(banks) == table.concept.tolist()
    assert len(banks["concept 40"].positive) == 50 and len(banks["concept 40"].negative) == 50  # the first 50
    assert banks["concept 40"].positive[0] == "yes 40 0" and banks["concept 40"].level == "mid"
    assert list(steerboost_examples(data, ids=[80, 0], n_examples=None)) == ["concept 80", "concept 0"]
    assert len(steerboost_examples(data, ids=[0], n_examples=None)["concept 0"].positive) == 55
    # SteerBoost's draw: random.seed(42); random.sample(data, 50), then the instructions
    random.seed(42)
    expected = [x["instruction"] for x in random.sample(alpaca, 50)]
    assert alpaca_eval_prompts(data / "alpaca_eval.json") == expected
    assert load_prompts(data / "alpaca_eval.json")[:2] == ["Instruction number 0.", "Instruction number 1."]
    (tmp_path / "list.json").write_text(json.dumps(["a", "b", "c"]))
    assert load_prompts(tmp_path / "list.json") == ["a", "b", "c"]
    drawn = load_prompts(tmp_path / "list.json", n=2, seed=0)
    assert len(drawn) == 2 and set(drawn) <= {"a", "b", "c"} and drawn == random.Random(0).sample(["a", "b", "c"], 2)
    # the levels are SteerBoost's pools: 50 per level, every id 0..149 once
    assert sorted(i for ids in LEVEL_POOLS.values() for i in ids) == list(range(150))
    assert [len(v) for v in LEVEL_POOLS.values()] == [50, 50, 50]


def test_steerboost_loaders_refuse_bad_files(tmp_path):
    data = tmp_path / "data"
    _steerboost_data(data, ids=(0, 1))
    os.remove(data / "training" / "1.json")
    with pytest.raises(DataError, match=r"training/1.json does not exist.*concept 1"):
        steerboost_examples(data)
    (data / "training" / "1.json").write_text(json.dumps({"positive": ["x"], "negative": []}))
    with pytest.raises(SteerjaxError, match="no negative examples"):
        steerboost_examples(data)
    with pytest.raises(DataError, match="not in"):
        steerboost_examples(data, ids=[7])
    (data / "concepts.json").write_text(json.dumps([{"concept_id": 0, "concept_name": "a"},
                                                    {"concept_id": 1, "concept_name": "a"}]))
    with pytest.raises(DataError, match="concept repeats"):
        steerboost_concepts(data / "concepts.json")
    (data / "concepts.json").write_text(json.dumps([{"id": 0, "name": "a"}]))
    with pytest.raises(DataError, match="concept_id"):
        steerboost_concepts(data / "concepts.json")
    with pytest.raises(DataError, match="does not exist"):
        steerboost_concepts(tmp_path / "nowhere.json")
    with pytest.raises(SteerjaxError, match="holds 60: ask for at most 60"):
        alpaca_eval_prompts(data / "alpaca_eval.json", n=61)
    with pytest.raises(SteerjaxError, match="give seed="):
        load_prompts(data / "alpaca_eval.json", n=3)
    with pytest.raises(DataError, match="no 'prompt' key"):
        load_prompts(data / "alpaca_eval.json", field="prompt")


def test_steerboost_preset_is_the_references_setting():
    r = STEERBOOST["rollouts"]
    assert len(r["strengths"]) == 45 and r["strengths"][0] == 0.2 and r["strengths"][-1] == 9.0
    assert np.allclose(np.diff(r["strengths"]), 0.2)
    assert (r["scale"], r["positions"], r["temperature"], r["max_new_tokens"]) == ("raw", "all", 0.7, 2048)
    assert (r["top_k"], r["top_p"]) == (20, 0.95)  # Qwen3-1.7B's generation config under do_sample=True
    assert set(r) - {"strengths"} <= set(inspect.signature(rollouts).parameters)
    assert set(STEERBOOST["concepts"]) <= set(inspect.signature(concepts_from_examples).parameters)
    assert set(STEERBOOST["prompts"]) <= set(inspect.signature(alpaca_eval_prompts).parameters)
    assert set(STEERBOOST["evaluation"]) <= set(inspect.signature(paper_evaluation).parameters)


# ----------------------------------------------------------------------------- evaluation: the split

NAMES = [f"c{i:03d}" for i in range(150)]
LEVELS = {NAMES[i]: level for level, ids in LEVEL_POOLS.items() for i in ids}
LEVELS = {n: LEVELS[n] for n in NAMES}  # in id order, as steerboost_concepts gives them


def test_split_sizes_disjoint_stratified_and_reproducible():
    split = paper_split(NAMES, range(50), levels=LEVELS, seed=42)
    c = split.concepts
    assert c.concept.tolist() == NAMES and (c.part == "seen").sum() == 120 and (c.part == "unseen").sum() == 30
    assert (c[c.part == "unseen"].level.value_counts() == 10).all() and c.level.nunique() == 3  # 10 per level
    p = split.prompts
    assert len(p) == 150 * 50 and set(p.part) == {"train", "validation", "test"}
    per = p[p.concept == "c000"].part.value_counts()
    assert (per["train"], per["validation"], per["test"]) == (35, 5, 10)  # 70/10/20
    assert p.groupby("prompt_id").part.nunique().max() == 1  # shared: a prompt is in one part for every concept
    assert set(split.names("seen")).isdisjoint(split.names("unseen"))
    again = paper_split(NAMES, range(50), levels=LEVELS, seed=42)
    pd.testing.assert_frame_equal(split.concepts, again.concepts)
    pd.testing.assert_frame_equal(split.prompts, again.prompts)
    other = paper_split(NAMES, range(50), levels=LEVELS, seed=43)
    assert split.names("unseen") != other.names("unseen")
    # SteerBoost's construction (xgb/concept_partition.py, xgb/train_weighted_search.py), from its description:
    # per level (low, mid, high) the pool in id order is permuted by default_rng(seed), the first 40 seen; each
    # seen concept in id order then draws its prompt permutation from one RandomState(seed): test first, then
    # validation, then train
    rng = np.random.default_rng(42)
    seen = sorted(i for ids in LEVEL_POOLS.values() for i in np.asarray(ids)[rng.permutation(50)[:40]])
    per_concept = paper_split(NAMES, range(50), levels=LEVELS, prompt_split="per-concept", seed=42)
    assert per_concept.names("seen") == [NAMES[i] for i in seen]
    rs = np.random.RandomState(42)
    for i in seen[:3]:
        perm = np.arange(50)
        rs.shuffle(perm)
        got = per_concept.prompts[per_concept.prompts.concept == NAMES[i]].set_index("prompt_id").part
        assert sorted(got[got == "test"].index) == sorted(perm[:10].tolist())
        assert sorted(got[got == "validation"].index) == sorted(perm[10:15].tolist())
    assert per_concept.prompts.groupby("prompt_id").part.nunique().max() > 1  # per concept: parts differ


def test_split_minimums_and_unstratified():
    split = paper_split(["a", "b", "c", "d", "e"], [0, 1, 2], seed=0)  # the least: 3 prompts, one per part
    assert split.concepts.level.isna().all() and (split.concepts.part == "unseen").sum() == 1
    assert sorted(split.prompts[split.prompts.concept == "a"].part) == ["test", "train", "validation"]
    with pytest.raises(PredictorError, match="at least 3 prompts"):
        paper_split(["a", "b"], [0, 1], seed=0)
    with pytest.raises(PredictorError, match="at least 2 concepts per level"):
        paper_split(["a", "b", "c"], range(10), levels={"a": "low", "b": "low", "c": "high"})
    with pytest.raises(PredictorError, match="at least 2 concepts"):
        paper_split(["a"], range(10))
    with pytest.raises(PredictorError, match="no level"):
        paper_split(["a", "b"], range(10), levels={"a": "low"})
    with pytest.raises(PredictorError, match="summing to 1"):
        paper_split(["a", "b"], range(10), prompt_fractions=(0.7, 0.2, 0.2))
    with pytest.raises(PredictorError, match="prompt_split"):
        paper_split(["a", "b"], range(10), prompt_split="none")


# ----------------------------------------------------------------------------- evaluation: search and scores


def _table(n_concepts=10, n_prompts=10, strengths=(0.1, 0.2, 0.4, 0.8), seed=0):
    """A features table whose label follows a noisy reading ``x`` of the strength and concept."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_concepts):
        for p in range(n_prompts):
            for s in strengths:
                x = s * (1 + 0.3 * rng.normal()) + 0.04 * c
                label = LABELS[0] if x < 0.25 else LABELS[1] if x < 0.55 else LABELS[2]
                rows.append({"prompt_id": p, "concept": f"k{c}", "strength": s, "multiplier": 2 * s,
                             "x": x + 0.03 * rng.normal(), "noise": rng.normal(), "label": label})
    return pd.DataFrame(rows)


class _FakeModel:
    """Right on validation prompts for depth 4, right on test prompts for depth 6, wrong elsewhere."""

    def __init__(self, depth, right_on, n_features):
        self.depth, self.right_on, self.n_features = depth, right_on, n_features
        self.meta = {}
        self.model = self

    def get_feature_importance(self):
        return np.ones(self.n_features)

    def predict_proba(self, table):
        right = table.prompt_id.isin(self.right_on[self.depth]).to_numpy()
        true = table.label.map(LABELS.index).to_numpy()
        guess = np.where(right, true, (true + 1) % 3)
        return pd.DataFrame(np.eye(3)[guess], columns=list(LABELS), index=table.index)

    def predict(self, table):
        return self.predict_proba(table).idxmax(axis=1)


def test_hyperparameters_are_chosen_on_validation_only(monkeypatch):
    table = _table()
    split = paper_split(sorted(set(table.concept)), range(10), seed=5)
    parts = split.prompts[split.prompts.concept == "k0"].set_index("prompt_id").part
    right_on = {4: set(parts[parts == "validation"].index), 6: set(parts[parts == "test"].index)}
    seen_fits = []

    def fake_fit(rows, *, feature_columns, depth=6, **kw):
        seen_fits.append((set(rows.concept), set(rows.prompt_id), tuple(feature_columns)))
        return _FakeModel(depth, right_on, len(feature_columns))

    monkeypatch.setattr(classifier, "fit", fake_fit)
    ev = paper_evaluation(table, feature_columns=["strength", "x"], grid={"depth": [6, 4], "iterations": [5]}, seed=5,
                          progress=False)
    assert ev.chosen == {"depth": 4, "iterations": 5}  # the validation-best, though depth 6 is right on test
    assert ev.params.chosen.tolist() == [False, True] and ev.params.validation_macro_f1.tolist()[1] == 1.0
    s = ev.scores.set_index(["concepts", "prompts", "model"]).macro_f1
    assert s["seen", "test", "predictor"] == 0.0  # wrong on every test row: the test rows chose nothing
    train_prompts = set(parts[parts == "train"].index)
    for concepts_seen, prompts_seen, _ in seen_fits:  # every fit saw seen concepts x train prompts only
        assert concepts_seen <= set(split.names("seen")) and prompts_seen == train_prompts
    seen_fits.clear()
    ev = paper_evaluation(table, feature_columns=["strength", "x"], grid={"depth": [6, 4]}, refit=True, seed=5,
                          progress=False)
    assert ev.chosen == {"depth": 4} and seen_fits[2][1] == train_prompts | right_on[4]  # refit: train + validation


def test_paper_evaluation_end_to_end(tmp_path):
    table = _table(n_concepts=10, n_prompts=10)
    levels = {f"k{c}": "ab"[c % 2] for c in range(10)}
    ev = paper_evaluation(table, feature_columns=["strength", "x", "noise"], levels=levels, seed=1, cv_folds=2,
                          grid={"depth": [2, 3], "iterations": [25], "learning_rate": [0.2]}, progress=False)
    assert list(ev.scores[["concepts", "prompts"]].drop_duplicates().itertuples(index=False, name=None)) == [
        ("seen", "test"), ("unseen", "test"), ("unseen", "all")]
    models = {"predictor", "strength-only", "multiplier-only", "majority"}
    assert set(ev.scores[ev.scores.concepts == "unseen"].model) == models
    assert set(ev.scores[ev.scores.concepts == "seen"].model) == models | {"concept-strength"}
    s = ev.scores.set_index(["concepts", "prompts", "model"])
    assert s.loc[("unseen", "all", "predictor"), "n"] == 2 * 10 * 4
    assert s.loc[("unseen", "test", "predictor"), "n"] == 2 * 2 * 4
    assert s.loc[("seen", "test", "predictor"), "macro_f1"] > s.loc[("seen", "test", "majority"), "macro_f1"]
    assert s.loc[("unseen", "all", "predictor"), "macro_f1"] > 0.6
    pc = ev.per_class
    assert len(pc) == (5 + 4 + 4) * 3 and set(pc["class"]) == set(LABELS)
    # concept-strength: the most common label of the concept at that strength on the training prompts
    train = table[ev.split.rows(table, "seen", "train")]
    seen_test = ev.predictions[ev.predictions.concepts == "seen"]
    for _, r in seen_test.sample(10, random_state=0).iterrows():
        counts = train[(train.concept == r.concept) & (train.strength == r.strength)].label.value_counts()
        assert r.concept_strength in counts[counts == counts.max()].index
    assert (ev.predictions[ev.predictions.concepts == "unseen"].concept_strength == "").all()
    row = pc[(pc.concepts == "unseen") & (pc.prompts == "all") & (pc.model == "predictor")].set_index("class")
    assert np.allclose(row.f1.to_numpy(), s.loc[("unseen", "all", "predictor"), [f"f1_{c}" for c in LABELS]].to_numpy(
        np.float64), equal_nan=True)
    assert row.support.sum() == 80
    assert len(ev.params) == 2 and ev.params.chosen.sum() == 1 and ev.cv is not None
    assert ev.split.concepts.groupby("level").part.apply(lambda x: (x == "unseen").sum()).tolist() == [1, 1]
    ev.save(str(tmp_path / "ev"))
    files = set(os.listdir(tmp_path / "ev"))
    assert {"scores.csv", "per_class.csv", "params.csv", "split_concepts.csv", "split_prompts.csv", "summary.json",
            "predictions.parquet", "importance.csv", "confusion_unseen_test.csv", "cv_scores.csv"} <= files
    with open(tmp_path / "ev" / "summary.json") as f:
        summary = json.load(f)
    assert summary["concepts"] == {"seen": 8, "unseen": 2}
    assert summary["prompts_per_concept"] == {"train": 7, "validation": 1, "test": 2}
    assert summary["chosen"] == ev.chosen


def test_paper_evaluation_refuses_bad_input():
    table = _table(n_concepts=4, n_prompts=5)
    kw = dict(feature_columns=["strength", "x"], grid={"depth": [2], "iterations": [5]}, progress=False)
    levels = {f"k{c}": "a" for c in range(4)}
    with pytest.raises(PredictorError, match=r"\['k9'\] have no rows"):
        paper_evaluation(table, levels={**levels, "k9": "a"}, **kw)
    with pytest.raises(PredictorError, match="have rows but no level"):
        paper_evaluation(table, levels={"k0": "a", "k1": "a"}, **kw)
    split = paper_split([f"k{c}" for c in range(4)], range(5), levels=levels, seed=0)
    unseen = split.names("unseen")[0]
    test_prompts = split.prompts[(split.prompts.concept == unseen) & (split.prompts.part == "test")].prompt_id
    holed = table[~((table.concept == unseen) & table.prompt_id.isin(test_prompts))]
    with pytest.raises(PredictorError, match=rf"unseen concepts \['{unseen}'\] have no rows at their test prompts"):
        paper_evaluation(holed, levels=levels, seed=0, **kw)
    with pytest.raises(PredictorError, match="single strength"):
        paper_evaluation(table[table.strength == 0.4], **kw)
    with pytest.raises(PredictorError, match="at least 3 prompts"):
        paper_evaluation(table[table.prompt_id < 2], **kw)
    with pytest.raises(PredictorError, match="at least 2 concepts"):
        paper_evaluation(table[table.concept == "k0"], **kw)
    with pytest.raises(PredictorError, match="unknown keys"):
        paper_evaluation(table, **{**kw, "grid": {"depht": [2]}})
    with pytest.raises(PredictorError, match="learning_rate"):
        paper_evaluation(table, **{**kw, "grid": {"learning_rate": [2.0]}})
    with pytest.raises(PredictorError, match="missing from the table"):
        paper_evaluation(table, **{**kw, "feature_columns": ["nope"]})
    with pytest.raises(PredictorError, match="lacks columns"):
        paper_evaluation(table.drop(columns=["label"]), **kw)


@pytest.mark.slow
def test_label_and_featurize_reads_raw_alphas_at_their_multipliers(tinystories):
    from steerjax.studies.steerability_prediction.pipeline import label_and_featurize

    rng = np.random.default_rng(0)
    texts = {n: [rng.integers(3, 256, size=6).tolist() for _ in range(3)] for n in ("alpha", "beta")}
    made = text_concepts(tinystories, texts, [rng.integers(3, 256, size=6).tolist() for _ in range(4)], 1)
    prompts = ["Once upon a time", "The cat sat", "A little girl"]
    kw = dict(layer=1, max_new_tokens=4, batch_size=16, progress=False)
    raw = rollouts(tinystories, prompts, made, [0.5, 3.0], scale="raw", **kw)
    grid = {c.name: [a * c.norm / c.residual_norm for a in (0.5, 3.0)] for c in made}
    norm = rollouts(tinystories, prompts, made, grid, **kw)
    fkw = dict(layer=1, steps=(1, 2), batch_size=16, progress=False)
    _, _, data = label_and_featurize(tinystories, made, raw, **fkw)
    _, _, ref = label_and_featurize(tinystories, made, norm, **fkw)
    assert sorted(set(data.strength)) == [0.5, 3.0] and (data.multiplier == data.strength).all()
    cols = [c for c in classifier.feature_columns_of(data) if c != "strength"]
    np.testing.assert_allclose(data[cols].to_numpy(np.float64), ref[cols].to_numpy(np.float64), rtol=1e-5, atol=1e-6)
    assert data.label.tolist() == ref.label.tolist()


# ----------------------------------------------------------------------------- bootstrap over concepts


def test_macro_f1_from_confusion_matches_the_classifier():
    from steerjax.studies.steerability_prediction.evaluation import macro_f1_from_confusion

    rng = np.random.default_rng(0)
    for present in (LABELS, LABELS[:2]):  # all classes, and one absent from the true labels
        y = rng.choice(present, 60)
        pred = rng.choice(list(LABELS) + ["other"], 60)
        conf = np.zeros((3, 4))
        for a, b in zip(y, pred):
            conf[LABELS.index(a), LABELS.index(b) if b in LABELS else 3] += 1
        assert macro_f1_from_confusion(conf) == pytest.approx(classifier.macro_f1(y, pred))


def test_bootstrap_f1_by_hand_and_bad_input():
    from steerjax.studies.steerability_prediction.evaluation import bootstrap_f1, concept_draws

    u, s, o = LABELS
    # concept A predicted perfectly, concept B always under-steer. Draws {A, A}: macro-F1 1;
    # {A, B}: 2/3 (under-steer 2 * 2 / (2 + 4), the others 2 * 1 / (2 + 1)); {B, B}: (2 / (1 + 3)) / 3 = 1/6
    concepts = ["A"] * 3 + ["B"] * 3
    y = [u, s, o] * 2
    preds = {"predictor": [u, s, o, u, u, u], "strength-only": [u] * 6}
    got = bootstrap_f1(concepts, y, preds, baselines=("strength-only",), n_draws=1000, seed=0).set_index("quantity")
    row = got.loc["macro_f1 predictor"]
    assert row["point"] == pytest.approx(classifier.macro_f1(y, preds["predictor"])) == pytest.approx(2 / 3)
    assert row["low"] == pytest.approx(1 / 6) and row["high"] == pytest.approx(1.0)  # {B,B}, {A,A}: 1/4 each
    margin = got.loc["predictor - best of strength-only"]
    base = classifier.macro_f1(y, preds["strength-only"])
    assert margin["point"] == pytest.approx(2 / 3 - base)
    assert margin["low"] <= margin["point"] <= margin["high"] and (got["concepts"] == 2).all()
    again = bootstrap_f1(concepts, y, preds, baselines=("strength-only",), n_draws=1000, seed=0)
    pd.testing.assert_frame_equal(got.reset_index(), again)  # seeded
    names, weights = concept_draws(concepts, 7, seed=1)
    assert list(names) == ["A", "B"] and weights.shape == (7, 2) and (weights.sum(1) == 2).all()
    with pytest.raises(PredictorError, match="lack \\['CGS'\\]"):
        bootstrap_f1(concepts, y, preds)
    with pytest.raises(PredictorError, match="one value per row"):
        bootstrap_f1(concepts[:5], y, preds, baselines=("strength-only",))
    with pytest.raises(PredictorError, match="2 or more concepts"):
        bootstrap_f1(["A"] * 6, y, preds, baselines=("strength-only",))
    with pytest.raises(PredictorError, match="unknown true labels"):
        bootstrap_f1(concepts, ["good"] * 6, preds, baselines=("strength-only",))
    with pytest.raises(PredictorError, match="n_draws"):
        concept_draws(concepts, 0)
