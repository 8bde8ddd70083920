"""Pinned, verified data downloads (steerjax.data.download, steerjax data list / download), offline.

The end-to-end check (an experiment on a fresh machine, data fetched on first use) is
tests/test_reliability_experiment.py::test_reliability_experiment_smoke.

A real HTTP server on 127.0.0.1 (tests/data_server.py) stands in for GitHub's raw-file host through
STEERJAX_DATA_MIRROR. It serves the copies under STEERJAX_DATA laid out by UPSTREAM.tsv, and small
files made here for the pinned files not held there (the manifest is patched to pin those).
"""

from __future__ import annotations

import json
import os

import pytest

from steerjax.cli import main as cli
from steerjax.data import download as dl
from steerjax.data import manifest, steering_bench, store
from steerjax.errors import DataError
from tests.data_server import (
    DataServer,
    made_files,
    served_files,
    sources_with,
    upstream_rows,
)
from tests.helpers import data_dir


@pytest.fixture(scope="module")
def shared():
    """The data directory (STEERJAX_DATA), the test-made files and the manifest pinning them."""
    src = data_dir()
    made = made_files(src)
    return src, made, sources_with(manifest.SOURCES, made)


@pytest.fixture(scope="module")
def server(shared):
    src, made, sources = shared
    with DataServer(served_files(src, sources, made)) as srv:
        yield srv


@pytest.fixture
def cache(shared, server, tmp_path, monkeypatch):
    """STEERJAX_DATA unset, the cache in tmp_path, the mirror at the server, the manifest patched;
    yields the cache's data directory."""
    monkeypatch.setattr(manifest, "SOURCES", shared[2])
    monkeypatch.delenv("STEERJAX_DATA", raising=False)
    monkeypatch.setenv("STEERJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STEERJAX_DATA_MIRROR", server.base)
    server.requests.clear()
    server.faults.clear()
    return tmp_path / "cache" / "data"


def leftovers(root):
    """Every file under ``root`` (relative paths), temporary ones included."""
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# ----------------------------------------------------------------------------- the manifest's facts


@pytest.mark.requires_data
def test_manifest_agrees_with_upstream_tsv_and_the_local_copies(shared):
    src = shared[0]
    rows = {(r["repo"], r["path"]): r for r in upstream_rows(src)}
    files = dl.all_files()
    assert len(files) == 179 and len({f.local for f in files}) == len(files)
    checked = 0
    for f in files:
        row = rows[(f.repo, f.path)]  # every pinned file is one of the recorded upstream files
        assert (f.commit, f.size, f.sha1) == (row["commit"], int(row["size"]), row["git_blob_sha1"]), f.local
        if row["local"]:
            assert row["local"] == f.local  # the layout STEERJAX_DATA already has
            path = os.path.join(src, f.local)
            if f.size != -1:
                assert os.path.getsize(path) == f.size, f.local
            assert dl.git_blob_sha1(path) == f.sha1, f.local
            checked += 1
    assert checked == 172  # every pinned file held locally: persona, x-risk, licences, steering_df
    # what the library reads is pinned: the persona and x-risk datasets, the steering statements, the prompts
    assert {f.source for f in files} == {"anthropic-evals", "prompt-steering", "steering-bench", "steerboost"}
    assert dl.find("anthropic-evals/persona/anti-immigration.jsonl") is not None
    assert dl.find("prompt-steering/steering_df.csv").path.endswith("datasets/steering_df.csv")
    assert dl.find("steering-bench/persona_prompts.py").repo == "dtch1997/steering-bench"
    assert [f.local for f in dl.licence_files("prompt-steering")] == ["prompt-steering/LICENSE",
                                                                      "prompt-steering/NOTICE"]
    assert dl.licence_files("steerboost") == []


def test_git_blob_sha1_is_gits(tmp_path):
    (tmp_path / "hello").write_bytes(b"hello\n")
    assert dl.git_blob_sha1(tmp_path / "hello") == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object


def test_urls_keep_githubs_raw_layout(monkeypatch):
    entry = dl.find("prompt-steering/steering_df.csv")
    monkeypatch.delenv("STEERJAX_DATA_MIRROR", raising=False)
    assert entry.url() == ("https://raw.githubusercontent.com/IBM/prompt-steering/"
                           "ed0aaea569d81ab97c3aa28dc713b208c4c4d822/prompt_steerability/persona/benchmark/datasets/"
                           "steering_df.csv")
    monkeypatch.setenv("STEERJAX_DATA_MIRROR", "http://mirror.local/raw/")
    assert entry.url().startswith("http://mirror.local/raw/IBM/prompt-steering/ed0aaea")


@pytest.mark.requires_data
def test_data_list_counts_files_of_unrecorded_size(capsys):
    assert cli(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "files: 169 of 172 present; 58.9 MB present of 58.9 MB + 3 file(s) of unrecorded size" in out
    assert "files: 3 of 4 present; 2.9 MB present of 2.9 MB + 1 file(s) of unrecorded size" in out
    assert "files: 0 of 1 present; 0 B present of 38.3 kB" in out


# ----------------------------------------------------------------------------- downloads


@pytest.mark.requires_data
def test_every_served_file_downloads_and_verifies(cache, server):
    done = dl.download(None, cache)
    assert len(done) == len(dl.all_files()) and all(new for _, new in done)
    for f, _ in done:
        assert dl.problem(cache / f.local, f) is None, f.local
    assert not [p for p in leftovers(cache) if p.endswith(".part")]
    asked = len(server.requests)
    again = dl.download(None, cache)  # a rerun keeps what verifies
    assert not any(new for _, new in again) and len(server.requests) == asked


@pytest.mark.requires_data
def test_a_source_downloads_and_a_rerun_skips_what_verifies(cache, server):
    done = dl.download(["prompt-steering", "steering-bench", "steerboost"], cache)
    assert [f.local for f, new in done if new] == [
        "prompt-steering/LICENSE", "prompt-steering/NOTICE", "prompt-steering/steering_df.csv",
        "prompt-steering/profiling_df.csv", "steering-bench/persona_prompts.py", "steerboost/concepts.json",
        "steerboost/alpaca_eval.json"]
    assert sorted(leftovers(cache)) == sorted(f.local for f, _ in done)
    (cache / "prompt-steering" / "NOTICE").write_bytes(b"edited")  # a damaged copy is replaced
    server.requests.clear()
    again = dl.download(["prompt-steering"], cache)
    assert [f.local for f, new in again if new] == ["prompt-steering/NOTICE"] and len(server.requests) == 1


@pytest.mark.requires_data
def test_a_flipped_byte_is_refused_and_nothing_is_kept(cache, server):
    entry = dl.find("anthropic-evals/persona/anti-immigration.jsonl")
    server.faults[f"/{entry.repo}/{entry.commit}/{entry.path}"] = "flip"
    with pytest.raises(DataError, match=r"checksum mismatch for anthropic-evals/persona/anti-immigration\.jsonl.*"
                                        r"not kept"):
        dl.fetch(entry, cache)
    assert leftovers(cache) == []  # not the file, nor its temporary copy
    assert dl.fetch(entry, cache) == (cache / entry.local, True)  # the server's next answer is right


@pytest.mark.requires_data
def test_a_transfer_cut_midway_gives_a_clear_error_and_the_rerun_completes(cache, server):
    entry = dl.find("prompt-steering/steering_df.csv")
    server.faults[f"/{entry.repo}/{entry.commit}/{entry.path}"] = "half"
    with pytest.raises(DataError, match=r"transfer of http://127\.0\.0\.1:\d+/IBM/prompt-steering/.*steering_df\.csv "
                                        r"ended after 1438411 of 2876822 bytes.*rerun"):
        dl.download(["prompt-steering"], cache)
    assert leftovers(cache) == ["prompt-steering/LICENSE", "prompt-steering/NOTICE"]  # done before the cut
    done = dl.download(["prompt-steering"], cache)
    assert [f.local for f, new in done if new] == ["prompt-steering/steering_df.csv",
                                                   "prompt-steering/profiling_df.csv"]
    assert dl.problem(cache / entry.local, entry) is None


@pytest.mark.requires_data
def test_ctrl_c_during_a_download_leaves_nothing(cache, server, monkeypatch):
    entry = dl.find("prompt-steering/steering_df.csv")
    real = dl.urllib.request.urlopen

    class Interrupting:  # the response of the real server, interrupted after the first block
        def __init__(self, response):
            self.response, self.blocks = response, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.response.close()

        @property
        def headers(self):
            return self.response.headers

        def read(self, n):
            self.blocks += 1
            if self.blocks == 2:
                raise KeyboardInterrupt
            return self.response.read(n)

    monkeypatch.setattr(dl.urllib.request, "urlopen", lambda *a, **k: Interrupting(real(*a, **k)))
    with pytest.raises(KeyboardInterrupt):
        dl.fetch(entry, cache)
    assert leftovers(cache) == []
    monkeypatch.setattr(dl.urllib.request, "urlopen", real)
    assert dl.fetch(entry, cache)[1] and dl.problem(cache / entry.local, entry) is None


@pytest.mark.requires_data
def test_a_stalled_server_times_out_naming_the_url(cache, server):
    entry = dl.find("anthropic-evals/LICENSE")
    server.faults[f"/{entry.repo}/{entry.commit}/{entry.path}"] = "stall"
    with pytest.raises(DataError, match=r"downloading http://127\.0\.0\.1:\d+/anthropics/evals/.*/LICENSE timed out"):
        dl.fetch(entry, cache, timeout=0.5)
    assert leftovers(cache) == []


@pytest.mark.requires_data
def test_unreachable_and_missing_urls_are_named(cache, server, monkeypatch):
    entry = dl.find("anthropic-evals/LICENSE")
    with pytest.raises(DataError, match=r"HTTP 404.*not on this server"):
        dl.fetch(entry, cache, base=server.base + "/nothing-here")
    monkeypatch.setenv("STEERJAX_DATA_MIRROR", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(DataError, match=r"cannot reach http://127\.0\.0\.1:9/anthropics/evals/.*/LICENSE .*"
                                        r"STEERJAX_DATA_MIRROR='http://127\.0\.0\.1:9'"):
        dl.fetch(entry, cache)
    assert leftovers(cache) == []


# ----------------------------------------------------------------------------- loaders: first use, STEERJAX_DATA


@pytest.mark.requires_data
def test_loaders_download_what_they_read_on_first_use(cache, server, shared, monkeypatch):
    from steerjax.data import list_datasets, load_dataset, persona_prompts
    from steerjax.data import prompt_steering as pdata

    src = shared[0]
    assert store.data_root() == cache
    names = list_datasets()  # from the manifest: no request
    assert server.requests == [] and not cache.exists()
    monkeypatch.setenv("STEERJAX_DATA", src)
    assert names == list_datasets()  # the same catalogue as the shared directory
    monkeypatch.delenv("STEERJAX_DATA")
    examples = load_dataset("corrigible-neutral-HHH", split="0%:50%", max_examples=3)
    assert len(examples) == 3
    assert leftovers(cache) == ["anthropic-evals/LICENSE",
                                "anthropic-evals/advanced-ai-risk/lm_generated_evals/corrigible-neutral-HHH.jsonl"]
    asked = len(server.requests)
    load_dataset("corrigible-neutral-HHH", split="50%:100%", max_examples=3)
    assert len(server.requests) == asked == 2  # present files are not fetched again
    # the persona prompts come from steering-bench's .py, read as data, as from the JSON
    table = json.loads(open(os.path.join(src, "steering-bench", "persona_prompts.json"), encoding="utf-8").read())
    assert persona_prompts("anti-immigration") == table["prompts"]["anti-immigration"]
    assert (cache / "steering-bench" / "persona_prompts.py").is_file()
    # the reference's profiling table is pinned, so it is used
    assert pdata.profiling_source() == "profiling_df.csv"
    assert "agreeableness" in pdata.list_dimensions()
    assert not [p for p in leftovers(cache) if p.endswith(".part")]


@pytest.mark.requires_data
def test_steerjax_data_set_means_no_request(cache, server, shared, tmp_path, monkeypatch):
    from steerjax.data import list_datasets, load_dataset, persona_prompts
    from steerjax.data import prompt_steering as pdata

    monkeypatch.setenv("STEERJAX_DATA", shared[0])
    assert store.data_root() == store.data_override()
    assert len(list_datasets()) == 168
    load_dataset("anti-immigration", max_examples=2, setting="SYS_positive")
    persona_prompts("corrigible-neutral-HHH")
    pdata.list_dimensions()
    assert pdata.profiling_source() == "persona-derived"  # not in the shared directory: not fetched
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("STEERJAX_DATA", str(empty))  # a directory lacking everything: errors, still no request
    for call in (list_datasets, lambda: persona_prompts("anti-immigration"), pdata.list_dimensions):
        with pytest.raises(DataError, match="is missing"):
            call()
    wanted = empty / "prompt-steering" / "steering_df.csv"
    assert store.data_file(wanted) == wanted
    assert cli(["data", "download", "steerboost"]) == 2  # the command refuses too, without --to
    assert server.requests == [] and not cache.exists()


@pytest.mark.requires_data
def test_a_read_only_cache_gives_a_clear_error(cache, server):
    cache.mkdir(parents=True)
    os.chmod(cache, 0o555)
    try:
        if os.access(cache, os.W_OK):  # root writes anyway: check the same error another way
            if os.environ.get("CI") != "true":
                pytest.skip("the read-only cache cannot be simulated by permissions here (running as root); "
                            "test_a_cache_under_a_file_gives_a_clear_error checks the same error")
            os.chmod(cache, 0o755)
            cache.rmdir()
            cache.write_text("a file where the cache should be")
        with pytest.raises(DataError, match=r"cannot write the data directory .*cache/data.*STEERJAX_CACHE"):
            dl.fetch(dl.find("anthropic-evals/LICENSE"), cache)
        with pytest.raises(DataError, match="STEERJAX_DATA is not set, so steerjax downloads .*cannot write"):
            from steerjax.data import load_dataset

            load_dataset("corrigible-neutral-HHH", max_examples=1)
        assert server.requests == []  # refused before asking
    finally:
        if cache.is_dir():
            os.chmod(cache, 0o755)


@pytest.mark.requires_data
def test_a_cache_under_a_file_gives_a_clear_error(cache, server, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("STEERJAX_CACHE", str(blocker / "cache"))
    from steerjax.data import load_dataset

    with pytest.raises(DataError, match=r"STEERJAX_DATA is not set, so steerjax downloads .*cannot write the data "
                                        r"directory .*not-a-dir/cache/data.*STEERJAX_CACHE to a writable directory"):
        load_dataset("corrigible-neutral-HHH", max_examples=1)
    assert server.requests == []
    assert cli(["data", "download", "steerboost"]) == 2


# ----------------------------------------------------------------------------- persona_prompts.py as data


@pytest.mark.requires_data
def test_persona_prompts_py_is_read_as_data_never_run(tmp_path, shared):
    made = shared[1]["experiments/steering_generalization/persona_prompts.py"]
    path = tmp_path / "persona_prompts.py"
    path.write_bytes(made)  # it imports a missing module and raises SystemExit when run
    table = steering_bench.read_persona_prompts(path)
    ref = json.loads(open(os.path.join(shared[0], "steering-bench", "persona_prompts.json"), encoding="utf-8").read())
    assert table["prompts"] == ref["prompts"] and table["categories"] == ref["categories"]
    # other shapes: prompts as dicts, one dict per category, ** merges and non-literals skipped
    other = steering_bench.parse_persona_prompts(
        "import os\nA = {'x': {'positive': 'You x.', 'negative': 'You do not x.'}, 'bad': os.sep}\n"
        "BY_TOPIC = {'topic': {'y': ('You y.', 'You do not y.'), 'z': ('You z.', 'You do not z.')}}\n"
        "ALL = {**A, 'x': ('You x!', 'Not x!')}\n")
    assert other["prompts"] == {"x": {"positive": "You x!", "negative": "Not x!"},
                                "y": {"positive": "You y.", "negative": "You do not y."},
                                "z": {"positive": "You z.", "negative": "You do not z."}}
    assert other["categories"] == {"topic": ["y", "z"]}
    with pytest.raises(DataError, match="holds no persona prompts"):
        steering_bench.parse_persona_prompts("X = 1\nY = {'a': 1}\n")
    with pytest.raises(DataError, match="not valid Python"):
        steering_bench.parse_persona_prompts("def (:\n")


# ----------------------------------------------------------------------------- the command line


@pytest.mark.requires_data
def test_data_list(cache, server, shared, capsys, monkeypatch):
    assert cli(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert f"data directory: {cache} (the download cache: STEERJAX_DATA is unset" in out
    assert f"downloads from: {server.base}/OWNER/REPO/COMMIT/PATH" in out
    assert "anthropic-evals  anthropics/evals @ 84fcc677e52e" in out
    assert "files: 0 of 172 present; 0 B present of 58.9 MB\n" in out  # the test pins sycophancy's sizes
    assert "licence: CC BY 4.0: anthropic-evals/LICENSE (not downloaded yet)" in out
    assert "licence: no licence file upstream; fetched for you, not redistributed" in out
    dl.download(["prompt-steering"], cache)
    asked = len(server.requests)
    assert cli(["data", "list", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "files: 4 of 4 present, SHA-1 checked" in out
    assert "licence: Apache-2.0" in out and "prompt-steering/LICENSE, prompt-steering/NOTICE\n" in out
    (cache / "prompt-steering" / "NOTICE").write_bytes(b"edited")
    assert cli(["data", "list"]) == 0
    assert "damaged: prompt-steering/NOTICE (6 bytes, the manifest pins 609)" in capsys.readouterr().out
    monkeypatch.setenv("STEERJAX_DATA", shared[0])
    assert cli(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert f"data directory: {shared[0]} (STEERJAX_DATA: nothing is downloaded)" in out
    assert "downloads from" not in out and "files: 169 of 172 present" in out  # all but sycophancy
    assert "note: steering-bench/persona_prompts.json is read instead of steering-bench/persona_prompts.py" in out
    assert len(server.requests) == asked == 4  # listing asks nothing


@pytest.mark.requires_data
def test_data_download_command(cache, server, tmp_path, capsys, monkeypatch):
    target = tmp_path / "mine"
    assert cli(["data", "download", "steerboost", "steering-bench", "--to", str(target)]) == 0
    out = capsys.readouterr().out
    assert "steerboost: 2 files, 2 downloaded, 0 already verified; licence no file: no licence file upstream; " \
           "fetched for you, not redistributed" in out
    assert f"to use it: export STEERJAX_DATA={target}" in out
    assert leftovers(target) == ["steerboost/alpaca_eval.json", "steerboost/concepts.json",
                                 "steering-bench/persona_prompts.py"]
    assert cli(["data", "download", "steerboost", "--to", str(target)]) == 0
    assert "2 files, 0 downloaded, 2 already verified" in capsys.readouterr().out
    assert cli(["data", "download", "steerboost", "--to", str(target), "--force"]) == 0
    assert "2 files, 2 downloaded" in capsys.readouterr().out
    # the directory it fills is a data directory: STEERJAX_DATA can name it, the .py prompts read as data
    monkeypatch.setenv("STEERJAX_DATA", str(target))
    from steerjax.data import persona_prompts

    assert persona_prompts("anti-immigration")["positive"]
    assert cli(["data", "download", "nope"]) == 2
    assert "unknown data source 'nope'" in capsys.readouterr().err
    assert cli(["data", "download"]) == 2
    err = capsys.readouterr().err
    assert "error: STEERJAX_DATA is set" in err and "pass --to DIR" in err
    monkeypatch.delenv("STEERJAX_DATA")
    assert cli(["data", "download", "steerboost"]) == 0  # the cache by default
    assert leftovers(cache) == ["steerboost/alpaca_eval.json", "steerboost/concepts.json"]


def test_data_help_and_usage_errors(capsys, tmp_path):
    for argv in (["data", "--help"], ["data", "list", "--help"], ["data", "download", "--help"]):
        assert cli(argv) == 0
    out = capsys.readouterr().out
    assert "STEERJAX_DATA_MIRROR" in out and "--to DIR" in out and "--force" in out and "--verify" in out
    assert "anthropic-evals, prompt-steering, steering-bench, steerboost" in out.replace("\n", " ").replace("- ", "-")
    assert cli(["data", "list", "--to", str(tmp_path / "nowhere")]) == 2
    assert "error: --to " in capsys.readouterr().err
    assert cli(["data", "download", "nope", "--to", str(tmp_path / "d")]) == 2
    assert "error: unknown data source 'nope'" in capsys.readouterr().err and not (tmp_path / "d").exists()
