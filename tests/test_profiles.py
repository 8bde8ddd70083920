"""Prompt steerability (Miehling et al. 2024): Beta profiles, Wasserstein distances, indices, plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from steerjax.profiles import BetaProfile, ProfileError, joint_sinkhorn, profile_parameters, wasserstein
from steerjax.profiles.distance import _wp_quantile, wasserstein_many
from steerjax.profiles.indices import (
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

    curves = steerability_curves(idx)
    assert set(curves.columns) == {"dimension", "direction", "budget", "mean", "std", "n_trials"}
    assert (curves["n_trials"] == 4).all()
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
    with pytest.raises(ProfileError, match="no extremes"):
        steerability_indices(profiles, extremes[extremes.dimension != "narcissism"])
    with pytest.raises(ProfileError, match="missing column"):
        steerability_indices(profiles.drop(columns="trial"), extremes)
    with pytest.raises(ProfileError, match="direction"):
        steerability_indices(profiles.replace({"direction": {"positive": "up"}}), extremes)


# ---------------------------------------------------------------- plots

def test_plots(tmp_path):
    from steerjax.profiles import plots

    profiles, extremes = synthetic_profiles()
    curves = steerability_curves(steerability_indices(profiles, extremes))
    for path in (plots.index_curves(curves, tmp_path / "curves.png"),
                 plots.index_heatmap(curves, tmp_path / "heatmap.png"),
                 plots.base_profiles(profiles, tmp_path / "base.png")):
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ProfileError, match="not in the table"):
        plots.index_curves(curves, tmp_path / "x.png", dimensions=["nope"])
