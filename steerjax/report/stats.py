"""Correlations across concepts, with bootstrap intervals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from steerjax.errors import MetricsError


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; ties share the mean of their ranks) along the last axis."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, axis=-1, kind="stable")
    sorted_x = np.take_along_axis(x, order, axis=-1)
    n = x.shape[-1]
    base = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), x.shape).copy()
    out = np.empty_like(base)
    # mean rank over each run of ties: cumulative sums at run boundaries
    new_run = np.concatenate([np.ones(x.shape[:-1] + (1,), bool), sorted_x[..., 1:] != sorted_x[..., :-1]], axis=-1)
    run_id = np.cumsum(new_run, axis=-1) - 1
    for idx in np.ndindex(x.shape[:-1]):
        rid = run_id[idx]
        sums = np.bincount(rid, weights=base[idx])
        counts = np.bincount(rid)
        mean_rank = (sums / counts)[rid]
        out[idx][order[idx]] = mean_rank
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho of the finite pairs: Pearson's r of the average ranks. NaN with fewer than 3
    pairs or a constant side."""
    x, y = _pairs(x, y)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.clip(np.corrcoef(ranks(x), ranks(y))[0, 1], -1.0, 1.0))


def spearman_ci(x: Sequence[float], y: Sequence[float], *, n_boot: int = 2000, seed: int = 0,
                level: float = 0.95) -> dict[str, float | int]:
    """Spearman's rho of ``x`` and ``y`` (one value per concept) with a percentile bootstrap
    interval over concepts: the finite pairs are resampled with replacement ``n_boot`` times
    (``np.random.default_rng(seed)``); resamples whose rho is undefined (a constant side) are
    dropped and counted.

    Returns:
      ``{"n", "rho", "lo", "hi", "n_boot", "undefined"}``; rho and the bounds are NaN with fewer
      than 3 pairs.
    """
    if not 0 < level < 1:
        raise MetricsError(f"level must be in (0, 1), got {level}")
    x, y = _pairs(x, y)
    n = len(x)
    rho = spearman(x, y)
    out: dict[str, float | int] = {"n": n, "rho": rho, "lo": float("nan"), "hi": float("nan"),
                                   "n_boot": int(n_boot), "undefined": 0}
    if n < 3 or not np.isfinite(rho):
        return out
    idx = np.random.default_rng(seed).integers(0, n, size=(int(n_boot), n))
    bx, by = x[idx], y[idx]
    ok = (np.ptp(bx, axis=1) > 0) & (np.ptp(by, axis=1) > 0)
    rx, ry = ranks(bx[ok]), ranks(by[ok])
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    rhos = (rx * ry).sum(axis=1) / np.sqrt((rx ** 2).sum(axis=1) * (ry ** 2).sum(axis=1))
    out["undefined"] = int((~ok).sum())
    if len(rhos):
        lo, hi = np.quantile(np.clip(rhos, -1, 1), [(1 - level) / 2, (1 + level) / 2])
        out["lo"], out["hi"] = float(lo), float(hi)
    return out


def _pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    if x.shape != y.shape:
        raise MetricsError(f"a correlation needs two sequences of one length, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]
