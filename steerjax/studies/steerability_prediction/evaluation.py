"""The predictor evaluated as Fan et al. evaluate it: seen and unseen concepts, held-out prompts,
hyperparameters chosen on validation.

:func:`paper_split` assigns concepts and prompts, :func:`paper_evaluation` runs the protocol on a
features table (one row per prompt x concept x strength with a ``label``, as
:func:`steerjax.studies.steerability_prediction.pipeline.label_and_featurize` makes):

1. **Concepts**: seen / unseen, ``unseen_fraction`` of them unseen (0.2: 120 / 30 of 150),
   stratified by abstraction level when levels are given: within each level (in order of first
   appearance) the concepts (in the given order) are permuted by
   ``numpy.random.default_rng(seed)`` and the first ``n - round(n * unseen_fraction)`` are seen.
   With SteerBoost's 150 concepts in id order and its levels this is its ``stratified_shuffle``
   partition (``xgb/concept_partition.py``: 40 seen + 10 unseen per level).
2. **Prompts**: train / validation / test by ``prompt_fractions`` (0.7 / 0.1 / 0.2; sizes
   ``floor(n * f)``, at least one each, test and validation first, train the rest), or by
   ``prompt_sizes=(test_size, val_size)`` as SteerBoost's ``xgb/train_weighted_search.py`` sizes
   them (``n_test = max(1, int(n * test_size))``, ``n_val = max(1, int((n - n_test) * val_size))``,
   train the rest: its defaults (0.3, 0.2) give 28 / 7 / 15 of 50). A permutation
   of the prompt ids by ``numpy.random.RandomState(seed)``: one for every concept
   (``prompt_split="shared"``, the default: a test prompt is never a training prompt of any
   concept) or one per concept, seen concepts first in order, then unseen ones
   (``"per-concept"``: SteerBoost's ``xgb/train_weighted_search.py``, where another concept may
   train on a concept's test prompt).
3. **Hyperparameters**: every CatBoost setting of ``grid`` (depth x iterations x learning rate)
   is fitted on seen concepts x train prompts (:func:`steerjax.studies.steerability_prediction.classifier.fit`, class-
   balanced) and scored by macro-F1 on seen concepts x validation prompts; the best (the first
   on a tie) is kept. Test rows are never looked at. ``refit=False`` (SteerBoost) keeps the
   model as fitted on the train prompts; ``refit=True`` refits on train + validation.
4. **Scores**: macro-F1, accuracy and per-class F1 (precision, recall, support in
   ``per_class``) for seen concepts x test prompts, unseen concepts x test prompts (held-out
   prompts and concepts) and unseen concepts x all prompts (SteerBoost's OOD rows), next to
   ``strength-only`` and ``multiplier-only`` CatBoost baselines (the chosen setting on one
   column), ``majority`` (the training rows' most common label) and, for seen concepts only,
   ``concept-strength`` (the most common training label of the row's concept at its strength:
   what a per-concept grid search on the training prompts knows).

Concept-grouped cross-validation (:func:`steerjax.studies.steerability_prediction.classifier.evaluate`) is kept as an
extra (``cv_folds``). Macro-F1 is :func:`steerjax.studies.steerability_prediction.classifier.macro_f1` (over the
classes present in the true labels; scikit-learn's default, which SteerBoost uses, averages over
the classes in the true or predicted labels, and counts an undefined F1 as 0).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from steerjax.errors import PredictorError
from steerjax.progress import tqdm
from steerjax.runs import write_json
from steerjax.studies.steerability_prediction import classifier, plots
from steerjax.studies.steerability_prediction.classifier import DEFAULT_GRID, GRID_KEYS, grid_settings  # noqa: F401
from steerjax.studies.steerability_prediction.judge import LABELS

PROMPT_SPLITS = ("shared", "per-concept")
PROMPT_PARTS = ("train", "validation", "test")
#: the scored subsets: (concepts, prompts)
SUBSETS = (("seen", "test"), ("unseen", "test"), ("unseen", "all"))


@dataclasses.dataclass
class PaperSplit:
    """Where each concept and prompt goes.

    Attributes:
      concepts: ``concept, level, part`` (``"seen"`` or ``"unseen"``), in the given concept order.
      prompts: ``concept, prompt_id, part`` (``"train"``, ``"validation"``, ``"test"``), one row
        per concept x prompt.
    """

    concepts: pd.DataFrame
    prompts: pd.DataFrame

    def names(self, part: str) -> list[str]:
        """The concepts of ``part`` (``"seen"`` or ``"unseen"``), in order."""
        return self.concepts.loc[self.concepts["part"] == part, "concept"].tolist()

    def rows(self, table: pd.DataFrame, concepts: str, prompts: str) -> np.ndarray:
        """Boolean mask of ``table``'s rows in concept part ``concepts`` and prompt part ``prompts``
        (``"all"``: every prompt)."""
        names = set(self.names(concepts))
        mask = table["concept"].isin(names).to_numpy()
        if prompts == "all":
            return mask
        keys = self.prompts.loc[self.prompts["part"] == prompts, ["concept", "prompt_id"]]
        wanted = set(zip(keys["concept"], keys["prompt_id"].astype(int)))
        at = np.fromiter(((c, int(p)) in wanted for c, p in zip(table["concept"], table["prompt_id"])), bool,
                         count=len(table))
        return mask & at


def paper_split(concepts: Sequence[str], prompt_ids: Sequence[int], *, levels: Mapping[str, str] | None = None,
                unseen_fraction: float = 0.2, prompt_fractions: Sequence[float] = (0.7, 0.1, 0.2),
                prompt_split: str = "shared", prompt_sizes: Sequence[float] | None = None,
                seed: int = 0) -> PaperSplit:
    """Seen / unseen concepts and train / validation / test prompts (see the module docstring).

    Args:
      concepts: concept names, in order (the order the permutations apply to).
      prompt_ids: the prompts' ids.
      levels: concept -> abstraction level, for a split stratified by level (every concept needs
        one); None: one group.
      unseen_fraction: share of each level left unseen, in (0, 1).
      prompt_fractions: train, validation, test shares (positive, summing to 1).
      prompt_split: ``"shared"`` or ``"per-concept"``.
      prompt_sizes: SteerBoost's ``(test_size, val_size)`` (test a share of all prompts,
        validation a share of the rest, each truncated as its ``int()`` does, at least 1);
        replaces ``prompt_fractions``. None: ``prompt_fractions``.

    Raises:
      PredictorError: too few concepts (two per level: one seen, one unseen) or prompts (three:
        one per part), repeated names or ids, a concept without a level, bad fractions.
    """
    concepts = [str(c) for c in concepts]
    if len(set(concepts)) != len(concepts):
        raise PredictorError("concept names repeat: give each concept once")
    prompt_ids = sorted(int(p) for p in prompt_ids)
    if len(set(prompt_ids)) != len(prompt_ids):
        raise PredictorError("prompt ids repeat: give each prompt once")
    if not 0 < unseen_fraction < 1:
        raise PredictorError(f"unseen_fraction must be in (0, 1), got {unseen_fraction!r}")
    fractions = [float(f) for f in prompt_fractions]
    if len(fractions) != 3 or min(fractions) <= 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise PredictorError(f"prompt_fractions must be three positive shares (train, validation, test) summing "
                             f"to 1, got {list(prompt_fractions)}")
    if prompt_split not in PROMPT_SPLITS:
        raise PredictorError(f"prompt_split={prompt_split!r}: use one of {PROMPT_SPLITS}")
    if levels is not None:
        missing = [c for c in concepts if levels.get(c) is None]
        if missing:
            raise PredictorError(f"concepts {missing[:5]} have no level: give every concept a level, or levels=None "
                                 "for an unstratified split")
    groups: dict[str, list[str]] = {}
    for c in concepts:
        groups.setdefault("all" if levels is None else str(levels[c]), []).append(c)
    small = {g: len(m) for g, m in groups.items() if len(m) < 2}
    if small:
        where = "" if levels is None else f" per level (level sizes: {small})"
        raise PredictorError(f"the seen/unseen split needs at least 2 concepts{where}: one seen and one unseen; "
                             f"got {len(concepts)} concepts")
    rng = np.random.default_rng(seed)
    part = {}
    for members in groups.values():
        n = len(members)
        n_unseen = min(n - 1, max(1, math.floor(n * unseen_fraction + 0.5)))
        order = rng.permutation(n)
        for rank, i in enumerate(order):
            part[members[i]] = "seen" if rank < n - n_unseen else "unseen"
    concept_table = pd.DataFrame({"concept": concepts,
                                  "level": [None if levels is None else str(levels[c]) for c in concepts],
                                  "part": [part[c] for c in concepts]})

    n = len(prompt_ids)
    if prompt_sizes is None:
        n_test = max(1, math.floor(n * fractions[2] + 1e-9))
        n_val = max(1, math.floor(n * fractions[1] + 1e-9))
    else:
        sizes = [float(f) for f in prompt_sizes]
        if len(sizes) != 2 or not all(0 < f < 1 for f in sizes):
            raise PredictorError(f"prompt_sizes must be SteerBoost's (test_size, val_size), two shares in (0, 1), "
                                 f"got {list(prompt_sizes)}")
        fractions = sizes  # for the message below
        n_test = max(1, int(n * sizes[0]))
        n_val = max(1, int((n - n_test) * sizes[1]))
    if n - n_test - n_val < 1:
        raise PredictorError(f"the train/validation/test prompt split needs at least 3 prompts (one per part); got "
                             f"{n} (with shares {fractions}: {n_test} test, {n_val} validation, "
                             f"{n - n_test - n_val} train)")
    prng = np.random.RandomState(seed)

    def assign():
        perm = np.asarray(prompt_ids)
        prng.shuffle(perm)
        return {int(p): ("test" if r < n_test else "validation" if r < n_test + n_val else "train")
                for r, p in enumerate(perm)}

    order = [c for c in concepts if part[c] == "seen"] + [c for c in concepts if part[c] == "unseen"]
    if prompt_split == "shared":
        shared = assign()
        by_concept = {c: shared for c in order}
    else:
        by_concept = {c: assign() for c in order}
    rows = [(c, p, by_concept[c][p]) for c in concepts for p in prompt_ids]
    return PaperSplit(concept_table, pd.DataFrame(rows, columns=["concept", "prompt_id", "part"]))


@dataclasses.dataclass
class PaperEvaluation:
    """What :func:`paper_evaluation` found.

    Attributes:
      scores: one row per (``concepts``, ``prompts``, ``model``): ``n``, ``macro_f1``,
        ``accuracy``, ``f1_<class>``.
      per_class: one row per (``concepts``, ``prompts``, ``model``, ``class``): ``precision``,
        ``recall``, ``f1``, ``support``.
      params: the searched grid, one row per setting: ``depth, iterations, learning_rate,
        validation_macro_f1, validation_accuracy, chosen``.
      chosen: the chosen setting (``depth``, ``iterations``, ``learning_rate``).
      split: the :class:`PaperSplit`.
      predictions: the scored rows (ids, ``label``, ``concepts``, ``prompts`` parts, ``predicted``,
        each baseline's prediction, ``p_<class>``).
      confusion: ``"{concepts}/{prompts}"`` -> the predictor's confusion matrix.
      importance: the final model's feature importance.
      predictor: the final model.
      cv: concept-grouped cross-validation (``cv_folds >= 2``), else None.
      options: the arguments that shaped the run.
    """

    scores: pd.DataFrame
    per_class: pd.DataFrame
    params: pd.DataFrame
    chosen: dict
    split: PaperSplit
    predictions: pd.DataFrame
    confusion: dict
    importance: pd.DataFrame
    predictor: classifier.SteerabilityPredictor
    cv: classifier.Evaluation | None
    options: dict

    def summary(self) -> dict:
        """``{"{concepts}/{prompts}": {model: {macro_f1, accuracy, f1_<class>}}}``, the chosen
        setting, its validation macro-F1 and the split's sizes."""
        out: dict = {}
        for (c, p), g in self.scores.groupby(["concepts", "prompts"], sort=False):
            out[f"{c}/{p}"] = {r["model"]: {k: round(float(r[k]), 4) for k in ["macro_f1", "accuracy"] +
                                            [f"f1_{x}" for x in LABELS]} for _, r in g.iterrows()}
        best = self.params[self.params["chosen"]].iloc[0]
        sizes = self.split.concepts["part"].value_counts().to_dict()
        # every concept has as many prompts in each part: count them on the first one
        first = self.split.prompts[self.split.prompts["concept"] == self.split.prompts["concept"].iloc[0]]
        return {"scores": out, "chosen": dict(self.chosen),
                "validation_macro_f1": round(float(best["validation_macro_f1"]), 4),
                "concepts": {k: int(sizes.get(k, 0)) for k in ("seen", "unseen")},
                "prompts_per_concept": {k: int((first["part"] == k).sum()) for k in PROMPT_PARTS},
                "options": dict(self.options)}

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables :meth:`save` writes, by file stem: ``scores``, ``per_class``, ``params``,
        ``split_concepts``, ``split_prompts``, ``predictions``, ``importance``,
        ``confusion_{concepts}_{prompts}`` (indexed by the true label) and ``cv_scores`` with
        cross-validation."""
        out = {"scores": self.scores, "per_class": self.per_class, "params": self.params,
               "split_concepts": self.split.concepts, "split_prompts": self.split.prompts,
               "predictions": self.predictions, "importance": self.importance}
        out.update({"confusion_" + key.replace("/", "_"): conf for key, conf in self.confusion.items()})
        if self.cv is not None:
            out["cv_scores"] = self.cv.scores
        return out

    def save(self, out: str) -> None:
        """Tables and figures into ``out``: ``scores.csv``, ``per_class.csv``, ``params.csv``,
        ``split_concepts.csv``, ``split_prompts.csv``, ``predictions.parquet``, ``importance.csv``,
        ``confusion_{concepts}_{prompts}.csv/.png``, ``summary.json``, and ``cv_scores.csv`` with
        cross-validation."""

        write_tables(out, self.tables())
        confusion_figures(out, self.confusion)
        write_json(os.path.join(out, "summary.json"), self.summary())


def write_tables(out: str, tables: Mapping[str, pd.DataFrame]) -> None:
    """Each table into ``out/<stem>.csv`` (``predictions``: parquet; ``confusion_*`` with their index)."""
    os.makedirs(out, exist_ok=True)
    for stem, table in tables.items():
        if stem == "predictions":
            table.to_parquet(os.path.join(out, stem + ".parquet"), index=False)
        else:
            table.to_csv(os.path.join(out, stem + ".csv"), index=stem.startswith("confusion_"))


def confusion_figures(out: str, confusion: Mapping[str, pd.DataFrame]) -> list[str]:
    """One confusion-matrix figure per scored subset (``"{concepts}/{prompts}"`` -> matrix) in ``out``."""

    return [plots.confusion_matrix(conf, os.path.join(out, "confusion_" + key.replace("/", "_") + ".png"),
                                   title=f"Predictor: {key.replace('/', ' concepts, ')} prompts")
            for key, conf in confusion.items()]


def paper_evaluation(table: pd.DataFrame, *, feature_columns: Sequence[str] | None = None,
                     levels: Mapping[str, str] | None = None, unseen_fraction: float = 0.2,
                     prompt_fractions: Sequence[float] = (0.7, 0.1, 0.2), prompt_split: str = "shared",
                     prompt_sizes: Sequence[float] | None = None, grid: Mapping[str, Sequence] | None = None,
                     refit: bool = False, cv_folds: int = 0,
                     label_col: str = "label", seed: int = 0, threads: int | None = None,
                     progress: bool = True) -> PaperEvaluation:
    """The paper's evaluation of the predictor on a features table (see the module docstring).

    Args:
      table: one row per (``prompt_id``, ``concept``, ``strength``) with features and ``label``.
      feature_columns: the predictor's inputs; default
        :func:`steerjax.studies.steerability_prediction.classifier.feature_columns_of` of the table.
      levels: concept -> abstraction level (stratifies the split; e.g. from
        :func:`steerjax.data.steerboost.steerboost_concepts` or the concepts'
        ``metadata["level"]``, :func:`concept_levels`). Its keys are the concepts evaluated, in
        order; every one needs rows. None: the table's concepts, sorted, unstratified.
      unseen_fraction, prompt_fractions, prompt_split, prompt_sizes: the split (:func:`paper_split`).
      grid: ``{"depth": [...], "iterations": [...], "learning_rate": [...]}`` (a key left out
        keeps :func:`~steerjax.studies.steerability_prediction.classifier.fit`'s default); default :data:`DEFAULT_GRID`.
      refit: refit the chosen setting on train + validation prompts (default: keep the model
        fitted on train prompts, as SteerBoost).
      cv_folds: also run concept-grouped cross-validation with this many folds (0: skip).
      seed: the split's and CatBoost's seed.

    Raises:
      PredictorError: a table without the columns or labels needed, a single strength (a
        strength-only baseline and the search for a strength need two or more), a concept of the
        split without rows (or without rows at its test prompts), too few concepts or prompts
        for the split (:func:`paper_split`), a bad grid, a training part with a single label.
    """
    need = {"prompt_id", "concept", "strength", label_col}
    missing = sorted(need - set(table.columns))
    if missing:
        raise PredictorError(f"the table lacks columns {missing}: give the joined features and labels "
                             "(steerjax.studies.steerability_prediction.pipeline.label_and_featurize)")
    cols = list(feature_columns) if feature_columns is not None else classifier.feature_columns_of(table)
    classifier.check_table(table, cols, label_col)
    _check_numeric(table, cols)
    strengths = np.unique(table["strength"].to_numpy(np.float64))
    if len(strengths) < 2:
        raise PredictorError(f"the table holds a single strength ({strengths.tolist()}): the paper's evaluation "
                             "compares the predictor with a strength-only baseline and serves a search over "
                             "strengths, so give rollouts on a grid of two or more strengths")
    settings = grid_settings(grid)
    table_concepts = sorted(set(table["concept"].astype(str)))
    if levels is not None:
        concepts = [str(c) for c in levels]
        extra = sorted(set(table_concepts) - set(concepts))
        if extra:
            raise PredictorError(f"concepts {extra[:5]} have rows but no level: give every concept of the table a "
                                 "level (or levels=None)")
    else:
        concepts = table_concepts
    absent = [c for c in concepts if c not in set(table_concepts)]
    if absent:
        raise PredictorError(f"concepts {absent[:5]} have no rows in the table (no rollouts or features): run "
                             "them, or leave them out of levels")
    split = paper_split(concepts, sorted(set(table["prompt_id"].astype(int))), levels=levels,
                        unseen_fraction=unseen_fraction, prompt_fractions=prompt_fractions, prompt_sizes=prompt_sizes,
                        prompt_split=prompt_split, seed=seed)
    for part in ("seen", "unseen"):
        test = table[split.rows(table, part, "test")]
        lacking = sorted(set(split.names(part)) - set(test["concept"].astype(str)))
        if lacking:
            raise PredictorError(f"{part} concepts {lacking[:5]} have no rows at their test prompts: the test split "
                                 "needs rollouts of every concept on its test prompts (run the missing prompts)")
    train = table[split.rows(table, "seen", "train")]
    val = table[split.rows(table, "seen", "validation")]
    for name, part in (("train", train), ("validation", val)):
        if part.empty:
            raise PredictorError(f"seen concepts have no rows at their {name} prompts: run them")
    if train[label_col].nunique() < 2:
        raise PredictorError("the seen concepts' training rows have a single label: more concepts, prompts or a "
                             "wider strength grid are needed")

    y_val = val[label_col].astype(str).to_numpy()
    rows, best, best_model = [], None, None
    for setting in tqdm(settings, desc="hyperparameters", unit="fit", disable=not progress or None):
        m = classifier.fit(train, feature_columns=cols, label_col=label_col, seed=seed, threads=threads, **setting)
        pred = m.predict(val).to_numpy()
        score = classifier.macro_f1(y_val, pred)
        rows.append({**{k: setting.get(k) for k in GRID_KEYS}, "validation_macro_f1": score,
                     "validation_accuracy": float(np.mean(pred == y_val))})
        if best is None or score > rows[best]["validation_macro_f1"]:
            best, best_model = len(rows) - 1, m
    params = pd.DataFrame(rows, columns=list(GRID_KEYS) + ["validation_macro_f1", "validation_accuracy"])
    params["chosen"] = np.arange(len(params)) == best
    chosen = dict(settings[best])
    fit_rows = pd.concat([train, val]) if refit else train
    model = (classifier.fit(fit_rows, feature_columns=cols, label_col=label_col, seed=seed, threads=threads, **chosen)
             if refit else best_model)
    baselines = [("strength-only", "strength_only", "strength")]
    if "multiplier" in table:
        baselines.append(("multiplier-only", "multiplier_only", "multiplier"))
    base_models = {col: classifier.fit(fit_rows, feature_columns=[feature], label_col=label_col, seed=seed,
                                       threads=threads, **chosen)
                   for _, col, feature in baselines}
    majority = fit_rows[label_col].astype(str).value_counts().idxmax()

    scored = split.rows(table, "seen", "test") | split.rows(table, "unseen", "all")
    sub = table[scored]
    ids = [c for c in classifier.ID_COLUMNS if c in sub]
    pred = sub[ids].copy()
    part_of = dict(zip(split.concepts["concept"], split.concepts["part"]))
    prompt_part = {(c, int(p)): x for c, p, x in split.prompts.itertuples(index=False)}
    pred["concepts"] = [part_of[str(c)] for c in sub["concept"]]
    pred["prompts"] = [prompt_part[(str(c), int(p))] for c, p in zip(sub["concept"], sub["prompt_id"])]
    proba = model.predict_proba(sub).reindex(columns=list(LABELS), fill_value=0.0)
    pred["predicted"] = proba.idxmax(axis=1).to_numpy()
    for _, col, _ in baselines:
        pred[col] = base_models[col].predict(sub).to_numpy()
    pred["majority"] = majority
    pred["concept_strength"] = concept_strength(fit_rows, sub, label_col=label_col, majority=majority)
    pred.loc[pred["concepts"] != "seen", "concept_strength"] = ""
    for c in LABELS:
        pred[f"p_{c}"] = proba[c].to_numpy()

    models = [("predictor", "predicted")] + [(name, col) for name, col, _ in baselines] + [("majority", "majority")]
    score_rows, class_rows, confusion = [], [], {}
    for concepts_part, prompts_part in SUBSETS:
        mask = (pred["concepts"] == concepts_part).to_numpy()
        if prompts_part != "all":
            mask = mask & (pred["prompts"] == prompts_part).to_numpy()
        g = pred[mask]
        y = g[label_col].astype(str).to_numpy()
        for name, col in models + ([("concept-strength", "concept_strength")] if concepts_part == "seen" else []):
            f1 = classifier.f1_scores(y, g[col])
            score_rows.append({"concepts": concepts_part, "prompts": prompts_part, "model": name, "n": len(g),
                               "macro_f1": classifier.macro_f1(y, g[col]), "accuracy": float(np.mean(y == g[col])),
                               **{f"f1_{c}": f1[c] for c in LABELS}})
            class_rows += _per_class(y, g[col].to_numpy(), concepts_part, prompts_part, name)
        confusion[f"{concepts_part}/{prompts_part}"] = classifier.confusion(y, g["predicted"])
    importance = pd.DataFrame({"feature": cols, "importance": np.asarray(model.model.get_feature_importance(),
                                                                         float)})
    importance = importance.sort_values("importance", ascending=False).reset_index(drop=True)
    cv = None
    if cv_folds:
        cv = classifier.evaluate(table, feature_columns=cols, n_folds=int(cv_folds), seed=seed, label_col=label_col,
                                 progress=progress, threads=threads, **chosen)
    options = {"feature_columns": len(cols), "levels": levels is not None, "unseen_fraction": unseen_fraction,
               "prompt_fractions": list(prompt_fractions), "prompt_split": prompt_split,
               "prompt_sizes": None if prompt_sizes is None else list(prompt_sizes), "refit": bool(refit),
               "cv_folds": int(cv_folds), "seed": int(seed), "n_settings": len(settings)}
    model.meta.update(chosen=chosen, protocol="paper", refit=bool(refit))
    return PaperEvaluation(pd.DataFrame(score_rows), pd.DataFrame(class_rows), params, chosen, split,
                           pred.reset_index(drop=True), confusion, importance, model, cv, options)


def concept_levels(concepts) -> dict[str, str] | None:
    """``{name: level}`` from concepts' ``metadata["level"]`` (as
    :func:`steerjax.studies.steerability_prediction.concepts.concepts_from_examples` records it), in order; None when
    no concept has a level.

    Raises:
      PredictorError: some concepts have a level and others not.
    """
    levels = {c.name: c.metadata.get("level") for c in concepts}
    known = [n for n, v in levels.items() if v is not None]
    if not known:
        return None
    if len(known) != len(levels):
        raise PredictorError(f"concepts {[n for n, v in levels.items() if v is None][:5]} have no level while others "
                             "do: give every concept a level, or none")
    return {n: str(v) for n, v in levels.items()}


def _check_numeric(table, cols) -> None:
    for c in ["strength"] + (["multiplier"] if "multiplier" in table else []) + list(cols):
        if not pd.api.types.is_numeric_dtype(table[c]) or not np.isfinite(table[c].to_numpy(np.float64)).all():
            raise PredictorError(f"column {c!r} is not numeric and finite: features must be numbers")


def concept_strength(counted: pd.DataFrame, rows: pd.DataFrame | None = None, *, label_col: str = "label",
                     majority: str | None = None) -> np.ndarray:
    """What a concept-level grid search knows: per row of ``rows``, the most common label of its
    (``concept``, ``strength``) among the ``counted`` rows at OTHER prompts; where there is none,
    of its strength among the counted rows of other (prompt, concept) pairs; else ``majority``
    (default: the counted rows' most common label). Ties: the label named first in :data:`LABELS`.

    ``rows=None`` scores ``counted`` itself, leaving each row's own prompt out (CGS: the label of a
    concept at a strength learnt on its other prompts). The paper evaluation's ``concept-strength``
    baseline counts the training prompts' rows for the test prompts' rows.

    Raises:
      PredictorError: a table without ``prompt_id``, ``concept``, ``strength`` or ``label_col``;
        unknown labels among the counted rows.
    """
    rows = counted if rows is None else rows
    keys = ["prompt_id", "concept", "strength"]
    for name, t, need in (("counted", counted, keys + [label_col]), ("rows", rows, keys)):
        missing = [c for c in need if c not in t]
        if missing:
            raise PredictorError(f"{name} lacks columns {missing}: give rows with {need}")
    labels = counted[label_col].astype(str)
    bad = sorted(set(labels) - set(LABELS))
    if bad:
        raise PredictorError(f"unknown labels {bad} among the counted rows; expected {LABELS}")

    def counts(by: list[str]) -> np.ndarray:
        """[len(rows), len(LABELS)]: counted rows sharing each row's values of ``by``."""
        if counted.empty:
            return np.zeros((len(rows), len(LABELS)), int)
        table = pd.crosstab([counted[c] for c in by], labels).reindex(columns=list(LABELS), fill_value=0)
        at = pd.MultiIndex.from_frame(rows[by]) if len(by) > 1 else pd.Index(rows[by[0]])
        return table.reindex(at, fill_value=0).to_numpy()

    own = counts(keys)  # the counted rows at the row's own prompt (the row itself when rows is counted)
    pair = counts(["concept", "strength"]) - own
    strength = counts(["strength"]) - own
    if majority is None:
        majority = min(labels.value_counts().pipe(lambda c: c[c == c.max()]).index, key=LABELS.index) \
            if len(labels) else LABELS[0]
    best = np.where(pair.sum(1, keepdims=True) > 0, pair, strength)
    out = np.asarray(LABELS, dtype=object)[np.argmax(best, axis=1)]  # argmax: the first of the tied labels
    out[best.sum(1) == 0] = majority
    return out


def score_row(name: str, y, pred) -> dict:
    """One row of a scores table: ``model``, ``macro_f1``, ``accuracy``, ``f1_<class>``."""
    f = classifier.f1_scores(y, pred)
    return {"model": name, "macro_f1": classifier.macro_f1(y, pred), "accuracy": float(np.mean(y == pred)),
            **{f"f1_{c}": f[c] for c in LABELS}}


def cv_with_cgs(ev: classifier.Evaluation, table: pd.DataFrame) -> tuple[classifier.Evaluation, np.ndarray]:
    """The concept-grouped evaluation ``ev`` of ``table`` with a ``CGS`` row last in its scores
    (:func:`concept_strength`, leave one prompt out: what a concept-level grid search knows, an
    oracle for unseen concepts), and the CGS predictions (aligned with ``table``)."""
    cgs = concept_strength(table)
    y = table["label"].to_numpy()
    scores = pd.concat([ev.scores, pd.DataFrame([score_row("CGS", y, cgs)])], ignore_index=True)
    return dataclasses.replace(ev, scores=scores), cgs


def paper_with_cgs(paper: PaperEvaluation, table: pd.DataFrame) -> tuple[PaperEvaluation, np.ndarray]:
    """The paper evaluation of ``table`` with a ``CGS`` row per scored subset after its scores
    (leave-one-prompt-out :func:`concept_strength` of the whole table, on the rows scored), and
    the CGS prediction of each of its ``predictions`` rows."""
    pred = paper.predictions
    key = table.set_index(["prompt_id", "concept", "strength"]).index
    cgs = pd.Series(concept_strength(table), index=key)
    cgs = cgs.reindex(pd.MultiIndex.from_frame(pred[["prompt_id", "concept", "strength"]])).to_numpy()
    rows = []
    for concepts_part, prompts_part in SUBSETS:
        mask = (pred["concepts"] == concepts_part).to_numpy()
        if prompts_part != "all":
            mask = mask & (pred["prompts"] == prompts_part).to_numpy()
        rows.append({"concepts": concepts_part, "prompts": prompts_part, "n": int(mask.sum()),
                     **score_row("CGS", pred.loc[mask, "label"].astype(str).to_numpy(), cgs[mask])})
    return dataclasses.replace(paper, scores=pd.concat([paper.scores, pd.DataFrame(rows)], ignore_index=True)), cgs


def _per_class(y, pred, concepts_part, prompts_part, model) -> list[dict]:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(LABELS), zero_division=np.nan)
    return [{"concepts": concepts_part, "prompts": prompts_part, "model": model, "class": c, "precision": float(p[i]),
             "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i, c in enumerate(LABELS)]


# ----------------------------------------------------------------------------- uncertainty over concepts


def concept_draws(concepts: Sequence, n_draws: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(names, weights)``: the sorted distinct concepts and, per bootstrap draw, how many times
    each was drawn (``weights[d, c]``; each draw resamples the concepts with replacement, as many
    as there are, by ``numpy.random.default_rng(seed)``).

    Raises:
      PredictorError: fewer than 2 concepts, or ``n_draws < 1``.
    """
    names = np.asarray(sorted({str(c) for c in concepts}), dtype=object)
    if len(names) < 2:
        raise PredictorError(f"a bootstrap over concepts needs 2 or more concepts, got {len(names)}")
    if int(n_draws) != n_draws or n_draws < 1:
        raise PredictorError(f"n_draws must be a positive integer, got {n_draws!r}")
    picks = np.random.default_rng(seed).integers(0, len(names), size=(int(n_draws), len(names)))
    weights = np.zeros((int(n_draws), len(names)), np.int64)
    np.add.at(weights, (np.arange(int(n_draws))[:, None], picks), 1)
    return names, weights


def interval(draws, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of ``draws`` (NaN draws left out; NaNs when all are)."""
    if not 0 < level < 1:
        raise PredictorError(f"level must be in (0, 1), got {level}")
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if not d.size:
        return float("nan"), float("nan")
    lo, hi = np.quantile(d, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def macro_f1_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Macro-F1 of confusion counts ``[..., true class, predicted class]`` (the last predicted
    column may count predictions outside the classes): the mean F1 over the classes present among
    the true labels, as :func:`steerjax.studies.steerability_prediction.classifier.macro_f1`."""
    conf = np.asarray(conf, float)
    k = conf.shape[-2]
    tp = np.diagonal(conf[..., :k], axis1=-2, axis2=-1)
    support = conf.sum(-1)
    predicted = conf[..., :k].sum(-2)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(present, 2 * tp / (support + predicted), 0.0)
        return f1.sum(-1) / present.sum(-1)


def bootstrap_f1(concepts: Sequence, y_true: Sequence, predictions: Mapping[str, Sequence], *,
                 reference: str = "predictor", baselines: Sequence[str] = ("strength-only", "CGS"),
                 n_draws: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Macro-F1 with a bootstrap over concepts: the concepts resampled with replacement (every row
    of a drawn concept counted as often as it is drawn), the scores recomputed per draw.

    Args:
      concepts: each row's concept.
      y_true: each row's label (one of ``LABELS``).
      predictions: model name -> each row's predicted label; must hold ``reference`` and
        ``baselines``.
      reference: the model compared with the baselines.
      baselines: the comparison is ``reference`` minus the best of these (per draw: the best on
        that draw's concepts, as the target is stated).
      n_draws, seed: the draws (:func:`concept_draws`).
      level: the interval's coverage (percentile interval).

    Returns:
      One row per model (``quantity`` ``"macro_f1 <model>"``) and one for
      ``"<reference> - best of <baselines>"``: ``point`` (on all rows), ``low``, ``high``,
      ``concepts``, ``draws``.

    Raises:
      PredictorError: lengths that differ, a missing model, fewer than 2 concepts.
    """
    concepts = np.asarray([str(c) for c in concepts], dtype=object)
    y = np.asarray(y_true, dtype=object).astype(str)
    missing = [m for m in (reference, *baselines) if m not in predictions]
    if missing:
        raise PredictorError(f"predictions lack {missing}: give each model's predicted labels")
    if any(len(v) != len(y) for v in predictions.values()) or len(concepts) != len(y):
        raise PredictorError("concepts, y_true and every prediction must have one value per row")
    names, weights = concept_draws(concepts, n_draws, seed)
    at = {c: i for i, c in enumerate(names)}
    ci = np.asarray([at[c] for c in concepts])
    code = {c: i for i, c in enumerate(LABELS)}
    ti = np.asarray([code.get(v, -1) for v in y])
    if (ti < 0).any():
        raise PredictorError(f"unknown true labels {sorted(set(y[ti < 0]))}; expected {LABELS}")
    point, drawn = {}, {}
    for name, pred in predictions.items():
        pi = np.asarray([code.get(str(v), len(LABELS)) for v in pred])  # anything else: a miss of every class
        conf = np.zeros((len(names), len(LABELS), len(LABELS) + 1))
        np.add.at(conf, (ci, ti, pi), 1.0)
        point[name] = float(macro_f1_from_confusion(conf.sum(0)))
        drawn[name] = macro_f1_from_confusion(np.einsum("dc,ctp->dtp", weights, conf))
    rows = [{"quantity": f"macro_f1 {m}", "point": point[m], "draws": drawn[m]} for m in predictions]
    rows.append({"quantity": f"{reference} - best of {'/'.join(baselines)}",
                 "point": point[reference] - max(point[b] for b in baselines),
                 "draws": drawn[reference] - np.max([drawn[b] for b in baselines], axis=0)})
    return pd.DataFrame([{"quantity": r["quantity"], "point": r["point"],
                          **dict(zip(("low", "high"), interval(r["draws"], level))),
                          "concepts": len(names), "draws": int(n_draws)} for r in rows])
