"""Run directories are not silently corrupted: one writer at a time (an advisory lock naming the
holder's PID), keyed artifacts never served for another key after a kill, and a run refuses to
resume with a model whose weights changed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from steerjax import runs
from steerjax.errors import ArtifactKeyError, RunConfigError, RunLockedError
from steerjax.model import fingerprint
from steerjax.runs.chunks import RunDirectory
from tests.helpers import ROOT, TINYSTORIES_MISSING, subprocess_env, tinystories_path

HOLDER = """
import sys, time
from steerjax.runs.chunks import RunDirectory
run = RunDirectory(sys.argv[1], {"kind": "test"})
open(sys.argv[1] + "/chunks/00000.parquet.tmp", "w").write("a chunk being written")
print("ready", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_naming_the_holder_and_leaves_its_files(tmp_path):
    path = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(RunLockedError, match=f"being written by another process \\(PID {holder.pid}"):
            RunDirectory(path, {"kind": "test"})
        with pytest.raises(RunLockedError):
            runs.claim(path, {"kind": "test"})
        assert os.path.exists(os.path.join(path, "chunks", "00000.parquet.tmp"))  # its in-flight chunk is intact
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    store = RunDirectory(path, {"kind": "test"})  # the system dropped the killed holder's lock
    assert store.finished == [] and not os.path.exists(os.path.join(path, "chunks", "00000.parquet.tmp"))
    assert open(os.path.join(path, runs.LOCK)).read().strip() == str(os.getpid())
    runs.release(path)


def test_the_lock_is_reentrant_in_one_process_and_released(tmp_path):
    path = str(tmp_path / "run")
    RunDirectory(path, {"kind": "test"})
    RunDirectory(path, {"kind": "test"})  # the same process resumes its own directory
    runs.claim(path, {"kind": "test"})
    runs.release(path)
    assert os.path.realpath(path) not in runs._held
    runs.check_run_dir(path, {"kind": "test"})  # the lock file is part of a run directory
    empty = tmp_path / "claimed-only"
    runs.lock(str(empty))
    runs.release(str(empty))
    runs.check_run_dir(str(empty))  # a directory holding only the lock file is still empty for a run


def _save(value, path):
    with open(path, "w") as f:
        json.dump(value, f)


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_a_kill_between_the_artifact_rename_and_the_key_write_never_serves_the_wrong_artifact(tmp_path,
                                                                                              monkeypatch):
    path = str(tmp_path / "vectors.json")
    assert runs.keyed_artifact(path, {"k": "A"}, lambda: "built for A", save=_save, load=_load) == "built for A"
    real = runs.atomic_write

    def killed_at_the_key_write(target, text):
        if target.endswith(".key.json") and "__being_rebuilt_for__" not in text:
            raise KeyboardInterrupt("killed")  # the process dies after the artifact was renamed
        real(target, text)

    monkeypatch.setattr(runs, "atomic_write", killed_at_the_key_write)
    with pytest.raises(KeyboardInterrupt):
        runs.keyed_artifact(path, {"k": "B"}, lambda: "built for B", save=_save, load=_load)
    monkeypatch.setattr(runs, "atomic_write", real)
    assert _load(path) == "built for B"  # the artifact was replaced; its key was not written
    built = []
    again = runs.keyed_artifact(path, {"k": "A"}, lambda: built.append(1) or "built for A", save=_save, load=_load)
    assert again == "built for A" and built == [1]  # rebuilt, never B's artifact under A's key
    assert runs.keyed_artifact(path, {"k": "A"}, lambda: pytest.fail("rebuilt"), save=_save, load=_load) == again


def test_an_interrupted_first_build_is_rebuilt_even_when_mismatches_are_errors(tmp_path, monkeypatch):
    path = str(tmp_path / "concepts.json")
    real = runs.atomic_write
    monkeypatch.setattr(runs, "atomic_write", lambda t, x: (_ for _ in ()).throw(KeyboardInterrupt())
                        if t.endswith(".key.json") and "__being_rebuilt_for__" not in x else real(t, x))
    with pytest.raises(KeyboardInterrupt):
        runs.keyed_artifact(path, {"k": "A"}, lambda: "A", save=_save, load=_load, on_mismatch="error")
    monkeypatch.setattr(runs, "atomic_write", real)
    assert runs.keyed_artifact(path, {"k": "A"}, lambda: "A", save=_save, load=_load, on_mismatch="error") == "A"
    with pytest.raises(ArtifactKeyError, match="built for another configuration"):
        runs.keyed_artifact(path, {"k": "B"}, lambda: "B", save=_save, load=_load, on_mismatch="error")


@pytest.fixture
def model_copy(tmp_path):
    src = tinystories_path()
    if src is None:
        pytest.skip(TINYSTORIES_MISSING)
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return str(dst)


def test_the_fingerprint_follows_the_files_or_the_hub_commit(model_copy, tmp_path):
    before = fingerprint(model_copy)
    assert set(before["files"]) >= {"config.json", "model.safetensors"}
    assert fingerprint(model_copy) == before
    weights = os.path.join(model_copy, "model.safetensors")
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the same size, rewritten later
    assert fingerprint(model_copy) != before
    snapshot = tmp_path / "hub" / "models--org--m" / "snapshots" / ("a" * 40)
    shutil.copytree(model_copy, snapshot)
    assert fingerprint(str(snapshot)) == {"hub_commit": "a" * 40}


def test_a_sweep_refuses_to_resume_with_changed_weights(model_copy, tmp_path):
    import steerjax
    from steerjax.data.examples import Example

    examples = [Example("Once upon a time", " there", " a"), Example("The cat sat", " on", " in")]
    vec = np.random.default_rng(0).normal(size=128)
    run = str(tmp_path / "run")
    kw = dict(layers=[1], multipliers=[-1.0, 1.0], progress=False, run_dir=run)
    model = steerjax.load_model(model_copy, cache=False)
    first = steerjax.sweep(model, examples, vec, **kw)
    config = json.load(open(os.path.join(run, "config.json")))
    assert config[runs.MODEL_FINGERPRINT] == model.fingerprint
    again = steerjax.sweep(model, examples, vec, **kw)  # unchanged: resumes
    np.testing.assert_array_equal(first["propensity"], again["propensity"])
    runs.release(run)
    # the weights are replaced in place (same path, same size, new content and mtime)
    weights = os.path.join(model_copy, "model.safetensors")
    data = bytearray(open(weights, "rb").read())
    data[-4:] = b"\0\0\0\0"
    time.sleep(0.01)
    open(weights, "wb").write(bytes(data))
    changed = steerjax.load_model(model_copy, cache=False)
    with pytest.raises(RunConfigError, match="whose weights have changed since it started"):
        steerjax.sweep(changed, examples, vec, **kw)
