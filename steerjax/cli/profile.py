"""``steerjax profile``: prompt steerability (Miehling et al. 2024)."""

from __future__ import annotations

import os

from steerjax import paths
from steerjax.cli import checks


def add_commands(sub) -> None:
    pr = sub.add_parser("profile", help="prompt steerability: Beta profiles and steerability indices",
                        description="Prompt steerability (Miehling et al. 2024) of persona dimensions; resumable.")
    checks.add_model(pr)
    pr.add_argument("--dims", nargs="+", required=True, metavar="DIM", help="persona dimensions (or 'all')")
    pr.add_argument("--budgets", type=checks.positive_int, nargs="+", default=[1, 2, 5, 10, 20], metavar="K",
                    help="steering statements in the prompt (default: 1 2 5 10 20)")
    pr.add_argument("--trials", type=checks.positive_int, default=2, help="default: %(default)s")
    pr.add_argument("--num-questions", type=checks.positive_int, default=20,
                    help="profiling statements per dimension and direction (default: %(default)s)")
    pr.add_argument("--confidence-threshold", type=checks.nonnegative_float, default=0.85,
                    help="least label confidence of a profiling statement (default: %(default)s)")
    pr.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    pr.add_argument("--batch-size", type=checks.positive_int, default=64, help="default: %(default)s")
    checks.add_dtype(pr)
    pr.add_argument("--out", required=True, metavar="RUN_DIR",
                    help="run directory (resumed if it holds the same run)")
    pr.set_defaults(run=run_profile)


def run_profile(args) -> int:
    import steerjax
    from steerjax.profiles import plots
    from steerjax.profiles.data import DIRECTIONS, list_dimensions, steering_statements
    from steerjax.profiles.run import run_profiles

    dims = list_dimensions() if args.dims == ["all"] else args.dims
    budgets = sorted(set(args.budgets))
    for dim in dims:  # unknown dimensions, budgets beyond the statements available
        for direction in DIRECTIONS:
            steering_statements(dim, direction, budgets[-1], seed=args.seed)
    header = checks.read_config(args.model)
    paths.check_run_dir(args.out, {
        "kind": "profiles", "model": header.source, "dtype": args.dtype, "dims": dims, "budgets": budgets,
        "trials": args.trials, "num_questions": args.num_questions,
        "confidence_threshold": args.confidence_threshold, "seed": args.seed,
    })

    model = steerjax.load_model(args.model, dtype=args.dtype)
    run = run_profiles(model, dims, budgets=args.budgets, trials=args.trials, num_questions=args.num_questions,
                       confidence_threshold=args.confidence_threshold, seed=args.seed, batch_size=args.batch_size,
                       run_dir=args.out)
    run.save(args.out)
    plots.index_curves(run.curves, os.path.join(args.out, "index_curves.png"))
    plots.index_heatmap(run.curves, os.path.join(args.out, "index_heatmap.png"))
    plots.base_profiles(run.profiles, os.path.join(args.out, "base_profiles.png"))
    print(run.asymmetry.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"results in {args.out}")
    return 0
