"""The concepts a report can measure: persona dimensions that every source holds.

The three studies meet on the persona dimensions of IBM/prompt-steering's ``steering_df.csv``
(Miehling et al.'s prompt steerability). Each is also an Anthropic persona dataset (Tan et al.'s
CAA vectors and sweeps, and Fan et al.'s concept vectors built from it), and steering-bench's
``persona_prompts.json`` gives most of them the positive and negative persona prompts of Tan et
al.'s system- and user-prompt (out-of-distribution) settings. A concept missing from a source
cannot be measured by the study that reads it: :func:`check_concepts` names the source and offers
``allow_partial`` (the other measures only).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

from steerjax.data.mwe import list_datasets, persona_prompt_names
from steerjax.data.prompt_steering import PAPER_DIMENSIONS, list_dimensions
from steerjax.errors import DataError

#: the sources, and the study that needs each
SOURCES: dict[str, str] = {
    "prompt-steering statements": "prompt steerability (Miehling et al.)",
    "Anthropic persona dataset": "activation steerability (Tan et al.) and steering strength (Fan et al.)",
    "steering-bench persona prompts": "the ID/OOD shifts of activation steerability (Tan et al.)",
}
#: how many concepts each preset takes (from :data:`PAPER_DIMENSIONS` that every source holds, in
#: that order); ``full`` takes every shared concept
PRESET_SIZES = {"smoke": 2, "quick": 8}


def source_concepts() -> dict[str, set[str]]:
    """The concepts each of :data:`SOURCES` holds (reads the data directory)."""
    return {
        "prompt-steering statements": set(list_dimensions()),
        "Anthropic persona dataset": set(list_datasets("persona")),
        "steering-bench persona prompts": set(persona_prompt_names()),
    }


def shared_concepts(sources: Mapping[str, set[str]] | None = None) -> list[str]:
    """The persona dimensions every source holds, sorted."""
    sources = source_concepts() if sources is None else sources
    return sorted(set.intersection(*map(set, sources.values())))


def preset_concepts(preset: str, sources: Mapping[str, set[str]] | None = None) -> list[str]:
    """The concepts of a preset: the first ``PRESET_SIZES[preset]`` of Miehling et al.'s paper
    dimensions that every source holds; ``full``: every shared concept.

    Raises:
      DataError: an unknown preset.
    """
    shared = shared_concepts(sources)
    if preset == "full":
        return shared
    if preset not in PRESET_SIZES:
        raise DataError(f"unknown preset {preset!r}; choose one of {[*PRESET_SIZES, 'full']}")
    picked = [d for d in PAPER_DIMENSIONS if d in set(shared)]
    return picked[: PRESET_SIZES[preset]]


def check_concepts(names: Sequence[str], *, allow_partial: bool = False,
                   sources: Mapping[str, set[str]] | None = None, flag: str = "--concepts",
                   partial_flag: str = "--allow-partial") -> dict[str, list[str]]:
    """Check the concepts before any work: each must be known to some source (else the closest
    names), appear once, and, unless ``allow_partial``, be held by every source.

    Returns:
      ``{concept: [the sources missing it]}`` (empty lists when every source holds it).

    Raises:
      DataError: no concept, a repeated or unknown one, or one missing from a source without
        ``allow_partial`` (the message names the source, the study that needs it, and the flag).
    """
    sources = source_concepts() if sources is None else sources
    names = list(names)
    if not names:
        raise DataError(f"{flag} names no concept: give at least one persona dimension")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{flag} names {', '.join(map(repr, repeated))} more than once")
    known = sorted(set().union(*map(set, sources.values())))
    missing: dict[str, list[str]] = {}
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise DataError(f"{flag}: unknown concept {name!r}{hint} (steerjax report --list-concepts lists the "
                            f"{len(shared_concepts(sources))} concepts every source holds)")
        missing[name] = [s for s, held in sources.items() if name not in held]
    partial = {n: m for n, m in missing.items() if m}
    if partial and not allow_partial:
        n, m = next(iter(partial.items()))
        needs = "; ".join(f"{s} ({SOURCES[s]})" for s in m)
        raise DataError(f"{flag}: concept {n!r} is missing from {needs}; pass {partial_flag} to measure it with the "
                        "other studies only, or choose another concept")
    return missing
