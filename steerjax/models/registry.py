"""The one list of model families: HF ``model_type`` -> :class:`Family`.

A :class:`Family` describes one decoder family completely: which HF ``model_type`` values it
reads, how a ``config.json`` becomes a :class:`~steerjax.models.config.ModelConfig`, its Flax NNX
module tree, and how a checkpoint's tensors become that tree's parameters. :data:`FAMILIES` is the only
list of families; ``ModelConfig.family`` is checked against it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from steerjax.errors import UnsupportedArchitectureError
from steerjax.models import gemma, gpt2, gpt_neox, llama
from steerjax.models.config import FAMILY_NAMES


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
      name: the family's name (``ModelConfig.family``).
      model_types: the HF ``model_type`` values it reads.
      config_from_hf: HF config dict -> ``ModelConfig``.
      canonical: a checkpoint tensor name -> the HF name the conversion table uses.
      ignored: regular expressions of checkpoint tensors that are buffers, not weights.
      conversion: ``ModelConfig`` -> its conversion table: module path -> (HF name, hook).
      model: the module tree's class (a :class:`~steerjax.models.layers.Decoder`), called
        ``model(cfg, rngs=...)``.
    """

    name: str
    model_types: tuple[str, ...]
    config_from_hf: Callable[[dict[str, Any]], Any]
    canonical: Callable[[str], str]
    ignored: tuple[str, ...]
    conversion: Callable[[Any], dict[str, tuple[str, Any]]]
    model: type


def _family(name: str, module, model_types: tuple[str, ...]) -> Family:
    return Family(name=name, model_types=model_types, config_from_hf=module.config_from_hf,
                  canonical=module.canonical, ignored=module.IGNORED, conversion=module.conversion,
                  model=module.Model)


#: every supported family, in the order they are listed to users
FAMILIES: tuple[Family, ...] = (
    _family("llama", llama, ("llama", "mistral", "qwen2", "qwen3", "phi3")),
    _family("gpt2", gpt2, ("gpt2",)),
    _family("gpt_neox", gpt_neox, ("gpt_neox",)),
    _family("gemma2", gemma, ("gemma2",)),
    _family("gemma3", gemma, ("gemma3_text", "gemma3")),
)
_BY_NAME = {f.name: f for f in FAMILIES}
if tuple(_BY_NAME) != FAMILY_NAMES:
    raise ImportError(f"steerjax.models.config.FAMILY_NAMES {FAMILY_NAMES} must list the families of FAMILIES, "
                      f"in order: {tuple(_BY_NAME)}")
#: HF model_type -> family name
MODEL_TYPES = {mt: f.name for f in FAMILIES for mt in f.model_types}


def names() -> tuple[str, ...]:
    """The family names, in :data:`FAMILIES` order."""
    return tuple(_BY_NAME)


def family(name: str) -> Family:
    """The :class:`Family` called ``name``.

    Raises:
      UnsupportedArchitectureError: no family has that name.
    """
    if name not in _BY_NAME:
        raise UnsupportedArchitectureError(f"unknown family {name!r}; supported: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def family_for_model_type(model_type: str | None, architectures=()) -> Family:
    """The :class:`Family` reading HF ``model_type``.

    Raises:
      UnsupportedArchitectureError: no family reads it (the message lists those that exist).
    """
    if model_type in MODEL_TYPES:
        return _BY_NAME[MODEL_TYPES[model_type]]
    raise UnsupportedArchitectureError(
        f"architecture {model_type!r} ({', '.join(architectures or []) or 'no architectures listed'}) "
        f"is not supported. Supported model_type values: {', '.join(sorted(MODEL_TYPES))}. "
        "Open an issue with the config.json if you need it."
    )
