"""Fan et al.'s data and setting, from the files of their code (SteerBoost, github.com/Fcr09/SteerBoost).

SteerBoost's data are not shipped with steerjax; these loaders read them from a path the user
gives (SteerBoost's ``scripts/download_data.py`` puts them under its ``data/``). Formats, as
SteerBoost's code reads them:

* ``concepts.json``: a JSON list of ``{"concept_id": int, "concept_name": str}``, the 150 concepts
  with ids 0..149 (:func:`steerboost_concepts`). Their abstraction level is not in the file:
  ``xgb/concept_partition.py`` assigns it by id (:data:`LEVEL_POOLS`); an entry's own ``"level"``
  key, when present, takes precedence.
* ``training/{concept_id}.json``: one concept's example bank, ``{"positive": [texts],
  "negative": [texts]}`` (written by GPT-4o-mini in SteerBoost; the first 50 of each side are
  used), read by :func:`steerboost_examples` into banks for
  :func:`steerjax.studies.steerability_prediction.concepts.concepts_from_examples`.
* ``alpaca_eval.json``: a JSON list of ``{"instruction": str, "dataset": str, ...}`` (805
  AlpacaEval prompts); SteerBoost uses 50 drawn by ``random.seed(42); random.sample(data, 50)``,
  which :func:`alpaca_eval_prompts` repeats (same prompts, same order).

:data:`STEERBOOST` is the reference's setting as keyword arguments for steerjax's functions.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from typing import Any

import pandas as pd

from steerjax.data.example_banks import UNSTEERED, Examples
from steerjax.errors import DataError, SteerjaxError

#: abstraction level -> SteerBoost concept ids (``xgb/concept_partition.py``: 50 per level)
LEVEL_POOLS: dict[str, tuple[int, ...]] = {
    "low": tuple(range(0, 40)) + tuple(range(120, 130)),
    "mid": tuple(range(40, 80)) + tuple(range(130, 140)),
    "high": tuple(range(80, 120)) + tuple(range(140, 150)),
}
LEVEL_OF_ID = {i: level for level, ids in LEVEL_POOLS.items() for i in ids}

#: SteerBoost's alpha grid: 0.2 to 9.0 in steps of 0.2, 45 values (``scripts/01_run_steering.sh``)
STEERBOOST_ALPHAS: tuple[float, ...] = tuple(round(0.2 * i, 1) for i in range(1, 46))

#: The reference's setting (SteerBoost's scripts and defaults, Qwen3-1.7B / DiffMean / layer 10),
#: grouped by the steerjax function whose keyword arguments each part is:
#:
#: * ``rollouts``: :func:`steerjax.studies.steerability_prediction.rollouts` (``strengths`` is its third argument):
#:   alpha x the raw vector on 45 alphas, every position steered (its hook adds ``alpha * v`` on
#:   the prompt pass and each decoding step), sampling at temperature 0.7 (``do_sample=True``;
#:   Hugging Face's generation config adds its own ``top_k``/``top_p``: ``top_k=50`` by default,
#:   the reference model Qwen3's config 20 and 0.95, which the preset uses), up to 2048 new tokens
#:   (``dataset_steering.py --max_tokens``, which ``01_run_steering.sh`` leaves at its default);
#: * ``concepts``: :func:`steerjax.studies.steerability_prediction.concepts.concepts_from_examples` (DiffMean of the
#:   first 50 positive and negative examples, plain text, first token left out);
#: * ``prompts``: :func:`alpaca_eval_prompts` (50 AlpacaEval prompts, seed 42);
#: * ``evaluation``: :func:`steerjax.studies.steerability_prediction.evaluation.paper_evaluation`: 120 seen / 30 unseen
#:   concepts stratified by level, a 70/10/20 train/validation/test prompt split per seen concept
#:   (the README's numbers; ``xgb/train_weighted_search.py``'s defaults, ``--test_size 0.3
#:   --val_size 0.2`` of the rest, give 28/7/15 of 50), the validation-best model kept as
#:   trained on the train prompts (no refit), unseen concepts scored on all their prompts;
#: * ``reference``: facts with no steerjax argument (model, layer, its feature lists, search trials).
STEERBOOST: dict[str, dict[str, Any]] = {
    "rollouts": {"strengths": STEERBOOST_ALPHAS, "scale": "raw", "positions": "all", "temperature": 0.7,
                 "top_k": 20, "top_p": 0.95, "max_new_tokens": 2048},
    "concepts": {"method": "diffmean", "n_examples": 50, "chat": False},
    "prompts": {"n": 50, "seed": 42},
    "evaluation": {"unseen_fraction": 0.2, "prompt_fractions": (0.7, 0.1, 0.2), "prompt_split": "per-concept",
                   "refit": False, "seed": 42},
    "reference": {"model": "Qwen/Qwen3-1.7B", "layer": 10, "n_concepts": 150, "levels": ("low", "mid", "high"),
                  "layer_offsets": (1, 2, 3, 5, 10, 15), "tokens": (1, 3, 5), "classifier": "XGBoost",
                  "search_trials": 20, "judge": "GPT-5-nano, three-way rubric"},
}


def steerboost_concepts(path) -> pd.DataFrame:
    """SteerBoost's ``concepts.json`` as a table ``concept_id, concept, level``, in file order.

    ``concept`` is the ``concept_name``; ``level`` the entry's ``"level"`` if it has one, else
    the level of its id in :data:`LEVEL_POOLS` (None for an id outside 0..149).

    Raises:
      DataError: the file is missing or not a JSON list of objects with ``concept_id`` and
        ``concept_name``; a repeated id or name, or the reserved name ``"none"``.
    """
    data = _read_json(path, "SteerBoost's concepts.json (data/concepts.json of its data release)")
    if not isinstance(data, list) or not data:
        raise DataError(f"{path} must hold a non-empty JSON list of {{'concept_id', 'concept_name'}} objects")
    rows = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "concept_id" not in item or "concept_name" not in item:
            raise DataError(f"{path}: entry {i} lacks 'concept_id' or 'concept_name' (got {str(item)[:80]})")
        cid, name = item["concept_id"], item["concept_name"]
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise DataError(f"{path}: entry {i} has concept_id {cid!r}; ids are ints")
        if not isinstance(name, str) or not name.strip() or name == UNSTEERED:
            raise DataError(f"{path}: entry {i} has concept_name {name!r}; names are non-empty strings other than "
                            f"{UNSTEERED!r}")
        level = item.get("level", LEVEL_OF_ID.get(cid))
        rows.append({"concept_id": cid, "concept": name, "level": None if level is None else str(level)})
    table = pd.DataFrame(rows, columns=["concept_id", "concept", "level"])
    for col in ("concept_id", "concept"):
        dup = table[col][table[col].duplicated()].tolist()
        if dup:
            raise DataError(f"{path}: {col} repeats ({dup[:5]}); each concept needs its own id and name")
    return table


def steerboost_examples(data_dir, *, n_examples: int | None = 50,
                        ids: Sequence[int] | None = None) -> dict[str, Examples]:
    """SteerBoost's example banks, ``{concept name: Examples}`` in ``concepts.json`` order, for
    :func:`steerjax.studies.steerability_prediction.concepts.concepts_from_examples`.

    Args:
      data_dir: SteerBoost's ``data`` directory: ``concepts.json`` and ``training/{id}.json``.
      n_examples: the first ``n`` texts of each side, as SteerBoost (50); None: all.
      ids: only these concept ids (default all).

    Raises:
      DataError: a missing file, a bank that is not ``{"positive": [...], "negative": [...]}``,
        an unknown id.
      SteerjaxError: a bank with an empty side.
    """
    table = steerboost_concepts(os.path.join(data_dir, "concepts.json"))
    if ids is not None:
        ids = [int(i) for i in ids]
        unknown = sorted(set(ids) - set(table["concept_id"]))
        if unknown:
            raise DataError(f"concept ids {unknown[:5]} are not in {os.path.join(data_dir, 'concepts.json')}")
        table = table.set_index("concept_id").loc[ids].reset_index()
    out = {}
    for cid, name, level in table[["concept_id", "concept", "level"]].itertuples(index=False):
        path = os.path.join(data_dir, "training", f"{cid}.json")
        bank = _read_json(path, f"the example bank of concept {cid} ({name!r}; SteerBoost's data release has "
                                "training/{id}.json, or its pipeline writes them with GPT)")
        if not isinstance(bank, dict) or not all(isinstance(bank.get(k), list) for k in ("positive", "negative")):
            raise DataError(f"{path} must be {{'positive': [texts], 'negative': [texts]}}")
        pos, neg = bank["positive"][:n_examples], bank["negative"][:n_examples]
        for side, items in (("positive", pos), ("negative", neg)):
            if not items:
                raise SteerjaxError(f"{path}: concept {cid} ({name!r}) has no {side} examples: an example bank needs "
                                    "at least one positive and one negative text")
        out[name] = Examples(tuple(pos), tuple(neg), level)
    return out


def load_prompts(path, *, n: int | None = None, seed: int | None = None, field: str | None = None) -> list[str]:
    """Prompts from a JSON list: of strings, or of objects whose ``field`` holds the prompt
    (default ``"instruction"`` when the objects have it, as AlpacaEval's, else ``"prompt"``).

    Args:
      n: draw ``n`` prompts as SteerBoost does, ``random.seed(seed); random.sample(items, n)``
        (Python's generator; the order is the draw's); None: all, in file order.
      seed: the draw's seed (required with ``n``).

    Raises:
      DataError: a missing file, not a JSON list, an item without the field or not a non-empty string.
      SteerjaxError: ``n`` above the number of prompts, or ``n`` without a seed.
    """
    data = _read_json(path, "a JSON list of prompts")
    if not isinstance(data, list) or not data:
        raise DataError(f"{path} must hold a non-empty JSON list of prompts (strings or objects)")
    if field is None and isinstance(data[0], dict):
        field = "instruction" if "instruction" in data[0] else "prompt"
    prompts = []
    for i, item in enumerate(data):
        text = item.get(field) if isinstance(item, dict) and field is not None else item
        if isinstance(item, dict) and field is not None and field not in item:
            raise DataError(f"{path}: item {i} has no {field!r} key (keys: {sorted(item)[:6]}); pass field=")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}: item {i} is not a non-empty prompt string ({str(item)[:80]})")
        prompts.append(text)
    if n is None:
        return prompts
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SteerjaxError(f"n must be a positive int or None, got {n!r}")
    if n > len(prompts):
        raise SteerjaxError(f"n={n} prompts asked, but {path} holds {len(prompts)}: ask for at most {len(prompts)}")
    if seed is None:
        raise SteerjaxError("n prompts are drawn at random: give seed= (SteerBoost uses 42)")
    return random.Random(seed).sample(prompts, n)


def alpaca_eval_prompts(path, *, n: int = 50, seed: int = 42) -> list[str]:
    """SteerBoost's prompts: ``n`` instructions of ``alpaca_eval.json`` drawn with ``seed``
    (:func:`load_prompts`; the defaults are SteerBoost's 50 with seed 42)."""
    return load_prompts(path, n=n, seed=seed, field="instruction")


def _read_json(path, what: str):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path} does not exist: it should be {what}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}): it should be {what}") from e
