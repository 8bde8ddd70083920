"""The three papers' measures of one model over shared persona concepts (``steerjax report``).

- :mod:`steerjax.report.concepts`: the concepts every source holds, presets, the concept check;
- :mod:`steerjax.report.stats`: Spearman correlations across concepts with bootstrap intervals;
- :mod:`steerjax.report.page`: the self-contained HTML page built from the report's JSON.
"""

from steerjax.report.concepts import PRESET_SIZES, SOURCES, check_concepts, preset_concepts, shared_concepts
from steerjax.report.page import cell_text, number, render
from steerjax.report.stats import spearman, spearman_ci

__all__ = [
    "PRESET_SIZES", "SOURCES", "cell_text", "check_concepts", "number", "preset_concepts", "render",
    "shared_concepts", "spearman", "spearman_ci",
]
