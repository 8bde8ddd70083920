"""``steerjax profile``: prompt steerability (Miehling et al. 2024)."""

from __future__ import annotations

from steerjax.cli import checks
from steerjax.studies.prompt_steerability.config import PAPER_BUDGETS, PROMPT_FORMATS

NAMES = {"dims": "--dims", "budgets": "--budgets", "benchmark_trials": "--benchmark-trials",
         "steering_trials": "--steering-trials", "num_questions": "--questions", "prompt_format": "--prompt-format",
         "template_category": "--template-category", "confidence_threshold": "--confidence-threshold",
         "seed": "--seed", "batch_size": "--batch-size", "out": "--out"}


def add_commands(sub) -> None:
    pr = sub.add_parser(
        "profile", help="prompt steerability: Beta profiles and steerability indices",
        description="Prompt steerability (Miehling et al. 2024) of persona dimensions, with the reference code's "
                    "protocol by default (its prompts, budgets and 5 x 5 trials); resumable.")
    checks.add_model(pr)
    pr.add_argument("--dims", nargs="+", required=True, metavar="DIM",
                    help="persona dimensions, 'paper' (the paper's 32) or 'all' (all 70)")
    pr.add_argument("--budgets", type=checks.positive_int, nargs="+", default=list(PAPER_BUDGETS), metavar="K",
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
    pr.add_argument("--reference-compat", action="store_true",
                    help="indices and curves with the reference code's W1 formula (a 200-point grid) instead of the "
                         "exact W1")
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
    from steerjax.studies.prompt_steerability import Config, check, run

    config = Config(dims=args.dims, budgets=args.budgets, benchmark_trials=args.benchmark_trials,
                    steering_trials=args.steering_trials, num_questions=args.num_questions,
                    confidence_threshold=args.confidence_threshold, seed=args.seed, nested=args.nested,
                    prompt_format=args.prompt_format, template_category=args.template_category,
                    reference_compat=args.reference_compat, batch_size=args.batch_size, dtype=args.dtype)
    check(config, names=NAMES, out=args.out, model_config=checks.read_config(args.model))  # before the model loads
    result = run(steerjax.load_model(args.model, dtype=args.dtype), config, args.out)
    result.figures(args.out)  # the run printed its tables (base profiles, asymmetry) as it went
    print(f"results in {args.out}")
    return 0
