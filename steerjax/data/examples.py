"""Contrastive examples: a prompt with a behaviour-matching and a non-matching completion.

Every sweep, vector-training and metric function takes a list of :class:`Example` (or plain
``(prompt, positive_completion, negative_completion)`` tuples, converted by :func:`as_examples`),
so any data can be used, not only the bundled datasets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from steerjax.data.batch import render
from steerjax.errors import DataError, TokenizerError


@dataclasses.dataclass(frozen=True)
class Example:
    """One contrastive example.

    Attributes:
      prompt: a chat, as a tuple of ``{"role", "content"}`` dicts (rendered with the tokenizer's
        chat template and its generation prompt), or plain text (tokenized as is, with the
        tokenizer's special tokens).
      positive: the completion that matches the behaviour, e.g. ``"(A)"``.
      negative: the completion that does not, e.g. ``"(B)"``.
      meta: free-form facts about the example, copied into result tables (``dataset``,
        ``index``, ``positive_letter``, ``positive_is_yes``, ``format``, ``setting``, ...).
      strip_prompt: ``.strip()`` the rendered prompt text before a completion is appended (the
        ``"repepo"`` format: ``"...<|im_start|>assistant (A)"``).
    """

    prompt: tuple[Mapping[str, str], ...] | str
    positive: str
    negative: str
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    strip_prompt: bool = False

    def __post_init__(self):
        if isinstance(self.prompt, list):
            object.__setattr__(self, "prompt", tuple(self.prompt))
        if not isinstance(self.prompt, (str, tuple)) or not self.prompt:
            raise DataError(f"prompt must be non-empty text or a chat (list of messages), got {self.prompt!r}")
        if isinstance(self.prompt, tuple) and not all(isinstance(m, Mapping) and "role" in m and "content" in m
                                                      for m in self.prompt):
            raise DataError("a chat prompt must be a list of {'role': ..., 'content': ...} messages")
        if not all(isinstance(c, str) and c for c in (self.positive, self.negative)):
            raise DataError("positive and negative completions must be non-empty strings")
        if self.positive == self.negative:
            raise DataError(f"positive and negative completions are identical ({self.positive!r})")
        if not isinstance(self.strip_prompt, bool):
            raise DataError(f"strip_prompt must be a bool, got {self.strip_prompt!r}")


def as_examples(items: Iterable[Example | Sequence[Any]]) -> list[Example]:
    """Accept :class:`Example` objects or ``(prompt, positive, negative)`` tuples."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Example):
            out.append(item)
        elif isinstance(item, (tuple, list)) and len(item) == 3:
            out.append(Example(item[0], item[1], item[2], {"index": i}))
        else:
            raise DataError(f"example {i} must be an Example or a (prompt, positive, negative) tuple, got {item!r}")
    if not out:
        raise DataError("no examples: the dataset or split is empty")
    return out


class Encoded(NamedTuple):
    """Token ids of one example: the prompt, and each completion (to be appended to it)."""

    prompt: list[int]
    positive: list[int]
    negative: list[int]


_warned_boundary = False


def common_prefix(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def render_example(tokenizer, example: Example) -> tuple[str, bool]:
    """The text a completion of ``example`` is appended to, and whether the tokenizer adds its
    special tokens: the prompt rendered by :func:`steerjax.data.batch.render` (a chat with the
    chat template and its generation prompt), stripped when ``example.strip_prompt``.

    ``render_example(tok, e)[0] + e.positive`` is the full text that :func:`encode` tokenizes.
    """
    text, special = render(tokenizer, example.prompt)
    return (text.strip() if example.strip_prompt else text), special


def encode(tokenizer, example: Example) -> Encoded:
    """Tokenize an example as the full strings prompt + completion are tokenized.

    The prompt is rendered (:func:`render_example`) and each completion text appended to it. The completion's tokens
    are what follows the prompt's tokens in the tokenization of the full text (what
    steering-vectors, repepo and steering-bench read).

    When the tokenizer merges across the boundary (ChatML's ``"assistant\n"`` followed by
    ``"  (A)"`` gives one ``"\n "`` token), the prompt ends where the prompt's tokens and both
    full texts' tokens stop agreeing, and its last tokens are counted with the completions (a
    warning says so, once). That is the references' rule too: their hooks take the generation
    start as the first token where the prompt's and the full text's tokens differ.
    """
    global _warned_boundary
    text, special = render_example(tokenizer, example)
    prompt = list(tokenizer(text, add_special_tokens=special)["input_ids"])
    fulls = [list(tokenizer(text + c, add_special_tokens=special)["input_ids"])
             for c in (example.positive, example.negative)]
    keep = min(common_prefix(prompt, full) for full in fulls)
    if keep < len(prompt):
        if not _warned_boundary:
            import warnings

            warnings.warn(f"the tokenizer merges the prompt's end with the completions {example.positive!r} / "
                          f"{example.negative!r}: the prompt's last {len(prompt) - keep} token(s) are scored "
                          "with the completions (as the full text is tokenized)", stacklevel=2)
            _warned_boundary = True
        prompt = prompt[:keep]
    pos, neg = (full[keep:] for full in fulls)
    if not pos or not neg:
        raise DataError(f"a completion encodes to zero tokens: {example.positive!r} / {example.negative!r}")
    if pos == neg:
        raise DataError(
            f"completions {example.positive!r} and {example.negative!r} encode to the same tokens {pos}: "
            "the positive and negative answers must differ as tokens"
        )
    return Encoded(prompt, pos, neg)


def encode_all(model, examples) -> tuple[list, list[Encoded]]:
    """Examples (``Example``, ``(prompt, pos, neg)`` tuples or :class:`Encoded` token ids) and
    their token ids. Token ids serve models without a tokenizer."""
    if isinstance(examples, (Example, Encoded)):
        examples = [examples]
    items = list(examples)
    if not items:
        raise DataError("no examples: the dataset or split is empty")
    text_pos = [i for i, it in enumerate(items) if not isinstance(it, Encoded)]
    texts = as_examples([items[i] for i in text_pos]) if text_pos else []
    if texts and model.tokenizer is None:
        raise TokenizerError(
            f"the model {model.source} has no tokenizer, so text examples cannot be encoded; pass "
            "token ids as steerjax.data.Encoded(prompt, positive, negative)"
        )
    for i, ex in zip(text_pos, texts):
        items[i] = ex
    encoded = []
    for i, it in enumerate(items):
        enc = encode(model.tokenizer, it) if isinstance(it, Example) else _check_encoded(it, i)
        if not enc.prompt:
            raise DataError(f"example {i} has an empty prompt: a completion needs a token before it")
        encoded.append(enc)
    return items, encoded


def _check_encoded(enc: Encoded, i: int) -> Encoded:
    out = []
    for name, ids in zip(Encoded._fields, enc):
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise DataError(f"example {i}: Encoded.{name} must be a list of token ids, got {ids!r}")
        out.append([int(t) for t in arr])
    enc = Encoded(*out)
    if not enc.positive or not enc.negative:
        raise DataError(f"example {i}: a completion has zero tokens")
    if enc.positive == enc.negative:
        raise DataError(f"example {i}: the positive and negative completions are the same tokens {enc.positive}")
    return enc
