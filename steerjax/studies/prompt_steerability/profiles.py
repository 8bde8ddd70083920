"""Run the prompt-steerability protocol (Miehling et al. 2024) on a model: profiles and indices.

The trial structure is the reference code's (IBM/prompt-steering, ``prompt_steerability.py``):

- ``benchmark_trials`` (default 5): each draws the dimension's profiling questions anew
  (``num_questions`` per direction, default 25: 25 positive + 25 negative statements) and computes
  the base profile and the maximally steered profiles on them;
- within each, for every direction and budget ``k`` (default the paper's 1, 2, 3, 4, 5, 10, 20,
  50, 100), ``steering_trials`` (default 5) steering prompts, each of ``k`` statements drawn
  uniformly without replacement from that direction's steering statements, independently for
  every (budget, trial) as the reference does (``nested=True``: one permutation per steering
  trial, smaller budgets taking its prefixes, so their statements are contained in larger ones);
- the same questions are asked under the base prompt and every steering prompt.

Unlike the reference, which draws from unseeded generators, every draw here is seeded from
``seed`` (:func:`draw_seed`: the run's seed and the draw's keys), so a run is reproducible and a
dimension's draws do not depend on which other dimensions run with it.

For each (dimension, benchmark trial), one batched scoring call answers every question under the
base prompt and every steering prompt; each prompt's shared prefix (template and steering prompt)
is computed once for all its questions (:func:`steerjax.studies.prompt_steerability.scoring.answer_logprobs`). A
question is answered yes when ``log p(yes) >= log p(no)`` (a tie is yes, as in the reference).
Answers become Beta profiles, profiles become steerability indices against that benchmark trial's
maximally steered profiles, and curves report the reference's spread
(:func:`steerjax.studies.prompt_steerability.indices.steerability_curves`).

A run directory makes it resumable: each finished (dimension, benchmark trial) chunk's answers
are stored, and a run started again with the same configuration skips them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from steerjax.data.prompt_steering import profiling_statements, steering_prompt, steering_statements
from steerjax.runs import MODEL_FINGERPRINT
from steerjax.runs.chunks import RunDirectory, map_chunks
from steerjax.studies.prompt_steerability.beta import answer_matches, profile_parameters
from steerjax.studies.prompt_steerability.config import (
    DIRECTIONS,
    PAPER_BUDGETS,
    Config,
    check,
    draw_seed,
    resolve_dimensions,
)
from steerjax.studies.prompt_steerability.indices import (
    asymmetry,
    base_summary,
    extremes_table,
    steerability_curves,
    steerability_indices,
)
from steerjax.studies.prompt_steerability.scoring import answer_logprobs

__all__ = ["DIRECTIONS", "PAPER_BUDGETS", "PROFILE_KEYS", "ProfileRun", "check_options", "draw_seed",
           "extremes_from_answers", "profile_dimension", "profiles_from_answers", "prompt_plan", "resolve_dimensions",
           "run_config", "run_profiles"]

PROFILE_KEYS = ["dimension", "benchmark_trial", "direction", "budget", "trial"]


@dataclasses.dataclass
class ProfileRun:
    """Tables of one run: ``answers`` (one row per prompt x question), ``profiles``, ``extremes``
    (per dimension and benchmark trial), ``indices``, ``curves`` (the reference's spread over
    benchmark trials, and over steering trials beside it), ``asymmetry`` and ``base`` (base
    profiles summarised over benchmark trials as the paper's Tables 4-9)."""

    answers: pd.DataFrame
    profiles: pd.DataFrame
    extremes: pd.DataFrame
    indices: pd.DataFrame
    curves: pd.DataFrame
    asymmetry: pd.DataFrame
    base: pd.DataFrame

    def save(self, out: str) -> None:
        """Write the tables to ``out``: parquet for the long ones, CSV for the summaries."""
        os.makedirs(out, exist_ok=True)
        for name in ("answers", "profiles", "extremes", "indices"):
            getattr(self, name).to_parquet(os.path.join(out, f"{name}.parquet"), index=False)
        self.curves.to_csv(os.path.join(out, "curves.csv"), index=False)
        self.asymmetry.to_csv(os.path.join(out, "asymmetry.csv"), index=False)
        self.base.to_csv(os.path.join(out, "base_summary.csv"), index=False)


def _config(dims, *, budgets, benchmark_trials, steering_trials, num_questions, confidence_threshold, seed,
            prompt_format, template_category, nested=False, reference_compat=False, dtype="float32") -> Config:
    try:
        budgets = tuple(budgets)
    except TypeError:
        budgets = (budgets,)
    return Config(dims=dims, budgets=budgets, benchmark_trials=benchmark_trials, steering_trials=steering_trials,
                  num_questions=num_questions, confidence_threshold=confidence_threshold, seed=seed, nested=nested,
                  prompt_format=prompt_format, template_category=template_category,
                  reference_compat=reference_compat, dtype=dtype)


def check_options(dims, *, budgets, benchmark_trials, steering_trials, num_questions, confidence_threshold, seed,
                  prompt_format, template_category) -> tuple[list[str], list[int]]:
    """Check a run's options before any model loads (:func:`~steerjax.studies.prompt_steerability.check`);
    return ``(dims, budgets)`` resolved and sorted.

    Raises:
      ProfileError, DataError: the first bad option, with what to do.
    """
    config = _config(dims, budgets=budgets, benchmark_trials=benchmark_trials, steering_trials=steering_trials,
                     num_questions=num_questions, confidence_threshold=confidence_threshold, seed=seed,
                     prompt_format=prompt_format, template_category=template_category)
    check(config)
    return config.resolved_dims(), sorted({int(b) for b in config.budgets})


def run_config(model_source: str, dtype: str, dims, *, budgets, benchmark_trials, steering_trials, num_questions,
               confidence_threshold, seed, nested, prompt_format, template_category,
               reference_compat: bool = False) -> dict:
    """The ``config.json`` of a profiles run: :meth:`Config.run_config
    <steerjax.studies.prompt_steerability.Config.run_config>` of these options."""
    return _config(dims, budgets=budgets, benchmark_trials=benchmark_trials, steering_trials=steering_trials,
                   num_questions=num_questions, confidence_threshold=confidence_threshold, seed=seed, nested=nested,
                   prompt_format=prompt_format, template_category=template_category,
                   reference_compat=reference_compat, dtype=dtype).run_config(model_source)


def prompt_plan(dim: str, budgets: Sequence[int], steering_trials: int, seed: int, *, benchmark_trial: int = 0,
                nested: bool = False, prompt_format: str = "reference") -> pd.DataFrame:
    """The prompts asked in one (dimension, benchmark trial): base, then every direction x budget
    x steering trial, with the steering statements drawn as the module docstring says.

    Returns:
      DataFrame with ``direction`` (``"base"`` first), ``budget`` (0 for base), ``trial``,
      ``system`` (the steering prompt; ``None`` for base) and ``seed`` (of the statement draw).
    """
    rows = [{"direction": "base", "budget": 0, "trial": 0, "system": None, "seed": -1}]
    for direction in DIRECTIONS:
        for budget in budgets:
            for trial in range(steering_trials):
                keys = (direction, trial) if nested else (direction, int(budget), trial)
                s = draw_seed(seed, "steering", dim, benchmark_trial, *keys)
                statements = steering_statements(dim, direction, int(budget), seed=s)
                rows.append({"direction": direction, "budget": int(budget), "trial": trial, "seed": s,
                             "system": steering_prompt(statements, prompt_format=prompt_format)})
    return pd.DataFrame(rows)


def profile_dimension(model, dim: str, *, benchmark_trial: int = 0, budgets: Sequence[int] = PAPER_BUDGETS,
                      steering_trials: int = 5, num_questions: int | None = 25, confidence_threshold: float = 0.85,
                      seed: int = 0, nested: bool = False, prompt_format: str = "reference",
                      template_category: str | None = None, batch_size: int = 64, progress: bool = False,
                      mesh=None) -> pd.DataFrame:
    """Answers of one dimension in one benchmark trial: the trial's profiling sample asked under
    the base prompt and every steering prompt (:func:`prompt_plan`), in one scoring call.

    Args:
      model: a :class:`steerjax.LanguageModel`.
      dim: a persona dimension.
      benchmark_trial: which benchmark trial (keys the profiling sample and the steering draws).
      budgets, steering_trials, nested, seed: as in :func:`run_profiles`.
      num_questions, confidence_threshold: the profiling sample
        (:func:`steerjax.data.prompt_steering.profiling_statements`).
      prompt_format, template_category, batch_size, progress, mesh: passed to
        :func:`~steerjax.studies.prompt_steerability.scoring.answer_logprobs`.

    Returns:
      One row per (prompt, question): ``dimension``, ``benchmark_trial``, ``direction``,
      ``budget``, ``trial``, ``statement``, ``statement_direction``, ``label_confidence``,
      ``logp_yes``, ``logp_no``, ``says_yes``, ``matches``.
    """
    questions = profiling_statements(dim, num_questions=num_questions, confidence_threshold=confidence_threshold,
                                     seed=draw_seed(seed, "profiling", dim, benchmark_trial))
    plan = prompt_plan(dim, budgets, steering_trials, seed, benchmark_trial=benchmark_trial, nested=nested,
                       prompt_format=prompt_format)
    systems = [s if isinstance(s, str) else None for s in plan["system"]]  # pandas stores None as NaN
    lp = answer_logprobs(model, systems, list(questions["statement"]), prompt_format=prompt_format,
                         template_category=template_category, batch_size=batch_size, progress=progress, mesh=mesh)
    says_yes = lp[..., 0] >= lp[..., 1]  # a tie is yes, as in the reference
    positive = (questions["direction"] == "positive").to_numpy()
    p, q = lp.shape[:2]
    return pd.DataFrame({
        "dimension": dim,
        "benchmark_trial": int(benchmark_trial),
        "direction": np.repeat(plan["direction"].to_numpy(), q),
        "budget": np.repeat(plan["budget"].to_numpy(), q),
        "trial": np.repeat(plan["trial"].to_numpy(), q),
        "statement": np.tile(questions["statement"].to_numpy(), p),
        "statement_direction": np.tile(questions["direction"].to_numpy(), p),
        "label_confidence": np.tile(questions["label_confidence"].to_numpy(), p),
        "logp_yes": lp[..., 0].reshape(-1),
        "logp_no": lp[..., 1].reshape(-1),
        "says_yes": says_yes.reshape(-1),
        "matches": answer_matches(says_yes, positive[None, :]).reshape(-1),
    })


def profiles_from_answers(answers: pd.DataFrame) -> pd.DataFrame:
    """Beta profile (alpha, beta) per dimension x benchmark trial x direction x budget x trial,
    with ``n_questions``, ``frac_matching`` and ``yes_rate`` (share of yes answers)."""
    keys = [k for k in PROFILE_KEYS if k in answers.columns]
    rows = []
    for key, g in answers.groupby(keys, sort=False):
        alpha, beta = profile_parameters(g["matches"].to_numpy(), g["label_confidence"].to_numpy())
        row = dict(zip(keys, key), alpha=float(alpha), beta=float(beta), n_questions=len(g),
                   frac_matching=float(g["matches"].mean()))
        if "says_yes" in g.columns:
            row["yes_rate"] = float(g["says_yes"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def extremes_from_answers(answers: pd.DataFrame) -> pd.DataFrame:
    """The maximally steered profiles of each (dimension, benchmark trial), from the confidences
    of that trial's profiling questions (the base prompt's rows)."""
    keys = [k for k in ("dimension", "benchmark_trial") if k in answers.columns]
    base = answers[answers["direction"] == "base"]
    conf = {(key if isinstance(key, tuple) else (key,)): g["label_confidence"].to_numpy()
            for key, g in base.groupby(keys, sort=False)}
    return extremes_table(conf if len(keys) == 2 else {k[0]: v for k, v in conf.items()})


def run_profiles(model, dims: str | Sequence[str], *, budgets: Sequence[int] = PAPER_BUDGETS,
                 benchmark_trials: int = 5, steering_trials: int = 5, num_questions: int | None = 25,
                 confidence_threshold: float = 0.85, seed: int = 0, nested: bool = False,
                 prompt_format: str = "reference", template_category: str | None = None, batch_size: int = 64,
                 reference_compat: bool = False, run_dir: str | None = None, progress: bool = True,
                 mesh=None) -> ProfileRun:
    """The prompt-steerability protocol for several dimensions, with the reference's trial structure.

    Args:
      model: a :class:`steerjax.LanguageModel`.
      dims: dimension names, ``"paper"`` (the paper's 32) or ``"all"`` (all 70).
      budgets: steering budgets ``k`` (default the reference's).
      benchmark_trials: profiling samples per dimension (each with its own base profile and
        extremes); the reference's ``num-benchmark-trials`` (5).
      steering_trials: steering prompts per direction and budget in each benchmark trial; the
        reference's ``num-steering-trials`` (5).
      num_questions: profiling questions per dimension and direction (the reference: 25);
        ``None`` asks all.
      confidence_threshold: least label confidence of a profiling question.
      seed: seeds every draw (:func:`draw_seed`); the reference is unseeded.
      nested: nested steering draws (smaller budgets' statements within larger ones') instead of
        the reference's independent draws.
      prompt_format: ``"reference"`` (IBM/prompt-steering's prompts) or ``"steerjax-v1"``.
      template_category: ``None`` for the tokenizer's chat template, or one of the reference's
        hand-written wrappers (:data:`steerjax.studies.prompt_steerability.templates.TEMPLATE_CATEGORIES`).
      batch_size, mesh: as in :func:`~steerjax.studies.prompt_steerability.scoring.answer_logprobs`.
      reference_compat: indices and curves with the reference code's W1 formula (a 200-point
        grid, :func:`~steerjax.studies.prompt_steerability.wasserstein`) instead of the exact W1;
        the answers and profiles are the same either way.
      run_dir: resumable run directory (one chunk per dimension and benchmark trial; its
        ``config.json`` records the options and the profiling source).
      progress: show a progress bar over chunks.

    Returns:
      A :class:`ProfileRun`.

    Raises:
      ProfileError, DataError: bad options (checked before any scoring, :func:`check_options`).
      RunConfigError: ``run_dir`` holds another run.
    """
    config = _config(dims, budgets=budgets, benchmark_trials=benchmark_trials, steering_trials=steering_trials,
                     num_questions=num_questions, confidence_threshold=confidence_threshold, seed=seed, nested=nested,
                     prompt_format=prompt_format, template_category=template_category,
                     reference_compat=reference_compat, dtype=getattr(model, "dtype", "float32"))
    check(config)
    dims, budgets = config.resolved_dims(), sorted({int(b) for b in config.budgets})
    store = None if run_dir is None else RunDirectory(
        run_dir, dict(config.run_config(model.source), **{MODEL_FINGERPRINT: getattr(model, "fingerprint", None)}))

    def work(_, chunk):
        dim, trial = chunk
        return profile_dimension(model, dim, benchmark_trial=trial, budgets=budgets, steering_trials=steering_trials,
                                 num_questions=num_questions, confidence_threshold=confidence_threshold, seed=seed,
                                 nested=nested, prompt_format=prompt_format, template_category=template_category,
                                 batch_size=batch_size, mesh=mesh)

    chunks = [(dim, t) for dim in dims for t in range(int(benchmark_trials))]
    answers = map_chunks(chunks, work, store=store, desc="dimension x benchmark trial", progress=progress)
    profiles = profiles_from_answers(answers)
    extremes = extremes_from_answers(answers)
    indices = steerability_indices(profiles, extremes, reference_compat=bool(reference_compat))
    return ProfileRun(answers, profiles, extremes, indices, steerability_curves(indices), asymmetry(indices),
                      base_summary(profiles))
