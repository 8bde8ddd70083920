"""Generalisation and reliability analyses of Tan et al. 2024 beyond per-dataset steerability.

The tables come from :func:`steerjax.sweeps.sweep` (one row per example x layer x multiplier) with
``train_setting`` (the prompt setting the steering vector was trained in) and ``test_setting`` (the
prompt setting of the test prompts) added, or from :func:`~steerjax.studies.reliability.per_example_steerability`
run on such a table. A ``model`` column, when present, keeps the models apart.

Settings vocabulary (the paper's, repepo ``persona_generalization``): the persona prompt is either
absent (``"baseline"``), the system prompt (``SYS_``) or a prefix of the user turn (``PT_``), and says
the persona holds (``positive``) or not (``negative``): :data:`PERSONA_SETTINGS`, the same tuple as
:data:`steerjax.data.formats.SETTINGS`. Vectors are trained in each of the five settings,
plus ``"mean"``, the mean of the five (a train setting only). The paper's distribution shifts
(:data:`SHIFTS`) are named ``VECTOR -> TEST`` with ``USER`` for ``PT``.

Quantities:

- :func:`id_ood_shifts`, :func:`shift_correlations`: in-distribution (``BASE -> BASE``) vs shifted
  steerability (mean per-example slope) and its variance, per dataset, and their correlation across
  datasets (paper, Sec. 5: the ID vs OOD scatter and its variance companion);
- :func:`relative_steerability`: steerability of the dataset-mean propensity curve of a vector in a
  test setting, relative to the vector trained in that test setting, against how far the unsteered
  propensities of the two settings are apart (paper, Sec. 5);
- :func:`mean_variance`: mean against variance of per-example steerability;
- :func:`compare_models`: the same datasets' steerability under two or more models;
- :func:`bootstrap_ci`: percentile bootstrap intervals over examples for dataset steerability and the
  anti-steerable fraction;
- :func:`generalisation_matrix`: the train x test matrix of :func:`~steerjax.studies.reliability.generalisation`.

Correlations are computed with numpy: Pearson's r, and Spearman's rho as Pearson's r of average
ranks; both are NaN with fewer than 3 finite pairs or when either side is constant.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from steerjax.data.formats import SETTINGS as PERSONA_SETTINGS
from steerjax.errors import MetricsError
from steerjax.studies.reliability.steerability import (
    as_per_example,
    as_tuple,
    check_finite,
    dataset_steerability,
    per_example_steerability,
    require_columns,
    with_propensity,
)

MEAN_SETTING = "mean"
TRAIN_SETTINGS = (*PERSONA_SETTINGS, MEAN_SETTING)
ID_SHIFT = "BASE -> BASE"
SHIFTS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "BASE -> BASE": ("baseline", "baseline"),
    "BASE -> USER_NEG": ("baseline", "PT_negative"),
    "BASE -> USER_POS": ("baseline", "PT_positive"),
    "SYS_POS -> USER_NEG": ("SYS_positive", "PT_negative"),
    "SYS_NEG -> USER_POS": ("SYS_negative", "PT_positive"),
})
"""The paper's distribution shifts, in its order: label -> (train setting, test setting)."""

CI_STATS = ("steerability", "anti_steerable_fraction")


def correlation(x, y) -> tuple[int, float, float]:
    """``(n, pearson, spearman)`` of the finite pairs of ``x`` and ``y``.

    Spearman's rho is Pearson's r of the average ranks (ties share their mean rank). Both are NaN
    with fewer than 3 finite pairs or when either side is constant.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise MetricsError(f"correlation needs two sequences of one length, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(ok.sum())
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return n, float("nan"), float("nan")
    rx = pd.Series(x).rank(method="average").to_numpy()
    ry = pd.Series(y).rank(method="average").to_numpy()
    pearson = float(np.clip(np.corrcoef(x, y)[0, 1], -1.0, 1.0))
    spearman = float(np.clip(np.corrcoef(rx, ry)[0, 1], -1.0, 1.0))
    return n, pearson, spearman


def _fill_settings(df: pd.DataFrame, cols: Sequence[str], baseline: Any) -> pd.DataFrame:
    cols = [c for c in cols if c in df.columns]
    if not cols:
        return df
    return df.assign(**{c: df[c].astype(object).where(df[c].notna(), baseline) for c in cols})


def _model_keys(df: pd.DataFrame, model_col: str | None, by: Sequence[str]) -> list[str]:
    if model_col and model_col in df.columns and model_col not in by:
        return [model_col, *by]
    return list(by)


def _per_example(obj: pd.DataFrame, keys: Sequence[str], settings: Sequence[str], baseline: Any) -> pd.DataFrame:
    require_columns(obj, [*keys, *settings], "the table")
    pe = as_per_example(_fill_settings(obj, settings, baseline), [*keys, *settings])
    return _fill_settings(pe, settings, baseline)


def _cell_stats(pe: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    return pe.groupby(list(keys), sort=True, dropna=False)["slope"].agg(
        n="size", steerability="mean", variance=lambda s: s.var(ddof=1)
    ).reset_index()


def _shift_label(shifts: Mapping[str, tuple[str, str]], train: Any, test: Any) -> str | None:
    for label, cell in shifts.items():
        if tuple(cell) == (train, test):
            return label
    return None


def id_ood_shifts(
    per_example_or_table: pd.DataFrame,
    *,
    shifts: Mapping[str, tuple[str, str]] = SHIFTS,
    id_shift: str = ID_SHIFT,
    by: str | Sequence[str] = ("dataset",),
    train_col: str = "train_setting",
    test_col: str = "test_setting",
    model_col: str | None = "model",
    baseline: Any = "baseline",
) -> pd.DataFrame:
    """In-distribution vs shifted steerability and its variance, per dataset and shift.

    Tan et al. 2024 (Sec. 5) plot, for each distribution shift, every dataset's
    steerability after the shift (the vector trained in one setting, tested in another) against
    its in-distribution steerability (``BASE -> BASE``: baseline vector on baseline prompts), and
    likewise the variance of per-example steerability. Steerability is the mean per-example slope;
    the variance is over examples with ddof 1 (pandas ``.var()``, as in the paper).

    Args:
      per_example_or_table: a sweep table with the setting columns (slopes are fitted per
        ``model``, ``by``, train and test setting and example) or a
        :func:`~steerjax.studies.reliability.per_example_steerability` table that has them.
      shifts: label -> (train setting, test setting); default :data:`SHIFTS`.
      id_shift: the label in ``shifts`` of the in-distribution reference.
      by: grouping columns (add ``layer`` when the table has several layers).
      train_col, test_col: the setting columns; missing values (None/NaN) read as ``baseline``.
      model_col: column naming models; used as an extra grouping column when present.
      baseline: the setting a missing value stands for.

    Returns:
      One row per (``model``,) ``by`` group x shift other than ``id_shift`` (shifts in the order of
      ``shifts``, then groups sorted), with ``shift``, ``train_col``, ``test_col``, ``n_id``,
      ``id_steerability``, ``id_variance``, ``n_ood``, ``ood_steerability``, ``ood_variance`` and
      ``steerability_gap`` (OOD minus ID). A group that lacks one of the two cells has NaN there
      (and n 0).

    Raises:
      MetricsError: missing columns, ``id_shift`` not in ``shifts``, or a shift whose cell is in
        no group of the table (a misspelt setting: the message lists the settings present).
    """
    by = as_tuple(by)
    shifts = {str(k): tuple(v) for k, v in shifts.items()}
    if id_shift not in shifts:
        raise MetricsError(f"id_shift {id_shift!r} is not a label of shifts {list(shifts)}; add it or pass another")
    settings = (train_col, test_col)
    require_columns(per_example_or_table, [*by, *settings], "the shift table")
    keys = _model_keys(per_example_or_table, model_col, by)
    pe = _per_example(per_example_or_table, keys, settings, baseline)
    cells = _cell_stats(pe, [*keys, *settings])
    present = set(zip(cells[train_col], cells[test_col]))
    absent = [label for label, cell in shifts.items() if cell not in present]
    if absent:
        raise MetricsError(
            f"shift(s) {absent} ({[shifts[a] for a in absent]}) have no rows; (train, test) settings present: "
            f"{sorted(present, key=str)}. Pass shifts= a mapping of the shifts that were run"
        )
    groups = cells[keys].drop_duplicates().sort_values(keys, kind="stable").reset_index(drop=True)
    id_train, id_test = shifts[id_shift]

    def cell(train, test, prefix):
        sub = cells[(cells[train_col] == train) & (cells[test_col] == test)]
        sub = sub[[*keys, "n", "steerability", "variance"]].rename(columns={
            "n": f"n_{prefix}", "steerability": f"{prefix}_steerability", "variance": f"{prefix}_variance"})
        return groups.merge(sub, on=keys, how="left")

    ref = cell(id_train, id_test, "id")
    parts = []
    for label, (train, test) in shifts.items():
        if label == id_shift:
            continue
        part = ref.merge(cell(train, test, "ood"), on=keys, how="left")
        part.insert(len(keys), "shift", label)
        part.insert(len(keys) + 1, train_col, train)
        part.insert(len(keys) + 2, test_col, test)
        parts.append(part)
    if not parts:
        raise MetricsError(f"shifts has no shift other than the reference {id_shift!r}")
    out = pd.concat(parts, ignore_index=True)
    for c in ("n_id", "n_ood"):
        out[c] = out[c].fillna(0).astype(np.int64)
    out["steerability_gap"] = out["ood_steerability"] - out["id_steerability"]
    return out


def shift_correlations(
    per_example_or_table: pd.DataFrame,
    *,
    across: str = "dataset",
    by: str | Sequence[str] = ("dataset",),
    model_col: str | None = "model",
    train_col: str = "train_setting",
    test_col: str = "test_setting",
    **shift_kwargs,
) -> pd.DataFrame:
    """Correlation across datasets of in-distribution vs shifted steerability, per shift (and model).

    Args:
      per_example_or_table: :func:`id_ood_shifts` output, or anything it accepts (then passed to it
        with ``by``, ``model_col``, the setting columns and ``shift_kwargs``).
      across: the column whose values (datasets) are the points of each correlation.
      by: the grouping columns of the shift table; those other than ``across`` stay apart.
      model_col, train_col, test_col: as in :func:`id_ood_shifts`.
      **shift_kwargs: ``shifts``, ``id_shift``, ``baseline`` for :func:`id_ood_shifts`.

    Returns:
      One row per (``model``,) other ``by`` columns x shift, in shift order, with ``train_col``,
      ``test_col``, ``n_datasets`` (finite pairs), ``pearson`` and ``spearman`` (ID vs OOD
      steerability) and ``variance_pearson``, ``variance_spearman`` (ID vs OOD variance).
    """
    by = as_tuple(by)
    if across not in by:
        raise MetricsError(f"`across` ({across!r}) must be one of the `by` columns {list(by)}")
    t = per_example_or_table
    if not (isinstance(t, pd.DataFrame) and {"shift", "id_steerability", "ood_steerability"} <= set(t.columns)):
        t = id_ood_shifts(t, by=by, model_col=model_col, train_col=train_col, test_col=test_col, **shift_kwargs)
    require_columns(t, ["shift", train_col, test_col, "id_steerability", "ood_steerability", "id_variance",
                        "ood_variance"], "the shift table")
    groups = [*_model_keys(t, model_col, [c for c in by if c != across and c in t.columns]), "shift"]
    rows = []
    for key, grp in t.groupby(groups, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        n, r, rho = correlation(grp["id_steerability"], grp["ood_steerability"])
        _, vr, vrho = correlation(grp["id_variance"], grp["ood_variance"])
        rows.append({**dict(zip(groups, key)), train_col: grp[train_col].iloc[0], test_col: grp[test_col].iloc[0],
                     "n_datasets": n, "pearson": r, "spearman": rho, "variance_pearson": vr,
                     "variance_spearman": vrho})
    return pd.DataFrame(rows, columns=[*groups, train_col, test_col, "n_datasets", "pearson", "spearman",
                                       "variance_pearson", "variance_spearman"])


def _row_key(table: pd.DataFrame, row_key, keys: Sequence[str]) -> list[str]:
    if row_key is None:
        row_key = ("dataset", "index") if "index" in table.columns else ("example",)
    row_key = [c for c in as_tuple(row_key) if c not in keys]
    require_columns(table, row_key, "the sweep table (row_key)")
    return row_key


def relative_steerability(
    table: pd.DataFrame,
    *,
    by: str | Sequence[str] = ("dataset",),
    row_key: str | Sequence[str] | None = None,
    train_col: str = "train_setting",
    test_col: str = "test_setting",
    model_col: str | None = "model",
    baseline: Any = "baseline",
    exclude: str | Sequence[str] = (MEAN_SETTING,),
    min_self_steerability: float = 0.25,
) -> pd.DataFrame:
    """Relative steerability against the gap in unsteered propensity between settings.

    As in repepo's ``plot_persona_relative_steerability_trends.py`` (Tan et al. 2024, Sec. 5): for
    each group (dataset), test setting ``s`` and vector ``v`` (trained in setting ``v``), the
    steerability is the least-squares slope of the DATASET-MEAN propensity against the multiplier
    (multiplier 0, the unsteered run, included), and

    - ``self_steerability`` is that slope for the vector trained in ``s``, evaluated on ``s``;
    - ``relative_steerability = steerability / |self_steerability|``;
    - ``unsteered_propensity_gap = mean_i |P0_i(s) - P0_i(v)|``, where ``P0_i(x)`` is example i's
      propensity at multiplier 0 with test setting ``x`` (averaged over the vectors, which all add
      zero there), paired across settings by ``row_key``.

    Rows whose ``self_steerability`` is not above ``min_self_steerability`` are flagged
    ``kept = False`` (the reference drops them); :func:`relative_steerability_correlation` counts
    and skips them.

    Args:
      table: the sweep table of every train x test setting, with ``example``, ``multiplier``,
        ``propensity`` (or the two log-probabilities), the setting columns, the ``by`` columns and
        the ``row_key`` columns.
      by: grouping columns (add ``layer`` when there are several).
      row_key: columns naming the same underlying test row in every setting. Default
        ``("dataset", "index")`` when the table has ``index`` (the row in the data file), else
        ``"example"``. Columns already in ``by`` are implied.
      train_col, test_col: the setting columns; missing values read as ``baseline``.
      model_col: column naming models; an extra grouping column when present.
      baseline: the setting a missing value stands for.
      exclude: train settings left out (default the ``"mean"`` vector, which has no test setting).
      min_self_steerability: rows need ``self_steerability`` above this to be kept (0.25 as in the
        reference, in its propensity units: summed logit differences there, log-probability
        differences here).

    Returns:
      One row per (``model``,) ``by`` x train x test setting (sorted), with ``steerability``,
      ``self_steerability`` (NaN when the test setting has no vector of its own),
      ``relative_steerability``, ``relative_steerability_capped`` (steerability / self_steerability
      clipped to [-1, 1], the reference's capped variant), ``unsteered_propensity_gap``,
      ``unsteered_gap_of_means`` (|mean P0(s) - mean P0(v)|, the reference's older x-axis),
      ``unsteered_propensity_test`` and ``unsteered_propensity_train`` (mean P0 on ``s`` and on
      ``v``'s setting), ``n_paired`` (examples paired; 0 and NaN gaps when ``v``'s setting was never
      a test setting) and ``kept``.

    Raises:
      MetricsError: missing columns, NaN propensities, a (group, test setting) with no rows at
        multiplier 0, or a curve with fewer than two multipliers.
    """
    by = as_tuple(by)
    settings = [train_col, test_col]
    if not isinstance(table, pd.DataFrame):
        raise MetricsError(f"the sweep table must be a pandas DataFrame, got {type(table).__name__}")
    t = with_propensity(table)
    require_columns(t, [*by, *settings, "example", "multiplier", "propensity"], "the sweep table")
    if not len(t):
        raise MetricsError("the sweep table is empty")
    keys = _model_keys(t, model_col, by)
    rk = _row_key(t, row_key, keys)
    check_finite(t, "multiplier")
    check_finite(t, "propensity")
    t = _fill_settings(t, settings, baseline)
    t = t[~t[train_col].isin(as_tuple(exclude))]
    if not len(t):
        raise MetricsError(f"no rows are left after excluding the train settings {list(as_tuple(exclude))}")

    zero = t[t["multiplier"].astype(np.float64) == 0.0]
    needed = t[[*keys, test_col]].drop_duplicates()
    have = zero[[*keys, test_col]].drop_duplicates().assign(_has=True)
    missing = needed.merge(have, on=[*keys, test_col], how="left")
    missing = missing[missing["_has"].isna()].drop(columns="_has")
    if len(missing):
        raise MetricsError(
            f"{len(missing)} (group, {test_col}) pair(s) have no rows at multiplier 0 (e.g. "
            f"{missing.head(3).to_dict('records')}); relative steerability needs the unsteered propensity: "
            "include 0 in the swept multipliers"
        )

    cell = [*keys, *settings]
    curve = t.groupby([*cell, "multiplier"], sort=True, dropna=False)["propensity"].mean().reset_index()
    fit = per_example_steerability(curve.assign(example=0), by=cell)[[*cell, "slope"]]
    fit = fit.rename(columns={"slope": "steerability"})
    own = fit[fit[train_col] == fit[test_col]][[*keys, test_col, "steerability"]]
    out = fit.merge(own.rename(columns={"steerability": "self_steerability"}), on=[*keys, test_col], how="left")
    s = out["steerability"].to_numpy(np.float64)
    own_s = out["self_steerability"].to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["relative_steerability"] = np.where(own_s == 0, np.nan, s / np.abs(own_s))
        out["relative_steerability_capped"] = np.clip(np.where(own_s == 0, np.nan, s / own_s), -1.0, 1.0)

    p0 = zero.groupby([*keys, test_col, *rk], sort=True, dropna=False)["propensity"].mean().reset_index()
    p0_test = p0.rename(columns={"propensity": "_p_test"})
    p0_train = p0.rename(columns={test_col: train_col, "propensity": "_p_train"})
    pairs = out[cell].drop_duplicates()
    paired = (pairs.merge(p0_test, on=[*keys, test_col], how="inner")
              .merge(p0_train, on=[*keys, train_col, *rk], how="inner"))
    paired["_gap"] = (paired["_p_test"] - paired["_p_train"]).abs()
    gaps = paired.groupby(cell, sort=False, dropna=False).agg(
        unsteered_propensity_gap=("_gap", "mean"), n_paired=("_gap", "size")).reset_index()
    means = p0.groupby([*keys, test_col], sort=False, dropna=False)["propensity"].mean().reset_index()
    out = out.merge(gaps, on=cell, how="left")
    out = out.merge(means.rename(columns={"propensity": "unsteered_propensity_test"}), on=[*keys, test_col],
                    how="left")
    out = out.merge(means.rename(columns={test_col: train_col, "propensity": "unsteered_propensity_train"}),
                    on=[*keys, train_col], how="left")
    out["unsteered_gap_of_means"] = (out["unsteered_propensity_test"] - out["unsteered_propensity_train"]).abs()
    out["n_paired"] = out["n_paired"].fillna(0).astype(np.int64)
    out["kept"] = (out["self_steerability"] > min_self_steerability).to_numpy(bool)
    cols = [*cell, "steerability", "self_steerability", "relative_steerability", "relative_steerability_capped",
            "unsteered_propensity_gap", "unsteered_gap_of_means", "unsteered_propensity_test",
            "unsteered_propensity_train", "n_paired", "kept"]
    return out[cols].sort_values(cell, kind="stable").reset_index(drop=True)


def relative_steerability_correlation(
    rel: pd.DataFrame,
    *,
    by: str | Sequence[str] | None = None,
    model_col: str | None = "model",
    x: str = "unsteered_propensity_gap",
    y: str = "relative_steerability",
) -> pd.DataFrame:
    """Spearman (and Pearson) correlation of relative steerability with the unsteered propensity gap,
    over the kept rows of :func:`relative_steerability` (all datasets and settings pooled, as in the
    reference).

    Args:
      rel: :func:`relative_steerability` output.
      by: columns to keep apart (default: ``model_col`` when present, else everything pooled).
      model_col: column naming models.
      x, y: the columns to correlate.

    Returns:
      One row per group with ``n`` (kept rows with finite x and y), ``n_filtered`` (rows dropped by
      the self-steerability filter), ``spearman`` and ``pearson``.
    """
    require_columns(rel, [x, y, "kept"], "the relative-steerability table")
    groups = list(as_tuple(by)) if by is not None else _model_keys(rel, model_col, [])
    require_columns(rel, groups, "the relative-steerability table")
    rows = []
    grouped = rel.groupby(groups, sort=True, dropna=False) if groups else [((), rel)]
    for key, grp in grouped:
        key = key if isinstance(key, tuple) else (key,)
        kept = grp[grp["kept"].astype(bool)]
        n, r, rho = correlation(kept[x], kept[y])
        rows.append({**dict(zip(groups, key)), "n": n, "n_filtered": int((~grp["kept"].astype(bool)).sum()),
                     "spearman": rho, "pearson": r})
    return pd.DataFrame(rows, columns=[*groups, "n", "n_filtered", "spearman", "pearson"])


def mean_variance(
    per_example: pd.DataFrame,
    *,
    by: str | Sequence[str] = ("dataset",),
    across: str = "dataset",
    train_col: str = "train_setting",
    test_col: str = "test_setting",
    model_col: str | None = "model",
    baseline: Any = "baseline",
    shifts: Mapping[str, tuple[str, str]] = SHIFTS,
) -> pd.DataFrame:
    """Mean against variance of per-example steerability, per dataset and setting (Tan et al. 2024).

    Args:
      per_example: a :func:`~steerjax.studies.reliability.per_example_steerability` table or a sweep table.
        The setting columns and ``model_col`` are grouping columns when present (missing settings
        read as ``baseline``).
      by: grouping columns; ``across`` must be one of them.
      across: the column whose values (datasets) are the points of each correlation.
      train_col, test_col, model_col, baseline: as in :func:`id_ood_shifts`.
      shifts: labels for the ``shift`` column.

    Returns:
      One row per (``model``,) ``by`` (x train x test setting) group, sorted, with ``shift`` (the
      label of the cell in ``shifts``, or None; only when both setting columns exist), ``n``,
      ``steerability`` (mean slope), ``variance`` (ddof 1; NaN for one example), ``n_datasets``,
      ``mean_variance_pearson`` and ``mean_variance_spearman`` (steerability vs variance across the
      ``across`` values sharing the other keys).
    """
    by = as_tuple(by)
    if across not in by:
        raise MetricsError(f"`across` ({across!r}) must be one of the `by` columns {list(by)}")
    require_columns(per_example, by, "the per-example table")
    settings = [c for c in (train_col, test_col) if c in per_example.columns]
    keys = _model_keys(per_example, model_col, by)
    pe = _per_example(per_example, keys, settings, baseline)
    out = _cell_stats(pe, [*keys, *settings])
    if len(settings) == 2:
        labels = [_shift_label(shifts, a, b) for a, b in zip(out[train_col], out[test_col])]
        out.insert(len(keys) + 2, "shift", labels)
    others = [c for c in [*keys, *settings] if c != across]
    grouped = out.groupby(others, sort=False, dropna=False) if others else [((), out)]
    stats = {}
    for key, grp in grouped:
        stats[key if isinstance(key, tuple) else (key,)] = correlation(grp["steerability"], grp["variance"])
    idx = list(out[others].itertuples(index=False, name=None)) if others else [()] * len(out)
    out["n_datasets"] = [stats[k][0] for k in idx]
    out["mean_variance_pearson"] = [stats[k][1] for k in idx]
    out["mean_variance_spearman"] = [stats[k][2] for k in idx]
    return out


class ModelComparison(NamedTuple):
    """:func:`compare_models` output: ``table`` (wide, one row per dataset) and ``correlations``
    (one row per model pair x statistic)."""

    table: pd.DataFrame
    correlations: pd.DataFrame


def compare_models(
    per_example: pd.DataFrame,
    *,
    model_col: str = "model",
    by: str | Sequence[str] = ("dataset",),
    across: str = "dataset",
    shift: str | tuple[str, str] | None = None,
    train_col: str = "train_setting",
    test_col: str = "test_setting",
    baseline: Any = "baseline",
) -> ModelComparison:
    """Steerability of the same datasets under two or more models (Tan et al. 2024, model comparison).

    Args:
      per_example: per-example table (or sweep table) with ``model_col`` and ``by``.
      model_col: column naming models.
      by: grouping columns; ``across`` must be one of them.
      across: the column whose values (datasets) are paired between models.
      shift: keep only one (train, test) cell: a label of :data:`SHIFTS` (e.g. ``"BASE -> BASE"``
        for in-distribution, ``"SYS_POS -> USER_NEG"`` for the paper's OOD comparison) or a
        (train, test) tuple. None: the setting columns, when present, stay grouping columns.
      train_col, test_col, baseline: the setting columns and what a missing setting means.

    Returns:
      :class:`ModelComparison` with ``table``: one row per ``by`` (x setting) group with
      ``steerability[<model>]``, ``variance[<model>]`` (ddof 1) and ``n[<model>]`` per model (NaN
      where a model lacks the dataset); and ``correlations``: one row per setting cell x model pair
      (``model_a``, ``model_b``, in order of first appearance) x ``statistic`` (``steerability``,
      ``variance``), with ``n_datasets`` (datasets where both models have a finite value),
      ``pearson``, ``spearman``.

    Raises:
      MetricsError: missing columns, fewer than two models, a ``shift`` with no rows, or no
        dataset shared by any two models.
    """
    by = as_tuple(by)
    if across not in by:
        raise MetricsError(f"`across` ({across!r}) must be one of the `by` columns {list(by)}")
    require_columns(per_example, [model_col, *by], "the per-example table")
    settings = [c for c in (train_col, test_col) if c in per_example.columns]
    keys = [model_col, *[c for c in by if c != model_col]]
    pe = _per_example(per_example, keys, settings, baseline)
    if shift is not None:
        cell = SHIFTS[shift] if isinstance(shift, str) and shift in SHIFTS else shift
        if not (isinstance(cell, tuple) and len(cell) == 2):
            raise MetricsError(
                f"shift must be a label of SHIFTS {list(SHIFTS)} or a (train, test) tuple, got {shift!r}"
            )
        require_columns(pe, [train_col, test_col], "the per-example table (shift=)")
        pe = pe[(pe[train_col] == cell[0]) & (pe[test_col] == cell[1])]
        if not len(pe):
            raise MetricsError(f"no rows have ({train_col}, {test_col}) == {cell}")
        pe = pe.drop(columns=[train_col, test_col])
        settings = []
    models = list(pd.unique(pe[model_col]))
    if len(models) < 2:
        raise MetricsError(
            f"compare_models needs at least two models in {model_col!r}, got {models}: concatenate the "
            "tables of several models (each with its own model value)"
        )
    stats = _cell_stats(pe, [*keys, *settings])
    index = [*[c for c in by if c != model_col], *settings]
    wide = stats.set_index([*index, model_col])[["steerability", "variance", "n"]].unstack(model_col).sort_index()
    table = pd.DataFrame(index=wide.index)
    for stat in ("steerability", "variance", "n"):
        for m in models:
            table[f"{stat}[{m}]"] = wide[(stat, m)] if (stat, m) in wide.columns else np.nan
    table = table.reset_index()
    cells = [c for c in index if c != across]
    rows = []
    grouped = table.groupby(cells, sort=True, dropna=False) if cells else [((), table)]
    shared_any = False
    for key, grp in grouped:
        key = key if isinstance(key, tuple) else (key,)
        for a, b in itertools.combinations(models, 2):
            for stat in ("steerability", "variance"):
                n, r, rho = correlation(grp[f"{stat}[{a}]"], grp[f"{stat}[{b}]"])
                shared_any |= bool((grp[f"n[{a}]"].notna() & grp[f"n[{b}]"].notna()).any())
                rows.append({**dict(zip(cells, key)), "model_a": a, "model_b": b, "statistic": stat,
                             "n_datasets": n, "pearson": r, "spearman": rho})
    if not shared_any:
        raise MetricsError(
            f"no {across} is shared by two models ({models}); compare models on the same datasets"
        )
    corr = pd.DataFrame(rows, columns=[*cells, "model_a", "model_b", "statistic", "n_datasets", "pearson",
                                       "spearman"])
    return ModelComparison(table, corr)


def bootstrap_ci(
    per_example: pd.DataFrame,
    *,
    stat: str | Sequence[str] = CI_STATS,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    by: str | Sequence[str] = ("dataset", "layer"),
) -> pd.DataFrame:
    """Percentile bootstrap intervals over examples for dataset steerability and anti-steerable fraction.

    In each ``by`` group the n examples are resampled with replacement ``n_boot`` times (one
    ``np.random.default_rng(seed)`` draws every group's ``n_boot x n`` indices, groups in sorted
    order, so a table and seed give the same intervals every time); each resample gives the mean
    slope (``steerability``) and the share of slopes below 0 (``anti_steerable_fraction``, as in
    :func:`~steerjax.studies.reliability.dataset_steerability`: a zero slope is not anti-steerable). The
    interval is the ((1 - level) / 2, (1 + level) / 2) quantile pair of the resampled values. The
    same resamples serve both statistics, so the intervals do not depend on which are asked for.

    Args:
      per_example: a per-example table (or a sweep table) with the ``by`` columns.
      stat: ``"steerability"``, ``"anti_steerable_fraction"`` or both (default).
      n_boot: number of resamples.
      seed: seed of the generator.
      level: confidence level in (0, 1).
      by: grouping columns.

    Returns:
      :func:`~steerjax.studies.reliability.dataset_steerability` of the table with ``<stat>_lo`` and
      ``<stat>_hi`` per requested statistic and ``ci_level``.

    Raises:
      MetricsError: an unknown ``stat``, ``n_boot`` < 1, ``level`` outside (0, 1), or a table
        ``dataset_steerability`` rejects.
    """
    stats = as_tuple(stat)
    unknown = [s for s in stats if s not in CI_STATS]
    if unknown or not stats:
        raise MetricsError(f"stat must be one or more of {list(CI_STATS)}, got {list(stats)}")
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 1):
        raise MetricsError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < float(level) < 1.0:
        raise MetricsError(f"level must be in (0, 1), e.g. 0.95, got {level!r}")
    by = as_tuple(by)
    pe = as_per_example(per_example, by)
    summary = dataset_steerability(pe, by=by)
    slopes = check_finite(pe, "slope")
    gid = (pe.groupby(list(by), sort=True, dropna=False).ngroup().to_numpy(np.int64) if by
           else np.zeros(len(pe), np.int64))
    if len(summary) != (gid.max() + 1 if len(gid) else 0):
        raise MetricsError("bootstrap_ci: the groups of the table and of its summary differ")
    order = np.argsort(gid, kind="stable")
    bounds = np.cumsum(np.bincount(gid, minlength=len(summary)))
    rng = np.random.default_rng(seed)
    q = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
    lo = {s: np.empty(len(summary)) for s in CI_STATS}
    hi = {s: np.empty(len(summary)) for s in CI_STATS}
    start = 0
    for g, end in enumerate(bounds):
        y = slopes[order[start:end]]
        start = end
        draws = y[rng.integers(0, len(y), size=(n_boot, len(y)))]
        values = {"steerability": draws.mean(axis=1), "anti_steerable_fraction": (draws < 0).mean(axis=1)}
        for s in CI_STATS:
            lo[s][g], hi[s][g] = np.quantile(values[s], q)
    for s in stats:
        summary[f"{s}_lo"] = lo[s]
        summary[f"{s}_hi"] = hi[s]
    summary["ci_level"] = float(level)
    return summary


def generalisation_matrix(
    gen: pd.DataFrame,
    *,
    value: str = "steerability",
    train_col: str = "train_setting",
    test_col: str = "test_setting",
    agg: str = "mean",
) -> pd.DataFrame:
    """The train x test matrix of one column of :func:`~steerjax.studies.reliability.generalisation` output,
    aggregated over the other grouping columns (datasets) with ``agg``.

    Rows are train settings, columns test settings; the paper's settings come first in
    :data:`TRAIN_SETTINGS` order, any others after them in sorted order.
    """
    require_columns(gen, [train_col, test_col, value], "the generalisation table")
    m = gen.pivot_table(index=train_col, columns=test_col, values=value, aggfunc=agg, dropna=False)

    def ordered(names):
        known = [s for s in TRAIN_SETTINGS if s in set(names)]
        return known + sorted((s for s in names if s not in TRAIN_SETTINGS), key=str)

    return m.reindex(index=ordered(list(m.index)), columns=ordered(list(m.columns)))
