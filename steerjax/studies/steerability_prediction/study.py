"""The steerability-prediction study (Fan et al., "When is Your LLM Steerable?"; reference code
SteerBoost, GitHub ``Fcr09/SteerBoost``) as one call: :func:`check` every input before any model
loads, :func:`run` the protocol into a resumable run directory, and a :class:`Result` of its
tables, figures and headline numbers. The experiment script, ``steerjax`` and the cross-paper
report all call these, so they report the same tables (baselines CGS and TCGS included).

The protocol (the ``steerboost`` preset is SteerBoost's setting, the others steerjax's):

1. Testbed: concepts (persona statements, each dimension's statements against all dimensions';
   or SteerBoost's example banks by DiffMean), prompts (neutral open-ended ones; AlpacaEval's in
   ``steerboost``), a grid of strengths (fractions of the residual norm; alpha x the raw vector in
   ``steerboost``); steered rollouts with the KV cache, greedy (sampled at temperature 0.7 in
   ``steerboost``).
2. Labels: by ``judge``: the hidden-state judge (default, offline), the embedding judge, or an LLM
   judge over an OpenAI-compatible endpoint (SteerBoost's rubric; rows it could not label are
   dropped and counted, never filled). Cohen's kappa between every pair of judges that ran
   (``judges.csv``).
3. Features: early-decoding features of the first k steps (k in ``steps``), in named sets; the
   headline uses ``feature_set`` (default judge-independent). ``judge-aware`` replays the
   hidden-state judge's own statistics: it appears only in the ablation, flagged.
4. Predictor (CatBoost) on unseen concepts:
   - the paper's evaluation (``paper/``): seen / unseen concepts, 70/10/20 train / validation /
     test prompts (28/7/15 of 50 per concept in ``steerboost``, as SteerBoost's code), CatBoost
     settings chosen on validation; per-class and macro-F1 on seen and
     unseen concepts, next to strength-only, multiplier-only, majority and CGS (the most common
     label of the row's concept at its strength over the concept's other prompts: what a
     concept-level grid search knows, an oracle for unseen concepts);
   - concept-grouped cross-validation (``scores.csv``, with CGS), F1 by k;
   - the feature-set ablation on the same concept folds (``ablation.csv``).
5. Strength search on unseen concepts and held-out prompts (concept folds x prompt folds): the
   paper's baselines (IGS, CGS, TCGS per cell, IGS-A, IGS-D), guided search with up to R
   confirming rollouts (:data:`~.config.GUIDED`), and a threshold sweep on P(success), replayed on
   the labelled rollouts; success and decoded tokens relative to IGS (``strategies.csv``; per item
   ``strategy_items.parquet``). ``search_protocol="steerboost"`` (the ``steerboost`` preset's)
   is SteerBoost's alphasearch instead: the paper evaluation's split (groups ``seen`` / ``unseen``),
   each rollout charged the mean response length, budgets above the grid dropped.
6. Uncertainty (``intervals.csv``): 95% percentile intervals from 1000 bootstrap draws of the
   unseen concepts (seeded): the predictor's macro-F1 minus the best of strength-only and CGS,
   and each strategy's success and tokens relative to IGS.

A run directory holds ``config.json`` (:meth:`.config.Config.run_config`, claimed before anything
else is written), ``concepts.safetensors`` (reused while built for the same model, layer, names
and seed), ``testbed/`` (finished chunks of rollouts), the tables above, ``summary.json`` (what
the run found, nested) and ``log.txt``. A killed run resumes: the concepts and finished rollouts
are kept; steps 2-6 are recomputed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import platform
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from steerjax import model as model_lib
from steerjax import runs
from steerjax.data import list_datasets, store
from steerjax.data import steerboost as sources
from steerjax.data.prompt_steering import persona_statements
from steerjax.errors import DataError, JudgeError, LayerIndexError, PredictorError, RunConfigError, SteerjaxError
from steerjax.runs import RunLog, claim, write_json
from steerjax.studies.steerability_prediction import classifier, evaluation, judge, plots, search
from steerjax.studies.steerability_prediction.classifier import ABLATION_SETS
from steerjax.studies.steerability_prediction.concepts import NEUTRAL_PROMPTS, load_concepts
from steerjax.studies.steerability_prediction.config import (
    BOOTSTRAP_DRAWS,
    BOOTSTRAP_LEVEL,
    GUIDED,
    HEADLINE,
    JUDGE_NAMES,
    JUDGES,
    SEARCH_PROTOCOLS,
    SOURCES,
    TARGET_F1,
    TARGET_MARGIN,
    TARGET_SUCCESS,
    TARGET_TOKENS,
    Config,
    parse_feature_set,
    replays_judge,
    search_feature_set,
)
from steerjax.studies.steerability_prediction.features import relative_columns, relative_features
from steerjax.studies.steerability_prediction.llm_judge import STEERBOOST_JUDGE_OPTIONS, LLMJudge, judge_agreement
from steerjax.studies.steerability_prediction.pipeline import label_and_featurize, testbed_concepts
from steerjax.studies.steerability_prediction.testbed import rollouts as make_rollouts
from steerjax.version import __version__

CONCEPTS_FILE = "concepts.safetensors"
SUMMARY = "summary.json"
#: what a reused run must share with this one (its config.json)
REUSE_KEYS = ("preset", "model", "layer", "seed", "judge", "judge_model", "concept_names", "n_prompts", "strengths",
              "steps", "max_new_tokens", "n_statements", "source", "steerboost_compat")
#: the reused run's summary entries that describe its steps 1-3
REUSED_SUMMARY = ("model_source", "layer", "steerjax", "python", "thresholds", "judge", "embedding_thresholds",
                  "judges", "unlabelled_dropped", "label_shares")
#: the Result's tables and their files in the run directory (``None``: not made in every run)
TABLES = {"rollouts": "rollouts.parquet", "labels": "labels.parquet", "judges": "judges.csv",
          "features": "features.parquet", "cv_predictions": "predictions.parquet", "cv_scores": "scores.csv",
          "cv_importance": "importance.csv", "importance_by_layer_step": "importance_by_layer_step.csv",
          "cv_search": "cv_search.csv", "f1_by_step": "f1_by_step.csv", "ablation": "ablation.csv",
          "strategy_items": "strategy_items.parquet", "strategies": "strategies.csv", "intervals": "intervals.csv"}
#: the paper evaluation's tables (``paper/``; ``confusion_*`` besides, one per scored subset)
PAPER_TABLES = ("scores", "per_class", "params", "split_concepts", "split_prompts", "predictions", "importance",
                "cv_scores")
#: the guided setting whose success and tokens the flat summary reports per concept and overall
SUMMARY_GUIDED = "guided-feedback"


# ----------------------------------------------------------------------------- inputs


@dataclasses.dataclass
class Inputs:
    """What :func:`check` settles before any model loads: the concepts' names, the prompts, the
    concepts' abstraction levels (SteerBoost's), SteerBoost's data (``None`` for persona
    statements), the strengths, the LLM judge (``None`` unless ``judge="llm"``)."""

    names: list[str]
    prompts: list[Any]
    levels: dict[str, str] | None
    source: dict[str, Any] | None
    strengths: tuple[float, ...]
    llm: LLMJudge | None

    def facts(self) -> dict[str, Any]:
        """The run config's entries settled here (:meth:`Config.run_config`)."""
        out: dict[str, Any] = {"concept_names": list(self.names), "n_prompts": len(self.prompts)}
        if self.source is not None:
            out["strengths"] = list(self.strengths)
        if self.llm is not None:
            out["judge_endpoint"] = self.llm.base_url
        return out


def _flags(names: Mapping[str, str] | None) -> dict[str, str]:
    fields = [f.name for f in dataclasses.fields(Config)] + ["out", "model"]
    return {f: f for f in fields} | dict(names or {})


def inputs(config: Config, *, names: Mapping[str, str] | None = None) -> Inputs:
    """The options checked and the data they name read (no model, no request): see :func:`check`."""
    n = _flags(names)
    if config.source not in SOURCES:
        raise SteerjaxError(f"{n['source']} must be one of {SOURCES}, got {config.source!r}")
    if config.judge not in JUDGES:
        raise JudgeError(f"{n['judge']} must be one of {JUDGES}, got {config.judge!r}")
    if config.search_protocol not in SEARCH_PROTOCOLS:
        raise SteerjaxError(f"{n['search_protocol']} must be one of {SEARCH_PROTOCOLS}, got "
                            f"{config.search_protocol!r}")
    parse_feature_set(config.feature_set)  # an unknown name: PredictorError listing the known ones
    for field in ("concepts", "prompts"):
        v = getattr(config, field)
        if v is not None and v < 2:
            raise SteerjaxError(f"{n[field]} must be >= 2 (the seen/unseen and prompt splits need two or more), "
                                f"got {v}")
    if config.judge != "llm" and (config.judge_url or config.judge_model):
        raise JudgeError(f"{n['judge_url']} / {n['judge_model']} are for {n['judge']} llm")
    if config.judge == "embedding" and config.no_kappa:
        raise JudgeError(f"{n['judge']} embedding runs the embedding judge: drop {n['no_kappa']}")
    _check_numbers(config, n)
    llm = LLMJudge(config.judge_model, base_url=config.judge_url, **judge_options(config)) \
        if config.judge == "llm" else None
    if config.source == "steerboost":
        src = _steerboost_inputs(config, n)
        names_, prompts, levels = src["names"], src["prompts"], src["levels"]
        strengths = tuple(src["strengths"])
    else:
        known = list_datasets("persona")
        if config.concept_names is not None:
            names_ = list(config.concept_names)
            check_concept_names(names_, known, n["concept_names"])
        else:
            names_ = known if config.concepts is None else _spread(known, config.concepts)
        if config.prompts is not None and config.prompts > len(NEUTRAL_PROMPTS):
            raise SteerjaxError(f"{n['prompts']} must be at most {len(NEUTRAL_PROMPTS)} (the built-in neutral "
                                f"prompts), got {config.prompts}")
        prompts = list(NEUTRAL_PROMPTS if config.prompts is None else NEUTRAL_PROMPTS[:config.prompts])
        levels, src = None, None
        strengths = tuple(config.strengths or ())
    if len(strengths) < 2:
        raise SteerjaxError(f"{n['strengths']}: the strength grid needs two or more strengths (strength-only "
                            f"baseline, search), got {list(strengths)}")
    if len(names_) < 2:
        raise SteerjaxError(f"{n['concept_names']}: the seen/unseen split needs two or more concepts, got {names_}")
    if config.search_protocol == "steerboost" and min(config.max_rollouts) > len(strengths):
        raise SteerjaxError(f"{n['max_rollouts']} {list(config.max_rollouts)}: {n['search_protocol']} steerboost drops "
                            f"the budgets above the grid's {len(strengths)} strengths, as alphasearch does, and none "
                            "would be left")
    ev_kw = {k: v for k, v in (src or {}).get("evaluation", {}).items() if k != "refit"}
    try:  # the paper evaluation's split, made now: a part left empty is refused before any rollout
        evaluation.paper_split(names_, list(range(len(prompts))), levels=levels, **{"seed": config.seed, **ev_kw})
    except PredictorError as e:
        raise PredictorError(f"{n['prompts']} {len(prompts)} / {len(names_)} concepts: {e}") from None
    if config.folds > len(names_):
        raise SteerjaxError(f"{n['folds']} {config.folds} is more than the {len(names_)} concepts: each concept fold "
                            "needs one or more concepts")
    if config.prompt_folds > len(prompts):
        raise SteerjaxError(f"{n['prompt_folds']} {config.prompt_folds} is more than the {len(prompts)} prompts: each "
                            f"prompt fold of the search needs one or more (use more {n['prompts']})")
    return Inputs(list(names_), prompts, levels, src, strengths, llm)


def judge_options(config: Config) -> dict[str, Any]:
    """The LLM judge's options: SteerBoost's request (:data:`.llm_judge.STEERBOOST_JUDGE_OPTIONS`)
    with ``steerboost_compat``, else :class:`.llm_judge.LLMJudge`'s defaults."""
    return dict(STEERBOOST_JUDGE_OPTIONS) if config.steerboost_compat else {}


def _check_numbers(config: Config, n: dict[str, str]) -> None:
    """Strengths, steps, budgets, folds, thresholds and grids: each a list of valid values."""
    def positive_ints(field, values):
        if not values or any(isinstance(v, bool) or int(v) != v or v < 1 for v in values):
            raise SteerjaxError(f"{n[field]} must be positive integers, got {list(values or ())}")

    if config.strengths is not None:
        bad = [s for s in config.strengths if isinstance(s, bool) or not isinstance(s, (int, float))
               or not math.isfinite(s)]
        if bad:
            raise SteerjaxError(f"{n['strengths']} must be finite numbers, got {bad[:3]}")
    positive_ints("steps", config.steps)
    positive_ints("max_rollouts", config.max_rollouts)
    for field in ("max_new_tokens", "n_statements", "iterations", "batch_size", "kappa_sample", "search_k"):
        positive_ints(field, [getattr(config, field)])
    if config.search_k < min(config.steps):
        raise SteerjaxError(f"{n['search_k']} {config.search_k} is below every {n['steps']} value "
                            f"{list(config.steps)}: the search's predictor would have no features")
    for field in ("folds", "prompt_folds"):
        if getattr(config, field) < 2:
            raise SteerjaxError(f"{n[field]} must be >= 2 (held-out folds), got {getattr(config, field)}")
    if config.thresholds is not None and (not config.thresholds or any(not 0 <= t <= 1 for t in config.thresholds)):
        raise SteerjaxError(f"{n['thresholds']} must be probabilities in [0, 1], got {list(config.thresholds)}")
    for field in ("paper_grid", "cv_grid"):
        if getattr(config, field) is not None:
            try:
                classifier.grid_settings(getattr(config, field))
            except PredictorError as e:
                raise PredictorError(f"{n[field]}: {e}") from None


def check_concept_names(names: list[str], known: list[str], flag: str = "concept_names") -> None:
    """Every name of ``names`` among ``known``; else a DataError naming the first unknown one and
    its closest known names."""
    unknown = [x for x in names if x not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise DataError(f"{flag}: unknown concept {unknown[0]!r}{hint} (steerjax datasets --kind persona lists "
                        "them)")


def _spread(names, n):
    """``n`` names spread evenly over the sorted list (not just the alphabet's start)."""
    idx = np.linspace(0, len(names) - 1, n).round().astype(int)
    return [names[i] for i in dict.fromkeys(idx)]


def _steerboost_inputs(config: Config, n: dict[str, str]) -> dict:
    """SteerBoost's concepts, example banks, prompts and setting, every file checked (no model)."""
    sb = sources.STEERBOOST
    root = config.steerboost_data or os.path.join(store.data_root(), "steerboost")
    how = ("SteerBoost's data are not shipped with steerjax: `steerjax data download steerboost` fetches "
           "concepts.json and alpaca_eval.json (or leave STEERJAX_DATA unset and they are fetched on first "
           "use); the example banks training/{id}.json come from SteerBoost's data release "
           f"(github.com/Fcr09/SteerBoost, scripts/download_data.py): pass their folder as {n['steerboost_data']} DIR")
    try:
        concepts_json = store.data_file(os.path.join(root, "concepts.json"))
        alpaca_json = store.data_file(os.path.join(root, "alpaca_eval.json"))
        table = sources.steerboost_concepts(concepts_json)
        if config.concept_names is not None:
            check_concept_names(list(config.concept_names), table["concept_name"].tolist(), n["concept_names"])
            table = table[table["concept_name"].isin(config.concept_names)]
        elif config.concepts is not None:
            table = table.iloc[_spread(list(range(len(table))), config.concepts)]
        ids = table["concept_id"].tolist()
        missing = [i for i in ids if not os.path.isfile(os.path.join(root, "training", f"{i}.json"))]
        if missing:
            raise DataError(f"{os.path.join(root, 'training')} lacks the example banks of concepts {missing[:5]} "
                            f"({len(missing)} of {len(ids)})")
        banks = sources.steerboost_examples(root, n_examples=sb["concepts"]["n_examples"], ids=ids)
        prompts = sources.alpaca_eval_prompts(alpaca_json, n=config.prompts, seed=sb["prompts"]["seed"])
    except DataError as e:
        raise DataError(f"{e}. {how}") from None
    return {"names": list(banks), "banks": banks, "prompts": prompts,
            "levels": {name: ex.level for name, ex in banks.items()} if all(ex.level for ex in banks.values())
            else None,
            "strengths": sb["rollouts"]["strengths"], "rollouts": sb["rollouts"], "evaluation": sb["evaluation"],
            "layer": sb["reference"]["layer"], "method": sb["concepts"]["method"], "chat": sb["concepts"]["chat"]}


def check(config: Config, *, names: Mapping[str, str] | None = None, out: str | None = None, force: bool = False,
          model_source: str | None = None, model_config=None, endpoint: bool = True) -> None:
    """Every input check of :func:`run`, before any model loads.

    Refuses: an unknown source, judge or feature set; fewer than 2 concepts or prompts, more
    prompts than there are, an unknown concept name (with the closest names), folds that leave a
    split empty; a strength grid of fewer than 2 or non-finite strengths, steps, budgets
    (``max_rollouts``) or sizes that are not positive integers, ``search_k`` below every step,
    thresholds outside [0, 1], bad CatBoost grids; LLM-judge options without the LLM judge, the
    embedding judge with ``no_kappa``, an LLM judge without a model or an endpoint that does not
    answer (one ``GET /models``; ``endpoint=False`` skips it); SteerBoost's data missing a file;
    ``layer`` out of range when ``model_config`` (a ``ModelConfig``) is given; a ``reuse_features``
    directory that is not a finished run of the same command; and ``out`` holding another run
    (with ``model_source``, the run config as given). The study builds its own vectors, so no
    vector width is checked here; it has no prompt formats or categories. ``force`` is accepted
    for the common signature: a run directory is resumed or refused, never overwritten.

    Args:
      names: option name -> how the caller's user spells it (the command line: its flags).

    Raises:
      SteerjaxError (its subclasses DataError, JudgeError, PredictorError, LayerIndexError,
      RunConfigError, OutputPathError): the first bad input, named as in ``names``.
    """
    del force
    n = _flags(names)
    got = inputs(config, names=names)
    if model_config is not None and config.layer is not None:
        L = model_config.num_layers
        if not -L <= config.layer < L:
            raise LayerIndexError(f"{n['layer']} {config.layer} is out of range for a model with {L} blocks "
                                  f"(use 0..{L - 1}, or a negative index from the end)")
    if got.llm is not None and endpoint:
        check_endpoint(got.llm)
    if config.reuse_features is not None and model_source is not None:
        _reusable(config.reuse_features, config.run_config(model_source, **got.facts()), n["reuse_features"])
    if out is not None:
        cfg = config.run_config(model_source, **got.facts()) if model_source is not None else None
        runs.check_run_dir(out, cfg, flag=n["out"])


def check_endpoint(llm: LLMJudge, timeout: float = 10.0) -> None:
    """One ``GET /models`` to the LLM judge's endpoint before any model loads: an unreachable
    endpoint or a refused key is a JudgeError naming the URL now, not after the rollouts. A
    server without that route (another error status) is let through: the judge's own requests
    report what is wrong.

    Raises:
      JudgeError: no connection (or no reply within ``timeout`` seconds), or HTTP 401.
    """
    import openai  # optional: only the LLM judge needs it

    try:
        llm.client().with_options(timeout=timeout).models.list()
    except openai.AuthenticationError:
        raise JudgeError(f"the judge endpoint {llm.base_url} refused the API key (HTTP 401): set OPENAI_API_KEY to "
                         "a key it accepts") from None
    except openai.APIConnectionError as e:  # timeouts too
        raise JudgeError(f"the judge endpoint {llm.base_url} is unreachable ({type(e).__name__}: {e}): check "
                         "--judge-url (an API root ending in /v1) and that the server is up") from None
    except openai.APIStatusError:
        pass


# ----------------------------------------------------------------------------- the result


@dataclasses.dataclass
class Result:
    """A study run's tables (see :data:`TABLES` for their files; ``None``: not made by this run,
    e.g. rollouts when the features were reused), ``paper`` (the paper evaluation's tables by file
    stem, :meth:`.evaluation.PaperEvaluation.tables`), ``config`` (the run config) and ``details``
    (``summary.json``: everything the run found, nested)."""

    config: dict[str, Any]
    details: dict[str, Any]
    features: pd.DataFrame
    paper: dict[str, pd.DataFrame]
    cv_predictions: pd.DataFrame
    cv_scores: pd.DataFrame
    cv_importance: pd.DataFrame
    importance_by_layer_step: pd.DataFrame
    f1_by_step: pd.DataFrame
    ablation: pd.DataFrame
    strategy_items: pd.DataFrame
    strategies: pd.DataFrame
    intervals: pd.DataFrame
    rollouts: pd.DataFrame | None = None
    labels: pd.DataFrame | None = None
    judges: pd.DataFrame | None = None
    cv_search: pd.DataFrame | None = None

    def save(self, out: str) -> None:
        """Every table into ``out`` (:data:`TABLES`, ``paper/``), ``summary.json`` and
        ``paper/summary.json``; ``config.json`` is the run directory's (claimed by :func:`run`)."""
        os.makedirs(out, exist_ok=True)
        for name, file in TABLES.items():
            table = getattr(self, name)
            if table is None:
                continue
            path = os.path.join(out, file)
            if file.endswith(".parquet"):
                table.to_parquet(path, index=False)
            else:
                table.to_csv(path, index=False)
        evaluation.write_tables(os.path.join(out, "paper"), self.paper)
        write_json(os.path.join(out, "paper", SUMMARY), {k: v for k, v in self.details["paper"].items()
                                                         if k != "cgs"})
        write_json(os.path.join(out, SUMMARY), self.details)

    @classmethod
    def load(cls, out: str) -> Result:
        """The result saved in ``out`` (by :meth:`save` or :func:`run`).

        Raises:
          SteerjaxError: ``out`` holds no finished run of this study.
        """
        need = [SUMMARY, runs.CONFIG, *(TABLES[t] for t in ("features", "cv_scores", "strategies"))]
        missing = [f for f in need if not os.path.exists(os.path.join(out, f))]
        if missing:
            raise SteerjaxError(f"{out} holds no finished steerability-prediction run (missing {', '.join(missing)})")
        tables = {}
        for name, file in TABLES.items():
            path = os.path.join(out, file)
            if os.path.exists(path):
                tables[name] = (pd.read_parquet(path) if file.endswith(".parquet")
                                else pd.read_csv(path, float_precision="round_trip"))
        paper = {}
        pdir = os.path.join(out, "paper")
        for stem in sorted(os.listdir(pdir)):
            base, ext = os.path.splitext(stem)
            if ext == ".parquet":
                paper[base] = pd.read_parquet(os.path.join(pdir, stem))
            elif ext == ".csv":
                paper[base] = pd.read_csv(os.path.join(pdir, stem), float_precision="round_trip",
                                          index_col=0 if base.startswith("confusion_") else None)
        order = [*PAPER_TABLES, *sorted(k for k in paper if k not in PAPER_TABLES)]
        with open(os.path.join(out, SUMMARY)) as f:
            details = json.load(f)
        return cls(config=runs.read_run_config(out), details=details, paper={k: paper[k] for k in order if k in paper},
                   **tables)

    def figures(self, out: str) -> list[str]:
        """Draw the run's figures into ``out`` (the one place that decides which): labels by
        strength, the CV confusion matrix and feature importance (overall and by layer and step),
        F1 by k, the strategies' trade-off, and the paper evaluation's confusion matrices
        (``paper/``). Returns their paths."""
        cv = self.cv_predictions
        paths = [
            plots.labels_by_strength(self.features, os.path.join(out, "labels_by_strength.png")),
            plots.confusion_matrix(classifier.confusion(cv["label"].astype(str), cv["predicted"]),
                                   os.path.join(out, "confusion.png")),
            plots.feature_importance(self.cv_importance, os.path.join(out, "importance.png")),
            plots.layer_step_importance(self.importance_by_layer_step, os.path.join(out, "importance_layer_step.png")),
            plots.f1_by_step(self.f1_by_step, os.path.join(out, "f1_by_step.png")),
            plots.strategy_tradeoff(self.strategies, os.path.join(out, "strategies.png")),
        ]
        conf = {k[len("confusion_"):].replace("_", "/", 1): v for k, v in self.paper.items()
                if k.startswith("confusion_")}
        return paths + evaluation.confusion_figures(os.path.join(out, "paper"), conf)

    def summary(self) -> dict[str, float | int | str]:
        """The headline numbers as a flat dict (what the cross-paper report reads).

        Per concept ``c`` (judged by the run's judge, over the run's prompts):

        - ``c/success_rate@S`` for each strength ``S`` (``%g``), with a 95% Wilson interval
          ``c/success_rate@S_lo`` / ``_hi``;
        - ``c/best_strength``: the smallest strength with the highest success rate;
          ``c/best_success_rate`` (``_lo`` / ``_hi``);
        - ``c/predictor_macro_f1``: the predictor's macro-F1 on this concept's rows, the concept
          held out (concept-grouped CV), with ``_lo`` / ``_hi``: a bootstrap over the concept's
          prompts (with two or more);
        - ``c/guided_success_vs_sweep``, ``c/guided_tokens_vs_sweep``: guided search
          (:data:`SUMMARY_GUIDED` at the largest budget R) on this concept's items relative to the
          full sweep (IGS) on the same items (NaN where IGS never succeeds), with ``_lo`` / ``_hi``:
          a bootstrap over the concept's prompts.

        Overall: ``model``, ``layer``, ``judge``, ``feature_set``, ``concepts``, ``prompts``,
        ``success_rate`` (share of steered rollouts judged a success);
        ``predictor_macro_f1``, ``strength_only_macro_f1``, ``cgs_macro_f1`` and
        ``predictor_margin`` (the predictor minus the best of strength-only and CGS), each with
        ``_lo`` / ``_hi`` (bootstrap over concepts, concept-grouped CV);
        ``paper_macro_f1`` (the paper evaluation's headline subset, unseen concepts x all prompts,
        with ``_lo`` / ``_hi`` when it has 2 or more unseen concepts); ``guided_setting`` and
        ``guided_success_vs_sweep`` / ``guided_tokens_vs_sweep`` with ``_lo`` / ``_hi``.
        """
        d = self.details
        feats = self.features
        out: dict[str, float | int | str] = {
            "model": str(d.get("model_source", self.config.get("model"))), "layer": int(d["layer"]),
            "judge": str(d["judge"]), "feature_set": str(d["feature_set"]), "concepts": int(feats["concept"].nunique()),
            "prompts": int(feats["prompt_id"].nunique()),
            "success_rate": float((feats["label"] == "success").mean())}
        for concept, g in feats.groupby("concept", sort=True):
            rates = g.groupby("strength")["label"].agg(lambda x: (x == "success").mean())
            counts = g.groupby("strength")["label"].size()
            for s, r in rates.items():
                lo, hi = _wilson(r, counts[s])
                out |= {f"{concept}/success_rate@{s:g}": float(r), f"{concept}/success_rate@{s:g}_lo": lo,
                        f"{concept}/success_rate@{s:g}_hi": hi}
            best = float(rates.index[np.argmax(rates.to_numpy())])
            lo, hi = _wilson(rates[best], counts[best])
            out |= {f"{concept}/best_strength": best, f"{concept}/best_success_rate": float(rates[best]),
                    f"{concept}/best_success_rate_lo": lo, f"{concept}/best_success_rate_hi": hi}
        cv = self.cv_predictions
        seed = int(self.config.get("seed", 0)) if isinstance(self.config, Mapping) else 0
        for concept, g in cv.groupby("concept", sort=True):
            key = f"{concept}/predictor_macro_f1"
            out[key] = classifier.macro_f1(g["label"].astype(str).to_numpy(), g["predicted"].to_numpy())
            if g["prompt_id"].nunique() >= 2:  # the concept's prompts resampled
                ci = evaluation.bootstrap_f1(g["prompt_id"], g["label"].astype(str), {"predictor": g["predicted"]},
                                             baselines=("predictor",), n_draws=BOOTSTRAP_DRAWS, seed=seed,
                                             level=BOOTSTRAP_LEVEL).iloc[0]
                out[f"{key}_lo"], out[f"{key}_hi"] = float(ci["low"]), float(ci["high"])
        setting, per_concept = self._guided(seed)
        for concept, cells in per_concept.items():
            for name, (value, lo, hi) in zip(("success", "tokens"), cells):
                key = f"{concept}/guided_{name}_vs_sweep"
                out |= {key: value, f"{key}_lo": lo, f"{key}_hi": hi}
        iv = self.intervals.set_index(["evaluation", "quantity"])

        def put(key, evaluation_, quantity):
            if (evaluation_, quantity) in iv.index:
                r = iv.loc[(evaluation_, quantity)]
                out.update({key: float(r["point"]), f"{key}_lo": float(r["low"]), f"{key}_hi": float(r["high"])})

        put("predictor_macro_f1", "cv", "macro_f1 predictor")
        put("strength_only_macro_f1", "cv", "macro_f1 strength-only")
        put("cgs_macro_f1", "cv", "macro_f1 CGS")
        put("predictor_margin", "cv", "predictor - best of strength-only/CGS")
        key = "/".join(HEADLINE)
        out["paper_macro_f1"] = float(d["paper"]["scores"][key]["predictor"]["macro_f1"])
        put("paper_macro_f1", f"paper {key}", "macro_f1 predictor")
        out["guided_setting"] = setting
        put("guided_success_vs_sweep", "search", f"{setting} success_vs_igs")
        put("guided_tokens_vs_sweep", "search", f"{setting} tokens_vs_igs")
        return out

    def _guided(self, seed: int = 0) -> tuple[str, dict[str, tuple[tuple[float, float, float], ...]]]:
        """The summary's guided setting (``"guided-feedback R=5"``) and, per concept, its success
        and tokens relative to IGS on the concept's items, each ``(value, lo, hi)``: the interval
        a percentile bootstrap over the concept's prompts (:data:`~.config.BOOTSTRAP_DRAWS` draws,
        ``seed``; NaN with one prompt)."""
        items = self.strategy_items
        guided = items[(items["strategy"] == SUMMARY_GUIDED) & items["threshold"].isna()]
        r = guided["max_rollouts"].max()
        guided = guided[guided["max_rollouts"] == r]
        igs = items[items["strategy"] == "IGS"]
        per = {}
        for concept, g in guided.groupby("concept", sort=True):
            base = igs[igs["concept"] == concept]
            base = base[base.set_index(["prompt_id"]).index.isin(g["prompt_id"])]
            mine = g.groupby("prompt_id")[["success", "tokens"]].sum()
            theirs = base.groupby("prompt_id")[["success", "tokens"]].sum().reindex(mine.index, fill_value=0)
            draws = np.random.default_rng(seed).integers(0, len(mine), size=(BOOTSTRAP_DRAWS, len(mine)))
            cells = []
            for col in ("success", "tokens"):
                a, b = mine[col].to_numpy(float), theirs[col].to_numpy(float)
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = a[draws].sum(1) / b[draws].sum(1)
                value = float(a.sum() / b.sum()) if b.sum() else float("nan")
                lo, hi = evaluation.interval(ratio, BOOTSTRAP_LEVEL) if len(mine) >= 2 else (float("nan"),) * 2
                cells.append((value, lo, hi))
            per[concept] = tuple(cells)
        return f"{SUMMARY_GUIDED} R={int(r)}", per

    def headline(self) -> str:
        """The run's headline figures and the targets, as text."""
        return headline(self.details)


def _wilson(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``p`` of ``n`` trials."""
    if not n:
        return float("nan"), float("nan")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


# ----------------------------------------------------------------------------- run


def run(model, config: Config, out: str, *, mesh=None, progress: bool = True) -> Result:
    """Run (or resume) the study in ``out`` and save its tables there.

    Args:
      model: a loaded :class:`steerjax.LanguageModel`, or a model source: then the run config is
        claimed first and the model loaded after (a directory holding another run is refused
        before any weights load); with ``config.reuse_features`` no model is loaded.
      config: the options (:class:`~.config.Config`); checked by :func:`check` (the LLM judge's
        endpoint is asked once more only by :func:`check`).
      out: the run directory.
      mesh: a device mesh for the rollouts.

    Raises:
      SteerjaxError: a bad input (:func:`check`), a directory holding another run.
    """
    got = inputs(config)
    if model is None:
        raise SteerjaxError("run() needs a model or a model source (with reuse_features: the reused run's)")
    source_str = model if isinstance(model, str) else str(model.source)
    run_cfg = config.run_config(source_str, **got.facts())
    if config.reuse_features is not None:
        old = _reusable(config.reuse_features, run_cfg, "reuse_features")
        claim(out, run_cfg)
        log = RunLog(out)
        table, details = _reused_table(config.reuse_features, old, config)
        log(f"features and labels of {config.reuse_features} ({len(table)} rows): no model run")
        result = evaluate_table(table, config, details, levels=got.levels, source=got.source, log=log,
                                progress=progress)
        return _finish(result, out, log)
    claim(out, run_cfg)  # before the model loads: another run's directory is refused
    log = RunLog(out)
    if isinstance(model, str):
        model = model_lib.load_model(model, mesh=mesh)
    layer = model.config.num_layers // 2 if config.layer is None else config.layer
    if got.source is not None and config.layer is None:
        layer = min(got.source["layer"], model.config.num_layers - 1)

    # 1. concepts and rollouts
    concepts = _concepts(model, got, layer, config, out, progress)
    log(f"{len(concepts)} concepts at block {layer}; residual norm {concepts[0].residual_norm:.1f}")
    src = got.source
    roll_kw = {} if src is None else {k: v for k, v in src["rollouts"].items() if k != "strengths"}
    roll = make_rollouts(model, got.prompts, concepts, list(got.strengths), layer=layer,
                         max_new_tokens=config.max_new_tokens, seed=config.seed, batch_size=config.batch_size,
                         run_dir=os.path.join(out, "testbed"), progress=progress, mesh=mesh, **roll_kw)
    log(f"{len(roll)} rollouts")

    # 2. judges: the LLM first (an unreachable endpoint stops the run before the dear steps)
    judged = {}
    if got.llm is not None:
        scores, report = got.llm(roll)
        judged["llm"] = scores["label"]
        log(report.how)

    # 3. hidden-state labels and early features
    labelled, thr, table = label_and_featurize(model, concepts, roll, layer=layer, steps=config.steps,
                                               batch_size=config.batch_size,
                                               positions=roll_kw.get("positions", "all"),
                                               steerboost_compat=config.steerboost_compat, progress=progress)
    judged["hidden"] = labelled["label"]
    steered_idx = labelled.index[labelled["concept"] != judge.UNSTEERED]
    details = {"model_source": model.source, "layer": layer, "steerjax": __version__,
               "python": platform.python_version(), "thresholds": thr.to_dict(), "judge": config.judge,
               "feature_set": config.feature_set, "feature_set_replays_judge": replays_judge(config.feature_set)}
    log(f"hidden-state judge: {thr.how}")
    if not config.no_kappa:
        n = len(roll) if config.judge == "embedding" else config.kappa_sample
        judged["embedding"], details["embedding_thresholds"] = embedding_labels(roll, n, config.seed, src)
    judges = agreement(judged, steered_idx, log)
    details["judges"] = judges.to_dict(orient="records")

    # the labelling judge's labels on the features; unlabelled rows dropped and counted
    keys = ["prompt_id", "concept", "strength"]
    chosen = labelled[keys + ["n_tokens"]].assign(label=judged[config.judge].reindex(labelled.index))
    table = table.drop(columns=["label"]).merge(chosen.loc[steered_idx], on=keys, validate="one_to_one")
    unlabelled = int(table["label"].isna().sum())
    table = table[table["label"].notna()].reset_index(drop=True)
    table["label"] = table["label"].astype(str)
    details["unlabelled_dropped"] = unlabelled
    if unlabelled:
        log(f"{unlabelled} steered rollouts the {JUDGE_NAMES[config.judge]} judge could not label: dropped")
    details["label_shares"] = table["label"].value_counts(normalize=True).to_dict()
    log(f"labels ({JUDGE_NAMES[config.judge]} judge): {details['label_shares']}")
    result = evaluate_table(table, config, details, levels=got.levels, source=got.source, log=log,
                            progress=progress)
    result.rollouts, result.labels, result.judges = roll, labelled, judges
    return _finish(result, out, log)


def _finish(result: Result, out: str, log: RunLog) -> Result:
    result.details["wall_seconds"] = log.seconds
    result.config = runs.read_run_config(out)
    result.save(out)
    log(f"done in {result.details['wall_seconds']} s")
    return result


def _concepts(model, got: Inputs, layer: int, config: Config, out: str, progress: bool):
    """The concepts (:func:`.pipeline.testbed_concepts`: built once, reloaded while built for the
    same model, layer, names, size and source)."""
    src = got.source
    path = os.path.join(out, CONCEPTS_FILE)
    if src is None:
        return testbed_concepts(model, path, names=got.names, layer=layer, source="statements",
                                pairs=config.n_statements, seed=config.seed, progress=progress)
    return testbed_concepts(model, path, names=got.names, layer=layer, source="examples", pairs=config.n_statements,
                            seed=config.seed, examples=src["banks"], method=src["method"], chat=src["chat"],
                            progress=progress)


# ----------------------------------------------------------------------------- judges


def embedding_labels(roll: pd.DataFrame, n: int, seed: int, source: dict | None) -> tuple[pd.Series, dict]:
    """The embedding judge's labels on a sample of ``n`` steered rows (all unsteered rows are
    scored too: the judge calibrates on them), as a Series indexed like ``roll``, and its
    thresholds. The concepts' texts: SteerBoost's banks (``source``) or persona statements."""

    steered = roll.index[roll["concept"] != judge.UNSTEERED]
    rng = np.random.default_rng(seed)
    pick = rng.choice(steered, size=min(n, len(steered)), replace=False)
    sample = roll.loc[sorted(set(pick) | set(roll.index[roll["concept"] == judge.UNSTEERED]))]
    texts = {}
    for c in sorted(set(sample["concept"]) - {judge.UNSTEERED}):
        if source is not None:
            ex = source["banks"][c]
            texts[c] = ([str(t) for t in ex.positive[:40]], [str(t) for t in ex.negative[:40]])
            continue
        rows = persona_statements(c)
        texts[c] = tuple(rows.loc[rows["direction"] == d, "statement"].sample(frac=1.0, random_state=seed)
                         .head(40).tolist() for d in ("positive", "negative"))
    second, thr = judge.EmbeddingJudge(texts)(sample)
    return second["label"], thr.to_dict()


def agreement(judged: dict, steered_idx, log) -> pd.DataFrame:
    """Kappa and raw agreement between every pair of judges that ran, on the steered rows both labelled."""
    cols = ["judge_a", "judge_b", "n", "agreement", "kappa"]
    if len(judged) < 2:
        log("one judge ran: no agreement to report")
        return pd.DataFrame(columns=cols)
    labels = {JUDGE_NAMES[k]: v.reindex(steered_idx) for k, v in judged.items()}
    table = judge_agreement(labels)
    for r in table.itertuples():
        log(f"judges {r.judge_a} vs {r.judge_b} on {r.n} steered rollouts: kappa {r.kappa:.3f}, "
            f"raw agreement {r.agreement:.2f}")
    return table


# ----------------------------------------------------------------------------- evaluation and search


def ablation_sets(table: pd.DataFrame, feature_set: str) -> list[str]:
    """Each set alone and the combinations, those with columns in the table; the headline set included."""
    out = []
    for name in dict.fromkeys([*ABLATION_SETS, feature_set]):
        try:
            classifier.feature_columns_of(table, feature_set=name)
        except PredictorError:
            continue
        out.append(name)
    return out


def evaluate_table(table: pd.DataFrame, config: Config, details: dict, *, levels: Mapping[str, str] | None = None,
                   source: dict | None = None, log=None, progress: bool = True) -> Result:
    """Steps 4-6 on a labelled features table (one row per steered rollout: ids, features,
    ``n_tokens``, ``label``): the paper evaluation (CGS included), concept-grouped CV (nested when
    ``cv_grid`` is set; CGS included), F1 by k, the ablation, the search with its baselines, the
    intervals. ``details`` (what steps 1-3 found: at least ``model_source``, ``layer``, ``judge``,
    ``feature_set``, ``feature_set_replays_judge``) is completed; ``levels``: the concepts'
    abstraction levels, ``source``: SteerBoost's data (:func:`inputs`); ``log``: a callable taking
    a line (default: none). Nothing is written (:meth:`Result.save` does)."""
    log = log or (lambda line: None)
    cols = classifier.feature_columns_of(table, feature_set=config.feature_set)
    log(f"features: {len(cols)} columns of {config.feature_set!r} for {len(table)} rows")
    fit_kw = dict(iterations=config.iterations)
    seed = config.seed

    # 4a. the paper's evaluation (seen/unseen concepts, 70/10/20 prompts, settings chosen on validation)
    ev_kw = {} if source is None else dict(source["evaluation"])
    ev_kw.setdefault("seed", seed)
    paper = evaluation.paper_evaluation(table, feature_columns=cols, levels=levels, grid=config.paper_grid,
                                        progress=progress, **ev_kw)
    paper, paper_cgs = evaluation.paper_with_cgs(paper, table)
    details["paper"] = paper.summary()
    details["paper"]["cgs"] = {f"{c}/{p}": round(float(g["macro_f1"].iloc[0]), 4) for (c, p), g in
                               paper.scores[paper.scores["model"] == "CGS"].groupby(["concepts", "prompts"])}
    log(f"paper evaluation (chosen {paper.chosen}):\n"
        + paper.scores[["concepts", "prompts", "model", "n", "macro_f1", "accuracy"]].to_string(index=False))

    # 4b. concept-grouped cross-validation (the extra), F1 by k, the feature-set ablation on the same folds
    ev = classifier.evaluate(table, feature_columns=cols, n_folds=config.folds, seed=seed, grid=config.cv_grid,
                             progress=progress, **fit_kw)
    if ev.search is not None:
        details["cv_chosen"] = {m: g.loc[g["chosen"]].drop(columns=["model", "chosen"]).to_dict(orient="records")
                                for m, g in ev.search.groupby("model", sort=False)}
        log("nested search (settings chosen on inner folds of each outer fold's training concepts):\n"
            + ev.search[ev.search["chosen"]].to_string(index=False))
    ev, cgs = evaluation.cv_with_cgs(ev, table)
    details["evaluation"] = ev.summary()
    log(f"unseen concepts (concept-grouped CV):\n{ev.scores.to_string(index=False)}")
    by_k = []
    base = ev.scores.set_index("model")["macro_f1"]
    for k in config.steps:
        ek = ev if k == max(config.steps) and config.cv_grid is None else classifier.evaluate(
            table, feature_columns=[c for c in cols if (s := classifier.feature_step(c)) is None or s <= k],
            n_folds=config.folds, seed=seed, progress=False, baselines=False, **fit_kw)
        by_k.append({"k": k, "macro_f1": float(ek.scores.set_index("model").loc["predictor", "macro_f1"]),
                     "multiplier_only": float(base["multiplier-only"]), "strength_only": float(base["strength-only"]),
                     "majority": float(base["majority"])})
    by_k = pd.DataFrame(by_k)
    details["f1_by_step"] = by_k.to_dict(orient="records")
    abl = classifier.ablation(table, ablation_sets(table, config.feature_set), n_folds=config.folds, seed=seed,
                              **fit_kw)
    pooled = abl[abl["fold"] == "all"]
    details["ablation"] = {r["set"]: {"macro_f1": round(float(r["macro_f1"]), 4),
                                      "replays_judge": bool(r["replays_judge"]), "n_features": int(r["n_features"])}
                           for _, r in pooled.iterrows()}
    log("ablation (same concept folds; sets marked replays_judge=True replay the judge, never a headline):\n"
        + pooled[["set", "replays_judge", "n_features", "macro_f1", "accuracy"]].to_string(index=False))

    # 5. strength search on unseen concepts and held-out prompts
    search_set = search_feature_set(config.feature_set)
    if search_set != config.feature_set:
        log(f"the search's predictor uses {search_set!r}: the judge-independent part of {config.feature_set!r}")
    items, strategies = strategy_items(table, config, search_set, fit_kw, paper=paper)

    # 6. intervals over concepts
    paper_pred = paper.predictions.assign(cgs=paper_cgs)
    iv = intervals(table, ev, cgs, paper_pred, items, seed)
    details["intervals"] = {f"{r.evaluation}: {r.quantity}": {"point": _round(r.point), "low": _round(r.low),
                                                              "high": _round(r.high), "concepts": int(r.concepts)}
                            for r in iv.itertuples()}
    log(f"{BOOTSTRAP_LEVEL:.0%} intervals, {BOOTSTRAP_DRAWS} bootstrap draws of the unseen concepts (seed "
        f"{seed}):\n" + iv.to_string(index=False))
    details["search_feature_set"] = search_set
    details["strategies"] = _strategy_summary(strategies)
    where = ("seen concepts' test prompts and unseen concepts' every prompt, by group (SteerBoost's alphasearch)"
             if config.search_protocol == "steerboost" else "unseen concepts, held-out prompts")
    shown = (["group"] if config.search_protocol == "steerboost" else []) + [
        "strategy", "max_rollouts", "items", "success_rate", "tokens_per_item", "success_vs_igs", "tokens_vs_igs"]
    log(f"strategies ({where}; relative to IGS):\n"
        + strategies[strategies["threshold"].isna()][shown].to_string(index=False))
    details["targets"] = targets(details)
    return Result(config={}, details=details, features=table, paper=paper.tables(), cv_predictions=ev.predictions,
                  cv_scores=ev.scores, cv_importance=ev.importance,
                  importance_by_layer_step=classifier.importance_by_layer_and_step(ev.importance), f1_by_step=by_k,
                  ablation=abl, strategy_items=items, strategies=strategies, intervals=iv, cv_search=ev.search)


def strategy_items(table: pd.DataFrame, config: Config, feature_set: str, fit_kw: dict,
                   paper: evaluation.PaperEvaluation | None = None):
    """``(items, strategies)`` of :func:`.search.held_out_strategies` with the config's folds,
    budgets and thresholds, the predictor on ``feature_set``; with ``search_protocol="steerboost"``
    :func:`.search.alphasearch_strategies` on ``paper``'s split, its predictor fitted with the
    setting ``paper`` chose (groups ``seen`` and ``unseen``)."""
    cols = classifier.feature_columns_of(table, feature_set=feature_set)
    if config.search_protocol == "steerboost":
        if paper is None:
            raise PredictorError("search_protocol='steerboost' searches on the paper evaluation's split: pass paper=")
        return search.alphasearch_strategies(table, paper.split, feature_columns=cols, k=config.search_k,
                                             max_rollouts=config.max_rollouts, thresholds=config.thresholds,
                                             guided=GUIDED, refit=bool(paper.options["refit"]), seed=config.seed,
                                             **{**fit_kw, **paper.chosen})
    return search.held_out_strategies(table, feature_columns=cols, n_folds=config.folds,
                                      prompt_folds=config.prompt_folds, k=config.search_k,
                                      max_rollouts=config.max_rollouts, thresholds=config.thresholds, guided=GUIDED,
                                      seed=config.seed, **fit_kw)


def intervals(table, ev, cgs, paper_pred, items, seed) -> pd.DataFrame:
    """The bootstrap intervals over unseen concepts (:data:`~.config.BOOTSTRAP_DRAWS`, ``seed``):
    macro-F1 and the predictor's margin over the best of strength-only and CGS in the
    concept-grouped CV and on the paper evaluation's headline subset (when it has 2 or more
    concepts); success and tokens relative to IGS of every strategy but the threshold sweep.
    Columns ``evaluation``, ``quantity``, ``point``, ``low``, ``high``, ``concepts``, ``draws``."""
    kw = dict(n_draws=BOOTSTRAP_DRAWS, seed=seed, level=BOOTSTRAP_LEVEL)
    cv_pred = ev.predictions
    cv = evaluation.bootstrap_f1(table["concept"], table["label"], {
        "predictor": cv_pred["predicted"], "strength-only": cv_pred["strength_only"], "CGS": cgs}, **kw)
    c, p = HEADLINE
    sub = paper_pred[(paper_pred["concepts"] == c).to_numpy() & ((paper_pred["prompts"] == p).to_numpy()
                                                                 if p != "all" else True)]
    rows = [cv.assign(evaluation="cv")]
    if sub["concept"].nunique() >= 2:  # one unseen concept (the smoke preset) has nothing to resample
        paper = evaluation.bootstrap_f1(sub["concept"], sub["label"], {
            "predictor": sub["predicted"], "strength-only": sub["strength_only"], "CGS": sub["cgs"]}, **kw)
        rows.append(paper.assign(evaluation=f"paper {c}/{p}"))
    st_items = items[items["threshold"].isna()]
    sizes = st_items.groupby("group")["concept"].nunique()
    st_items = st_items[st_items["group"].isin(sizes.index[sizes >= 2])]  # a lone concept has nothing to resample
    st = search.bootstrap_strategies(st_items, **kw) if len(st_items) else None
    for ratio in ("success_vs_igs", "tokens_vs_igs") if st is not None else ():
        name = (st["group"].map(lambda g: _group_prefix(g, " ")) + st["strategy"]
                + st["max_rollouts"].map(lambda r: "" if pd.isna(r) else f" R={int(r)}"))
        rows.append(pd.DataFrame({"evaluation": "search", "quantity": name + f" {ratio}", "point": st[ratio],
                                  "low": st[f"{ratio}_low"], "high": st[f"{ratio}_high"], "concepts": st["concepts"],
                                  "draws": BOOTSTRAP_DRAWS}))
    cols = ["evaluation", "quantity", "point", "low", "high", "concepts", "draws"]
    return pd.concat(rows, ignore_index=True)[cols]


def _group_prefix(group: str, sep: str) -> str:
    """How a search group is named in the summary and the intervals: not at all for ``all`` (the
    folds protocol) and the headline's concepts (``unseen``, alphasearch's OOD rows), so the targets
    and the headline read those; ``seen`` + ``sep`` for alphasearch's ID rows."""
    return "" if group in ("all", HEADLINE[0]) else f"{group}{sep}"


def _strategy_summary(strategies: pd.DataFrame) -> dict:
    out = {}
    for r in strategies.itertuples():
        name = _group_prefix(r.group, "/") + r.strategy + (
            "" if pd.isna(r.max_rollouts) else f"_R{int(r.max_rollouts)}") + (
            "" if pd.isna(r.threshold) else f"_t{r.threshold:g}")
        out[name] = {"success_rate": _round(r.success_rate), "tokens_per_item": _round(r.tokens_per_item),
                     "success_vs_igs": _round(r.success_vs_igs), "tokens_vs_igs": _round(r.tokens_vs_igs),
                     "items": int(r.items)}
    return out


def _round(x):
    return None if pd.isna(x) else round(float(x), 4)


def targets(details: dict) -> dict:
    """The study's targets, met or not, from the run's figures (the headline: the paper evaluation
    on unseen concepts, judge-independent features unless ``feature_set`` says otherwise)."""
    key = "/".join(HEADLINE)
    paper = details["paper"]["scores"][key]
    f1 = paper["predictor"]["macro_f1"]
    best_base = max(paper["strength-only"]["macro_f1"], details["paper"]["cgs"][key])
    cv = details["evaluation"]
    cv_base = max(cv["strength-only"]["macro_f1"], cv["CGS"]["macro_f1"])
    guided = {k: v for k, v in details["strategies"].items() if k.startswith("guided-")}
    met = sorted(k for k, v in guided.items() if v["success_vs_igs"] is not None and v["tokens_vs_igs"] is not None
                 and v["success_vs_igs"] >= TARGET_SUCCESS and v["tokens_vs_igs"] <= TARGET_TOKENS)
    return {
        "headline_replays_judge": details["feature_set_replays_judge"],
        f"paper {key}: macro_f1>={TARGET_F1}": f1 >= TARGET_F1,
        f"paper {key}: macro_f1 - max(strength-only, CGS) >= {TARGET_MARGIN}": f1 - best_base >= TARGET_MARGIN,
        f"cv: macro_f1>={TARGET_F1}": cv["predictor"]["macro_f1"] >= TARGET_F1,
        f"cv: macro_f1 - max(strength-only, CGS) >= {TARGET_MARGIN}": cv["predictor"]["macro_f1"] - cv_base
        >= TARGET_MARGIN,
        f"guided: success>={TARGET_SUCCESS:g}*IGS at tokens<={TARGET_TOKENS:g}*IGS": bool(met),
        "guided settings meeting it": met,
    }


def headline(details: dict) -> str:
    """A run's headline figures and the targets (from its ``summary.json``), as text."""
    key = "/".join(HEADLINE)
    p = details["paper"]["scores"]
    cv = details["evaluation"]
    lines = [f"features {details['feature_set']!r}" + (" (REPLAYS THE JUDGE: not a headline)"
                                                       if details["feature_set_replays_judge"] else
                                                       " (judge-independent)")
             + f"; labels by the {JUDGE_NAMES[details['judge']]} judge"]
    for part in ("unseen/all", "unseen/test", "seen/test"):
        s = p[part]
        lines.append(f"paper {part}{' (headline)' if part == key else ''}: macro-F1 predictor "
                     f"{s['predictor']['macro_f1']:.3f}, strength-only {s['strength-only']['macro_f1']:.3f}, "
                     f"CGS {details['paper']['cgs'][part]:.3f}, majority {s['majority']['macro_f1']:.3f}")
    lines.append(f"concept-grouped CV: macro-F1 predictor {cv['predictor']['macro_f1']:.3f}, strength-only "
                 f"{cv['strength-only']['macro_f1']:.3f}, CGS {cv['CGS']['macro_f1']:.3f}")
    ci = details.get("intervals", {})

    def span(key):
        v = ci.get(key)
        return "" if v is None or v["low"] is None else f" [{v['low']:.3f}, {v['high']:.3f}]"

    for name, label in (("cv", "concept-grouped CV"), (f"paper {key}", f"paper {key}")):
        margin = f"{name}: predictor - best of strength-only/CGS"
        if margin in ci:
            lines.append(f"{label}: predictor minus the best of strength-only and CGS {ci[margin]['point']:+.3f}"
                         f"{span(margin)} ({BOOTSTRAP_LEVEL:.0%} interval over {ci[margin]['concepts']} concepts)")
    shown = ("guided-argmax", "guided-feedback", "IGS", "CGS", "TCGS")
    for name, v in details["strategies"].items():
        if name.startswith(shown) and v["success_vs_igs"] is not None:
            q = name.replace("_R", " R=")
            lines.append(f"search {name}: success {v['success_rate']:.3f} ({v['success_vs_igs']:.2f} x IGS"
                         f"{span(f'search: {q} success_vs_igs')}), tokens {v['tokens_vs_igs']:.2f} x IGS"
                         f"{span(f'search: {q} tokens_vs_igs')}")
    lines += [f"target {k}: {'MET' if v is True else 'missed' if v is False else v}"
              for k, v in details["targets"].items() if k != "headline_replays_judge"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reusing a run's features


def _reusable(path: str, config: dict, flag: str = "reuse_features") -> dict:
    """The config of the finished run in ``path`` when this run may reuse its features (no model).

    Raises:
      RunConfigError: ``path`` is not a finished run, or it differs from this run in a key of
        :data:`REUSE_KEYS` (named).
    """
    need = [runs.CONFIG, SUMMARY, TABLES["features"], CONCEPTS_FILE]
    missing = [n for n in need if not os.path.exists(os.path.join(path, n))]
    if missing:
        raise RunConfigError(f"{path} is not a finished run of this experiment (missing {', '.join(missing)}): "
                             f"give the output directory of a finished run to {flag}")
    old = runs.read_run_config(path, flag)
    differ = [k for k in REUSE_KEYS if old.get(k) != config.get(k)]
    if differ:
        raise RunConfigError(f"{path} was run with other {', '.join(differ)} (e.g. {differ[0]}="
                             f"{old.get(differ[0])!r}, here {config.get(differ[0])!r}): reuse a run of the same "
                             f"command, or drop {flag}")
    return old


def _reused_table(path: str, old: dict, config: Config) -> tuple[pd.DataFrame, dict]:
    """A finished run's labelled features table, with the relative features added when it was made
    before they existed (from its concepts' norms), and its summary's entries for steps 1-3."""
    table = pd.read_parquet(os.path.join(path, TABLES["features"]))
    with open(os.path.join(path, SUMMARY)) as f:
        prev = json.load(f)
    if not any(c in table for c in relative_columns(old["steps"])):
        concepts = load_concepts(os.path.join(path, CONCEPTS_FILE))
        rel = relative_features(table, prev["layer"], {c.name: c.residual_norm for c in concepts},
                                {c.name: c.norm for c in concepts})
        table = pd.concat([table.drop(columns=["label", "n_tokens"]), rel, table[["n_tokens", "label"]]], axis=1)
    details = {k: prev[k] for k in REUSED_SUMMARY if k in prev}
    details.update(reused_features=os.path.abspath(path), feature_set=config.feature_set,
                   feature_set_replays_judge=replays_judge(config.feature_set))
    return table, details
