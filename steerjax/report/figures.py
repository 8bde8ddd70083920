"""The report's figures, drawn from its tables (the JSON document's rows). Each function writes one
PNG and returns its path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from steerjax.plotting import save_figure, subplots


def _value(cell: Any) -> tuple[float, float, float]:
    """``(value, lo, hi)`` of a table cell (NaN where missing)."""
    nan = float("nan")
    if isinstance(cell, Mapping):
        get = lambda k: nan if cell.get(k) is None else float(cell[k])  # noqa: E731
        return get("value"), get("lo"), get("hi")
    return (nan if cell is None else float(cell)), nan, nan


def prompt_vs_activation(concepts: Sequence[str], prompt_rows: Mapping[str, Mapping],
                         activation_rows: Mapping[str, Mapping], path, *, model: str = "") -> str:
    """Prompt steerability γ+ (x, ± its spread) against activation steerability (y, its interval),
    each concept labelled; concepts missing either measure are listed under the axes."""
    fig, ax = subplots(figsize=(6.4, 4.8))
    left_out = []
    for c in concepts:
        x, xlo, xhi = _value(prompt_rows.get(c, {}).get("gamma_pos"))
        y, ylo, yhi = _value(activation_rows.get(c, {}).get("steerability"))
        if not (np.isfinite(x) and np.isfinite(y)):
            left_out.append(c)
            continue
        xerr = [[x - xlo], [xhi - x]] if np.isfinite(xlo) and np.isfinite(xhi) else None
        yerr = [[y - ylo], [yhi - y]] if np.isfinite(ylo) and np.isfinite(yhi) else None
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="o", color="#2b6cb0", ecolor="#90cdf4", capsize=2)
        ax.annotate(c, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(0, color="#999", lw=0.6)
    ax.set_xlabel("prompt steerability γ+ (Miehling et al.)")
    ax.set_ylabel("activation steerability, logit diff per unit multiplier (Tan et al.)")
    ax.set_title(f"Prompt vs activation steerability{' — ' + model if model else ''}", fontsize=10)
    if left_out:
        ax.text(0, -0.18, f"not shown (a measure missing): {', '.join(left_out)}", transform=ax.transAxes, fontsize=7)
    return save_figure(fig, path)


def success_by_strength(concepts: Sequence[str], strength_rows: Mapping[str, Mapping], strengths: Sequence[float],
                        path, *, model: str = "") -> str:
    """Success rate by strength (with 95% Wilson intervals as bands), one line per concept."""
    fig, ax = subplots(figsize=(6.4, 4.4))
    for c in concepts:
        row = strength_rows.get(c)
        if not row or not strengths:
            continue
        cells = np.array([_value(row.get(f"success@{g:g}")) for g in strengths])
        line, = ax.plot(strengths, cells[:, 0], marker="o", ms=3, label=c)
        ax.fill_between(strengths, cells[:, 1], cells[:, 2], color=line.get_color(), alpha=0.12, lw=0)
    ax.set_xlabel("steering strength (fraction of the residual norm)")
    ax.set_ylabel("share of rollouts judged a success")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Judged success by strength (Fan et al.){' — ' + model if model else ''}", fontsize=10)
    if ax.lines:
        ax.legend(fontsize=7, ncol=2)
    else:
        ax.text(0.5, 0.5, "no steering-strength study in this report", ha="center", transform=ax.transAxes)
    return save_figure(fig, path)
