"""``steerjax convert``: convert a model once into an orbax checkpoint that loads without converting."""

from __future__ import annotations

import os

from steerjax import runs
from steerjax.cli import checks
from steerjax.model import convert
from steerjax.models.checkpoint import check_target


def add_commands(sub) -> None:
    conv = sub.add_parser("convert", help="convert a model once: config, tokenizer and an orbax checkpoint",
                          description="Convert a model (GGUF tensors dequantized, HF tensors renamed, stacked and "
                                      "checked) and write its config, tokenizer files and converted state as an "
                                      "orbax checkpoint into --out. Pass that directory as MODEL to any command "
                                      "(or steerjax.load_model(DIR, mesh=...)): it is restored without converting, "
                                      "straight into a mesh's shardings. The directory is written under a "
                                      "temporary name and renamed when complete, so an interrupted conversion "
                                      "leaves nothing that loads.")
    conv.add_argument("source", metavar="SOURCE", help=checks.MODEL_HELP.replace("(default: ", "(e.g. "))
    conv.add_argument("--out", required=True, metavar="DIR", help="the directory to write (must not exist)")
    checks.add_revision(conv)
    checks.add_dtype(conv, "the dtype stored")
    conv.add_argument("--force", action="store_true", help="replace an existing --out directory")
    conv.set_defaults(run=run_convert)


def run_convert(args) -> int:
    checks.fold_revision(args, "source")
    checks.read_config(args.source)  # a bad source fails in milliseconds, before the weights are read
    out = runs.check_output_dir(args.out, force=args.force)
    check_target(out, force=args.force)  # with --force: only an empty or converted directory is replaced
    written = convert(args.source, out, dtype=args.dtype, force=True)
    size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(written) for f in files)
    print(f"wrote {written} ({size / 2**20:.1f} MiB, {args.dtype}): load it with steerjax.load_model({written!r})")
    return 0
