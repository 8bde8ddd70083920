"""``steerjax profile``: prompt steerability (Miehling et al. 2024)."""

from __future__ import annotations

import os

from steerjax import runs
from steerjax.cli import checks

PAPER_BUDGETS = [1, 2, 3, 4, 5, 10, 20, 50, 100]  # studies.prompt_steerability.run (fast --help)
PROMPT_FORMATS = ("reference", "steerjax-v1")  # steerjax.data.prompt_steering.PROMPT_FORMATS; checked again in the run


def add_commands(sub) -> None:
    pr = sub.add_parser(
        "profile", help="prompt steerability: Beta profiles and steerability indices",
        description="Prompt steerability (Miehling et al. 2024) of persona dimensions, with the reference code's "
                    "protocol by default (its prompts, budgets and 5 x 5 trials); resumable.")
    checks.add_model(pr)
    pr.add_argument("--dims", nargs="+", required=True, metavar="DIM",
                    help="persona dimensions, 'paper' (the paper's 32) or 'all' (all 70)")
    pr.add_argument("--budgets", type=checks.positive_int, nargs="+", default=PAPER_BUDGETS, metavar="K",
                    help="steering statements in the prompt (default: the paper's, 1 2 3 4 5 10 20 50 100)")
    pr.add_argument("--benchmark-trials", type=checks.positive_int, default=5,
                    help="profiling samples per dimension, each with its own base profile (default: %(default)s)")
    pr.add_argument("--steering-trials", type=checks.positive_int, default=5,
                    help="steering prompts per direction, budget and benchmark trial (default: %(default)s)")
    pr.add_argument("--questions", "--num-questions", dest="num_questions", type=checks.positive_int, default=25,
                    help="profiling questions per dimension and direction (default: %(default)s)")
    pr.add_argument("--nested", action="store_true",
                    help="nested steering draws (a budget's statements within the larger budgets') instead of the "
                         "reference's independent draws")
    pr.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="reference",
                    help="'reference': IBM/prompt-steering's prompts; 'steerjax-v1': steerjax's earlier ones "
                         "(default: %(default)s)")
    pr.add_argument("--template-category", default=None, metavar="NAME",
                    help="the reference's hand-written chat wrapper (llama-3, phi3, ...); default: the tokenizer's "
                         "chat template")
    pr.add_argument("--confidence-threshold", type=checks.nonnegative_float, default=0.85,
                    help="least label confidence of a profiling statement (default: %(default)s)")
    pr.add_argument("--seed", type=int, default=0, help="seeds every draw (default: %(default)s)")
    pr.add_argument("--batch-size", type=checks.positive_int, default=64, help="default: %(default)s")
    checks.add_dtype(pr)
    pr.add_argument("--out", required=True, metavar="RUN_DIR",
                    help="run directory (resumed if it holds the same run)")
    pr.set_defaults(run=run_profile)


def run_profile(args) -> int:
    import steerjax
    from steerjax.errors import ProfileError, TokenizerError
    from steerjax.studies.prompt_steerability import plots
    from steerjax.studies.prompt_steerability.run import check_options, run_config, run_profiles
    from steerjax.studies.prompt_steerability.templates import TEMPLATE_CATEGORIES

    options = dict(budgets=args.budgets, benchmark_trials=args.benchmark_trials,
                   steering_trials=args.steering_trials, num_questions=args.num_questions,
                   confidence_threshold=args.confidence_threshold, seed=args.seed,
                   prompt_format=args.prompt_format, template_category=args.template_category)
    if args.template_category is not None and args.template_category not in TEMPLATE_CATEGORIES:
        raise ProfileError(f"--template-category {args.template_category!r} is not one of the reference's wrappers: "
                           f"{', '.join(TEMPLATE_CATEGORIES)} (or leave it out for the tokenizer's chat template)")
    dims, budgets = check_options(args.dims, **options)
    header = checks.read_config(args.model)
    if not header.tokenizer:
        raise TokenizerError(f"{args.model} has no tokenizer: profiling questions are text")
    if args.template_category is None and not header.chat_template:
        raise TokenizerError(f"{args.model} has no chat template: pass --template-category (one of the reference's "
                             "hand-written wrappers) or use a chat model")
    options.update(budgets=budgets)
    runs.check_run_dir(args.out, run_config(header.source, args.dtype, dims, nested=args.nested, **options))

    model = steerjax.load_model(args.model, dtype=args.dtype)
    run = run_profiles(model, dims, nested=args.nested, batch_size=args.batch_size, run_dir=args.out, **options)
    run.save(args.out)
    plots.index_curves(run.curves, os.path.join(args.out, "index_curves.png"))
    plots.index_heatmap(run.curves, os.path.join(args.out, "index_heatmap.png"))
    plots.base_profiles(run.profiles, os.path.join(args.out, "base_profiles.png"))
    print(run.asymmetry.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"results in {args.out}")
    return 0
