"""Hub ids against a loopback stand-in for the Hub (``HF_ENDPOINT``), counting the files requested:
a config read fetches config and tokenizer files only, weights exactly the files the index names,
``revision=`` pins a commit that the results record, and the Hub cache's layout is a source."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import steerjax
from steerjax import errors
from steerjax.model import load_config
from tests.helpers import ROOT, TINYSTORIES_MISSING, subprocess_env, tinystories_path
from tests.hub_server import HubServer

TOKENIZER = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"}


def _files(src: str) -> dict[str, bytes]:
    return {name: open(os.path.join(src, name), "rb").read() for name in sorted(os.listdir(src))}


def _shards(weights: bytes) -> dict[str, bytes]:
    """``model.safetensors`` split into two shards (bytes copied, any dtype) and their index."""
    n = struct.unpack("<Q", weights[:8])[0]
    header = json.loads(weights[8:8 + n])
    header.pop("__metadata__", None)
    data = weights[8 + n:]
    names = sorted(header)
    parts = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
             "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    out = {}
    for shard, keys in parts.items():
        head, body = {}, b""
        for k in keys:
            begin, end = header[k]["data_offsets"]
            head[k] = dict(header[k], data_offsets=[len(body), len(body) + end - begin])
            body += data[begin:end]
        raw = json.dumps(head).encode()
        out[shard] = struct.pack("<Q", len(raw)) + raw + body
    out["model.safetensors.index.json"] = json.dumps(
        {"metadata": {}, "weight_map": {n: shard for shard, keys in parts.items() for n in keys}}).encode()
    return out


@pytest.fixture(scope="module")
def tiny_files():
    src = tinystories_path()
    if src is None:
        pytest.skip(TINYSTORIES_MISSING)
    return _files(src)


@pytest.fixture
def hub(tiny_files, tmp_path, monkeypatch):
    """The stand-in Hub with ``org/tiny`` (one weights file beside decoys), ``org/sharded`` (two
    shards, an index and decoys) and ``org/bin-only``; huggingface_hub pointed at it (as
    ``HF_ENDPOINT`` does), online, with an empty cache."""
    import huggingface_hub.constants as constants
    import huggingface_hub.file_download as file_download
    import huggingface_hub.hf_api as hf_api

    with HubServer() as server:
        decoys = {"consolidated.safetensors": tiny_files["model.safetensors"], "pytorch_model.bin": b"\0" * 64,
                  "original/params.json": b"{}"}
        server.main = server.add("org/tiny", {**tiny_files, **decoys})
        v1 = dict(tiny_files, **{"config.json": tiny_files["config.json"].replace(b'"use_cache": true',
                                                                               b'"use_cache": false')})
        server.v1 = server.add("org/tiny", v1, refs=("v1",))
        sharded = {k: v for k, v in tiny_files.items() if k != "model.safetensors"}
        sharded.update(_shards(tiny_files["model.safetensors"]))
        sharded["model-unlisted.safetensors"] = b"never fetched"
        server.add("org/sharded", {**sharded, "consolidated.safetensors": tiny_files["model.safetensors"]})
        server.add("org/bin-only", {"config.json": tiny_files["config.json"], "pytorch_model.bin": b"\0" * 64})
        server.cache = str(tmp_path / "hub-cache")
        values = {"ENDPOINT": server.base, "HF_HUB_OFFLINE": False, "HF_HUB_CACHE": server.cache,
                  "HUGGINGFACE_CO_URL_TEMPLATE": server.base + "/{repo_id}/resolve/{revision}/{filename}"}
        for module in (constants, file_download, hf_api):  # older versions copy the constants at import
            for name, value in values.items():
                if hasattr(module, name):
                    monkeypatch.setattr(module, name, value)
        yield server


def test_a_config_read_fetches_config_and_tokenizer_files_only(hub):
    header = load_config("org/tiny")
    assert set(hub.fetched("org/tiny")) == {"config.json"} | TOKENIZER
    assert len(hub.listings("org/tiny")) == 1
    assert header.config.num_layers == 2 and header.tokenizer
    assert header.commit == hub.main
    assert header.source.endswith(os.path.join("models--org--tiny", "snapshots", hub.main))


def test_a_second_config_read_asks_only_for_the_listing(hub):
    load_config("org/tiny")
    hub.clear()
    load_config("org/tiny")
    assert hub.fetched("org/tiny") == [] and len(hub.requests) == 1


def test_weights_are_exactly_the_one_model_safetensors(hub, tinystories):
    model = steerjax.load_model("org/tiny", cache=False)
    fetched = hub.fetched("org/tiny")
    assert sorted(fetched) == sorted({"config.json", "model.safetensors"} | TOKENIZER)  # each once
    assert model.commit == hub.main and model.fingerprint == {"hub_commit": hub.main}
    ids = np.array([[1, 400, 500, 600]])
    np.testing.assert_array_equal(np.asarray(model.logits(ids)), np.asarray(tinystories.logits(ids)))


def test_sharded_weights_fetch_exactly_the_shards_the_index_names(hub, tinystories):
    model = steerjax.load_model("org/sharded", cache=False)
    fetched = set(hub.fetched("org/sharded"))
    assert fetched == {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                       "model-00002-of-00002.safetensors"} | TOKENIZER
    ids = np.array([[1, 7, 8, 9]])
    np.testing.assert_array_equal(np.asarray(model.logits(ids)), np.asarray(tinystories.logits(ids)))


def test_revision_pins_a_commit(hub):
    for header in (load_config("org/tiny", revision="v1"), load_config("org/tiny@v1")):
        assert header.commit == hub.v1
        assert json.load(open(os.path.join(header.source, "config.json")))["use_cache"] is False
    assert all(p.endswith("/revision/v1") for p in hub.listings("org/tiny"))
    assert {p.split("/resolve/")[1].split("/")[0] for m, p in hub.requests if "/resolve/" in p} == {hub.v1}
    assert load_config("org/tiny", revision=hub.main).commit == hub.main
    with pytest.raises(errors.ModelNotFoundError, match="names revision 'v1' but revision='main'"):
        load_config("org/tiny@v1", revision="main")
    with pytest.raises(errors.ModelNotFoundError, match="RevisionNotFound|Revision"):
        load_config("org/tiny", revision="no-such-branch")


def test_a_missing_repository_and_a_repository_without_safetensors(hub):
    with pytest.raises(errors.ModelNotFoundError, match="org/nope"):
        load_config("org/nope")
    assert load_config("org/bin-only").config.num_layers == 2  # the config alone is fine
    with pytest.raises(errors.CheckpointError, match=r"neither model.safetensors.*pytorch_model.bin"):
        steerjax.load_model("org/bin-only", cache=False)
    assert "pytorch_model.bin" not in hub.fetched("org/bin-only")


def test_the_hub_cache_layout_is_a_source(hub):
    """A repository folder (``refs/main``, or a revision) and a snapshot folder load with no request;
    a snapshot fetched for its config gets its weights at its own commit."""
    header = load_config("org/tiny")
    hub.clear()
    model = steerjax.load_model(header.source, cache=False)  # the snapshot: weights missing, fetched
    assert set(hub.fetched("org/tiny")) == {"model.safetensors"}
    assert hub.listings("org/tiny")[0].endswith(f"/revision/{hub.main}")
    assert model.commit == hub.main
    hub.clear()
    folder = os.path.join(hub.cache, "models--org--tiny")
    again = steerjax.load_model(folder, cache=False)
    assert again.source == header.source and again.commit == hub.main
    assert steerjax.load_model(header.source, cache=False).commit == hub.main
    assert hub.requests == []
    load_config("org/tiny@v1")
    assert load_config(folder, revision="v1").commit == hub.v1
    assert load_config(f"{folder}@v1").commit == hub.v1
    with pytest.raises(errors.ModelNotFoundError, match="without a snapshot for revision 'v2'"):
        load_config(folder, revision="v2")


def test_offline_uses_the_cache_and_names_what_is_missing(hub, monkeypatch):
    import huggingface_hub.constants as constants

    load_config("org/tiny")
    hub.clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert load_config("org/tiny").commit == hub.main
    with pytest.raises(errors.ModelNotFoundError, match="lacks its weights and HF_HUB_OFFLINE is set"):
        steerjax.load_model("org/tiny", cache=False)
    with pytest.raises(errors.ModelNotFoundError, match="not in the Hub cache"):
        load_config("org/sharded")
    assert hub.requests == []


def test_a_revision_on_a_local_directory_is_refused(tinystories):
    with pytest.raises(errors.ModelNotFoundError, match="is a local directory"):
        load_config(tinystories.source, revision="main")


def test_the_cli_reads_hf_endpoint_and_revision(hub, tmp_path):
    """``steerjax info org/tiny --revision v1`` in a fresh process, with only ``HF_ENDPOINT`` set:
    the config and tokenizer files at v1's commit, no weights; the commit is printed."""
    env = subprocess_env(HF_ENDPOINT=hub.base, HF_HUB_CACHE=str(tmp_path / "cli-cache"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name, None)
    r = subprocess.run([sys.executable, "-m", "steerjax", "info", "org/tiny", "--revision", "v1", "--json"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["commit"] == hub.v1 and info["num_layers"] == 2
    assert set(hub.fetched("org/tiny")) == {"config.json"} | TOKENIZER


def test_revision_flag_errors(capsys):
    from steerjax.cli import main

    assert main(["info", "org/tiny@v1", "--revision", "v2"]) == 2
    assert "already names a revision" in capsys.readouterr().err
    assert main(["info", "org/tiny", "--revision", ""]) == 2
    assert "--revision '': give a branch, tag or commit" in capsys.readouterr().err


def test_the_quickstart_on_a_hub_id_records_the_commit(hub, tmp_path, capsys):
    """The resolved commit goes into the run's config and the vector's metadata; the weights are
    fetched once, at that commit."""
    from experiments.quickstart.run import main
    from steerjax.vectors import load_vectors

    out = tmp_path / "run"
    main(["--model", "org/tiny", "--revision", "v1", "--out", str(out), "--max-new-tokens", "2",
          "--multipliers", "0", "1"])
    config = json.loads((out / "config.json").read_text())
    assert config["model_commit"] == hub.v1 and config["revision"] == "v1"
    _, meta = load_vectors(out / "vector.safetensors")
    assert meta["model_commit"] == hub.v1
    assert hub.fetched("org/tiny").count("model.safetensors") == 1
