"""Steerability metrics on synthetic sweep tables with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from steerjax.studies.reliability import (
    MetricsError,
    best_layer,
    dataset_steerability,
    factor_level_means,
    generalisation,
    layer_sweep_summary,
    per_example_steerability,
    plots,
    spurious_variance,
)

MULTS = np.linspace(-1.5, 1.5, 7)


def sweep(slopes, intercepts=None, *, mults=MULTS, noise=0.0, seed=0, **meta):
    """A sweep table from per-(dataset, layer, example) slopes: ``slopes[(dataset, layer)]`` is an
    array over examples; ``meta[name][(dataset, layer)]`` gives per-example meta values."""
    rng = np.random.default_rng(seed)
    parts = []
    for (dataset, layer), s in slopes.items():
        s = np.asarray(s, dtype=np.float64)
        b = np.zeros_like(s) if intercepts is None else np.asarray(intercepts[(dataset, layer)], dtype=np.float64)
        ex = np.repeat(np.arange(len(s)), len(mults))
        m = np.tile(mults, len(s))
        prop = b[ex] + s[ex] * m + noise * rng.normal(size=len(m))
        part = pd.DataFrame({"dataset": dataset, "layer": layer, "example": ex, "multiplier": m,
                             "logp_positive": prop - 3.0, "logp_negative": -3.0 + np.zeros_like(prop)})
        part["propensity"] = part["logp_positive"] - part["logp_negative"]
        part["prob_positive"] = 1.0 / (1.0 + np.exp(-part["propensity"]))
        part["correct"] = part["propensity"] > 0
        for name, values in meta.items():
            part[name] = pd.Series(list(values[(dataset, layer)]), dtype=object).to_numpy()[ex]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def test_noise_free_slopes_are_exact():
    slopes = {("d1", 3): np.array([2.0, -1.0, 0.5, 0.0]), ("d2", 3): np.array([1.0, 3.0])}
    intercepts = {("d1", 3): np.array([1.0, 0.0, -2.0, 4.0]), ("d2", 3): np.array([0.5, -0.5])}
    letters = {("d1", 3): "ABAB", ("d2", 3): "AB"}
    t = sweep(slopes, intercepts, positive_letter=letters)
    pe = per_example_steerability(t)
    assert len(pe) == 6
    assert list(pe.columns[:3]) == ["dataset", "layer", "example"]
    d1 = pe[pe.dataset == "d1"].sort_values("example")
    np.testing.assert_allclose(d1.slope, slopes[("d1", 3)], atol=1e-12)
    np.testing.assert_allclose(d1.intercept, intercepts[("d1", 3)], atol=1e-12)
    np.testing.assert_allclose(d1.residual_std, 0.0, atol=1e-12)
    np.testing.assert_allclose(d1.propensity_at_zero, intercepts[("d1", 3)], atol=1e-12)
    np.testing.assert_allclose(d1.propensity_shift, 3.0 * slopes[("d1", 3)], atol=1e-12)
    assert list(d1.positive_letter) == list("ABAB")
    assert (d1.n_multipliers == len(MULTS)).all()
    r2, rho = d1.r2.to_numpy(), d1.spearman.to_numpy()
    np.testing.assert_allclose(r2[:3], 1.0)
    np.testing.assert_allclose(rho[:3], [1.0, -1.0, 1.0])
    assert np.isnan(r2[3]) and np.isnan(rho[3])  # constant propensity: undefined
    for c in ("logp_positive", "propensity", "prob_positive", "correct", "multiplier"):
        assert c not in pe.columns


def test_propensity_derived_from_logps_and_no_zero_multiplier():
    t = sweep({("d", 0): [1.5, -0.5]}, mults=np.array([-1.0, 0.5, 2.0])).drop(columns="propensity")
    pe = per_example_steerability(t)
    np.testing.assert_allclose(pe.slope, [1.5, -0.5])
    assert pe.propensity_at_zero.isna().all()


def test_noisy_slopes_and_residuals():
    rng = np.random.default_rng(1)
    true = rng.normal(1.0, 1.0, size=200)
    mults = np.linspace(-1.5, 1.5, 41)
    t = sweep({("d", 0): true}, mults=mults, noise=0.3, seed=2)
    pe = per_example_steerability(t)
    se = 0.3 / np.sqrt(((mults - mults.mean()) ** 2).sum())
    assert np.abs(pe.slope - true).max() < 5 * se
    assert abs(pe.residual_std.mean() - 0.3) < 0.02
    assert pe.r2.between(0, 1).all()


def test_residual_r2_spearman_known_values():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([0.0, 1.0, 1.0, 4.0])  # fit: slope 1.2, intercept -0.3
    t = pd.DataFrame({"dataset": "d", "layer": 0, "example": 0, "multiplier": x, "propensity": y})
    row = per_example_steerability(t).iloc[0]
    resid = y - (-0.3 + 1.2 * x)
    assert row.slope == pytest.approx(1.2)
    assert row.intercept == pytest.approx(-0.3)
    assert row.residual_std == pytest.approx(np.sqrt(np.mean(resid**2)))
    assert row.r2 == pytest.approx(1 - (resid**2).sum() / ((y - y.mean()) ** 2).sum())
    ry = np.array([1.0, 2.5, 2.5, 4.0])
    assert row.spearman == pytest.approx(np.corrcoef([1, 2, 3, 4], ry)[0, 1])
    assert row.propensity_at_zero == 0.0
    assert row.propensity_shift == 4.0


def test_unsorted_rows_and_extra_grouping():
    t = sweep({("d", 0): [1.0, 2.0]}).sample(frac=1.0, random_state=0)
    pe = per_example_steerability(t, by="dataset")
    np.testing.assert_allclose(pe.slope, [1.0, 2.0])
    assert "layer" in pe.columns  # constant meta carried through


def test_dataset_steerability_and_anti_steerable_fraction():
    s = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    t = sweep({("a", 1): s, ("b", 1): np.array([1.0, 1.0, 1.0])})
    ds = dataset_steerability(per_example_steerability(t)).set_index("dataset")
    a = ds.loc["a"]
    assert a.n == 8
    assert a.steerability == pytest.approx(s.mean())
    assert a.steerability_std == pytest.approx(s.std(ddof=1))
    assert a.steerability_median == pytest.approx(np.median(s))
    assert a.steerability_q25 == pytest.approx(np.quantile(s, 0.25))
    assert a.steerability_q75 == pytest.approx(np.quantile(s, 0.75))
    assert a.anti_steerable_fraction == pytest.approx(2 / 8)  # slope 0 is not anti-steerable
    assert a.mean_residual_std == pytest.approx(0.0, abs=1e-12)
    assert a.mean_spearman == pytest.approx((5 - 2) / 7)  # the constant example is NaN and skipped
    assert ds.loc["b"].anti_steerable_fraction == 0.0
    assert ds.loc["b"].steerability == pytest.approx(1.0)
    mean_curve = t[t.dataset == "a"].groupby("multiplier").propensity.mean()
    assert np.polyfit(mean_curve.index, mean_curve.to_numpy(), 1)[0] == pytest.approx(a.steerability)
    raw = dataset_steerability(t)  # raw table accepted
    np.testing.assert_allclose(raw.steerability, ds.steerability.to_numpy())


def test_spurious_variance_letter_explains_everything():
    n = 400
    rng = np.random.default_rng(0)
    letter = np.where(np.arange(n) % 2 == 0, "A", "B")
    yes = rng.integers(0, 2, size=n).astype(bool)
    slopes = np.where(letter == "A", 2.0, 0.5)
    t = sweep({("d", 5): slopes, ("nd", 5): slopes},
              positive_letter={("d", 5): letter, ("nd", 5): letter},
              positive_is_yes={("d", 5): yes, ("nd", 5): [None] * n})
    sv = spurious_variance(per_example_steerability(t)).set_index("dataset")
    d = sv.loc["d"]
    assert d.r2_positive_letter == pytest.approx(1.0)
    assert d.r2_positive_is_yes < 0.02
    assert d.r2_joint == pytest.approx(1.0)
    assert d.factors_used == "positive_letter,positive_is_yes"
    assert d.n == n
    assert d.slope_variance == pytest.approx(np.var(slopes))
    assert d["mean_slope[positive_letter=A]"] == pytest.approx(2.0)
    assert d["mean_slope[positive_letter=B]"] == pytest.approx(0.5)
    nd = sv.loc["nd"]
    assert nd.factors_used == "positive_letter"
    assert np.isnan(nd.r2_positive_is_yes)
    assert np.isnan(nd["mean_slope[positive_is_yes=True]"])
    assert nd.r2_joint == pytest.approx(1.0)


def test_spurious_variance_partial_and_joint():
    # slope = letter effect + yes effect, independent and balanced: R^2s add up to the joint R^2
    letter = np.array(list("AABB") * 50)
    yes = np.array([True, False] * 100)
    slopes = np.where(letter == "A", 1.0, 0.0) + np.where(yes, 2.0, 0.0)
    t = sweep({("d", 0): slopes}, positive_letter={("d", 0): letter}, positive_is_yes={("d", 0): yes})
    row = spurious_variance(t).iloc[0]
    assert row.r2_positive_letter == pytest.approx(0.2)
    assert row.r2_positive_is_yes == pytest.approx(0.8)
    assert row.r2_joint == pytest.approx(1.0)
    levels = factor_level_means(t).set_index(["factor", "level"])
    assert levels.loc[("positive_is_yes", "True"), "mean_slope"] == pytest.approx(2.5)
    assert levels.loc[("positive_letter", "B"), "n"] == 100


def test_spurious_variance_constant_or_absent_factor():
    t = sweep({("d", 0): [1.0, 2.0, 3.0]}, positive_letter={("d", 0): "AAA"})
    row = spurious_variance(t, factors=("positive_letter", "not_a_column")).iloc[0]
    assert row.factors_used == ""
    assert np.isnan(row.r2_joint) and np.isnan(row.r2_positive_letter) and np.isnan(row.r2_not_a_column)


def test_best_layer_and_layer_sweep_summary():
    t = sweep({("a", 0): [0.1, 0.2], ("a", 1): [1.0, 2.0], ("a", 2): [2.0, 1.0], ("a", 3): [-1.0, 0.5],
               ("b", 0): [0.0, 0.1], ("b", 1): [0.5, 0.5], ("b", 2): [0.5, 0.5], ("b", 3): [0.2, 0.2]})
    summary = layer_sweep_summary(t)
    assert list(summary.layer) == [0, 1, 2, 3]
    assert list(summary.n_datasets) == [2] * 4
    np.testing.assert_allclose(summary.steerability, [0.1, 1.0, 1.0, -0.025])
    np.testing.assert_allclose(summary.anti_steerable_fraction, [0.0, 0.0, 0.0, 0.25])
    np.testing.assert_allclose(summary.mean_propensity_shift, 3.0 * summary.steerability)
    assert best_layer(t) == 1  # layers 1 and 2 tie: lowest wins
    assert best_layer(summary) == 1
    assert best_layer(per_example_steerability(t)) == 1
    assert best_layer(dataset_steerability(t)) == 1
    assert best_layer(t, criterion="anti_steerable_fraction") == 0
    with pytest.raises(ValueError, match="criterion"):
        best_layer(summary, criterion="nope")


def generalisation_table(id_steer, effects, *, n=10, layer=4):
    """Sweep rows for every train x test setting; ``effects[(train, test)]`` scales the ID slope."""
    parts = []
    for d, base in id_steer.items():
        for (train, test), k in effects.items():
            part = sweep({(d, layer): np.full(n, base * k)}, mults=np.array([-1.0, 0.0, 1.0]))
            part["train_setting"] = None if train == "baseline" else train
            part["test_setting"] = test
            part["persona_prompt"] = None if test == "baseline" else test
            parts.append(part)
    return pd.concat(parts, ignore_index=True)


def test_generalisation_table():
    settings = ["baseline", "positive", "negative"]
    effects = {(a, b): (1.0 if a == b == "baseline" else 0.5 if a != b else 0.9) for a in settings for b in settings}
    id_steer = {"d1": 1.0, "d2": 2.0, "d3": 4.0}
    g = generalisation(generalisation_table(id_steer, effects))
    assert len(g) == 3 * 9
    assert list(g.columns[:4]) == ["dataset", "train_setting", "test_setting", "in_distribution"]
    assert (g.in_distribution == (g.train_setting == g.test_setting)).all()
    assert g.in_distribution.sum() == 9
    assert set(g.train_setting) == set(settings)  # None read as baseline
    for _, row in g.iterrows():
        assert row.id_steerability == pytest.approx(id_steer[row.dataset])
        assert row.steerability == pytest.approx(id_steer[row.dataset] * effects[(row.train_setting, row.test_setting)])
        assert row.relative_steerability == pytest.approx(effects[(row.train_setting, row.test_setting)])
        assert row.steerability_gap == pytest.approx(row.steerability - row.id_steerability)
        assert row.n == 10
    np.testing.assert_allclose(g.id_ood_correlation, 1.0)  # OOD is proportional to ID here
    per_ex = per_example_steerability(generalisation_table(id_steer, effects).fillna({"train_setting": "baseline"}),
                                      by=("dataset", "layer", "train_setting", "test_setting"))
    g2 = generalisation(per_ex, by=("dataset", "layer"))
    np.testing.assert_allclose(g2.steerability, g.steerability)


def test_generalisation_errors():
    t = generalisation_table({"d1": 1.0}, {("positive", "positive"): 1.0, ("positive", "negative"): 0.5})
    with pytest.raises(ValueError, match="baseline"):
        generalisation(t)
    assert len(generalisation(t, baseline="positive")) == 2
    with pytest.raises(ValueError, match="train_setting"):
        generalisation(t.drop(columns="train_setting"))
    two_layers = pd.concat([t, t.assign(layer=5)])
    with pytest.raises(ValueError, match="layer"):
        generalisation(two_layers, baseline="positive")
    assert len(generalisation(two_layers, baseline="positive", by=("dataset", "layer"))) == 4


def test_missing_columns_error_names_them():
    t = sweep({("d", 0): [1.0]}).drop(columns=["layer", "example"])
    with pytest.raises(ValueError, match=r"\['layer', 'example'\]"):
        per_example_steerability(t)
    with pytest.raises(ValueError, match="propensity"):
        per_example_steerability(sweep({("d", 0): [1.0]}).drop(columns=["propensity", "logp_negative"]))
    with pytest.raises(ValueError, match="slope"):
        dataset_steerability(pd.DataFrame({"dataset": ["d"], "layer": [0]}))


def test_single_multiplier_error():
    t = sweep({("d", 0): [1.0, 2.0]}, mults=np.array([1.0]))
    with pytest.raises(MetricsError, match="2 distinct multipliers"):
        per_example_steerability(t)


def test_nan_propensity_error():
    t = sweep({("d", 0): [1.0, 2.0]})
    t.loc[3, "propensity"] = np.nan
    with pytest.raises(ValueError, match="propensity.*NaN"):
        per_example_steerability(t)


def test_repeated_curves_error_suggests_columns():
    t = sweep({("d", 0): [1.0]})
    t = pd.concat([t.assign(test_setting="positive"), t.assign(test_setting="negative")])
    with pytest.raises(ValueError, match="test_setting"):
        per_example_steerability(t)
    assert len(per_example_steerability(t, by=("dataset", "layer", "test_setting"))) == 2


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    slopes = {(d, layer): rng.normal(mu * (layer + 1), 1.0, size=20)
              for d, mu in [("alpha", 0.5), ("beta", 1.0), ("gamma", -0.2)] for layer in (0, 1, 2)}
    t = sweep(slopes, noise=0.2, positive_letter={k: "AB" * 10 for k in slopes})
    pe = per_example_steerability(t)
    settings = ["baseline", "positive", "negative"]
    gen = generalisation(generalisation_table(
        {"d1": 1.0, "d2": 2.0, "d3": 3.5}, {(a, b): 1.0 if a == b else 0.6 for a in settings for b in settings}))
    paths = [
        plots.violin_steerability(pe[pe.layer == 1], tmp_path / "violin.png"),
        plots.propensity_curves(t[t.layer == 1], tmp_path / "curves.png"),
        plots.propensity_curves(t[t.layer == 1], tmp_path / "curves_chosen.png", examples=[0, 1]),
        plots.layer_sweep_plot(layer_sweep_summary(t), tmp_path / "sub" / "layers.png"),
        plots.id_ood_scatter(gen, tmp_path / "id_ood.png"),
    ]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="layer"):
        plots.violin_steerability(pe, tmp_path / "mixed.png")


def test_single_curve_plots_refuse_mixed_settings(tmp_path):
    t = sweep({("d", 0): [1.0, 2.0, -0.5]})
    mixed = pd.concat([t.assign(test_setting="PT_positive"), t.assign(test_setting="PT_negative")])
    with pytest.raises(MetricsError, match="test_setting.*filter"):
        plots.propensity_curves(mixed, tmp_path / "curves.png")
    pe = per_example_steerability(mixed, by=("dataset", "layer", "test_setting"))
    with pytest.raises(MetricsError, match="test_setting"):
        plots.violin_steerability(pe, tmp_path / "violin.png")
    two_models = pd.concat([t.assign(model="a"), t.assign(model="b")])
    with pytest.raises(MetricsError, match="model"):
        plots.propensity_curves(two_models, tmp_path / "curves.png")
    path = plots.propensity_curves(mixed[mixed.test_setting == "PT_positive"], tmp_path / "one.png", n_examples=3)
    with open(path, "rb") as f:
        assert len(f.read()) > 5000


def test_spurious_variance_plot_writes_a_png(tmp_path):
    import os

    from steerjax.studies.reliability import plots, spurious_variance

    rng = np.random.default_rng(0)
    rows = []
    for d, effect in (("letters", 1.0), ("noise", 0.0)):
        for i in range(24):
            letter = "AB"[i % 2]
            rows.append({"dataset": d, "layer": 3, "example": i, "positive_letter": letter,
                         "positive_is_yes": bool(i // 2 % 2),
                         "slope": effect * (1.0 if letter == "A" else -1.0) + 0.1 * rng.normal()})
    spurious = spurious_variance(pd.DataFrame(rows))
    assert spurious.set_index("dataset").loc["letters", "r2_positive_letter"] > 0.9
    path = plots.spurious_variance_plot(spurious, tmp_path / "spurious.png")
    assert os.path.getsize(path) > 5000
    with pytest.raises(MetricsError, match="several rows per dataset"):
        plots.spurious_variance_plot(pd.concat([spurious, spurious]), tmp_path / "x.png")
