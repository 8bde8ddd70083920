"""The LLM judge's answer cache: only answers with a judgment are kept (the rest are asked again,
and counted), the endpoint is part of the key, every sqlite3 error is a JudgeError naming the file,
and a corrupt cache is moved aside with one warning and rebuilt."""

import json
import os
import sqlite3
import warnings

import pytest

from steerjax.errors import JudgeError
from steerjax.serve import ChatServer, completion
from steerjax.studies.steerability_prediction import llm_judge as lj
from tests.test_llm_judge import by_word, judge, response_of, table


def test_unparseable_and_cut_answers_are_asked_again_when_the_endpoint_is_fixed(tmp_path):
    """The same endpoint answers badly (no judgment, or cut at max_tokens), then well: the rerun
    asks again and labels every row; nothing unusable was ever stored."""
    fixed = {"yet": False}

    def endpoint(request):
        if fixed["yet"]:
            return by_word(request)
        if response_of(request).startswith("one"):
            return completion('{"explanation": "cut', model=request["model"], finish_reason="length")
        return completion("I would rather not say.", model=request["model"])

    with ChatServer(endpoint) as server:
        with pytest.warns(UserWarning, match="3 unparseable"):
            scores, rep = judge(server, tmp_path)(table())
        assert rep.unparseable == 3 and rep.judged == 0
        with sqlite3.connect(tmp_path / "cache" / lj.CACHE_FILE) as db:
            assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 0
        fixed["yet"] = True
        scores, rep = judge(server, tmp_path)(table())
        assert server.requests == 6 and rep.judged == 3 and rep.cache_hits == 0
        assert scores["label"].fillna("-").tolist() == ["-", "under-steer", "success", "over-steer"]
        again, rep = judge(server, tmp_path)(table())
        assert server.requests == 6 and rep.cache_hits == 3


def test_unusable_answers_cached_by_an_earlier_version_are_retried_and_counted(tmp_path):
    with ChatServer(by_word) as server:
        j = judge(server, tmp_path)
        j(table())
        keys = [j.key("Tell me about your day.", "agreeableness", t) for t in ("zero A", "one B")]
        with sqlite3.connect(tmp_path / "cache" / lj.CACHE_FILE) as db:  # as an earlier version kept them
            db.execute("UPDATE answers SET answer = 'no idea' WHERE key = ?", (keys[0],))
            db.execute("UPDATE answers SET finish_reason = 'length' WHERE key = ?", (keys[1],))
        scores, rep = judge(server, tmp_path)(table())
        assert server.requests == 5 and rep.retried_from_cache == 2 and rep.cache_hits == 1
        assert rep.judged == 3 and "2 cached answers without a judgment asked again" in rep.how
        assert rep.to_dict()["retried_from_cache"] == 2


def test_the_key_holds_the_endpoint(tmp_path):
    with ChatServer(by_word) as one, ChatServer(by_word) as two:
        assert judge(one, tmp_path).key("p", "c", "r") != judge(two, tmp_path).key("p", "c", "r")
        judge(one, tmp_path)(table())
        judge(two, tmp_path)(table())
        judge(one, tmp_path)(table())
        assert (one.requests, two.requests) == (3, 3)


def _filled_cache(tmp_path, rows=400) -> str:
    cache = lj.AnswerCache(str(tmp_path / "cache"))
    for i in range(rows):
        cache.put(f"k{i}", model="m", version="v", concept="c", answer=json.dumps({"judgment": 1, "x": "y" * 200}),
                  finish_reason="stop")
    cache.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cache.close()
    return cache.path


@pytest.mark.parametrize("damage", ["overwritten pages", "not a database"])
def test_a_corrupt_cache_is_moved_aside_with_one_warning_and_rebuilt(tmp_path, damage):
    path = _filled_cache(tmp_path)
    with open(path, "r+b") as f:
        if damage == "overwritten pages":
            f.seek(os.path.getsize(path) // 2)  # data pages in the middle of the file
            f.write(os.urandom(8192))
        else:
            f.write(b"garbage" * 20)  # the header
    with ChatServer(by_word) as server:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores, rep = judge(server, tmp_path)(table())
        moved = [w for w in caught if issubclass(w.category, lj.CacheWarning)]
        assert len(moved) == 1 and "was corrupt" in str(moved[0].message) and path in str(moved[0].message)
        assert rep.judged == 3 and server.requests == 3
        aside = [n for n in os.listdir(tmp_path / "cache") if ".corrupt-" in n]
        assert aside and all(n.startswith(lj.CACHE_FILE) for n in aside)
        judge(server, tmp_path)(table())  # the rebuilt cache serves the rerun
        assert server.requests == 3


def test_a_corrupt_page_met_while_reading_is_rebuilt_too(tmp_path, monkeypatch):
    """Damage that appears after the cache was opened (another process overwrote pages) is caught
    in ``get()``: moved aside, one warning, nothing served from it."""
    cache = lj.AnswerCache(str(tmp_path / "cache"))

    class Broken:
        def execute(self, *args):
            raise sqlite3.DatabaseError("database disk image is malformed")

        def close(self):
            pass

    cache.db = Broken()
    with pytest.warns(lj.CacheWarning, match="malformed"):
        assert cache.get(["a", "b"]) == {}
    assert cache.get(["a"]) == {} and len(cache) == 0  # a fresh, working cache
    cache.close()


def test_other_sqlite_errors_are_judge_errors_naming_the_file(tmp_path):
    os.makedirs(tmp_path / "cache" / lj.CACHE_FILE)  # a directory where the file should be
    with ChatServer(by_word) as server:
        with pytest.raises(JudgeError, match=f"cannot open the judge cache {tmp_path / 'cache' / lj.CACHE_FILE}"):
            judge(server, tmp_path)(table())
    cache = lj.AnswerCache(str(tmp_path / "other"))

    class Locked:
        def execute(self, *args):
            raise sqlite3.OperationalError("database is locked")

        def commit(self):
            pass

        def close(self):
            pass

    cache.db = Locked()
    for call in (lambda: cache.get(["k"]), lambda: len(cache),
                 lambda: cache.put("k", model="m", version="v", concept="c", answer="a", finish_reason=None)):
        with pytest.raises(JudgeError, match=r"judge cache .*llm_judge.sqlite3: OperationalError: database is locked"):
            call()
