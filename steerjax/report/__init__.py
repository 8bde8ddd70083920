"""The three papers' measures of one model over shared persona concepts (``steerjax report``).

``steerjax.report(model, concepts=[...], preset="quick", out="runs/report")`` (this module is
callable: :func:`report`) or :func:`run` with a :class:`Config` runs, resumes or reuses the three
studies on the concepts and writes ``report.json`` and a self-contained ``report.html``.

- :mod:`steerjax.report.concepts`: the concepts every source holds, presets, the concept check;
- :mod:`steerjax.report.config`: the report's options, its presets of the studies' options, its checks;
- :mod:`steerjax.report.build`: running the studies and assembling the document;
- :mod:`steerjax.report.stats`: Spearman correlations across concepts with bootstrap intervals;
- :mod:`steerjax.report.figures`: the figures;
- :mod:`steerjax.report.page`: the self-contained HTML page built from the report's JSON.
"""

import sys
import types
from collections.abc import Sequence
from typing import Any

from steerjax.model import DEFAULT_MODEL
from steerjax.report.build import Report, assemble, run
from steerjax.report.concepts import PRESET_SIZES, SOURCES, check_concepts, preset_concepts, shared_concepts
from steerjax.report.config import PRESETS, Config, Plan, check, plan
from steerjax.report.page import cell_text, number, render
from steerjax.report.stats import spearman, spearman_ci


def report(model: Any = None, *, out: str, concepts: Sequence[str] | None = None, preset: str = "quick",
           allow_partial: bool = False, seed: int = 0, dtype: str = "float32", mesh=None,
           progress: bool = True) -> Report:
    """Run (or resume) a report of ``model`` (default: steerjax's default model) into ``out``:
    :func:`run` with the :class:`Config` these options make.

    Example::

        import steerjax, steerjax.report
        rep = steerjax.report(concepts=["narcissism", "agreeableness", "openness"], preset="smoke",
                              out="runs/report")
        rep.doc["correlations"]        # Spearman's rho across concepts, with intervals
    """
    config = Config(preset=preset, concepts=None if concepts is None else tuple(concepts),
                    allow_partial=allow_partial, seed=seed, dtype=dtype)
    return run(DEFAULT_MODEL if model is None else model, config, out, mesh=mesh, progress=progress)


class _CallableModule(types.ModuleType):
    """``steerjax.report(...)`` calls :func:`report`; ``steerjax.report.<name>`` is the module."""

    def __call__(self, *args: Any, **kwargs: Any) -> Report:
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "PRESETS", "PRESET_SIZES", "SOURCES", "Config", "Plan", "Report", "assemble", "cell_text", "check",
    "check_concepts", "number", "plan", "preset_concepts", "render", "report", "run", "shared_concepts", "spearman",
    "spearman_ci",
]
