"""GPT-2: learned absolute positions, LayerNorm, fused ``c_attn`` and a GELU MLP, all with biases.

Parameter names are HF's (``transformer.h.{i}.`` dropped). GPT-2's ``Conv1D`` already stores
weights ``[in, out]``, so kernels are not transposed; the fused ``c_attn`` is split here at load
time into ``attn.q_proj`` / ``attn.k_proj`` / ``attn.v_proj``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from steerjax.models.config import ModelConfig, check_fields, eos_ids, linear_shapes, model_shapes, norm_shapes
from steerjax.models.layers import activation, attend, layer_norm, linear


def _field(hf: dict[str, Any], name: str, alias: str, default: Any) -> Any:
    """A GPT-2 field under its own name or its ``attribute_map`` alias (HF accepts both)."""
    return hf.get(name, hf.get(alias, default))


#: config fields read by :func:`config_from_hf` (each under its own name or its HF alias)
CONFIG_FIELDS = (
    "n_embd", "hidden_size", "n_head", "num_attention_heads", "n_layer", "num_hidden_layers", "n_positions",
    "max_position_embeddings", "n_inner", "vocab_size", "layer_norm_epsilon", "activation_function",
    "scale_attn_weights", "tie_word_embeddings",
)
#: dropouts and the sequence-classification / double-heads ``summary_*`` head (not part of the LM)
CONFIG_IGNORED = ("attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_activation", "summary_first_dropout",
                  "summary_proj_to_labels", "summary_type", "summary_use_proj", "n_ctx")
#: options accepted only when off
CONFIG_OFF = ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn")


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    check_fields(hf, "GPT-2", CONFIG_FIELDS, CONFIG_IGNORED, CONFIG_OFF)
    d = _field(hf, "n_embd", "hidden_size", 768)
    h = _field(hf, "n_head", "num_attention_heads", 12)
    act = hf.get("activation_function", "gelu_new")
    activation(act)
    return ModelConfig(
        family="gpt2",
        model_type=hf.get("model_type", "gpt2"),
        num_layers=_field(hf, "n_layer", "num_hidden_layers", 12),
        hidden_size=d,
        num_heads=h,
        num_kv_heads=h,
        head_dim=d // h,
        intermediate_size=hf.get("n_inner") or 4 * d,
        vocab_size=hf.get("vocab_size", 50257),
        max_position_embeddings=_field(hf, "n_positions", "max_position_embeddings", 1024),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        rotary_dim=0,
        attention_bias=True,
        attention_out_bias=True,
        query_scale=None if hf.get("scale_attn_weights", True) else 1.0,
        activation=act,
        mlp_bias=True,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        bos_token_id=hf.get("bos_token_id", 50256),
        eos_token_ids=eos_ids(hf.get("eos_token_id", 50256)),
        pad_token_id=hf.get("pad_token_id"),
    )


def param_shapes(cfg: ModelConfig) -> dict:
    d, i = cfg.hidden_size, cfg.intermediate_size
    layer = {
        **norm_shapes("ln_1", d, bias=True),
        **{k: v for p in ("q_proj", "k_proj", "v_proj", "c_proj")
           for k, v in linear_shapes(f"attn.{p}", d, d, bias=True).items()},
        **norm_shapes("ln_2", d, bias=True),
        **linear_shapes("mlp.c_fc", d, i, bias=True),
        **linear_shapes("mlp.c_proj", i, d, bias=True),
    }
    return model_shapes(cfg, layer, norm_bias=True, extra={"pos_embed": (cfg.max_position_embeddings, d)})


# ----------------------------------------------------------------------------- weight conversion

IGNORED = (r"\.attn\.bias$", r"\.attn\.masked_bias$")


def canonical(name: str) -> str:
    """``transformer.``-prefixed names; the original hub ``gpt2`` checkpoint has no prefix."""
    return name if name.startswith(("transformer.", "lm_head.")) else "transformer." + name


def convert_globals(get, cfg: ModelConfig) -> dict:
    out = {
        "embed": get("transformer.wte.weight"),
        "pos_embed": get("transformer.wpe.weight"),
        "final_norm": {"scale": get("transformer.ln_f.weight"), "bias": get("transformer.ln_f.bias")},
    }
    if not cfg.tie_word_embeddings:
        out["lm_head"] = get("lm_head.weight").T
    return out


def convert_layer(get, cfg: ModelConfig, i: int) -> dict:
    p = f"transformer.h.{i}."
    d = cfg.hidden_size
    qkv_w = get(p + "attn.c_attn.weight")
    qkv_b = get(p + "attn.c_attn.bias")
    out = {
        "ln_1.scale": get(p + "ln_1.weight"),
        "ln_1.bias": get(p + "ln_1.bias"),
        "ln_2.scale": get(p + "ln_2.weight"),
        "ln_2.bias": get(p + "ln_2.bias"),
    }
    for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
        out[f"attn.{name}.kernel"] = qkv_w[:, j * d : (j + 1) * d]
        out[f"attn.{name}.bias"] = qkv_b[j * d : (j + 1) * d]
    for name in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        out[f"{name}.kernel"] = get(f"{p}{name}.weight")
        out[f"{name}.bias"] = get(f"{p}{name}.bias")
    return out


# ----------------------------------------------------------------------------- forward


def embed(params, cfg: ModelConfig, tokens, positions):
    return jnp.take(params["embed"], tokens, axis=0) + jnp.take(params["pos_embed"], positions, axis=0)


def block(lp, x, cfg: ModelConfig, ctx, kv):
    b, t, _ = x.shape
    h = layer_norm(x, lp["ln_1.scale"], lp["ln_1.bias"], cfg.norm_eps)
    q, k, v = (
        linear(h, lp[f"attn.{name}.kernel"], lp[f"attn.{name}.bias"]).reshape(b, t, cfg.num_heads, cfg.head_dim)
        for name in ("q_proj", "k_proj", "v_proj")
    )
    a, kv = attend(q, k, v, ctx, kv, cfg)
    x = x + linear(a, lp["attn.c_proj.kernel"], lp["attn.c_proj.bias"])
    h = layer_norm(x, lp["ln_2.scale"], lp["ln_2.bias"], cfg.norm_eps)
    h = activation(cfg.activation)(linear(h, lp["mlp.c_fc.kernel"], lp["mlp.c_fc.bias"]))
    return x + linear(h, lp["mlp.c_proj.kernel"], lp["mlp.c_proj.bias"]), kv


def final_norm(params, cfg: ModelConfig, x):
    return layer_norm(x, params["final_norm"]["scale"], params["final_norm"]["bias"], cfg.norm_eps)
