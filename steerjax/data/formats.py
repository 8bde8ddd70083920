"""Prompt formats: how an A/B example becomes text, where steering starts and what is scored.

A :class:`PromptFormat` holds, as data, every choice that the reference implementations of Tan et
al. 2024 make differently: the system message, where a persona prompt goes, how the generation
prompt and the answer are joined, which tokens are steered and which propensity is reported.
:data:`FORMATS` names three:

- ``"repepo"``: the paper's code (``dtch1997/repepo``, ``experiments/persona_generalization.py``
  with its hand-written chat formatters);
- ``"steering-bench"``: the later benchmark (``dtch1997/steering-bench``, the templater branch:
  ``apply_chat_template(..., add_generation_prompt=True) + " " + target``);
- ``"steerjax"``: steerjax's own (no system message, the answer right after the generation
  prompt), the behaviour of :func:`steerjax.data.load_dataset` before formats existed.

The text is built from the model's own chat template (:func:`steerjax.data.batch.render`), so a
format applies to any chat model. On a ChatML model (Qwen, SmolLM2) the ``"repepo"`` format gives
exactly the string of repepo's hand-written ``QwenChatFormatter`` (tested); for other families
the model's template decides the layout, as in steering-bench, and may differ in detail from
repepo's hand-written formatters (not checked).

Settings (:data:`SETTINGS`, repepo's order) place a dataset's persona prompt: ``"SYS_positive"``
replaces the system message with the positive persona prompt, ``"PT_positive"`` keeps the format's
system message and prefixes the user text with the persona prompt and
:attr:`PromptFormat.user_prefix_separator`; ``"baseline"`` adds no persona prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from steerjax.errors import DataError

DEFAULT_SYSTEM_MESSAGE = "You are a helpful, honest and concise assistant."

STEER_FROM = ("last_prompt", "completion")
PROPENSITIES = ("logit", "logprob")
#: which META blocks an x-risk question loses (:attr:`PromptFormat.meta_blocks`)
META_BLOCKS = ("closed", "to_end")
SETTINGS = ("baseline", "SYS_positive", "PT_positive", "SYS_negative", "PT_negative")


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """How examples are rendered, steered and scored.

    Attributes:
      name: the format's name (a key of :data:`FORMATS` for the built-in ones).
      system_message: the system message of the baseline and ``PT_*`` settings; ``None`` sends no
        system message (a chat template may then insert its own default).
      user_prefix_separator: ``PT_*`` settings: the user text is persona + separator + question.
      strip_prompt: the rendered generation prompt (and the question) are ``.strip()``-ped before
        the completion is joined, as repepo's formatters do (``"{prompt} {response}"`` on stripped
        parts).
      completion_separator: text between the rendered prompt and the response; it is part of
        each completion.
      strip_response: the response is stripped before joining (repepo) or kept as the data has
        it (steering-bench keeps x-risk's leading space, ``" (A)"``).
      steer_from: ``"last_prompt"``: steering from the prompt's last token on (repepo,
        ``skip_first_n_generation_tokens=0``); ``"completion"``: from the first completion token
        (steering-bench, ``skip_first_n_generation_tokens=1``). The ``positions`` of
        :func:`steerjax.sweep`.
      propensity: ``"logit"``: the difference of the completions' summed raw logits (repepo's
        ``logit_diff``); ``"logprob"``: of their summed log-probs. The ``propensity`` of
        :func:`steerjax.sweep`.
      rescale_to_baseline: each setting's vector, and their mean, are rescaled to the norm of the
        baseline setting's vector (repepo's ``normalize_steering_magnitude_to_baseline``).
      token_index: the token whose activation trains a vector, from the end of the full text
        (``-2``: the answer letter of ``"(A)"``).
      strip_question: an x-risk question is ``.strip()``-ped when read (steerjax's own format);
        False keeps the file's text, as repepo's and steering-bench's ``convert_*`` functions do
        (repepo's formatter then strips the rendered prompt: ``strip_prompt``; steering-bench keeps
        the leading or trailing whitespace of 1,315 of the 16,400 LM-generated x-risk questions).
      meta_blocks: which ``<META_START>`` blocks an x-risk question loses
        (:func:`steerjax.data.mwe.strip_meta`): ``"closed"``, those closed by ``<META_END>`` with
        no ``<`` inside (repepo's and steering-bench's ``strip_meta_tags``: an unterminated block
        stays, in 7 LM-generated questions); ``"to_end"``, any block up to its end tag or, without
        one, to the end of the text (steerjax's own format).
    """

    name: str
    system_message: str | None
    user_prefix_separator: str
    strip_prompt: bool
    completion_separator: str
    strip_response: bool
    steer_from: str
    propensity: str
    rescale_to_baseline: bool
    token_index: int = -2
    strip_question: bool = False
    meta_blocks: str = "closed"

    def __post_init__(self):
        if self.steer_from not in STEER_FROM:
            raise DataError(f"steer_from must be one of {STEER_FROM}, got {self.steer_from!r}")
        if self.propensity not in PROPENSITIES:
            raise DataError(f"propensity must be one of {PROPENSITIES}, got {self.propensity!r}")
        if self.system_message is not None and not isinstance(self.system_message, str):
            raise DataError(f"system_message must be a string or None, got {self.system_message!r}")
        if isinstance(self.token_index, bool) or not isinstance(self.token_index, int):
            raise DataError(f"token_index must be an integer, got {self.token_index!r}")
        if self.meta_blocks not in META_BLOCKS:
            raise DataError(f"meta_blocks must be one of {META_BLOCKS}, got {self.meta_blocks!r}")
        if not isinstance(self.strip_question, bool):
            raise DataError(f"strip_question must be a bool, got {self.strip_question!r}")

    def messages(self, question: str, *, setting: str = "baseline",
                 persona: Mapping[str, str] | None = None) -> tuple[dict[str, str], ...]:
        """The chat of one question in one setting.

        Args:
          question: the user text (an A/B question).
          setting: one of :data:`SETTINGS`.
          persona: ``{"positive": ..., "negative": ...}`` persona prompts; needed unless the
            setting is ``"baseline"``.

        Returns:
          ``({"role": "system", ...}, {"role": "user", ...})``, or the user message alone when
          the setting's system message is ``None``.

        Raises:
          DataError: unknown setting, or a persona setting without persona prompts.
        """
        place, polarity = parse_setting(setting)
        if self.strip_prompt:
            question = question.strip()
        system, user = self.system_message, question
        if place is not None:
            if persona is None or not persona.get(polarity):
                raise DataError(f"setting {setting!r} needs the {polarity} persona prompt: pass persona=")
            if place == "SYS":
                system = persona[polarity]
            else:
                user = persona[polarity] + self.user_prefix_separator + question
        chat = [] if system is None else [{"role": "system", "content": system}]
        chat.append({"role": "user", "content": user})
        return tuple(chat)

    def completion(self, response: str) -> str:
        """A response (e.g. ``"(A)"`` or x-risk's raw ``" (A)"``) as the text appended to the
        rendered prompt."""
        return self.completion_separator + (response.strip() if self.strip_response else response)


FORMATS: dict[str, PromptFormat] = {
    "repepo": PromptFormat(
        # Tan et al. 2024's code: repepo experiments/persona_generalization.py, core/format.py
        # (Qwen/Llama chat formatters: "{prompt} {response}" on stripped parts), core/hook.py
        # (skip_first_n_generation_tokens=0), evaluate.py (LogitDifferenceEvaluator).
        name="repepo", system_message=DEFAULT_SYSTEM_MESSAGE, user_prefix_separator="\n\n",
        strip_prompt=True, completion_separator=" ", strip_response=True, steer_from="last_prompt",
        propensity="logit", rescale_to_baseline=True, token_index=-2,
    ),
    "steering-bench": PromptFormat(
        # steering-bench's templater branch: core/format.py Formatter (persona as a user prefix,
        # no separator), core/templater.py TokenizerChatTemplater (apply_chat_template + " " +
        # target), experiments/layer_sweep (skip_first_n_generation_tokens=1), LogProbDifference.
        name="steering-bench", system_message=DEFAULT_SYSTEM_MESSAGE, user_prefix_separator="",
        strip_prompt=False, completion_separator=" ", strip_response=False, steer_from="completion",
        propensity="logprob", rescale_to_baseline=False, token_index=-2,
    ),
    "steerjax": PromptFormat(
        # steerjax's own: no system message, the answer right after the generation prompt, the
        # prompt unsteered, log-prob propensities (load_dataset's behaviour before formats).
        name="steerjax", system_message=None, user_prefix_separator="\n\n",
        strip_prompt=False, completion_separator="", strip_response=True, steer_from="completion",
        propensity="logprob", rescale_to_baseline=False, token_index=-2, strip_question=True, meta_blocks="to_end",
    ),
}


def get_format(fmt: str | PromptFormat) -> PromptFormat:
    """A format by name (a key of :data:`FORMATS`); a :class:`PromptFormat` is returned as is.

    Raises:
      DataError: an unknown name.
    """
    if isinstance(fmt, PromptFormat):
        return fmt
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise DataError(f"unknown prompt format {fmt!r}: use one of {', '.join(map(repr, FORMATS))} "
                        "or a steerjax.data.PromptFormat")
    return FORMATS[fmt]


def parse_setting(setting: str) -> tuple[str | None, str | None]:
    """``("SYS" | "PT" | None, "positive" | "negative" | None)`` of a setting name.

    Raises:
      DataError: not one of :data:`SETTINGS`.
    """
    if not isinstance(setting, str) or setting not in SETTINGS:
        raise DataError(f"unknown setting {setting!r}: use one of {', '.join(map(repr, SETTINGS))}")
    if setting == "baseline":
        return None, None
    place, polarity = setting.split("_")
    return place, polarity
