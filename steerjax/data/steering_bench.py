"""steering-bench's persona prompts (the positive and negative system prompts of each persona
dataset), read from ``persona_prompts.json`` or from steering-bench's own ``persona_prompts.py``,
which is parsed as data with :mod:`ast`, never imported or executed."""

from __future__ import annotations

import ast
import json
import os
from typing import Any

from steerjax.errors import DataError

PROMPT_NAMES = ("positive", "negative")


def read_persona_prompts(path: str | os.PathLike) -> dict[str, Any]:
    """The persona prompt table, from either form of the file.

    - ``persona_prompts.json`` (steerjax's earlier extraction): returned as stored,
      ``{"prompts": {name: {"positive": str, "negative": str}}, ...}``;
    - ``persona_prompts.py`` (steering-bench's own file, as downloaded): read as data with
      :mod:`ast` (:func:`parse_persona_prompts`), never imported or executed.

    Raises:
      DataError: the file is unreadable or holds no prompt table.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} ({e}): fix or re-download the file") from e
    if path.endswith(".py"):
        return parse_persona_prompts(text, path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}): fix or re-download the file") from e


def parse_persona_prompts(text: str, where: str = "persona_prompts.py") -> dict[str, Any]:
    """steering-bench's ``persona_prompts.py`` as data, without running it.

    Every top-level assignment of a dict literal is read entry by entry with
    :func:`ast.literal_eval`: an entry ``name: (positive, negative)`` (or ``name: {"positive": ...,
    "negative": ...}``) is a prompt; a dict of such entries under a category key adds them under
    that category; ``category: [name, ...]`` lists a category. Entries that are not literals (calls,
    names, ``**`` unpacking) are skipped, and a name assigned twice keeps its last prompts, as
    merging the dicts in order would.

    Returns:
      ``{"description": str, "prompts": {name: {"positive": str, "negative": str}},
      "categories": {category: [name, ...]}}``.

    Raises:
      DataError: the text is not Python, or holds no prompt.
    """
    try:
        tree = ast.parse(text, filename=where)
    except SyntaxError as e:
        raise DataError(f"{where} is not valid Python ({e.msg}, line {e.lineno}): re-download the file") from e
    prompts: dict[str, dict[str, str]] = {}
    categories: dict[str, list[str]] = {}
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, ast.Dict):
            _read_prompt_dict(value, prompts, categories, None)
    if not prompts:
        raise DataError(f"{where} holds no persona prompts (no top-level dict of name: (positive, negative)): "
                        "re-download the file")
    return {"description": f"persona prompts read as data from steering-bench's {os.path.basename(where)}",
            "prompts": prompts, "categories": categories}


def _read_prompt_dict(node: ast.Dict, prompts: dict, categories: dict, category: str | None) -> None:
    for key_node, value_node in zip(node.keys, node.values):
        key = _literal(key_node) if key_node is not None else None
        if not isinstance(key, str):
            continue
        if isinstance(value_node, ast.Dict) and category is None and not _is_prompt(_literal(value_node)):
            before = set(prompts)
            _read_prompt_dict(value_node, prompts, categories, key)
            added = [n for n in prompts if n not in before]
            if added:
                categories.setdefault(key, []).extend(added)
            continue
        value = _literal(value_node)
        prompt = _is_prompt(value)
        if prompt:
            prompts[key] = prompt
        elif category is None and isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            categories.setdefault(key, []).extend(value)


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _is_prompt(value: Any) -> dict[str, str] | None:
    """``{"positive": .., "negative": ..}`` when ``value`` is a prompt pair, else None."""
    if isinstance(value, dict):
        value = tuple(value.get(k) for k in PROMPT_NAMES) if set(value) >= set(PROMPT_NAMES) else None
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, str) and v for v in value):
        return dict(zip(PROMPT_NAMES, value))
    return None
