"""`steerjax datasets`, `steerjax vector train` and `steerjax sweep` end to end (needs STEERJAX_DATA)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

import steerjax
from steerjax.cli import main
from steerjax.cli import sweep as cli_sweep
from steerjax.cli.checks import parse_layers
from steerjax.errors import SteerjaxError
from tests.helpers import ModelLoaded


def forbidden(*args, **kwargs):
    raise AssertionError("the model was loaded before the arguments were checked")


def test_parse_layers():
    assert parse_layers("13", 30) == [13]
    assert parse_layers("10, 13,-1", 30) == [10, 13, 29]
    assert parse_layers("8-11", 30) == [8, 9, 10, 11]
    assert parse_layers("-3--1", 30) == [27, 28, 29]
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    with pytest.raises(SteerjaxError, match="use '13'"):
        parse_layers("a-b", 30)


@pytest.mark.requires_data
def test_datasets_lists_names(capsys):
    assert main(["datasets", "--kind", "xrisk"]) == 0
    names = capsys.readouterr().out.split()
    assert "corrigible-neutral-HHH" in names and "anti-immigration" not in names


@pytest.mark.slow
@pytest.mark.requires_data
def test_train_then_sweep_then_resume(chat_model_dir, tmp_path, capsys, monkeypatch):
    vec = str(tmp_path / "v.safetensors")
    train = ["vector", "train", chat_model_dir, "--dataset", "corrigible-neutral-HHH", "--max-examples", "8",
             "--layers", "0-1", "--out", vec]
    assert main(train) == 0
    assert "caa vector from 8 examples" in capsys.readouterr().out
    assert main(train) == 2 and "already exists: pass --force" in capsys.readouterr().err
    assert main(train + ["--force"]) == 0
    run = str(tmp_path / "run")
    argv = ["sweep", chat_model_dir, "--dataset", "corrigible-neutral-HHH", "--vector", vec, "--max-examples", "6",
            "--multipliers", "-2", "0", "2", "--out", run]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "steerability" in out and "corrigible-neutral-HHH" in out
    written = [line.removeprefix("wrote ") for line in out.splitlines() if line.startswith("wrote ")]
    plots = [f"{p}_layer{layer}.png" for p in ("propensity", "steerability") for layer in (0, 1)] + ["layer_sweep.png"]
    assert sorted(os.path.basename(p) for p in written) == sorted(
        plots + ["results.parquet", "per_example.parquet", "summary.csv", "cli.json"])
    assert all(os.path.getsize(p) > 0 for p in written)
    table = pd.read_parquet(os.path.join(run, "results.parquet"))
    assert len(table) == 6 * 2 * 3 and set(table.layer) == {0, 1}
    assert set(pd.read_csv(os.path.join(run, "summary.csv")).layer) == {0, 1}
    per_example = pd.read_parquet(os.path.join(run, "per_example.parquet"))
    assert np.isfinite(per_example.slope).all()
    cfg = json.load(open(os.path.join(run, "cli.json")))
    assert cfg["dataset"] == "corrigible-neutral-HHH" and cfg["vector_metadata"]["method"] == "caa"
    assert (cfg["format"], cfg["setting"], cfg["positions"], cfg["propensity"]) == (
        "steerjax", "baseline", "completion", "logprob")
    assert (cfg["vector_metadata"]["prompt_format"], cfg["vector_metadata"]["setting"]) == ("steerjax", "baseline")
    # a second run resumes from the run directory: same table, nothing recomputed
    assert main(argv) == 0
    assert "chunks already done, reused" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_parquet(os.path.join(run, "results.parquet")), table)
    # another config in the same directory is refused, another kind of run too, before the model loads
    monkeypatch.setattr(steerjax, "load_model", forbidden)
    assert main(argv[:-2] + ["--positions", "all", "--out", run]) == 2
    assert "different config (differs in: positions" in capsys.readouterr().err
    assert main(["profile", chat_model_dir, "--dims", "agreeableness", "--out", run]) == 2
    assert "holds a sweep run, not a profiles run" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a run")
    assert main(argv[:-2] + ["--out", str(tmp_path / "mine")]) == 2
    assert "holds no steerjax run" in capsys.readouterr().err


@pytest.mark.requires_data
def test_bad_input_exits_2_with_a_message(chat_model_dir, tmp_path, capsys):
    from steerjax.vectors import save_vectors

    assert main(["vector", "train", chat_model_dir, "--dataset", "corrigible-neutral-HHHH", "--layers", "0",
                 "--out", str(tmp_path / "v.safetensors")]) == 2
    assert "corrigible-neutral-HHH" in capsys.readouterr().err  # suggests the close match
    assert main(["vector", "train", chat_model_dir, "--dataset", "corrigible-neutral-HHH", "--split", "50%:50%",
                 "--layers", "0", "--out", str(tmp_path / "v.safetensors")]) == 2
    assert "no examples" in capsys.readouterr().err
    wide = str(tmp_path / "wide.safetensors")
    save_vectors(wide, {0: np.ones(576, np.float32)})
    assert main(["sweep", chat_model_dir, "--dataset", "corrigible-neutral-HHH", "--vector", wide,
                 "--max-examples", "2", "--out", str(tmp_path / "r")]) == 2
    assert "hidden size is 128" in capsys.readouterr().err


@pytest.mark.requires_data
@pytest.mark.parametrize("argv, message", [
    (["--format", "qwen"], "argument --format: invalid choice: 'qwen'"),
    (["--setting", "positive"], "argument --setting: invalid choice: 'positive'"),
    (["--split-compat", "numpy"], "argument --split-compat: invalid choice: 'numpy'"),
    (["--split", "0:50%"], "--split: bad split '0:50%'"),
    (["--split", "12.5%:50%", "--split-compat", "repepo"], "--split: bad split '12.5%:50%' for split_compat='repepo'"),
    (["--split", "50:50", "--split-compat", "repepo"], "has no examples"),
    (["--split", "0:1001", "--split-compat", "repepo"], "index 1001 is past the 1000 rows"),
    (["--dataset", "truthfulqa", "--format", "repepo"], "'truthfulqa' is one of Tan et al.'s 40 but is not available"),
    (["--dataset", "anti-immigration-x", "--setting", "SYS_positive"], "unknown dataset 'anti-immigration-x'"),
])
@pytest.mark.parametrize("command", ["vector train", "sweep"])
def test_data_flags_are_checked_before_the_model_loads(chat_model_dir, tmp_path, capsys, monkeypatch, command,
                                                       argv, message):
    from steerjax.vectors import save_vectors

    monkeypatch.setattr(steerjax, "load_model", forbidden)
    if command == "sweep":
        vec = str(tmp_path / "v.safetensors")
        save_vectors(vec, {0: np.ones(128, np.float32)})
        head = ["sweep", chat_model_dir, "--vector", vec, "--out", str(tmp_path / "run")]
    else:
        head = ["vector", "train", chat_model_dir, "--layers", "0", "--out", str(tmp_path / "v.safetensors")]
    dataset = [] if "--dataset" in argv else ["--dataset", "corrigible-neutral-HHH"]
    assert main(head + dataset + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.requires_data
@pytest.mark.parametrize("fmt, positions, propensity", [("steerjax", "completion", "logprob"),
                                                        ("steering-bench", "completion", "logprob"),
                                                        ("repepo", "last_prompt", "logit")])
def test_the_format_decides_the_sweeps_positions_and_propensity(chat_model_dir, tmp_path, capsys, monkeypatch,
                                                                fmt, positions, propensity):
    from steerjax.errors import SteeringError
    from steerjax.vectors import save_vectors

    seen = {}

    def fake_sweep(model, examples, vectors, **kwargs):
        seen.update(kwargs, examples=examples)
        raise SteeringError("stopped by the test")

    monkeypatch.setattr(steerjax, "sweep", fake_sweep)
    vec = str(tmp_path / "v.safetensors")
    save_vectors(vec, {0: np.ones(128, np.float32)})
    argv = ["sweep", chat_model_dir, "--dataset", "corrigible-neutral-HHH", "--vector", vec, "--format", fmt,
            "--setting", "SYS_negative", "--split", "50:100%", "--split-compat", "repepo", "--max-examples", "3",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 2 and "stopped by the test" in capsys.readouterr().err
    assert (seen["positions"], seen["propensity"]) == (positions, propensity)
    assert [e.meta["format"] for e in seen["examples"]] == [fmt] * 3
    assert {e.meta["setting"] for e in seen["examples"]} == {"SYS_negative"}
    from steerjax.data import load_dataset

    expected = load_dataset("corrigible-neutral-HHH", split="50:100%", split_compat="repepo", format=fmt,
                            setting="SYS_negative", max_examples=3)
    assert seen["examples"] == expected
    # --positions overrides the format's
    seen.clear()
    assert main(argv[:-2] + ["--positions", "all", "--out", str(tmp_path / "run2")]) == 2
    assert (seen["positions"], seen["propensity"]) == ("all", propensity)


@pytest.mark.requires_data
def test_vector_train_reads_the_formats_examples_and_token(chat_model_dir, tmp_path, capsys, monkeypatch):
    from steerjax.data import load_dataset
    from steerjax.errors import SteeringError

    seen = {}

    def fake_train(model, examples, **kwargs):
        seen.update(kwargs, examples=examples)
        raise SteeringError("stopped by the test")

    monkeypatch.setattr(cli_sweep, "train_vector", fake_train)
    argv = ["vector", "train", chat_model_dir, "--dataset", "anti-immigration", "--layers", "1", "--format",
            "steering-bench", "--setting", "PT_positive", "--split", "0:50%", "--split-compat", "repepo",
            "--max-examples", "4", "--out", str(tmp_path / "v.safetensors")]
    assert main(argv) == 2 and "stopped by the test" in capsys.readouterr().err
    assert seen["token_index"] == -2 and seen["layers"] == [1]
    assert seen["examples"] == load_dataset("anti-immigration", split="0:50%", split_compat="repepo",
                                            format="steering-bench", setting="PT_positive", max_examples=4)
    assert main(argv[:-2] + ["--token-index", "-1", "--out", str(tmp_path / "v.safetensors")]) == 2
    assert seen["token_index"] == -1


@pytest.mark.requires_data
def test_learned_vector_train_resumes_after_ctrl_c(chat_model_dir, tmp_path, capfd, monkeypatch):
    """`vector train --method learned` keeps checkpoints beside --out until the vector is written:
    interrupted (Ctrl-C) during step 25, the same command resumes from step 20 and writes the
    vector of an uninterrupted run; another command with that --out is refused, and says why."""
    from steerjax.vectors import learned
    from steerjax.vectors import train as vector_train
    from steerjax.vectors.io import load_vectors

    monkeypatch.setitem(vector_train._OPTIONS, "learned", {**vector_train._OPTIONS["learned"], "steps": 30})
    out = tmp_path / "v.safetensors"
    checkpoint = tmp_path / "v.safetensors.checkpoint"
    head = ["vector", "train", chat_model_dir, "--dataset", "agreeableness", "--max-examples", "4",
            "--method", "learned"]
    argv = head + ["--layers", "1", "--out", str(out)]
    step, calls = learned._loss_and_grad, []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 25:
            raise KeyboardInterrupt  # Ctrl-C during step 25: steps 10 and 20 are checkpointed
        return step(*args, **kwargs)

    monkeypatch.setattr(learned, "_loss_and_grad", counted)
    assert main(argv) == 130
    assert "interrupted: rerun the same command to resume" in capfd.readouterr().err
    assert not out.exists() and sorted(os.listdir(checkpoint / "steps")) == ["10", "20"]

    loaded = steerjax.load_model
    monkeypatch.setattr(steerjax, "load_model", lambda *a, **k: (_ for _ in ()).throw(ModelLoaded("loaded")))
    assert main(head + ["--layers", "0", "--out", str(out)]) == 2  # another run's checkpoints: not mixed in
    err = capfd.readouterr().err  # and refused before the model loads
    assert "other settings: layers: '1' there, '0' now" in err and f"delete {checkpoint} to start over" in err, err
    monkeypatch.setattr(steerjax, "load_model", loaded)

    calls.clear()
    assert main(argv) == 0
    assert len(calls) == 10, "steps 21-30 only"
    assert f"resuming the learned vector from step 20 in {checkpoint}" in capfd.readouterr().err
    assert out.exists() and not checkpoint.exists()

    monkeypatch.setattr(learned, "_loss_and_grad", step)
    fresh = tmp_path / "fresh.safetensors"
    assert main(head + ["--layers", "1", "--out", str(fresh)]) == 0
    assert not (tmp_path / "fresh.safetensors.checkpoint").exists()
    resumed, uninterrupted = load_vectors(str(out)), load_vectors(str(fresh))
    np.testing.assert_array_equal(resumed[0][1], uninterrupted[0][1])
    assert resumed[1] == uninterrupted[1]


@pytest.mark.slow
@pytest.mark.requires_data
def test_profile_command_writes_tables_and_plots_and_resumes(chat_model_dir, tmp_path, capsys):
    run = str(tmp_path / "profiles")
    argv = ["profile", chat_model_dir, "--dims", "agreeableness", "narcissism", "--budgets", "1", "2",
            "--benchmark-trials", "1", "--steering-trials", "2", "--num-questions", "3", "--out", run]
    assert main(argv) == 0
    assert "results in" in capsys.readouterr().out
    indices = pd.read_parquet(os.path.join(run, "indices.parquet"))
    assert set(indices.dimension) == {"agreeableness", "narcissism"} and set(indices.budget) == {0, 1, 2}
    profiles = pd.read_parquet(os.path.join(run, "profiles.parquet"))
    assert (profiles.alpha >= 0.5).all() and (profiles.n_questions == 6).all()
    for png in ("index_curves", "index_heatmap", "base_profiles"):
        assert os.path.getsize(os.path.join(run, f"{png}.png")) > 5000
    assert main(argv) == 0  # resumed: the stored answers are reused
    pd.testing.assert_frame_equal(pd.read_parquet(os.path.join(run, "indices.parquet")), indices)
    assert main(argv[:-2] + ["--seed", "1", "--out", run]) == 2  # another config in the same directory
    assert "different config" in capsys.readouterr().err


@pytest.mark.requires_data
def test_profile_bad_input(chat_model_dir, tmp_path, capsys):
    assert main(["profile", chat_model_dir, "--dims", "agreeablenes", "--out", str(tmp_path / "a")]) == 2
    assert "agreeableness" in capsys.readouterr().err
    assert main(["profile", chat_model_dir, "--dims", "agreeableness", "--budgets", "150",
                 "--out", str(tmp_path / "b")]) == 2
    assert "150" in capsys.readouterr().err


@pytest.mark.requires_data
def test_sweep_multipliers_checked_before_the_model_loads(chat_model_dir, tmp_path, capsys, monkeypatch):
    """``--multipliers 0`` (no slope can be fitted) is refused before the model loads, writing
    nothing; a multiplier that saturates the propensity is warned about before the sweep."""
    from steerjax.sweeps import SATURATION, saturating_multipliers
    from steerjax.vectors import save_vectors

    vec = str(tmp_path / "v.safetensors")
    save_vectors(vec, {1: np.full(128, 0.5, np.float32)})  # norm 5.66
    monkeypatch.setattr(steerjax, "load_model", forbidden)
    run = tmp_path / "run"
    base = ["sweep", chat_model_dir, "--dataset", "corrigible-neutral-HHH", "--vector", vec, "--max-examples", "4",
            "--out", str(run)]
    assert main(base + ["--multipliers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --multipliers 0: a steerability slope needs at least two distinct multipliers")
    assert main(base + ["--multipliers", "2", "2"]) == 2 and "two distinct" in capsys.readouterr().err
    assert not run.exists()
    with pytest.raises(AssertionError, match="model was loaded"):  # the checks passed, with a warning
        main(base + ["--multipliers", "1", "1e30", "-1e30"])
    err = capsys.readouterr().err
    assert "warning: --multipliers 1e+30 -1e+30 times the vector's norm (up to 5.66)" in err
    assert saturating_multipliers([1.0, 2e5, 3e5, -3e5], [5.0]) == [3e5, -3e5] and SATURATION == 1e6
