"""The family-independent forward pass: embed, scan the stacked blocks, steer, cache, unembed.

A family supplies its Flax NNX module tree (:class:`~steerjax.models.layers.Decoder`: embedding,
blocks stacked on a ``layers`` axis, final norm, head). ``params`` is that tree's state as a
nested dict of arrays (``nnx.split`` / ``nnx.to_pure_dict``): a plain pytree that jitted entry
points take as an argument; :func:`forward` merges it back into modules while tracing (no per-call
cost) and runs the blocks under ``lax.scan``, one block's state per step. Everything else (the
steering site after each block, the KV cache, causal and sliding masks, rotary tables) lives
here, once.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, struct

from steerjax.models import registry
from steerjax.models.config import ModelConfig, leaves
from steerjax.models.layers import AttentionContext, LayerContext, Rotary, rotary_tables
from steerjax.steering.core import NO_END, Steering, apply, token_mask


class Structure(NamedTuple):
    """A family's module tree for a config, without weights (built once per config)."""

    model: nnx.GraphDef  # the whole tree
    block: nnx.GraphDef  # one block (the stacked blocks' structure, for one layer's slice)
    state: nnx.State  # abstract: ShapeDtypeStruct values and their sharding metadata


@functools.lru_cache(maxsize=64)
def structure(cfg: ModelConfig) -> Structure:
    """The module tree of ``cfg``'s family, built abstractly (``nnx.eval_shape``: no allocation)."""
    fam = registry.family(cfg.family)
    model = nnx.eval_shape(lambda: fam.model(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    block, _ = nnx.split(model.layers)
    return Structure(graphdef, block, state)


def num_parameters(cfg: ModelConfig) -> int:
    """Parameter count implied by ``cfg`` (embeddings counted once when tied)."""
    n = 0
    for leaf in leaves(abstract_params(cfg)):
        size = 1
        for s in leaf.shape:
            size *= s
        n += size
    return n


def abstract_params(cfg: ModelConfig, dtype=None) -> dict:
    """The params pytree of ``cfg`` as ``jax.ShapeDtypeStruct`` s (``dtype`` default float32)."""
    pure = nnx.to_pure_dict(structure(cfg).state)
    if dtype is None:
        return pure
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), pure)


def param_axes(cfg: ModelConfig) -> dict:
    """The logical axis names of every parameter (the modules' sharding metadata), as tuples in
    the params pytree's nesting; stacked block parameters lead with ``"layers"``."""
    specs = nnx.to_pure_dict(nnx.get_partition_spec(structure(cfg).state))
    return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def module(params, cfg: ModelConfig):
    """The family's module tree holding ``params`` (arrays or tracers; no copy)."""
    return nnx.merge(structure(cfg).model, nnx.State(params))


def param_dtype(params):
    """The dtype of the parameters (all share one: the load dtype)."""
    return jax.tree.leaves(params)[0].dtype


@struct.dataclass
class KVCache:
    """Fixed-size key/value cache, an explicit pytree in and out of the forward pass.

    ``k``, ``v``: [L, B, K, S, Dh]; ``valid [B, S]``: slots holding a real token;
    ``index``: the next slot to write (shared by the batch: prompts are left-padded).
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, size: int, dtype=jnp.float32) -> KVCache:
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, size, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                   jnp.zeros((batch, size), bool), jnp.zeros((), jnp.int32))

    def grow(self, size: int) -> KVCache:
        """The same cache with ``size`` slots (empty slots appended; ``size`` static, at least
        the current size)."""
        extra = size - self.valid.shape[1]
        if extra < 0:
            raise ValueError(f"a cache of {self.valid.shape[1]} slots cannot grow to {size}")
        pad = ((0, 0), (0, 0), (0, 0), (0, extra), (0, 0))
        return KVCache(jnp.pad(self.k, pad), jnp.pad(self.v, pad), jnp.pad(self.valid, ((0, 0), (0, extra))),
                       self.index)


class ForwardOutput(NamedTuple):
    hidden: jax.Array  # [B, T, D] after the final norm
    layers: jax.Array | None  # [L, B, T, D] residual stream after each (steered) block
    cache: KVCache | None


def positions_from_mask(valid):
    """Position ids from a [B, T] validity mask: index among real tokens (0 on padding)."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def forward(
    params,
    cfg: ModelConfig,
    tokens,
    *,
    positions,
    valid,
    steering: Steering | None = None,
    generation_start=None,
    cache: KVCache | None = None,
    prefix: KVCache | None = None,
    segments=None,
    collect_layers: bool = False,
) -> ForwardOutput:
    """Run the model on ``tokens [B, T]``.

    Args:
      positions: [B, T] position ids (rotary / learned position embeddings, steering ranges).
      valid: [B, T] bool, False on padding.
      steering: optional :class:`Steering`; applied to each block's output.
      generation_start: [B] position of the first generated token (resolves ``GENERATED``).
      cache: optional :class:`KVCache`; this call's keys are written at ``cache.index``.
      prefix: optional read-only :class:`KVCache` of ``E`` shared prompts, with ``B = E * R``:
        row ``e * R + r`` continues prompt ``e`` (its tokens sit right after the prompt's slots).
        Many continuations (multipliers, completions) are scored against one prompt computation
        without copying its cache. Exclusive with ``cache``.
      segments: optional ``[B, T]`` int ids packing several continuations into one row (with
        ``prefix`` only): a token attends to the prefix and causally to earlier tokens of its own
        segment (a run of equal ids); ``positions`` restart at the prefix length in each segment.
      collect_layers: also return every block's output.
    """
    model = module(params, cfg)
    block_def = structure(cfg).block
    b, t = tokens.shape
    x = model.embed_tokens(tokens, positions)

    if cache is None:
        q_index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        attn = AttentionContext(q_index, jnp.arange(t, dtype=jnp.int32), valid, None)
        kv = None
    else:
        q_index = jnp.broadcast_to(cache.index + jnp.arange(t, dtype=jnp.int32), (b, t))
        k_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache.index))
        s = cache.valid.shape[1]
        attn = AttentionContext(q_index, jnp.arange(s, dtype=jnp.int32), k_valid, cache.index)
        kv = (cache.k, cache.v)

    rot_global = rot_local = None
    if cfg.rope_dim > 0:  # GPT-2 (rotary_dim=0) uses learned positions instead
        rot_global = rotary_tables(cfg, positions, cfg.rope_theta)
        if cfg.rope_local_theta is not None:
            rot_local = rotary_tables(cfg, positions, cfg.rope_local_theta, scaled=False)

    if segments is not None and prefix is None:
        raise ValueError("segments= packs continuations of a shared prefix: pass prefix= too")
    if prefix is not None:
        rows = b // prefix.k.shape[1]
        s = prefix.valid.shape[1]
        j = jnp.arange(t, dtype=jnp.int32)
        if segments is None:
            k_index = s + j
            q_index = jnp.broadcast_to(k_index, (b, t))
        else:  # slot indices restart per segment: causality and windows hold within a segment
            first = jnp.concatenate([jnp.ones((b, 1), bool), segments[:, 1:] != segments[:, :-1]], axis=1)
            j = jnp.broadcast_to(j, (b, t))
            q_index = k_index = s + j - jax.lax.cummax(jnp.where(first, j, 0), axis=1)
        attn = AttentionContext(q_index, k_index, valid, None, prefix.valid, rows, segments)

    if steering is not None:
        if generation_start is None:
            generation_start = jnp.full((b,), NO_END, jnp.int32)
        mask = token_mask(steering, positions, valid, generation_start)
        vectors = steering.vectors
    else:
        mask = None
        vectors = jnp.zeros((cfg.num_layers, 0), jnp.float32)  # placeholder scanned input

    xs = dict(
        params=params["layers"],
        vector=vectors,
        window=jnp.asarray(cfg.layer_windows, jnp.int32),
        local=jnp.asarray(cfg.layer_local, bool),
        layer=jnp.arange(cfg.num_layers, dtype=jnp.int32),
    )
    if steering is not None and steering.layer_mask is not None:
        xs["layer_on"] = steering.layer_mask
    if prefix is not None:
        xs["prefix_k"], xs["prefix_v"] = prefix.k, prefix.v

    def step(carry, xl):
        h, kv = carry
        rot = rot_global
        if rot_local is not None:
            rot = Rotary(*(jnp.where(xl["local"], lo, gl) for lo, gl in zip(rot_local, rot_global)))
        pre = (xl["prefix_k"], xl["prefix_v"]) if prefix is not None else None
        ctx = LayerContext(attn, rot, xl["window"], xl["layer"], pre)
        h, kv = nnx.merge(block_def, nnx.State(xl["params"]))(h, ctx, kv)
        if steering is not None:
            h = apply(steering, h, xl["vector"], steering.multipliers, mask, xl.get("layer_on"))
        return (h, kv), (h if collect_layers else None)

    (x, kv), layers = jax.lax.scan(step, (x, kv), xs)
    new_cache = None
    if cache is not None:
        new_cache = KVCache(kv[0], kv[1], attn.k_valid, cache.index + t)
    return ForwardOutput(model.final_norm(x), layers, new_cache)


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def prefill(params, cfg: ModelConfig, ids, valid, *, dtype):
    """The KV cache of left-padded shared prefixes ``ids, valid [E, T]``: the ``prefix=`` of
    :func:`forward` for continuations (positions of a row's continuation start at its prefix length)."""
    e, t = ids.shape
    out = forward(params, cfg, ids, positions=positions_from_mask(valid), valid=valid,
                  cache=KVCache.empty(cfg, e, t, dtype))
    return out.cache


def unembed(params, cfg: ModelConfig, hidden):
    """Logits (float32) from final hidden states [..., D]; ties to the embedding when asked."""
    return module(params, cfg).unembed(hidden)


def final_norm(params, cfg: ModelConfig, x):
    """The model's final norm of residual states ``x [..., D]`` (a logit lens reads blocks with it)."""
    return module(params, cfg).final_norm(x)
