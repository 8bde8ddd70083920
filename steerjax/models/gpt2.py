"""GPT-2: learned absolute positions, LayerNorm, fused ``c_attn`` and a GELU MLP, all with biases.

The module tree: ``layers/ln_1``, ``layers/attn`` (q/k/v/o projections: the fused ``c_attn`` is
split at load time, ``c_proj`` is ``o_proj``), ``layers/ln_2``, ``layers/mlp`` (``c_fc`` is
``up_proj``, ``c_proj`` is ``down_proj``). GPT-2's ``Conv1D`` already stores weights ``[in, out]``,
so kernels are not transposed.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from steerjax.models.config import ModelConfig, check_fields, eos_ids
from steerjax.models.hooks import split_columns
from steerjax.models.layers import MLP, Attention, Decoder, Embed, LayerNorm, activation


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


# ----------------------------------------------------------------------------- weight conversion

IGNORED = (r"\.attn\.bias$", r"\.attn\.masked_bias$")


def canonical(name: str) -> str:
    """``transformer.``-prefixed names; the original hub ``gpt2`` checkpoint has no prefix."""
    return name if name.startswith(("transformer.", "lm_head.")) else "transformer." + name


def conversion(cfg: ModelConfig) -> dict[str, tuple[str, object]]:
    """Module path -> (HF tensor name, hook). ``Conv1D`` weights are ``[in, out]`` already; the
    fused ``c_attn`` (``[D, 3D]``, q | k | v) is split by columns."""
    p, d = "transformer.h.{i}.", cfg.hidden_size
    table = {
        "embed/embedding": ("transformer.wte.weight", None),
        "pos_embed/embedding": ("transformer.wpe.weight", None),
        "final_norm/scale": ("transformer.ln_f.weight", None),
        "final_norm/bias": ("transformer.ln_f.bias", None),
        "lm_head/kernel": ("lm_head.weight", lambda w: w.T),
        "layers/attn/o_proj/kernel": (p + "attn.c_proj.weight", None),
        "layers/attn/o_proj/bias": (p + "attn.c_proj.bias", None),
        "layers/mlp/up_proj/kernel": (p + "mlp.c_fc.weight", None),
        "layers/mlp/up_proj/bias": (p + "mlp.c_fc.bias", None),
        "layers/mlp/down_proj/kernel": (p + "mlp.c_proj.weight", None),
        "layers/mlp/down_proj/bias": (p + "mlp.c_proj.bias", None),
    }
    for n in (1, 2):
        table[f"layers/ln_{n}/scale"] = (f"{p}ln_{n}.weight", None)
        table[f"layers/ln_{n}/bias"] = (f"{p}ln_{n}.bias", None)
    for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
        table[f"layers/attn/{name}/kernel"] = (p + "attn.c_attn.weight", split_columns(j * d, (j + 1) * d))
        table[f"layers/attn/{name}/bias"] = (p + "attn.c_attn.bias", split_columns(j * d, (j + 1) * d))
    return table


# ----------------------------------------------------------------------------- modules


class Block(nnx.Module):
    """``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.ln_1 = LayerNorm(cfg.hidden_size, cfg.norm_eps, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.ln_2 = LayerNorm(cfg.hidden_size, cfg.norm_eps, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, ctx, kv):
        a, kv = self.attn(self.ln_1(x), ctx, kv)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv


class Model(Decoder):
    """GPT-2: learned absolute positions ``pos_embed`` added to the token embeddings."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, Block, LayerNorm(cfg.hidden_size, cfg.norm_eps, rngs=rngs), rngs=rngs)
        self.pos_embed = Embed(cfg.max_position_embeddings, cfg.hidden_size, ("positions", "embed"), rngs=rngs)

    def embed_tokens(self, tokens, positions):
        return self.embed(tokens) + self.pos_embed(positions)
