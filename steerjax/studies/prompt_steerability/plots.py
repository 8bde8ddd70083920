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
from steerjax.studies.prompt_steerability.beta import BetaProfile
from steerjax.studies.prompt_steerability.indices import require_columns

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
                 title: str | None = None, mirror_negative: bool = True) -> str:
    """Steerability curves per dimension, as in Miehling et al. 2024, Fig. 3: the mean index
    gamma+ (blue) and gamma- (red) against the steering budget, with a +-1 std band (the
    curves' ``std``: over benchmark trials, as the reference code draws it).

    Args:
      curves: :func:`~steerjax.studies.prompt_steerability.indices.steerability_curves` output.
      path: output file.
      dimensions: the dimensions to draw, in order (default: all, in table order).
      ncols: panels per row.
      title: figure title.
      mirror_negative: draw ``-gamma-`` (downward), as the paper and the reference code do;
        ``False`` draws ``gamma-`` upward like ``gamma+``.
    """
    require_columns(curves, CURVE_COLUMNS, "curves")
    dims = _dimensions(curves, dimensions)
    ncols = max(1, min(ncols, len(dims)))
    nrows = math.ceil(len(dims) / ncols)
    fig, axes = subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), sharex=True, sharey=True,
                         squeeze=False)
    neg_label = r"$-\gamma^-$" if mirror_negative else r"$\gamma^-$"
    for ax, dim in zip(axes.flat, dims):
        c = curves[curves["dimension"] == dim]
        for direction, colour, label, sign in (("positive", POSITIVE_COLOUR, r"$\gamma^+$", 1.0),
                                               ("negative", NEGATIVE_COLOUR, neg_label,
                                                -1.0 if mirror_negative else 1.0)):
            d = c[c["direction"] == direction].sort_values("budget")
            if d.empty:
                continue
            k, m, s = d["budget"].to_numpy(float), sign * d["mean"].to_numpy(float), d["std"].fillna(0).to_numpy(float)
            ax.plot(k, m, "-o", color=colour, ms=3, lw=1.5, label=label)
            ax.fill_between(k, m - s, m + s, color=colour, alpha=0.18, lw=0)
        ax.axhline(0, color="0.6", lw=0.8, zorder=0)
        ax.set_title(str(dim), fontsize=9)
        ax.grid(alpha=0.3)
        if mirror_negative:
            ax.set_ylim(-1.05, 1.05)
    for ax in axes.flat[len(dims):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("steering budget k")
    for ax in axes[:, 0]:
        ax.set_ylabel("steerability index")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=2, frameon=False, bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title or "Prompt steerability (mean ± std over benchmark trials)", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return save_figure(fig, path)


def index_heatmap(curves: pd.DataFrame, path, *, dimensions: Sequence[str] | None = None,
                  title: str | None = None) -> str:
    """Heatmap of the mean steerability index, dimensions x budgets, one panel per direction
    (gamma+ left, gamma- right), on a shared diverging colour scale centred at 0.

    Args:
      curves: :func:`~steerjax.studies.prompt_steerability.indices.steerability_curves` output.
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
    """Densities of the base profiles of several dimensions, one panel each, with the profile mean
    marked (paper, Figs. 2-3). A profile table's several base rows per dimension (one per
    benchmark trial) are drawn as their equal-weight mixture, the paper's "average of beta
    distributions across experiment trials".

    Args:
      profiles: dimension -> :class:`BetaProfile`, or a profile table (its ``direction == "base"``
        rows).
      path: output file.
      title: figure title.
      ncols: panels per row.
    """
    if isinstance(profiles, pd.DataFrame):
        require_columns(profiles, ("dimension", "direction", "alpha", "beta"), "profiles")
        base = profiles[profiles["direction"] == "base"]
        if base.empty:
            raise ProfileError("profiles has no 'base' rows")
        groups = {dim: [BetaProfile(r.alpha, r.beta) for r in g.itertuples()]
                  for dim, g in base.groupby("dimension", sort=False)}
    else:
        groups = {dim: [p] for dim, p in profiles.items()}
    if not groups:
        raise ProfileError("no profiles to plot")
    items = list(groups.items())
    ncols = max(1, min(ncols, len(items)))
    nrows = math.ceil(len(items) / ncols)
    fig, axes = subplots(nrows, ncols, figsize=(3.0 * ncols, 2.2 * nrows), sharex=True, squeeze=False)
    x = np.linspace(0.0, 1.0, 801)[1:-1]
    for ax, (dim, ps) in zip(axes.flat, items):
        y = np.mean([p.pdf(x) for p in ps], axis=0)
        mean = float(np.mean([p.mean for p in ps]))
        cap = np.quantile(y, 0.98) * 1.15
        ax.fill_between(x, np.minimum(y, cap), color=POSITIVE_COLOUR, alpha=0.25, lw=0)
        ax.plot(x, np.minimum(y, cap), color=POSITIVE_COLOUR, lw=1.4)
        ax.axvline(mean, color="0.25", ls="--", lw=1)
        ax.set_ylim(0, cap * 1.05)
        ax.set_xlim(0, 1)
        ax.set_yticks([])
        label = (f"Beta({ps[0].alpha:.1f}, {ps[0].beta:.1f})" if len(ps) == 1
                 else f"mixture of {len(ps)}, mean {mean:.2f}")
        ax.set_title(f"{dim}\n{label}", fontsize=8)
    for ax in axes.flat[len(items):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("persona expression (0 = negative, 1 = positive)", fontsize=8)
    fig.suptitle(title or "Base profiles (dashed: mean)", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return save_figure(fig, path)


def format_comparison(table: pd.DataFrame, path, *, formats: Sequence[str] = ("reference", "steerjax-v1"),
                      title: str | None = None) -> str:
    """How a change of prompt format moves results: base-profile means (left) and mean
    steerability indices at every budget (right) under ``formats[0]`` (x) against
    ``formats[1]`` (y), one point per dimension (and direction and budget), with the diagonal.

    Args:
      table: long table with ``format``, ``dimension``, ``quantity`` (``"base_mean"`` or
        ``"index"``), ``direction`` (``"positive"``/``"negative"``; ignored for the base),
        ``budget``, ``value`` and ``spread`` (a std, drawn as error bars; may be NaN).
      path: output file.
      formats: the two formats compared (x, y).
      title: figure title.
    """
    require_columns(table, ("format", "dimension", "quantity", "direction", "budget", "value", "spread"), "table")
    if len(formats) != 2 or not set(formats) <= set(table["format"]):
        raise ProfileError(f"table must hold the formats {list(formats)}; it has {sorted(set(table['format']))}")
    keys = ["dimension", "quantity", "direction", "budget"]
    x = table[table["format"] == formats[0]].set_index(keys)
    y = table[table["format"] == formats[1]].set_index(keys)
    both = x.join(y, how="inner", lsuffix="_x", rsuffix="_y").reset_index()
    fig, axes = subplots(1, 2, figsize=(10.5, 4.8))
    base = both[both["quantity"] == "base_mean"]
    ax = axes[0]
    ax.errorbar(base["value_x"], base["value_y"], xerr=base["spread_x"].fillna(0), yerr=base["spread_y"].fillna(0),
                fmt="o", color="0.3", ms=4, lw=0.8, capsize=2)
    for r in base.itertuples():
        ax.annotate(str(r.dimension), (r.value_x, r.value_y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"base profile mean, {formats[0]}")
    ax.set_ylabel(f"base profile mean, {formats[1]}")
    ax.set_title("base profiles (± the Beta std)", fontsize=10)
    ax = axes[1]
    idx = both[both["quantity"] == "index"]
    budgets = sorted(idx["budget"].unique())
    sizes = {b: 12 + 60 * i / max(1, len(budgets) - 1) for i, b in enumerate(budgets)}
    for direction, colour, label in (("positive", POSITIVE_COLOUR, r"$\gamma^+$"),
                                     ("negative", NEGATIVE_COLOUR, r"$\gamma^-$")):
        d = idx[idx["direction"] == direction]
        ax.scatter(d["value_x"], d["value_y"], s=[sizes[b] for b in d["budget"]], color=colour, alpha=0.6,
                   label=label, edgecolors="none")
    lim = max(1e-3, float(np.nanmax(np.abs(idx[["value_x", "value_y"]].to_numpy())))) * 1.1 if len(idx) else 1.0
    ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=0.8, ls="--")
    ax.axhline(0, color="0.8", lw=0.6)
    ax.axvline(0, color="0.8", lw=0.6)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel(f"mean steerability index, {formats[0]}")
    ax.set_ylabel(f"mean steerability index, {formats[1]}")
    ax.set_title(f"indices (marker size: budget {budgets[0] if budgets else ''}-{budgets[-1] if budgets else ''})",
                 fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    fig.suptitle(title or f"Prompt format: {formats[0]} vs {formats[1]}", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return save_figure(fig, path)
