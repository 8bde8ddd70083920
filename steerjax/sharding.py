"""Device meshes: examples over ``data``, parameters over ``model``, by one table of axis rules.

A mesh has two axes, ``("data", "model")``. Every array dimension has a *logical* name; the one
table :data:`LOGICAL_AXIS_RULES` maps logical names to mesh axes (maxtext's
``logical_axis_rules``): ``batch`` (examples) goes over ``data``; attention ``heads`` /
``kv_heads``, the MLP's hidden units ``mlp`` and the ``vocab`` go over ``model``; ``embed``,
``layers`` (the stacked-block axis) and the rest are replicated. Each parameter's logical axes are
declared where the parameter is created, as sharding metadata of the family's Flax NNX modules
(:func:`steerjax.models.transformer.param_axes`), so a model is sharded by that metadata through
this one table (tensor parallelism: each ``model`` shard holds ``1/model`` of the heads and MLP
units).

The entry points (:func:`steerjax.sweep`, :func:`steerjax.generate`,
:func:`steerjax.studies.prompt_steerability.scoring.answer_logprobs`, :func:`studies.steerability_prediction.rollouts`,
:func:`studies.steerability_prediction.early_features`,
:class:`studies.steerability_prediction.judge.HiddenStateJudge`, ...)
take ``mesh=``: they place the parameters with :func:`shard_params` and their batches with
:func:`put_batch` (padded to a multiple of the ``data`` size, split over it, in one call); XLA's
SPMD partitioner propagates the shardings through the unchanged jitted programs, so one program
runs on 1 CPU, 8 GPUs or a multi-host TPU slice.

Divisibility (the ``model`` axis of size ``m``):

* ``heads``: ``m`` must divide ``num_heads``, else :class:`ShardingError` (the query heads are
  the unit of attention work; a model that cannot split them should use ``model=1``).
* ``kv_heads``, ``mlp``, ``vocab``: a dimension that ``m`` does not divide is replicated instead
  (grouped-query models often have fewer KV heads than shards; vocabularies such as GPT-2's
  50257 are odd). :func:`param_specs` says which, so nothing is silent.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from steerjax.data.batch import round_up
from steerjax.errors import ShardingError
from steerjax.models import transformer
from steerjax.models.config import leaves
from steerjax.steering.core import Steering

DATA, MODEL = "data", "model"
AXES = (DATA, MODEL)

#: logical axis -> mesh axis (None: replicated). The one place shardings are decided.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", DATA),
    ("layers", None),
    ("embed", None),
    ("heads", MODEL),
    ("kv_heads", MODEL),
    ("mlp", MODEL),
    ("vocab", MODEL),
    ("head_dim", None),
    ("positions", None),
    ("length", None),
)
_RULES = dict(LOGICAL_AXIS_RULES)
_REPLICATE_IF_UNEVEN = ("kv_heads", "mlp", "vocab")

# ----------------------------------------------------------------------------- meshes


def make_mesh(data: int | None = None, model: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``Mesh`` of shape ``(data, model)`` with axes ``("data", "model")``.

    Args:
      data: examples are split over this many device groups; default: every device not used
        by ``model``.
      model: parameters (heads, MLP units, vocabulary) are split over this many devices.
      devices: default ``jax.devices()`` (all processes' devices in a multi-host run).

    Raises:
      ShardingError: ``data * model`` differs from the number of devices, or a size is not a
        positive integer.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if not devices:
        raise ShardingError("no devices to build a mesh from")
    for name, size in (("model", model), ("data", data)):
        if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1):
            raise ShardingError(f"mesh axis {name} must be a positive int, got {size!r}")
    if data is None:
        if n % model:
            raise ShardingError(f"model={model} does not divide the {n} devices; pass data= and model= "
                                f"with data * model == {n}")
        data = n // model
    if data * model != n:
        raise ShardingError(f"a {data}x{model} mesh needs {data * model} devices but {n} are available; "
                            f"choose data * model == {n} (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
                            "before jax is imported gives N devices)")
    try:  # jax's topology-aware device order; Auto axes: shardings are propagated, not typed
        return jax.make_mesh((data, model), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)
    except Exception:  # noqa: BLE001 - unusual topologies (multi-slice, split axes): plain row-major order
        return Mesh(np.asarray(devices, dtype=object).reshape(data, model), AXES)


_DEFAULT_MESHES: list = []


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None):
    """Inside the block, ``mesh`` is the mesh of every entry point called with ``mesh=None``
    (and of the runners and experiments built on them). ``None`` keeps one device."""
    _DEFAULT_MESHES.append(mesh)
    try:
        yield mesh
    finally:
        _DEFAULT_MESHES.pop()


def default_mesh(mesh: Mesh | None = None) -> Mesh | None:
    """``mesh`` if given, else the innermost :func:`use_mesh` mesh, else None (one device)."""
    if mesh is not None:
        return mesh
    return _DEFAULT_MESHES[-1] if _DEFAULT_MESHES else None


def from_env() -> Mesh | None:
    """The mesh a launched job asks for through its environment (``tpu_scripts/launch.sh`` sets it).

    * ``STEERJAX_DISTRIBUTED=1``: join the other processes with
      ``jax.distributed.initialize()`` (coordinator and process ids from the TPU or cluster
      environment), once.
    * ``STEERJAX_MESH=DATA,MODEL`` (e.g. ``16,1`` or ``8,2``): that mesh over all processes'
      devices; without it, with more than one device, a ``(all devices, 1)`` data-parallel mesh.

    Returns None (one device, nothing set up) when neither applies.
    """
    import os

    if os.environ.get("STEERJAX_DISTRIBUTED") == "1" and not jax.distributed.is_initialized():
        jax.distributed.initialize()
    spec = os.environ.get("STEERJAX_MESH")
    if spec:
        try:
            data, model = (int(x) for x in spec.split(","))
        except ValueError:
            raise ShardingError(f"STEERJAX_MESH must be 'DATA,MODEL' (two ints), got {spec!r}") from None
        return make_mesh(data=data, model=model)
    return make_mesh() if jax.device_count() > 1 else None


def axis_sizes(mesh: Mesh | Mapping[str, int] | None) -> dict[str, int]:
    """``{"data": d, "model": m}`` of a ``Mesh``, an ``AbstractMesh``, a mapping, or ``None`` (1x1)."""
    if mesh is None:
        return {DATA: 1, MODEL: 1}
    shape = dict(mesh.shape) if hasattr(mesh, "shape") and not isinstance(mesh, Mapping) else dict(mesh)
    if set(shape) != set(AXES):
        raise ShardingError(f"a steerjax mesh has axes {AXES} (use make_mesh); got {tuple(shape)}")
    return {DATA: int(shape[DATA]), MODEL: int(shape[MODEL])}


def data_size(mesh) -> int:
    """Devices (groups) examples are split over: 1 without a mesh."""
    return axis_sizes(mesh)[DATA]


def check_mesh(mesh, cfg) -> None:
    """Raise :class:`ShardingError` unless ``mesh`` is a ``(data, model)`` mesh whose ``model``
    size divides the model's attention heads."""
    if mesh is not None and not isinstance(mesh, Mesh):
        raise ShardingError(f"mesh must be a jax.sharding.Mesh (steerjax.sharding.make_mesh), "
                            f"got {type(mesh).__name__}")
    _check_heads(axis_sizes(mesh)[MODEL], cfg)


def _check_heads(m: int, cfg) -> None:
    if cfg.num_heads % m:
        fits = [k for k in range(1, cfg.num_heads + 1) if cfg.num_heads % k == 0]
        raise ShardingError(f"the model axis ({m}) must divide the number of attention heads ({cfg.num_heads}); "
                            f"use a model axis among {fits}")


# ----------------------------------------------------------------------------- parameters


def _counts(cfg) -> dict[str, int]:
    """How many units each logical axis splits into (what the mesh axis must divide)."""
    return {"heads": cfg.num_heads, "kv_heads": cfg.num_kv_heads, "mlp": cfg.intermediate_size,
            "vocab": cfg.vocab_size}


def logical_axes(cfg, path: str, ndim: int) -> tuple[str | None, ...]:
    """Logical axes of the parameter at module ``path`` (``"layers/self_attn/q_proj/kernel"``),
    from the sharding metadata of the family's modules.

    Raises:
      ShardingError: the family's module tree has no such parameter, or it has another rank.
    """
    node: Any = transformer.param_axes(cfg)
    for key in path.split("/"):
        if not isinstance(node, Mapping) or key not in node:
            raise ShardingError(f"the {cfg.family} module tree has no parameter {path!r}: params must be "
                                "the state of the family's modules (steerjax.models.transformer.abstract_params)")
        node = node[key]
    axes = tuple(node)
    if len(axes) != ndim:
        raise ShardingError(f"parameter {path!r} has {ndim} dimensions but its modules declare {len(axes)}: {axes}")
    return axes


def spec_for(axes: Sequence[str | None], cfg, mesh) -> PartitionSpec:
    """``PartitionSpec`` of an array with these logical axes, by :data:`LOGICAL_AXIS_RULES`."""
    sizes = axis_sizes(mesh)
    counts = _counts(cfg)
    out = []
    for ax in axes:
        mesh_ax = _RULES.get(ax) if ax is not None else None
        if mesh_ax is not None and sizes[mesh_ax] > 1 and ax in counts and counts[ax] % sizes[mesh_ax]:
            if ax not in _REPLICATE_IF_UNEVEN:
                raise ShardingError(f"the {mesh_ax} axis ({sizes[mesh_ax]}) does not divide {ax} ({counts[ax]})")
            mesh_ax = None  # documented fallback: replicate this dimension
        out.append(mesh_ax if mesh_ax is not None and sizes[mesh_ax] > 1 else None)
    return PartitionSpec(*out)


def _map_named(fn, tree, prefix=""):
    if isinstance(tree, Mapping):
        return {k: _map_named(fn, v, f"{prefix}{k}/") for k, v in tree.items()}
    return fn(prefix[:-1], tree)


def _shape(leaf) -> tuple[int, ...]:
    return tuple(leaf) if isinstance(leaf, tuple) else tuple(leaf.shape)


def param_specs(params, cfg, mesh) -> dict:
    """A ``PartitionSpec`` per parameter of ``params`` (arrays, ``ShapeDtypeStruct`` s, or shape
    tuples): same nesting as ``params``."""
    _check_heads(axis_sizes(mesh)[MODEL], cfg)
    return _map_named(lambda name, leaf: spec_for(logical_axes(cfg, name, len(_shape(leaf))), cfg, mesh), params)


def shard_params(params, cfg, mesh: Mesh) -> dict:
    """``params`` placed on ``mesh`` by :func:`param_specs` (replicated over ``data``).

    Leaves already placed that way are returned as they are, so calling this on every sweep
    is cheap once a model is sharded.
    """
    check_mesh(mesh, cfg)
    specs = param_specs(params, cfg, mesh)
    return jax.tree.map(lambda x, s: _place(x, NamedSharding(mesh, s)), params, specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def per_device_bytes(params, cfg, mesh, dtype=jnp.float32) -> int:
    """Bytes of parameters each device holds under :func:`param_specs` (no allocation).

    ``params``: arrays or ``ShapeDtypeStruct`` s (their dtype is used), or shape tuples
    (``dtype`` is used). ``mesh``: a ``Mesh``, an ``AbstractMesh``, ``{"data": d, "model": m}``
    or None.
    """
    sizes = axis_sizes(mesh)
    _check_heads(sizes[MODEL], cfg)

    def leaf_bytes(name, leaf):
        shape = _shape(leaf)
        spec = spec_for(logical_axes(cfg, name, len(shape)), cfg, mesh)
        itemsize = jnp.dtype(dtype if isinstance(leaf, tuple) else leaf.dtype).itemsize
        return math.prod(n // (sizes[ax] if ax else 1) for n, ax in zip(shape, spec)) * itemsize

    return sum(leaves(_map_named(leaf_bytes, params)))


# ----------------------------------------------------------------------------- batches


def batch_spec(ndim: int) -> PartitionSpec:
    """Leading (example) axis over ``data``, the rest replicated."""
    return PartitionSpec(_RULES["batch"], *([None] * (ndim - 1)))


def put(x, mesh: Mesh | None, *, batch: bool = True):
    """``x`` as a device array: split over ``data`` on its leading axis (``batch=True``) or
    replicated. Without a mesh, ``jnp.asarray(x)`` (single-device behaviour).

    Raises:
      ShardingError: the leading axis is not a multiple of the ``data`` size (pad it: use
        :func:`put_batch`).
    """
    if mesh is None:
        return jnp.asarray(x)
    if batch:
        d = data_size(mesh)
        if np.ndim(x) == 0 or np.shape(x)[0] % d:
            raise ShardingError(f"a batch of {np.shape(x)[:1]} examples cannot be split over data={d}: "
                                "pad it to a multiple of the data axis")
        return _place(x, NamedSharding(mesh, batch_spec(np.ndim(x))))
    return _place(x, NamedSharding(mesh, PartitionSpec()))


def put_batch(batch, mesh: Mesh | None, *, rows: int | None = None):
    """A batch padded and placed in one call: its examples split over the mesh's ``data`` axis.

    ``batch`` is a :class:`~steerjax.data.batch.TokenBatch`, an array ``[B, ...]``, or a pytree
    of them (tuple, dict; ``None`` leaves stay ``None``) whose leaves share the example axis
    ``B``. Every leaf is padded to ``rows`` (default ``B``) rounded up to a multiple of the
    ``data`` size by repeating its last row: padding examples whose results the caller drops
    (keep the first ``B``). A :class:`~steerjax.steering.Steering` in the tree is padded to the
    same rows (:meth:`Steering.pad <steerjax.steering.Steering.pad>`) and replicated, since its
    fields may be shared by every example. Without a mesh: the same padding, on the default
    device. Returns the placed tree.
    """
    is_steering = lambda x: isinstance(x, Steering)  # noqa: E731
    sizes = {np.shape(x)[0] for x in jax.tree.leaves(batch, is_leaf=is_steering) if not is_steering(x)}
    if len(sizes) != 1:
        raise ShardingError(f"the arrays of a batch must share their leading (example) axis, got {sorted(sizes)}")
    b = sizes.pop()
    n = b if rows is None else int(rows)
    if n < b:
        raise ShardingError(f"a batch of {b} examples does not fit {n} rows")
    size = round_up(n, data_size(mesh))

    def place(x):
        if is_steering(x):
            return jax.tree.map(lambda a: put(a, mesh, batch=False), x.pad(b, size))
        if size > b:
            xp = jnp if isinstance(x, jax.Array) else np
            x = xp.concatenate([x, xp.repeat(x[-1:], size - b, axis=0)], axis=0)
        return put(x, mesh)

    return jax.tree.map(place, batch, is_leaf=is_steering)


def to_host(x) -> np.ndarray:
    """A numpy copy of a (possibly multi-process) array: every process gets the whole array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _place(x, sharding: NamedSharding):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
        return x
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    # multi-host: every process holds the same host value; each fills its own devices' shards
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
