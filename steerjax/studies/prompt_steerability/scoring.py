"""Yes/no answers of a model to profiling questions under steering prompts, by log-probabilities.

For every (steering prompt, question) pair the chat ``query_messages(question, steering,
prompt_format=...)`` is rendered, either with the model's chat template and its generation prompt
(``template_category=None``) or with one of the reference's hand-written wrappers
(:func:`steerjax.studies.prompt_steerability.templates.render_chat`), and the answers ``"yes"`` and ``"no"`` are
scored as continuations of that text: ``log p(answer | chat)``, summed over the answer's tokens
when it has several. As in the reference, ``chat + answer`` is tokenized whole: the answer's
tokens are its last tokens that reach past the chat's text (see :func:`answer_tokens`).

KV reuse. The chats of one steering prompt share a long token prefix: the template up to and
through the system message, and the start of the user message. For each steering prompt the
longest common token prefix of its tokenized chats (at most the shortest chat minus one token)
is computed once (one prefill into a :class:`KVCache`), and every question's remaining tokens
plus its answer tokens are scored against it in one batch with ``forward(prefix=...)``. The
continuations are packed several to a row (first-fit decreasing, each its own attention segment,
positions continuing from the prefix length), so rows carry little padding. Because the boundary is found
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
from steerjax.data.batch import SCORING_PREFIX, SCORING_ROW, TokenBatch, pow2, render, round_rows, round_up
from steerjax.data.examples import DataError
from steerjax.data.prompt_steering import DIRECTIONS, query_messages
from steerjax.errors import ContextLengthError, TokenizerError
from steerjax.models.transformer import forward, param_dtype, prefill, unembed
from steerjax.studies.prompt_steerability.templates import check_category, render_chat

ANSWERS = ("yes", "no")
PACK_WIDTH = 64  # packed row width: several questions per row, little padding


def answer_logprobs(
    model,
    system_prompts: Sequence[str | None],
    questions: Sequence[str],
    *,
    prompt_format: str = "reference",
    template_category: str | None = None,
    answers: tuple[str, str] = ANSWERS,
    batch_size: int = 64,
    progress: bool = True,
    mesh=None,
) -> np.ndarray:
    """Log-probabilities of answering yes and no to every question under every system prompt.

    Args:
      model: a :class:`steerjax.LanguageModel` with a tokenizer (with a chat template when
        ``template_category`` is ``None``).
      system_prompts: steering prompts (:func:`steerjax.data.prompt_steering.steering_prompt`); ``None``
        for the base profile (with ``"reference"`` prompts: the system message with an empty
        steering part; with ``"steerjax-v1"``: no system message).
      questions: profiling statements, asked with :func:`steerjax.data.prompt_steering.query_messages`.
      prompt_format: one of :data:`steerjax.data.prompt_steering.PROMPT_FORMATS` (default the
        reference's prompts).
      template_category: ``None`` for the tokenizer's chat template (with its generation prompt;
        the text tokenized without adding special tokens, the template writes them), or one of
        :data:`steerjax.studies.prompt_steerability.templates.TEMPLATE_CATEGORIES` for the reference's own wrapper
        (the text tokenized with the tokenizer's special tokens added, as vLLM does).
      answers: the two continuations appended directly to the rendered chat, ``(yes, no)``.
      batch_size: most continuations per scoring forward pass: a continuation is one question
        when both answers are single tokens, else one (question, answer) pair. Continuations are
        packed several to a row (their own segments, see :func:`forward`), so rows carry little
        padding. Whole steering prompts are batched together when their continuations fit.
      progress: show a progress bar.
      mesh: a ``("data", "model")`` mesh (:func:`steerjax.sharding.make_mesh`): steering prompts
        (and their packed rows) split over ``data``, parameters over ``model``. Default: one device.

    Returns:
      ``float32 [n_prompts, n_questions, 2]``: ``log p(answers[0])``, ``log p(answers[1])``.

    Raises:
      TokenizerError: no tokenizer, no chat template (with ``template_category=None``), or the
        template rejects the chat.
      ContextLengthError: a chat plus its answer is longer than the model's context.
      DataError: empty inputs, bad ``batch_size``, an unknown ``prompt_format`` or
        ``template_category``, answers that tokenize identically, or answers whose tokens or
        context differ between chats (see :func:`answer_tokens`).
    """
    prompts, qs = list(system_prompts), list(questions)
    mesh = shd.default_mesh(mesh)
    if not prompts:
        raise DataError("system_prompts is empty: pass at least one steering prompt (or None)")
    if not qs:
        raise DataError("questions is empty: pass at least one profiling statement")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(answers) != 2 or not all(isinstance(a, str) and a for a in answers) or answers[0] == answers[1]:
        raise DataError(f"answers must be two different non-empty strings, got {answers!r}")
    if template_category is not None:
        check_category(template_category)
    fmt = dict(prompt_format=prompt_format, template_category=template_category)
    cfg = model.config
    ids, ans = _tokenize_chats(model.tokenizer, prompts, qs, answers, **fmt)
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
    n_items = n_q * per_q  # continuations per steering prompt
    chunk = min(n_items, batch_size)
    group = max(1, min(n_prompts, batch_size // n_items))
    order = sorted(range(n_prompts), key=lambda p: splits[p])
    dtype = param_dtype(model.params)
    params = model.params
    if mesh is not None:  # whole steering prompts (and so their rows) per data shard
        params = shd.shard_params(params, cfg, mesh)
        group = round_up(group, shd.data_size(mesh))
    shared = functools.partial(shd.put, mesh=mesh, batch=False)

    out = np.zeros((n_prompts, n_q, 2), np.float32)
    by_bucket: dict[int, list[int]] = {}  # prompts of one prefix bucket share a prefill: no extra padding
    for p in order:
        by_bucket.setdefault(SCORING_PREFIX(splits[p]), []).append(p)
    groups = [(tp, ps[i:i + group]) for tp, ps in by_bucket.items() for i in range(0, len(ps), group)]
    from tqdm.auto import tqdm

    bar = tqdm(total=n_prompts, desc="profile", unit="prompt", disable=not progress or None)
    try:
        for tp, pidx in groups:
            n_real = len(pidx)
            size = min(group, pow2(len(pidx)))  # a short group is padded with repeats to a power of two
            if mesh is not None:
                size = round_up(size, shd.data_size(mesh))
            pidx = pidx + [pidx[-1]] * (size - len(pidx))
            pre = TokenBatch.pad([ids[p][0][:splits[p]] for p in pidx], side="left", width=tp)
            pre = shd.put_batch(pre, mesh)
            cache = prefill(params, cfg, pre.ids, pre.valid, dtype=dtype)
            # one packing for the whole group: an item's slot fits its longest version in the group
            lengths = [max(len(ids[p][q]) - splits[p] for p in pidx) + (0 if single else len(ans[a]) - 1)
                       for q in range(n_q) for a in range(per_q)]
            by_len = sorted(range(n_items), key=lambda i: -lengths[i])
            layout, width = _pack(by_len, lengths)
            n_calls = -(-n_items // chunk)
            per_call = round_rows(-(-len(layout) // n_calls))
            for c0 in range(0, len(layout), per_call):
                rows = layout[c0:c0 + per_call]
                rows = rows + [[] for _ in range(round_rows(len(rows)) - len(rows))]
                *arrays, slots = _packed_batch(ids, splits, pidx, rows, width, ans, single, per_q)
                # rows split over data with their prompts (whole groups: no padding); reads replicated
                arrays = [*shd.put_batch(tuple(arrays[:4]), mesh), *map(shared, arrays[4:])]
                lp = shd.to_host(_score_packed(params, cfg, cache, *arrays))
                keep = slots >= 0
                np.add.at(out.reshape(-1), slots[keep], lp[keep])
            bar.update(n_real)
    finally:
        bar.close()
    return out


def answers_match(logprobs, directions) -> np.ndarray:
    """Whether each answer agrees with its statement's direction.

    The model answers yes when ``logprobs[..., 0] >= logprobs[..., 1]``: a tie answers yes, as
    in the reference (``argmax`` over ``["yes", "no"]`` takes the first; the paper's
    ``l_x >= 0``). A yes matches a ``"positive"`` statement, a no matches a ``"negative"`` one.

    Args:
      logprobs: ``[..., n_questions, 2]`` from :func:`answer_logprobs`.
      directions: ``n_questions`` directions, ``"positive"`` or ``"negative"`` (e.g. the
        ``direction`` column of :func:`steerjax.data.prompt_steering.profiling_statements`).

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
    said_yes = lp[..., 0] >= lp[..., 1]
    return said_yes == (dirs == "positive")


def _render(tokenizer, steering, question, prompt_format, template_category) -> tuple[str, bool]:
    """The chat's text and whether to tokenize it with the tokenizer's special tokens."""
    messages = query_messages(question, steering, prompt_format=prompt_format)
    if template_category is not None:
        return render_chat(messages, template_category), True
    try:
        return render(tokenizer, messages, chat=True)
    except (DataError, TokenizerError):
        raise
    except Exception as e:
        where = "with a system message" if messages[0]["role"] == "system" else "without a system message"
        raise TokenizerError(f"the chat template failed on a chat {where} ({type(e).__name__}: {e}); "
                             "this model's template may not accept system messages: pass template_category= "
                             "to use one of the reference's wrappers instead") from e


def _check_tokenizer(tokenizer, template_category) -> None:
    if tokenizer is None:
        raise TokenizerError("this model has no tokenizer: profiling questions are text")
    if template_category is None and not getattr(tokenizer, "chat_template", None):
        raise TokenizerError("profiling with template_category=None needs a tokenizer with a chat template (the "
                             "steering prompt is a system message); this model's tokenizer has none: pass "
                             "template_category= to use one of the reference's wrappers")


def _split(tokenizer, texts, answer, special):
    """Each ``text + answer`` tokenized whole, split into the tokens before the answer and the answer's."""
    joined = [t + answer for t in texts]
    try:
        enc = tokenizer(joined, add_special_tokens=special, return_offsets_mapping=True)
        full = [list(r) for r in enc["input_ids"]]
        cuts = []
        for t, ids, offs in zip(texts, full, enc["offset_mapping"]):
            k = len(ids)
            while k > 0 and offs[k - 1][1] > len(t):  # tokens reaching past the chat's text
                k -= 1
            cuts.append(k)
    except (NotImplementedError, ValueError, TypeError):  # a slow tokenizer: no offsets
        full = [list(r) for r in tokenizer(joined, add_special_tokens=special)["input_ids"]]
        chats = tokenizer(list(texts), add_special_tokens=special)["input_ids"]
        cuts = [_common_prefix([list(c), f]) for c, f in zip(chats, full)]
    return [f[:k] for f, k in zip(full, cuts)], [f[k:] for f, k in zip(full, cuts)]


def _split_answers(tokenizer, texts, answers, special):
    """``(contexts, answer tokens)``: each text's tokens before the answers, and the answers' tokens.

    ``text + answer`` is tokenized whole, as the reference does; its answer tokens are the last
    ones that reach past the end of ``text`` (by the fast tokenizer's character offsets), the
    context is every token before them. A slow tokenizer (no offsets) counts as context the
    longest common token prefix of ``text`` and ``text + answer``. The first answer is split in
    every text; the second, in the first text only (the texts end in the same template text, and
    the first answer's tokens are checked to be the same after every one), and must share its
    context there. Warns when an answer's tokens do not decode to the answer (a token merged with
    the chat's end).
    """
    contexts, tails = _split(tokenizer, texts, answers[0], special)
    if any(t != tails[0] for t in tails) or not tails[0]:
        raise DataError(f"the answer {answers[0]!r} does not come out as the same tokens after every chat: use other "
                        "answers or another template_category")
    first, other = _split(tokenizer, texts[:1], answers[1], special)
    if first[0] != contexts[0]:
        raise DataError(f"the tokenizer writes the end of the chats differently before the answers {answers!r}: "
                        "their scores would not share a context; use another template_category or other answers")
    per_answer = [tails[0], other[0]]
    if per_answer[0] == per_answer[1] or not per_answer[1]:
        raise DataError(f"answers {answers!r} encode to the same tokens {per_answer[0]}, or to none")
    if any(tokenizer.decode(t) != a for t, a in zip(per_answer, answers)):
        read = [tokenizer.convert_ids_to_tokens(t) for t in per_answer]
        warnings.warn(f"the tokenizer merges the end of the chat with the answers: their tokens are {read}, scored "
                      "after the chat's other tokens as in the reference's tokenization of prompt + answer (the "
                      "reference keeps an answer only when its last token reads exactly 'yes' / 'no', so it would "
                      "record 'ERROR' here)", stacklevel=4)
    return contexts, per_answer


def _tokenize_chats(tokenizer, prompts, questions, answers, *, prompt_format, template_category):
    """Context token ids ``[prompt][question]`` of every rendered chat, and the answers' token ids."""
    _check_tokenizer(tokenizer, template_category)
    out, ans = [], None
    for steering in prompts:
        rendered = [_render(tokenizer, steering, q, prompt_format, template_category) for q in questions]
        ctx, tokens = _split_answers(tokenizer, [text for text, _ in rendered], answers, rendered[0][1])
        if ans is not None and tokens != ans:
            raise DataError(f"the answers {answers!r} come out as different tokens after different steering prompts: "
                            "use other answers or another template_category")
        out.append(ctx)
        ans = tokens
    return out, ans


def answer_tokens(tokenizer, steering, question, answers, *, prompt_format: str = "reference",
                  template_category: str | None = None) -> list[list[int]]:
    """The token ids of each answer after one rendered chat, as the reference scores them.

    The reference appends the answer to the prompt text (``prompt + "yes"``, no space), has vLLM
    tokenize the whole string, and reads the log-probability of its last token given every token
    before it (``echo=True, max_tokens=0``, ``token_logprobs[-1]``); it keeps the answer only
    when that last token reads exactly ``"yes"`` / ``"no"``, and records ``"ERROR"`` (the question
    then counts for nothing) otherwise. Here ``chat + answer`` is tokenized whole too; the answer's
    tokens are its last tokens that reach past the chat's text, scored given every token before
    them (the chat's tokens as that tokenization writes them). So:

    - an answer of one token (SmolLM2's ``"yes"`` / ``"no"`` after its chat template and after
      the llama-3, gpt, gemma, granite and phi3 wrappers) gets ``log p(answer | the tokens
      before it)``, what the reference reads, even where the chat's end tokenizes differently
      with the answer after it (SmolLM2 writes the llama-3 wrapper's final ``"\\n\\n"`` as one
      token alone but as two before ``"yes"``);
    - where a token merges the end of the chat with the answer (the llama-2 wrapper ends in
      ``"{{ "`` and the mistral one in ``" [/INST] "``, and byte-level BPE tokenizers such as
      SmolLM2's and GPT-2's write ``" yes"`` as one token), that token is the answer, scored as
      the reference would, with a warning: it does not read ``"yes"``, so the reference would
      have recorded ``"ERROR"``;
    - an answer of several tokens (the reference: ``"ERROR"``) gets the sum of its tokens'
      log-probabilities.

    Args:
      tokenizer: the model's tokenizer.
      steering: a steering prompt, or ``None`` (the base profile).
      question: a profiling statement.
      answers: the two answers, e.g. ``("yes", "no")``.
      prompt_format, template_category: as in :func:`answer_logprobs`.

    Returns:
      One list of token ids per answer.

    Raises:
      DataError: an answer encodes to no tokens, both encode to the same tokens, or the chat's
        end tokenizes differently before the two answers.
    """
    _check_tokenizer(tokenizer, template_category)
    text, special = _render(tokenizer, steering, question, prompt_format, template_category)
    return _split_answers(tokenizer, [text], answers, special)[1]


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


def _pack(items, size):
    """First-fit-decreasing packing of ``items`` (sorted longest first) into rows.

    The row width is at least ``PACK_WIDTH``, rounded by :data:`steerjax.data.batch.SCORING_ROW`.
    Returns ``(rows, width)``, ``rows`` a list of ``[(item, offset)]``, fullest first.
    """
    width = SCORING_ROW(max(PACK_WIDTH, max(size[i] for i in items)))
    rows, free = [], []
    for i in items:
        r = next((r for r, f in enumerate(free) if f >= size[i]), None)
        if r is None:
            rows.append([])
            free.append(width)
            r = len(rows) - 1
        rows[r].append((i, width - free[r]))
        free[r] -= size[i]
    return rows, width


def _packed_batch(ids, splits, pidx, rows, width, ans, single, per_q):
    """Arrays for :func:`_score_packed` and the flat ``out`` index of each read.

    Row ``e * R + r`` holds prompt ``pidx[e]``'s items packed in layout row ``r``. Item
    ``q * per_q + a`` is the question's tokens after the shared prefix, then (two-row mode) the
    answer's tokens but its last; it is one segment, its positions continuing from the prefix.
    One read per single-token question (both answers' first tokens are targets) or per answer
    token. Padding reads have ``slot = -1``.
    """
    n_rows = len(rows)
    b = len(pidx) * n_rows
    tok = np.zeros((b, width), np.int32)
    valid = np.zeros((b, width), bool)
    pos = np.zeros((b, width), np.int32)
    seg = np.full((b, width), -1, np.int32)
    reads = []  # (row, col, target0, target1, slot0, slot1)
    n_q = len(ids[0])
    for e, p in enumerate(pidx):
        real = p not in pidx[:e]  # a group padded with repeats scores them but keeps one copy
        for r, row in enumerate(rows):
            i = e * n_rows + r
            for item, off in row:
                q, a = divmod(item, per_q)
                rest = ids[p][q][splits[p]:]
                seq = rest if single else rest + ans[a][:-1]
                n = len(seq)
                tok[i, off:off + n] = seq
                valid[i, off:off + n] = True
                pos[i, off:off + n] = splits[p] + np.arange(n)
                seg[i, off:off + n] = item
                base = (p * n_q + q) * 2
                if single:
                    reads.append((i, off + len(rest) - 1, ans[0][0], ans[1][0],
                                  base if real else -1, base + 1 if real else -1))
                else:
                    for t, target in enumerate(ans[a]):
                        reads.append((i, off + len(rest) - 1 + t, target, 0, base + a if real else -1, -1))
    n = pow2(len(reads))
    arr = np.zeros((n, 6), np.int64)
    arr[:, 4:] = -1
    arr[:len(reads)] = reads
    read_row, read_col = arr[:, 0].astype(np.int32), arr[:, 1].astype(np.int32)
    target = arr[:, 2:4].astype(np.int32)
    slots = arr[:, 4:6]
    return tok, valid, pos, seg, read_row, read_col, target, slots


@functools.partial(jax.jit, static_argnames=("cfg",))
def _score_packed(params, cfg, cache, tok, valid, pos, seg, read_row, read_col, target):
    """Log-probs ``[N, 2]`` of ``target`` predicted at ``(read_row, read_col)`` of packed rows."""
    out = forward(params, cfg, tok, positions=pos, valid=valid, prefix=cache, segments=seg)
    hidden = out.hidden[read_row, read_col]  # [N, D]
    logp = jax.nn.log_softmax(unembed(params, cfg, hidden), axis=-1)
    return jnp.take_along_axis(logp, target, axis=-1)
