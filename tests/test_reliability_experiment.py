"""The reliability experiment (Tan et al. 2024) end to end on two small chat models, and its input checks."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest

from steerjax.errors import DataError, RunConfigError, SteerjaxError
from tests.data_server import DataServer, made_files, served_files, sources_with
from tests.helpers import data_dir

FIGURES = ("layer_sweep", "propensity_curves", "steerability_violin", "steerability_ci", "spurious_variance",
           "generalisation_matrix", "relative_steerability")
SHARED_FIGURES = ("id_ood_shifts", "mean_variance", "model_comparison_id", "model_comparison_ood")


@pytest.fixture(scope="module")
def two_models(chat_model_dir, tmp_path_factory):
    """The chat TinyStories twice, under two names (the cross-model path without a second download)."""
    other = tmp_path_factory.mktemp("second") / "tinystories-chat-b"
    shutil.copytree(chat_model_dir, other)
    return chat_model_dir, str(other)


@pytest.fixture
def fresh_machine(tmp_path, monkeypatch):
    """A machine without STEERJAX_DATA: the data comes from a mirror of GitHub's raw files (a real
    HTTP server on 127.0.0.1 serving the shared data by UPSTREAM.tsv) into an empty cache. The one
    pinned file not held here (steering-bench's persona_prompts.py) is made by the test and pinned
    in its place. Yields (server, the cache's data directory)."""
    from steerjax.data import manifest

    if data_dir() is None:
        pytest.skip("needs STEERJAX_DATA (the mirror serves the shared data)")
    made = made_files(data_dir())
    sources = sources_with(manifest.SOURCES, made)
    with DataServer(served_files(data_dir(), sources, made)) as server:
        monkeypatch.setattr(manifest, "SOURCES", sources)
        monkeypatch.delenv("STEERJAX_DATA")
        monkeypatch.setenv("STEERJAX_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("STEERJAX_DATA_MIRROR", server.base)
        yield server, tmp_path / "cache" / "data"


@pytest.mark.slow
@pytest.mark.requires_data
def test_reliability_experiment_smoke(two_models, fresh_machine, tmp_path):
    """On a fresh machine (no STEERJAX_DATA, data downloaded on first use) the smoke
    preset runs end to end for two models, resumes, and refuses another command."""
    from experiments.steering_reliability.run import SETTINGS, VECTORS, main

    server, cache = fresh_machine
    out = tmp_path / "run"
    argv = ["--preset", "smoke", "--model", two_models[0], "--model", two_models[1], "--out", str(out)]
    main(argv)
    fetched = sorted(os.path.relpath(os.path.join(d, f), cache) for d, _, fs in os.walk(cache) for f in fs)
    assert fetched == ["anthropic-evals/LICENSE",
                       "anthropic-evals/advanced-ai-risk/lm_generated_evals/corrigible-neutral-HHH.jsonl",
                       "anthropic-evals/persona/believes-abortion-should-be-illegal.jsonl",
                       "steering-bench/persona_prompts.py"]
    assert len(server.requests) == len(fetched)  # each file once, verified, nothing left half-written
    cfg = json.loads((out / "config.json").read_text())
    info = json.loads((out / "run.json").read_text())  # what the run found; config.json is what was asked
    assert cfg["format"] == "repepo" and cfg["splits"] == {"train": "0%:50%", "test": "50%:100%"}
    assert set(info["models"]) == {"tinystories-chat", "tinystories-chat-b"} and info["seconds"] > 0
    table = pd.read_parquet(out / "sweeps.parquet")
    assert set(table.model) == set(info["models"]) and set(table.dataset) == set(cfg["datasets"])
    assert set(table.train_setting) == set(VECTORS) and set(table.test_setting) == set(SETTINGS)
    # 2 models x 2 datasets x 6 vectors x 5 settings x 6 examples x 3 multipliers
    assert len(table) == 2 * 2 * 6 * 5 * 6 * 3
    # the propensity is repepo's: summed raw logits
    pd.testing.assert_series_equal(table.propensity, table.logit_positive - table.logit_negative, check_names=False)
    # identical weights, identical results: the two models' tables agree
    a, b = (table[table.model == m].drop(columns="model").reset_index(drop=True) for m in sorted(info["models"]))
    pd.testing.assert_frame_equal(a, b)
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and (summary.steerability_lo <= summary.steerability).all()
    assert (summary.steerability <= summary.steerability_hi).all()
    shifts = pd.read_csv(out / "id_ood_shifts.csv")
    assert set(shifts["shift"]) == {"BASE -> USER_NEG", "BASE -> USER_POS", "SYS_POS -> USER_NEG",
                                    "SYS_NEG -> USER_POS"}
    rel = pd.read_csv(out / "relative_steerability.csv")
    assert not (rel.train_setting == "mean").any() and rel.unsteered_propensity_gap.ge(0).all()
    corr = pd.read_csv(out / "model_comparison_id_correlations.csv")
    assert set(corr.model_a) | set(corr.model_b) == set(info["models"])
    for m in info["models"]:
        for png in FIGURES:
            assert os.path.getsize(out / m / f"{png}.png") > 5000, (m, png)
    for png in SHARED_FIGURES:
        assert os.path.getsize(out / f"{png}.png") > 5000, png
    # resumable: a second run reuses vectors and sweep chunks and gives the same tables
    config_bytes = (out / "config.json").read_bytes()
    per_example = pd.read_parquet(out / "per_example.parquet")
    main(argv)
    assert len(server.requests) == len(fetched)  # the rerun reads the cache: no request
    pd.testing.assert_frame_equal(pd.read_parquet(out / "per_example.parquet"), per_example)
    assert (out / "config.json").read_bytes() == config_bytes  # written once
    with pytest.raises(RunConfigError, match="differs in: seed"):  # another command: refused before any work
        main(argv + ["--seed", "1"])


@pytest.mark.requires_data
@pytest.mark.parametrize("extra, error, match", [
    (["--model", "m", "--model", "m"], SteerjaxError, "given twice"),
    (["--model", "m", "--datasets", "truthfulqa"], DataError, "truthfulqa"),
    (["--model", "m", "--datasets", "self-awareness-web-gpt@human"], DataError, "no persona prompt"),
    (["--model", "m", "--multipliers", "1", "2"], SteerjaxError, "include 0"),
    (["--model", "/nonexistent/model"], Exception, "nonexistent"),
])
def test_bad_input_is_refused_before_any_model_loads(tmp_path, monkeypatch, extra, error, match):
    import steerjax
    from experiments.steering_reliability.run import main

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(steerjax, "load_model", no_load)
    with pytest.raises(error, match=match):
        main(["--preset", "smoke", "--out", str(tmp_path / "run")] + extra)
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_unknown_format_exits_2(tmp_path, capsys):
    from experiments.steering_reliability.run import main

    with pytest.raises(SystemExit) as e:
        main(["--format", "llama-chat", "--out", str(tmp_path / "run")])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_model_directories_are_named_after_the_model():
    from experiments.steering_reliability.run import model_slug

    assert model_slug("HuggingFaceTB/SmolLM2-135M-Instruct") == "SmolLM2-135M-Instruct"
    assert model_slug("/x/y/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1"
    assert model_slug("/models/tiny chat/") == "tiny_chat"
