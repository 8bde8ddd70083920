"""Judges, the CatBoost predictor and the guided strength search (Fan et al.), on small fixtures."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from steerjax.studies.steerability_prediction import classifier, judge, search
from steerjax.studies.steerability_prediction.judge import LABELS, Thresholds
from tests.helpers import labelled_table

# ----------------------------------------------------------------------------- judge pieces


def test_repetition_counts_repeated_trigrams():
    assert judge.repetition([1, 2, 3, 4, 5]) == 0.0
    assert judge.repetition([7, 7, 7, 7, 7, 7]) == pytest.approx(1 - 1 / 4)
    assert judge.repetition([1, 2, 3, 1, 2, 3]) == pytest.approx(1 - 3 / 4)
    assert judge.repetition([1, 2]) == 0.0


def test_cohen_kappa_matches_sklearn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a = rng.choice(LABELS, 200)
    b = np.where(rng.random(200) < 0.7, a, rng.choice(LABELS, 200))
    assert judge.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert judge.cohen_kappa(a, a) == 1.0
    with pytest.raises(judge.JudgeError, match="same non-empty"):
        judge.cohen_kappa(a, b[:10])


def test_label_rule_over_steer_wins_then_success():
    scores = pd.DataFrame({"concept_score": [0.1, 3.0, 3.0, 0.0], "nll": [1.0, 1.0, 9.0, 9.0],
                           "repetition": [0.0, 0.0, 0.0, 0.0]})
    thr = Thresholds(2.0, {"nll": 5.0, "repetition": 0.5}, "test")
    assert list(judge.Judge.label(scores, thr)) == ["under-steer", "success", "over-steer", "over-steer"]


def _table(n_prompts=3, concepts=("a", "b"), strengths=(1.0, 4.0), length=6, vocab=256, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        for c, s in [("none", 0.0)] + [(c, s) for c in concepts for s in strengths]:
            toks = rng.integers(3, vocab, length - (p % 2)).tolist()
            rows.append({"prompt_id": p, "prompt": f"p{p}", "concept": c, "strength": s, "text": "x",
                         "tokens": toks})
    return pd.DataFrame(rows)


def test_hidden_state_judge_reads_nll_and_hidden_states_exactly(tiny_llama):
    model, cfg = tiny_llama, tiny_llama.config
    rng = np.random.default_rng(1)
    prompts = {p: rng.integers(3, cfg.vocab_size, 4 + p).tolist() for p in range(3)}
    concepts = [types.SimpleNamespace(name=n, vector=rng.normal(size=cfg.hidden_size), layer=1) for n in "ab"]
    table = _table()
    j = judge.HiddenStateJudge(model, concepts, prompt_tokens=prompts, batch_size=4, progress=False)
    nll, hid = j.read(table)
    for i, row in table.iterrows():
        seq = prompts[row.prompt_id] + row.tokens
        ids = jnp.asarray([seq], jnp.int32)
        logp = np.asarray(jax.nn.log_softmax(model.logits(ids)[0], axis=-1))
        n0 = len(prompts[row.prompt_id])
        want = -np.mean([logp[t - 1, seq[t]] for t in range(n0, len(seq))])
        assert nll[i] == pytest.approx(want, abs=1e-4)
        h = np.asarray(model.hidden_states(ids, layers=[1]))[0, 0, n0:].mean(0)
        np.testing.assert_allclose(hid[i], h, atol=1e-4)
    scores, thr = j(table)
    assert set(scores["label"]) <= set(LABELS)
    unsteered = table["concept"] == "none"
    assert (scores.loc[unsteered, "concept_score"] == 0).all()
    # a steered row's score is its shift from its prompt's unsteered rollout along the unit vector
    u = concepts[0].vector / np.linalg.norm(concepts[0].vector)
    ref = hid[unsteered.to_numpy()] @ u
    i = int(np.flatnonzero((table["concept"] == "a").to_numpy())[0])
    p0 = int(np.flatnonzero((unsteered & (table["prompt_id"] == table.loc[i, "prompt_id"])).to_numpy())[0])
    assert scores.loc[i, "concept_score"] == pytest.approx((hid[i] - hid[p0]) @ u / ref.std(), rel=1e-4)
    assert thr.fluency["nll"] > np.quantile(nll[unsteered.to_numpy()], 0.99) and "unsteered" in thr.how


def test_judge_bad_input(tiny_llama):
    cfg = tiny_llama.config
    c = [types.SimpleNamespace(name="a", vector=np.ones(cfg.hidden_size), layer=1)]
    table = _table(concepts=("a",))
    j = judge.HiddenStateJudge(tiny_llama, c, prompt_tokens={p: [5, 6] for p in range(3)}, progress=False)
    with pytest.raises(judge.JudgeError, match="no unsteered one"):
        j(table[~((table["concept"] == "none") & (table["prompt_id"] == 1))])
    with pytest.raises(judge.JudgeError, match="lacks columns"):
        j(table.drop(columns=["tokens"]))
    with pytest.raises(judge.JudgeError, match="no concept direction"):
        j(_table(concepts=("a", "zzz")))
    with pytest.raises(judge.JudgeError, match="several layers"):
        judge.HiddenStateJudge(tiny_llama, c + [types.SimpleNamespace(name="b", vector=c[0].vector, layer=2)])


class _FakeEmbedder:
    """Bag-of-letters embeddings: deterministic and fast."""

    vocab = {"happy", "sunny", "sad", "rain", "the", "day"}

    def __call__(self, texts, batch_size=64):
        out = np.zeros((len(texts), 26))
        for i, t in enumerate(texts):
            for ch in t.lower():
                if ch.isalpha():
                    out[i, ord(ch) - 97] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_embedding_judge_scores_and_fluency():
    j = judge.EmbeddingJudge({"happy": (["happy happy sunny"], ["sad rain"])}, embedder=_FakeEmbedder())
    table = pd.DataFrame({
        "prompt_id": [0, 0, 0, 1, 1], "concept": ["none", "happy", "happy", "none", "happy"],
        "strength": [0, 1, 8, 0, 1], "tokens": [[1]] * 5,
        "text": ["the day", "happy sunny day", "xq zzv qqq " * 10, "rain day", "sunny happy"]})
    scores, thr = j(table)
    assert scores.loc[1, "concept_score"] > 0 and scores.loc[4, "concept_score"] > 0
    assert scores.loc[2, "non_words"] == 1.0 and scores.loc[1, "non_words"] == 0.0
    assert scores.loc[2, "compression"] > 3 and scores.loc[2, "label"] == "over-steer"
    assert set(thr.fluency) == {"non_words", "compression"}


@pytest.mark.slow
def test_minilm_embedder_is_normalised_and_semantic():
    pytest.importorskip("torch")
    try:
        path = judge.minilm_path()
    except judge.JudgeError as e:
        pytest.skip(str(e))
    emb = judge.SentenceEmbedder(path)
    e = emb(["I love my dog and walking him.", "Dogs are wonderful pets.", "The stock market fell today."])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


# ----------------------------------------------------------------------------- predictor


def synthetic_features(n_concepts=10, n_prompts=12, strengths=(0.5, 1, 2, 4, 8), seed=0):
    """Labels set by a concept-specific sensitivity that the features reveal and strength hides."""
    return labelled_table(lambda effect, rng: {"kl_next_k1": effect + rng.normal(0, 0.2), "cos_L3_k1": 1 - effect / 10,
                                               "diff_norm_L2_k2": rng.normal()},  # noise
                          n_concepts, n_prompts, strengths, seed)


def test_f1_and_confusion_match_sklearn():
    from sklearn.metrics import confusion_matrix, f1_score

    rng = np.random.default_rng(0)
    y = rng.choice(LABELS, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.choice(LABELS, 300))
    assert classifier.macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"))
    f = classifier.f1_scores(y, p)
    np.testing.assert_allclose([f[c] for c in LABELS], f1_score(y, p, average=None, labels=list(LABELS)))
    np.testing.assert_array_equal(classifier.confusion(y, p).to_numpy(), confusion_matrix(y, p, labels=list(LABELS)))


def test_evaluate_groups_folds_by_concept_and_beats_baselines():
    table = synthetic_features()
    ev = classifier.evaluate(table, n_folds=5, iterations=60, depth=4, progress=False)
    concepts = set(table["concept"])
    assert sorted(c for f in ev.folds for c in f) == sorted(concepts)  # every concept tested once
    assert all(not (set(a) & set(b)) for i, a in enumerate(ev.folds) for b in ev.folds[i + 1:])
    s = ev.scores.set_index("model")["macro_f1"]
    assert s["predictor"] > 0.8
    assert s["predictor"] > s["multiplier-only"] + 0.15 > s["majority"]
    assert s["strength-only"] == s["multiplier-only"]  # no multiplier column: both see the strength
    # with a multiplier column the multiplier-only baseline sees it (here: strength x a concept scale)
    scale = table["concept"].str[1:].astype(int) + 1.0
    ev2 = classifier.evaluate(table.assign(multiplier=table["strength"] * scale), n_folds=5, iterations=60, depth=4,
                              progress=False)
    s2 = ev2.scores.set_index("model")["macro_f1"]
    assert s2["strength-only"] == s["strength-only"] and s2["multiplier-only"] != s["multiplier-only"]
    assert s2["predictor"] == s["predictor"]  # the multiplier is an id column, not a feature
    bare = classifier.evaluate(table, n_folds=5, iterations=60, depth=4, progress=False, baselines=False)
    assert list(bare.scores["model"]) == ["predictor", "majority"]
    assert bare.scores.set_index("model").loc["predictor", "macro_f1"] == s["predictor"]
    assert ev.confusion.to_numpy().sum() == len(table)
    assert ev.importance.iloc[0]["feature"] in {"kl_next_k1", "cos_L3_k1"}
    by = classifier.importance_by_layer_and_step(ev.importance)
    assert set(zip(by["layer"], by["step"])) == {(-1, 1), (3, 1), (2, 2)}


def test_nested_search_chooses_settings_on_training_concepts_only():
    table = synthetic_features(n_concepts=6, n_prompts=4)
    grid = {"depth": [3], "iterations": [10], "class_weights": ["Balanced", None]}
    ev = classifier.evaluate(table, n_folds=3, grid=grid, inner_folds=2, progress=False)
    settings = [{"depth": 3, "iterations": 10, "class_weights": w} for w in ("Balanced", None)]
    s = ev.search
    assert list(s.columns) == ["fold", "model", "depth", "iterations", "class_weights", "inner_macro_f1", "chosen"]
    assert len(s) == 3 * 3 * len(settings)  # outer folds x (predictor, multiplier-only, strength-only) x settings
    assert (s.groupby(["fold", "model"])["chosen"].sum() == 1).all()
    for i, test_concepts in enumerate(ev.folds):
        train = table[~table["concept"].isin(test_concepts)]
        cols = classifier.feature_columns_of(table)
        chosen, inner = classifier.choose_setting(train, settings, feature_columns=cols, n_folds=2)
        got = s[(s["fold"] == i) & (s["model"] == "predictor")]
        np.testing.assert_allclose(got["inner_macro_f1"], inner["inner_macro_f1"])  # held-out concepts unseen
        best = int(np.argmax(inner["inner_macro_f1"].to_numpy()))
        assert chosen == settings[best] and got["chosen"].tolist() == [j == best for j in range(len(settings))]
        # the fold's predictions come from the chosen setting refitted on all its training concepts
        m = classifier.fit(train, feature_columns=cols, **chosen)
        test = table["concept"].isin(test_concepts).to_numpy()
        assert (ev.predictions.loc[test, "predicted"].to_numpy() == m.predict(table[test]).to_numpy()).all()
    assert classifier.evaluate(table, n_folds=3, iterations=10, progress=False, baselines=False).search is None
    with pytest.raises(classifier.PredictorError, match="class_weights"):
        classifier.evaluate(table, n_folds=3, grid={"class_weights": ["Heavy"]}, progress=False)
    with pytest.raises(classifier.PredictorError, match="class_weights must be one of"):
        classifier.fit(table, iterations=5, class_weights="Heavy")


def test_predictor_save_load_round_trip(tmp_path):
    table = synthetic_features(n_concepts=4, n_prompts=4)
    m = classifier.fit(table, iterations=30, depth=3)
    m.save(str(tmp_path / "pred"))
    back = classifier.SteerabilityPredictor.load(str(tmp_path / "pred"))
    pd.testing.assert_frame_equal(m.predict_proba(table), back.predict_proba(table))
    assert back.feature_columns == m.feature_columns and set(back.classes) == set(LABELS)
    with pytest.raises(classifier.PredictorError, match="lacks"):
        back.predict_proba(table.drop(columns=["kl_next_k1"]))
    with pytest.raises(classifier.PredictorError, match="no predictor"):
        classifier.SteerabilityPredictor.load(str(tmp_path))


def test_predictor_bad_input():
    table = synthetic_features(n_concepts=3, n_prompts=2)
    with pytest.raises(classifier.PredictorError, match="cannot make 5"):
        classifier.evaluate(table, n_folds=5)
    bad = table.assign(kl_next_k1=np.where(table.index == 3, np.nan, table["kl_next_k1"]))
    with pytest.raises(classifier.PredictorError, match="non-finite"):
        classifier.fit(bad)
    with pytest.raises(classifier.PredictorError, match="unknown labels"):
        classifier.fit(table.assign(label="maybe"))
    assert classifier.feature_columns_of(table, max_step=1) == ["strength", "kl_next_k1", "cos_L3_k1"]


# ----------------------------------------------------------------------------- search


def _proba(rows):
    return pd.DataFrame(rows, columns=list(LABELS))


def test_choose_strength_argmax_and_bisect():
    s = [8.0, 1.0, 2.0, 4.0]  # unsorted on purpose
    p = _proba([[0, 0.1, 0.9], [0.9, 0.1, 0], [0.5, 0.5, 0], [0.1, 0.6, 0.3]])
    assert search.choose_strength(s, p, "argmax") == (4.0, [1.0, 2.0, 4.0, 8.0])
    # bisect over [1, 2, 4, 8]: mid 2 -> under/success tie resolves to under (idxmax first) -> go up; 4 success
    chosen, seen = search.choose_strength(s, p, "bisect")
    assert chosen == 4.0 and seen == [2.0, 4.0]
    p_over = _proba([[0, 0, 1], [0.2, 0.7, 0.1], [0, 0.2, 0.8], [0, 0.1, 0.9]])
    chosen, seen = search.choose_strength(s, p_over, "bisect")  # 2 over -> 1 success
    assert (chosen, seen) == (1.0, [2.0, 1.0])
    with pytest.raises(classifier.PredictorError, match="unknown strategy"):
        search.choose_strength(s, p, "random")


def _strategy(items, strategy, r=None):
    g = items[items["strategy"] == strategy]
    if r is not None:
        g = g[g["max_rollouts"] == r]
    return g.sort_values(["prompt_id", "concept"]).reset_index(drop=True)


def test_simulate_counts_tokens_and_successes():
    table = synthetic_features(n_concepts=4, n_prompts=3)
    m = classifier.fit(table, iterations=40, depth=3)
    items = search.simulate_strategies(table, m.predict_proba(table), k=2, guided=("argmax", "bisect"),
                                       thresholds=(), rollout_tokens=32)
    arg, igs = _strategy(items, "guided-argmax", 1), _strategy(items, "IGS")
    assert len(arg) == 4 * 3
    assert (igs["tokens"] == 5 * 32).all() and (arg["tokens"] == 5 * 2 + 32).all()
    assert (_strategy(items, "IGS-A")["tokens"] <= igs["tokens"]).all()
    assert (~arg["success"] | igs["success"]).all()  # guided picks among the grid's strengths
    s = search.compare_strategies(items).set_index("strategy").loc["guided-argmax"]
    assert s["tokens_vs_igs"] == pytest.approx(42 / 160) and 0 <= s["success_vs_igs"] <= 1
    bis = _strategy(items, "guided-bisect", 1)
    assert (bis["early_tokens"] <= 3 * 2).all() and (bis["tokens"] < arg["tokens"]).all()


def test_ranked_confirmation_stops_at_the_first_success():
    # one (prompt, concept): labels by strength, and predicted success probabilities
    s = [1.0, 2.0, 4.0, 8.0]
    labels = ["under-steer", "under-steer", "success", "over-steer"]
    p_success = [0.1, 0.6, 0.5, 0.2]  # ranking 2, 4, 8, 1: the top is wrong, the second succeeds
    table = pd.DataFrame({"prompt_id": 0, "concept": "c", "strength": s, "label": labels})

    class Fixed:
        def predict_proba(self, t):
            p = np.asarray(p_success)[[s.index(x) for x in t["strength"]]]
            return pd.DataFrame({"under-steer": 1 - p, "success": p, "over-steer": 0.0}, index=t.index)

    ranking, evaluated = search.rank_strengths(s, Fixed().predict_proba(table), "argmax")
    assert ranking == [2.0, 4.0, 8.0, 1.0] and evaluated == s
    # a predictor trained without some class has no column for it: that class gets probability 0
    lacking = Fixed().predict_proba(table).drop(columns=["over-steer"])
    assert search.rank_strengths(s, lacking, "bisect")[0][0] in s
    items = search.simulate_strategies(table, Fixed().predict_proba(table), k=2, max_rollouts=(1, 2, 3),
                                       thresholds=(), rollout_tokens=10)
    rows = {r: _strategy(items, "guided-argmax", r).iloc[0] for r in (1, 2, 3)}
    assert not rows[1]["success"] and rows[1]["strength"] == 2.0
    assert rows[1]["tokens"] == 4 * 2 + 10
    for r in (2, 3):  # stops at the second rollout either way
        assert rows[r]["success"] and rows[r]["rollouts"] == 2 and rows[r]["strength"] == 4.0
        assert rows[r]["tokens"] == 4 * 2 + 2 * 10
    assert _strategy(items, "IGS").iloc[0]["tokens"] == 40 and _strategy(items, "IGS-A").iloc[0]["tokens"] == 30
    with pytest.raises(classifier.PredictorError, match="max_rollouts"):
        search.simulate_strategies(table, Fixed().predict_proba(table), k=2, max_rollouts=(0,), rollout_tokens=10)


def test_held_out_search_holds_out_concepts_and_prompts():
    table = synthetic_features(n_concepts=6, n_prompts=10)
    kw = dict(k=1, thresholds=(), rollout_tokens=32)
    proba = search.held_out_proba(table, n_folds=3, k=1, iterations=30, depth=3)  # 20% of the prompts held out
    items = search.simulate_strategies(table, proba[list(LABELS)], guided=search.STRATEGIES, **kw)
    assert {s for s in items["strategy"] if s.startswith("guided-")} == {f"guided-{s}" for s in search.STRATEGIES}
    per = _strategy(items, "guided-argmax")
    assert sorted(per["concept"].unique()) == sorted(table["concept"].unique())  # each concept searched once
    assert per["prompt_id"].nunique() == 2 and len(per) == 6 * 2  # 20% of 10 prompts held out
    assert search.compare_strategies(items).set_index("strategy").loc["guided-argmax", "success_vs_igs"] > 0.5
    # concept folds x prompt folds: every pair searched once, by a predictor that saw neither
    cross = search.held_out_proba(table, n_folds=3, k=1, prompt_folds=5, iterations=30, depth=3)
    assert set(cross["prompt_fold"]) == set(range(5))
    both = search.simulate_strategies(table, cross[list(LABELS)], max_rollouts=(1, 2), **kw)
    for r in (1, 2):
        g = _strategy(both, "guided-argmax", r)
        assert len(g) == 6 * 10 and not g.duplicated(["prompt_id", "concept"]).any()
    one, two = (_strategy(both, "guided-argmax", r) for r in (1, 2))
    assert two["success"].mean() >= one["success"].mean() and two["rollouts"].mean() >= 1
    with pytest.raises(classifier.PredictorError, match="prompt_folds"):
        search.held_out_proba(table, n_folds=3, k=1, prompt_folds=11)
    # held_out_proba takes the feature columns: those of steps <= k among them, nothing else
    kw = dict(n_folds=3, k=1, prompt_folds=2, iterations=20, depth=3)
    named = search.held_out_proba(table, feature_columns=["strength", "cos_L3_k1", "kl_next_k2"], **kw)
    narrowed = search.held_out_proba(table[["prompt_id", "concept", "strength", "cos_L3_k1", "label"]], **kw)
    pd.testing.assert_frame_equal(named, narrowed)
    assert not named.equals(search.held_out_proba(table, **kw))
    with pytest.raises(classifier.PredictorError, match="none of the 1 feature columns given is from steps <= 1"):
        search.held_out_proba(table, feature_columns=["kl_next_k2"], **kw)


def test_guided_search_judge_needs_a_calibration_sample():
    # one prompt's own unsteered rollout gives the judge no spread: thresholds would collapse to it
    args = dict(layer=0, max_new_tokens=4, judge=object())
    with pytest.raises(classifier.PredictorError, match="calibration="):
        search.guided_search(None, None, "p", None, [1.0], **args)
    one = pd.DataFrame({"prompt_id": [0, 0], "prompt": "p", "concept": ["none", "c"], "strength": [0.0, 1.0],
                        "text": "t", "tokens": [[1], [2]]})
    with pytest.raises(classifier.PredictorError, match="2 or more prompts"):
        search.guided_search(None, None, "p", None, [1.0], calibration=one, **args)
    with pytest.raises(classifier.PredictorError, match="lack"):
        search.guided_search(None, None, "p", None, [1.0], calibration=one.drop(columns=["tokens"]), **args)
