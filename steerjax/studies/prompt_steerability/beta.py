"""Beta profiles of Miehling et al. 2024, "Evaluating the Prompt Steerability of Large Language
Models" (arXiv 2411.12405), Sec. 3.

A model's *profile* on a persona dimension is a Beta(alpha, beta) distribution over how much the
model exhibits the persona. It starts at the Jeffreys prior Beta(0.5, 0.5); every profiling
statement answered adds its weight ``2 (c - 0.5)`` (``c`` in [0.5, 1] is the statement's label
confidence) to ``alpha`` when the answer *matches* the statement's direction (yes to a
positive-direction statement, no to a negative one) and to ``beta`` otherwise.

Decisions for degenerate inputs:

- all answers one way is valid: the other parameter stays at the prior 0.5, so the Beta is proper;
- no answers at all gives the prior Beta(0.5, 0.5), silently: it is the exact posterior of an
  empty sample, and the experiment computes profiles in bulk where warnings would be noise;
- a confidence outside [0.5, 1] or NaN raises :class:`ProfileError` (a ``ValueError``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from steerjax.errors import ProfileError

PRIOR = 0.5

_DIRECTIONS = {"+": "positive", "positive": "positive", "-": "negative", "negative": "negative"}


def normalise_direction(direction: str) -> str:
    """Map ``"+"``/``"positive"`` to ``"positive"`` and ``"-"``/``"negative"`` to ``"negative"``.

    Raises:
      ProfileError: for any other value.
    """
    try:
        return _DIRECTIONS[direction]
    except (KeyError, TypeError):
        raise ProfileError(
            f"direction must be '+', '-', 'positive' or 'negative', got {direction!r}"
        ) from None


def check_parameters(alpha, beta, what: str = "Beta parameters") -> tuple[np.ndarray, np.ndarray]:
    """Return ``alpha`` and ``beta`` as float arrays, checking they are finite and positive.

    Raises:
      ProfileError: if any value is NaN, infinite or <= 0.
    """
    a = np.asarray(alpha, dtype=float)
    b = np.asarray(beta, dtype=float)
    for name, v in (("alpha", a), ("beta", b)):
        if not np.all(np.isfinite(v)) or np.any(v <= 0):
            bad = v[~(np.isfinite(v) & (v > 0))] if v.ndim else v
            raise ProfileError(f"{what}: {name} must be finite and > 0, got {np.ravel(bad)[:5].tolist()}")
    return a, b


def statement_weights(confidence) -> np.ndarray:
    """Weights ``2 (c - 0.5)`` of profiling statements with label confidences ``c`` (paper, Sec. 3).

    Args:
      confidence: array of label confidences, each in [0.5, 1].

    Returns:
      Float array of the same shape, each in [0, 1].

    Raises:
      ProfileError: if a confidence is NaN or outside [0.5, 1].
    """
    c = np.asarray(confidence, dtype=float)
    bad = ~((c >= 0.5) & (c <= 1.0))
    if np.any(bad):
        raise ProfileError(
            f"label confidences must lie in [0.5, 1] (and not be NaN); got {np.ravel(c[bad])[:5].tolist()}"
            f" ({int(bad.sum())} bad of {c.size})"
        )
    return 2.0 * (c - 0.5)


def profile_parameters(matches, confidence, *, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised profile update: ``alpha, beta`` from many answer sets at once.

    Args:
      matches: bool array, True where the model's yes/no answer matches the statement's
        direction. Any leading batch shape; statements along ``axis``.
      confidence: label confidences, broadcastable to ``matches``.
      axis: the statements axis.

    Returns:
      ``(alpha, beta)`` arrays with ``axis`` reduced: ``0.5 + sum of weights`` of the matching and
      of the non-matching statements.

    Raises:
      ProfileError: on bad confidences or shapes that do not broadcast.
    """
    m = np.asarray(matches)
    if m.dtype != bool:
        if not np.all(np.isin(m, (0, 1))):
            raise ProfileError("matches must be boolean (or 0/1)")
        m = m.astype(bool)
    w = statement_weights(confidence)
    try:
        m, w = np.broadcast_arrays(m, w)
    except ValueError:
        raise ProfileError(
            f"matches {m.shape} and confidence {w.shape} do not broadcast"
        ) from None
    alpha = PRIOR + np.sum(np.where(m, w, 0.0), axis=axis)
    beta = PRIOR + np.sum(np.where(m, 0.0, w), axis=axis)
    return alpha, beta


def answer_matches(says_yes, positive_direction) -> np.ndarray:
    """Whether each yes/no answer matches its statement's direction: yes to a positive-direction
    statement or no to a negative one."""
    return np.asarray(says_yes, dtype=bool) == np.asarray(positive_direction, dtype=bool)


@dataclass(frozen=True)
class BetaProfile:
    """A persona profile Beta(alpha, beta) (Miehling et al. 2024, Sec. 3).

    Attributes:
      alpha: evidence for the persona direction plus the prior 0.5.
      beta: evidence against it plus the prior 0.5.
    """

    alpha: float
    beta: float

    def __post_init__(self):
        a, b = check_parameters(self.alpha, self.beta, "BetaProfile")
        if a.ndim or b.ndim:
            raise ProfileError("BetaProfile holds scalars; use profile_parameters for batches")
        object.__setattr__(self, "alpha", float(a))
        object.__setattr__(self, "beta", float(b))

    @classmethod
    def prior(cls) -> BetaProfile:
        """The profile before any statement: Beta(0.5, 0.5)."""
        return cls(PRIOR, PRIOR)

    @classmethod
    def from_answers(cls, matches, confidence) -> BetaProfile:
        """Profile from one model's answers to a dimension's profiling statements.

        Args:
          matches: 1-D bool array, True where the answer matches the statement's direction
            (see :func:`answer_matches`).
          confidence: 1-D label confidences in [0.5, 1], same length.

        Returns:
          Beta(0.5 + weights of matching answers, 0.5 + weights of the others); the prior
          Beta(0.5, 0.5) for no answers.

        Raises:
          ProfileError: on bad confidences or a length mismatch.
        """
        m = np.asarray(matches)
        c = np.asarray(confidence, dtype=float)
        if m.ndim != 1 or c.ndim != 1 or m.shape != c.shape:
            raise ProfileError(
                f"from_answers wants 1-D matches and confidence of equal length, got {m.shape} and {c.shape}"
            )
        a, b = profile_parameters(m, c)
        return cls(float(a), float(b))

    @classmethod
    def extreme(cls, confidence, direction: str = "+") -> BetaProfile:
        """Maximally steered profile p~+ (``"+"``) or p~- (``"-"``): every statement answered in
        that direction (paper, Sec. 3).

        p~+ is Beta(0.5 + sum of weights, 0.5), p~- is Beta(0.5, 0.5 + sum of weights).
        """
        w = statement_weights(np.ravel(np.asarray(confidence, dtype=float)))
        total = PRIOR + float(np.sum(w))
        if normalise_direction(direction) == "positive":
            return cls(total, PRIOR)
        return cls(PRIOR, total)

    @property
    def mean(self) -> float:
        """Mean alpha / (alpha + beta)."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def var(self) -> float:
        """Variance alpha beta / ((alpha + beta)^2 (alpha + beta + 1))."""
        s = self.alpha + self.beta
        return self.alpha * self.beta / (s * s * (s + 1.0))

    def cdf(self, x):
        """Cumulative distribution function (regularised incomplete Beta function)."""
        return special.betainc(self.alpha, self.beta, np.clip(np.asarray(x, dtype=float), 0.0, 1.0))

    def ppf(self, u):
        """Quantile function F^-1(u)."""
        return special.betaincinv(self.alpha, self.beta, np.asarray(u, dtype=float))

    def pdf(self, x):
        """Density."""
        return stats.beta.pdf(x, self.alpha, self.beta)
