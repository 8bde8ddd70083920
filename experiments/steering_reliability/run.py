"""Reliability and generalisation of steering vectors as Tan et al. (2024) ran it, on one or more models.

The protocol is the paper's code (``dtch1997/repepo``, ``persona_generalization.py``) by default:
``--format repepo``, train on the first half of each dataset and test on the second, multipliers
-1.5 .. 1.5, a layer sweep on the paper's layer-sweep splits (skipped with ``--layer``), five
setting vectors and their mean per dataset, each evaluated under the five settings, then the
analyses and figures. The study itself is :mod:`steerjax.studies.reliability` (``Config``,
``check``, ``run``, ``Result``; ``steerjax reliability`` on the command line); this script
parses flags and calls it.

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
import os

os.environ.setdefault("MPLBACKEND", "Agg")  # plots are files; no display needed

from steerjax.cli.reliability import NAMES, add_study_arguments, run_study  # noqa: E402
from steerjax.studies.reliability.config import SETTINGS, VECTORS, model_slug  # noqa: E402, F401 (re-exported)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Protocol elements and their sources: docs/protocols.md.")
    ap.add_argument("--model", action="append", default=None,
                    help="a model id or path; repeat for the cross-model comparison "
                         "(default: steerjax.DEFAULT_MODEL, SmolLM2-135M-Instruct, offline)")
    add_study_arguments(ap)
    ap.add_argument("--out", default="runs/reliability")
    return ap.parse_args(argv)


def main(argv=None):
    """Parse, check every input before any model loads, run the study, draw its figures, print
    its summary; returns the :class:`~steerjax.studies.reliability.Result`."""
    import steerjax

    args = parse_args(argv)
    return run_study(args.model or [steerjax.DEFAULT_MODEL], args, names=dict(NAMES, model="--model"))


if __name__ == "__main__":
    from steerjax import sharding
    from steerjax.cli import guarded

    with sharding.use_mesh(sharding.from_env()):  # a launched multi-device or multi-host job (tpu_scripts/)
        guarded(main)
