"""Learned steering vectors: gradient ascent (optax) on the positive completion's log-probability margin.

:func:`learn_vectors` optimises vectors through :func:`steerjax.models.transformer.forward` with the
vectors as traced arrays; :func:`logprob_margins` evaluates its objective. Both read the same
padded arrays: each example's ``prompt + positive`` and ``prompt + negative`` as two rows of a
right-padded :class:`~steerjax.data.batch.TokenBatch` (``ACTIVATIONS`` widths), and the positions
whose logits predict the completion tokens.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from steerjax import sharding as shd
from steerjax.data.batch import ACTIVATIONS, TokenBatch, round_up
from steerjax.data.examples import Encoded, Example, encode_all
from steerjax.errors import CheckpointError, SteeringError
from steerjax.models.transformer import forward, unembed
from steerjax.progress import tqdm
from steerjax.runs import digest
from steerjax.steering import Steering, check_vector
from steerjax.vectors.activations import layer_indices
from steerjax.vectors.vector import SteeringVector

POSITIONS = ("completion", "all")


def learn_vectors(
    model,
    examples: Iterable[Example | Encoded | Sequence[Any]],
    init: Mapping[int, Any],
    *,
    steps: int = 100,
    lr: float = 1e-2,
    norm_penalty: float = 1e-3,
    positions: str = "completion",
    batch_size: int = 32,
    seed: int = 0,
    mesh=None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 10,
) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """Optimise steering vectors for the log-probability margin of the positive completions.

    All blocks in ``init`` are trained jointly (steered together, one penalty). With ``v_l`` the
    vector of block ``l``, the loss minimised with Adam is

    ``-mean_i [log p(positive_i | prompt_i; v) - log p(negative_i | prompt_i; v)]
    + norm_penalty * sum_l |v_l|^2``,

    where ``log p(completion)`` sums the completion tokens' log-probabilities and the model is
    steered with operator ``add`` and multiplier 1. Gradients flow through
    :func:`steerjax.models.transformer.forward` with the vectors as traced arrays.

    Args:
      model: a ``LanguageModel``.
      examples: as in :func:`steerjax.vectors.train_vector`.
      init: block index -> ``[D]`` starting vector (``train_vector`` uses the CAA vector).
      steps: Adam steps.
      lr: Adam learning rate, in activation units per step.
      norm_penalty: weight of the squared-L2 penalty (``>= 0``); at a stationary point
        ``|v| = |grad margin| / (2 norm_penalty)``, so larger values give shorter vectors.
      positions: ``"completion"``: steer the completion tokens only (from the first completion
        token on; the first completion token's own probability is then unaffected), or
        ``"all"``: every token.
      batch_size: examples per step; with more examples, steps cycle through seeded shuffles.
      seed: the shuffle seed.
      mesh: a ``("data", "model")`` mesh: each step's examples split over ``data`` (padded to a
        multiple of it with rows of weight 0), parameters over ``model``.
      progress: show a progress bar (only on a terminal).
      checkpoint_dir: a run directory: every ``checkpoint_every`` steps (and after the last) the
        vectors, the optax state and the step are saved there with orbax's ``CheckpointManager``
        (the last two kept); a run started again with the same directory and settings resumes from
        the latest one and ends with the same vectors as a run never interrupted.
      checkpoint_every: steps between checkpoints.

    Returns:
      ``({layer: float32 [D]}, info)`` with ``info``: ``objective_init``, ``objective_final``
      (mean margin over all examples, before and after), ``norm_init``, ``norm_final``.

    Raises:
      SteeringError: bad options or init vectors.
      CheckpointError: ``checkpoint_dir`` holds a run with other settings, or one further than
        ``steps``.
    """
    import optax
    check_options(steps, lr, norm_penalty, positions)
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) \
            or checkpoint_every < 1:
        raise SteeringError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
    cfg = model.config
    _, encoded = encode_all(model, examples)
    if not init:
        raise SteeringError("init is empty: give a starting {layer: vector}")
    idx = layer_indices(list(init), cfg.num_layers)
    v0 = np.stack([check_vector(cfg, init[layer], where=f"the init vector of layer {layer}") for layer in init])
    if positions == "completion" and all(len(e.positive) == 1 and len(e.negative) == 1 for e in encoded):
        raise SteeringError(
            "every completion is a single token, so with positions='completion' the objective does "
            "not depend on the vector (the first completion token is predicted from the unsteered "
            "prompt); use positions='all'"
        )
    data = _completion_data(encoded, positions)
    n = len(encoded)
    b = max(1, min(batch_size, n))
    mesh, params = _placed(model, mesh)
    rows = round_up(b, shd.data_size(mesh))
    layer_idx = shd.put(np.asarray(idx, np.int32), mesh, batch=False)
    weight = (np.arange(rows) < b).astype(np.float32)

    def objective(v) -> float:
        return float(np.mean(_margins_batched(params, cfg, data, layer_idx, v, b, mesh)))

    obj0 = objective(v0)
    opt = optax.adam(lr)
    v = shd.put(v0, mesh, batch=False)
    state = opt.init(v)
    batches = _batches(np.random.default_rng(seed), n, b)
    start, manager = 0, None
    if checkpoint_dir is not None:
        settings = {"model": str(model.source), "config": repr(cfg), "dtype": str(getattr(model, "dtype", "")),
                    "layers": [int(i) for i in idx], "lr": float(lr), "norm_penalty": float(norm_penalty),
                    "positions": positions, "batch_size": int(b), "seed": int(seed), "rows": int(rows),
                    "digest": digest((v0, *data))}
        manager = _TrainCheckpoints(checkpoint_dir, settings, checkpoint_every)
        start, v, state = manager.resume(v, state, steps)
        for _ in range(start):  # the shuffles those steps consumed
            next(batches)
    bar = tqdm(range(start, steps), desc="learning vector", unit="step", disable=None if progress else True,
               initial=start, total=steps)
    for step in bar:
        picked = next(batches)
        picked = np.concatenate([picked, np.repeat(picked[-1:], rows - b)])  # weight-0 mesh padding
        loss, grad = _loss_and_grad(params, cfg, v, layer_idx, jnp.float32(norm_penalty),
                                    *shd.put_batch((weight, *(a[picked] for a in data)), mesh))
        updates, state = opt.update(grad, state, v)
        v = optax.apply_updates(v, updates)
        bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
        if manager is not None:
            manager.save(step + 1, v, state, last=step + 1 == steps)
    if manager is not None:
        manager.close()
    v = shd.to_host(v).astype(np.float32)
    info = {
        "objective_init": obj0,
        "objective_final": objective(v),
        "norm_init": [float(x) for x in np.linalg.norm(v0, axis=-1)],
        "norm_final": [float(x) for x in np.linalg.norm(v, axis=-1)],
    }
    return {li: v[j] for j, li in enumerate(idx)}, info


def logprob_margins(
    model,
    examples: Iterable[Example | Encoded | Sequence[Any]],
    vectors: Mapping[int, Any] | SteeringVector | None = None,
    *,
    positions: str = "completion",
    batch_size: int = 32,
    mesh=None,
) -> np.ndarray:
    """Per-example ``log p(positive) - log p(negative)`` (summed over completion tokens), with
    ``vectors`` added (multiplier 1) from the first completion token on (``"completion"``) or
    everywhere (``"all"``): the objective of :func:`learn_vectors`. ``None``: unsteered."""
    if positions not in POSITIONS:
        raise SteeringError(f"positions={positions!r}: use one of {POSITIONS}")
    cfg = model.config
    _, encoded = encode_all(model, examples)
    if isinstance(vectors, SteeringVector):
        vectors = vectors.vectors
    if vectors:
        idx = layer_indices(list(vectors), cfg.num_layers)
        v = np.stack([check_vector(cfg, vectors[layer], where=f"the vector of layer {layer}") for layer in vectors])
    else:
        idx, v = [0], np.zeros((1, cfg.hidden_size), np.float32)
    data = _completion_data(encoded, positions)
    mesh, params = _placed(model, mesh)
    layer_idx = shd.put(np.asarray(idx, np.int32), mesh, batch=False)
    return _margins_batched(params, cfg, data, layer_idx, v, max(1, min(batch_size, len(encoded))), mesh)


def checkpoint_step(checkpoint_dir: str | os.PathLike) -> int | None:
    """The step of the latest checkpoint that :func:`learn_vectors` saved in ``checkpoint_dir``
    (the step a run with that directory resumes from), or None when it holds none."""
    try:
        names = os.listdir(os.path.join(os.fspath(checkpoint_dir), "steps"))
    except OSError:
        return None
    return max((int(n) for n in names if n.isdigit()), default=None)


def check_options(steps, lr, norm_penalty, positions) -> None:
    """Raise :class:`SteeringError` unless the options of :func:`learn_vectors` are valid."""
    if positions not in POSITIONS:
        raise SteeringError(f"positions={positions!r}: use one of {POSITIONS}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise SteeringError(f"steps must be an int >= 0, got {steps!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise SteeringError(f"lr must be a number > 0, got {lr!r}")
    if not isinstance(norm_penalty, (int, float)) or not norm_penalty >= 0:
        raise SteeringError(f"norm_penalty must be a number >= 0, got {norm_penalty!r}")


# ----------------------------------------------------------------------------- internals


def _batches(rng: np.random.Generator, n: int, b: int):
    """Each step's ``b`` example indices: seeded shuffles of ``range(n)``, consumed in order."""
    order = np.arange(0)
    while True:
        if len(order) < b:
            order = np.concatenate([order, rng.permutation(n)])
        picked, order = order[:b], order[b:]
        yield picked


class _TrainCheckpoints:
    """The run directory of a learned-vector optimisation: ``settings.json`` (what the run is)
    and orbax ``CheckpointManager`` steps holding ``{"v", "opt_state"}``."""

    def __init__(self, directory: str, settings: dict, every: int):
        import orbax.checkpoint as ocp

        self.directory = os.path.abspath(os.fspath(directory))
        self.every = every
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, "settings.json")
        if os.path.exists(path):
            try:
                with open(path) as f:
                    old = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{path} is unreadable ({e}); remove {self.directory} to start over") from e
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            if diff:
                raise CheckpointError(f"{self.directory} holds a learned-vector run with other settings ({diff}); "
                                      "use a new checkpoint directory, or the same settings to resume")
        else:
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(settings, f, indent=2)
            os.replace(tmp, path)
        options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(os.path.join(self.directory, "steps"), options=options)

    def resume(self, v, state, steps: int):
        """``(step, v, state)``: the latest checkpoint's, or ``(0, v, state)`` as given."""
        import jax
        import orbax.checkpoint as ocp

        step = self.manager.latest_step()
        if step is None:
            return 0, v, state
        if step > steps:
            raise CheckpointError(f"{self.directory} holds a run at step {step}, beyond steps={steps}; "
                                  f"pass steps >= {step} or use a new checkpoint directory")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"v": v, "opt_state": state})
        try:
            got = self.manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore errors of a damaged step
            raise CheckpointError(f"cannot restore step {step} of {self.directory} ({type(e).__name__}: {e}); "
                                  "remove that step directory to resume from the one before") from e
        return step, got["v"], got["opt_state"]

    def save(self, step: int, v, state, *, last: bool) -> None:
        import orbax.checkpoint as ocp

        if step % self.every == 0 or last:
            self.manager.save(step, args=ocp.args.StandardSave({"v": v, "opt_state": state}), force=True)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _placed(model, mesh):
    """``(mesh, params)``: the default mesh and the parameters placed on it."""
    mesh = shd.default_mesh(mesh)
    if mesh is None:
        return None, model.params
    shd.check_mesh(mesh, model.config)
    return mesh, shd.shard_params(model.params, model.config, mesh)


def _completion_data(encoded: list[Encoded], positions: str) -> tuple[np.ndarray, ...]:
    """Arrays with a leading example axis and a (positive, negative) axis: ids, valid and
    positions of the full sequences, the steering start, the positions whose logits predict
    completion tokens, those tokens, and their mask."""
    n = len(encoded)
    full = TokenBatch.pad([e.prompt + c for e in encoded for c in (e.positive, e.negative)], side="right",
                          buckets=ACTIVATIONS)
    comps = TokenBatch.pad([c for e in encoded for c in (e.positive, e.negative)], side="right")
    prompt = np.repeat([len(e.prompt) for e in encoded], 2).astype(np.int32)
    start = prompt if positions == "completion" else np.zeros_like(prompt)
    tgt_pos = prompt[:, None] - 1 + comps.positions  # padding entries are masked out
    pairs = lambda a: a.reshape((n, 2) + a.shape[1:])  # noqa: E731
    return tuple(map(pairs, (full.ids, full.valid, full.positions, start, tgt_pos, comps.ids, comps.valid)))


def _margins_batched(params, cfg, data, layer_idx, v, b: int, mesh) -> np.ndarray:
    n = data[0].shape[0]
    rows = round_up(b, shd.data_size(mesh))
    v = shd.put(np.asarray(v, np.float32), mesh, batch=False)
    out = []
    for s in range(0, n, rows):
        picked = np.arange(s, s + rows) % n  # a fixed batch shape; the wrapped rows are dropped
        m = _margins(params, cfg, v, layer_idx, *shd.put_batch(tuple(a[picked] for a in data), mesh))
        out.append(shd.to_host(m)[: min(rows, n - s)])
    return np.concatenate(out).astype(np.float64)


def _margins_fn(params, cfg, v, layer_idx, ids, valid, positions, start, tgt_pos, tgt_tok, tgt_mask):
    b = ids.shape[0]
    flat = lambda a: a.reshape((2 * b,) + a.shape[2:])  # noqa: E731
    ids, valid, positions, start, tgt_pos, tgt_tok, tgt_mask = map(
        flat, (ids, valid, positions, start, tgt_pos, tgt_tok, tgt_mask))
    vectors = jnp.zeros((cfg.num_layers, 1, cfg.hidden_size), jnp.float32).at[layer_idx, 0].set(v)
    steering = Steering.build(vectors, jnp.ones((2 * b,), jnp.float32), start=start)
    out = forward(params, cfg, ids, positions=positions, valid=valid, steering=steering)
    hidden = jnp.take_along_axis(out.hidden, tgt_pos[..., None], axis=1)  # [2b, C, D]
    logp = jax.nn.log_softmax(unembed(params, cfg, hidden), axis=-1)
    tok = jnp.take_along_axis(logp, tgt_tok[..., None], axis=-1)[..., 0]
    seq = jnp.sum(jnp.where(tgt_mask, tok, 0.0), axis=-1).reshape(b, 2)
    return seq[:, 0] - seq[:, 1]


_margins = jax.jit(_margins_fn, static_argnames=("cfg",))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _loss_and_grad(params, cfg, v, layer_idx, norm_penalty, weight, *data):
    def loss(v):
        margins = _margins_fn(params, cfg, v, layer_idx, *data)
        return -jnp.sum(weight * margins) / jnp.sum(weight) + norm_penalty * jnp.sum(v * v)

    return jax.value_and_grad(loss)(v)
