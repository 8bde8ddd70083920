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
from steerjax.models import transformer
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
    tensors = _check_header(header, size - data_start, what)
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else np.zeros(0, np.uint8)
    out = {}
    for name, (dtype, shape, begin, end) in tensors.items():
        out[name] = data[data_start + begin : data_start + end].view(dtype).reshape(shape)
    return out


def _check_header(header: dict, data_size: int, what: str) -> dict[str, tuple]:
    """Every tensor entry of a safetensors header checked before any array is made: a known dtype,
    a shape of non-negative integers, integer offsets ``0 <= begin <= end <= data_size`` spanning
    exactly the shape's bytes, and no two tensors overlapping. Returns name -> (dtype, shape,
    begin, end).

    Raises:
      CheckpointError: naming the tensor and what is wrong.
    """
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    out = {}
    for name, info in header.items():
        bad = f"{what}: bad entry for tensor {name!r}: {str(info)[:200]}"
        if not isinstance(info, dict) or info.get("dtype") not in _ST_DTYPES:
            raise CheckpointError(f"{bad} (unknown dtype). Re-download the file.")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or len(shape) > 8 or not all(is_int(s) and s >= 0 for s in shape):
            raise CheckpointError(f"{bad} (the shape must be at most 8 non-negative integers). Re-download the file.")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(is_int(o) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{bad} (data_offsets must be two integers 0 <= begin <= end). Re-download the file.")
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        begin, end = offsets
        nbytes = dtype.itemsize
        for s in shape:  # Python integers: no overflow
            nbytes *= s
        if end - begin != nbytes or end > data_size:
            raise CheckpointError(
                f"{what}: tensor {name!r} needs bytes {begin}..{end} of the data section ({nbytes} for its shape "
                f"{tuple(shape)}), but the file holds {data_size}. The file is truncated or corrupt; re-download it."
            )
        out[name] = (dtype, tuple(shape), begin, end)
    spans = sorted((b, e, name) for name, (_, _, b, e) in out.items() if e > b)
    for (_, prev_end, prev), (begin, _, name) in zip(spans, spans[1:]):
        if begin < prev_end:
            raise CheckpointError(f"{what}: tensors {prev!r} and {name!r} overlap in the data section (bytes "
                                  f"{begin}..{prev_end}). The file is corrupt; re-download or re-save it.")
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
    """Convert HF-named tensors into the family's module state (a nested dict of arrays, the
    ``params`` of :func:`steerjax.models.transformer.forward`), checking keys and shapes.

    Every parameter of the family's module tree is filled by its row of ``fam.conversion(cfg)``
    (an HF name, ``{i}`` standing for the layer, and a hook); layer parameters are stacked on a
    leading axis. Every missing, unexpected and mis-shaped tensor is collected before raising.
    ``to_device=False`` keeps host (numpy) arrays, for placing them shard by shard.

    Raises:
      WeightKeyError: tensors are missing or unused (the mis-shaped ones are listed too).
      ShapeMismatchError: only shapes are wrong.
    """
    tensors = {fam.canonical(k): v for k, v in tensors.items()}
    table = fam.conversion(cfg)
    expected = flatten(transformer.abstract_params(cfg))
    used: set[str] = set()
    missing: list[str] = []
    shapes: list[str] = []

    def get(name: str, hook, want: tuple[int, ...], what: str):
        if name not in tensors:
            missing.append(name)
            return None
        used.add(name)
        arr = tensors[name]
        arr = transform(name, arr) if transform else arr
        arr = hook(arr) if hook else arr
        if tuple(arr.shape) != want:
            shapes.append(f"{what} from {name}: {tuple(arr.shape)}, the config implies {want}")
            return None
        return arr

    unknown = sorted(set(expected) - set(table))
    if unknown:
        raise CheckpointError(f"the {cfg.family} conversion table has no row for the parameter(s) {unknown}")
    layer_paths = [k for k in expected if k.startswith("layers/")]
    flat = {path: get(table[path][0], table[path][1], tuple(expected[path].shape), path)
            for path in expected if path not in layer_paths}  # globals first
    stacked: dict[str, list] = {k: [] for k in layer_paths}
    for i in range(cfg.num_layers):
        for path in layer_paths:
            name, hook = table[path]
            stacked[path].append(get(name.format(i=i), hook, tuple(expected[path].shape[1:]), f"layer {i} {path}"))
    ignored = tuple(re.compile(p) for p in fam.ignored)
    # a tied model has no head parameter: the checkpoint's copy of the embedding is not used
    head = table.get("lm_head/kernel") if "lm_head/kernel" not in expected else None
    unexpected = sorted(k for k in tensors if k not in used and not any(p.search(k) for p in ignored)
                        and not (head and k == head[0]))
    problems = []
    if missing:
        problems.append(f"{source} is missing {len(missing)} weight(s) that a {cfg.model_type} model with "
                        f"{cfg.num_layers} layers needs, e.g. {missing[:5]}. Is the checkpoint complete and its "
                        "config.json the right one?")
    if unexpected:
        problems.append(f"{source} has {len(unexpected)} weight(s) this {cfg.model_type} config does not use, "
                        f"e.g. {unexpected[:5]}. The config (layers, biases, tied embeddings) probably does not "
                        "match the weights.")
    if shapes:
        problems.append(f"{source}: {len(shapes)} weight(s) have the wrong shape (kernels are [in, out]), e.g. "
                        f"{shapes[:5]}. Check hidden_size, heads, intermediate_size and vocab_size in config.json.")
    if missing or unexpected:
        raise WeightKeyError(" ".join(problems))
    if shapes:
        raise ShapeMismatchError(problems[0])
    for path, arrays in stacked.items():
        flat[path] = np.stack([np.asarray(a) for a in arrays])
    return unflatten({k: _cast(v, dtype, to_device) for k, v in flat.items()})


def flatten(tree, prefix: str = "") -> dict:
    """``{"a/b/c": leaf}`` of a nested dict (module paths joined by ``/``)."""
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}/"))
        return out
    return {prefix[:-1]: tree}


def unflatten(flat: Mapping[str, Any]) -> dict:
    """The nested dict of :func:`flatten` 's output."""
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return out


def _cast(x, dtype, to_device=True):
    import jax.numpy as jnp

    host = np.asarray(x).astype(dtype)
    return jnp.asarray(host) if to_device else host


def count(params) -> int:
    return sum(int(np.prod(x.shape)) for x in leaves(params))
