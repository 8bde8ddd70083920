"""The reliability study (Tan et al. 2024) as a library object: Config and its presets, check()
before any model loads (and through the command line: exit 2, an error line, nothing written),
the mean-of-settings vector and its rescaling against numbers built by hand, Result's round trip
and summary keys, and the figures' labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import steerjax
from steerjax.errors import DataError, LayerIndexError, RunConfigError, SteeringError, SteerjaxError
from steerjax.studies.reliability import PRESETS, Config, Result, check, setting_vectors
from steerjax.studies.reliability.config import SETTINGS, VECTORS, propensity_label
from steerjax.studies.reliability.study import TABLES, analyse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_DATASETS = ("corrigible-neutral-HHH", "believes-abortion-should-be-illegal")


# ----------------------------------------------------------------------------- Config


def test_presets_and_overrides():
    assert set(PRESETS) >= {"smoke", "quick", "full"}
    full = Config.preset("full")
    assert full == dataclass_replace(Config(), preset_name="full")  # the defaults are the paper's protocol
    smoke = Config.preset("smoke", multipliers=[1, 0, -1, 0], datasets=["openness"], layer=None)
    assert smoke.multipliers == (-1.0, 0.0, 1.0) and smoke.datasets == ("openness",)
    assert smoke.n_train == 8 and smoke.preset_name == "smoke"
    with pytest.raises(SteerjaxError, match="unknown preset"):
        Config.preset("tiny")
    with pytest.raises(SteerjaxError, match="unknown option"):
        Config.preset("smoke", n_examples=3)


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_run_config_is_the_experiments_config_json():
    """The keys of the config.json the experiment wrote before the study existed, plus its kind."""
    cfg = Config.preset("smoke").run_config("/m")
    assert cfg == {
        "kind": "reliability", "datasets": list(SMOKE_DATASETS), "dtype": "float32", "format": "repepo", "layer": None,
        "layer_n_test": 6, "layer_n_train": 8, "layer_sweep_datasets": ["corrigible-neutral-HHH"],
        "layer_sweep_splits": {"test": "20%:30%", "train": "0%:10%"}, "layer_sweep_stride": 10, "model": ["/m"],
        "multipliers": [-1.0, 0.0, 1.0], "n_boot": 200, "n_test": 6, "n_train": 8, "preset": "smoke", "seed": 0,
        "split_compat": None, "splits": {"test": "50%:100%", "train": "0%:50%"}}
    assert Config.preset("smoke", split_compat="repepo").run_config(["a", "b"])["splits"] == {
        "train": "0:50%", "test": "50:100%"}
    assert Config.from_run_config(json.loads(json.dumps(cfg))) == Config.preset("smoke")


def test_choice_lists_are_the_librarys():
    from steerjax.cli import sweep as cli_sweep
    from steerjax.data import formats
    from steerjax.steering import OPERATORS
    from steerjax.studies.reliability import config
    from steerjax.sweeps import POSITIONS
    from steerjax.vectors import METHODS

    assert config.FORMATS == tuple(formats.FORMATS) and config.SETTINGS == formats.SETTINGS
    assert config.POSITIONS is POSITIONS and config.OPERATORS is OPERATORS and config.METHODS is METHODS
    parser = __import__("steerjax.cli", fromlist=["build_parser"]).build_parser()
    sweep = parser._subparsers._group_actions[0].choices["sweep"]
    by_dest = {a.dest: a for a in sweep._actions}
    assert tuple(by_dest["positions"].choices) == POSITIONS and tuple(by_dest["operator"].choices) == OPERATORS
    assert tuple(by_dest["format"].choices) == config.FORMATS and cli_sweep.SWEEP_TABLES[-1] == "cli.json"


# ----------------------------------------------------------------------------- check()


@pytest.mark.requires_data
@pytest.mark.parametrize("options, extra, error, match", [
    (dict(datasets=["corrigible-neutral-HHHH"]), {}, DataError, "corrigible-neutral-HHH"),  # close match
    (dict(datasets=["truthfulqa"]), {}, DataError, "truthfulqa"),
    (dict(datasets=["self-awareness-web-gpt@human"]), {}, DataError, "no persona prompt"),
    (dict(datasets=[]), {}, DataError, "--datasets is empty"),
    (dict(n_train=0), {}, SteerjaxError, "n_train must be a positive integer"),  # an empty split
    (dict(layer_n_test=0), {}, SteerjaxError, "layer_n_test must be a positive integer"),
    (dict(n_boot=0), {}, SteerjaxError, "n_boot must be a positive integer"),  # a bad budget
    (dict(multipliers=[1.0, 2.0]), {}, SteerjaxError, "--multipliers must include 0"),
    (dict(multipliers=[0.0]), {}, SteerjaxError, "at least two"),
    (dict(multipliers=[0.0, float("nan")]), {}, SteerjaxError, "finite"),
    (dict(format="llama-chat"), {}, DataError, "--format: unknown format 'llama-chat'"),
    (dict(split_compat="numpy"), {}, DataError, "--split-compat: unknown 'numpy'"),
    (dict(layer=2), {"models": "chat"}, LayerIndexError, "--layer 2 is out of range: .* has 2 blocks"),
    (dict(layer=-1), {"models": "chat"}, LayerIndexError, "--layer -1 is out of range"),
    (dict(layer=7), {"model_config": "chat"}, LayerIndexError, "--layer 7 is out of range: the model has 2 blocks"),
    (dict(), {"models": ["m", "m"]}, SteerjaxError, "--model 'm' is given twice"),
    (dict(), {"models": ["/a/m", "/b/m"]}, SteerjaxError, "share the directory name"),
    (dict(), {"models": ["/nonexistent/model"]}, SteerjaxError, "nonexistent"),
])
def test_check_refuses_bad_input_before_any_model_loads(chat_model_dir, no_model, tmp_path, options, extra, error,
                                                        match):
    names = {"datasets": "--datasets", "format": "--format", "split_compat": "--split-compat", "layer": "--layer",
             "multipliers": "--multipliers", "model": "--model", "out": "--out"}
    if extra.get("models") == "chat":
        extra = {"models": [chat_model_dir]}
    if extra.get("model_config") == "chat":
        extra = {"model_config": steerjax.model.load_config(chat_model_dir)}
    config = Config.preset("smoke", **options)
    with pytest.raises(error, match=match):
        check(config, names=names, out=str(tmp_path / "run"), **extra)
    assert not (tmp_path / "run").exists()


@pytest.mark.requires_data
def test_check_names_fields_for_python_callers_and_passes_good_input(chat_model_dir, no_model, tmp_path):
    with pytest.raises(DataError, match="^format: unknown format"):
        check(Config.preset("smoke", format="qwen"))
    check(Config.preset("smoke"), models=[chat_model_dir], out=str(tmp_path / "run"))  # nothing raised
    check(Config.preset("smoke", layer=1), models=[chat_model_dir])
    assert not (tmp_path / "run").exists()


@pytest.mark.requires_data
def test_check_refuses_a_directory_of_another_run(chat_model_dir, no_model, tmp_path):
    from steerjax.runs import claim

    out = str(tmp_path / "run")
    claim(out, Config.preset("smoke").run_config([chat_model_dir]))
    check(Config.preset("smoke"), models=[chat_model_dir], out=out)  # the same run: resumed
    with pytest.raises(RunConfigError, match="differs in: seed"):
        check(Config.preset("smoke", seed=1), models=[chat_model_dir], out=out, names={"out": "--out"})
    legacy = tmp_path / "legacy"  # made before config.json named its kind: resumed all the same
    old = Config.preset("smoke").run_config([chat_model_dir])
    old.pop("kind")
    claim(str(legacy), old)
    check(Config.preset("smoke"), models=[chat_model_dir], out=str(legacy))
    assert Config.preset("smoke").claimable_config(str(legacy), [chat_model_dir]) == old
    with pytest.raises(RunConfigError, match="differs in: n_boot"):
        check(Config.preset("smoke", n_boot=5), models=[chat_model_dir], out=str(legacy))
    sweep_dir = tmp_path / "sweep"
    claim(str(sweep_dir), {"kind": "sweep", "model": "x"})
    (sweep_dir / "manifest.jsonl").write_text("")
    with pytest.raises(RunConfigError, match="holds a sweep run, not a reliability run"):
        check(Config.preset("smoke"), out=str(sweep_dir))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(SteerjaxError, match="holds no steerjax run"):
        check(Config.preset("smoke"), out=str(tmp_path / "mine"))


@pytest.mark.requires_data
@pytest.mark.parametrize("argv, message", [
    (["--layer", "9"], "--layer 9 is out of range"),
])
def test_experiment_command_exits_2_with_an_error_line_and_writes_nothing(chat_model_dir, tmp_path, argv, message):
    """The experiment as a command (``guarded``: the command line's error handling; the other bad
    inputs go through the same ``check`` in-process, below)."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "steering_reliability", "run.py"),
                           "--preset", "smoke", "--model", chat_model_dir, "--out", str(out), *argv],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.requires_data
@pytest.mark.parametrize("argv, message", [
    (["--datasets", "corrigible-neutral-HHHH"], "unknown dataset 'corrigible-neutral-HHHH'"),
    (["--datasets", "truthfulqa"], "'truthfulqa' is one of Tan et al.'s 40 but is not available"),
    (["--multipliers", "0"], "--multipliers needs at least two different values"),
    (["--layer", "2"], "--layer 2 is out of range"),
    (["--format", "qwen"], "argument --format: invalid choice: 'qwen'"),
    (["--multipliers", "0", "nan"], "argument --multipliers: must be a finite number"),
])
def test_reliability_command_exits_2_before_the_model_loads(chat_model_dir, no_model, tmp_path, capsys, argv,
                                                            message):
    from steerjax.cli import main

    out = tmp_path / "run"
    assert main(["reliability", chat_model_dir, "--preset", "smoke", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err and "Traceback" not in err, err
    assert not out.exists()
    assert main(["reliability", chat_model_dir, chat_model_dir, "--preset", "smoke", "--out", str(out)]) == 2
    assert "MODEL '" in capsys.readouterr().err and not out.exists()  # the same model twice, named as typed


@pytest.mark.requires_data
def test_sweep_command_refuses_a_vector_of_the_wrong_width(chat_model_dir, no_model, tmp_path, capsys):
    from steerjax.cli import main
    from steerjax.vectors import save_vectors

    wide = str(tmp_path / "wide.safetensors")
    save_vectors(wide, {0: np.ones(576, np.float32)})
    out = tmp_path / "r"
    assert main(["sweep", chat_model_dir, "--dataset", "corrigible-neutral-HHH", "--vector", wide,
                 "--max-examples", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "hidden size is 128" in err
    assert not out.exists()


# ----------------------------------------------------------------------------- the mean-of-settings vector


def hand_vectors():
    return {"baseline": np.array([3.0, 4.0], np.float32), "SYS_positive": np.array([6.0, 8.0], np.float32),
            "PT_positive": np.array([0.0, 1.0], np.float32), "SYS_negative": np.array([1.0, 0.0], np.float32),
            "PT_negative": np.array([0.0, -2.0], np.float32)}


def test_setting_vectors_mean_then_rescale_to_the_baseline_norm():
    """repepo: the mean of the five trained vectors, then every vector to |baseline| = 5."""
    raw = hand_vectors()
    plain = setting_vectors(raw, rescale_to_baseline=False)
    assert list(plain) == list(VECTORS)
    np.testing.assert_allclose(plain["mean"], [(3 + 6 + 0 + 1 + 0) / 5, (4 + 8 + 1 + 0 - 2) / 5], rtol=1e-6)
    for s in SETTINGS:
        np.testing.assert_array_equal(plain[s], raw[s])
    out = setting_vectors(dict(reversed(list(raw.items()))), rescale_to_baseline=True)  # order of the input: none
    assert list(out) == list(VECTORS)
    mean_norm = np.sqrt(2 ** 2 + 2.2 ** 2)
    expected = {"baseline": [3, 4], "SYS_positive": [3, 4], "PT_positive": [0, 5], "SYS_negative": [5, 0],
                "PT_negative": [0, -5], "mean": [2 * 5 / mean_norm, 2.2 * 5 / mean_norm]}
    for k, v in expected.items():
        np.testing.assert_allclose(out[k], v, rtol=1e-6, err_msg=k)
        assert np.linalg.norm(out[k]) == pytest.approx(5.0, rel=1e-6)


def test_setting_vectors_refuses_zero_and_missing_vectors():
    raw = dict(hand_vectors(), SYS_negative=np.zeros(2, np.float32))
    setting_vectors(raw, rescale_to_baseline=False)  # no division: fine
    with pytest.raises(SteeringError, match="openness at block 3: the SYS_negative vector"):
        setting_vectors(raw, where="openness at block 3")
    raw = hand_vectors()
    raw.pop("PT_negative")
    with pytest.raises(SteeringError, match="PT_negative"):
        setting_vectors(raw)


# ----------------------------------------------------------------------------- Result


def synthetic_table(model="m", datasets=SMOKE_DATASETS, n=6, seed=0):
    """A sweep table of the study's shape: every vector x test setting, raw-logit propensity."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in datasets:
        slope = rng.normal(0.5, 1.0, n)
        for train in VECTORS:
            for j, test in enumerate(SETTINGS):
                for e in range(n):
                    for m in (-1.0, 0.0, 1.0):
                        lp, ln = rng.normal(0, 1, 2)
                        pos = lp + slope[e] * m * (1.0 if train == test else 0.8) + 0.1 * j
                        rows.append(dict(example=e, train_setting=train, layer=1, multiplier=m, logp_positive=pos - 3,
                                         logp_negative=ln - 3, logit_positive=pos, logit_negative=ln,
                                         propensity=pos - ln, positive_letter="AB"[e % 2],
                                         positive_is_yes=e % 3 == 0, dataset=d, test_setting=test))
    return pd.DataFrame(rows).assign(model=model)


@pytest.fixture(scope="module")
def result():
    table = synthetic_table()
    norms = pd.DataFrame([dict(model="m", stage="test", dataset=d, layer=1, vector=v, norm=2.0 + i, steering_norm=1.5)
                          for i, d in enumerate(SMOKE_DATASETS) for v in VECTORS]
                         + [dict(model="m", stage="layer_sweep", dataset=SMOKE_DATASETS[0], layer=layer,
                                 vector="baseline", norm=1.0 + layer, steering_norm=1.0 + layer) for layer in (0, 1)])
    sweep = table[(table.train_setting == "baseline") & (table.test_setting == "baseline")].drop(
        columns=["model", "train_setting", "test_setting"])
    layer_sweep = pd.concat([sweep.assign(layer=0), sweep], ignore_index=True)
    from steerjax.studies.reliability import layer_sweep_summary

    return analyse(table, Config.preset("smoke"), {"m": dict(source="/x/m", layer=1, num_layers=2)},
                   vector_norms=norms, layer_sweeps={"m": layer_sweep},
                   layer_sweep_summaries={"m": layer_sweep_summary(layer_sweep)})


def test_result_round_trip(result, tmp_path):
    out = str(tmp_path / "run")
    written = result.save(out)
    assert {os.path.relpath(p, out) for p in written} >= set(TABLES.values()) | {
        "m/sweeps.parquet", "m/layer_sweep.parquet", "m/layer_sweep_summary.csv"}
    back = Result.load(out)
    assert back.config == result.config and back.models == result.models
    for attr in TABLES:
        pd.testing.assert_frame_equal(getattr(back, attr), getattr(result, attr), check_dtype=False, obj=attr)
    for slug in result.layer_sweeps:
        pd.testing.assert_frame_equal(back.layer_sweeps[slug], result.layer_sweeps[slug])
        pd.testing.assert_frame_equal(back.layer_sweep_summaries[slug], result.layer_sweep_summaries[slug],
                                      check_dtype=False)
    a, b = back.summary(), result.summary()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k] or (isinstance(a[k], float) and np.isnan(a[k]) and np.isnan(b[k])) or \
            a[k] == pytest.approx(b[k], rel=1e-12), k
    with pytest.raises(RunConfigError, match="other options"):  # another run's directory
        dataclass_replace(result, config=Config.preset("smoke", seed=3)).save(out)


def test_summary_keys_as_documented(result):
    s = result.summary()
    overall = {"model", "format", "propensity", "layer", "layer_chosen_by", "n_datasets", "steerability",
               "anti_steerable_fraction", "layer_sweep_steerability", "layer_sweep_blocks"}
    per = ["n", "steerability", "steerability_lo", "steerability_hi", "anti_steerable_fraction",
           "anti_steerable_fraction_lo", "anti_steerable_fraction_hi", "ci_level", "spurious_share", "vector_norm",
           "shift_system", "shift_user"] + [f"shift[{x}]" for x in ("SYS_positive", "SYS_negative", "PT_positive",
                                                                    "PT_negative")]
    assert set(s) == overall | {f"{d}/{k}" for d in SMOKE_DATASETS for k in per}
    assert all(isinstance(v, (float, int, str)) for v in s.values())
    assert (s["model"], s["propensity"], s["layer"], s["layer_chosen_by"]) == ("/x/m", "logit", 1, "layer_sweep")
    d = SMOKE_DATASETS[0]
    ci = result.steerability.set_index("dataset").loc[d]
    assert s[f"{d}/steerability"] == ci["steerability"] and s[f"{d}/steerability_lo"] <= s[f"{d}/steerability"]
    gen = result.generalisation.set_index(["dataset", "train_setting", "test_setting"])
    ood = gen.loc[(d, "baseline", "SYS_positive"), "steerability"]
    assert s[f"{d}/shift[SYS_positive]"] == pytest.approx(ood - ci["steerability"])
    assert s[f"{d}/shift_user"] == pytest.approx((s[f"{d}/shift[PT_positive]"] + s[f"{d}/shift[PT_negative]"]) / 2)
    assert s[f"{d}/vector_norm"] == 1.5
    sweep_summary = result.layer_sweep_summaries["m"].set_index("layer")
    assert s["layer_sweep_steerability"] == sweep_summary.loc[1, "steerability"] and s["layer_sweep_blocks"] == 2
    assert s["steerability"] == pytest.approx(result.steerability["steerability"].mean())
    with pytest.raises(SteerjaxError, match="no model"):
        result.summary("other")


@pytest.mark.slow
def test_result_figures_are_the_runs(result, tmp_path):
    out = str(tmp_path / "figs")
    paths = result.figures(out)
    names = sorted(os.path.relpath(p, out) for p in paths)
    per_model = ("layer_sweep", "propensity_curves", "steerability_violin", "spurious_variance", "steerability_ci",
                 "generalisation_matrix", "relative_steerability")
    assert names == sorted([f"m/{f}.png" for f in per_model] + ["id_ood_shifts.png", "mean_variance.png"])
    assert all(os.path.getsize(p) > 5000 for p in paths)


# ----------------------------------------------------------------------------- figure labels


def labels(fig):
    return [t for ax in fig.axes for t in (ax.get_xlabel(), ax.get_ylabel(), ax.get_title())] + [
        fig._suptitle.get_text() if fig._suptitle else ""]


def test_propensity_axis_says_which_kind(result):
    from steerjax.studies.reliability import plots

    table = result.sweeps
    cell = table[(table.train_setting == "baseline") & (table.test_setting == "baseline")].drop(
        columns=["model", "train_setting", "test_setting"])
    fig = plots.propensity_curves(cell, None, norms={SMOKE_DATASETS[0]: 12.345})  # kind read off the table
    assert fig.axes[0].get_ylabel() == propensity_label("logit")
    assert "raw-logit difference" in fig.axes[0].get_ylabel() and "log p" not in fig.axes[0].get_ylabel()
    assert "|v| = 12.35" in fig.axes[0].get_title() and "logits/multiplier" in fig.axes[0].get_title()
    assert "layer 1" in fig._suptitle.get_text()
    as_logprob = cell.assign(propensity=cell.logp_positive - cell.logp_negative)
    fig = plots.propensity_curves(as_logprob, None)
    assert "log-probability difference" in fig.axes[0].get_ylabel() and "nats" in fig.axes[0].get_ylabel()
    fig = plots.propensity_curves(cell.drop(columns=["logit_positive", "logit_negative"]), None)
    assert "kind not recorded" in fig.axes[0].get_ylabel()
    fig = plots.propensity_curves(cell.drop(columns=["logit_positive"]), None, propensity="logit")
    assert "raw-logit" in fig.axes[0].get_ylabel()


def test_every_quantity_axis_names_its_unit(result):
    from steerjax.studies.reliability import plots

    base = result.per_example[(result.per_example.train_setting == "baseline")
                              & (result.per_example.test_setting == "baseline")]
    kind = "logit"
    figs = {
        "violin": plots.violin_steerability(base.drop(columns=["model", "train_setting", "test_setting"]), None,
                                            propensity=kind, norms={SMOKE_DATASETS[0]: 3.0}),
        "layers": plots.layer_sweep_plot(result.layer_sweep_summaries["m"], None, propensity=kind, norms={0: 1, 1: 2}),
        "ci": plots.steerability_ci_plot(result.steerability, None, propensity=kind, norms={SMOKE_DATASETS[1]: 7.0}),
        "shifts": plots.shift_scatter(result.shifts, None, propensity=kind),
        "mean_variance": plots.mean_variance_plot(result.mean_variance, None, propensity=kind),
        "relative": plots.relative_steerability_plot(result.relative, None, propensity=kind),
        "heatmap": plots.generalisation_heatmap(result.generalisation.drop(columns="model"), None,
                                                value="steerability", propensity=kind),
        "spurious": plots.spurious_variance_plot(result.spurious, None),
    }
    text = {k: " ".join(labels(f)) for k, f in figs.items()}
    for name in ("violin", "layers", "ci", "shifts", "mean_variance"):
        assert "raw-logit difference" in text[name] and "logits per unit multiplier" in text[name], name
    for name in ("shifts", "mean_variance"):
        assert "(logits per unit multiplier)²" in text[name], name
    assert "of the unsteered raw-logit difference, logits" in text["relative"] and "no unit" in text["relative"]
    assert "R², no unit" in text["spurious"]
    assert "share of examples" in text["violin"] and "share of examples" in text["ci"]
    assert "vector norm" in text["layers"]
    colorbar = figs["heatmap"].axes[-1].get_ylabel()
    assert "logits per unit multiplier" in colorbar
    ticks = [t.get_text() for t in figs["violin"].axes[0].get_yticklabels()]
    assert any("|v|=3.00" in t for t in ticks)
    ticks = [t.get_text() for t in figs["ci"].axes[0].get_yticklabels()]
    assert f"{SMOKE_DATASETS[1]} (n=6, |v|=7.00)" in ticks and f"{SMOKE_DATASETS[0]} (n=6)" in ticks
    assert "kind not given" in " ".join(labels(plots.steerability_ci_plot(result.steerability, None)))


def test_sweep_result_tables_figures_and_round_trip(result, tmp_path, monkeypatch):
    """What ``steerjax sweep`` writes: the tables, the facts, the figures titled with model, layer, norm."""
    from steerjax.studies.reliability.sweep_result import TABLES as SWEEP_TABLES
    from steerjax.studies.reliability.sweep_result import SweepResult

    table = result.sweeps[(result.sweeps.train_setting == "baseline") & (result.sweeps.test_setting == "baseline")]
    table = table.drop(columns=["model", "train_setting", "test_setting"])
    table = pd.concat([table.assign(layer=0), table], ignore_index=True)
    facts = {"model": "/models/tiny-chat", "propensity": "logit", "vector_norms": {"0": 2.5, "1": 4.25}}
    res = SweepResult.from_table(table, facts)
    assert set(res.steerability.layer) == {0, 1} and len(res.per_example) == 2 * 2 * 6
    out = str(tmp_path / "sweep")
    os.makedirs(out)
    assert [os.path.basename(p) for p in res.save(out)] == list(SWEEP_TABLES)
    back = SweepResult.load(out)
    pd.testing.assert_frame_equal(back.results, res.results)
    pd.testing.assert_frame_equal(back.per_example, res.per_example)
    pd.testing.assert_frame_equal(back.steerability, res.steerability, check_dtype=False)
    assert back.facts == facts and back.summary() == res.summary()
    assert res.summary()["propensity"] == "logit" and f"{SMOKE_DATASETS[0]}/L1/steerability" in res.summary()
    from steerjax.studies.reliability import plots

    drawn = {}
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.setdefault(os.path.basename(path), fig)
                        and save(fig, path))
    names = sorted(os.path.basename(p) for p in res.figures(out))
    assert names == sorted(drawn) == ["layer_sweep.png", "propensity_layer0.png", "propensity_layer1.png",
                                      "steerability_layer0.png", "steerability_layer1.png"]
    curves = drawn["propensity_layer1.png"]
    assert "raw-logit" in curves.axes[0].get_ylabel()
    assert curves._suptitle.get_text() == "Propensity vs steering multiplier: tiny-chat, layer 1, |v| = 4.25"
    violin = drawn["steerability_layer0.png"]
    assert "tiny-chat, layer 0, |v| = 2.50" in violin._suptitle.get_text()
    assert "logits per unit multiplier" in violin.axes[0].get_xlabel()
    assert "vector norm" in " ".join(ax.get_ylabel() for ax in drawn["layer_sweep.png"].axes)
