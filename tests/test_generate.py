"""Generation that stops when every row has stopped: the same tokens as the plain scan over every
step (the implementation before early stopping, kept here as the reference), and one compiled
program for nearby ``max_new_tokens``."""

import dataclasses
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import steerjax
from steerjax.data.batch import GENERATION, TokenBatch, encode
from steerjax.models.transformer import KVCache, forward, param_dtype, unembed

gen = importlib.import_module("steerjax.generate")  # the module (steerjax.generate is also the function)

# ----------------------------------------------------------------------------- the reference


def _reference_sample(logits, key, temperature, top_p, top_k):
    """``steerjax.generate.sample`` before per-row options (one key, scalar options)."""

    def nucleus(logits):
        scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
        order = jnp.argsort(-scaled, axis=-1)
        rank = jnp.arange(logits.shape[-1])[None, :]
        in_top_k = (top_k <= 0) | (rank < top_k)
        sorted_logits = jnp.where(in_top_k, jnp.take_along_axis(scaled, order, axis=-1), -jnp.inf)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        keep = in_top_k & ((jnp.cumsum(probs, axis=-1) - probs) < top_p)
        choice = jax.random.categorical(key, jnp.where(keep, sorted_logits, -jnp.inf), axis=-1)
        return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)

    return jax.lax.cond(temperature > 0, nucleus, lambda lg: jnp.argmax(lg, axis=-1).astype(jnp.int32), logits)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "pad_id"))
def _reference_scan(params, cfg, batch, steering, key, temperature, top_p, top_k, *, max_new_tokens, pad_id):
    """The decode loop before early stopping: a ``lax.scan`` over all ``max_new_tokens`` steps."""
    b, t = batch.ids.shape
    lengths = batch.lengths
    cache = KVCache.empty(cfg, b, t + max_new_tokens, param_dtype(params))
    out = forward(params, cfg, batch.ids, positions=batch.positions, valid=batch.valid,
                  steering=steering, generation_start=lengths, cache=cache)
    keys = jax.random.split(key, max_new_tokens)
    first = _reference_sample(unembed(params, cfg, out.hidden[:, -1]), keys[0], temperature, top_p, top_k)
    eos = jnp.asarray(cfg.eos_token_ids or (-1,), jnp.int32)

    def step(carry, key):
        cache, tok, pos, done = carry
        o = forward(params, cfg, tok[:, None], positions=pos[:, None], valid=jnp.ones((b, 1), bool),
                    steering=steering, generation_start=lengths, cache=cache)
        nxt = _reference_sample(unembed(params, cfg, o.hidden[:, -1]), key, temperature, top_p, top_k)
        done = done | jnp.isin(tok, eos)
        nxt = jnp.where(done, pad_id, nxt)
        return (o.cache, nxt, pos + 1, done), nxt

    _, rest = jax.lax.scan(step, (out.cache, first, lengths, jnp.zeros((b,), bool)), keys[1:])
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def reference(model, prompts, *, steering=None, max_new_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0):
    batch = TokenBatch.pad(prompts, side="left", buckets=GENERATION)
    return np.asarray(_reference_scan(model.params, model.config, batch, steering, jax.random.key(seed),
                                      jnp.float32(temperature), jnp.float32(top_p), jnp.int32(top_k),
                                      max_new_tokens=max_new_tokens, pad_id=gen.pad_id(model.config)))


PROMPTS = [[5, 17, 33, 9, 100], [7, 8], [40, 41, 42, 43], [3] * 20, [200, 201, 1]]


@pytest.fixture(scope="module")
def stopping(tiny_model):
    """The tiny Llama with EOS ids chosen from its own greedy answers, so that rows stop at
    different steps (a random model rarely produces its configured EOS)."""
    model = tiny_model("llama")
    plain = reference(model, PROMPTS, max_new_tokens=40)
    eos = (int(plain[0, 6]), int(plain[2, 17]))
    return dataclasses.replace(model, config=dataclasses.replace(model.config, eos_token_ids=eos))


def steering_for(model, n, seed=0):
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, model.config.hidden_size)).astype(np.float32) * 3
    return steerjax.Steering.create(model, {1: vecs}, multipliers=np.linspace(-2, 2, n), positions="generated")


# ----------------------------------------------------------------------------- equal to the plain scan


@pytest.mark.parametrize("kw", [
    {},
    {"temperature": 1.0, "top_p": 0.9, "seed": 3},
    {"temperature": 0.7, "top_k": 5, "seed": 11},
    {"steered": True},
    {"steered": True, "temperature": 1.2, "seed": 5},
])
def test_early_stop_gives_the_scans_tokens(stopping, kw):
    kw = dict(kw)
    steering = steering_for(stopping, len(PROMPTS)) if kw.pop("steered", False) else None
    for m in (1, 13, 40):
        ref = reference(stopping, PROMPTS, steering=steering, max_new_tokens=m, **kw)
        out = steerjax.generate(stopping, PROMPTS, steering=steering, max_new_tokens=m, **kw)
        np.testing.assert_array_equal(out.tokens, ref)
        eos = np.isin(ref, stopping.config.eos_token_ids)
        want = np.where(eos.any(1), eos.argmax(1) + 1, m)
        np.testing.assert_array_equal(out.lengths, want)
    # some rows stop early (the masking is exercised); greedy unsteered rows stop at several steps
    assert (out.lengths < 40).any()
    if not kw and steering is None:
        assert len(set(out.lengths.tolist())) >= 3 and (out.lengths == 40).any()


def test_texts_equal_the_scans(tinystories):
    prompts = ["Once upon a time", "The dog", "Lily and Tom went to the park. They"]
    ids = encode(tinystories, prompts)
    for kw in ({}, {"temperature": 1.0, "top_p": 0.95, "seed": 7}):
        out = steerjax.generate(tinystories, prompts, max_new_tokens=48, **kw)
        ref = reference(tinystories, ids, max_new_tokens=48, **kw)
        np.testing.assert_array_equal(out.tokens, ref)
        texts = [tinystories.tokenizer.decode(r[:n].tolist(), skip_special_tokens=True)
                 for r, n in zip(ref, out.lengths)]
        assert out.texts == texts


def test_the_loop_exits_when_every_row_has_stopped(stopping):
    """The steps the compiled loop ran: once both rows have stopped (at EOS), the loop leaves
    within a chunk, not at the bucket's 128 columns."""
    short = [PROMPTS[0], PROMPTS[2]]
    out = steerjax.generate(stopping, short, max_new_tokens=100)
    last = int(out.lengths.max())
    assert last <= 20 and (out.tokens[:, last:] == gen.pad_id(stopping.config)).all()
    np.testing.assert_array_equal(out.tokens, reference(stopping, short, max_new_tokens=100))
    batch = TokenBatch.pad(short, side="left", buckets=GENERATION)
    _, steps = gen._generate(stopping.params, stopping.config, batch, None, jax.random.key(0), jnp.float32(0),
                             jnp.float32(1), jnp.int32(0), jnp.int32(100), width=gen.output_width(100),
                             pad_id=gen.pad_id(stopping.config), chunk=gen.CHUNK)
    assert last <= int(steps) < last + gen.CHUNK
    # a row that never stops runs to its limit (traced), not to the bucket's width
    _, steps = gen._generate(stopping.params, stopping.config, batch, None, jax.random.key(0), jnp.float32(0),
                             jnp.float32(1), jnp.int32(0), jnp.int32(5), width=gen.output_width(100),
                             pad_id=gen.pad_id(stopping.config), chunk=gen.CHUNK)
    assert 5 <= int(steps) < 5 + gen.CHUNK


def test_the_cache_grows_with_the_answers(stopping):
    """Rows that run to 100 tokens decode in all three segments of a 129-token program (the
    cache grows from 33 to 65 to 129 slots past the prompt): the tokens equal the single-cache
    scan's, greedy and sampled. The segment ends stay on chunk boundaries for any chunk size."""
    assert gen.segment_ends(gen.output_width(256)) == [33, 65, 129, 257]
    assert gen.segment_ends(gen.output_width(100)) == [33, 65, 129]
    assert gen.segment_ends(gen.output_width(20)) == [33]
    assert all((e - 1) % 5 == 0 for e in gen.segment_ends(gen.output_width(200, chunk=5), chunk=5))
    endless = dataclasses.replace(stopping, config=dataclasses.replace(stopping.config, eos_token_ids=()))
    for kw in ({}, {"temperature": 1.0, "top_k": 7, "seed": 2}):
        out = steerjax.generate(endless, PROMPTS, max_new_tokens=100, **kw)
        np.testing.assert_array_equal(out.tokens, reference(endless, PROMPTS, max_new_tokens=100, **kw))
        assert (out.lengths == 100).all()


def test_nearby_limits_share_one_program(stopping):
    gen._generate.clear_cache()
    for m in (3, 9, 17, 30, 32):
        steerjax.generate(stopping, PROMPTS[:2], max_new_tokens=m)
    assert gen._generate._cache_size() == 1
    steerjax.generate(stopping, PROMPTS[:2], max_new_tokens=33)  # the next bucket
    assert gen._generate._cache_size() == 2
    compiles = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for m in (40, 50, 64):
            steerjax.generate(stopping, PROMPTS[:2], max_new_tokens=m)
    finally:
        jax.monitoring.clear_event_listeners()
    assert compiles == []


def test_token_buckets():
    assert [gen.token_bucket(m) for m in (1, 32, 33, 64, 65, 256, 257)] == [32, 32, 64, 64, 128, 256, 512]
    assert gen.output_width(32) == 1 + 32 and gen.output_width(48) == 1 + 64
    assert (gen.output_width(100) - 1) % gen.CHUNK == 0


# ----------------------------------------------------------------------------- per-row pieces


def test_per_row_keys_and_options_match_rows_alone(stopping):
    """``sample`` with one key and option per row gives each row the token of that row alone."""
    logits = jax.random.normal(jax.random.key(0), (4, 50)) * 3
    keys = jax.random.split(jax.random.key(1), 4)
    temps = jnp.asarray([0.0, 1.0, 0.5, 2.0])
    top_p = jnp.asarray([1.0, 0.9, 0.5, 1.0])
    top_k = jnp.asarray([0, 0, 3, 10], jnp.int32)
    together = np.asarray(gen.sample(logits, keys, temps, top_p, top_k))
    for r in range(4):
        alone = gen.sample(logits[r:r + 1], keys[r], temps[r], top_p[r], top_k[r])
        assert together[r] == int(alone[0])


def test_step_keys_are_generates_keys():
    keys = jax.random.split(jax.random.key(9), 3)
    n = jnp.asarray([0, 5, 17], jnp.int32)
    got = gen.step_keys(keys, n, 4, 64)  # [4, 3]
    for r in range(3):
        want = jax.random.split(keys[r], 30)[int(n[r]):int(n[r]) + 4]
        np.testing.assert_array_equal(jax.random.key_data(got[:, r]), jax.random.key_data(want))


def test_eos_lengths():
    t = np.array([[1, 2, 9, 0], [1, 1, 1, 1], [9, 0, 0, 0]])
    np.testing.assert_array_equal(gen.eos_lengths(t, (9,)), [3, 4, 1])
    np.testing.assert_array_equal(gen.eos_lengths(t, ()), [4, 4, 4])
