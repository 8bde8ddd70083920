"""Steerability indices, curves and asymmetry (Miehling et al. 2024, Sec. 4).

For a persona dimension, base profile ``p0``, maximally steered profiles ``p~+``, ``p~-`` and the
profile ``p+_k`` after steering toward + with a budget of ``k`` statements,

    gamma+_k = (W(p0, p~+) - W(p+_k, p~+)) / W(p~+, p~-)

(``gamma-_k`` likewise with ``p~-`` and ``p-_k``): the share of the distance between the two
extremes that steering closed. It is 0 at ``k = 0``, at most ``W(p0, p~+) / W(p~+, p~-) <= 1``, and
negative when steering moved the profile away from its target.

Tables are tidy pandas DataFrames:

- profiles: one row per profile, columns ``dimension``, ``direction`` (``"positive"``,
  ``"negative"`` or ``"base"``), ``budget`` (``k``; 0 for base), ``trial``, ``alpha``, ``beta``.
  A dimension's base profile is either one row (used for every trial) or one row per trial
  (matched on ``trial``).
- extremes: one row per dimension and direction (``"positive"``/``"negative"``) with ``alpha``,
  ``beta`` of ``p~+``/``p~-``; :func:`extremes_table` builds it from each dimension's statement
  confidences.
- indices (:func:`steerability_indices`): ``dimension``, ``direction``, ``budget``, ``trial``,
  ``index`` and the three distances behind it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from steerjax.errors import ProfileError
from steerjax.profiles.beta import BetaProfile, normalise_direction
from steerjax.profiles.distance import wasserstein, wasserstein_many

PROFILE_COLUMNS = ("dimension", "direction", "budget", "trial", "alpha", "beta")
EXTREME_COLUMNS = ("dimension", "direction", "alpha", "beta")
INDEX_COLUMNS = ("dimension", "direction", "budget", "trial", "index")


def require_columns(df: pd.DataFrame, columns, what: str) -> None:
    """Raise :class:`ProfileError` naming ``what`` unless ``df`` is a non-empty DataFrame with ``columns``."""
    if not isinstance(df, pd.DataFrame):
        raise ProfileError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ProfileError(f"{what} is missing column(s) {missing}; it has {list(df.columns)}")
    if df.empty:
        raise ProfileError(f"{what} is empty")


def steerability_index(base: BetaProfile, steered: BetaProfile, extreme_pos: BetaProfile,
                       extreme_neg: BetaProfile, direction: str, **wkw) -> float:
    """Steerability index gamma+_k or gamma-_k of one steered profile (paper, Sec. 4).

    Args:
      base: unsteered profile p0.
      steered: profile after steering with budget k toward ``direction``.
      extreme_pos, extreme_neg: maximally steered profiles p~+ and p~-.
      direction: ``"+"``/``"positive"`` or ``"-"``/``"negative"``.
      **wkw: passed to :func:`~steerjax.profiles.wasserstein` (``order``, ``reference_compat``).

    Returns:
      ``(W(p0, target) - W(steered, target)) / W(p~+, p~-)`` with ``target`` the extreme of
      ``direction``.

    Raises:
      ProfileError: if the extremes coincide (zero denominator) or on a bad direction.
    """
    target = extreme_pos if normalise_direction(direction) == "positive" else extreme_neg
    span = wasserstein(extreme_pos, extreme_neg, **wkw)
    if not span > 0:
        raise ProfileError("the extremes p~+ and p~- coincide (no informative statements): the index is undefined")
    return (wasserstein(base, target, **wkw) - wasserstein(steered, target, **wkw)) / span


def extremes_table(confidences: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Extremes p~+ and p~- of each dimension from its profiling statements' label confidences.

    Args:
      confidences: dimension name -> 1-D array of confidences in [0.5, 1].

    Returns:
      DataFrame with columns ``dimension``, ``direction``, ``alpha``, ``beta`` (two rows per
      dimension).
    """
    rows = []
    for dim, conf in confidences.items():
        for direction in ("positive", "negative"):
            p = BetaProfile.extreme(conf, direction)
            rows.append({"dimension": dim, "direction": direction, "alpha": p.alpha, "beta": p.beta})
    return pd.DataFrame(rows, columns=list(EXTREME_COLUMNS))


def _extremes_wide(extremes: pd.DataFrame) -> pd.DataFrame:
    require_columns(extremes, EXTREME_COLUMNS, "extremes")
    ex = extremes.assign(direction=[normalise_direction(d) for d in extremes["direction"]])
    if ex.duplicated(["dimension", "direction"]).any():
        raise ProfileError("extremes has more than one row per dimension and direction")
    wide = ex.pivot(index="dimension", columns="direction", values=["alpha", "beta"])
    if wide.isna().any().any() or wide.shape[1] != 4:
        raise ProfileError("extremes needs both a 'positive' and a 'negative' row for every dimension")
    return pd.DataFrame({
        "dimension": wide.index,
        "pos_alpha": wide[("alpha", "positive")].to_numpy(), "pos_beta": wide[("beta", "positive")].to_numpy(),
        "neg_alpha": wide[("alpha", "negative")].to_numpy(), "neg_beta": wide[("beta", "negative")].to_numpy(),
    })


def _attach_base(steered: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    base = base[["dimension", "trial", "alpha", "beta"]].rename(columns={"alpha": "base_alpha", "beta": "base_beta"})
    counts = base.groupby("dimension")["trial"].size()
    single = counts[counts == 1].index
    one = steered[steered["dimension"].isin(single)].merge(
        base[base["dimension"].isin(single)].drop(columns="trial"), on="dimension", how="left")
    if base[~base["dimension"].isin(single)].duplicated(["dimension", "trial"]).any():
        raise ProfileError("profiles has several base rows for the same dimension and trial")
    many = steered[~steered["dimension"].isin(single)].merge(
        base[~base["dimension"].isin(single)], on=["dimension", "trial"], how="left")
    out = pd.concat([one, many], ignore_index=True)
    missing = out["base_alpha"].isna()
    if missing.any():
        bad = out.loc[missing, ["dimension", "trial"]].drop_duplicates().head(5).to_dict("records")
        raise ProfileError(f"no base profile (direction 'base') for {bad}")
    return out


def steerability_indices(profiles: pd.DataFrame, extremes: pd.DataFrame, *, include_base: bool = True,
                         **wkw) -> pd.DataFrame:
    """Steerability index of every steered profile in a tidy profile table (paper, Sec. 4).

    Args:
      profiles: columns ``dimension``, ``direction``, ``budget``, ``trial``, ``alpha``, ``beta``
        (see the module docstring); direction ``"base"`` rows are the unsteered profiles.
      extremes: p~+ and p~- per dimension (:func:`extremes_table`).
      include_base: add a ``budget = 0`` row with index 0 per dimension, direction and trial, so
        curves start at the origin.
      **wkw: passed to :func:`~steerjax.profiles.wasserstein_many`.

    Returns:
      DataFrame with ``dimension``, ``direction``, ``budget``, ``trial``, ``index``,
      ``w_base_target`` (W(p0, target)), ``w_steered_target`` (W(p_k, target)) and
      ``w_extremes`` (W(p~+, p~-)), sorted by dimension, direction, budget, trial.

    Raises:
      ProfileError: on missing columns, unknown directions, missing base profiles or extremes,
        or coinciding extremes.
    """
    require_columns(profiles, PROFILE_COLUMNS, "profiles")
    dirs = profiles["direction"].astype(str)
    unknown = sorted(set(dirs) - {"positive", "negative", "base"})
    if unknown:
        raise ProfileError(f"profiles.direction must be 'positive', 'negative' or 'base'; got {unknown}")
    base = profiles[dirs == "base"]
    steered = profiles[dirs != "base"]
    if steered.empty:
        raise ProfileError("profiles has no steered ('positive'/'negative') rows")
    table = _attach_base(steered, base)
    ex = _extremes_wide(extremes)
    table = table.merge(ex, on="dimension", how="left")
    if table["pos_alpha"].isna().any():
        lacking = sorted(table.loc[table["pos_alpha"].isna(), "dimension"].unique())
        raise ProfileError(f"no extremes for dimension(s) {lacking}")
    pos = (table["direction"] == "positive").to_numpy()
    t_a = np.where(pos, table["pos_alpha"], table["neg_alpha"])
    t_b = np.where(pos, table["pos_beta"], table["neg_beta"])
    w_base = wasserstein_many(table["base_alpha"], table["base_beta"], t_a, t_b, **wkw)
    w_steer = wasserstein_many(table["alpha"], table["beta"], t_a, t_b, **wkw)
    span = wasserstein_many(table["pos_alpha"], table["pos_beta"], table["neg_alpha"], table["neg_beta"], **wkw)
    if np.any(span <= 0):
        bad = sorted(table.loc[span <= 0, "dimension"].unique())
        raise ProfileError(f"extremes p~+ and p~- coincide for {bad}: the index is undefined")
    out = pd.DataFrame({
        "dimension": table["dimension"].to_numpy(), "direction": table["direction"].to_numpy(),
        "budget": table["budget"].to_numpy(), "trial": table["trial"].to_numpy(),
        "index": (w_base - w_steer) / span,
        "w_base_target": w_base, "w_steered_target": w_steer, "w_extremes": span,
    })
    if include_base:
        zero = out.drop_duplicates(["dimension", "direction", "trial"]).assign(
            budget=0, index=0.0, w_steered_target=lambda d: d["w_base_target"])
        out = pd.concat([zero, out[out["budget"] != 0]], ignore_index=True)
    return out.sort_values(["dimension", "direction", "budget", "trial"], kind="stable").reset_index(drop=True)


def steerability_curves(indices: pd.DataFrame) -> pd.DataFrame:
    """Steerability curves: mean and standard deviation (ddof=1, NaN for one trial) of the index
    over trials, per dimension, direction and budget (paper, Fig. 3).

    Returns:
      DataFrame with ``dimension``, ``direction``, ``budget``, ``mean``, ``std``, ``n_trials``.
    """
    require_columns(indices, INDEX_COLUMNS, "indices")
    g = indices.groupby(["dimension", "direction", "budget"], sort=True)["index"]
    return g.agg(mean="mean", std="std", n_trials="count").reset_index()


def asymmetry(indices: pd.DataFrame, *, budget=None, tol: float = 0.0) -> pd.DataFrame:
    """Asymmetry of steering per dimension: ``gamma+ - gamma-`` (trial means) at the largest budget
    both directions reached (or at ``budget``).

    A positive asymmetry means the dimension resists negative steering, a negative one that it
    resists positive steering.

    Args:
      indices: :func:`steerability_indices` output (or any table with its columns).
      budget: the budget to compare at; default the largest one present in both directions, per
        dimension.
      tol: ``|asymmetry| <= tol`` is reported as ``"neither"``.

    Returns:
      DataFrame with ``dimension``, ``budget``, ``gamma_pos``, ``gamma_neg``, ``asymmetry``,
      ``resists`` (``"positive"``, ``"negative"`` or ``"neither"``), sorted by asymmetry.
    """
    curves = steerability_curves(indices)
    rows = []
    for dim, c in curves.groupby("dimension", sort=True):
        pos = c[c["direction"] == "positive"].set_index("budget")["mean"]
        neg = c[c["direction"] == "negative"].set_index("budget")["mean"]
        common = pos.index.intersection(neg.index)
        if budget is not None:
            if budget not in common:
                raise ProfileError(f"dimension {dim!r} has no budget {budget} in both directions")
            k = budget
        elif len(common):
            k = common.max()
        else:
            raise ProfileError(f"dimension {dim!r} is not steered in both directions at a common budget")
        d = float(pos[k] - neg[k])
        resists = "neither" if abs(d) <= tol else ("negative" if d > 0 else "positive")
        rows.append({"dimension": dim, "budget": k, "gamma_pos": float(pos[k]), "gamma_neg": float(neg[k]),
                     "asymmetry": d, "resists": resists})
    return pd.DataFrame(rows).sort_values("asymmetry", kind="stable").reset_index(drop=True)
