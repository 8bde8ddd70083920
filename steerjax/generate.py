"""Batched, jit-compiled, KV-cached generation with per-example steering.

Decoding runs in chunks of :data:`CHUNK` steps inside a ``lax.while_loop`` that exits once every
row has stopped (end of sequence, or its token limit): a batch whose answers end at 24 tokens
costs about 24 steps whatever ``max_new_tokens`` says. The limit is a traced argument; only the
output and cache widths are static, bucketed by :func:`token_bucket` (powers of two from
:data:`MIN_BUCKET`), so nearby values of ``max_new_tokens`` share one compiled program. The KV cache grows with the
answers (:func:`segment_ends`): a step attends over the slots the longest running row needs, so a
batch costs what its answers cost, not what ``max_new_tokens`` allows.

The pieces are public for the other decode loops (the server, :mod:`steerjax.serve`):
:class:`DecodeState` (the loop's carry), :func:`decode_chunk` (``C`` steps of it), :func:`sample`
(one token per row, sampling options shared or per row, one key shared or one per row) and
:func:`step_keys` (each row's key for its ``n``-th token).

Axes: ``B`` rows, ``T`` prompt width, ``C`` steps per chunk, ``W`` output width, ``V`` vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from steerjax import sharding as shd
from steerjax.data.batch import GENERATION, TokenBatch, encode, pow2, round_up
from steerjax.errors import ContextLengthError, SteerjaxError
from steerjax.models.transformer import KVCache, forward, param_dtype, unembed
from steerjax.steering.core import Steering

#: decoding steps per chunk: the loop checks whether every row has stopped once per chunk (a
#: finished batch runs at most ``CHUNK - 1`` steps more than its longest answer)
CHUNK = 8
#: the smallest output width (new tokens) a compiled program is built for
MIN_BUCKET = 32


def token_bucket(max_new_tokens: int) -> int:
    """The static output width for ``max_new_tokens``: the next power of two, at least
    :data:`MIN_BUCKET` (1..32 share one program, 33..64 the next, ...)."""
    return max(MIN_BUCKET, pow2(max_new_tokens))


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
    """Generate up to ``max_new_tokens`` for a batch of prompts in one compiled program.

    Prompts are left-padded to a multiple of 16 tokens (:data:`steerjax.data.batch.GENERATION`),
    so similar lengths share a compile; ``max_new_tokens`` is traced (see the module doc).
    Decoding stops once every row has produced EOS or ``max_new_tokens`` tokens.
    ``steering`` may hold one vector/multiplier per example; ``positions="generated"`` steers
    only generated tokens. ``temperature=0`` is greedy decoding; otherwise sampling from
    ``jax.random.key(seed)`` in transformers' order: temperature, then the ``top_k`` most likely
    tokens (``0``: all), then the nucleus ``top_p`` of what is left. ``mesh`` (:func:`steerjax.sharding.make_mesh`):
    prompts split over its ``data`` axis (the batch padded to a multiple of it), parameters over
    ``model``; default one device.
    """
    cfg = model.config
    mesh = shd.default_mesh(mesh)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
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
    pad = pad_id(cfg)
    params = model.params if mesh is None else shd.shard_params(model.params, cfg, mesh)
    batch, steering = shd.put_batch((batch, steering), mesh)
    new, _ = _generate(
        params, cfg, batch, steering, jax.random.key(seed), jnp.float32(temperature), jnp.float32(top_p),
        jnp.int32(top_k), jnp.int32(max_new_tokens),
        width=output_width(max_new_tokens), pad_id=int(pad), chunk=CHUNK,
    )
    new = shd.to_host(new)[:b, :max_new_tokens]  # [:b]: drop mesh padding
    lengths = eos_lengths(new, cfg.eos_token_ids)
    texts = None
    if model.tokenizer is not None:
        texts = [model.tokenizer.decode(row[:n].tolist(), skip_special_tokens=True) for row, n in zip(new, lengths)]
    return GenerationOutput(new, lengths, texts, ids)


def output_width(max_new_tokens: int, chunk: int = CHUNK) -> int:
    """Columns of the compiled output for ``max_new_tokens``: the first token, then whole chunks
    covering :func:`token_bucket`."""
    return 1 + round_up(token_bucket(max_new_tokens) - 1, chunk)


def pad_id(cfg) -> int:
    """The id written after a row's end: the pad token, else the first EOS, else 0."""
    return int(cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_ids or (0,))[0])


def eos_lengths(tokens: np.ndarray, eos_ids) -> np.ndarray:
    """``[B]`` tokens up to and including each row's first EOS (all of them without one)."""
    is_eos = np.isin(tokens, np.asarray(list(eos_ids or ()), np.int64))
    return np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, tokens.shape[1]).astype(np.int32)


def _column(x):
    """A per-row option ``[B]`` as ``[B, 1]`` (scalars stay scalars) to broadcast against ``[B, V]``."""
    x = jnp.asarray(x)
    return x[:, None] if x.ndim == 1 else x


def sample(logits, key, temperature, top_p, top_k=0):
    """Greedy when ``temperature == 0``, else sampling: temperature, then the ``top_k`` most likely
    tokens (``0``: all), then the nucleus ``top_p`` of their renormalised probabilities
    (transformers' order). logits: [B, V] float32; ``top_k`` may be traced.

    ``temperature``, ``top_p`` and ``top_k`` are scalars (the whole batch) or ``[B]`` (one per
    row). ``key`` is one key (one draw over the ``[B, V]`` batch) or ``[B]`` keys (row ``r`` draws
    with ``key[r]``: the same token as a batch of that row alone with that key).

    A ``lax.cond`` on the traced temperature: greedy decoding never pays for the vocabulary sort
    and the random draws (on CPU they cost more than the rest of a decoding step at batch 32).
    """
    temperature = jnp.asarray(temperature)
    t = _column(temperature)

    def nucleus(logits):
        scaled = logits / jnp.where(t > 0, t, 1.0)
        order = jnp.argsort(-scaled, axis=-1)
        rank = jnp.arange(logits.shape[-1])[None, :]
        k = _column(top_k)
        in_top_k = (k <= 0) | (rank < k)
        sorted_logits = jnp.where(in_top_k, jnp.take_along_axis(scaled, order, axis=-1), -jnp.inf)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        keep = in_top_k & ((jnp.cumsum(probs, axis=-1) - probs) < _column(top_p))  # always keeps the top token
        kept = jnp.where(keep, sorted_logits, -jnp.inf)
        if jnp.ndim(key) == 0:
            choice = jax.random.categorical(key, kept, axis=-1)
        else:
            choice = jax.vmap(lambda k, row: jax.random.categorical(k, row))(key, kept)
        picked = jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
        if temperature.ndim == 0:
            return picked
        return jnp.where(temperature > 0, picked, jnp.argmax(logits, axis=-1).astype(jnp.int32))

    def greedy(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.cond(jnp.any(temperature > 0), nucleus, greedy, logits)


def step_keys(keys, n, chunk: int, horizon: int):
    """``[chunk, B]`` keys: row ``r``'s keys for its tokens ``n[r] .. n[r] + chunk - 1``, token
    ``i`` drawn with ``jax.random.split(keys[r], horizon)[i]``. Splits are prefix-consistent (JAX's
    partitionable threefry), so that is the key :func:`generate` draws token ``i`` with from
    ``jax.random.key(seed)``, whatever its width. ``horizon`` must exceed every ``n + chunk``."""

    def row(k, i):
        return jax.lax.dynamic_slice_in_dim(jax.random.split(k, horizon), i, chunk)

    return jax.vmap(row)(keys, n).T


@struct.dataclass
class DecodeState:
    """The decode loop's carry (per row ``[B]``).

    Attributes:
      cache: the :class:`~steerjax.models.transformer.KVCache`, up to the last fed token.
      tok: the last token sampled (fed at the next step).
      pos: its position.
      n: tokens generated so far, ``tok`` included (the index of the next one).
      done: the row has stopped (it produced EOS or reached its limit); what it produces after is
        the pad id.
    """

    cache: KVCache
    tok: jax.Array
    pos: jax.Array
    n: jax.Array
    done: jax.Array

    def finished(self, eos, limit):
        """``[B]``: stopped, or about to (its last token is EOS, or it has ``limit`` tokens)."""
        return self.done | jnp.isin(self.tok, eos) | (self.n >= limit)


def decode_chunk(params, cfg, state: DecodeState, keys, *, steering, generation_start, limit, temperature, top_p,
                 top_k, eos, pad_id: int):
    """``len(keys)`` decoding steps (a ``lax.scan``): feed each row's ``tok``, sample the next.

    Args:
      state: the :class:`DecodeState` after the previous step (or the prefill).
      keys: ``[C]`` (one key per step for the whole batch) or ``[C, B]`` (:func:`step_keys`).
      steering, generation_start: as in :func:`steerjax.models.transformer.forward`.
      limit: tokens per row, a scalar or ``[B]`` (traced).
      temperature, top_p, top_k: :func:`sample`'s options, scalars or ``[B]``.
      eos: ``[E]`` end-of-sequence ids. pad_id: what a stopped row produces.

    Returns:
      ``(state, tokens [B, C])``: a row's token is ``pad_id`` from the step after its EOS or limit.
    """
    b = state.tok.shape[0]

    def step(st, key):
        o = forward(params, cfg, st.tok[:, None], positions=st.pos[:, None], valid=jnp.ones((b, 1), bool),
                    steering=steering, generation_start=generation_start, cache=st.cache)
        nxt = sample(unembed(params, cfg, o.hidden[:, -1]), key, temperature, top_p, top_k)
        done = st.finished(eos, limit)
        nxt = jnp.where(done, pad_id, nxt)
        return DecodeState(o.cache, nxt, st.pos + 1, st.n + (~done).astype(jnp.int32), done), nxt

    state, toks = jax.lax.scan(step, state, keys)
    return state, toks.T


def eos_array(cfg):
    """The model's end-of-sequence ids as an int32 array (``[-1]`` when it has none)."""
    return jnp.asarray(cfg.eos_token_ids or (-1,), jnp.int32)


def segment_ends(width: int, chunk: int = CHUNK) -> list[int]:
    """Where the decode loop's KV cache grows: token counts ``1 + MIN_BUCKET * 2**k`` below
    ``width``, then ``width``. Segment ``k`` decodes with ``prompt + ends[k]`` cache slots, so a step
    attends over about as many slots as the longest answer so far needs, not ``max_new_tokens``."""
    ends, end = [], 1 + round_up(MIN_BUCKET, chunk)
    while end < width:
        ends.append(end)
        end = 1 + 2 * (end - 1)
    return ends + [width]


@functools.partial(jax.jit, static_argnames=("cfg", "width", "pad_id", "chunk"))
def _generate(params, cfg, batch, steering, key, temperature, top_p, top_k, limit, *, width, pad_id, chunk):
    """``([B, width] new tokens, steps run)``: the prefill's token, then chunks of ``chunk`` steps
    while any row runs (``limit`` traced: tokens past it are dropped by the caller).

    The cache starts with ``T + ends[0]`` slots and doubles at each of :func:`segment_ends` that
    a row still running reaches (a ``lax.cond`` per segment: a batch that stopped never pays for the
    larger caches). Attention masks empty slots, so the tokens equal those of one large cache."""
    b, t = batch.ids.shape
    dtype = param_dtype(params)
    lengths = batch.lengths
    ends = segment_ends(width, chunk)
    out = forward(params, cfg, batch.ids, positions=batch.positions, valid=batch.valid, steering=steering,
                  generation_start=lengths, cache=KVCache.empty(cfg, b, t + ends[0], dtype))
    keys = jax.random.split(key, width)
    first = sample(unembed(params, cfg, out.hidden[:, -1]), keys[0], temperature, top_p, top_k)
    eos = eos_array(cfg)
    state = DecodeState(out.cache, first, lengths, jnp.ones((b,), jnp.int32), jnp.zeros((b,), bool))
    tokens = jnp.full((b, width), pad_id, jnp.int32).at[:, 0].set(first)

    def body(carry):
        c, st, tokens = carry
        at = 1 + c * chunk
        st, new = decode_chunk(params, cfg, st, jax.lax.dynamic_slice_in_dim(keys, at, chunk),
                               steering=steering, generation_start=lengths, limit=limit,
                               temperature=temperature, top_p=top_p, top_k=top_k, eos=eos, pad_id=pad_id)
        return c + 1, st, jax.lax.dynamic_update_slice(tokens, new, (0, at))

    def segment(k, c, st, tokens):
        n_chunks = (ends[k] - 1) // chunk

        def running(carry):
            c, st, _ = carry
            return (c < n_chunks) & ~jnp.all(st.finished(eos, limit))

        c, st, tokens = jax.lax.while_loop(running, body, (c, st, tokens))
        if k == len(ends) - 1:
            return c, tokens

        def grow(args):
            c, st, tokens = args
            return segment(k + 1, c, st.replace(cache=st.cache.grow(t + ends[k + 1])), tokens)

        return jax.lax.cond(jnp.all(st.finished(eos, limit)), lambda args: (args[0], args[2]), grow,
                            (c, st, tokens))

    c, tokens = segment(0, jnp.int32(0), state, tokens)
    return tokens, 1 + c * chunk
