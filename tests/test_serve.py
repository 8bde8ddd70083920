"""The batching chat server (steerjax.serve) on 127.0.0.1: answers equal to generate's, continuous
batching, steering per request, cancellation, limits, every bad field, SIGTERM and the judge path.

The model is TinyStories with a chat template (``chat_model``); ``endless`` is the same model with
no end-of-sequence id, so that a request runs exactly to its ``max_tokens``.
"""

import dataclasses
import gc
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref

import jax
import numpy as np
import openai
import pytest

import steerjax
from steerjax import serve
from steerjax.data.batch import encode
from steerjax.vectors import SteeringVector
from tests.helpers import subprocess_env

MESSAGES = ["Hi", "The sun was shining and the birds", "Tom had a red ball.", "Once upon a time"]


@pytest.fixture(scope="module")
def vectors(chat_model):
    rng = np.random.default_rng(0)
    d = chat_model.config.hidden_size
    return {"happy": SteeringVector({1: rng.standard_normal(d) * 2}, name="happy"),
            "sad": SteeringVector({0: rng.standard_normal(d) * 3}, name="sad")}


@pytest.fixture(scope="module")
def endless(chat_model):
    """The chat model without an end-of-sequence id: every answer runs to its max_tokens."""
    return dataclasses.replace(chat_model, config=dataclasses.replace(chat_model.config, eos_token_ids=()))


def until(condition, timeout=30.0):
    """Wait (bounded) for ``condition()``; whether it came true."""
    end = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > end:
            return False
        time.sleep(0.01)
    return True


def chat(msg):
    return [{"role": "user", "content": msg}]


def alone(model, msg, *, vectors=None, steering=None, max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0):
    """The text ``generate`` gives for one request alone."""
    st = None
    if steering:
        st = vectors[steering["vector"]].to_steering(model, steering["multiplier"])
    seed = seed - 2**64 if seed >= 2**63 else seed
    out = steerjax.generate(model, encode(model, [chat(msg)], chat=True), steering=st, max_new_tokens=max_tokens,
                            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    return out.texts[0], int(out.lengths[0])


def post(server, body, *, headers=None, timeout=30):
    """``(status, headers, parsed body)`` of a raw POST to the chat route."""
    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", "/v1/chat/completions", body=data,
                 headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw
    return r.status, dict(r.getheaders()), parsed


# ----------------------------------------------------------------------------- answers and batching


def test_concurrent_mixed_steering_requests_each_get_generates_text(chat_model, vectors):
    """Greedy and sampled requests, three steerings, different lengths, sent at once through the
    openai client (steering in extra_body): each text is generate's for that request alone."""
    reqs = [
        dict(msg=MESSAGES[0], steering={"vector": "happy", "multiplier": 2.0}, max_tokens=40),
        dict(msg=MESSAGES[1], steering=None, max_tokens=9),
        dict(msg=MESSAGES[1], steering={"vector": "sad", "multiplier": -1.5}, max_tokens=30, temperature=1.0,
             seed=5),
        dict(msg=MESSAGES[0], steering={"vector": "happy", "multiplier": 0.5}, max_tokens=25, temperature=0.8,
             top_k=10, top_p=0.9, seed=2**64 - 3),
        dict(msg=MESSAGES[0], steering=None, max_tokens=50, temperature=1.0, seed=1),
    ]
    with serve.model_server(chat_model, name="tiny", vectors=vectors, max_batch=4) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        model = client.models.list().data[0]
        assert model.id == "tiny"
        assert [v["name"] for v in model.steering["vectors"]] == ["happy", "sad"]
        assert model.steering["default"] is None and model.steering["positions"] == "all"
        answers = [None] * len(reqs)

        def ask(i, r):
            kw = {k: r[k] for k in ("max_tokens", "seed", "top_p") if k in r}
            extra = {"steering": r["steering"], **({"top_k": r["top_k"]} if "top_k" in r else {})}
            answers[i] = client.chat.completions.create(model="tiny", messages=chat(r["msg"]),
                                                        temperature=r.get("temperature", 0), extra_body=extra, **kw)

        threads = [threading.Thread(target=ask, args=(i, r)) for i, r in enumerate(reqs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        engine = server.respond.engine
        assert engine.live() == 0 and engine.waiting() == 0 and engine.rows is None
    for r, a in zip(reqs, answers):
        opts = {k: r[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "seed") if k in r}
        text, n = alone(chat_model, r["msg"], vectors=vectors, steering=r["steering"], **opts)
        assert a.choices[0].message.content == text
        assert a.usage.completion_tokens == n
        assert a.choices[0].finish_reason == ("length" if n == r["max_tokens"] else "stop")
        assert a.steering == ({"vector": None, "multiplier": 0.0} if r["steering"] is None else r["steering"])
    assert len({a.choices[0].message.content for a in answers}) >= 4  # the steerings changed the texts


def test_a_short_request_joins_the_running_batch(endless):
    """A 4-token request sent while a 300-token one runs joins the batch at the next chunk boundary
    and is answered a chunk later (counted in chunks, not seconds: the machine may be loaded), long
    before the long one ends; then the batch shrinks back to one row. Both equal generate's text
    alone."""
    with serve.model_server(endless, name="tiny", max_batch=4) as server:
        engine = server.respond.engine
        long = {}

        def ask_long():
            long["reply"] = post(server, {"messages": chat(MESSAGES[3]), "max_tokens": 300, "temperature": 0})

        t = threading.Thread(target=ask_long)
        t.start()
        assert until(lambda: engine.chunks >= 2)  # the long request is running
        sent = engine.chunks
        status, _, short = post(server, {"messages": chat(MESSAGES[2]), "max_tokens": 4, "temperature": 0})
        chunks_when_short_ended = engine.chunks
        assert status == 200 and engine.live() == 1  # the long one still runs
        assert until(lambda: len(engine.slots) == 1)  # the batch of 4 shrank back to the long row
        t.join(120)
        assert engine.chunks - chunks_when_short_ended > 20
    assert chunks_when_short_ended - sent <= 2  # joined at a chunk boundary, done within one chunk
    assert short["choices"][0]["message"]["content"] == alone(endless, MESSAGES[2], max_tokens=4)[0]
    status, _, body = long["reply"]
    assert status == 200 and body["usage"]["completion_tokens"] == 300
    assert body["choices"][0]["message"]["content"] == alone(endless, MESSAGES[3], max_tokens=300)[0]
    assert body["choices"][0]["finish_reason"] == "length"


def test_default_steering_and_stop_strings(chat_model, vectors):
    """The server's default steering applies when a request says nothing; ``steering: null`` is
    unsteered; a stop string cuts the text before it."""
    with serve.model_server(chat_model, name="tiny", vectors=vectors, default_vector="sad", multiplier=-1.5) as server:
        _, _, default = post(server, {"messages": chat(MESSAGES[1]), "max_tokens": 20, "temperature": 0})
        _, _, plain = post(server, {"messages": chat(MESSAGES[1]), "max_tokens": 20, "temperature": 0,
                                    "steering": None})
        _, _, named = post(server, {"messages": chat(MESSAGES[1]), "max_tokens": 20, "temperature": 0,
                                    "steering": {"vector": "happy"}})  # the server's multiplier
        full = plain["choices"][0]["message"]["content"]
        stop = full.split()[3]
        _, _, cut = post(server, {"messages": chat(MESSAGES[1]), "max_tokens": 20, "temperature": 0,
                                  "steering": None, "stop": ["zzzz", stop]})
    sad = {"vector": "sad", "multiplier": -1.5}
    assert default["choices"][0]["message"]["content"] == alone(chat_model, MESSAGES[1], vectors=vectors,
                                                                steering=sad, max_tokens=20)[0]
    assert default["steering"] == sad and plain["steering"] == {"vector": None, "multiplier": 0.0}
    assert full == alone(chat_model, MESSAGES[1], max_tokens=20)[0]
    assert named["steering"] == {"vector": "happy", "multiplier": -1.5}
    assert cut["choices"][0]["message"]["content"] == full[:full.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_seeds_map_to_generates_keys():
    for seed in (0, 1, -1, 2**31, 2**32 + 5, 2**63 - 1, -(2**63)):
        np.testing.assert_array_equal(serve.key_data(seed), jax.random.key_data(jax.random.key(seed)))
    np.testing.assert_array_equal(serve.key_data(2**64 - 1), serve.key_data(-1))


# ----------------------------------------------------------------------------- cancellation and limits


def test_a_client_that_disconnects_is_dropped_at_the_next_chunk(endless):
    with serve.model_server(endless, name="tiny") as server:
        engine = server.respond.engine
        host, port = server.httpd.server_address[:2]
        body = json.dumps({"messages": chat(MESSAGES[0]), "max_tokens": 400, "temperature": 0}).encode()
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert until(lambda: engine.live() == 1)
        s.close()
        assert until(lambda: engine.live() == 0, 10) and engine.chunks < 400 // engine.chunk
        assert server.in_flight == 0 or server.wait_idle(2)


def test_a_request_past_the_time_limit_gets_408_and_is_dropped(endless):
    with serve.model_server(endless, name="tiny", request_timeout=0.5) as server:
        status, _, body = post(server, {"messages": chat(MESSAGES[0]), "max_tokens": 400, "temperature": 0})
        assert status == 408 and body["error"]["code"] == "timeout"
        assert until(lambda: server.respond.engine.live() == 0, 10)


def test_queue_full_is_a_503_with_retry_after(endless):
    with serve.model_server(endless, name="tiny", max_batch=1, queue_size=0) as server:
        engine = server.respond.engine
        first = {}
        t = threading.Thread(target=lambda: first.update(r=post(server, {"messages": chat(MESSAGES[0]),
                                                                           "max_tokens": 200, "temperature": 0})))
        t.start()
        assert until(lambda: engine.live() == 1)
        status, headers, body = post(server, {"messages": chat(MESSAGES[1]), "max_tokens": 2})
        assert status == 503 and headers["Retry-After"] == "1" and body["error"]["code"] == "server_busy"
        t.join(120)
        assert first["r"][0] == 200
        assert post(server, {"messages": chat(MESSAGES[1]), "max_tokens": 2})[0] == 200  # room again


def _raw(server, data: bytes, *, wait=5.0) -> bytes:
    host, port = server.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
    return out


def by_word(request):
    return serve.completion("ok", model="m")


def test_body_cap_and_bad_lengths():
    with serve.ChatServer(by_word, max_body=1000) as server:
        status, _, body = post(server, {"messages": chat("x" * 2000)})
        assert status == 413 and body["error"]["code"] == "request_too_large"
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        t0 = time.perf_counter()
        out = _raw(server, head + b"Content-Length: 1000000000000\r\n\r\n{")
        assert out.startswith(b"HTTP/1.1 413") and time.perf_counter() - t0 < 2  # refused, not read
        assert _raw(server, head + b"Content-Length: -1\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert _raw(server, head + b"Content-Length: abc\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert _raw(server, head + b"\r\n").startswith(b"HTTP/1.1 411")
        assert _raw(server, head + b"Transfer-Encoding: chunked\r\n\r\n").startswith(b"HTTP/1.1 411")
        assert post(server, {"messages": chat("hi")})[0] == 200  # the server is still up
        assert server.requests == 1


def test_socket_timeouts_close_silent_connections():
    with serve.ChatServer(by_word, socket_timeout=0.3) as server:
        host, port = server.httpd.server_address[:2]
        t0 = time.perf_counter()
        with socket.create_connection((host, port), timeout=5) as s:  # connects, says nothing
            assert s.recv(100) == b""  # closed by the server
        assert time.perf_counter() - t0 < 3
        # a body that never arrives: 408, then closed
        out = _raw(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        assert out.startswith(b"HTTP/1.1 408")
        deadline = time.perf_counter() + 3
        while server.httpd.open_connections and time.perf_counter() < deadline:
            time.sleep(0.01)
        assert server.httpd.open_connections == 0


def test_connection_limit():
    with serve.ChatServer(by_word, max_connections=2, socket_timeout=5) as server:
        host, port = server.httpd.server_address[:2]
        idle = [socket.create_connection((host, port), timeout=5) for _ in range(2)]
        deadline = time.perf_counter() + 3
        while server.httpd.open_connections < 2 and time.perf_counter() < deadline:
            time.sleep(0.01)
        out = _raw(server, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in out
        for s in idle:
            s.close()
        deadline = time.perf_counter() + 3
        while server.httpd.open_connections and time.perf_counter() < deadline:
            time.sleep(0.01)
        assert post(server, {"messages": chat("hi")})[0] == 200


def test_api_key_is_compared_in_constant_time(monkeypatch):
    calls = []
    real = serve.hmac.compare_digest
    monkeypatch.setattr(serve.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    with serve.ChatServer(by_word, api_key="sekret") as server:
        assert post(server, {"messages": chat("hi")})[0] == 401
        assert post(server, {"messages": chat("hi")}, headers={"Authorization": "Bearer sekreT"})[0] == 401
        assert post(server, {"messages": chat("hi")}, headers={"Authorization": "Bearer sekret"})[0] == 200
    assert len(calls) == 3


def test_bind_warning():
    assert serve.bind_warning("127.0.0.1", None) is None and serve.bind_warning("localhost", None) is None
    assert serve.bind_warning("::1", None) is None and serve.bind_warning("0.0.0.0", "key") is None
    assert "--api-key" in serve.bind_warning("0.0.0.0", None)
    assert "--api-key" in serve.bind_warning("192.168.1.5", None)


BAD = [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"model": 3}, "model"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": 10**6}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"seed": 2**70}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"seed": "1"}, "seed"),
    ({"stop": 3}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"n": 2}, "n"),
    ({"stream": True}, "stream"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"logprobs": True}, "logprobs"),
    ({"presence_penalty": 1.0}, "presence_penalty"),
    ({"frequency_penalty": 9}, "frequency_penalty"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"steering": "happy"}, "steering"),
    ({"steering": {"vector": "angry"}}, "steering.vector"),
    ({"steering": {"vector": 3}}, "steering.vector"),
    ({"steering": {"vector": "happy", "multiplier": "x"}}, "steering.multiplier"),
    ({"steering": {"vector": "happy", "strength": 2}}, "steering.strength"),
    ({"messages": [{"role": "user", "content": "word " * 600}], "max_tokens": 10}, "messages"),
]


def test_every_bad_field_is_an_openai_400(chat_model, vectors):
    with serve.model_server(chat_model, name="tiny", vectors=vectors) as server:
        for fields, param in BAD:
            status, _, body = post(server, {"messages": chat("hi"), **fields})
            assert status == 400, (fields, body)
            assert set(body["error"]) == {"message", "type", "param", "code"}
            assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == param, fields
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="64 bits"):
            client.chat.completions.create(model="tiny", messages=chat("hi"), seed=2**70)
        for raw in (b"{not json", b"[1, 2]", b'{"messages": NaN}'):
            status, _, body = post(server, raw)
            assert status == 400 and "JSON object" in body["error"]["message"]
        assert server.respond.engine.chunks == 0  # nothing reached the model
        assert server.bodies == []  # a model server keeps no request


def test_nothing_is_kept_per_request(chat_model, monkeypatch):
    jobs = weakref.WeakSet()
    submit = serve.Engine.submit
    monkeypatch.setattr(serve.Engine, "submit", lambda self, job: jobs.add(job) or submit(self, job))
    with serve.model_server(chat_model, name="tiny") as server:
        for i in range(6):
            assert post(server, {"messages": chat(MESSAGES[i % 4]), "max_tokens": 5, "seed": i})[0] == 200
        engine = server.respond.engine
        assert server.bodies == [] and server.wait_idle(5)
        deadline = time.monotonic() + 5  # the engine's thread clears the last slot after the reply is sent
        while engine.slots and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.live() == 0 and engine.waiting() == 0 and engine.rows is None and engine.slots == []
        gc.collect()
        assert len(jobs) == 0


# ----------------------------------------------------------------------------- the command line


def test_port_is_checked_before_the_model_loads(chat_model_dir, monkeypatch, capsys):
    from steerjax.cli import main

    monkeypatch.setattr(steerjax, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", chat_model_dir, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot listen on 127.0.0.1:") and str(port) in err
    assert main(["serve", chat_model_dir, "--multiplier", "2"]) == 2
    assert "--multiplier needs --vector" in capsys.readouterr().err


def test_vector_arguments(chat_model_dir, tmp_path, vectors, capsys):
    from steerjax.cli import main
    from steerjax.cli.serve import read_vectors, vector_specs

    vectors["happy"].save(tmp_path / "happy.safetensors")
    SteeringVector({0: np.ones(vectors["happy"].width)}).save(tmp_path / "plain.safetensors")
    assert vector_specs(["a=x.safetensors", "y.safetensors"]) == [("a", "x.safetensors"), (None, "y.safetensors")]
    cfg = steerjax.model.load_config(chat_model_dir).config
    got = read_vectors([str(tmp_path / "happy.safetensors"), f"joy={tmp_path / 'happy.safetensors'}",
                        str(tmp_path / "plain.safetensors")], None, cfg)
    assert list(got) == ["happy", "joy", "plain"]
    assert main(["serve", chat_model_dir, "--vector", str(tmp_path / "happy.safetensors"),
                 "--vector", str(tmp_path / "happy.safetensors"), "--port", "0"]) == 2
    assert "two vectors are named 'happy'" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_finishes_running_requests_then_exits(chat_model_dir, tmp_path, vectors):
    vectors["happy"].save(tmp_path / "happy.safetensors")
    proc = subprocess.Popen([sys.executable, "-m", "steerjax", "serve", chat_model_dir, "--port", "0",
                             "--vector", str(tmp_path / "happy.safetensors"), "--multiplier", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        line = proc.stdout.readline()
        assert "serving" in line and "steering: happy" in line, proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)
        assert client.chat.completions.create(model="m", messages=chat("Hi"), max_tokens=2).choices
        done = {}

        def ask():
            done["r"] = client.chat.completions.create(model="m", messages=chat("Once upon a time"),
                                                       max_tokens=200, temperature=1.0, seed=1)

        t = threading.Thread(target=ask)
        t.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert proc.wait(60) == 0
        assert done["r"].choices[0].finish_reason in ("stop", "length")  # answered, not dropped
        err = proc.stderr.read()
        assert "stopping" in err and "stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- the local judge path


SHORT = "Concept: {concept}\nText: {response_after}\nJSON judgment (0, 1 or 2):"


def test_llm_judge_at_concurrency_4_against_the_server(chat_model, tmp_path):
    """A testbed's steered rollouts judged by LLMJudge (concurrency 4, a 20 s timeout, one retry)
    through the batching server: every question answered on its first attempt, several at once."""
    from steerjax.studies.steerability_prediction import llm_judge as lj
    from steerjax.studies.steerability_prediction.testbed import rollouts
    from tests.helpers import token_concepts

    concepts = token_concepts(chat_model, ("alpha", "beta"), layer=1)
    table = rollouts(chat_model, ["Hi", "Tom had a red ball."], concepts, [0.5, 1.0, 2.0], layer=1,
                     max_new_tokens=12, progress=False)
    steered = int((table["concept"] != "none").sum())
    with serve.model_server(chat_model, name="tiny", max_tokens=16) as server:
        judge = lj.LLMJudge("tiny", base_url=server.url, api_key="k", template=SHORT, concurrency=4, timeout=20,
                            max_retries=1, cache=False, progress=False)
        with pytest.warns(UserWarning, match="unparseable"):  # TinyStories writes stories, not judgments
            scores, rep = judge(table)
        assert rep.retries == 0 and rep.requests == rep.questions and rep.judged + rep.unparseable == steered
        judged = scores[table["concept"] != "none"]
        assert judged["status"].isin(["ok", "unparseable"]).all()
        assert judged["answer"].map(lambda a: isinstance(a, str)).all()
        assert server.max_in_flight >= 2  # the requests overlapped


@pytest.mark.slow
def test_the_cache_shifts_and_grows_under_overlapping_requests(endless, monkeypatch):
    """Requests that overlap like tiles (each joins while the previous runs, the first leaves
    before the last arrives) make the engine shift the shared cache left past finished rows and
    grow it; every text still equals generate's alone."""
    shifts = []
    reslot = serve._reslot
    monkeypatch.setattr(serve, "_reslot", lambda rows, shift, *, size: shifts.append((shift, size)) or
                        reslot(rows, shift, size=size))
    engine = serve.Engine(endless, max_batch=4)
    try:
        plan = [(MESSAGES[0], 60), (MESSAGES[1], 90), (MESSAGES[2], 150), (MESSAGES[3], 40)]
        jobs = []
        for msg, n in plan:
            prompt = encode(endless, [chat(msg)], chat=True)[0]
            jobs.append(engine.submit(serve.Job(prompt, n)))
            start = engine.chunks
            assert until(lambda s=start: engine.chunks >= s + 5, 60)  # joins, then runs a while
        for job in jobs:
            assert job.event.wait(120) and job.error is None
    finally:
        engine.close()
    for (msg, n), job in zip(plan, jobs):
        assert len(job.tokens) == n and job.finish_reason == "length"
        assert job.text == alone(endless, msg, max_tokens=n)[0]
    assert any(shift > 0 for shift, _ in shifts)  # past the first request's slots
    assert len({size for _, size in shifts}) >= 2  # and resized
