"""The steerability predictor: CatBoost on early-decoding diff features, evaluated on unseen concepts.

:func:`evaluate` runs cross-validation with folds grouped by concept (every concept is tested
by a model that never saw it) and reports macro-F1, per-class F1 and the confusion matrix, next
to two baselines: the majority class and a model that sees only the steering strength
(``multiplier-only``). :func:`importance_by_layer_and_step` says which layers and decoding steps
carry the signal. :class:`SteerabilityPredictor` is the fitted model, saved as CatBoost's own
``.cbm`` file plus a JSON of its feature columns and classes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from steerjax.errors import PredictorError
from steerjax.predictor.judge import LABELS

ID_COLUMNS = ("prompt_id", "prompt", "concept", "layer", "strength", "multiplier", "seed", "label")
_LAYER = re.compile(r"_L(\d+)(?:_|$)")
_STEP = re.compile(r"_k(\d+)$")


def feature_step(column: str) -> int | None:
    """The decoding step of a feature column named ``..._k{step}`` (features of the first ``step``
    tokens); None for a column without one."""
    m = _STEP.search(column)
    return None if m is None else int(m.group(1))


def feature_columns_of(table: pd.DataFrame, max_step: int | None = None) -> list[str]:
    """The numeric feature columns of a features table: ``strength`` (known when choosing) and
    everything else but ids and labels; optionally
    only those from decoding steps ``<= max_step`` (columns named ``..._k{step}``)."""
    cols = [c for c in table.columns if (c == "strength" or c not in ID_COLUMNS)
            and pd.api.types.is_numeric_dtype(table[c])]
    if max_step is not None:
        cols = [c for c in cols if (step := feature_step(c)) is None or step <= max_step]
    if not cols:
        raise PredictorError("the table has no numeric feature columns")
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


def fit(table: pd.DataFrame, *, feature_columns: Sequence[str] | None = None, label_col: str = "label",
        iterations: int = 300, depth: int = 6, learning_rate: float = 0.08, seed: int = 0,
        threads: int | None = None) -> SteerabilityPredictor:
    """Fit CatBoost multiclass on ``table[feature_columns] -> table[label_col]``."""
    from catboost import CatBoostClassifier

    cols = list(feature_columns) if feature_columns is not None else feature_columns_of(table)
    _check(table, cols, label_col)
    y = table[label_col].astype(str).to_numpy()
    if len(set(y)) < 2:
        raise PredictorError(f"every row has the label {y[0]!r}: a classifier needs two or more; widen the "
                             "strength grid")
    model = CatBoostClassifier(loss_function="MultiClass", iterations=iterations, depth=depth,
                               learning_rate=learning_rate, random_seed=seed, verbose=False,
                               thread_count=threads or -1, allow_writing_files=False,
                               auto_class_weights="Balanced")
    model.fit(table[cols].to_numpy(np.float32), y)
    return SteerabilityPredictor(model, cols, [str(c) for c in model.classes_],
                                 {"iterations": iterations, "depth": depth, "learning_rate": learning_rate,
                                  "seed": seed, "n_train": len(table)})


def _check(table, cols, label_col):
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

    def summary(self) -> dict:
        s = self.scores.set_index("model")
        return {m: {c: round(float(v), 4) for c, v in s.loc[m].items()} for m in s.index}


def evaluate(table: pd.DataFrame, *, feature_columns: Sequence[str] | None = None, n_folds: int = 5,
             seed: int = 0, label_col: str = "label", progress: bool = True, baselines: bool = True,
             **fit_kw) -> Evaluation:
    """Concept-grouped cross-validation of the predictor and its baselines.

    Each fold's test concepts are unseen in its training rows. Baselines: ``majority`` (the
    training folds' most common label), ``multiplier-only`` (CatBoost on ``multiplier`` alone; on
    ``strength`` when the table has no multiplier column) and ``strength-only`` (on ``strength``);
    ``baselines=False`` skips the two fitted baselines (their rows are then absent from ``scores``).
    """
    cols = list(feature_columns) if feature_columns is not None else feature_columns_of(table)
    _check(table, cols, label_col)
    if "strength" not in table:
        raise PredictorError("no 'strength' column for the multiplier-only baseline")
    folds = concept_folds(table["concept"], n_folds, seed)
    pred = table[[c for c in ID_COLUMNS if c in table]].copy()
    pred["predicted"] = pred["majority"] = pred["multiplier_only"] = pred["strength_only"] = ""
    knob = "multiplier" if "multiplier" in table else "strength"
    if not np.isfinite(table[knob].to_numpy(np.float64)).all():
        raise PredictorError(f"non-finite values in {knob!r}")
    probs = np.zeros((len(table), len(LABELS)))
    imp = np.zeros(len(cols))
    from tqdm.auto import tqdm

    for test_concepts in tqdm(folds, desc="folds", unit="fold", disable=not progress or None):
        test = table["concept"].isin(test_concepts).to_numpy()
        train = table[~test]
        if train[label_col].nunique() < 2:
            raise PredictorError("a training fold has a single label: more concepts or strengths are needed")
        m = fit(train, feature_columns=cols, label_col=label_col, seed=seed, **fit_kw)
        p = m.predict_proba(table[test])
        probs[test] = p.reindex(columns=list(LABELS), fill_value=0.0).to_numpy()
        pred.loc[test, "predicted"] = p.idxmax(axis=1).to_numpy()
        pred.loc[test, "majority"] = train[label_col].astype(str).value_counts().idxmax()
        for col, feature in (("multiplier_only", knob), ("strength_only", "strength")) if baselines else ():
            base = fit(train, feature_columns=[feature], label_col=label_col, seed=seed, **fit_kw)
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
    return Evaluation(pred, pd.DataFrame(rows), confusion(y, pred["predicted"]), importance.reset_index(drop=True),
                      [list(f) for f in folds])


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
