"""The steering-vector object: one ``[D]`` vector per block, a name and how it was made.

Example::

    vec = SteeringVector({12: v}, {"method": "caa"}, name="happy")
    vec.save("happy.safetensors")
    vec = load_vector("happy.safetensors", layer=-1, num_layers=30)  # moved to block 29
    steering = vec.to_steering(model, multipliers=2.0)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from steerjax.errors import SteeringError
from steerjax.steering import Steering, check_vector, normalize_layer
from steerjax.vectors import io


@dataclasses.dataclass
class SteeringVector:
    """One ``[D]`` vector per block, with how it was made.

    Attributes:
      vectors: block index (``>= 0``) -> float32 ``[D]`` vector, added to that block's output.
      metadata: JSON-serializable facts: ``model``, ``layers``, ``site`` (``"block_output"``),
        ``operator``, ``method``, ``dataset``, ``token_index``, ``n_examples``, method options...
      name: optional; files keep it as the metadata entry ``"name"``.
    """

    vectors: dict[int, np.ndarray]
    metadata: dict = dataclasses.field(default_factory=dict)
    name: str | None = None

    def __post_init__(self):
        if not isinstance(self.vectors, Mapping) or not self.vectors:
            raise SteeringError("a SteeringVector needs at least one {layer: vector} entry")
        vectors = {}
        for layer, vec in self.vectors.items():
            if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
                raise SteeringError(f"layer keys must be block indices >= 0, got {layer!r}")
            arr = np.asarray(vec, dtype=np.float32)
            if arr.ndim != 1:
                raise SteeringError(f"the vector for layer {layer} must be 1-D [D], got shape {arr.shape}")
            vectors[int(layer)] = arr
        widths = {v.shape[0] for v in vectors.values()}
        if len(widths) > 1:
            raise SteeringError(f"vectors have different widths {sorted(widths)}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise SteeringError(f"a vector's name must be a non-empty string or None, got {self.name!r}")
        self.vectors = dict(sorted(vectors.items()))
        self.metadata = dict(self.metadata or {})

    @property
    def layers(self) -> list[int]:
        return list(self.vectors)

    @property
    def width(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def norms(self) -> dict[int, float]:
        """L2 norm of each block's vector."""
        return {layer: float(np.linalg.norm(v)) for layer, v in self.vectors.items()}

    def save(self, path) -> None:
        """Write a steerjax safetensors file (``layer.{l}`` tensors plus the metadata)."""
        io.save_vectors(path, self.vectors, metadata=self._file_metadata())

    @classmethod
    def load(cls, path, *, layer: int | None = None) -> SteeringVector:
        """Read any file :func:`steerjax.vectors.io.load_vectors` reads (safetensors, llama.cpp
        GGUF control vectors, ``.npy`` with ``layer=``)."""
        vectors, metadata = io.load_vectors(path, layer=layer)
        return SteeringVector._from_file(vectors, metadata)

    @staticmethod
    def save_many(path, vectors: Sequence[SteeringVector]) -> None:
        """Write named vectors to one file (:func:`steerjax.vectors.io.save_vector_set`).

        Raises:
          SteeringError: a vector without a name, or a name given twice.
        """
        entries: dict[str, tuple[dict, dict]] = {}
        for v in vectors:
            if v.name is None or v.name in entries:
                what = "has no name" if v.name is None else f"name {v.name!r} is given twice"
                raise SteeringError(f"a vector set needs distinct names: a vector {what}")
            entries[v.name] = (v.vectors, v.metadata)
        io.save_vector_set(path, entries)

    @staticmethod
    def load_many(path) -> list[SteeringVector]:
        """The named vectors of a file written by :meth:`save_many`, in order."""
        return [SteeringVector(vectors, metadata, name)
                for name, (vectors, metadata) in io.load_vector_set(path).items()]

    def export_gguf(self, path, *, model_hint: str | None = None) -> None:
        """Write a llama.cpp control vector (see :func:`steerjax.vectors.io.export_control_vector_gguf`).

        Args:
          model_hint: llama.cpp model family; default: the ``family`` in the metadata.
        """
        hint = model_hint or self.metadata.get("model_hint") or self.metadata.get("family")
        if not hint:
            raise SteeringError("no model_hint: pass model_hint= (e.g. 'llama'); the metadata names no family")
        io.export_control_vector_gguf(path, self.vectors, model_hint=str(hint))

    def to_steering(self, model, multipliers: Any = 1.0, *, layers: Sequence[int] | None = None,
                    positions: Any = "all", operator: str | None = None) -> Steering:
        """A :class:`Steering` that applies these vectors to ``model``.

        Args:
          model: a ``LanguageModel`` (or its ``ModelConfig``).
          multipliers: a scalar or ``[B]``, as in :meth:`Steering.create`.
          layers: the blocks to steer (negative counts from the end); default: every stored block.
          positions: as in :meth:`Steering.create`.
          operator: default: the ``operator`` in the metadata, else ``"add"``.

        Raises:
          SteeringError: the vectors' width differs from the model's hidden size, or a requested
            block has no vector.
        """
        cfg = getattr(model, "config", model)
        for v in self.vectors.values():
            check_vector(cfg, v, where="this steering vector", made_on=self.metadata.get("model"))
        if layers is None:
            chosen = self.vectors
        else:
            if isinstance(layers, (int, np.integer)):
                layers = [layers]
            chosen = {}
            for layer in layers:
                li = normalize_layer(layer, cfg.num_layers)
                if li not in self.vectors:
                    raise SteeringError(f"no vector for block {layer}; this steering vector has blocks {self.layers}")
                chosen[li] = self.vectors[li]
        return Steering.create(cfg, chosen, multipliers, positions=positions,
                               operator=operator or self.metadata.get("operator", "add"))

    def _file_metadata(self) -> dict:
        return self.metadata if self.name is None else {**self.metadata, "name": self.name}

    @staticmethod
    def _from_file(vectors, metadata) -> SteeringVector:
        name = metadata.pop("name", None)
        return SteeringVector(vectors, metadata, name if isinstance(name, str) and name else None)


def load_vector(path, *, layer: int | None = None, num_layers: int | None = None,
                allow_npy: bool = True) -> SteeringVector:
    """Read a steering-vector file for use on a model, with the command line's rules.

    * ``.npy`` (one vector, no layer): needs ``layer``; refused with ``allow_npy=False`` (for
      commands that steer the file's own layers).
    * other files (:func:`steerjax.vectors.io.load_vectors`): ``layer=None`` keeps every block;
      ``layer`` picks that block, or moves the vector of a single-vector file to it.

    Args:
      path: a steerjax safetensors, llama.cpp control-vector (GGUF or safetensors) or ``.npy`` file.
      layer: a block index; negative counts from the end (needs ``num_layers``).
      num_layers: the model's depth: checks ``layer`` is in range.
      allow_npy: accept ``.npy`` files.

    Raises:
      SteeringError: a ``.npy`` file without ``layer`` (or not allowed), a block the file lacks.
      LayerIndexError: ``layer`` out of range for ``num_layers``.
      CheckpointError: a missing or malformed file.
    """
    path = os.fspath(path)
    if io.file_format(path) == "npy":
        if not allow_npy:
            raise SteeringError(f"{path} is a .npy vector without layers; save it with steerjax vector train")
        if layer is None:
            raise SteeringError(f"{path} is a .npy vector, which stores no layer: pass --layer L")
        vectors, metadata = io.load_vectors(path, layer=_block(layer, num_layers))
        return SteeringVector._from_file(vectors, metadata)
    vectors, metadata = io.load_vectors(path)
    vec = SteeringVector._from_file(vectors, metadata)
    if layer is None:
        return vec
    want = _block(layer, num_layers)
    if want in vec.vectors:
        chosen = {want: vec.vectors[want]}
    elif len(vec.vectors) == 1:  # one vector: the layer moves it
        chosen = {want: next(iter(vec.vectors.values()))}
    else:
        raise SteeringError(
            f"{path} has no vector for layer {layer}; it has layers {vec.layers}. Pick one of them with --layer"
        )
    return dataclasses.replace(vec, vectors=chosen)


def _block(layer: int, num_layers: int | None) -> int:
    if num_layers is not None:
        return normalize_layer(layer, num_layers)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
        raise SteeringError(f"layer {layer!r} needs the model's depth: pass num_layers= or a block index >= 0")
    return int(layer)
