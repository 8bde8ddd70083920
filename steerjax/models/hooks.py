"""The hooks of the families' conversion tables: what a checkpoint tensor goes through on its way
to a parameter (a transpose, or a slice of a fused weight)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def transpose(w: np.ndarray) -> np.ndarray:
    """HF's ``[out, in]`` linear weight as an ``[in, out]`` kernel."""
    return w.T


def split_rows(start: int, stop: int) -> Callable[[np.ndarray], np.ndarray]:
    """The hook taking rows ``start:stop`` of a fused ``[out, in]`` weight, as an ``[in, out]`` kernel."""
    return lambda w: w[start:stop].T


def split_columns(start: int, stop: int) -> Callable[[np.ndarray], np.ndarray]:
    """The hook taking ``[..., start:stop]`` of a fused ``[in, out]`` kernel or ``[out]`` bias."""
    return lambda w: w[..., start:stop]
