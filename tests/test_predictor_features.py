"""Named feature sets: SteerBoost's features against a per-example numpy computation, set
selection (the default never replays the judge) and the ablation on shared folds."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

import steerjax
from steerjax.errors import PredictorError, SteerjaxError
from steerjax.studies.steerability_prediction import classifier, early_features, feature_columns
from steerjax.studies.steerability_prediction import features as F
from steerjax.studies.steerability_prediction.judge import LABELS
from tests.helpers import labelled_table, token_concepts

LAYER = 1
PROMPTS = [[5, 17, 33, 9], [40, 41, 42, 43, 44, 45, 46], [7, 8]]
STEPS = (1, 2, 4, 6)  # token n of SteerBoost is decoding step n + 1: tokens 0, 1, 3, 5


@pytest.fixture(scope="module")
def model(tiny_llama):
    return tiny_llama


@pytest.fixture(scope="module")
def concepts(model):
    return token_concepts(model, layer=LAYER)


def test_steerboost_blocks_tokens_and_names():
    cfg = types.SimpleNamespace(num_layers=30)
    assert F.steerboost_layers(cfg, 12) == (12, 13, 14, 15, 17, 22, 27)
    assert F.steerboost_layers(cfg, 20) == (20, 21, 22, 23, 25, 29)  # 30, 35 clipped to the last block
    assert F.steerboost_layers(cfg, -1) == (29,)
    assert F.steerboost_tokens((1, 2, 4, 8)) == (0, 1, 3, 5)
    assert F.steerboost_tokens((1, 2, 4)) == (0, 1, 3) and F.steerboost_tokens((1,)) == (0,)
    cols = F.steerboost_columns(cfg, 12, (1, 2, 4, 8))
    assert len(cols) == len(set(cols))
    # a 4-token x 7-block matrix: 28 cells, 4 global statistics, 3 per token, 3 per block
    assert sum(c.startswith("sb_MagDiff_") and not c.startswith("sb_MagDiffRatio") for c in cols) == 28 + 4 + 12 + 21
    # SteerAlign leaves out the steered block; the token-0 ratios have tokens 1, 3, 5
    assert sum(c.startswith("sb_SteerAlign_") for c in cols) == 24 + 4 + 12 + 18
    assert sum(c.startswith("sb_MagDiffRatio_") for c in cols) == 21 + 4 + 9 + 21
    assert not any(c.startswith("sb_SteerAlign") and "_L12_" in c for c in cols)
    assert "sb_MagDiff_T5_L27_k6" in cols and "sb_CosSimDelta_Mean_L13_AllNonZeroTokens_k6" in cols
    assert "sb_SteerProj_Max_T3_AllLayers_k4" in cols and "sb_MagDiff_Min_Global_k6" in cols
    assert cols[-2:] == ["sb_InterventionMag", "sb_Alpha"]
    assert all(F.feature_set_of(c) == "steerboost" for c in cols)
    # steering the last block: no SteerAlign (no block after it), as SteerBoost's empty matrix
    last = F.steerboost_columns(cfg, 29, (1, 2, 4, 8))
    assert not any(c.startswith("sb_SteerAlign") for c in last) and "sb_MagDiff_T0_L29_k1" in last


def _stats(name, m, token_names, block_names, over, k_of_token, k_last):
    """SteerBoost's emission of one matrix, written out: cells, global, per token, per block."""
    out = {}
    for i, t in enumerate(token_names):
        for j, b in enumerate(block_names):
            out[f"sb_{name}_T{t}_L{b}_k{k_of_token[i]}"] = m[i, j]
    flat = m.reshape(-1)
    for st, f in (("Mean", np.mean), ("Std", np.std), ("Max", np.max), ("Min", np.min)):
        out[f"sb_{name}_{st}_Global_k{k_last}"] = f(flat)
    for i, t in enumerate(token_names):
        for st, f in (("Mean", np.mean), ("Std", np.std), ("Max", np.max)):
            out[f"sb_{name}_{st}_T{t}_AllLayers_k{k_of_token[i]}"] = f(m[i])
    for j, b in enumerate(block_names):
        for st, f in (("Mean", np.mean), ("Std", np.std), ("Max", np.max)):
            out[f"sb_{name}_{st}_L{b}_{over}_k{k_last}"] = f(m[:, j])
    return out


#: the per-example references right-pad every sequence to this width: a causal model's outputs at a
#: position do not depend on later tokens, and one width compiles once instead of once per length
REFERENCE_WIDTH = 16


def _padded(seq):
    assert len(seq) <= REFERENCE_WIDTH
    return np.asarray([list(seq) + [0] * (REFERENCE_WIDTH - len(seq))])


def _steerboost_reference(model, ids, concept, strength, k_max, positions):
    """One row, no cache, float64 numpy: steered greedy decoding, both models on the full steered
    text, then SteerBoost's definitions (xgb/utils.py) at tokens 0, 1, 3, 5 = steps 1, 2, 4, 6."""
    cfg = model.config
    li = concept.layer
    m = float(concept.multiplier(strength))
    start = "all" if positions == "all" else len(ids)
    steer = steerjax.Steering.create(cfg, {li: concept.vector}, m, positions=start)
    seq = list(ids)
    for _ in range(k_max):
        seq.append(int(np.argmax(np.asarray(model.logits(_padded(seq), steering=steer))[0, len(seq) - 1])))
    full = _padded(seq[:-1])
    n = len(ids)
    hs = np.asarray(model.hidden_states(full, steering=steer))[:, 0, n - 1:n - 1 + k_max].astype(np.float64)
    hu = np.asarray(model.hidden_states(full))[:, 0, n - 1:n - 1 + k_max].astype(np.float64)
    sv = m * concept.vector.astype(np.float64)  # the intervention, SteerBoost's after - before at L
    eps = 1e-8

    def cos(a, b):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return float(a @ b / (na * nb)) if na > eps and nb > eps else 0.0

    tokens = [t for t in (0, 1, 3, 5) if t + 1 <= k_max]
    blocks = sorted({min(li + k, cfg.num_layers - 1) for k in (0, 1, 2, 3, 5, 10, 15)})
    mats = {g: np.zeros((len(tokens), len(blocks))) for g in ("MagDiff", "CosSim", "SteerAlign", "SteerProj")}
    for i, t in enumerate(tokens):
        for j, b in enumerate(blocks):
            after, u = hs[b, t], hu[b, t]
            before = after
            if b == li:
                steered_here = positions == "all" or t >= 1
                before = after - sv if steered_here else after
                np.testing.assert_allclose(before, u, atol=1e-4)  # the block's input is unsteered
                before = u
            d = before - u
            mats["MagDiff"][i, j] = np.linalg.norm(d)
            mats["CosSim"][i, j] = cos(before, u)
            mats["SteerAlign"][i, j] = cos(d, sv) if np.linalg.norm(d) > eps else 0.0
            mats["SteerProj"][i, j] = cos(after, sv)
    keep = [j for j, b in enumerate(blocks) if b != li]
    tn = tokens
    k_of = [t + 1 for t in tn]
    out = {}
    out.update(_stats("MagDiff", mats["MagDiff"], tn, blocks, "AllTokens", k_of, max(k_of)))
    out.update(_stats("CosSim", mats["CosSim"], tn, blocks, "AllTokens", k_of, max(k_of)))
    if keep:
        out.update(_stats("SteerAlign", mats["SteerAlign"][:, keep], tn, [blocks[j] for j in keep], "AllTokens",
                          k_of, max(k_of)))
    out.update(_stats("SteerProj", mats["SteerProj"], tn, blocks, "AllTokens", k_of, max(k_of)))
    if len(tn) > 1:
        md = mats["MagDiff"]
        ratio = np.array([[md[i, j] / md[0, j] if abs(md[0, j]) > eps else 0.0 for j in range(len(blocks))]
                          for i in range(1, len(tn))])
        out.update(_stats("MagDiffRatio", ratio, tn[1:], blocks, "AllNonZeroTokens", k_of[1:], max(k_of)))
        out.update(_stats("CosSimDelta", mats["CosSim"][1:] - mats["CosSim"][:1], tn[1:], blocks,
                          "AllNonZeroTokens", k_of[1:], max(k_of)))
        if keep:
            sa = mats["SteerAlign"][:, keep]
            out.update(_stats("SteerAlignDelta", sa[1:] - sa[:1], tn[1:], [blocks[j] for j in keep],
                              "AllNonZeroTokens", k_of[1:], max(k_of)))
    out["sb_InterventionMag"] = np.linalg.norm(sv) / m if m != 0 else 0.0
    out["sb_Alpha"] = m
    return out, seq[n:]


@pytest.mark.slow  # ~30 s a case (the uncached reference compiles per length); the set tests run early_features fast
@pytest.mark.parametrize("positions", ["all", "generated"])
def test_steerboost_features_equal_a_per_example_computation(model, concepts, positions):
    strengths = [-1.0, 0.0, 2.0]  # a negative multiplier flips SteerAlign / SteerProj, zero silences them
    table, tokens = early_features(model, PROMPTS, concepts, strengths, layer=LAYER, steps=STEPS, batch_size=4,
                                   positions=positions)
    cols = F.steerboost_columns(model.config, LAYER, STEPS)
    rel = F.relative_columns(STEPS)
    assert list(table.columns[-len(cols) - len(rel):]) == cols + rel  # SteerBoost's, then the relative set
    for i, row in table.iterrows():
        c = concepts[[x.name for x in concepts].index(row.concept)]
        ref, toks = _steerboost_reference(model, PROMPTS[row.prompt_id], c, row.strength, max(STEPS), positions)
        assert list(tokens[i]) == toks
        assert sorted(ref) == sorted(cols)
        np.testing.assert_allclose(row[cols].to_numpy(np.float64), [ref[k] for k in cols], rtol=1e-4, atol=1e-5,
                                   err_msg=f"row {i}")
    zero = table[table.strength == 0]
    assert (zero.filter(regex="^sb_(SteerAlign|SteerProj)") == 0).all().all()
    assert (zero["sb_InterventionMag"] == 0).all()
    if positions == "generated":  # token 0 is not steered: no difference there, every ratio is 0
        assert (table.filter(regex=r"^sb_MagDiff_T0_") == 0).all().all()
        assert (table.filter(regex=r"^sb_MagDiffRatio_T\d") == 0).all().all()


def test_steerboost_compat_names_blocks_past_the_last():
    """Issue 27, point 3: SteerBoost's feature code reads blocks L + k unclipped (xgb/utils.py:
    ``layer_indices = sorted(set([L] + [L + k for k in k_list]))``)."""
    cfg = types.SimpleNamespace(num_layers=30)
    assert F.steerboost_layers(cfg, 15, True) == (15, 16, 17, 18, 20, 25, 30)  # SmolLM2 at block 15
    assert F.steerboost_layers(cfg, 15) == (15, 16, 17, 18, 20, 25, 29)
    assert F.steerboost_layers(cfg, 12, True) == F.steerboost_layers(cfg, 12)  # nothing past the last
    cols = F.steerboost_columns(cfg, 15, (1, 2, 4, 6), steerboost_compat=True)
    assert "sb_MagDiff_T5_L30_k6" in cols and "sb_SteerAlign_Mean_L30_AllTokens_k6" in cols
    assert not any("_L29_" in c for c in cols)
    assert len(cols) == len(F.steerboost_columns(cfg, 15, (1, 2, 4, 6)))
    rel = len(F.relative_columns((1, 2, 4, 6)))
    assert F.feature_columns(cfg, (1, 2, 4, 6), layer=15, steerboost_compat=True)[-len(cols) - rel:-rel] == cols


def _steerboost_port(steered, raw, layer, k_list, n_list, alpha):
    """SteerBoost's get_handcrafted_features (xgb/utils.py, all groups) restated in numpy on its own
    data layout: ``{"token_n": {"before_steering": {"layer_l": h}, "after_steering": {...}}}``; an
    entry missing from either sample leaves its cell 0."""
    eps = 1e-8
    toks = sorted({0, *n_list})
    blocks = sorted({layer, *(layer + k for k in k_list)})
    key = f"layer_{layer}"
    vec = None
    for t in toks:  # the intervention: after - before at L, from the first token that has both
        st = steered.get(f"token_{t}", {})
        if key in st.get("after_steering", {}) and key in st.get("before_steering", {}):
            vec = st["after_steering"][key] - st["before_steering"][key]
            break
    vnorm = 0.0 if vec is None else float(np.linalg.norm(vec))
    mats = {g: np.zeros((len(toks), len(blocks))) for g in ("MagDiff", "CosSim", "SteerAlign", "SteerProj")}
    for i, t in enumerate(toks):
        for j, b in enumerate(blocks):
            tk, bk = f"token_{t}", f"layer_{b}"
            if tk not in steered or tk not in raw:
                continue
            if bk not in steered[tk]["before_steering"] or bk not in raw[tk]["before_steering"]:
                continue
            s, r = steered[tk]["before_steering"][bk], raw[tk]["before_steering"][bk]
            d = s - r
            mats["MagDiff"][i, j] = np.linalg.norm(d)
            ns, nr = np.linalg.norm(s), np.linalg.norm(r)
            if ns > eps and nr > eps:
                mats["CosSim"][i, j] = s @ r / (ns * nr)
            if vec is not None and vnorm > eps:
                nd = np.linalg.norm(d)
                if nd > eps:
                    mats["SteerAlign"][i, j] = d @ vec / (nd * vnorm)
                h = steered[tk]["after_steering"][bk] if b == layer else s
                nh = np.linalg.norm(h)
                if nh > eps:
                    mats["SteerProj"][i, j] = h @ vec / (nh * vnorm)
    out = []

    def emit(m):
        out.extend(m.reshape(-1))
        out.extend([np.mean(m), np.std(m), np.max(m), np.min(m)])
        for row in m:
            out.extend([np.mean(row), np.std(row), np.max(row)])
        for col in m.T:
            out.extend([np.mean(col), np.std(col), np.max(col)])

    rest = [j for j, b in enumerate(blocks) if b != layer]
    emit(mats["MagDiff"])
    emit(mats["CosSim"])
    emit(mats["SteerAlign"][:, rest])
    emit(mats["SteerProj"])
    if len(toks) > 1:
        md, cs, sa = mats["MagDiff"], mats["CosSim"], mats["SteerAlign"]
        emit(np.where(np.abs(md[:1]) > eps, md[1:] / np.where(np.abs(md[:1]) > eps, md[:1], 1.0), 0.0))
        emit(cs[1:] - cs[:1])
        emit((sa[1:] - sa[:1])[:, rest])
    out.append(vnorm / alpha if alpha != 0 else vnorm)
    out.append(float(alpha))
    return np.asarray(out)


def _steerboost_samples(model, ids, concept, strength, own, k_max, n_list, k_list):
    """One row as SteerBoost's code captures it, from an uncached float64 pass: the steered sample
    (steering.py's hooks: block L before and after the addition, blocks min(L + k, last); tokens 0
    and ``n_list``) and the raw one (raw_hidden_state.py: blocks L + k below the model's depth, and
    only positions of the decoded response: token n when the response has n tokens or more). The
    rollout is ``own`` up to its first EOS (2), then greedy; returns ``(steered, raw, new tokens)``."""
    cfg = model.config
    li, last = concept.layer, cfg.num_layers - 1
    m = float(concept.multiplier(strength))
    steer = steerjax.Steering.create(cfg, {li: concept.vector}, m, positions="all")
    seq = list(ids)
    for step in range(k_max):
        nxt = own[step] if step < len(own) else int(np.argmax(np.asarray(
            model.logits(_padded(seq), steering=steer))[0, len(seq) - 1]))
        seq.append(int(nxt))
    new = seq[len(ids):]
    response = own.index(2) if 2 in own else len(own)  # the decoded response's tokens (EOS not decoded)
    full = _padded(seq[:-1])
    n = len(ids)
    hs = np.asarray(model.hidden_states(full, steering=steer))[:, 0, n - 1:n - 1 + k_max].astype(np.float64)
    hu = np.asarray(model.hidden_states(full))[:, 0, n - 1:n - 1 + k_max].astype(np.float64)
    steered, raw = {}, {}
    for t in [0, *n_list]:
        after = {f"layer_{li}": hs[li, t]}
        before = {f"layer_{li}": hu[li, t]}  # the block's output before the addition: the unsteered one
        before.update({f"layer_{min(li + k, last)}": hs[min(li + k, last), t] for k in k_list
                       if min(li + k, last) != li})
        steered[f"token_{t}"] = {"before_steering": before, "after_steering": after}
        keep = t <= response
        raw[f"token_{t}"] = {"before_steering": {f"layer_{b}": hu[b, t] for b in [li, *(li + k for k in k_list)]
                                                 if b <= last and keep}}
    return steered, raw, new


@pytest.mark.slow  # an uncached float64 reference per row
def test_steerboost_compat_equals_steerboosts_feature_code(model, concepts):
    """Issue 27, points 3 and 4: ``steerboost_compat=True`` gives SteerBoost's feature vector (its
    order, its zeros) on the tiny Llama steered at block 1 of 3, so blocks 3, 4, 6, 11, 16 are past the
    last; rollouts that end (EOS, id 2) within the first six tokens, or whose tokens run out, leave the
    later tokens at 0."""
    k_list, n_list = [1, 2, 3, 5, 10, 15], [1, 3, 5]
    strengths = [-1.0, 2.0]
    rng = np.random.default_rng(3)
    ends = [[2], [11, 2], [11, 12, 13, 2], [11, 12, 13, 14, 15, 2, 9], [11, 12, 13], None]  # None: no EOS
    forced, i = {}, 0
    for p in range(2):
        for c in concepts:
            for s in strengths:
                e = ends[i % len(ends)]
                forced[(p, c.name, s)] = e if e is not None else rng.integers(3, 256, size=8).tolist()
                i += 1
    table, tokens = early_features(model, PROMPTS[:2], concepts, strengths, layer=LAYER, steps=STEPS, batch_size=4,
                                   tokens=forced, steerboost_compat=True, judge_aware=False)
    cols = F.steerboost_columns(model.config, LAYER, STEPS, steerboost_compat=True)
    assert "sb_MagDiff_T5_L16_k6" in cols
    zero_tokens = 0
    for i, row in table.iterrows():
        c = concepts[[x.name for x in concepts].index(row.concept)]
        own = forced[(row.prompt_id, row.concept, row.strength)]
        steered, raw, new = _steerboost_samples(model, PROMPTS[row.prompt_id], c, row.strength, own, max(STEPS),
                                                n_list, k_list)
        assert list(tokens[i]) == new
        ref = _steerboost_port(steered, raw, LAYER, k_list, n_list, float(row.multiplier))
        assert len(ref) == len(cols)
        np.testing.assert_allclose(row[cols].to_numpy(np.float64), ref, rtol=1e-4, atol=1e-5, err_msg=f"row {i}")
        zero_tokens += sum(not raw[f"token_{t}"]["before_steering"] for t in n_list)
    assert zero_tokens == (3 + 2 + 1 + 0 + 1 + 0) + (3 + 2)  # tokens past the end: 8 rows over the 6 kinds
    assert (table.filter(regex=r"^sb_(MagDiff|CosSim|SteerProj)_T\d_L(3|4|6|11|16)_") == 0).all().all()


@pytest.mark.slow  # two early_features calls; the synthetic-table tests below keep set selection in the fast tier
def test_feature_sets_partition_the_columns_and_the_default_is_judge_independent(model, concepts):
    table, _ = early_features(model, PROMPTS[:2], concepts, [0.5, 2.0], layer=LAYER, steps=(1, 2), batch_size=4)
    feats = [c for c in table.columns if c not in F.ID_COLUMNS]
    by = {name: F.feature_set_columns(table.columns, name) for name in F.FEATURE_SETS}
    assert all(cols[0] == "strength" for cols in by.values())
    assert sorted(c for cols in by.values() for c in cols[1:]) == sorted(feats)  # a partition, strength aside
    assert by["judge-aware"] == ["strength", "read_nll_k1", "concept_read_k1", "read_nll_k2", "concept_read_k2"]
    assert {"kl_next_k1", "lens_kl_L0_k2", "diff_growth_L2_k1"} <= set(by["steerjax"])
    assert "sb_MagDiff_T1_L2_k2" in by["steerboost"] and "sb_Alpha" in by["steerboost"]
    default = classifier.feature_columns_of(table)
    assert F.DEFAULT_FEATURE_SET == "steerboost+steerjax+relative" and not F.replays_judge(F.DEFAULT_FEATURE_SET)
    assert not any(F.feature_set_of(c) == "judge-aware" for c in default)
    assert set(default) == set(by["steerboost"]) | set(by["steerjax"]) | set(by["relative"])
    assert by["relative"][1:] == F.relative_columns((1, 2))
    assert F.feature_set_columns(table.columns, "steerjax+steerboost+steerjax") == [
        c for c in table.columns if c in set(by["steerboost"]) | set(by["steerjax"])]
    assert F.replays_judge("steerjax+judge-aware")
    # max_step keeps the columns of the first steps; the statistics over tokens 0 and 1 need step 2
    one = classifier.feature_columns_of(table, max_step=1, feature_set="steerboost")
    assert "sb_MagDiff_T0_L1_k1" in one and "sb_InterventionMag" in one
    assert not [c for c in one if c.endswith("_k2")]
    for bad in ("steerbost", "", "steerjax+judge", None):
        with pytest.raises(SteerjaxError, match="unknown feature set.*judge-aware.*steerboost.*steerjax"):
            classifier.feature_columns_of(table, feature_set=bad)
    with pytest.raises(PredictorError, match="no numeric feature columns of the set 'steerboost'"):
        classifier.feature_columns_of(table.drop(columns=by["steerboost"][1:]), feature_set="steerboost")
    # judge_aware=False: the same table without the judge-aware columns (and no zero-strength rows decoded)
    plain, _ = early_features(model, PROMPTS[:2], concepts, [0.5, 2.0], layer=LAYER, steps=(1, 2), batch_size=4,
                              judge_aware=False)
    assert list(plain.columns) == ["prompt_id", "concept", "strength", "multiplier",
                                   *feature_columns(model.config, (1, 2), layer=LAYER, judge_aware=False)]
    pd.testing.assert_frame_equal(plain, table.drop(columns=by["judge-aware"][1:]))


def _set_table(n_concepts=8, n_prompts=6, strengths=(0.5, 1, 2, 4, 8), seed=0):
    """Labels from a concept sensitivity that the steerboost column reveals well, the steerjax one
    less and the judge-aware one also; named as the sets' columns."""
    table = labelled_table(lambda effect, rng: {"sb_MagDiff_T0_L2_k1": effect + rng.normal(0, 0.1),
                                                "kl_next_k1": effect + rng.normal(0, 1.0),
                                                "read_nll_k1": effect + rng.normal(0, 0.5)},
                           n_concepts, n_prompts, strengths, seed)
    return table.assign(multiplier=3.0 * table["strength"])


def test_ablation_scores_every_set_on_the_same_folds():
    table = _set_table()
    sets = ["steerboost", "steerjax", "judge-aware", "steerboost+steerjax"]
    ab = classifier.ablation(table, sets, n_folds=4, seed=1, iterations=40, depth=3)
    assert list(dict.fromkeys(ab["set"])) == [*sets, "strength-only", "majority"]
    assert set(ab.columns) >= {"set", "replays_judge", "n_features", "fold", "test_concepts", "macro_f1",
                               *(f"f1_{c}" for c in LABELS)}
    folds = classifier.concept_folds(table["concept"], 4, seed=1)
    for _, g in ab.groupby("set", sort=False):
        assert list(g["fold"]) == ["0", "1", "2", "3", "all"]
        assert list(g["test_concepts"][:4]) == [",".join(f) for f in folds]  # identical folds for every set
        assert g["n_rows"].iloc[-1] == len(table) and g["n_rows"].iloc[:4].sum() == len(table)
    n = ab.groupby("set", sort=False)["n_features"].first()
    assert n.to_dict() == {"steerboost": 2, "steerjax": 2, "judge-aware": 2, "steerboost+steerjax": 3,
                           "strength-only": 1, "majority": 0}
    assert ab.loc[ab.replays_judge, "set"].unique().tolist() == ["judge-aware"]
    pooled = ab[ab.fold == "all"].set_index("set")["macro_f1"]
    assert pooled["steerboost"] > pooled["strength-only"] + 0.1 and pooled["steerboost"] > pooled["majority"]
    # the pooled row of a set is evaluate's predictor score for those columns on the same folds
    ev = classifier.evaluate(table, feature_set="steerboost", folds=folds, iterations=40, depth=3, seed=1,
                             baselines=False, progress=False)
    assert ev.feature_set == "steerboost"
    assert ev.scores.set_index("model").loc["predictor", "macro_f1"] == pytest.approx(pooled["steerboost"])
    with pytest.raises(PredictorError, match="unknown feature set"):
        classifier.ablation(table, ["steerboost", "nope"], n_folds=4)
    with pytest.raises(PredictorError, match="non-empty list"):
        classifier.ablation(table, "steerboost", n_folds=4)
    with pytest.raises(PredictorError, match="exactly once"):
        classifier.ablation(table, ["steerjax"], folds=[["c0", "c1"], ["c2"]])


def test_fit_defaults_to_the_judge_independent_set():
    table = _set_table(n_concepts=4, n_prompts=3)
    m = classifier.fit(table, iterations=20, depth=3)
    assert m.feature_columns == ["strength", "sb_MagDiff_T0_L2_k1", "kl_next_k1"]
    assert m.meta["feature_set"] == "steerboost+steerjax+relative"
    aware = classifier.fit(table, iterations=20, depth=3, feature_set="steerjax+judge-aware")
    assert aware.feature_columns == ["strength", "kl_next_k1", "read_nll_k1"]
    ev = classifier.evaluate(table, n_folds=2, iterations=20, depth=3, progress=False)
    assert "read_nll_k1" not in set(ev.importance["feature"]) and ev.feature_set == "steerboost+steerjax+relative"
    assert classifier.feature_columns_of(table, feature_set="judge-aware") == ["strength", "read_nll_k1"]
    for bad in ("steerbost", "", "steerjax+judge", None):
        with pytest.raises(SteerjaxError, match="unknown feature set.*judge-aware.*steerboost.*steerjax"):
            classifier.fit(table, feature_set=bad)
    assert not F.replays_judge(F.DEFAULT_FEATURE_SET) and F.replays_judge("judge-aware+steerjax")
