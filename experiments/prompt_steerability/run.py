"""Prompt steerability (Miehling et al. 2024) of one model, and beyond: activation and joint steering.

1. Profiles: base profile and steered profiles (persona statements in the system prompt, budgets
   of k statements, several trials) of each persona dimension; steerability indices gamma+/-,
   curves over budgets, heatmap, asymmetry table, base-profile densities.
2. Activation steerability on the same scale: a contrastive vector from each dimension's
   steering statements, swept over multipliers, the same profiles and indices; one table compares
   prompt and activation steering dimension by dimension.
3. Joint steerability of two dimensions steered at once (Sinkhorn distances of joint profiles).
4. The exact W1 vs the reference code's formula on this run's profiles.

    python experiments/prompt_steerability/run.py --preset quick --out runs/prompt-steerability

Needs STEERJAX_DATA. The profile stage is resumable from its run directory. ``config.json`` holds
what was asked (written once; a different command in the same directory is refused); ``run.json``
what the run found (the model's source, the wall time, versions).
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
PRESETS = {
    "smoke": dict(dims=QUICK_DIMS[:2], budgets=[1, 2], trials=1, num_questions=3, multipliers=[1.0],
                  joint_dims=QUICK_DIMS[:2], joint_budgets=[1], joint_questions=2),
    # ~15 minutes on 2 CPU cores
    "quick": dict(dims=QUICK_DIMS, budgets=[1, 2, 5, 10, 20], trials=2, num_questions=8, multipliers=[1.0, 2.0, 4.0],
                  joint_dims=QUICK_DIMS[:2], joint_budgets=[1, 2, 5], joint_questions=6),
    # the paper's configuration (every dimension, budgets up to 100): for a GPU or TPU
    "full": dict(dims=None, budgets=[1, 2, 3, 4, 5, 10, 20, 50, 100], trials=5, num_questions=50,
                 multipliers=[0.5, 1.0, 2.0, 4.0, 8.0], joint_dims=QUICK_DIMS[:3], joint_budgets=[1, 2, 5, 10, 20],
                 joint_questions=20),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--model", default=None, help="default: steerjax.DEFAULT_MODEL (SmolLM2-135M-Instruct, offline)")
    ap.add_argument("--layer", type=int, default=None, help="activation-steering block (default: the middle one)")
    ap.add_argument("--confidence-threshold", type=float, default=0.85)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/prompt-steerability")
    args = ap.parse_args(argv)

    import steerjax
    from steerjax.profiles import plots, wasserstein_many
    from steerjax.profiles.activation import activation_profiles, compare_prompt_and_activation, joint_steerability
    from steerjax.profiles.data import list_dimensions
    from steerjax.profiles.indices import steerability_curves, steerability_indices
    from steerjax.profiles.run import run_profiles
    from steerjax.runs import RunLog, claim, write_json

    preset = dict(PRESETS[args.preset])
    preset["dims"] = preset["dims"] or list_dimensions()
    args.model = args.model or steerjax.DEFAULT_MODEL
    out = args.out
    claim(out, dict({k: v for k, v in vars(args).items() if k != "out"}, **preset))  # before the model loads
    log = RunLog(out, stamp=False)
    model = steerjax.load_model(args.model)
    layer = model.config.num_layers // 2 if args.layer is None else args.layer
    info = dict(model_source=model.source, layer=layer, steerjax=steerjax.__version__, python=platform.python_version())

    # 1. prompt steerability
    run = run_profiles(model, preset["dims"], budgets=preset["budgets"], trials=preset["trials"],
                       num_questions=preset["num_questions"], confidence_threshold=args.confidence_threshold,
                       seed=args.seed, run_dir=os.path.join(out, "profile_run"))
    run.save(out)
    plots.index_curves(run.curves, os.path.join(out, "index_curves.png"))
    plots.index_heatmap(run.curves, os.path.join(out, "index_heatmap.png"))
    plots.base_profiles(run.profiles, os.path.join(out, "base_profiles.png"))
    log(f"prompt steerability of {len(preset['dims'])} dimensions [{log.seconds:.0f}s]")
    log(run.asymmetry.to_string(index=False, float_format=lambda x: f"{x:.3f}"))

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

    # 4. exact W1 vs the reference code's formula on this run's (base, extreme) pairs
    pairs = run.profiles[run.profiles.direction == "base"].merge(run.extremes, on="dimension", suffixes=("", "_ext"))
    args_w = (pairs.alpha.to_numpy(), pairs.beta.to_numpy(), pairs.alpha_ext.to_numpy(), pairs.beta_ext.to_numpy())
    pairs["w1_exact"] = wasserstein_many(*args_w)
    pairs["w1_reference_formula"] = wasserstein_many(*args_w, reference_compat=True)
    pairs.to_csv(os.path.join(out, "w1_exact_vs_reference.csv"), index=False)
    rel = np.abs(pairs.w1_reference_formula - pairs.w1_exact) / pairs.w1_exact
    log(f"exact W1 vs reference formula on {len(pairs)} pairs: median relative difference {np.median(rel):.2%}, "
        f"max {np.max(rel):.2%}")
    info["seconds"] = log.seconds
    write_json(os.path.join(out, "run.json"), info)
    log(f"done in {info['seconds']}s: results in {out}")


if __name__ == "__main__":
    from steerjax import sharding
    from steerjax.cli import guarded

    with sharding.use_mesh(sharding.from_env()):  # a launched multi-device or multi-host job (tpu_scripts/)
        guarded(main)
