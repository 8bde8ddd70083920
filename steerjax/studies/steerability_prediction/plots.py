"""Figures for the steerability predictor. Each function writes one image and returns its path."""

from __future__ import annotations

import numpy as np
import pandas as pd

from steerjax.plotting import save_figure, subplots
from steerjax.studies.steerability_prediction.judge import LABELS

COLOURS = {"under-steer": "#a0aec0", "success": "#2f855a", "over-steer": "#c53030"}


def confusion_matrix(conf: pd.DataFrame, path, *, title: str = "Predictor on unseen concepts") -> str:
    """Row-normalised confusion matrix with counts."""
    counts = conf.to_numpy()
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = subplots(figsize=(4.6, 3.9))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, f"{rates[i, j]:.2f}\n({counts[i, j]})", ha="center", va="center",
                    color="white" if rates[i, j] > 0.6 else "black", fontsize=8)
    ax.set_xticks(range(len(conf.columns)), conf.columns, rotation=20)
    ax.set_yticks(range(len(conf.index)), conf.index)
    ax.set_xlabel("predicted")
    ax.set_ylabel("judge label")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    return save_figure(fig, path)


def feature_importance(importance: pd.DataFrame, path, *, top: int = 20) -> str:
    """The ``top`` features by mean CatBoost importance across folds."""
    imp = importance.head(top).iloc[::-1]
    fig, ax = subplots(figsize=(6, 0.28 * len(imp) + 1))
    ax.barh(imp["feature"], imp["importance"], color="#2b6cb0")
    ax.set_xlabel("CatBoost importance (mean over folds)")
    ax.set_title(f"Top {len(imp)} features", fontsize=10)
    return save_figure(fig, path)


def layer_step_importance(by: pd.DataFrame, path) -> str:
    """Heatmap of importance summed by layer (rows; -1 = next-token distribution) and step."""
    grid = by.pivot_table(index="layer", columns="step", values="importance", aggfunc="sum", fill_value=0.0)
    fig, ax = subplots(figsize=(1.0 * len(grid.columns) + 2.5, 0.22 * len(grid) + 1.5))
    im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(grid.columns)), [f"k={k}" for k in grid.columns])
    ax.set_yticks(range(len(grid.index)), ["next-token" if layer < 0 else f"L{layer}" for layer in grid.index],
                  fontsize=7)
    ax.set_xlabel("decoding step")
    ax.set_title("Where the signal is: importance by layer and step", fontsize=10)
    fig.colorbar(im, ax=ax, label="importance")
    return save_figure(fig, path)


def labels_by_strength(table: pd.DataFrame, path) -> str:
    """Stacked shares of each judge label per steering strength (steered rows)."""
    share = pd.crosstab(table["strength"], table["label"], normalize="index").reindex(columns=list(LABELS),
                                                                                      fill_value=0.0)
    fig, ax = subplots(figsize=(5.5, 3.4))
    bottom = np.zeros(len(share))
    x = np.arange(len(share))
    for lab in LABELS:
        ax.bar(x, share[lab], bottom=bottom, color=COLOURS[lab], label=lab)
        bottom += share[lab].to_numpy()
    ax.set_xticks(x, [f"{s:g}" for s in share.index])
    ax.set_xlabel("strength (x residual norm)")
    ax.set_ylabel("share of rollouts")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_title("Judge labels by steering strength", fontsize=10)
    return save_figure(fig, path)


def f1_by_step(scores: pd.DataFrame, path) -> str:
    """Macro-F1 on unseen concepts with features from the first ``k`` steps, with baselines."""
    fig, ax = subplots(figsize=(4.8, 3.2))
    ax.plot(scores["k"], scores["macro_f1"], "o-", color="#2b6cb0", label="predictor")
    for col, style in [("multiplier_only", "--"), ("strength_only", "-."), ("majority", ":")]:
        if col in scores:
            ax.axhline(float(scores[col].iloc[0]), ls=style, color="grey", label=col.replace("_", "-"))
    ax.set_xscale("log", base=2)
    ax.set_xticks(scores["k"], [str(k) for k in scores["k"]])
    ax.set_xlabel("features from the first k decoding steps")
    ax.set_ylabel("macro-F1 (unseen concepts)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


BASELINE_STYLE = {"IGS": ("*", "#2f855a"), "CGS": ("s", "#c53030"), "TCGS": ("D", "#dd6b20"),
                  "IGS-A": ("^", "#2b6cb0"), "IGS-D": ("v", "#319795")}


def pareto_front(x, y) -> np.ndarray:
    """Indices of the points no other point beats (fewer or equal ``x`` and more or equal ``y``,
    one of them strictly), sorted by ``x``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = [i for i in range(len(x)) if np.isfinite(x[i]) and np.isfinite(y[i]) and not any(
        x[j] <= x[i] and y[j] >= y[i] and (x[j] < x[i] or y[j] > y[i]) for j in range(len(x)) if j != i)]
    return np.asarray(sorted(keep, key=lambda i: (x[i], -y[i])), int)


def strategy_tradeoff(summary: pd.DataFrame, path, *, title: str = "Strength search vs IGS") -> str:
    """Success against decoded tokens, both relative to IGS, one panel per group.

    Args:
      summary: a :func:`steerjax.studies.steerability_prediction.search.compare_strategies` table.
      path: the image to write.

    Returns:
      The path written. Baselines are single markers; ``guided-*`` a line over its budgets ``R``;
      ``threshold-*`` the non-dominated front over its (``R``, threshold) settings, as the
      reference's ``pareto_front`` figure draws it. Dotted lines: the issue's targets (90% of
      IGS's success at 25% of its tokens).
    """
    groups = list(dict.fromkeys(summary["group"]))
    fig, axes = subplots(1, len(groups), figsize=(4.8 * len(groups), 3.8), squeeze=False)
    others = ["#6b46c1", "#b83280", "#975a16", "#4a5568", "#0987a0", "#718096"]  # one per strategy: 3 guided, 2 sweeps
    for ax, grp in zip(axes[0], groups):
        g = summary[(summary["group"] == grp) & (summary["items"] > 0)]
        for name, (marker, colour) in BASELINE_STYLE.items():
            row = g[g["strategy"] == name]
            if len(row):
                ax.plot(row["tokens_vs_igs"], row["success_vs_igs"], marker, color=colour, markersize=8,
                        label=name, linestyle="none", zorder=5)
        rest = [s for s in dict.fromkeys(g["strategy"]) if s not in BASELINE_STYLE]
        for name, colour in zip(rest, others * (1 + len(rest) // len(others))):
            s = g[g["strategy"] == name]
            if name.startswith("threshold"):
                front = s.iloc[pareto_front(s["tokens_vs_igs"], s["success_vs_igs"])]
                ax.plot(front["tokens_vs_igs"], front["success_vs_igs"], ".-", color=colour, lw=1.2,
                        label=f"{name} (front over R, t)")
            else:
                s = s.sort_values("max_rollouts")
                ax.plot(s["tokens_vs_igs"], s["success_vs_igs"], "o-", color=colour, label=name, zorder=4)
                last = None
                for _, r in s.iterrows():
                    xy = (r["tokens_vs_igs"], r["success_vs_igs"])
                    if last is None or abs(xy[0] - last[0]) + abs(xy[1] - last[1]) > 0.01:  # one label per point
                        ax.annotate(f"R={r['max_rollouts']:g}", xy, fontsize=7, xytext=(4, -9),
                                    textcoords="offset points")
                    last = xy
        ax.axvline(0.25, ls=":", color="grey")
        ax.axhline(0.9, ls=":", color="grey")
        ax.set_xlim(0, max(1.05, float(np.nanmax(g["tokens_vs_igs"])) * 1.05 if len(g) else 1.05))
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("decoded tokens / IGS's")
        ax.set_ylabel("success rate / IGS's")
        n = int(g.loc[g["strategy"] == "IGS", "items"].sum())
        ax.set_title(f"{title}: {grp} ({n} items)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)
