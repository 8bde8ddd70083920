"""The reliability study (Tan et al. 2024): the protocol as one object, and its metrics.

The study: :class:`Config` (options, :data:`PRESETS`, the run config) and :func:`check` (every
check before a model loads) in :mod:`~steerjax.studies.reliability.config`; :func:`run` and its
:class:`Result` (tables, ``save``/``load``, ``figures``, ``summary``) in
:mod:`~steerjax.studies.reliability.study`::

    from steerjax.studies import reliability

    config = reliability.Config.preset("quick", datasets=("corrigible-neutral-HHH",))
    reliability.check(config, models=["HuggingFaceTB/SmolLM2-135M-Instruct"], out="runs/rel")
    result = reliability.run("HuggingFaceTB/SmolLM2-135M-Instruct", config, "runs/rel")
    result.figures("runs/rel")
    result.summary()["corrigible-neutral-HHH/steerability"]

The metrics, on tidy sweep tables: per-example and dataset steerability, anti-steerable
fraction, spurious variance, layer choice and ID/OOD generalisation
(:mod:`~steerjax.studies.reliability.steerability`); distribution shifts, relative steerability,
mean vs variance, model comparison and bootstrap intervals
(:mod:`~steerjax.studies.reliability.analyses`); one ``steerjax sweep`` as tables and figures
(:mod:`~steerjax.studies.reliability.sweep_result`).

Plots live in :mod:`steerjax.studies.reliability.plots` (imported on demand, so matplotlib is not loaded here).
"""

from steerjax.errors import MetricsError
from steerjax.studies.reliability.analyses import (
    ID_SHIFT,
    MEAN_SETTING,
    PERSONA_SETTINGS,
    SHIFTS,
    TRAIN_SETTINGS,
    ModelComparison,
    bootstrap_ci,
    compare_models,
    correlation,
    generalisation_matrix,
    id_ood_shifts,
    mean_variance,
    relative_steerability,
    relative_steerability_correlation,
    shift_correlations,
)
from steerjax.studies.reliability.config import PRESETS, Config, check
from steerjax.studies.reliability.steerability import (
    DEFAULT_FACTORS,
    best_layer,
    dataset_steerability,
    factor_level_means,
    generalisation,
    layer_sweep_summary,
    per_example_steerability,
    spurious_variance,
)
from steerjax.studies.reliability.study import Result, run, setting_vectors

__all__ = [
    "PRESETS", "Config", "Result", "check", "run", "setting_vectors",
    "DEFAULT_FACTORS", "ID_SHIFT", "MEAN_SETTING", "MetricsError", "ModelComparison", "PERSONA_SETTINGS", "SHIFTS",
    "TRAIN_SETTINGS", "best_layer", "bootstrap_ci", "compare_models", "correlation", "dataset_steerability",
    "factor_level_means", "generalisation", "generalisation_matrix", "id_ood_shifts", "layer_sweep_summary",
    "mean_variance", "per_example_steerability", "relative_steerability", "relative_steerability_correlation",
    "shift_correlations", "spurious_variance",
]
