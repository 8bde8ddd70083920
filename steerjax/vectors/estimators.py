"""Directions from positive and negative activations: mean difference, PCA, logistic probe.

Each takes activations ``[n, D]`` (one row per example, e.g. from
:func:`steerjax.vectors.read_activations`) and returns a float32 ``[D]`` direction, computed in
float64. They match steering-vectors' aggregators (``mean_aggregator``, ``pca_aggregator``,
``logistic_aggregator``).
"""

from __future__ import annotations

import numpy as np

from steerjax.errors import SteeringError


def mean_difference(pos_acts, neg_acts) -> np.ndarray:
    """``mean(pos) - mean(neg)``: for paired activations, CAA's mean of ``pos - neg``
    (steering-vectors' ``mean_aggregator``); the two sets may also differ in size (concept texts
    against neutral texts).

    Args:
      pos_acts, neg_acts: ``[n, D]`` and ``[m, D]`` activations (``n, m >= 1``).
    """
    pos = np.asarray(pos_acts, np.float64)
    neg = np.asarray(neg_acts, np.float64)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1] or not len(pos) or not len(neg):
        raise SteeringError(
            f"positive and negative activations must be [n, D] arrays of one width with n >= 1, got "
            f"{pos.shape} and {neg.shape}"
        )
    return (pos.mean(axis=0) - neg.mean(axis=0)).astype(np.float32)


def pca_direction(pos_acts, neg_acts) -> np.ndarray:
    """First principal component of the differences ``pos - neg``, as steering-vectors'
    ``pca_aggregator``.

    The PCA is *uncentered*: the top right-singular vector of the ``[n, D]`` difference matrix.
    (steering-vectors computes it on the differences and their negatives together, whose mean
    is zero, which gives the same vector.) The sign is chosen so that the mean projection of
    the differences is positive (a zero mean keeps the SVD's sign); the norm is 1.

    Args:
      pos_acts, neg_acts: ``[n, D]`` paired activations.
    """
    pos, neg = _paired(pos_acts, neg_acts)
    deltas = pos - neg
    _, _, vt = np.linalg.svd(deltas, full_matrices=False)
    vec = vt[0]
    if np.mean(deltas @ vec) < 0:
        vec = -vec
    return vec.astype(np.float32)


def probe_direction(pos_acts, neg_acts, *, l2_penalty: float = 1.0, max_iter: int = 100) -> np.ndarray:
    """Unit weight vector of an L2-regularised logistic regression, as steering-vectors'
    ``logistic_aggregator``.

    Each pair is centred on its own mean ``(pos + neg) / 2``; the centred positives get label
    +1, the centred negatives -1, and there is no intercept. The weights ``w`` minimise

    ``sum_i log(1 + exp(-y_i w.x_i)) + l2_penalty / 2 * |w|^2``.

    scikit-learn's ``LogisticRegression`` minimises ``C sum_i log(1 + exp(-y_i w.x_i)) + |w|^2 / 2``,
    the same objective divided by ``l2_penalty``, so the fit is
    ``LogisticRegression(fit_intercept=False, C=1 / l2_penalty)`` (steering-vectors' default is
    ``C=1``), solved in float64 by L-BFGS (scikit-learn's default solver, as steering-vectors
    uses it) with a tolerance of 1e-12 rather than its default 1e-4, so the direction is
    converged to ~1e-8; the result is normalised to unit length.

    Args:
      pos_acts, neg_acts: ``[n, D]`` paired activations.
      l2_penalty: the L2 penalty strength (``> 0``).
      max_iter: the most L-BFGS iterations (typically 10-20 are used).
    """
    from sklearn.linear_model import LogisticRegression

    if not l2_penalty > 0:
        raise SteeringError(f"l2_penalty must be > 0, got {l2_penalty}")
    pos, neg = _paired(pos_acts, neg_acts)
    mean = (pos + neg) / 2
    x = np.concatenate([pos - mean, neg - mean])
    y = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
    fit = LogisticRegression(fit_intercept=False, C=1.0 / float(l2_penalty), tol=1e-12,
                             max_iter=int(max_iter)).fit(x, y)
    w = fit.coef_[0]
    norm = np.linalg.norm(w)
    return (w / norm if norm > 0 else w).astype(np.float32)


def _paired(pos_acts, neg_acts) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(pos_acts, np.float64)
    neg = np.asarray(neg_acts, np.float64)
    if pos.ndim != 2 or pos.shape != neg.shape or pos.shape[0] == 0:
        raise SteeringError(
            f"positive and negative activations must be paired [n, D] arrays with n >= 1, got "
            f"{pos.shape} and {neg.shape}"
        )
    return pos, neg
