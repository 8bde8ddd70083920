"""Llama-like decoders: Llama 2/3, Mistral, SmolLM, Qwen2/2.5, Qwen3, Phi-3.

They differ only by flags: q/k/v bias (Qwen2), per-head q/k RMSNorm (Qwen3), sliding windows
(Mistral, Phi-3, Qwen with ``use_sliding_window``), partial rotary (Phi-3 ``partial_rotary_factor``)
and fused weights (Phi-3 ``qkv_proj`` and ``gate_up_proj``, split here at load time).
Parameter names are HF's (``model.layers.{i}.`` dropped); linear weights are stored ``[in, out]``
as ``kernel``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from steerjax.models.config import (
    ModelConfig,
    check_fields,
    freeze,
    hf_sizes,
    hf_tokens,
    linear_shapes,
    model_shapes,
    norm_shapes,
)
from steerjax.models.layers import activation, apply_rotary, attend, linear, rms_norm

_QKV_BIAS_DEFAULT = {"qwen2": True}

#: config fields read by :func:`config_from_hf`
CONFIG_FIELDS = (
    "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "num_hidden_layers",
    "intermediate_size", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
    "partial_rotary_factor", "attention_bias", "mlp_bias", "hidden_act", "tie_word_embeddings",
    "sliding_window", "use_sliding_window", "max_window_layers", "layer_types",
)
#: config fields that leave inference unchanged: dropouts, the tensor-parallel split of pretraining
#: (``pretraining_tp``: the same matmul in slices), the context length the rotary scaling came from
CONFIG_IGNORED = ("attention_dropout", "resid_pdrop", "embd_pdrop", "pretraining_tp",
                  "original_max_position_embeddings")
#: options accepted only when off
CONFIG_OFF = ("use_mrope",)


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    mt = hf["model_type"]
    check_fields(hf, mt, CONFIG_FIELDS, CONFIG_IGNORED, CONFIG_OFF)
    d, h = hf["hidden_size"], hf["num_attention_heads"]
    kvh = hf.get("num_key_value_heads") or h
    head_dim = hf.get("head_dim") or d // h
    n = hf["num_hidden_layers"]
    window = hf.get("sliding_window") or 0
    if mt in ("qwen2", "qwen3"):
        if not hf.get("use_sliding_window", False):
            window = 0
        types = hf.get("layer_types") or [
            "sliding_attention" if window and i >= hf.get("max_window_layers", n) else "full_attention"
            for i in range(n)
        ]
        windows = tuple(window if ty == "sliding_attention" else 0 for ty in types)
    elif mt in ("mistral", "phi3"):
        windows = (window,) * n
    else:
        windows = (0,) * n
    prf = hf.get("partial_rotary_factor", 1.0)
    attn_bias = bool(hf.get("attention_bias", _QKV_BIAS_DEFAULT.get(mt, False)))
    return ModelConfig(
        family="llama",
        model_type=mt,
        **hf_sizes(hf, eps="rms_norm_eps", eps_default=1e-6),
        num_kv_heads=kvh,
        head_dim=head_dim,
        rope_theta=hf.get("rope_theta", 10000.0),
        rope_scaling=freeze(hf.get("rope_scaling")),
        rotary_dim=None if prf == 1.0 else int(head_dim * prf),
        attention_bias=attn_bias,
        attention_out_bias=attn_bias and mt in ("llama", "qwen3"),
        qk_norm=mt == "qwen3",
        layer_windows=windows,
        activation=hf.get("hidden_act", "silu"),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        **hf_tokens(hf, tie=False),
    )


def param_shapes(cfg: ModelConfig) -> dict:
    d, i = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    layer = {
        **norm_shapes("input_layernorm", d),
        **linear_shapes("self_attn.q_proj", d, q, cfg.attention_bias),
        **linear_shapes("self_attn.k_proj", d, kv, cfg.attention_bias),
        **linear_shapes("self_attn.v_proj", d, kv, cfg.attention_bias),
        **linear_shapes("self_attn.o_proj", q, d, cfg.attention_out_bias),
        **norm_shapes("post_attention_layernorm", d),
        **linear_shapes("mlp.gate_proj", d, i, cfg.mlp_bias),
        **linear_shapes("mlp.up_proj", d, i, cfg.mlp_bias),
        **linear_shapes("mlp.down_proj", i, d, cfg.mlp_bias),
    }
    if cfg.qk_norm:
        layer |= {**norm_shapes("self_attn.q_norm", cfg.head_dim), **norm_shapes("self_attn.k_norm", cfg.head_dim)}
    return model_shapes(cfg, layer)


# ----------------------------------------------------------------------------- weight conversion

IGNORED = (r"rotary_emb\.inv_freq$",)


def canonical(name: str) -> str:
    return name if name.startswith(("model.", "lm_head.")) else "model." + name


def convert_globals(get, cfg: ModelConfig) -> dict:
    out = {"embed": get("model.embed_tokens.weight"), "final_norm": {"scale": get("model.norm.weight")}}
    if not cfg.tie_word_embeddings:
        out["lm_head"] = get("lm_head.weight").T
    return out


def convert_layer(get, cfg: ModelConfig, i: int) -> dict:
    p = f"model.layers.{i}."
    out = {
        "input_layernorm.scale": get(p + "input_layernorm.weight"),
        "post_attention_layernorm.scale": get(p + "post_attention_layernorm.weight"),
        "self_attn.o_proj.kernel": get(p + "self_attn.o_proj.weight").T,
        "mlp.down_proj.kernel": get(p + "mlp.down_proj.weight").T,
    }
    if cfg.model_type == "phi3":
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        qkv = get(p + "self_attn.qkv_proj.weight")
        out["self_attn.q_proj.kernel"] = qkv[:q].T
        out["self_attn.k_proj.kernel"] = qkv[q : q + kv].T
        out["self_attn.v_proj.kernel"] = qkv[q + kv :].T
        gate_up = get(p + "mlp.gate_up_proj.weight")
        half = gate_up.shape[0] // 2
        out["mlp.gate_proj.kernel"] = gate_up[:half].T
        out["mlp.up_proj.kernel"] = gate_up[half:].T
    else:
        for name in ("q_proj", "k_proj", "v_proj"):
            out[f"self_attn.{name}.kernel"] = get(f"{p}self_attn.{name}.weight").T
        for name in ("gate_proj", "up_proj"):
            out[f"mlp.{name}.kernel"] = get(f"{p}mlp.{name}.weight").T
    if cfg.attention_bias:
        for name in ("q_proj", "k_proj", "v_proj"):
            out[f"self_attn.{name}.bias"] = get(f"{p}self_attn.{name}.bias")
    if cfg.attention_out_bias:
        out["self_attn.o_proj.bias"] = get(p + "self_attn.o_proj.bias")
    if cfg.qk_norm:
        out["self_attn.q_norm.scale"] = get(p + "self_attn.q_norm.weight")
        out["self_attn.k_norm.scale"] = get(p + "self_attn.k_norm.weight")
    if cfg.mlp_bias:
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[f"mlp.{name}.bias"] = get(f"{p}mlp.{name}.bias")
    return out


# ----------------------------------------------------------------------------- forward


def embed(params, cfg: ModelConfig, tokens, positions):
    return jnp.take(params["embed"], tokens, axis=0)


def self_attention(lp, h, cfg: ModelConfig, ctx, kv, *, norm_offset: float = 0.0):
    """q/k/v projections (optional biases), optional per-head q/k RMSNorm, rotary, attention and
    the output projection; shared with Gemma (whose norms store ``scale - 1``: ``norm_offset=1``)."""
    b, t, _ = h.shape
    q = linear(h, lp["self_attn.q_proj.kernel"], lp.get("self_attn.q_proj.bias"))
    k = linear(h, lp["self_attn.k_proj.kernel"], lp.get("self_attn.k_proj.bias"))
    v = linear(h, lp["self_attn.v_proj.kernel"], lp.get("self_attn.v_proj.bias"))
    q = q.reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = k.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = v.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
        q = rms_norm(q, lp["self_attn.q_norm.scale"], cfg.norm_eps, offset=norm_offset)
        k = rms_norm(k, lp["self_attn.k_norm.scale"], cfg.norm_eps, offset=norm_offset)
    q, k = apply_rotary(q, ctx.rotary), apply_rotary(k, ctx.rotary)
    a, kv = attend(q, k, v, ctx, kv, cfg)
    return linear(a, lp["self_attn.o_proj.kernel"], lp.get("self_attn.o_proj.bias")), kv


def block(lp, x, cfg: ModelConfig, ctx, kv):
    a, kv = self_attention(lp, rms_norm(x, lp["input_layernorm.scale"], cfg.norm_eps), cfg, ctx, kv)
    x = x + a
    h = rms_norm(x, lp["post_attention_layernorm.scale"], cfg.norm_eps)
    act = activation(cfg.activation)
    g = act(linear(h, lp["mlp.gate_proj.kernel"], lp.get("mlp.gate_proj.bias")))
    u = linear(h, lp["mlp.up_proj.kernel"], lp.get("mlp.up_proj.bias"))
    return x + linear(g * u, lp["mlp.down_proj.kernel"], lp.get("mlp.down_proj.bias")), kv


def final_norm(params, cfg: ModelConfig, x):
    return rms_norm(x, params["final_norm"]["scale"], cfg.norm_eps)
