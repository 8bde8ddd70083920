"""``steerjax info`` and ``steerjax generate``."""

from __future__ import annotations

import argparse
import json
from typing import Any

import steerjax
from steerjax.cli import checks
from steerjax.errors import SteeringError, SteerjaxError
from steerjax.models import transformer


def add_commands(sub) -> None:
    info = sub.add_parser("info", help="describe a model (reads its config, not its weights)",
                          description="Describe a model's architecture from its config, without loading its weights.")
    checks.add_model(info)
    info.add_argument("--json", action="store_true", help="print a JSON object")
    checks.add_dtype(info, "the dtype it would load with")
    info.set_defaults(run=run_info)

    gen = sub.add_parser("generate", help="generate text, optionally steered",
                         description="Generate text, optionally adding a steering vector to the residual stream.")
    checks.add_model(gen)
    gen.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                     help="the user message; repeat for a batch")
    gen.add_argument("--system", metavar="TEXT", help="a system message (needs a chat template)")
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                     help="format prompts with the tokenizer's chat template (default: when the tokenizer has one)")
    gen.add_argument("--vector", metavar="FILE",
                     help="steering vectors: steerjax .safetensors, llama.cpp-style direction.{l} safetensors, "
                          "or a .npy [D] vector (needs --layer)")
    gen.add_argument("--layer", type=int, metavar="L",
                     help="the block to steer: picks one layer from the file, or moves a single-vector file to "
                          "this block (negative counts from the end)")
    gen.add_argument("--multiplier", type=checks.finite_float, default=None, metavar="M",
                     help="steering strength (default: 1.0)")
    gen.add_argument("--positions", choices=("all", "generated"), default="all",
                     help="steer every token or only generated ones (default: %(default)s)")
    gen.add_argument("--compare", action="store_true",
                     help="also print the unsteered answer (same batch, multiplier 0)")
    gen.add_argument("--max-new-tokens", type=checks.positive_int, default=64, metavar="N",
                     help="default: %(default)s")
    gen.add_argument("--temperature", type=checks.nonnegative_float, default=0.0, metavar="T",
                     help="0 is greedy decoding (default: %(default)s)")
    gen.add_argument("--top-p", type=checks.probability, default=1.0, metavar="P",
                     help="nucleus sampling (default: %(default)s)")
    gen.add_argument("--top-k", type=checks.nonnegative_int, default=0, metavar="K",
                     help="sample among the K most likely tokens; 0: no limit (default: %(default)s)")
    gen.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default: %(default)s)")
    checks.add_dtype(gen)
    gen.set_defaults(run=run_generate)


# ----------------------------------------------------------------------------- info


def describe(header, dtype: str = "float32") -> dict[str, Any]:
    """A JSON-serializable summary of a model from its :class:`steerjax.model.ModelHeader`."""
    cfg = header.config
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
        "num_parameters": int(transformer.num_parameters(cfg)),
        "dtype": dtype,
        "source": header.source,
        "commit": header.commit,
        "tokenizer": header.tokenizer,
        "chat_template": header.chat_template,
    }


def human_count(n: int) -> str:
    """``134515008 -> "134.5M"``."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def run_info(args) -> int:
    info = describe(checks.read_config(args.model), args.dtype)
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
        *([("commit", info["commit"])] if info["commit"] else []),
        ("tokenizer", yes_no(info["tokenizer"])),
        ("chat template", yes_no(info["chat_template"])),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


# ----------------------------------------------------------------------------- generate


def run_generate(args) -> int:
    if args.vector is None:
        for flag, value in (("--layer", args.layer), ("--multiplier", args.multiplier)):
            if value is not None:
                raise SteerjaxError(f"{flag} needs --vector FILE (the steering vector to apply)")
        if args.compare:
            raise SteerjaxError("--compare needs --vector FILE (it compares steered and unsteered text)")
    multiplier = 1.0 if args.multiplier is None else args.multiplier
    header = checks.read_config(args.model)
    chat = chat_mode(header, args)
    vectors = None
    if args.vector is not None:
        vec = checks.read_vectors(args.vector, layer=args.layer, num_layers=header.config.num_layers)
        checks.check_width(args.vector, vec, header.config)
        vectors = vec.vectors

    model = steerjax.load_model(args.model, dtype=args.dtype)
    prompts = messages(args, chat)
    n = len(prompts)
    steering = None
    if vectors is not None:
        mults = [multiplier] * n + ([0.0] * n if args.compare else [])
        steering = steerjax.Steering.create(model, vectors, mults, positions=args.positions)
        if args.compare:
            prompts = prompts + prompts
    out = steerjax.generate(model, prompts, steering=steering, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            seed=args.seed)
    texts = out.texts or []
    for i, prompt in enumerate(args.prompt):
        if n > 1:
            print(f"=== prompt {i + 1}: {checks.shorten(prompt)}")
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
    if vectors is not None and multiplier != 0:
        check_steered(texts[:n], multiplier)
    return 0


def chat_mode(header, args) -> bool:
    """Whether prompts go through the chat template, checked against ``--chat``/``--system``."""
    has_template = header.chat_template
    chat = has_template if args.chat is None else args.chat
    if chat and not has_template:
        raise SteerjaxError(f"{header.source} has no chat template: drop --chat to send plain text")
    if not chat and args.system is not None:
        raise SteerjaxError("--system needs a chat template, and this prompt is sent as plain text "
                            + ("(--no-chat)" if has_template else f"({header.source} has no chat template)"))
    return chat


def messages(args, chat: bool) -> list:
    """The prompts as plain texts, or as chats with the optional system message."""
    if not chat:
        return list(args.prompt)
    system = [] if args.system is None else [{"role": "system", "content": args.system}]
    return [system + [{"role": "user", "content": p}] for p in args.prompt]


def check_steered(texts: list[str], multiplier: float) -> None:
    """A steered answer that is empty means the steering broke the model (its activations
    overflow, or it stops at once): an error, not a result."""
    empty = [i + 1 for i, t in enumerate(texts) if not t.strip()]
    if empty:
        which = f"prompt {empty[0]}" if len(empty) == 1 else f"prompts {', '.join(map(str, empty))}"
        raise SteeringError(f"the steered answer to {which} is empty: --multiplier {multiplier:g} is probably too "
                            "strong for this vector (the model's activations overflow or it stops at once); "
                            "try a smaller --multiplier")
