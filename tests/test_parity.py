"""Parity of every family with transformers PyTorch on tiny random models (fp32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import steerjax
from steerjax.data.batch import TokenBatch
from steerjax.models import KVCache, positions_from_mask
from steerjax.models import forward as _forward
from steerjax.models import unembed as _unembed
from tests.helpers import tiered
from tests.tiny_models import SPECS

# jitted as every entry point runs them (op by op, each step's dozens of primitives compile one by one)
forward = jax.jit(_forward, static_argnames=("cfg",))
unembed = jax.jit(_unembed, static_argnames=("cfg",))

FAMILIES = list(SPECS)
#: generation and caching in the developers' loop: rotary + RMSNorm, Gemma's norms/windows/soft-caps, GPT-2
FAST_FAMILIES = ("llama", "gemma3", "gpt2")
LENGTHS = (7, 12, 3)


def padded_batch(vocab, side, seed=0, *, batch=False):
    """Random rows of ``LENGTHS`` tokens: ``(ids, mask)`` int64 (as torch takes them), or the
    :class:`TokenBatch` itself with ``batch=True``."""
    rng = np.random.default_rng(seed)
    tokens = TokenBatch.pad([rng.integers(3, vocab, size=n) for n in LENGTHS], side=side)
    return tokens if batch else (tokens.ids.astype(np.int64), tokens.valid.astype(np.int64))


def torch_forward(tm, ids, mask, **kw):
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        return tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  position_ids=torch.tensor(pos), **kw)


def block_modules(tm):
    for base in (tm.base_model, getattr(tm, "model", None)):  # Gemma3ForCausalLM: base_model is itself
        for name in ("layers", "h"):
            if base is not None and hasattr(base, name):
                return list(getattr(base, name))
    raise AssertionError("no block list")


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_match_transformers(tiny, tiny_model, name, side):
    _, tm = tiny(name)
    model = tiny_model(name)
    ids, mask = padded_batch(model.config.vocab_size, side)
    ours = np.asarray(model.logits(ids, mask))
    np.testing.assert_array_equal(model.logits(padded_batch(model.config.vocab_size, side, batch=True)), ours)
    ref = torch_forward(tm, ids, mask).logits.numpy()
    valid = mask.astype(bool)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_hidden_states_match_every_layer(tiny, tiny_model, name):
    _, tm = tiny(name)
    model = tiny_model(name)
    ids, mask = padded_batch(model.config.vocab_size, "left", seed=1)
    captured = []
    hooks = [b.register_forward_hook(lambda m, i, o: captured.append((o[0] if isinstance(o, tuple) else o).numpy()))
             for b in block_modules(tm)]
    try:
        ref = torch_forward(tm, ids, mask, output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    ours = np.asarray(model.hidden_states(ids, mask))
    n = model.config.num_layers
    assert ours.shape == (n, *ids.shape, model.config.hidden_size)
    valid = mask.astype(bool)
    for layer in range(n):
        np.testing.assert_allclose(ours[layer][valid], captured[layer][valid], atol=1e-4, rtol=1e-5)
        if layer < n - 1:  # HF's last entry has the final norm applied
            np.testing.assert_allclose(ours[layer][valid], ref.hidden_states[layer + 1].numpy()[valid],
                                       atol=1e-4, rtol=1e-5)
    sel = np.asarray(model.hidden_states(ids, mask, layers=[-1, 0]))
    np.testing.assert_array_equal(sel, ours[[n - 1, 0]])


@pytest.mark.parametrize("name", tiered(FAMILIES, FAST_FAMILIES))
def test_greedy_generation_matches_transformers(tiny, tiny_model, name):
    _, tm = tiny(name)
    model = tiny_model(name)
    prompts = [[5, 17, 33, 9, 100, 42, 7], [11, 12, 13]]
    out = steerjax.generate(model, prompts, max_new_tokens=20)
    for row, n, prompt in zip(out.tokens, out.lengths, prompts):
        with torch.no_grad():
            ref = tm.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=20, do_sample=False, pad_token_id=0)[0, len(prompt):].numpy()
        assert n >= 1
        np.testing.assert_array_equal(row[:n], ref[:n])


@pytest.mark.parametrize("name", tiered(FAMILIES, FAST_FAMILIES))
def test_cached_decoding_equals_uncached(tiny_model, name):
    model = tiny_model(name)
    cfg, params = model.config, model.params
    ids, mask = padded_batch(cfg.vocab_size, "left", seed=2)
    ids, valid = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool)
    full = np.asarray(model.logits(ids, valid))
    pos = positions_from_mask(valid)
    b, t = ids.shape
    prefix = 6
    cache = KVCache.empty(cfg, b, t + 4)
    out = forward(params, cfg, ids[:, :prefix], positions=pos[:, :prefix], valid=valid[:, :prefix], cache=cache)
    steps = [np.asarray(unembed(params, cfg, out.hidden))]
    cache = out.cache
    for i in range(prefix, t):
        out = forward(params, cfg, ids[:, i:i + 1], positions=pos[:, i:i + 1], valid=valid[:, i:i + 1], cache=cache)
        cache = out.cache
        steps.append(np.asarray(unembed(params, cfg, out.hidden)))
    cached = np.concatenate(steps, axis=1)
    np.testing.assert_allclose(cached[mask.astype(bool)], full[mask.astype(bool)], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", tiered(["llama", "mistral", "gemma3", "gpt2"], FAST_FAMILIES))
def test_packed_prefix_continuations_equal_full_forward(tiny_model, name):
    """Several continuations packed in one row (segments) against a shared prefix cache give the
    logits of each full sequence run alone; sliding windows (mistral, gemma3) count positions."""
    model = tiny_model(name)
    cfg, params = model.config, model.params
    rng = np.random.default_rng(3)
    plen, lens = 7, [3, 5, 2, 4]
    prefix_ids = rng.integers(3, cfg.vocab_size, plen)
    conts = [rng.integers(3, cfg.vocab_size, n) for n in lens]
    tp, width = 8, 12  # prefix left-padded by one; two rows of width 12: [3, 5, 2 | 4]
    pre = TokenBatch.pad([prefix_ids], side="left", width=tp)
    cache = forward(params, cfg, jnp.asarray(pre.ids), positions=jnp.asarray(pre.positions),
                    valid=jnp.asarray(pre.valid), cache=KVCache.empty(cfg, 1, tp)).cache
    tok = np.zeros((2, width), np.int32)
    valid = np.zeros((2, width), bool)
    pos = np.zeros((2, width), np.int32)
    seg = np.full((2, width), -1, np.int32)
    where = {}
    for i, (row, off) in enumerate([(0, 0), (0, 3), (0, 8), (1, 0)]):
        n = lens[i]
        tok[row, off:off + n], valid[row, off:off + n] = conts[i], True
        pos[row, off:off + n], seg[row, off:off + n] = plen + np.arange(n), i
        where[i] = (row, off)
    out = forward(params, cfg, jnp.asarray(tok), positions=jnp.asarray(pos), valid=jnp.asarray(valid),
                  prefix=cache, segments=jnp.asarray(seg))
    packed = np.asarray(unembed(params, cfg, out.hidden))
    for i, c in enumerate(conts):
        full = np.asarray(model.logits(jnp.asarray(np.concatenate([prefix_ids, c])[None], jnp.int32)))[0, plen:]
        row, off = where[i]
        np.testing.assert_allclose(packed[row, off:off + lens[i]], full, atol=1e-4, rtol=0)
