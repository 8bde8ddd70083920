"""The steerability-prediction study (Fan et al., "When is Your LLM Steerable?"; reference implementation
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
from steerjax.studies.steerability_prediction.config import PRESETS, Config
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
    held_out_strategies,
    rank_strengths,
    simulate_strategies,
)
from steerjax.studies.steerability_prediction.study import Result, check, run
from steerjax.studies.steerability_prediction.testbed import rollouts

__all__ = [
    # the study: options, checks, run, result
    "PRESETS", "Config", "Result", "check", "run",
    # its parts
    "BASELINES", "DEFAULT_FEATURE_SET", "FEATURE_SETS", "FEATURE_STEPS", "LABELS", "NEUTRAL_PROMPTS", "STEERBOOST",
    "UNSTEERED", "Concept", "EmbeddingJudge", "HiddenStateJudge", "LLMJudge", "PaperEvaluation", "PaperSplit",
    "SteerabilityPredictor", "ablation", "alpaca_eval_prompts", "bootstrap_f1", "bootstrap_strategies",
    "choose_strength", "cohen_kappa", "compare_strategies", "concepts_from_examples", "confirm_ranked",
    "early_features", "evaluate", "feature_columns", "feature_set_columns", "fit", "guided_search", "held_out_proba",
    "held_out_strategies",
    "judge_agreement", "lens_layers", "load_concepts", "load_prompts", "make_concepts", "paper_evaluation",
    "paper_split", "persona_concepts", "rank_strengths", "read_examples", "replays_judge", "residual_norm",
    "rollouts", "save_concepts", "simulate_strategies", "statement_concepts", "steerboost_columns",
    "steerboost_concepts", "steerboost_examples", "text_concepts",
]
