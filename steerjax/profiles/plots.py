"""Figures for prompt steerability (Miehling et al. 2024), drawn with matplotlib (any backend).

Every function writes one PNG (or any format matplotlib infers from the suffix) and returns its
path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from steerjax.errors import ProfileError
from steerjax.plotting import save_figure, subplots
from steerjax.profiles.beta import BetaProfile
from steerjax.profiles.indices import require_columns

POSITIVE_COLOUR = "#2b6cb0"
NEGATIVE_COLOUR = "#c53030"
CURVE_COLUMNS = ("dimension", "direction", "budget", "mean", "std")


def _dimensions(curves: pd.DataFrame, dimensions: Sequence[str] | None) -> list:
    dims = list(dict.fromkeys(curves["dimension"])) if dimensions is None else list(dimensions)
    unknown = [d for d in dims if d not in set(curves["dimension"])]
    if unknown:
        raise ProfileError(f"dimensions {unknown} are not in the table")
    return dims


def index_curves(curves: pd.DataFrame, path, *, dimensions: Sequence[str] | None = None, ncols: int = 4,
                 title: str | None = None) -> str:
    """Steerability curves per dimension, as in Miehling et al. 2024, Fig. 3: the mean index
    gamma+ (blue) and gamma- (red) against the steering budget, with a +-1 std band over trials.

    Args:
      curves: :func:`~steerjax.profiles.indices.steerability_curves` output.
      path: output file.
      dimensions: the dimensions to draw, in order (default: all, in table order).
      ncols: panels per row.
      title: figure title.
    """
    require_columns(curves, CURVE_COLUMNS, "curves")
    dims = _dimensions(curves, dimensions)
    ncols = max(1, min(ncols, len(dims)))
    nrows = math.ceil(len(dims) / ncols)
    fig, axes = subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), sharex=True, sharey=True,
                             squeeze=False)
    for ax, dim in zip(axes.flat, dims):
        c = curves[curves["dimension"] == dim]
        for direction, colour, label in (("positive", POSITIVE_COLOUR, r"$\gamma^+$"),
                                         ("negative", NEGATIVE_COLOUR, r"$\gamma^-$")):
            d = c[c["direction"] == direction].sort_values("budget")
            if d.empty:
                continue
            k, m, s = d["budget"].to_numpy(float), d["mean"].to_numpy(float), d["std"].fillna(0).to_numpy(float)
            ax.plot(k, m, "-o", color=colour, ms=3, lw=1.5, label=label)
            ax.fill_between(k, m - s, m + s, color=colour, alpha=0.18, lw=0)
        ax.axhline(0, color="0.6", lw=0.8, zorder=0)
        ax.set_title(str(dim), fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(dims):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("steering budget k")
    for ax in axes[:, 0]:
        ax.set_ylabel("steerability index")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=2, frameon=False, bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title or "Prompt steerability (mean ± std over trials)", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return save_figure(fig, path)


def index_heatmap(curves: pd.DataFrame, path, *, dimensions: Sequence[str] | None = None,
                  title: str | None = None) -> str:
    """Heatmap of the mean steerability index, dimensions x budgets, one panel per direction
    (gamma+ left, gamma- right), on a shared diverging colour scale centred at 0.

    Args:
      curves: :func:`~steerjax.profiles.indices.steerability_curves` output.
      path: output file.
      dimensions: rows, in order (default: sorted by mean gamma+ - gamma- at the largest budget).
      title: figure title.
    """
    require_columns(curves, CURVE_COLUMNS, "curves")
    if dimensions is None:
        kmax = curves["budget"].max()
        last = curves[curves["budget"] == kmax].pivot_table(index="dimension", columns="direction", values="mean")
        order = (last.get("positive", 0) - last.get("negative", 0)).sort_values(ascending=False)
        dims = list(order.index) + [d for d in dict.fromkeys(curves["dimension"]) if d not in order.index]
    else:
        dims = _dimensions(curves, dimensions)
    budgets = sorted(curves["budget"].unique())
    mats = {}
    for direction in ("positive", "negative"):
        d = curves[curves["direction"] == direction]
        mats[direction] = d.pivot_table(index="dimension", columns="budget", values="mean").reindex(
            index=dims, columns=budgets).to_numpy(float)
    finite = np.concatenate([m[np.isfinite(m)] for m in mats.values()])
    lim = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-6)
    height = max(2.4, 0.32 * len(dims) + 1.2)
    width = max(3.0, 0.45 * len(budgets) + 1.5)
    fig, axes = subplots(1, 2, figsize=(2 * width + 1.2, height), sharey=True)
    for ax, direction in zip(axes, ("positive", "negative")):
        im = ax.imshow(mats[direction], cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(budgets)), [str(b) for b in budgets], fontsize=8)
        ax.set_yticks(range(len(dims)), [str(d) for d in dims], fontsize=8)
        ax.set_xlabel("steering budget k")
        ax.set_title(r"$\gamma^+$ (toward positive)" if direction == "positive" else r"$\gamma^-$ (toward negative)",
                     fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.9, label="mean steerability index")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def base_profiles(profiles: Mapping[str, BetaProfile] | pd.DataFrame, path, *, title: str | None = None,
                  ncols: int = 4) -> str:
    """Densities of the base profiles Beta(alpha, beta) of several dimensions, one panel each, with
    the profile mean marked (paper, Fig. 2).

    Args:
      profiles: dimension -> :class:`BetaProfile`, or a profile table (its ``direction == "base"``
        rows, first trial per dimension).
      path: output file.
      title: figure title.
      ncols: panels per row.
    """
    if isinstance(profiles, pd.DataFrame):
        require_columns(profiles, ("dimension", "direction", "alpha", "beta"), "profiles")
        base = profiles[profiles["direction"] == "base"].drop_duplicates("dimension")
        if base.empty:
            raise ProfileError("profiles has no 'base' rows")
        profiles = {r.dimension: BetaProfile(r.alpha, r.beta) for r in base.itertuples()}
    if not profiles:
        raise ProfileError("no profiles to plot")
    items = list(profiles.items())
    ncols = max(1, min(ncols, len(items)))
    nrows = math.ceil(len(items) / ncols)
    fig, axes = subplots(nrows, ncols, figsize=(3.0 * ncols, 2.2 * nrows), sharex=True, squeeze=False)
    x = np.linspace(0.0, 1.0, 801)[1:-1]
    for ax, (dim, p) in zip(axes.flat, items):
        y = p.pdf(x)
        cap = np.quantile(y, 0.98) * 1.15
        ax.fill_between(x, np.minimum(y, cap), color=POSITIVE_COLOUR, alpha=0.25, lw=0)
        ax.plot(x, np.minimum(y, cap), color=POSITIVE_COLOUR, lw=1.4)
        ax.axvline(p.mean, color="0.25", ls="--", lw=1)
        ax.set_ylim(0, cap * 1.05)
        ax.set_xlim(0, 1)
        ax.set_yticks([])
        ax.set_title(f"{dim}\nBeta({p.alpha:.1f}, {p.beta:.1f})", fontsize=8)
    for ax in axes.flat[len(items):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("persona expression (0 = negative, 1 = positive)", fontsize=8)
    fig.suptitle(title or "Base profiles (dashed: mean)", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return save_figure(fig, path)
