"""Prompt-steerability data (steering and profiling statements) and yes/no scoring with KV reuse."""

from __future__ import annotations

import json

import jax
import numpy as np
import pandas as pd
import pytest

from steerjax.data import prompt_steering as pdata
from steerjax.data.batch import TokenBatch
from steerjax.data.examples import DataError
from steerjax.errors import ContextLengthError
from steerjax.studies.prompt_steerability import scoring

# ----------------------------------------------------------------------------- data fixtures


def _write_data(root, dims=("curiosity", "humility")):
    rows = []
    for d in dims:
        for direction in ("positive", "negative"):
            for i in range(5):
                s = f"{d} {direction} steering {i}"
                rows.append({"id": f"{d}-{direction}-{i}", "statement": s, "direction": direction,
                             "label_confidence": 0.9, "label_confidence_integer": 5, "persona_dim": d,
                             "stratify_by": f"{d}_{direction}"})
    (root / "prompt-steering").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "prompt-steering" / "steering_df.csv", index=False)
    persona = root / "anthropic-evals" / "persona"
    persona.mkdir(parents=True)
    for d in dims:
        lines = []
        for i in range(2):  # steering statements reappear among the persona statements, spaced differently
            lines.append({"statement": f"  {d} positive steering {i} ", "label_confidence": 0.99,
                          "answer_matching_behavior": " Yes"})
        for i in range(8):
            answer = " Yes" if i % 2 == 0 else " No"
            lines.append({"statement": f"{d} profile {i}", "label_confidence": 0.7 + 0.03 * i,
                          "answer_matching_behavior": answer})
        (persona / f"{d}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


@pytest.fixture
def fake_data(tmp_path, monkeypatch):
    root = _write_data(tmp_path / "data")
    monkeypatch.setenv("STEERJAX_DATA", str(root))
    return root


def test_dimensions_and_steering_statements(fake_data):
    assert pdata.list_dimensions() == ["curiosity", "humility"]
    pos = pdata.steering_statements("curiosity", "positive")
    assert pos == [f"curiosity positive steering {i}" for i in range(5)]
    three = pdata.steering_statements("curiosity", "positive", 3, seed=1)
    assert len(set(three)) == 3 and set(three) <= set(pos)
    assert pdata.steering_statements("curiosity", "positive", 3, seed=1) == three
    assert pdata.steering_statements("curiosity", "positive", 4, seed=1)[:3] == three  # nested budgets
    assert pdata.steering_statements("curiosity", "positive", 5, seed=2) != pdata.steering_statements(
        "curiosity", "positive", 5, seed=3)


def test_steering_errors(fake_data):
    with pytest.raises(DataError, match="dimension 'curiosity' has only 5 positive statements; budget 6"):
        pdata.steering_statements("curiosity", "positive", 6)
    with pytest.raises(DataError, match="did you mean 'curiosity'"):
        pdata.steering_statements("curiosty", "positive")
    with pytest.raises(DataError, match="direction"):
        pdata.steering_statements("curiosity", "up")
    with pytest.raises(DataError, match="at least one statement"):
        pdata.steering_prompt([])


def test_prompt_and_query_formats():
    assert pdata.steering_prompt(["I like cats. ", "I am kind."], prompt_format="steerjax-v1") == (
        "You abide by the following principles:\n- I like cats.\n- I am kind.")
    msgs = pdata.query_messages("I like cats.", "SYS", prompt_format="steerjax-v1")
    assert msgs[0] == {"role": "system", "content": "SYS"}
    assert msgs[1] == {"role": "user", "content": (
        "Answer with yes or no, where:\n"
        "yes: The statement is something I would say.\n"
        "no: The statement is not something I would say.\n\n"
        "Is the following statement something you would say?\nI like cats.")}
    assert [m["role"] for m in pdata.query_messages("x", prompt_format="steerjax-v1")] == ["user"]


def test_profiling_statements(fake_data):
    df = pdata.profiling_statements(["curiosity"])
    assert list(df.columns) == ["dimension", "statement", "direction", "label_confidence"]
    assert not any("steering" in s for s in df.statement)  # steering statements excluded after stripping
    assert len(df) == 8
    yes = {f"curiosity profile {i}" for i in range(0, 8, 2)}
    assert set(df.loc[df.direction == "positive", "statement"]) == yes
    high = pdata.profiling_statements(["curiosity", "humility"], confidence_threshold=0.8, num_questions=2, seed=0)
    assert (high.label_confidence >= 0.8).all()
    assert high.groupby(["dimension", "direction"]).size().tolist() == [2, 2, 2, 2]
    again = pdata.profiling_statements(["curiosity", "humility"], confidence_threshold=0.8, num_questions=2, seed=0)
    pd.testing.assert_frame_equal(high, again)
    everything = [pdata.profiling_statements("curiosity", num_questions=3, seed=s) for s in range(6)]
    assert len({tuple(d.statement) for d in everything}) > 1  # the seed matters


def test_profiling_errors(fake_data):
    with pytest.raises(DataError, match="no profiling statements after filtering"):
        pdata.profiling_statements("curiosity", confidence_threshold=0.999)
    with pytest.raises(DataError, match="did you mean 'humility'"):
        pdata.profiling_statements(["humilty"])
    with pytest.raises(DataError, match="only 1 positive profiling statements .* ask for at most 1"):
        pdata.profiling_statements("curiosity", confidence_threshold=0.86, num_questions=3)


def test_missing_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("STEERJAX_DATA", raising=False)
    monkeypatch.setenv("STEERJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STEERJAX_DATA_MIRROR", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(DataError, match=r"STEERJAX_DATA is not set, so steerjax downloads "
                                        r"prompt-steering/steering_df\.csv .*cannot reach"):
        pdata.list_dimensions()


# ----------------------------------------------------------------------------- scoring


PROMPTS = [None, pdata.steering_prompt(["I like cats."]), pdata.steering_prompt(["I love dogs.", "Rain is bad."])]
QUESTIONS = ["I like to play.", "The sky is blue and I am very happy today.", "Bob ran.", "Lily saw a big red ball."]


PAD = 192


def _uncached(model, prompts, questions, answers=scoring.ANSWERS):
    """Scores from full chat + answer sequences, no cache, one at a time."""
    tok = model.tokenizer
    out = np.zeros((len(prompts), len(questions), 2))
    for p, system in enumerate(prompts):
        for q, question in enumerate(questions):
            text = tok.apply_chat_template(pdata.query_messages(question, system),
                                           add_generation_prompt=True, tokenize=False)
            chat = tok(text, add_special_tokens=False)["input_ids"]
            for a, answer in enumerate(answers):
                full = tok(text + answer, add_special_tokens=False)["input_ids"]
                assert full[:len(chat)] == chat and len(full) <= PAD
                batch = TokenBatch.pad([full], side="right", width=PAD)  # right padding: one compile, same logits
                logp = np.asarray(jax.nn.log_softmax(model.logits(batch), axis=-1))[0]
                out[p, q, a] = sum(logp[i - 1, full[i]] for i in range(len(chat), len(full)))
    return out


def test_cached_equals_uncached_multi_token(chat_model):
    tok = chat_model.tokenizer
    text = tok.apply_chat_template(pdata.query_messages("x"), add_generation_prompt=True, tokenize=False)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    assert len(tok(text + "yes", add_special_tokens=False)["input_ids"]) - n > 1  # "yes" is multi-token here
    got = scoring.answer_logprobs(chat_model, PROMPTS, QUESTIONS, batch_size=5, progress=False)
    assert got.shape == (3, 4, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, _uncached(chat_model, PROMPTS, QUESTIONS), atol=1e-4, rtol=0)


def test_single_token_answers(chat_model):
    answers = ("the", "no")  # both single tokens after the generation prompt for this tokenizer
    got = scoring.answer_logprobs(chat_model, PROMPTS[1:], QUESTIONS[:3], answers=answers, progress=False)
    np.testing.assert_allclose(got, _uncached(chat_model, PROMPTS[1:], QUESTIONS[:3], answers), atol=1e-4, rtol=0)


def test_batched_equals_one_at_a_time(chat_model):
    batched = scoring.answer_logprobs(chat_model, PROMPTS, QUESTIONS, batch_size=64, progress=False)
    tiny = scoring.answer_logprobs(chat_model, PROMPTS, QUESTIONS, batch_size=1, progress=False)
    np.testing.assert_allclose(tiny, batched, atol=1e-5, rtol=1e-6)  # float32 sums of ~-20
    for p, system in enumerate(PROMPTS):
        for q, question in enumerate(QUESTIONS[:2]):
            one = scoring.answer_logprobs(chat_model, [system], [question], progress=False)
            np.testing.assert_allclose(one[0, 0], batched[p, q], atol=1e-4, rtol=0)


def test_context_length_error(chat_model):
    long_prompt = pdata.steering_prompt(["Lily and Ben played in the big park with a red ball."] * 60)
    with pytest.raises(ContextLengthError, match="longer than the model's context of 512"):
        scoring.answer_logprobs(chat_model, [long_prompt], QUESTIONS[:1], progress=False)


def test_answers_match():
    lp = np.array([[[-1.0, -2.0], [-3.0, -1.0], [-1.0, -1.5]]])
    assert scoring.answers_match(lp, ["positive", "positive", "negative"]).tolist() == [[True, False, False]]
    with pytest.raises(DataError, match="2 directions for 3 questions"):
        scoring.answers_match(lp, ["positive", "negative"])
    with pytest.raises(DataError, match="'positive' or 'negative'"):
        scoring.answers_match(lp, ["positive", "negative", "up"])


# ----------------------------------------------------------------------------- the released data


@pytest.mark.requires_data
def test_real_steering_statements():
    dims = pdata.list_dimensions()
    assert len(dims) == 70
    for d in dims[:5]:
        for direction in pdata.DIRECTIONS:
            assert len(pdata.steering_statements(d, direction)) == 100
    with pytest.raises(DataError, match="has only 100 positive statements; budget 150"):
        pdata.steering_statements(dims[0], "positive", 150)


@pytest.mark.requires_data
def test_real_profiling_excludes_steering():
    dims = pdata.list_dimensions()[:3]
    df = pdata.profiling_statements(dims, num_questions=20, confidence_threshold=0.9, seed=0)
    assert df.groupby(["dimension", "direction"]).size().eq(20).all()
    for d in dims:
        steer = {s.strip() for direction in pdata.DIRECTIONS for s in pdata.steering_statements(d, direction)}
        assert not set(df.loc[df.dimension == d, "statement"]) & steer
