"""Figures for steerability experiments (Tan et al. 2024), drawn with matplotlib (any backend).

Every function writes one PNG (or any format matplotlib infers from the suffix) and returns its
path; with ``path=None`` it returns the :class:`matplotlib.figure.Figure` instead, unsaved.

Every axis that shows a propensity or a quantity made from it (steerability: the slope of the
propensity per unit multiplier; its variance; the unsteered propensity gap) names the kind of
propensity and its unit: ``propensity="logit"`` (the difference of the completions' summed raw
logits, repepo's and the paper's) or ``"logprob"`` (of their summed log-probabilities, nats).
Functions given a sweep table read the kind off its columns when ``propensity`` is not given.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping

import matplotlib
import numpy as np
import pandas as pd

from steerjax.errors import MetricsError
from steerjax.plotting import save_figure, subplots
from steerjax.studies.reliability.analyses import SHIFTS, correlation, generalisation_matrix
from steerjax.studies.reliability.config import propensity_label
from steerjax.studies.reliability.steerability import as_per_example, best_layer, layer_sweep_summary, require_columns

# columns that, when they take several values, mean several curves per example: plots of one set of
# curves refuse such tables instead of pooling them
CURVE_KEYS = ("model", "train_setting", "test_setting")
STEER_COLOUR = "#2b6cb0"
ANTI_COLOUR = "#c53030"


_UNITS = {"logit": ("raw-logit difference", "logits"), "logprob": ("log-prob difference", "nats")}


def infer_propensity(table: pd.DataFrame) -> str | None:
    """``"logit"`` or ``"logprob"``: which difference a sweep table's ``propensity`` column holds
    (None when the table cannot tell)."""
    if "propensity" not in table.columns:
        return None
    p = table["propensity"].to_numpy(np.float64)
    for kind, (a, b) in (("logit", ("logit_positive", "logit_negative")),
                         ("logprob", ("logp_positive", "logp_negative"))):
        if {a, b} <= set(table.columns) and np.array_equal(p, (table[a] - table[b]).to_numpy(np.float64)):
            return kind
    return None


def unit(kind: str | None) -> str:
    """The unit of a propensity of ``kind``."""
    return _UNITS[kind][1] if kind in _UNITS else "propensity units"


def steerability_label(kind: str | None, what: str = "steerability", power: int = 1) -> str:
    """Axis label of a steerability (``power=2``: its variance) with the propensity's kind and unit."""
    name = _UNITS[kind][0] if kind in _UNITS else "propensity (kind not given)"
    per = f"{unit(kind)} per unit multiplier"
    return f"{what}\n(slope of the {name}; {per if power == 1 else f'({per})²'})"


def _finish(fig, path):
    return fig if path is None else save_figure(fig, path)


def _single(df: pd.DataFrame, column: str, what: str) -> None:
    if column in df.columns and df[column].nunique(dropna=False) > 1:
        raise MetricsError(
            f"{what} got {df[column].nunique(dropna=False)} values of {column!r}: filter the table to one first"
        )


def violin_steerability(per_example: pd.DataFrame, path, *, dataset_col: str = "dataset",
                        title: str | None = None, propensity: str | None = None,
                        norms: Mapping | None = None) -> str:
    """Violin plot of per-example steerability per dataset, as in Tan et al. 2024, Figure 1.

    Datasets are sorted by median steerability (highest at the top); a second panel shows each
    dataset's anti-steerable fraction (share of examples with a negative slope).

    Args:
      per_example: :func:`~steerjax.studies.reliability.per_example_steerability` output (or a sweep table)
        for a single layer, model and (train, test) setting.
      path: output file.
      dataset_col: column naming datasets.
      title: figure title.
      propensity: the propensity's kind (``"logit"``, ``"logprob"``; default: read off a sweep table).
      norms: dataset -> the steering vector's norm, shown beside each dataset's name.
    """
    propensity = propensity or infer_propensity(per_example)
    pe = as_per_example(per_example, (dataset_col, "layer") if "layer" in per_example.columns else (dataset_col,))
    require_columns(pe, [dataset_col, "slope"], "violin_steerability")
    for column in ("layer", *CURVE_KEYS):
        _single(pe, column, "violin_steerability")
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
    ax.set_yticks(positions, [f"{d} (n={int(stats.loc[d, 'n'])}" + (f", |v|={norms[d]:.2f})" if norms and d in norms
                                                                    else ")") for d in names])
    ax.set_ylim(-0.7, k - 0.3)
    ax.set_xlabel(steerability_label(propensity, "per-example steerability"))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)

    bx.barh(positions, stats["anti"].to_numpy(), color=ANTI_COLOUR, alpha=0.75, height=0.6)
    for i, frac in enumerate(stats["anti"].to_numpy()):
        bx.text(frac + 0.02, i, f"{100 * frac:.0f}%", va="center", fontsize=8)
    bx.set_xlim(0, 1.0)
    bx.set_xlabel("anti-steerable fraction\n(share of examples)")
    bx.grid(axis="x", alpha=0.3)
    bx.tick_params(axis="y", left=False)
    layer = f" (layer {pe['layer'].iloc[0]})" if "layer" in pe.columns else ""
    fig.suptitle(title or f"Per-example steerability by dataset{layer}")
    return _finish(fig, path)


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
    propensity: str | None = None,
    norms: Mapping | None = None,
) -> str:
    """Mean propensity against multiplier per dataset, with a +-1 std band across examples and a
    few thin per-example curves: the propensity curves of Tan et al. 2024 (Sec. 3).

    Args:
      table: sweep table for a single layer, model and (train, test) setting.
      path: output file.
      examples: example ids to draw as thin lines, for every dataset, or a mapping from dataset to
        ids. Default: ``n_examples`` examples spread over the range of per-example slopes, from the
        most anti-steerable to the most steerable.
      n_examples: number of thin curves per dataset when ``examples`` is None.
      dataset_col: column naming datasets (absent: one dataset).
      title: figure title.
      propensity: the kind of the ``propensity`` column (``"logit"``: raw-logit difference,
        ``"logprob"``: log-prob difference); default: read off the table's logit / log-prob columns.
      norms: dataset -> the steering vector's norm, shown in each panel's title.
    """
    require_columns(table, ["example", "multiplier", "propensity"], "propensity_curves")
    propensity = propensity or infer_propensity(table)
    for column in ("layer", *CURVE_KEYS):
        _single(table, column, "propensity_curves")
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
        norm = f", |v| = {norms[name]:.2f}" if norms and name in norms else ""
        ax.set_title(f"{name}{norm}\nsteerability {slopes.mean():.2f} {unit(propensity)}/multiplier, "
                     f"anti-steerable {100 * (slopes < 0).mean():.0f}%", fontsize=9)
        ax.grid(alpha=0.3)
    for i, ax in enumerate(axes.flat[:len(names)]):
        if i + ncols >= len(names):
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("steering multiplier (× vector)")
    for ax in axes[:, 0]:
        ax.set_ylabel(propensity_label(propensity))
    axes.flat[0].legend(fontsize=8, loc="upper left")
    layer = f" (layer {table['layer'].iloc[0]})" if "layer" in table.columns else ""
    fig.suptitle(title or f"Propensity vs steering multiplier{layer}")
    fig.tight_layout()
    return _finish(fig, path)


def layer_sweep_plot(summary: pd.DataFrame, path, *, title: str | None = None, propensity: str | None = None,
                     norms: Mapping | None = None) -> str:
    """Steerability and anti-steerable fraction against layer, with the best layer marked
    (highest mean steerability, ties to the lowest layer), for choosing the steering layer.

    Args:
      summary: :func:`~steerjax.studies.reliability.layer_sweep_summary` output (a sweep or per-example table
        is summarised first).
      path: output file.
      title: figure title.
      propensity: the propensity's kind (``"logit"``, ``"logprob"``; default: read off a sweep table).
      norms: layer -> the steering vector's norm, drawn on a second axis.
    """
    require_columns(summary, ["layer"], "layer_sweep_plot")
    propensity = propensity or infer_propensity(summary)
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
    ax.set_ylabel(steerability_label(propensity, "steerability (mean)"), fontsize=8)
    if norms:
        nx = ax.twinx()
        ks = sorted(norms)
        nx.plot(ks, [norms[k] for k in ks], "s:", color="grey", ms=3, lw=1, label="vector norm")
        nx.set_ylabel("vector norm (L2, residual-stream units)", fontsize=8, color="grey")
    ax.legend(fontsize=8)
    bx.bar(layers, s["anti_steerable_fraction"].to_numpy(np.float64), color=ANTI_COLOUR, alpha=0.75, width=0.7)
    bx.set_ylim(0, max(0.05, float(s["anti_steerable_fraction"].max()) * 1.25))
    bx.set_ylabel("anti-steerable\nfraction (share)")
    bx.set_xlabel("layer (block steered)")
    bx.set_xticks(layers)
    fig.suptitle(title or "Layer sweep")
    fig.tight_layout()
    return _finish(fig, path)


def id_ood_scatter(generalisation_df: pd.DataFrame, path, *, train_col: str = "train_setting",
                   test_col: str = "test_setting", baseline="baseline", title: str | None = None,
                   propensity: str | None = None) -> str:
    """In-distribution vs out-of-distribution steerability per dataset (Tan et al. 2024, Sec. 5).

    Each point is a dataset: x is its in-distribution (baseline -> baseline) steerability, y its
    steerability in one train x test setting (one colour per setting, Pearson r in the legend).
    The reference cell itself is omitted; points on the diagonal generalise perfectly.

    Args:
      generalisation_df: :func:`~steerjax.studies.reliability.generalisation` output (one layer).
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
    ax.set_xlabel(steerability_label(propensity, "in-distribution steerability (baseline → baseline)"))
    ax.set_ylabel(steerability_label(propensity, "steerability in the train → test setting"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="train → test setting",
              title_fontsize=8, frameon=False)
    ax.set_title(title or "In- vs out-of-distribution steerability\n"
                 "(one point per dataset; r: Pearson across datasets)")
    fig.tight_layout()
    return _finish(fig, path)


def _limits(*arrays) -> tuple[float, float]:
    values = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in arrays])
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    pad = 0.08 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _fit_line(ax, x, y, color) -> None:
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() >= 2 and np.ptp(x[ok]) > 0:
        slope, intercept = np.polyfit(x[ok], y[ok], 1)
        xs = np.array([x[ok].min(), x[ok].max()])
        ax.plot(xs, intercept + slope * xs, color=color, lw=1.2, alpha=0.8)


def _corr_text(x, y, prefix: str = "") -> str:
    n, r, rho = correlation(x, y)
    return f"{prefix}r = {r:.2f}, ρ = {rho:.2f} (n = {n})"


def _grid(n: int, ncols: int, size=(4.2, 3.9), **kw):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, **kw)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def shift_scatter(shifts_df: pd.DataFrame, path, *, model_col: str = "model", variance: bool = True,
                  title: str | None = None, propensity: str | None = None) -> str:
    """In-distribution vs shifted steerability per dataset, one panel per shift (Tan et al. 2024, Sec. 5).

    Each point is a dataset: x its ``BASE -> BASE`` steerability, y its steerability after the
    shift, with the y = x line (a vector that generalises perfectly) and a least-squares line; the
    panel title gives the shift and Pearson r / Spearman rho across datasets (one line per model
    when there are several, each model in its own colour). With ``variance``, a second row plots
    the variance of per-example steerability the same way.

    Args:
      shifts_df: :func:`~steerjax.studies.reliability.id_ood_shifts` output (one layer).
      path: output file.
      model_col: column naming models (optional).
      variance: add the variance row.
      title: figure title.
    """
    require_columns(shifts_df, ["shift", "id_steerability", "ood_steerability", "id_variance", "ood_variance"],
                    "shift_scatter")
    _single(shifts_df, "layer", "shift_scatter")
    labels = list(pd.unique(shifts_df["shift"]))
    models = list(pd.unique(shifts_df[model_col])) if model_col in shifts_df.columns else [None]
    rows = [("steerability", steerability_label(propensity, "steerability (mean slope)"))]
    if variance:
        rows.append(("variance", steerability_label(propensity, "variance of per-example steerability", 2)))
    fig, axes = subplots(len(rows), len(labels), figsize=(4.2 * len(labels), 4.1 * len(rows)), squeeze=False)
    colours = matplotlib.colormaps["tab10"]
    for r, (stat, name) in enumerate(rows):
        x_all, y_all = shifts_df[f"id_{stat}"], shifts_df[f"ood_{stat}"]
        lo, hi = _limits(x_all, y_all, [0.0])
        for c, label in enumerate(labels):
            ax = axes[r, c]
            sub = shifts_df[shifts_df["shift"] == label]
            lines = [label]
            for j, model in enumerate(models):
                part = sub if model is None else sub[sub[model_col] == model]
                colour = colours(j % 10) if len(models) > 1 else STEER_COLOUR
                ax.scatter(part[f"id_{stat}"], part[f"ood_{stat}"], s=32, color=colour, alpha=0.85,
                           edgecolor="white", lw=0.5, label=None if model is None else str(model))
                _fit_line(ax, part[f"id_{stat}"], part[f"ood_{stat}"], colour)
                lines.append(_corr_text(part[f"id_{stat}"], part[f"ood_{stat}"],
                                        "" if model is None else f"{model}: "))
            ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--")
            ax.axhline(0, color="grey", lw=0.6, ls=":")
            ax.axvline(0, color="grey", lw=0.6, ls=":")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_title("\n".join(lines), fontsize=9)
            ax.set_xlabel(f"ID (BASE → BASE) {name}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"OOD {name}", fontsize=8)
            ax.grid(alpha=0.3)
        if len(models) > 1:
            axes[r, 0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title or "In- vs out-of-distribution steerability (one point per dataset; dashed: y = x)")
    fig.tight_layout()
    return _finish(fig, path)


def relative_steerability_plot(rel: pd.DataFrame, path, *, train_col: str = "train_setting",
                               model_col: str = "model", title: str | None = None,
                               propensity: str | None = None) -> str:
    """Relative steerability against the unsteered propensity gap between the vector's training
    setting and the test setting (Tan et al. 2024, Sec. 5; repepo's relative-steerability trend plot).

    Only the rows :func:`~steerjax.studies.reliability.relative_steerability` kept (self-steerability above the
    threshold) are drawn, coloured by the vector's training setting, with a least-squares line; the
    title gives Spearman's rho, n and the number of rows filtered out.

    Args:
      rel: :func:`~steerjax.studies.reliability.relative_steerability` output (one layer, one model).
      path: output file.
      train_col: the training-setting column.
      model_col: column naming models; the table must hold one.
      title: figure title (the correlation line is added below it).
    """
    require_columns(rel, ["unsteered_propensity_gap", "relative_steerability", "kept", train_col],
                    "relative_steerability_plot")
    _single(rel, "layer", "relative_steerability_plot")
    _single(rel, model_col, "relative_steerability_plot")
    kept = rel[rel["kept"].astype(bool)]
    left_out = rel[~rel["kept"].astype(bool)]
    fig, ax = subplots(figsize=(8.5, 4.6))
    colours = matplotlib.colormaps["tab10"]
    if len(left_out):  # drawn faintly, so a model with no self-steerable cell still shows its data
        ax.scatter(left_out["unsteered_propensity_gap"], left_out["relative_steerability"], s=14, marker="x",
                   color="lightgrey", lw=0.8, label="left out (low self-steerability)")
    for j, (setting, part) in enumerate(kept.groupby(train_col, sort=True)):
        ax.scatter(part["unsteered_propensity_gap"], part["relative_steerability"], s=26, color=colours(j % 10),
                   alpha=0.8, edgecolor="white", lw=0.4, label=str(setting))
    _fit_line(ax, kept["unsteered_propensity_gap"], kept["relative_steerability"], ANTI_COLOUR)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axhline(0.0, color="grey", lw=0.6, ls=":")
    n, _, rho = correlation(kept["unsteered_propensity_gap"], kept["relative_steerability"])
    name = _UNITS[propensity][0] if propensity in _UNITS else "propensity (kind not given)"
    ax.set_xlabel(f"unsteered propensity gap, vector's setting vs test setting\n"
                  f"(mean |Δ| per example of the unsteered {name}, {unit(propensity)})")
    ax.set_ylabel("relative steerability\n(ratio of steerabilities, no unit)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="vector trained on", fontsize=8, title_fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), frameon=False)
    head = title or "Relative steerability vs unsteered propensity gap"
    ax.set_title(f"{head}\nSpearman ρ = {rho:.2f} (n = {n}; {int((~rel['kept'].astype(bool)).sum())} rows "
                 "with low self-steerability left out)", fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def mean_variance_plot(mv: pd.DataFrame, path, *, shifts: Mapping | None = None, train_col: str = "train_setting",
                       test_col: str = "test_setting", model_col: str = "model", title: str | None = None,
                       propensity: str | None = None) -> str:
    """Mean against variance of per-example steerability, one point per dataset, one panel per
    setting cell (the shifts of ``shifts`` present, default :data:`~steerjax.studies.reliability.SHIFTS`; a
    table without setting columns gives one panel), with Pearson r / Spearman rho in each title.

    Args:
      mv: :func:`~steerjax.studies.reliability.mean_variance` output (one layer).
      path: output file.
      shifts: label -> (train, test) cells to draw; None: the paper's shifts present in the table,
        or every cell when none is.
      train_col, test_col, model_col: the setting and model columns (each optional).
      title: figure title.
    """
    require_columns(mv, ["steerability", "variance"], "mean_variance_plot")
    _single(mv, "layer", "mean_variance_plot")
    if {train_col, test_col} <= set(mv.columns):
        pairs = list(dict.fromkeys(zip(mv[train_col], mv[test_col])))
        wanted = dict(SHIFTS if shifts is None else shifts)
        panels = [(label, cell) for label, cell in wanted.items() if tuple(cell) in pairs]
        if not panels and shifts is None:
            panels = [(f"{a} → {b}", (a, b)) for a, b in pairs]
        if not panels:
            raise MetricsError(f"mean_variance_plot: none of the cells {list(wanted.values())} is in the table")
        subsets = [(label, mv[(mv[train_col] == a) & (mv[test_col] == b)]) for label, (a, b) in panels]
    else:
        subsets = [("all datasets", mv)]
    models = list(pd.unique(mv[model_col])) if model_col in mv.columns else [None]
    fig, axes = _grid(len(subsets), 3)
    colours = matplotlib.colormaps["tab10"]
    for ax, (label, sub) in zip(axes.flat, subsets):
        lines = [str(label)]
        for j, model in enumerate(models):
            part = sub if model is None else sub[sub[model_col] == model]
            colour = colours(j % 10) if len(models) > 1 else STEER_COLOUR
            ax.scatter(part["steerability"], part["variance"], s=30, color=colour, alpha=0.85, edgecolor="white",
                       lw=0.5, label=None if model is None else str(model))
            _fit_line(ax, part["steerability"], part["variance"], colour)
            lines.append(_corr_text(part["steerability"], part["variance"], "" if model is None else f"{model}: "))
        ax.set_title("\n".join(lines), fontsize=9)
        ax.set_xlabel(steerability_label(propensity, "steerability (mean slope)"), fontsize=8)
        ax.set_ylabel(steerability_label(propensity, "variance of per-example steerability", 2), fontsize=8)
        ax.axvline(0, color="grey", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
        if len(models) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title or "Mean vs variance of per-example steerability (one point per dataset)")
    fig.tight_layout()
    return _finish(fig, path)


def model_comparison_plot(comparison, path, *, statistic: str = "steerability", dataset_col: str = "dataset",
                          title: str | None = None, propensity: str | None = None) -> str:
    """Steerability of each dataset under model A against model B, one panel per model pair, with the
    y = x line and Pearson r / Spearman rho in the title (Tan et al. 2024, model comparison).

    Args:
      comparison: :func:`~steerjax.studies.reliability.compare_models` output (a ``ModelComparison``, or its
        ``table``); when the table has several setting cells, each gets its own colour (with more
        than 4, the title gives the pooled correlation only: pass ``shift=`` to compare one cell).
      path: output file.
      statistic: ``"steerability"`` or ``"variance"``.
      dataset_col: the dataset column of the table.
      title: figure title.
    """
    table = comparison.table if hasattr(comparison, "table") else comparison
    if statistic not in ("steerability", "variance"):
        raise MetricsError(f"statistic must be 'steerability' or 'variance', got {statistic!r}")
    prefix = f"{statistic}["
    models = [c[len(prefix):-1] for c in table.columns if c.startswith(prefix) and c.endswith("]")]
    if len(models) < 2:
        raise MetricsError(f"model_comparison_plot needs {statistic}[<model>] columns of two or more models; "
                           f"got {list(table.columns)}")
    cell_cols = [c for c in table.columns if "[" not in c and c != dataset_col]
    cells = list(table.groupby(cell_cols, sort=True, dropna=False)) if cell_cols else [(None, table)]
    pairs = list(itertools.combinations(models, 2))
    fig, axes = _grid(len(pairs), 3)
    colours = matplotlib.colormaps["tab10"]
    for ax, (a, b) in zip(axes.flat, pairs):
        xa, yb = table[f"{statistic}[{a}]"], table[f"{statistic}[{b}]"]
        lo, hi = _limits(xa, yb, [0.0])
        lines = [f"{a} vs {b}"]
        many = len(cells) > 4
        for j, (key, part) in enumerate(cells):
            colour = colours(j % 10) if len(cells) > 1 else STEER_COLOUR
            name = None if key is None else " / ".join(map(str, key if isinstance(key, tuple) else (key,)))
            ax.scatter(part[f"{statistic}[{a}]"], part[f"{statistic}[{b}]"], s=32, color=colour, alpha=0.85,
                       edgecolor="white", lw=0.5, label=None if many else name)
            if not many:
                lines.append(_corr_text(part[f"{statistic}[{a}]"], part[f"{statistic}[{b}]"],
                                        "" if name is None else f"{name}: "))
        if many:
            lines.append(_corr_text(xa, yb, f"{len(cells)} setting cells pooled: "))
        ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        power = 1 if statistic == "steerability" else 2
        ax.set_xlabel(steerability_label(propensity, f"{statistic}: {a}", power), fontsize=8)
        ax.set_ylabel(steerability_label(propensity, f"{statistic}: {b}", power), fontsize=8)
        ax.set_title("\n".join(lines), fontsize=9)
        ax.grid(alpha=0.3)
        if 1 < len(cells) <= 4:
            ax.legend(fontsize=7)
    fig.suptitle(title or f"Dataset {statistic} across models (one point per dataset; dashed: y = x)")
    fig.tight_layout()
    return _finish(fig, path)


def steerability_ci_plot(ci: pd.DataFrame, path, *, dataset_col: str = "dataset", title: str | None = None,
                         propensity: str | None = None, norms: Mapping | None = None) -> str:
    """Dataset steerability and anti-steerable fraction with bootstrap intervals, one row per dataset
    (sorted by steerability, highest at the top).

    Args:
      ci: :func:`~steerjax.studies.reliability.bootstrap_ci` output for one layer (and setting), with
        ``steerability_lo/hi``; ``anti_steerable_fraction_lo/hi`` add the second panel.
      path: output file.
      dataset_col: column naming datasets.
      title: figure title.
      propensity: the propensity's kind (``"logit"``, ``"logprob"``), for the axis label.
      norms: dataset -> the steering vector's norm, shown beside each dataset's name.
    """
    require_columns(ci, [dataset_col, "steerability", "steerability_lo", "steerability_hi"], "steerability_ci_plot")
    _single(ci, "layer", "steerability_ci_plot")
    if ci[dataset_col].duplicated().any():
        raise MetricsError("steerability_ci_plot got several rows per dataset: filter the table to one setting first")
    s = ci.sort_values("steerability", ascending=True).reset_index(drop=True)
    anti = {"anti_steerable_fraction_lo", "anti_steerable_fraction_hi"} <= set(s.columns)
    k = len(s)
    level = f"{100 * float(s['ci_level'].iloc[0]):.0f}% " if "ci_level" in s.columns else ""
    fig, axes = subplots(1, 2 if anti else 1, figsize=(10 if anti else 7, max(3.0, 0.4 * k + 1.6)), sharey=True,
                         squeeze=False, gridspec_kw={"width_ratios": [3, 1.4]} if anti else None)
    ax = axes[0, 0]
    y = np.arange(k)
    mean = s["steerability"].to_numpy(np.float64)
    err = np.vstack([mean - s["steerability_lo"].to_numpy(np.float64),
                     s["steerability_hi"].to_numpy(np.float64) - mean])
    ax.errorbar(mean, y, xerr=np.clip(err, 0, None), fmt="o", color=STEER_COLOUR, ecolor="#1a365d", capsize=3,
                label=f"steerability ({level}bootstrap interval)")
    ax.axvline(0, color="grey", lw=1, ls="--")
    ns = s["n"].to_numpy() if "n" in s.columns else [None] * k
    def tick(d, n):
        facts = ([f"n={n}"] if n is not None else []) + ([f"|v|={norms[d]:.2f}"] if norms and d in norms else [])
        return f"{d} ({', '.join(facts)})" if facts else str(d)

    ax.set_yticks(y, [tick(d, n) for d, n in zip(s[dataset_col], ns)])
    ax.set_ylim(-0.7, k - 0.3)
    ax.set_xlabel(steerability_label(propensity, "steerability (mean per-example slope)"))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    if anti:
        bx = axes[0, 1]
        frac = s["anti_steerable_fraction"].to_numpy(np.float64)
        ferr = np.vstack([frac - s["anti_steerable_fraction_lo"].to_numpy(np.float64),
                          s["anti_steerable_fraction_hi"].to_numpy(np.float64) - frac])
        bx.barh(y, frac, color=ANTI_COLOUR, alpha=0.7, height=0.6)
        bx.errorbar(frac, y, xerr=np.clip(ferr, 0, None), fmt="none", ecolor="#1a202c", capsize=3)
        bx.set_xlim(0, 1.0)
        bx.set_xlabel("anti-steerable fraction\n(share of examples)")
        bx.grid(axis="x", alpha=0.3)
        bx.tick_params(axis="y", left=False)
    fig.suptitle(title or "Dataset steerability with bootstrap intervals over examples")
    fig.tight_layout()
    return _finish(fig, path)


def spurious_variance_plot(spurious: pd.DataFrame, path, *, dataset_col: str = "dataset",
                           title: str | None = None) -> str:
    """Share of per-example steerability variance explained by each spurious factor, per dataset
    (grouped bars: one per ``r2_<factor>`` column and the joint fit ``r2_joint``).

    Args:
      spurious: :func:`~steerjax.studies.reliability.spurious_variance` output for one layer (and model).
      path: output file.
      dataset_col: column naming datasets.
      title: figure title.
    """
    require_columns(spurious, [dataset_col, "r2_joint"], "spurious_variance_plot")
    _single(spurious, "layer", "spurious_variance_plot")
    _single(spurious, "model", "spurious_variance_plot")
    if spurious[dataset_col].duplicated().any():
        raise MetricsError("spurious_variance_plot got several rows per dataset: filter to one setting first")
    cols = [c for c in spurious.columns if c.startswith("r2_") and c != "r2_joint"] + ["r2_joint"]
    s = spurious.sort_values("r2_joint", ascending=True).reset_index(drop=True)
    k, m = len(s), len(cols)
    fig, ax = subplots(figsize=(8.5, max(3.0, 0.55 * k * max(1, m / 2) + 1.4)))
    colours = matplotlib.colormaps["tab10"]
    height = 0.8 / m
    y = np.arange(k)
    for j, col in enumerate(cols):
        vals = s[col].to_numpy(np.float64)  # NaN: the factor is constant in that dataset
        ax.barh(y - 0.4 + height * (j + 0.5), np.nan_to_num(vals), height=height,
                color="#4a5568" if col == "r2_joint" else colours(j % 10),
                label=col[3:].replace("_", " ") + (" (all factors)" if col == "r2_joint" else ""))
    ax.set_yticks(y, [str(d) for d in s[dataset_col]])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of per-example steerability variance explained (R², no unit)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(m, 3), frameon=False)
    fig.suptitle(title or "Spurious factors: variance of steerability they explain")
    fig.tight_layout()
    return _finish(fig, path)


def generalisation_heatmap(gen: pd.DataFrame, path, *, value: str = "relative_steerability",
                           train_col: str = "train_setting", test_col: str = "test_setting",
                           title: str | None = None, propensity: str | None = None) -> str:
    """The train x test matrix of one :func:`~steerjax.studies.reliability.generalisation` column, averaged over
    datasets (:func:`~steerjax.studies.reliability.generalisation_matrix`), as an annotated heatmap.

    Args:
      gen: :func:`~steerjax.studies.reliability.generalisation` output (one layer, one model).
      path: output file.
      value: the column to show (e.g. ``steerability``, ``relative_steerability``).
      train_col, test_col: the setting columns.
      title: figure title.
    """
    _single(gen, "layer", "generalisation_heatmap")
    m = generalisation_matrix(gen, value=value, train_col=train_col, test_col=test_col)
    data = m.to_numpy(np.float64)
    fig, ax = subplots(figsize=(1.3 * data.shape[1] + 3.2, 1.0 * data.shape[0] + 2.0))
    finite = data[np.isfinite(data)]
    vmax = float(np.abs(finite).max()) if finite.size else 1.0
    image = ax.imshow(data, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if np.isfinite(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(data[i, j]) > 0.6 * vmax else "black")
    ax.set_xticks(range(data.shape[1]), [str(c) for c in m.columns], rotation=30, ha="right")
    ax.set_yticks(range(data.shape[0]), [str(r) for r in m.index])
    ax.set_xlabel("test setting")
    ax.set_ylabel("vector trained in")
    what = f"{value} (mean over datasets)"
    if value.startswith("relative"):
        label = f"{what}\n(ratio, no unit)"
    elif "steerability" in value:
        label = steerability_label(propensity, what)
    else:
        label = what
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title or f"Train x test generalisation: {value}")
    fig.tight_layout()
    return _finish(fig, path)
