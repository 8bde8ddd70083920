"""The HF config whitelist: every config.json field is read, known to be safe to ignore, or refused."""

import json

import pytest

from steerjax import errors
from steerjax.model import config_from_hf
from steerjax.models import gguf
from tests import tiny_models
from tests.helpers import smollm2_path, tinystories_path


def full_config(name: str) -> dict:
    """Every field transformers writes for ``tiny_models.SPECS[name]`` (defaults included)."""
    import transformers

    cls, kw = tiny_models.SPECS[name]
    return json.loads(getattr(transformers, cls)(**kw).to_json_string(use_diff=False))


@pytest.mark.parametrize("name", list(tiny_models.SPECS))
def test_transformers_configs_load(name):
    cfg = config_from_hf(full_config(name))
    assert cfg.num_layers == tiny_models.SPECS[name][1].get("num_hidden_layers", 3)


@pytest.mark.parametrize("name", list(tiny_models.SPECS))
def test_an_unknown_field_is_refused_by_name(name):
    hf = full_config(name)
    hf["attention_sink_tokens"] = 4  # an attention option no family implements
    with pytest.raises(errors.UnsupportedArchitectureError, match="attention_sink_tokens"):
        config_from_hf(hf)
    hf["attention_sink_tokens"] = None  # absent in effect
    config_from_hf(hf)


def test_multimodal_gemma3_checks_its_text_config():
    import transformers

    text = transformers.Gemma3TextConfig(**tiny_models.SPECS["gemma3"][1]).to_dict()
    hf = transformers.Gemma3Config(text_config=text).to_dict()
    assert config_from_hf(hf).family == "gemma3"
    hf["text_config"]["attention_sink_tokens"] = 4
    with pytest.raises(errors.UnsupportedArchitectureError, match="text_config.*attention_sink_tokens"):
        config_from_hf(hf)


@pytest.mark.parametrize(("name", "field", "value"), [
    ("llama", "attn_logit_softcapping", 50.0),  # soft-capping on a family without it
    ("llama", "final_logit_softcapping", 30.0),
    ("gpt_neox", "sliding_window", 16),
    ("gpt2", "scale_attn_by_inverse_layer_idx", True),
    ("gpt2", "add_cross_attention", True),
    ("gemma3", "use_bidirectional_attention", True),
    ("qwen2", "use_mrope", True),
])
def test_options_steerjax_lacks_are_refused(name, field, value):
    hf = full_config(name)
    hf[field] = value
    with pytest.raises(errors.UnsupportedArchitectureError, match=field):
        config_from_hf(hf)


@pytest.mark.parametrize("name", ["llama", "phi3", "gpt_neox", "gemma3"])
def test_unknown_rope_scaling_type_is_refused(name):
    hf = full_config(name)
    hf["rope_scaling"] = {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}
    with pytest.raises(errors.UnsupportedArchitectureError, match="rope_scaling.*longrope"):
        config_from_hf(hf)


def test_real_configs_load():
    """TinyStories' config.json (written by transformers 4.41) and SmolLM2's GGUF-derived config."""
    path = tinystories_path()
    if path is not None:
        with open(f"{path}/config.json") as f:
            assert config_from_hf(json.load(f)).model_type == "llama"
    path = smollm2_path()
    if path is not None:
        assert config_from_hf(gguf.hf_config(gguf.open_reader(path), path)).num_layers == 30
    if tinystories_path() is None and smollm2_path() is None:
        pytest.skip("neither TinyStories nor the SmolLM2 GGUF is installed")
