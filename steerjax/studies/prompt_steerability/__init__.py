"""Prompt steerability (Miehling et al. 2024, arXiv 2411.12405): Beta profiles, Wasserstein
distances between them, steerability indices, curves and asymmetry tables.

The study: :class:`Config` (options, :data:`PRESETS`), :func:`check` (every input, before a model
loads), :func:`run` (resumable) -> :class:`Result` (tables, ``save``/``load``, ``figures``,
``summary``)::

    config = Config.preset("paper", dims=["agreeableness"], budgets=(1, 5))
    check(config)
    result = run(steerjax.load_model(), config, "runs/agreeableness")
    result.figures("runs/agreeableness"); print(result.summary()["agreeableness/gamma_pos"])

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
from steerjax.studies.prompt_steerability.config import PRESETS, Config, check
from steerjax.studies.prompt_steerability.distance import joint_sinkhorn, product_points, wasserstein, wasserstein_many
from steerjax.studies.prompt_steerability.study import Result, run

__all__ = [
    "PRESETS", "PRIOR", "BetaProfile", "Config", "ProfileError", "Result", "answer_matches", "check",
    "joint_sinkhorn", "product_points", "profile_parameters", "run", "statement_weights", "wasserstein",
    "wasserstein_many",
]
