"""Generalisation and reliability analyses (steerjax.studies.reliability.analyses) on constructed tables whose
answers are computed by hand.

The table: every dataset x train setting (the five persona settings and "mean") x test setting
(the five persona settings) x 3 examples x 7 multipliers, with propensity = slope_i * m + b_i:

- slope_i = BASE[d] * k(train, test) + spread(d, train, test) * DEV[i], DEV = (-1, 0, 1), so a
  cell's steerability (mean slope) is BASE[d] * k and its variance (ddof 1) spread ** 2;
- b_i = OFFSET[test] * C[i], C = (1, -1, 2): the unsteered propensity. Between test settings s and
  v the per-example gap mean_i |b_i(s) - b_i(v)| = |OFFSET[s] - OFFSET[v]| * mean|C| = 4/3 |dOFFSET|
  and the gap of the means is |dOFFSET| * |mean C| = 2/3 |dOFFSET|;
- example numbers are rotated per test setting (example e is data row (e + j) % 3 in the j-th
  setting), and ``index`` names the data row, so pairing by ``example`` would be wrong.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from steerjax.studies.reliability import (
    ID_SHIFT,
    PERSONA_SETTINGS,
    SHIFTS,
    TRAIN_SETTINGS,
    MetricsError,
    bootstrap_ci,
    compare_models,
    correlation,
    dataset_steerability,
    generalisation,
    generalisation_matrix,
    id_ood_shifts,
    mean_variance,
    per_example_steerability,
    plots,
    relative_steerability,
    relative_steerability_correlation,
    shift_correlations,
)

MULTS = np.linspace(-1.5, 1.5, 7)
C = np.array([1.0, -1.0, 2.0])
DEV = np.array([-1.0, 0.0, 1.0])
OFFSET = {"baseline": 0.0, "SYS_positive": 1.0, "PT_positive": 2.0, "SYS_negative": -1.0, "PT_negative": -3.0}
K = {"BASE -> USER_NEG": 0.5, "BASE -> USER_POS": 0.8, "SYS_POS -> USER_NEG": -0.5, "SYS_NEG -> USER_POS": 0.3}
BASE = {"d1": 0.2, "d2": 1.0, "d3": 2.0, "d4": 3.0}
SPREAD = {"d1": 0.1, "d2": 0.2, "d3": 0.4, "d4": 0.8}
CELLS = {cell: label for label, cell in SHIFTS.items()}
SETTING_KEYS = ("dataset", "layer", "train_setting", "test_setting")


def k(train, test):
    if train == test:
        return 1.0
    if (train, test) in CELLS and CELLS[(train, test)] in K:
        return K[CELLS[(train, test)]]
    return 0.9 if train == "mean" else 0.7


def persona_table(base=BASE, *, model=None, spread=lambda d, train, test: SPREAD.get(d, 0.3), mults=MULTS):
    parts = []
    for d in base:
        for train in TRAIN_SETTINGS:
            for j, test in enumerate(PERSONA_SETTINGS):
                slopes = base[d] * k(train, test) + spread(d, train, test) * DEV
                ex = np.repeat(np.arange(3), len(mults))
                m = np.tile(mults, 3)
                row = (ex + j) % 3
                parts.append(pd.DataFrame({
                    "dataset": d, "layer": 3, "example": ex, "index": row, "multiplier": m,
                    "propensity": slopes[row] * m + OFFSET[test] * C[row], "train_setting": train,
                    "test_setting": test}))
    t = pd.concat(parts, ignore_index=True)
    if model is not None:
        t["model"] = model
    return t


@pytest.fixture(scope="module")
def table():
    return persona_table()


def test_settings_vocabulary():
    assert PERSONA_SETTINGS == ("baseline", "SYS_positive", "PT_positive", "SYS_negative", "PT_negative")
    assert TRAIN_SETTINGS == (*PERSONA_SETTINGS, "mean")
    assert list(SHIFTS) == ["BASE -> BASE", "BASE -> USER_NEG", "BASE -> USER_POS", "SYS_POS -> USER_NEG",
                            "SYS_NEG -> USER_POS"]
    assert SHIFTS["SYS_NEG -> USER_POS"] == ("SYS_negative", "PT_positive")
    assert SHIFTS[ID_SHIFT] == ("baseline", "baseline")
    with pytest.raises(TypeError):
        SHIFTS["new"] = ("a", "b")  # read-only


def test_correlation_helper():
    n, r, rho = correlation([1, 2, 3, 4], [1, 4, 9, 100])
    assert n == 4 and rho == pytest.approx(1.0) and r == pytest.approx(stats.pearsonr([1, 2, 3, 4], [1, 4, 9, 100])[0])
    x, y = [1, 2, 2, 3, 5], [3, 1, 2, 2, 0]
    assert correlation(x, y)[2] == pytest.approx(stats.spearmanr(x, y)[0])  # ties: average ranks
    assert correlation([1, 2, np.nan, 3], [1, 2, 5, np.inf])[0] == 2
    assert np.isnan(correlation([1, 2], [1, 2])[1])  # fewer than 3 pairs
    assert np.isnan(correlation([1, 2, 3], [5, 5, 5])[2])  # constant side
    with pytest.raises(MetricsError, match="length"):
        correlation([1, 2], [1, 2, 3])


def test_id_ood_shifts_known_values(table):
    s = id_ood_shifts(table)
    assert list(s.columns) == ["dataset", "shift", "train_setting", "test_setting", "n_id", "id_steerability",
                               "id_variance", "n_ood", "ood_steerability", "ood_variance", "steerability_gap"]
    assert list(pd.unique(s["shift"])) == [label for label in SHIFTS if label != ID_SHIFT]
    assert len(s) == 4 * 4
    for row in s.itertuples():
        assert (row.train_setting, row.test_setting) == SHIFTS[row.shift]
        assert row.n_id == row.n_ood == 3
        assert row.id_steerability == pytest.approx(BASE[row.dataset])
        assert row.ood_steerability == pytest.approx(BASE[row.dataset] * K[row.shift])
        assert row.id_variance == pytest.approx(SPREAD[row.dataset] ** 2)
        assert row.ood_variance == pytest.approx(SPREAD[row.dataset] ** 2)
        assert row.steerability_gap == pytest.approx(BASE[row.dataset] * (K[row.shift] - 1.0))
    pe = per_example_steerability(table, by=SETTING_KEYS)
    pd.testing.assert_frame_equal(id_ood_shifts(pe), s)  # per-example input gives the same
    none_base = table.assign(train_setting=table.train_setting.where(table.train_setting != "baseline", None))
    np.testing.assert_allclose(id_ood_shifts(none_base).ood_steerability, s.ood_steerability)


def test_id_ood_shifts_per_model_and_missing_cell(table):
    two = pd.concat([table.assign(model="A"), persona_table({"d1": 1.0, "d2": 5.0}, model="B")])
    s = id_ood_shifts(two)
    assert list(s.columns[:2]) == ["model", "dataset"]
    assert len(s) == 4 * (4 + 2)
    b = s[(s.model == "B") & (s.dataset == "d2") & (s["shift"] == "BASE -> USER_POS")].iloc[0]
    assert b.ood_steerability == pytest.approx(5.0 * 0.8)
    partial = table[~((table.dataset == "d2") & (table.train_setting == "SYS_positive"))]
    row = id_ood_shifts(partial).set_index(["dataset", "shift"]).loc[("d2", "SYS_POS -> USER_NEG")]
    assert row.n_ood == 0 and np.isnan(row.ood_steerability) and row.id_steerability == pytest.approx(1.0)


def test_shift_correlations_known_values():
    reversed_spread = {"d1": 0.8, "d2": 0.4, "d3": 0.2, "d4": 0.1}

    def spread(d, train, test):
        return reversed_spread[d] if (train, test) == SHIFTS["SYS_NEG -> USER_POS"] else SPREAD[d]

    t = persona_table(spread=spread)
    c = shift_correlations(t).set_index("shift")
    assert list(c.index) == [label for label in SHIFTS if label != ID_SHIFT]
    assert (c.n_datasets == 4).all()
    np.testing.assert_allclose(c.pearson, [1.0, 1.0, -1.0, 1.0])  # OOD = K * ID; K < 0 for SYS_POS -> USER_NEG
    np.testing.assert_allclose(c.spearman, [1.0, 1.0, -1.0, 1.0])
    np.testing.assert_allclose(c.variance_pearson[:3], 1.0)
    ids = np.array([SPREAD[d] ** 2 for d in BASE])
    oods = np.array([reversed_spread[d] ** 2 for d in BASE])
    assert c.loc["SYS_NEG -> USER_POS", "variance_pearson"] == pytest.approx(np.corrcoef(ids, oods)[0, 1])
    assert c.loc["SYS_NEG -> USER_POS", "variance_spearman"] == pytest.approx(-1.0)
    pd.testing.assert_frame_equal(shift_correlations(id_ood_shifts(t)), shift_correlations(t))
    two = pd.concat([t.assign(model="A"), t.assign(model="B")])
    assert list(shift_correlations(two).columns[:2]) == ["model", "shift"]
    assert len(shift_correlations(two)) == 8


def test_shift_errors(table):
    with pytest.raises(MetricsError, match="train_setting"):
        id_ood_shifts(table.drop(columns="train_setting"))
    old = table[table.train_setting.isin(["baseline", "PT_positive"]) & table.test_setting.isin(["baseline",
                                                                                                 "PT_positive"])]
    with pytest.raises(MetricsError, match="shifts="):
        id_ood_shifts(old)
    custom = {"ID": ("baseline", "baseline"), "POS": ("baseline", "PT_positive")}
    s = id_ood_shifts(old, shifts=custom, id_shift="ID")
    np.testing.assert_allclose(s.ood_steerability, [BASE[d] * 0.8 for d in sorted(BASE)])
    with pytest.raises(MetricsError, match="id_shift"):
        id_ood_shifts(table, id_shift="nope")
    with pytest.raises(MetricsError, match="across"):
        shift_correlations(table, across="model")
    with pytest.raises(MetricsError, match="layer"):  # two layers need `by` to keep them apart
        id_ood_shifts(pd.concat([table, table.assign(layer=4)]))
    assert len(id_ood_shifts(pd.concat([table, table.assign(layer=4)]), by=("dataset", "layer"))) == 32


def test_relative_steerability_known_values(table):
    rel = relative_steerability(table)
    assert len(rel) == 4 * 5 * 5  # the mean vector is excluded
    assert "mean" not in set(rel.train_setting)
    for row in rel.itertuples():
        v, s = row.train_setting, row.test_setting
        gap = abs(OFFSET[s] - OFFSET[v])
        assert row.steerability == pytest.approx(BASE[row.dataset] * k(v, s))
        assert row.self_steerability == pytest.approx(BASE[row.dataset])
        assert row.relative_steerability == pytest.approx(k(v, s))
        assert row.relative_steerability_capped == pytest.approx(k(v, s))
        assert row.unsteered_propensity_gap == pytest.approx(gap * 4 / 3)
        assert row.unsteered_gap_of_means == pytest.approx(gap * 2 / 3)
        assert row.unsteered_propensity_test == pytest.approx(OFFSET[s] * 2 / 3)
        assert row.unsteered_propensity_train == pytest.approx(OFFSET[v] * 2 / 3)
        assert row.n_paired == 3
        assert row.kept == (row.dataset != "d1")  # self-steerability 0.2 <= 0.25
    corr = relative_steerability_correlation(rel).iloc[0]
    kept = rel[rel.kept]
    assert (corr.n, corr.n_filtered) == (75, 25)
    assert corr.spearman == pytest.approx(stats.spearmanr(kept.unsteered_propensity_gap, kept.relative_steerability)[0])
    assert corr.pearson == pytest.approx(stats.pearsonr(kept.unsteered_propensity_gap, kept.relative_steerability)[0])
    lenient = relative_steerability(table, min_self_steerability=0.1)
    assert lenient.kept.all()
    by_example = relative_steerability(table, row_key="example").set_index(["dataset", "train_setting",
                                                                            "test_setting"])
    wrong = by_example.loc[("d2", "SYS_positive", "PT_positive"), "unsteered_propensity_gap"]
    assert wrong != pytest.approx(4 / 3)  # the rotated example numbers pair different data rows
    assert relative_steerability(table.drop(columns="index")).unsteered_propensity_gap.tolist() == \
        by_example.unsteered_propensity_gap.tolist()  # without `index`, `example` is the default key


def test_relative_steerability_negative_self_and_models():
    t = persona_table({"dn": -1.0})
    rel = relative_steerability(t).set_index(["train_setting", "test_setting"])
    assert rel.loc[("baseline", "PT_positive"), "relative_steerability"] == pytest.approx(-0.8)  # / |self|
    assert rel.loc[("baseline", "PT_positive"), "relative_steerability_capped"] == pytest.approx(0.8)
    assert not rel.kept.any()
    assert relative_steerability_correlation(rel.reset_index()).n_filtered.iloc[0] == 25
    two = pd.concat([persona_table(model="A"), persona_table(model="B")])
    rel2 = relative_steerability(two)
    assert list(rel2.columns[:2]) == ["model", "dataset"]
    c = relative_steerability_correlation(rel2)
    assert list(c.model) == ["A", "B"] and (c.n == 75).all()


def test_relative_steerability_errors(table):
    no_zero = persona_table(mults=np.array([-1.0, -0.5, 0.5, 1.0]))
    with pytest.raises(MetricsError, match="multiplier 0"):
        relative_steerability(no_zero)
    one_missing = table[~((table.test_setting == "PT_negative") & (table.multiplier == 0))]
    with pytest.raises(MetricsError, match="PT_negative"):
        relative_steerability(one_missing)
    with pytest.raises(MetricsError, match="test_setting"):
        relative_steerability(table.drop(columns="test_setting"))
    with pytest.raises(MetricsError, match="row_key"):
        relative_steerability(table, row_key="nope")
    with pytest.raises(MetricsError, match="NaN"):
        relative_steerability(table.assign(propensity=table.propensity.where(table.index != 5)))


def test_mean_variance_known_values(table):
    mv = mean_variance(table)
    assert list(mv.columns) == ["dataset", "train_setting", "test_setting", "shift", "n", "steerability", "variance",
                                "n_datasets", "mean_variance_pearson", "mean_variance_spearman"]
    assert len(mv) == 4 * 6 * 5
    var = np.array([SPREAD[d] ** 2 for d in BASE])
    for row in mv.itertuples():
        kk = k(row.train_setting, row.test_setting)
        assert row.steerability == pytest.approx(BASE[row.dataset] * kk)
        assert row.variance == pytest.approx(SPREAD[row.dataset] ** 2)
        assert row.n_datasets == 4
        assert row.mean_variance_spearman == pytest.approx(np.sign(kk))
        assert row.mean_variance_pearson == pytest.approx(np.sign(kk) * np.corrcoef(list(BASE.values()), var)[0, 1])
        label = CELLS.get((row.train_setting, row.test_setting))
        assert (row.shift == label) if label else pd.isna(row.shift)
    plain = per_example_steerability(table[(table.train_setting == "baseline") & (table.test_setting == "baseline")])
    mv1 = mean_variance(plain.drop(columns=["train_setting", "test_setting"]))
    assert list(mv1.dataset) == sorted(BASE) and "shift" not in mv1.columns
    np.testing.assert_allclose(mv1.variance, var)
    with pytest.raises(MetricsError, match="across"):
        mean_variance(table, across="layer")


def test_compare_models_known_values():
    three = pd.concat([persona_table(model="A"), persona_table({d: 2 * v + 1 for d, v in BASE.items()}, model="B"),
                       persona_table({d: -v for d, v in BASE.items()}, model="C")])
    comp = compare_models(three, shift="BASE -> BASE")
    t = comp.table
    assert list(t.columns) == ["dataset", "steerability[A]", "steerability[B]", "steerability[C]", "variance[A]",
                               "variance[B]", "variance[C]", "n[A]", "n[B]", "n[C]"]
    np.testing.assert_allclose(t["steerability[B]"], [2 * BASE[d] + 1 for d in t.dataset])
    np.testing.assert_allclose(t["variance[C]"], [SPREAD[d] ** 2 for d in t.dataset])
    c = comp.correlations.set_index(["model_a", "model_b", "statistic"])
    assert list(c.index.get_level_values(0)) == ["A", "A", "A", "A", "B", "B"]
    assert c.loc[("A", "B", "steerability"), ["pearson", "spearman"]].tolist() == pytest.approx([1.0, 1.0])
    assert c.loc[("A", "C", "steerability"), ["pearson", "spearman"]].tolist() == pytest.approx([-1.0, -1.0])
    assert c.loc[("A", "C", "variance"), "pearson"] == pytest.approx(1.0)
    assert (comp.correlations.n_datasets == 4).all()
    ood = compare_models(three, shift="SYS_POS -> USER_NEG").table
    np.testing.assert_allclose(ood["steerability[A]"], [-0.5 * BASE[d] for d in ood.dataset])
    assert len(compare_models(three, shift=("mean", "baseline")).table) == 4
    every = compare_models(three)
    assert list(every.table.columns[:3]) == ["dataset", "train_setting", "test_setting"]
    assert len(every.table) == 4 * 30 and len(every.correlations) == 30 * 3 * 2
    partial = pd.concat([persona_table(model="A"), persona_table({"d1": 1.0, "d9": 2.0}, model="B")])
    p = compare_models(partial, shift="BASE -> BASE")
    assert p.table["steerability[B]"].isna().sum() == 3 and p.table["steerability[A]"].isna().sum() == 1
    assert p.correlations.n_datasets.iloc[0] == 1 and np.isnan(p.correlations.pearson.iloc[0])


def test_compare_models_errors(table):
    with pytest.raises(MetricsError, match="two models"):
        compare_models(table.assign(model="A"))
    with pytest.raises(MetricsError, match="model"):
        compare_models(table)
    disjoint = pd.concat([persona_table({"d1": 1.0}, model="A"), persona_table({"d2": 1.0}, model="B")])
    with pytest.raises(MetricsError, match="shared"):
        compare_models(disjoint, shift="BASE -> BASE")
    with pytest.raises(MetricsError, match="shift"):
        compare_models(pd.concat([table.assign(model="A"), table.assign(model="B")]), shift="BASE -> NOWHERE")
    with pytest.raises(MetricsError, match="no rows"):
        compare_models(pd.concat([table.assign(model="A"), table.assign(model="B")]), shift=("x", "y"))


def per_example(slopes: dict) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": d, "layer": 0, "example": i, "slope": s}
                         for d, values in slopes.items() for i, s in enumerate(values)])


def test_bootstrap_ci_known_cases():
    pe = per_example({"two": [-1.0, 1.0], "flat": [0.7] * 5, "zeros": [0.0, 0.0, 0.0]})
    ci = bootstrap_ci(pe).set_index("dataset")
    # two examples: resampled means are -1, 0 or 1 (p = 1/4, 1/2, 1/4), anti fractions 0, 1/2 or 1
    assert ci.loc["two", ["steerability_lo", "steerability_hi"]].tolist() == [-1.0, 1.0]
    assert ci.loc["two", ["anti_steerable_fraction_lo", "anti_steerable_fraction_hi"]].tolist() == [0.0, 1.0]
    assert ci.loc["flat", ["steerability_lo", "steerability", "steerability_hi"]].tolist() == pytest.approx([0.7] * 3)
    assert ci.loc["zeros", "anti_steerable_fraction_hi"] == 0.0  # a zero slope is not anti-steerable
    assert (ci.ci_level == 0.95).all()
    summary = dataset_steerability(pe).set_index("dataset")
    pd.testing.assert_frame_equal(ci[summary.columns], summary)  # the summary columns are unchanged


def test_bootstrap_ci_normal_width_and_reproducibility():
    rng = np.random.default_rng(5)
    slopes = rng.normal(1.0, 1.0, size=400)
    pe = per_example({"a": slopes, "b": slopes - 1.0})
    ci = bootstrap_ci(pe, n_boot=2000, seed=3).set_index("dataset")
    se = slopes.std(ddof=1) / np.sqrt(len(slopes))
    a = ci.loc["a"]
    assert a.steerability_lo < slopes.mean() < a.steerability_hi
    assert a.steerability_hi - a.steerability_lo == pytest.approx(2 * 1.96 * se, rel=0.1)
    frac = (slopes < 0).mean()
    fse = np.sqrt(frac * (1 - frac) / len(slopes))
    assert a.anti_steerable_fraction_hi - a.anti_steerable_fraction_lo == pytest.approx(2 * 1.96 * fse, rel=0.15)
    again = bootstrap_ci(pe, n_boot=2000, seed=3)
    pd.testing.assert_frame_equal(again.set_index("dataset"), ci)
    other = bootstrap_ci(pe, n_boot=2000, seed=4).set_index("dataset")
    assert other.loc["a", "steerability_lo"] != a.steerability_lo
    only = bootstrap_ci(pe, stat="steerability", n_boot=2000, seed=3).set_index("dataset")
    assert "anti_steerable_fraction_lo" not in only.columns
    assert only.loc["a", "steerability_lo"] == a.steerability_lo  # same resamples whatever is asked
    narrow = bootstrap_ci(pe, n_boot=2000, seed=3, level=0.5).set_index("dataset")
    assert narrow.loc["a", "steerability_hi"] - narrow.loc["a", "steerability_lo"] < 0.5 * (
        a.steerability_hi - a.steerability_lo)


def test_bootstrap_ci_from_sweep_and_errors(table):
    base = table[(table.train_setting == "baseline") & (table.test_setting == "baseline")]
    ci = bootstrap_ci(base, by="dataset")
    assert list(ci.dataset) == sorted(BASE)
    np.testing.assert_allclose(ci.steerability, list(BASE.values()))
    assert (ci.steerability_lo <= ci.steerability).all() and (ci.steerability <= ci.steerability_hi).all()
    pe = per_example({"a": [1.0, 2.0]})
    for kwargs, match in [({"stat": "median"}, "stat"), ({"n_boot": 0}, "n_boot"), ({"level": 1.5}, "level")]:
        with pytest.raises(MetricsError, match=match):
            bootstrap_ci(pe, **kwargs)
    with pytest.raises(MetricsError, match="layer"):
        bootstrap_ci(pe.drop(columns="layer"))


def test_generalisation_matrix(table):
    gen = generalisation(table, by=("dataset",))
    m = generalisation_matrix(gen, value="relative_steerability")
    assert list(m.index) == list(TRAIN_SETTINGS) and list(m.columns) == list(PERSONA_SETTINGS)
    for train in TRAIN_SETTINGS:
        for test in PERSONA_SETTINGS:
            assert m.loc[train, test] == pytest.approx(k(train, test))
    s = generalisation_matrix(gen)
    assert s.loc["baseline", "PT_negative"] == pytest.approx(np.mean(list(BASE.values())) * 0.5)
    with pytest.raises(MetricsError, match="nope"):
        generalisation_matrix(gen, value="nope")


def assert_png(path, min_bytes=5000):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > min_bytes, f"{path}: only {len(data)} bytes"


def test_plots_write_pngs(tmp_path, table):
    three = pd.concat([persona_table(model="A"), persona_table({d: 2 * v + 1 for d, v in BASE.items()}, model="B"),
                       persona_table({d: -v for d, v in BASE.items()}, model="C")])
    paths = [
        plots.shift_scatter(id_ood_shifts(table), tmp_path / "shift.png"),
        plots.shift_scatter(id_ood_shifts(three), tmp_path / "shift_models.png", variance=False),
        plots.relative_steerability_plot(relative_steerability(table), tmp_path / "relative.png"),
    ]
    for p in paths:
        assert_png(p)
    # no cell passes the self-steerability cut (a small model): the left-out points are still drawn
    rel = relative_steerability(table, min_self_steerability=1e9)
    assert not rel.kept.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_png(plots.relative_steerability_plot(rel, tmp_path / "none_kept.png"))


def test_more_plots_write_pngs(tmp_path, table):
    three = pd.concat([persona_table(model="A"), persona_table({d: 2 * v + 1 for d, v in BASE.items()}, model="B"),
                       persona_table({d: -v for d, v in BASE.items()}, model="C")])
    pe = per_example_steerability(table, by=SETTING_KEYS)
    base = pe[(pe.train_setting == "baseline") & (pe.test_setting == "baseline")]
    paths = [
        plots.mean_variance_plot(mean_variance(table), tmp_path / "mean_variance.png"),
        plots.mean_variance_plot(mean_variance(base.drop(columns=["train_setting", "test_setting"])),
                                 tmp_path / "mean_variance_plain.png"),
        plots.model_comparison_plot(compare_models(three, shift="BASE -> BASE"), tmp_path / "models.png"),
        plots.model_comparison_plot(compare_models(three), tmp_path / "models_all.png", statistic="variance"),
        plots.steerability_ci_plot(bootstrap_ci(base, n_boot=200), tmp_path / "ci.png"),
        plots.steerability_ci_plot(bootstrap_ci(base, stat="steerability", n_boot=200), tmp_path / "ci_only.png"),
        plots.generalisation_heatmap(generalisation(table), tmp_path / "matrix.png"),
    ]
    for p in paths:
        assert_png(p)


def test_plot_errors(tmp_path, table):
    two = pd.concat([table.assign(model="A"), table.assign(model="B")])
    with pytest.raises(MetricsError, match="model"):
        plots.relative_steerability_plot(relative_steerability(two), tmp_path / "x.png")
    with pytest.raises(MetricsError, match="statistic"):
        plots.model_comparison_plot(compare_models(two, shift="BASE -> BASE"), tmp_path / "x.png", statistic="mean")
    pe = per_example_steerability(table, by=SETTING_KEYS)
    with pytest.raises(MetricsError, match="one setting"):
        plots.steerability_ci_plot(bootstrap_ci(pe, by=SETTING_KEYS, n_boot=50), tmp_path / "x.png")
    with pytest.raises(MetricsError, match="layer"):
        plots.shift_scatter(id_ood_shifts(pd.concat([table, table.assign(layer=4)]), by=("dataset", "layer")),
                            tmp_path / "x.png")
