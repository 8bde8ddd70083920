"""steerjax: measure and control how steerable language models are, in JAX."""

import importlib

from steerjax import errors, interrupts  # noqa: F401  (before jax: Ctrl-C while the command imports; errors imports nothing heavy)
from steerjax.generate import GenerationOutput, generate
from steerjax.model import DEFAULT_MODEL, LanguageModel, convert, load_model
from steerjax.models.config import ModelConfig
from steerjax.steering import Steering
from steerjax.sweeps import sweep
from steerjax.vectors import SteeringVector, train_vector
from steerjax.version import __version__  # noqa: F401  (steerjax.__version__)


def __getattr__(name: str):
    """``steerjax.report``: the cross-paper report (it loads every study: imported on first use)."""
    if name == "report":
        return importlib.import_module("steerjax.report")
    raise AttributeError(f"module 'steerjax' has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL", "GenerationOutput", "LanguageModel", "ModelConfig", "Steering", "errors",
    "SteeringVector", "convert", "generate", "load_model", "sweep", "train_vector",
]
