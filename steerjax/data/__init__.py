"""Contrastive examples, prompt formats and the bundled model-written-evaluation datasets."""

from steerjax.data.examples import DataError, Encoded, Example, as_examples, encode, encode_all, render_example
from steerjax.data.formats import FORMATS, SETTINGS, PromptFormat, get_format
from steerjax.data.mwe import (
    check_split,
    data_root,
    list_datasets,
    load_dataset,
    parse_split,
    persona_prompts,
    split_indices,
    strip_meta,
)

__all__ = [
    "DataError", "Encoded", "Example", "as_examples", "encode", "encode_all", "render_example",
    "FORMATS", "SETTINGS", "PromptFormat", "get_format",
    "check_split", "data_root", "list_datasets", "load_dataset", "parse_split", "persona_prompts", "split_indices",
    "strip_meta",
]
