"""The hand-written chat wrappers of the prompt-steerability reference code (IBM/prompt-steering).

The reference (Miehling et al. 2024) does not use a tokenizer's chat template: its
``model_template(system_prompt, query, template_category)`` pastes the system text and the query
into a fixed string per model family and sends that string, as raw text, to a vLLM server's
``/v1/completions`` endpoint. :func:`render_chat` reproduces those strings character for
character, bugs included:

- ``"llama-2"`` emits literal double braces: the reference's f-string writes ``\\u007b`` /
  ``\\u007d`` escapes, which Python turns into ``{`` and ``}``, so the text reads
  ``<s>[INST] <<SYS>>\\n{{ SYSTEM }}\\n<</SYS>>\\n\\n{{ QUERY }} [/INST] {{ `` (and the answer follows
  ``{{ ``).
- ``"llama-3"`` puts a ``"\\n"`` after every ``<|eot_id|>``, which Meta's template does not.
- ``"mistral"`` closes the system text with ``[/INST] </s>`` and opens a second ``[INST]``.
- ``"gemma"`` has no system turn: the system text goes in front of the user text, as the paper's
  appendix A.2 says ("we prepend the system prompt to the user prompt").
- ``"gpt"``, ``"granite"`` and ``"phi3"`` are plain role-marker formats. The reference's newer
  ``config.yaml`` names the Phi models' category ``"phi-3"``, which its own ``model_template``
  rejects; the accepted name is ``"phi3"`` (as in its older config).

BOS: ``<s>`` (llama-2, mistral) and ``<|begin_of_text|>`` (llama-3) are written into the text;
the other wrappers have none. vLLM's completions endpoint tokenizes the text with the tokenizer's
special tokens added (its ``add_special_tokens`` defaults to true), so a tokenizer that adds a BOS
gets a second one after the literal one. :mod:`steerjax.studies.prompt_steerability.scoring` tokenizes these texts
the same way (``add_special_tokens=True``). Whether the paper's server did so depends on its vLLM
version, which the reference does not pin.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

from steerjax.errors import DataError

TEMPLATE_CATEGORIES = ("llama-2", "llama-3", "mistral", "gpt", "gemma", "granite", "phi3")


def _wrap(system: str, query: str, category: str) -> str:
    """The reference's ``model_template``: ``system`` and ``query`` in ``category``'s wrapper."""
    if category == "llama-2":
        return "<s>[INST] <<SYS>>\n{{ " + system + " }}\n<</SYS>>\n\n{{ " + query + " }} [/INST] {{ "
    if category == "llama-3":
        return ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + system
                + "<|eot_id|>\n<|start_header_id|>user<|end_header_id|>\n\n" + query
                + "<|eot_id|>\n<|start_header_id|>assistant<|end_header_id|>\n\n")
    if category == "mistral":
        return "<s>[INST] " + system + "[/INST] </s>[INST] " + query + " [/INST] "
    if category == "gpt":
        return "[SYSTEM]\n" + system + "\n\n[USER]\n" + query + "\n\n[END]"
    if category == "gemma":
        return "<start_of_turn>user\n" + system + "\n\n" + query + "<end_of_turn>\n<start_of_turn>model\n"
    if category == "granite":
        return "<|system|>\n" + system + "\n<|user|>\n" + query + "\n<|assistant|>\n"
    if category == "phi3":
        return "<|system|>\n" + system + "<|end|>\n<|user|>\n" + query + "<|end|>\n<|assistant|>\n"
    raise AssertionError(category)  # check_category ran first


def check_category(template_category: str) -> str:
    """``template_category`` if it is one of :data:`TEMPLATE_CATEGORIES`.

    Raises:
      DataError: an unknown category (the message lists the known ones).
    """
    if isinstance(template_category, str) and template_category in TEMPLATE_CATEGORIES:
        return template_category
    close = difflib.get_close_matches(str(template_category), TEMPLATE_CATEGORIES, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DataError(f"unknown template category {template_category!r}{hint}: the reference's wrappers are "
                    f"{', '.join(TEMPLATE_CATEGORIES)}; pass one of them, or None for the tokenizer's own chat "
                    "template")


def render_chat(messages: Sequence[Mapping[str, str]], template_category: str) -> str:
    """A chat in one of the reference's hand-written wrappers, exactly as the reference writes it.

    Args:
      messages: ``[system, user]`` or ``[user]`` messages (``{"role": ..., "content": ...}``), as
        :func:`steerjax.data.prompt_steering.query_messages` returns them. Without a system message the
        system text is empty (the reference always fills the system slot; its base prompt is
        never empty, see :func:`~steerjax.data.prompt_steering.query_messages`).
      template_category: one of :data:`TEMPLATE_CATEGORIES` (see the module docstring for each
        wrapper's quirks, kept on purpose).

    Returns:
      The text to score, ending where the model's answer begins (the answer is appended to it
      directly). Tokenize it with the tokenizer's special tokens, as vLLM's completions endpoint does.

    Raises:
      DataError: an unknown category, or messages other than an optional system message
        followed by one user message.
    """
    category = check_category(template_category)
    msgs = list(messages) if isinstance(messages, Sequence) and not isinstance(messages, str) else None
    ok = (msgs is not None and 1 <= len(msgs) <= 2
          and all(isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in msgs)
          and [m.get("role") for m in msgs] in (["user"], ["system", "user"]))
    if not ok:
        raise DataError("the reference's wrappers take an optional system message and one user message, got "
                        f"{messages!r}: build the chat with steerjax.data.prompt_steering.query_messages")
    system = msgs[0]["content"] if len(msgs) == 2 else ""
    return _wrap(system, msgs[-1]["content"], category)
