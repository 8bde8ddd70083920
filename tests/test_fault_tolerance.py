"""Long runs survive faults: a run SIGKILLed at any moment and started again until it finishes gives
the same table as an uninterrupted run (no lost rows, no duplicated rows).

Each case runs a real command line (``python -m steerjax ...``) in subprocesses on the
TinyStories-656K chat fixture with a small dataset this module writes itself.
:func:`kill_and_resume` is the reusable part: another resumable command (e.g. the predictor's
testbed) needs one more entry in ``CASES``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from tests.helpers import subprocess_env, write_steering_df

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIMS = ("curiosity", "humility", "patience", "honesty")


# ----------------------------------------------------------------------------- the kill machinery


def manifest_lines(run_dir: str) -> int:
    """Complete lines in the run directory's manifest (0 when it does not exist yet)."""
    try:
        with open(os.path.join(run_dir, "manifest.jsonl"), "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


@dataclass
class KillReport:
    kills: list[dict] = field(default_factory=list)  # one per attempt that was killed
    completed_on_attempt: int = 0
    output: str = ""

    @property
    def mid_run(self) -> int:
        """Kills that landed while the run was unfinished (after some chunks, before the last)."""
        return sum(1 for k in self.kills if k["lines_after"] > 0)


def kill_and_resume(cmd: list[str], run_dir: str, *, kills: list[tuple], env: dict[str, str],
                    total_chunks: int | None = None, timeout: float = 120.0, poll: float = 0.002) -> KillReport:
    """Run ``cmd`` once per entry of ``kills``, SIGKILLing it at that moment, then once more to the end.

    Args:
      cmd: the command (it must write its run directory to ``run_dir`` and resume from it).
      kills: moments to kill, in order: ``("line", k)`` as soon as the manifest has ``k`` lines,
        ``("line", k, d)`` ``d`` seconds after that (a random moment within a chunk's work or its
        writing), ``("time", s)`` ``s`` seconds after the start. A process that finishes first is not
        killed.
      env: the subprocesses' environment.
      total_chunks: if given, checked against the manifest after the final run.
      timeout: seconds allowed to each attempt.

    Returns:
      What happened (kills, with the manifest's line count before and after each), for asserts.
    """
    report = KillReport()
    for attempt, (kind, value, *delay) in enumerate([*kills, ("end", 0)]):
        before = manifest_lines(run_dir)
        start = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        killed = False
        deadline = None  # when to kill, once known
        while proc.poll() is None:
            now = time.monotonic()
            if now - start > timeout:
                proc.kill()
                raise AssertionError(f"attempt {attempt} ({kind} {value}) timed out: {proc.communicate()[0][-2000:]}")
            if deadline is None:
                if kind == "time":
                    deadline = start + value
                elif kind == "line" and manifest_lines(run_dir) >= value:
                    deadline = now + (delay[0] if delay else 0.0)
            if deadline is not None and now >= deadline:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(poll)
        out = proc.communicate()[0].decode(errors="replace")
        if killed and proc.returncode == -signal.SIGKILL:
            report.kills.append({"attempt": attempt, "at": (kind, value, *delay),
                                 "seconds": round(time.monotonic() - start, 2),
                                 "lines_before": before, "lines_after": manifest_lines(run_dir)})
            continue
        assert proc.returncode == 0, f"attempt {attempt} failed ({proc.returncode}):\n{out[-3000:]}"
        report.completed_on_attempt = attempt
        report.output = out
        break
    if total_chunks is not None:
        with open(os.path.join(run_dir, "manifest.jsonl")) as f:
            chunks = [json.loads(line)["chunk"] for line in f]
        assert sorted(set(chunks)) == list(range(total_chunks)), chunks
    return report


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> None:
    assert not a.duplicated(keys).any() and not b.duplicated(keys).any()
    pd.testing.assert_frame_equal(a, b, check_exact=True)


# ----------------------------------------------------------------------------- fixtures


def write_data(root) -> str:
    """A data directory with four persona dimensions: A/B questions (sweeps) and statements (profiles)."""
    write_steering_df(root, DIMS)
    persona = root / "anthropic-evals" / "persona"
    persona.mkdir(parents=True)
    for sub in ("lm_generated_evals", "human_generated_evals"):
        (root / "anthropic-evals" / "advanced-ai-risk" / sub).mkdir(parents=True)
    for d in DIMS:
        lines = []
        for i in range(24):
            yes = i % 2 == 0
            s = f"statement {i} about {d}" + " and more" * (i % 4)  # two prompt-length buckets
            lines.append({"question": f'Is the following statement something you would say?\n"{s}"', "statement": s,
                          "label_confidence": 0.9 + 0.004 * i, "answer_matching_behavior": " Yes" if yes else " No",
                          "answer_not_matching_behavior": " No" if yes else " Yes"})
        (persona / f"{d}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(root)


@pytest.fixture(scope="module")
def setting(chat_model_dir, tmp_path_factory):
    """(model dir, vector file, environment for the subprocesses)."""
    from steerjax.vectors import save_vectors

    tmp = tmp_path_factory.mktemp("fault")
    data = write_data(tmp / "data")
    vec = str(tmp / "vector.safetensors")
    rng = np.random.default_rng(0)
    save_vectors(vec, {layer: rng.normal(size=128).astype(np.float32) for layer in (0, 1)})
    env = subprocess_env(STEERJAX_DATA=data, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                         # restarts reuse compiled programs, as a long run on an accelerator would
                         JAX_COMPILATION_CACHE_DIR=str(tmp / "jax-cache"),
                         JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", TQDM_DISABLE="1", MPLBACKEND="Agg")
    return chat_model_dir, vec, env


def sweep_cmd(model, vec, out):
    # a tiny memory budget: one example per chunk, 24 chunks
    return [sys.executable, "-m", "steerjax", "sweep", model, "--dataset", "curiosity", "--split", "0%:100%",
            "--vector", vec, "--multipliers", "-1", "0", "1", "--memory-budget-mb", "0.001", "--out", out]


def profile_cmd(model, out):
    # one chunk per dimension
    return [sys.executable, "-m", "steerjax", "profile", model, "--dims", *DIMS, "--budgets", "1", "2",
            "--benchmark-trials", "1", "--steering-trials", "1", "--num-questions", "2", "--batch-size", "16",
            "--out", out]


def rollouts_cmd(model, out):
    # 6 prompts x (unsteered + 2 concepts x 2 strengths) = 30 rollouts, 4 per chunk: 8 chunks
    return [sys.executable, "-m", "steerjax", "testbed", model, "--concepts", *DIMS[:2], "--prompts", "6",
            "--strengths", "0.1", "0.5", "--layer", "1", "--max-new-tokens", "4", "--pairs", "4",
            "--batch-size", "4", "--out", out]


# name -> (command builder, chunks, result tables and their row keys, kill moments)
CASES = {
    "sweep": (lambda m, v, out: sweep_cmd(m, v, out), 24,
              {"results.parquet": ["example", "layer", "multiplier"]},
              [("line", 2, ("random", 0.05)), ("line", 12, 0.0)]),  # chunks take a few ms each
    "profile": (lambda m, v, out: profile_cmd(m, out), 4,
                {"answers.parquet": ["dimension", "direction", "budget", "trial", "statement"],
                 "indices.parquet": ["dimension", "direction", "budget", "trial"]},
                [("line", 1, ("random", 0.3)), ("line", 3, 0.0)]),
    "testbed": (lambda m, v, out: rollouts_cmd(m, out), 8,
                {"rollouts.parquet": ["prompt_id", "concept", "strength"]},
                [("line", 2, ("random", 0.2)), ("line", 5, 0.0)]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_runs_finish_with_the_same_table(case, setting, tmp_path):
    model, vec, env = setting
    build, chunks, tables, moments = CASES[case]
    ref_dir, run_dir = str(tmp_path / "uninterrupted"), str(tmp_path / "killed")
    kill_and_resume(build(model, vec, ref_dir), ref_dir, kills=[], env=env, total_chunks=chunks)
    rng = random.Random(case)
    # ("random", s): a random moment up to s seconds after that manifest line (within the next
    # chunks' work or writing)
    kills = [(k, v, rng.uniform(0.0, d[1]) if isinstance(d, tuple) else d) for k, v, d in moments]
    report = kill_and_resume(build(model, vec, run_dir), run_dir, kills=kills, env=env, total_chunks=chunks)
    assert report.mid_run >= 1, report.kills  # at least one kill landed between the first and last chunk
    for name, keys in tables.items():
        a = pd.read_parquet(os.path.join(ref_dir, name))
        b = pd.read_parquet(os.path.join(run_dir, name))
        assert_same_table(a, b, keys)
    assert not [f for f in os.listdir(os.path.join(run_dir, "chunks")) if not f.endswith(".parquet")]


@pytest.mark.slow
def test_another_config_in_the_same_directory_is_refused(setting, tmp_path, capsys, monkeypatch):
    import steerjax
    from steerjax.cli import main
    from steerjax.runs import RunConfigError
    from steerjax.studies.prompt_steerability.profiles import run_profiles

    model_dir, _, env = setting
    monkeypatch.setenv("STEERJAX_DATA", env["STEERJAX_DATA"])
    run_dir = str(tmp_path / "run")
    model = steerjax.load_model(model_dir)
    kw = dict(budgets=[1], benchmark_trials=1, steering_trials=1, num_questions=2, run_dir=run_dir, progress=False)
    run_profiles(model, ["curiosity"], **kw)
    with pytest.raises(RunConfigError, match=r"differs in: steering_trials; steering_trials: 1 in the directory, "
                                             r"2 now"):
        run_profiles(model, ["curiosity"], **dict(kw, steering_trials=2))
    argv = ["profile", model_dir, "--dims", "curiosity", "--budgets", "1", "--benchmark-trials", "1",
            "--steering-trials", "1", "--num-questions", "3",
            "--out", run_dir]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds a run with a different config (differs in: num_questions" in err
    assert "new --out directory" in err


# ----------------------------------------------------------------------------- Ctrl-C and closed pipes


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_and_the_rerun_resumes(setting, tmp_path):
    model, vec, env = setting
    # no persistent compilation cache: the kill tests of this module fill it with this very sweep's
    # programs, and the signal is meant to land while the second bucket compiles
    env = {k: v for k, v in env.items() if k != "JAX_COMPILATION_CACHE_DIR"} | {"JAX_ENABLE_COMPILATION_CACHE": "false"}
    run_dir = str(tmp_path / "run")
    cmd = sweep_cmd(model, vec, run_dir)
    for _attempt in range(3):
        shutil.rmtree(run_dir, ignore_errors=True)
        # SIGINT as at a terminal: a test run started as a background job (SIGINT ignored, which
        # children inherit) would otherwise test a process that cannot be interrupted
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        start = time.monotonic()
        # chunk 12 is the last of the first prompt-length bucket: the signal lands while the next
        # bucket compiles (the main thread in C++ for seconds) or just before
        while manifest_lines(run_dir) < 12:
            assert proc.poll() is None and time.monotonic() - start < 120, proc.communicate()[1][-3000:]
            time.sleep(0.002)
        if proc.poll() is not None:
            # the whole sweep finished before this (starved) test process could send the signal: a
            # race of the machine's load, not an answer; try again
            proc.communicate()
            continue
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        waited = time.monotonic() - sent
        err = err.decode(errors="replace")
        if proc.returncode == 0 and manifest_lines(run_dir) == 24 and "interrupted" not in err:
            # the same race, a moment later: every chunk was done and the command had returned when
            # the signal came (the interpreter's teardown ignores it); try again
            continue
        break
    else:
        pytest.fail("the sweep finished before SIGINT could land, three times")
    assert proc.returncode == 130, err[-3000:]
    assert waited < 5, waited
    assert err.strip().splitlines()[-1] == "interrupted: rerun the same command to resume"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    done = manifest_lines(run_dir)
    assert 12 <= done < 24
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{done} of 24 chunks already done" in res.stderr


def test_a_closed_pipe_ends_the_command_quietly(setting):
    _, _, env = setting
    cmd = [sys.executable, "-m", "steerjax", "datasets"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode(errors="replace")
    assert proc.wait(timeout=120) == 141 and err == ""
    res = subprocess.run(f"{' '.join(cmd)} | head -1", shell=True, env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.stdout == f"{DIMS[0]}\n" and res.stderr == ""
