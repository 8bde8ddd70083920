"""Prompt steerability (Miehling et al. 2024, arXiv 2411.12405): Beta profiles, Wasserstein
distances between them, steerability indices, curves and asymmetry tables.

Plots live in :mod:`steerjax.studies.prompt_steerability.plots` (imported on demand, so matplotlib is not loaded
here); ott-jax is imported only by :func:`joint_sinkhorn`.
"""

from steerjax.errors import ProfileError
from steerjax.studies.prompt_steerability.beta import (
    PRIOR,
    BetaProfile,
    answer_matches,
    profile_parameters,
    statement_weights,
)
from steerjax.studies.prompt_steerability.distance import joint_sinkhorn, product_points, wasserstein, wasserstein_many

__all__ = [
    "PRIOR", "BetaProfile", "ProfileError", "answer_matches", "joint_sinkhorn", "product_points",
    "profile_parameters", "statement_weights", "wasserstein", "wasserstein_many",
]
