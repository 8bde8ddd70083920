"""``steerjax datasets``, ``steerjax vector train`` and ``steerjax sweep``."""

from __future__ import annotations

import json
import os
import shutil
import sys

import steerjax
from steerjax import runs
from steerjax.cli import checks
from steerjax.data import check_split, list_datasets, load_dataset
from steerjax.data.formats import FORMATS as PROMPT_FORMATS
from steerjax.errors import CheckpointError, DataError, OutputPathError, SteeringError
from steerjax.studies.reliability.config import (
    FORMATS,
    METHODS,
    OPERATORS,
    PAPER_MULTIPLIERS,
    POSITIONS,
    SETTINGS,
    SPLIT_COMPAT,
)
from steerjax.studies.reliability.sweep_result import TABLES as SWEEP_TABLES  # noqa: F401 (the files written)
from steerjax.studies.reliability.sweep_result import SweepResult
from steerjax.sweeps import SATURATION, check_multipliers, run_config, saturating_multipliers
from steerjax.vectors import export_control_vector_gguf, train_vector
from steerjax.vectors.learned import checkpoint_step

#: beside ``--out``, the checkpoints of a ``--method learned`` run (every 10 steps), kept until the
#: vector is written: the same command resumes from them after Ctrl-C or a crash
CHECKPOINT_SUFFIX = ".checkpoint"


def add_commands(sub) -> None:
    ds = sub.add_parser("datasets", help="list the bundled MWE datasets ($STEERJAX_DATA)",
                        description="List the MWE datasets found under $STEERJAX_DATA, one name a line.")
    ds.add_argument("--kind", choices=("persona", "xrisk"), default=None, help="one family (default: all)")
    ds.set_defaults(run=run_datasets)

    vec = sub.add_parser("vector", help="train steering vectors",
                         description="Train steering vectors.").add_subparsers(dest="action", required=True,
                                                                               metavar="ACTION")
    train = vec.add_parser("train", help="train a steering vector on a dataset split",
                           description="Train a steering vector (CAA, PCA, probe or learned) on a dataset split.")
    checks.add_model(train)
    add_data_arguments(train, "0%:40%")
    train.add_argument("--layers", required=True, metavar="L", help="blocks: '13', '10,13,16', '8-16' or 'all'")
    train.add_argument("--method", choices=METHODS, default="caa",
                       help="default: %(default)s. learned keeps checkpoints in "
                            f"OUT{CHECKPOINT_SUFFIX}/ (every 10 steps) until the vector is written: the same "
                            "command, run again after Ctrl-C or a crash, resumes from the last one")
    train.add_argument("--token-index", type=int, default=None,
                       help="token read, from the end of prompt+completion (default: the format's, -2: the answer "
                            "letter)")
    train.add_argument("--out", required=True, metavar="FILE",
                       help="output .safetensors (or .gguf: a llama.cpp control vector); its folder must exist")
    checks.add_force(train, "the --out file")
    train.set_defaults(run=run_vector_train)

    sw = sub.add_parser("sweep", help="multiplier sweep: propensity and steerability",
                        description="Score a dataset split under every (layer, multiplier), then write the tables "
                                    "and plots (propensity curves, per-example steerability); resumable.")
    checks.add_model(sw)
    add_data_arguments(sw, "40%:100%")
    sw.add_argument("--vector", required=True, metavar="FILE", help="a steerjax vector file (steerjax vector train)")
    sw.add_argument("--layers", default=None, metavar="L", help="blocks to sweep (default: every layer in the file)")
    sw.add_argument("--multipliers", type=checks.finite_float, nargs="+", metavar="M",
                    default=list(PAPER_MULTIPLIERS), help="default: -1.5 -1 -0.5 0 0.5 1 1.5")
    sw.add_argument("--positions", choices=POSITIONS, default=None,
                    help="steer from the answer on, from the prompt's last token on, or the whole prompt too "
                         "(default: the format's: last_prompt for repepo, completion for the others)")
    sw.add_argument("--operator", choices=OPERATORS, default="add",
                    help="default: %(default)s")
    sw.add_argument("--memory-budget-mb", type=checks.positive_float, default=2048, metavar="MB",
                    help="activation memory per chunk (default: %(default)s)")
    sw.add_argument("--out", required=True, metavar="RUN_DIR",
                    help="run directory (resumed if it holds the same sweep)")
    sw.set_defaults(run=run_sweep)


def add_data_arguments(parser, split: str) -> None:
    parser.add_argument("--dataset", required=True, metavar="NAME", help="an MWE dataset (steerjax datasets)")
    parser.add_argument("--split", default=split, metavar="A%:B%",
                        help="percent range of the shuffled rows (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="split shuffle seed (default: %(default)s)")
    parser.add_argument("--max-examples", type=checks.positive_int, default=None, metavar="N",
                        help="keep at most N examples of the split")
    parser.add_argument("--setting", choices=SETTINGS, default="baseline",
                        help="the dataset's persona prompt: SYS_* replaces the system message, PT_* goes before "
                             "the question (default: %(default)s, none)")
    parser.add_argument("--format", choices=FORMATS, default="steerjax",
                        help="prompt format: system message, persona separator, answer joining, steered tokens "
                             "and propensity as steerjax, the paper's code (repepo) or steering-bench do "
                             "(default: %(default)s)")
    parser.add_argument("--split-compat", choices=SPLIT_COMPAT, default=None,
                        help="shuffle and read --split as the paper's code did (repepo: 'start:end', a bare "
                             "number is a row index, e.g. '0:50%%'; default: steerjax's shuffle, 'a%%:b%%')")
    checks.add_dtype(parser)


def load_split(args) -> list:
    """The examples of ``--dataset``/``--split`` (read before any model loads)."""

    try:
        check_split(args.split, args.split_compat)
    except DataError as e:
        raise DataError(f"--split: {e}") from e
    return load_dataset(args.dataset, split=args.split, seed=args.seed, setting=args.setting, format=args.format,
                        split_compat=args.split_compat, max_examples=args.max_examples)


# ----------------------------------------------------------------------------- datasets


def run_datasets(args) -> int:

    for name in list_datasets(args.kind):
        print(name)
    return 0


# ----------------------------------------------------------------------------- vector train


#: in the checkpoint directory: the options of the command that started it, checked before the
#: model loads (the optimisation's own settings, checked when it starts, need the model)
COMMAND_FILE = "command.json"


def _learned_command(args) -> dict:
    """What makes a learned-vector run the same run: every option but ``--force``."""
    return {k: v for k, v in sorted(vars(args).items())
            if k != "force" and isinstance(v, (str, int, float, bool, type(None)))}


def _check_checkpoint_command(checkpoint: str, command: dict, out: str) -> None:
    path = os.path.join(checkpoint, COMMAND_FILE)
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            held = json.load(f)
    except (OSError, ValueError):
        return  # unreadable: the optimisation's own settings decide, after the model loads
    diff = runs.config_difference(held, command)
    if diff:
        shown = "; ".join(f"{k}: {held.get(k)!r} there, {command.get(k)!r} now" for k in diff[:3])
        raise CheckpointError(f"--out {out}: {checkpoint} holds the checkpoints of another `vector train --method "
                              f"learned` run (other settings: {shown}): rerun the command that started them to finish "
                              f"it, or delete {checkpoint} to start over")


def run_vector_train(args) -> int:

    checks.layer_spec(args.layers)
    runs.check_output_file(args.out, force=args.force)
    checkpoint = args.out + CHECKPOINT_SUFFIX if args.method == "learned" else None
    if checkpoint is not None and os.path.lexists(checkpoint) and not os.path.isdir(checkpoint):
        raise OutputPathError(f"--out {args.out}: {checkpoint} (where --method learned keeps its checkpoints) "
                              "is not a directory; move it away")
    command = _learned_command(args) if checkpoint is not None else None
    if command is not None:
        _check_checkpoint_command(checkpoint, command, args.out)  # before the model loads
    gguf = args.out.endswith(".gguf")
    examples = load_split(args)
    header = checks.read_config(args.model)
    layers = checks.parse_layers(args.layers, header.config.num_layers)
    if gguf and 0 in layers:
        raise SteeringError(f"--out {args.out}: llama.cpp control vectors cannot steer block 0 "
                            f"(--layers {args.layers} includes it); drop it, or write a .safetensors file")

    model = steerjax.load_model(args.model, dtype=args.dtype)
    token_index = PROMPT_FORMATS[args.format].token_index if args.token_index is None else args.token_index
    options = {}
    if checkpoint is not None:
        options["checkpoint_dir"] = checkpoint
        os.makedirs(checkpoint, exist_ok=True)
        runs.write_json(os.path.join(checkpoint, COMMAND_FILE), command)
        step = checkpoint_step(checkpoint)
        if step is not None:
            print(f"resuming the learned vector from step {step} in {checkpoint}", file=sys.stderr)
    try:
        vec = train_vector(model, examples, layers=layers, method=args.method, token_index=token_index, **options)
    except CheckpointError as e:
        if checkpoint is None:
            raise
        raise CheckpointError(f"{e} (these are the checkpoints of an unfinished `steerjax vector train --method "
                              f"learned --out {args.out}`: rerun the command that started them to finish it, "
                              f"or delete {checkpoint} to start over)") from e
    vec.metadata.update({"dataset": args.dataset, "split": args.split, "seed": args.seed,
                         "split_compat": args.split_compat, "prompt_format": args.format, "setting": args.setting})
    if gguf:
        export_control_vector_gguf(args.out, vec.vectors, model_hint=model.config.model_type)
    else:
        vec.save(args.out)
    if checkpoint is not None:  # the vector is written: nothing left to resume
        shutil.rmtree(checkpoint, ignore_errors=True)
    norms = ", ".join(f"{layer}: {n:.2f}" for layer, n in sorted(vec.norms().items()))
    print(f"{args.method} vector from {len(examples)} examples of {args.dataset} [{args.split}] -> {args.out}")
    print(f"norms by layer: {norms}")
    return 0


# ----------------------------------------------------------------------------- sweep


def run_sweep(args) -> int:

    if args.layers is not None:
        checks.layer_spec(args.layers)
    fmt = PROMPT_FORMATS[args.format]
    positions = fmt.steer_from if args.positions is None else args.positions
    examples = load_split(args)
    header = checks.read_config(args.model)
    cfg = header.config
    vec = checks.read_vectors(args.vector, num_layers=cfg.num_layers, allow_npy=False)
    vectors = vec.vectors
    layers = sorted(vectors) if args.layers is None else checks.parse_layers(args.layers, cfg.num_layers)
    missing = [layer for layer in layers if layer not in vectors]
    if missing:
        raise SteeringError(f"{args.vector} has no vector for layer(s) {missing} of --layers {args.layers}; "
                            f"it has {sorted(vectors)}")
    checks.check_width(args.vector, vec, cfg)
    check_multipliers(args.multipliers, flag="--multipliers")
    norms = vec.norms()
    saturating = saturating_multipliers(args.multipliers, [norms[layer] for layer in layers])
    if saturating:
        print(f"warning: --multipliers {' '.join(f'{m:g}' for m in saturating)} times the vector's norm "
              f"(up to {max(norms[layer] for layer in layers):.3g}) exceeds {SATURATION:g}: the steered residual is "
              "the vector alone there, so the propensity stops changing with the multiplier", file=sys.stderr)
    runs.check_run_dir(args.out, run_config(
        header.source, dtype=args.dtype, layers=layers, multipliers=args.multipliers, positions=positions,
        propensity=fmt.propensity, operator=args.operator, batch_size=None, memory_budget_mb=args.memory_budget_mb,
        n_examples=len(examples)))

    model = steerjax.load_model(args.model, dtype=args.dtype)
    table = steerjax.sweep(model, examples, vectors, layers=layers, multipliers=args.multipliers,
                           positions=positions, propensity=fmt.propensity, operator=args.operator,
                           memory_budget_mb=args.memory_budget_mb, run_dir=args.out)
    facts = {**{k: v for k, v in vars(args).items() if k != "run"}, "positions": positions,
             "propensity": fmt.propensity, "vector_metadata": vec.metadata,
             "vector_norms": {str(layer): norms[layer] for layer in layers}}
    result = SweepResult.from_table(table, facts)
    written = result.save(args.out) + result.figures(args.out)
    cols = ["dataset", "layer", "n", "steerability", "steerability_std", "anti_steerable_fraction"]
    print(result.steerability[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    for path in written:
        print(f"wrote {path}")
    return 0
