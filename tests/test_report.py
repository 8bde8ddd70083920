"""``steerjax report``: bad input refused before any model loads (exit 2, one error line, nothing
written); the plan of studies and directories; the smoke preset on the default model end to end
through the command line (the page parsed: every figure embedded, nothing external, every number
equal to report.json); a rerun reuses every study without loading the model; and a report
SIGKILLed at two points and restarted writes the same report.json as an uninterrupted one."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

import steerjax
import steerjax.model
from steerjax import report
from steerjax.cli import main
from steerjax.data.prompt_steering import list_dimensions
from steerjax.errors import DataError, SteerjaxError
from steerjax.report.config import Config, plan
from tests.helpers import (
    DATA_MISSING,
    SMOLLM2_MISSING,
    TINYSTORIES_MISSING,
    ModelLoaded,
    data_dir,
    smollm2_path,
    subprocess_env,
    tinystories_path,
)
from tests.test_report_parts import _Page

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = {
    "prompt-steering statements": {"agreeableness", "narcissism", "openness", "only-prompt"},
    "Anthropic persona dataset": {"agreeableness", "narcissism", "openness", "only-anthropic"},
    "steering-bench persona prompts": {"agreeableness", "narcissism", "openness"},
}


# the end-to-end tests run the command in subprocesses: they need the GGUF installed, not this
# process's copy of it (the requires_smollm2 group), and share one smoke run (one worker)
SUBPROCESS_SMOLLM2 = pytest.mark.xdist_group("report")


# ----------------------------------------------------------------------------- the plan


def test_plan_one_study_per_concept_and_one_per_set():
    p = plan(Config(preset="smoke", concepts=("openness", "agreeableness")), SOURCES)
    assert p.concepts == ["openness", "agreeableness"] and p.skipped == []
    dirs = [where for _, _, where in p.units]
    assert dirs[:4] == [os.path.join("prompt_steerability", "openness"),
                        os.path.join("prompt_steerability", "agreeableness"),
                        os.path.join("reliability", "openness"), os.path.join("reliability", "agreeableness")]
    # the prediction study is the set's, in one order: the same set in another order is the same directory
    (study, concepts, where), = [u for u in p.units if u[0] == "steerability_prediction"]
    assert concepts == ("agreeableness", "openness")
    again = plan(Config(preset="smoke", concepts=("agreeableness", "openness")), SOURCES)
    assert [u[2] for u in again.units if u[0] == "steerability_prediction"] == [where]
    # another list shares every per-concept directory it has in common
    more = plan(Config(preset="smoke", concepts=("openness", "agreeableness", "narcissism")), SOURCES)
    assert set(dirs[:4]) <= {u[2] for u in more.units}
    assert [u[2] for u in more.units if u[0] == "steerability_prediction"] != [where]


def test_plan_partial_concepts():
    with pytest.raises(DataError, match=r"'only-prompt' is missing from Anthropic persona dataset .*--allow-partial"):
        plan(Config(preset="smoke", concepts=("openness", "only-prompt")), SOURCES)
    p = plan(Config(preset="smoke", concepts=("openness", "narcissism", "only-prompt"), allow_partial=True), SOURCES)
    assert p.concepts_of("prompt_steerability") == ["openness", "narcissism", "only-prompt"]
    assert p.concepts_of("reliability") == ["openness", "narcissism"]
    assert p.concepts_of("steerability_prediction") == ["narcissism", "openness"]
    assert any("only-prompt" in s and "Activation steerability" in s for s in p.skipped)
    # one concept left for the predictor, which needs two: refused, or left out with --allow-partial
    with pytest.raises(DataError, match="two or more.*--allow-partial"):
        plan(Config(preset="smoke", concepts=("openness",)), SOURCES)
    p = plan(Config(preset="smoke", concepts=("openness", "only-prompt"), allow_partial=True), SOURCES)
    assert p.concepts_of("steerability_prediction") == [] and any("needs two or more" in s for s in p.skipped)


def test_config_builds_each_studys_options():
    cfg = Config(preset="quick", seed=3)
    prompt = cfg.prompt_config("openness")
    assert prompt.dims == ("openness",) and prompt.profiles_only and prompt.seed == 3
    rel = cfg.reliability_config("openness")
    assert rel.datasets == ("openness",) and rel.layer is None and rel.seed == 3
    pred = cfg.prediction_config(["a", "b", "c"])
    assert pred.concept_names == ("a", "b", "c") and pred.folds == 3  # folds adapt to the concepts
    assert cfg.prediction_config(list("abcdefgh")).folds == 5
    assert "concepts" not in cfg.run_config("m")  # another concept list may resume the same directory
    with pytest.raises(SteerjaxError, match="unknown preset"):
        Config(preset="medium").concept_list(SOURCES)


# ----------------------------------------------------------------------------- bad input, before any model


def cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.requires_data
@pytest.mark.requires_smollm2
@pytest.mark.parametrize("argv, message", [
    (["--concepts", "agreeablenes", "openness"], r"unknown concept 'agreeablenes'; did you mean 'agreeableness'"),
    (["--concepts", "openness", "openness"], "more than once"),
    (["--preset", "smoke", "--seed", "-1"], "--seed"),
    (["--mesh", "two"], "--mesh must be DATA,MODEL"),
])
def test_cli_refuses_bad_input_before_the_model(argv, message, tmp_path, capsys, no_model):
    out = tmp_path / "rep"
    code, _, err = cli(["report", *argv, "--out", str(out)], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not out.exists()


@pytest.mark.requires_data
@pytest.mark.requires_smollm2
def test_cli_names_the_missing_source(tmp_path, capsys, no_model):
    shared = set(report.shared_concepts())
    lacking = sorted(set(list_dimensions()) - shared)
    assert lacking, "every prompt-steering dimension is in every source: pick another case"
    out = tmp_path / "rep"
    code, _, err = cli(["report", "--concepts", lacking[0], "openness", "--out", str(out)], capsys)
    assert code == 2 and "steering-bench persona prompts" in err and "--allow-partial" in err
    assert not out.exists()


@pytest.mark.requires_data
def test_cli_refuses_a_model_without_chat_template(tmp_path, capsys, no_model):
    model_dir = tinystories_path()  # a base model: a tokenizer, no chat template
    if model_dir is None:
        pytest.skip(TINYSTORIES_MISSING)
    out = tmp_path / "rep"
    code, _, err = cli(["report", model_dir, "--preset", "smoke", "--out", str(out)], capsys)
    assert code == 2 and "has no chat template" in err
    assert not out.exists()


@pytest.mark.requires_data
@pytest.mark.requires_smollm2
def test_cli_refuses_another_models_or_configs_directory(tmp_path, capsys, no_model):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"kind": "report", "model": "/elsewhere/other.gguf",
                                                 "preset": "smoke", "seed": 0, "dtype": "float32", "n_boot": 2000}))
    before = sorted(os.listdir(out))
    code, _, err = cli(["report", "--preset", "smoke", "--out", str(out)], capsys)
    assert code == 2 and "different config" in err and "model" in err
    code, _, err = cli(["report", "--preset", "quick", "--out", str(out)], capsys)
    assert code == 2 and "different config" in err
    assert sorted(os.listdir(out)) == before
    (tmp_path / "file").write_text("x")
    code, _, err = cli(["report", "--preset", "smoke", "--out", str(tmp_path / "file")], capsys)
    assert code == 2 and err.startswith("error: ")


def test_help_and_list_concepts(capsys):
    code, text, _ = cli(["report", "--help"], capsys)
    assert code == 0
    assert "--allow-partial" in text and "smoke" in text and "30 minutes" in text
    if data_dir() is not None:
        code, out, _ = cli(["report", "--list-concepts"], capsys)
        assert code == 0 and out.split() == report.shared_concepts()


def test_the_module_is_callable():
    assert callable(steerjax.report) and steerjax.report.run is report.run


# ----------------------------------------------------------------------------- the smoke preset, end to end


def report_env() -> dict:
    """The subprocesses' environment: torch allowed (transformers reads a GGUF's tokenizer with it)."""
    env = subprocess_env(MPLBACKEND="Agg")
    env.pop("USE_TORCH")
    return env


def run_report(out, *extra, timeout=600):
    cmd = [sys.executable, "-m", "steerjax", "report", "--preset", "smoke", "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=report_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    """The smoke preset on the default model, uninterrupted, through the command line."""
    if data_dir() is None:
        pytest.skip(DATA_MISSING)
    if smollm2_path() is None:
        pytest.skip(SMOLLM2_MISSING)
    out = tmp_path_factory.mktemp("report") / "smoke"
    proc = run_report(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def check_page(page: str, doc: dict) -> _Page:
    """The page is self-contained and prints report.json's numbers: every keyed cell equals the
    JSON value at its key."""
    parsed = _Page()
    parsed.feed(page)
    assert parsed.scripts == 0
    assert "<link" not in page and "url(" not in page and "@import" not in page
    assert all(not link.startswith(("http:", "https:", "//", "ftp:")) for link in parsed.links)
    assert all(src.startswith("data:image/png;base64,") for src in parsed.images)
    assert len(parsed.images) == len(doc["figures"]) >= 2
    assert parsed.keyed, "no numbers were tagged with their JSON key"
    for key, text in parsed.keyed.items():
        if key == "seconds":
            assert text == report.number(doc["seconds"], 1)
            continue
        head, *rest = key.split("/")
        if head == "correlations":
            c = doc["correlations"][int(rest[0])]
            want = report.cell_text({"value": c["rho"], "lo": c["lo"], "hi": c["hi"]}) if rest[1] == "rho" \
                else report.cell_text(c["n"])
        else:
            measure = next(m for m in doc["measures"] if m["id"] == head)
            want = report.cell_text(measure["rows"][rest[0]].get(rest[1]))
        assert text == want, key
    return parsed


@pytest.mark.slow
@pytest.mark.requires_data
@SUBPROCESS_SMOLLM2
def test_smoke_report_on_the_default_model(smoke_report):
    out, proc = smoke_report
    doc = json.loads((out / "report.json").read_text())
    parsed = check_page((out / "report.html").read_text(), doc)
    concepts = report.preset_concepts("smoke")
    assert doc["concepts"] == concepts and doc["preset"] == "smoke"
    measures = {m["id"]: m for m in doc["measures"]}
    assert set(measures) == {"prompt", "activation", "strength"}
    for m in measures.values():  # every concept in every table, in the order asked, every cell on the page
        assert list(m["rows"])[:len(concepts)] == concepts
        for concept in m["rows"]:
            for col in m["columns"]:
                assert f"{m['id']}/{concept}/{col['key']}" in parsed.keyed
    for c in concepts:
        gamma = measures["prompt"]["rows"][c]["gamma_pos"]
        assert gamma["lo"] <= gamma["value"] <= gamma["hi"]
        act = measures["activation"]["rows"][c]
        assert act["steerability"]["lo"] <= act["steerability"]["value"] <= act["steerability"]["hi"]
        assert 0 <= act["anti_steerable_fraction"]["value"] <= 1 and act["layer"] in range(30)
        s = measures["strength"]["rows"][c]
        assert 0 <= s["best_success_rate"]["value"] <= 1 and s["best_strength"] in (0.1, 0.6)
    assert measures["strength"]["rows"]["all concepts"]["predictor_macro_f1"]["value"] is not None
    assert len(doc["correlations"]) == 5 and all(c["n"] == len(concepts) for c in doc["correlations"])
    assert {d["repo"] for d in doc["data_sources"]} == {"anthropics/evals", "IBM/prompt-steering",
                                                         "dtch1997/steering-bench"}
    assert all(len(d["commit"]) == 40 for d in doc["data_sources"])
    assert {"jax", "steerjax", "catboost"} <= set(doc["versions"]) and doc["seconds"] > 0
    assert len(doc["deviations"]) == 3 and all(doc["deviations"].values())
    for title, path in doc["runs"].items():  # links to the three run directories
        assert (out / path).is_dir(), title
    assert doc["command"].startswith("steerjax report smollm2-135m-instruct --preset smoke")
    # one line per stage with counts, and an ETA once a stage has been timed
    stages = [line for line in proc.stdout.splitlines() if re.match(r"\[\d+/\d+\] ", line)]
    assert [s.split("]")[0] for s in stages] == [f"[{i}/5" for i in range(1, 6)]
    assert all("ETA" in s for s in stages[1:])


@pytest.mark.slow
@pytest.mark.requires_data
@SUBPROCESS_SMOLLM2
def test_rerun_reuses_every_study_without_the_model(smoke_report, tmp_path, monkeypatch, capsys):
    out, _ = smoke_report
    doc = json.loads((out / "report.json").read_text())
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    monkeypatch.setattr(steerjax.model, "load_model", lambda *a, **k: (_ for _ in ()).throw(ModelLoaded("loaded")))
    concepts = list(reversed(doc["concepts"]))  # another order: the same studies, rows in the new order
    code, stdout, err = cli(["report", "--preset", "smoke", "--concepts", *concepts, "--out", str(copy)], capsys)
    assert code == 0, err
    assert stdout.count("reused") == 5
    again = json.loads((copy / "report.json").read_text())
    assert again["reused"] == 5 and doc["reused"] == 0
    assert again["concepts"] == concepts
    for old, new in zip(doc["measures"], again["measures"]):
        assert list(new["rows"])[:2] == concepts
        assert {c: new["rows"][c] for c in doc["concepts"]} == {c: old["rows"][c] for c in doc["concepts"]}


def _without_run_facts(doc: dict) -> dict:
    """The document without the facts of one invocation: its wall time and how many studies it reused."""
    return {k: v for k, v in doc.items() if k not in ("seconds", "reused")}


@pytest.mark.slow
@pytest.mark.requires_data
@SUBPROCESS_SMOLLM2
def test_sigkilled_twice_then_resumed_equals_an_uninterrupted_report(smoke_report, tmp_path):
    reference, _ = smoke_report
    out = tmp_path / "killed"
    env = report_env()
    log = out / "log.txt"
    cmd = [sys.executable, "-m", "steerjax", "report", "--preset", "smoke", "--out", str(out)]

    def run_until(marker: str, after: float) -> None:
        """Start the report; SIGKILL it ``after`` seconds after ``marker`` appears once more in its log."""
        seen = log.read_text().count(marker) if log.exists() else 0
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline:
            if log.exists() and log.read_text().count(marker) > seen:
                time.sleep(after)
                break
            assert proc.poll() is None, f"the report ended (status {proc.returncode}) before {marker!r}"
            time.sleep(0.05)
        else:
            proc.kill()
            pytest.fail(f"{marker!r} never appeared")
        assert proc.poll() is None, "the report finished before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    # 1: inside the second prompt-steerability study (the first one's summary is kept)
    run_until("[2/5]", 2.0)
    assert len([f for f in os.listdir(out / "summaries") if not f.endswith(".key.json")]) == 1
    assert not (out / "report.json").exists()
    # 2: the rerun reuses it, resumes the second, and is killed inside the first reliability study
    run_until("[3/5]", 3.0)
    kept = sorted(f for f in os.listdir(out / "summaries") if not f.endswith(".key.json"))
    assert kept == ["prompt_steerability__agreeableness.json", "prompt_steerability__conscientiousness.json"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/5] reused" in proc.stdout and "[2/5] reused" in proc.stdout
    killed = json.loads((out / "report.json").read_text())
    uninterrupted = json.loads((reference / "report.json").read_text())
    killed["command"] = killed["command"].replace(str(out), str(reference))  # the one difference asked for
    assert _without_run_facts(killed) == _without_run_facts(uninterrupted)
