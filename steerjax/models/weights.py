"""Checkpoint reading and conversion to a stacked params pytree.

Conversion is checked, never silent: every expected weight must be present, every checkpoint
tensor must be used (or be a known buffer), and every shape must match the config.
"""

from __future__ import annotations

import json
import os
import re
import struct as _struct
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from steerjax.errors import CheckpointError, ShapeMismatchError, WeightKeyError
from steerjax.models.config import ModelConfig, leaves

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Memory-map a ``.safetensors`` file into numpy arrays (bf16 via ml_dtypes)."""
    size = os.path.getsize(path)
    what = f"{path} is not a valid safetensors file"
    if size < 8:
        raise CheckpointError(f"{what}: only {size} bytes. Re-download or re-save the checkpoint.")
    with open(path, "rb") as f:
        (n,) = _struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > 100 * 2**20:
            raise CheckpointError(f"{what}: header length {n} exceeds the file. Is it truncated?")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{what}: unreadable header ({e}). Re-download the file.") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{what}: the header is not a JSON object. Re-download the file.")
    header.pop("__metadata__", None)
    data_start = 8 + n
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{what}: bad entry for tensor {name!r}: {info!r}") from e
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != nbytes or data_start + end > size:
            raise CheckpointError(
                f"{what}: tensor {name!r} needs bytes {begin}..{end} of the data section, but the "
                f"file holds {size - data_start}. The file is truncated or corrupt; re-download it."
            )
        out[name] = data[data_start + begin : data_start + end].view(dtype).reshape(shape)
    return out


def read_hf_directory(path: str) -> dict[str, np.ndarray]:
    """All tensors of an HF directory: ``model.safetensors`` or a sharded ``*.index.json``."""
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(single):
        return read_safetensors(single)
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from e
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(path, shard)
            if not os.path.exists(shard_path):
                raise CheckpointError(f"shard {shard} listed in {index} is missing; re-download it")
            out.update(read_safetensors(shard_path))
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise WeightKeyError(f"tensors listed in {index} but absent from the shards: {missing[:10]}")
        return out
    others = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".h5", ".msgpack"))]
    hint = (f" It holds {others}: convert them to safetensors (transformers: "
            "model.save_pretrained(dir, safe_serialization=True)).") if others else ""
    raise CheckpointError(f"{path} has no model.safetensors or model.safetensors.index.json.{hint}")


def build_params(
    tensors: Mapping[str, np.ndarray],
    cfg: ModelConfig,
    fam: Any,
    dtype: Any,
    *,
    source: str = "checkpoint",
    transform: Callable[[str, np.ndarray], np.ndarray] | None = None,
    to_device: bool = True,
) -> dict:
    """Convert HF-named tensors into the family's stacked params, checking keys and shapes.

    ``to_device=False`` keeps host (numpy) arrays, for placing them shard by shard."""
    tensors = {fam.canonical(k): v for k, v in tensors.items()}
    used: set[str] = set()
    missing: list[str] = []

    def get(name: str) -> np.ndarray:
        if name not in tensors:
            missing.append(name)
            return _Missing()
        used.add(name)
        arr = tensors[name]
        return transform(name, arr) if transform else arr

    params = fam.convert_globals(get, cfg)
    layers = [fam.convert_layer(get, cfg, i) for i in range(cfg.num_layers)]
    if missing:
        raise WeightKeyError(
            f"{source} is missing {len(missing)} weight(s) that a {cfg.model_type} model with "
            f"{cfg.num_layers} layers needs, e.g. {missing[:5]}. Is the checkpoint complete and its "
            "config.json the right one?"
        )
    ignored = tuple(re.compile(p) for p in fam.ignored)
    if cfg.tie_word_embeddings:
        ignored += (re.compile(r"^lm_head\.weight$"),)
    unexpected = sorted(k for k in tensors if k not in used and not any(p.search(k) for p in ignored))
    if unexpected:
        raise WeightKeyError(
            f"{source} has {len(unexpected)} weight(s) this {cfg.model_type} config does not use, "
            f"e.g. {unexpected[:5]}. The config (layers, biases, tied embeddings) probably does not "
            "match the weights."
        )
    expected = fam.param_shapes(cfg)
    params["layers"] = {}
    for key, shape in expected["layers"].items():
        for i, lp in enumerate(layers):
            if tuple(lp[key].shape) != shape[1:]:
                raise ShapeMismatchError(
                    f"{source}: layer {i} {key} has shape {tuple(lp[key].shape)} (kernels are "
                    f"[in, out]) but the config implies {shape[1:]}. Check hidden_size, heads and "
                    "intermediate_size in config.json."
                )
        params["layers"][key] = np.stack([np.asarray(lp[key]) for lp in layers])
    _check_shapes(params, expected, source)
    return _cast(params, dtype, to_device)


def _check_shapes(params, expected, source, path=""):
    for key, shape in expected.items():
        if key == "layers" and not path:
            continue
        if isinstance(shape, dict):
            _check_shapes(params[key], shape, source, f"{path}{key}.")
        elif tuple(params[key].shape) != tuple(shape):
            raise ShapeMismatchError(
                f"{source}: {path}{key} has shape {tuple(params[key].shape)} but the config implies "
                f"{tuple(shape)}. Check vocab_size and hidden_size in config.json."
            )


def _cast(tree, dtype, to_device=True):
    import jax.numpy as jnp

    if isinstance(tree, dict):
        return {k: _cast(v, dtype, to_device) for k, v in tree.items()}
    host = np.asarray(tree).astype(dtype)
    return jnp.asarray(host) if to_device else host


def count(params) -> int:
    return sum(int(np.prod(x.shape)) for x in leaves(params))


class _Missing:
    """Placeholder for a missing tensor that absorbs any use, so every missing key is reported."""

    def __getattr__(self, name):
        return self

    def __getitem__(self, item):
        return self

    def __call__(self, *args, **kwargs):
        return self

    __floordiv__ = __truediv__ = __mul__ = __add__ = __sub__ = __matmul__ = __call__
