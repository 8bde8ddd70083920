"""``steerjax report``: the three papers' measures of one model on one page, over the same persona
concepts (:mod:`steerjax.report`)."""

from __future__ import annotations

import shlex

from steerjax import report as report_lib
from steerjax import sharding
from steerjax.cli import checks
from steerjax.errors import SteerjaxError
from steerjax.model import DEFAULT_MODEL
from steerjax.report.config import PRESETS, cost


def add_commands(sub) -> None:
    presets = "; ".join(f"{p}: {cost(p)}" for p in PRESETS)
    rep = sub.add_parser(
        "report", help="the three papers' measures of one model, side by side per persona concept (HTML + JSON)",
        description="Runs (or resumes, or reuses) three studies on the same persona concepts: prompt steerability "
                    "(Miehling et al.), activation steerability and its reliability (Tan et al.) and steering "
                    "strength with an early predictor (Fan et al.); then writes OUT/report.html (one self-contained "
                    "page) and OUT/report.json (every number on it). A killed report resumes when rerun; a rerun "
                    f"with other --concepts reuses the studies it holds. Presets: {presets}.")
    rep.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL",
                     help=f"a chat model: an alias, a local HF directory, a .gguf file or a hub id (default: "
                          f"{DEFAULT_MODEL})")
    checks.add_revision(rep)
    rep.add_argument("--concepts", nargs="+", metavar="NAME", default=None,
                     help="persona dimensions (default: the preset's; --list-concepts lists those every source holds)")
    rep.add_argument("--preset", choices=list(PRESETS), default="quick",
                     help="the concepts (unless --concepts) and each study's size (default: %(default)s)")
    rep.add_argument("--allow-partial", action="store_true",
                     help="measure a concept that a data source lacks with the studies that do not need that source")
    rep.add_argument("--out", metavar="DIR", default=None,
                     help="the report's directory (resumed when it holds a report of the same model and preset)")
    rep.add_argument("--seed", type=checks.nonnegative_int, default=0,
                     help="every study's seed and the bootstrap's (default: %(default)s)")
    rep.add_argument("--n-boot", type=checks.positive_int, default=2000,
                     help="bootstrap resamples of the correlations' intervals (default: %(default)s)")
    rep.add_argument("--mesh", metavar="DATA,MODEL", default=None,
                     help="a device mesh for the studies, e.g. 8,1 (default: $STEERJAX_MESH, else every device "
                          "data-parallel)")
    checks.add_dtype(rep)
    rep.add_argument("--list-concepts", action="store_true", help="print the concepts every source holds and exit")
    rep.set_defaults(run=run_report)


def _mesh(spec: str | None):
    if spec is None:
        return None
    try:
        data, model = (int(x) for x in spec.split(","))
    except ValueError:
        raise SteerjaxError(f"--mesh must be DATA,MODEL (two integers, e.g. 8,1), got {spec!r}") from None
    if data < 1 or model < 1:
        raise SteerjaxError(f"--mesh sizes must be >= 1, got {spec!r}")
    return data, model


def run_report(args) -> int:
    if args.list_concepts:
        for name in report_lib.shared_concepts():
            print(name)
        return 0
    if args.out is None:
        raise SteerjaxError("--out is required: the report's directory")
    sizes = _mesh(args.mesh)
    config = report_lib.Config(preset=args.preset, concepts=None if args.concepts is None else tuple(args.concepts),
                               allow_partial=args.allow_partial, seed=args.seed, dtype=args.dtype, n_boot=args.n_boot)
    mesh = sharding.make_mesh(*sizes) if sizes else sharding.from_env()
    # run() reads the model's config and checks every input before any weights load
    rep = report_lib.run(args.model, config, args.out, mesh=mesh,
                         command=_command(args))
    for c in rep.doc["correlations"]:
        print(f"spearman({c['x']}, {c['y']}) over {c['n']} concepts: {_num(c['rho'])} "
              f"[{_num(c['lo'])}, {_num(c['hi'])}]")
    print(f"report: {rep.html}")
    return 0


def _command(args) -> str:
    """The command, as the options it ran with (the same for a rerun that resumes)."""
    words = ["steerjax", "report", args.model, "--preset", args.preset]
    if args.concepts is not None:
        words += ["--concepts", *args.concepts]
    if args.allow_partial:
        words.append("--allow-partial")
    words += ["--seed", str(args.seed), "--out", args.out]
    return " ".join(map(shlex.quote, words))


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


__all__ = ["add_commands", "run_report"]
