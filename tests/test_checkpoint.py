"""Converted checkpoints (orbax), the conversion cache, ``steerjax convert`` and learned-vector checkpoints.

Every test that loads through the conversion cache points ``STEERJAX_CACHE`` at its own tmp_path.
Two subprocesses in all: the 8-device mesh restore, and one that is SIGKILLed twice (a conversion,
a learned-vector run; forked before JAX starts).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import steerjax
from steerjax.cli import main as cli_main
from steerjax.data import Encoded
from steerjax.errors import CheckpointError, ModelNotFoundError, SteerjaxError
from steerjax.model import convert, load_config
from steerjax.models import checkpoint
from steerjax.models.checkpoint import CacheWarning
from steerjax.vectors.learned import learn_vectors
from tests.helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDS = np.asarray([[5, 17, 3, 99, 42, 7, 250, 1], [8, 8, 9, 10, 11, 12, 13, 14]])


def assert_bit_equal(a, b):
    la, lb = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("STEERJAX_CACHE", str(root))
    return root


@pytest.fixture
def source(tiny, tmp_path):
    """A private copy of the tiny llama (its mtime can change)."""
    return shutil.copytree(tiny("llama")[0], tmp_path / "llama")


def entries(root) -> list:
    models = root / "models"
    return sorted(p for p in models.iterdir() if not p.name.startswith(".")) if models.exists() else []


# ----------------------------------------------------------------------------- convert / restore


@pytest.mark.parametrize("name", ["llama3", "gemma2"])
def test_convert_round_trip_is_bit_equal(tiny, tmp_path, cache, name):
    src = tiny(name)[0]
    ref = steerjax.load_model(src, cache=False)
    out = convert(src, str(tmp_path / "conv"))
    assert checkpoint.is_converted(out) and os.path.isdir(os.path.join(out, "state"))
    assert not entries(cache), "convert writes no cache entry"
    got = steerjax.load_model(out)
    assert got.config == ref.config and got.source == out and got.dtype == "float32"
    assert_bit_equal(got.params, ref.params)
    np.testing.assert_array_equal(np.asarray(got.logits(IDS)), np.asarray(ref.logits(IDS)))
    assert load_config(out).config == ref.config
    assert got.tokenizer is None and ref.tokenizer is None  # the tiny models have none: none is invented

    bf16 = convert(src, str(tmp_path / "bf16"), dtype="bfloat16")
    assert_bit_equal(steerjax.load_model(bf16, dtype="bfloat16").params,
                     steerjax.load_model(src, dtype="bfloat16", cache=False).params)
    with pytest.raises(CheckpointError, match="already exists"):
        convert(src, bf16)


def test_converted_directory_keeps_the_tokenizer(tinystories, tmp_path, cache):
    out = convert(tinystories.source, str(tmp_path / "ts"))
    files = sorted(os.listdir(out))
    assert "tokenizer.json" in files and "config.json" in files and checkpoint.MARKER in files
    got = steerjax.load_model(out)
    text = "Once upon a time there was a cat."
    assert got.tokenizer(text)["input_ids"] == tinystories.tokenizer(text)["input_ids"]
    assert_bit_equal(got.params, tinystories.params)


def test_cli_convert(tiny, tmp_path, cache, capsys, monkeypatch):
    src, out = tiny("qwen2")[0], str(tmp_path / "q")
    assert cli_main(["convert", src, "--out", out]) == 0
    assert "wrote" in capsys.readouterr().out and checkpoint.is_converted(out)
    assert cli_main(["convert", src, "--out", out]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli_main(["convert", src, "--out", out, "--force", "--dtype", "bfloat16"]) == 0
    assert json.load(open(os.path.join(out, checkpoint.MARKER)))["dtype"] == "bfloat16"
    assert cli_main(["convert", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert not os.path.exists(tmp_path / "x")
    # --force never replaces a directory that is not a converted checkpoint
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="refusing"):
        convert(src, str(other), force=True)
    assert (other / "keep.txt").read_text() == "mine"
    # ... and is refused before any work: no conversion runs (the command line and the library)
    monkeypatch.setattr(steerjax.model, "_convert", lambda *a, **k: pytest.fail("converted before the check"))
    assert cli_main(["convert", src, "--out", str(other), "--force"]) == 2
    assert "refusing to replace it even with --force" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="refusing"):
        convert(src, str(other), force=True)
    assert os.listdir(other) == ["keep.txt"]


def test_truncated_checkpoint_file_is_named(tiny, tmp_path, cache):
    out = convert(tiny("llama")[0], str(tmp_path / "conv"))
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(out, "state")) for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    with pytest.raises(CheckpointError, match="truncated") as e:
        steerjax.load_model(out)
    assert biggest in str(e.value)


# ----------------------------------------------------------------------------- the conversion cache


def test_cache_hit_restores_without_converting(source, cache, monkeypatch):
    first = steerjax.load_model(str(source))
    (entry,) = entries(cache)
    assert checkpoint.is_converted(str(entry))
    marker = json.load(open(entry / checkpoint.MARKER))
    assert marker["source"] == str(source) and marker["steerjax"] == steerjax.__version__
    assert "model.safetensors" in marker["source_files"]
    assert not any(f.endswith(".safetensors") for f in marker["files"]), "the cache holds no copy of the weights"

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again despite the cache")

    monkeypatch.setattr(steerjax.models.weights, "build_params", no_conversion)
    second = steerjax.load_model(str(source))
    assert second.source == str(source)
    assert_bit_equal(second.params, first.params)
    np.testing.assert_array_equal(np.asarray(second.logits(IDS)), np.asarray(first.logits(IDS)))
    # another dtype is another entry
    monkeypatch.undo()
    monkeypatch.setenv("STEERJAX_CACHE", str(cache))
    steerjax.load_model(str(source), dtype="bfloat16")
    assert len(entries(cache)) == 2


def test_cache_false_writes_nothing(source, cache):
    steerjax.load_model(str(source), cache=False)
    assert not cache.exists() or not entries(cache)


def test_stale_entry_is_reported_and_rebuilt(source, cache, recwarn):
    ref = steerjax.load_model(str(source))
    weights = source / "model.safetensors"
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.warns(CacheWarning, match="stale") as caught:
        got = steerjax.load_model(str(source))
    assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1
    assert "\n" not in str(caught[0].message)
    assert_bit_equal(got.params, ref.params)
    (entry,) = entries(cache)
    marker = json.load(open(entry / checkpoint.MARKER))
    assert marker["source_files"]["model.safetensors"][1] == st.st_mtime_ns + 10**9
    steerjax.load_model(str(source))  # current again: no warning
    assert not [w for w in recwarn if issubclass(w.category, CacheWarning)]


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_damaged_entry_is_reported_and_rebuilt(source, cache, damage):
    ref = steerjax.load_model(str(source))
    (entry,) = entries(cache)
    state = entry / "state"
    if damage == "truncate":  # caught by the recorded sizes
        victim = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        victim.write_bytes(victim.read_bytes()[:10])
    else:  # same size, unreadable: caught when orbax reads it
        victim = state / "_METADATA"
        victim.write_bytes(b"\xff" * victim.stat().st_size)
    with pytest.warns(CacheWarning, match="damaged"):
        got = steerjax.load_model(str(source))
    assert_bit_equal(got.params, ref.params)
    (entry,) = entries(cache)
    checkpoint.read_marker(str(entry))  # rebuilt whole
    steerjax.load_model(str(source))


def test_entries_of_deleted_sources_are_pruned(tiny, tmp_path, cache):
    gone = shutil.copytree(tiny("qwen3")[0], tmp_path / "gone")
    steerjax.load_model(str(gone))
    shutil.rmtree(gone)
    kept = shutil.copytree(tiny("llama")[0], tmp_path / "kept")
    steerjax.load_model(str(kept))
    (entry,) = entries(cache)
    assert json.load(open(entry / checkpoint.MARKER))["source"] == str(kept)


# ----------------------------------------------------------------------------- many devices, kills

MESH_WORKER = textwrap.dedent("""
    import sys, json, numpy as np, jax
    import steerjax
    from steerjax.sharding import make_mesh, param_specs
    conv, ids, out = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
    mesh = make_mesh(data=2, model=4)
    model = steerjax.load_model(conv, mesh=mesh)
    specs = param_specs(model.params, model.config, mesh)
    report = {"devices": jax.device_count(), "shards": {}}
    for (path, x), spec in zip(jax.tree.leaves_with_path(model.params), jax.tree.leaves(
            specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))):
        name = jax.tree_util.keystr(path)
        assert x.sharding.spec == spec, (name, x.sharding.spec, spec)
        report["shards"][name] = [list(x.shape), sorted({tuple(s.data.shape) for s in x.addressable_shards})]
    params = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree.leaves_with_path(model.params)}
    np.savez(out, logits=np.asarray(model.logits(ids)), **params)
    json.dump(report, open(out + ".json", "w"))
""")


@pytest.mark.slow
def test_restore_onto_a_2x4_mesh_of_8_devices(tiny, tmp_path, cache):
    src = tiny("llama")[0]
    ref = steerjax.load_model(src, cache=False)
    conv = convert(src, str(tmp_path / "conv"))
    np.save(tmp_path / "ids.npy", IDS)
    out = str(tmp_path / "mesh.npz")
    env = subprocess_env(8)
    run = subprocess.run([sys.executable, "-c", MESH_WORKER, conv, str(tmp_path / "ids.npy"), out], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.load(open(out + ".json"))
    assert report["devices"] == 8
    res = np.load(out)
    for path, x in jax.tree.leaves_with_path(ref.params):
        np.testing.assert_array_equal(res[jax.tree_util.keystr(path)], np.asarray(x), err_msg=str(path))
    np.testing.assert_allclose(res["logits"], np.asarray(ref.logits(IDS)), rtol=1e-5, atol=1e-5)
    # each device holds only its shard: query heads and the vocabulary split 4 ways
    q = next(v for k, v in report["shards"].items() if "q_proj" in k)
    assert q[1] == [[q[0][0], q[0][1], q[0][2] // 4]]
    embed = report["shards"]["['embed']['embedding']"]
    assert embed[1] == [[embed[0][0] // 4, embed[0][1]]]


KILL_WORKER = textwrap.dedent("""
    # Forks before JAX starts; each child is SIGKILLed at a fixed point.
    import os, signal, sys
    src, conv, run_dir = sys.argv[1:4]

    def child(fn):
        pid = os.fork()
        if pid == 0:
            try:
                fn()
            finally:
                os._exit(3)  # reached only if the kill did not happen
        _, status = os.waitpid(pid, 0)
        print("killed" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL else f"status {status}")

    def convert_killed():
        from steerjax.models import checkpoint
        from steerjax.cli import main
        save = checkpoint.save_state

        def save_then_die(*args, **kwargs):  # the state is complete, the marker and the rename are not
            save(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoint.save_state = save_then_die
        main(["convert", src, "--out", conv])

    def learned_killed():
        import steerjax
        from steerjax.vectors import learned
        sys.path.insert(0, os.environ["STEERJAX_ROOT"])
        from tests.test_checkpoint import learned_run
        step = learned._loss_and_grad
        calls = []

        def step_then_die(*args, **kwargs):
            calls.append(1)
            if len(calls) == 6:  # during step 5: steps 2 and 4 are checkpointed
                os.kill(os.getpid(), signal.SIGKILL)
            return step(*args, **kwargs)

        learned._loss_and_grad = step_then_die
        learned_run(steerjax.load_model(src, cache=False), run_dir)

    child(convert_killed)
    child(learned_killed)
""")


def learned_run(model, run_dir=None):
    """The learned-vector run the kill test interrupts (8 steps, checkpoints every 2)."""
    rng = np.random.default_rng(3)
    examples = [Encoded([int(t) for t in rng.integers(3, 200, size=int(rng.integers(4, 10)))], [10, 20, 11],
                        [10, 21, 11]) for _ in range(6)]
    init = {1: rng.normal(size=model.config.hidden_size).astype(np.float32)}
    return learn_vectors(model, examples, init, steps=8, lr=0.05, batch_size=4, progress=False,
                         checkpoint_dir=run_dir, checkpoint_every=2)


@pytest.mark.slow
def test_sigkilled_convert_and_learned_run(tiny, tiny_model, tmp_path, cache):
    """A conversion killed after writing its state leaves nothing that loads (and the next
    conversion clears its leftovers); a learned-vector run killed mid-way resumes from its last
    checkpoint to the vector an uninterrupted run gives, bit for bit."""
    src = tiny("llama")[0]
    conv, run_dir = str(tmp_path / "conv"), str(tmp_path / "learned")
    env = subprocess_env(STEERJAX_ROOT=ROOT)
    run = subprocess.run([sys.executable, "-c", KILL_WORKER, src, conv, run_dir], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.split() == ["killed", "killed"], run.stdout + run.stderr[-4000:]

    assert not os.path.exists(conv)
    with pytest.raises(ModelNotFoundError):
        steerjax.load_model(conv)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".conv.tmp-")]
    assert len(leftovers) == 1 and (leftovers[0] / "state").is_dir()  # the state was written: killed after it
    with pytest.raises(SteerjaxError):
        steerjax.load_model(str(leftovers[0]))
    convert(src, conv)
    assert not leftovers[0].exists(), "the dead conversion's temporary directory is removed"
    assert_bit_equal(steerjax.load_model(conv).params, steerjax.load_model(src, cache=False).params)

    assert sorted(os.listdir(os.path.join(run_dir, "steps"))) == ["2", "4"]
    model = tiny_model("llama")
    resumed, _ = learned_run(model, run_dir)
    fresh, _ = learned_run(model)
    np.testing.assert_array_equal(resumed[1], fresh[1])
    assert "8" in os.listdir(os.path.join(run_dir, "steps"))
    with pytest.raises(CheckpointError, match="other settings"):
        learn_vectors(model, [Encoded([5, 6, 7], [10, 20, 11], [10, 21, 11])], {1: np.zeros(64, np.float32)},
                      steps=8, progress=False, checkpoint_dir=run_dir)


@pytest.mark.slow
@pytest.mark.requires_smollm2
def test_gguf_through_the_cache_keeps_weights_and_tokenizer(smollm2, cache):
    """SmolLM2's GGUF: the cache entry holds tokenizer files only (no copy of the GGUF), and the
    restored model has the dequantized weights and the GGUF tokenizer's settings."""
    steerjax.load_model(smollm2.source)  # converts, writes the entry
    (entry,) = entries(cache)
    assert not any(n.endswith((".gguf", "tokenizer.model")) for n in os.listdir(entry))
    assert not any(n == "tokenizer.model" for _, _, fs in os.walk(cache / "gguf-tokenizers") for n in fs)
    hit = steerjax.load_model(smollm2.source)
    assert_bit_equal(hit.params, smollm2.params)
    tok, ref = hit.tokenizer, smollm2.tokenizer
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (ref.bos_token_id, ref.eos_token_id,
                                                                      ref.pad_token_id)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo, wörld! 123"}]
    assert tok.apply_chat_template(chat, add_generation_prompt=True) == ref.apply_chat_template(
        chat, add_generation_prompt=True)
    assert tok("hello world")["input_ids"] == ref("hello world")["input_ids"] == [28120, 905]
