"""Yes/no answers of a model to profiling questions under steering prompts, by log-probabilities.

For every (steering prompt, question) pair the chat ``query_messages(question, system=prompt)``
is rendered with the model's chat template and its generation prompt, and the answers
``"yes"`` and ``"no"`` (no leading space: they follow the generation prompt directly) are scored
as continuations: ``log p(answer | chat)``, summed over the answer's tokens when it has several.
The answer tokens are what follows the chat's tokens in the tokenization of ``chat + answer``.

KV reuse. The chats of one steering prompt share a long token prefix: the template up to and
through the system message, and the start of the user message. For each steering prompt the
longest common token prefix of its tokenized chats (at most the shortest chat minus one token)
is computed once (one prefill into a :class:`KVCache`), and every question's remaining tokens
plus its answer tokens are scored against it as rows of one batch with ``forward(prefix=...)``:
right-padded, masked, positions continuing from the prefix length. Because the boundary is found
on the token ids of the full chats, the result equals scoring each full chat without a cache.
Several steering prompts are batched as several prefixes, each with its own rows.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from steerjax import sharding as shd
from steerjax.data.examples import DataError
from steerjax.errors import ContextLengthError, TokenizerError
from steerjax.models.transformer import KVCache, forward, positions_from_mask, unembed
from steerjax.profiles.data import DIRECTIONS, query_messages

ANSWERS = ("yes", "no")
PREFIX_BUCKET = 32
ROW_BUCKET = 16


def answer_logprobs(
    model,
    system_prompts: Sequence[str | None],
    questions: Sequence[str],
    *,
    answers: tuple[str, str] = ANSWERS,
    batch_size: int = 64,
    progress: bool = True,
    mesh=None,
) -> np.ndarray:
    """Log-probabilities of answering yes and no to every question under every system prompt.

    Args:
      model: a :class:`steerjax.LanguageModel` whose tokenizer has a chat template.
      system_prompts: steering prompts (system messages); ``None`` for a chat without one.
      questions: profiling statements, asked with :func:`steerjax.profiles.data.query_messages`.
      answers: the two continuations scored after the generation prompt, ``(yes, no)``.
      batch_size: most rows (question continuations) per scoring forward pass. A row is one
        question when both answers are single tokens, else one (question, answer) pair. Whole
        steering prompts are batched together when their rows fit.
      progress: show a progress bar.
      mesh: a ``("data", "model")`` mesh (:func:`steerjax.sharding.make_mesh`): steering prompts
        (and their rows) split over ``data``, parameters over ``model``. Default: one device.

    Returns:
      ``float32 [n_prompts, n_questions, 2]``: ``log p(answers[0])``, ``log p(answers[1])``.

    Raises:
      TokenizerError: no tokenizer or chat template, or the template rejects the chat.
      ContextLengthError: a chat plus its answer is longer than the model's context.
      DataError: empty inputs, bad ``batch_size``, or answers that tokenize identically.
    """
    prompts, qs = list(system_prompts), list(questions)
    if not prompts:
        raise DataError("system_prompts is empty: pass at least one steering prompt (or None)")
    if not qs:
        raise DataError("questions is empty: pass at least one profiling statement")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(answers) != 2 or not all(isinstance(a, str) and a for a in answers) or answers[0] == answers[1]:
        raise DataError(f"answers must be two different non-empty strings, got {answers!r}")
    cfg = model.config
    ids = _tokenize_chats(model.tokenizer, prompts, qs)
    ans = _answer_tokens(model.tokenizer, prompts[0], qs[0], answers)
    longest = max(len(a) for a in ans)
    for p, rows in enumerate(ids):
        q = int(np.argmax([len(r) for r in rows]))
        if len(rows[q]) + longest > cfg.max_position_embeddings:
            raise ContextLengthError(
                f"steering prompt {p} with question {q} is {len(rows[q])} tokens, plus {longest} answer tokens: "
                f"longer than the model's context of {cfg.max_position_embeddings}; use fewer or shorter "
                "steering statements"
            )
    splits = [min(_common_prefix(rows), min(len(r) for r in rows) - 1) for rows in ids]

    single = all(len(a) == 1 for a in ans)
    per_q = 1 if single else 2
    n_prompts, n_q = len(prompts), len(qs)
    q_chunk = min(n_q, max(1, batch_size // per_q))
    group = max(1, min(n_prompts, batch_size // (q_chunk * per_q)))
    order = sorted(range(n_prompts), key=lambda p: splits[p])  # similar prefix lengths share a group
    tr = _round_up(max(len(r) - s for rows, s in zip(ids, splits) for r in rows) + longest - 1, ROW_BUCKET)
    width = 2 if single else longest
    dtype = model.params["embed"].dtype
    params = model.params
    if mesh is not None:  # whole steering prompts (and so their rows) per data shard
        params = shd.shard_params(params, cfg, mesh)
        group = shd.round_up(group, shd.data_size(mesh))
    put = functools.partial(shd.put, mesh=mesh)

    out = np.zeros((n_prompts, n_q, 2), np.float32)
    starts = [(g, c) for g in range(0, n_prompts, group) for c in range(0, n_q, q_chunk)]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(starts), desc="profile", unit="batch", disable=not progress or None)
    try:
        for g0 in range(0, n_prompts, group):
            pidx = order[g0:g0 + group]
            pidx += [pidx[-1]] * (group - len(pidx))
            tp = _round_up(max(splits[p] for p in pidx), PREFIX_BUCKET)  # this group's prefix bucket
            pre_ids = np.zeros((group, tp), np.int32)
            pre_valid = np.zeros((group, tp), bool)
            for e, p in enumerate(pidx):
                pre_ids[e, tp - splits[p]:] = ids[p][0][:splits[p]]
                pre_valid[e, tp - splits[p]:] = True
            cache = _prefill(params, cfg, put(pre_ids), put(pre_valid), dtype=dtype)
            for c0 in range(0, n_q, q_chunk):
                qidx = list(range(c0, min(c0 + q_chunk, n_q)))
                n_real = len(qidx)
                qidx += [qidx[-1]] * (q_chunk - n_real)
                rows = _rows(ids, splits, pidx, qidx, ans, single, tr, width)
                lp = shd.to_host(_score_rows(params, cfg, cache, *map(put, rows)))
                lp = lp.reshape(group, q_chunk, per_q, width)
                scores = lp[:, :, 0, :] if single else lp.sum(-1)
                for e, p in enumerate(pidx[: min(group, n_prompts - g0)]):
                    out[p, c0:c0 + n_real] = scores[e, :n_real]
                bar.update(1)
    finally:
        bar.close()
    return out


def answers_match(logprobs, directions) -> np.ndarray:
    """Whether each answer agrees with its statement's direction.

    The model answers yes when ``logprobs[..., 0] > logprobs[..., 1]`` (ties answer no). A yes
    matches a ``"positive"`` statement, a no matches a ``"negative"`` one.

    Args:
      logprobs: ``[..., n_questions, 2]`` from :func:`answer_logprobs`.
      directions: ``n_questions`` directions, ``"positive"`` or ``"negative"`` (e.g. the
        ``direction`` column of :func:`steerjax.profiles.data.profiling_statements`).

    Returns:
      bool ``[..., n_questions]``.
    """
    lp = np.asarray(logprobs)
    dirs = np.asarray(list(directions), dtype=object)
    if lp.ndim < 2 or lp.shape[-1] != 2:
        raise DataError(f"logprobs must have shape [..., n_questions, 2], got {lp.shape}")
    if dirs.shape != (lp.shape[-2],):
        raise DataError(f"{dirs.size} directions for {lp.shape[-2]} questions: pass one direction per question")
    bad = sorted({str(d) for d in dirs} - set(DIRECTIONS))
    if bad:
        raise DataError(f"directions must be 'positive' or 'negative', found {bad}")
    said_yes = lp[..., 0] > lp[..., 1]
    return said_yes == (dirs == "positive")


def _round_up(n: int, k: int) -> int:
    return max(k, -(-n // k) * k)


def _render(tokenizer, system, question) -> str:
    try:
        return tokenizer.apply_chat_template(query_messages(question, system=system), add_generation_prompt=True,
                                             tokenize=False)
    except DataError:
        raise
    except Exception as e:
        where = "with a system message" if system is not None else "without a system message"
        raise TokenizerError(f"the chat template failed on a chat {where} ({type(e).__name__}: {e}); "
                             "this model's template may not accept system messages") from e


def _tokenize_chats(tokenizer, prompts, questions) -> list[list[list[int]]]:
    """Token ids ``[prompt][question]`` of every rendered chat."""
    if tokenizer is None:
        raise TokenizerError("this model has no tokenizer: profiling questions are text")
    if not getattr(tokenizer, "chat_template", None):
        raise TokenizerError("profiling needs a tokenizer with a chat template (the steering prompt is a system "
                             "message); this model's tokenizer has none")
    out = []
    for system in prompts:
        texts = [_render(tokenizer, system, q) for q in questions]
        out.append([list(r) for r in tokenizer(texts, add_special_tokens=False)["input_ids"]])
    return out


def _answer_tokens(tokenizer, system, question, answers) -> list[list[int]]:
    text = _render(tokenizer, system, question)
    chat = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    out = []
    for a in answers:
        full = list(tokenizer(text + a, add_special_tokens=False)["input_ids"])
        if full[: len(chat)] == chat and len(full) > len(chat):
            out.append(full[len(chat):])
        else:
            warnings.warn(f"the tokenizer merges the generation prompt and the answer {a!r}; the answer is "
                          "tokenized on its own", stacklevel=3)
            out.append(list(tokenizer(a, add_special_tokens=False)["input_ids"]))
    if not all(out):
        raise DataError(f"an answer encodes to zero tokens: {answers!r}")
    if out[0] == out[1]:
        raise DataError(f"answers {answers!r} encode to the same tokens {out[0]}")
    return out


def _common_prefix(seqs) -> int:
    first = seqs[0]
    n = len(first)
    for s in seqs[1:]:
        m = min(n, len(s))
        i = 0
        while i < m and s[i] == first[i]:
            i += 1
        n = i
    return n


def _rows(ids, splits, pidx, qidx, ans, single, tr, width):
    """Row tokens, validity, start positions, read positions, targets and target validity.

    Row order: prompt ``e``, question ``q``, then (two-row mode) answer ``a``. A row holds the
    question's tokens after the shared prefix, then the answer's tokens but its last. In one-row
    mode both answers are read at the row's last question token.
    """
    per_q = 1 if single else 2
    b = len(pidx) * len(qidx) * per_q
    tok = np.zeros((b, tr), np.int32)
    valid = np.zeros((b, tr), bool)
    start = np.zeros((b,), np.int32)
    read = np.zeros((b, width), np.int32)
    target = np.zeros((b, width), np.int32)
    tvalid = np.zeros((b, width), bool)
    i = 0
    for p in pidx:
        for q in qidx:
            rest = ids[p][q][splits[p]:]
            for a in range(per_q):
                seq = rest if single else rest + ans[a][:-1]
                tok[i, :len(seq)] = seq
                valid[i, :len(seq)] = True
                start[i] = splits[p]
                if single:
                    read[i, :] = len(rest) - 1
                    target[i, :] = [ans[0][0], ans[1][0]]
                    tvalid[i, :] = True
                else:
                    n = len(ans[a])
                    read[i, :n] = len(rest) - 1 + np.arange(n)
                    target[i, :n] = ans[a]
                    tvalid[i, :n] = True
                i += 1
    return tok, valid, start, read, target, tvalid


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def _prefill(params, cfg, ids, valid, *, dtype):
    """The KV cache of left-padded shared prefixes ``[E, TP]``."""
    e, tp = ids.shape
    out = forward(params, cfg, ids, positions=positions_from_mask(valid), valid=valid,
                  cache=KVCache.empty(cfg, e, tp, dtype))
    return out.cache


@functools.partial(jax.jit, static_argnames=("cfg",))
def _score_rows(params, cfg, cache, tok, valid, start, read, target, tvalid):
    """Log-probs ``[B, W]`` of ``target`` predicted at positions ``read`` of each row (0 where masked)."""
    pos = start[:, None] + jnp.arange(tok.shape[1], dtype=jnp.int32)
    out = forward(params, cfg, tok, positions=pos, valid=valid, prefix=cache)
    hidden = jnp.take_along_axis(out.hidden, read[..., None], axis=1)  # [B, W, D]
    logp = jax.nn.log_softmax(unembed(params, cfg, hidden), axis=-1)
    lp = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    return jnp.where(tvalid, lp, 0.0)
