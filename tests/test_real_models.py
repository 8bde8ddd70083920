"""Real checkpoints: SmolLM2-135M-Instruct (GGUF, Q4_1 + Q8_0) and TinyStories-656K (bf16 safetensors)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import steerjax
from tests.helpers import smollm2_path, tinystories_path

SMOLLM2 = smollm2_path()


@pytest.mark.requires_smollm2
@pytest.mark.slow
def test_smollm2_alias_resolves_to_the_packaged_gguf(smollm2):
    assert smollm2.source == SMOLLM2
    cfg = smollm2.config
    assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == ("llama", 30, 576, 9, 3)
    assert cfg.vocab_size == 49152 and cfg.tie_word_embeddings
    assert smollm2.tokenizer is not None and smollm2.tokenizer.chat_template
    assert 130e6 < smollm2.num_parameters < 140e6
    tok = smollm2.tokenizer
    assert tok("hello world")["input_ids"] == [28120, 905]  # no BOS, as the GGUF says
    assert (tok.bos_token_id, tok.eos_token_id, tok.eos_token) == (1, 2, "<|im_end|>")  # the GGUF's ids
    assert cfg.eos_token_ids == (2,)


@pytest.mark.slow
@pytest.mark.requires_smollm2
def test_gguf_tokenizer_cache_gives_the_same_tokenizer(tmp_path, monkeypatch):
    from steerjax.models import gguf as gguf_io

    monkeypatch.setenv("STEERJAX_CACHE", str(tmp_path))
    reader = gguf_io.open_reader(SMOLLM2)
    fresh = gguf_io.load_tokenizer(SMOLLM2, reader)
    assert os.path.exists(os.path.join(gguf_io._tokenizer_cache_dir(SMOLLM2), "tokenizer.json"))
    cached = gguf_io.load_tokenizer(SMOLLM2, reader)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo, wörld! 123"}]
    for tok in (fresh, cached):
        assert tok.eos_token_id == 2 and tok("hi")["input_ids"] == fresh("hi")["input_ids"]
    assert cached.apply_chat_template(chat, add_generation_prompt=True) == fresh.apply_chat_template(
        chat, add_generation_prompt=True)


@pytest.mark.requires_smollm2
@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2):
    out = steerjax.generate(smollm2, [[{"role": "user", "content": "What is the capital of France?"}]],
                            max_new_tokens=20)
    assert "Paris" in out.texts[0], out.texts[0]


@pytest.mark.requires_smollm2
@pytest.mark.slow
def test_smollm2_logits_match_transformers_gguf_loading(smollm2, smollm2_torch):
    tm = smollm2_torch
    tok = smollm2.tokenizer
    texts = ["The quick brown fox jumps over the lazy dog.", "Steering vectors move behaviour"]
    enc = [tok(t)["input_ids"] for t in texts]
    t = max(map(len, enc))
    ids = np.zeros((2, t), np.int64)
    mask = np.zeros((2, t), np.int64)
    for i, e in enumerate(enc):  # right padding
        ids[i, : len(e)] = e
        mask[i, : len(e)] = 1
    ours = np.asarray(smollm2.logits(ids, mask))
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-3, rtol=0)


@pytest.mark.requires_smollm2
@pytest.mark.slow
def test_steering_moves_smollm2(smollm2):
    """A mean-difference vector (5 happy/sad pairs, last token) moves "Today I feel" -> happy vs sad
    monotonically in the multiplier."""
    tok = smollm2.tokenizer
    layer = 9
    happy = ["I feel happy", "I am so joyful today", "What a wonderful, delightful day",
             "I love my life, everything is great", "This makes me glad and cheerful"]
    sad = ["I feel sad", "I am so miserable today", "What a terrible, depressing day",
           "I hate my life, everything is awful", "This makes me gloomy and upset"]

    def last(text):
        ids = np.array([tok(text)["input_ids"]])
        return np.asarray(smollm2.hidden_states(ids, layers=[layer]))[0, 0, -1]

    vec = np.mean([last(a) - last(b) for a, b in zip(happy, sad)], axis=0)
    prompt = np.array([tok("Today I feel")["input_ids"]])
    (h,), (s,) = tok(" happy")["input_ids"], tok(" sad")["input_ids"]
    mults = [-1.0, -0.5, 0.0, 0.5, 1.0]
    steer = steerjax.Steering.create(smollm2, {layer: np.broadcast_to(vec, (5, vec.size))}, multipliers=mults)
    last_logits = np.asarray(smollm2.logits(np.repeat(prompt, 5, axis=0), steering=steer))[:, -1]
    margin = last_logits[:, h] - last_logits[:, s]
    assert np.all(np.diff(margin) > 0), margin
    assert margin[-1] - margin[0] > 3.0, margin


def test_tinystories_matches_transformers(tinystories, tinystories_torch):
    model, tm = tinystories, tinystories_torch
    assert model.config.tie_word_embeddings and model.config.num_layers == 2
    tok = model.tokenizer
    enc = [tok(t)["input_ids"] for t in ("Once upon a time, there was a little cat.", "The sun")]
    t = max(map(len, enc))
    ids = np.zeros((2, t), np.int64)
    mask = np.zeros((2, t), np.int64)
    for i, e in enumerate(enc):  # left padding
        ids[i, t - len(e):] = e
        mask[i, t - len(e):] = 1
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    ours = np.asarray(model.logits(ids, mask))
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(pos)).logits.numpy()
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4, rtol=0)
    out = steerjax.generate(model, ["Once upon a time"], max_new_tokens=12)
    with torch.no_grad():
        p = torch.tensor([tok("Once upon a time")["input_ids"]])
        ref_gen = tm.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=12, do_sample=False)[0, p.shape[1]:]
    n = out.lengths[0]
    np.testing.assert_array_equal(out.tokens[0, :n], ref_gen.numpy()[:n])


def test_bfloat16_loading_stays_close_to_float32(tinystories):
    f32 = tinystories
    bf16 = steerjax.load_model(tinystories_path(), dtype="bfloat16")
    assert bf16.params["embed"]["embedding"].dtype == np.dtype("bfloat16")
    ids = np.array([f32.tokenizer("Once upon a time, there was a dog")["input_ids"]])
    a, b = np.asarray(f32.logits(ids)), np.asarray(bf16.logits(ids))
    assert b.dtype == np.float32
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.8
