"""Prompt steerability (Miehling et al. 2024) of one model, and beyond: templates, activation and joint steering.

1. Profiles, with the reference code's protocol (IBM/prompt-steering): its prompts, benchmark
   trials x steering trials, budgets of k statements; steerability indices gamma+/-, curves over
   budgets with the reference's spread, heatmap, asymmetry table, base profiles (Tables 4-9).
2. Template sensitivity (``--compare-formats``, on in the smoke and quick presets): the same
   questions, statements and budgets under the reference's prompts and steerjax's earlier ones.
3. Activation steerability on the same scale, compared with prompt steering dimension by dimension.
4. Joint steerability of two dimensions steered at once (Sinkhorn distances of joint profiles).
5. The exact W1 vs the reference code's formula (``--reference-compat``: the indices use the latter).

    python experiments/prompt_steerability/run.py --preset quick --out runs/prompt-steerability

Every stage is the library's (:mod:`steerjax.studies.prompt_steerability`: ``Config``, ``check``,
``run``, ``Result``); this script parses flags. The profile stage is resumable from its run
directories (``profile_run_<format>``); ``config.json`` holds what was asked, ``run.json`` what the
run found. The main format's tables and figures are in the run directory, the other format's in
``<out>/<format>/``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MPLBACKEND", "Agg")  # plots are files; no display needed

import steerjax  # noqa: E402
from steerjax.model import load_config  # noqa: E402
from steerjax.studies.prompt_steerability import PRESETS, Config, check, run  # noqa: E402
from steerjax.studies.prompt_steerability.config import PROMPT_FORMATS  # noqa: E402

NAMES = {"layer": "--layer", "prompt_format": "--prompt-format", "template_category": "--template-category",
         "confidence_threshold": "--confidence-threshold", "seed": "--seed", "out": "--out", "model": "--model"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--model", default=None, help="default: steerjax.DEFAULT_MODEL (SmolLM2-135M-Instruct, offline)")
    ap.add_argument("--layer", type=int, default=None, help="activation-steering block (default: the middle one)")
    ap.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="reference",
                    help="the main run's prompts (default: %(default)s, IBM/prompt-steering's)")
    ap.add_argument("--template-category", default=None,
                    help="the reference's hand-written chat wrapper (default: the tokenizer's chat template)")
    ap.add_argument("--compare-formats", action=argparse.BooleanOptionalAction, default=None,
                    help="also run the other prompt format on the same questions, statements and budgets "
                         "(default: on in the smoke and quick presets)")
    ap.add_argument("--reference-compat", action="store_true",
                    help="indices and curves with the reference code's W1 formula (200-point grid) instead of the "
                         "exact W1")
    ap.add_argument("--confidence-threshold", type=float, default=0.85)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/prompt-steerability")
    args = ap.parse_args(argv)

    config = Config.preset(args.preset, layer=args.layer, prompt_format=args.prompt_format,
                           template_category=args.template_category, compare_formats=args.compare_formats,
                           reference_compat=args.reference_compat or None,
                           confidence_threshold=args.confidence_threshold, seed=args.seed)
    source = args.model or steerjax.DEFAULT_MODEL
    check(config, names=NAMES, out=args.out, model_config=load_config(source))  # before the model loads
    result = run(steerjax.load_model(source), config, args.out)
    result.figures(args.out)
    for key, value in result.summary().items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    from steerjax import sharding
    from steerjax.cli import guarded

    with sharding.use_mesh(sharding.from_env()):  # a launched multi-device or multi-host job (tpu_scripts/)
        guarded(main)
