"""The predictor's steps, shared by ``steerjax testbed`` / ``steerjax predictor train`` and the
study (:mod:`steerjax.studies.steerability_prediction.study`).

- a testbed run directory: :func:`run_testbed` makes (or resumes) one, :func:`load_testbed` reads a
  finished one. Layout::

      RUN_DIR/config.json             the rollouts' run config (steerjax.runs)
      RUN_DIR/manifest.jsonl, chunks/ finished chunks of rollouts
      RUN_DIR/concepts.safetensors    the concepts (+ .key.json: what they were built for)
      RUN_DIR/rollouts.parquet        every rollout, written when all are done

- :func:`testbed_concepts`: the one concept cache (a keyed artifact);
- :func:`label_and_featurize`: label a testbed's rollouts, extract the early features of the same
  (prompt, concept, strength) rows, join them; :func:`save_evaluation`: an evaluation's tables and
  figures; :func:`train_predictor`: both, the evaluation, and the saved predictor.

The paper's protocol (seen / unseen concepts, train / validation / test prompts, settings chosen
on validation) is :func:`steerjax.studies.steerability_prediction.evaluation.paper_evaluation`, saved by its
``PaperEvaluation.save``; :func:`train_predictor`'s evaluation is concept-grouped cross-validation.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from steerjax.errors import JudgeError, SteerjaxError
from steerjax.runs import digest, keyed_artifact
from steerjax.steering.core import normalize_layer
from steerjax.studies.steerability_prediction import classifier, evaluation, plots, search
from steerjax.studies.steerability_prediction.concepts import (
    NEUTRAL_PROMPTS,
    UNSTEERED,
    Concept,
    check_scale,
    concepts_from_examples,
    load_concepts,
    make_concepts,
    read_examples,
    save_concepts,
    select,
)
from steerjax.studies.steerability_prediction.config import PROTOCOLS, search_feature_set
from steerjax.studies.steerability_prediction.features import early_features, parse_feature_set
from steerjax.studies.steerability_prediction.judge import HiddenStateJudge
from steerjax.studies.steerability_prediction.testbed import check_options
from steerjax.studies.steerability_prediction.testbed import rollouts as make_rollouts

KEYS = ["prompt_id", "concept", "strength"]
CONFIG, CONCEPTS, ROLLOUTS = "config.json", "concepts.safetensors", "rollouts.parquet"
TESTBED_FILES = (CONCEPTS, CONCEPTS + ".key.json")  # written before the rollouts' config.json


@dataclasses.dataclass
class Testbed:
    """A testbed run: its directory, the rollouts' run config, the concepts and the rollouts."""

    path: str
    config: dict[str, Any]
    concepts: list[Concept]
    rollouts: pd.DataFrame


def load_testbed(path: str) -> Testbed:
    """A finished testbed run directory (from :func:`run_testbed` or ``steerjax testbed``).

    Raises:
      SteerjaxError: a file of the layout is missing (the run is not finished).
    """
    files = {n: os.path.join(path, n) for n in (CONFIG, CONCEPTS, ROLLOUTS)}
    missing = [n for n, p in files.items() if not os.path.exists(p)]
    if missing:
        raise SteerjaxError(f"{path} is not a finished testbed run (missing {', '.join(missing)}): "
                            "run `steerjax testbed ... --out DIR` first, or finish it by running it again")
    with open(files[CONFIG]) as f:
        cfg = json.load(f)
    return Testbed(path, cfg, load_concepts(files[CONCEPTS]), pd.read_parquet(files[ROLLOUTS]))


def run_testbed(model, names: Sequence[str] | None, prompts: Sequence[Any], strengths, *, layer: int,
                max_new_tokens: int, out: str, source: str = "statements", pairs: int = 32,
                positions: str = "all", batch_size: int = 32, temperature: float = 0.0, top_p: float = 1.0,
                top_k: int = 0, scale: str = "norm", examples=None, method: str = "diffmean",
                norm_prompts=NEUTRAL_PROMPTS, seed: int = 0, progress: bool = True) -> Testbed:
    """Make, or resume, the testbed run in ``out``: concepts at block ``layer``, then every prompt
    steered by every concept at every strength (:func:`steerjax.studies.steerability_prediction.rollouts`).

    The concepts are built once and reloaded while their key (model, dtype, names, layer, pairs,
    seed, source; for example banks also their digest and ``method``) matches
    (:func:`steerjax.runs.keyed_artifact`); finished chunks of rollouts are kept
    (:class:`steerjax.runs.chunks.RunDirectory`); a directory holding another run is refused.

    Args:
      names: persona dimensions (``None``: all) for ``source="statements"`` / ``"ab"``; for
        ``source="examples"``, the banks to use (``None``: every bank, in order).
      source: ``"statements"`` or ``"ab"`` (:func:`steerjax.studies.steerability_prediction.concepts.make_concepts`), or
        ``"examples"``: :func:`studies.steerability_prediction.concepts.concepts_from_examples` of ``examples``.
      pairs: statements (or A/B examples) per concept vector; for ``"examples"``, the first
        ``pairs`` texts of each side (0: all).
      examples: a JSONL file or mapping of example banks
        (:func:`steerjax.data.example_banks.read_examples`),
        with ``source="examples"``.
      method: ``"diffmean"`` or ``"probe"``, with ``source="examples"``.
      norm_prompts: with ``source="examples"``, the prompts of the concepts' residual norm
        (``None``: the example texts', e.g. for a model without a tokenizer).
      Others: as :func:`steerjax.studies.steerability_prediction.rollouts` (``scale``: ``"norm"`` or ``"raw"``).

    Raises:
      SteerjaxError: ``examples`` with another source or missing with ``"examples"``; as
        :func:`steerjax.studies.steerability_prediction.rollouts` and the concept builders.
    """

    layer = normalize_layer(layer, model.config.num_layers)
    check_scale(scale)
    check_options(max_new_tokens, batch_size, positions, seed, scale=scale, temperature=temperature, top_p=top_p,
                  top_k=top_k)
    if source == "examples" and examples is None:
        raise SteerjaxError("source='examples' needs examples= (a JSONL file or mapping of example banks)")
    if source != "examples" and examples is not None:
        raise SteerjaxError(f"examples= is used with source='examples', not source={source!r}")
    os.makedirs(out, exist_ok=True)
    concepts = testbed_concepts(model, os.path.join(out, CONCEPTS), names=names, layer=layer, source=source,
                                pairs=pairs, seed=seed, examples=examples, method=method, norm_prompts=norm_prompts,
                                progress=progress)
    table = make_rollouts(model, list(prompts), concepts, strengths, layer=layer, max_new_tokens=max_new_tokens,
                          seed=seed, batch_size=batch_size, positions=positions, temperature=temperature,
                          top_p=top_p, top_k=top_k, scale=scale, progress=progress, run_dir=out)
    table.to_parquet(os.path.join(out, ROLLOUTS), index=False)
    with open(os.path.join(out, CONFIG)) as f:
        return Testbed(out, json.load(f), concepts, table)


def testbed_concepts(model, path: str, *, names: Sequence[str] | None, layer: int, source: str = "statements",
                     pairs: int = 32, seed: int = 0, examples=None, method: str = "diffmean", chat: bool | None = None,
                     norm_prompts=NEUTRAL_PROMPTS, progress: bool = True) -> list[Concept]:
    """The testbed's concepts, built once into ``path`` and reloaded while their key matches
    (:func:`steerjax.runs.keyed_artifact`): model, dtype, names, layer, pairs, seed, source; for
    example banks also their digest, ``method``, the norm prompts' digest and ``chat`` when set.
    The one concept cache of ``steerjax testbed`` and the study.

    Args: as :func:`run_testbed` (``examples``: a JSONL file or mapping of example banks;
      ``chat``: whether the example texts are rendered as chats, ``None``: the builder's default).

    Raises:
      SteerjaxError: an example bank missing for one of ``names``; as the concept builders.
    """

    key = {"model": str(model.source), "dtype": model.dtype, "concepts": list(names) if names else "all",
           "layer": layer, "pairs": pairs, "seed": seed, "source": source}
    if source == "examples":
        banks = read_examples(examples)
        if names:
            missing = [n for n in names if n not in banks]
            if missing:
                raise SteerjaxError(f"no example bank for {missing[:5]} (banks: {len(banks)})")
            banks = {n: banks[n] for n in names}
        n_examples = int(pairs) if pairs else None
        key.update(method=method, examples=digest({n: [list(b.positive), list(b.negative), b.level]
                                                   for n, b in banks.items()}),
                   norm_prompts=None if norm_prompts is None else digest(list(norm_prompts)))
        kw = {} if chat is None else {"chat": chat}
        if chat is not None:
            key["chat"] = chat

        def build():
            return concepts_from_examples(model, banks, layer=layer, method=method, n_examples=n_examples,
                                          norm_prompts=norm_prompts, progress=progress, **kw)
    else:
        def build():
            return make_concepts(model, names, layer=layer, source=source, n=pairs, seed=seed, progress=progress)
    concepts = keyed_artifact(path, key, build, save=lambda c, p: save_concepts(p, c), load=load_concepts)
    return select(concepts, list(banks)) if source == "examples" else concepts


def label_and_featurize(model, concepts, rollouts: pd.DataFrame, *, layer: int, steps, batch_size: int = 32,
                        positions: str = "all", steerboost_compat: bool = False, progress: bool = True):
    """``(labelled, thresholds, data)``: the rollout table with the hidden-state judge's scores and
    labels (``tokens`` dropped), the judge's thresholds, and one row per steered rollout with its
    early features and ``label``.

    The features are read on each rollout's own first tokens (teacher-forced: a rollout sampled
    at a temperature is read on what it sampled, not on a greedy decode).

    Rollouts in the ``"raw"`` scale (a ``scale`` column, :func:`steerjax.studies.steerability_prediction.rollouts`) get
    their features at the same multipliers: each concept's alphas are passed to
    :func:`steerjax.studies.steerability_prediction.early_features` as the equivalent fractions of the residual norm
    (``alpha * |v| / residual_norm``), and the rows keep the alphas as ``strength`` and
    ``multiplier``.

    ``steerboost_compat``: SteerBoost's feature columns exactly as its code leaves them
    (:func:`steerjax.studies.steerability_prediction.early_features`' option of that name).
    """
    prompts = rollouts.drop_duplicates("prompt_id").sort_values("prompt_id")
    if list(prompts["prompt_id"]) != list(range(len(prompts))):
        raise JudgeError("prompt_id must number the rollouts' prompts 0..n-1 (as "
                         "steerjax.studies.steerability_prediction.rollouts does)")
    scale = rollout_scale(rollouts)
    scores, thr = HiddenStateJudge(model, concepts, batch_size=batch_size, progress=progress)(rollouts)
    labelled = pd.concat([rollouts.drop(columns=["tokens"]), scores], axis=1)
    steered = labelled[labelled["concept"] != UNSTEERED]
    own = {(int(p), str(c), float(s)): list(t) for p, c, s, t in
           zip(rollouts["prompt_id"], rollouts["concept"], rollouts["strength"], rollouts["tokens"])}
    kw = dict(layer=layer, steps=steps, batch_size=batch_size, positions=positions,
              steerboost_compat=steerboost_compat, progress=progress)
    if scale == "norm":  # each concept at its rollouts' strengths (the tokens to read exist for those only)
        grid = {str(n): sorted(set(g.astype(float))) for n, g in steered.groupby("concept", sort=False)["strength"]}
        feats, _ = early_features(model, prompts["prompt"].tolist(), [c for c in concepts if c.name in grid], grid,
                                  tokens=own, **kw)
    else:
        feats = _raw_features(model, prompts["prompt"].tolist(), concepts, steered, own, kw)
    data = feats.merge(steered[KEYS + ["label"]], on=KEYS, validate="one_to_one")
    return labelled, thr, data


def rollout_scale(rollouts: pd.DataFrame) -> str:
    """The strength scale of a rollout table: its ``scale`` column (one value), ``"norm"`` for a
    table from before the column existed.

    Raises:
      SteerjaxError: a table mixing scales.
    """
    if "scale" not in rollouts:
        return "norm"
    values = sorted(set(rollouts["scale"].astype(str)))
    if len(values) != 1:
        raise SteerjaxError(f"the rollouts mix strength scales {values}: label and featurize one scale at a time")
    return values[0]


def _raw_features(model, prompts, concepts, steered: pd.DataFrame, own: dict, kw) -> pd.DataFrame:
    """Early features at raw alphas, through their equivalent fractions of the residual norm, read
    on the rollouts' own tokens (``own``: keyed by alpha, re-keyed here by the equivalent strength)."""
    by_name = {c.name: c for c in concepts}
    grid, alphas = {}, {}
    for name, g in steered.groupby("concept", sort=False)["strength"]:
        if name not in by_name:
            raise SteerjaxError(f"rollouts of concept {name!r}, which is not among the concepts given")
        c = by_name[name]
        alphas[name] = np.asarray(sorted(set(g.astype(float))))
        grid[name] = [float(a) * c.norm / c.residual_norm for a in alphas[name]]
    equiv = {name: dict(zip(alphas[name].tolist(), grid[name])) for name in grid}
    tokens = {(p, c, equiv[c][s] if c in equiv else s): t for (p, c, s), t in own.items()}  # unsteered rows as given
    feats, _ = early_features(model, prompts, [by_name[n] for n in grid], grid, tokens=tokens, **kw)
    back = []
    for name, s in zip(feats["concept"], feats["strength"].astype(float)):
        equiv = np.asarray(grid[name])
        i = int(np.argmin(np.abs(equiv - s)))
        if not np.isclose(equiv[i], s, rtol=1e-9, atol=0):
            raise SteerjaxError(f"early features returned strength {s} for {name!r}, not one asked for")
        back.append(float(alphas[name][i]))
    feats = feats.copy()
    feats["strength"] = back
    if "multiplier" in feats:
        feats["multiplier"] = back
    return feats


def save_evaluation(ev: classifier.Evaluation, out: str) -> None:
    """Scores, importance tables and the confusion / importance figures of ``ev`` into ``out``."""
    os.makedirs(out, exist_ok=True)
    ev.scores.to_csv(os.path.join(out, "scores.csv"), index=False)
    ev.importance.to_csv(os.path.join(out, "importance.csv"), index=False)
    by = classifier.importance_by_layer_and_step(ev.importance)
    by.to_csv(os.path.join(out, "importance_by_layer_step.csv"), index=False)
    plots.confusion_matrix(ev.confusion, os.path.join(out, "confusion.png"))
    plots.feature_importance(ev.importance, os.path.join(out, "importance.png"))
    plots.layer_step_importance(by, os.path.join(out, "importance_layer_step.png"))


@dataclasses.dataclass
class PredictorTraining:
    """What :func:`train_predictor` made: the predictor, the labelled rollouts, the judge's
    thresholds, the concept-grouped evaluation on unseen concepts (None when skipped) and the
    paper's evaluation (``protocol="paper"``, else None)."""

    predictor: classifier.SteerabilityPredictor
    labels: pd.DataFrame
    thresholds: Any
    evaluation: classifier.Evaluation | None
    paper: Any = None
    #: the strength search against IGS / CGS / TCGS (:func:`.search.held_out_strategies`), with
    #: ``search_prompt_folds``: ``(items, summary)``
    strategies: tuple[pd.DataFrame, pd.DataFrame] | None = None


def check_training(testbed: Testbed, *, steps: Sequence[int], search_k: int, folds: int,
                   feature_set: str | None = None, protocol: str = "cv", search_prompt_folds: int = 0,
                   max_rollouts: Sequence[int] = (1, 2, 3), names: dict[str, str] | None = None) -> None:
    """The checks of :func:`train_predictor` that need no model (run them before loading one).

    ``names`` maps the parameters (``steps``, ``search_k``, ``folds``, ``protocol``) to how the
    caller's user spells them (the CLI: its flags) for the messages.

    Raises:
      SteerjaxError: ``folds == 1``, more ``folds`` than the testbed has concepts, ``search_k``
        below every step, an unknown protocol, or a testbed too small for the paper's protocol;
        PredictorError: an unknown feature set.
    """

    n = {k: k for k in ("steps", "search_k", "folds", "protocol", "search_prompt_folds", "max_rollouts")} | dict(
        names or {})
    if folds == 1:
        raise SteerjaxError(f"{n['folds']} must be 0 (no evaluation) or >= 2 (concept-grouped folds), got 1")
    n_concepts = len(testbed.concepts)
    if folds > n_concepts:  # each fold holds out at least one concept (found here, not after the features)
        raise SteerjaxError(f"{n['folds']} {folds}: the testbed has {n_concepts} concepts, and each concept-grouped "
                            f"fold needs one; pass {n['folds']} {n_concepts} or fewer (0: no evaluation)")
    if search_k < min(steps):
        raise SteerjaxError(f"{n['search_k']} {search_k} is below every {n['steps']} value {list(steps)}: the "
                            "predictor would have no features; use one of the steps")
    if protocol not in PROTOCOLS:
        raise SteerjaxError(f"{n['protocol']} must be one of {PROTOCOLS}, got {protocol!r}")
    parse_feature_set(feature_set or classifier.DEFAULT_FEATURE_SET)  # an unknown name lists the known ones
    if search_prompt_folds:
        n_prompts = testbed.rollouts["prompt_id"].nunique()
        if folds < 2:
            raise SteerjaxError(f"{n['search_prompt_folds']} searches unseen concepts: it needs {n['folds']} >= 2")
        if not 2 <= search_prompt_folds <= n_prompts:
            raise SteerjaxError(f"{n['search_prompt_folds']} must be in 2..{n_prompts} (the testbed's prompts), got "
                                f"{search_prompt_folds}")
        if not max_rollouts or any(int(r) != r or r < 1 for r in max_rollouts):
            raise SteerjaxError(f"{n['max_rollouts']} must be positive integers, got {list(max_rollouts)}")
    if protocol == "paper":
        n_concepts, n_prompts = len(testbed.concepts), testbed.rollouts["prompt_id"].nunique()
        if n_concepts < 2 or n_prompts < 3:
            raise SteerjaxError(f"{n['protocol']} paper needs 2 or more concepts (seen and unseen) and 3 or more "
                                f"prompts (train, validation, test); the testbed has {n_concepts} and {n_prompts}")


def train_predictor(model, testbed: Testbed, *, out: str, steps: Sequence[int] = (1, 2, 4, 8), search_k: int = 2,
                    folds: int = 5, iterations: int = 300, batch_size: int = 32, seed: int = 0,
                    feature_set: str | None = None, protocol: str = "cv", search_prompt_folds: int = 0,
                    max_rollouts: Sequence[int] = (1, 2, 3), steerboost_compat: bool = False,
                    progress: bool = True) -> PredictorTraining:
    """Label a testbed's rollouts (hidden-state judge), extract their early features, evaluate, fit
    the predictor on the features of the first ``search_k`` steps and save it, with its tables and
    figures, in ``out``.

    Args:
      feature_set: the features (:data:`steerjax.studies.steerability_prediction.features.FEATURE_SETS`, combined with
        ``+``); default the judge-independent :data:`~studies.steerability_prediction.classifier.DEFAULT_FEATURE_SET`.
      protocol: ``"cv"``: concept-grouped cross-validation on unseen concepts (``folds >= 2``; 0
        skips it), next to the CGS baseline as :func:`steerjax.studies.steerability_prediction.study.run`
        reports it; ``"paper"``: the paper's evaluation
        (:func:`~steerjax.studies.steerability_prediction.evaluation.paper_evaluation`,
        saved in ``out/paper``; with ``folds >= 2`` the concept-grouped CV as its extra).
      search_prompt_folds: with 2 or more, the strength search on unseen concepts x held-out
        prompts (``folds`` concept folds x this many prompt folds) against IGS, CGS and TCGS, as the
        study runs it (:func:`.search.held_out_strategies`, budgets ``max_rollouts``):
        ``strategies.csv``, ``strategy_items.parquet``, ``strategies.png``.
      steerboost_compat: SteerBoost's feature columns as its code leaves them
        (:func:`~steerjax.studies.steerability_prediction.early_features`); recorded in the saved
        predictor, so :func:`~.search.guided_search` computes its features the same way.

    Raises:
      SteerjaxError, PredictorError: see :func:`check_training`.
    """

    feature_set = feature_set or classifier.DEFAULT_FEATURE_SET
    check_training(testbed, steps=steps, search_k=search_k, folds=folds, feature_set=feature_set, protocol=protocol,
                   search_prompt_folds=search_prompt_folds, max_rollouts=max_rollouts)
    cfg = testbed.config
    os.makedirs(out, exist_ok=True)
    labelled, thr, data = label_and_featurize(model, testbed.concepts, testbed.rollouts, layer=cfg["layer"],
                                              steps=steps, batch_size=batch_size,
                                              positions=cfg.get("positions", "all"),
                                              steerboost_compat=steerboost_compat, progress=progress)
    labelled.to_parquet(os.path.join(out, "labels.parquet"), index=False)
    data.to_parquet(os.path.join(out, "features.parquet"), index=False)
    steered = labelled[labelled["concept"] != UNSTEERED]
    plots.labels_by_strength(steered, os.path.join(out, "labels_by_strength.png"))
    cols = classifier.feature_columns_of(data, feature_set=feature_set)
    fit_kw = dict(iterations=iterations, seed=seed)
    ev = paper = None
    if protocol == "paper":
        levels = evaluation.concept_levels(testbed.concepts)
        paper = evaluation.paper_evaluation(data, feature_columns=cols, levels=levels, cv_folds=folds, seed=seed)
        paper, _ = evaluation.paper_with_cgs(paper, data)
        ev = paper.cv
    elif folds >= 2:
        ev = classifier.evaluate(data, feature_columns=cols, n_folds=folds, progress=progress, **fit_kw)
    if ev is not None:  # with the CGS baseline, as the study reports it
        ev, _ = evaluation.cv_with_cgs(ev, data)
        if paper is not None:
            paper = dataclasses.replace(paper, cv=ev)
        save_evaluation(ev, out)
    if paper is not None:
        paper.save(os.path.join(out, "paper"))
    strategies = None
    if search_prompt_folds:
        table = data if "n_tokens" in data else data.merge(steered[KEYS + ["n_tokens"]], on=KEYS,
                                                           validate="one_to_one")
        strategies = search.held_out_strategies(
            table, feature_columns=classifier.feature_columns_of(data, feature_set=search_feature_set(feature_set)),
            n_folds=folds, prompt_folds=search_prompt_folds, k=search_k, max_rollouts=max_rollouts, seed=seed,
            iterations=iterations)
        strategies[0].to_parquet(os.path.join(out, "strategy_items.parquet"), index=False)
        strategies[1].to_csv(os.path.join(out, "strategies.csv"), index=False)
        plots.strategy_tradeoff(strategies[1], os.path.join(out, "strategies.png"))
    search_cols = [c for c in cols if (k := classifier.feature_step(c)) is None or k <= search_k]
    pred = classifier.fit(data, feature_columns=search_cols, **fit_kw)
    pred.meta.update(testbed=os.path.abspath(testbed.path), model=cfg["model"], dtype=cfg.get("dtype", "float32"),
                     layer=cfg["layer"], positions=cfg.get("positions", "all"), scale=cfg.get("scale", "norm"),
                     steps=list(steps), search_k=search_k, feature_set=feature_set, protocol=protocol,
                     strengths=sorted(set(steered["strength"])), max_new_tokens=cfg.get("max_new_tokens"),
                     thresholds=thr.to_dict(), steerboost_compat=bool(steerboost_compat))
    pred.save(out)
    return PredictorTraining(pred, labelled, thr, ev, paper, strategies)
