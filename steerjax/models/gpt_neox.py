"""GPT-NeoX (Pythia and kin): LayerNorm, partial rotary, fused QKV, parallel or sequential residual.

The module tree keeps HF's names where it can (``layers/attention/...``, ``layers/mlp/...``;
``dense`` is ``o_proj``, ``dense_h_to_4h`` / ``dense_4h_to_h`` are ``up_proj`` / ``down_proj``);
linear weights are stored ``[in, out]`` as ``kernel``. The fused ``attention.query_key_value`` is
interleaved per head (``[H, 3, Dh]`` along its output axis) and is split at load time into
``q_proj`` / ``k_proj`` / ``v_proj``.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from steerjax.models.config import ModelConfig, check_fields, freeze, hf_sizes, hf_tokens
from steerjax.models.hooks import transpose
from steerjax.models.layers import MLP, Attention, Decoder, LayerNorm, activation

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


# ----------------------------------------------------------------------------- weight conversion

IGNORED = (r"\.attention\.bias$", r"\.attention\.masked_bias$", r"rotary_emb\.inv_freq$")


def canonical(name: str) -> str:
    """``gpt_neox.``-prefixed names; the output head ``embed_out`` becomes ``lm_head``.

    Renaming the head lets the shared loader skip a duplicate head of a tied checkpoint.
    """
    if name.startswith("embed_out."):
        return "lm_head." + name[len("embed_out."):]
    return name if name.startswith(("gpt_neox.", "lm_head.")) else "gpt_neox." + name


def _qkv(cfg: ModelConfig, j: int, bias: bool):
    """The hook taking q (``j=0``), k or v out of the fused ``query_key_value``, interleaved per
    head (``[H, 3, Dh]`` along its output axis)."""
    h, dh = cfg.num_heads, cfg.head_dim
    if bias:
        return lambda b: b.reshape(h, 3, dh)[:, j].reshape(h * dh)
    return lambda w: w.reshape(h, 3, dh, w.shape[-1])[:, j].reshape(h * dh, w.shape[-1]).T


def conversion(cfg: ModelConfig) -> dict[str, tuple[str, object]]:
    """Module path -> (HF tensor name, hook)."""
    p = "gpt_neox.layers.{i}."
    table = {
        "embed/embedding": ("gpt_neox.embed_in.weight", None),
        "final_norm/scale": ("gpt_neox.final_layer_norm.weight", None),
        "final_norm/bias": ("gpt_neox.final_layer_norm.bias", None),
        "lm_head/kernel": ("lm_head.weight", transpose),
        "layers/attention/o_proj/kernel": (p + "attention.dense.weight", transpose),
        "layers/attention/o_proj/bias": (p + "attention.dense.bias", None),
        "layers/mlp/up_proj/kernel": (p + "mlp.dense_h_to_4h.weight", transpose),
        "layers/mlp/up_proj/bias": (p + "mlp.dense_h_to_4h.bias", None),
        "layers/mlp/down_proj/kernel": (p + "mlp.dense_4h_to_h.weight", transpose),
        "layers/mlp/down_proj/bias": (p + "mlp.dense_4h_to_h.bias", None),
    }
    for name in ("input_layernorm", "post_attention_layernorm"):
        table[f"layers/{name}/scale"] = (f"{p}{name}.weight", None)
        table[f"layers/{name}/bias"] = (f"{p}{name}.bias", None)
    for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
        table[f"layers/attention/{name}/kernel"] = (p + "attention.query_key_value.weight", _qkv(cfg, j, False))
        table[f"layers/attention/{name}/bias"] = (p + "attention.query_key_value.bias", _qkv(cfg, j, True))
    return table


# ----------------------------------------------------------------------------- modules


class Block(nnx.Module):
    """``x + attn(ln1(x)) + mlp(ln2(x))`` (parallel) or the two residual steps in sequence."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = LayerNorm(cfg.hidden_size, cfg.norm_eps, rngs=rngs)
        self.attention = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = LayerNorm(cfg.hidden_size, cfg.norm_eps, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.parallel = cfg.parallel_residual

    def __call__(self, x, ctx, kv):
        a, kv = self.attention(self.input_layernorm(x), ctx, kv)
        if self.parallel:
            return x + a + self.mlp(self.post_attention_layernorm(x)), kv
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class Model(Decoder):
    """GPT-NeoX decoder: :class:`Block` s and a final LayerNorm."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, Block, LayerNorm(cfg.hidden_size, cfg.norm_eps, rngs=rngs), rngs=rngs)
