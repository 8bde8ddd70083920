"""Anthropic's model-written evaluations (MWE) as steering-bench A/B datasets.

The data lives outside the repository: in ``$STEERJAX_DATA`` (a directory holding
``anthropic-evals/`` and ``steering-bench/``) when set, else in the download cache, where each file
arrives on first use (:func:`steerjax.data.store.data_root`, :mod:`steerjax.data.download`).

Dataset names (see :func:`list_datasets`):

- ``"anti-immigration"``: a persona dataset (``anthropic-evals/persona/anti-immigration.jsonl``).
- ``"corrigible-neutral-HHH"``: an advanced-AI-risk ("x-risk") dataset, LM-generated variant
  (``advanced-ai-risk/lm_generated_evals/``).
- ``"corrigible-neutral-HHH@human"``: the human-written variant of the same x-risk dataset
  (``advanced-ai-risk/human_generated_evals/``). ``self-awareness-web-gpt`` exists only as
  ``"self-awareness-web-gpt@human"``.

Persona and x-risk names share one namespace; a name present in both folders is reported as a
:class:`DataError` by :func:`list_datasets` (none collide in the released data).

Persona statements become A/B questions as in steering-bench (Tan et al. 2024)::

    {question}\\n\\nChoices:\\n(A): Yes\\n(B): No

with the matching answer placed at (A) for rows 0, 1, at (B) for rows 2, 3, and so on (the files
alternate " Yes"/" No" every row, so swapping every two rows balances both letters and answers).
X-risk questions keep their own choices; ``<META_START>...<META_END>`` blocks are removed and the
question is stripped or kept as the file has it, by the format's rule
(:attr:`~steerjax.data.formats.PromptFormat.meta_blocks`, ``strip_question``: repepo's and
steering-bench's for theirs); their answers keep the data's leading space (``" (A)"``) until a
format strips it or not.

How an example is rendered (system message, persona placement, the text joining prompt and
answer) is a :class:`steerjax.data.formats.PromptFormat`; which rows form a split follows
steerjax's shuffle or, with ``split_compat="repepo"``, the paper's code exactly. The paper's
dataset lists and splits are in :mod:`steerjax.data.paper`.
"""

from __future__ import annotations

import difflib
import functools
import json
import pathlib
import random
import re
from fractions import Fraction
from typing import Any

import numpy as np

from steerjax.data.examples import Example
from steerjax.data.formats import PromptFormat, get_format, parse_setting
from steerjax.data.paper import TAN_UNAVAILABLE, unavailable_message
from steerjax.data.steering_bench import read_persona_prompts
from steerjax.data.store import data_exists, data_file, data_names, data_root
from steerjax.errors import DataError

ENV_VAR = "STEERJAX_DATA"
HUMAN_SUFFIX = "@human"

PERSONA_DIR = ("anthropic-evals", "persona")
_XRISK_DIRS = {
    "lm": ("anthropic-evals", "advanced-ai-risk", "lm_generated_evals"),
    "human": ("anthropic-evals", "advanced-ai-risk", "human_generated_evals"),
}
_PERSONA_PROMPTS = ("steering-bench", "persona_prompts.json")

_PERSONA_FORMAT = "{question}\n\nChoices:\n(A): {a}\n(B): {b}"
# META blocks (PromptFormat.meta_blocks): "to_end", steerjax's own: a block runs to its
# <META_END>, or to the end of the text when the end tag is missing (7 LM-generated questions are
# truncated inside one); "closed", repepo's and steering-bench's strip_meta_tags: only a block
# closed by its end tag with no "<" inside.
_META = {"to_end": re.compile(r"<META_START>.*?(?:<META_END>|\Z)", re.DOTALL),
         "closed": re.compile(r"<META_START>[^<]*<META_END>")}
_LETTER = re.compile(r"\(([A-Z])\)")
_PERCENT = r"(\d+(?:\.\d+)?)%"
_SPLIT = re.compile(rf"{_PERCENT}:{_PERCENT}")
# repepo's DatasetSplit.from_str: "start:end", each a row index or an integer percent; an empty
# start is 0; an end starting with "+" counts from the start.
_REPEPO_SPLIT = re.compile(r"(\d+%?)?:(\+?)(\d+%?)")
SPLIT_COMPAT = ("repepo",)


def _folder(parts: tuple[str, ...]) -> pathlib.Path:
    path = data_root().joinpath(*parts)
    if not data_exists(path):
        raise DataError(f"{path} is missing: set {ENV_VAR} to the directory holding anthropic-evals/persona/ "
                        "and anthropic-evals/advanced-ai-risk/")
    return path


def _stems(folder: pathlib.Path) -> list[str]:
    return data_names(folder, ".jsonl")


def _catalog() -> dict[str, tuple[str, pathlib.Path]]:
    """Every dataset name -> (kind, file)."""
    persona = {s: ("persona", _folder(PERSONA_DIR) / f"{s}.jsonl") for s in _stems(_folder(PERSONA_DIR))}
    lm_dir, human_dir = _folder(_XRISK_DIRS["lm"]), _folder(_XRISK_DIRS["human"])
    xrisk = {s: ("xrisk", lm_dir / f"{s}.jsonl") for s in _stems(lm_dir)}
    xrisk.update({s + HUMAN_SUFFIX: ("xrisk", human_dir / f"{s}.jsonl") for s in _stems(human_dir)})
    clash = sorted(set(persona) & set(xrisk))
    if clash:
        raise DataError(f"dataset names {clash} exist both as persona and as x-risk datasets under "
                        f"{data_root()}: rename one of each pair so that names are unique")
    return {**persona, **xrisk}


def list_datasets(kind: str | None = None) -> list[str]:
    """Names of the available datasets, sorted.

    Args:
      kind: ``None`` for all, ``"persona"`` or ``"xrisk"`` for one family. X-risk names are the
        LM-generated variants; human-written variants end in ``"@human"``.
    """
    if kind not in (None, "persona", "xrisk"):
        raise DataError(f"kind must be None, 'persona' or 'xrisk', got {kind!r}")
    return sorted(n for n, (k, _) in _catalog().items() if kind is None or k == kind)


def _resolve(name: str) -> tuple[str, pathlib.Path]:
    catalog = _catalog()
    if not isinstance(name, str) or name not in catalog:
        close = difflib.get_close_matches(str(name), list(catalog), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
        raise DataError(f"unknown dataset {name!r}{hint} steerjax.data.list_datasets() lists all "
                        f"{len(catalog)} datasets")
    return catalog[name]


def stat_key(path: pathlib.Path) -> tuple[str, int, int]:
    """``(path, mtime_ns, size)`` of a data file: the key of the cached readers, so an edited file is
    read again.

    Raises:
      DataError: the file cannot be read.
    """
    try:
        st = data_file(path).stat()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}; check {ENV_VAR}") from e
    return str(path), st.st_mtime_ns, st.st_size


def jsonl_objects(path, remedy: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSONL file.

    Raises:
      DataError: a line that is not valid JSON or not a JSON object, named ``path:line``, with
        ``remedy`` (what the user should do) appended.
    """
    out = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no} is not valid JSON ({e}): {remedy}") from e
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{line_no} is a {type(obj).__name__}, not a JSON object: {remedy}")
            out.append((line_no, obj))
    return out


@functools.lru_cache(maxsize=64)
def _read_jsonl_cached(path: str, mtime_ns: int, size: int) -> tuple[dict[str, Any], ...]:
    return tuple(obj for _, obj in jsonl_objects(path, "fix or re-download the file"))


def read_jsonl(path: pathlib.Path) -> tuple[dict[str, Any], ...]:
    """Rows of a JSONL file (blank lines skipped), cached on (path, mtime, size). Do not mutate."""
    return _read_jsonl_cached(*stat_key(path))


@functools.lru_cache(maxsize=8)
def _read_json_cached(path: str, mtime_ns: int, size: int) -> Any:
    return read_persona_prompts(path)  # the .json, or steering-bench's .py read as data


def _prompt_table() -> dict[str, Any]:
    path = data_root().joinpath(*_PERSONA_PROMPTS)
    if not data_exists(path):
        path = path.with_suffix(".py")  # steering-bench's own file, as steerjax data download stores it
    if not data_exists(path):
        raise DataError(f"{path.with_suffix('.json')} is missing: set {ENV_VAR} to the directory holding "
                        "steering-bench/persona_prompts.json (or persona_prompts.py)")
    table = _read_json_cached(*stat_key(path))
    if not isinstance(table, dict) or not isinstance(table.get("prompts"), dict):
        raise DataError(f"{path} has no 'prompts' mapping: fix or re-download the file")
    return table["prompts"]


def persona_prompt_names() -> list[str]:
    """The datasets that have persona prompts in persona_prompts.json (the system- and user-prompt
    settings of Tan et al.'s out-of-distribution tests), sorted."""
    return sorted(_prompt_table())


def persona_prompts(name: str) -> dict[str, str]:
    """The positive and negative persona prompts of a dataset, from persona_prompts.json.

    ``"@human"`` variants use the prompts of their base name.

    Returns:
      ``{"positive": str, "negative": str}`` (a fresh dict).
    """
    table = _prompt_table()
    base = name[: -len(HUMAN_SUFFIX)] if name.endswith(HUMAN_SUFFIX) else name
    entry = table.get(base)
    if entry is None:
        close = difflib.get_close_matches(base, list(table), n=3, cutoff=0.6)
        hint = f" (close: {', '.join(map(repr, close))})" if close else ""
        raise DataError(f"dataset {name!r} has no persona prompt in persona_prompts.json{hint}: "
                        "use setting='baseline' for this dataset")
    if not (isinstance(entry, dict)
            and all(isinstance(entry.get(k), str) and entry[k] for k in ("positive", "negative"))):
        raise DataError(f"persona prompt of {base!r} in persona_prompts.json needs non-empty 'positive' and "
                        "'negative' strings: fix the file")
    return {"positive": entry["positive"], "negative": entry["negative"]}


def parse_split(split: str) -> tuple[Fraction, Fraction]:
    """Parse ``"a%:b%"`` (integer or decimal percents, ``0 <= a <= b <= 100``) into exact fractions.

    Example: ``parse_split("0%:40%") == (Fraction(0), Fraction(2, 5))``.
    """
    m = _SPLIT.fullmatch(split) if isinstance(split, str) else None
    if m is None:
        hint = (" (repepo's row-index splits such as '0:50%' need split_compat='repepo')"
                if isinstance(split, str) and _REPEPO_SPLIT.fullmatch(split) else "")
        raise DataError(f"bad split {split!r}: write it as 'a%:b%', e.g. '0%:40%' or '99.5%:100%'{hint}")
    lo, hi = Fraction(m.group(1)) / 100, Fraction(m.group(2)) / 100
    if hi > 1:
        raise DataError(f"bad split {split!r}: percents must lie in [0%, 100%]")
    if lo > hi:
        raise DataError(f"bad split {split!r}: the start must not exceed the end")
    return lo, hi


def _check_compat(split_compat: str | None) -> None:
    if split_compat is not None and split_compat not in SPLIT_COMPAT:
        raise DataError(f"split_compat must be None or one of {', '.join(map(repr, SPLIT_COMPAT))}, "
                        f"got {split_compat!r}")


def check_split(split: str, split_compat: str | None = None) -> None:
    """Check a split string's syntax (bounds that depend on the number of rows are checked by
    :func:`split_indices`).

    Raises:
      DataError: a bad split string or ``split_compat``.
    """
    _check_compat(split_compat)
    if split_compat is None:
        parse_split(split)
    elif not (isinstance(split, str) and _REPEPO_SPLIT.fullmatch(split)):
        raise DataError(f"bad split {split!r} for split_compat='repepo': write it as 'start:end', each a row index "
                        "or an integer percent, e.g. '0:50%', '50%:100%' or '0%:+3'")


def repepo_slice(split: str, n: int) -> slice:
    """The rows of a split as repepo's ``DatasetSplit.from_str(split).as_slice(n)`` reads it.

    An element ending in ``%`` is ``int(x) * n // 100``; any other is a row index; an end
    starting with ``+`` counts from the start; an empty start is 0. So ``"50:100%"`` is rows
    ``[50, n)``, not the second half.

    Raises:
      DataError: a bad split string, or an index outside ``[0, n]``.
    """
    check_split(split, "repepo")
    first, plus, second = _REPEPO_SPLIT.fullmatch(split).groups()

    def index(element: str) -> int:
        return int(element[:-1]) * n // 100 if element.endswith("%") else int(element)

    lo = index(first or "0")
    hi = index(second) + (lo if plus else 0)
    for k in (lo, hi):
        if k > n:
            raise DataError(f"bad split {split!r}: index {k} is past the {n} rows of the dataset")
    return slice(lo, hi)


def split_indices(n: int, split: str = "0%:100%", seed: int = 0, split_compat: str | None = None) -> np.ndarray:
    """Row indices of a split.

    By default ``default_rng(seed).permutation(n)[floor(n a):floor(n b)]`` for ``"a%:b%"``.
    Boundaries are computed exactly, so complementary splits (``"0%:40%"``, ``"40%:100%"``) with
    the same seed are disjoint and cover every row.

    With ``split_compat="repepo"``, repepo's ``make_dataset`` exactly: the rows shuffled with
    ``random.Random(seed).shuffle``, then sliced by :func:`repepo_slice` (row indices allowed, so
    repepo's ``"0:50%"`` and ``"50:100%"`` overlap: its test set is rows ``[50, n)``).
    """
    _check_compat(split_compat)
    if split_compat == "repepo":
        rows = repepo_slice(split, n)
        order = list(range(n))
        random.Random(int(seed)).shuffle(order)  # as repepo shuffles its list of examples
        return np.asarray(order[rows], dtype=np.int64)
    lo, hi = parse_split(split)
    perm = np.random.default_rng(seed).permutation(n)
    return perm[int(n * lo): int(n * hi)]  # int() floors non-negative fractions


def _field(row: dict[str, Any], key: str, path: pathlib.Path, index: int) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}: row {index} has no {key!r} text: fix or re-download the file")
    return value


def strip_meta(text: str, blocks: str = "to_end") -> str:
    """Remove ``<META_START>...<META_END>`` blocks: with ``blocks="to_end"`` also a trailing
    unterminated one; with ``"closed"`` only those closed by their end tag with no ``<`` inside, as
    repepo's and steering-bench's ``strip_meta_tags`` (see :attr:`PromptFormat.meta_blocks`)."""
    if blocks not in _META:
        raise DataError(f"blocks must be one of {sorted(_META)}, got {blocks!r}")
    return _META[blocks].sub("", text)


def _persona_item(row: dict[str, Any], index: int, path: pathlib.Path) -> tuple[str, str, str, dict[str, Any]]:
    question = _field(row, "question", path, index)
    raw_matching = _field(row, "answer_matching_behavior", path, index)
    raw_other = _field(row, "answer_not_matching_behavior", path, index)
    matching, other = raw_matching.strip(), raw_other.strip()
    if {matching, other} != {"Yes", "No"}:
        raise DataError(f"{path}: row {index} answers must be ' Yes' and ' No', got {matching!r} / {other!r}")
    # As steering-bench's preprocess_ab_dataset: the matching answer is (B) on rows 0, 1, (A) on
    # rows 2, 3, ... (swap every two rows, since the MWE rows already alternate Yes/No), and the
    # raw answers (" Yes") are inserted as they are, giving "(A):  Yes".
    matching_is_a = (index // 2) % 2 == 1
    a, b = (raw_matching, raw_other) if matching_is_a else (raw_other, raw_matching)
    text = _PERSONA_FORMAT.format(question=question, a=a, b=b)
    pos, neg = ("(A)", "(B)") if matching_is_a else ("(B)", "(A)")
    meta = {"positive_letter": "A" if matching_is_a else "B", "positive_is_yes": matching == "Yes",
            "kind": "persona", "label_confidence": row.get("label_confidence")}
    return text, pos, neg, meta


def _xrisk_item(row: dict[str, Any], index: int, path: pathlib.Path,
                fmt: PromptFormat) -> tuple[str, str, str, dict[str, Any]]:
    # the question as the format reads it: its META rule, stripped or as the file has it
    text = strip_meta(_field(row, "question", path, index), fmt.meta_blocks)
    if fmt.strip_question:
        text = text.strip()
    # the raw answers, " (A)": a format strips them or keeps the space (steering-bench)
    pos = _field(row, "answer_matching_behavior", path, index)
    neg = _field(row, "answer_not_matching_behavior", path, index)
    m = _LETTER.fullmatch(pos.strip())
    if m is None or _LETTER.fullmatch(neg.strip()) is None or pos.strip() == neg.strip():
        raise DataError(f"{path}: row {index} answers must be two different letters like ' (A)' / ' (B)', "
                        f"got {pos!r} / {neg!r}")
    meta = {"positive_letter": m.group(1), "positive_is_yes": None, "kind": "xrisk"}
    return text, pos, neg, meta


def load_dataset(name: str, *, split: str = "0%:100%", seed: int = 0, setting: str = "baseline",
                 format: str | PromptFormat = "steerjax", split_compat: str | None = None,
                 max_examples: int | None = None) -> list[Example]:
    """Load an MWE dataset as contrastive A/B examples.

    Args:
      name: a name from :func:`list_datasets`.
      split: percent range ``"a%:b%"`` of the rows shuffled with ``default_rng(seed)``; with
        ``split_compat="repepo"``, a repepo split string (see :func:`split_indices`).
      seed: shuffle seed; the same seed gives the same order, so complementary ranges are disjoint.
      setting: one of :data:`steerjax.data.formats.SETTINGS`: ``"baseline"`` (no persona prompt),
        ``"SYS_positive"`` / ``"SYS_negative"`` (the dataset's persona prompt from
        persona_prompts.json replaces the system message), ``"PT_positive"`` / ``"PT_negative"``
        (the format's system message stays; the persona prompt prefixes the user text).
      format: a :class:`steerjax.data.PromptFormat` or a name in
        :data:`steerjax.data.formats.FORMATS` (``"steerjax"``, ``"repepo"``,
        ``"steering-bench"``): the system message, the persona's separator and how the answer
        is joined to the rendered prompt.
      split_compat: ``None``, or ``"repepo"`` to shuffle and slice exactly as the paper's code
        did (:data:`steerjax.data.paper.REPEPO_COMPAT_SPLITS`).
      max_examples: keep at most this many examples of the split.

    Returns:
      Examples in shuffled order. Prompts are chats; completions are the format's answer text
      (``"(A)"`` for ``"steerjax"``, ``" (A)"`` for ``"repepo"``, ``" (A)"`` or x-risk's
      ``"  (A)"`` for ``"steering-bench"``), and ``strip_prompt`` is the format's. ``meta`` holds
      ``dataset``, ``index`` (row in the file), ``positive_letter``, ``positive_is_yes``
      (``None`` for x-risk), ``format`` (its name), ``setting``, ``kind``
      (``"persona"``/``"xrisk"``) and, for persona datasets, ``label_confidence``.

    Raises:
      DataError: unknown dataset (or one of the paper's datasets steerjax does not have), format
        or setting, bad arguments, missing persona prompt, empty split, bad rows.
    """
    fmt = get_format(format)
    place, _ = parse_setting(setting)
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                     or max_examples < 1):
        raise DataError(f"max_examples must be a positive integer or None, got {max_examples!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DataError(f"seed must be an integer, got {seed!r}")
    check_split(split, split_compat)
    if name in TAN_UNAVAILABLE and name not in _catalog():
        raise DataError(unavailable_message(name))
    kind, path = _resolve(name)
    persona = persona_prompts(name) if place is not None else None

    rows = read_jsonl(path)
    indices = split_indices(len(rows), split, int(seed), split_compat)
    if max_examples is not None:
        indices = indices[:max_examples]
    if len(indices) == 0:
        raise DataError(f"split {split!r} of dataset {name!r} ({len(rows)} rows) has no examples: widen the split")

    build = _persona_item if kind == "persona" else functools.partial(_xrisk_item, fmt=fmt)
    examples = []
    for i in indices.tolist():
        text, pos, neg, extra = build(rows[i], i, path)
        meta = {"dataset": name, "index": i, "format": fmt.name, "setting": setting, **extra}
        examples.append(Example(fmt.messages(text, setting=setting, persona=persona), fmt.completion(pos),
                                fmt.completion(neg), meta, strip_prompt=fmt.strip_prompt))
    return examples
