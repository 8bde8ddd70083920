"""Meshes: sharded sweeps, generation, profile scoring, early features and the judge equal one
device; two processes equal one; parameter sharding rules; batches padded and placed in one call;
clear errors for meshes that do not fit.

Multi-device runs need ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before jax is
imported, so they run ``tests/_mesh_worker.py`` in subprocesses.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest
from jax.sharding import AbstractMesh, Mesh, PartitionSpec

import steerjax
from steerjax import sharding
from steerjax.errors import ShardingError, SteerjaxError
from steerjax.model import config_from_hf
from steerjax.models import transformer
from tests import tiny_models
from tests.helpers import subprocess_env

WORKER = os.path.join(os.path.dirname(__file__), "_mesh_worker.py")
TIMEOUT = 420
RTOL = ATOL = 1e-5
#: residual streams (entries up to ~30) differ by float32 rounding when rows are split differently
ATOL_HIDDEN = 1e-4


def run_worker(args, devices, timeout=TIMEOUT):
    env = subprocess_env(devices)
    return subprocess.Popen([sys.executable, WORKER, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait(procs, timeout=TIMEOUT):
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"mesh worker timed out after {timeout}s:\n" + "\n".join(p.communicate()[0][-3000:] for p in procs))
    for p, out in zip(procs, outs):
        assert p.returncode == 0, f"mesh worker failed ({p.returncode}):\n{out[-5000:]}"


# ----------------------------------------------------------------------------- many devices


@pytest.mark.slow
@pytest.mark.xdist_group("chat_mesh")
def test_meshes_and_two_processes_equal_one_device(chat_model_dir, tmp_path):
    """One 8-device process: 8x1 and 1x8 meshes (the data axis alone, every batch padded to a
    multiple of 8 rows; the model axis alone, KV heads replicated) run a sweep (both position
    modes), generate (per-example steering, 5 prompts padded to 8), answer_logprobs,
    early_features and the hidden-state judge and equal its single-device results; parameter
    shards on 8x1, 4x2, 2x4 and 1x8; a one-device mesh changes nothing (sweep, generation,
    profile scoring). Then jax.distributed on CPU (gloo): 2 processes x 4 devices run the same
    on a 4x2 global mesh (both axes at once); process 0 writes what every process gets, which
    equals the 8-device process's single-device results (computed once for every comparison)."""
    out, table = str(tmp_path / "meshes.npz"), str(tmp_path / "table.parquet")
    # one after the other: on two busy cores, processes waiting in gloo's collectives alongside the
    # 8-device process cost more CPU time than they save in wall time
    wait([run_worker(["meshes", chat_model_dir, out], devices=8)])
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    wait([run_worker(["sweep", chat_model_dir, table, str(i), "2", port], devices=4) for i in range(2)])
    res = np.load(out)
    report = json.load(open(out + ".json"))
    assert report["devices"] == 8
    for mesh in ("8x1", "1x8"):
        for key in ("sweep", "sweep_all", "profile", "features", "judge_nll", "judge_hidden"):
            atol = ATOL_HIDDEN if key == "judge_hidden" else ATOL
            np.testing.assert_allclose(res[f"{mesh}/{key}"], res[f"single/{key}"], rtol=RTOL, atol=atol,
                                       err_msg=f"{key} on a {mesh} mesh")
        for key in ("sweep_keys", "tokens", "lengths", "feature_tokens"):
            np.testing.assert_array_equal(res[f"{mesh}/{key}"], res[f"single/{key}"], err_msg=f"{key} on {mesh}")
    assert res["single/tokens"].shape == (5, 6) and res["single/feature_tokens"].shape == (8, 2)
    assert res["single/judge_hidden"].shape == (5, 128)
    # 8 heads x 16 dims split over the model axis; the 4 KV heads fall back to replication on 1x8
    assert report["shards"]["2x4"] == {"self_attn.q_proj.kernel": [2, 128, 32], "self_attn.k_proj.kernel": [2, 128, 16]}
    assert report["shards"]["8x1"]["self_attn.q_proj.kernel"] == [2, 128, 128]
    assert report["shards"]["1x8"] == {"self_attn.q_proj.kernel": [2, 128, 16], "self_attn.k_proj.kernel": [2, 128, 64]}
    errors = report["errors"]
    assert errors["uneven_batch"][0] == "ShardingError" and "data=8" in errors["uneven_batch"][1]
    assert errors["mesh_size"][0] == "ShardingError" and "needs 6 devices but 8" in errors["mesh_size"][1]
    for key in ("heads", "sweep_heads"):
        assert errors[key][0] == "ShardingError" and "must divide the number of attention heads (8)" in errors[key][1]
    # a one-device mesh (the first device's) changes nothing
    pd.testing.assert_frame_equal(pd.read_parquet(out + ".one.parquet"), pd.read_parquet(out + ".single.parquet"))
    np.testing.assert_array_equal(res["1x1/tokens"], res["single/tokens"])
    assert report["texts"]["1x1"] == report["texts"]["single"]
    np.testing.assert_array_equal(res["1x1/profile"], res["single/profile"])

    # two processes: the table and the other results of the 4x2 global mesh equal one device's
    meta = json.load(open(table + ".json"))
    assert meta == {"devices": 8, "processes": 2, "mesh": {"data": 4, "model": 2}}
    got, ref = pd.read_parquet(table), pd.read_parquet(out + ".single.parquet")
    assert list(got.columns) == list(ref.columns)
    pd.testing.assert_frame_equal(got[["example", "layer", "multiplier", "correct", "thing"]],
                                  ref[["example", "layer", "multiplier", "correct", "thing"]])
    for col in ("logp_positive", "logp_negative", "propensity"):
        np.testing.assert_allclose(got[col], ref[col], rtol=RTOL, atol=ATOL, err_msg=col)
    extra = np.load(table + ".npz")
    for key in ("profile", "features", "judge_nll", "judge_hidden"):
        atol = ATOL_HIDDEN if key == "judge_hidden" else ATOL
        np.testing.assert_allclose(extra[key], res[f"single/{key}"], rtol=RTOL, atol=atol, err_msg=key)
    for key in ("tokens", "lengths", "feature_tokens"):
        np.testing.assert_array_equal(extra[key], res[f"single/{key}"], err_msg=key)


@pytest.mark.slow
def test_xla_default_flags_give_the_test_flags_results(chat_model_dir, chat_model, tmp_path):
    """The tests compile with their own XLA flags (-O0, elemental fusion emitters: tests/helpers.py);
    users and the benchmarks get XLA's defaults. One process under the defaults runs the sweeps
    (both position modes), steered generation, profile scoring, early features and the hidden-state
    judge, and equals this process's results under the test flags."""
    from tests import _mesh_worker

    out = str(tmp_path / "defaults.npz")
    env = subprocess_env()
    env["XLA_FLAGS"] = ""
    run = subprocess.run([sys.executable, WORKER, "single", chat_model_dir, out], env=env, capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "--xla_" in os.environ["XLA_FLAGS"]  # this process runs under the test flags
    got = np.load(out)
    want = _mesh_worker.arrays(_mesh_worker.everything(chat_model, None))
    assert sorted(got.files) == sorted(want)
    for key, value in want.items():
        if np.asarray(value).dtype.kind in "fc":
            atol = ATOL_HIDDEN if key == "judge_hidden" else ATOL
            np.testing.assert_allclose(got[key], value, rtol=RTOL, atol=atol, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=key)


# ----------------------------------------------------------------------------- one device


def test_a_mesh_with_other_axes_is_rejected(tinystories):
    from tests._mesh_worker import run_sweep

    model = tinystories
    with pytest.raises(ShardingError, match="axes"):
        run_sweep(model, Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("batch", "tensor")))
    with pytest.raises(ShardingError, match="jax.sharding.Mesh"):
        run_sweep(model, {"data": 1, "model": 1})


def test_make_mesh_checks_the_device_count():
    assert isinstance(ShardingError("x"), (SteerjaxError, ValueError))
    n = jax.device_count()
    with pytest.raises(ShardingError, match=f"needs {2 * n} devices but {n} are available"):
        sharding.make_mesh(2, n)
    with pytest.raises(ShardingError, match="positive int"):
        sharding.make_mesh(model=0)
    with pytest.raises(ShardingError, match="does not divide"):
        sharding.make_mesh(model=n + 1)
    assert dict(sharding.make_mesh(model=n).shape) == {"data": 1, "model": n}
    assert dict(sharding.make_mesh().shape) == {"data": 1, "model": 1}  # the test process has one device


def hf_config(name):
    import transformers

    cls, kwargs = tiny_models.SPECS[name]
    return config_from_hf(getattr(transformers, cls)(**kwargs).to_dict())


@pytest.mark.parametrize("name", sorted(tiny_models.SPECS))
def test_every_parameter_of_every_family_has_a_rule(name):
    cfg = hf_config(name)
    shapes = transformer.abstract_params(cfg)
    specs = sharding.param_specs(shapes, cfg, AbstractMesh((2, 4), ("data", "model")))
    flat = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    assert len(flat) == len(jax.tree.leaves(shapes))
    assert all("data" not in spec for spec in flat)  # parameters are replicated over examples
    assert any("model" in spec for spec in flat)


def test_uneven_kv_heads_mlp_and_vocab_are_replicated_heads_are_an_error():
    cfg = hf_config("llama")  # 4 heads, 2 KV heads, 128 MLP units, vocab 256
    shapes = transformer.abstract_params(cfg)
    specs = sharding.param_specs(shapes, cfg, {"data": 2, "model": 4})
    layers = specs["layers"]
    assert layers["self_attn"]["q_proj"]["kernel"] == PartitionSpec(None, None, "model")
    assert layers["self_attn"]["k_proj"]["kernel"] == PartitionSpec(None, None, None)  # 2 KV heads on 4 shards
    assert layers["mlp"]["down_proj"]["kernel"] == PartitionSpec(None, "model", None)
    assert specs["lm_head"]["kernel"] == PartitionSpec(None, "model")
    gpt2 = config_from_hf({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 50257,
                           "n_positions": 128})
    specs = sharding.param_specs(transformer.abstract_params(gpt2), gpt2, {"data": 1, "model": 2})
    assert specs["embed"]["embedding"] == PartitionSpec(None, None)  # an odd vocabulary is not split
    assert specs["layers"]["mlp"]["up_proj"]["kernel"] == PartitionSpec(None, None, "model")  # HF's c_fc
    with pytest.raises(ShardingError, match=r"must divide the number of attention heads \(4\)"):
        sharding.param_specs(shapes, cfg, {"data": 1, "model": 3})


def test_unknown_parameters_and_bad_shapes_are_errors():
    cfg = hf_config("llama")
    with pytest.raises(ShardingError, match="module tree has no parameter 'layers/self_attn/gate/kernel'"):
        sharding.param_specs({"layers": {"self_attn": {"gate": {"kernel": (3, 4, 4)}}}}, cfg, {"data": 1, "model": 1})
    with pytest.raises(ShardingError, match="has 2 dimensions"):
        sharding.param_specs({"layers": {"self_attn": {"q_proj": {"kernel": (3, 4)}}}}, cfg, {"data": 1, "model": 1})


def test_put_batch_pads_and_places_in_one_call():
    from steerjax.data.batch import TokenBatch, round_up

    x = np.arange(6).reshape(3, 2)
    tokens = TokenBatch.pad([[1, 2], [3], [4, 5, 6]])
    cfg = hf_config("llama")
    steer = steerjax.Steering.create(cfg, {1: np.ones((3, cfg.hidden_size))}, multipliers=[1.0, 2.0, 3.0])
    px, pt, padded, none = sharding.put_batch((x, tokens, steer, None), None, rows=4)
    np.testing.assert_array_equal(px, [[0, 1], [2, 3], [4, 5], [4, 5]])  # the last row repeated
    assert isinstance(pt, TokenBatch) and isinstance(pt.ids, jax.Array) and none is None
    for name in ("ids", "valid", "positions"):
        want = getattr(tokens, name)
        np.testing.assert_array_equal(getattr(pt, name), np.concatenate([want, want[-1:]]))
    assert padded.vectors.shape == (cfg.num_layers, 4, cfg.hidden_size)
    np.testing.assert_array_equal(padded.multipliers, [1, 2, 3, 3])
    assert padded.start.shape == padded.end.shape == (4,)
    mesh = sharding.make_mesh()
    placed = sharding.put_batch(tokens, mesh)  # the data axis (1) divides 3 rows: nothing added
    assert placed.shape == (3, 3) and placed.ids.sharding.spec == PartitionSpec("data", None)
    with pytest.raises(ShardingError, match="leading"):
        sharding.put_batch((x, np.zeros((2, 1))), None)
    with pytest.raises(ShardingError, match="does not fit 2 rows"):
        sharding.put_batch(x, None, rows=2)
    assert round_up(5, 4) == 8 and sharding.data_size(None) == 1


def test_use_mesh_and_from_env(monkeypatch):
    from steerjax import sharding

    monkeypatch.delenv("STEERJAX_DISTRIBUTED", raising=False)
    monkeypatch.delenv("STEERJAX_MESH", raising=False)
    assert sharding.from_env() is None  # one CPU device, nothing asked for
    monkeypatch.setenv("STEERJAX_MESH", "1,1")
    mesh = sharding.from_env()
    assert dict(mesh.shape) == {"data": 1, "model": 1}
    monkeypatch.setenv("STEERJAX_MESH", "two")
    with pytest.raises(ShardingError, match="DATA,MODEL"):
        sharding.from_env()
    assert sharding.default_mesh() is None
    with sharding.use_mesh(mesh):
        assert sharding.default_mesh() is mesh
        with sharding.use_mesh(None):
            assert sharding.default_mesh() is None
        assert sharding.default_mesh() is mesh
    assert sharding.default_mesh() is None


def test_load_model_places_shards_from_host(tiny):
    path, _ = tiny("llama")
    mesh = sharding.make_mesh(data=1, model=1)
    placed = steerjax.load_model(path, mesh=mesh)
    plain = steerjax.load_model(path)
    for a, b in zip(jax.tree.leaves(placed.params), jax.tree.leaves(plain.params)):
        assert isinstance(a.sharding, jax.sharding.NamedSharding) and a.sharding.mesh.shape == mesh.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
