"""The steering pytree: what to add to the residual stream, where, and how much.

A :class:`Steering` is data, not a hook. Its arrays are traced by ``jit``, so new vectors,
multipliers, layer choices or token ranges reuse the compiled program; only ``operator`` and the
array shapes are static.

Shapes (``Bv``, ``Bm``, ``Bp`` are each 1, meaning shared, or the batch size):

* ``vectors  [L, Bv, D]`` one row per block (all ``L`` blocks; zero rows are not steered),
* ``multipliers [Bm]``,
* ``layer_mask [L, Bl]`` (optional): which blocks are steered for which example; default: every
  block with a non-zero vector. Lets one vector set serve a whole layer sweep, one block per row,
* ``start [Bp]``, ``end [Bp]``: the token range ``start <= p < end`` that is steered, where ``p``
  is the token's *position* (index among the example's real tokens, so padding never shifts it).
  ``start == GENERATED`` means "from the first generated token" (resolved by
  :func:`steerjax.generate`; a plain forward pass then steers nothing).

Operators (``h`` the residual stream after the block, ``m`` the multiplier, ``v`` the vector,
``u = v / |v|``):

* ``add``: ``h + m v`` (steering-vectors' default ``addition_operator``),
* ``ablate_then_add``: ``h - (h.u) u + m v`` (steering-vectors' ``ablation_then_addition_operator``),
* ``clamp``: one-sided clamp of the projection on ``u`` to ``m |v|``: raised to at least that
  value when ``m >= 0``, lowered to at most it when ``m < 0``; other directions are untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from steerjax.errors import LayerIndexError, SteeringError

OPERATORS = ("add", "ablate_then_add", "clamp")
GENERATED = -1
NO_END = np.iinfo(np.int32).max


@struct.dataclass
class Steering:
    vectors: jax.Array
    multipliers: jax.Array
    start: jax.Array
    end: jax.Array
    operator: str = struct.field(pytree_node=False, default="add")
    layer_mask: jax.Array | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(
        cls,
        config: Any,
        vectors: Mapping[int, Any],
        multipliers: Any = 1.0,
        *,
        positions: Any = "all",
        operator: str = "add",
        batch_size: int | None = None,
    ) -> Steering:
        """Build a steering from ``{layer: vector}``.

        Args:
          config: a ``ModelConfig`` or anything with a ``.config`` (a ``LanguageModel``).
          vectors: layer index (negative counts from the end) -> ``[D]`` (shared) or ``[B, D]``
            (one vector per example).
          multipliers: a scalar or ``[B]``.
          positions: ``"all"``; ``"generated"`` (generated tokens only); an int ``i`` or ``[B]``
            ints (positions ``>= i``); or a ``(start, end)`` pair of ints or ``[B]`` arrays.
          operator: ``"add"``, ``"ablate_then_add"`` or ``"clamp"``.
          batch_size: checks every per-example argument against it.
        """
        cfg = getattr(config, "config", config)
        if operator not in OPERATORS:
            raise SteeringError(f"unknown operator {operator!r}; choose one of {OPERATORS}")
        if not vectors:
            raise SteeringError("vectors is empty: give at least one {layer: vector} entry")
        rows = {}
        bv = 1
        for layer, vec in vectors.items():
            li = normalize_layer(layer, cfg.num_layers)
            if li in rows:
                raise SteeringError(f"layer {layer} is given twice (as {li})")
            arr = check_vector(cfg, vec, where=f"the steering vector for layer {layer}", batched=True)
            if arr.ndim == 1:
                arr = arr[None]
            rows[li] = arr
            bv = _merge_batch(bv, arr.shape[0], f"vector for layer {layer}")
        stacked = np.zeros((cfg.num_layers, bv, cfg.hidden_size), np.float32)
        for li, arr in rows.items():
            stacked[li] = arr
        mult = _multipliers(multipliers)
        start, end = _positions(positions)
        out = cls(jnp.asarray(stacked), jnp.asarray(mult), jnp.asarray(start), jnp.asarray(end), operator)
        if batch_size is not None:
            out.check(cfg, batch_size)
        return out

    @classmethod
    def zeros(cls, config: Any, *, operator: str = "add") -> Steering:
        """A steering that changes nothing (same pytree structure as a real one)."""
        cfg = getattr(config, "config", config)
        return cls(
            jnp.zeros((cfg.num_layers, 1, cfg.hidden_size), jnp.float32),
            jnp.zeros((1,), jnp.float32),
            jnp.zeros((1,), jnp.int32),
            jnp.full((1,), NO_END, jnp.int32),
            operator,
        )

    def with_multipliers(self, multipliers: Any) -> Steering:
        return self.replace(multipliers=jnp.asarray(_multipliers(multipliers)))

    def with_positions(self, positions: Any) -> Steering:
        start, end = _positions(positions)
        return self.replace(start=jnp.asarray(start), end=jnp.asarray(end))

    # ------------------------------------------------------------------ reshaping (traceable)

    @classmethod
    def build(cls, vectors, multipliers, *, start=None, end=None, operator: str = "add",
              layer_mask=None) -> Steering:
        """Construct from arrays without host-side checks, for use inside ``jit``.

        ``vectors [L, Bv, D]``, ``multipliers [Bm]``; ``start`` / ``end`` default to the whole
        sequence (``0`` and :data:`NO_END`, one per multiplier row)."""
        multipliers = jnp.asarray(multipliers, jnp.float32)
        if start is None:
            start = jnp.zeros(multipliers.shape, jnp.int32)
        if end is None:
            end = jnp.full(multipliers.shape, NO_END, jnp.int32)
        return cls(vectors, multipliers, start, end, operator, layer_mask)

    @property
    def batch_size(self) -> int:
        """Rows this steering has (1 when every field is shared)."""
        sizes = [self.vectors.shape[1], self.multipliers.shape[0], self.start.shape[0], self.end.shape[0]]
        if self.layer_mask is not None:
            sizes.append(self.layer_mask.shape[1])
        return max(sizes)

    def broadcast(self, batch_size: int, *, full: bool = False) -> Steering:
        """Per-example fields broadcast to ``[batch_size]``, so shared and per-example
        multipliers or positions give the same shapes (and reuse one compiled program).
        ``full=True`` also gives ``vectors`` (and ``layer_mask``) one row per example."""
        b = (batch_size,)
        out = self.replace(
            multipliers=jnp.broadcast_to(self.multipliers, b),
            start=jnp.broadcast_to(self.start, b),
            end=jnp.broadcast_to(self.end, b),
        )
        if full:
            v = self.vectors
            lm = self.layer_mask
            out = out.replace(
                vectors=jnp.broadcast_to(v, (v.shape[0], batch_size, v.shape[2])),
                layer_mask=None if lm is None else jnp.broadcast_to(lm, (lm.shape[0], batch_size)),
            )
        return out

    def pad(self, batch_size: int, size: int, *, fill: str = "repeat") -> Steering:
        """Broadcast to ``batch_size`` rows, then pad to ``size`` rows: the last row repeated
        (``fill="repeat"``: padding examples whose results are dropped) or rows that steer
        nothing (``fill="unsteered"``: zero vectors and multipliers)."""
        if fill not in ("repeat", "unsteered"):
            raise SteeringError(f"fill must be 'repeat' or 'unsteered', got {fill!r}")
        n = size - batch_size
        if n < 0:
            raise SteeringError(f"cannot pad {batch_size} steering rows to {size}")
        s = self.broadcast(batch_size)
        if n == 0:
            return s
        if fill == "unsteered":
            s = s.broadcast(batch_size, full=True)
            lm = s.layer_mask
            extra = Steering.build(jnp.zeros_like(s.vectors[:, :1]).repeat(n, 1), jnp.zeros((n,), jnp.float32),
                                   start=jnp.repeat(s.start[-1:], n), end=jnp.repeat(s.end[-1:], n),
                                   operator=s.operator, layer_mask=None if lm is None else jnp.repeat(lm[:, -1:], n, 1))
            return s.concat(extra)

        def rep(x, axis):
            if x is None or x.shape[axis] != batch_size:
                return x  # shared: nothing to pad
            last = jax.lax.slice_in_dim(x, x.shape[axis] - 1, x.shape[axis], axis=axis)
            return jnp.concatenate([x, jnp.repeat(last, n, axis=axis)], axis=axis)

        return s.replace(vectors=rep(s.vectors, 1), layer_mask=rep(s.layer_mask, 1),
                         multipliers=rep(s.multipliers, 0), start=rep(s.start, 0), end=rep(s.end, 0))

    def concat(self, other: Steering) -> Steering:
        """The rows of ``self`` then those of ``other`` (same operator; both or neither with a
        ``layer_mask``)."""
        if other.operator != self.operator:
            raise SteeringError(f"cannot concatenate {self.operator!r} and {other.operator!r} steerings")
        if (self.layer_mask is None) != (other.layer_mask is None):
            raise SteeringError("cannot concatenate a steering with a layer_mask and one without")
        a = self.broadcast(self.batch_size, full=True)
        b = other.broadcast(other.batch_size, full=True)

        def cat(x, y, axis):
            return None if x is None else jnp.concatenate([x, y], axis=axis)

        return a.replace(vectors=cat(a.vectors, b.vectors, 1), layer_mask=cat(a.layer_mask, b.layer_mask, 1),
                         multipliers=cat(a.multipliers, b.multipliers, 0), start=cat(a.start, b.start, 0),
                         end=cat(a.end, b.end, 0))

    def zero_strength(self) -> Steering:
        """The same rows with every multiplier 0: the reference an ``add`` steering is measured
        against (``ablate_then_add`` still ablates at multiplier 0)."""
        return self.replace(multipliers=jnp.zeros_like(self.multipliers))

    @property
    def layers(self) -> list[int]:
        """Blocks with a non-zero vector (host-side; needs concrete arrays)."""
        v = np.asarray(self.vectors)
        return [int(i) for i in np.nonzero(np.any(v != 0, axis=(1, 2)))[0]]

    # ------------------------------------------------------------------ validation

    def check(self, cfg: Any, batch_size: int) -> None:
        """Raise :class:`SteeringError` if this steering cannot apply to ``batch_size`` inputs."""
        cfg = getattr(cfg, "config", cfg)
        if self.operator not in OPERATORS:
            raise SteeringError(f"unknown operator {self.operator!r}; choose one of {OPERATORS}")
        v = self.vectors
        if v.ndim != 3 or v.shape[0] != cfg.num_layers or v.shape[2] != cfg.hidden_size:
            raise SteeringError(
                f"steering vectors have shape {tuple(v.shape)}; this model needs "
                f"[{cfg.num_layers}, batch or 1, {cfg.hidden_size}] (build it with Steering.create)"
            )
        for name, arr in (("vectors", v[0]), ("multipliers", self.multipliers),
                          ("start", self.start), ("end", self.end)):
            if arr.ndim != 1 and name != "vectors":
                raise SteeringError(f"steering {name} must be 1-D, got shape {tuple(arr.shape)}")
            if arr.shape[0] not in (1, batch_size):
                raise SteeringError(
                    f"steering {name} has batch size {arr.shape[0]} but the input has {batch_size}"
                )
        lm = self.layer_mask
        if lm is not None and (lm.ndim != 2 or lm.shape[0] != cfg.num_layers or lm.shape[1] not in (1, batch_size)):
            raise SteeringError(
                f"layer_mask has shape {tuple(lm.shape)}; expected [{cfg.num_layers}, 1 or {batch_size}]"
            )
        if _is_concrete(self.multipliers) and not np.all(np.isfinite(np.asarray(self.multipliers))):
            raise SteeringError(f"multipliers must be finite, got {np.asarray(self.multipliers)}")
        if _is_concrete(v) and not np.all(np.isfinite(np.asarray(v))):
            raise SteeringError("steering vectors contain non-finite values")


def normalize_layer(layer: int, num_layers: int, *, name: str = "layer") -> int:
    """Map a block index (negative counts from the end) into ``[0, num_layers)``: the one check of
    a layer's range. ``name`` is how the caller's user spells it (``"--layer"`` on the command line).

    Raises:
      LayerIndexError: not an int, or out of range (the message gives the valid indices).
    """
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise LayerIndexError(f"{name} index must be an int, got {layer!r}")
    li = int(layer) + num_layers if layer < 0 else int(layer)
    if not 0 <= li < num_layers:
        raise LayerIndexError(
            f"{name} {layer} is out of range: the model has {num_layers} blocks "
            f"(valid indices {-num_layers}..{num_layers - 1})"
        )
    return li


def check_vector(cfg, vector, *, where: str = "the steering vector", made_on: str | None = None,
                 batched: bool = False) -> np.ndarray:
    """``vector`` as float32 ``[D]`` (``[batch, D]`` too with ``batched``) for a model whose config
    (anything with ``hidden_size``) is ``cfg``: the one check of a steering vector's width.

    Args:
      where: the vector as the caller's user knows it (a file name, ``"the vector for layer 3"``).
      made_on: the model the vector was made on, when known (named in the message).

    Raises:
      SteeringError: another width (or shape), or non-finite values.
    """
    d = int(cfg.hidden_size)
    arr = np.asarray(vector, dtype=np.float32)
    if not (arr.shape == (d,) or (batched and arr.ndim == 2 and arr.shape[1] == d)):
        width = arr.shape[-1] if arr.ndim else "none"
        want = f"[{d}]" + (f" or [batch, {d}]" if batched else "")
        src = f" (it was made on {made_on})" if made_on else ""
        raise SteeringError(f"{where} has width {width} (shape {list(arr.shape)}), but this model's hidden size is "
                            f"{d}: a model of hidden size {d} needs vectors of shape {want}{src}; use a vector "
                            "made for this model")
    if not np.all(np.isfinite(arr)):
        raise SteeringError(f"{where} has non-finite values")
    return arr


def apply(steering: Steering | None, h, vec, mult, mask, layer_on=None):
    """Steer one block's output. h [B,T,D]; vec [Bv,D]; mult [Bm]; mask [B,T] bool;
    layer_on [Bl] bool (this block's column of ``layer_mask``) or None.

    Positions that are not steered are returned bit-identical (``where``, not ``+ 0``).
    """
    if steering is None:
        return h
    vec = vec.astype(jnp.float32)[:, None, :]  # [Bv,1,D]
    m = mult.astype(jnp.float32)[:, None, None]  # [Bm,1,1]
    active = jnp.any(vec != 0, axis=-1, keepdims=True) & (m != 0)
    hf = h.astype(jnp.float32)
    op = steering.operator
    if op == "add":
        new = hf + m * vec
    else:
        norm = jnp.linalg.norm(vec, axis=-1, keepdims=True)
        unit = vec / jnp.where(norm > 0, norm, 1.0)
        proj = jnp.sum(hf * unit, axis=-1, keepdims=True)
        if op == "ablate_then_add":
            new = hf - proj * unit + m * vec
            active = jnp.any(vec != 0, axis=-1, keepdims=True)  # m = 0 still ablates
        elif op == "clamp":
            target = m * norm
            clamped = jnp.where(m >= 0, jnp.maximum(proj, target), jnp.minimum(proj, target))
            new = hf + (clamped - proj) * unit
        else:  # pragma: no cover - rejected at construction
            raise SteeringError(f"unknown operator {op!r}")
    if layer_on is not None:
        active = active & layer_on[:, None, None]
    return jnp.where(mask[..., None] & active, new.astype(h.dtype), h)


def token_mask(steering: Steering, positions, valid, generation_start):
    """[B,T] bool: which tokens are steered. ``generation_start [B]`` resolves GENERATED."""
    start = jnp.where(steering.start == GENERATED, generation_start, steering.start)
    return valid & (positions >= start[:, None]) & (positions < steering.end[:, None])


def _merge_batch(current: int, new: int, what: str) -> int:
    if new == 1 or new == current:
        return max(current, new)
    if current == 1:
        return new
    raise SteeringError(f"{what} has batch size {new}, but another argument has {current}")


def _multipliers(multipliers: Any) -> np.ndarray:
    m = np.asarray(multipliers, dtype=np.float32)
    if m.ndim == 0:
        m = m[None]
    if m.ndim != 1:
        raise SteeringError(f"multipliers must be a scalar or [batch], got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise SteeringError(f"multipliers must be finite, got {m}")
    return m


def _positions(positions: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(positions, str):
        if positions == "all":
            return np.zeros(1, np.int32), np.full(1, NO_END, np.int32)
        if positions == "generated":
            return np.full(1, GENERATED, np.int32), np.full(1, NO_END, np.int32)
        raise SteeringError(
            f"positions={positions!r}: use 'all', 'generated', an int, [B] ints or (start, end)"
        )
    if isinstance(positions, tuple) and len(positions) == 2:
        start, end = (np.atleast_1d(np.asarray(p)) for p in positions)
    else:
        start = np.atleast_1d(np.asarray(positions))
        end = np.full(start.shape, NO_END)
    if start.dtype.kind not in "iu" or end.dtype.kind not in "iu" or start.ndim != 1 or end.ndim != 1:
        raise SteeringError(f"positions must be ints or [B] int arrays, got {positions!r}")
    if np.any(start < 0):
        raise SteeringError("start positions must be >= 0 (use positions='generated' for generation)")
    start, end = np.broadcast_arrays(start, end)
    return start.astype(np.int32), np.minimum(end, NO_END).astype(np.int32)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)
