"""Predictor engine: concepts, steered-rollout testbed and early-decoding diff features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import steerjax
from steerjax.errors import LayerIndexError, SteeringError, SteerjaxError
from steerjax.studies.steerability_prediction import (
    Concept,
    early_features,
    feature_columns,
    lens_layers,
    residual_norm,
    rollouts,
    text_concepts,
)
from steerjax.studies.steerability_prediction import features as features_mod
from tests.helpers import token_concepts

LAYER = 1
PROMPTS = [[5, 17, 33, 9], [40, 41, 42, 43, 44, 45, 46], [7, 8], [100, 3, 3, 3, 90]]


@pytest.fixture(scope="module")
def model(tiny_llama):
    return tiny_llama


@pytest.fixture(scope="module")
def concepts(model):
    return token_concepts(model, ("alpha", "beta", "gamma"), layer=LAYER)


NEUTRAL = [np.random.default_rng(1).integers(3, 256, size=6).tolist() for _ in range(4)]


def test_concepts_and_multipliers(model, concepts):
    assert [c.name for c in concepts] == ["alpha", "beta", "gamma"]
    c = concepts[0]
    assert c.vector.shape == (64,) and c.layer == LAYER and c.residual_norm > 0
    assert np.isclose(c.residual_norm, residual_norm(model, NEUTRAL, LAYER), rtol=1e-6)
    # texts of unequal lengths (left padding) give the same norm as one at a time
    mixed = [[5, 6, 7], list(range(10, 40))]
    alone = np.mean([residual_norm(model, [x], LAYER) for x in mixed])
    assert np.isclose(residual_norm(model, mixed, LAYER), alone, rtol=1e-5)
    # strength s adds a vector of norm s * residual_norm
    assert np.isclose(np.linalg.norm(c.multiplier(0.5) * c.vector), 0.5 * c.residual_norm, rtol=1e-6)
    with pytest.raises(SteeringError, match="reserved|none"):
        Concept("none", "x", c.vector, LAYER, 1.0)


def test_concepts_are_steering_vectors_saved_as_a_vector_set(concepts, tmp_path):
    from steerjax.studies.steerability_prediction import load_concepts, save_concepts
    from steerjax.vectors import SteeringVector

    c = concepts[0]
    assert isinstance(c, SteeringVector) and c.name == "alpha" and c.layers == [LAYER]
    assert c.metadata == {"source": "text", "residual_norm": c.residual_norm}
    np.testing.assert_array_equal(c.vectors[LAYER], c.vector)
    path = tmp_path / "concepts.safetensors"
    save_concepts(path, concepts)
    back = load_concepts(path)
    assert [b.name for b in back] == ["alpha", "beta", "gamma"]
    for a, b in zip(concepts, back):
        assert isinstance(b, Concept) and (b.source, b.layer, b.residual_norm) == (a.source, a.layer, a.residual_norm)
        np.testing.assert_array_equal(b.vector, a.vector)
        assert b.multiplier(1.5) == a.multiplier(1.5)
    with pytest.raises(SteeringError, match="not a concept"):
        Concept.from_vector(SteeringVector({0: np.ones(64), 1: np.ones(64)}, {"residual_norm": 1.0}, name="two"))


@pytest.mark.requires_data
def test_make_concepts_picks_the_source(chat_model):
    from steerjax.studies.steerability_prediction.concepts import make_concepts, persona_concepts, statement_concepts

    names = ["agreeableness", "anti-immigration"]
    for source, build, kw in (("statements", statement_concepts, {"n_statements": 3}),
                              ("ab", persona_concepts, {"n_pairs": 3})):
        made = make_concepts(chat_model, names, layer=0, source=source, n=3, seed=1, progress=False)
        ref = build(chat_model, names, layer=0, seed=1, progress=False, **kw)
        assert [c.name for c in made] == names and [c.source for c in made] == [c.source for c in ref]
        for a, b in zip(made, ref):
            np.testing.assert_array_equal(a.vector, b.vector)
    with pytest.raises(SteerjaxError, match="concept source"):
        make_concepts(chat_model, names, layer=0, source="texts")


def test_rollouts_table_shape_and_columns(model, concepts):
    strengths = [0.0, 0.5, 2.0]
    t = rollouts(model, PROMPTS, concepts, strengths, layer=LAYER, max_new_tokens=5, batch_size=8, progress=False)
    assert list(t.columns) == ["prompt_id", "prompt", "concept", "layer", "strength", "multiplier", "scale", "seed",
                               "text", "tokens", "n_tokens"]
    assert (t.scale == "norm").all()
    assert len(t) == len(PROMPTS) * (1 + len(concepts) * len(strengths))
    assert (t.groupby("prompt_id").size() == 1 + len(concepts) * len(strengths)).all()
    none = t[t.concept == "none"]
    assert len(none) == len(PROMPTS) and (none.strength == 0).all() and (none.multiplier == 0).all()
    assert all(len(tok) == n and 1 <= n <= 5 for tok, n in zip(t.tokens, t.n_tokens))
    c = concepts[1]
    row = t[(t.concept == c.name) & (t.strength == 2.0)].iloc[0]
    assert np.isclose(row.multiplier, c.multiplier(2.0), rtol=1e-6)


@pytest.mark.slow
def test_mixed_batch_equals_each_config_alone_and_zero_strength_equals_unsteered(model, concepts):
    strengths = {"alpha": [0.0, 1.0, 3.0], "beta": [-2.0, 0.0], "gamma": [4.0]}
    t = rollouts(model, PROMPTS, concepts, strengths, layer=LAYER, max_new_tokens=6, batch_size=5, progress=False)
    assert t.concept.nunique() == 4
    steered = t[(t.strength != 0)]
    assert len(set(map(tuple, steered.tokens))) > 1  # steering changed something
    for _, row in t.sample(8, random_state=0).iterrows():
        c = [x for x in concepts if x.name == row.concept]
        alone = rollouts(model, [PROMPTS[row.prompt_id]], c or concepts[:1], [row.strength] if c else [0.0],
                         layer=LAYER, max_new_tokens=6, batch_size=1, progress=False)
        ref = alone.iloc[1 if c else 0]
        assert ref.tokens == row.tokens, (row.concept, row.strength)
    for p in range(len(PROMPTS)):
        rows = t[t.prompt_id == p]
        base = rows[rows.concept == "none"].tokens.iloc[0]
        for tok in rows[rows.strength == 0].tokens:
            assert tok == base


def test_rollouts_resume_after_a_partial_run(model, concepts, tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    kw = dict(layer=LAYER, max_new_tokens=4, batch_size=4, progress=False)
    full = rollouts(model, PROMPTS, concepts, [0.5, 1.5], run_dir=run, **kw)
    import os

    chunks = sorted(os.listdir(os.path.join(run, "chunks")))
    assert len(chunks) == 7  # 28 rows in chunks of 4
    os.remove(os.path.join(run, "chunks", chunks[3]))  # a crash lost this chunk
    calls = []
    import importlib

    tb = importlib.import_module("steerjax.studies.steerability_prediction.testbed")
    real = tb.generate
    monkeypatch.setattr(tb, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))  # where rollouts call it
    again = rollouts(model, PROMPTS, concepts, [0.5, 1.5], run_dir=run, **kw)
    assert len(calls) == 1
    pd.testing.assert_frame_equal(full, again)
    with pytest.raises(SteerjaxError, match="different config"):
        rollouts(model, PROMPTS, concepts, [0.5, 2.5], run_dir=run, **kw)


def test_bad_inputs_raise_clear_errors(model, concepts):
    kw = dict(layer=LAYER, max_new_tokens=3, progress=False)
    with pytest.raises(SteerjaxError, match="unknown concept"):
        from steerjax.studies.steerability_prediction.concepts import select

        select(concepts, ["alpha", "delta"])
    with pytest.raises(SteerjaxError, match="unknown concept"):
        rollouts(model, PROMPTS, concepts, {"alpha": [1.0], "delta": [1.0]}, **kw)
    with pytest.raises(SteerjaxError, match="prompts"):
        rollouts(model, [], concepts, [1.0], **kw)
    with pytest.raises(SteerjaxError, match="finite"):
        rollouts(model, PROMPTS, concepts, [1.0, float("nan")], **kw)
    with pytest.raises(SteerjaxError, match="finite"):
        early_features(model, PROMPTS, concepts, [float("inf")], layer=LAYER, steps=(1,))
    with pytest.raises(LayerIndexError, match="out of range"):
        rollouts(model, PROMPTS, concepts, [1.0], layer=7, max_new_tokens=3)
    with pytest.raises(SteeringError, match="block"):
        rollouts(model, PROMPTS, concepts, [1.0], layer=0, max_new_tokens=3)
    with pytest.raises(SteerjaxError, match="concepts is empty"):
        rollouts(model, PROMPTS, [], [1.0], **kw)
    with pytest.raises(SteerjaxError, match="positions"):
        rollouts(model, PROMPTS, concepts, [1.0], positions="prompt", **kw)
    with pytest.raises(SteerjaxError, match="steps"):
        early_features(model, PROMPTS, concepts, [1.0], layer=LAYER, steps=(0, 2))


# ----------------------------------------------------------------------------- features

STEPS = (1, 2, 4)


def test_feature_columns_and_zero_strength(model, concepts):
    table, tokens = early_features(model, PROMPTS, concepts, [0.0, 1.0], layer=LAYER, steps=STEPS, batch_size=5)
    cols = feature_columns(model.config, STEPS, layer=LAYER)
    assert list(table.columns) == ["prompt_id", "concept", "strength", "multiplier", *cols]
    assert len(table) == len(PROMPTS) * len(concepts) * 2 and tokens.shape == (len(table), 4)
    assert "cos_L2_k4" in cols and "kl_next_k2" in cols and f"lens_kl_L{lens_layers(model.config)[0]}_k1" in cols
    zero = table[table.strength == 0]
    for k in STEPS:
        np.testing.assert_allclose(zero[[f"cos_L{layer}_k{k}" for layer in range(3)]], 1.0, atol=1e-6)
        np.testing.assert_allclose(zero[[f"diff_norm_L{layer}_k{k}" for layer in range(3)]], 0.0, atol=0)
        np.testing.assert_allclose(zero[f"kl_next_k{k}"], 0.0, atol=1e-7)
        np.testing.assert_allclose(zero[f"entropy_change_k{k}"], 0.0, atol=1e-6)
        np.testing.assert_allclose(zero[f"concept_read_k{k}"], 0.0, atol=0)  # measured against itself
    one = table[table.strength == 1.0]
    assert (table["concept_read_k1"] == 0).all()  # step 1 has read no new token yet
    # without zero strength in the grid, its rows are decoded for concept_read and dropped
    alone, alone_tokens = early_features(model, PROMPTS, concepts, [1.0], layer=LAYER, steps=STEPS, batch_size=5)
    pd.testing.assert_frame_equal(alone, one.reset_index(drop=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(alone_tokens, tokens[(table.strength == 1.0).to_numpy()])
    assert (one[f"diff_norm_L{LAYER}_k1"] > 0).all() and (one["kl_next_k1"] > 0).all()
    # at the steered block the difference is exactly m v (the block's input is unsteered)
    c = {x.name: x for x in concepts}
    expect = [c[n].multiplier(1.0) * c[n].norm for n in one.concept]
    np.testing.assert_allclose(one[f"diff_norm_L{LAYER}_k1"], expect, rtol=1e-5)
    # the relative set: ratios of the row's own columns to the push |m v| and the residual norm
    rel = [col for col in cols if col.startswith("rel_")]
    assert rel == features_mod.relative_columns(STEPS)
    last = model.config.num_layers - 1
    np.testing.assert_allclose(one["rel_injection"], one["strength"], rtol=1e-6)  # the norm scale's strength
    np.testing.assert_allclose(one["rel_vector_norm"], [c[n].norm / c[n].residual_norm for n in one.concept],
                               rtol=1e-6)
    np.testing.assert_allclose(one["rel_kl_next_k2"], one["kl_next_k2"] / one["strength"] ** 2, rtol=1e-6)
    np.testing.assert_allclose(one["rel_diff_proj_last_k4"], one[f"diff_proj_L{last}_k4"] / expect, rtol=1e-5)
    np.testing.assert_allclose(one["rel_diff_norm_mean_k1"], one[[f"diff_norm_L{b}_k1" for b in range(LAYER + 1, 3)]]
                               .mean(axis=1) / expect, rtol=1e-5)
    assert (zero[[x for x in rel if x != "rel_vector_norm"]] == 0).all().all()
    again = features_mod.relative_features(table.drop(columns=rel), LAYER, {n: x.residual_norm for n, x in c.items()},
                                           {n: x.norm for n, x in c.items()})  # a cached table's way
    pd.testing.assert_frame_equal(again, table[rel])
    with pytest.raises(SteerjaxError, match="no residual or vector norm for concepts \\['gamma'\\]"):
        features_mod.relative_features(table, LAYER, {n: 1.0 for n in c}, {"alpha": 1.0, "beta": 1.0})
    # tokens are the rollouts' greedy tokens
    t = rollouts(model, PROMPTS, concepts, [0.0, 1.0], layer=LAYER, max_new_tokens=4, batch_size=8, progress=False)
    t = t[t.concept != "none"].reset_index(drop=True)
    for i, row in t.iterrows():
        assert list(tokens[i, :row.n_tokens]) == row.tokens


#: the per-example references right-pad every sequence to this width: a causal model's outputs at a
#: position do not depend on later tokens, and one width compiles once instead of once per length
REFERENCE_WIDTH = 16


def _padded(seq):
    assert len(seq) <= REFERENCE_WIDTH
    return np.asarray([list(seq) + [0] * (REFERENCE_WIDTH - len(seq))])


def _reference_features(model, ids, concept, strength, k_max, positions="all"):
    """One row, no cache: steered greedy decoding, then both models on the full steered text."""
    cfg = model.config
    li = concept.layer
    # a plain forward does not resolve "generated": steer from the first new token's position
    start = "all" if positions == "all" else len(ids)
    steer = steerjax.Steering.create(cfg, {li: concept.vector}, concept.multiplier(strength), positions=start)
    seq = list(ids)
    for _ in range(k_max):
        seq.append(int(np.argmax(np.asarray(model.logits(_padded(seq), steering=steer))[0, len(seq) - 1])))
    full = _padded(seq[:-1])
    n = len(ids)
    rows = slice(n - 1, n - 1 + k_max)
    hs = np.asarray(model.hidden_states(full, steering=steer))[:, 0, rows].astype(np.float64)  # [L, K, D]
    hu = np.asarray(model.hidden_states(full))[:, 0, rows].astype(np.float64)
    ls = np.asarray(model.logits(full, steering=steer))[0, rows].astype(np.float64)
    lu = np.asarray(model.logits(full))[0, rows].astype(np.float64)

    def logsm(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    def kl(a, b):
        la, lb = logsm(a), logsm(b)
        return (np.exp(la) * (la - lb)).sum(-1)

    d = hs - hu
    nd = np.linalg.norm(d, axis=-1)
    f = {
        "cos": (hs * hu).sum(-1) / (np.linalg.norm(hs, axis=-1) * np.linalg.norm(hu, axis=-1)),
        "norm_ratio": np.linalg.norm(hs, axis=-1) / np.linalg.norm(hu, axis=-1),
        "diff_norm": nd,
        "diff_proj": d @ (concept.vector / concept.norm),
        "diff_growth": nd - np.concatenate([np.zeros_like(nd[:1]), nd[:-1]]),
    }
    ent = lambda x: -(np.exp(logsm(x)) * logsm(x)).sum(-1)  # noqa: E731
    from steerjax.models.transformer import final_norm, unembed

    def lens_logits(h):
        return np.asarray(unembed(model.params, cfg, final_norm(model.params, cfg, np.asarray(h, np.float32))))

    out = {}
    for k in STEPS:
        for name, v in f.items():
            for layer in range(cfg.num_layers):
                out[f"{name}_L{layer}_k{k}"] = v[layer, :k].mean()
        out[f"kl_next_k{k}"] = kl(ls, lu)[:k].mean()
        out[f"entropy_change_k{k}"] = (ent(ls) - ent(lu))[:k].mean()
        for layer in lens_layers(cfg):
            out[f"lens_kl_L{layer}_k{k}"] = kl(lens_logits(hs[layer]), lens_logits(hu[layer]))[:k].mean()
        # the unsteered model's NLL of the steered tokens, and its reading of new tokens 1..k-1
        out[f"read_nll_k{k}"] = -np.mean([logsm(lu[j])[seq[n + j]] for j in range(k)])
        out[f"read_proj_k{k}"] = (hu[li, 1:k] @ (concept.vector / concept.norm)).mean() if k > 1 else 0.0
    return out, seq[n:]


def _with_concept_read(model, ids, concept, strength, k_max, positions="all"):
    """The reference features plus concept_read: the reading relative to the zero-strength row."""
    out, toks = _reference_features(model, ids, concept, strength, k_max, positions)
    zero, _ = _reference_features(model, ids, concept, 0.0, k_max, positions)
    for k in STEPS:
        out[f"concept_read_k{k}"] = (out[f"read_proj_k{k}"] - zero[f"read_proj_k{k}"]) / concept.residual_norm
    return out, toks


@pytest.mark.slow  # test_feature_columns_and_zero_strength keeps early_features in the fast tier
@pytest.mark.parametrize("positions", ["all", "generated"])
def test_batched_features_equal_a_per_example_computation(model, concepts, positions):
    strengths = [0.5, 2.0]
    # batches of 3 rows mix prompts (4 rows per prompt), so shared prompt passes are gathered
    table, tokens = early_features(model, PROMPTS[:3], concepts[:2], strengths, layer=LAYER, steps=STEPS,
                                   batch_size=3, positions=positions)
    cols = feature_columns(model.config, STEPS)
    for i, row in table.iterrows():
        c = concepts[[x.name for x in concepts].index(row.concept)]
        ref, toks = _with_concept_read(model, PROMPTS[row.prompt_id], c, row.strength, max(STEPS), positions)
        assert list(tokens[i]) == toks
        got = row[cols].to_numpy(np.float64)
        want = np.asarray([ref[col] for col in cols])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"row {i}")


@pytest.mark.slow  # sampled rollouts, three early_features passes and the pipeline's
def test_sampled_rollouts_features_are_read_on_their_own_tokens(model, concepts, monkeypatch):
    from steerjax.studies.steerability_prediction import pipeline

    strengths = [1.0, 2.0]
    roll = rollouts(model, PROMPTS[:2], concepts[:2], strengths, layer=LAYER, max_new_tokens=4, batch_size=8,
                    temperature=2.0, seed=3, progress=False)
    own = {(int(p), c, float(s)): list(t) for p, c, s, t in zip(roll.prompt_id, roll.concept, roll.strength,
                                                                  roll.tokens)}
    kw = dict(layer=LAYER, steps=STEPS, batch_size=8)
    table, tokens = early_features(model, PROMPTS[:2], concepts[:2], strengths, tokens=own, **kw)
    greedy, greedy_tokens = early_features(model, PROMPTS[:2], concepts[:2], strengths, **kw)
    steered = roll[roll.concept != "none"].reset_index(drop=True)  # prompt x concept x strength, as the table
    assert list(zip(table.prompt_id, table.concept)) == list(zip(steered.prompt_id, steered.concept))
    for i, row in steered.iterrows():
        assert list(tokens[i, :row.n_tokens]) == row.tokens[:max(STEPS)]  # the rollout's own tokens were fed
    first = tokens[:, 0] != greedy_tokens[:, 0]
    assert first.sum() >= 2  # sampling at temperature 2 left the greedy path
    # step 1 reads the prompt (the same either way) and predicts the first token: only the NLL of the
    # token decoded there depends on which one it is; step 2 reads that token
    step1 = [c for c in table.columns if c.endswith("_k1") and not c.startswith(("read_nll", "sb_SteerAlignDelta"))]
    np.testing.assert_allclose(table[step1].to_numpy(np.float64), greedy[step1].to_numpy(np.float64), rtol=1e-5,
                               atol=1e-6)
    assert (np.abs(table["kl_next_k2"] - greedy["kl_next_k2"]).to_numpy()[first] > 1e-6).all()
    # read_nll_k1 is the unsteered model's NLL of the rollout's first token after the prompt
    for i, row in steered.iterrows():
        logits = np.asarray(model.logits(np.asarray([PROMPTS[row.prompt_id]])))[0, -1].astype(np.float64)
        logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        assert table.loc[i, "read_nll_k1"] == pytest.approx(-logp[row.tokens[0]], rel=1e-4, abs=1e-5)
    # the greedy tokens given as tokens give the greedy features
    again, _ = early_features(model, PROMPTS[:2], concepts[:2], strengths, **kw, tokens={
        (int(r.prompt_id), r.concept, float(r.strength)): greedy_tokens[i].tolist() for i, r in greedy.iterrows()})
    pd.testing.assert_frame_equal(again, greedy, rtol=1e-5, atol=1e-6)
    with pytest.raises(SteerjaxError, match=r"tokens has no entry for 1 rows.*\(1, 'beta', 2.0\)"):
        early_features(model, PROMPTS[:2], concepts[:2], strengths, **kw,
                       tokens={k: v for k, v in own.items() if k != (1, "beta", 2.0)})

    # the pipeline reads a testbed's features on its rollouts' own tokens (the judge is a stub here)
    def judge(model, concepts, **_):
        return lambda r: (pd.DataFrame({"label": ["success"] * len(r)}, index=r.index), None)

    monkeypatch.setattr(pipeline, "HiddenStateJudge", judge)
    roll = roll.assign(prompt=[PROMPTS[p] for p in roll.prompt_id])  # the ids (the table holds them as JSON)
    _, _, data = pipeline.label_and_featurize(model, concepts[:2], roll, layer=LAYER, steps=STEPS, batch_size=8,
                                              progress=False)
    pd.testing.assert_frame_equal(data.drop(columns=["label"]), table)


def test_features_do_not_recompile_for_new_prompts_and_strengths(model, concepts):
    early_features(model, PROMPTS[:2], concepts[:2], [1.0], layer=LAYER, steps=(1, 2), batch_size=4)
    before = features_mod._early._cache_size()
    # same shapes (rows, distinct prompts per batch, 16-token bucket), new prompts, concepts, strengths
    early_features(model, [[9, 9, 9], [1, 2, 3, 4, 5, 6]], concepts[1:], [0.3], layer=LAYER, steps=(1, 2),
                   batch_size=4)
    assert features_mod._early._cache_size() == before


# ----------------------------------------------------------------------------- real model

@pytest.mark.slow
@pytest.mark.requires_smollm2
def test_smollm2_larger_strength_moves_features_monotonically(smollm2):
    from steerjax.studies.steerability_prediction import NEUTRAL_PROMPTS

    model = smollm2
    layer = 12
    [c] = text_concepts(model, {"wedding": ["The wedding was beautiful, the bride and groom danced all night.",
                                            "We celebrated the wedding with flowers, rings and a cake."]},
                        ["The report was filed on Tuesday.", "He walked to the store to buy milk."], layer,
                        norm_prompts=NEUTRAL_PROMPTS[:8])
    strengths = [0.0, 0.25, 0.5, 1.0, 2.0]
    table, _ = early_features(model, NEUTRAL_PROMPTS[:4], [c], strengths, layer=layer, steps=(1, 4), batch_size=8)
    mean = table.groupby("strength")[["kl_next_k1", "kl_next_k4", "diff_norm_L20_k4", "cos_L20_k1"]].mean()
    for col in ("kl_next_k1", "kl_next_k4", "diff_norm_L20_k4"):
        assert np.all(np.diff(mean[col].to_numpy()) > 0), mean[col]
    assert np.all(np.diff(mean["cos_L20_k1"].to_numpy()) < 0)


# ----------------------------------------------------------------------------- CLI


def test_cli_testbed_rejects_bad_input(tiny, capsys):
    from steerjax.cli import main

    path, _ = tiny("llama")
    base = ["testbed", path, "--concepts", "agreeableness", "--layer", "1", "--out", "unused"]
    for extra, msg in ((["--prompts", "0"], "--prompts"), (["--strengths", "nan"], "finite"),
                       (["--max-new-tokens", "0"], "--max-new-tokens")):
        assert main(base + extra) == 2
        assert msg in capsys.readouterr().err
    assert main(["testbed", path, "--concepts", "x", "--layer", "9", "--out", "unused"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_more_folds_than_concepts_are_refused_before_the_model_loads(concepts):
    """``steerjax predictor train`` after a three-concept testbed (the README's) with the default
    5 folds: refused by the checks that run before the model loads, naming the flag and the fix
    (it used to fail after the features were extracted)."""
    from steerjax.studies.steerability_prediction.pipeline import Testbed, check_training

    testbed = Testbed("tb", {}, list(concepts), pd.DataFrame({"prompt_id": [0, 1]}))
    with pytest.raises(SteerjaxError, match=r"--folds 5: the testbed has 3 concepts.*pass --folds 3 or fewer"):
        check_training(testbed, steps=(1, 2), search_k=2, folds=5, names={"folds": "--folds"})
    check_training(testbed, steps=(1, 2), search_k=2, folds=3)
    check_training(testbed, steps=(1, 2), search_k=2, folds=0)


@pytest.mark.slow
@pytest.mark.requires_data
def test_cli_testbed_runs_and_resumes(chat_model_dir, tmp_path, capsys):
    from steerjax.cli import main

    out = str(tmp_path / "tb")
    args = ["testbed", chat_model_dir, "--concepts", "agreeableness", "anti-immigration", "--prompts", "3",
            "--strengths", "0.5", "2", "--layer", "0", "--max-new-tokens", "4", "--pairs", "4", "--out", out]
    assert main(args) == 0
    table = pd.read_parquet(f"{out}/rollouts.parquet")
    assert len(table) == 3 * (1 + 2 * 2) and set(table.concept) == {"none", "agreeableness", "anti-immigration"}
    assert table.text.map(lambda t: isinstance(t, str)).all()
    assert main(args) == 0  # resumes: every chunk is done, concepts are reused
    pd.testing.assert_frame_equal(table, pd.read_parquet(f"{out}/rollouts.parquet"))
    assert main(args[:3] + ["agreeable"] + args[5:]) == 2
    assert "unknown" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.requires_data
def test_cli_predictor_train_and_search(chat_model_dir, tmp_path, capsys):
    import json

    from steerjax.cli import main
    from steerjax.studies.steerability_prediction.classifier import SteerabilityPredictor

    tb, pred = str(tmp_path / "tb"), str(tmp_path / "pred")
    assert main(["testbed", chat_model_dir, "--concepts", "agreeableness", "narcissism", "risk-seeking",
                 "--prompts", "4", "--strengths", "0.02", "0.5", "4", "--layer", "0", "--max-new-tokens", "6",
                 "--pairs", "4", "--out", tb]) == 0
    assert main(["predictor", "train", tb, "--steps", "1", "2", "--search-k", "1", "--folds", "0",
                 "--iterations", "20", "--feature-set", "steerboost", "--protocol", "paper", "--steerboost-compat",
                 "--out", pred]) == 0
    labels = pd.read_parquet(f"{pred}/labels.parquet")
    assert set(labels["label"]) <= {"under-steer", "success", "over-steer"} and len(labels) == 4 * (1 + 3 * 3)
    p = SteerabilityPredictor.load(pred)
    assert p.meta["layer"] == 0 and p.meta["feature_set"] == "steerboost" and p.meta["protocol"] == "paper"
    # the steerboost set at k <= 1: token 0's columns, and InterventionMag / Alpha, which have no step
    assert all(c.startswith("sb_") or c == "strength" for c in p.feature_columns)
    assert {"sb_InterventionMag", "sb_Alpha"} <= set(p.feature_columns)
    assert all(c.endswith("_k1") or c in ("strength", "sb_InterventionMag", "sb_Alpha") for c in p.feature_columns)
    # --steerboost-compat: blocks 0 + 10, 0 + 15 past the last, named so, and recorded:
    # `predictor search` below reads the predictor's columns only if it computes them the same way
    assert p.meta["steerboost_compat"] is True and "sb_MagDiff_T0_L15_k1" in p.feature_columns
    paper = pd.read_csv(f"{pred}/paper/scores.csv")
    assert {("seen", "test"), ("unseen", "test"), ("unseen", "all")} == set(zip(paper["concepts"], paper["prompts"]))
    for part, g in paper.groupby(["concepts", "prompts"]):  # the same baselines as the study's, CGS included
        assert {"predictor", "strength-only", "majority", "CGS"} <= set(g["model"]), part
    assert "the paper's evaluation, features 'steerboost'" in capsys.readouterr().out
    # the study's strength search, baselines IGS / CGS / TCGS included, from the same command
    searched = str(tmp_path / "searched")
    assert main(["predictor", "train", tb, "--steps", "1", "--search-k", "1", "--folds", "3", "--iterations", "10",
                 "--search-prompt-folds", "2", "--max-rollouts", "1", "2", "--out", searched]) == 0
    st = pd.read_csv(f"{searched}/strategies.csv")
    assert {"IGS", "CGS", "TCGS", "IGS-A", "IGS-D", "guided-argmax", "guided-feedback"} <= set(st["strategy"])
    assert set(st.loc[st["strategy"] == "guided-argmax", "max_rollouts"]) == {1, 2}
    assert (st.loc[st["strategy"] == "IGS", "tokens_vs_igs"] == 1).all()
    assert list(pd.read_csv(f"{searched}/scores.csv")["model"])[-1] == "CGS"
    assert "strength search (unseen concepts, held-out prompts" in capsys.readouterr().out
    assert main(["predictor", "train", tb, "--folds", "3", "--search-prompt-folds", "9",
                 "--out", str(tmp_path / "p9")]) == 2
    assert "--search-prompt-folds must be in 2..4" in capsys.readouterr().err
    capsys.readouterr()
    out = str(tmp_path / "search.json")
    assert main(["predictor", "search", pred, "--prompt", "Tell me a story.", "--concept", "narcissism",
                 "--strategy", "bisect", "--judge", "--out", out]) == 0
    res = json.load(open(out))
    assert res["strength"] in (0.02, 0.5, 4.0) and res["label"] in ("under-steer", "success", "over-steer")
    assert 1 <= len(res["evaluated"]) <= 2 and res["decoded_tokens"] > 0
    # ranked confirmation: up to 3 full rollouts in the predictor's order, stopping at the first success
    capsys.readouterr()
    assert main(["predictor", "search", pred, "--prompt", "Tell me a story.", "--concept", "narcissism",
                 "--max-rollouts", "3", "--judge", "--out", out, "--force"]) == 0
    res = json.load(open(out))
    tried = res["tried"]
    assert 1 <= len(tried) <= 3 and len({t["strength"] for t in tried}) == len(tried)
    assert all(t["label"] != "success" for t in tried[:-1])
    assert len(tried) == 3 or tried[-1]["label"] == "success"
    shown = capsys.readouterr().out  # every rollout tried is shown, and a search without a success says so
    assert all(f"{t['strength']:g} ({t['label']})" in shown for t in tried) or tried[-1]["label"] == "success"
    assert ("no strength the search tried was judged a success" in shown) == (tried[-1]["label"] != "success")
    assert res["decoded_tokens"] == 3 * 1 + sum(t["n_tokens"] for t in tried)  # k=1 per candidate + rollouts
    # feedback: each failed rollout's label prunes the candidates on its side of the strength order
    assert main(["predictor", "search", pred, "--prompt", "Tell me a story.", "--concept", "narcissism",
                 "--strategy", "feedback", "--max-rollouts", "3", "--judge", "--out", out, "--force"]) == 0
    tried = json.load(open(out))["tried"]
    assert 1 <= len(tried) <= 3 and all(t["label"] != "success" for t in tried[:-1])
    for i, t in enumerate(tried[:-1]):
        later = [u["strength"] for u in tried[i + 1:]]
        assert all(x > t["strength"] for x in later) if t["label"] == "under-steer" else \
            all(x < t["strength"] for x in later), tried
    assert main(["predictor", "search", pred, "--prompt", "x", "--concept", "narcissism", "--max-rollouts", "2"]) == 2
    assert "pass a judge" in capsys.readouterr().err
    assert main(["predictor", "search", pred, "--prompt", "x", "--concept", "nope"]) == 2
    assert "unknown concept" in capsys.readouterr().err
    assert main(["predictor", "train", str(tmp_path / "missing"), "--out", pred]) == 2
    assert "not a finished testbed run" in capsys.readouterr().err
    assert main(["predictor", "train", tb, "--folds", "3", "--feature-set", "steerboost+nope", "--out", pred,
                 "--force"]) == 2
    assert "unknown feature set" in capsys.readouterr().err
