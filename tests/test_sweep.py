"""The sweep engine: parity with the steering-vectors loop, layer sweeps, compiles, resume, errors."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from steering_vectors import SteeringVector, ablation_then_addition_operator

import steerjax
from steerjax import sweeps as sweep_mod
from steerjax.data import DataError, Encoded, Example, encode
from steerjax.errors import SteeringError, TokenizerError
from steerjax.runs import RunConfigError
from steerjax.sweeps import sweep

MULTS = [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]


def story_examples(n=9):
    things = ["cat", "dog", "bird", "little girl", "big tree", "boat", "sun", "princess", "frog", "king", "car"]
    out = [Example(f"Once upon a time there was a {w}. Was it happy?\n(A) yes\n(B) no\nAnswer:", " (A)", " (B)",
                   {"positive_letter": "A", "thing": w}) for w in things[:n]]
    if n > 3:  # completions of different lengths
        out[3] = Example(out[3].prompt, " yes", " no and then", {"positive_letter": None, "thing": "odd lengths"})
    return out


def peer_propensities(tm, tok, examples, layer, vec, mults, *, positions="completion", operator=None, logits=False):
    """The reference loop: steering-vectors + transformers, batch size 1, one pass per completion.

    ``positions``: ``"completion"`` steers from the first completion token (min_token_index =
    prompt length), ``"last_prompt"`` from the last prompt token (repepo's
    skip_first_n_generation_tokens=0), ``"all"`` from the first token. With ``logits`` the
    summed raw logits are returned beside the log-probs (``[..., 2, 2]``).
    """
    sv = SteeringVector(layer_activations={layer: torch.tensor(vec)}, layer_type="decoder_block")
    kw = {} if operator is None else {"operator": operator}
    out = np.zeros((len(examples), len(mults), 2, 2))
    for i, ex in enumerate(examples):
        e = ex if isinstance(ex, Encoded) else encode(tok, ex)
        start = {"completion": len(e.prompt), "last_prompt": len(e.prompt) - 1, "all": 0}[positions]
        for j, m in enumerate(mults):
            for s, c in enumerate((e.positive, e.negative)):
                with sv.apply(tm, multiplier=float(m), min_token_index=start, **kw), torch.no_grad():
                    raw = tm(torch.tensor([e.prompt + c])).logits[0].double()
                logp = torch.log_softmax(raw, -1)
                at = [(len(e.prompt) - 1 + k, c[k]) for k in range(len(c))]
                out[i, j, s] = sum(logp[p, t].item() for p, t in at), sum(raw[p, t].item() for p, t in at)
    return out if logits else out[..., 0]


@pytest.fixture(scope="module")
def stories(tinystories, tinystories_torch):
    return tinystories, tinystories_torch


def as_array(df, n, n_mult):
    df = df.sort_values(["example", "multiplier"])
    return np.stack([df.logp_positive.to_numpy(), df.logp_negative.to_numpy()], -1).reshape(n, n_mult, 2)


@pytest.mark.slow  # the tiny random Llama sweep parity below stays in the fast tier
@pytest.mark.parametrize("positions", ["completion", "last_prompt", "all"])
def test_sweep_matches_steering_vectors_loop(stories, positions):
    model, tm = stories
    examples = story_examples()
    vec = np.random.default_rng(0).normal(size=model.config.hidden_size).astype(np.float32) * 2
    df = sweep(model, examples, {1: vec}, layers=[1], multipliers=MULTS, positions=positions, progress=False)
    assert len(df) == len(examples) * len(MULTS)
    ref = peer_propensities(tm, model.tokenizer, examples, 1, vec, MULTS, positions=positions, logits=True)
    ours = as_array(df, len(examples), len(MULTS))
    np.testing.assert_allclose(ours, ref[..., 0], atol=1e-3, rtol=0)
    raw = df.sort_values(["example", "multiplier"])[["logit_positive", "logit_negative"]].to_numpy()
    np.testing.assert_allclose(raw.reshape(ref[..., 1].shape), ref[..., 1], atol=2e-3, rtol=0)
    np.testing.assert_allclose(df.propensity, df.logp_positive - df.logp_negative)
    np.testing.assert_allclose(df.prob_positive, 1 / (1 + np.exp(-df.propensity)))
    assert (df.correct == (df.propensity > 0)).all()
    assert df.propensity.max() - df.propensity.min() > 1.0  # the vector really steers
    assert set(df.thing) == {e.meta["thing"] for e in examples}  # meta carried into the table


def test_ablate_then_add_matches_steering_vectors(stories):
    model, tm = stories
    examples = story_examples(4)
    vec = np.random.default_rng(1).normal(size=model.config.hidden_size).astype(np.float32)
    mults = [-1.0, 1.0, 2.0]
    df = sweep(model, examples, vec, layers=[0], multipliers=mults, operator="ablate_then_add", progress=False)
    ref = peer_propensities(tm, model.tokenizer, examples, 0, vec, mults, operator=ablation_then_addition_operator())
    np.testing.assert_allclose(as_array(df, 4, 3), ref, atol=1e-3, rtol=0)


def test_layer_sweep_equals_one_layer_at_a_time_and_chunking_is_invisible(stories):
    model, _ = stories
    examples = story_examples()
    rng = np.random.default_rng(2)
    vecs = {0: rng.normal(size=128).astype(np.float32), 1: rng.normal(size=128).astype(np.float32)}
    both = sweep(model, examples, vecs, layers=[1, 0], multipliers=[-1.0, 2.0], progress=False, batch_size=4)
    for layer in (0, 1):
        one = sweep(model, examples, vecs, layers=[layer], multipliers=[-1.0, 2.0], progress=False)
        part = both[both.layer == layer].reset_index(drop=True)
        np.testing.assert_allclose(part.propensity, one.propensity, atol=1e-4, rtol=0)
    assert both.groupby("example").size().eq(4).all()


def test_new_vectors_and_multipliers_reuse_the_compiled_program(stories):
    model, _ = stories
    examples = story_examples(4)
    rng = np.random.default_rng(3)
    sweep(model, examples, rng.normal(size=128), layers=[1], multipliers=MULTS, progress=False)
    size = sweep_mod._score._cache_size()
    a = sweep(model, examples, rng.normal(size=128), layers=[1], multipliers=MULTS, progress=False)
    b = sweep(model, examples, rng.normal(size=128), layers=[0], multipliers=[m * 3 for m in MULTS], progress=False)
    assert sweep_mod._score._cache_size() == size
    assert not np.allclose(a.propensity, b.propensity)


def test_resume_recomputes_only_unfinished_chunks(stories, tmp_path, monkeypatch):
    model, _ = stories
    examples = story_examples()
    vec = np.random.default_rng(4).normal(size=128)
    run = str(tmp_path / "run")
    kw = dict(layers=[1], multipliers=[-1.0, 1.0], progress=False, batch_size=3, run_dir=run)
    full = sweep(model, examples, vec, **kw)
    # simulate a kill after the first chunk: its manifest line and the later chunk files are gone
    with open(os.path.join(run, "manifest.jsonl")) as f:
        lines = f.readlines()
    n_chunks = len(lines)  # 9 examples in chunks of at most 3 (per prompt-length bucket)
    assert n_chunks >= 3
    with open(os.path.join(run, "manifest.jsonl"), "w") as f:
        f.write(lines[0] + lines[1][: len(lines[1]) // 2])  # the second line was cut mid-write
    os.remove(os.path.join(run, "chunks", f"{n_chunks - 1:05d}.parquet"))
    calls = []
    real = sweep_mod._score_chunk
    monkeypatch.setattr(sweep_mod, "_score_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = sweep(model, examples, vec, **kw)
    assert len(calls) == n_chunks - 1  # every chunk after the first redone, chunk 0 read back
    pd.testing.assert_frame_equal(full, again)
    with pytest.raises(RunConfigError, match="multipliers"):
        sweep(model, examples, vec, **dict(kw, multipliers=[-2.0, 2.0]))


def test_bad_sweep_input(stories):
    model, _ = stories
    examples = story_examples(3)
    with pytest.raises(SteeringError, match="hidden size is 128"):
        sweep(model, examples, np.ones(64), layers=[1], multipliers=[1.0], progress=False)
    with pytest.raises(SteeringError, match=r"no direction for layer\(s\) \[0\]"):
        sweep(model, examples, {1: np.ones(128)}, layers=[0], multipliers=[1.0], progress=False)
    with pytest.raises(SteeringError, match="finite"):
        sweep(model, examples, np.ones(128), layers=[1], multipliers=[float("nan")], progress=False)
    with pytest.raises(SteeringError, match="positions"):
        sweep(model, examples, np.ones(128), layers=[1], multipliers=[1.0], positions="prompt", progress=False)
    with pytest.raises(DataError, match="same tokens"):
        sweep(model, [("Hi", " (A)\u2603", " (A)\u2604")], np.ones(128), layers=[1], multipliers=[1.0], progress=False)
    with pytest.raises(DataError, match="empty"):
        sweep(model, [], np.ones(128), layers=[1], multipliers=[1.0], progress=False)
    with pytest.raises(steerjax.errors.LayerIndexError):
        sweep(model, examples, np.ones(128), layers=[5], multipliers=[1.0], progress=False)


def test_text_examples_need_a_tokenizer(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(TokenizerError):
        sweep(model, [("a", "b", "c")], np.ones(64), layers=[0], multipliers=[1.0], progress=False)


@pytest.mark.slow
@pytest.mark.requires_smollm2
def test_smollm2_sweep_matches_steering_vectors_loop(smollm2, smollm2_torch):
    """4 examples x 3 multipliers on the real chat model (corrigible-neutral-HHH when STEERJAX_DATA is set)."""
    model, tm = smollm2, smollm2_torch
    if os.environ.get("STEERJAX_DATA"):
        from steerjax.data import load_dataset

        examples = load_dataset("corrigible-neutral-HHH", split="90%:100%", max_examples=4)
    else:
        examples = [Example(({"role": "user", "content": f"Question {i}: may we change your goal?\n\nChoices:\n"
                                                           " (A) Yes.\n (B) No."},), "(A)", "(B)") for i in range(4)]
    vec = np.random.default_rng(5).normal(size=576).astype(np.float32) * 4
    mults = [-1.5, 0.0, 1.5]
    df = sweep(model, examples, {13: vec}, layers=[13], multipliers=mults, progress=False)
    ref = peer_propensities(tm, model.tokenizer, examples, 13, vec, mults)  # steering-bench: from the completion
    ours = as_array(df, len(examples), len(mults))
    np.testing.assert_allclose(ours[..., 0] - ours[..., 1], ref[..., 0] - ref[..., 1], atol=1e-3, rtol=0)
    assert df.propensity.max() - df.propensity.min() > 0.5


def test_tiny_random_llama_sweep_matches_steering_vectors_loop(tiny, tiny_model):
    """Token-id examples on a tokenizer-less tiny random Llama: 8 examples x 7 multipliers."""
    from steerjax.data import Encoded

    _, tm = tiny("llama")
    model = tiny_model("llama")
    rng = np.random.default_rng(6)
    examples = [Encoded(rng.integers(3, 256, size=int(rng.integers(5, 20))).tolist(), [40, 41, 42], [50, 51])
                for _ in range(8)]
    vec = rng.normal(size=64).astype(np.float32)
    df = sweep(model, examples, {1: vec}, layers=[1], multipliers=MULTS, progress=False)
    ref = peer_propensities(tm, None, examples, 1, vec, MULTS)
    ours = as_array(df, len(examples), len(MULTS))
    np.testing.assert_allclose(ours[..., 0] - ours[..., 1], ref[..., 0] - ref[..., 1], atol=1e-3, rtol=0)
    assert df.propensity.max() - df.propensity.min() > 0.5


def test_last_prompt_positions_and_logit_propensity_match_the_reference_loop(tiny, tiny_model):
    """repepo's protocol: steering from the last prompt token on, propensity = summed raw logits."""
    _, tm = tiny("llama")
    model = tiny_model("llama")
    rng = np.random.default_rng(7)
    examples = [Encoded(rng.integers(3, 256, size=int(rng.integers(2, 40))).tolist(), [40, 41, 42], [50])
                for _ in range(5)]
    vec = rng.normal(size=64).astype(np.float32) * 3
    mults = [-1.5, 0.0, 1.5]
    df = sweep(model, examples, {1: vec}, layers=[1], multipliers=mults, positions="last_prompt",
               propensity="logit", progress=False)
    ref = peer_propensities(tm, None, examples, 1, vec, mults, positions="last_prompt", logits=True)
    df = df.sort_values(["example", "multiplier"])
    np.testing.assert_allclose(df.propensity.to_numpy().reshape(5, 3), ref[..., 0, 1] - ref[..., 1, 1], atol=2e-3)
    np.testing.assert_allclose(as_array(df, 5, 3), ref[..., 0], atol=1e-3, rtol=0)
    np.testing.assert_allclose(df.prob_positive, 1 / (1 + np.exp(-(df.logp_positive - df.logp_negative))))
    # the last prompt token is steered: it moves the first completion token, unlike "completion"
    comp = sweep(model, examples, {1: vec}, layers=[1], multipliers=mults, propensity="logit", progress=False)
    comp = comp.sort_values(["example", "multiplier"])
    assert np.abs(comp.logp_positive.to_numpy() - df.logp_positive.to_numpy()).max() > 1e-2
    np.testing.assert_allclose(comp[comp.multiplier == 0].logp_positive, df[df.multiplier == 0].logp_positive,
                               atol=1e-4)


@pytest.mark.parametrize("positions", ["completion", "last_prompt", "all"])
def test_named_vectors_equal_one_sweep_per_vector(tiny_model, positions):
    """Several named vectors share each example's prompt; each equals its own sweep."""
    model = tiny_model("llama")
    rng = np.random.default_rng(8)
    examples = [Encoded(rng.integers(3, 256, size=int(rng.integers(3, 30))).tolist(), [40, 41], [50])
                for _ in range(5)]
    vecs = {name: {0: rng.normal(size=64).astype(np.float32), 1: rng.normal(size=64).astype(np.float32)}
            for name in ("zeta", "alpha", "mid")}
    both = sweep(model, examples, vecs, layers=[1, 0], multipliers=[-1.0, 0.0, 2.0], positions=positions,
                 propensity="logit", progress=False, batch_size=2)
    assert list(both.columns[:4]) == ["example", "vector", "layer", "multiplier"]
    assert list(both.vector.drop_duplicates()) == ["zeta", "alpha", "mid"]  # the given order
    for name, vec in vecs.items():
        one = sweep(model, examples, vec, layers=[1, 0], multipliers=[-1.0, 0.0, 2.0], positions=positions,
                    propensity="logit", progress=False)
        part = both[both.vector == name].drop(columns="vector").reset_index(drop=True)
        pd.testing.assert_frame_equal(part, one, atol=1e-4, rtol=0)
    with pytest.raises(SteeringError, match="vector 'alpha'.*no direction for layer"):
        sweep(model, examples, {"zeta": vecs["zeta"], "alpha": {0: vecs["alpha"][0]}}, layers=[1],
              multipliers=[1.0], progress=False)
    with pytest.raises(SteeringError, match="all layers .* or all names"):
        sweep(model, examples, {0: vecs["zeta"][0], "alpha": vecs["alpha"][0]}, layers=[0], multipliers=[1.0],
              progress=False)
