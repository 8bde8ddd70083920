"""Steerability predictor (Fan et al., "When is Your LLM Steerable?"): concepts, steered-rollout
testbed and early-decoding diff features."""

from steerjax.predictor.concepts import (
    NEUTRAL_PROMPTS,
    UNSTEERED,
    Concept,
    load_concepts,
    persona_concepts,
    residual_norm,
    save_concepts,
    text_concepts,
)
from steerjax.predictor.features import FEATURE_STEPS, early_features, feature_columns, lens_layers
from steerjax.predictor.testbed import rollouts

__all__ = [
    "FEATURE_STEPS", "NEUTRAL_PROMPTS", "UNSTEERED", "Concept", "early_features", "feature_columns",
    "lens_layers", "load_concepts", "persona_concepts", "residual_norm", "rollouts", "save_concepts", "text_concepts",
]
