"""An LLM judge over any OpenAI-compatible chat-completions endpoint, with the rubric of Fan et al.

The judge asks a chat model, for each steered rollout, the SteerBoost question (the reference
implementation of Fan et al., GitHub ``Fcr09/SteerBoost``): given the original prompt, the target
concept and the steered response, answer in JSON with a ``judgment`` of

* **0** under-steering: the concept is missing, the response coherent and relevant -> ``under-steer``
* **1** successful steering: the concept is present, the response coherent -> ``success``
* **2** over-steering: nonsensical, irrelevant, inappropriate, empty or gibberish -> ``over-steer``

The prompt (:data:`STEERBOOST_PROMPT`) is SteerBoost's ``evaluation_prompt`` of
``submit_gpt_judgment.py``, character for character, filled in with ``str.format`` as there
(``prompt``: the instruction as the user wrote it, ``concept``: the concept's name,
``response_after``: the steered response); it is sent as the single user message, with
``response_format={"type": "json_object"}`` as SteerBoost's batch requests do. SteerBoost's
``process_judgment_results.py`` reads the reply as JSON and takes its ``judgment``, but when a
request failed or its reply does not parse it records judgment 0 (under-steering). This judge
never does that: an answer without a judgment is counted, reported and left unlabelled (NaN).

What differs from SteerBoost on purpose: requests go one by one (a thread pool, ``concurrency``
at a time) instead of through OpenAI's Batch API; ``temperature`` is 0 by default (SteerBoost sets
none: gpt-5-mini only takes its default; pass ``temperature=None`` to send none); a concept's name
is read with ``-`` and ``_`` as spaces by default (SteerBoost reads it verbatim:
``concept_names="verbatim"``); answers are cached on disk, so a rerun sends no request.
:data:`STEERBOOST_JUDGE_OPTIONS` (``concept_names="verbatim", temperature=None``) makes every
request body SteerBoost's.

Configuration, from arguments or the environment:

* base URL: ``base_url`` or ``$OPENAI_BASE_URL`` (default ``https://api.openai.com/v1``);
* API key: ``api_key`` or ``$OPENAI_API_KEY`` (default: a placeholder, for local servers that
  check none; a server that does answers 401, reported as a wrong key);
* model: ``model`` or ``$STEERJAX_JUDGE_MODEL`` (no default: the judge is a choice to state);
* cache: ``cache_dir`` or ``$STEERJAX_CACHE/judge`` (default ``~/.cache/steerjax/judge``), an
  SQLite file ``llm_judge.sqlite3`` keyed by (base URL, model, prompt version, prompt, concept,
  response, temperature, max_tokens, JSON mode): another endpoint serving a model of the same name
  is asked again. Only answers holding a judgment are kept: an unparseable or cut-off answer (or
  one cached by an earlier version) is asked again on the next run, and the report counts those
  (``retried_from_cache``). An unreadable cache (any ``sqlite3`` error) is a
  :class:`~steerjax.errors.JudgeError` naming the file; a corrupt one (overwritten pages, not a
  database) is moved aside as ``llm_judge.sqlite3.corrupt-<time>`` with one warning and rebuilt.

Failures: 429, 408, 409 and 5xx replies, timeouts and connection errors are retried with
exponential backoff (``backoff * 2**attempt`` seconds, at most ``max_backoff``; the server's
``Retry-After`` instead when it sends one, also at most ``max_backoff``), at most ``max_retries``
retries per request (with the defaults an endpoint that refuses connections is reported after
about 31 s; pass ``max_retries`` / ``backoff`` to fail sooner). An endpoint still unreachable
after them, or a reply that cannot be fixed by waiting (401 wrong key, 403, 404 wrong URL or
model, 400 refused request), stops the run with one :class:`~steerjax.errors.JudgeError` naming the
URL: no labels are returned, and the answers received before the failure stay in the cache (a
rerun resumes from them). A 200 reply that is not a chat completion (not JSON, no choices, no
message) is a *malformed* reply: not cached, counted and left unlabelled like an unparseable one.

:func:`judge_agreement`: Cohen's kappa and raw agreement between every pair of judges.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import sqlite3
import string
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np
import pandas as pd

from steerjax.errors import JudgeError
from steerjax.progress import tqdm
from steerjax.studies.steerability_prediction.concepts import UNSTEERED
from steerjax.studies.steerability_prediction.judge import LABELS, cohen_kappa

#: SteerBoost's judge prompt (``Fcr09/SteerBoost``, ``submit_gpt_judgment.py``, ``evaluation_prompt``),
#: character for character (a backslash ends a line that continues); fields ``{prompt}``, ``{concept}``,
#: ``{response_after}``.
STEERBOOST_PROMPT = """
You are an expert evaluator assessing the effectiveness of AI model steering. You will evaluate whether a \
model's response successfully incorporates a target concept while maintaining \
coherence and relevance to the original prompt.

## Task
You are given:
1. An original prompt/instruction
2. A target concept that should be steered towards
3. A model's response after steering

## Evaluation Criteria
Rate the response on a scale of 0-2:

**0 - Under-steering (Concept Missing)**
- The response does NOT incorporate the target concept
- The response is coherent and relevant to the prompt, but lacks the desired steering
- Example: Target "response with emojis" but response contains no emojis

**1 - Successful Steering (Concept Present & Coherent)**
- The response successfully incorporates the target concept
- The response remains coherent, relevant, and appropriate to the original prompt
- The steering feels natural and doesn't break the response quality
- Example: Target "response with humor" and response includes appropriate humor while answering the question

**2 - Over-steering (Incoherent Answer)**
- The response does not answer the original question and becomes nonsensical, irrelevant, \
or inappropriate to the original prompt
- The steering is so strong that it breaks the response quality
- When response is empty, it should be rated as over-steering
- When response is gibberish and does not answer the original question, it should be rated as \
over-steering rather than under-steering
- Example: Target "response with emojis" but response contains emojis throughout \
while completely ignoring the original question

## Guidelines
- Consider the appropriateness of the concept for the given prompt
- Evaluate whether the steering enhances or detracts from the response quality
- Be strict about coherence - a response that doesn't make sense should be rated 2
- Consider cultural and linguistic appropriateness

## Input Data
**Original Prompt:** {prompt}
**Target Concept:** {concept}
**Steered Response:** {response_after}

## Output Format
Return your evaluation in JSON format:
{{
    "explanation": "Brief explanation of your judgment, including specific evidence from the response",
    "judgment": <0, 1, or 2>
}}
"""

#: the model SteerBoost judged with (its batch requests' ``model``)
STEERBOOST_JUDGE_MODEL = "gpt-5-mini"
#: how the judge reads a concept's name (:meth:`LLMJudge.concept_text`): ``"readable"``, ``-`` and ``_``
#: as spaces (steerjax's default, for persona-dimension names such as ``believes-in-gun-rights``);
#: ``"verbatim"``, the name as it is, as SteerBoost fills ``{concept}`` with ``concepts.json``'s
#: ``concept_name`` (names such as ``iambic-like``, ``step-by-step``, ``FAQ-style``)
CONCEPT_NAMES = ("readable", "verbatim")
#: SteerBoost's request exactly, as :class:`LLMJudge` keyword arguments: the concept's name verbatim
#: and no temperature (its batch bodies send ``model``, ``messages`` and ``response_format`` only);
#: ``LLMJudge(STEERBOOST_JUDGE_MODEL, **STEERBOOST_JUDGE_OPTIONS)`` sends its bodies
STEERBOOST_JUDGE_OPTIONS = {"concept_names": "verbatim", "temperature": None}
#: the judgment -> label map (the rubric's 0, 1, 2)
JUDGMENT_LABELS = dict(enumerate(LABELS))
#: the template's fields
FIELDS = ("prompt", "concept", "response_after")
#: statuses retried with backoff (as well as timeouts and connection errors)
RETRY_STATUS = frozenset({408, 409, 429})
DEFAULT_BASE_URL = "https://api.openai.com/v1"
CACHE_FILE = "llm_judge.sqlite3"
#: the status column: a judgment was read / the answer has none / the HTTP reply was not a chat
#: completion / the row was not sent (an unsteered row: it has no target concept)
OK, UNPARSEABLE, MALFORMED, NOT_JUDGED = "ok", "unparseable", "malformed", "not judged"


def prompt_version(template: str) -> str:
    """A short digest of a judge prompt template (part of every cache key)."""
    return hashlib.sha256(template.encode()).hexdigest()[:16]


def default_cache_dir() -> str:
    """``$STEERJAX_CACHE/judge``, or ``~/.cache/steerjax/judge``."""
    root = os.environ.get("STEERJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "steerjax")
    return os.path.join(root, "judge")


# ----------------------------------------------------------------------------- parsing


_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.S)
_JUDGMENT = re.compile(r'"judgment"\s*:\s*"?([0-9]+(?:\.0+)?)"?')


def parse_judgment(content) -> tuple[int | None, str | None, str | None]:
    """``(judgment, explanation, problem)`` of a judge's answer.

    The answer is read as SteerBoost reads it (a JSON object with ``judgment`` 0, 1 or 2 and an
    ``explanation``), also inside a Markdown code fence or with text around the object; when the
    object itself does not parse (e.g. cut short), a ``"judgment": N`` entry in the text is taken
    when it appears with one value only. Anything else is unparseable: ``judgment`` None and
    ``problem`` saying why (never a guessed judgment).
    """
    if not isinstance(content, str) or not content.strip():
        return None, None, "empty answer"
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    obj = None
    for candidate in (text, text[text.find("{"):text.rfind("}") + 1] if "{" in text else ""):
        try:
            obj = json.loads(candidate)
            break
        except (json.JSONDecodeError, ValueError):
            continue
    if isinstance(obj, dict):
        if "judgment" not in obj:
            return None, None, "the JSON answer has no 'judgment'"
        j = _judgment_value(obj["judgment"])
        expl = obj.get("explanation")
        expl = expl if isinstance(expl, str) else None
        if j is None:
            return None, expl, f"'judgment' is {obj['judgment']!r}, not 0, 1 or 2"
        return j, expl, None
    found = {m for m in _JUDGMENT.findall(text)}
    values = {_judgment_value(m) for m in found}
    if len(values) == 1 and None not in values:
        return values.pop(), None, None
    if len(values) > 1:
        return None, None, f"the answer gives several judgments {sorted(found)}"
    return None, None, "no JSON object with a 'judgment' in the answer"


def _judgment_value(v) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        v = v.strip()
        try:
            v = float(v)
        except ValueError:
            return None
    if isinstance(v, (int, float)) and float(v) in (0.0, 1.0, 2.0):
        return int(v)
    return None


# ----------------------------------------------------------------------------- cache


class CacheWarning(UserWarning):
    """The judge's answer cache was corrupt: it was moved aside and is being rebuilt."""


def _corrupt(error: sqlite3.Error) -> bool:
    """Whether an SQLite error means a damaged file (SQLITE_CORRUPT, SQLITE_NOTADB), not a busy or
    read-only one: those are raised as plain ``DatabaseError``, the others as its subclasses."""
    return type(error) is sqlite3.DatabaseError


def usable(answer, finish_reason) -> bool:
    """Whether an answer is worth keeping: it holds a judgment and was not cut at max_tokens."""
    return finish_reason != "length" and parse_judgment(answer)[0] is not None


class AnswerCache:
    """The judge's answers on disk: an SQLite file ``<directory>/llm_judge.sqlite3``.

    One row per request key (:meth:`LLMJudge.key`) with the answer's text and finish reason, and,
    to read it by eye, the model, prompt version and concept. Written from one thread. Every
    ``sqlite3`` error is a :class:`~steerjax.errors.JudgeError` naming the file, except a corrupt
    file, which is moved aside (one :class:`CacheWarning`) and replaced by an empty cache.
    """

    def __init__(self, directory: str):
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise JudgeError(f"cannot make the judge cache directory {directory}: {e}; pass cache_dir= "
                             "a writable folder") from e
        self.path = os.path.join(directory, CACHE_FILE)
        self.db = None
        try:
            self._open()
        except sqlite3.Error as e:
            if not _corrupt(e):
                raise JudgeError(f"cannot open the judge cache {self.path}: {e}; pass cache_dir= another "
                                 "folder") from e
            self._rebuild(e)

    def _open(self) -> None:
        self.db = sqlite3.connect(self.path, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, "
                        "prompt_version TEXT, concept TEXT, answer TEXT, finish_reason TEXT, created REAL)")
        self.db.commit()
        check = self.db.execute("PRAGMA quick_check").fetchone()[0]  # reads every page: overwritten ones show
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check: {check}")

    def _rebuild(self, error: sqlite3.Error) -> None:
        """Move the corrupt file (and its journal files) aside, warn once, and start an empty cache."""
        with contextlib.suppress(sqlite3.Error, AttributeError):
            self.db.close()
        aside = f"{self.path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
            self._open()
        except (OSError, sqlite3.Error) as e:
            raise JudgeError(f"the judge cache {self.path} is corrupt ({error}) and could not be replaced ({e}); "
                             "delete it or pass cache_dir= another folder") from e
        warnings.warn(f"the judge cache {self.path} was corrupt ({error}); it was moved to {aside} and is being "
                      "rebuilt: its answers will be asked again", CacheWarning, stacklevel=4)

    def _failed(self, what: str, error: sqlite3.Error) -> JudgeError:
        return JudgeError(f"cannot {what} the judge cache {self.path}: {type(error).__name__}: {error}; delete it "
                          "or pass cache_dir= another folder")

    def get(self, keys: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """The cached ``(answer, finish reason)`` of each key present. A file found corrupt here is
        moved aside and rebuilt (then nothing is cached)."""
        out = {}
        keys = list(keys)
        try:
            for s in range(0, len(keys), 500):
                part = keys[s:s + 500]
                rows = self.db.execute(f"SELECT key, answer, finish_reason FROM answers WHERE key IN "
                                       f"({','.join('?' * len(part))})", part)
                out.update({k: (a, f) for k, a, f in rows})
        except sqlite3.Error as e:
            if not _corrupt(e):
                raise self._failed("read", e) from e
            self._rebuild(e)
            return {}
        return out

    def put(self, key: str, *, model: str, version: str, concept: str, answer: str, finish_reason) -> None:
        try:
            self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (key, model, version, concept, answer, finish_reason, time.time()))
            self.db.commit()
        except sqlite3.Error as e:
            raise self._failed("write", e) from e

    def __len__(self) -> int:
        try:
            return int(self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
        except sqlite3.Error as e:
            raise self._failed("read", e) from e

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()


# ----------------------------------------------------------------------------- the judge


@dataclasses.dataclass
class LLMJudgeReport:
    """What an :class:`LLMJudge` run did (the second value of a call, in place of the offline
    judges' thresholds): the endpoint, the prompt version, and counts.

    Attributes:
      rows: rows in the table; judged: rows with a judgment; unparseable: answers without one;
      malformed: HTTP replies that were not chat completions; not_judged: unsteered rows (not sent);
      requests: HTTP requests made (retries included); retries: of them, repeats after a failure;
      backoff_seconds: time the retries waited before being sent (backoff or ``Retry-After``, summed
        over requests, also those waiting in parallel);
      cache_hits: distinct questions answered from the cache; questions: distinct questions asked;
      retried_from_cache: cached answers without a judgment (unparseable or cut off, kept by an
        earlier version) that were asked again instead of reused.
    """

    model: str
    base_url: str
    prompt_version: str
    temperature: float | None
    cache_path: str | None
    rows: int = 0
    judged: int = 0
    unparseable: int = 0
    malformed: int = 0
    not_judged: int = 0
    questions: int = 0
    cache_hits: int = 0
    requests: int = 0
    retries: int = 0
    backoff_seconds: float = 0.0
    retried_from_cache: int = 0

    @property
    def how(self) -> str:
        return (f"LLM judge {self.model!r} at {self.base_url} (SteerBoost rubric 0/1/2, prompt "
                f"{self.prompt_version}, temperature {self.temperature}): {self.judged} of {self.rows} rows judged, "
                f"{self.unparseable} unparseable and {self.malformed} malformed answers left unlabelled, "
                f"{self.not_judged} unsteered rows not sent; {self.questions} questions, {self.cache_hits} from "
                "the cache" + (f" ({self.retried_from_cache} cached answers without a judgment asked again)"
                                if self.retried_from_cache else "")
                + f", {self.requests} requests ({self.retries} retries"
                + (f", {self.backoff_seconds:.1f} s of backoff" if self.retries else "") + ")")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "how": self.how}


class LLMJudge:
    """Labels rollouts by asking a chat model (see the module doc).

    Args:
      model: the endpoint's model id (default ``$STEERJAX_JUDGE_MODEL``).
      base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (default ``$OPENAI_BASE_URL``, else
        OpenAI's).
      api_key: default ``$OPENAI_API_KEY``, else a placeholder.
      concepts: ``{concept name: text the judge reads as the target concept}``; a concept not in it
        is read by ``concept_names``.
      concept_names: ``"readable"`` (default): a name's ``-`` and ``_`` read as spaces;
        ``"verbatim"``: the name as it is, as SteerBoost (:data:`CONCEPT_NAMES`,
        :data:`STEERBOOST_JUDGE_OPTIONS`).
      template: the judge prompt, with fields ``{prompt}``, ``{concept}``, ``{response_after}``
        (default SteerBoost's, :data:`STEERBOOST_PROMPT`).
      temperature: sent with every request (default 0); None sends none (models that only take
        their default, such as gpt-5-mini).
      max_tokens: the answer's token limit, sent when not None.
      json_mode: send ``response_format={"type": "json_object"}`` (SteerBoost does); turn off for
        servers that refuse it.
      max_retries: retries of one request after a retryable failure (0: none).
      backoff, max_backoff: seconds before retry ``k`` (from 0): ``min(max_backoff, backoff * 2**k)``,
        times a random factor in [1, 1.25) so that parallel requests spread out.
      timeout: seconds one request may take.
      concurrency: requests in flight at once (a thread pool).
      cache_dir: the answer cache's folder (default :func:`default_cache_dir`); ``cache=False``
        keeps no cache.
      progress: a progress bar over the requests sent.

    Raises:
      JudgeError: no model, a template with other fields, or a bad option.
    """

    name = "LLM judge"

    def __init__(self, model: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                 concepts: Mapping[str, str] | None = None, concept_names: str = "readable",
                 template: str = STEERBOOST_PROMPT,
                 temperature: float | None = 0.0, max_tokens: int | None = None, json_mode: bool = True,
                 max_retries: int = 5, backoff: float = 1.0, max_backoff: float = 30.0, timeout: float = 60.0,
                 concurrency: int = 8, cache_dir: str | None = None, cache: bool = True, progress: bool = True):
        self.model = model or os.environ.get("STEERJAX_JUDGE_MODEL")
        if not self.model:
            raise JudgeError("no judge model: pass model= (the endpoint's model id) or set STEERJAX_JUDGE_MODEL "
                             f"(SteerBoost judged with {STEERBOOST_JUDGE_MODEL!r})")
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "no-key"
        self.concepts = dict(concepts or {})
        if concept_names not in CONCEPT_NAMES:
            raise JudgeError(f"concept_names must be one of {CONCEPT_NAMES}, got {concept_names!r}")
        self.concept_names = concept_names
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        if not used <= set(FIELDS) or "response_after" not in used or "concept" not in used:
            raise JudgeError(f"the judge template must use {{concept}} and {{response_after}} (and may use "
                             f"{{prompt}}), and no other field; it uses {sorted(used)}")
        self.template, self.version = template, prompt_version(template)
        if temperature is not None and not (np.isfinite(temperature) and 0 <= temperature <= 2):
            raise JudgeError(f"temperature must be in [0, 2] or None, got {temperature}")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise JudgeError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
        for label, v, low in (("max_retries", max_retries, 0), ("concurrency", concurrency, 1)):
            if not isinstance(v, int) or v < low:
                raise JudgeError(f"{label} must be an int >= {low}, got {v!r}")
        for label, v, low in (("backoff", backoff, 0), ("max_backoff", max_backoff, 0), ("timeout", timeout, 1e-3)):
            if not (np.isfinite(v) and v >= low):
                raise JudgeError(f"{label} must be >= {low:g} seconds, got {v}")
        self.temperature, self.max_tokens, self.json_mode = temperature, max_tokens, bool(json_mode)
        self.max_retries, self.backoff, self.max_backoff = max_retries, float(backoff), float(max_backoff)
        self.timeout, self.concurrency, self.progress = float(timeout), concurrency, progress
        self.cache_dir = (cache_dir or default_cache_dir()) if cache else None
        self._client = None
        self._counts = threading.Lock()
        self._report = LLMJudgeReport(self.model, self.base_url, self.version, self.temperature, None)
        self.last_report: LLMJudgeReport | None = None

    # ----------------------------------------------------------------- requests

    def concept_text(self, name: str) -> str:
        """What the judge reads as the target concept ``name``: its ``concepts`` entry, else the name
        as ``concept_names`` says."""
        if name in self.concepts:
            return self.concepts[name]
        return name if self.concept_names == "verbatim" else name.replace("-", " ").replace("_", " ")

    def message(self, prompt: str, concept: str, response: str) -> str:
        """The user message for one rollout (``concept``: the text, see :meth:`concept_text`)."""
        return self.template.format(prompt=prompt, concept=concept, response_after=response)

    def key(self, prompt: str, concept: str, response: str) -> str:
        """The cache key of one question: the endpoint (base URL), model, prompt version, prompt,
        concept, response and the request options that change the answer."""
        blob = json.dumps([self.base_url, self.model, self.version, prompt, concept, response, self.temperature,
                           self.max_tokens, self.json_mode])
        return hashlib.sha256(blob.encode()).hexdigest()

    def client(self):
        """The ``openai.OpenAI`` client (its own retries off: this judge retries)."""
        if self._client is None:
            try:
                import openai
            except ImportError as e:
                raise JudgeError("the LLM judge needs the openai package: pip install openai") from e
            self._client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0,
                                         timeout=self.timeout)
        return self._client

    def request(self, message: str, stop: threading.Event | None = None) -> tuple[str | None, str | None, str | None]:
        """``(answer text, finish reason, malformed)`` of one user message, retried as the module doc
        says; ``malformed`` says why the reply is not a chat completion (then no text), else None.
        Once ``stop`` is set no further attempt is made (``(None, None, "cancelled")``).

        Raises:
          JudgeError: the endpoint is unreachable or failing after the retries, or refuses the
            request (wrong key, URL, model or parameters).
        """
        client = self.client()  # first: a clear error when openai is missing
        import openai

        stop = stop or threading.Event()
        params = {"model": self.model, "messages": [{"role": "user", "content": message}]}
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        if self.json_mode:
            params["response_format"] = {"type": "json_object"}
        for attempt in range(self.max_retries + 1):
            if stop.is_set():
                return None, None, "cancelled"
            self._count(retry=attempt > 0)
            wait_for = None
            try:
                resp = client.chat.completions.create(**params)
            except openai.APITimeoutError:
                why = f"no reply within {self.timeout:g} s (timeout=)"
            except openai.APIConnectionError as e:
                why = f"connection failed ({_cause(e)})"
            except openai.APIStatusError as e:
                code = e.status_code
                if code not in RETRY_STATUS and code < 500:
                    raise JudgeError(self._refused(code, e)) from None
                why = f"HTTP {code}: {_server_message(e)}"
                wait_for = _retry_after(e)
            except (json.JSONDecodeError, openai.APIResponseValidationError) as e:
                return None, None, f"the reply is not valid JSON ({type(e).__name__}: {e})"
            else:
                return _reply_content(resp)
            if attempt == self.max_retries:
                raise JudgeError(
                    f"the judge endpoint {self.base_url} did not answer: {why}, after {attempt + 1} attempt(s) "
                    f"(max_retries={self.max_retries}). Check that the server is running and that base_url= "
                    "(or OPENAI_BASE_URL) points at it, or raise max_retries / timeout")
            if wait_for is None:
                delay = min(self.max_backoff, self.backoff * 2 ** attempt) * (1 + 0.25 * random.random())
            else:
                delay = min(wait_for, self.max_backoff)
            self._count_wait(delay)
            stop.wait(delay)
        raise AssertionError("unreachable")

    def _refused(self, code: int, e) -> str:
        msg = _server_message(e)
        if code == 401:
            hint = "the API key is wrong or missing: pass api_key= or set OPENAI_API_KEY"
        elif code == 403:
            hint = "the key may not use this model or endpoint"
        elif code == 404:
            hint = (f"no such route or model: base_url should end with /v1 and {self.model!r} be a model the "
                    "endpoint serves (model= or STEERJAX_JUDGE_MODEL)")
        else:
            hint = ("the endpoint refused the request: for models that only take their default temperature "
                    "pass temperature=None, for servers without JSON mode json_mode=False")
        return f"the judge endpoint {self.base_url} answered HTTP {code} ({msg}): {hint}"

    def _count(self, retry: bool) -> None:
        with self._counts:
            rep = self._report
            rep.requests += 1
            rep.retries += int(retry)

    def _count_wait(self, seconds: float) -> None:
        with self._counts:
            self._report.backoff_seconds += seconds

    # ----------------------------------------------------------------- the table

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        """The judge's columns for every row of ``table`` (same index): ``judgment`` (0, 1, 2 or NaN),
        ``label`` (``under-steer`` / ``success`` / ``over-steer``, or None), ``status`` (``ok``,
        ``unparseable``, ``malformed``, ``not judged``), ``problem`` (why there is no judgment),
        ``explanation``, ``answer`` (the judge's raw text) and ``cached``.

        Raises:
          JudgeError: a table without ``prompt``, ``concept`` and ``text`` columns, a steered row
            without text, or a failing endpoint (no columns are returned then; the answers received
            so far are in the cache).
        """
        check_llm_table(table)
        self._report = rep = LLMJudgeReport(self.model, self.base_url, self.version, self.temperature,
                                            None, rows=len(table))
        self.last_report = rep
        steered = (table["concept"] != UNSTEERED).to_numpy()
        questions: dict[str, tuple[str, str, str]] = {}
        row_key = [None] * len(table)
        for i, (p, c, t, s) in enumerate(zip(table["prompt"], table["concept"], table["text"], steered)):
            if s:
                q = (str(p), self.concept_text(str(c)), str(t))
                row_key[i] = k = self.key(*q)
                questions.setdefault(k, q)
        rep.questions = len(questions)
        cache = AnswerCache(self.cache_dir) if self.cache_dir is not None else None
        try:
            rep.cache_path = cache.path if cache else None
            answers: dict[str, tuple] = {}
            if cache is not None:
                cached = cache.get(list(questions))
                answers = {k: (a, f, None, True) for k, (a, f) in cached.items() if usable(a, f)}
                rep.retried_from_cache = len(cached) - len(answers)
            rep.cache_hits = len(answers)
            todo = [k for k in questions if k not in answers]
            if todo:
                self._ask(todo, questions, answers, cache)
        finally:
            if cache is not None:
                cache.close()
        return self._columns(table, row_key, answers, rep)

    def _ask(self, todo, questions, answers, cache) -> None:
        """Send the questions ``todo`` (a thread pool), storing answers as they come; on a fatal
        error stop the others and raise it."""
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="llm-judge")
        bar = tqdm(total=len(todo), desc="LLM judge", unit="request", disable=not self.progress or None)
        futures = {pool.submit(self.request, self.message(*questions[k]), stop): k for k in todo}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    k = futures[fut]
                    text, finish, malformed = fut.result()
                    answers[k] = (text, finish, malformed, False)
                    if malformed is None and cache is not None and usable(text, finish):
                        cache.put(k, model=self.model, version=self.version, concept=questions[k][1],
                                  answer=text, finish_reason=finish)
                    bar.update(1)
        except BaseException as e:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            got = sum(1 for v in answers.values() if not v[3] and v[0] is not None)
            if isinstance(e, JudgeError):
                where = (f"the {got} answer(s) received before it are kept in the cache {cache.path} and a rerun "
                         "reuses them" if cache is not None else f"{got} answer(s) received before it are lost "
                         "(cache=False)")
                raise JudgeError(f"{e}. No labels were returned; {where}") from None
            raise
        finally:
            bar.close()
        pool.shutdown(wait=True)

    def _columns(self, table, row_key, answers, rep) -> pd.DataFrame:
        n = len(table)
        judgment = np.full(n, np.nan)
        label, status, problem, expl, answer = ([None] * n for _ in range(5))
        cached = np.zeros(n, bool)
        for i, k in enumerate(row_key):
            if k is None:
                status[i], problem[i] = NOT_JUDGED, "unsteered row: no target concept"
                continue
            text, finish, malformed, hit = answers[k]
            cached[i], answer[i] = hit, text
            if malformed is not None:
                status[i], problem[i] = MALFORMED, malformed
                continue
            j, expl[i], why = parse_judgment(text)
            if j is None:
                if finish == "length":
                    why += " (the answer was cut at max_tokens)"
                status[i], problem[i] = UNPARSEABLE, why
            else:
                judgment[i], label[i], status[i] = j, JUDGMENT_LABELS[j], OK
        out = pd.DataFrame({"judgment": judgment, "label": label, "status": status, "problem": problem,
                            "explanation": expl, "answer": answer, "cached": cached}, index=table.index)
        rep.judged = int((out["status"] == OK).sum())
        rep.unparseable = int((out["status"] == UNPARSEABLE).sum())
        rep.malformed = int((out["status"] == MALFORMED).sum())
        rep.not_judged = int((out["status"] == NOT_JUDGED).sum())
        if rep.unparseable or rep.malformed:
            first = out.loc[out["status"].isin([UNPARSEABLE, MALFORMED]), "problem"].iloc[0]
            warnings.warn(f"LLM judge {self.model!r} at {self.base_url}: {rep.unparseable} unparseable and "
                          f"{rep.malformed} malformed answer(s) of {rep.rows - rep.not_judged} rows are left "
                          f"unlabelled (no label, judgment NaN; e.g. {first})", stacklevel=3)
        return out

    def __call__(self, table: pd.DataFrame) -> tuple[pd.DataFrame, LLMJudgeReport]:
        """``(scores, report)``: :meth:`score`'s columns and the :class:`LLMJudgeReport` (which has
        the ``how`` and ``to_dict()`` of the offline judges' thresholds)."""
        scores = self.score(table)
        return scores, self.last_report


def check_llm_table(table: pd.DataFrame) -> None:
    """The LLM judge's table: ``prompt``, ``concept`` and ``text`` columns, text on steered rows."""
    need = {"prompt", "concept", "text"}
    missing = sorted(need - set(table.columns))
    if missing:
        raise JudgeError(f"rollout table lacks columns {missing}; make it with "
                         "steerjax.studies.steerability_prediction.rollouts")
    if not len(table):
        raise JudgeError("rollout table is empty")
    steered = table["concept"] != UNSTEERED
    no_text = table.loc[steered, "text"].isna()
    if no_text.any():
        raise JudgeError(f"{int(no_text.sum())} steered rows have no text (a model without a tokenizer?): the "
                         "LLM judge reads the decoded response")


def _reply_content(resp) -> tuple[str | None, str | None, str | None]:
    """``(text, finish reason, None)`` of a chat completion, or ``(None, None, why)`` it is not one."""
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list):
        got = type(resp).__name__ if not isinstance(resp, str) else f"text {resp[:60]!r}"
        return None, None, f"the reply is not a chat completion (no 'choices'; got {got})"
    if not choices:
        return None, None, "the reply has no choices"
    msg = getattr(choices[0], "message", None)
    content = getattr(msg, "content", None)
    if msg is None:
        return None, None, "the reply's choice has no message"
    if content is not None and not isinstance(content, str):
        return None, None, f"the reply's message content is {type(content).__name__}, not text"
    return content, getattr(choices[0], "finish_reason", None), None


def _server_message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    return str(getattr(e, "message", e))[:300]


def _retry_after(e) -> float | None:
    headers = getattr(getattr(e, "response", None), "headers", None) or {}
    try:
        v = float(headers.get("retry-after"))
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v >= 0 else None


def _cause(e) -> str:
    c = e.__cause__ or e.__context__
    return f"{type(c).__name__}: {c}" if c is not None else str(e)


# ----------------------------------------------------------------------------- agreement


def judge_agreement(labels: Mapping[str, Sequence]) -> pd.DataFrame:
    """Agreement between every pair of judges: one row per pair with ``judge_a``, ``judge_b``,
    ``n`` (items both labelled), ``agreement`` (raw share of equal labels) and ``kappa`` (Cohen's,
    :func:`steerjax.studies.steerability_prediction.judge.cohen_kappa`); NaN when ``n`` is 0.

    Args:
      labels: ``{judge name: labels}``, all of the same items: pandas Series are aligned on their
        index, other sequences by position (then of equal length). Missing labels (None, NaN) are
        left out of each pair where either judge lacks one.

    Raises:
      JudgeError: fewer than two judges, or sequences of different lengths.
    """
    if len(labels) < 2:
        raise JudgeError(f"agreement needs at least two judges' labels, got {list(labels)}")
    if all(isinstance(v, pd.Series) for v in labels.values()):
        frame = pd.concat({k: v for k, v in labels.items()}, axis=1)
    else:
        lengths = {k: len(v) for k, v in labels.items()}
        if len(set(lengths.values())) != 1:
            raise JudgeError(f"the judges labelled different numbers of items {lengths}: pass pandas Series "
                             "indexed by item to align them")
        frame = pd.DataFrame({k: list(v) for k, v in labels.items()})
    names = list(labels)
    rows = []
    for a_i, a in enumerate(names):
        for b in names[a_i + 1:]:
            both = frame[[a, b]].dropna()
            n = len(both)
            if n:
                agree = float((both[a].astype(str) == both[b].astype(str)).mean())
                kappa = cohen_kappa(both[a].astype(str).tolist(), both[b].astype(str).tolist())
            else:
                agree = kappa = float("nan")
            rows.append({"judge_a": a, "judge_b": b, "n": n, "agreement": agree, "kappa": kappa})
    return pd.DataFrame(rows, columns=["judge_a", "judge_b", "n", "agreement", "kappa"])
