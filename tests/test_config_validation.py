"""Model configs and weight headers are checked before anything is allocated from them: each bad
value is a clear UnsupportedArchitectureError or CheckpointError, never a MemoryError, a raw
TypeError or an absurd parameter count."""

import contextlib
import io
import json
import struct

import numpy as np
import pytest

from steerjax import errors
from steerjax.model import config_from_hf, load_config
from steerjax.models.weights import read_safetensors
from tests import tiny_models

LLAMA = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=128,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
             max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
GPT2 = dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=256)


def test_a_sane_config_loads():
    # transformers 4.47-4.49 wrote _attn_implementation_autoset into saved configs (bookkeeping)
    cfg = config_from_hf(dict(LLAMA, _attn_implementation_autoset=True))
    assert (cfg.num_layers, cfg.head_dim, cfg.num_kv_heads) == (2, 16, 2)
    assert config_from_hf(dict(GPT2)).num_layers == 2


@pytest.mark.parametrize(("base", "field", "value", "error", "match"), [
    (LLAMA, "num_hidden_layers", 10**9, errors.UnsupportedArchitectureError, r"=1000000000 is outside"),
    (LLAMA, "num_hidden_layers", 1e9, errors.CheckpointError, r"must be an integer, got 1000000000.0"),
    (LLAMA, "num_hidden_layers", "2", errors.CheckpointError, r"num_hidden_layers must be an integer, got '2'"),
    (LLAMA, "num_hidden_layers", 4.5, errors.CheckpointError, r"num_hidden_layers must be an integer, got 4.5"),
    (LLAMA, "num_hidden_layers", True, errors.CheckpointError, r"num_hidden_layers must be an integer"),
    (LLAMA, "num_hidden_layers", 0, errors.UnsupportedArchitectureError, r"num_hidden_layers=0 is outside"),
    (LLAMA, "hidden_size", -64, errors.UnsupportedArchitectureError, r"hidden_size=-64 is outside"),
    (LLAMA, "hidden_size", 2**40, errors.UnsupportedArchitectureError, r"hidden_size=\d+ is outside"),
    (LLAMA, "vocab_size", 10**12, errors.UnsupportedArchitectureError, r"vocab_size=\d+ is outside"),
    (LLAMA, "max_position_embeddings", 2**40, errors.UnsupportedArchitectureError, "max_position_embeddings"),
    (LLAMA, "intermediate_size", [128], errors.CheckpointError, r"intermediate_size must be an integer"),
    (LLAMA, "num_key_value_heads", 3, errors.UnsupportedArchitectureError, r"not a multiple of num_key_value_heads=3"),
    (LLAMA, "num_attention_heads", 6, errors.UnsupportedArchitectureError, r"width 64 is not divisible by the 6 heads"),
    (LLAMA, "eos_token_id", [2, "x"], errors.CheckpointError, r"eos_token_id must be an integer"),
    (LLAMA, "model_type", ["llama"], errors.CheckpointError, r"model_type must be a string"),
    (GPT2, "n_layer", 10**9, errors.UnsupportedArchitectureError, r"n_layer=1000000000 is outside"),
    (GPT2, "n_head", 3, errors.UnsupportedArchitectureError, r"not divisible by the 3 heads"),
])
def test_bad_config_fields_are_refused_by_name(base, field, value, error, match):
    hf = dict(base, **{field: value})
    with pytest.raises(error, match=match):
        config_from_hf(hf)


def test_gemma3_text_config_is_checked_too():
    hf = {"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", "num_hidden_layers": "4"}}
    with pytest.raises(errors.CheckpointError, match="text_config field num_hidden_layers must be an integer"):
        config_from_hf(hf)


def test_config_json_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(errors.CheckpointError, match="must be a JSON object"):
        load_config(str(tmp_path))


@pytest.mark.parametrize(("value", "shown"), [("2", "must be an integer, got '2'"),
                                              (4.5, "must be an integer, got 4.5"),
                                              (1_000_000_000, "is outside the supported range")])
def test_info_reports_a_bad_layer_count_as_an_error(tmp_path, value, shown):
    """``steerjax info`` on such a config: ``error: ...`` and status 2, no traceback, no huge count."""
    (tmp_path / "config.json").write_text(json.dumps(dict(LLAMA, num_hidden_layers=value)))
    from steerjax.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(["info", str(tmp_path)])
    assert code == 2, out.getvalue()
    assert err.getvalue().startswith("error: ") and shown in err.getvalue()
    assert "Traceback" not in err.getvalue()


# ----------------------------------------------------------------------------- safetensors headers


def _safetensors(path, header: dict, data: bytes) -> str:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


def test_a_hand_written_header_that_is_sound_reads(tmp_path):
    data = np.arange(6, dtype=np.float32).tobytes() + np.ones(2, np.float32).tobytes()
    path = _safetensors(tmp_path / "ok.safetensors", {
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]},
        "empty": {"dtype": "F32", "shape": [0, 4], "data_offsets": [32, 32]},
    }, data)
    out = read_safetensors(path)
    np.testing.assert_array_equal(out["a"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert out["empty"].shape == (0, 4)


@pytest.mark.parametrize(("entries", "match"), [
    ({"a": {"dtype": "F32", "shape": [-2, -3], "data_offsets": [0, 24]}}, "non-negative integers"),
    ({"a": {"dtype": "F32", "shape": [2, 3.0], "data_offsets": [0, 24]}}, "non-negative integers"),
    ({"a": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 24]}}, "needs bytes 0..24"),
    ({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [-8, 16]}}, "0 <= begin <= end"),
    ({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 0]}}, "0 <= begin <= end"),
    ({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24, 5]}}, "0 <= begin <= end"),
    ({"a": {"dtype": "F99", "shape": [2, 3], "data_offsets": [0, 24]}}, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}, "'a' and 'b' overlap"),
    ({"a": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}}, "file holds 32"),
    ({"a": "not an entry"}, "bad entry for tensor 'a'"),
])
def test_bad_safetensors_headers_are_refused(tmp_path, entries, match):
    path = _safetensors(tmp_path / "bad.safetensors", entries, bytes(32))
    with pytest.raises(errors.CheckpointError, match=match):
        read_safetensors(path)


# ----------------------------------------------------------------------------- GGUF counts


def _gguf(path, block_count: int, blocks: int = 2) -> str:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(block_count)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_context_length(32)
    writer.add_vocab_size(4)
    writer.add_tensor("token_embd.weight", np.ones((4, 8), np.float32))
    for i in range(blocks):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(8, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.mark.parametrize("count", [4_000_000_000, 3])
def test_gguf_block_count_is_bounded_by_the_file(tmp_path, count):
    path = _gguf(tmp_path / "m.gguf", count)
    with pytest.raises(errors.CheckpointError, match=f"block_count is {count} but the file holds tensors of 2 blocks"):
        load_config(path)


def test_gguf_with_consistent_counts_reads(tmp_path):
    assert load_config(_gguf(tmp_path / "m.gguf", 2)).config.num_layers == 2



# ----------------------------------------------------------------------------- transformers 5 configs


def _as_transformers5(hf: dict) -> dict:
    """A transformers 4 config dict as transformers 5 writes it: the rotary fields folded into
    ``rope_parameters`` (per layer type for Gemma 3), as dumped from transformers 5.25's configs
    of the same tiny models."""
    hf = dict(hf)
    theta = hf.pop("rope_theta", hf.pop("rotary_emb_base", 10000.0))
    scaling = hf.pop("rope_scaling", None) or {"rope_type": "default"}
    rope = dict(scaling, rope_theta=theta)
    for name in ("partial_rotary_factor", "rotary_pct"):
        if name in hf:
            rope["partial_rotary_factor"] = hf.pop(name)
    if hf.get("model_type") == "gemma3_text":
        local = {"rope_type": "default", "rope_theta": hf.pop("rope_local_base_freq")}
        rope = {"full_attention": rope, "sliding_attention": local}
    hf["rope_parameters"] = rope
    return hf


@pytest.mark.parametrize("name", [n for n in tiny_models.SPECS if n != "gpt2"])
def test_transformers5_rope_parameters_read_as_the_same_config(name):
    from tests.test_config_fields import full_config

    old = full_config(name)
    new = _as_transformers5(old)
    assert "rope_parameters" in new and "rope_theta" not in new
    assert config_from_hf(new) == config_from_hf(old)


def test_rope_parameters_that_disagree_or_scale_sliding_layers_are_refused():
    with pytest.raises(errors.CheckpointError, match="rope_theta=10000.0 disagrees with rope_parameters"):
        config_from_hf(dict(LLAMA, rope_theta=10000.0, rope_parameters={"rope_type": "default", "rope_theta": 5.0}))
    with pytest.raises(errors.CheckpointError, match="rope_parameters must be an object"):
        config_from_hf(dict(LLAMA, rope_parameters=[1]))
    gemma = {"model_type": "gemma3_text", "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}}
    with pytest.raises(errors.UnsupportedArchitectureError, match="sliding layers"):
        config_from_hf(gemma)
