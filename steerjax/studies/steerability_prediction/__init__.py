"""Steerability predictor (Fan et al., "When is Your LLM Steerable?"; reference implementation
SteerBoost, GitHub ``Fcr09/SteerBoost``): concepts, steered-rollout testbed, judges (hidden-state,
embedding, LLM), early-decoding features in named sets, the CatBoost predictor, the paper's
evaluation and strength-search baselines, and SteerBoost's data and setting."""

from steerjax.data.steerboost import (
    STEERBOOST,
    alpaca_eval_prompts,
    load_prompts,
    steerboost_concepts,
    steerboost_examples,
)
from steerjax.studies.steerability_prediction.classifier import SteerabilityPredictor, ablation, evaluate, fit
from steerjax.studies.steerability_prediction.concepts import (
    NEUTRAL_PROMPTS,
    UNSTEERED,
    Concept,
    concepts_from_examples,
    load_concepts,
    make_concepts,
    persona_concepts,
    read_examples,
    residual_norm,
    save_concepts,
    statement_concepts,
    text_concepts,
)
from steerjax.studies.steerability_prediction.evaluation import (
    PaperEvaluation,
    PaperSplit,
    bootstrap_f1,
    paper_evaluation,
    paper_split,
)
from steerjax.studies.steerability_prediction.features import (
    DEFAULT_FEATURE_SET,
    FEATURE_SETS,
    FEATURE_STEPS,
    early_features,
    feature_columns,
    feature_set_columns,
    lens_layers,
    replays_judge,
    steerboost_columns,
)
from steerjax.studies.steerability_prediction.judge import LABELS, EmbeddingJudge, HiddenStateJudge, cohen_kappa
from steerjax.studies.steerability_prediction.llm_judge import LLMJudge, judge_agreement
from steerjax.studies.steerability_prediction.search import (
    BASELINES,
    bootstrap_strategies,
    choose_strength,
    compare_strategies,
    confirm_ranked,
    guided_search,
    held_out_proba,
    rank_strengths,
    simulate_strategies,
)
from steerjax.studies.steerability_prediction.testbed import rollouts

__all__ = [
    "LABELS", "EmbeddingJudge", "HiddenStateJudge", "SteerabilityPredictor", "choose_strength", "cohen_kappa",
    "evaluate", "fit", "guided_search", "rank_strengths",
    "FEATURE_STEPS", "NEUTRAL_PROMPTS", "UNSTEERED", "Concept", "early_features", "feature_columns",
    "lens_layers", "load_concepts", "make_concepts", "persona_concepts", "residual_norm", "rollouts", "save_concepts",
    "statement_concepts", "text_concepts",
    # issue 14: feature sets, the paper's evaluation and baselines, the LLM judge, SteerBoost's data
    "BASELINES", "DEFAULT_FEATURE_SET", "FEATURE_SETS", "LLMJudge", "PaperEvaluation", "PaperSplit", "STEERBOOST",
    "ablation", "alpaca_eval_prompts", "compare_strategies", "concepts_from_examples", "feature_set_columns",
    "held_out_proba", "judge_agreement", "load_prompts", "paper_evaluation", "paper_split", "read_examples",
    "replays_judge", "simulate_strategies", "steerboost_columns", "steerboost_concepts", "steerboost_examples",
    # issue 14 (continued): feedback-pruned guided search, bootstrap intervals over concepts
    "bootstrap_f1", "bootstrap_strategies", "confirm_ranked",
]
