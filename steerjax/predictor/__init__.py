"""Steerability predictor (Fan et al., "When is Your LLM Steerable?"): concepts, steered-rollout
testbed, judges, early-decoding diff features, the CatBoost predictor and guided strength search."""

from steerjax.predictor.classifier import SteerabilityPredictor, evaluate, fit
from steerjax.predictor.concepts import (
    NEUTRAL_PROMPTS,
    UNSTEERED,
    Concept,
    load_concepts,
    make_concepts,
    persona_concepts,
    residual_norm,
    save_concepts,
    statement_concepts,
    text_concepts,
)
from steerjax.predictor.features import FEATURE_STEPS, early_features, feature_columns, lens_layers
from steerjax.predictor.judge import LABELS, EmbeddingJudge, HiddenStateJudge, cohen_kappa
from steerjax.predictor.search import choose_strength, guided_search, rank_strengths
from steerjax.predictor.testbed import rollouts

__all__ = [
    "LABELS", "EmbeddingJudge", "HiddenStateJudge", "SteerabilityPredictor", "choose_strength", "cohen_kappa",
    "evaluate", "fit", "guided_search", "rank_strengths",
    "FEATURE_STEPS", "NEUTRAL_PROMPTS", "UNSTEERED", "Concept", "early_features", "feature_columns",
    "lens_layers", "load_concepts", "make_concepts", "persona_concepts", "residual_norm", "rollouts", "save_concepts",
    "statement_concepts", "text_concepts",
]
