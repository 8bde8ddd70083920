"""One exception hierarchy for steerjax.

Every error raised for bad input derives from :class:`SteerjaxError` and says what to do next.
Subclasses also derive from the matching builtin (``FileNotFoundError``, ``ValueError``, ...) so
callers that already catch those keep working.
"""

from __future__ import annotations


class SteerjaxError(Exception):
    """Base class of every error steerjax raises on purpose."""


class ModelNotFoundError(SteerjaxError, FileNotFoundError):
    """A model source is neither a local path, a known alias, nor a reachable hub id."""


class UnsupportedArchitectureError(SteerjaxError, ValueError):
    """The checkpoint's architecture (or one of its options) is not implemented."""


class CheckpointError(SteerjaxError, ValueError):
    """A weight file is unreadable: truncated, corrupt, or in an unknown format."""


class WeightKeyError(CheckpointError, KeyError):
    """Weights are missing from, or unexpected in, a checkpoint."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ShapeMismatchError(CheckpointError):
    """A weight's shape disagrees with the model config."""


class LayerIndexError(SteerjaxError, IndexError):
    """A layer index is outside the model's blocks."""


class SteeringError(SteerjaxError, ValueError):
    """A steering specification is malformed (width, batch, multiplier, operator)."""


class ContextLengthError(SteerjaxError, ValueError):
    """An input (plus requested new tokens) is longer than the model's context."""


class TokenizerError(SteerjaxError, ValueError):
    """Text input was given but the model has no tokenizer, or the tokenizer cannot do it."""


class ShardingError(SteerjaxError, ValueError):
    """A device mesh does not fit the devices, the model (heads) or the batch."""


class RunConfigError(SteerjaxError, ValueError):
    """A run directory already holds a run with a different configuration."""


class RunLockedError(SteerjaxError, RuntimeError):
    """Another process is writing the run directory (it holds the directory's lock)."""


class ArtifactKeyError(SteerjaxError, ValueError):
    """A stored artifact (a vector, concepts, a cache) was built for another configuration."""


class DataError(SteerjaxError, ValueError):
    """Bad input to a dataset loader or example encoder: a missing or malformed data file, an unknown
    dataset or dimension, a bad split, or contrastive examples that cannot be encoded."""


class MetricsError(SteerjaxError, ValueError):
    """A table passed to a steerability metric is malformed: missing columns, NaN values, too few
    multipliers, repeated rows."""


class ProfileError(SteerjaxError, ValueError):
    """Bad input to a profile computation: confidences outside [0.5, 1], NaN, non-positive Beta
    parameters, mismatched shapes, or a malformed profile table."""


class JudgeError(SteerjaxError, ValueError):
    """A rollout table or judge input that cannot be labelled (or two labelings that cannot be compared)."""


class PredictorError(SteerjaxError, ValueError):
    """Bad input to the predictor or the guided search: missing features or labels, too few concepts
    for the folds, a bad strategy or budget."""


class OutputPathError(SteerjaxError, ValueError):
    """An output path cannot be used: its folder is missing or not writable, a file stands where a
    directory is expected (or the reverse), or it already holds an output that would be replaced."""
