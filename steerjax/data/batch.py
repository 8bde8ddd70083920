"""Token batches: one text/chat -> ids encoder and one padded ``[B, T]`` batch.

Every entry point that feeds token ids to a model goes through here:

* :func:`render` / :func:`encode` turn text, chats (lists of ``{"role", "content"}``) or token-id
  lists into ids, with the model's chat template where asked;
* :class:`TokenBatch` pads id lists into ``ids [B, T]``, ``valid [B, T]`` and ``positions [B, T]``
  (index among the row's real tokens, so padding never shifts a position), left- or right-aligned,
  to a width from a named :class:`Buckets` policy and (optionally) a number of rows;
* the rounding helpers (:func:`round_up`, :func:`pow2`, :func:`round_rows`) are the only ones.

A batch width rounded to a bucket means similar lengths share one compiled program; a policy is
named for the job it serves, so its value is set in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from steerjax.errors import SteerjaxError, TokenizerError

# ----------------------------------------------------------------------------- rounding


def round_up(n: int, k: int) -> int:
    """``n`` rounded up to a multiple of ``k`` (``k >= 1``)."""
    return -(-int(n) // int(k)) * int(k)


def pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``)."""
    return 1 << max(0, int(n) - 1).bit_length()


def round_rows(n: int) -> int:
    """``n`` rounded up to three significant bits (1..8, 10, 12, 14, 16, 20, ...): at most 25%
    padding rows, and a handful of shapes to compile."""
    step = 1 << max(0, int(n).bit_length() - 3)
    return -(-int(n) // step) * step


@dataclasses.dataclass(frozen=True)
class Buckets:
    """A padding policy for one dimension: widths are multiples of ``multiple``, at least
    ``minimum``."""

    multiple: int
    minimum: int = 1

    def __call__(self, n: int) -> int:
        return round_up(max(int(n), self.minimum), self.multiple)


# The named policies. Each serves one kind of call; their values trade padding against compiles.
GENERATION = Buckets(16)  # prompts of a generate call (and of rollouts read at the same shapes)
SWEEP_PROMPT = Buckets(32)  # the prompt cache of a multiplier sweep (one per bucket of prompts)
ACTIVATIONS = Buckets(16)  # full texts read for activations (vectors, concepts)
JUDGE_PROMPT = Buckets(32, minimum=32)  # the judge's prefill of a prompt
JUDGE_ROLLOUT = Buckets(8)  # the judge's rollout rows (a prompt's last token, then the rollout)
SCORING_PREFIX = Buckets(32, minimum=32)  # a profile-scoring steering prompt
SCORING_ROW = Buckets(16, minimum=16)  # a packed row of profile-scoring continuations


# ----------------------------------------------------------------------------- encoding


def _is_chat(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], dict)


def _tokenizer(model_or_tokenizer: Any):
    """``(tokenizer, name)`` of a ``LanguageModel`` or a tokenizer."""
    if hasattr(model_or_tokenizer, "config") and hasattr(model_or_tokenizer, "params"):
        return model_or_tokenizer.tokenizer, getattr(model_or_tokenizer, "source", "this model")
    return model_or_tokenizer, "this model"


def render(tokenizer, prompt: Any, *, chat: bool | None = False) -> tuple[str, bool]:
    """The prompt as text, and whether the tokenizer should add its special tokens.

    ``prompt`` is a text or a chat. A chat is rendered with the chat template and a generation
    prompt. A text is left as it is with ``chat=False``, made a user message with ``chat=True``,
    and with ``chat=None`` made one when the tokenizer has a chat template.
    """
    tok, name = _tokenizer(tokenizer)
    if tok is None:
        raise TokenizerError(f"{name} has no tokenizer: pass token ids instead of text")
    has_template = bool(getattr(tok, "chat_template", None))
    if isinstance(prompt, str):
        if chat is False or (chat is None and not has_template):
            return prompt, True
        prompt = [{"role": "user", "content": prompt}]
    if not has_template:
        raise TokenizerError(f"the tokenizer of {name} has no chat template: pass plain text prompts")
    text = tok.apply_chat_template([dict(m) for m in prompt], add_generation_prompt=True, tokenize=False)
    return text, False


def encode(model_or_tokenizer, prompts: Any, *, chat: bool | None = False) -> list[list[int]]:
    """Token ids of each prompt: a text, a chat, or a token-id list (passed through).

    A single text or chat is a batch of one. ``chat`` as in :func:`render`.
    """
    if isinstance(prompts, str) or _is_chat(prompts):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise SteerjaxError("prompts must be a non-empty list of strings, chats or token-id lists")
    tok = _tokenizer(model_or_tokenizer)[0]
    out = []
    for p in prompts:
        if isinstance(p, str) or _is_chat(p):
            text, special = render(model_or_tokenizer, p, chat=chat)  # raises when there is no tokenizer
            ids = list(tok(text, add_special_tokens=special)["input_ids"])
        else:
            ids = [int(i) for i in np.asarray(p).reshape(-1)]
        if not ids:
            raise SteerjaxError("a prompt encodes to zero tokens")
        out.append(ids)
    return out


# ----------------------------------------------------------------------------- batches


@struct.dataclass
class TokenBatch:
    """Padded token ids: ``ids [B, T] int32``, ``valid [B, T] bool`` (real tokens) and
    ``positions [B, T] int32`` (index among the row's real tokens; padding repeats the last
    real position before it, or 0: as :func:`steerjax.models.transformer.positions_from_mask`).

    A pytree: pass it through ``jit`` or place it on a mesh with
    :func:`steerjax.sharding.put_batch`.
    """

    ids: Any
    valid: Any
    positions: Any

    @classmethod
    def pad(
        cls,
        seqs: Sequence[Sequence[int]],
        *,
        side: str = "left",
        buckets: Buckets | None = None,
        width: int | None = None,
        rows: int | None = None,
    ) -> TokenBatch:
        """Pad id lists into one batch (numpy arrays).

        Args:
          seqs: the rows' token ids (at least one).
          side: ``"left"`` (rows end together: prompts to continue) or ``"right"``.
          buckets: round the width up with this policy (default: the longest row).
          width: the width itself (at least the longest row); excludes ``buckets``.
          rows: pad to this many rows by repeating the last row (fixed shapes; the caller drops
            the extra rows' results).
        """
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        seqs = [list(s) for s in seqs]
        if not seqs:
            raise SteerjaxError("a token batch needs at least one row")
        longest = max(len(s) for s in seqs)
        if width is None:
            width = buckets(longest) if buckets is not None else longest
        elif buckets is not None:
            raise ValueError("give buckets or width, not both")
        if width < longest:
            raise SteerjaxError(f"a row of {longest} tokens does not fit a batch {width} tokens wide")
        n = len(seqs) if rows is None else int(rows)
        if n < len(seqs):
            raise SteerjaxError(f"{len(seqs)} rows do not fit a batch of {n} rows")
        ids = np.zeros((n, width), np.int32)
        valid = np.zeros((n, width), bool)
        for i in range(n):
            s = seqs[i] if i < len(seqs) else seqs[-1]
            lo = width - len(s) if side == "left" else 0
            ids[i, lo:lo + len(s)] = s
            valid[i, lo:lo + len(s)] = True
        pos = np.maximum(np.cumsum(valid, axis=-1, dtype=np.int32) - 1, 0).astype(np.int32)
        return cls(ids, valid, pos)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(np.shape(self.ids))

    @property
    def lengths(self):
        """``[B]`` number of real tokens per row."""
        xp = jnp if isinstance(self.valid, jax.Array) else np
        return xp.sum(self.valid, axis=-1).astype(xp.int32)

    def take(self, rows) -> TokenBatch:
        """These rows (an index array), in this order."""
        return TokenBatch(self.ids[rows], self.valid[rows], self.positions[rows])
