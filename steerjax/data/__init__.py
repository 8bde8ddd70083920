"""Contrastive examples and the bundled model-written-evaluation datasets."""

from steerjax.data.examples import DataError, Encoded, Example, as_examples, encode, encode_all
from steerjax.data.mwe import (
    data_root,
    list_datasets,
    load_dataset,
    parse_split,
    persona_prompts,
    split_indices,
    strip_meta,
)

__all__ = [
    "DataError", "Encoded", "Example", "as_examples", "encode", "encode_all",
    "data_root", "list_datasets", "load_dataset", "parse_split", "persona_prompts", "split_indices", "strip_meta",
]
