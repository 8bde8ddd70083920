"""Read and write steering vectors.

The steerjax format is a safetensors file with

* one float32 ``[D]`` tensor per steered block, named ``layer.{l}`` (``l >= 0``, the block whose
  output is steered, as in :meth:`steerjax.Steering.create`);
* string metadata: ``"format": "steerjax.vectors/1"``, the caller's entries (strings stored as
  they are, other values JSON-encoded), and ``"json_keys"``, a JSON list naming the entries that
  were JSON-encoded so :func:`load_vectors` gives back the same values.

:func:`load_vectors` also reads

* llama.cpp control vectors: GGUF files (see below) and safetensors files with the same
  ``direction.{l}`` tensor names;
* ``.npy`` files holding one ``[D]`` vector. They store no layer, so pass ``layer=``.

A *vector set* (:func:`save_vector_set` / :func:`load_vector_set`) is one safetensors file with
several named vectors: tensors ``{name}/layer.{l}``, and string metadata ``"format"``, ``"names"``
(a JSON list, in order) and ``"metadata"`` (a JSON object: name -> that vector's metadata).

llama.cpp control vectors (``--control-vector``, written by :func:`export_control_vector_gguf`)
are GGUF files with ``general.architecture = "controlvector"``, ``controlvector.model_hint``
(the model family, e.g. ``"llama"``), ``controlvector.layer_count`` (int32, the number of
vectors, as llama.cpp's ``cvector-generator`` writes it) and one float32 ``[D]`` tensor
``direction.{l}`` per steered block. llama.cpp adds ``direction.{l}`` to the output of block
``l`` (0-based: ``build_cvec(cur, il)`` right after block ``il``'s residual add), the same site as
steerjax's ``layer.{l}``, so indices carry over unchanged. llama.cpp rejects ``direction.0``
(its loader stores blocks ``1..n_layer-1`` only), so a vector for block 0 cannot be exported.
Sources: llama.cpp ``common/common.cpp`` (``common_control_vector_load_one``),
``src/llama-adapter.cpp`` (``llama_adapter_cvec::apply``, ``apply_to``).

Example::

    save_vectors("happy.safetensors", {6: vec}, metadata={"concept": "happy", "n_pairs": 64})
    vectors, meta = load_vectors("happy.safetensors")   # {6: array([...])}, {"concept": ...}
    export_control_vector_gguf("happy.gguf", vectors, model_hint="llama")  # for llama.cpp
    save_vector_set("concepts.safetensors", {"happy": ({6: vec}, {"n_pairs": 64}), "sad": ...})
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from steerjax.errors import CheckpointError, SteeringError

FORMAT = "steerjax.vectors/1"
GGUF_ARCH = "controlvector"
RESERVED_KEYS = ("format", "json_keys")
_NAME_RE = re.compile(r"^(layer|direction)\.(\d+)$")
_SET_NAME_RE = re.compile(r"^(.+)/layer\.(\d+)$")
_NPY_MAGIC = b"\x93NUMPY"
_GGUF_MAGIC = b"GGUF"


def save_vectors(path: str | os.PathLike, vectors: Mapping[int, Any], *,
                 metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``{layer: [D] vector}`` to a safetensors file in the steerjax format.

    Args:
      path: output file (conventionally ``*.safetensors``); overwritten if it exists.
      vectors: block index (``>= 0``) -> ``[D]`` array. All vectors must have the same width.
      metadata: JSON-serializable values under string keys, stored alongside the vectors.
        ``"format"`` and ``"json_keys"`` are reserved.

    Raises:
      SteeringError: empty ``vectors``, a bad layer key, a vector that is not ``[D]``, mixed
        widths, non-finite values, or bad metadata.
      CheckpointError: the file cannot be written.
    """
    tensors = {f"layer.{layer}": arr for layer, arr in _checked_vectors(vectors).items()}
    _write_safetensors(path, tensors, _encode_metadata(metadata))


def save_vector_set(path: str | os.PathLike,
                    vectors: Mapping[str, tuple[Mapping[int, Any], Mapping[str, Any]]]) -> None:
    """Write several named vectors to one safetensors file (see the module docstring).

    Args:
      path: output file (conventionally ``*.safetensors``); overwritten if it exists.
      vectors: name -> ``({layer: [D] vector}, metadata)``, in the order to keep. Names are
        non-empty strings without ``"/"``; every vector has the same width.

    Raises:
      SteeringError: no vectors, a bad name, or anything :func:`save_vectors` rejects.
      CheckpointError: the file cannot be written.
    """
    if not isinstance(vectors, Mapping) or not vectors:
        raise SteeringError("vectors is empty: give at least one {name: ({layer: vector}, metadata)} entry")
    tensors, metadata, width = {}, {}, None
    for name, (layers, meta) in vectors.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise SteeringError(f"vector names must be non-empty strings without '/', got {name!r}")
        for layer, arr in _checked_vectors(layers).items():
            width = arr.shape[0] if width is None else width
            if arr.shape[0] != width:
                raise SteeringError(f"vector {name!r} has width {arr.shape[0]}, the others {width}")
            tensors[f"{name}/layer.{layer}"] = arr
        metadata[name] = dict(meta or {})
    try:
        encoded = {"format": FORMAT, "names": json.dumps(list(vectors)),
                   "metadata": json.dumps(metadata, allow_nan=False)}
    except (TypeError, ValueError) as e:
        raise SteeringError(f"vector metadata is not JSON-serializable ({e}); convert it to strings, numbers, "
                            "bools, lists or dicts") from e
    _write_safetensors(path, tensors, encoded)


def load_vector_set(path: str | os.PathLike) -> dict[str, tuple[dict[int, np.ndarray], dict[str, Any]]]:
    """Read a file written by :func:`save_vector_set`: name -> ``({layer: float32 [D]}, metadata)``
    in the saved order.

    Raises:
      CheckpointError: missing or unreadable file, not a vector set, bad vectors.
    """
    path = os.fspath(path)
    if file_format(path) != "safetensors":
        raise CheckpointError(f"{path} is not a vector set: expected a safetensors file written by save_vector_set")
    raw, tensors = _read_safetensors(path)
    try:
        names = json.loads(raw["names"])
        metadata = json.loads(raw["metadata"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a vector set (no valid 'names' / 'metadata' entries: {e}); "
                              "write it with save_vector_set") from e
    layers: dict[str, dict[int, np.ndarray]] = {n: {} for n in names}
    for tname, arr in tensors.items():
        m = _SET_NAME_RE.match(tname)
        if m is None or m.group(1) not in layers:
            raise CheckpointError(f"{path} has tensor {tname!r}, which names no vector of the set {names}")
        layers[m.group(1)][int(m.group(2))] = _check_vector(arr, f"{path}: tensor {tname!r}")
    widths = {v.shape[0] for by_layer in layers.values() for v in by_layer.values()}
    if len(widths) > 1:
        raise CheckpointError(f"{path} has vectors of different widths {sorted(widths)}")
    empty = [n for n, by_layer in layers.items() if not by_layer]
    if empty:
        raise CheckpointError(f"{path}: vectors {empty} have no tensors")
    return {n: (dict(sorted(layers[n].items())), dict(metadata.get(n) or {})) for n in names}


def export_control_vector_gguf(path: str | os.PathLike, vectors: Mapping[int, Any], *, model_hint: str) -> None:
    """Write ``{layer: [D] vector}`` as a llama.cpp control vector (GGUF).

    Use it with ``llama-cli --control-vector FILE`` (or ``--control-vector-scaled FILE S``).
    ``direction.{l}`` is added to the output of block ``l``, as ``layer.{l}`` is in steerjax.

    Args:
      path: output file (conventionally ``*.gguf``); overwritten if it exists.
      vectors: block index (``>= 1``) -> ``[D]`` array, all of one width.
      model_hint: the model family llama.cpp should expect, e.g. ``"llama"`` or ``"qwen2"``.

    Raises:
      SteeringError: a vector for block 0 (llama.cpp cannot steer it), an empty ``model_hint``,
        or anything :func:`save_vectors` rejects.
      CheckpointError: the file cannot be written.
    """
    import gguf

    checked = _checked_vectors(vectors)
    if 0 in checked:
        raise SteeringError(
            "llama.cpp control vectors cannot steer block 0: llama.cpp adds direction.{l} to the "
            "output of block l and rejects direction.0. Drop the layer-0 vector (or train one for "
            "a later block) before exporting"
        )
    if not isinstance(model_hint, str) or not model_hint:
        raise SteeringError(f"model_hint must be a non-empty string such as 'llama', got {model_hint!r}")
    try:
        writer = gguf.GGUFWriter(os.fspath(path), GGUF_ARCH)
        writer.add_string(f"{GGUF_ARCH}.model_hint", model_hint)
        writer.add_int32(f"{GGUF_ARCH}.layer_count", len(checked))
        for layer, arr in checked.items():
            writer.add_tensor(f"direction.{layer}", arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    except OSError as e:
        raise CheckpointError(f"cannot write control vector {os.fspath(path)}: {e}") from e


def load_vectors(path: str | os.PathLike, *, layer: int | None = None) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """Read steering vectors: steerjax safetensors, llama.cpp control vectors, or ``.npy``.

    Args:
      path: a safetensors file (``layer.{l}`` or ``direction.{l}`` tensors), a llama.cpp
        control-vector GGUF file, or a ``.npy`` file holding one ``[D]`` vector.
      layer: for ``.npy`` files (required): the block the vector belongs to. For other files:
        return only this layer's vector (an error if the file has none for it).

    Returns:
      ``({layer: float32 [D] array}, metadata)``. Metadata values that :func:`save_vectors`
      JSON-encoded are decoded; the reserved ``"format"`` and ``"json_keys"`` entries are
      dropped. GGUF files give their ``controlvector.*`` entries without the prefix
      (``{"model_hint": "llama", "layer_count": 2}``). ``.npy`` files have empty metadata.

    Raises:
      CheckpointError: missing or unreadable file, unknown format or tensor names, no vectors,
        vectors that are not ``[D]`` or have mixed widths, non-finite values.
      SteeringError: a ``.npy`` file without ``layer=``, or ``layer`` absent from the file.
    """
    path = os.fspath(path)
    kind = file_format(path)
    if kind == "npy":
        vectors, metadata = _load_npy(path, layer), {}
    else:
        vectors, metadata = _load_gguf(path) if kind == "gguf" else _load_safetensors(path)
        if layer is not None:
            if layer not in vectors:
                raise SteeringError(
                    f"{path} has no vector for layer {layer}; it has layers {sorted(vectors)}"
                )
            vectors = {layer: vectors[layer]}
    return vectors, metadata


def file_format(path: str | os.PathLike) -> str:
    """``"npy"``, ``"gguf"`` or ``"safetensors"`` (anything else), from the file's first bytes.

    Raises:
      CheckpointError: the file does not exist or cannot be read.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a directory, not a vector file" if os.path.isdir(path) else "does not exist"
        raise CheckpointError(f"steering vector file {path} {what}; check the path")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CheckpointError(f"cannot read steering vector file {path}: {e}") from e
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_GGUF_MAGIC):
        return "gguf"
    return "safetensors"


# ----------------------------------------------------------------------------- internals


def _write_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    # a temporary file renamed into place: a run killed while saving never leaves a torn vector
    # file for the next run to trip over
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_safetensors(path: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as f:
            return dict(f.metadata() or {}), {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError / OSError on bad files
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({type(e).__name__}: {e}). Steering vectors "
            "must be safetensors (tensors 'layer.{l}' or 'direction.{l}') or .npy"
        ) from e


def _checked_vectors(vectors: Mapping[int, Any]) -> dict[int, np.ndarray]:
    if not isinstance(vectors, Mapping) or not vectors:
        raise SteeringError("vectors is empty: give at least one {layer: vector} entry")
    out = {}
    width = None
    for layer, vec in vectors.items():
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
            raise SteeringError(
                f"layer keys must be block indices >= 0, got {layer!r} (a file does not know the "
                "model's depth, so resolve negative indices before saving)"
            )
        arr = np.asarray(vec, dtype=np.float32)
        if arr.ndim != 1 or arr.shape[0] == 0:
            raise SteeringError(f"the vector for layer {layer} must be 1-D [D], got shape {arr.shape}")
        width = arr.shape[0] if width is None else width
        if arr.shape[0] != width:
            raise SteeringError(f"vectors have different widths ({width} and {arr.shape[0]} at layer {layer})")
        if not np.all(np.isfinite(arr)):
            raise SteeringError(f"the vector for layer {layer} has non-finite values (nan or inf)")
        out[int(layer)] = np.ascontiguousarray(arr)
    return dict(sorted(out.items()))


def _encode_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    out = {"format": FORMAT}
    json_keys = []
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise SteeringError(f"metadata keys must be strings, got {key!r}")
        if key in RESERVED_KEYS:
            raise SteeringError(f"metadata key {key!r} is reserved; rename it")
        if isinstance(value, str):
            out[key] = value
            continue
        try:
            out[key] = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise SteeringError(
                f"metadata value for {key!r} is not JSON-serializable ({e}); convert it to a "
                "string, number, bool, list or dict"
            ) from e
        json_keys.append(key)
    if json_keys:
        out["json_keys"] = json.dumps(json_keys)
    return out


def _decode_metadata(raw: Mapping[str, str] | None, path: str) -> dict[str, Any]:
    raw = dict(raw or {})
    fmt = raw.pop("format", None)
    if fmt is not None and fmt.startswith("steerjax.vectors/") and fmt != FORMAT:
        raise CheckpointError(f"{path} has format {fmt!r}; this steerjax reads {FORMAT!r}. Upgrade steerjax")
    try:
        json_keys = json.loads(raw.pop("json_keys", "[]"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata entry 'json_keys' is not valid JSON ({e})") from e
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in json_keys:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path}: metadata entry {key!r} is not valid JSON ({e})") from e
        out[key] = value
    return out


def _load_safetensors(path: str) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    raw_meta, tensors = _read_safetensors(path)
    names = list(tensors)
    if "names" in raw_meta and all(_SET_NAME_RE.match(n) for n in names):
        raise CheckpointError(f"{path} is a set of named vectors ({raw_meta['names']}); read it with "
                              "steerjax.vectors.load_vector_set (concepts: load_concepts)")
    unknown = [n for n in names if not _NAME_RE.match(n)]
    if unknown:
        raise CheckpointError(
            f"{path} has tensors {unknown[:5]} that are not steering vectors; expected names "
            "'layer.{l}' (steerjax) or 'direction.{l}' (llama.cpp control vectors)"
        )
    if not names:
        raise CheckpointError(f"{path} holds no vectors: expected tensors named 'layer.{{l}}'")
    vectors: dict[int, np.ndarray] = {}
    for name in sorted(names, key=lambda n: int(_NAME_RE.match(n).group(2))):
        layer = int(_NAME_RE.match(name).group(2))
        if layer in vectors:
            raise CheckpointError(f"{path} has two vectors for layer {layer} ('layer.{layer}' and 'direction.{layer}')")
        vectors[layer] = _check_vector(tensors[name], f"{path}: tensor {name!r}")
    _check_widths(vectors, path)
    return vectors, _decode_metadata(raw_meta, path)


def _load_gguf(path: str) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/struct.error/... on bad files
        raise CheckpointError(
            f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); it may be truncated or corrupt"
        ) from e
    arch = _gguf_value(reader, "general.architecture")
    if arch != GGUF_ARCH:
        raise CheckpointError(
            f"{path} is a GGUF file with architecture {arch!r}, not a llama.cpp control vector "
            f"({GGUF_ARCH!r}); pass a control-vector file, not a model checkpoint"
        )
    names = [t.name for t in reader.tensors]
    unknown = [n for n in names if not n.startswith("direction.") or not _NAME_RE.match(n)]
    if unknown:
        raise CheckpointError(
            f"{path} has tensors {unknown[:5]} that are not control-vector directions; expected 'direction.{{l}}'"
        )
    if not names:
        raise CheckpointError(f"{path} holds no vectors: expected tensors named 'direction.{{l}}'")
    vectors: dict[int, np.ndarray] = {}
    for t in sorted(reader.tensors, key=lambda t: int(_NAME_RE.match(t.name).group(2))):
        layer = int(_NAME_RE.match(t.name).group(2))
        if layer in vectors:
            raise CheckpointError(f"{path} has two tensors named {t.name!r}")
        vectors[layer] = _check_vector(np.array(t.data), f"{path}: tensor {t.name!r}")
    _check_widths(vectors, path)
    prefix = GGUF_ARCH + "."
    metadata = {key[len(prefix):]: _gguf_value(reader, key) for key in reader.fields if key.startswith(prefix)}
    return vectors, metadata


def _gguf_value(reader, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except Exception as e:  # pragma: no cover - a malformed field
        raise CheckpointError(f"GGUF field {key!r} is unreadable ({type(e).__name__}: {e})") from e


def _load_npy(path: str, layer: int | None) -> dict[int, np.ndarray]:
    if layer is None:
        raise SteeringError(f"{path} is a .npy file, which stores no layer index: pass layer=")
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise SteeringError(f"layer must be an int, got {layer!r}")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable .npy file ({type(e).__name__}: {e})") from e
    if not isinstance(arr, np.ndarray):  # pragma: no cover - np.load of a .npy gives an array
        raise CheckpointError(f"{path} does not hold an array")
    return {int(layer): _check_vector(arr, path)}


def _check_vector(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise CheckpointError(f"{what} has shape {arr.shape}; a steering vector must be 1-D [D]")
    if not np.issubdtype(arr.dtype, np.floating):
        raise CheckpointError(f"{what} has dtype {arr.dtype}; steering vectors must be floating point")
    arr = np.asarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise CheckpointError(f"{what} has non-finite values (nan or inf)")
    return arr


def _check_widths(vectors: Mapping[int, np.ndarray], path: str) -> None:
    widths = {v.shape[0] for v in vectors.values()}
    if len(widths) > 1:
        raise CheckpointError(f"{path} has vectors of different widths {sorted(widths)}")
