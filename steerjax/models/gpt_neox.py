"""GPT-NeoX (Pythia and kin): LayerNorm, partial rotary, fused QKV, parallel or sequential residual.

Parameter names are HF's (``gpt_neox.layers.{i}.`` dropped); linear weights are stored
``[in, out]`` as ``kernel``. The fused ``attention.query_key_value`` is interleaved per head
(``[H, 3, Dh]`` along its output axis) and is split here at load time into
``attention.q_proj`` / ``attention.k_proj`` / ``attention.v_proj``.
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
from steerjax.models.layers import activation, apply_rotary, attend, layer_norm, linear

#: config fields read by :func:`config_from_hf` (``partial_rotary_factor`` / ``rope_theta`` are newer
#: transformers' names of ``rotary_pct`` / ``rotary_emb_base``)
CONFIG_FIELDS = (
    "hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size",
    "max_position_embeddings", "layer_norm_eps", "rotary_emb_base", "rope_theta", "rope_scaling", "rotary_pct",
    "partial_rotary_factor", "hidden_act", "attention_bias", "use_parallel_residual", "tie_word_embeddings",
)
#: dropouts (inference runs none) and the classification head's dropout
CONFIG_IGNORED = ("attention_dropout", "hidden_dropout", "classifier_dropout")


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    check_fields(hf, hf.get("model_type", "gpt_neox"), CONFIG_FIELDS, CONFIG_IGNORED)
    d, h = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = d // h
    rope_scaling = hf.get("rope_scaling")
    act = hf.get("hidden_act", "gelu")
    activation(act)
    attn_bias = bool(hf.get("attention_bias", True))
    return ModelConfig(
        family="gpt_neox",
        model_type=hf.get("model_type", "gpt_neox"),
        **hf_sizes(hf, eps="layer_norm_eps", eps_default=1e-5),
        num_kv_heads=h,
        head_dim=head_dim,
        rope_theta=float(hf.get("rotary_emb_base", hf.get("rope_theta", 10000.0))),
        rope_scaling=freeze(rope_scaling),
        rotary_dim=int(head_dim * hf.get("rotary_pct", hf.get("partial_rotary_factor", 0.25))),
        attention_bias=attn_bias,
        attention_out_bias=attn_bias,
        activation=act,
        mlp_bias=True,
        parallel_residual=bool(hf.get("use_parallel_residual", True)),
        **hf_tokens(hf, tie=False, bos=0, eos=2),
    )


def param_shapes(cfg: ModelConfig) -> dict:
    d, i = cfg.hidden_size, cfg.intermediate_size
    layer = {
        **norm_shapes("input_layernorm", d, bias=True),
        **{k: v for p in ("q_proj", "k_proj", "v_proj")
           for k, v in linear_shapes(f"attention.{p}", d, d, cfg.attention_bias).items()},
        **linear_shapes("attention.dense", d, d, cfg.attention_out_bias),
        **norm_shapes("post_attention_layernorm", d, bias=True),
        **linear_shapes("mlp.dense_h_to_4h", d, i, bias=True),
        **linear_shapes("mlp.dense_4h_to_h", i, d, bias=True),
    }
    return model_shapes(cfg, layer, norm_bias=True)


# ----------------------------------------------------------------------------- weight conversion

IGNORED = (r"\.attention\.bias$", r"\.attention\.masked_bias$", r"rotary_emb\.inv_freq$")


def canonical(name: str) -> str:
    """``gpt_neox.``-prefixed names; the output head ``embed_out`` becomes ``lm_head``.

    Renaming the head lets the shared loader skip a duplicate head of a tied checkpoint.
    """
    if name.startswith("embed_out."):
        return "lm_head." + name[len("embed_out."):]
    return name if name.startswith(("gpt_neox.", "lm_head.")) else "gpt_neox." + name


def convert_globals(get, cfg: ModelConfig) -> dict:
    out = {
        "embed": get("gpt_neox.embed_in.weight"),
        "final_norm": {
            "scale": get("gpt_neox.final_layer_norm.weight"),
            "bias": get("gpt_neox.final_layer_norm.bias"),
        },
    }
    if not cfg.tie_word_embeddings:
        out["lm_head"] = get("lm_head.weight").T
    return out


def convert_layer(get, cfg: ModelConfig, i: int) -> dict:
    p = f"gpt_neox.layers.{i}."
    h, dh, d = cfg.num_heads, cfg.head_dim, cfg.hidden_size
    out = {
        "input_layernorm.scale": get(p + "input_layernorm.weight"),
        "input_layernorm.bias": get(p + "input_layernorm.bias"),
        "post_attention_layernorm.scale": get(p + "post_attention_layernorm.weight"),
        "post_attention_layernorm.bias": get(p + "post_attention_layernorm.bias"),
        "attention.dense.kernel": get(p + "attention.dense.weight").T,
    }
    qkv = get(p + "attention.query_key_value.weight").reshape(h, 3, dh, d)
    for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
        out[f"attention.{name}.kernel"] = qkv[:, j].reshape(h * dh, d).T
    if cfg.attention_bias:
        qkv_b = get(p + "attention.query_key_value.bias").reshape(h, 3, dh)
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"attention.{name}.bias"] = qkv_b[:, j].reshape(h * dh)
    if cfg.attention_out_bias:
        out["attention.dense.bias"] = get(p + "attention.dense.bias")
    for name in ("dense_h_to_4h", "dense_4h_to_h"):
        out[f"mlp.{name}.kernel"] = get(f"{p}mlp.{name}.weight").T
        out[f"mlp.{name}.bias"] = get(f"{p}mlp.{name}.bias")
    return out


# ----------------------------------------------------------------------------- forward


def embed(params, cfg: ModelConfig, tokens, positions):
    return jnp.take(params["embed"], tokens, axis=0)


def _attention(lp, x, cfg: ModelConfig, ctx, kv):
    b, t, _ = x.shape
    q, k, v = (
        linear(x, lp[f"attention.{name}.kernel"], lp.get(f"attention.{name}.bias"))
        .reshape(b, t, cfg.num_heads, cfg.head_dim)
        for name in ("q_proj", "k_proj", "v_proj")
    )
    if ctx.rotary is not None:
        q, k = apply_rotary(q, ctx.rotary), apply_rotary(k, ctx.rotary)
    a, kv = attend(q, k, v, ctx, kv, cfg)
    return linear(a, lp["attention.dense.kernel"], lp.get("attention.dense.bias")), kv


def _mlp(lp, x, cfg: ModelConfig):
    h = activation(cfg.activation)(linear(x, lp["mlp.dense_h_to_4h.kernel"], lp["mlp.dense_h_to_4h.bias"]))
    return linear(h, lp["mlp.dense_4h_to_h.kernel"], lp["mlp.dense_4h_to_h.bias"])


def block(lp, x, cfg: ModelConfig, ctx, kv):
    """``x + attn(ln1(x)) + mlp(ln2(x))`` (parallel) or the two residual steps in sequence."""
    a, kv = _attention(lp, layer_norm(x, lp["input_layernorm.scale"], lp["input_layernorm.bias"], cfg.norm_eps),
                       cfg, ctx, kv)
    if cfg.parallel_residual:
        h = layer_norm(x, lp["post_attention_layernorm.scale"], lp["post_attention_layernorm.bias"], cfg.norm_eps)
        return x + a + _mlp(lp, h, cfg), kv
    x = x + a
    h = layer_norm(x, lp["post_attention_layernorm.scale"], lp["post_attention_layernorm.bias"], cfg.norm_eps)
    return x + _mlp(lp, h, cfg), kv


def final_norm(params, cfg: ModelConfig, x):
    return layer_norm(x, params["final_norm"]["scale"], params["final_norm"]["bias"], cfg.norm_eps)
