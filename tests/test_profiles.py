"""Prompt steerability (Miehling et al. 2024): Beta profiles, Wasserstein distances, indices, plots."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from steerjax.studies.prompt_steerability import (
    BetaProfile,
    ProfileError,
    joint_sinkhorn,
    profile_parameters,
    wasserstein,
)
from steerjax.studies.prompt_steerability.distance import _wp_quantile, wasserstein_many
from steerjax.studies.prompt_steerability.indices import (
    asymmetry,
    extremes_table,
    steerability_curves,
    steerability_index,
    steerability_indices,
)

RNG = np.random.default_rng(0)
PAIRS = [(5.5, 2.5, 0.5, 3.5), (120.5, 80.5, 100.5, 100.5), (0.5, 0.5, 20.5, 0.5), (3.0, 3.0, 30.0, 30.0),
         (0.5, 300.0, 0.6, 250.0), (300.5, 0.5, 0.5, 300.5), (10.0, 12.0, 11.0, 10.0)]


def _quad_w1(a1, b1, a2, b2):
    f = lambda x: abs(stats.beta.cdf(x, a1, b1) - stats.beta.cdf(x, a2, b2))  # noqa: E731
    return integrate.quad(f, 0, 1, limit=1000, epsabs=1e-13, epsrel=1e-12)[0]


def _reference(a1, b1, a2, b2):
    x = np.linspace(0, 1, 200)
    return stats.wasserstein_distance(stats.beta.cdf(x, a1, b1), stats.beta.cdf(x, a2, b2))


# ---------------------------------------------------------------- profiles

def test_from_answers_update_rule():
    matches = np.array([True, False, True, True])
    conf = np.array([1.0, 0.75, 0.5, 0.9])
    p = BetaProfile.from_answers(matches, conf)
    assert p.alpha == pytest.approx(0.5 + 1.0 + 0.0 + 0.8)
    assert p.beta == pytest.approx(0.5 + 0.5)
    assert p.mean == pytest.approx(stats.beta.mean(p.alpha, p.beta))
    assert p.var == pytest.approx(stats.beta.var(p.alpha, p.beta))
    assert p.ppf(p.cdf(0.3)) == pytest.approx(0.3)


def test_degenerate_answers():
    conf = np.array([0.9, 1.0])
    assert BetaProfile.from_answers(np.array([True, True]), conf) == BetaProfile(0.5 + 1.8, 0.5)
    assert BetaProfile.from_answers(np.array([False, False]), conf) == BetaProfile(0.5, 0.5 + 1.8)
    assert BetaProfile.from_answers(np.array([], bool), np.array([])) == BetaProfile.prior()
    assert BetaProfile.extreme(conf, "+") == BetaProfile(2.3, 0.5)
    assert BetaProfile.extreme(conf, "negative") == BetaProfile(0.5, 2.3)


@pytest.mark.parametrize("bad", [[0.4, 0.9], [0.9, 1.01], [np.nan, 0.9]])
def test_bad_confidence(bad):
    with pytest.raises(ProfileError, match=r"\[0.5, 1\]"):
        BetaProfile.from_answers(np.array([True, False]), np.array(bad))
    with pytest.raises(ValueError):
        BetaProfile.extreme(bad)


def test_bad_inputs():
    with pytest.raises(ProfileError, match="equal length"):
        BetaProfile.from_answers(np.array([True]), np.array([0.9, 0.9]))
    with pytest.raises(ProfileError, match="> 0"):
        BetaProfile(0.0, 1.0)
    with pytest.raises(ProfileError, match="direction"):
        BetaProfile.extreme([0.9], "up")


def test_profile_parameters_vectorised():
    matches = RNG.random((3, 5, 40)) < 0.6
    conf = RNG.uniform(0.5, 1.0, 40)
    a, b = profile_parameters(matches, conf)
    assert a.shape == (3, 5)
    p = BetaProfile.from_answers(matches[1, 2], conf)
    assert (a[1, 2], b[1, 2]) == pytest.approx((p.alpha, p.beta))


# ---------------------------------------------------------------- exact distances

@pytest.mark.parametrize("pair", PAIRS)
def test_w1_matches_cdf_quadrature(pair):
    assert wasserstein_many(*pair) == pytest.approx(_quad_w1(*pair), abs=1e-9)


def _mp_w1(a1, b1, a2, b2):
    """W1 by mpmath at 30 digits: the integral of |F - G|, split at the CDFs' crossing."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    d = lambda x: (mpmath.betainc(a1, b1, 0, x, regularized=True)  # noqa: E731
                   - mpmath.betainc(a2, b2, 0, x, regularized=True))
    grid = [(i + mpmath.mpf("0.37")) / 64 for i in range(64)]  # off 1/2, where symmetric pairs cross
    cuts = [mpmath.mpf(0)]
    for lo, hi in zip(grid[:-1], grid[1:]):
        if d(lo) * d(hi) < 0:
            cuts.append(mpmath.findroot(d, (lo, hi), solver="anderson"))
    cuts.append(mpmath.mpf(1))
    return float(sum(abs(mpmath.quad(d, [lo, hi])) for lo, hi in zip(cuts[:-1], cuts[1:])))


@pytest.mark.parametrize("s", [0.6, 1.0, 3.0, 20.5, 300.5])
def test_w1_arcsine_vs_beta_to_1e12(s):
    # scipy's betainc(0.5, 0.5, x) is 3e-9 off at x = 1 - 2^-53, a point of the crossing grid;
    # the upper tail is read through 1 - x (mpmath reference computed here, 30 digits)
    for pair in [(0.5, 0.5, 0.5, s), (0.5, s, 0.5, 0.5), (0.5, 0.5, s, 0.5)]:
        assert abs(wasserstein_many(*pair) - _mp_w1(*pair)) < 1e-12, pair
    assert abs(wasserstein_many(0.5, 0.5, 0.5, s) - (0.5 - 0.5 / (0.5 + s))) < 1e-12  # stochastically ordered


def test_w1_crossing_pairs_to_1e12():
    for pair in [(0.5, 0.5, 20.5, 20.5), (5.5, 2.5, 0.5, 3.5), (2.0, 2.0, 0.5, 0.5)]:
        assert abs(wasserstein_many(*pair) - _mp_w1(*pair)) < 1e-12, pair


def test_w1_random_pairs_and_quantile_form():
    params = np.exp(RNG.uniform(np.log(0.5), np.log(300), (40, 4)))
    exact = wasserstein_many(*params.T)
    quad = np.array([_quad_w1(*row) for row in params])
    np.testing.assert_allclose(exact, quad, atol=1e-9)
    np.testing.assert_allclose(_wp_quantile(*params.T, 1.0), exact, atol=1e-9)


def test_w1_against_samples():
    p, q = BetaProfile(5.5, 2.5), BetaProfile(0.5, 3.5)
    rng = np.random.default_rng(1)
    x = np.sort(stats.beta.rvs(p.alpha, p.beta, size=200_000, random_state=rng))
    y = np.sort(stats.beta.rvs(q.alpha, q.beta, size=200_000, random_state=rng))
    assert wasserstein(p, q) == pytest.approx(np.mean(np.abs(x - y)), abs=3e-3)
    assert wasserstein(p, q, order=2) == pytest.approx(np.sqrt(np.mean((x - y) ** 2)), abs=3e-3)


def test_closed_cases():
    p = BetaProfile(3.0, 7.0)
    assert wasserstein(p, p) == 0.0
    # stochastically ordered Betas: W1 is the difference of means
    q = BetaProfile(3.0, 2.0)
    assert wasserstein(p, q) == pytest.approx(q.mean - p.mean, abs=1e-12)
    # near point masses at 1 and 0
    assert wasserstein(BetaProfile(1e4, 1e-3), BetaProfile(1e-3, 1e4)) == pytest.approx(1.0, abs=1e-3)
    # mirror images: W(B(a,b), B(b,a)) = W(B(b,a), B(a,b)); for same mean, W > 0
    a, b = BetaProfile(2, 5), BetaProfile(5, 2)
    assert wasserstein(a, b) == pytest.approx(wasserstein(b, a))
    assert wasserstein(BetaProfile(2, 2), BetaProfile(20, 20)) > 0.05
    # W2 between uniform Beta(1,1) and Beta(1,1)-shifted cases: Beta(2,1) has F^-1(u) = sqrt(u)
    w2 = np.sqrt(integrate.quad(lambda u: (np.sqrt(u) - u) ** 2, 0, 1)[0])
    assert wasserstein(BetaProfile(2, 1), BetaProfile(1, 1), order=2) == pytest.approx(w2, abs=1e-9)


def test_metric_axioms_vectorised():
    a = np.exp(RNG.uniform(np.log(0.5), np.log(100), (3, 200, 2)))
    for order in (1, 2):
        d_xy = wasserstein_many(a[0, :, 0], a[0, :, 1], a[1, :, 0], a[1, :, 1], order=order)
        d_yx = wasserstein_many(a[1, :, 0], a[1, :, 1], a[0, :, 0], a[0, :, 1], order=order)
        d_yz = wasserstein_many(a[1, :, 0], a[1, :, 1], a[2, :, 0], a[2, :, 1], order=order)
        d_xz = wasserstein_many(a[0, :, 0], a[0, :, 1], a[2, :, 0], a[2, :, 1], order=order)
        np.testing.assert_allclose(d_xy, d_yx, atol=1e-9)
        assert np.all(d_xz <= d_xy + d_yz + 1e-9)
        assert np.all(d_xy >= 0)


def test_broadcasting():
    out = wasserstein_many(np.array([[1.0], [2.0]]), 3.0, np.array([1.0, 4.0, 9.0]), 3.0)
    assert out.shape == (2, 3)
    assert out[0, 0] == 0.0
    assert out[1, 2] == pytest.approx(wasserstein(BetaProfile(2, 3), BetaProfile(9, 3)))
    with pytest.raises(ProfileError, match="> 0"):
        wasserstein_many(-1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ProfileError, match="order"):
        wasserstein_many(1.0, 1.0, 1.0, 1.0, order=0.5)


# ---------------------------------------------------------------- reference compatibility

@pytest.mark.parametrize("pair", PAIRS)
def test_reference_compat_reproduces_authors_formula(pair):
    got = wasserstein_many(*pair, reference_compat=True)
    assert got == pytest.approx(_reference(*pair), rel=1e-12, abs=1e-15)


def test_reference_vs_exact_example():
    """Documented example: the authors' 200-point formula is a Riemann sum with weight 1/200."""
    p, q = BetaProfile(5.5, 2.5), BetaProfile(0.5, 3.5)
    exact, ref = wasserstein(p, q), wasserstein(p, q, reference_compat=True)
    assert exact == pytest.approx(0.5625, abs=1e-12)
    assert ref == pytest.approx(0.559537472883, abs=1e-10)
    p, q = BetaProfile(0.5, 300.0), BetaProfile(0.6, 250.0)
    assert wasserstein(p, q) == pytest.approx(7.3036028e-4, rel=1e-6)
    assert wasserstein(p, q, reference_compat=True) == pytest.approx(4.414338e-4, rel=1e-6)
    with pytest.raises(ProfileError, match="order=1"):
        wasserstein(p, q, order=2, reference_compat=True)


# ---------------------------------------------------------------- joint profiles (ott-jax)

def test_joint_sinkhorn_one_dimension_approaches_w1():
    for a1, b1, a2, b2 in [(5.5, 2.5, 0.5, 3.5), (3.0, 3.0, 30.0, 30.0), (10.0, 12.0, 11.0, 10.0)]:
        p, q = BetaProfile(a1, b1), BetaProfile(a2, b2)
        w = wasserstein(p, q)
        assert joint_sinkhorn([p], [q]) == pytest.approx(w, abs=3e-4)
        div = joint_sinkhorn([p], [q], kind="divergence")
        assert w - 1e-2 < div < w


def test_joint_sinkhorn_identity_and_symmetry():
    p, q = BetaProfile(5.5, 2.5), BetaProfile(0.5, 3.5)
    assert joint_sinkhorn([p, q], [p, q], kind="divergence") == pytest.approx(0.0, abs=1e-6)
    assert 0 <= joint_sinkhorn([p, q], [p, q]) < 2e-4
    for kind in ("transport", "divergence"):
        assert joint_sinkhorn([p, q], [q, p], kind=kind) == pytest.approx(
            joint_sinkhorn([q, p], [p, q], kind=kind), abs=1e-4)
    with pytest.raises(ProfileError, match="equal"):
        joint_sinkhorn([p], [p, q])
    with pytest.raises(ProfileError, match="kind"):
        joint_sinkhorn([p], [q], kind="w2")


# ---------------------------------------------------------------- indices

DIMS = {"agreeableness": 0.6, "narcissism": 0.5, "risk-seeking": 0.45}


def synthetic_profiles(n_statements=40, budgets=(1, 2, 4, 8, 16), trials=4, seed=0):
    """Fake experiment: P(match) starts at each dimension's base rate and moves toward 1 (or 0)
    with the budget; narcissism resists positive steering."""
    rng = np.random.default_rng(seed)
    conf = {d: rng.uniform(0.6, 1.0, n_statements) for d in DIMS}
    rows = []
    for dim, base in DIMS.items():
        for t in range(trials):
            a, b = profile_parameters(rng.random(n_statements) < base, conf[dim])
            rows.append((dim, "base", 0, t, float(a), float(b)))
            for k in budgets:
                frac = k / (k + 4.0)
                up = base + (1 - base) * frac * (0.1 if dim == "narcissism" else 1.0)
                down = base * (1 - frac)
                for direction, pm in (("positive", up), ("negative", down)):
                    a, b = profile_parameters(rng.random(n_statements) < pm, conf[dim])
                    rows.append((dim, direction, k, t, float(a), float(b)))
    profiles = pd.DataFrame(rows, columns=["dimension", "direction", "budget", "trial", "alpha", "beta"])
    return profiles, extremes_table(conf)


def test_steerability_index_scalar():
    conf = np.full(10, 1.0)
    pos, neg = BetaProfile.extreme(conf, "+"), BetaProfile.extreme(conf, "-")
    base = BetaProfile(5.5, 5.5)
    assert steerability_index(base, base, pos, neg, "+") == 0.0
    assert steerability_index(base, pos, pos, neg, "+") == pytest.approx(wasserstein(base, pos) / wasserstein(pos, neg))
    assert steerability_index(base, neg, pos, neg, "+") < 0
    with pytest.raises(ProfileError, match="coincide"):
        steerability_index(base, base, pos, pos, "-")


def test_indices_table_curves_asymmetry():
    profiles, extremes = synthetic_profiles()
    idx = steerability_indices(profiles, extremes)
    assert list(idx.columns[:5]) == ["dimension", "direction", "budget", "trial", "index"]
    assert len(idx) == 3 * 2 * 6 * 4
    assert (idx.loc[idx["budget"] == 0, "index"] == 0).all()
    pick = (idx.dimension == "risk-seeking") & (idx.direction == "negative") & (idx.budget == 8) & (idx.trial == 2)
    row = idx[pick].iloc[0]
    src = profiles.set_index(["dimension", "direction", "budget", "trial"])
    ex = extremes.set_index(["dimension", "direction"])
    prof = lambda r: BetaProfile(r["alpha"], r["beta"])  # noqa: E731
    expect = steerability_index(prof(src.loc[("risk-seeking", "base", 0, 2)]),
                                prof(src.loc[("risk-seeking", "negative", 8, 2)]),
                                prof(ex.loc[("risk-seeking", "positive")]), prof(ex.loc[("risk-seeking", "negative")]),
                                "-")
    assert row["index"] == pytest.approx(expect, abs=1e-12)
    ref = steerability_indices(profiles, extremes, reference_compat=True)
    assert not np.allclose(ref["index"], idx["index"])

    curves = steerability_curves(idx)  # no benchmark_trial column: one benchmark trial of 4 steering trials
    assert list(curves.columns) == ["dimension", "direction", "budget", "mean", "std", "std_steering",
                                    "n_benchmark_trials", "n_steering_trials"]
    assert (curves["n_benchmark_trials"] == 1).all() and (curves["n_steering_trials"] == 4).all()
    assert curves["std"].isna().all()
    one = idx[(idx.dimension == "narcissism") & (idx.direction == "positive") & (idx.budget == 4)]["index"]
    row = curves[(curves.dimension == "narcissism") & (curves.direction == "positive") & (curves.budget == 4)]
    assert row["mean"].iloc[0] == pytest.approx(one.mean()) and row["std_steering"].iloc[0] == pytest.approx(one.std())
    agree = curves[(curves.dimension == "agreeableness") & (curves.direction == "negative")]
    assert agree["mean"].iloc[-1] > 0.5

    asym = asymmetry(idx)
    assert asym.iloc[0]["dimension"] == "narcissism"
    assert asym.iloc[0]["resists"] == "positive"
    assert (asym["budget"] == 16).all()


def test_indices_single_base_row_and_errors():
    profiles, extremes = synthetic_profiles(trials=2)
    one_base = profiles[(profiles.direction != "base") | (profiles.trial == 0)]
    idx = steerability_indices(one_base, extremes, include_base=False)
    assert (idx["budget"] > 0).all()
    no_base = profiles[~((profiles.direction == "base") & (profiles.dimension == "narcissism"))]
    with pytest.raises(ProfileError, match="no base profile"):
        steerability_indices(no_base, extremes)
    with pytest.raises(ProfileError, match="no extremes for .*narcissism"):
        steerability_indices(profiles, extremes[extremes.dimension != "narcissism"])
    with pytest.raises(ProfileError, match="missing column"):
        steerability_indices(profiles.drop(columns="trial"), extremes)
    with pytest.raises(ProfileError, match="direction"):
        steerability_indices(profiles.replace({"direction": {"positive": "up"}}), extremes)


# ---------------------------------------------------------------- plots

def test_plots(tmp_path):
    from steerjax.studies.prompt_steerability import plots

    profiles, extremes = synthetic_profiles()
    curves = steerability_curves(steerability_indices(profiles, extremes))
    bt_profiles, bt_extremes = benchmark_profiles()
    long = pd.concat([pd.DataFrame({"format": f, "dimension": list(DIMS), "quantity": "base_mean", "direction": "base",
                                    "budget": 0, "value": [0.5, 0.6, 0.7], "spread": 0.1})
                      for f in ("reference", "steerjax-v1")]
                     + [steerability_curves(steerability_indices(bt_profiles, bt_extremes)).assign(
                         format=f, quantity="index", value=lambda d, s=shift: d["mean"] + s, spread=lambda d: d["std"])
                        for f, shift in (("reference", 0.0), ("steerjax-v1", 0.1))], ignore_index=True)
    for path in (plots.index_curves(curves, tmp_path / "curves.png"),
                 plots.index_curves(curves, tmp_path / "curves_up.png", mirror_negative=False),
                 plots.index_heatmap(curves, tmp_path / "heatmap.png"),
                 plots.base_profiles(profiles, tmp_path / "base.png"),
                 plots.base_profiles(bt_profiles, tmp_path / "base_mixture.png"),
                 plots.format_comparison(long, tmp_path / "formats.png")):
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ProfileError, match="not in the table"):
        plots.index_curves(curves, tmp_path / "x.png", dimensions=["nope"])
    with pytest.raises(ProfileError, match="must hold the formats"):
        plots.format_comparison(long[long.format == "reference"], tmp_path / "x.png")


def benchmark_profiles(benchmark_trials=3, steering_trials=4, budgets=(1, 5, 20), seed=0):
    """Synthetic profiles with the reference's trial structure: per benchmark trial its own base
    profile and extremes (its own 40 questions), steering trials within."""
    rng = np.random.default_rng(seed)
    rows, conf = [], {}
    for dim, base in DIMS.items():
        for b in range(benchmark_trials):
            conf[(dim, b)] = rng.uniform(0.6, 1.0, 40)
            a0, b0 = profile_parameters(rng.random(40) < base, conf[(dim, b)])
            rows.append((dim, b, "base", 0, 0, float(a0), float(b0)))
            for k in budgets:
                for t in range(steering_trials):
                    up, down = base + (1 - base) * k / (k + 4), base * 4 / (k + 4)
                    for direction, pm in (("positive", up), ("negative", down)):
                        a, bb = profile_parameters(rng.random(40) < pm, conf[(dim, b)])
                        rows.append((dim, b, direction, k, t, float(a), float(bb)))
    profiles = pd.DataFrame(rows, columns=["dimension", "benchmark_trial", "direction", "budget", "trial", "alpha",
                                           "beta"])
    return profiles, extremes_table(conf)


def test_benchmark_trials_use_their_own_base_and_extremes():
    profiles, extremes = benchmark_profiles()
    assert list(extremes.columns) == ["dimension", "benchmark_trial", "direction", "alpha", "beta"]
    idx = steerability_indices(profiles, extremes)
    assert list(idx.columns[:6]) == ["dimension", "benchmark_trial", "direction", "budget", "trial", "index"]
    assert len(idx) == 3 * 3 * 2 * 4 * 4  # dims x benchmark trials x directions x (3 budgets + 0) x steering trials
    src = profiles.set_index(["dimension", "benchmark_trial", "direction", "budget", "trial"])
    ex = extremes.set_index(["dimension", "benchmark_trial", "direction"])
    prof = lambda r: BetaProfile(r["alpha"], r["beta"])  # noqa: E731
    row = idx[(idx.dimension == "agreeableness") & (idx.benchmark_trial == 2) & (idx.direction == "positive")
              & (idx.budget == 5) & (idx.trial == 3)].iloc[0]
    expect = steerability_index(prof(src.loc[("agreeableness", 2, "base", 0, 0)]),
                                prof(src.loc[("agreeableness", 2, "positive", 5, 3)]),
                                prof(ex.loc[("agreeableness", 2, "positive")]),
                                prof(ex.loc[("agreeableness", 2, "negative")]), "+")
    assert row["index"] == pytest.approx(expect, abs=1e-12)
    with pytest.raises(ProfileError, match="no base profile"):
        steerability_indices(profiles[~((profiles.direction == "base") & (profiles.benchmark_trial == 1))], extremes)
    with pytest.raises(ProfileError, match="no extremes"):
        steerability_indices(profiles, extremes[extremes.benchmark_trial != 2])
    with pytest.raises(ProfileError, match=r"all be dimensions or all \(dimension"):
        extremes_table({"a": [0.9], ("b", 0): [0.9]})


def test_curves_spread_as_the_reference():
    """mean and stdev of the per-benchmark-trial means (statistics.stdev, as the reference's
    _combine_stats_indices); the spread over steering trials pooled beside it."""
    import statistics

    profiles, extremes = benchmark_profiles()
    idx = steerability_indices(profiles, extremes)
    curves = steerability_curves(idx)
    assert (curves["n_benchmark_trials"] == 3).all() and (curves["n_steering_trials"] == 4).all()
    for dim, direction, k in [("narcissism", "negative", 20), ("risk-seeking", "positive", 1)]:
        sel = idx[(idx.dimension == dim) & (idx.direction == direction) & (idx.budget == k)]
        per_trial = [statistics.mean(g["index"]) for _, g in sel.groupby("benchmark_trial")]
        within = [statistics.stdev(g["index"]) for _, g in sel.groupby("benchmark_trial")]
        row = curves[(curves.dimension == dim) & (curves.direction == direction) & (curves.budget == k)].iloc[0]
        assert row["mean"] == pytest.approx(statistics.mean(per_trial), abs=1e-12)
        assert row["std"] == pytest.approx(statistics.stdev(per_trial, xbar=statistics.mean(per_trial)), abs=1e-12)
        assert row["std_steering"] == pytest.approx(np.sqrt(np.mean(np.square(within))), abs=1e-12)
    zero = curves[curves.budget == 0]
    assert (zero["mean"] == 0).all() and (zero["std"] == 0).all()


def test_base_summary_as_the_papers_tables():
    from steerjax.studies.prompt_steerability.indices import base_summary

    profiles, _ = benchmark_profiles()
    summary = base_summary(profiles.assign(yes_rate=0.5))
    base = profiles[(profiles.direction == "base") & (profiles.dimension == "narcissism")]
    ps = [BetaProfile(a, b) for a, b in zip(base.alpha, base.beta)]
    row = summary.set_index("dimension").loc["narcissism"]
    assert row["mean"] == pytest.approx(np.mean([p.mean for p in ps]))
    assert row["std"] == pytest.approx(np.sqrt(np.mean([p.var for p in ps])))
    assert row["n_profiles"] == 3 and row["yes_rate"] == 0.5
    assert list(summary.dimension) == list(DIMS)
    with pytest.raises(ProfileError, match="no 'base' rows"):
        base_summary(profiles[profiles.direction != "base"])


# ---------------------------------------------------------------- the protocol, with a fake scorer


class FakeModel:
    source, dtype = "fake-model", "float32"


@pytest.fixture()
def fake_scoring(monkeypatch):
    """Replace the model's answers by a deterministic function of (steering prompt, question);
    record every call."""
    import zlib

    from steerjax.studies.prompt_steerability import profiles as run_mod

    calls = []

    def fake(model, systems, questions, *, prompt_format, template_category, batch_size, progress, mesh):
        calls.append(dict(systems=list(systems), questions=list(questions), prompt_format=prompt_format,
                          template_category=template_category))
        u = np.array([[zlib.crc32(f"{s}|{q}".encode()) / 2 ** 32 for q in questions] for s in systems])
        u = np.clip(u, 1e-6, 1 - 1e-6)
        return np.stack([np.log(u), np.log1p(-u)], axis=-1).astype(np.float32)

    monkeypatch.setattr(run_mod, "answer_logprobs", fake)
    return calls


def statements_of(prompt, prompt_format="reference"):
    """The set of statements in a steering prompt (the format's header and separator found from
    two-statement prompts)."""
    from steerjax.data.prompt_steering import steering_prompt

    two = steering_prompt(["@A@", "@B@"], prompt_format=prompt_format)
    header, sep = two[:two.index("@A@")], two[two.index("@A@") + 3:two.index("@B@")]
    assert prompt.startswith(header) and two.endswith("@B@")
    return set(prompt[len(header):].split(sep))


@pytest.mark.requires_data
def test_trial_structure(fake_scoring, tmp_path):
    from steerjax.data.prompt_steering import profiling_source
    from steerjax.studies.prompt_steerability.profiles import run_profiles

    dims, budgets = ["agreeableness", "narcissism"], [1, 3, 10]
    kw = dict(budgets=budgets, benchmark_trials=3, steering_trials=2, num_questions=4, seed=7, progress=False,
              template_category="llama-3")
    run = run_profiles(FakeModel(), dims, run_dir=str(tmp_path / "run"), **kw)
    calls = list(fake_scoring)
    # one scoring call per (dimension, benchmark trial): base + directions x budgets x steering trials
    assert len(calls) == 2 * 3
    assert all(len(c["systems"]) == 1 + 2 * 3 * 2 and len(c["questions"]) == 8 for c in calls)
    assert all(c["systems"][0] is None and c["prompt_format"] == "reference" and c["template_category"] == "llama-3"
               for c in calls)
    # each benchmark trial draws its own profiling questions (and so base profile and extremes)
    agree = [set(c["questions"]) for c in calls[:3]]
    assert agree[0] != agree[1] and agree[1] != agree[2]
    assert set(run.extremes.benchmark_trial) == {0, 1, 2} and len(run.extremes) == 2 * 3 * 2
    assert len(run.profiles[run.profiles.direction == "base"]) == 2 * 3
    # steering statements: independent draws per (budget, trial), so a smaller budget's are not
    # always inside a larger one's; every draw has k distinct statements
    plan = calls[0]["systems"][1:]
    drawn = [statements_of(p) for p in plan]
    assert [len(d) for d in drawn] == [k for _ in range(2) for k in budgets for _ in range(2)]
    assert any(not drawn[i] <= drawn[i + 2] for i in (0, 1, 6, 7))  # budget 1 within budget 3, same trial
    assert drawn[4] != drawn[5]  # two steering trials of budget 10
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["benchmark_trials"] == 3 and cfg["steering_trials"] == 2 and cfg["prompt_format"] == "reference"
    assert cfg["template_category"] == "llama-3" and cfg["nested"] is False and cfg["budgets"] == budgets
    assert cfg["profiling_source"] == profiling_source()
    # curves: 3 benchmark trials x 2 steering trials each
    assert (run.curves.n_benchmark_trials == 3).all() and (run.curves.n_steering_trials == 2).all()
    assert len(run.base) == 2 and (run.base.n_profiles == 3).all()
    # seeded: the same call draws the same; resumed from the run directory without scoring
    again = run_profiles(FakeModel(), dims, **dict(kw, progress=False))
    assert [c["systems"] for c in fake_scoring[6:]] == [c["systems"] for c in calls]
    pd.testing.assert_frame_equal(again.indices, run.indices)
    n = len(fake_scoring)
    resumed = run_profiles(FakeModel(), dims, run_dir=str(tmp_path / "run"), **kw)
    assert len(fake_scoring) == n
    pd.testing.assert_frame_equal(resumed.curves, run.curves)
    # another seed draws other questions and statements
    run_profiles(FakeModel(), dims[:1], **dict(kw, seed=8, benchmark_trials=1))
    assert fake_scoring[-1]["systems"] != calls[0]["systems"] and fake_scoring[-1]["questions"] != calls[0]["questions"]


@pytest.mark.requires_data
def test_nested_draws_and_formats(fake_scoring):
    from steerjax.studies.prompt_steerability.profiles import run_profiles

    kw = dict(budgets=[2, 5, 20], benchmark_trials=2, steering_trials=2, num_questions=3, progress=False)
    run_profiles(FakeModel(), ["risk-seeking"], nested=True, prompt_format="steerjax-v1", **kw)
    for call in fake_scoring:
        assert call["prompt_format"] == "steerjax-v1" and call["template_category"] is None
        drawn = [statements_of(p, "steerjax-v1") for p in call["systems"][1:]]
        for d in range(2):  # direction
            for t in range(2):  # steering trial
                small, mid, large = (drawn[d * 6 + j * 2 + t] for j in range(3))
                assert small < mid < large
    assert fake_scoring[0]["systems"] != fake_scoring[1]["systems"]  # benchmark trials draw anew
    # the same draws under both formats (the experiment's template comparison relies on it)
    run_profiles(FakeModel(), ["risk-seeking"], nested=True, prompt_format="reference", **kw)
    assert [[statements_of(p) for p in c["systems"][1:]] for c in fake_scoring[2:]] == \
        [[statements_of(p, "steerjax-v1") for p in c["systems"][1:]] for c in fake_scoring[:2]]


@pytest.mark.requires_data
@pytest.mark.parametrize("kw, message", [
    (dict(benchmark_trials=0), "benchmark_trials must be an integer >= 1"),
    (dict(steering_trials=0), "steering_trials must be an integer >= 1"),
    (dict(steering_trials=1.5), "steering_trials must be an integer >= 1"),
    (dict(budgets=[]), "budgets must be integers >= 1"),
    (dict(budgets=[0, 1]), "budgets must be integers >= 1"),
    (dict(budgets=[101]), "only 100"),
    (dict(prompt_format="chatml"), "prompt_format: unknown prompt format 'chatml'; choose one of reference, "
                                   "steerjax-v1"),
    (dict(template_category="llama3"), "template_category 'llama3' is not one of the reference's wrappers"),
    (dict(dims=["paper", "agreeableness"]), "stand alone"),
    (dict(dims=["agreeableness", "agreeableness"]), "more than once"),
    (dict(dims=["agreeablenes"]), "did you mean 'agreeableness'"),
    (dict(dims=[]), "no dimensions"),
])
def test_bad_options_fail_before_scoring(fake_scoring, kw, message):
    from steerjax.errors import SteerjaxError
    from steerjax.studies.prompt_steerability.profiles import run_profiles

    kw = dict(dict(dims=["agreeableness"], num_questions=2, progress=False), **kw)
    with pytest.raises(SteerjaxError, match=message):
        run_profiles(FakeModel(), kw.pop("dims"), **kw)
    assert not fake_scoring


@pytest.mark.requires_data
def test_dimension_sets():
    from steerjax.data.prompt_steering import PAPER_DIMENSIONS, list_dimensions
    from steerjax.studies.prompt_steerability.profiles import resolve_dimensions

    paper = resolve_dimensions("paper")
    assert paper == list(PAPER_DIMENSIONS) and len(paper) == 32 and paper[:3] == ["agreeableness",
                                                                                  "conscientiousness", "openness"]
    assert resolve_dimensions(["all"]) == list_dimensions() and len(list_dimensions()) == 70
    assert set(paper) <= set(list_dimensions())
    assert resolve_dimensions(["narcissism", "agreeableness"]) == ["narcissism", "agreeableness"]


def test_draw_seed():
    from steerjax.studies.prompt_steerability.profiles import draw_seed

    assert draw_seed(0, "steering", "a", 1) == draw_seed(0, "steering", "a", 1)
    seeds = {draw_seed(s, "steering", d, b) for s in (0, 1) for d in ("a", "b") for b in range(5)}
    assert len(seeds) == 20 and all(0 <= s < 2 ** 32 for s in seeds)
    assert draw_seed(-1, "x") == draw_seed(2 ** 64 - 1, "x")
