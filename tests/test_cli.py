"""The ``steerjax`` command line and the steering-vector file format."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from steerjax.cli import main
from steerjax.cli.generate import human_count
from steerjax.errors import CheckpointError, SteeringError, SteerjaxError
from steerjax.vectors.io import FORMAT, load_vectors, save_vectors
from tests.helpers import TINYSTORIES_MISSING, tinystories_path

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def model_dir():
    path = tinystories_path()
    if path is None:
        pytest.skip(TINYSTORIES_MISSING)
    return path


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory):
    """A large random vector for block 1 of the 2-block, 128-wide tinystories model."""
    path = tmp_path_factory.mktemp("vectors") / "random.safetensors"
    save_vectors(path, {1: np.random.default_rng(0).standard_normal(128)}, metadata={"concept": "random"})
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- info


def test_info_text(capsys, model_dir):
    code, out, _ = run(capsys, "info", model_dir)
    assert code == 0
    assert "llama" in out
    assert "656.0K" in out
    assert "8 (kv heads: 4)" in out
    assert "chat template  no" in out


def test_info_json(capsys, model_dir):
    code, out, _ = run(capsys, "info", model_dir, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["family"] == "llama"
    assert (info["num_layers"], info["hidden_size"], info["num_heads"], info["num_kv_heads"]) == (2, 128, 8, 4)
    assert (info["head_dim"], info["vocab_size"], info["context_length"]) == (16, 2048, 512)
    assert info["num_parameters"] == 656_000
    assert info["dtype"] == "float32"
    assert info["tokenizer"] is True and info["chat_template"] is False


def test_human_count():
    assert human_count(134_515_008) == "134.5M"
    assert human_count(656_000) == "656.0K"
    assert human_count(12) == "12"


# ----------------------------------------------------------------------------- generate


def test_generate_plain_and_steered(capsys, model_dir, vector_file):
    common = ("generate", model_dir, "--prompt", PROMPT, "--max-new-tokens", "12")
    code, plain, _ = run(capsys, *common)
    assert code == 0 and plain.strip()
    code, again, _ = run(capsys, *common)
    assert again == plain  # greedy decoding is deterministic
    code, steered, _ = run(capsys, *common, "--vector", vector_file, "--multiplier", "8")
    assert code == 0 and steered.strip()
    assert steered != plain
    code, zero, _ = run(capsys, *common, "--vector", vector_file, "--multiplier", "0")
    assert zero == plain


def test_generate_compare_batch(capsys, model_dir, vector_file):
    code, plain, _ = run(capsys, "generate", model_dir, "--prompt", "The dog", "--max-new-tokens", "12")
    code, out, _ = run(capsys, "generate", model_dir, "--prompt", PROMPT, "--prompt", "The dog",
                       "--max-new-tokens", "12", "--vector", vector_file, "--multiplier", "8", "--compare")
    assert code == 0
    assert out.count("--- steered (layer 1, multiplier 8)") == 2
    assert out.count("--- unsteered") == 2
    # the unsteered half of the batch is the plain answer
    second = out.split("=== prompt 2")[1]
    assert second.split("--- unsteered\n")[1].strip() == plain.strip()


def test_generate_npy_needs_layer(capsys, model_dir, tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.random.default_rng(1).standard_normal(128).astype(np.float32))
    code, _, err = run(capsys, "generate", model_dir, "--prompt", PROMPT, "--vector", str(path))
    assert code == 2 and "--layer" in err
    code, out, _ = run(capsys, "generate", model_dir, "--prompt", PROMPT, "--vector", str(path),
                       "--layer", "-1", "--max-new-tokens", "4")
    assert code == 0 and out.strip()


def test_missing_model_exits_2(capsys, tmp_path):
    code, out, err = run(capsys, "info", str(tmp_path / "no-such-model"))
    assert code == 2 and not out
    assert err.startswith("error: ") and "no-such-model" in err
    assert "Traceback" not in err


def test_vector_width_mismatch_exits_2(capsys, model_dir, tmp_path):
    path = tmp_path / "narrow.safetensors"
    save_vectors(path, {1: np.ones(64)})
    code, _, err = run(capsys, "generate", model_dir, "--prompt", PROMPT, "--vector", str(path))
    assert code == 2
    assert err.startswith("error: ") and "[128]" in err


@pytest.mark.parametrize("argv, message", [
    (("--multiplier", "2"), "--multiplier needs --vector"),
    (("--compare",), "--compare needs --vector"),
    (("--system", "Be brief."), "--system needs a chat template"),
    (("--chat",), "no chat template"),
    (("--max-new-tokens", "0"), "argument --max-new-tokens: must be an integer >= 1"),
])
def test_generate_usage_errors(capsys, model_dir, argv, message):
    code, _, err = run(capsys, "generate", model_dir, "--prompt", PROMPT, *argv)
    assert code == 2 and message in err


def test_layer_picks_from_file(capsys, model_dir, tmp_path):
    path = tmp_path / "two.safetensors"
    save_vectors(path, {1: np.ones(128), 7: np.ones(128)})  # 7: a block this model lacks
    common = ("generate", model_dir, "--prompt", PROMPT, "--vector", str(path), "--max-new-tokens", "4")
    code, _, err = run(capsys, *common)
    assert code == 2 and "out of range" in err
    code, _, err = run(capsys, *common, "--layer", "0")
    assert code == 2 and "has no vector for layer 0" in err
    code, out, _ = run(capsys, *common, "--layer", "1")
    assert code == 0 and out.strip()


def test_other_errors_propagate(monkeypatch, model_dir):
    import steerjax

    def boom(*args, **kwargs):
        raise RuntimeError("not a steerjax error")

    monkeypatch.setattr(steerjax, "load_model", boom)
    with pytest.raises(RuntimeError, match="not a steerjax error"):
        main(["generate", model_dir, "--prompt", PROMPT])
    monkeypatch.setattr(steerjax.model, "load_config", boom)  # info reads the config only
    with pytest.raises(RuntimeError, match="not a steerjax error"):
        main(["info", model_dir])


def test_python_dash_m_help():
    res = subprocess.run([sys.executable, "-m", "steerjax", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "generate" in res.stdout


# ----------------------------------------------------------------------------- how every command behaves


def command_paths(parser, prefix=()):
    """Every command and sub-command of the parser, as argv prefixes."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from command_paths(sub, (*prefix, name))


def test_every_help_works(capsys):
    from steerjax.cli import build_parser

    paths = list(command_paths(build_parser()))
    assert {("vector", "train"), ("sweep",), ("predictor", "search"), ("info",)} <= set(paths)
    for path in [(), *paths]:
        code, out, err = run(capsys, *path, "--help")
        assert code == 0 and out.startswith(f"usage: {' '.join(('steerjax', *path))}"), (path, err)
        assert "Traceback" not in err


@pytest.fixture()
def no_model_load(monkeypatch):
    """Loading weights fails the test: what is checked here must be checked before."""
    import steerjax

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(steerjax, "load_model", forbidden)
    monkeypatch.setattr(steerjax.model, "load_model", forbidden)


# one bad argument for every command: the README's "Errors print `error: ...` and exit with status 2"
BAD_ARGUMENTS = {
    "info": (["info", "{tmp}/no-such-model"], "no such model"),
    "generate": (["generate", "{model}", "--prompt", "Hi", "--max-new-tokens", "0"], "--max-new-tokens"),
    "datasets": (["datasets", "--kind", "everything"], "--kind"),
    "vector train": (["vector", "train", "{model}", "--dataset", "x", "--layers", "0",
                      "--out", "{tmp}/no/such/dir/v.safetensors"], "does not exist"),
    "sweep": (["sweep", "{model}", "--dataset", "x", "--vector", "{tmp}/v.safetensors", "--layers", "a-b",
               "--out", "{tmp}/run"], "--layers 'a-b'"),
    "profile": (["profile", "{model}", "--dims", "x", "--budgets", "0", "--out", "{tmp}/run"], "--budgets"),
    "reliability": (["reliability", "{model}", "--preset", "smoke", "--multipliers", "1", "2", "--out", "{tmp}/run"],
                    "--multipliers must include 0"),
    "report": (["report", "{model}", "--preset", "smoke", "--n-boot", "0", "--out", "{tmp}/run"], "--n-boot"),
    "testbed": (["testbed", "{model}", "--concepts", "x", "--layer", "1", "--prompts", "0", "--out", "{tmp}/run"],
                "--prompts"),
    "predictor study": (["predictor", "study", "--preset", "smoke", "--prompts", "1", "--out", "{tmp}/run"],
                        "--prompts must be >= 2"),
    "predictor train": (["predictor", "train", "{tmp}/no-testbed", "--out", "{tmp}/p"], "not a finished testbed"),
    "predictor search": (["predictor", "search", "{tmp}/no-predictor", "--prompt", "Hi", "--concept", "x"],
                         "holds no predictor"),
    "convert": (["convert", "{tmp}/no-such-model", "--out", "{tmp}/c"], "no such model"),
    "data list": (["data", "list", "--to", "{tmp}/nowhere"], "is not a directory"),
    "data download": (["data", "download", "nope", "--to", "{tmp}/d"], "unknown data source 'nope'"),
    "serve": (["serve", "{model}", "--port", "99999"], "--port"),
}


def test_bad_arguments_cover_every_command():
    from steerjax.cli import build_parser

    leaves = {" ".join(p) for p in command_paths(build_parser())} - {"vector", "predictor", "data"}
    assert leaves == set(BAD_ARGUMENTS)


@pytest.mark.parametrize("command", sorted(BAD_ARGUMENTS))
def test_every_command_reports_errors_with_status_2(command, capsys, model_dir, tmp_path, no_model_load):
    argv, message = BAD_ARGUMENTS[command]
    code, out, err = run(capsys, *[a.format(tmp=tmp_path, model=model_dir) for a in argv])
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith("error: ") and message in err
    assert "Traceback" not in err and not out


def test_python_dash_m_error_exits_2(tmp_path):
    res = subprocess.run([sys.executable, "-m", "steerjax", "info", str(tmp_path / "nothing")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr


def test_info_reads_no_weights(capsys, model_dir, no_model_load):
    code, out, _ = run(capsys, "info", model_dir, "--json")
    assert code == 0 and json.loads(out)["num_parameters"] == 656_000


@pytest.mark.parametrize("argv, message", [
    (("--vector", "{tmp}/missing.safetensors"), "does not exist"),
    (("--vector", "{garbage}"), "not a readable safetensors"),
    (("--vector", "{vector}", "--layer", "5"), "--layer 5 is out of range: the model has 2 blocks"),
    (("--vector", "{vector}", "--multiplier", "inf"), "argument --multiplier: must be a finite number, got 'inf'"),
    (("--vector", "{vector}", "--multiplier", "nan"), "argument --multiplier: must be a finite number"),
    (("--temperature", "-1"), "argument --temperature"),
    (("--top-p", "0"), "argument --top-p"),
])
def test_generate_checks_before_loading(capsys, model_dir, vector_file, tmp_path, no_model_load, argv, message):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a vector file")
    argv = [a.format(tmp=tmp_path, garbage=garbage, vector=vector_file) for a in argv]
    code, _, err = run(capsys, "generate", model_dir, "--prompt", PROMPT, *argv)
    assert code == 2 and message in err, err
    if "multiplier" in message:
        assert vector_file not in err  # the flag is at fault, not the file


def test_generate_reports_an_empty_steered_answer(capsys, model_dir, vector_file):
    code, out, err = run(capsys, "generate", model_dir, "--prompt", PROMPT, "--max-new-tokens", "8",
                         "--vector", vector_file, "--multiplier", "1e20", "--compare")
    assert code == 2
    assert "steered answer to prompt 1 is empty" in err and "try a smaller --multiplier" in err
    assert "--- unsteered" in out  # what was generated is still shown


def test_vector_train_checks_its_output_first(capsys, model_dir, tmp_path, no_model_load):
    common = ("vector", "train", model_dir, "--dataset", "not-read", "--layers", "0", "--out")
    code, _, err = run(capsys, *common, str(tmp_path / "no" / "dir" / "v.safetensors"))
    assert code == 2 and "the folder" in err and "does not exist" in err
    existing = tmp_path / "v.safetensors"
    existing.write_bytes(b"an earlier result")
    code, _, err = run(capsys, *common, str(existing))
    assert code == 2 and "already exists: pass --force" in err
    assert existing.read_bytes() == b"an earlier result"
    code, _, err = run(capsys, *common, str(tmp_path))
    assert code == 2 and "is a directory" in err
    code, _, err = run(capsys, "vector", "train", model_dir, "--dataset", "x", "--layers", "0-", "--out",
                       str(tmp_path / "w.safetensors"))
    assert code == 2 and "--layers '0-'" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_is_refused_first(capsys, model_dir, tmp_path, no_model_load):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run(capsys, "vector", "train", model_dir, "--dataset", "x", "--layers", "0", "--out",
                           str(ro / "v.safetensors"))
    finally:
        ro.chmod(0o755)
    assert code == 2 and "cannot write in" in err


# ----------------------------------------------------------------------------- output paths (steerjax.paths)


def fake_run_dir(path, config):
    os.makedirs(os.path.join(path, "chunks"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    open(os.path.join(path, "manifest.jsonl"), "w").close()
    return str(path)


# ----------------------------------------------------------------------------- profile


@pytest.mark.requires_data
@pytest.mark.parametrize("argv, message", [
    (("--benchmark-trials", "0"), "argument --benchmark-trials: must be an integer >= 1, got '0'"),
    (("--steering-trials", "-2"), "argument --steering-trials: must be an integer >= 1"),
    (("--questions", "0"), "argument --questions/--num-questions: must be an integer >= 1"),
    (("--questions", "5000"), "has only"),
    (("--prompt-format", "chatml"), "argument --prompt-format: invalid choice: 'chatml'"),
    (("--template-category", "llama3"), "--template-category 'llama3' is not one of the reference's wrappers"),
    (("--budgets", "101"), "use a budget of at most 100"),
    (("--dims", "paper", "all"), "'paper' and 'all' stand alone"),
    (("--dims", "agreeablenes"), "did you mean 'agreeableness'"),
    ((), "has no chat template: pass --template-category"),  # this TinyStories has none
])
def test_profile_checks_before_loading(capsys, model_dir, tmp_path, no_model_load, argv, message):
    code, out, err = run(capsys, "profile", model_dir, "--dims", "agreeableness", "--budgets", "1", "2",
                         "--out", str(tmp_path / "run"), *argv)
    assert code == 2 and message in err and "Traceback" not in err and not out
    assert not (tmp_path / "run").exists()


@pytest.mark.requires_data
def test_profile_template_category_needs_no_chat_template(capsys, model_dir, tmp_path, no_model_load):
    """With a hand-written wrapper the tokenizer's chat template is not needed: the checks pass and
    the model is loaded (here: refused by the fixture)."""
    with pytest.raises(AssertionError, match="loaded before"):
        main(["profile", model_dir, "--dims", "paper", "--template-category", "llama-3", "--out",
              str(tmp_path / "run")])


@pytest.mark.slow
@pytest.mark.requires_data
def test_profile_command_trials_config_and_resume(chat_model_dir, tmp_path, capsys):
    import pandas as pd

    from steerjax.data.prompt_steering import profiling_source

    out = tmp_path / "profiles"
    argv = ["profile", chat_model_dir, "--dims", "agreeableness", "--budgets", "1", "2", "--benchmark-trials", "2",
            "--steering-trials", "2", "--questions", "2", "--out", str(out)]
    assert main(argv) == 0
    assert "results in" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["benchmark_trials"], cfg["steering_trials"], cfg["num_questions"]) == (2, 2, 2)
    assert cfg["prompt_format"] == "reference" and cfg["template_category"] is None and cfg["nested"] is False
    assert cfg["profiling_source"] == profiling_source() and cfg["budgets"] == [1, 2]
    indices = pd.read_parquet(out / "indices.parquet")
    assert set(indices.benchmark_trial) == {0, 1} and set(indices.trial) == {0, 1}
    assert set(indices.budget) == {0, 1, 2} and indices["index"].between(-1, 1).all()
    curves = pd.read_csv(out / "curves.csv")
    assert (curves.n_benchmark_trials == 2).all() and (curves.n_steering_trials == 2).all()
    profiles = pd.read_parquet(out / "profiles.parquet")
    assert (profiles.n_questions == 4).all() and profiles.yes_rate.between(0, 1).all()
    assert len(pd.read_csv(out / "base_summary.csv")) == 1
    for png in ("index_curves", "index_heatmap", "base_profiles"):
        assert os.path.getsize(out / f"{png}.png") > 5000
    assert main(argv) == 0  # resumed: the stored answers are reused
    assert "2 of 2 chunks already done" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_parquet(out / "indices.parquet"), indices)
    assert main(argv + ["--prompt-format", "steerjax-v1"]) == 2  # another config in the same directory
    assert "differs in: prompt_format" in capsys.readouterr().err


def test_check_output_dir(tmp_path):
    from steerjax.errors import OutputPathError
    from steerjax.runs import check_output_dir

    assert check_output_dir(str(tmp_path / "new" / "dir")) == str(tmp_path / "new" / "dir")
    assert check_output_dir(str(tmp_path))  # empty
    (tmp_path / "old.csv").write_text("x")
    with pytest.raises(OutputPathError, match="not empty: pass --force"):
        check_output_dir(str(tmp_path))
    assert check_output_dir(str(tmp_path), force=True)
    run_dir = fake_run_dir(tmp_path / "sweep", {"kind": "sweep"})
    with pytest.raises(OutputPathError, match=r"holds a resumable steerjax run \(sweep\)"):
        check_output_dir(run_dir, force=True)  # a run is never written into: it could not resume
    with pytest.raises(OutputPathError, match="is a file"):
        check_output_dir(str(tmp_path / "old.csv"))


def test_check_run_dir(tmp_path):
    from steerjax.errors import OutputPathError, RunConfigError
    from steerjax.runs import check_run_dir

    run_dir = fake_run_dir(tmp_path / "run", {"kind": "sweep", "model": "m", "layers": [1], "extra": 1})
    assert check_run_dir(run_dir, {"kind": "sweep", "model": "m", "layers": [1]}) == run_dir
    with pytest.raises(RunConfigError, match=r"different config \(differs in: layers; layers: \[1\] in the "
                                             r"directory, \[2\] now\)"):
        check_run_dir(run_dir, {"kind": "sweep", "model": "m", "layers": [2]})
    with pytest.raises(RunConfigError, match="holds a sweep run, not a profiles run"):
        check_run_dir(run_dir, {"kind": "profiles"})
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputPathError, match=r"not empty \(notes.txt\) and holds no steerjax run"):
        check_run_dir(str(other), {"kind": "sweep"})
    (other / "notes.txt").unlink()
    (other / "cache.bin").write_text("a file the run writes first")
    (other / "cache.tmp123.bin").write_text("what a killed write of it left")
    assert check_run_dir(str(other), {"kind": "sweep"}, allowed=["cache.bin"])
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunConfigError, match="unreadable config.json"):
        check_run_dir(str(tmp_path), {"kind": "sweep"})


@pytest.mark.slow
@pytest.mark.requires_smollm2
def test_info_smollm2(capsys):
    code, out, _ = run(capsys, "info", "--json")
    assert code == 0
    info = json.loads(out)
    assert (info["num_layers"], info["hidden_size"], info["vocab_size"]) == (30, 576, 49152)
    assert info["chat_template"] is True


# ----------------------------------------------------------------------------- vector files


def test_round_trip_with_metadata(tmp_path):
    rng = np.random.default_rng(0)
    vectors = {3: rng.standard_normal(16), 0: rng.standard_normal(16).astype(np.float16)}
    meta = {"concept": "happy", "n_pairs": 64, "multiplier": 1.5, "layers": [0, 3], "note": "1.5"}
    path = tmp_path / "v.safetensors"
    save_vectors(path, vectors, metadata=meta)
    loaded, loaded_meta = load_vectors(path)
    assert sorted(loaded) == [0, 3]
    for layer, vec in vectors.items():
        assert loaded[layer].dtype == np.float32
        np.testing.assert_array_equal(loaded[layer], np.asarray(vec, np.float32))
    assert loaded_meta == meta  # strings stay strings ("1.5"), other values come back decoded
    with open(path, "rb") as f:
        assert FORMAT.encode() in f.read(4096)
    only, _ = load_vectors(path, layer=3)
    assert list(only) == [3]
    with pytest.raises(SteeringError, match="no vector for layer 1"):
        load_vectors(path, layer=1)


def test_direction_names_accepted(tmp_path):
    path = tmp_path / "control.safetensors"
    save_file({"direction.1": np.ones(8, np.float32), "direction.2": np.zeros(8, np.float32)}, str(path))
    vectors, meta = load_vectors(path)
    assert sorted(vectors) == [1, 2] and meta == {}
    save_file({"direction.1": np.ones(8, np.float32), "layer.1": np.ones(8, np.float32)}, str(path))
    with pytest.raises(CheckpointError, match="two vectors for layer 1"):
        load_vectors(path)


def test_npy_needs_layer(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.arange(8, dtype=np.float64))
    with pytest.raises(SteeringError, match="layer="):
        load_vectors(path)
    vectors, meta = load_vectors(path, layer=4)
    assert list(vectors) == [4] and meta == {} and vectors[4].dtype == np.float32
    np.save(path, np.ones((2, 8)))
    with pytest.raises(CheckpointError, match="1-D"):
        load_vectors(path, layer=4)


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("garbage", "not a readable safetensors"),
    ("empty", "holds no vectors"),
    ("foreign", "not steering vectors"),
    ("matrix", "1-D"),
    ("nan", "non-finite"),
    ("widths", "different widths"),
    ("gguf", "GGUF"),
])
def test_bad_files_raise(tmp_path, case, message):
    path = tmp_path / "v.safetensors"
    if case == "garbage":
        path.write_bytes(b"this is not a safetensors file")
    elif case == "empty":
        save_file({}, str(path))
    elif case == "foreign":
        save_file({"model.embed_tokens.weight": np.ones((4, 8), np.float32)}, str(path))
    elif case == "matrix":
        save_file({"layer.0": np.ones((4, 8), np.float32)}, str(path))
    elif case == "nan":
        save_file({"layer.0": np.array([1.0, np.nan], np.float32)}, str(path))
    elif case == "widths":
        save_file({"layer.0": np.ones(4, np.float32), "layer.1": np.ones(8, np.float32)}, str(path))
    elif case == "gguf":
        path.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(CheckpointError, match=message) as info:
        load_vectors(path)
    assert isinstance(info.value, SteerjaxError)


@pytest.mark.parametrize("vectors, metadata, message", [
    ({}, None, "empty"),
    ({-1: np.ones(4)}, None, ">= 0"),
    ({"1": np.ones(4)}, None, ">= 0"),
    ({0: np.ones((2, 4))}, None, "1-D"),
    ({0: np.ones(4), 1: np.ones(5)}, None, "different widths"),
    ({0: np.array([np.inf, 1.0])}, None, "non-finite"),
    ({0: np.ones(4)}, {"format": "x"}, "reserved"),
    ({0: np.ones(4)}, {"x": object()}, "JSON"),
    ({0: np.ones(4)}, {"x": float("nan")}, "JSON"),
])
def test_save_rejects_bad_input(tmp_path, vectors, metadata, message):
    with pytest.raises(SteeringError, match=message):
        save_vectors(tmp_path / "v.safetensors", vectors, metadata=metadata)
    assert not (tmp_path / "v.safetensors").exists()
