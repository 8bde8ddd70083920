"""Batched, jit-compiled, KV-cached generation with per-example steering."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from steerjax import sharding as shd
from steerjax.data.batch import GENERATION, TokenBatch, encode
from steerjax.errors import ContextLengthError, SteerjaxError
from steerjax.models.transformer import KVCache, forward, param_dtype, unembed
from steerjax.steering.core import Steering


@dataclasses.dataclass
class GenerationOutput:
    """``tokens [B, max_new_tokens]`` (after the first EOS: the pad id), ``lengths [B]`` (new
    tokens up to and including EOS), ``texts`` (decoded, special tokens skipped; None without a
    tokenizer) and the tokenized prompts."""

    tokens: np.ndarray
    lengths: np.ndarray
    texts: list[str] | None
    prompt_tokens: list[list[int]]


def generate(
    model,
    prompts,
    *,
    steering: Steering | None = None,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    mesh=None,
) -> GenerationOutput:
    """Generate ``max_new_tokens`` for a batch of prompts in one compiled program.

    Prompts are left-padded to a multiple of 16 tokens (:data:`steerjax.data.batch.GENERATION`),
    so similar lengths share a compile.
    ``steering`` may hold one vector/multiplier per example; ``positions="generated"`` steers
    only generated tokens. ``temperature=0`` is greedy decoding; otherwise sampling from
    ``jax.random.key(seed)`` in transformers' order: temperature, then the ``top_k`` most likely
    tokens (``0``: all), then the nucleus ``top_p`` of what is left. ``mesh`` (:func:`steerjax.sharding.make_mesh`):
    prompts split over its ``data`` axis (the batch padded to a multiple of it), parameters over
    ``model``; default one device.
    """
    cfg = model.config
    mesh = shd.default_mesh(mesh)
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise SteerjaxError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not (np.isfinite(temperature) and temperature >= 0):
        raise SteerjaxError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise SteerjaxError(f"top_p must be in (0, 1], got {top_p}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise SteerjaxError(f"top_k must be an int >= 0 (0: no limit), got {top_k!r}")
    ids = encode(model, prompts)
    longest = max(len(x) for x in ids)
    if longest + max_new_tokens > cfg.max_position_embeddings:
        raise ContextLengthError(
            f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the model's context "
            f"of {cfg.max_position_embeddings}"
        )
    if any(i < 0 or i >= cfg.vocab_size for x in ids for i in x):
        raise SteerjaxError(f"token ids must be in [0, {cfg.vocab_size})")
    b = len(ids)
    if steering is not None:
        steering.check(cfg, b)
    batch = TokenBatch.pad(ids, side="left", buckets=GENERATION)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_ids or (0,))[0]
    params = model.params if mesh is None else shd.shard_params(model.params, cfg, mesh)
    batch, steering = shd.put_batch((batch, steering), mesh)
    out = _generate(
        params, cfg, batch, steering, jax.random.key(seed), jnp.float32(temperature), jnp.float32(top_p),
        jnp.int32(top_k),
        max_new_tokens=int(max_new_tokens), pad_id=int(pad),
    )
    new, lengths = (shd.to_host(x)[:b] for x in out)  # [:b]: drop mesh padding
    texts = None
    if model.tokenizer is not None:
        texts = [model.tokenizer.decode(row[:n].tolist(), skip_special_tokens=True) for row, n in zip(new, lengths)]
    return GenerationOutput(new, lengths, texts, ids)


def sample(logits, key, temperature, top_p, top_k=0):
    """Greedy when ``temperature == 0``, else sampling: temperature, then the ``top_k`` most likely
    tokens (``0``: all), then the nucleus ``top_p`` of their renormalised probabilities
    (transformers' order). logits: [B, V] float32; ``top_k`` may be traced.

    A ``lax.cond`` on the traced temperature: greedy decoding never pays for the vocabulary sort
    and the random draws (on CPU they cost more than the rest of a decoding step at batch 32).
    """

    def nucleus(logits):
        scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
        order = jnp.argsort(-scaled, axis=-1)
        rank = jnp.arange(logits.shape[-1])[None, :]
        in_top_k = (top_k <= 0) | (rank < top_k)
        sorted_logits = jnp.where(in_top_k, jnp.take_along_axis(scaled, order, axis=-1), -jnp.inf)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        keep = in_top_k & ((jnp.cumsum(probs, axis=-1) - probs) < top_p)  # always keeps the top token
        choice = jax.random.categorical(key, jnp.where(keep, sorted_logits, -jnp.inf), axis=-1)
        return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)

    def greedy(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, nucleus, greedy, logits)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "pad_id"))
def _generate(params, cfg, batch, steering, key, temperature, top_p, top_k, *, max_new_tokens, pad_id):
    b, t = batch.ids.shape
    dtype = param_dtype(params)
    lengths = batch.lengths
    cache = KVCache.empty(cfg, b, t + max_new_tokens, dtype)
    out = forward(params, cfg, batch.ids, positions=batch.positions, valid=batch.valid,
                  steering=steering, generation_start=lengths, cache=cache)
    keys = jax.random.split(key, max_new_tokens)
    first = sample(unembed(params, cfg, out.hidden[:, -1]), keys[0], temperature, top_p, top_k)
    eos = jnp.asarray(cfg.eos_token_ids or (-1,), jnp.int32)

    def step(carry, key):
        cache, tok, pos, done = carry
        o = forward(params, cfg, tok[:, None], positions=pos[:, None], valid=jnp.ones((b, 1), bool),
                    steering=steering, generation_start=lengths, cache=cache)
        nxt = sample(unembed(params, cfg, o.hidden[:, -1]), key, temperature, top_p, top_k)
        done = done | jnp.isin(tok, eos)
        nxt = jnp.where(done, pad_id, nxt)
        return (o.cache, nxt, pos + 1, done), nxt

    init = (out.cache, first, lengths, jnp.zeros((b,), bool))
    _, rest = jax.lax.scan(step, init, keys[1:])
    new = jnp.concatenate([first[:, None], rest.T], axis=1)
    is_eos = jnp.isin(new, eos)
    first_eos = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, max_new_tokens)
    return new, first_eos
