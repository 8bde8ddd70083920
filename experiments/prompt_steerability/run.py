"""Prompt steerability (Miehling et al. 2024) of one model, and beyond: templates, activation and joint steering.

1. Profiles, with the reference code's protocol (IBM/prompt-steering): its prompts, benchmark
   trials (each a fresh sample of profiling questions, with its own base profile) x steering trials
   (fresh steering statements per budget and trial), budgets of k statements; steerability indices
   gamma+/-, curves over budgets with the reference's spread, heatmap, asymmetry table, base
   profiles summarised as the paper's Tables 4-9.
2. Template sensitivity (``--compare-formats``, on in the smoke and quick presets): the same
   questions, statements and budgets under the reference's prompts and steerjax's earlier ones
   ("steerjax-v1"); a table and a figure of how base profiles and indices move, and the yes-rates.
3. Activation steerability on the same scale: a contrastive vector from each dimension's
   steering statements, swept over multipliers, the same profiles and indices; one table compares
   prompt and activation steering dimension by dimension.
4. Joint steerability of two dimensions steered at once (Sinkhorn distances of joint profiles).
5. The exact W1 vs the reference code's formula on this run's profiles and indices.

    python experiments/prompt_steerability/run.py --preset quick --out runs/prompt-steerability

Reads its data from STEERJAX_DATA, else downloads it on first use (pinned, verified; see the
README). The profile stage is resumable from its run directories
(``profile_run_<format>``). ``config.json`` holds what was asked (written once; a different command
in the same directory is refused); ``run.json`` what the run found (the model's source, the wall
time, versions). The main format's tables and figures are in the run directory, the other
format's in ``<out>/<format>/``.
"""

from __future__ import annotations

import argparse
import os
import platform

os.environ.setdefault("MPLBACKEND", "Agg")  # plots are files; no display needed

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

QUICK_DIMS = ["agreeableness", "narcissism", "conscientiousness", "politically-liberal", "risk-seeking",
              "believes-in-gun-rights", "subscribes-to-utilitarianism", "machiavellianism"]
PAPER_BUDGETS = [1, 2, 3, 4, 5, 10, 20, 50, 100]
FORMATS = ("reference", "steerjax-v1")
PRESETS = {
    # the test's: seconds on a tiny chat model
    "smoke": dict(dims=QUICK_DIMS[:1], budgets=[1, 2], benchmark_trials=2, steering_trials=2, num_questions=2,
                  compare_formats=True, multipliers=[1.0], joint_dims=QUICK_DIMS[:2], joint_budgets=[1],
                  joint_questions=2),
    # about 10 minutes on 2 CPU cores with SmolLM2-135M-Instruct (see the README for how it differs from the paper)
    "quick": dict(dims=QUICK_DIMS[:4], budgets=[1, 5, 20], benchmark_trials=2, steering_trials=2, num_questions=8,
                  compare_formats=True, multipliers=[1.0, 4.0], joint_dims=QUICK_DIMS[:2], joint_budgets=[1, 5],
                  joint_questions=5),
    # the paper's configuration (its 32 dimensions, budgets up to 100, 5 x 5 trials, 25 questions per
    # direction): for a GPU or TPU
    "full": dict(dims="paper", budgets=PAPER_BUDGETS, benchmark_trials=5, steering_trials=5, num_questions=25,
                 compare_formats=False, multipliers=[0.5, 1.0, 2.0, 4.0, 8.0], joint_dims=QUICK_DIMS[:3],
                 joint_budgets=[1, 2, 5, 10, 20], joint_questions=20),
}


def profile_figures(run, out: str, label: str) -> None:
    """The curves, heatmap and base-profile figures of one format's run in ``out``."""
    from steerjax.studies.prompt_steerability import plots

    plots.index_curves(run.curves, os.path.join(out, "index_curves.png"),
                       title=f"Prompt steerability, {label} prompts (mean ± std over benchmark trials)")
    plots.index_heatmap(run.curves, os.path.join(out, "index_heatmap.png"))
    plots.base_profiles(run.profiles, os.path.join(out, "base_profiles.png"),
                        title=f"Base profiles, {label} prompts (mixture over benchmark trials; dashed: mean)")


def yes_rates(runs: dict) -> pd.DataFrame:
    """Share of yes answers per format, dimension, direction and budget (base: direction "base",
    budget 0), over all questions, benchmark and steering trials."""
    parts = []
    for fmt, run in runs.items():
        g = run.answers.groupby(["dimension", "direction", "budget"], sort=False)["says_yes"].mean()
        parts.append(g.rename("yes_rate").reset_index().assign(format=fmt))
    return pd.concat(parts, ignore_index=True)[["format", "dimension", "direction", "budget", "yes_rate"]]


def template_sensitivity(runs: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--model", default=None, help="default: steerjax.DEFAULT_MODEL (SmolLM2-135M-Instruct, offline)")
    ap.add_argument("--layer", type=int, default=None, help="activation-steering block (default: the middle one)")
    ap.add_argument("--prompt-format", choices=FORMATS, default="reference",
                    help="the main run's prompts (default: %(default)s, IBM/prompt-steering's)")
    ap.add_argument("--template-category", default=None,
                    help="the reference's hand-written chat wrapper (default: the tokenizer's chat template)")
    ap.add_argument("--compare-formats", action=argparse.BooleanOptionalAction, default=None,
                    help="also run the other prompt format on the same questions, statements and budgets "
                         "(default: on in the smoke and quick presets)")
    ap.add_argument("--confidence-threshold", type=float, default=0.85)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/prompt-steerability")
    args = ap.parse_args(argv)

    import steerjax
    from steerjax.data.prompt_steering import profiling_source
    from steerjax.errors import ProfileError
    from steerjax.runs import RunLog, claim, write_json
    from steerjax.studies.prompt_steerability import plots, wasserstein_many
    from steerjax.studies.prompt_steerability.activation import (
        activation_profiles,
        compare_prompt_and_activation,
        joint_steerability,
    )
    from steerjax.studies.prompt_steerability.indices import steerability_curves, steerability_indices
    from steerjax.studies.prompt_steerability.run import check_options, run_profiles
    from steerjax.studies.prompt_steerability.templates import TEMPLATE_CATEGORIES

    preset = dict(PRESETS[args.preset])
    if args.compare_formats is not None:
        preset["compare_formats"] = args.compare_formats
    if args.template_category is not None and args.template_category not in TEMPLATE_CATEGORIES:
        raise ProfileError(f"--template-category {args.template_category!r} is not one of "
                           f"{', '.join(TEMPLATE_CATEGORIES)} (leave it out for the tokenizer's chat template)")
    formats = [args.prompt_format] + ([f for f in FORMATS if f != args.prompt_format]
                                      if preset["compare_formats"] else [])
    trial_kw = dict(budgets=preset["budgets"], benchmark_trials=preset["benchmark_trials"],
                    steering_trials=preset["steering_trials"], num_questions=preset["num_questions"],
                    confidence_threshold=args.confidence_threshold, seed=args.seed,
                    template_category=args.template_category)
    preset["dims"], preset["budgets"] = check_options(preset["dims"], prompt_format=args.prompt_format, **trial_kw)
    trial_kw["budgets"] = preset["budgets"]
    args.model = args.model or steerjax.DEFAULT_MODEL
    out = args.out
    claim(out, dict({k: v for k, v in vars(args).items() if k != "out"}, formats=formats,
                    profiling_source=profiling_source(), **preset))  # before the model loads
    log = RunLog(out, stamp=False)
    model = steerjax.load_model(args.model)
    layer = model.config.num_layers // 2 if args.layer is None else args.layer
    info = dict(model_source=model.source, layer=layer, steerjax=steerjax.__version__, python=platform.python_version())

    # 1. prompt steerability, under each prompt format (the first is the main run, in OUT itself)
    runs = {}
    for fmt in formats:
        where = out if fmt == formats[0] else os.path.join(out, fmt)
        run = run_profiles(model, preset["dims"], prompt_format=fmt, run_dir=os.path.join(out, f"profile_run_{fmt}"),
                           **trial_kw)
        run.save(where)
        profile_figures(run, where, fmt)
        runs[fmt] = run
        log(f"prompt steerability of {len(preset['dims'])} dimensions, {fmt} prompts [{log.seconds:.0f}s]")
        log(run.base.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        log(run.asymmetry.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    run = runs[formats[0]]
    rates = yes_rates(runs)
    rates.to_csv(os.path.join(out, "yes_rates.csv"), index=False)

    # 1b. template sensitivity (beyond the paper): the same questions and statements, another format
    if len(runs) > 1:
        long, wide = template_sensitivity(runs)
        long.to_csv(os.path.join(out, "template_sensitivity_long.csv"), index=False)
        wide.to_csv(os.path.join(out, "template_sensitivity.csv"), index=False)
        plots.format_comparison(long, os.path.join(out, "format_comparison.png"), formats=formats)
        log(f"template sensitivity, {' vs '.join(formats)}")
        log(wide.to_string(index=False, float_format=lambda x: f"{x:.3f}"))

    # 2. activation steerability, same scale
    act_profiles, act_extremes = activation_profiles(
        model, preset["dims"], layer=layer, multipliers=preset["multipliers"], num_questions=preset["num_questions"],
        confidence_threshold=args.confidence_threshold, seed=args.seed)
    act_indices = steerability_indices(act_profiles, act_extremes)
    act_profiles.to_parquet(os.path.join(out, "activation_profiles.parquet"), index=False)
    act_indices.to_parquet(os.path.join(out, "activation_indices.parquet"), index=False)
    plots.index_curves(steerability_curves(act_indices), os.path.join(out, "activation_index_curves.png"),
                       title=f"activation steering at block {layer} (budget = |multiplier|)")
    comparison = compare_prompt_and_activation(run.indices, act_indices)
    comparison.to_csv(os.path.join(out, "prompt_vs_activation.csv"), index=False)
    log(f"activation steerability at block {layer} [{log.seconds:.0f}s]")
    log(comparison.to_string(index=False, float_format=lambda x: f"{x:.3f}"))

    # 3. joint steerability of two dimensions
    joint = pd.concat([joint_steerability(model, preset["joint_dims"], budgets=preset["joint_budgets"], direction=d,
                                          num_questions=preset["joint_questions"],
                                          confidence_threshold=args.confidence_threshold, seed=args.seed)
                       for d in ("positive", "negative")], ignore_index=True)
    joint.to_csv(os.path.join(out, "joint_steerability.csv"), index=False)
    log(f"joint steerability of {'+'.join(preset['joint_dims'])} [{log.seconds:.0f}s]")
    log(joint.to_string(index=False, float_format=lambda x: f"{x:.3f}"))

    # 4. exact W1 vs the reference code's formula on this run's (base, extreme) pairs, and on the indices
    keys = ["dimension", "benchmark_trial"]
    pairs = run.profiles[run.profiles.direction == "base"].merge(run.extremes, on=keys, suffixes=("", "_ext"))
    args_w = (pairs.alpha.to_numpy(), pairs.beta.to_numpy(), pairs.alpha_ext.to_numpy(), pairs.beta_ext.to_numpy())
    pairs["w1_exact"] = wasserstein_many(*args_w)
    pairs["w1_reference_formula"] = wasserstein_many(*args_w, reference_compat=True)
    pairs.to_csv(os.path.join(out, "w1_exact_vs_reference.csv"), index=False)
    rel = np.abs(pairs.w1_reference_formula - pairs.w1_exact) / pairs.w1_exact
    ref_indices = steerability_indices(run.profiles, run.extremes, reference_compat=True)
    diff = np.abs(ref_indices["index"].to_numpy() - run.indices["index"].to_numpy())
    log(f"exact W1 vs reference formula on {len(pairs)} (base, extreme) pairs: median relative difference "
        f"{np.median(rel):.2%}, max {np.max(rel):.2%}; on the {len(diff)} indices: max absolute difference "
        f"{np.max(diff):.4f}")
    info["seconds"] = log.seconds
    info["index_reference_formula_max_abs_diff"] = float(np.max(diff))
    write_json(os.path.join(out, "run.json"), info)
    log(f"done in {info['seconds']}s: results in {out}")


if __name__ == "__main__":
    from steerjax import sharding
    from steerjax.cli import guarded

    with sharding.use_mesh(sharding.from_env()):  # a launched multi-device or multi-host job (tpu_scripts/)
        guarded(main)
