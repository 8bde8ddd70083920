"""Steerability metrics (Tan et al. 2024): per-example and dataset steerability, anti-steerable
fraction, spurious variance, layer choice and ID/OOD generalisation, on tidy sweep tables
(:mod:`steerjax.studies.reliability.steerability`); distribution shifts, relative steerability, mean vs
variance, model comparison and bootstrap intervals (:mod:`steerjax.studies.reliability.analyses`).

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

__all__ = [
    "DEFAULT_FACTORS", "ID_SHIFT", "MEAN_SETTING", "MetricsError", "ModelComparison", "PERSONA_SETTINGS", "SHIFTS",
    "TRAIN_SETTINGS", "best_layer", "bootstrap_ci", "compare_models", "correlation", "dataset_steerability",
    "factor_level_means", "generalisation", "generalisation_matrix", "id_ood_shifts", "layer_sweep_summary",
    "mean_variance", "per_example_steerability", "relative_steerability", "relative_steerability_correlation",
    "shift_correlations", "spurious_variance",
]
