"""``steerjax reliability``: the reliability study of Tan et al. 2024 (steering vectors' reliability
and generalisation), and the flags it shares with ``experiments/steering_reliability/run.py``."""

from __future__ import annotations

import argparse
import json

from steerjax.cli import checks
from steerjax.model import DEFAULT_MODEL
from steerjax.studies import reliability
from steerjax.studies.reliability import Config
from steerjax.studies.reliability.config import FORMATS, PRESETS, SPLIT_COMPAT

NAMES = {"datasets": "--datasets", "format": "--format", "split_compat": "--split-compat", "layer": "--layer",
         "multipliers": "--multipliers", "seed": "--seed", "dtype": "--dtype", "model": "MODEL", "out": "--out"}
"""Config field -> flag, for the study's messages."""


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The study's options (everything but the models and the run directory)."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="smoke (tests), quick (minutes on a laptop) or full (the paper's scale; default: "
                             "%(default)s)")
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="default: the preset's (full: the paper's 37 MWE sets)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="repepo",
                        help="prompt format and protocol (default: repepo, the paper's code)")
    parser.add_argument("--split-compat", choices=SPLIT_COMPAT, default=None,
                        help="draw exactly the reference's examples: repepo's shuffle and split strings "
                             "(its test split '50:100%%' overlaps the training half: see docs/protocols.md)")
    parser.add_argument("--layer", type=int, default=None, help="skip the layer sweep and use this block (every model)")
    parser.add_argument("--multipliers", type=checks.finite_float, nargs="+", default=None,
                        help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0, help="split shuffle and bootstrap seed (default: %(default)s)")
    checks.add_dtype(parser)


def config_from_args(args):
    """The study's :class:`~steerjax.studies.reliability.Config` from parsed flags."""

    return Config.preset(args.preset, datasets=args.datasets, format=args.format, split_compat=args.split_compat,
                         layer=args.layer, multipliers=args.multipliers, seed=args.seed, dtype=args.dtype)


def run_study(models, args, names=NAMES):
    """Check every input (before any model loads), run the study, draw its figures, print its
    summary (one JSON line per model). Returns the result."""

    config = config_from_args(args)
    reliability.check(config, names=names, out=args.out, models=models)
    result = reliability.run(models, config, args.out)
    result.figures(args.out)
    for slug in result.models:
        print(json.dumps({"model_dir": slug, **result.summary(slug)}, default=str))
    return result


def add_commands(sub) -> None:
    rel = sub.add_parser(
        "reliability", help="reliability of steering vectors (Tan et al. 2024): layer sweep, ID/OOD, spurious factors",
        description="The reliability study of Tan et al. 2024 with the paper's code's protocol by default: a layer "
                    "sweep, five setting vectors and their mean per dataset evaluated under five prompt settings, "
                    "then steerability with bootstrap intervals, anti-steerable fraction, spurious factors and "
                    "ID/OOD shifts, as tables and figures; resumable.")
    rel.add_argument("models", nargs="*", metavar="MODEL",
                     help=f"model(s); several add the cross-model comparison (default: {DEFAULT_MODEL})")
    add_study_arguments(rel)
    rel.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (resumed if it holds the same run)")
    rel.set_defaults(run=run_reliability)


def run_reliability(args) -> int:
    run_study(args.models or [DEFAULT_MODEL], args)
    return 0
