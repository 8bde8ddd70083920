"""Argument checks shared by the commands: argparse types for numbers, layer specs, the model's
config read before its weights, vector files.

Everything here runs before any model weights load, and every message names the flag as the user
typed it (``--max-new-tokens``, not ``max_new_tokens``).
"""

from __future__ import annotations

import argparse
import math
import re

from steerjax import model as models
from steerjax.errors import LayerIndexError, SteerjaxError
from steerjax.model import DEFAULT_MODEL
from steerjax.steering import check_vector, normalize_layer
from steerjax.vectors import load_vector

DTYPES = ("float32", "bfloat16")
MODEL_HELP = f"a local HF model directory, a .gguf file, an alias or a hub id (default: {DEFAULT_MODEL})"
_LAYER_PART = re.compile(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?")


# ----------------------------------------------------------------------------- argparse types


def _number_type(kind: type, what: str, ok=lambda value: True, doc: str = ""):
    """An argparse type: ``kind(text)``, finite, with ``ok(value)``; else "must be WHAT"."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if (kind is float and not math.isfinite(value)) or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__doc__ = doc or f"{what[0].upper()}{what[1:]}."
    return parse


finite_float = _number_type(float, "a finite number", doc="A finite number (``inf`` and ``nan`` are refused).")
nonnegative_float = _number_type(float, "a finite number >= 0", lambda v: v >= 0)
positive_float = _number_type(float, "a finite number > 0", lambda v: v > 0)
probability = _number_type(float, "a number in (0, 1]", lambda v: 0 < v <= 1,
                           doc="A number in ``(0, 1]`` (nucleus mass, a threshold).")
positive_int = _number_type(int, "an integer >= 1", lambda v: v >= 1)
nonnegative_int = _number_type(int, "an integer >= 0", lambda v: v >= 0)


# ----------------------------------------------------------------------------- shared arguments


def add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL", help=MODEL_HELP)
    add_revision(parser)


def add_revision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--revision", metavar="REV",
                        help="a branch, tag or commit of a hub id or Hub cache folder (as MODEL@REV); the commit "
                             "it resolves to is recorded with the results")


def fold_revision(args: argparse.Namespace, attr: str = "model") -> None:
    """``--revision REV`` written into the model argument as ``MODEL@REV``, the form every loader
    reads (so run configs and reloads name the revision too)."""
    revision = getattr(args, "revision", None)
    if revision is None:
        return
    if not revision.strip() or "@" in revision:
        raise SteerjaxError(f"--revision {revision!r}: give a branch, tag or commit")
    source = getattr(args, attr)
    if "@" in source:
        raise SteerjaxError(f"{source} already names a revision: drop --revision or the '@' part")
    setattr(args, attr, f"{source}@{revision}")


def add_dtype(parser: argparse.ArgumentParser, what: str = "model dtype") -> None:
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help=f"{what} (default: %(default)s)")


def add_force(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--force", action="store_true", help=f"replace {what} if it exists")


# ----------------------------------------------------------------------------- the model, before its weights


def read_config(source: str) -> models.ModelHeader:
    """The model's config, tokenizer and chat-template presence, read without the weights."""
    return models.load_config(source)


def layer_index(flag: str, layer: int, num_layers: int) -> int:
    """``layer`` (negative counts from the end) as a block index in ``[0, num_layers)``
    (:func:`steerjax.steering.normalize_layer`, named as the flag)."""
    return normalize_layer(layer, num_layers, name=flag)


def layer_spec(spec: str, flag: str = "--layers") -> list[tuple[int, int]] | None:
    """The syntax of a layer spec, checked without the model: ``None`` for ``"all"``, else the
    ``(first, last)`` ranges (inclusive, negative counting from the end)."""
    if spec.strip() == "all":
        return None
    parts = []
    for part in spec.split(","):
        m = _LAYER_PART.fullmatch(part)
        if m is None:
            raise SteerjaxError(f"{flag} {spec!r}: use '13', '10,13,16', '8-16' or 'all'")
        lo = int(m.group(1))
        parts.append((lo, lo if m.group(2) is None else int(m.group(2))))
    return parts


def parse_layers(spec: str, num_layers: int, flag: str = "--layers") -> list[int]:
    """``"13"``, ``"10,13,-1"``, ``"8-16"`` (inclusive) or ``"all"`` -> sorted block indices."""
    parts = layer_spec(spec, flag)
    if parts is None:
        return list(range(num_layers))
    out: list[int] = []
    for lo, hi in parts:
        out.extend(range(layer_index(flag, lo, num_layers), layer_index(flag, hi, num_layers) + 1))
    if not out:
        raise SteerjaxError(f"{flag} {spec!r} selects no layer")
    return sorted(set(out))


# ----------------------------------------------------------------------------- vector files


def read_vectors(path: str, *, num_layers: int, layer: int | None = None, allow_npy: bool = True):
    """The :class:`~steerjax.vectors.SteeringVector` of ``--vector`` (with ``--layer``), by
    :func:`steerjax.vectors.load_vector`'s rules; every block must exist in a model of
    ``num_layers`` blocks."""
    if layer is not None:
        layer = layer_index("--layer", layer, num_layers)
    vec = load_vector(path, layer=layer, num_layers=num_layers, allow_npy=allow_npy)
    beyond = [i for i in vec.layers if i >= num_layers]
    if beyond:
        raise LayerIndexError(f"{path} has vectors for layers {vec.layers}, but layer {beyond[0]} is out of "
                              f"range: the model has {num_layers} blocks. Pick one of its layers with --layer")
    return vec


def check_width(path: str, vec, cfg) -> None:
    """Every vector of ``path`` (a :class:`~steerjax.vectors.SteeringVector`) fits a model of config
    ``cfg`` (:func:`steerjax.steering.check_vector`)."""
    for layer, v in vec.vectors.items():
        check_vector(cfg, v, where=f"{path} (layer {layer})", made_on=vec.metadata.get("model"))


def shorten(text: str, limit: int = 60) -> str:
    """One line of at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

