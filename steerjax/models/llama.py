"""Llama-like decoders: Llama 2/3, Mistral, SmolLM, Qwen2/2.5, Qwen3, Phi-3.

They differ only by flags: q/k/v bias (Qwen2), per-head q/k RMSNorm (Qwen3), sliding windows
(Mistral, Phi-3, Qwen with ``use_sliding_window``), partial rotary (Phi-3 ``partial_rotary_factor``)
and fused weights (Phi-3 ``qkv_proj`` and ``gate_up_proj``, split here at load time).
The module tree keeps HF's names (``layers/self_attn/q_proj/kernel`` for
``model.layers.{i}.self_attn.q_proj.weight``); linear weights are stored ``[in, out]`` as ``kernel``.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from steerjax.models.config import ModelConfig, check_fields, freeze, hf_sizes, hf_tokens
from steerjax.models.hooks import split_rows, transpose
from steerjax.models.layers import Attention, Decoder, GatedMLP, RMSNorm

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


# ----------------------------------------------------------------------------- weight conversion

IGNORED = (r"rotary_emb\.inv_freq$",)


def canonical(name: str) -> str:
    return name if name.startswith(("model.", "lm_head.")) else "model." + name


def conversion(cfg: ModelConfig) -> dict[str, tuple[str, Any]]:
    """Module path -> (HF tensor name, ``{i}`` for the layer; hook turning it into the parameter).

    Phi-3's fused ``qkv_proj`` and ``gate_up_proj`` are split by row ranges; every other kernel is
    HF's ``[out, in]`` weight transposed."""
    p = "model.layers.{i}."
    table = {
        "embed/embedding": ("model.embed_tokens.weight", None),
        "final_norm/scale": ("model.norm.weight", None),
        "lm_head/kernel": ("lm_head.weight", transpose),
        "layers/input_layernorm/scale": (p + "input_layernorm.weight", None),
        "layers/post_attention_layernorm/scale": (p + "post_attention_layernorm.weight", None),
        "layers/self_attn/q_norm/scale": (p + "self_attn.q_norm.weight", None),
        "layers/self_attn/k_norm/scale": (p + "self_attn.k_norm.weight", None),
    }
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        table[f"layers/self_attn/{name}/kernel"] = (f"{p}self_attn.{name}.weight", transpose)
        table[f"layers/self_attn/{name}/bias"] = (f"{p}self_attn.{name}.bias", None)
    for name in ("gate_proj", "up_proj", "down_proj"):
        table[f"layers/mlp/{name}/kernel"] = (f"{p}mlp.{name}.weight", transpose)
        table[f"layers/mlp/{name}/bias"] = (f"{p}mlp.{name}.bias", None)
    if cfg.model_type == "phi3":
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        for name, rows in (("q_proj", (0, q)), ("k_proj", (q, q + kv)), ("v_proj", (q + kv, q + 2 * kv))):
            table[f"layers/self_attn/{name}/kernel"] = (p + "self_attn.qkv_proj.weight", split_rows(*rows))
        i = cfg.intermediate_size
        table["layers/mlp/gate_proj/kernel"] = (p + "mlp.gate_up_proj.weight", split_rows(0, i))
        table["layers/mlp/up_proj/kernel"] = (p + "mlp.gate_up_proj.weight", split_rows(i, 2 * i))
    return table


# GGUF (llama.cpp) tensor names -> HF names, for the GGUF architectures of this family
GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def gguf_hf_name(name: str, layer_match) -> str:
    """The HF name of GGUF tensor ``name`` (``layer_match``: its ``blk.{i}.{part}.{weight|bias}``
    match, or None); names without one come back as ``gguf.{name}``, reported as unexpected."""
    if name in GGUF_NAMES:
        return GGUF_NAMES[name]
    if layer_match and layer_match.group(2) in GGUF_LAYER_NAMES:
        i, part, kind = layer_match.groups()
        return f"model.layers.{i}.{GGUF_LAYER_NAMES[part]}.{kind}"
    return f"gguf.{name}"


def gguf_hook(name: str, w, hf: dict[str, Any]):
    """Undo llama.cpp's q/k permutation (its interleaved rotary layout) of ``llama`` models, as
    transformers does; every other tensor is returned as it is."""
    if hf["model_type"] != "llama" or not name.endswith(("q_proj.weight", "k_proj.weight")):
        return w
    heads = hf["num_attention_heads"] if "q_proj" in name else hf["num_key_value_heads"]
    dim = w.shape[0] // heads // 2
    return w.reshape(heads, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------- modules


class Block(nnx.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps, rngs=rngs)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps, rngs=rngs)
        self.mlp = GatedMLP(cfg, rngs=rngs)

    def __call__(self, x, ctx, kv):
        a, kv = self.self_attn(self.input_layernorm(x), ctx, kv)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class Model(Decoder):
    """Llama-like decoder: :class:`Block` s and a final RMSNorm."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, Block, RMSNorm(cfg.hidden_size, cfg.norm_eps, rngs=rngs), rngs=rngs)
