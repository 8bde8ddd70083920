"""Residual-stream interventions."""

from steerjax.steering.core import (
    GENERATED,
    NO_END,
    OPERATORS,
    Steering,
    apply,
    check_vector,
    normalize_layer,
    token_mask,
)

__all__ = ["GENERATED", "NO_END", "OPERATORS", "Steering", "apply", "check_vector", "normalize_layer", "token_mask"]
