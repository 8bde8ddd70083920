"""The prompt-steerability study (Miehling et al. 2024) as one call: :func:`run` -> :class:`Result`.

Stages, each on when its :class:`~steerjax.studies.prompt_steerability.Config` options ask for it:

1. Profiles with the reference's protocol (:func:`~steerjax.studies.prompt_steerability.profiles.run_profiles`):
   answers, Beta profiles, extremes, steerability indices, curves, asymmetry, base summary.
2. Template sensitivity (``compare_formats``): the same questions, statements and budgets under
   the other prompt formats; yes-rates per format.
3. Activation steerability on the same scale (``multipliers``): a contrastive vector from each
   dimension's steering statements, the same profiles and indices, one table comparing prompt and
   activation steering.
4. Joint steerability of several dimensions steered at once (``joint_dims``).
5. The exact W1 against the reference code's formula on the run's (base, extreme) pairs.

Run directory: a profiles-only study (:attr:`Config.profiles_only`, the ``steerjax profile``
command) keeps its chunks beside its ``config.json`` in ``out``; a study with more stages claims
``out`` with its config and keeps each format's chunks in ``out/profile_run_<format>/`` (each a
profiles-only run directory). Both resume where a killed run stopped. The main format's tables are
in ``out``, another format's in ``out/<format>/``; ``run.json`` holds what the run found (model
source, layer, wall time, versions).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from typing import Any

import numpy as np
import pandas as pd

from steerjax.runs import RunLog, claim, write_json
from steerjax.studies.prompt_steerability import plots
from steerjax.studies.prompt_steerability.activation import (
    activation_profiles,
    compare_prompt_and_activation,
    joint_steerability,
)
from steerjax.studies.prompt_steerability.config import DIRECTIONS, Config, check
from steerjax.studies.prompt_steerability.distance import wasserstein_many
from steerjax.studies.prompt_steerability.indices import steerability_curves, steerability_indices
from steerjax.studies.prompt_steerability.profiles import ProfileRun, run_profiles
from steerjax.version import __version__

__all__ = ["Result", "run", "template_sensitivity", "w1_comparison", "yes_rates"]

_PROFILE_PARQUET = ("answers", "profiles", "extremes", "indices")
_PROFILE_CSV = {"curves": "curves.csv", "asymmetry": "asymmetry.csv", "base": "base_summary.csv"}


def _load_profiles(out: str) -> ProfileRun:
    tables = {name: pd.read_parquet(os.path.join(out, f"{name}.parquet")) for name in _PROFILE_PARQUET}
    tables.update({name: pd.read_csv(os.path.join(out, f), float_precision="round_trip")
                   for name, f in _PROFILE_CSV.items()})
    return ProfileRun(**tables)


def yes_rates(runs: dict[str, ProfileRun]) -> pd.DataFrame:
    """Share of yes answers per format, dimension, direction and budget (base: direction "base",
    budget 0), over all questions, benchmark and steering trials."""
    parts = []
    for fmt, run in runs.items():
        g = run.answers.groupby(["dimension", "direction", "budget"], sort=False)["says_yes"].mean()
        parts.append(g.rename("yes_rate").reset_index().assign(format=fmt))
    return pd.concat(parts, ignore_index=True)[["format", "dimension", "direction", "budget", "yes_rate"]]


def template_sensitivity(runs: dict[str, ProfileRun]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How results move between prompt formats, on the same questions, statements and budgets.

    Returns:
      ``(long, wide)``: ``long`` has one row per format x dimension x quantity (``base_mean``, or
      ``index`` per direction and budget) with ``value`` and ``spread`` (for
      :func:`steerjax.studies.prompt_steerability.plots.format_comparison`); ``wide`` one row per dimension with, per
      format, the base profile mean and yes-rate and gamma+/gamma- at the largest budget.
    """
    long, wide = [], {}
    for fmt, run in runs.items():
        for r in run.base.itertuples():
            long.append(dict(format=fmt, dimension=r.dimension, quantity="base_mean", direction="base", budget=0,
                             value=r.mean, spread=r.std))
            w = wide.setdefault(r.dimension, {"dimension": r.dimension})
            w[f"base_mean[{fmt}]"] = r.mean
            w[f"base_yes_rate[{fmt}]"] = r.yes_rate
        curves = run.curves[run.curves["budget"] > 0]
        for r in curves.itertuples():
            long.append(dict(format=fmt, dimension=r.dimension, quantity="index", direction=r.direction,
                             budget=r.budget, value=r.mean, spread=r.std))
        kmax = curves["budget"].max()
        for r in curves[curves["budget"] == kmax].itertuples():
            sign = "+" if r.direction == "positive" else "-"
            wide[r.dimension][f"gamma{sign}@{kmax}[{fmt}]"] = r.mean
    return pd.DataFrame(long), pd.DataFrame(list(wide.values()))


def w1_comparison(run: ProfileRun, *, reference_compat: bool = False) -> tuple[pd.DataFrame, float]:
    """The exact W1 and the reference code's formula on a run's (base, extreme) pairs, and the
    largest absolute difference between the run's indices and those of the other formula.

    Returns:
      ``(pairs, max_index_difference)``: ``pairs`` is the base profiles joined with their
      benchmark trial's extremes (suffix ``_ext``), with ``w1_exact`` and ``w1_reference_formula``.
    """
    keys = ["dimension", "benchmark_trial"]
    pairs = run.profiles[run.profiles.direction == "base"].merge(run.extremes, on=keys, suffixes=("", "_ext"))
    args = (pairs.alpha.to_numpy(), pairs.beta.to_numpy(), pairs.alpha_ext.to_numpy(), pairs.beta_ext.to_numpy())
    pairs["w1_exact"] = wasserstein_many(*args)
    pairs["w1_reference_formula"] = wasserstein_many(*args, reference_compat=True)
    other = steerability_indices(run.profiles, run.extremes, reference_compat=not reference_compat)
    diff = np.abs(other["index"].to_numpy() - run.indices["index"].to_numpy())
    return pairs, float(np.max(diff)) if diff.size else 0.0


@dataclasses.dataclass
class Result:
    """The tables of a prompt-steerability study.

    Attributes:
      config: the options it ran with.
      runs: profile tables per prompt format (:class:`~steerjax.studies.prompt_steerability.profiles.ProfileRun`),
        the main format first.
      yes_rates: :func:`yes_rates` of ``runs``.
      w1: :func:`w1_comparison`'s pairs (``w1_exact_vs_reference.csv``).
      template_sensitivity, template_sensitivity_long: :func:`template_sensitivity` (two or more formats).
      activation_profiles, activation_indices, prompt_vs_activation: the activation stage.
      joint: the joint stage.
      info: what the run found (``run.json``): model source, layer, seconds, versions, and
        ``index_reference_formula_max_abs_diff``.
    """

    config: Config
    runs: dict[str, ProfileRun]
    yes_rates: pd.DataFrame
    w1: pd.DataFrame
    template_sensitivity: pd.DataFrame | None = None
    template_sensitivity_long: pd.DataFrame | None = None
    activation_profiles: pd.DataFrame | None = None
    activation_indices: pd.DataFrame | None = None
    prompt_vs_activation: pd.DataFrame | None = None
    joint: pd.DataFrame | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def main(self) -> ProfileRun:
        """The main prompt format's tables."""
        return self.runs[self.config.prompt_format]

    def save(self, out: str) -> None:
        """Write every table: the main format's in ``out``, another format's in ``out/<format>/``."""
        os.makedirs(out, exist_ok=True)
        for fmt, run in self.runs.items():
            run.save(out if fmt == self.config.prompt_format else os.path.join(out, fmt))
        self.yes_rates.to_csv(os.path.join(out, "yes_rates.csv"), index=False)
        self.w1.to_csv(os.path.join(out, "w1_exact_vs_reference.csv"), index=False)
        if self.template_sensitivity is not None:
            self.template_sensitivity_long.to_csv(os.path.join(out, "template_sensitivity_long.csv"), index=False)
            self.template_sensitivity.to_csv(os.path.join(out, "template_sensitivity.csv"), index=False)
        if self.activation_profiles is not None:
            self.activation_profiles.to_parquet(os.path.join(out, "activation_profiles.parquet"), index=False)
            self.activation_indices.to_parquet(os.path.join(out, "activation_indices.parquet"), index=False)
            self.prompt_vs_activation.to_csv(os.path.join(out, "prompt_vs_activation.csv"), index=False)
        if self.joint is not None:
            self.joint.to_csv(os.path.join(out, "joint_steerability.csv"), index=False)
        write_json(os.path.join(out, "run.json"), self.info)

    @classmethod
    def load(cls, out: str) -> Result:
        """The result saved in run directory ``out`` (its ``config.json`` gives the options)."""
        with open(os.path.join(out, "config.json")) as f:
            config = _config_from_json(json.load(f))
        runs = {fmt: _load_profiles(out if fmt == config.prompt_format else os.path.join(out, fmt))
                for fmt in config.formats}
        path = lambda name: os.path.join(out, name)  # noqa: E731
        csv = lambda name: pd.read_csv(path(name), float_precision="round_trip") if os.path.exists(path(name)) else None  # noqa: E731
        parquet = lambda name: pd.read_parquet(path(name)) if os.path.exists(path(name)) else None  # noqa: E731
        info = {}
        if os.path.exists(path("run.json")):
            with open(path("run.json")) as f:
                info = json.load(f)
        return cls(config=config, runs=runs, yes_rates=csv("yes_rates.csv"), w1=csv("w1_exact_vs_reference.csv"),
                   template_sensitivity=csv("template_sensitivity.csv"),
                   template_sensitivity_long=csv("template_sensitivity_long.csv"),
                   activation_profiles=parquet("activation_profiles.parquet"),
                   activation_indices=parquet("activation_indices.parquet"),
                   prompt_vs_activation=csv("prompt_vs_activation.csv"), joint=csv("joint_steerability.csv"),
                   info=info)

    def figures(self, out: str) -> list[str]:
        """Draw the run's figures in ``out`` (the one place that decides which); returns their paths.

        Per prompt format (the main one in ``out``, others in ``out/<format>/``):
        ``index_curves.png``, ``index_heatmap.png``, ``base_profiles.png``; with two or more
        formats ``format_comparison.png``; with the activation stage ``activation_index_curves.png``.
        """

        w1 = "reference W1 formula" if self.config.reference_compat else "exact W1"
        model = self.info.get("model_source")
        on = f" — {os.path.basename(os.path.normpath(model))}" if model else ""
        paths = []
        for fmt, run in self.runs.items():
            where = out if fmt == self.config.prompt_format else os.path.join(out, fmt)
            os.makedirs(where, exist_ok=True)
            paths.append(plots.index_curves(
                run.curves, os.path.join(where, "index_curves.png"),
                title=f"Prompt steerability index γ (share of W1 between extremes closed; {w1}), {fmt} prompts"
                      f"{on}\n(mean ± std over benchmark trials)"))
            paths.append(plots.index_heatmap(
                run.curves, os.path.join(where, "index_heatmap.png"),
                title=f"Mean steerability index γ by budget ({w1}), {fmt} prompts{on}"))
            paths.append(plots.base_profiles(
                run.profiles, os.path.join(where, "base_profiles.png"),
                title=f"Base profiles (Beta density of matching the positive answer), {fmt} prompts{on}\n"
                      "(mixture over benchmark trials; dashed: mean)"))
        if self.template_sensitivity_long is not None:
            paths.append(plots.format_comparison(self.template_sensitivity_long,
                                                 os.path.join(out, "format_comparison.png"),
                                                 formats=list(self.runs)))
        if self.activation_indices is not None:
            layer = self.info.get("layer")
            paths.append(plots.index_curves(
                steerability_curves(self.activation_indices), os.path.join(out, "activation_index_curves.png"),
                title=f"Activation steerability index γ ({w1}) at block {layer}{on} (budget = |multiplier|)"))
        return [os.fspath(p) for p in paths]

    def summary(self) -> dict[str, float | int | str]:
        """The headline numbers as a flat dict.

        Per dimension ``<dim>`` of the main prompt format, at the largest budget ``K`` (key
        ``budget``):

        - ``<dim>/gamma_pos``, ``<dim>/gamma_neg``: the steerability index toward + and toward -
          (mean over benchmark trials of the steering-trial means, the reference's curve value);
        - ``<dim>/gamma_pos_std`` (and ``_neg``): its spread over benchmark trials (sample std,
          NaN with one benchmark trial), and ``<dim>/gamma_pos_lo`` / ``_hi``: mean -/+ that std;
        - ``<dim>/asymmetry``: ``gamma_pos - gamma_neg``;
        - ``<dim>/base_mean``, ``<dim>/base_std``: the base profile (paper's Tables 4-9);
        - with the activation stage, ``<dim>/activation_gamma_pos`` and ``_neg`` at the largest
          |multiplier|.

        Overall: ``budget``, ``n_dimensions``, ``benchmark_trials``, ``steering_trials``,
        ``prompt_format``, ``w1`` (``"exact"`` or ``"reference"``), ``mean_gamma_pos``,
        ``mean_gamma_neg``, ``model`` (when known).
        """
        curves = self.main.curves
        k = int(curves["budget"].max())
        at_k = curves[curves["budget"] == k]
        out: dict[str, float | int | str] = {
            "budget": k, "n_dimensions": int(curves["dimension"].nunique()),
            "benchmark_trials": int(self.config.benchmark_trials), "steering_trials": int(self.config.steering_trials),
            "prompt_format": self.config.prompt_format, "w1": "reference" if self.config.reference_compat else "exact",
        }
        if self.info.get("model_source"):
            out["model"] = str(self.info["model_source"])
        for direction, sign in zip(DIRECTIONS, ("pos", "neg")):
            rows = at_k[at_k["direction"] == direction]
            out[f"mean_gamma_{sign}"] = float(rows["mean"].mean())
        base = self.main.base.set_index("dimension")
        for r in at_k.itertuples():
            sign = "pos" if r.direction == "positive" else "neg"
            key = f"{r.dimension}/gamma_{sign}"
            out[key] = float(r.mean)
            out[f"{key}_std"] = float(r.std)
            out[f"{key}_lo"] = float(r.mean - r.std)
            out[f"{key}_hi"] = float(r.mean + r.std)
        for dim in at_k["dimension"].unique():
            out[f"{dim}/asymmetry"] = out[f"{dim}/gamma_pos"] - out[f"{dim}/gamma_neg"]
            out[f"{dim}/base_mean"] = float(base.loc[dim, "mean"])
            out[f"{dim}/base_std"] = float(base.loc[dim, "std"])
        if self.activation_indices is not None:
            act = steerability_curves(self.activation_indices)
            act = act[act["budget"] == act["budget"].max()]
            for r in act.itertuples():
                out[f"{r.dimension}/activation_gamma_{'pos' if r.direction == 'positive' else 'neg'}"] = float(r.mean)
        return out


def _config_from_json(cfg: dict[str, Any]) -> Config:
    fields = {f.name for f in dataclasses.fields(Config)} - {"preset_name"}
    kw = {k: v for k, v in cfg.items() if k in fields}
    return Config(**kw, preset_name=cfg.get("preset"))


def run(model, config: Config, out: str, *, mesh=None, progress: bool = True) -> Result:
    """Run the study on ``model`` into run directory ``out`` (resumed when it holds this run).

    Args:
      model: a :class:`steerjax.LanguageModel`.
      config: the options (:class:`~steerjax.studies.prompt_steerability.Config`).
      out: the run directory (see the module docstring for its layout).
      mesh: passed to the scoring.
      progress: progress bars and a log of each stage (printed and appended to ``out/log.txt``).

    Returns:
      The :class:`Result`, also saved in ``out`` (tables and ``run.json``; figures are drawn by
      :meth:`Result.figures`).

    Raises:
      SteerjaxError: a bad option (:func:`check`), or ``out`` holding another run.
    """
    check(config, model_config=model.config)
    start = time.time()
    layer = (model.config.num_layers // 2 if config.layer is None else config.layer) if config.multipliers else None
    if config.profiles_only:
        dirs = {config.prompt_format: out}
    else:
        claim(out, config.run_config(model.source))  # before anything else is written
        dirs = {fmt: os.path.join(out, f"profile_run_{fmt}") for fmt in config.formats}
    log = RunLog(out, stamp=False) if progress else (lambda msg: None)
    dims = config.resolved_dims()
    table = lambda df: df.to_string(index=False, float_format=lambda x: f"{x:.3f}")  # noqa: E731
    profile_kw = dict(budgets=config.budgets, benchmark_trials=config.benchmark_trials,
                      steering_trials=config.steering_trials, num_questions=config.num_questions,
                      confidence_threshold=config.confidence_threshold, seed=config.seed, nested=config.nested,
                      template_category=config.template_category, batch_size=config.batch_size,
                      reference_compat=config.reference_compat, progress=progress, mesh=mesh)
    runs = {}
    for fmt, where in dirs.items():
        runs[fmt] = run_profiles(model, dims, prompt_format=fmt, run_dir=where, **profile_kw)
        log(f"prompt steerability of {len(dims)} dimensions, {fmt} prompts [{time.time() - start:.0f}s]")
        log(table(runs[fmt].base))
        log(table(runs[fmt].asymmetry))
    result = Result(config=config, runs=runs, yes_rates=yes_rates(runs), w1=pd.DataFrame())
    if len(runs) > 1:
        result.template_sensitivity_long, result.template_sensitivity = template_sensitivity(runs)
        log(f"template sensitivity, {' vs '.join(runs)}")
        log(table(result.template_sensitivity))
    main = runs[config.prompt_format]
    if config.multipliers:
        result.activation_profiles, act_extremes = activation_profiles(
            model, dims, layer=layer, multipliers=config.multipliers, num_questions=config.num_questions,
            confidence_threshold=config.confidence_threshold, seed=config.seed)
        result.activation_indices = steerability_indices(result.activation_profiles, act_extremes,
                                                         reference_compat=config.reference_compat)
        result.prompt_vs_activation = compare_prompt_and_activation(main.indices, result.activation_indices)
        log(f"activation steerability at block {layer} [{time.time() - start:.0f}s]")
        log(table(result.prompt_vs_activation))
    if config.joint_dims:
        result.joint = pd.concat([joint_steerability(model, list(config.joint_dims), budgets=config.joint_budgets,
                                                     direction=d, num_questions=config.joint_questions,
                                                     confidence_threshold=config.confidence_threshold,
                                                     seed=config.seed)
                                  for d in DIRECTIONS], ignore_index=True)
        log(f"joint steerability of {'+'.join(config.joint_dims)} [{time.time() - start:.0f}s]")
        log(table(result.joint))
    result.w1, diff = w1_comparison(main, reference_compat=config.reference_compat)
    rel = np.abs(result.w1.w1_reference_formula - result.w1.w1_exact) / result.w1.w1_exact
    log(f"exact W1 vs reference formula on {len(result.w1)} (base, extreme) pairs: median relative difference "
        f"{np.median(rel):.2%}, max {np.max(rel):.2%}; on the {len(main.indices)} indices: max absolute difference "
        f"{diff:.4f}")
    seconds = round(time.time() - start, 1)
    result.info = dict(model_source=model.source, layer=layer, steerjax=__version__,
                       python=platform.python_version(), seconds=seconds,
                       index_reference_formula_max_abs_diff=diff)
    result.save(out)
    log(f"done in {seconds}s: results in {out}")
    return result
