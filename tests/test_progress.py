"""steerjax.progress: a tqdm bar on a terminal, plain lines (stage, done/total, rate, ETA) elsewhere."""
import io

import pandas as pd

from steerjax import progress
from steerjax.runs.chunks import RunDirectory, map_chunks


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_say_stage_done_total_rate_and_eta():
    out, clock = io.StringIO(), _Clock()
    bar = progress.Lines(total=120, desc="rollouts", unit="chunk", file=out, clock=clock, every=30)
    for _ in range(10):  # 10 chunks in 20 s: no line before 30 s
        clock.now += 2
        bar.update(1)
    clock.now += 10
    bar.update(5)  # 15 chunks at 30 s: a line
    clock.now += 1
    bar.update(1)  # 1 s later: none
    clock.now = 480
    bar.n = 120
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "rollouts: 0/120 started",
        "rollouts: 15/120 (12%), 2 s/chunk, 30s elapsed, ETA 3m30s",  # slower than 1/s: s per chunk, as tqdm
        "rollouts: 120/120 (100%) done in 8m00s, 4 s/chunk",
    ]


def test_off_a_terminal_the_helper_prints_lines_where_tqdm_prints_nothing(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    out = io.StringIO()
    items = list(progress.tqdm(range(3), desc="features", unit="batch", disable=None, file=out))
    assert items == [0, 1, 2]
    lines = out.getvalue().splitlines()
    assert lines[0] == "features: 0/3 started"
    assert lines[1].startswith("features: 1/3 (33%)") and "ETA" in lines[1]
    assert lines[-1].startswith("features: 3/3 (100%) done in ")


def test_disable_true_is_silent_and_a_terminal_gets_a_tqdm_bar():
    out = io.StringIO()
    assert list(progress.tqdm(range(2), disable=True, file=out)) == [0, 1]
    assert out.getvalue() == ""
    term = _Terminal()
    bar = progress.tqdm(total=2, desc="sweep", file=term)
    assert type(bar).__name__ != "Lines"
    bar.update(2)
    bar.close()
    assert "sweep" in term.getvalue() and "2/2" in term.getvalue()


def test_an_error_leaves_no_done_line(monkeypatch):
    out = io.StringIO()
    try:
        with progress.tqdm(total=4, desc="profile", file=out, disable=None) as bar:
            bar.update(1)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert "done" not in out.getvalue()


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "5")
    assert progress.interval() == 5
    monkeypatch.setenv(progress.INTERVAL_ENV, "soon")
    assert progress.interval() == progress.DEFAULT_INTERVAL
    monkeypatch.delenv(progress.INTERVAL_ENV)
    assert progress.interval() == progress.DEFAULT_INTERVAL


def test_map_chunks_reports_in_a_log(tmp_path, monkeypatch, capsys):
    """Every chunked run (sweep, profile, testbed) reports through map_chunks: off a terminal (as
    under pytest's capture) it prints lines, a resumed run starting from the reused chunks."""
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    store = RunDirectory(str(tmp_path / "run"), {"what": "test"})

    def work(i, chunk):
        return pd.DataFrame({"x": [chunk]})

    table = map_chunks([1, 2, 3], work, store=store, desc="sweep")
    assert table["x"].tolist() == [1, 2, 3]
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "sweep: 0/3 started" and err[-1].startswith("sweep: 3/3 (100%) done in ")
    map_chunks([1, 2, 3, 4], work, store=RunDirectory(str(tmp_path / "run"), {"what": "test"}), desc="sweep")
    err = capsys.readouterr().err.splitlines()
    assert "3 of 4 chunks already done" in err[0] and err[1] == "sweep: 3/4 started"
    map_chunks([1], work, desc="quiet", progress=False)
    assert capsys.readouterr().err == ""


def test_a_stage_says_when_it_starts_and_ends():
    out, clock = io.StringIO(), _Clock()
    with progress.stage("fitting CatBoost", file=out, clock=clock):
        clock.now = 72
    assert out.getvalue().splitlines() == ["fitting CatBoost ...", "fitting CatBoost: done in 1m12s"]
    out = io.StringIO()
    try:
        with progress.stage("loading", file=out):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert out.getvalue() == "loading ...\n"
    with progress.stage("quiet", file=out, disable=True):
        pass
    assert "quiet" not in out.getvalue()


def test_write_is_tqdms():
    out = io.StringIO()
    progress.tqdm.write("a message", file=out)
    assert out.getvalue() == "a message\n"
