"""GGUF checkpoints (llama.cpp): metadata -> HF-style config, tensors -> HF names, dequantized.

Quantized tensors (Q4_1, Q8_0, ...) are dequantized to float32 with the ``gguf`` package. The
GGUF architectures read here are all Llama-family ones: the tensor names and the hook undoing
llama.cpp's q/k permutation are :mod:`steerjax.models.llama`'s (``gguf_hf_name``, ``gguf_hook``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
from typing import Any

import numpy as np

from steerjax.errors import CheckpointError, UnsupportedArchitectureError
from steerjax.models import llama
from steerjax.progress import tqdm

# gguf architecture -> HF model_type
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def open_reader(path: str):
    """A ``gguf.GGUFReader`` of ``path`` (read-only, memory-mapped).

    Parsing the metadata takes seconds for a large vocabulary, so the last readers are kept, keyed
    by the file's path, size and mtime: reading a model's config first
    (:func:`steerjax.model.load_config`) and its weights next parses the file once.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise CheckpointError(f"cannot read GGUF file {path}: {e}") from e
    return _cached_reader(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _cached_reader(path: str, size: int, mtime_ns: int):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/struct.error/... on bad files
        raise CheckpointError(
            f"{path} is not a readable GGUF file ({type(e).__name__}: {e}). It may be truncated or "
            "corrupt; re-download it."
        ) from e


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:  # pragma: no cover - older gguf versions
        return default


def hf_config(reader, path: str) -> dict[str, Any]:
    """An HF-style config dict from GGUF metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"GGUF architecture {arch!r} in {path} is not supported; supported GGUF "
            f"architectures: {sorted(ARCHITECTURES)}. Load the HF safetensors version instead."
        )
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise UnsupportedArchitectureError(
            f"{path} uses per-frequency rope factors (rope_freqs, e.g. Llama 3.1); load the HF "
            "safetensors checkpoint instead, whose config carries rope_scaling."
        )
    k = lambda name, default=None: _field(reader, f"{arch}.{name}", default)  # noqa: E731
    names = {t.name for t in reader.tensors}
    blocks = {int(m.group(1)) for m in map(_LAYER_RE.match, names) if m}
    count = _count(k("block_count"), f"{arch}.block_count", path)
    if count != len(blocks) or (blocks and max(blocks) != count - 1):
        raise CheckpointError(f"{path}: {arch}.block_count is {count} but the file holds tensors of {len(blocks)} "
                              "blocks; the file is corrupt or was written wrongly. Re-download it.")
    heads = _count(k("attention.head_count"), f"{arch}.attention.head_count", path)
    d = _count(k("embedding_length"), f"{arch}.embedding_length", path)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    vocab = k("vocab_size") or (len(tokens) if tokens is not None else None)
    if vocab is None:
        raise CheckpointError(f"{path} states no vocabulary size ({arch}.vocab_size or tokenizer.ggml.tokens)")
    cfg = {
        "model_type": ARCHITECTURES[arch],
        "architectures": [f"{arch} (gguf)"],
        "num_hidden_layers": int(k("block_count")),
        "hidden_size": d,
        "intermediate_size": int(k("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(k("attention.head_count_kv", heads)),
        "head_dim": int(k("attention.key_length", d // heads)),
        "max_position_embeddings": int(k("context_length", 2048)),
        "rms_norm_eps": float(k("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(k("rope.freq_base", 10000.0)),
        "vocab_size": int(vocab),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }
    return cfg


def _count(value: Any, key: str, path: str) -> int:
    """A GGUF count field as an int (the config check bounds it further)."""
    if value is None:
        raise CheckpointError(f"{path} lacks the metadata field {key}; the file is incomplete. Re-download it.")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: the metadata field {key} is {value!r}, not a count") from None


def hf_tensors(reader, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """All tensors, dequantized, under their HF names (q/k permutation undone for llama)."""
    import gguf
    out = {}
    for t in tqdm(reader.tensors, desc="dequantizing GGUF", unit="tensor", disable=None, leave=False):
        name = llama.gguf_hf_name(t.name, _LAYER_RE.match(t.name))
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise CheckpointError(f"cannot read GGUF tensor {t.name} ({t.tensor_type.name}): {e}") from e
        arr = np.asarray(arr, dtype=np.float32)
        out[name] = llama.gguf_hook(name, arr, cfg)
    return out


def load_tokenizer(path: str, reader=None):
    """The fast tokenizer (with chat template) that transformers builds from GGUF metadata.

    Building it takes seconds (a pure-Python BPE conversion), so the result is cached under
    ``$STEERJAX_CACHE/gguf-tokenizers`` (default ``~/.cache/steerjax``), keyed by the file's path, size
    and mtime: tokenizer files only (:func:`save_tokenizer`).
    transformers' GGUF conversion ignores ``tokenizer.ggml.add_bos_token`` (SmolLM2 sets it to
    False, as its HF tokenizer does not add BOS) and can name the wrong EOS token (SmolLM2: id 1
    instead of 2); the file's own special-token ids and settings are applied (read from ``reader``,
    or from the file when it is not given).
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    cache = _tokenizer_cache_dir(path)
    if cache and os.path.exists(os.path.join(cache, "tokenizer.json")):
        # entries written before tokenizer files only were kept hold the GGUF itself as tokenizer.model
        with contextlib.suppress(OSError):
            os.remove(os.path.join(cache, "tokenizer.model"))
        try:
            return AutoTokenizer.from_pretrained(cache)
        except Exception:  # a stale or partial cache entry: rebuild it below
            pass
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the GGUF path always warns about the legacy Llama tokenizer
    try:
        tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
    finally:
        hf_logging.set_verbosity(verbosity)
    # always the file's own settings: a tokenizer built without them (BOS added) must never be cached
    _apply_special_tokens(tok, reader if reader is not None else open_reader(path))
    if cache:
        tmp = f"{cache}.tmp{os.getpid()}"
        try:
            save_tokenizer(tok, tmp)
            os.replace(tmp, cache)
        except OSError:  # read-only home, a concurrent writer: the cache is only an optimisation
            shutil.rmtree(tmp, ignore_errors=True)
    return tok


def save_tokenizer(tok, directory: str) -> None:
    """Save a tokenizer built from GGUF metadata as tokenizer files only.

    transformers' default also writes the "slow" tokenizer's vocabulary file, which for a GGUF
    tokenizer is the GGUF file itself (a copy of the whole model as ``tokenizer.model``);
    ``tokenizer.json`` alone rebuilds the fast tokenizer, so only the fast files are written.
    """
    tok.save_pretrained(directory, legacy_format=False)


def _apply_special_tokens(tok, reader) -> None:
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        idx = _field(reader, f"tokenizer.ggml.{key}")
        if idx is not None and 0 <= int(idx) < len(tok):
            setattr(tok, name, tok.convert_ids_to_tokens(int(idx)))
    for key in ("add_bos_token", "add_eos_token"):
        value = _field(reader, f"tokenizer.ggml.{key}")
        if value is not None and hasattr(tok, key):
            setattr(tok, key, bool(value))


def _tokenizer_cache_dir(path: str) -> str | None:
    import hashlib

    try:
        st = os.stat(path)
    except OSError:
        return None
    root = os.environ.get("STEERJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "steerjax")
    key = hashlib.sha256(f"v3|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return os.path.join(root, "gguf-tokenizers", key)
