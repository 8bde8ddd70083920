"""The ``steerjax`` command line.

Examples::

    steerjax info                                   # the default model (SmolLM2-135M-Instruct)
    steerjax info /models/llama --json
    steerjax generate --prompt "Tell me about cats"
    steerjax generate MODEL --prompt "Hi" --vector happy.safetensors --multiplier 4 --compare

Errors that steerjax raises on purpose (:class:`steerjax.errors.SteerjaxError`) print
``error: <message>`` to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from steerjax.errors import SteerjaxError, SteeringError
from steerjax.model import DEFAULT_MODEL

DTYPES = ("float32", "bfloat16")
EXIT_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
      argv: arguments without the program name; default ``sys.argv[1:]``.

    Returns:
      The exit status: 0 on success, 2 after a steerjax error (printed as ``error: ...``).
      Usage errors exit through argparse (status 2).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SteerjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every subcommand."""
    from steerjax import __version__

    parser = argparse.ArgumentParser(
        prog="steerjax", description="Measure and control how steerable language models are, in JAX."
    )
    parser.add_argument("--version", action="version", version=f"steerjax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model_help = (f"a local HF model directory, a .gguf file, an alias or a hub id "
                  f"(default: {DEFAULT_MODEL})")

    info = sub.add_parser("info", help="describe a model", description="Describe a model's architecture.")
    info.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL", help=model_help)
    info.add_argument("--json", action="store_true", help="print a JSON object")
    info.add_argument("--dtype", choices=DTYPES, default="float32", help="load dtype (default: float32)")
    info.set_defaults(run=_info)

    gen = sub.add_parser(
        "generate", help="generate text, optionally steered",
        description="Generate text, optionally adding a steering vector to the residual stream.",
    )
    gen.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL", help=model_help)
    gen.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                     help="the user message; repeat for a batch")
    gen.add_argument("--system", metavar="TEXT", help="a system message (needs a chat template)")
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                     help="format prompts with the tokenizer's chat template "
                          "(default: when the tokenizer has one)")
    gen.add_argument("--vector", metavar="FILE",
                     help="steering vectors: steerjax .safetensors, llama.cpp-style "
                          "direction.{l} safetensors, or a .npy [D] vector (needs --layer)")
    gen.add_argument("--layer", type=int, metavar="L",
                     help="the block to steer: picks one layer from the file, or moves a "
                          "single-vector file to this block (negative counts from the end)")
    gen.add_argument("--multiplier", type=float, default=None, metavar="M",
                     help="steering strength (default: 1.0)")
    gen.add_argument("--positions", choices=("all", "generated"), default="all",
                     help="steer every token or only generated ones (default: all)")
    gen.add_argument("--compare", action="store_true",
                     help="also print the unsteered answer (same batch, multiplier 0)")
    gen.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="default: 64")
    gen.add_argument("--temperature", type=float, default=0.0, metavar="T",
                     help="0 is greedy decoding (default: 0)")
    gen.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling (default: 1.0)")
    gen.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default: 0)")
    gen.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default: float32)")
    gen.set_defaults(run=_generate)

    def data_args(p, split):
        p.add_argument("--dataset", required=True, metavar="NAME", help="an MWE dataset (steerjax datasets)")
        p.add_argument("--split", default=split, metavar="A%%:B%%", help=f"percent range (default: {split})")
        p.add_argument("--seed", type=int, default=0, help="split shuffle seed (default: 0)")
        p.add_argument("--max-examples", type=int, default=None, metavar="N")
        p.add_argument("--persona-prompt", choices=("positive", "negative"), default=None,
                       help="add the dataset's persona prompt (default: none)")
        p.add_argument("--prompt-location", choices=("system", "user"), default="system")
        p.add_argument("--dtype", choices=DTYPES, default="float32")

    ds = sub.add_parser("datasets", help="list the bundled MWE datasets ($STEERJAX_DATA)")
    ds.add_argument("--kind", choices=("persona", "xrisk"), default=None)
    ds.set_defaults(run=_datasets)

    vec = sub.add_parser("vector", help="train steering vectors").add_subparsers(dest="action", required=True)
    train = vec.add_parser("train", help="train a steering vector on a dataset split",
                           description="Train a steering vector (CAA, PCA, probe or learned) on a dataset split.")
    train.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL", help=model_help)
    data_args(train, "0%:40%")
    train.add_argument("--layers", required=True, metavar="L", help="blocks: '13', '10,13,16', '8-16' or 'all'")
    train.add_argument("--method", choices=("caa", "pca", "probe", "learned"), default="caa")
    train.add_argument("--token-index", type=int, default=-2,
                       help="token read, from the end of prompt+completion (default: -2, the answer letter)")
    train.add_argument("--out", required=True, metavar="FILE", help="output .safetensors (or .gguf: llama.cpp control vector)")
    train.set_defaults(run=_vector_train)

    sw = sub.add_parser("sweep", help="multiplier sweep: propensity and steerability",
                        description="Score a dataset split under every (layer, multiplier); resumable.")
    sw.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL", help=model_help)
    data_args(sw, "40%:100%")
    sw.add_argument("--vector", required=True, metavar="FILE")
    sw.add_argument("--layers", default=None, metavar="L", help="blocks to sweep (default: every layer in the file)")
    sw.add_argument("--multipliers", type=float, nargs="+", default=[-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    sw.add_argument("--positions", choices=("completion", "all"), default="completion")
    sw.add_argument("--operator", choices=("add", "ablate_then_add", "clamp"), default="add")
    sw.add_argument("--memory-budget-mb", type=float, default=2048)
    sw.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (resumed if it exists)")
    sw.set_defaults(run=_sweep)

    pr = sub.add_parser("profile", help="prompt steerability: Beta profiles and steerability indices",
                        description="Prompt steerability (Miehling et al. 2024) of persona dimensions; resumable.")
    pr.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL", help=model_help)
    pr.add_argument("--dims", nargs="+", required=True, metavar="DIM", help="persona dimensions (or 'all')")
    pr.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 5, 10, 20], metavar="K")
    pr.add_argument("--trials", type=int, default=2)
    pr.add_argument("--num-questions", type=int, default=20, help="profiling statements per dimension and direction")
    pr.add_argument("--confidence-threshold", type=float, default=0.85)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--dtype", choices=DTYPES, default="float32")
    pr.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (resumed if it exists)")
    pr.set_defaults(run=_profile)

    pd_ = sub.add_parser("predictor", help="steerability predictor: train on a testbed, search strengths")
    pa = pd_.add_subparsers(dest="action", required=True)
    ptr = pa.add_parser("train", help="label a testbed run, extract early features, evaluate and fit CatBoost",
                        description="Judge the testbed's rollouts (hidden-state judge), extract early-decoding "
                                    "features, cross-validate on unseen concepts, fit and save the predictor.")
    ptr.add_argument("testbed", metavar="TESTBED_DIR", help="a finished `steerjax testbed` run directory")
    ptr.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], metavar="K",
                     help="decoding steps of the features (default: 1 2 4 8)")
    ptr.add_argument("--search-k", type=int, default=2, metavar="K",
                     help="the saved predictor uses the features of the first K steps (default: 2)")
    ptr.add_argument("--folds", type=int, default=5, help="concept-grouped CV folds; 0 skips the evaluation")
    ptr.add_argument("--iterations", type=int, default=300, help="CatBoost trees (default: 300)")
    ptr.add_argument("--batch-size", type=int, default=32)
    ptr.add_argument("--seed", type=int, default=0)
    ptr.add_argument("--out", required=True, metavar="DIR", help="where the predictor and its tables go")
    ptr.set_defaults(run=_predictor_train)
    pse = pa.add_parser("search", help="find a steering strength for a prompt and concept",
                        description="Evaluate candidate strengths with early-decoding predictions, then decode "
                                    "a full rollout at the best-ranked strength (with --judge and --max-rollouts R, "
                                    "up to R ranked strengths until the judge calls one a success).")
    pse.add_argument("predictor", metavar="PREDICTOR_DIR", help="from `steerjax predictor train`")
    pse.add_argument("--prompt", required=True, help="a user message")
    pse.add_argument("--concept", required=True, help="a concept of the predictor's testbed")
    pse.add_argument("--strengths", type=float, nargs="+", default=None, help="candidates (default: the testbed's)")
    pse.add_argument("--strategy", choices=("argmax", "bisect"), default="argmax")
    pse.add_argument("--max-rollouts", type=int, default=1, metavar="R",
                     help="confirm up to R ranked strengths, stopping at the judge's first success (needs --judge)")
    pse.add_argument("--max-new-tokens", type=int, default=None, help="default: the testbed's")
    pse.add_argument("--judge", action="store_true", help="label the rollout with the hidden-state judge")
    pse.add_argument("--seed", type=int, default=0)
    pse.add_argument("--out", default=None, metavar="FILE.json", help="also write the result as JSON")
    pse.set_defaults(run=_predictor_search)
    tb = sub.add_parser("testbed", help="steerability testbed: steered rollouts of concepts x strengths x prompts",
                        description="Generate neutral prompts steered by persona CAA concepts at a grid of "
                                    "strengths (fractions of the residual norm); resumable.")
    tb.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL", help=model_help)
    tb.add_argument("--concepts", nargs="+", required=True, metavar="DIM",
                    help="Anthropic persona dimensions ($STEERJAX_DATA), or 'all'")
    tb.add_argument("--prompts", type=int, default=50, metavar="N",
                    help="the first N of the built-in neutral prompts (default: 50)")
    tb.add_argument("--strengths", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0, 2.0], metavar="S",
                    help="added norm as a fraction of the residual norm (default: 0.125 0.25 0.5 1 2)")
    tb.add_argument("--layer", type=int, required=True, metavar="L", help="the steered block")
    tb.add_argument("--max-new-tokens", type=int, default=48, metavar="T", help="default: 48")
    tb.add_argument("--source", choices=("statements", "ab"), default="statements",
                    help="concept vectors from each dimension's statements against all dimensions' statements, "
                         "or CAA on its A/B questions (default: statements)")
    tb.add_argument("--pairs", type=int, default=32, metavar="N",
                    help="statements (or A/B examples) per concept vector (default: 32)")
    tb.add_argument("--positions", choices=("all", "generated"), default="all",
                    help="steer prompt and generated tokens, or generated only (default: all)")
    tb.add_argument("--batch-size", type=int, default=32)
    tb.add_argument("--temperature", type=float, default=0.0, help="0 is greedy decoding (default: 0)")
    tb.add_argument("--seed", type=int, default=0)
    tb.add_argument("--dtype", choices=DTYPES, default="float32")
    tb.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (resumed if it exists)")
    tb.set_defaults(run=_testbed)
    return parser


# ----------------------------------------------------------------------------- info


def describe(model) -> dict[str, Any]:
    """A JSON-serializable summary of a loaded :class:`steerjax.LanguageModel`."""
    cfg = model.config
    tok = model.tokenizer
    return {
        "family": cfg.family,
        "model_type": cfg.model_type,
        "num_layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "num_heads": cfg.num_heads,
        "num_kv_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "context_length": cfg.max_position_embeddings,
        "num_parameters": int(model.num_parameters),
        "dtype": model.dtype,
        "source": model.source,
        "tokenizer": tok is not None,
        "chat_template": bool(getattr(tok, "chat_template", None)),
    }


def human_count(n: int) -> str:
    """``134515008 -> "134.5M"``."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _info(args) -> int:
    import steerjax

    info = describe(steerjax.load_model(args.model, dtype=args.dtype))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    yes_no = lambda b: "yes" if b else "no"  # noqa: E731
    rows = [
        ("family", info["family"]),
        ("model type", info["model_type"]),
        ("layers", info["num_layers"]),
        ("hidden size", info["hidden_size"]),
        ("heads", f"{info['num_heads']} (kv heads: {info['num_kv_heads']})"),
        ("head dim", info["head_dim"]),
        ("mlp size", info["intermediate_size"]),
        ("vocab size", info["vocab_size"]),
        ("context", info["context_length"]),
        ("parameters", f"{human_count(info['num_parameters'])} ({info['num_parameters']:,})"),
        ("dtype", info["dtype"]),
        ("source", info["source"]),
        ("tokenizer", yes_no(info["tokenizer"])),
        ("chat template", yes_no(info["chat_template"])),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


# ----------------------------------------------------------------------------- generate


def _generate(args) -> int:
    import steerjax

    if args.vector is None:
        for flag, value in (("--layer", args.layer), ("--multiplier", args.multiplier)):
            if value is not None:
                raise SteerjaxError(f"{flag} needs --vector FILE (the steering vector to apply)")
        if args.compare:
            raise SteerjaxError("--compare needs --vector FILE (it compares steered and unsteered text)")
    multiplier = 1.0 if args.multiplier is None else args.multiplier

    model = steerjax.load_model(args.model, dtype=args.dtype)
    prompts = _prompts(model, args)
    steering = None
    if args.vector is not None:
        vectors = _vectors(model, args.vector, args.layer)
        mults = [multiplier] * len(prompts) + ([0.0] * len(prompts) if args.compare else [])
        try:
            steering = steerjax.Steering.create(model, vectors, mults, positions=args.positions)
        except SteeringError as e:
            raise SteeringError(f"{args.vector}: {e}") from e
        if args.compare:
            prompts = prompts + prompts
    out = steerjax.generate(
        model, prompts, steering=steering, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed,
    )
    texts = out.texts or []
    n = len(args.prompt)
    for i, prompt in enumerate(args.prompt):
        if n == 1 and not args.compare:
            print(texts[i])
            break
        if n > 1:
            print(f"=== prompt {i + 1}: {_shorten(prompt)}")
        if args.compare:
            layers = ", ".join(str(x) for x in sorted(vectors))
            print(f"--- steered (layer {layers}, multiplier {multiplier:g})")
            print(texts[i])
            print("--- unsteered")
            print(texts[n + i])
        else:
            print(texts[i])
        if i + 1 < n:
            print()
    return 0


def _prompts(model, args) -> list:
    tok = model.tokenizer
    has_template = bool(getattr(tok, "chat_template", None))
    chat = has_template if args.chat is None else args.chat
    if chat and not has_template:
        raise SteerjaxError(f"{model.source} has no chat template: drop --chat to send plain text")
    if not chat:
        if args.system is not None:
            raise SteerjaxError(
                "--system needs a chat template, and this prompt is sent as plain text "
                + ("(--no-chat)" if has_template else f"({model.source} has no chat template)")
            )
        return list(args.prompt)
    system = [] if args.system is None else [{"role": "system", "content": args.system}]
    return [system + [{"role": "user", "content": p}] for p in args.prompt]


def _vectors(model, path: str, layer: int | None) -> dict:
    from steerjax.steering import io
    from steerjax.steering.core import normalize_layer

    num_layers = model.config.num_layers
    if io.file_format(path) == "npy":
        if layer is None:
            raise SteeringError(f"{path} is a .npy vector, which stores no layer: pass --layer L")
        return io.load_vectors(path, layer=layer)[0]
    vectors, _ = io.load_vectors(path)
    if layer is None:
        return vectors
    want = normalize_layer(layer, num_layers)
    if want in vectors:
        return {want: vectors[want]}
    if len(vectors) == 1:  # one vector: --layer moves it
        return {want: next(iter(vectors.values()))}
    raise SteeringError(
        f"{path} has no vector for layer {layer}; it has layers {sorted(vectors)}. "
        "Pick one of them with --layer"
    )


def _shorten(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- datasets, vectors, sweeps


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """``"13"``, ``"10,13,-1"``, ``"8-16"`` (inclusive) or ``"all"`` -> block indices."""
    from steerjax.steering.core import normalize_layer

    if spec.strip() == "all":
        return list(range(num_layers))
    import re

    out: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", part)
        if m is None:
            raise SteerjaxError(f"--layers {spec!r}: use '13', '10,13,16', '8-16' or 'all'")
        lo = normalize_layer(int(m.group(1)), num_layers)
        hi = lo if m.group(2) is None else normalize_layer(int(m.group(2)), num_layers)
        out.extend(range(lo, hi + 1))
    if not out:
        raise SteerjaxError(f"--layers {spec!r} selects no layer")
    return sorted(set(out))


def _load_split(args):
    from steerjax.data import load_dataset

    return load_dataset(args.dataset, split=args.split, seed=args.seed, persona_prompt=args.persona_prompt,
                        prompt_location=args.prompt_location, max_examples=args.max_examples)


def _datasets(args) -> int:
    from steerjax.data import list_datasets

    for name in list_datasets(args.kind):
        print(name)
    return 0


def _vector_train(args) -> int:
    import steerjax
    from steerjax.steering import io
    from steerjax.steering.vectors import train_vector

    examples = _load_split(args)
    model = steerjax.load_model(args.model, dtype=args.dtype)
    layers = parse_layers(args.layers, model.config.num_layers)
    vec = train_vector(model, examples, layers=layers, method=args.method, token_index=args.token_index)
    vec.metadata.update({"dataset": args.dataset, "split": args.split, "seed": args.seed,
                         "persona_prompt": args.persona_prompt, "prompt_location": args.prompt_location})
    if args.out.endswith(".gguf"):
        io.export_control_vector_gguf(args.out, vec.vectors, model_hint=model.config.model_type)
    else:
        vec.save(args.out)
    norms = ", ".join(f"{layer}: {n:.2f}" for layer, n in sorted(vec.norms().items()))
    print(f"{args.method} vector from {len(examples)} examples of {args.dataset} [{args.split}] -> {args.out}")
    print(f"norms by layer: {norms}")
    return 0


def _sweep(args) -> int:
    import os

    import steerjax
    from steerjax.metrics import dataset_steerability, per_example_steerability
    from steerjax.sweeps import sweep

    examples = _load_split(args)
    model = steerjax.load_model(args.model, dtype=args.dtype)
    vectors, meta = _vector_file(args.vector)
    layers = sorted(vectors) if args.layers is None else parse_layers(args.layers, model.config.num_layers)
    table = sweep(model, examples, vectors, layers=layers, multipliers=args.multipliers, positions=args.positions,
                  operator=args.operator, memory_budget_mb=args.memory_budget_mb, run_dir=args.out)
    per_example = per_example_steerability(table, by=("dataset", "layer"))
    summary = dataset_steerability(per_example, by=("dataset", "layer"))
    table.to_parquet(os.path.join(args.out, "results.parquet"), index=False)
    per_example.to_parquet(os.path.join(args.out, "per_example.parquet"), index=False)
    summary.to_csv(os.path.join(args.out, "summary.csv"), index=False)
    with open(os.path.join(args.out, "cli.json"), "w") as f:
        json.dump({**{k: v for k, v in vars(args).items() if k != "run"}, "vector_metadata": meta}, f, indent=2, default=str)
    cols = ["dataset", "layer", "n", "steerability", "steerability_std", "anti_steerable_fraction"]
    print(summary[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"results in {args.out}")
    return 0


def _vector_file(path: str):
    from steerjax.steering import io

    if io.file_format(path) == "npy":
        raise SteeringError(f"{path} is a .npy vector without layers; save it with steerjax vector train")
    return io.load_vectors(path)


def _profile(args) -> int:
    import os

    import steerjax
    from steerjax.profiles import plots
    from steerjax.profiles.data import list_dimensions
    from steerjax.profiles.run import run_profiles

    dims = list_dimensions() if args.dims == ["all"] else args.dims
    model = steerjax.load_model(args.model, dtype=args.dtype)
    run = run_profiles(model, dims, budgets=args.budgets, trials=args.trials, num_questions=args.num_questions,
                       confidence_threshold=args.confidence_threshold, seed=args.seed, batch_size=args.batch_size,
                       run_dir=args.out)
    run.save(args.out)
    plots.index_curves(run.curves, os.path.join(args.out, "index_curves.png"))
    plots.index_heatmap(run.curves, os.path.join(args.out, "index_heatmap.png"))
    plots.base_profiles(run.profiles, os.path.join(args.out, "base_profiles.png"))
    print(run.asymmetry.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"results in {args.out}")
    return 0


def _predictor_train(args) -> int:
    import os

    import steerjax
    from steerjax.predictor import classifier, plots
    from steerjax.predictor.concepts import UNSTEERED
    from steerjax.predictor.pipeline import label_and_featurize, save_evaluation

    cfg, concepts, table = _testbed_run(args.testbed)
    model = steerjax.load_model(cfg["model"], dtype=cfg.get("dtype", "float32"))
    os.makedirs(args.out, exist_ok=True)
    labelled, thr, data = label_and_featurize(model, concepts, table, layer=cfg["layer"], steps=args.steps,
                                              batch_size=args.batch_size, positions=cfg.get("positions", "all"))
    labelled.to_parquet(os.path.join(args.out, "labels.parquet"), index=False)
    data.to_parquet(os.path.join(args.out, "features.parquet"), index=False)
    steered = labelled[labelled["concept"] != UNSTEERED]
    plots.labels_by_strength(steered, os.path.join(args.out, "labels_by_strength.png"))
    strengths = sorted(set(steered["strength"]))
    print(f"labels: {steered['label'].value_counts().to_dict()}\n{thr.how}")
    fit_kw = dict(iterations=args.iterations, seed=args.seed)
    if args.folds >= 2:
        ev = classifier.evaluate(data, n_folds=args.folds, **fit_kw)
        save_evaluation(ev, args.out)
        print("unseen concepts (concept-grouped CV):")
        print(ev.scores.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    cols = classifier.feature_columns_of(data, max_step=args.search_k)
    pred = classifier.fit(data, feature_columns=cols, **fit_kw)
    pred.meta.update(testbed=os.path.abspath(args.testbed), model=cfg["model"], dtype=cfg.get("dtype", "float32"),
                     layer=cfg["layer"], positions=cfg.get("positions", "all"), steps=list(args.steps),
                     search_k=args.search_k, strengths=strengths, max_new_tokens=cfg.get("max_new_tokens"),
                     thresholds=thr.to_dict())
    pred.save(args.out)
    print(f"predictor (features of the first {args.search_k} steps) in {args.out}")
    return 0


def _testbed_run(path):
    import os

    import pandas as pd

    from steerjax.predictor.concepts import load_concepts

    files = {n: os.path.join(path, n) for n in ("config.json", "concepts.npz", "rollouts.parquet")}
    missing = [n for n, p in files.items() if not os.path.exists(p)]
    if missing:
        raise SteerjaxError(f"{path} is not a finished testbed run (missing {', '.join(missing)}): "
                            "run `steerjax testbed ... --out DIR` first")
    with open(files["config.json"]) as f:
        cfg = json.load(f)
    return cfg, load_concepts(files["concepts.npz"]), pd.read_parquet(files["rollouts.parquet"])


def _predictor_search(args) -> int:
    import os

    import steerjax
    from steerjax.predictor import judge as judges
    from steerjax.predictor.classifier import SteerabilityPredictor
    from steerjax.predictor.search import guided_search

    pred = SteerabilityPredictor.load(args.predictor)
    meta = pred.meta
    _, concepts, testbed_rollouts = _testbed_run(meta["testbed"])
    by_name = {c.name: c for c in concepts}
    if args.concept not in by_name:
        raise SteerjaxError(f"unknown concept {args.concept!r}; the testbed has {sorted(by_name)}")
    model = steerjax.load_model(meta["model"], dtype=meta.get("dtype", "float32"))
    strengths = args.strengths or meta["strengths"]
    jd = judges.HiddenStateJudge(model, concepts, progress=False) if args.judge else None
    res = guided_search(model, pred, args.prompt, by_name[args.concept], strengths, layer=meta["layer"],
                        max_new_tokens=args.max_new_tokens or meta.get("max_new_tokens") or 48,
                        strategy=args.strategy, max_rollouts=args.max_rollouts, judge=jd,
                        calibration=testbed_rollouts if jd is not None else None, seed=args.seed)
    print(res["predictions"].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    for t in res["tried"][:-1]:
        print(f"rollout at {t['strength']:g}: {t['label']}")
    print(f"chosen strength {res['strength']:g} (evaluated {res['evaluated']}, {len(res['tried'])} full rollout(s)), "
          f"{res['decoded_tokens']} decoded tokens")
    if res["label"] is not None:
        print(f"judge: {res['label']}")
    print(res["text"])
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({k: (v.to_dict(orient="records") if hasattr(v, "to_dict") else v) for k, v in res.items()},
                      f, indent=2, default=str)
    return 0


def _testbed(args) -> int:
    import math
    import os

    import steerjax
    from steerjax.predictor import NEUTRAL_PROMPTS, load_concepts, persona_concepts, rollouts, save_concepts
    from steerjax.predictor.concepts import statement_concepts

    if not 1 <= args.prompts <= len(NEUTRAL_PROMPTS):
        raise SteerjaxError(f"--prompts must be in 1..{len(NEUTRAL_PROMPTS)}, got {args.prompts}")
    if not all(math.isfinite(s) for s in args.strengths):
        raise SteerjaxError(f"--strengths must be finite numbers, got {args.strengths}")
    for name in ("max_new_tokens", "pairs", "batch_size"):
        if getattr(args, name) < 1:
            raise SteerjaxError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    model = steerjax.load_model(args.model, dtype=args.dtype)
    from steerjax.steering.core import normalize_layer

    layer = normalize_layer(args.layer, model.config.num_layers)
    names = None if args.concepts == ["all"] else args.concepts
    os.makedirs(args.out, exist_ok=True)
    cpath = os.path.join(args.out, "concepts.npz")
    key = {"model": str(model.source), "dtype": args.dtype, "concepts": args.concepts, "layer": layer,
           "pairs": args.pairs, "seed": args.seed, "source": args.source}
    kpath = os.path.join(args.out, "concepts.json")
    cached = None
    if os.path.exists(cpath) and os.path.exists(kpath):
        with open(kpath) as f:
            if json.load(f) == key:
                cached = load_concepts(cpath)
    if cached is None:
        if args.source == "ab":
            concepts = persona_concepts(model, names, layer=layer, n_pairs=args.pairs, seed=args.seed)
        else:
            from steerjax.data import list_datasets

            concepts = statement_concepts(model, names or list_datasets("persona"), layer=layer,
                                          n_statements=args.pairs, seed=args.seed)
        save_concepts(cpath, concepts)
        with open(kpath, "w") as f:
            json.dump(key, f, indent=2)
    else:
        concepts = cached
    table = rollouts(model, list(NEUTRAL_PROMPTS[:args.prompts]), concepts, args.strengths, layer=layer,
                     max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
                     positions=args.positions, temperature=args.temperature, run_dir=args.out)
    table.to_parquet(os.path.join(args.out, "rollouts.parquet"), index=False)
    print(f"{len(table)} rollouts ({args.prompts} prompts x ({len(concepts)} concepts x {len(args.strengths)} "
          f"strengths + unsteered)), layer {layer}, {args.max_new_tokens} new tokens")
    print(f"results in {args.out}")
    return 0
