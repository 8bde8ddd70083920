"""Predicting steerability early (Fan et al., "When is Your LLM Steerable?") on one model.

The protocol is the library's steerability-prediction study
(:mod:`steerjax.studies.steerability_prediction.study`: testbed, judges, early features, the
CatBoost predictor on unseen concepts next to strength-only, majority and CGS, the strength search
against IGS/CGS/TCGS, bootstrap intervals over concepts), the same as ``steerjax predictor study``;
this script picks a preset (:data:`~steerjax.studies.steerability_prediction.config.PRESETS`;
``steerboost`` is SteerBoost's setting), checks every input before any model loads, runs it, draws
its figures and prints its headline.

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

from steerjax.cli.predictor import add_study_arguments, study  # noqa: E402
from steerjax.studies.steerability_prediction.config import PRESETS  # noqa: E402, F401  (the presets, for tests)


def main(argv=None) -> dict:
    """Run the study; returns what it found (``summary.json``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_arguments(ap, default_out="runs/steerability-predictor", model_flag=True)
    return study(ap.parse_args(argv)).details


if __name__ == "__main__":
    from steerjax import sharding
    from steerjax.cli import guarded

    with sharding.use_mesh(sharding.from_env()):  # a launched multi-device or multi-host job (tpu_scripts/)
        guarded(main)
