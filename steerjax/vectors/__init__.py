"""Steering vectors: reading activations, estimating directions, the vector object and its files.

* :mod:`~steerjax.vectors.activations`: :func:`read_activations`, the one activation reader;
* :mod:`~steerjax.vectors.estimators`: :func:`mean_difference`, :func:`pca_direction`,
  :func:`probe_direction` (scikit-learn's logistic regression);
* :mod:`~steerjax.vectors.learned`: :func:`learn_vectors` (optax) and :func:`logprob_margins`;
* :mod:`~steerjax.vectors.train`: :func:`train_vector` from contrastive examples;
* :mod:`~steerjax.vectors.vector`: :class:`SteeringVector` and :func:`load_vector`;
* :mod:`~steerjax.vectors.io`: the files (steerjax safetensors, vector sets, llama.cpp control
  vectors, ``.npy``).
"""

from steerjax.vectors.activations import read_activations
from steerjax.vectors.estimators import mean_difference, pca_direction, probe_direction
from steerjax.vectors.io import (
    export_control_vector_gguf,
    file_format,
    load_vector_set,
    load_vectors,
    save_vector_set,
    save_vectors,
)
from steerjax.vectors.learned import learn_vectors, logprob_margins
from steerjax.vectors.train import METHOD_ALIASES, METHODS, canonical_method, contrastive_activations, train_vector
from steerjax.vectors.vector import SteeringVector, load_vector

__all__ = [
    "METHOD_ALIASES", "METHODS", "SteeringVector", "canonical_method", "contrastive_activations",
    "export_control_vector_gguf", "file_format",
    "learn_vectors", "load_vector", "load_vector_set", "load_vectors", "logprob_margins", "mean_difference",
    "pca_direction", "probe_direction", "read_activations", "save_vector_set", "save_vectors", "train_vector",
]
