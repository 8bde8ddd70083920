"""Run the prompt-steerability protocol (Miehling et al. 2024) on a model: profiles and indices.

For each persona dimension, one batched scoring call answers every profiling question under the
base prompt (no system message) and under every steering prompt (direction x budget x trial);
each steering prompt's KV cache is computed once for all its questions
(:func:`steerjax.profiles.scoring.answer_logprobs`). Answers become Beta profiles, profiles become
steerability indices against the dimension's maximally steered profiles.

A run directory makes it resumable: each finished dimension's answers are stored, and a run
started again with the same configuration skips them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from steerjax.profiles.beta import answer_matches, profile_parameters
from steerjax.profiles.data import profiling_statements, steering_prompt, steering_statements
from steerjax.profiles.indices import asymmetry, extremes_table, steerability_curves, steerability_indices
from steerjax.profiles.scoring import answer_logprobs
from steerjax.runs import RunDirectory, map_chunks

DIRECTIONS = ("positive", "negative")


@dataclasses.dataclass
class ProfileRun:
    """Tables of one run: ``answers`` (one row per prompt x question), ``profiles``, ``extremes``,
    ``indices``, ``curves`` (mean/std over trials) and ``asymmetry``."""

    answers: pd.DataFrame
    profiles: pd.DataFrame
    extremes: pd.DataFrame
    indices: pd.DataFrame
    curves: pd.DataFrame
    asymmetry: pd.DataFrame

    def save(self, out: str) -> None:
        os.makedirs(out, exist_ok=True)
        for name in ("answers", "profiles", "extremes", "indices"):
            getattr(self, name).to_parquet(os.path.join(out, f"{name}.parquet"), index=False)
        self.curves.to_csv(os.path.join(out, "curves.csv"), index=False)
        self.asymmetry.to_csv(os.path.join(out, "asymmetry.csv"), index=False)


def prompt_plan(dim: str, budgets: Sequence[int], trials: int, seed: int) -> pd.DataFrame:
    """The prompts asked for one dimension: base, then every direction x budget x trial."""
    rows = [{"direction": "base", "budget": 0, "trial": 0, "system": None}]
    for direction in DIRECTIONS:
        for budget in budgets:
            for trial in range(trials):
                statements = steering_statements(dim, direction, int(budget), seed=seed + trial)
                rows.append({"direction": direction, "budget": int(budget), "trial": trial,
                             "system": steering_prompt(statements)})
    return pd.DataFrame(rows)


def profile_dimension(model, dim: str, *, budgets, trials, num_questions, confidence_threshold, seed,
                      batch_size: int = 64, progress: bool = False, mesh=None) -> pd.DataFrame:
    """Answers of one dimension: one row per (prompt, question) with yes/no log-probs and matches
    (``mesh``: as in :func:`~steerjax.profiles.scoring.answer_logprobs`)."""
    questions = profiling_statements(dim, num_questions=num_questions, confidence_threshold=confidence_threshold,
                                     seed=seed)
    plan = prompt_plan(dim, budgets, trials, seed)
    systems = [s if isinstance(s, str) else None for s in plan["system"]]  # pandas stores None as NaN
    lp = answer_logprobs(model, systems, list(questions["statement"]), batch_size=batch_size,
                         progress=progress, mesh=mesh)
    says_yes = lp[..., 0] > lp[..., 1]
    positive = (questions["direction"] == "positive").to_numpy()
    p, q = lp.shape[:2]
    return pd.DataFrame({
        "dimension": dim,
        "direction": np.repeat(plan["direction"].to_numpy(), q),
        "budget": np.repeat(plan["budget"].to_numpy(), q),
        "trial": np.repeat(plan["trial"].to_numpy(), q),
        "statement": np.tile(questions["statement"].to_numpy(), p),
        "statement_direction": np.tile(questions["direction"].to_numpy(), p),
        "label_confidence": np.tile(questions["label_confidence"].to_numpy(), p),
        "logp_yes": lp[..., 0].reshape(-1),
        "logp_no": lp[..., 1].reshape(-1),
        "matches": answer_matches(says_yes, positive[None, :]).reshape(-1),
    })


def profiles_from_answers(answers: pd.DataFrame) -> pd.DataFrame:
    """Beta profile (alpha, beta) per dimension x direction x budget x trial."""
    keys = ["dimension", "direction", "budget", "trial"]
    rows = []
    for key, g in answers.groupby(keys, sort=False):
        alpha, beta = profile_parameters(g["matches"].to_numpy(), g["label_confidence"].to_numpy())
        rows.append(dict(zip(keys, key), alpha=float(alpha), beta=float(beta), n_questions=len(g),
                         frac_matching=float(g["matches"].mean())))
    return pd.DataFrame(rows)


def run_profiles(model, dims: Sequence[str], *, budgets: Sequence[int] = (1, 2, 5, 10, 20), trials: int = 2,
                 num_questions: int | None = 20, confidence_threshold: float = 0.85, seed: int = 0,
                 batch_size: int = 64, run_dir: str | None = None, progress: bool = True, mesh=None) -> ProfileRun:
    """The whole protocol for several dimensions; resumable with ``run_dir`` (one chunk per
    dimension); ``mesh`` as in :func:`~steerjax.profiles.scoring.answer_logprobs`."""
    from steerjax.errors import SteerjaxError

    dims = list(dims)
    if not dims:
        raise SteerjaxError("no dimensions given")
    budgets = sorted({int(b) for b in budgets})
    if not budgets or budgets[0] < 1:
        raise SteerjaxError(f"budgets must be positive ints, got {budgets}")
    if trials < 1:
        raise SteerjaxError(f"trials must be >= 1, got {trials}")
    for dim in dims:  # fail fast on unknown dimensions and budgets beyond the statements available
        for direction in DIRECTIONS:
            steering_statements(dim, direction, budgets[-1], seed=seed)
    store = None
    if run_dir is not None:
        store = RunDirectory(run_dir, {
            "kind": "profiles", "model": model.source, "dtype": model.dtype, "dims": dims, "budgets": budgets,
            "trials": trials, "num_questions": num_questions, "confidence_threshold": confidence_threshold,
            "seed": seed,
        })

    def work(_, dim):
        return profile_dimension(model, dim, budgets=budgets, trials=trials, num_questions=num_questions,
                                 confidence_threshold=confidence_threshold, seed=seed, batch_size=batch_size,
                                 mesh=mesh)

    answers = map_chunks(dims, work, store=store, desc="dimensions", progress=progress)
    profiles = profiles_from_answers(answers)
    conf = {dim: g.drop_duplicates("statement")["label_confidence"].to_numpy()
            for dim, g in answers[answers.direction == "base"].groupby("dimension", sort=False)}
    extremes = extremes_table(conf)
    indices = steerability_indices(profiles, extremes)
    return ProfileRun(answers, profiles, extremes, indices, steerability_curves(indices), asymmetry(indices))
