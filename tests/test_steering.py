"""Steering correctness: against HF forward hooks and steering-vectors, batching, recompiles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from steering_vectors import SteeringVector, ablation_then_addition_operator

import steerjax
from steerjax.errors import LayerIndexError, SteeringError, SteerjaxError
from steerjax.model import _hidden, _logits

SEQ = [5, 17, 33, 9, 100, 42, 7, 88, 19, 61]


@pytest.fixture(scope="module")
def llama(tiny, tiny_model):
    return tiny_model("llama"), tiny("llama")[1]


def vector(d, seed=0, scale=2.0):
    return np.random.default_rng(seed).normal(size=d).astype(np.float32) * scale


def peer_logits(tm, ids, layer, vec, multiplier, *, min_token_index=0, operator=None):
    sv = SteeringVector(layer_activations={layer: torch.tensor(vec)}, layer_type="decoder_block")
    kw = {"operator": operator} if operator is not None else {}
    with sv.apply(tm, multiplier=multiplier, min_token_index=min_token_index, **kw), torch.no_grad():
        return tm(torch.tensor([ids])).logits[0].numpy()


def test_zero_steering_is_bit_identical(llama):
    model, _ = llama
    ids = np.array([SEQ, SEQ[::-1]])
    base = np.asarray(model.logits(ids))
    zero = np.asarray(model.logits(ids, steering=steerjax.Steering.zeros(model)))
    np.testing.assert_array_equal(base, zero)
    unused = steerjax.Steering.create(model, {1: vector(64)}, multipliers=0.0)
    np.testing.assert_array_equal(base, np.asarray(model.logits(ids, steering=unused)))
    hs = np.asarray(model.hidden_states(ids, steering=steerjax.Steering.zeros(model)))
    np.testing.assert_array_equal(np.asarray(model.hidden_states(ids)), hs)


@pytest.mark.parametrize("layer,start,mult", [(0, 0, 1.5), (1, 4, -3.0), (2, 7, 8.0)])
def test_add_matches_hook_and_steering_vectors(llama, layer, start, mult):
    model, tm = llama
    vec = vector(model.config.hidden_size, seed=layer)
    steer = steerjax.Steering.create(model, {layer: vec}, multipliers=mult, positions=start)
    ours = np.asarray(model.logits(np.array([SEQ]), steering=steer))[0]
    np.testing.assert_allclose(ours, peer_logits(tm, SEQ, layer, vec, mult, min_token_index=start), atol=1e-4, rtol=0)

    # the same through a plain forward hook on the block output
    def hook(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        out = out.clone()
        out[:, start:] += mult * torch.tensor(vec)
        return (out, *output[1:]) if isinstance(output, tuple) else out

    handle = tm.model.layers[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            ref = tm(torch.tensor([SEQ])).logits[0].numpy()
    finally:
        handle.remove()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    unsteered = np.asarray(model.logits(np.array([SEQ])))[0]
    np.testing.assert_array_equal(ours[:start], unsteered[:start])  # causal: earlier tokens untouched
    assert np.abs(ours[start:] - unsteered[start:]).max() > 1e-2


@pytest.mark.parametrize("mult", [1.0, -2.0, 4.0])
def test_ablate_then_add_matches_steering_vectors(llama, mult):
    model, tm = llama
    vec = vector(model.config.hidden_size, seed=3)
    steer = steerjax.Steering.create(model, {1: vec}, multipliers=mult, operator="ablate_then_add")
    ours = np.asarray(model.logits(np.array([SEQ]), steering=steer))[0]
    ref = peer_logits(tm, SEQ, 1, vec, mult, operator=ablation_then_addition_operator())
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_clamp_sets_one_sided_projection(llama):
    model, _ = llama
    vec = vector(model.config.hidden_size, seed=4)
    unit = vec / np.linalg.norm(vec)
    ids = np.array([SEQ])
    base = np.asarray(model.hidden_states(ids, layers=[1]))[0, 0]
    for mult in (3.0, -3.0):
        steer = steerjax.Steering.create(model, {1: vec}, multipliers=mult, operator="clamp")
        got = np.asarray(model.hidden_states(ids, layers=[1], steering=steer))[0, 0]
        proj = base @ unit
        target = mult * np.linalg.norm(vec)
        want_proj = np.maximum(proj, target) if mult >= 0 else np.minimum(proj, target)
        np.testing.assert_allclose(got @ unit, want_proj, atol=1e-4)
        np.testing.assert_allclose(got - np.outer(got @ unit, unit), base - np.outer(proj, unit), atol=1e-4)


def test_per_example_vectors_and_multipliers_equal_running_alone(llama):
    model, _ = llama
    d = model.config.hidden_size
    seqs = [SEQ, SEQ[3:] + [0, 0, 0], [9, 8, 7, 6, 5, 4, 3, 0, 0, 0]]
    mask = np.array([[1] * 10, [1] * 7 + [0] * 3, [1] * 7 + [0] * 3])
    vecs = np.stack([vector(d, s) for s in range(3)])
    mults = np.array([1.0, -2.5, 0.0], np.float32)
    starts = np.array([0, 3, 5])
    batch = steerjax.Steering.create(model, {1: vecs}, multipliers=mults, positions=starts)
    together = np.asarray(model.logits(np.array(seqs), mask, steering=batch))
    for i in range(3):
        n = mask[i].sum()
        alone = steerjax.Steering.create(model, {1: vecs[i]}, multipliers=mults[i], positions=int(starts[i]))
        single = np.asarray(model.logits(np.array([seqs[i][:n]]), steering=alone))[0]
        np.testing.assert_allclose(together[i, :n], single, atol=1e-5, rtol=0)


def test_new_multipliers_vectors_layers_and_positions_reuse_the_compiled_program(llama):
    model, _ = llama
    d = model.config.hidden_size
    ids = np.array([SEQ, SEQ[::-1]])
    first = steerjax.Steering.create(model, {0: vector(d, 0)}, multipliers=[1.0, 2.0])
    model.logits(ids, steering=first)
    model.hidden_states(ids, steering=first)
    sizes = (_logits._cache_size(), _hidden._cache_size())
    variants = [
        first.with_multipliers([-4.0, 0.5]),
        steerjax.Steering.create(model, {0: vector(d, 7)}, multipliers=[1.0, 2.0]),  # new vector
        steerjax.Steering.create(model, {2: vector(d, 1)}, multipliers=[3.0, 3.0]),  # other layer
        steerjax.Steering.create(model, {1: vector(d, 1), -1: vector(d, 2)}, multipliers=[1.0, 1.0]),
        first.with_positions([2, 5]),
    ]
    outs = [np.asarray(model.logits(ids, steering=s)) for s in variants]
    for s in variants:
        model.hidden_states(ids, steering=s, layers=[0, 2])
    assert (_logits._cache_size(), _hidden._cache_size()) == sizes
    assert not np.allclose(outs[0], outs[1])  # the variants really changed the computation


def test_steered_generation_matches_steering_vectors(llama):
    model, tm = llama
    vec = vector(model.config.hidden_size, seed=5, scale=3.0)
    prompt = [5, 17, 33, 9, 100]
    steer = steerjax.Steering.create(model, {1: vec}, multipliers=2.0)
    out = steerjax.generate(model, [prompt], steering=steer, max_new_tokens=12)
    sv = SteeringVector(layer_activations={1: torch.tensor(vec)}, layer_type="decoder_block")
    with sv.apply(tm, multiplier=2.0, min_token_index=0), torch.no_grad():
        ref = tm.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 5, dtype=torch.long),
                          max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 5:].numpy()
    n = out.lengths[0]
    np.testing.assert_array_equal(out.tokens[0, :n], ref[:n])
    plain = steerjax.generate(model, [prompt], max_new_tokens=12)
    assert not np.array_equal(plain.tokens, out.tokens)


def test_generation_with_per_example_steering_equals_alone(llama):
    model, _ = llama
    d = model.config.hidden_size
    prompts = [[5, 17, 33, 9, 100], [7, 8], [40, 41, 42, 43]]
    vecs = np.stack([vector(d, s, 3.0) for s in range(3)])
    mults = [2.0, -1.0, 0.0]
    steer = steerjax.Steering.create(model, {1: vecs}, multipliers=mults, positions="generated")
    together = steerjax.generate(model, prompts, steering=steer, max_new_tokens=10)
    for i, p in enumerate(prompts):
        alone = steerjax.Steering.create(model, {1: vecs[i]}, multipliers=mults[i], positions="generated")
        single = steerjax.generate(model, [p], steering=alone, max_new_tokens=10)
        np.testing.assert_array_equal(together.tokens[i], single.tokens[0])


def test_generated_positions_do_not_touch_the_prompt(llama):
    model, _ = llama
    steer = steerjax.Steering.create(model, {1: vector(64, 0, 5.0)}, multipliers=3.0, positions="generated")
    ids = np.array([SEQ])
    np.testing.assert_array_equal(np.asarray(model.logits(ids, steering=steer)), np.asarray(model.logits(ids)))


def test_sampling_is_reproducible_by_seed(llama):
    model, _ = llama
    kw = dict(max_new_tokens=15, temperature=1.0, top_p=0.9)
    a = steerjax.generate(model, [[5, 6, 7]], seed=3, **kw)
    b = steerjax.generate(model, [[5, 6, 7]], seed=3, **kw)
    c = steerjax.generate(model, [[5, 6, 7]], seed=4, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)


def test_top_k_keeps_the_k_most_likely_tokens_then_the_nucleus():
    """transformers' order: temperature, top-k, then top-p on the renormalised top k."""
    from steerjax.generate import sample

    logits = jnp.log(jnp.asarray([[0.05, 0.4, 0.3, 0.15, 0.1]], jnp.float32))
    keys = jax.random.split(jax.random.key(0), 400)

    def draws(top_p, top_k):
        return np.asarray(jax.vmap(lambda k: sample(logits, k, jnp.float32(1.0), jnp.float32(top_p),
                                                    jnp.int32(top_k)))(keys))[:, 0]

    assert set(draws(1.0, 2)) == {1, 2}  # the two most likely tokens only
    assert set(draws(1.0, 0)) == {0, 1, 2, 3, 4}  # 0: no limit
    assert set(draws(1.0, 1)) == {1}  # top_k=1 is greedy
    # top 3 renormalised: 0.47, 0.35, 0.18; top_p=0.8 keeps the first two (0.47 + 0.35 > 0.8)
    assert set(draws(0.8, 3)) == {1, 2}
    # without top-k, the nucleus of 0.8 needs tokens 1, 2, 3 (0.4 + 0.3 < 0.8)
    assert set(draws(0.8, 0)) == {1, 2, 3}


def test_generate_top_k(llama):
    model, _ = llama
    greedy = steerjax.generate(model, [[5, 6, 7]], max_new_tokens=6)
    one = steerjax.generate(model, [[5, 6, 7]], max_new_tokens=6, temperature=1.5, top_k=1, seed=2)
    np.testing.assert_array_equal(one.tokens, greedy.tokens)
    for bad in (-1, 2.5, True):
        with pytest.raises(SteerjaxError, match="top_k"):
            steerjax.generate(model, [[5, 6, 7]], max_new_tokens=2, top_k=bad)


def test_bad_steering_inputs_raise_clear_errors(llama):
    model, _ = llama
    d = model.config.hidden_size
    with pytest.raises(SteeringError, match="hidden size"):
        steerjax.Steering.create(model, {0: np.ones(d + 1)})
    with pytest.raises(SteeringError, match="finite"):
        steerjax.Steering.create(model, {0: np.ones(d)}, multipliers=float("nan"))
    with pytest.raises(SteeringError, match="finite"):
        steerjax.Steering.create(model, {0: np.ones(d)}).with_multipliers([1.0, float("inf")])
    with pytest.raises(LayerIndexError, match="out of range.*3 blocks"):
        steerjax.Steering.create(model, {3: np.ones(d)})
    with pytest.raises(LayerIndexError):
        steerjax.Steering.create(model, {-4: np.ones(d)})
    with pytest.raises(SteeringError, match="operator"):
        steerjax.Steering.create(model, {0: np.ones(d)}, operator="multiply")
    steer = steerjax.Steering.create(model, {0: np.ones((3, d))})
    with pytest.raises(SteeringError, match="batch size 3"):
        model.logits(np.array([SEQ, SEQ]), steering=steer)
    with pytest.raises(LayerIndexError):
        model.hidden_states(np.array([SEQ]), layers=[5])
    assert steerjax.Steering.create(model, {-1: np.ones(d)}).layers == [2]
