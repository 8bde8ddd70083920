"""``steerjax testbed`` and ``steerjax predictor train|search``: the steerability predictor."""

from __future__ import annotations

from steerjax import runs
from steerjax.cli import checks
from steerjax.errors import DataError, SteerjaxError
from steerjax.studies.steerability_prediction.features import DEFAULT_FEATURE_SET, FEATURE_SETS
from steerjax.studies.steerability_prediction.search import STRATEGIES


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
    tb.add_argument("--source", choices=("statements", "ab"), default="statements",
                    help="concept vectors from each dimension's statements against all dimensions' statements, "
                         "or CAA on its A/B questions (default: %(default)s)")
    tb.add_argument("--pairs", type=checks.positive_int, default=32, metavar="N",
                    help="statements (or A/B examples) per concept vector (default: %(default)s)")
    tb.add_argument("--positions", choices=("all", "generated"), default="all",
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
    ptr.add_argument("--protocol", choices=("cv", "paper"), default="cv",
                     help="evaluation: concept-grouped CV (--folds), or the paper's (seen/unseen concepts, 70/10/20 "
                          "prompts, CatBoost settings chosen on validation; --folds adds CV) (default: %(default)s)")
    ptr.add_argument("--batch-size", type=checks.positive_int, default=32, help="default: %(default)s")
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
    import steerjax
    from steerjax.data import list_datasets
    from steerjax.studies.steerability_prediction import NEUTRAL_PROMPTS, pipeline

    if args.prompts > len(NEUTRAL_PROMPTS):
        raise SteerjaxError(f"--prompts must be in 1..{len(NEUTRAL_PROMPTS)} (the built-in neutral prompts), "
                            f"got {args.prompts}")
    header = checks.read_config(args.model)
    layer = checks.layer_index("--layer", args.layer, header.config.num_layers)
    names = None if args.concepts == ["all"] else args.concepts
    known = list_datasets("persona")
    unknown = [n for n in names or () if n not in known]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise DataError(f"--concepts: unknown persona dimension {unknown[0]!r}{hint} "
                        "(steerjax datasets --kind persona lists them)")
    runs.check_run_dir(args.out, {
        "kind": "testbed", "model": header.source, "dtype": args.dtype, "layer": layer,
        "max_new_tokens": args.max_new_tokens, "seed": args.seed, "batch_size": args.batch_size,
        "positions": args.positions, "temperature": args.temperature,
        **({"top_k": args.top_k} if args.top_k else {}),
    }, allowed=pipeline.TESTBED_FILES)

    model = steerjax.load_model(args.model, dtype=args.dtype)
    run = pipeline.run_testbed(model, names, NEUTRAL_PROMPTS[:args.prompts], args.strengths, layer=layer,
                               max_new_tokens=args.max_new_tokens, out=args.out, source=args.source,
                               pairs=args.pairs, positions=args.positions, batch_size=args.batch_size,
                               temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(f"{len(run.rollouts)} rollouts ({args.prompts} prompts x ({len(run.concepts)} concepts x "
          f"{len(args.strengths)} strengths + unsteered)), layer {layer}, {args.max_new_tokens} new tokens")
    print(f"results in {args.out}")
    return 0


# ----------------------------------------------------------------------------- predictor train


def run_predictor_train(args) -> int:
    import steerjax
    from steerjax.studies.steerability_prediction import UNSTEERED, pipeline
    from steerjax.studies.steerability_prediction.features import replays_judge

    testbed = pipeline.load_testbed(args.testbed)
    pipeline.check_training(testbed, steps=args.steps, search_k=args.search_k, folds=args.folds,
                            feature_set=args.feature_set, protocol=args.protocol,
                            names={"steps": "--steps", "search_k": "--search-k", "folds": "--folds",
                                   "protocol": "--protocol"})
    runs.check_output_dir(args.out, force=args.force)
    cfg = testbed.config
    model = steerjax.load_model(cfg["model"], dtype=cfg.get("dtype", "float32"))
    done = pipeline.train_predictor(model, testbed, out=args.out, steps=args.steps, search_k=args.search_k,
                                    folds=args.folds, iterations=args.iterations, batch_size=args.batch_size,
                                    seed=args.seed, feature_set=args.feature_set, protocol=args.protocol)
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
    print(f"predictor (features {args.feature_set!r} of the first {args.search_k} steps) in {args.out}")
    return 0


# ----------------------------------------------------------------------------- predictor search


def run_predictor_search(args) -> int:
    import steerjax
    from steerjax.studies.steerability_prediction import judge as judges
    from steerjax.studies.steerability_prediction import pipeline
    from steerjax.studies.steerability_prediction.classifier import SteerabilityPredictor
    from steerjax.studies.steerability_prediction.search import guided_search

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
    print(res["text"])
    if args.out:
        from steerjax.runs import write_json

        write_json(args.out, {k: (v.to_dict(orient="records") if hasattr(v, "to_dict") else v) for k, v in res.items()})
        print(f"wrote {args.out}")
    return 0
