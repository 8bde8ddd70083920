"""Steerability metrics (Tan et al. 2024): per-example and dataset steerability, anti-steerable
fraction, spurious variance, layer choice and ID/OOD generalisation, on tidy sweep tables.

Plots live in :mod:`steerjax.metrics.plots` (imported on demand, so matplotlib is not loaded here).
"""

from steerjax.errors import MetricsError
from steerjax.metrics.steerability import (
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
    "DEFAULT_FACTORS", "MetricsError", "best_layer", "dataset_steerability", "factor_level_means",
    "generalisation", "layer_sweep_summary", "per_example_steerability", "spurious_variance",
]
