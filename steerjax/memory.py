"""Memory from shapes: parameter bytes and the bytes one example adds to a sweep chunk.

Everything here is arithmetic on a :class:`~steerjax.models.config.ModelConfig`: nothing is
allocated, so real sizes (Llama-3-8B, Gemma-2-9B) can be planned on a laptop. The sweep takes
its chunk sizes from :func:`examples_per_chunk`; tests compare the estimate with XLA's own
memory analysis of the compiled sweep program.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from steerjax.models import transformer

#: at most this many examples per device in one chunk (bigger chunks gain nothing on CPU/GPU)
MAX_EXAMPLES_PER_DEVICE = 64
_F32 = 4


def param_bytes(cfg, dtype=jnp.float32) -> int:
    """Bytes of the parameters of ``cfg`` in ``dtype`` (embeddings once when tied)."""
    return transformer.num_parameters(cfg) * jnp.dtype(dtype).itemsize


def block_bytes(cfg, dtype=jnp.float32) -> int:
    """Bytes of one block's parameters. A chunk holds this much on top of the parameters and
    its examples: the scan over the stacked blocks works on a slice (a copy) of the current
    block's weights (seen in XLA's memory analysis as a constant independent of the batch)."""
    layers = transformer.abstract_params(cfg)["layers"]
    return sum(math.prod(s.shape[1:]) for s in jax.tree.leaves(layers)) * jnp.dtype(dtype).itemsize


def sweep_bytes_per_example(cfg, prompt_len: int, completion_len: int, rows: int, positions: str = "completion",
                            dtype=jnp.float32, *, vectors: int = 1) -> int:
    """Peak bytes one example adds to a sweep chunk (upper estimate, parameters excluded).

    Args:
      cfg: the model's config.
      prompt_len: the chunk's prompt bucket ``TP`` (tokens, padded).
      completion_len: the longest completion ``TC`` (tokens).
      rows: scored rows per example: ``layers x multipliers x 2`` completions.
      positions: ``"completion"`` (one unsteered prompt per example, KV-shared by its rows),
        ``"last_prompt"`` (the same, each row re-reading the last prompt token: ``TC`` steps) or
        ``"all"`` (one steered prompt per (layer, multiplier)).
      dtype: the activation and KV-cache dtype (the parameters' dtype); logits are float32.
      vectors: named vectors swept together; with more than one, every row carries its own
        ``[L, D]`` vector table (float32).

    The terms, each for the prompts (``P`` per example: 1 or ``rows / 2``) and for the scored
    rows (``TC - 1`` tokens each, against ``TP + TC`` keys):

    * prompt activations: ``P * TP * (6 D + 3 I)`` (residual, norms, q/k/v/o, gated MLP),
    * prompt attention scores and softmax: ``3 * P * H * TP^2`` (float32),
    * the prompt's KV cache: ``P * L * 2 * K * TP * Dh``,
    * row logits and log-softmax: ``3 * rows * (TC - 1) * V`` (float32),
    * row attention scores: ``3 * rows * (TC - 1) * H * (TP + TC)`` (float32),
    * row activations: ``rows * (TC - 1) * (6 D + 3 I)``.
    """
    f = jnp.dtype(dtype).itemsize
    prompts = max(1, rows // 2) if positions == "all" else 1
    steps = completion_len if positions == "last_prompt" else max(completion_len - 1, 1)
    width = cfg.hidden_size * 6 + cfg.intermediate_size * 3
    return int(
        prompts * prompt_len * width * f
        + prompts * 3 * cfg.num_heads * prompt_len * prompt_len * _F32
        + prompts * cfg.num_layers * 2 * cfg.num_kv_heads * prompt_len * cfg.head_dim * f
        + rows * steps * cfg.vocab_size * _F32 * 3
        + rows * steps * cfg.num_heads * (prompt_len + completion_len) * _F32 * 3
        + rows * steps * width * f
        + (rows * cfg.num_layers * cfg.hidden_size * _F32 if vectors > 1 else 0)
    )


def examples_per_chunk(bytes_per_example: int, budget_mb: float, *, data: int = 1, reserved: int = 0,
                       cap: int = MAX_EXAMPLES_PER_DEVICE) -> int:
    """Examples in one chunk: as many per device as ``budget_mb`` (per device) holds after
    ``reserved`` bytes (e.g. :func:`block_bytes`), at least one and at most ``cap``, times the
    ``data`` axis size (each device holds ``1/data`` of them)."""
    per_device = int((budget_mb * 2**20 - reserved) // max(1, bytes_per_example))
    return max(1, min(cap, per_device)) * data


def chunk_bytes(per_example: int, examples: int, data: int = 1) -> int:
    """Bytes one device holds for a chunk of ``examples`` split over ``data`` devices."""
    return per_example * math.ceil(examples / data)
