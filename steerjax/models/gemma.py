"""Gemma 2 and Gemma 3 (text) decoders.

Both put RMSNorms around each sublayer (pre and post attention, pre and post MLP), store norm
weights as ``w`` for a ``(1 + w)`` scale, scale embeddings by ``sqrt(hidden_size)`` (rounded to
the parameter dtype, as HF does) and tie the LM head. Gemma 2 soft-caps attention and final
logits and alternates sliding and global layers. Gemma 3 adds per-head q/k RMSNorm and gives its
sliding (local) layers their own RoPE base without ``rope_scaling``; HF ignores its
``attn_logit_softcapping``, and so does this module. The multimodal ``gemma3`` config and
checkpoint are read for their language model only. The module tree keeps HF's names (as Llama's);
linear weights are stored ``[in, out]`` as ``kernel``.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from flax import nnx

from steerjax.errors import UnsupportedArchitectureError
from steerjax.models import llama
from steerjax.models.config import ModelConfig, check_fields, eos_ids, freeze
from steerjax.models.layers import Attention, Decoder, GatedMLP, RMSNorm

# HF's config defaults (Gemma2Config, Gemma3TextConfig): multimodal configs omit most of them.
_DEFAULTS = {
    "gemma2": dict(
        vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
        rms_norm_eps=1e-6, rope_theta=10000.0, query_pre_attn_scalar=256, sliding_window=4096,
        final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    ),
    "gemma3": dict(
        vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=131072,
        rms_norm_eps=1e-6, rope_theta=1000000.0, rope_local_base_freq=10000.0,
        query_pre_attn_scalar=256, sliding_window=4096, sliding_window_pattern=6,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    ),
}
_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")

#: config fields read by :func:`config_from_hf`. Gemma 3's ``attn_logit_softcapping`` is read and
#: dropped on purpose: HF's Gemma 3 does not apply it either.
CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
    "rope_local_base_freq", "query_pre_attn_scalar", "sliding_window", "sliding_window_pattern",
    "_sliding_window_pattern", "layer_types", "final_logit_softcapping", "attn_logit_softcapping",
    "attention_bias", "hidden_activation", "hidden_act", "tie_word_embeddings",
)
#: dropouts, and the KV-cache layout transformers should use (steerjax has its own)
CONFIG_IGNORED = ("attention_dropout", "cache_implementation")
#: options accepted only when off
CONFIG_OFF = ("use_bidirectional_attention",)
#: the multimodal ``gemma3`` wrapper: its ``text_config`` is read, the vision tower is not used
MULTIMODAL_FIELDS = ("text_config", "vision_config", "mm_tokens_per_image", "boi_token_index", "eoi_token_index",
                     "image_token_index", "tie_word_embeddings")


def _text_config(hf: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The family and the language-model config with HF's defaults filled in."""
    mt = hf["model_type"]
    family = "gemma2" if mt == "gemma2" else "gemma3"
    text = hf
    if mt == "gemma3":
        check_fields(hf, mt, MULTIMODAL_FIELDS)
        text = dict(hf.get("text_config") or {})
        check_fields({k: v for k, v in text.items() if k != "model_type"}, f"{mt} text_config", CONFIG_FIELDS,
                     CONFIG_IGNORED, CONFIG_OFF)
    else:
        check_fields(hf, mt, CONFIG_FIELDS, CONFIG_IGNORED, CONFIG_OFF)
        text.update({k: hf[k] for k in _TOKEN_KEYS if hf.get(k) is not None})
    out = dict(_DEFAULTS[family])
    out.update(text)
    if "sliding_window_pattern" not in text and "_sliding_window_pattern" in text:
        out["sliding_window_pattern"] = text["_sliding_window_pattern"]
    return family, out


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    family, c = _text_config(hf)
    n = c["num_hidden_layers"]
    if c.get("layer_types"):
        types = list(c["layer_types"])
    elif family == "gemma2":
        types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
    else:
        pattern = c["sliding_window_pattern"]
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
    if len(types) != n or unknown:
        raise UnsupportedArchitectureError(
            f"layer_types must list {n} of 'sliding_attention'/'full_attention'; got {types}"
        )
    sliding = tuple(ty == "sliding_attention" for ty in types)
    window = c.get("sliding_window") or 0
    gemma3 = family == "gemma3"
    d = c["hidden_size"]
    bias = bool(c.get("attention_bias", False))
    return ModelConfig(
        family=family,
        model_type=hf["model_type"],
        num_layers=n,
        hidden_size=d,
        num_heads=c["num_attention_heads"],
        num_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
        head_dim=c["head_dim"],
        intermediate_size=c["intermediate_size"],
        vocab_size=c["vocab_size"],
        max_position_embeddings=c["max_position_embeddings"],
        norm_eps=c["rms_norm_eps"],
        rope_theta=c["rope_theta"],
        rope_local_theta=c["rope_local_base_freq"] if gemma3 else None,
        rope_scaling=freeze(c.get("rope_scaling")),
        attention_bias=bias,
        attention_out_bias=bias,
        qk_norm=gemma3,
        query_scale=c["query_pre_attn_scalar"] ** -0.5,
        attn_logit_softcap=None if gemma3 else c.get("attn_logit_softcapping"),
        layer_windows=tuple(window if s else 0 for s in sliding),
        layer_local=sliding if gemma3 else (),
        activation=c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh",
        tie_word_embeddings=bool(c.get("tie_word_embeddings", True)),
        final_logit_softcap=c.get("final_logit_softcapping"),
        embed_scale=math.sqrt(d),
        bos_token_id=c.get("bos_token_id"),
        eos_token_ids=eos_ids(c.get("eos_token_id")),
        pad_token_id=c.get("pad_token_id"),
    )


# ----------------------------------------------------------------------------- weight conversion

IGNORED = (r"rotary_emb(_local)?\.inv_freq$", r"embed_tokens\.embed_scale$",
           r"^model\.(vision_tower|multi_modal_projector)\.")

_PREFIXES = (("language_model.model.", "model."), ("model.language_model.", "model."),
             ("language_model.lm_head.", "lm_head."))


def canonical(name: str) -> str:
    for old, new in _PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name if name.startswith(("model.", "lm_head.")) else "model." + name


def conversion(cfg: ModelConfig) -> dict[str, tuple[str, object]]:
    """Llama's table (q/k/v/o, gated MLP, biases, q/k norms) plus Gemma's two extra norms."""
    table = llama.conversion(cfg)
    for name in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
        table[f"layers/{name}/scale"] = (f"model.layers.{{i}}.{name}.weight", None)
    return table


# ----------------------------------------------------------------------------- modules


def _norm(cfg: ModelConfig, rngs: nnx.Rngs) -> RMSNorm:
    return RMSNorm(cfg.hidden_size, cfg.norm_eps, offset=1.0, rngs=rngs)


class Block(nnx.Module):
    """Sandwich-norm block: each sublayer's input and output are normed (``1 + w`` scales)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = _norm(cfg, rngs)
        self.self_attn = Attention(cfg, rngs=rngs, norm_offset=1.0)
        self.post_attention_layernorm = _norm(cfg, rngs)
        self.pre_feedforward_layernorm = _norm(cfg, rngs)
        self.mlp = GatedMLP(cfg, rngs=rngs)
        self.post_feedforward_layernorm = _norm(cfg, rngs)

    def __call__(self, x, ctx, kv):
        a, kv = self.self_attn(self.input_layernorm(x), ctx, kv)
        x = x + self.post_attention_layernorm(a)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x))), kv


class Model(Decoder):
    """Gemma 2 / 3 decoder: embeddings scaled by ``sqrt(hidden_size)`` in the parameter dtype."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, Block, _norm(cfg, rngs), rngs=rngs)

    def embed_tokens(self, tokens, positions):
        table = self.embed.embedding[...]
        return jnp.take(table, tokens, axis=0) * jnp.asarray(self.cfg.embed_scale, table.dtype)
