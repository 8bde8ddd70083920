"""The LLM judge (studies.steerability_prediction.llm_judge) against real HTTP servers on 127.0.0.1 (steerjax.serve):
scripted replies for the failure modes, and a steerjax model answering through its chat template."""

import json
import re
import sqlite3
import threading
import time

import numpy as np
import pandas as pd
import pytest

from steerjax.errors import JudgeError
from steerjax.serve import ChatServer, Reply, completion, error_body, model_server
from steerjax.studies.steerability_prediction import llm_judge as lj

FAST = {"backoff": 0.01, "max_backoff": 0.05, "progress": False}


def table(texts=("zero A", "one B", "two C"), concept="agreeableness"):
    """One prompt: its unsteered row, then one steered row per text."""
    rows = [{"prompt_id": 0, "prompt": "Tell me about your day.", "concept": "none", "strength": 0.0,
             "text": "I had a nice day.", "tokens": [1, 2]}]
    rows += [{"prompt_id": 0, "prompt": "Tell me about your day.", "concept": concept, "strength": 0.1 * (i + 1),
              "text": t, "tokens": [3, 4]} for i, t in enumerate(texts)]
    return pd.DataFrame(rows)


def response_of(request):
    """The steered response in a judge request (the line after SteerBoost's '**Steered Response:**')."""
    return re.search(r"\*\*Steered Response:\*\* (.*)\n", request["messages"][0]["content"]).group(1)


def by_word(request):
    """A judge that answers from the response's first word: zero / one / two -> 0 / 1 / 2."""
    j = {"zero": 0, "one": 1, "two": 2}[response_of(request).split()[0]]
    return completion(json.dumps({"explanation": "scripted", "judgment": j}), model=request["model"])


def judge(server, tmp_path, **kw):
    return lj.LLMJudge(kw.pop("model", "judge-model"), base_url=server.url, api_key="k",
                       cache_dir=str(tmp_path / "cache"), **{**FAST, **kw})


# ----------------------------------------------------------------------------- the prompt and the parser


def test_prompt_is_steerboosts():
    p = lj.STEERBOOST_PROMPT
    assert p.startswith("\nYou are an expert evaluator assessing the effectiveness of AI model steering.")
    assert "**0 - Under-steering (Concept Missing)**" in p and "**1 - Successful Steering (Concept Present & " \
        "Coherent)**" in p and "**2 - Over-steering (Incoherent Answer)**" in p
    assert "- When response is empty, it should be rated as over-steering\n" in p
    assert p.endswith('    "judgment": <0, 1, or 2>\n}}\n')
    assert len(p) == 2241  # the reference's literal, its backslash-newline line breaks removed
    j = lj.LLMJudge("m", cache=False)
    msg = j.message("Say hi.", "response with emojis", "hello {x} 🙂")
    assert ("**Original Prompt:** Say hi.\n**Target Concept:** response with emojis\n"
            "**Steered Response:** hello {x} 🙂\n") in msg
    assert msg.endswith('{\n    "explanation": "Brief explanation of your judgment, including specific evidence from '
                        'the response",\n    "judgment": <0, 1, or 2>\n}\n')
    assert j.concept_text("believes-in-gun_rights") == "believes in gun rights"
    assert lj.LLMJudge("m", concepts={"x": "formal tone"}, cache=False).concept_text("x") == "formal tone"
    assert j.version == lj.prompt_version(p) and lj.prompt_version(p + " ") != j.version


def steerboost_body(prompt, concept_name, response_after):
    """SteerBoost's request body for one rollout (submit_gpt_judgment.py): its evaluation_prompt
    filled by str.format with the concept_name of concepts.json as it is, and no temperature."""
    content = lj.STEERBOOST_PROMPT.format(prompt=prompt, concept=concept_name, response_after=response_after)
    return {"model": "gpt-5-mini", "messages": [{"role": "user", "content": content}],
            "response_format": {"type": "json_object"}}


# names of SteerBoost's kind with "-" / "_" (the examples) and without
NAMES = ("iambic-like", "step-by-step", "FAQ-style", "snake_case identifiers", "formal tone", "{braces}")


def test_concept_names_verbatim_are_steerboosts(tmp_path):
    """with STEERBOOST_JUDGE_OPTIONS every request body is SteerBoost's."""
    readable = lj.LLMJudge("m", cache=False)
    verbatim = lj.LLMJudge("m", cache=False, **lj.STEERBOOST_JUDGE_OPTIONS)
    assert lj.STEERBOOST_JUDGE_OPTIONS == {"concept_names": "verbatim", "temperature": None}
    assert [readable.concept_text(n) for n in NAMES[:4]] == ["iambic like", "step by step", "FAQ style",
                                                            "snake case identifiers"]
    assert [verbatim.concept_text(n) for n in NAMES] == list(NAMES)
    assert lj.LLMJudge("m", cache=False, concept_names="verbatim", concepts={"x-y": "z"}).concept_text("x-y") == "z"
    with pytest.raises(JudgeError, match="concept_names must be one of"):
        lj.LLMJudge("m", cache=False, concept_names="spaces")
    with ChatServer(by_word) as server:
        j = judge(server, tmp_path, model=lj.STEERBOOST_JUDGE_MODEL, **lj.STEERBOOST_JUDGE_OPTIONS)
        frames = [table(("one x",), concept=n).assign(prompt_id=i) for i, n in enumerate(NAMES)]
        scores, rep = j(pd.concat(frames, ignore_index=True))
    assert rep.judged == len(NAMES) and rep.temperature is None
    want = sorted(json.dumps(steerboost_body("Tell me about your day.", n, "one x"), sort_keys=True) for n in NAMES)
    assert sorted(json.dumps(b, sort_keys=True) for b in server.bodies) == want


@pytest.mark.requires_data
def test_real_steerboost_concepts_reach_the_judge_verbatim():
    """Every concept name of SteerBoost's concepts.json ($STEERJAX_DATA/steerboost/) gives SteerBoost's
    judge message."""
    from steerjax.data import store
    from steerjax.data.steerboost import steerboost_concepts

    path = store.data_root() / "steerboost" / "concepts.json"
    if not path.is_file():
        pytest.skip(f"{path} is missing: `steerjax data download steerboost` fetches SteerBoost's concepts.json")
    names = steerboost_concepts(path)["concept"].tolist()
    assert len(names) == 150
    j = lj.LLMJudge("m", cache=False, **lj.STEERBOOST_JUDGE_OPTIONS)
    for name in names:
        want = steerboost_body("Explain photosynthesis.", name, "Leaves eat light.")["messages"][0]["content"]
        assert j.message("Explain photosynthesis.", j.concept_text(name), "Leaves eat light.") == want, name


@pytest.mark.parametrize("answer, want", [
    ('{"explanation": "fine", "judgment": 1}', (1, "fine", None)),
    ('```json\n{"explanation": "x y", "judgment": 2}\n```', (2, "x y", None)),
    ('Here you go: {"judgment": "0", "explanation": "no concept"} Thanks', (0, "no concept", None)),
    ('{"judgment": 2.0}', (2, None, None)),
    ('{"explanation": "cut sho', (None, None, "no JSON object with a 'judgment' in the answer")),
    ('{"explanation": "she said "hi"", "judgment": 1}', (1, None, None)),  # broken JSON, one explicit judgment
    ('"judgment": 0 ... or "judgment": 2', (None, None, "the answer gives several judgments ['0', '2']")),
    ('{"explanation": "x"}', (None, None, "the JSON answer has no 'judgment'")),
    ('{"judgment": 3}', (None, None, "'judgment' is 3, not 0, 1 or 2")),
    ('{"judgment": true}', (None, None, "'judgment' is True, not 0, 1 or 2")),
    ("1", (None, None, "no JSON object with a 'judgment' in the answer")),  # a bare digit is not read
    ("", (None, None, "empty answer")),
    (None, (None, None, "empty answer")),
])
def test_parse_judgment(answer, want):
    assert lj.parse_judgment(answer) == want


# ----------------------------------------------------------------------------- labelling through a server


def test_labels_requests_and_report(tmp_path):
    with ChatServer(by_word) as server:
        j = judge(server, tmp_path, concurrency=2)
        t = table(("zero A", "one B", "two C", "one B"))  # the last repeats a question: asked once
        scores, rep = j(t)
    assert list(scores.index) == list(t.index)
    assert scores["label"].fillna("-").tolist() == ["-", "under-steer", "success", "over-steer", "success"]
    np.testing.assert_array_equal(scores["judgment"], [np.nan, 0, 1, 2, 1])
    assert scores["status"].tolist() == ["not judged", "ok", "ok", "ok", "ok"]
    assert scores["explanation"].tolist()[1:] == ["scripted"] * 4 and scores["label"].isna().iloc[0]
    assert server.requests == 3 and rep.requests == 3 and rep.questions == 3 and rep.cache_hits == 0
    assert (rep.rows, rep.judged, rep.unparseable, rep.malformed, rep.not_judged) == (5, 4, 0, 0, 1)
    body = server.bodies[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"} and "max_tokens" not in body
    assert len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"
    sent = {b["messages"][0]["content"] for b in server.bodies}
    assert sent == {j.message("Tell me about your day.", "agreeableness", x) for x in ("zero A", "one B", "two C")}
    assert "3 questions, 0 from the cache, 3 requests (0 retries)" in rep.how and rep.to_dict()["judged"] == 4


def test_options_sent_and_environment(tmp_path, monkeypatch):
    with ChatServer(by_word) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "env-key")
        monkeypatch.setenv("STEERJAX_JUDGE_MODEL", "env-model")
        monkeypatch.setenv("STEERJAX_CACHE", str(tmp_path / "root"))
        j = lj.LLMJudge(temperature=None, max_tokens=64, json_mode=False, **FAST)
        assert (j.model, j.base_url, j.api_key) == ("env-model", server.url, "env-key")
        assert j.cache_dir == str(tmp_path / "root" / "judge")
        j(table(("one",)))
    body = server.bodies[0]
    assert body["model"] == "env-model" and body["max_tokens"] == 64
    assert "temperature" not in body and "response_format" not in body
    assert (tmp_path / "root" / "judge" / lj.CACHE_FILE).exists()


def test_cache_rerun_makes_no_requests(tmp_path):
    with ChatServer(by_word) as server:
        first, _ = judge(server, tmp_path)(table())
        assert server.requests == 3
        again, rep = judge(server, tmp_path)(table())
        assert server.requests == 3 and rep.requests == 0 and rep.cache_hits == 3
        pd.testing.assert_frame_equal(again.drop(columns="cached"), first.drop(columns="cached"))
        assert again["cached"].tolist() == [False, True, True, True] and not first["cached"].any()
        # the key holds the model, the prompt version and the request options: each change asks again
        judge(server, tmp_path, model="other-model")(table())
        assert server.requests == 6
        judge(server, tmp_path, template=lj.STEERBOOST_PROMPT + "\n")(table())
        assert server.requests == 9
        judge(server, tmp_path, temperature=0.7)(table())
        assert server.requests == 12
        # the concept text too; another base URL is another endpoint: asked again
        judge(server, tmp_path, concepts={"agreeableness": "a kind, agreeable persona"})(table())
        assert server.requests == 15
    with ChatServer(by_word) as other:
        judge(other, tmp_path)(table())
        assert other.requests == 3
    with sqlite3.connect(tmp_path / "cache" / lj.CACHE_FILE) as db:
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 18
    # no cache: every run asks
    with ChatServer(by_word) as server:
        judge(server, tmp_path, cache=False)(table())
        judge(server, tmp_path, cache=False)(table())
        assert server.requests == 6


# ----------------------------------------------------------------------------- failures


def scripted(*replies, then=by_word):
    """A reply function giving ``replies`` in order, then ``then``."""
    queue = list(replies)
    lock = threading.Lock()

    def respond(request):
        with lock:
            r = queue.pop(0) if queue else None
        return then(request) if r is None else r

    return respond


@pytest.mark.parametrize("status", [429, 503, 500, 408])
def test_retry_then_success(tmp_path, status):
    busy = Reply(status, error_body("busy, try again", type="rate_limit_error" if status == 429 else "server_error"))
    with ChatServer(scripted(busy, busy)) as server:
        t0 = time.perf_counter()
        scores, rep = judge(server, tmp_path, concurrency=1)(table(("one",)))
    assert scores["label"].fillna("-").tolist() == ["-", "success"]
    assert server.requests == 3 and rep.requests == 3 and rep.retries == 2
    # backoff 0.01 then 0.02 s, each with up to 25% jitter (not the default 1 s, nor a Retry-After)
    assert 0.03 <= rep.backoff_seconds <= 0.03 * 1.25 + 1e-9
    assert time.perf_counter() - t0 >= rep.backoff_seconds
    assert f"({rep.retries} retries, 0.0 s of backoff)" in rep.how


def test_retry_after_header_is_honoured(tmp_path):
    slow = Reply(429, error_body("rate limited"), headers={"Retry-After": "0.3"})
    with ChatServer(scripted(slow)) as server:
        t0 = time.perf_counter()
        _, rep = judge(server, tmp_path, max_backoff=5.0)(table(("two",)))
        assert 0.3 <= time.perf_counter() - t0 and server.requests == 2
    assert rep.backoff_seconds == 0.3  # the header's wait, not the 0.01 s backoff


def test_retries_are_bounded(tmp_path):
    with ChatServer(lambda r: Reply(503, error_body("overloaded", type="server_error"))) as server:
        with pytest.raises(JudgeError) as e:
            judge(server, tmp_path, concurrency=1, max_retries=3)(table(("one",)))
    msg = str(e.value)
    assert server.url in msg and "HTTP 503: overloaded" in msg and "after 4 attempt(s)" in msg
    assert "No labels were returned" in msg
    assert server.requests == 4


def test_server_down(tmp_path):
    server = ChatServer(by_word)
    url = server.url
    server.close()  # the port is free again: nothing listens there
    j = lj.LLMJudge("m", base_url=url, api_key="k", cache_dir=str(tmp_path), max_retries=2, **FAST)
    t0 = time.perf_counter()
    with pytest.raises(JudgeError) as e:
        j(table(("one", "two")))
    msg = str(e.value)
    assert url in msg and "connection failed" in msg and "after 3 attempt(s)" in msg
    assert "the 0 answer(s) received before it are kept in the cache" in msg
    # the short backoff, 0.01 + 0.02 s (+ up to 25%) per question: at most the two questions' retries
    # (the second question stops once the first has failed)
    assert 0.03 <= j.last_report.backoff_seconds <= 2 * 0.03 * 1.25 + 1e-9
    assert time.perf_counter() - t0 >= 0.03


def test_timeout(tmp_path):
    with ChatServer(lambda r: Reply(200, by_word(r), delay=1.0)) as server:
        with pytest.raises(JudgeError) as e:
            judge(server, tmp_path, timeout=0.2, max_retries=1)(table(("one",)))
        assert "no reply within 0.2 s" in str(e.value) and server.url in str(e.value)
        assert server.requests == 2
    # a slow first reply, then a quick one: retried, labelled
    with ChatServer(scripted(Reply(200, {"choices": []}, delay=1.0))) as server:
        scores, rep = judge(server, tmp_path, timeout=0.2, max_retries=1)(table(("two",)))
        assert scores["label"].fillna("-").tolist() == ["-", "over-steer"] and rep.retries == 1


def test_wrong_key_and_wrong_url(tmp_path):
    with ChatServer(by_word, api_key="right") as server:
        with pytest.raises(JudgeError) as e:
            judge(server, tmp_path)(table())
        msg = str(e.value)
        assert server.url in msg and "HTTP 401" in msg and "OPENAI_API_KEY" in msg
        assert server.requests >= 1  # one per question in flight, no retry of a 401
        assert server.requests <= 3
        # the right key works
        j = lj.LLMJudge("m", base_url=server.url, api_key="right", cache_dir=str(tmp_path), **FAST)
        assert j(table())[0]["status"].tolist() == ["not judged", "ok", "ok", "ok"]
        root = server.url[:-len("/v1")]
        with pytest.raises(JudgeError, match=r"answered HTTP 404 .*base_url should end with /v1"):
            lj.LLMJudge("m", base_url=root, api_key="right", cache=False, **FAST)(table())


def test_refused_request_400(tmp_path):
    with ChatServer(lambda r: Reply(400, error_body("Unsupported value: 'temperature' does not support 0"))) as s:
        with pytest.raises(JudgeError, match="HTTP 400 .*does not support 0.*temperature=None"):
            judge(s, tmp_path, concurrency=1)(table(("one",)))
        assert s.requests == 1


def test_malformed_and_unparseable_answers(tmp_path):
    replies = {
        "a": Reply(200, "not json at all"),
        "b": Reply(200, {"id": "x", "object": "chat.completion"}),  # no choices
        "c": Reply(200, {"choices": []}),
        "d": Reply(200, '{"choices": [', content_type="application/json"),  # cut JSON
        "e": completion("I think it is fine.", model="m"),  # text with no score
        "f": completion('{"judgment": 7}', model="m"),
        "g": completion("", model="m", finish_reason="length"),
        "h": completion('{"explanation": "ok", "judgment": 1}', model="m"),
    }
    with ChatServer(lambda r: replies[response_of(r)]) as server:
        with pytest.warns(UserWarning, match="3 unparseable and 4 malformed answer"):
            scores, rep = judge(server, tmp_path, concurrency=3)(table(tuple(replies)))
        assert server.requests == 8
        s = scores.iloc[1:].set_index(pd.Index(list(replies)))
        assert s["status"].tolist() == ["malformed"] * 4 + ["unparseable"] * 3 + ["ok"]
        assert s["label"].isna().tolist() == [True] * 7 + [False] and s["label"].iloc[7] == "success"
        assert np.isnan(s["judgment"].iloc[:7]).all() and s["judgment"].iloc[7] == 1
        assert "no 'choices'" in s.loc["a", "problem"] and "no 'choices'" in s.loc["b", "problem"]
        assert s.loc["c", "problem"] == "the reply has no choices" and "not valid JSON" in s.loc["d", "problem"]
        assert s.loc["e", "problem"] == "no JSON object with a 'judgment' in the answer"
        assert s.loc["e", "answer"] == "I think it is fine."
        assert s.loc["g", "problem"] == "empty answer (the answer was cut at max_tokens)"
        assert (rep.judged, rep.unparseable, rep.malformed) == (1, 3, 4)
        # only answers with a judgment are cached: a rerun asks the 4 malformed and 3 unparseable again
        with pytest.warns(UserWarning):
            again, rep2 = judge(server, tmp_path)(table(tuple(replies)))
        assert server.requests == 15 and rep2.cache_hits == 1
        pd.testing.assert_series_equal(again["status"], scores["status"])


def test_failure_keeps_received_answers_in_the_cache(tmp_path):
    key_fixed = {"yet": False}

    def flaky(request):
        if response_of(request).startswith("two") and not key_fixed["yet"]:
            return Reply(401, error_body("Incorrect API key provided."))
        return by_word(request)

    t = table(("zero", "one", "two", "one more"))
    with ChatServer(flaky) as server:  # the same endpoint (it is part of the cache key), then fixed
        with pytest.raises(JudgeError) as e:
            judge(server, tmp_path, concurrency=1)(t)  # one at a time: zero and one are asked first
        assert "the 2 answer(s) received before it are kept in the cache" in str(e.value)
        with sqlite3.connect(tmp_path / "cache" / lj.CACHE_FILE) as db:
            assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 2
        key_fixed["yet"] = True
        scores, rep = judge(server, tmp_path)(t)
        assert rep.cache_hits == 2 and rep.requests - rep.retries == 2  # only the two unanswered questions
    assert scores["label"].fillna("-").tolist() == ["-", "under-steer", "success", "over-steer", "success"]


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_limit(tmp_path, limit):
    with ChatServer(lambda r: Reply(200, by_word(r), delay=0.15)) as server:
        texts = tuple(f"one {i}" for i in range(7))
        t0 = time.perf_counter()
        scores, _ = judge(server, tmp_path, concurrency=limit)(table(texts))
        elapsed = time.perf_counter() - t0
    assert server.max_in_flight == limit and server.requests == 7
    assert elapsed >= 0.15 * -(-7 // limit) * 0.9
    assert (scores["label"].iloc[1:] == "success").all()


# ----------------------------------------------------------------------------- a steerjax model behind the route


SHORT = "Concept: {concept}\nText: {response_after}\nJSON judgment (0, 1 or 2):"


@pytest.mark.slow
def test_model_server_tiny_model(chat_model, tmp_path):
    """TinyStories (with a chat template) answers through the server: a real chat completion whose text
    is no judgment, so every row is unparseable, left unlabelled and counted; greedy answers repeat; the
    SteerBoost prompt does not fit its 512-token context: a 400 naming the URL."""
    import openai

    with model_server(chat_model, name="tiny", api_key="key", max_tokens=8) as server:
        client = openai.OpenAI(base_url=server.url, api_key="key", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        msgs = [{"role": "user", "content": "Once upon a time"}]
        a = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=6)
        b = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=6)
        assert a.choices[0].message.content == b.choices[0].message.content
        assert a.model == "tiny" and a.usage.completion_tokens <= 6 and a.usage.prompt_tokens > 0
        assert a.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.BadRequestError, match="stream is not supported"):
            client.chat.completions.create(model="tiny", messages=msgs, stream=True)

        j = lj.LLMJudge("tiny", base_url=server.url, api_key="key", template=SHORT, max_tokens=8,
                        cache_dir=str(tmp_path), **FAST)
        with pytest.warns(UserWarning, match="2 unparseable and 0 malformed"):
            scores, rep = j(table(("one day the cat sat", "zzz zzz zzz")))
        assert scores["status"].tolist() == ["not judged", "unparseable", "unparseable"]
        assert scores["label"].isna().all() and scores["answer"].iloc[1:].map(lambda x: isinstance(x, str)).all()
        assert rep.unparseable == 2 and rep.judged == 0

        too_long = rf"{re.escape(server.url)} answered HTTP 400 .*exceeds the model's context"
        with pytest.raises(JudgeError, match=too_long):
            lj.LLMJudge("tiny", base_url=server.url, api_key="key", cache=False, **FAST)(table(("one",)))


# ----------------------------------------------------------------------------- agreement and bad input


def test_judge_agreement():
    a = ["success", "over-steer", "under-steer", "success", None, "success"]
    b = ["success", "over-steer", "success", "success", "success", np.nan]
    c = [None] * 6
    out = lj.judge_agreement({"hidden": a, "llm": b, "none": c})
    assert out[["judge_a", "judge_b"]].values.tolist() == [["hidden", "llm"], ["hidden", "none"], ["llm", "none"]]
    first = out.iloc[0]
    assert first["n"] == 4 and first["agreement"] == 0.75
    from sklearn.metrics import cohen_kappa_score

    assert first["kappa"] == pytest.approx(cohen_kappa_score(a[:4], b[:4]))
    assert out.iloc[1]["n"] == 0 and np.isnan(out.iloc[1]["kappa"]) and np.isnan(out.iloc[1]["agreement"])
    # Series align on their index
    s1 = pd.Series(["success", "over-steer"], index=[10, 11])
    s2 = pd.Series(["over-steer", "success", "success"], index=[11, 10, 12])
    row = lj.judge_agreement({"x": s1, "y": s2}).iloc[0]
    assert row["n"] == 2 and row["agreement"] == 1.0 and row["kappa"] == 1.0
    with pytest.raises(JudgeError, match="at least two judges"):
        lj.judge_agreement({"x": a})
    with pytest.raises(JudgeError, match="different numbers of items"):
        lj.judge_agreement({"x": a, "y": a[:3]})


def test_bad_input(tmp_path, monkeypatch):
    monkeypatch.delenv("STEERJAX_JUDGE_MODEL", raising=False)
    with pytest.raises(JudgeError, match="no judge model.*STEERJAX_JUDGE_MODEL"):
        lj.LLMJudge()
    with pytest.raises(JudgeError, match=r"must use \{concept\} and \{response_after\}.*\['answer', 'concept'\]"):
        lj.LLMJudge("m", template="{concept} {answer}")
    with pytest.raises(JudgeError, match="concurrency"):
        lj.LLMJudge("m", concurrency=0)
    with pytest.raises(JudgeError, match="temperature"):
        lj.LLMJudge("m", temperature=-1)
    j = lj.LLMJudge("m", base_url="http://127.0.0.1:9/v1", cache_dir=str(tmp_path), **FAST)
    with pytest.raises(JudgeError, match=r"lacks columns \['text'\]"):
        j(table().drop(columns="text"))
    no_text = table()
    no_text.loc[1, "text"] = None
    with pytest.raises(JudgeError, match="1 steered rows have no text"):
        j(no_text)
    with pytest.raises(JudgeError, match="empty"):
        j(table().iloc[:0])


def test_model_responder_checks_requests():
    """The model server's request checks (no model call: a stand-in with a tokenizer)."""
    from types import SimpleNamespace

    from steerjax.errors import SteerjaxError
    from steerjax.serve import ModelResponder

    r = ModelResponder(SimpleNamespace(tokenizer=object(), source="stub"), max_tokens=32)
    msgs, opts = r.parse({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                    {"type": "text", "text": "b"}]}]})
    assert msgs == [{"role": "user", "content": "ab"}]
    assert opts == {"max_new_tokens": 32, "temperature": 1.0, "top_p": 1.0, "seed": 0}
    assert r.parse({"messages": msgs, "temperature": 0, "max_completion_tokens": 5, "seed": 7})[1] == \
        {"max_new_tokens": 5, "temperature": 0.0, "top_p": 1.0, "seed": 7}
    assert r.parse({"messages": msgs})[1]["seed"] == 1  # unseeded requests take the next seed
    for bad, why in [({}, "non-empty list"), ({"messages": [{"content": "x"}]}, "a 'role'"),
                     ({"messages": msgs, "n": 2}, "n=1"), ({"messages": msgs, "stream": True}, "stream"),
                     ({"messages": msgs, "temperature": 3}, "temperature"), ({"messages": msgs, "max_tokens": 10**6},
                                                                            "max_tokens"),
                     ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "only text parts")]:
        with pytest.raises(SteerjaxError, match=why):
            r.parse(bad)
    reply = r({"messages": []})
    assert reply.status == 400 and "non-empty list" in reply.body["error"]["message"]
    with pytest.raises(SteerjaxError, match="has no tokenizer"):
        ModelResponder(SimpleNamespace(tokenizer=None, source="stub"))


def test_server_routes_and_key():
    import urllib.error
    import urllib.request

    with ChatServer(by_word, api_key="k", model_name="judge") as server:
        def get(path, key="k", data=None):
            req = urllib.request.Request(server.url + path, data=data, headers={"Authorization": f"Bearer {key}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as f:
                    return f.status, json.loads(f.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        assert get("/models") == (200, {"object": "list", "data": [
            {"id": "judge", "object": "model", "created": 0, "owned_by": "steerjax"}]})
        assert get("/models", key="bad")[0] == 401
        status, body = get("/nowhere")
        assert status == 404 and body["error"]["code"] == "not_found"
        status, body = get("/chat/completions", data=b"{not json")
        assert status == 400 and "JSON object" in body["error"]["message"]
        assert server.requests == 1  # only the chat route counts
