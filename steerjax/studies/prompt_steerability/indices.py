"""Steerability indices, curves and asymmetry (Miehling et al. 2024, Sec. 3.3-4).

For a persona dimension, base profile ``p0``, maximally steered profiles ``p~+``, ``p~-`` and the
profile ``p+_k`` after steering toward + with a budget of ``k`` statements,

    gamma+_k = (W(p0, p~+) - W(p+_k, p~+)) / W(p~+, p~-)

(``gamma-_k`` likewise with ``p~-`` and ``p-_k``): the share of the distance between the two
extremes that steering closed. It is 0 at ``k = 0``, at most ``W(p0, p~+) / W(p~+, p~-) <= 1``, and
negative when steering moved the profile away from its target. Both directions use the same
formula, so ``gamma-_k > 0`` means movement toward the negative extreme (the paper's Fig. 3 and
Table 1 draw and print it negated; :func:`steerjax.studies.prompt_steerability.plots.index_curves` draws it so).

Trials, as the reference code (IBM/prompt-steering) runs them: *benchmark trials* redraw the
profiling questions (and so the base profile and the extremes); within each, *steering trials*
redraw the steering statements. Tables carry ``trial`` (the steering trial) and, optionally,
``benchmark_trial``; a table without ``benchmark_trial`` is one benchmark trial.

Tables are tidy pandas DataFrames:

- profiles: one row per profile, columns ``dimension``, ``direction`` (``"positive"``,
  ``"negative"`` or ``"base"``), ``budget`` (``k``; 0 for base), ``trial``, ``alpha``, ``beta``
  and optionally ``benchmark_trial``. Within a dimension (and benchmark trial), the base profile
  is either one row (used for every steering trial) or one row per trial (matched on ``trial``).
- extremes: one row per dimension (and optionally benchmark trial) and direction
  (``"positive"``/``"negative"``) with ``alpha``, ``beta`` of ``p~+``/``p~-``;
  :func:`extremes_table` builds it from each dimension's statement confidences.
- indices (:func:`steerability_indices`): ``dimension``, ``direction``, ``budget``, ``trial``,
  ``index`` and the three distances behind it (and ``benchmark_trial`` when the profiles have it).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from steerjax.errors import ProfileError
from steerjax.studies.prompt_steerability.beta import BetaProfile, normalise_direction
from steerjax.studies.prompt_steerability.distance import wasserstein, wasserstein_many

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
      **wkw: passed to :func:`~steerjax.studies.prompt_steerability.wasserstein` (``order``, ``reference_compat``).

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


def extremes_table(confidences: Mapping) -> pd.DataFrame:
    """Extremes p~+ and p~- from the profiling statements' label confidences.

    The reference code recomputes them in every benchmark trial, from that trial's profiling
    questions: key the mapping by ``(dimension, benchmark_trial)`` for that.

    Args:
      confidences: dimension name, or ``(dimension, benchmark_trial)``, -> 1-D array of
        confidences in [0.5, 1].

    Returns:
      DataFrame with columns ``dimension``, ``direction``, ``alpha``, ``beta`` (two rows per key),
      after ``dimension`` a ``benchmark_trial`` column when the keys are tuples.

    Raises:
      ProfileError: keys mixing both forms, or a bad confidence.
    """
    keyed = {isinstance(k, tuple) for k in confidences}
    if len(keyed) > 1:
        raise ProfileError("confidences keys must all be dimensions or all (dimension, benchmark_trial) tuples")
    trials = keyed == {True}
    rows = []
    for key, conf in confidences.items():
        if trials and len(key) != 2:
            raise ProfileError(f"a tuple key must be (dimension, benchmark_trial), got {key!r}")
        head = {"dimension": key[0], "benchmark_trial": int(key[1])} if trials else {"dimension": key}
        for direction in ("positive", "negative"):
            p = BetaProfile.extreme(conf, direction)
            rows.append({**head, "direction": direction, "alpha": p.alpha, "beta": p.beta})
    columns = list(EXTREME_COLUMNS)
    if trials:
        columns.insert(1, "benchmark_trial")
    return pd.DataFrame(rows, columns=columns)


def _keys(df: pd.DataFrame) -> list[str]:
    """The columns that identify one profiling sample: the dimension, and the benchmark trial if any."""
    return ["dimension", "benchmark_trial"] if "benchmark_trial" in df.columns else ["dimension"]


def _extremes_wide(extremes: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    require_columns(extremes, EXTREME_COLUMNS, "extremes")
    ex = extremes.assign(direction=[normalise_direction(d) for d in extremes["direction"]])
    if ex.duplicated([*keys, "direction"]).any():
        raise ProfileError(f"extremes has more than one row per {', '.join(keys)} and direction")
    wide = ex.pivot_table(index=keys, columns="direction", values=["alpha", "beta"], aggfunc="first")
    if wide.isna().any().any() or wide.shape[1] != 4:
        raise ProfileError(f"extremes needs both a 'positive' and a 'negative' row for every {' and '.join(keys)}")
    out = wide.index.to_frame(index=False)
    for side, name in (("pos", "positive"), ("neg", "negative")):
        out[f"{side}_alpha"] = wide[("alpha", name)].to_numpy()
        out[f"{side}_beta"] = wide[("beta", name)].to_numpy()
    return out


def _attach_base(steered: pd.DataFrame, base: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    base = base[[*keys, "trial", "alpha", "beta"]].rename(columns={"alpha": "base_alpha", "beta": "base_beta"})
    counts = base.groupby(keys)["trial"].transform("size")
    single, several = base[counts == 1], base[counts > 1]
    if several.duplicated([*keys, "trial"]).any():
        raise ProfileError(f"profiles has several base rows for the same {', '.join(keys)} and trial")
    one = steered.merge(single.drop(columns="trial"), on=keys, how="inner")
    many = steered.merge(several, on=[*keys, "trial"], how="inner")
    out = pd.concat([one, many], ignore_index=True)
    if len(out) != len(steered):
        got = out[[*keys, "trial"]].drop_duplicates()
        lost = steered[[*keys, "trial"]].drop_duplicates().merge(got, how="left", indicator=True)
        bad = lost.loc[lost["_merge"] == "left_only", [*keys, "trial"]].head(5).to_dict("records")
        raise ProfileError(f"no base profile (direction 'base') for {bad}")
    return out


def steerability_indices(profiles: pd.DataFrame, extremes: pd.DataFrame, *, include_base: bool = True,
                         **wkw) -> pd.DataFrame:
    """Steerability index of every steered profile in a tidy profile table (paper, Sec. 3.3).

    Args:
      profiles: columns ``dimension``, ``direction``, ``budget``, ``trial``, ``alpha``, ``beta``
        and optionally ``benchmark_trial`` (see the module docstring); direction ``"base"`` rows
        are the unsteered profiles.
      extremes: p~+ and p~- per dimension, or per dimension and benchmark trial
        (:func:`extremes_table`).
      include_base: add a ``budget = 0`` row with index 0 per dimension, direction and trial, so
        curves start at the origin.
      **wkw: passed to :func:`~steerjax.studies.prompt_steerability.wasserstein_many` (``reference_compat=True``:
        the reference code's 200-point formula).

    Returns:
      DataFrame with ``dimension``, (``benchmark_trial``,) ``direction``, ``budget``, ``trial``,
      ``index``, ``w_base_target`` (W(p0, target)), ``w_steered_target`` (W(p_k, target)) and
      ``w_extremes`` (W(p~+, p~-)), sorted by those keys.

    Raises:
      ProfileError: on missing columns, unknown directions, missing base profiles or extremes,
        or coinciding extremes.
    """
    require_columns(profiles, PROFILE_COLUMNS, "profiles")
    keys = _keys(profiles)
    dirs = profiles["direction"].astype(str)
    unknown = sorted(set(dirs) - {"positive", "negative", "base"})
    if unknown:
        raise ProfileError(f"profiles.direction must be 'positive', 'negative' or 'base'; got {unknown}")
    base = profiles[dirs == "base"]
    steered = profiles[dirs != "base"]
    if steered.empty:
        raise ProfileError("profiles has no steered ('positive'/'negative') rows")
    table = _attach_base(steered, base, keys)
    ex_keys = [k for k in keys if k in extremes.columns]
    ex = _extremes_wide(extremes, ex_keys)
    table = table.merge(ex, on=ex_keys, how="left")
    if table["pos_alpha"].isna().any():
        lacking = table.loc[table["pos_alpha"].isna(), ex_keys].drop_duplicates().head(5).to_dict("records")
        raise ProfileError(f"no extremes for {lacking}")
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
        **{k: table[k].to_numpy() for k in keys},
        "direction": table["direction"].to_numpy(), "budget": table["budget"].to_numpy(),
        "trial": table["trial"].to_numpy(), "index": (w_base - w_steer) / span,
        "w_base_target": w_base, "w_steered_target": w_steer, "w_extremes": span,
    })
    order = [*keys, "direction", "budget", "trial"]
    if include_base:
        zero = out.drop_duplicates([*keys, "direction", "trial"]).assign(
            budget=0, index=0.0, w_steered_target=lambda d: d["w_base_target"])
        out = pd.concat([zero, out[out["budget"] != 0]], ignore_index=True)
    return out.sort_values(order, kind="stable").reset_index(drop=True)


def steerability_curves(indices: pd.DataFrame) -> pd.DataFrame:
    """Steerability curves (paper, Fig. 3), with the reference code's spread.

    Per dimension, direction, budget and benchmark trial, the index is averaged over steering
    trials; ``mean`` is the mean of those per-benchmark-trial means and ``std`` their sample
    standard deviation (ddof=1, NaN for one benchmark trial): what the reference code reports
    (``_combine_stats_indices``). Beside it, ``std_steering`` is the spread over steering trials
    within a benchmark trial, pooled: the square root of the mean within-trial sample variance
    (NaN for one steering trial). A table without ``benchmark_trial`` is one benchmark trial.

    Returns:
      DataFrame with ``dimension``, ``direction``, ``budget``, ``mean``, ``std``,
      ``std_steering``, ``n_benchmark_trials``, ``n_steering_trials`` (the least over benchmark
      trials).
    """
    require_columns(indices, INDEX_COLUMNS, "indices")
    ind = indices if "benchmark_trial" in indices.columns else indices.assign(benchmark_trial=0)
    keys = ["dimension", "direction", "budget"]
    per = ind.groupby([*keys, "benchmark_trial"], sort=True)["index"].agg(["mean", "var", "count"]).reset_index()
    g = per.groupby(keys, sort=True)
    out = g["mean"].agg(mean="mean", std="std", n_benchmark_trials="count")
    out["std_steering"] = np.sqrt(g["var"].mean())
    out["n_steering_trials"] = g["count"].min()
    return out.reset_index()[[*keys, "mean", "std", "std_steering", "n_benchmark_trials", "n_steering_trials"]]


def base_summary(profiles: pd.DataFrame) -> pd.DataFrame:
    """Base profiles summarised over benchmark trials, as the reference code (and the paper's
    Tables 4-9, "probability (mean ± std.)") does: ``mean`` is the average over benchmark trials of
    the Beta mean ``alpha / (alpha + beta)``, ``std`` the square root of the average Beta variance.

    Args:
      profiles: a profile table (its ``direction == "base"`` rows are used).

    Returns:
      DataFrame with ``dimension``, ``mean``, ``std``, ``n_profiles`` (base profiles averaged: one
      per benchmark trial in a run's table), one row per dimension in table order, and
      ``yes_rate`` (mean share of yes answers) when the table has it.
    """
    require_columns(profiles, ("dimension", "direction", "alpha", "beta"), "profiles")
    base = profiles[profiles["direction"] == "base"]
    if base.empty:
        raise ProfileError("profiles has no 'base' rows")
    a, b = base["alpha"].to_numpy(float), base["beta"].to_numpy(float)
    t = base.assign(_m=a / (a + b), _v=a * b / ((a + b) ** 2 * (a + b + 1)))
    g = t.groupby("dimension", sort=False)
    out = pd.DataFrame({"mean": g["_m"].mean(), "std": np.sqrt(g["_v"].mean()), "n_profiles": g.size()})
    if "yes_rate" in t.columns:
        out["yes_rate"] = g["yes_rate"].mean()
    return out.reset_index()


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
