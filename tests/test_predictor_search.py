"""The paper's strength-search baselines (SteerBoost's ``alphasearch.py``: IGS, CGS, TCGS, IGS-A,
IGS-D), the guided search and the P(success) threshold sweep, on hand-made rollout tables whose
successes and decoded tokens are counted by hand in the comments."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from steerjax.studies.steerability_prediction import classifier, plots, search
from steerjax.studies.steerability_prediction.judge import LABELS

U, S, OV = LABELS  # under-steer, success, over-steer
GRID = (1.0, 2.0, 4.0, 8.0)


def _simulate(features, proba, *, strategy="argmax", k, max_new_tokens, max_rollouts=1):
    """An independent replay of guided and grid search, one row per (prompt, concept), written
    directly from :func:`search.rank_strengths` and :func:`search.confirm_ranked` (every rollout
    ``max_new_tokens`` long): the reference :func:`search.simulate_strategies` is checked against."""
    rows = []
    for (pid, concept), g in features.groupby(["prompt_id", "concept"], sort=True):
        g = g.sort_values("strength")
        ranking, evaluated = search.rank_strengths(g["strength"].to_numpy(), proba.loc[g.index], strategy)
        label_at = dict(zip(g["strength"].to_numpy().tolist(), g["label"].astype(str)))
        tried = search.confirm_ranked(ranking, label_at.get, max_rollouts, prune=strategy in search.PRUNING)
        success = tried[-1][1] == "success"
        hit = np.flatnonzero(g["label"].astype(str).to_numpy() == "success")
        rows.append({"prompt_id": pid, "concept": concept, "chosen_strength": tried[-1][0] if success else ranking[0],
                     "n_rollouts": len(tried), "guided_success": success, "grid_success": bool(hit.size),
                     "guided_tokens": len(evaluated) * k + len(tried) * max_new_tokens,
                     "grid_tokens": len(g) * max_new_tokens,
                     "sequential_tokens": (int(hit[0]) + 1 if hit.size else len(g)) * max_new_tokens})
    return pd.DataFrame(rows)


def _table(items: dict, tokens=None) -> pd.DataFrame:
    """``{(prompt_id, concept): labels over GRID}`` -> one row per strength; ``tokens(pid, strength)``
    gives ``n_tokens`` (default ``10 * pid + {1: 5, 2: 6, 4: 7, 8: 8}[strength]``)."""
    tokens = tokens or (lambda pid, s: 10 * pid + {1.0: 5, 2.0: 6, 4.0: 7, 8.0: 8}[s])
    return pd.DataFrame([{"prompt_id": pid, "concept": c, "strength": s, "label": lab, "n_tokens": tokens(pid, s)}
                         for (pid, c), labs in items.items() for s, lab in zip(GRID, labs)])


def _pick(items, **where):
    m = np.ones(len(items), bool)
    for col, v in where.items():
        m &= (items[col] == v).to_numpy() if not (isinstance(v, float) and np.isnan(v)) else items[col].isna()
    assert m.sum() == 1, where
    return items[m].iloc[0]


def _hand_table():
    # concept a: prompts 0, 1 train TCGS; prompts 2, 3 are evaluated. Concept b (no train rows): unseen.
    t = _table({(0, "a"): [U, S, S, OV], (1, "a"): [U, U, S, OV],
                (2, "a"): [U, S, OV, OV], (3, "a"): [U, U, U, S],
                (2, "b"): [OV, OV, OV, OV], (3, "b"): [S, OV, OV, OV]})
    t.loc[t["concept"] == "b", "n_tokens"] = 4
    test = t["prompt_id"] >= 2
    groups = np.where(t["concept"] == "a", "seen", "unseen")
    return t, test, groups


def test_baselines_by_hand():
    t, test, groups = _hand_table()
    items = search.simulate_strategies(t, k=3, test=test, groups=groups, guided=(), thresholds=())
    assert set(items["strategy"]) == set(search.BASELINES) and len(items) == 4 * 5

    def row(pid, concept, strategy):
        return _pick(items, prompt_id=pid, concept=concept, strategy=strategy)

    # IGS: the whole grid; a success if any. p2/a tokens 25+26+27+28, p3/a 35+..+38
    assert tuple(row(2, "a", "IGS")[["success", "rollouts", "tokens"]]) == (True, 4, 106)
    assert tuple(row(3, "a", "IGS")[["success", "rollouts", "tokens"]]) == (True, 4, 146)
    assert tuple(row(2, "b", "IGS")[["success", "tokens"]]) == (False, 16)
    # IGS-A stops at the first success going up: p2/a at 2 (25+26); p3/a only at 8 (all four)
    assert tuple(row(2, "a", "IGS-A")[["success", "rollouts", "tokens", "strength"]]) == (True, 2, 51, 2.0)
    assert tuple(row(3, "a", "IGS-A")[["success", "rollouts", "tokens", "strength"]]) == (True, 4, 146, 8.0)
    assert tuple(row(3, "b", "IGS-A")[["success", "rollouts", "tokens"]]) == (True, 1, 4)
    assert tuple(row(2, "b", "IGS-A")[["success", "rollouts", "tokens", "strength"]]) == (False, 4, 16, 8.0)
    # IGS-D going down: p2/a 8 O, 4 O, 2 S (28+27+26); p3/a 8 S at once; p3/b only at the end
    assert tuple(row(2, "a", "IGS-D")[["success", "rollouts", "tokens"]]) == (True, 3, 81)
    assert tuple(row(3, "a", "IGS-D")[["success", "rollouts", "tokens"]]) == (True, 1, 38)
    assert tuple(row(3, "b", "IGS-D")[["success", "rollouts", "tokens", "strength"]]) == (True, 4, 16, 1.0)
    # CGS (oracle on the evaluated prompts): a's successes by strength 1:0 2:1 4:0 8:1 -> tie -> 2;
    # b's 1:1 -> 1. Its cost is the whole grid of each evaluated prompt (IGS's)
    assert tuple(row(2, "a", "CGS")[["success", "strength", "rollouts", "tokens"]]) == (True, 2.0, 4, 106)
    assert tuple(row(3, "a", "CGS")[["success", "strength", "tokens"]]) == (False, 2.0, 146)
    assert tuple(row(3, "b", "CGS")[["success", "strength"]]) == (True, 1.0)
    # TCGS: a's training prompts succeed 1:0 2:1 4:2 8:0 -> 4; one rollout per prompt. The
    # training grid (5+6+7+8 + 15+16+17+18 = 92 tokens) is shared by a's two evaluated prompts
    for pid, tok in ((2, 27), (3, 37)):
        r = row(pid, "a", "TCGS")
        assert tuple(r[["covered", "success", "strength", "rollouts", "tokens", "setup_tokens"]]) == (
            True, False, 4.0, 1, tok, 46.0)
    assert not row(2, "b", "TCGS")["covered"] and not row(3, "b", "TCGS")["covered"]  # unseen: no TCGS

    summary = search.compare_strategies(items).set_index(["group", "strategy"])
    seen = summary.loc["seen"]
    assert list(summary.loc["seen"].index) == list(search.BASELINES)
    assert seen.loc["IGS", "success_rate"] == 1.0 and seen.loc["IGS", "tokens_per_item"] == 126
    assert seen.loc["CGS", "success_vs_igs"] == 0.5 and seen.loc["CGS", "tokens_vs_igs"] == 1.0
    assert seen.loc["IGS-A", "tokens_vs_igs"] == pytest.approx((51 + 146) / 252)
    assert seen.loc["IGS-D", "tokens_vs_igs"] == pytest.approx((81 + 38) / 252)
    assert seen.loc["IGS-D", "rollouts_per_item"] == 2.0
    assert seen.loc["TCGS", "success_rate"] == 0.0 and seen.loc["TCGS", "setup_tokens"] == 92
    assert seen.loc["TCGS", "tokens_vs_igs"] == pytest.approx((27 + 37) / 252)
    unseen = summary.loc["unseen"]
    assert unseen.loc["IGS", "success_rate"] == 0.5 and unseen.loc["CGS", "success_vs_igs"] == 1.0
    assert unseen.loc["TCGS", "items"] == 0 and unseen.loc["TCGS", "uncovered"] == 2
    assert np.isnan(unseen.loc["TCGS", "success_vs_igs"]) and np.isnan(unseen.loc["TCGS", "success_rate"])
    # without a held-out split every row is evaluated: nothing is left to train TCGS on
    every = search.simulate_strategies(t, k=3, guided=(), thresholds=())
    assert not every.loc[every["strategy"] == "TCGS", "covered"].any()


def _one_item():
    # strengths 1 2 4 8: U U S O, 10 20 30 40 tokens, P(success) .1 .6 .5 .2
    t = pd.DataFrame({"prompt_id": 0, "concept": "c", "strength": GRID, "label": [U, U, S, OV],
                      "n_tokens": [10, 20, 30, 40]})
    p = np.array([0.1, 0.6, 0.5, 0.2])
    proba = pd.DataFrame({U: 1 - p, S: p, OV: 0.0}, index=t.index)
    return t, proba


def test_guided_and_threshold_sweeps_by_hand():
    t, proba = _one_item()
    items = search.simulate_strategies(t, proba, k=3, max_rollouts=(1, 2, 4), thresholds=(0.0, 0.45, 0.55, 0.7))

    def row(strategy, r, thr=np.nan):
        return tuple(_pick(items, strategy=strategy, max_rollouts=float(r), threshold=thr)[
            ["success", "rollouts", "early_tokens", "tokens"]])

    # ranking 2 (.6), 4 (.5), 8 (.2), 1 (.1); every candidate scored: 4 x 3 early tokens
    assert row("guided-argmax", 1) == (False, 1, 12, 12 + 20)
    assert row("guided-argmax", 2) == (True, 2, 12, 12 + 20 + 30)
    assert row("guided-argmax", 4) == (True, 2, 12, 12 + 20 + 30)  # stops at the first success
    # threshold-ranked (the reference's sweep): the top R, those with P >= t, best first
    assert row("threshold-ranked", 2, 0.0) == (True, 2, 12, 62)
    assert row("threshold-ranked", 2, 0.55) == (False, 1, 12, 32)  # only 2 passes
    assert row("threshold-ranked", 2, 0.7) == (False, 0, 12, 12)  # none passes: no rollout, a failure
    assert row("threshold-ranked", 1, 0.45) == (False, 1, 12, 32)  # the budget cuts 4 off
    # threshold-ascending: score upward (3 tokens each), decode those with P >= t
    assert row("threshold-ascending", 4, 0.0) == (True, 3, 9, 9 + 10 + 20 + 30)
    assert row("threshold-ascending", 4, 0.45) == (True, 2, 9, 9 + 20 + 30)  # 1 skipped
    assert row("threshold-ascending", 4, 0.55) == (False, 1, 12, 12 + 20)  # 2 decoded, 4 and 8 skipped
    assert row("threshold-ascending", 4, 0.7) == (False, 0, 12, 12)
    assert row("threshold-ascending", 1, 0.0) == (False, 1, 3, 3 + 10)  # the budget ends at 1
    assert row("threshold-ascending", 2, 0.0) == (False, 2, 6, 6 + 10 + 20)
    strength = _pick(items, strategy="threshold-ascending", max_rollouts=4.0, threshold=0.55)["strength"]
    assert strength == 2.0  # the last decoded when none succeeds
    assert np.isnan(_pick(items, strategy="threshold-ranked", max_rollouts=2.0, threshold=0.7)["strength"])


def test_guided_matches_simulate_and_sweeps_are_monotone():
    rng = np.random.default_rng(0)
    strengths = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    rows = [{"prompt_id": p, "concept": f"c{c}", "strength": s, "label": rng.choice(LABELS, p=(0.4, 0.25, 0.35)),
             "n_tokens": 32} for c in range(4) for p in range(6) for s in strengths]
    t = pd.DataFrame(rows)
    raw = rng.dirichlet(np.ones(3), len(t))
    proba = pd.DataFrame(raw, columns=list(LABELS), index=t.index)
    ts = tuple(np.round(np.linspace(0, 1, 21), 2))
    items = search.simulate_strategies(t, proba, k=2, max_rollouts=(1, 3, 6), guided=search.STRATEGIES,
                                       thresholds=ts)
    # guided search as an independent replay counts it (every rollout max_new_tokens long)
    for strategy in search.STRATEGIES:
        for r in (1, 3):
            sim = _simulate(t, proba, strategy=strategy, k=2, max_new_tokens=32, max_rollouts=r)
            mine = items[(items["strategy"] == f"guided-{strategy}") & (items["max_rollouts"] == r)]
            mine = mine.sort_values(["prompt_id", "concept"]).reset_index(drop=True)
            sim = sim.sort_values(["prompt_id", "concept"]).reset_index(drop=True)
            np.testing.assert_array_equal(mine["success"], sim["guided_success"])
            np.testing.assert_array_equal(mine["tokens"], sim["guided_tokens"])
            np.testing.assert_array_equal(mine["rollouts"], sim["n_rollouts"])
    igs = items[items["strategy"] == "IGS"].sort_values(["prompt_id", "concept"])
    sim = _simulate(t, proba, k=2, max_new_tokens=32).sort_values(["prompt_id", "concept"])
    np.testing.assert_array_equal(igs["success"], sim["grid_success"])
    np.testing.assert_array_equal(igs["tokens"], sim["grid_tokens"])
    ia = items[items["strategy"] == "IGS-A"].sort_values(["prompt_id", "concept"])
    np.testing.assert_array_equal(ia["tokens"], sim["sequential_tokens"])
    key = ["prompt_id", "concept", "max_rollouts"]
    ranked = items[items["strategy"] == "threshold-ranked"].sort_values(key + ["threshold"])
    for _, g in ranked.groupby(key):  # per item and budget, nothing rises with t
        for col in ("success", "rollouts", "tokens"):
            assert (np.diff(g[col].astype(float)) <= 0).all(), col
    # at t = 0 every candidate passes: threshold-ranked is guided-argmax
    at0 = ranked[ranked["threshold"] == 0].set_index(key)
    arg = items[items["strategy"] == "guided-argmax"].set_index(key)
    pd.testing.assert_frame_equal(at0[["success", "rollouts", "tokens"]], arg.loc[at0.index][
        ["success", "rollouts", "tokens"]])
    asc = items[(items["strategy"] == "threshold-ascending") & (items["max_rollouts"] == 6)]
    for _, g in asc.sort_values("threshold").groupby(["prompt_id", "concept"]):
        assert (np.diff(g["success"].astype(int)) <= 0).all()
    assert (items.loc[items["strategy"] == "threshold-ascending", "early_tokens"] <= 2 * len(strengths)).all()
    # the summary's rates fall with t too
    summary = search.compare_strategies(items)
    sweep = summary[(summary["strategy"] == "threshold-ranked") & (summary["max_rollouts"] == 3)]
    assert (np.diff(sweep.sort_values("threshold")["success_rate"]) <= 0).all()
    assert len(summary) == 5 + len(search.STRATEGIES) * 3 + 2 * 3 * len(ts)


def test_relative_to_igs_counts_the_same_items():
    # three items; IGS succeeds on the first two (100 and 50 tokens) and not the third (30)
    items = pd.DataFrame({
        "group": "g", "prompt_id": [0, 1, 2] * 2, "concept": "c", "strategy": ["IGS"] * 3 + ["X"] * 3,
        "max_rollouts": np.nan, "threshold": np.nan, "covered": [True] * 4 + [True, False],
        "success": [True, True, False, True, False, True], "rollouts": [3, 3, 3, 1, 1, 0],
        "early_tokens": [0.0] * 3 + [5.0, 5.0, 0.0], "tokens": [100.0, 50.0, 30.0, 25.0, 15.0, 0.0],
        "setup_tokens": 0.0})
    s = search.compare_strategies(items).set_index("strategy")
    # X covers items 0 and 1: 1 success of IGS's 2 there, 40 tokens of IGS's 150
    assert s.loc["X", "items"] == 2 and s.loc["X", "uncovered"] == 1
    assert s.loc["X", "success_rate"] == 0.5 and s.loc["X", "success_vs_igs"] == 0.5
    assert s.loc["X", "tokens_vs_igs"] == pytest.approx(40 / 150) and s.loc["X", "tokens_per_item"] == 20
    assert s.loc["X", "early_tokens_per_item"] == 5
    assert s.loc["IGS", "success_rate"] == pytest.approx(2 / 3) and s.loc["IGS", "success_vs_igs"] == 1.0
    # IGS with no success: relative success is undefined, not 0 or infinity
    none = items.assign(success=False)
    assert np.isnan(search.compare_strategies(none).set_index("strategy").loc["X", "success_vs_igs"])
    with pytest.raises(classifier.PredictorError, match="no IGS rows"):
        search.compare_strategies(items[items["strategy"] == "X"])
    with pytest.raises(classifier.PredictorError, match="not a simulate_strategies table"):
        search.compare_strategies(items.drop(columns=["covered"]))


def test_single_strength_grids_and_missing_labels():
    t, test, groups = _hand_table()
    one = t[t["strength"] == 2.0]
    with pytest.raises(classifier.PredictorError, match="single strength"):
        search.simulate_strategies(one, k=1, guided=(), thresholds=())
    # one item with a single strength among others: every strategy decodes that strength (trivial)
    t2, proba = _one_item()
    extra = pd.DataFrame({"prompt_id": 1, "concept": "c", "strength": [2.0], "label": [S], "n_tokens": [7]})
    both = pd.concat([t2, extra], ignore_index=True)
    pb = pd.concat([proba, pd.DataFrame({U: [0.9], S: [0.1], OV: [0.0]})], ignore_index=True)
    items = search.simulate_strategies(both, pb, k=3, max_rollouts=(2,), thresholds=(0.0, 0.5))
    single = items[(items["prompt_id"] == 1) & items["covered"]]
    assert set(single["strategy"]) - {"TCGS"} == set(items["strategy"]) - {"TCGS"}
    tried = single[single["rollouts"] > 0]
    assert (tried["strength"] == 2.0).all() and tried["success"].all()
    assert (tried["rollout_tokens"] == 7).all()
    # (t = 0.5 with P(success) 0.1: the threshold strategies decode nothing and fail)
    assert not single[(single["threshold"] == 0.5)]["success"].any()

    missing = t.astype({"label": object})
    missing.loc[(missing["prompt_id"] == 2) & (missing["concept"] == "a") & (missing["strength"] == 2.0),
                "label"] = None
    with pytest.raises(classifier.PredictorError, match="1 rollouts have no label.*missing_labels='drop'"):
        search.simulate_strategies(missing, k=3, test=test, guided=(), thresholds=())
    dropped = search.simulate_strategies(missing, k=3, test=test, groups=groups, guided=(), thresholds=(),
                                         missing_labels="drop")
    r = _pick(dropped, prompt_id=2, concept="a", strategy="IGS-A")
    # p2/a's grid is now 1 4 8 (U O O): no success, 25+27+28 tokens
    assert tuple(r[["success", "rollouts", "tokens"]]) == (False, 3, 80)
    # CGS for a now picks 8 (the only success, p3): p2's grid still has it
    assert _pick(dropped, prompt_id=2, concept="a", strategy="CGS")["strength"] == 8.0
    with pytest.raises(classifier.PredictorError, match="missing_labels must be"):
        search.simulate_strategies(missing, k=3, missing_labels="guess")


def test_dropped_choice_leaves_the_item_uncovered():
    t, test, groups = _hand_table()
    # TCGS picks 4 for a; without p3's rollout at 4 that item has no TCGS result
    gone = t.drop(t.index[(t["prompt_id"] == 3) & (t["concept"] == "a") & (t["strength"] == 4.0)])
    items = search.simulate_strategies(gone, k=1, test=test[gone.index], guided=(), thresholds=())
    assert not _pick(items, prompt_id=3, concept="a", strategy="TCGS")["covered"]
    assert _pick(items, prompt_id=2, concept="a", strategy="TCGS")["covered"]


def test_bad_input():
    t, test, groups = _hand_table()
    t1, proba = _one_item()
    err = classifier.PredictorError
    with pytest.raises(err, match="need proba="):
        search.simulate_strategies(t1, k=1)
    with pytest.raises(err, match="proba lacks 1 evaluated rows"):
        search.simulate_strategies(t1, proba.iloc[:3], k=1, test=np.ones(4, bool))
    with pytest.raises(err, match="'success' column"):
        search.simulate_strategies(t1, proba.drop(columns=[S]), k=1)
    with pytest.raises(err, match="lacks \\['n_tokens'\\].*rollout_tokens="):
        search.simulate_strategies(t1.drop(columns=["n_tokens"]), proba, k=1)
    fixed = search.simulate_strategies(t1.drop(columns=["n_tokens"]), proba, k=1, rollout_tokens=100,
                                       thresholds=())
    assert _pick(fixed, strategy="IGS")["tokens"] == 400
    with pytest.raises(err, match="rollout_tokens must be"):
        search.simulate_strategies(t1, proba, k=1, rollout_tokens=0)
    with pytest.raises(err, match="duplicated"):
        search.simulate_strategies(pd.concat([t1, t1.iloc[:1]], ignore_index=True), k=1, guided=(), thresholds=())
    with pytest.raises(err, match="unknown labels"):
        search.simulate_strategies(t1.assign(label="great"), proba, k=1)
    with pytest.raises(err, match="unknown threshold order"):
        search.simulate_strategies(t1, proba, k=1, threshold_orders=("random",))
    with pytest.raises(err, match="unknown strategy"):
        search.simulate_strategies(t1, proba, k=1, guided=("random",))
    with pytest.raises(err, match="thresholds are probabilities"):
        search.simulate_strategies(t1, proba, k=1, thresholds=(1.5,))
    with pytest.raises(err, match="max_rollouts"):
        search.simulate_strategies(t1, proba, k=1, max_rollouts=(0,))
    with pytest.raises(err, match="k \\(early tokens"):
        search.simulate_strategies(t1, proba, k=-1)
    with pytest.raises(err, match="shape"):
        search.simulate_strategies(t, k=1, test=test.to_numpy()[:3], guided=(), thresholds=())
    with pytest.raises(err, match="boolean mask"):
        search.simulate_strategies(t, k=1, test=t["prompt_id"], guided=(), thresholds=())
    nullable = search.simulate_strategies(t, k=1, test=test.astype("boolean"), guided=(), thresholds=())
    assert set(nullable["prompt_id"]) == {2, 3}
    with pytest.raises(err, match="no rows to evaluate"):
        search.simulate_strategies(t, k=1, test=np.zeros(len(t), bool), guided=(), thresholds=())
    with pytest.raises(err, match="one group per"):
        search.simulate_strategies(t, k=1, groups=np.arange(len(t)), guided=(), thresholds=())
    with pytest.raises(err, match="not a column"):
        search.simulate_strategies(t, k=1, groups="split", guided=(), thresholds=())
    # the unsteered rows are not candidates
    none = pd.DataFrame({"prompt_id": [0], "concept": ["none"], "strength": [0.0], "label": [U], "n_tokens": [9]})
    with_none = pd.concat([t, none], ignore_index=True)
    items = search.simulate_strategies(with_none, k=1, guided=(), thresholds=())
    assert "none" not in set(items["concept"])


def test_held_out_proba_scores_every_pair_once_and_feeds_the_comparison():
    from tests.test_predictor import synthetic_features

    table = synthetic_features(n_concepts=4, n_prompts=4).assign(n_tokens=24)
    proba = search.held_out_proba(table, n_folds=2, k=1, prompt_folds=2, iterations=20, depth=3)
    assert proba.index.sort_values().equals(table.index)  # every row held out exactly once
    assert set(proba["fold"]) == {0, 1} and set(proba["prompt_fold"]) == {0, 1}
    np.testing.assert_allclose(proba[list(LABELS)].sum(axis=1), 1.0, atol=1e-6)
    summary = search.compare_strategies(search.simulate_strategies(table, proba, k=1, max_rollouts=(1, 2),
                                                                   thresholds=(0.0, 0.5)))
    got = summary.set_index(["strategy", "max_rollouts", "threshold"])
    assert got.loc[("IGS", np.nan, np.nan), "tokens_per_item"] == 5 * 24
    guided = got.loc[("guided-argmax", 1.0, np.nan)]
    assert guided["tokens_per_item"] == 5 * 1 + 24 and guided["tokens_vs_igs"] == pytest.approx(29 / 120)
    assert 0 <= guided["success_vs_igs"] <= 1


def test_pareto_front_and_tradeoff_plot(tmp_path):
    front = plots.pareto_front([1, 2, 2, 3, 0.5, np.nan], [0.5, 0.9, 0.8, 0.9, 0.2, 1.0])
    assert list(front) == [4, 0, 1]  # (2, .8) and (3, .9) are beaten; NaN is left out
    t, test, groups = _hand_table()
    proba = pd.DataFrame({U: 0.3, S: np.linspace(0, 1, len(t)), OV: 0.0}, index=t.index)
    items = search.simulate_strategies(t, proba, k=1, test=test, groups=groups, max_rollouts=(1, 2),
                                       thresholds=(0.0, 0.5))
    path = plots.strategy_tradeoff(search.compare_strategies(items), tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").stat().st_size > 1000 and path.endswith("tradeoff.png")


# ----------------------------------------------------------------------------- feedback-pruned guided search

FB_GRID = (1.0, 2.0, 4.0, 8.0, 16.0)


def _fb_item(labels, p_success, tokens=(10, 20, 30, 40, 50)):
    t = pd.DataFrame({"prompt_id": 0, "concept": "c", "strength": FB_GRID, "label": labels, "n_tokens": tokens})
    p = np.asarray(p_success, float)
    return t, pd.DataFrame({U: 1 - p, S: p, OV: 0.0}, index=t.index)


def test_feedback_prunes_by_the_strength_order():
    # labels 1 U, 2 U, 4 S, 8 O, 16 O; ranking by P(success): 8, 16, 2, 1, 4
    t, proba = _fb_item([U, U, S, OV, OV], [0.3, 0.5, 0.1, 0.7, 0.6])
    items = search.simulate_strategies(t, proba, k=2, max_rollouts=(1, 2, 3, 5), guided=("argmax", "feedback"),
                                       thresholds=())

    def row(strategy, r):
        return tuple(_pick(items, strategy=strategy, max_rollouts=float(r))[["success", "rollouts", "strength",
                                                                              "tokens"]])

    # argmax goes down the ranking: 8 O, 16 O, 2 U, 1 U, 4 S (5 x 2 early tokens + 40 + 50 + 20 + 10 + 30)
    assert row("guided-argmax", 3) == (False, 3, 2.0, 10 + 40 + 50 + 20)
    assert row("guided-argmax", 5) == (True, 5, 4.0, 10 + 150)
    # feedback: 8 O removes 16; 2 U removes 1 and 2; 4 is all that is left: S (10 + 40 + 20 + 30)
    assert row("guided-feedback", 2) == (False, 2, 2.0, 10 + 40 + 20)
    assert row("guided-feedback", 3) == (True, 3, 4.0, 100)
    assert row("guided-feedback", 5) == (True, 3, 4.0, 100)
    label_at = dict(zip(FB_GRID, t["label"]))
    ranking, _ = search.rank_strengths(FB_GRID, proba, "feedback")
    assert ranking == [8.0, 16.0, 2.0, 1.0, 4.0]
    assert search.confirm_ranked(ranking, label_at.get, 5, prune=True) == [(8.0, OV), (2.0, U), (4.0, S)]
    assert [s for s, _ in search.confirm_ranked(ranking, label_at.get, 5)] == ranking  # no pruning: argmax's
    # an independent per-item replay agrees
    sim = _simulate(t, proba, strategy="feedback", k=2, max_new_tokens=24, max_rollouts=5).iloc[0]
    assert sim["guided_success"] and sim["n_rollouts"] == 3 and sim["chosen_strength"] == 4.0
    assert sim["guided_tokens"] == 5 * 2 + 3 * 24

    # labels that break the monotone order: pruning can remove the success, and the search ends
    # early when nothing is left. 1 U, 2 O, 4 U, 8 S, 16 O; ranking 2, 4, 8, 1, 16
    t2, proba2 = _fb_item([U, OV, U, S, OV], [0.5, 0.9, 0.8, 0.7, 0.1])
    items2 = search.simulate_strategies(t2, proba2, k=2, max_rollouts=(5,), guided=("argmax", "feedback"),
                                        thresholds=())
    # argmax: 2 O, 4 U, 8 S. feedback: 2 O removes 4, 8, 16; 1 U removes 1: nothing left after 2 rollouts
    assert tuple(_pick(items2, strategy="guided-argmax")[["success", "rollouts"]]) == (True, 3)
    assert tuple(_pick(items2, strategy="guided-feedback")[["success", "rollouts", "strength", "tokens"]]) == (
        False, 2, 1.0, 10 + 20 + 10)


def test_feedback_equals_argmax_at_one_rollout_and_after_a_first_success():
    rng = np.random.default_rng(3)
    rows = [{"prompt_id": p, "concept": f"c{c}", "strength": s, "label": rng.choice(LABELS), "n_tokens": 20 + p}
            for c in range(5) for p in range(6) for s in FB_GRID]
    t = pd.DataFrame(rows)
    proba = pd.DataFrame(rng.dirichlet(np.ones(3), len(t)), columns=list(LABELS), index=t.index)
    items = search.simulate_strategies(t, proba, k=1, max_rollouts=(1, 2, 3, 5), guided=("argmax", "feedback"),
                                       thresholds=())
    key = ["prompt_id", "concept", "max_rollouts"]
    cols = ["success", "rollouts", "strength", "tokens"]
    arg = items[items["strategy"] == "guided-argmax"].set_index(key).sort_index()
    fb = items[items["strategy"] == "guided-feedback"].set_index(key).sort_index()
    one = arg.index.get_level_values("max_rollouts") == 1
    pd.testing.assert_frame_equal(fb.loc[one, cols], arg.loc[one, cols])  # R = 1: the same rollout
    first = arg.loc[one & arg["success"].to_numpy()].droplevel("max_rollouts").index
    assert len(first)  # items whose top-ranked strength succeeds: every budget stops there, pruned or not
    same = arg.index.droplevel("max_rollouts").isin(first)
    pd.testing.assert_frame_equal(fb.loc[same, cols], arg.loc[same, cols])
    # elsewhere pruning changes what is decoded (these random labels are not monotone in strength)
    assert (fb["rollouts"] != arg["rollouts"]).any() and (fb["success"] != arg["success"]).any()

    # labels monotone in strength (under-steer, then success, then over-steer): the pruned strengths
    # would have failed, so feedback decodes argmax's sequence without them: as many successes or more
    # at every budget, and at the full budget no more rollouts
    cut = np.sort(rng.integers(0, len(FB_GRID) + 1, size=(len(t) // len(FB_GRID), 2)), axis=1)
    pos = np.tile(np.arange(len(FB_GRID)), len(cut))
    lo, hi = np.repeat(cut[:, 0], len(FB_GRID)), np.repeat(cut[:, 1], len(FB_GRID))
    mono = t.assign(label=np.where(pos < lo, U, np.where(pos < hi, S, OV)))
    items = search.simulate_strategies(mono, proba, k=1, max_rollouts=(1, 2, 3, 5), guided=("argmax", "feedback"),
                                       thresholds=())
    arg = items[items["strategy"] == "guided-argmax"].set_index(key).sort_index()
    fb = items[items["strategy"] == "guided-feedback"].set_index(key).sort_index()
    assert (fb["success"].astype(int) >= arg["success"].astype(int)).all()
    assert (fb["success"] & ~arg["success"]).any()
    full = fb.index.get_level_values("max_rollouts") == len(FB_GRID)
    assert (fb.loc[full, "success"] == arg.loc[full, "success"]).all()
    assert (fb.loc[full, "rollouts"] <= arg.loc[full, "rollouts"]).all()
    assert (fb.loc[full, "rollouts"] < arg.loc[full, "rollouts"]).any()


def test_guided_search_live_feedback_prunes_with_the_judges_labels(monkeypatch):
    # the live search with stand-ins for the model: early features (the strength itself), rollouts
    # (n_tokens = 10 x strength) and a judge that labels by strength as the hand-built item does
    from steerjax.studies.steerability_prediction import features, testbed

    p_success = dict(zip(FB_GRID, [0.3, 0.5, 0.1, 0.7, 0.6]))  # ranking 8, 16, 2, 1, 4
    label_at = dict(zip(FB_GRID, [U, U, S, OV, OV]))
    decoded = []

    def early(model, prompts, concepts, strengths, **kw):
        return pd.DataFrame({"strength": strengths, "x_k1": strengths}), None

    def rollouts(model, prompts, concepts, strengths, **kw):
        (s,) = strengths
        decoded.append(s)
        return pd.DataFrame({"prompt_id": 0, "prompt": "p", "concept": ["none", "c"], "strength": [0.0, s],
                             "text": ["plain", f"steered {s}"], "tokens": [[1], [2]], "n_tokens": [7, int(10 * s)]})

    class Predictor:
        feature_columns = ["strength", "x_k1"]

        def predict_proba(self, feats):
            p = feats["strength"].map(p_success).to_numpy()
            return pd.DataFrame({U: 1 - p, S: p, OV: 0.0}, index=feats.index)

    def judge(table):
        steered = table[table["concept"] != "none"]
        return pd.DataFrame({"label": [label_at[s] for s in steered["strength"]]}, index=steered.index), None

    monkeypatch.setattr(features, "early_features", early)
    monkeypatch.setattr(testbed, "rollouts", rollouts)
    calibration = pd.DataFrame({"prompt_id": [0, 1], "prompt": ["a", "b"], "concept": "none", "strength": 0.0,
                                "text": ["x", "y"], "tokens": [[1], [2]], "n_tokens": 3})
    kw = dict(layer=0, max_new_tokens=24, judge=judge, calibration=calibration, max_rollouts=5)
    got = search.guided_search(None, Predictor(), "p", "c", FB_GRID, strategy="feedback", **kw)
    assert decoded == [8.0, 2.0, 4.0]
    assert [(r["strength"], r["label"]) for r in got["tried"]] == [(8.0, OV), (2.0, U), (4.0, S)]
    assert got["strength"] == 4.0 and got["label"] == S
    assert got["decoded_tokens"] == 5 * 1 + 80 + 20 + 40  # one early token per candidate, then the rollouts
    decoded.clear()
    arg = search.guided_search(None, Predictor(), "p", "c", FB_GRID, strategy="argmax", **kw)
    assert decoded == [8.0, 16.0, 2.0, 1.0, 4.0] and arg["strength"] == 4.0
    decoded.clear()
    one = search.guided_search(None, Predictor(), "p", "c", FB_GRID, strategy="feedback", **{**kw, "max_rollouts": 1})
    assert decoded == [8.0] and one["strength"] == 8.0 and one["label"] == OV


# ----------------------------------------------------------------------------- bootstrap over concepts


def test_bootstrap_strategies_points_and_intervals():
    rng = np.random.default_rng(1)
    rows = [{"prompt_id": p, "concept": f"c{c}", "strength": s, "label": rng.choice(LABELS, p=(0.4, 0.3, 0.3)),
             "n_tokens": 20} for c in range(8) for p in range(4) for s in FB_GRID]
    t = pd.DataFrame(rows)
    proba = pd.DataFrame(rng.dirichlet(np.ones(3), len(t)), columns=list(LABELS), index=t.index)
    items = search.simulate_strategies(t, proba, k=1, max_rollouts=(1, 3), guided=search.STRATEGIES, thresholds=())
    boot = search.bootstrap_strategies(items, n_draws=200, seed=0)
    summary = search.compare_strategies(items)
    key = ["strategy", "max_rollouts"]
    merged = summary.merge(boot, on=key, suffixes=("", "_boot"))
    assert len(merged) == len(summary) == len(boot)
    np.testing.assert_allclose(merged["success_vs_igs_boot"], merged["success_vs_igs"], equal_nan=True)
    np.testing.assert_allclose(merged["tokens_vs_igs_boot"], merged["tokens_vs_igs"], equal_nan=True)
    igs = boot.set_index("strategy").loc["IGS"]
    assert igs["success_vs_igs_low"] == igs["success_vs_igs_high"] == 1.0  # IGS against itself
    guided = boot[boot["strategy"].str.startswith("guided")]
    assert (guided["success_vs_igs_low"] <= guided["success_vs_igs"]).all()
    assert (guided["success_vs_igs"] <= guided["success_vs_igs_high"]).all()
    assert (guided["success_vs_igs_high"] > guided["success_vs_igs_low"]).any()
    assert (boot["concepts"] == 8).all()
    pd.testing.assert_frame_equal(boot, search.bootstrap_strategies(items, n_draws=200, seed=0))  # seeded
    # every concept alike: every draw is the same, so is the interval
    same = items.assign(concept="c0").drop_duplicates(["prompt_id", "concept", "strategy", "max_rollouts"])
    same = pd.concat([same, same.assign(concept="c1")], ignore_index=True)
    flat = search.bootstrap_strategies(same, n_draws=50)
    np.testing.assert_allclose(flat["tokens_vs_igs_low"], flat["tokens_vs_igs_high"])
    with pytest.raises(classifier.PredictorError, match="2 or more concepts"):
        search.bootstrap_strategies(items[items["concept"] == "c0"])
    with pytest.raises(classifier.PredictorError, match="no IGS rows"):
        search.bootstrap_strategies(items[items["strategy"] != "IGS"])
