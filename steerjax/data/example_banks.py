"""Example banks: per concept, texts that show it (``positive``) and texts that do not
(``negative``), as Fan et al.'s SteerBoost builds its concept vectors from (read by
:func:`read_examples`; SteerBoost's own banks by :mod:`steerjax.data.steerboost`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from steerjax.data.mwe import jsonl_objects
from steerjax.errors import DataError, SteerjaxError

#: the reserved concept name of the unsteered rollouts
UNSTEERED = "none"


@dataclasses.dataclass(frozen=True)
class Examples:
    """One concept's example bank: texts (or token-id lists) that show the concept
    (``positive``) and texts that do not (``negative``), and its abstraction ``level`` if known."""

    positive: tuple
    negative: tuple
    level: str | None = None


def read_examples(path_or_mapping) -> dict[str, Examples]:
    """Example banks by concept name, from a JSONL file or a mapping.

    The file has one JSON object per line (blank lines are skipped), in the order the concepts are
    to be made::

        {"concept": "emojis", "positive": ["Sure! 🎉 ...", ...], "negative": ["Sure. ...", ...], "level": "low"}

    ``concept`` (a unique name, not ``"none"``), ``positive`` and ``negative`` (non-empty lists of
    texts, or of token-id lists for a model without a tokenizer) are required; ``level`` (the
    concept's abstraction level, used to stratify the seen/unseen split of
    :func:`steerjax.studies.steerability_prediction.evaluation.paper_evaluation`) is optional; other keys are ignored.
    A mapping gives the same per name: ``{name: {"positive": [...], "negative": [...], "level": ...}}``,
    ``{name: (positive, negative)}`` or ``{name: Examples(...)}``.

    Raises:
      DataError: the file is missing or a line is not a JSON object.
      SteerjaxError: a missing field, an empty side (a concept needs at least one positive and
        one negative example), a repeated or reserved name.
    """
    if isinstance(path_or_mapping, Mapping):
        entries = []
        for name, ex in path_or_mapping.items():
            if isinstance(ex, Examples):
                ex = {"positive": ex.positive, "negative": ex.negative, "level": ex.level}
            elif isinstance(ex, (tuple, list)) and len(ex) == 2:
                ex = {"positive": ex[0], "negative": ex[1]}
            elif not isinstance(ex, Mapping):
                raise SteerjaxError(f"example bank for {name!r} must be {{'positive': [...], 'negative': [...]}} or "
                                    f"(positive, negative), got {type(ex).__name__}")
            entries.append((f"concept {name!r}", {**ex, "concept": name}))
        where = "the example banks"
    else:
        path = os.fspath(path_or_mapping)
        if not os.path.isfile(path):
            raise DataError(f"example bank file {path} does not exist: give a JSONL file with one "
                            '{"concept": ..., "positive": [...], "negative": [...]} object per line')
        entries = [(f"{path}:{i}", obj) for i, obj in jsonl_objects(path, "one JSON object per line")]
        where = path
    if not entries:
        raise SteerjaxError(f"{where} holds no concepts: give at least one example bank")
    out: dict[str, Examples] = {}
    for at, obj in entries:
        missing = [k for k in ("concept", "positive", "negative") if k not in obj]
        if missing:
            raise SteerjaxError(f"{at}: missing {', '.join(map(repr, missing))} (each concept needs 'concept', "
                                "'positive' and 'negative')")
        name = obj["concept"]
        if not isinstance(name, str) or not name or name == UNSTEERED:
            raise SteerjaxError(f"{at}: concept name must be a non-empty string other than {UNSTEERED!r}, got {name!r}")
        if name in out:
            raise SteerjaxError(f"{at}: concept {name!r} is given twice")
        sides = {}
        for side in ("positive", "negative"):
            items = obj[side]
            if isinstance(items, str) or not isinstance(items, (list, tuple)):
                raise SteerjaxError(f"{at}: {side!r} of concept {name!r} must be a list of texts, got "
                                    f"{type(items).__name__}")
            if len(items) == 0:
                raise SteerjaxError(f"{at}: concept {name!r} has no {side} examples: an example bank needs at least "
                                    "one positive and one negative text")
            sides[side] = tuple(items)
        level = obj.get("level")
        out[name] = Examples(sides["positive"], sides["negative"], None if level is None else str(level))
    return out
