"""Figures for steerability experiments (Tan et al. 2024), drawn with matplotlib (any backend).

Every function writes one PNG (or any format matplotlib infers from the suffix) and returns its
path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import matplotlib
import numpy as np
import pandas as pd

from steerjax.errors import MetricsError
from steerjax.metrics.steerability import as_per_example, best_layer, layer_sweep_summary, require_columns
from steerjax.plotting import save_figure, subplots

STEER_COLOUR = "#2b6cb0"
ANTI_COLOUR = "#c53030"


def _single(df: pd.DataFrame, column: str, what: str) -> None:
    if column in df.columns and df[column].nunique(dropna=False) > 1:
        raise MetricsError(
            f"{what} got {df[column].nunique(dropna=False)} values of {column!r}: filter the table to one first"
        )


def violin_steerability(per_example: pd.DataFrame, path, *, dataset_col: str = "dataset",
                        title: str | None = None) -> str:
    """Violin plot of per-example steerability per dataset, as in Tan et al. 2024, Figure 1.

    Datasets are sorted by median steerability (highest at the top); a second panel shows each
    dataset's anti-steerable fraction (share of examples with a negative slope).

    Args:
      per_example: :func:`~steerjax.metrics.per_example_steerability` output (or a sweep table)
        for a single layer.
      path: output file.
      dataset_col: column naming datasets.
      title: figure title.
    """
    pe = as_per_example(per_example, (dataset_col, "layer") if "layer" in per_example.columns else (dataset_col,))
    require_columns(pe, [dataset_col, "slope"], "violin_steerability")
    _single(pe, "layer", "violin_steerability")
    stats = pe.groupby(dataset_col, sort=False)["slope"].agg(
        median="median", anti=lambda s: float((s < 0).mean()), n="size"
    ).sort_values("median", ascending=True)
    names = stats.index.tolist()
    k = len(names)
    fig, (ax, bx) = subplots(
        1, 2, figsize=(10, max(3.0, 0.42 * k + 1.6)), sharey=True, layout="constrained",
        gridspec_kw={"width_ratios": [4, 1.3]},
    )
    positions = np.arange(k)
    data = [pe.loc[pe[dataset_col] == d, "slope"].to_numpy(np.float64) for d in names]
    spread = [i for i, v in enumerate(data) if len(v) > 1 and np.ptp(v) > 0]
    if spread:
        parts = ax.violinplot([data[i] for i in spread], positions=positions[spread], orientation="horizontal",
                              widths=0.8, showextrema=False)
        for body in parts["bodies"]:
            body.set_facecolor(STEER_COLOUR)
            body.set_edgecolor("#1a365d")
            body.set_alpha(0.55)
    for i, v in enumerate(data):
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        ax.hlines(i, q1, q3, color="#1a202c", lw=3, label="interquartile range" if i == 0 else None)
        ax.plot(med, i, "o", color="white", mec="#1a202c", ms=5, label="median" if i == 0 else None)
        ax.plot(v.mean(), i, "D", color=ANTI_COLOUR, ms=4, label="mean (steerability)" if i == 0 else None)
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks(positions, [f"{d} (n={int(stats.loc[d, 'n'])})" for d in names])
    ax.set_ylim(-0.7, k - 0.3)
    ax.set_xlabel("per-example steerability\n(slope of propensity vs multiplier)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)

    bx.barh(positions, stats["anti"].to_numpy(), color=ANTI_COLOUR, alpha=0.75, height=0.6)
    for i, frac in enumerate(stats["anti"].to_numpy()):
        bx.text(frac + 0.02, i, f"{100 * frac:.0f}%", va="center", fontsize=8)
    bx.set_xlim(0, 1.0)
    bx.set_xlabel("anti-steerable\nfraction")
    bx.grid(axis="x", alpha=0.3)
    bx.tick_params(axis="y", left=False)
    layer = f" (layer {pe['layer'].iloc[0]})" if "layer" in pe.columns else ""
    fig.suptitle(title or f"Per-example steerability by dataset{layer}")
    return save_figure(fig, path)


def _pick_examples(pe: pd.DataFrame, n: int) -> list:
    ordered = pe.sort_values(["slope", "example"], kind="stable")["example"].to_numpy()
    if len(ordered) <= n:
        return list(ordered)
    idx = np.unique(np.round(np.linspace(0, len(ordered) - 1, n)).astype(int))
    return list(ordered[idx])


def propensity_curves(
    table: pd.DataFrame,
    path,
    examples: Iterable | Mapping | None = None,
    *,
    n_examples: int = 5,
    dataset_col: str = "dataset",
    title: str | None = None,
) -> str:
    """Mean propensity against multiplier per dataset, with a +-1 std band across examples and a
    few thin per-example curves: the propensity curves of Tan et al. 2024 (Sec. 3).

    Args:
      table: sweep table for a single layer (and setting).
      path: output file.
      examples: example ids to draw as thin lines, for every dataset, or a mapping from dataset to
        ids. Default: ``n_examples`` examples spread over the range of per-example slopes, from the
        most anti-steerable to the most steerable.
      n_examples: number of thin curves per dataset when ``examples`` is None.
      dataset_col: column naming datasets (absent: one dataset).
      title: figure title.
    """
    require_columns(table, ["example", "multiplier", "propensity"], "propensity_curves")
    _single(table, "layer", "propensity_curves")
    if dataset_col not in table.columns:
        table = table.assign(**{dataset_col: "all"})
    pe = as_per_example(table, (dataset_col,))
    names = list(pd.unique(table[dataset_col]))
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = subplots(nrows, ncols, figsize=(4.6 * ncols, 3.5 * nrows), squeeze=False, sharex=True)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        sub = table[table[dataset_col] == name]
        curve = sub.groupby("multiplier")["propensity"].agg(["mean", "std"]).fillna({"std": 0.0})
        m = curve.index.to_numpy(np.float64)
        if isinstance(examples, Mapping):
            chosen = list(examples.get(name, []))
        elif examples is not None:
            chosen = list(examples)
        else:
            chosen = _pick_examples(pe[pe[dataset_col] == name], n_examples)
        for j, ex in enumerate(chosen):
            e = sub[sub["example"] == ex].sort_values("multiplier")
            ax.plot(e["multiplier"], e["propensity"], color="grey", lw=0.8, alpha=0.7,
                    label="single examples" if j == 0 else None)
        ax.fill_between(m, curve["mean"] - curve["std"], curve["mean"] + curve["std"],
                        color=STEER_COLOUR, alpha=0.2, label="mean ± 1 std")
        ax.plot(m, curve["mean"], color=STEER_COLOUR, lw=2.2, marker="o", ms=3, label="mean propensity")
        ax.axhline(0, color="black", lw=0.7, ls=":")
        ax.axvline(0, color="black", lw=0.7, ls=":")
        slopes = pe.loc[pe[dataset_col] == name, "slope"]
        ax.set_title(f"{name}\nsteerability {slopes.mean():.2f}, anti-steerable {100 * (slopes < 0).mean():.0f}%",
                     fontsize=10)
        ax.grid(alpha=0.3)
    for i, ax in enumerate(axes.flat[:len(names)]):
        if i + ncols >= len(names):
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("steering multiplier")
    for ax in axes[:, 0]:
        ax.set_ylabel("propensity  (log p+ − log p−)")
    axes.flat[0].legend(fontsize=8, loc="upper left")
    layer = f" (layer {table['layer'].iloc[0]})" if "layer" in table.columns else ""
    fig.suptitle(title or f"Propensity vs steering multiplier{layer}")
    fig.tight_layout()
    return save_figure(fig, path)


def layer_sweep_plot(summary: pd.DataFrame, path, *, title: str | None = None) -> str:
    """Steerability and anti-steerable fraction against layer, with the best layer marked
    (highest mean steerability, ties to the lowest layer), for choosing the steering layer.

    Args:
      summary: :func:`~steerjax.metrics.layer_sweep_summary` output (a sweep or per-example table
        is summarised first).
      path: output file.
      title: figure title.
    """
    require_columns(summary, ["layer"], "layer_sweep_plot")
    if "steerability" not in summary.columns or "slope" in summary.columns:
        summary = layer_sweep_summary(summary)
    s = summary.sort_values("layer")
    best = best_layer(s)
    fig, (ax, bx) = subplots(2, 1, figsize=(7.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    layers = s["layer"].to_numpy()
    mean = s["steerability"].to_numpy(np.float64)
    ax.plot(layers, mean, "o-", color=STEER_COLOUR, lw=2, label="steerability (mean over datasets)")
    if "steerability_std" in s.columns and s["steerability_std"].notna().any():
        std = s["steerability_std"].fillna(0).to_numpy(np.float64)
        ax.fill_between(layers, mean - std, mean + std, color=STEER_COLOUR, alpha=0.18, label="± 1 std across datasets")
    for a in (ax, bx):
        a.axvline(best, color="#2f855a", ls="--", lw=1.3, label=f"best layer = {best}" if a is ax else None)
        a.grid(alpha=0.3)
    ax.axhline(0, color="black", lw=0.7, ls=":")
    ax.set_ylabel("steerability\n(slope of propensity)")
    ax.legend(fontsize=8)
    bx.bar(layers, s["anti_steerable_fraction"].to_numpy(np.float64), color=ANTI_COLOUR, alpha=0.75, width=0.7)
    bx.set_ylim(0, max(0.05, float(s["anti_steerable_fraction"].max()) * 1.25))
    bx.set_ylabel("anti-steerable\nfraction")
    bx.set_xlabel("layer")
    bx.set_xticks(layers)
    fig.suptitle(title or "Layer sweep")
    fig.tight_layout()
    return save_figure(fig, path)


def id_ood_scatter(generalisation_df: pd.DataFrame, path, *, train_col: str = "train_setting",
                   test_col: str = "test_setting", baseline="baseline", title: str | None = None) -> str:
    """In-distribution vs out-of-distribution steerability per dataset (Tan et al. 2024, Sec. 5).

    Each point is a dataset: x is its in-distribution (baseline -> baseline) steerability, y its
    steerability in one train x test setting (one colour per setting, Pearson r in the legend).
    The reference cell itself is omitted; points on the diagonal generalise perfectly.

    Args:
      generalisation_df: :func:`~steerjax.metrics.generalisation` output (one layer).
      path: output file.
      train_col, test_col: the setting columns.
      baseline: the reference setting (its train == test cell is not drawn).
      title: figure title.
    """
    g = generalisation_df
    require_columns(g, [train_col, test_col, "steerability", "id_steerability"], "id_ood_scatter")
    _single(g, "layer", "id_ood_scatter")
    cells = g.groupby([train_col, test_col], sort=True, dropna=False)
    fig, ax = subplots(figsize=(9.8, 6.0))
    colours = matplotlib.colormaps["tab10"]
    values = [g["id_steerability"].to_numpy(np.float64), g["steerability"].to_numpy(np.float64)]
    shown = 0
    for (train, test), cell in cells:
        if train == baseline and test == baseline:
            continue
        r = cell["id_ood_correlation"].iloc[0] if "id_ood_correlation" in cell.columns else np.nan
        label = f"{train} → {test}" + (f"  (r = {r:.2f})" if np.isfinite(r) else "")
        ax.scatter(cell["id_steerability"], cell["steerability"], s=36, color=colours(shown % 10),
                   marker="os^Dv<>p*h"[shown % 10], alpha=0.85, edgecolor="white", lw=0.5, label=label)
        shown += 1
    finite = np.concatenate([v[np.isfinite(v)] for v in values])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    pad = 0.06 * (hi - lo or 1.0)
    lo, hi = min(lo, 0.0) - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="y = x (fully generalises)")
    ax.axhline(0, color="grey", lw=0.7, ls=":")
    ax.axvline(0, color="grey", lw=0.7, ls=":")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("in-distribution steerability (baseline → baseline)")
    ax.set_ylabel("steerability in the train → test setting")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="train → test setting",
              title_fontsize=8, frameon=False)
    ax.set_title(title or "In- vs out-of-distribution steerability\n"
                 "(one point per dataset; r: Pearson across datasets)")
    fig.tight_layout()
    return save_figure(fig, path)
