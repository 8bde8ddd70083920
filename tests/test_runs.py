"""RunDirectory: what a kill at any moment can leave behind is repaired when the run is opened again."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from steerjax.runs import RunConfigError
from steerjax.runs.chunks import RunDirectory

CFG = {"kind": "test", "n": 3, "layers": (1, 2)}


def table(chunk, rows=4):
    return pd.DataFrame({"chunk": [chunk] * rows, "x": [float(i) for i in range(rows)]})


def manifest_lines(path):
    with open(os.path.join(path, "manifest.jsonl")) as f:
        return [json.loads(line) for line in f]


def files(path):
    return sorted(os.listdir(os.path.join(path, "chunks")))


def test_save_load_resume(tmp_path):
    run = str(tmp_path / "run")
    rd = RunDirectory(run, CFG)
    assert not rd.done(0)
    rd.save(0, table(0))
    rd.save(1, table(1, rows=2))
    again = RunDirectory(run, dict(CFG))
    assert again.finished == [0, 1] and not again.done(2)
    pd.testing.assert_frame_equal(again.load(1), table(1, rows=2))
    assert manifest_lines(run) == [{"chunk": 0, "rows": 4}, {"chunk": 1, "rows": 2}]
    assert json.load(open(os.path.join(run, "config.json")))["layers"] == [1, 2]


def test_other_config_is_refused_with_the_difference(tmp_path):
    run = str(tmp_path / "run")
    RunDirectory(run, CFG)
    with pytest.raises(RunConfigError, match=r"different config \(differs in: n; n: 3 in the directory, 4 now") as e:
        RunDirectory(run, {**CFG, "n": 4})
    assert "new --out directory" in str(e.value)
    with open(os.path.join(run, "config.json"), "w") as f:
        f.write('{"kind": ')  # not something steerjax writes (atomic), but say what is wrong
    with pytest.raises(RunConfigError, match="unreadable config.json"):
        RunDirectory(run, CFG)


def test_torn_last_line_is_dropped_and_not_appended_to(tmp_path):
    run = str(tmp_path / "run")
    rd = RunDirectory(run, CFG)
    rd.save(0, table(0))
    rd.save(1, table(1))
    path = os.path.join(run, "manifest.jsonl")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-7])  # chunk 1's line cut by a crash
    rd = RunDirectory(run, CFG)
    assert rd.finished == [0]
    assert open(path, "rb").read().endswith(b"\n")  # repaired before anything is appended
    rd.save(1, table(1))
    rd.save(2, table(2))
    assert RunDirectory(run, CFG).finished == [0, 1, 2]
    assert [e["chunk"] for e in manifest_lines(run)] == [0, 1, 2]


def test_garbage_line_in_the_middle_is_dropped(tmp_path):
    run = str(tmp_path / "run")
    rd = RunDirectory(run, CFG)
    rd.save(0, table(0))
    with open(os.path.join(run, "manifest.jsonl"), "a") as f:
        f.write('{"chunk": 1, "ro\n{"rows": 3}\n')
    rd.save(2, table(2))
    assert RunDirectory(run, CFG).finished == [0, 2]
    assert [e["chunk"] for e in manifest_lines(run)] == [0, 2]


def test_chunk_file_without_manifest_line_is_redone(tmp_path):
    run = str(tmp_path / "run")
    rd = RunDirectory(run, CFG)
    rd.save(0, table(0))
    table(1).to_parquet(os.path.join(run, "chunks", "00001.parquet"))  # killed between rename and append
    rd = RunDirectory(run, CFG)
    assert rd.finished == [0] and files(run) == ["00000.parquet"]
    rd.save(1, table(1))
    assert RunDirectory(run, CFG).finished == [0, 1]


def test_tmp_files_are_removed(tmp_path):
    run = str(tmp_path / "run")
    rd = RunDirectory(run, CFG)
    rd.save(0, table(0))
    open(os.path.join(run, "chunks", "00001.parquet.tmp"), "wb").write(b"PAR1 half a file")
    open(os.path.join(run, "config.json.tmp123"), "w").write("{")
    open(os.path.join(run, "notes.tmp"), "w").write("the user's file")
    rd = RunDirectory(run, CFG)
    assert files(run) == ["00000.parquet"]
    assert sorted(os.listdir(run)) == [".lock", "chunks", "config.json", "manifest.jsonl", "notes.tmp"]


def test_missing_or_damaged_chunk_file_is_redone(tmp_path):
    run = str(tmp_path / "run")
    rd = RunDirectory(run, CFG)
    for i in range(3):
        rd.save(i, table(i))
    os.remove(os.path.join(run, "chunks", "00001.parquet"))
    open(os.path.join(run, "chunks", "00002.parquet"), "wb").write(b"not parquet")
    rd = RunDirectory(run, CFG)
    assert rd.finished == [0]
    assert [e["chunk"] for e in manifest_lines(run)] == [0]
    assert files(run) == ["00000.parquet"]


def test_row_count_mismatch_is_redone(tmp_path):
    run = str(tmp_path / "run")
    rd = RunDirectory(run, CFG)
    rd.save(0, table(0, rows=4))
    table(0, rows=3).to_parquet(os.path.join(run, "chunks", "00000.parquet"))
    assert RunDirectory(run, CFG).finished == []


def test_duplicate_lines_give_one_chunk(tmp_path):
    run = str(tmp_path / "run")
    rd = RunDirectory(run, CFG)
    rd.save(0, table(0))
    rd.save(1, table(1))
    rd.save(1, table(1))  # e.g. two processes, or a chunk redone after its line was written
    rd = RunDirectory(run, CFG)
    assert rd.finished == [0, 1]
    assert manifest_lines(run) == [{"chunk": 0, "rows": 4}, {"chunk": 1, "rows": 4}]
    pd.testing.assert_frame_equal(rd.load(1), table(1))


def test_killed_before_config_or_manifest_exists(tmp_path):
    run = tmp_path / "run"
    (run / "chunks").mkdir(parents=True)  # killed right after makedirs
    rd = RunDirectory(str(run), CFG)
    assert rd.finished == []
    rd.save(0, table(0))
    assert RunDirectory(str(run), CFG).finished == [0]


def test_vector_files_are_written_atomically(tmp_path, monkeypatch):
    import numpy as np
    import safetensors.numpy

    from steerjax.vectors import io

    path = str(tmp_path / "v.safetensors")
    io.save_vectors(path, {0: np.ones(4, np.float32)})

    def torn(tensors, filename, metadata=None):  # killed half way through writing
        open(filename, "wb").write(b"\x08\x00")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.numpy, "save_file", torn)
    with pytest.raises(KeyboardInterrupt):
        io.save_vectors(path, {0: np.zeros(4, np.float32)})
    monkeypatch.undo()
    vectors, _ = io.load_vectors(path)  # the old file, whole
    assert np.all(vectors[0] == 1) and os.listdir(tmp_path) == ["v.safetensors"]


# ----------------------------------------------------------------------------- map_chunks, keyed artifacts, claim


def test_map_chunks_resumes_and_says_what_it_reuses(tmp_path, capsys):
    from steerjax.runs.chunks import map_chunks

    calls = []

    def work(i, chunk):
        calls.append(i)
        return table(chunk, rows=chunk)

    rd = RunDirectory(str(tmp_path / "run"), CFG)
    first = map_chunks([1, 2], work, store=rd, desc="demo")
    assert calls == [0, 1] and len(first) == 3
    rd = RunDirectory(str(tmp_path / "run"), CFG)
    second = map_chunks([1, 2, 3], work, store=rd, desc="demo")
    assert calls == [0, 1, 2]  # only the new chunk is computed
    pd.testing.assert_frame_equal(second.iloc[:3], first)
    assert list(second["chunk"]) == [1, 2, 2, 3, 3, 3]
    assert "2 of 3 chunks already done" in capsys.readouterr().err
    assert len(map_chunks([1], work, store=None, progress=False)) == 1 and calls[-1] == 0


def test_keyed_artifact_rebuilds_or_refuses_on_another_key(tmp_path):
    import numpy as np

    from steerjax.errors import ArtifactKeyError
    from steerjax.runs import keyed_artifact

    path = str(tmp_path / "v.npy")
    built = []

    def build(value):
        def make():
            built.append(value)
            return np.full(3, value)
        return make

    kw = dict(save=lambda v, p: np.save(p, v), load=np.load)
    assert keyed_artifact(path, {"model": "a", "n": 1}, build(1.0), **kw).tolist() == [1.0] * 3
    assert keyed_artifact(path, {"model": "a", "n": 1}, build(9.0), **kw).tolist() == [1.0] * 3  # reused
    assert built == [1.0]
    with pytest.raises(ArtifactKeyError, match="differs in: n"):
        keyed_artifact(path, {"model": "a", "n": 2}, build(2.0), on_mismatch="error", **kw)
    assert keyed_artifact(path, {"model": "a", "n": 2}, build(2.0), **kw).tolist() == [2.0] * 3  # rebuilt
    assert built == [1.0, 2.0] and sorted(os.listdir(tmp_path)) == ["v.npy", "v.npy.key.json"]
    np.save(str(tmp_path / "w.npy"), np.zeros(2))  # a file steerjax did not build
    with pytest.raises(ArtifactKeyError, match="no w.npy.key.json"):
        keyed_artifact(str(tmp_path / "w.npy"), {"n": 1}, build(3.0), on_mismatch="error", **kw)


def test_claim_writes_config_once_and_checks_it(tmp_path):
    from steerjax.runs import claim

    run = str(tmp_path / "exp")
    assert claim(run, {"preset": "smoke", "layers": (1, 2)}) == {"preset": "smoke", "layers": [1, 2]}
    before = os.stat(os.path.join(run, "config.json")).st_mtime_ns
    claim(run, {"preset": "smoke", "layers": [1, 2]})
    assert os.stat(os.path.join(run, "config.json")).st_mtime_ns == before  # not rewritten
    with pytest.raises(RunConfigError, match="differs in: preset"):
        claim(run, {"preset": "quick", "layers": [1, 2]})


def test_digest_of_bytes_arrays_and_json():
    """The one digest: bytes as they are, arrays by dtype, shape and bytes, the rest as sorted JSON."""
    import hashlib

    import numpy as np

    from steerjax.runs import digest

    assert digest(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert digest(b"abc", length=16) == hashlib.sha256(b"abc").hexdigest()[:16]
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    by_hand = hashlib.sha256(b"int32(2, 3)" + a.tobytes()).hexdigest()
    assert digest(a) == digest((a,)) == by_hand
    assert digest(a) != digest(a.reshape(3, 2)) != digest(a.astype(np.int64))  # shape and dtype count
    assert digest({"b": 1, "a": [1, 2]}) == digest({"a": [1, 2], "b": 1}) == hashlib.sha256(
        b'{"a": [1, 2], "b": 1}').hexdigest()
    assert digest({"x": np.float32(0.5), "v": np.array([1, 2])}) == digest({"x": 0.5, "v": [1, 2]})
