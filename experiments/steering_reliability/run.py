"""Reliability and generalisation of steering vectors as Tan et al. (2024) ran it, on one or more models.

The protocol is the paper's code (``dtch1997/repepo``, ``persona_generalization.py``) by default:
``--format repepo``, train on the first half of each dataset and test on the second, multipliers
-1.5 .. 1.5, a layer sweep on the paper's layer-sweep splits (skipped with ``--layer``), five
setting vectors and their mean per dataset, each evaluated under the five settings, then the
analyses and figures. The study itself is :mod:`steerjax.studies.reliability` (``Config``,
``check``, ``run``, ``Result``); this script parses flags and calls it.

    python experiments/steering_reliability/run.py --preset quick --out runs/reliability
    python experiments/steering_reliability/run.py --preset full --model A --model B --out runs/reliability-full

Reads its data from STEERJAX_DATA, else downloads it on first use (pinned, verified; see the
README). A run directory is resumable: trained vectors and finished sweep chunks are reused when
the same command is run again. ``config.json`` holds what was asked (written once; a different
command in the same directory is refused); ``run.json`` what the run found (each model's source
and chosen layer, the wall time, versions).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("MPLBACKEND", "Agg")  # plots are files; no display needed

from steerjax.studies.reliability import config as rc  # noqa: E402
from steerjax.studies.reliability.config import SETTINGS, VECTORS, model_slug  # noqa: E402, F401 (re-exported)

NAMES = {"datasets": "--datasets", "format": "--format", "split_compat": "--split-compat", "layer": "--layer",
         "multipliers": "--multipliers", "seed": "--seed", "dtype": "--dtype", "model": "--model", "out": "--out"}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Protocol elements and their sources: README, 'Steering reliability' table.")
    ap.add_argument("--preset", choices=sorted(rc.PRESETS), default="quick")
    ap.add_argument("--model", action="append", default=None,
                    help="a model id or path; repeat for the cross-model comparison "
                         "(default: steerjax.DEFAULT_MODEL, SmolLM2-135M-Instruct, offline)")
    ap.add_argument("--datasets", nargs="+", default=None, help="default: the preset's (full: the paper's 37 MWE sets)")
    ap.add_argument("--format", choices=sorted(rc.FORMATS), default="repepo",
                    help="prompt format and protocol (default: repepo, the paper's code)")
    ap.add_argument("--split-compat", choices=rc.SPLIT_COMPAT, default=None,
                    help="draw exactly the reference's examples: repepo's shuffle and split strings "
                         "(its test split '50:100%%' overlaps the training half: see the README)")
    ap.add_argument("--layer", type=int, default=None, help="skip the layer sweep and use this block (every model)")
    ap.add_argument("--multipliers", type=float, nargs="+", default=None, help="default: the preset's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default="runs/reliability")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import steerjax
    from steerjax.studies import reliability

    config = reliability.Config.preset(
        args.preset, datasets=args.datasets, format=args.format, split_compat=args.split_compat, layer=args.layer,
        multipliers=args.multipliers, seed=args.seed, dtype=args.dtype)
    models = args.model or [steerjax.DEFAULT_MODEL]
    reliability.check(config, names=NAMES, out=args.out, models=models)  # before any model loads
    result = reliability.run(models, config, args.out)
    result.figures(args.out)
    for slug in result.models:
        print(json.dumps({"model": slug, **result.summary(slug)}, default=str))
    return result


if __name__ == "__main__":
    from steerjax import sharding
    from steerjax.cli import guarded

    with sharding.use_mesh(sharding.from_env()):  # a launched multi-device or multi-host job (tpu_scripts/)
        guarded(main)
