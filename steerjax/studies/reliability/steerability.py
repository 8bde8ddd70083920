"""Steerability metrics of Tan et al. 2024, "Analysing the Generalisation and Reliability of
Steering Vectors" (NeurIPS 2024).

Every function takes the tidy sweep table (one row per example x layer x multiplier, with
``example``, ``multiplier`` and ``propensity = logp_positive - logp_negative``) or a table derived
from it, and returns a pandas DataFrame. Quantities:

- per-example steerability: the least-squares slope of an example's propensity against the
  steering multiplier (paper, Sec. 3);
- steerability of a dataset: the mean per-example slope, which equals the slope of the mean
  propensity curve when all examples share the multiplier grid;
- anti-steerable fraction: the share of examples whose slope is negative (paper, Fig. 1);
- spurious variance: the share of per-example steerability variance explained by
  spurious factors such as whether "A" or "Yes" is the positive answer (paper, Sec. 4);
- generalisation: steerability of a vector trained in one persona-prompt setting and tested in
  another, against the in-distribution steerability (paper, Sec. 5).

Only numpy and pandas are used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from steerjax.errors import MetricsError

MEASUREMENT_COLUMNS = ("multiplier", "propensity", "logp_positive", "logp_negative", "prob_positive", "correct")
DEFAULT_FACTORS = ("positive_letter", "positive_is_yes")
_MINIMISED = frozenset({"anti_steerable_fraction", "mean_residual_std"})


def as_tuple(cols: str | Iterable[str] | None) -> tuple[str, ...]:
    """Column names as a tuple: None -> (), one name -> (name,)."""
    if cols is None:
        return ()
    if isinstance(cols, str):
        return (cols,)
    return tuple(cols)


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise :class:`MetricsError` naming ``what`` unless ``df`` is a DataFrame with ``columns``."""
    if not isinstance(df, pd.DataFrame):
        raise MetricsError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in dict.fromkeys(columns) if c not in df.columns]
    if missing:
        raise MetricsError(
            f"{what} is missing required column(s) {missing}; it has {list(df.columns)}"
        )


def _group_ids(df: pd.DataFrame, keys: Sequence[str]) -> tuple[np.ndarray, int]:
    if not keys:
        return np.zeros(len(df), dtype=np.int64), 1
    gid = df.groupby(list(keys), sort=True, dropna=False).ngroup().to_numpy(dtype=np.int64)
    return gid, int(gid.max()) + 1 if len(gid) else 0


def _groupby(df: pd.DataFrame, keys: Sequence[str]):
    if keys:
        return df.groupby(list(keys), sort=True, dropna=False)
    return df.groupby(np.zeros(len(df), dtype=np.int64), sort=True)


def _finalise(out: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    if keys:
        return out.reset_index()
    return out.reset_index(drop=True)


def check_finite(df: pd.DataFrame, column: str) -> np.ndarray:
    """``df[column]`` as float64; :class:`MetricsError` naming the rows if any value is NaN, infinite
    or non-numeric."""
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        rows = df.index[bad][:5].tolist()
        raise MetricsError(
            f"column {column!r} has {int(bad.sum())} NaN, infinite or non-numeric value(s) "
            f"(first rows {rows}); drop or fix them before computing steerability"
        )
    return values


def with_propensity(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``propensity = logp_positive - logp_negative`` added when it has only the two
    log-probabilities."""
    if "propensity" not in table.columns and {"logp_positive", "logp_negative"} <= set(table.columns):
        return table.assign(propensity=table["logp_positive"] - table["logp_negative"])
    return table


def _grouped_corr(gid, G, a, b):
    n = np.bincount(gid, minlength=G).astype(np.float64)
    ac = a - (np.bincount(gid, a, minlength=G) / n)[gid]
    bc = b - (np.bincount(gid, b, minlength=G) / n)[gid]
    saa = np.bincount(gid, ac * ac, minlength=G)
    sbb = np.bincount(gid, bc * bc, minlength=G)
    sab = np.bincount(gid, ac * bc, minlength=G)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sab / np.sqrt(saa * sbb)
    r[(saa <= 0) | (sbb <= 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def per_example_steerability(table: pd.DataFrame, *, by: str | Sequence[str] = ("dataset", "layer")) -> pd.DataFrame:
    """Per-example steerability: the slope of propensity against the steering multiplier.

    For every group of ``by`` and every ``example`` within it, fits
    ``propensity = intercept + slope * multiplier`` by least squares (closed form, vectorised
    over examples). ``slope`` is the paper's per-example steerability (Tan et al. 2024, Sec. 3).

    Args:
      table: the sweep table, one row per example x ``by`` group x multiplier, with columns
        ``example``, ``multiplier``, ``propensity`` (or ``logp_positive`` and ``logp_negative``,
        from which it is derived) and the ``by`` columns.
      by: columns that, with ``example``, identify one propensity curve. Add the setting columns
        (e.g. ``train_setting``, ``test_setting``) when the table holds several curves per
        example and layer.

    Returns:
      One row per ``by`` x ``example``, sorted by them, with ``slope``, ``intercept``,
      ``residual_std`` (root mean square of the fit residuals), ``r2`` (NaN when the propensity is
      constant), ``spearman`` (rank correlation of propensity with multiplier; NaN when the
      propensity is constant), ``propensity_at_zero`` (NaN when multiplier 0 was not swept),
      ``propensity_shift`` (propensity at the largest minus at the smallest multiplier),
      ``n_multipliers``, ``multiplier_min``, ``multiplier_max``, and every other column of
      ``table`` that is constant within the example's curve (meta columns such as
      ``positive_letter``, ``positive_is_yes``, ``setting``, ``format``).

    Raises:
      MetricsError (a ValueError): missing columns, NaN/infinite propensities or multipliers,
        repeated multipliers within a curve, or fewer than two distinct multipliers for an example.
    """
    by = as_tuple(by)
    keys = [*by, "example"]
    if isinstance(table, pd.DataFrame):
        table = with_propensity(table)
    require_columns(table, [*keys, "multiplier", "propensity"], "the sweep table")
    if not len(table):
        raise MetricsError("the sweep table is empty")
    x = check_finite(table, "multiplier")
    y = check_finite(table, "propensity")

    gid, G = _group_ids(table, keys)
    n = np.bincount(gid, minlength=G)
    distinct = pd.DataFrame({"g": gid, "x": x}).drop_duplicates()
    n_distinct = np.bincount(distinct["g"].to_numpy(), minlength=G)
    if (n_distinct < n).any():
        dup = pd.DataFrame({"g": gid, "x": x}).duplicated(keep=False).to_numpy()
        rest = [c for c in table.columns if c not in (*keys, *MEASUREMENT_COLUMNS)]
        varying = []
        for c in rest:
            try:
                counts = table[c][dup].groupby([gid[dup], x[dup]]).nunique(dropna=False)
            except TypeError:
                continue
            if (counts > 1).any():
                varying.append(c)
        hint = f"; these columns differ between the repeated rows: {varying}" if varying else ""
        raise MetricsError(
            f"{int((n - n_distinct).sum())} row(s) repeat a multiplier for the same {keys}: each "
            f"example's curve must have one row per multiplier. Add the columns that tell the "
            f"curves apart to `by`{hint}"
        )
    if (n_distinct < 2).any():
        bad = np.flatnonzero(n_distinct < 2)
        first = table.iloc[np.flatnonzero(np.isin(gid, bad[:3]))][keys].drop_duplicates()
        raise MetricsError(
            f"{len(bad)} example curve(s) have fewer than 2 distinct multipliers, so no slope can be "
            f"fitted (e.g. {first.to_dict('records')}); sweep at least two multipliers per example"
        )

    nf = n.astype(np.float64)
    xm = np.bincount(gid, x, minlength=G) / nf
    ym = np.bincount(gid, y, minlength=G) / nf
    xc = x - xm[gid]
    yc = y - ym[gid]
    sxx = np.bincount(gid, xc * xc, minlength=G)
    sxy = np.bincount(gid, xc * yc, minlength=G)
    syy = np.bincount(gid, yc * yc, minlength=G)
    slope = sxy / sxx
    intercept = ym - slope * xm
    resid = yc - slope[gid] * xc
    sse = np.bincount(gid, resid * resid, minlength=G)
    ymax = np.zeros(G)
    np.maximum.at(ymax, gid, np.abs(y))
    constant = syy <= nf * (1e-12 * np.maximum(ymax, 1.0)) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(constant, np.nan, 1.0 - sse / syy)

    ranks = pd.DataFrame({"g": gid, "x": x, "y": y}).groupby("g")[["x", "y"]].rank(method="average")
    spearman = _grouped_corr(gid, G, ranks["x"].to_numpy(np.float64), ranks["y"].to_numpy(np.float64))
    spearman[constant] = np.nan

    order = np.lexsort((x, gid))
    ends = np.cumsum(n) - 1
    starts = ends - n + 1
    at_zero = np.full(G, np.nan)
    zero = x == 0
    at_zero[gid[zero]] = y[zero]

    first_rows = order[starts]
    key_frame = table.iloc[first_rows][keys].reset_index(drop=True)
    out = key_frame.assign(
        slope=slope,
        intercept=intercept,
        residual_std=np.sqrt(sse / nf),
        r2=r2,
        spearman=spearman,
        propensity_at_zero=at_zero,
        propensity_shift=y[order[ends]] - y[order[starts]],
        n_multipliers=n,
        multiplier_min=x[order[starts]],
        multiplier_max=x[order[ends]],
    )

    candidates = [c for c in table.columns if c not in (*keys, *MEASUREMENT_COLUMNS) and c not in out.columns]
    carried = []
    for c in candidates:
        try:
            n_values = table[c].groupby(gid).nunique(dropna=False)
        except TypeError:
            continue
        if (n_values <= 1).all():
            carried.append(c)
    if carried:
        meta = table.iloc[first_rows][carried].reset_index(drop=True)
        out = pd.concat([out, meta], axis=1)
    return out


def as_per_example(obj: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """``obj`` as a per-example table: a sweep table goes through :func:`per_example_steerability`
    with ``by``; a table with ``slope`` is checked (``by`` columns, finite slopes) and returned."""
    if isinstance(obj, pd.DataFrame) and "slope" not in obj.columns and (
        "propensity" in obj.columns or {"logp_positive", "logp_negative"} <= set(obj.columns)
    ):
        return per_example_steerability(obj, by=by)
    require_columns(obj, [*by, "slope"], "the per-example table")
    check_finite(obj, "slope")
    return obj


def dataset_steerability(per_example: pd.DataFrame, *, by: str | Sequence[str] = ("dataset", "layer")) -> pd.DataFrame:
    """Steerability of each dataset (and layer): summary statistics of per-example slopes.

    ``steerability`` is the mean per-example slope, the paper's dataset steerability (Tan et al.
    2024, Sec. 3; equal to the slope of the mean propensity curve when examples share the
    multiplier grid), and ``anti_steerable_fraction`` the share of examples with a negative slope
    (Fig. 1).

    Args:
      per_example: output of :func:`per_example_steerability` (a raw sweep table is accepted and
        converted with the same ``by``).
      by: grouping columns.

    Returns:
      One row per group with ``n``, ``steerability``, ``steerability_std`` (ddof 1),
      ``steerability_sem``, ``steerability_median``, ``steerability_q25``, ``steerability_q75``,
      ``anti_steerable_fraction``, ``mean_residual_std``, ``mean_r2``, ``mean_spearman`` and
      ``mean_propensity_shift`` (the last four ignore NaN; NaN when the column is absent).
    """
    by = as_tuple(by)
    pe = as_per_example(per_example, by)
    require_columns(pe, by, "the per-example table")
    pe = pe.assign(_anti=(pe["slope"] < 0).astype(np.float64))
    for c in ("residual_std", "r2", "spearman", "propensity_shift"):
        if c not in pe.columns:
            pe[c] = np.nan
    g = _groupby(pe, by)
    out = g.agg(
        n=("slope", "size"),
        steerability=("slope", "mean"),
        steerability_std=("slope", "std"),
        steerability_median=("slope", "median"),
        steerability_q25=("slope", lambda s: s.quantile(0.25)),
        steerability_q75=("slope", lambda s: s.quantile(0.75)),
        anti_steerable_fraction=("_anti", "mean"),
        mean_residual_std=("residual_std", "mean"),
        mean_r2=("r2", "mean"),
        mean_spearman=("spearman", "mean"),
        mean_propensity_shift=("propensity_shift", "mean"),
    )
    out.insert(3, "steerability_sem", out["steerability_std"] / np.sqrt(out["n"]))
    return _finalise(out, by)


def _r2(y: np.ndarray, design: np.ndarray) -> float:
    yc = y - y.mean()
    sst = float(yc @ yc)
    if sst <= len(y) * (1e-12 * max(1.0, float(np.abs(y).max()))) ** 2:
        return float("nan")
    X = np.column_stack([np.ones(len(y)), design]) if design.size else np.ones((len(y), 1))
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    return float(np.clip(1.0 - (resid @ resid) / sst, 0.0, 1.0))


def _levels(values: pd.Series) -> pd.Series:
    return values.astype(object).where(values.notna(), "<missing>").map(str)


def _one_hot(levels: pd.Series) -> np.ndarray:
    dummies = pd.get_dummies(levels, drop_first=True, dtype=np.float64)
    return dummies.to_numpy()


def spurious_variance(
    per_example: pd.DataFrame,
    *,
    factors: str | Sequence[str] = DEFAULT_FACTORS,
    by: str | Sequence[str] = ("dataset", "layer"),
) -> pd.DataFrame:
    """Share of per-example steerability variance explained by spurious factors.

    Tan et al. 2024 (Sec. 4) find that much of the variance in per-example steerability is due to
    spurious features of the prompt, such as whether "A" or "Yes" is the positive answer. Within
    each ``by`` group this is measured as the R^2 of an ordinary least-squares regression of the
    per-example slope on the one-hot encoded factor levels (reference coding, with intercept):
    ``r2_<factor>`` for each factor alone and ``r2_joint`` for all usable factors together.

    A factor is dropped from a group's regressions when its column is absent, all its values in
    the group are missing (e.g. ``positive_is_yes`` for a dataset without yes/no answers), or it
    takes a single value there; its ``r2_<factor>`` is then NaN. When only some values are
    missing, "missing" is a level of its own. ``r2_joint`` is NaN when no factor is usable, and
    every R^2 is NaN when all slopes in the group are equal.

    Args:
      per_example: output of :func:`per_example_steerability` (a raw sweep table is converted).
      factors: meta columns to test.
      by: grouping columns.

    Returns:
      One row per group with ``n``, ``slope_variance`` (population variance of the slopes),
      ``factors_used`` (comma-separated names of the factors kept), ``r2_joint``, ``r2_<factor>``
      per factor, and ``mean_slope[<factor>=<level>]`` per factor level seen anywhere (NaN in
      groups where the factor is dropped or the level is absent). :func:`factor_level_means` gives
      the level means as a long table.
    """
    by = as_tuple(by)
    factors = as_tuple(factors)
    if not factors:
        raise MetricsError("spurious_variance needs at least one factor column")
    pe = as_per_example(per_example, by)
    require_columns(pe, by, "the per-example table")
    present = [f for f in factors if f in pe.columns]
    rows = []
    for key, grp in _groupby(pe, by):
        y = grp["slope"].to_numpy(np.float64)
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(by, key)) if by else {}
        row["n"] = len(y)
        row["slope_variance"] = float(np.var(y))
        used, blocks = [], []
        for f in factors:
            row[f"r2_{f}"] = np.nan
        for f in present:
            col = grp[f]
            if col.isna().all():
                continue
            levels = _levels(col)
            if levels.nunique() < 2:
                continue
            block = _one_hot(levels)
            used.append(f)
            blocks.append(block)
            row[f"r2_{f}"] = _r2(y, block)
            for level, mean in grp["slope"].groupby(levels.to_numpy()).mean().items():
                row[f"mean_slope[{f}={level}]"] = float(mean)
        row["factors_used"] = ",".join(used)
        row["r2_joint"] = _r2(y, np.column_stack(blocks)) if blocks else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    fixed = [*by, "n", "slope_variance", "factors_used", "r2_joint", *(f"r2_{f}" for f in factors)]
    level_cols = sorted(c for c in out.columns if c not in fixed)
    return out[fixed + level_cols]


def factor_level_means(
    per_example: pd.DataFrame,
    *,
    factors: str | Sequence[str] = DEFAULT_FACTORS,
    by: str | Sequence[str] = ("dataset", "layer"),
) -> pd.DataFrame:
    """Mean per-example steerability for each level of each spurious factor (Tan et al. 2024, Sec. 4).

    Returns a long table: ``by`` columns, ``factor``, ``level`` (as text; missing values are the
    level ``"<missing>"``), ``n``, ``mean_slope``, ``std_slope``. Absent factor columns are skipped.
    """
    by = as_tuple(by)
    pe = as_per_example(per_example, by)
    require_columns(pe, by, "the per-example table")
    parts = []
    for f in as_tuple(factors):
        if f not in pe.columns:
            continue
        sub = pe[[*by, "slope"]].assign(factor=f, level=_levels(pe[f]).to_numpy())
        g = _groupby(sub, [*by, "factor", "level"])
        parts.append(_finalise(g["slope"].agg(n="size", mean_slope="mean", std_slope="std"), [*by, "factor", "level"]))
    if not parts:
        return pd.DataFrame(columns=[*by, "factor", "level", "n", "mean_slope", "std_slope"])
    return pd.concat(parts, ignore_index=True)


def layer_sweep_summary(table: pd.DataFrame, *, dataset_col: str = "dataset") -> pd.DataFrame:
    """Per-layer summary of a layer sweep, for choosing the steering layer (Tan et al. 2024, Sec. 3).

    Each dataset is summarised with :func:`dataset_steerability`, then datasets are averaged with
    equal weight per layer.

    Args:
      table: a sweep table, a per-example table or a :func:`dataset_steerability` table, with a
        ``layer`` column; ``dataset_col`` is optional (absent: one dataset).
      dataset_col: the column naming datasets.

    Returns:
      One row per layer, sorted, with ``n_datasets``, ``n_examples``, ``steerability`` (mean over
      datasets of the mean slope), ``steerability_std`` (across datasets, ddof 1),
      ``anti_steerable_fraction`` and ``mean_propensity_shift`` (propensity at the largest minus
      at the smallest multiplier, averaged over examples then datasets).
    """
    require_columns(table, ["layer"], "the layer-sweep table")
    by = ("layer", dataset_col) if dataset_col in table.columns else ("layer",)
    if "steerability" in table.columns and "slope" not in table.columns:
        ds = table
        require_columns(ds, ["steerability", "anti_steerable_fraction"], "the dataset-steerability table")
        if "n" not in ds.columns:
            ds = ds.assign(n=np.nan)
        if "mean_propensity_shift" not in ds.columns:
            ds = ds.assign(mean_propensity_shift=np.nan)
    else:
        ds = dataset_steerability(table, by=by)
    out = ds.groupby("layer", sort=True).agg(
        n_datasets=("steerability", "size"),
        n_examples=("n", "sum"),
        steerability=("steerability", "mean"),
        steerability_std=("steerability", "std"),
        anti_steerable_fraction=("anti_steerable_fraction", "mean"),
        mean_propensity_shift=("mean_propensity_shift", "mean"),
    )
    return out.reset_index()


def best_layer(table: pd.DataFrame, *, criterion: str = "steerability") -> int:
    """The layer that steers best: highest mean steerability by default (Tan et al. 2024, Sec. 3).

    Args:
      table: a sweep table, a per-example table, a :func:`dataset_steerability` table or a
        :func:`layer_sweep_summary` table (rows of the same layer are averaged).
      criterion: a column of the layer summary; ``anti_steerable_fraction`` and
        ``mean_residual_std`` are minimised, any other column maximised.

    Returns:
      The best layer; ties go to the lowest layer. Layers whose criterion is NaN are ignored.
    """
    require_columns(table, ["layer"], "the layer-sweep table")
    summary = table if "steerability" in table.columns and "slope" not in table.columns else layer_sweep_summary(table)
    if criterion not in summary.columns:
        raise MetricsError(
            f"criterion {criterion!r} is not a column of the layer summary; choose one of "
            f"{[c for c in summary.columns if c != 'layer']}"
        )
    per_layer = pd.to_numeric(summary[criterion], errors="coerce").groupby(summary["layer"]).mean().dropna()
    if per_layer.empty:
        raise MetricsError(f"no layer has a finite {criterion!r}")
    values = per_layer.to_numpy(np.float64)
    if criterion in _MINIMISED:
        values = -values
    best = values.max()
    tied = np.isclose(values, best, rtol=1e-9, atol=1e-12)
    return int(np.min(per_layer.index.to_numpy()[tied]))


def generalisation(
    table: pd.DataFrame,
    *,
    train_col: str = "train_setting",
    test_col: str = "test_setting",
    by: str | Sequence[str] = ("dataset",),
    baseline: Any = "baseline",
    across: str = "dataset",
) -> pd.DataFrame:
    """In- vs out-of-distribution steerability over train x test persona-prompt settings.

    Tan et al. 2024 (Sec. 5) train steering vectors with and without persona prompts and apply
    them under other prompts. Each (``by`` group, train setting, test setting) cell gets the mean
    per-example slope (its steerability); ``in_distribution`` flags train == test; and every cell
    is compared with its group's in-distribution reference, the cell with train == test ==
    ``baseline``. Across the values of ``across`` (datasets) within one train x test cell, the
    Pearson correlation of reference vs cell steerability is the paper's ID-vs-OOD scatter
    statistic.

    Args:
      table: a sweep table (per-example slopes are fitted with ``by + (train_col, test_col)``)
        or a :func:`per_example_steerability` table that has the setting columns.
      train_col: column naming the setting the vector was trained in.
      test_col: column naming the setting it was evaluated in. Missing settings (None/NaN) are
        read as ``baseline`` (no persona prompt).
      by: grouping columns; include ``layer`` when the table has several layers.
      baseline: the setting whose train == test cell is the in-distribution reference.
      across: the ``by`` column over which ID/OOD correlations are computed.

    Returns:
      One row per ``by`` x train x test, sorted, with ``in_distribution``, ``n``,
      ``steerability``, ``steerability_std``, ``anti_steerable_fraction``, ``id_steerability``
      (the group's baseline -> baseline steerability; NaN when that cell is absent),
      ``steerability_gap`` (steerability - id_steerability), ``relative_steerability``
      (steerability / id_steerability; NaN when the reference is 0), and ``id_ood_correlation``
      (Pearson r across ``across`` values within the train x test cell, NaN with fewer than 3
      values or no variance; 1 on the reference cell).
    """
    by = as_tuple(by)
    if across not in by:
        raise MetricsError(f"`across` ({across!r}) must be one of the `by` columns {list(by)}")
    require_columns(table, [*by, train_col, test_col], "the generalisation table")
    settings = (train_col, test_col)
    if "slope" not in table.columns:
        table = table.assign(**{c: table[c].astype(object).where(table[c].notna(), baseline) for c in settings})
    pe = as_per_example(table, [*by, *settings])
    pe = pe.assign(**{c: pe[c].astype(object).where(pe[c].notna(), baseline) for c in settings})
    keys = [*by, *settings]
    cells = _finalise(
        _groupby(pe.assign(_anti=(pe["slope"] < 0).astype(np.float64)), keys).agg(
            n=("slope", "size"),
            steerability=("slope", "mean"),
            steerability_std=("slope", "std"),
            anti_steerable_fraction=("_anti", "mean"),
        ),
        keys,
    )
    is_ref = (cells[train_col] == baseline) & (cells[test_col] == baseline)
    if not is_ref.any():
        seen = sorted({str(v) for v in pd.concat([cells[train_col], cells[test_col]]).unique()})
        raise MetricsError(
            f"no cell has {train_col} == {test_col} == {baseline!r} (the in-distribution "
            f"reference); settings present: {seen}. Pass baseline= one of them"
        )
    cells.insert(len(keys), "in_distribution", (cells[train_col] == cells[test_col]).to_numpy())
    ref = cells.loc[is_ref, [*by, "steerability"]].rename(columns={"steerability": "id_steerability"})
    out = cells.merge(ref, on=list(by), how="left")
    out["steerability_gap"] = out["steerability"] - out["id_steerability"]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = out["steerability"].to_numpy(np.float64) / out["id_steerability"].to_numpy(np.float64)
    out["relative_steerability"] = np.where(out["id_steerability"].to_numpy() == 0, np.nan, rel)

    cell_keys = [c for c in by if c != across] + list(settings)
    corr = {}
    for key, grp in out.groupby(cell_keys, sort=False, dropna=False):
        ok = grp[["id_steerability", "steerability"]].dropna()
        r = np.nan
        if len(ok) >= 3 and ok["id_steerability"].std() > 0 and ok["steerability"].std() > 0:
            r = float(np.corrcoef(ok["id_steerability"], ok["steerability"])[0, 1])
        corr[key if isinstance(key, tuple) else (key,)] = r
    out["id_ood_correlation"] = [corr[tuple(k)] for k in out[cell_keys].itertuples(index=False, name=None)]
    return out.sort_values(keys, kind="stable").reset_index(drop=True)
