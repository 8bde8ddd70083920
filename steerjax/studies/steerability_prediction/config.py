"""The steerability-prediction study's options (Fan et al., "When is Your LLM Steerable?"): one
frozen :class:`Config`, its named :data:`PRESETS`, the ONE builder of its run config
(:meth:`Config.run_config`), and every choice list the command line offers (imported by
``steerjax.cli``, never copied).

This module imports no jax, pandas or matplotlib: the command line reads it before any model loads.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from steerjax.errors import PredictorError, SteerjaxError

# ----------------------------------------------------------------------------- choice lists

#: the judges that can label rollouts; ``hidden`` is offline and the default
JUDGES = ("hidden", "embedding", "llm")
#: their names in tables (``judges.csv``) and messages
JUDGE_NAMES = {"hidden": "hidden-state", "embedding": "embedding", "llm": "llm"}
#: where the study's concepts and prompts come from: persona statements and the built-in neutral
#: prompts, or SteerBoost's example banks and AlpacaEval prompts
SOURCES = ("statements", "steerboost")
#: where ``steerjax testbed`` builds its concept vectors (:func:`.concepts.make_concepts`)
CONCEPT_SOURCES = ("statements", "ab")
#: steered token positions of a rollout
POSITIONS = ("all", "generated")
#: strength scales: a fraction of the residual norm, or alpha x the raw vector
SCALES = ("norm", "raw")
#: how example banks become vectors
EXAMPLE_METHODS = ("diffmean", "probe")
#: guided-search strategies (:func:`.search.rank_strengths`); ``PRUNING`` prune on judged rollouts
STRATEGIES = ("argmax", "bisect", "feedback")
PRUNING = ("feedback",)
#: the guided strategies the study replays (``feedback`` was written after argmax had missed the
#: search target on these data, and evaluated once: it has no setting to tune)
GUIDED = STRATEGIES
#: ``steerjax predictor train``'s evaluations
PROTOCOLS = ("cv", "paper")
#: the study's strength-search protocols: ``folds``, unseen concepts x held-out prompts over
#: concept folds x prompt folds, each rollout charged its own length; ``steerboost``, SteerBoost's
#: ``alphasearch.py`` (the paper evaluation's one split, TCGS on train + validation prompts, each
#: rollout charged the mean response length, budgets above the grid dropped:
#: :func:`.search.alphasearch_strategies`)
SEARCH_PROTOCOLS = ("folds", "steerboost")

#: named feature sets (:mod:`.features`), combined with ``+``
FEATURE_SETS = {
    "steerboost": "SteerBoost's groups (sb_*: MagDiff, CosSim, SteerAlign, SteerProj, the token-0 ratios and "
                  "deltas, InterventionMag, Alpha) at its tokens and block offsets",
    "steerjax": "steerjax's diffs: cos, norm ratio, diff norm, diff projection and growth per block, next-token "
                "KL and entropy change, logit-lens KL",
    "relative": "steerjax's ratios (rel_*): the vector norm and the push relative to the residual norm, next-token "
                "KL and entropy change per unit push, downstream diff norm and projection per unit push",
    "judge-aware": "read_nll and concept_read: they REPLAY the hidden-state judge (its fluency NLL and concept "
                   "score on the first tokens); never a headline",
}
DEFAULT_FEATURE_SET = "steerboost+steerjax+relative"
JUDGE_AWARE = "judge-aware"

# ----------------------------------------------------------------------------- the protocol's constants

#: the targets a run is measured against
TARGET_F1, TARGET_MARGIN, TARGET_SUCCESS, TARGET_TOKENS = 0.70, 0.05, 0.90, 0.25
#: the bootstrap over concepts behind the intervals: draws and coverage (the seed is ``Config.seed``)
BOOTSTRAP_DRAWS, BOOTSTRAP_LEVEL = 1000, 0.95
#: the paper evaluation's headline subset: unseen concepts on every prompt (SteerBoost's OOD rows);
#: chosen before any run (with 9 prompts the test part is one prompt)
HEADLINE = ("unseen", "all")
#: the quick preset's CatBoost search, fixed before the run it was first used in
QUICK_GRID = {"depth": [4, 6], "iterations": [150], "learning_rate": [0.05, 0.1],
              "class_weights": ["Balanced", "SqrtBalanced"]}

PRESETS: dict[str, dict[str, Any]] = {
    # CI: seconds of CatBoost on 2 CPU cores; checks the pipeline end to end, not the targets
    "smoke": dict(concepts=4, prompts=4, strengths=[0.1, 0.3, 0.6], max_new_tokens=8, steps=[1, 2],
                  n_statements=8, folds=2, search_k=1, max_rollouts=[1, 2], prompt_folds=2, kappa_sample=16,
                  iterations=30, batch_size=32, paper_grid={"depth": [4], "iterations": [30], "learning_rate": [0.1]},
                  thresholds=[0.2, 0.5], source="statements", cv_grid=None),
    # 30 concepts x 9 prompts x 12 strengths (dense where SmolLM2's success window is), 24 new
    # tokens, features of up to 8 steps; an 8-setting search (depth, learning rate, class weights):
    # on validation prompts in the paper evaluation, nested (inner concept folds of the training
    # concepts) in the concept-grouped CV
    "quick": dict(concepts=30, prompts=9, strengths=[0.05, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.3, 0.35,
                                                      0.4, 0.5], max_new_tokens=24,
                  steps=[1, 2, 4, 8], n_statements=32, folds=5, search_k=1, max_rollouts=[1, 2, 3, 4, 5],
                  prompt_folds=5, kappa_sample=300, iterations=150, batch_size=64,
                  paper_grid=QUICK_GRID, cv_grid=QUICK_GRID,
                  thresholds=[round(0.1 * i, 1) for i in range(10)], source="statements"),
    # paper scale, for a GPU or TPU: every persona dimension, all 60 prompts, a finer grid, longer rollouts
    "full": dict(concepts=None, prompts=None, strengths=[0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
                                                          0.6, 0.8], max_new_tokens=64, steps=[1, 2, 4, 8],
                 n_statements=64, folds=5, search_k=2, max_rollouts=[1, 2, 3, 4, 5], prompt_folds=5, kappa_sample=2000,
                 iterations=500, batch_size=256, paper_grid=None, thresholds=None, source="statements",
                 cv_grid=None),
    # SteerBoost's setting (steerjax.data.steerboost.STEERBOOST): its 150 concepts from example banks
    # (DiffMean), 50 AlpacaEval prompts, alpha x the raw vector on 45 alphas, prompt steered,
    # temperature 0.7; for a GPU. max_new_tokens is 256, not its 2048 (features read 6 tokens; the
    # judge reads the rollout). Its strengths are SteerBoost's alphas, set when the data are read.
    # steerboost_compat: SteerBoost's code exactly where steerjax differs by choice (the LLM judge's
    # request, the features' zeros past the last block and past a rollout's end)
    # search_protocol: alphasearch's one split, mean-length token cost and budgets 5/10/15/20
    "steerboost": dict(concepts=None, prompts=50, strengths=None, max_new_tokens=256, steps=[1, 2, 4, 6],
                       n_statements=50, folds=5, search_k=6, max_rollouts=[5, 10, 15, 20], prompt_folds=5,
                       kappa_sample=2000, iterations=500, batch_size=128, paper_grid=None, thresholds=None,
                       source="steerboost", cv_grid=None, steerboost_compat=True, search_protocol="steerboost"),
}

#: the protocol element by element (the table in docs/protocols.md, shortened): ``(element, paper / SteerBoost,
#: steerjax's quick preset, deviation)``; ``deviation`` is True where the quick preset differs from
#: the paper (that table says, per element, what the ``steerboost`` preset does)
PROTOCOL: tuple[tuple[str, str, str, bool], ...] = (
    ("model, block", "Qwen3-1.7B, layer 10", "SmolLM2-135M-Instruct, block 15 (offline, CPU)", True),
    ("concepts", "150 at three abstraction levels, 50 written examples each",
     "30 persona dimensions: 32 statements minus the mean over all dimensions", True),
    ("vector estimate", "DiffMean or a probe", "mean difference", False),
    ("prompts", "50 AlpacaEval instructions (seed 42)", "9 built-in neutral prompts", True),
    ("strength", "alpha x the raw vector, 45 alphas 0.2 .. 9.0", "fraction of the residual norm, 12 points", True),
    ("steered positions", "the prompt and every generated token", "the same", False),
    ("decoding", "temperature 0.7, up to 2048 tokens", "greedy, 24 new tokens", True),
    ("judge", "gpt-5-mini, three-way rubric; failed replies count as 0",
     "hidden-state judge (offline); the LLM judge leaves failed replies unlabelled", True),
    ("features", "SteerBoost's groups at tokens 0, 1, 3, 5 and blocks L + {0, 1, 2, 3, 5, 10, 15}",
     "the same groups, plus the steerjax and relative sets", False),
    ("judge-replaying features", "none", "computed, in the ablation only", False),
    ("classifier", "XGBoost, 20 random settings on validation", "CatBoost, 8 settings on validation", True),
    ("splits", "120 / 30 concepts by level; prompts per concept", "80 / 20 concepts; prompts 70 / 10 / 20 shared",
     True),
    ("search", "IGS, CGS, TCGS, IGS-A, IGS-D, ranked search, threshold sweep; 6 early tokens",
     "the same replayed on one table over concept x prompt folds, each rollout its own length, plus "
     "threshold-ascending and feedback; 1 early token", True),
)

#: the fields whose preset value a ``None`` override keeps (a flag not given)
_SEQUENCES = ("concept_names", "strengths", "steps", "max_rollouts", "thresholds")
#: options added after run directories existed: in the run config only when not at this default,
#: so that those directories keep resuming
_LATER = {"steerboost_compat": False, "search_protocol": "folds"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Every option of the steerability-prediction study; the defaults are the ``full`` preset
    (paper scale on persona concepts; the ``steerboost`` preset is SteerBoost's own setting, which
    needs its data release).

    Attributes:
      preset_name: the preset's name (``preset`` in the run config).
      source: :data:`SOURCES`.
      concepts: how many concepts, spread over the sorted list (``None``: all).
      concept_names: the concepts by name (persona dimensions, or SteerBoost concept names);
        overrides ``concepts``.
      prompts: how many prompts (the first of the built-in neutral prompts; AlpacaEval's drawn
        by SteerBoost's seed in ``steerboost``); ``None``: all.
      strengths: the strength grid (fractions of the residual norm); ``None`` in ``steerboost``
        (SteerBoost's alphas).
      max_new_tokens: the rollouts' length.
      steps: the early-decoding steps k of the features; ``search_k``: the search predictor's k.
      n_statements: statements (or examples) per concept vector.
      folds, prompt_folds: concept folds of the cross-validation and the search; prompt folds of
        the search.
      max_rollouts: the guided search's budgets R.
      kappa_sample: steered rows the embedding judge labels for the agreement (``no_kappa``: none).
      iterations: CatBoost trees; ``paper_grid``, ``cv_grid``: the searched CatBoost settings
        (``None``: the paper evaluation's default grid; no nested search in the CV).
      thresholds: the threshold sweep on P(success) (``None``: the reference's).
      batch_size: rows per compiled batch.
      layer: the steered block (``None``: the middle one, or SteerBoost's).
      seed: every draw (splits, folds, bootstrap).
      feature_set: the headline predictor's features (:data:`FEATURE_SETS`, ``+`` combinations).
      judge: the labelling judge (:data:`JUDGES`); ``judge_model`` / ``judge_url``: the LLM
        judge's model and endpoint (the URL is not part of the run config: the endpoint that
        answered is recorded instead).
      steerboost_data: SteerBoost's data directory (``None``: ``<data dir>/steerboost``).
      reuse_features: a finished run whose labelled features are evaluated again (no model).
      steerboost_compat: SteerBoost's code exactly where steerjax differs by choice (True in
        ``steerboost``): the LLM judge sends SteerBoost's request (concept names verbatim, no
        temperature: :data:`.llm_judge.STEERBOOST_JUDGE_OPTIONS`) and the early features keep its
        zeros (blocks past the last, tokens past a rollout's end:
        :func:`.features.early_features` ``steerboost_compat``).
      search_protocol: the strength search's protocol (:data:`SEARCH_PROTOCOLS`; ``steerboost`` in
        ``steerboost``): concept x prompt folds, or SteerBoost's alphasearch on the paper split
        (``folds``, ``prompt_folds`` are then the CV's only).
    """

    preset_name: str = "full"
    source: str = "statements"
    concepts: int | None = None
    concept_names: tuple[str, ...] | None = None
    prompts: int | None = None
    strengths: tuple[float, ...] | None = tuple(PRESETS["full"]["strengths"])
    max_new_tokens: int = 64
    steps: tuple[int, ...] = (1, 2, 4, 8)
    n_statements: int = 64
    folds: int = 5
    search_k: int = 2
    max_rollouts: tuple[int, ...] = (1, 2, 3, 4, 5)
    prompt_folds: int = 5
    kappa_sample: int = 2000
    iterations: int = 500
    batch_size: int = 256
    paper_grid: Mapping[str, Any] | None = None
    cv_grid: Mapping[str, Any] | None = None
    thresholds: tuple[float, ...] | None = None
    layer: int | None = None
    seed: int = 0
    feature_set: str = DEFAULT_FEATURE_SET
    judge: str = "hidden"
    judge_model: str | None = None
    judge_url: str | None = None
    no_kappa: bool = False
    steerboost_data: str | None = None
    reuse_features: str | None = None
    steerboost_compat: bool = False
    search_protocol: str = "folds"

    def __hash__(self) -> int:  # the grids are mappings: hash the JSON view
        return hash(json.dumps(self.run_config(""), sort_keys=True))

    def __post_init__(self):
        for name in _SEQUENCES:
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))

    @classmethod
    def preset(cls, name: str, **overrides) -> Config:
        """The preset ``name`` with ``overrides`` (an override of ``None`` keeps the preset's value,
        as a flag not given does).

        Raises:
          SteerjaxError: an unknown preset or option name (with the known ones).
        """
        if name not in PRESETS:
            raise SteerjaxError(f"unknown preset {name!r}: use one of {sorted(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise SteerjaxError(f"unknown option(s) {unknown} of the steerability-prediction study: use some of "
                                f"{sorted(fields)}")
        return cls(preset_name=name, **{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})

    def run_config(self, model_source: str, **facts) -> dict[str, Any]:
        """The run's ``config.json``: every option but ``judge_url`` and ``concept_names`` (the
        preset's name as ``preset``), the
        model as given, and the facts settled before the model loads (``concept_names``,
        ``n_prompts``, ``judge_endpoint``; ``strengths`` in ``steerboost``). The pre-model checks
        and the run directory both use it."""
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
               if f.name not in ("judge_url", "concept_names", "preset_name")
               and not (f.name in _LATER and getattr(self, f.name) == _LATER[f.name])}
        out["preset"] = self.preset_name
        out["model"] = model_source
        out.update({k: _plain(v) for k, v in facts.items()})
        return out


def _plain(value):
    """JSON's view of an option: tuples as lists, mappings as dicts."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def parse_feature_set(name: str) -> tuple[str, ...]:
    """The sets a feature-set name combines: ``"steerboost"``, ``"steerjax"``, ``"judge-aware"`` or
    a ``+`` combination such as ``"steerboost+steerjax"`` (order kept, repeats dropped).

    Raises:
      PredictorError: an unknown or empty name (the message lists the known ones).
    """
    parts = tuple(dict.fromkeys(p.strip() for p in name.split("+"))) if isinstance(name, str) else ()
    bad = [p for p in parts if p not in FEATURE_SETS]
    if not parts or bad:
        raise PredictorError(f"unknown feature set {name!r}: use one of {sorted(FEATURE_SETS)} or a '+' "
                             f"combination such as {DEFAULT_FEATURE_SET!r}")
    return parts


def replays_judge(name: str) -> bool:
    """Whether a feature-set name includes the judge-aware set (columns that replay the judge)."""
    return JUDGE_AWARE in parse_feature_set(name)


def search_feature_set(feature_set: str) -> str:
    """The search predictor's set: ``feature_set`` without ``judge-aware`` (the search is scored by
    the judge), or the default if nothing remains."""
    parts = [p for p in parse_feature_set(feature_set) if p != JUDGE_AWARE]
    return "+".join(parts) if parts else DEFAULT_FEATURE_SET


def testbed_run_config(*, model: str, dtype: str, layer: int, max_new_tokens: int, seed: int, batch_size: int,
                       positions: str, temperature: float, top_p: float = 1.0, scale: str = "norm", top_k: int = 0,
                       **facts) -> dict[str, Any]:
    """A testbed run directory's ``config.json`` (``kind: testbed``): the options, plus the facts
    known once the prompts and concepts are (``prompts_sha256``, ``concepts``, ``strengths``). The
    command line's pre-model check passes the options only; :func:`.testbed.rollouts` all."""
    return {
        "kind": "testbed", "model": str(model), "dtype": dtype, "layer": int(layer), **facts,
        "max_new_tokens": int(max_new_tokens), "seed": int(seed), "batch_size": int(batch_size),
        "positions": positions, "temperature": float(temperature), "top_p": float(top_p), "scale": scale,
        # only when set: run directories made before top_k existed keep resuming
        **({"top_k": int(top_k)} if top_k else {}),
    }
