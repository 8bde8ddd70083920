"""Building blocks shared by every family: norms, rotary embeddings, attention, activations, and
the Flax NNX modules built on them (linear, embedding, norms, attention, MLPs, the decoder shell).

Every parameter is declared once, in the module that creates it (:func:`param`): its shape,
initializer and logical axis names (nnx sharding metadata, mapped to mesh axes by
:data:`steerjax.sharding.LOGICAL_AXIS_RULES`). Models are built abstractly (``nnx.eval_shape``):
the weights come from checkpoints.

Axis glossary: B batch, T query tokens, S key slots (cache size, or T without a cache),
H query heads, K key/value heads, G = H // K, Dh head width, D model width.
Norms, softmax and rotary tables run in float32 whatever the parameter dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from steerjax.errors import UnsupportedArchitectureError
from steerjax.models.config import ModelConfig

NEG_INF = -1e30


def rms_norm(x, scale, eps: float, offset: float = 0.0):
    """RMSNorm; Gemma stores ``scale - 1`` (``offset=1``) and scales before the cast back."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    if offset:
        return (y * jnp.broadcast_to(offset + scale.astype(jnp.float32), y.shape)).astype(x.dtype)
    return jnp.broadcast_to(scale, y.shape) * y.astype(x.dtype)


def layer_norm(x, scale, bias, eps: float):
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    scale, bias = (jnp.broadcast_to(w.astype(jnp.float32), y.shape) for w in (scale, bias))
    return (y * scale + bias).astype(x.dtype)


def activation(name: str):
    if name in ("silu", "swish"):
        return jax.nn.silu
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_approx"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "relu":
        return jax.nn.relu
    raise UnsupportedArchitectureError(f"activation {name!r} is not supported")


def linear(x, w, b=None):
    """``x @ w (+ b)`` with ``w`` stored ``[in, out]``."""
    y = jnp.einsum("...i,io->...o", x, w)
    return y if b is None else y + jnp.broadcast_to(b, y.shape)


# ----------------------------------------------------------------------------- rotary embeddings


def inv_frequencies(cfg: ModelConfig, theta: float, scaled: bool = True):
    """Inverse frequencies of the rotary embedding, with HF's ``rope_scaling`` variants."""
    dim = cfg.rope_dim
    inv = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    rs = cfg.rope_scaling_dict if scaled else None
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / rs["factor"]
    if kind == "llama3":
        factor = rs["factor"]
        lo, hi = rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        out = jnp.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        return jnp.where(medium, smoothed, out)
    raise UnsupportedArchitectureError(
        f"rope_scaling type {kind!r} is not supported (supported: default, linear, llama3)"
    )


class Rotary(NamedTuple):
    cos: jax.Array  # [B, T, rope_dim]
    sin: jax.Array


def rotary_tables(cfg: ModelConfig, positions, theta: float, scaled: bool = True) -> Rotary:
    inv = inv_frequencies(cfg, theta, scaled)
    freqs = positions.astype(jnp.float32)[..., None] * jnp.expand_dims(inv, tuple(range(positions.ndim)))  # [B,T,dim/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return Rotary(jnp.cos(emb), jnp.sin(emb))


def apply_rotary(x, rot: Rotary):
    """HF's rotate-half convention on the first ``rope_dim`` features of each head. x: [B,T,N,Dh]."""
    dim = rot.cos.shape[-1]
    xr, xp = x[..., :dim], x[..., dim:]
    cos = rot.cos[:, :, None, :].astype(x.dtype)
    sin = rot.sin[:, :, None, :].astype(x.dtype)
    half = dim // 2
    rotated = jnp.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)
    out = xr * cos + rotated * sin
    return out if xp.shape[-1] == 0 else jnp.concatenate([out, xp], axis=-1)


# ----------------------------------------------------------------------------- attention


class AttentionContext(NamedTuple):
    """Per-call attention inputs, identical for every layer.

    ``q_index [B, T]`` and ``k_index [S]`` are slot indices (used for causality and sliding
    windows, as HF does); ``k_valid [B, S]`` masks padding and empty cache slots;
    ``cache_index`` is where this call's keys are written (None: no cache).
    """

    q_index: jax.Array
    k_index: jax.Array
    k_valid: jax.Array
    cache_index: jax.Array | None
    prefix_valid: jax.Array | None = None  # [E, P] for shared-prefix scoring
    rows: int = 1  # continuations per prefix (static)
    segment: jax.Array | None = None  # [B, T] packed continuations per row (prefix mode only)


class LayerContext(NamedTuple):
    """What a block needs besides its parameters: shared context plus this layer's slice."""

    attn: AttentionContext
    rotary: Rotary | None
    window: jax.Array  # int32 scalar, 0 = global
    layer: jax.Array  # int32 scalar
    prefix: tuple[jax.Array, jax.Array] | None = None  # this layer's shared-prefix keys/values [E,K,P,Dh]


def attend(q, k, v, ctx: LayerContext, kv, cfg: ModelConfig):
    """Causal (optionally windowed, soft-capped) grouped-query attention with an optional cache.

    q: [B,T,H,Dh]; k, v: [B,T,K,Dh]; kv: None or (cache_k, cache_v), each [L,B,K,S,Dh].
    Heads are laid out ``[B, K, G*T, Dh]`` so both einsums are plain batched matmuls with leading
    batch axes (3x faster on XLA:CPU than contracting over interleaved axes).
    Returns the attention output [B,T,H*Dh] and the updated kv.
    """
    a = ctx.attn
    b, t, h, dh = q.shape
    kh = k.shape[2]
    g = h // kh
    k = k.transpose(0, 2, 1, 3)  # [B,K,T,Dh]
    v = v.transpose(0, 2, 1, 3)
    if ctx.prefix is not None:
        return _attend_with_prefix(q, k, v, ctx, cfg), kv
    if kv is not None:
        ck, cv = kv
        zero = jnp.zeros((), jnp.int32)
        start = (ctx.layer, zero, zero, a.cache_index, zero)
        ck = jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), start)
        cv = jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), start)
        k, v = ck[ctx.layer], cv[ctx.layer]
        kv = (ck, cv)
    s = k.shape[2]
    qh = q.transpose(0, 2, 1, 3).reshape(b, kh, g * t, dh)  # head = kv_head * G + group
    scale = cfg.query_scale if cfg.query_scale is not None else dh**-0.5
    scores = jnp.einsum("bkqd,bksd->bkqs", qh, k, preferred_element_type=jnp.float32) * scale
    if cfg.attn_logit_softcap:
        scores = jnp.tanh(scores / cfg.attn_logit_softcap) * cfg.attn_logit_softcap
    qi = a.q_index[:, :, None]  # [B,T,1]
    ki = a.k_index[None, None, :]  # [1,1,S]
    mask = (ki <= qi) & a.k_valid[:, None, :]
    mask &= (ctx.window <= 0) | (qi - ki < ctx.window)  # [B,T,S]
    scores = jnp.where(mask[:, None, None], scores.reshape(b, kh, g, t, s), NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kh, g * t, s)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v)
    return out.reshape(b, h, t, dh).transpose(0, 2, 1, 3).reshape(b, t, h * dh), kv


def _attend_with_prefix(q, k, v, ctx: LayerContext, cfg: ModelConfig):
    """Rows ``e * R + r`` attend to prefix ``e`` (read-only, shared) and causally to themselves.

    q: [E*R,T,H,Dh]; k, v: [E*R,K,T,Dh]; prefix keys/values: [E,K,P,Dh]. One softmax over the
    concatenated [prefix, own] key axis, so this equals attention over a copied cache.
    """
    a = ctx.attn
    pk, pv = ctx.prefix
    e, kh, p, dh = pk.shape
    br, t, h, _ = q.shape
    r, g = a.rows, h // kh
    qh = q.transpose(0, 2, 1, 3).reshape(e, r, kh, g * t, dh)
    ko, vo = k.reshape(e, r, kh, t, dh), v.reshape(e, r, kh, t, dh)
    scale = cfg.query_scale if cfg.query_scale is not None else dh**-0.5
    s_pre = jnp.einsum("erkqd,ekpd->erkqp", qh, pk.astype(q.dtype), preferred_element_type=jnp.float32)
    s_own = jnp.einsum("erkqd,erksd->erkqs", qh, ko, preferred_element_type=jnp.float32)
    scores = jnp.concatenate([s_pre, s_own], axis=-1) * scale
    if cfg.attn_logit_softcap:
        scores = jnp.tanh(scores / cfg.attn_logit_softcap) * cfg.attn_logit_softcap
    qi = a.q_index.reshape(e, r, t)[..., None]  # [E,R,T,1]
    k_own = jnp.broadcast_to(a.k_index, (br, t)).reshape(e, r, t)
    ki = jnp.concatenate([jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (e, r, p)), k_own], -1)[:, :, None, :]
    valid = jnp.concatenate([jnp.broadcast_to(a.prefix_valid[:, None], (e, r, p)), a.k_valid.reshape(e, r, t)], -1)
    mask = (ki <= qi) & valid[:, :, None, :]
    if a.segment is not None:  # packed rows: a token sees the prefix and its own segment only
        seg = a.segment.reshape(e, r, t)
        same = seg[..., :, None] == seg[..., None, :]
        mask &= jnp.concatenate([jnp.ones((e, r, t, p), bool), same], -1)
    mask &= (ctx.window <= 0) | (qi - ki < ctx.window)  # [E,R,T,P+T]
    scores = jnp.where(mask[:, :, None, None], scores.reshape(e, r, kh, g, t, p + t), NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(e, r, kh, g * t, p + t)
    out = jnp.einsum("erkqp,ekpd->erkqd", probs[..., :p], pv.astype(v.dtype))
    out = out + jnp.einsum("erkqs,erksd->erkqd", probs[..., p:], vo)
    return out.reshape(br, h, t, dh).transpose(0, 2, 1, 3).reshape(br, t, h * dh)


# ----------------------------------------------------------------------------- NNX modules


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], init=None) -> nnx.Param:
    """A parameter of ``shape`` with logical ``axes`` (``init`` default: N(0, 0.02); norms pass ones)."""
    init = init or nnx.initializers.normal(0.02)
    return nnx.Param(init(rngs.params(), shape, jnp.float32), out_sharding=axes, eager_sharding=False)


class Linear(nnx.Module):
    """``x @ kernel (+ bias)``, ``kernel [in, out]`` with logical axes ``axes``."""

    def __init__(self, n_in: int, n_out: int, axes: tuple[str, str], *, bias: bool, rngs: nnx.Rngs):
        self.kernel = param(rngs, (n_in, n_out), axes)
        self.bias = param(rngs, (n_out,), axes[1:], nnx.initializers.zeros) if bias else None

    def __call__(self, x):
        return linear(x, self.kernel[...], None if self.bias is None else self.bias[...])


class Embed(nnx.Module):
    """A lookup table ``embedding [n, D]`` (token or learned position embeddings)."""

    def __init__(self, n: int, d: int, axes: tuple[str, str], *, rngs: nnx.Rngs):
        self.embedding = param(rngs, (n, d), axes)

    def __call__(self, ids):
        return jnp.take(self.embedding[...], ids, axis=0)


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis; ``offset=1`` for Gemma's stored ``scale - 1``."""

    def __init__(self, d: int, eps: float, *, offset: float = 0.0, axis: str = "embed", rngs: nnx.Rngs):
        init = nnx.initializers.zeros if offset else nnx.initializers.ones
        self.scale = param(rngs, (d,), (axis,), init)
        self.eps, self.offset = eps, offset

    def __call__(self, x):
        return rms_norm(x, self.scale[...], self.eps, offset=self.offset)


class LayerNorm(nnx.Module):
    """LayerNorm with scale and bias over the last axis."""

    def __init__(self, d: int, eps: float, *, rngs: nnx.Rngs):
        self.scale = param(rngs, (d,), ("embed",), nnx.initializers.ones)
        self.bias = param(rngs, (d,), ("embed",), nnx.initializers.zeros)
        self.eps = eps

    def __call__(self, x):
        return layer_norm(x, self.scale[...], self.bias[...], self.eps)


class Attention(nnx.Module):
    """Grouped-query self-attention: q/k/v projections (optional biases), optional per-head q/k
    RMSNorm, rotary on the first ``rope_dim`` features, :func:`attend` (causal, windows,
    soft-capping, KV cache, shared prefixes) and the output projection ``o_proj``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, norm_offset: float = 0.0):
        d, q, kv = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_proj = Linear(d, q, ("embed", "heads"), bias=cfg.attention_bias, rngs=rngs)
        self.k_proj = Linear(d, kv, ("embed", "kv_heads"), bias=cfg.attention_bias, rngs=rngs)
        self.v_proj = Linear(d, kv, ("embed", "kv_heads"), bias=cfg.attention_bias, rngs=rngs)
        self.o_proj = Linear(q, d, ("heads", "embed"), bias=cfg.attention_out_bias, rngs=rngs)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps, offset=norm_offset, axis="head_dim", rngs=rngs)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps, offset=norm_offset, axis="head_dim", rngs=rngs)
        else:
            self.q_norm = self.k_norm = None
        self.cfg = cfg

    def __call__(self, h, ctx: LayerContext, kv):
        cfg = self.cfg
        b, t, _ = h.shape
        q = self.q_proj(h).reshape(b, t, cfg.num_heads, cfg.head_dim)
        k = self.k_proj(h).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        v = self.v_proj(h).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if ctx.rotary is not None:
            q, k = apply_rotary(q, ctx.rotary), apply_rotary(k, ctx.rotary)
        a, kv = attend(q, k, v, ctx, kv, cfg)
        return self.o_proj(a), kv


class GatedMLP(nnx.Module):
    """``down(act(gate(x)) * up(x))`` (Llama, Gemma)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, i, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = Linear(d, i, ("embed", "mlp"), bias=bias, rngs=rngs)
        self.up_proj = Linear(d, i, ("embed", "mlp"), bias=bias, rngs=rngs)
        self.down_proj = Linear(i, d, ("mlp", "embed"), bias=bias, rngs=rngs)
        self.activation = cfg.activation

    def __call__(self, x):
        return self.down_proj(activation(self.activation)(self.gate_proj(x)) * self.up_proj(x))


class MLP(nnx.Module):
    """``down(act(up(x)))`` (GPT-2, GPT-NeoX)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, i, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.up_proj = Linear(d, i, ("embed", "mlp"), bias=bias, rngs=rngs)
        self.down_proj = Linear(i, d, ("mlp", "embed"), bias=bias, rngs=rngs)
        self.activation = cfg.activation

    def __call__(self, x):
        return self.down_proj(activation(self.activation)(self.up_proj(x)))


class Decoder(nnx.Module):
    """The shell every family shares: token embedding ``embed``, the blocks stacked on a leading
    ``layers`` axis (``nnx.vmap`` of ``block(cfg, rngs=...)``), ``final_norm`` and, unless tied,
    ``lm_head``. Families subclass it to add parameters (GPT-2's ``pos_embed``) or change
    :meth:`embed_tokens` (Gemma's scaled embeddings).
    :func:`steerjax.models.transformer.forward` runs it with the blocks under ``lax.scan``.
    """

    def __init__(self, cfg: ModelConfig, block, final_norm, *, rngs: nnx.Rngs):
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), rngs=rngs)
        self.layers = nnx.vmap(lambda r: block(cfg, rngs=r), in_axes=0, out_axes=0,
                               transform_metadata={nnx.PARTITION_NAME: "layers"})(rngs.split(cfg.num_layers))
        self.final_norm = final_norm
        self.lm_head = (None if cfg.tie_word_embeddings
                        else Linear(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), bias=False, rngs=rngs))
        self.cfg = cfg

    def embed_tokens(self, tokens, positions):
        """The residual stream entering the first block ``[B, T, D]``."""
        return self.embed(tokens)

    def unembed(self, hidden):
        """Logits (float32) from final hidden states ``[..., D]``; the embedding when tied."""
        w = self.embed.embedding[...].T if self.lm_head is None else self.lm_head.kernel[...]
        logits = jnp.einsum("...d,dv->...v", hidden, w, preferred_element_type=jnp.float32)
        cap = self.cfg.final_logit_softcap
        return jnp.tanh(logits / cap) * cap if cap else logits
