"""The quickstart with its defaults on any supported model: the TinyStories Llama (2 blocks, a
tokenizer that adds BOS, no chat template) and a tiny random model of each family (with or
without BOS, with or without a chat template)."""

import csv
import json
import os
import shutil

import numpy as np
import pytest

from steerjax import errors
from tests import tiny_models
from tests.helpers import CHAT_TEMPLATE, TINYSTORIES_MISSING, tiered, tinystories_path

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2", "gpt_neox", "gemma2", "gemma3"]
#: per family: (the tokenizer adds BOS, it has a chat template)
TOKENIZERS = {"gpt2": (False, False), "qwen2": (True, True), "gemma3": (False, True)}


def run(argv, capsys):
    from experiments.quickstart.run import main

    main(argv)
    return capsys.readouterr().out


def table(out):
    with open(os.path.join(out, "propensity.csv")) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def stories():
    path = tinystories_path()
    if path is None:
        pytest.skip(TINYSTORIES_MISSING)
    return path


def test_defaults_on_tinystories(stories, tmp_path, capsys):
    out = tmp_path / "run"
    printed = run(["--model", stories, "--out", str(out)], capsys)
    config = json.loads((out / "config.json").read_text())
    assert config["layer"] == 1 and "steering block 1 (default: 30% of the depth)" in printed
    assert config["chat_template"] is False and "no chat template: the question is sent as plain text" in printed
    rows = table(out)
    assert [float(r["multiplier"]) for r in rows] == [-1.5, -1, -0.5, 0, 0.5, 1, 1.5]
    margins = np.array([float(r["margin"]) for r in rows])
    assert np.all(np.diff(margins) > 0), margins  # the happy-minus-sad vector moves the margin toward happy
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 7 and not any(g["chat"] for g in gens)
    from steerjax.vectors import load_vector

    assert load_vector(str(out / "vector.safetensors")).layers == [1]


def test_answers_are_checked_before_anything_is_written(stories, tmp_path):
    from experiments.quickstart.run import main

    out = tmp_path / "run"
    with pytest.raises(errors.TokenizerError, match=r"' gloomy and upset' is \d+ tokens"):
        main(["--model", stories, "--out", str(out), "--negative", " gloomy and upset"])
    assert not out.exists()
    with pytest.raises(errors.LayerIndexError, match="--layer 9 is out of range: the model has 2 blocks"):
        main(["--model", stories, "--out", str(out), "--layer", "9"])
    assert not out.exists()


def _tokenizer_files(stories, path, bos: bool, template: bool) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(stories, name), os.path.join(path, name))
    cfg = json.load(open(os.path.join(path, "tokenizer_config.json")))
    cfg["add_bos_token"] = bos
    if template:
        cfg["chat_template"] = CHAT_TEMPLATE
    json.dump(cfg, open(os.path.join(path, "tokenizer_config.json"), "w"))


@pytest.mark.parametrize("family", tiered(FAMILIES, fast=("gpt2", "qwen2", "gemma3")))
def test_defaults_on_a_tiny_model_of_each_family(family, stories, tmp_path, capsys):
    """A random model of the family, its vocabulary the TinyStories tokenizer's (2048)."""
    import transformers

    cls, kwargs = tiny_models.SPECS[family]
    config = getattr(transformers, cls)(**dict(kwargs, vocab_size=2048))
    path = str(tmp_path / family)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path, safe_serialization=True)
    bos, template = TOKENIZERS.get(family, (True, False))
    _tokenizer_files(stories, path, bos, template)
    out = tmp_path / "run"
    printed = run(["--model", path, "--out", str(out), "--max-new-tokens", "4"], capsys)
    depth = config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layer
    saved = json.loads((out / "config.json").read_text())
    assert saved["layer"] == round(0.3 * depth) and saved["chat_template"] is template
    assert ("no chat template" in printed) is (not template)
    rows = table(out)
    assert len(rows) == 7 and all(np.isfinite(float(r["margin"])) for r in rows)
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [g["chat"] for g in gens] == [template] * 7
