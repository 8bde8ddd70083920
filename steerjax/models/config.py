"""Model configuration: one frozen dataclass shared by every family."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from steerjax.errors import CheckpointError, UnsupportedArchitectureError

#: the family names, in the order they are listed to users (:data:`steerjax.models.registry.FAMILIES`
#: holds each family's code; the family modules import this module, so it cannot import them)
FAMILY_NAMES = ("llama", "gpt2", "gpt_neox", "gemma2", "gemma3")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shapes and options of a decoder-only transformer.

    Hashable (all fields are scalars or tuples), so it can be a static argument of ``jax.jit``.
    ``layer_windows[l]`` is the attention window of block ``l`` (0 = global attention) and
    ``layer_local[l]`` says whether it uses the local RoPE base (Gemma 3).
    """

    family: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    norm_eps: float = 1e-6
    # positions
    rope_theta: float = 10000.0
    rope_local_theta: float | None = None
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    rotary_dim: int | None = None  # None: whole head (0 for GPT-2: absolute positions)
    # attention
    attention_bias: bool = False
    attention_out_bias: bool = False
    qk_norm: bool = False
    query_scale: float | None = None  # default head_dim ** -0.5
    attn_logit_softcap: float | None = None
    layer_windows: tuple[int, ...] = ()
    layer_local: tuple[bool, ...] = ()
    # mlp / residual
    activation: str = "silu"
    mlp_bias: bool = False
    parallel_residual: bool = False
    # head
    tie_word_embeddings: bool = False
    final_logit_softcap: float | None = None
    embed_scale: float | None = None
    # tokens
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILY_NAMES:
            raise UnsupportedArchitectureError(f"unknown family {self.family!r}; supported: {', '.join(FAMILY_NAMES)}")
        for name, limit in SIZE_LIMITS.items():
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1, limit))
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedArchitectureError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if not self.layer_windows:
            object.__setattr__(self, "layer_windows", (0,) * self.num_layers)
        if not self.layer_local:
            object.__setattr__(self, "layer_local", (False,) * self.num_layers)
        if len(self.layer_windows) != self.num_layers or len(self.layer_local) != self.num_layers:
            raise UnsupportedArchitectureError("per-layer attention settings must have num_layers entries")

    @property
    def rope_dim(self) -> int:
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)


#: inclusive upper bounds of the size fields: far above any released model (Llama 3.1 405B: 126
#: layers, width 16384, MLP 53248; Gemma 3: vocabulary 262144; the longest contexts ~10M tokens), and
#: far below what would exhaust memory while a config is merely read (a per-layer tuple, a shape)
SIZE_LIMITS = {
    "num_layers": 1024, "hidden_size": 2**16, "num_heads": 1024, "num_kv_heads": 1024, "head_dim": 2048,
    "intermediate_size": 2**19, "vocab_size": 2**21, "max_position_embeddings": 2**25,
}
#: HF config fields (every family's spelling) that are integers, -> the :data:`SIZE_LIMITS` entry
#: bounding them (None: a non-negative integer with the loosest bound, e.g. a window or a pattern)
HF_INT_FIELDS = {
    "num_hidden_layers": "num_layers", "n_layer": "num_layers",
    "hidden_size": "hidden_size", "n_embd": "hidden_size",
    "num_attention_heads": "num_heads", "n_head": "num_heads",
    "num_key_value_heads": "num_kv_heads", "head_dim": "head_dim",
    "intermediate_size": "intermediate_size", "n_inner": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings", "n_positions": "max_position_embeddings",
    "sliding_window": "max_position_embeddings", "max_window_layers": "num_layers",
    "sliding_window_pattern": "num_layers", "_sliding_window_pattern": "num_layers",
}
_HF_OPTIONAL_ZERO = ("sliding_window", "max_window_layers", "n_inner")  # 0 means "off" / "the default"


def check_int(name: str, value: Any, low: int, high: int, *, where: str = "config") -> int:
    """``value`` as an ``int`` in ``[low, high]``.

    Raises:
      CheckpointError: not an integer (a string, a float such as ``4.5`` or ``1e9``, a bool).
      UnsupportedArchitectureError: an integer outside the range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CheckpointError(f"{where} field {name} must be an integer, got {value!r} ({type(value).__name__}); "
                              "fix config.json")
    value = int(value)
    if not low <= value <= high:
        raise UnsupportedArchitectureError(f"{where} field {name}={value} is outside the supported range "
                                           f"[{low}, {high}]; is config.json the right one?")
    return value


def check_hf_config(hf: Any, where: str = "config.json") -> None:
    """Check the integer fields of an HF config dict (and of a nested ``text_config``) before a
    family reads it: each an integer within :data:`SIZE_LIMITS`, token ids integers, and the heads
    dividing the width where the head size is implied. Nothing is allocated before this passes.

    Raises:
      CheckpointError: not a JSON object, or a field of the wrong type.
      UnsupportedArchitectureError: a field out of range, or heads that do not divide the width.
    """
    if not isinstance(hf, dict):
        raise CheckpointError(f"{where} must be a JSON object, got {type(hf).__name__}")
    if not isinstance(hf.get("model_type", ""), str):
        raise CheckpointError(f"{where} field model_type must be a string, got {hf['model_type']!r}")
    for name, limit in HF_INT_FIELDS.items():
        value = hf.get(name)
        if value is None:
            continue
        low = 0 if name in _HF_OPTIONAL_ZERO else 1
        check_int(name, value, low, SIZE_LIMITS[limit], where=where)
    for name in ("bos_token_id", "pad_token_id", "eos_token_id"):
        value = hf.get(name)
        for v in (value if isinstance(value, list) else [value]):
            if v is not None:
                check_int(name, v, -1, SIZE_LIMITS["vocab_size"], where=where)
    width = hf.get("hidden_size", hf.get("n_embd"))
    heads = hf.get("num_attention_heads", hf.get("n_head"))
    kv = hf.get("num_key_value_heads")
    if heads and kv and heads % kv:
        raise UnsupportedArchitectureError(f"{where}: num_attention_heads={heads} is not a multiple of "
                                           f"num_key_value_heads={kv}")
    if width and heads and not hf.get("head_dim") and width % heads:
        raise UnsupportedArchitectureError(f"{where}: the width {width} is not divisible by the {heads} heads "
                                           "(and no head_dim is given)")
    text = hf.get("text_config")
    if text is not None:
        check_hf_config(text, f"{where} text_config")


def legacy_rope(hf: dict[str, Any], where: str = "config.json") -> dict[str, Any]:
    """A transformers 5 config's ``rope_parameters`` as the fields transformers 4 wrote and the
    families read: ``rope_theta``, ``partial_rotary_factor``, ``rope_scaling`` (when the type is
    not ``default``) and, for Gemma 3's per-layer-type parameters, ``rope_local_base_freq`` (the
    sliding layers' base). A config without ``rope_parameters`` is returned as it is.

    Raises:
      CheckpointError: ``rope_parameters`` is not an object, or disagrees with a field also present.
      UnsupportedArchitectureError: scaled rotary embeddings on the sliding layers.
    """
    rope = hf.get("rope_parameters")
    if rope is None:
        return hf
    if not isinstance(rope, dict):
        raise CheckpointError(f"{where} field rope_parameters must be an object, got {rope!r}")
    out = {k: v for k, v in hf.items() if k != "rope_parameters"}
    if rope and set(rope) <= {"full_attention", "sliding_attention"}:  # per layer type (Gemma 3)
        local = rope.get("sliding_attention") or {}
        if local.get("rope_type", "default") != "default":
            raise UnsupportedArchitectureError(f"{where}: scaled rotary embeddings on the sliding layers "
                                               f"({local}) are not supported")
        if "rope_theta" in local:
            out["rope_local_base_freq"] = local["rope_theta"]
        rope = rope.get("full_attention") or {}
    rope = dict(rope)
    for name in ("rope_theta", "partial_rotary_factor"):
        if name in rope:
            value = rope.pop(name)
            if out.get(name) is not None and out[name] != value:
                raise CheckpointError(f"{where}: {name}={out[name]!r} disagrees with rope_parameters ({value!r})")
            out[name] = value
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        out["rope_scaling"] = rope
    return out


def leaves(tree):
    """The leaves of a tree of nested dicts (params, shapes), in insertion order."""
    if isinstance(tree, dict):
        for v in tree.values():
            yield from leaves(v)
    else:
        yield tree


def freeze(value: Any) -> Any:
    """Turn nested dicts/lists into sorted tuples so a config stays hashable."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


# ----------------------------------------------------------------------------- HF config fields


def hf_sizes(hf: dict[str, Any], *, eps: str, eps_default: float, max_positions: int = 2048) -> dict[str, Any]:
    """The size fields that Llama-like and GPT-NeoX configs name alike (``eps``: the norm epsilon's
    field name), as :class:`ModelConfig` keyword arguments."""
    return dict(
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        max_position_embeddings=hf.get("max_position_embeddings", max_positions),
        norm_eps=hf.get(eps, eps_default),
    )


def hf_tokens(hf: dict[str, Any], *, tie: bool, bos: int | None = None, eos: Any = None) -> dict[str, Any]:
    """Embedding tying and special token ids (with each family's defaults) as keyword arguments."""
    return dict(
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", tie)),
        bos_token_id=hf.get("bos_token_id", bos),
        eos_token_ids=eos_ids(hf.get("eos_token_id", eos)),
        pad_token_id=hf.get("pad_token_id"),
    )


# ----------------------------------------------------------------------------- HF config whitelist

#: fields every transformers config carries that never change a forward pass: bookkeeping, output
#: switches and generation defaults (sampling is steerjax's own). Token ids are read where needed.
GENERIC_FIELDS = frozenset({
    "_name_or_path", "_attn_implementation_autoset", "architectures", "auto_map", "transformers_version",
    "torch_dtype", "dtype", "use_bfloat16",
    "return_dict", "output_hidden_states", "output_attentions", "output_scores", "torchscript", "tf_legacy_loss",
    "finetuning_task", "id2label", "label2id", "problem_type", "prefix", "task_specific_params", "tokenizer_class",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "chunk_size_feed_forward", "is_decoder", "use_cache", "initializer_range", "model_type",
    "bad_words_ids", "begin_suppress_tokens", "diversity_penalty", "do_sample", "early_stopping",
    "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty", "forced_bos_token_id", "forced_eos_token_id",
    "length_penalty", "max_length", "min_length", "no_repeat_ngram_size", "num_beam_groups", "num_beams",
    "num_return_sequences", "remove_invalid_values", "repetition_penalty", "return_dict_in_generate",
    "suppress_tokens", "temperature", "top_k", "top_p", "typical_p",
})
#: generic fields that change the model unless they are off (None, False, 0 or empty)
GENERIC_OFF = ("add_cross_attention", "is_encoder_decoder", "tie_encoder_decoder", "cross_attention_hidden_size",
               "pruned_heads")
#: rotary scaling types implemented by :func:`steerjax.models.layers.inv_frequencies`
ROPE_SCALING_TYPES = ("default", "linear", "llama3")


def check_fields(hf: dict[str, Any], model_type: str, handled, ignored=(), off=()) -> None:
    """Refuse a config field steerjax would otherwise ignore silently.

    Every field of ``hf`` must be read by the family (``handled``), be known to leave the forward
    pass unchanged (``ignored``, :data:`GENERIC_FIELDS`), or be ``None``. Fields in ``off`` (and
    :data:`GENERIC_OFF`) are accepted only when they are off (``None``, ``False``, ``0`` or empty).
    A ``rope_scaling`` of an unimplemented type is refused too.

    Raises:
      UnsupportedArchitectureError: naming the first offending field.
    """
    known = set(handled) | set(ignored) | GENERIC_FIELDS
    for name, value in hf.items():
        if name in (*GENERIC_OFF, *off):
            if value:
                raise UnsupportedArchitectureError(
                    f"{model_type} config field {name}={value!r} is not supported (steerjax implements "
                    f"it only when off); remove it from config.json only if the checkpoint does not use it"
                )
        elif name not in known and value is not None:
            raise UnsupportedArchitectureError(
                f"{model_type} config field {name!r} (= {value!r}) is not supported: steerjax does not "
                "implement it and will not ignore it silently. Open an issue with the config.json if you need it."
            )
    rs = hf.get("rope_scaling")
    if rs:
        if not isinstance(rs, dict):
            raise UnsupportedArchitectureError(f"{model_type} config field rope_scaling must be a dict, got {rs!r}")
        kind = rs.get("rope_type", rs.get("type", "default"))
        if kind not in ROPE_SCALING_TYPES:
            raise UnsupportedArchitectureError(
                f"{model_type} config field rope_scaling: type {kind!r} is not supported "
                f"(supported: {', '.join(ROPE_SCALING_TYPES)})"
            )
