"""Beyond the paper: activation steerability and joint steerability on the prompt-steerability scale.

- Activation steering: a contrastive vector from a dimension's own steering statements (mean
  residual stream at the last token of "You abide by the following principles:\\n- {s}" as a
  system prompt, positive minus negative statements), swept over multipliers; the profiling
  questions are scored under each multiplier, giving Beta profiles and the same steerability
  index, with |multiplier| in place of the budget. Prompt and activation steering of one model
  can then be compared dimension by dimension in one table.
- Joint steerability: steering prompts that combine statements of several dimensions; the joint
  profile is the product of the marginal Betas, and distances between joint profiles are OTT
  Sinkhorn distances (:func:`steerjax.studies.prompt_steerability.joint_sinkhorn`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from steerjax.data.batch import encode
from steerjax.data.examples import Example
from steerjax.data.prompt_steering import profiling_statements, query_messages, steering_prompt, steering_statements
from steerjax.studies.prompt_steerability.beta import BetaProfile, answer_matches, profile_parameters
from steerjax.studies.prompt_steerability.distance import joint_sinkhorn
from steerjax.studies.prompt_steerability.indices import extremes_table, steerability_indices
from steerjax.studies.prompt_steerability.scoring import answer_logprobs
from steerjax.vectors import mean_difference, read_activations


def statement_vector(model, dim: str, layer: int, *, batch_size: int = 16) -> np.ndarray:
    """Mean last-token residual stream (block ``layer``) of the dimension's positive steering
    statements minus that of its negative ones, each given as a one-statement steering prompt."""
    acts = []
    for direction in ("positive", "negative"):
        chats = [({"role": "system", "content": steering_prompt([s])}, {"role": "user", "content": "Hello."})
                 for s in steering_statements(dim, direction)]
        acts.append(read_activations(model, encode(model, chats), [layer], reduce=-1, batch_size=batch_size)[:, 0])
    return mean_difference(*acts)


def activation_profiles(model, dims: Sequence[str], *, layer: int, multipliers: Sequence[float] = (0.5, 1, 2, 4),
                        num_questions: int | None = 20, confidence_threshold: float = 0.85, seed: int = 0,
                        progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Profiles under activation steering: ``(profiles, extremes)`` tables in the format of
    :func:`steerjax.studies.prompt_steerability.indices.steerability_indices`, with ``budget = |multiplier|``
    (positive multipliers steer toward +, negative toward -; trial 0)."""
    from steerjax.sweeps import sweep

    mults = sorted({float(m) for m in multipliers if m > 0})
    grid = [0.0] + mults + [-m for m in mults]
    rows, conf = [], {}
    for dim in dims:
        q = profiling_statements(dim, num_questions=num_questions, confidence_threshold=confidence_threshold,
                                 seed=seed)
        conf[dim] = q["label_confidence"].to_numpy()
        examples = [Example(tuple(query_messages(s)), "yes", "no") for s in q["statement"]]
        vec = statement_vector(model, dim, layer)
        table = sweep(model, examples, {layer: vec}, layers=[layer], multipliers=grid, positions="all",
                      progress=progress)
        positive = (q["direction"] == "positive").to_numpy()
        for m, g in table.groupby("multiplier"):
            g = g.sort_values("example")
            alpha, beta = profile_parameters(answer_matches(g["propensity"].to_numpy() > 0, positive), conf[dim])
            direction = "base" if m == 0 else ("positive" if m > 0 else "negative")
            rows.append({"dimension": dim, "direction": direction, "budget": abs(float(m)), "trial": 0,
                         "alpha": float(alpha), "beta": float(beta), "layer": layer})
    return pd.DataFrame(rows), extremes_table(conf)


def compare_prompt_and_activation(prompt_indices: pd.DataFrame, activation_indices: pd.DataFrame) -> pd.DataFrame:
    """One row per dimension and direction: the index at the largest prompt budget (trial mean)
    next to the index at the largest activation multiplier."""
    def at_max(ind, col):
        ind = ind[ind["budget"] == ind.groupby(["dimension", "direction"])["budget"].transform("max")]
        return ind.groupby(["dimension", "direction"])["index"].mean().rename(col)

    return pd.concat([at_max(prompt_indices, "prompt_index"), at_max(activation_indices, "activation_index")],
                     axis=1).reset_index()


def joint_steerability(model, dims: Sequence[str], *, budgets: Sequence[int] = (1, 2, 5), direction: str = "positive",
                       num_questions: int | None = 10, confidence_threshold: float = 0.85, seed: int = 0,
                       sinkhorn: dict | None = None) -> pd.DataFrame:
    """Joint steerability of several dimensions steered at once (k statements of each, one prompt).

    The joint index is the paper's index with joint profiles (products of the marginal Betas) and
    Sinkhorn distances: ``(W(p0, p~) - W(p_k, p~)) / W(p~+, p~-)``, ``p~`` the joint extreme in
    ``direction``.
    """
    sinkhorn = sinkhorn or {}
    qs = {d: profiling_statements(d, num_questions=num_questions, confidence_threshold=confidence_threshold,
                                  seed=seed) for d in dims}
    questions = pd.concat([q.assign(dimension=d) for d, q in qs.items()], ignore_index=True)
    prompts = [None] + [steering_prompt([s for d in dims for s in steering_statements(d, direction, k, seed=seed)])
                        for k in budgets]
    lp = answer_logprobs(model, prompts, list(questions["statement"]), progress=False)
    positive = (questions["direction"] == "positive").to_numpy()
    matches = answer_matches(lp[..., 0] >= lp[..., 1], positive[None, :])  # a tie answers yes (the reference)
    profiles = []
    for p in range(len(prompts)):
        marg = []
        for d in dims:
            sel = (questions["dimension"] == d).to_numpy()
            a, b = profile_parameters(matches[p, sel], questions.loc[sel, "label_confidence"].to_numpy())
            marg.append(BetaProfile(float(a), float(b)))
        profiles.append(marg)
    ext_pos = [BetaProfile.extreme(qs[d]["label_confidence"].to_numpy(), "+") for d in dims]
    ext_neg = [BetaProfile.extreme(qs[d]["label_confidence"].to_numpy(), "-") for d in dims]
    target = ext_pos if direction == "positive" else ext_neg
    w_ext = joint_sinkhorn(ext_pos, ext_neg, **sinkhorn)
    w_base = joint_sinkhorn(profiles[0], target, **sinkhorn)
    rows = []
    for k, prof in zip([0, *budgets], profiles):
        w_k = joint_sinkhorn(prof, target, **sinkhorn) if k else w_base
        rows.append({"dimensions": "+".join(dims), "direction": direction, "budget": k,
                     "joint_index": (w_base - w_k) / w_ext, "w_steered_target": w_k, "w_extremes": w_ext,
                     **{f"mean[{d}]": p.mean for d, p in zip(dims, prof)}})
    return pd.DataFrame(rows)


__all__ = ["activation_profiles", "compare_prompt_and_activation", "joint_steerability", "statement_vector",
           "steerability_indices"]
