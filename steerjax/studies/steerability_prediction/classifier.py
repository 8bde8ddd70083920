"""The steerability predictor: CatBoost on early-decoding diff features, evaluated on unseen concepts.

:func:`evaluate` runs cross-validation with folds grouped by concept (every concept is tested
by a model that never saw it; with a ``grid``, nested: settings are chosen by
:func:`choose_setting` on each fold's training concepts alone) and reports macro-F1, per-class
F1 and the confusion matrix, next to baselines: the majority class and models that see only the
steering strength (``strength-only``) or the multiplier (``multiplier-only``).
:func:`importance_by_layer_and_step`
says which layers and decoding steps carry the signal. :class:`SteerabilityPredictor` is the
fitted model, saved as CatBoost's own ``.cbm`` file plus a JSON of its feature columns and classes.

Features are chosen by named set (:data:`steerjax.studies.steerability_prediction.features.FEATURE_SETS`): the default
everywhere, :data:`~studies.steerability_prediction.features.DEFAULT_FEATURE_SET` (``steerboost+steerjax+relative``), is
judge-independent; the ``judge-aware`` set (``read_nll``, ``concept_read``, which replay the
hidden-state judge) is used only when named. :func:`ablation` scores each set alone and combined
on the same concept folds. ``strength`` (the knob, known when choosing) is in every set; the
``multiplier`` column is an id (SteerBoost's alpha enters the ``steerboost`` set as ``sb_Alpha``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from steerjax.errors import PredictorError
from steerjax.studies.steerability_prediction.features import (
    DEFAULT_FEATURE_SET,
    FEATURE_SETS,
    feature_set_columns,
    replays_judge,
)
from steerjax.studies.steerability_prediction.judge import LABELS

ID_COLUMNS = ("prompt_id", "prompt", "concept", "layer", "strength", "multiplier", "seed", "label")
_LAYER = re.compile(r"_L(\d+)(?:_|$)")
_STEP = re.compile(r"_k(\d+)$")


def feature_step(column: str) -> int | None:
    """The decoding step of a feature column named ``..._k{step}`` (features of the first ``step``
    tokens); None for a column without one."""
    m = _STEP.search(column)
    return None if m is None else int(m.group(1))


def feature_columns_of(table: pd.DataFrame, max_step: int | None = None,
                       feature_set: str = DEFAULT_FEATURE_SET) -> list[str]:
    """The numeric feature columns of a features table in the named ``feature_set`` (a key of
    ``FEATURE_SETS`` or a ``+`` combination; default judge-independent), with ``strength`` (known
    when choosing); optionally only those from decoding steps ``<= max_step`` (columns named
    ``..._k{step}``; SteerBoost's ``sb_InterventionMag`` and ``sb_Alpha`` have no step).

    Raises:
      PredictorError: an unknown set name; no column of the set in the table.
    """
    cols = [c for c in feature_set_columns(list(table.columns), feature_set)
            if c not in ID_COLUMNS or c == "strength"]
    cols = [c for c in cols if pd.api.types.is_numeric_dtype(table[c])]
    if max_step is not None:
        cols = [c for c in cols if (step := feature_step(c)) is None or step <= max_step]
    if not [c for c in cols if c != "strength"]:
        raise PredictorError(f"the table has no numeric feature columns of the set {feature_set!r}"
                             + (f" from steps <= {max_step}" if max_step is not None else "")
                             + ": extract them with steerjax.studies.steerability_prediction.early_features, "
                             "or name the columns")
    return cols


@dataclasses.dataclass
class SteerabilityPredictor:
    """A fitted CatBoost multiclass model over ``feature_columns``; ``classes`` in its output order."""

    model: object
    feature_columns: list[str]
    classes: list[str]
    meta: dict = dataclasses.field(default_factory=dict)

    def predict_proba(self, table: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in self.feature_columns if c not in table]
        if missing:
            raise PredictorError(f"feature table lacks {len(missing)} columns the predictor was trained on, "
                                 f"e.g. {missing[:3]}: extract features with the same layer and steps")
        p = self.model.predict_proba(table[self.feature_columns].to_numpy(np.float32))
        return pd.DataFrame(p, columns=self.classes, index=table.index)

    def predict(self, table: pd.DataFrame) -> pd.Series:
        p = self.predict_proba(table)
        return p.idxmax(axis=1).rename("predicted")

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.model.save_model(os.path.join(directory, "model.cbm"))
        with open(os.path.join(directory, "predictor.json"), "w") as f:
            json.dump({"feature_columns": self.feature_columns, "classes": self.classes, "meta": self.meta},
                      f, indent=2, default=str)

    @classmethod
    def load(cls, directory: str) -> SteerabilityPredictor:
        from catboost import CatBoostClassifier

        meta_path = os.path.join(directory, "predictor.json")
        if not os.path.exists(meta_path):
            raise PredictorError(f"{directory} holds no predictor (predictor.json): train one with "
                                 "`steerjax predictor train`")
        with open(meta_path) as f:
            meta = json.load(f)
        model = CatBoostClassifier()
        model.load_model(os.path.join(directory, "model.cbm"))
        return cls(model, meta["feature_columns"], meta["classes"], meta.get("meta", {}))


#: CatBoost's ``auto_class_weights`` choices (None: unweighted)
CLASS_WEIGHTS = ("Balanced", "SqrtBalanced", None)
#: features CatBoost draws per split when ``rsm`` is left to :func:`fit` (``rsm = min(1, RSM_FEATURES / columns)``)
RSM_FEATURES = 100


def fit(table: pd.DataFrame, *, feature_columns: Sequence[str] | None = None, label_col: str = "label",
        iterations: int = 300, depth: int = 6, learning_rate: float = 0.08, seed: int = 0,
        threads: int | None = None, feature_set: str = DEFAULT_FEATURE_SET, class_weights: str | None = "Balanced",
        border_count: int = 32, rsm: float | None = None) -> SteerabilityPredictor:
    """Fit CatBoost multiclass on ``table[feature_columns] -> table[label_col]``; without
    ``feature_columns``, on the columns of ``feature_set`` (:func:`feature_columns_of`).

    Args:
      class_weights: CatBoost's ``auto_class_weights`` (:data:`CLASS_WEIGHTS`).
      border_count: histogram bins per feature (CatBoost's CPU default is 254; 32 fits a
        thousand-column table about 4x faster).
      rsm: the share of features drawn per split; None: ``min(1, RSM_FEATURES / columns)`` (about
        100 features per split, another 5x on a thousand columns; all of them below 100).

    Raises:
      PredictorError: the checks of :func:`check_table`, a single label, an unknown ``class_weights``.
    """
    from catboost import CatBoostClassifier

    cols = list(feature_columns) if feature_columns is not None else feature_columns_of(table, feature_set=feature_set)
    check_table(table, cols, label_col)
    if class_weights not in CLASS_WEIGHTS:
        raise PredictorError(f"class_weights must be one of {CLASS_WEIGHTS}, got {class_weights!r}")
    y = table[label_col].astype(str).to_numpy()
    if len(set(y)) < 2:
        raise PredictorError(f"every row has the label {y[0]!r}: a classifier needs two or more; widen the "
                             "strength grid")
    rsm = min(1.0, RSM_FEATURES / len(cols)) if rsm is None else float(rsm)
    model = CatBoostClassifier(loss_function="MultiClass", iterations=iterations, depth=depth,
                               learning_rate=learning_rate, random_seed=seed, verbose=False,
                               thread_count=threads or -1, allow_writing_files=False,
                               auto_class_weights=class_weights, border_count=int(border_count), rsm=rsm)
    model.fit(table[cols].to_numpy(np.float32), y)
    return SteerabilityPredictor(model, cols, [str(c) for c in model.classes_],
                                 {"iterations": iterations, "depth": depth, "learning_rate": learning_rate,
                                  "class_weights": class_weights, "border_count": int(border_count), "rsm": rsm,
                                  "seed": seed, "n_train": len(table),
                                  "feature_set": feature_set if feature_columns is None else "columns"})


#: the paper evaluation's default search: 8 CatBoost settings
DEFAULT_GRID: dict[str, tuple] = {"depth": (4, 6), "iterations": (150, 300), "learning_rate": (0.05, 0.1)}
GRID_KEYS = ("depth", "iterations", "learning_rate", "class_weights")


def grid_settings(grid: Mapping[str, Sequence] | None) -> list[dict]:
    """Every combination of a search grid, as :func:`fit` arguments
    (``None``: :data:`DEFAULT_GRID`); a key left out keeps ``fit``'s default.

    Raises:
      PredictorError: not a mapping, an unknown key (:data:`GRID_KEYS`), an empty list, a bad
        value (depth and iterations ints >= 1, learning_rate in (0, 1], class_weights one of
        :data:`CLASS_WEIGHTS`).
    """
    grid = DEFAULT_GRID if grid is None else grid
    if not isinstance(grid, Mapping) or not grid:
        raise PredictorError(f"grid must be a mapping of {GRID_KEYS} to lists of values, got {grid!r}")
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise PredictorError(f"grid has unknown keys {unknown}: search over {GRID_KEYS}")
    keys = [k for k in GRID_KEYS if k in grid]
    values = []
    for k in keys:
        v = grid[k]
        v = [v] if np.isscalar(v) or v is None else list(v)
        if not v:
            raise PredictorError(f"grid[{k!r}] is empty: give at least one value")
        for x in v:
            if k == "class_weights":
                if x not in CLASS_WEIGHTS:
                    raise PredictorError(f"grid['class_weights'] holds {x!r}: use values of "
                                         f"{CLASS_WEIGHTS}")
                continue
            ok = (isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 1 if k != "learning_rate"
                  else isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and 0 < x <= 1)
            if not ok:
                raise PredictorError(f"grid[{k!r}] holds {x!r}: depth and iterations are ints >= 1, learning_rate is "
                                     "in (0, 1]")
        values.append(v)
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def choose_setting(table: pd.DataFrame, settings: Sequence[Mapping], *, feature_columns: Sequence[str],
                   n_folds: int = 3, seed: int = 0, label_col: str = "label",
                   **fit_kw) -> tuple[dict, pd.DataFrame]:
    """The CatBoost setting of ``settings`` with the best pooled macro-F1 in concept-grouped
    cross-validation on ``table`` alone (:func:`concept_folds`; ties: the first listed). Give it a
    training part only: this is the inner loop of a nested search.

    Returns:
      ``(setting, scores)``: the chosen setting (a dict of :func:`fit` arguments) and one row per
      setting with its keys and ``inner_macro_f1``.

    Raises:
      PredictorError: no settings; fewer concepts than ``n_folds``; a fold with a single label.
    """
    if not settings:
        raise PredictorError("no settings to choose from: give at least one")
    folds = concept_folds(table["concept"], n_folds, seed)
    y = table[label_col].astype(str).to_numpy()
    rows = []
    for setting in settings:
        pred = np.empty(len(table), dtype=object)
        for test_concepts in folds:
            test = table["concept"].isin(test_concepts).to_numpy()
            if table.loc[~test, label_col].nunique() < 2:
                raise PredictorError("an inner training fold has a single label: more concepts or strengths are "
                                     "needed for a nested search")
            m = fit(table[~test], feature_columns=feature_columns, label_col=label_col, seed=seed,
                    **{**fit_kw, **setting})
            pred[test] = m.predict(table[test]).to_numpy()
        rows.append({**setting, "inner_macro_f1": macro_f1(y, pred)})
    scores = pd.DataFrame(rows)
    return dict(settings[int(np.argmax(scores["inner_macro_f1"].to_numpy()))]), scores


def check_table(table: pd.DataFrame, cols: Sequence[str], label_col: str = "label") -> None:
    """What fitting on ``table[cols]`` against ``table[label_col]`` needs: the label column with
    known labels, at least one feature column, all present and finite.

    Raises:
      PredictorError: saying which.
    """
    if not cols:
        raise PredictorError("no feature columns: give at least one")
    if label_col not in table:
        raise PredictorError(f"no {label_col!r} column: label the rollouts with a judge first")
    bad = sorted(set(table[label_col].astype(str)) - set(LABELS))
    if bad:
        raise PredictorError(f"unknown labels {bad}; expected {LABELS}")
    missing = [c for c in cols if c not in table]
    if missing:
        raise PredictorError(f"feature columns missing from the table: {missing[:5]}")
    x = table[cols].to_numpy(np.float64)
    if not np.isfinite(x).all():
        bad_cols = [c for c in cols if not np.isfinite(table[c].to_numpy(np.float64)).all()]
        raise PredictorError(f"non-finite feature values in {bad_cols[:5]}")


def group_folds(groups: Sequence, n_folds: int, seed: int = 0, what: str = "concepts") -> list[np.ndarray]:
    """The distinct ``groups`` split into ``n_folds`` disjoint folds by scikit-learn's shuffled
    ``GroupKFold``: the sorted names permuted with ``random_state=seed``, then cut into ``n_folds``
    runs of near-equal length (each fold's names sorted). ``what`` names the groups in errors."""
    from sklearn.model_selection import GroupKFold

    names = np.asarray(sorted(set(groups)))
    if len(names) < n_folds or n_folds < 2:
        raise PredictorError(f"{len(names)} {what} cannot make {n_folds} folds grouped by them (need >= 2 folds "
                             "and at least one per fold)")
    splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [names[test] for _, test in splitter.split(names, groups=names)]


def concept_folds(concepts: Sequence[str], n_folds: int, seed: int = 0) -> list[np.ndarray]:
    """Concept names split into ``n_folds`` disjoint groups (:func:`group_folds`)."""
    return group_folds(concepts, n_folds, seed, "concepts")


def f1_scores(y_true, y_pred, classes: Sequence[str] = LABELS) -> dict[str, float]:
    """Per-class F1 by scikit-learn; NaN for a class neither present nor predicted."""
    from sklearn.metrics import f1_score

    f = f1_score(y_true, y_pred, labels=list(classes), average=None, zero_division=np.nan)
    return {c: float(v) for c, v in zip(classes, f)}


def macro_f1(y_true, y_pred, classes: Sequence[str] = LABELS) -> float:
    """Mean F1 over the ``classes`` present in ``y_true`` (scikit-learn's macro average over them)."""
    from sklearn.metrics import f1_score

    present = [c for c in classes if np.any(np.asarray(y_true, dtype=object) == c)]
    return float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=np.nan))


def confusion(y_true, y_pred, classes: Sequence[str] = LABELS) -> pd.DataFrame:
    """Counts by scikit-learn, rows true class, columns predicted class (rows of other classes
    are left out; all zeros when ``y_true`` holds none of ``classes``)."""
    from sklearn.metrics import confusion_matrix

    present = np.isin(np.asarray(y_true, dtype=object), list(classes)).any()
    m = confusion_matrix(y_true, y_pred, labels=list(classes)) if present else np.zeros((len(classes),) * 2, int)
    return pd.DataFrame(m, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))


@dataclasses.dataclass
class Evaluation:
    """Cross-validated predictions on unseen concepts and their scores."""

    predictions: pd.DataFrame  # id columns, label, predicted, majority, multiplier_only, p_<class>
    scores: pd.DataFrame  # model x (macro_f1, f1_<class>)
    confusion: pd.DataFrame
    importance: pd.DataFrame  # feature, importance (mean over folds)
    folds: list
    feature_set: str = DEFAULT_FEATURE_SET  # "columns" when the columns were named
    #: with a nested search (``grid``): per outer fold, the setting chosen for each model and the
    #: inner scores (``fold, model, <setting keys>, inner_macro_f1, chosen``)
    search: pd.DataFrame | None = None

    def summary(self) -> dict:
        s = self.scores.set_index("model")
        return {m: {c: round(float(v), 4) for c, v in s.loc[m].items()} for m in s.index}


def evaluate(table: pd.DataFrame, *, feature_columns: Sequence[str] | None = None, n_folds: int = 5,
             seed: int = 0, label_col: str = "label", progress: bool = True, baselines: bool = True,
             feature_set: str = DEFAULT_FEATURE_SET, folds: Sequence[Sequence[str]] | None = None,
             grid: Mapping[str, Sequence] | None = None, inner_folds: int = 3, **fit_kw) -> Evaluation:
    """Concept-grouped cross-validation of the predictor and its baselines.

    Each fold's test concepts are unseen in its training rows. Baselines: ``majority`` (the
    training folds' most common label), ``multiplier-only`` (CatBoost on ``multiplier`` alone; on
    ``strength`` when the table has no multiplier column) and ``strength-only`` (on ``strength``);
    ``baselines=False`` skips the two fitted baselines (their rows are then absent from ``scores``).
    Without ``feature_columns`` the predictor uses the columns of ``feature_set``
    (:func:`feature_columns_of`). ``folds`` (lists of concept names, each concept in exactly one)
    replaces the ``n_folds`` / ``seed`` split (:func:`concept_folds`).

    ``grid`` (``{"depth": [...], "learning_rate": [...], "iterations": [...], "class_weights":
    [...]}``, :func:`grid_settings`) makes the search nested: in each
    outer fold every fitted model (the predictor and each fitted baseline) takes the setting that
    scores best in an ``inner_folds`` concept-grouped cross-validation of that fold's training
    concepts only (:func:`choose_setting`), then is refitted on all of them; test concepts never
    choose anything. The choices are in ``Evaluation.search``.
    """
    cols = (list(feature_columns) if feature_columns is not None
            else feature_columns_of(table, feature_set=feature_set))
    check_table(table, cols, label_col)
    if "strength" not in table:
        raise PredictorError("no 'strength' column for the multiplier-only baseline")
    folds = concept_folds(table["concept"], n_folds, seed) if folds is None else _check_folds(table, folds)
    pred = table[[c for c in ID_COLUMNS if c in table]].copy()
    pred["predicted"] = pred["majority"] = pred["multiplier_only"] = pred["strength_only"] = ""
    knob = "multiplier" if "multiplier" in table else "strength"
    if not np.isfinite(table[knob].to_numpy(np.float64)).all():
        raise PredictorError(f"non-finite values in {knob!r}")
    probs = np.zeros((len(table), len(LABELS)))
    imp = np.zeros(len(cols))
    settings = None
    if grid is not None:
        settings = grid_settings(grid)
    searched = []

    def fitted(train, fold, model, columns):
        if settings is None:
            return fit(train, feature_columns=columns, label_col=label_col, seed=seed, **fit_kw)
        chosen, scores = choose_setting(train, settings, feature_columns=columns, n_folds=inner_folds, seed=seed,
                                        label_col=label_col, **fit_kw)
        best = np.arange(len(scores)) == int(np.argmax(scores["inner_macro_f1"].to_numpy()))
        searched.append(scores.assign(fold=fold, model=model, chosen=best))
        return fit(train, feature_columns=columns, label_col=label_col, seed=seed, **{**fit_kw, **chosen})

    from tqdm.auto import tqdm

    for i, test_concepts in enumerate(tqdm(folds, desc="folds", unit="fold", disable=not progress or None)):
        test = table["concept"].isin(test_concepts).to_numpy()
        train = table[~test]
        if train[label_col].nunique() < 2:
            raise PredictorError("a training fold has a single label: more concepts or strengths are needed")
        m = fitted(train, i, "predictor", cols)
        p = m.predict_proba(table[test])
        probs[test] = p.reindex(columns=list(LABELS), fill_value=0.0).to_numpy()
        pred.loc[test, "predicted"] = p.idxmax(axis=1).to_numpy()
        pred.loc[test, "majority"] = train[label_col].astype(str).value_counts().idxmax()
        for col, feature in (("multiplier_only", knob), ("strength_only", "strength")) if baselines else ():
            base = fitted(train, i, col.replace("_", "-"), [feature])
            pred.loc[test, col] = base.predict(table[test]).to_numpy()
        imp += np.asarray(m.model.get_feature_importance(), float) / len(folds)
    for j, c in enumerate(LABELS):
        pred[f"p_{c}"] = probs[:, j]
    y = table[label_col].astype(str).to_numpy()
    rows = []
    models = [("predictor", "predicted"), ("multiplier-only", "multiplier_only"), ("strength-only", "strength_only"),
              ("majority", "majority")]
    for name, col in models if baselines else [models[0], models[-1]]:
        f = f1_scores(y, pred[col])
        rows.append({"model": name, "macro_f1": macro_f1(y, pred[col]), "accuracy": float(np.mean(y == pred[col])),
                     **{f"f1_{c}": f[c] for c in LABELS}})
    importance = pd.DataFrame({"feature": cols, "importance": imp}).sort_values("importance", ascending=False)
    search = None
    if searched:
        search = pd.concat(searched, ignore_index=True)
        search = search[["fold", "model", *[c for c in search.columns if c not in ("fold", "model")]]]
    return Evaluation(pred, pd.DataFrame(rows), confusion(y, pred["predicted"]), importance.reset_index(drop=True),
                      [list(f) for f in folds], feature_set if feature_columns is None else "columns", search)


def _check_folds(table, folds) -> list[np.ndarray]:
    names = [str(c) for f in folds for c in f]
    have = set(table["concept"].astype(str))
    if len(folds) < 2 or any(len(f) == 0 for f in folds):
        raise PredictorError(f"folds must be 2 or more non-empty lists of concepts, got {len(folds)}")
    if len(names) != len(set(names)) or set(names) != have:
        raise PredictorError("folds must hold each of the table's concepts exactly once; "
                             f"missing {sorted(have - set(names))[:5]}, unknown {sorted(set(names) - have)[:5]}")
    return [np.asarray(sorted(str(c) for c in f)) for f in folds]


ABLATION_SETS = ("steerboost", "steerjax", "relative", "judge-aware", "steerboost+steerjax",
                 "steerboost+steerjax+relative", "steerboost+steerjax+relative+judge-aware")


def ablation(table: pd.DataFrame, sets: Sequence[str] = ABLATION_SETS, *, n_folds: int = 5, seed: int = 0,
             folds: Sequence[Sequence[str]] | None = None, max_step: int | None = None, label_col: str = "label",
             baselines: bool = True, progress: bool = False, **fit_kw) -> pd.DataFrame:
    """Each feature set alone and combined, scored on the SAME concept folds.

    Args:
      table: a features table with ``concept``, ``strength`` and ``label_col``.
      sets: feature-set names (keys of ``FEATURE_SETS`` or ``+`` combinations).
      n_folds, seed: the concept-grouped split (:func:`concept_folds`), made once for every set;
        or ``folds``, lists of concept names, used as given.
      max_step: only columns from decoding steps ``<= max_step`` (:func:`feature_columns_of`).
      baselines: add ``strength-only`` (CatBoost on ``strength``) and ``majority`` rows on the same folds.
      fit_kw: CatBoost settings for every fit (:func:`fit`).

    Returns:
      A tidy table, one row per (set, fold): ``set, replays_judge, n_features, fold, test_concepts,
      n_rows, macro_f1, accuracy, f1_<class>``; ``fold`` is ``"0"``, ``"1"``, ... for each test fold
      and ``"all"`` for the pooled out-of-fold predictions; ``replays_judge`` marks sets whose
      columns replay the hidden-state judge (``judge-aware``): never a headline.

    Raises:
      PredictorError: an unknown set name (listing the names), a set with no columns in the table,
        bad folds, the checks of :func:`evaluate`.
    """
    if isinstance(sets, str) or not sets:
        raise PredictorError(f"sets must be a non-empty list of feature-set names from {sorted(FEATURE_SETS)}, "
                             f"got {sets!r}")
    chosen = {name: feature_columns_of(table, max_step=max_step, feature_set=name) for name in sets}
    folds = concept_folds(table["concept"], n_folds, seed) if folds is None else _check_folds(table, folds)
    y = table[label_col].astype(str).to_numpy() if label_col in table else None
    runs = [(name, replays_judge(name), cols) for name, cols in chosen.items()]
    if baselines:
        runs += [("strength-only", False, ["strength"])]
    rows = []
    majority = None
    for name, judge, cols in runs:
        ev = evaluate(table, feature_columns=cols, folds=folds, label_col=label_col, progress=progress,
                      baselines=False, seed=seed, **fit_kw)
        majority = ev.predictions["majority"] if majority is None else majority
        rows += _fold_scores(table, y, ev.predictions["predicted"], folds, name, judge, len(cols))
    if baselines:
        rows += _fold_scores(table, y, majority, folds, "majority", False, 0)
    return pd.DataFrame(rows)


def _fold_scores(table, y, predicted, folds, name, judge, n_features) -> list[dict]:
    concept = table["concept"].astype(str).to_numpy()
    pred = np.asarray(predicted, dtype=object)
    parts = [(str(i), np.isin(concept, f), ",".join(f)) for i, f in enumerate(folds)]
    parts.append(("all", np.ones(len(table), bool), ",".join(c for f in folds for c in f)))
    rows = []
    for fold, mask, names in parts:
        f = f1_scores(y[mask], pred[mask])
        rows.append({"set": name, "replays_judge": judge, "n_features": n_features, "fold": fold,
                     "test_concepts": names, "n_rows": int(mask.sum()), "macro_f1": macro_f1(y[mask], pred[mask]),
                     "accuracy": float(np.mean(y[mask] == pred[mask])), **{f"f1_{c}": f[c] for c in LABELS}})
    return rows


def importance_by_layer_and_step(importance: pd.DataFrame) -> pd.DataFrame:
    """Feature importance summed by (layer, step) from column names ``..._L{layer}..._k{step}``;
    features without a layer are under layer ``-1`` (next-token distribution features)."""
    rows = []
    for f, v in zip(importance["feature"], importance["importance"]):
        lm, step = _LAYER.search(f), feature_step(f)
        if step is None:
            continue
        rows.append({"layer": int(lm.group(1)) if lm else -1, "step": step, "importance": v})
    if not rows:
        return pd.DataFrame(columns=["layer", "step", "importance"])
    return pd.DataFrame(rows).groupby(["layer", "step"], as_index=False)["importance"].sum()
