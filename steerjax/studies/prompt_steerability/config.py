"""What a prompt-steerability study asks (Miehling et al. 2024): the options, their presets, the
run config and every check that can be made before a model loads.

:class:`Config` holds every option; its defaults are the reference code's protocol
(IBM/prompt-steering, ``prompt_steerability.py`` and its ``config.yaml``): the paper's 32
dimensions, budgets 1-100, 5 benchmark trials x 5 steering trials, 25 profiling questions per
direction, its prompts (``prompt_format="reference"``), independent steering draws, and the exact
W1 (``reference_compat=True``: the reference's 200-point formula). The stages beyond the paper
(another prompt format on the same questions, activation steering, joint steering) are off by
default and on in the experiment's presets (:data:`PRESETS`).

The choice lists of the command line (:data:`PROMPT_FORMATS`, :data:`TEMPLATE_CATEGORIES`,
:data:`PAPER_BUDGETS`) are defined by the modules that use them and re-exported here, so the
parsers import them from one place.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from steerjax import runs
from steerjax.data.prompt_steering import (
    PAPER_DIMENSIONS,
    PROMPT_FORMATS,
    list_dimensions,
    profiling_source,
    profiling_statements,
    steering_statements,
)
from steerjax.errors import DataError, LayerIndexError, ProfileError, SteerjaxError, TokenizerError
from steerjax.studies.prompt_steerability.templates import TEMPLATE_CATEGORIES

PAPER_BUDGETS: tuple[int, ...] = (1, 2, 3, 4, 5, 10, 20, 50, 100)
"""The reference's steering budgets (``steering-budgets`` in its ``config.yaml``)."""
DIRECTIONS: tuple[str, ...] = ("positive", "negative")
KIND = "profiles"
"""``kind`` of a run of profiles only (the ``steerjax profile`` command)."""
STUDY_KIND = "prompt-steerability"
"""``kind`` of a run with stages beyond the profiles (the experiment's presets)."""
QUICK_DIMS: tuple[str, ...] = (
    "agreeableness", "narcissism", "conscientiousness", "politically-liberal", "risk-seeking",
    "believes-in-gun-rights", "subscribes-to-utilitarianism", "machiavellianism")

__all__ = ["Config", "DEVIATIONS", "DIRECTIONS", "KIND", "PAPER_BUDGETS", "PAPER_DIMENSIONS", "PRESETS",
           "PROMPT_FORMATS", "QUICK_DIMS", "STUDY_KIND", "TEMPLATE_CATEGORIES", "check", "draw_seed",
           "resolve_dimensions"]

#: where the default protocol departs from the reference code (IBM/prompt-steering), whatever the
#: scale: ``(element, the reference, steerjax)``; the README's protocol table has every element
DEVIATIONS: tuple[tuple[str, str, str], ...] = (
    ("random draws", "unseeded (pandas .sample, Python random)",
     "seeded: each draw's seed from the seed and the draw's keys (dimension, trial, direction, budget)"),
    ("chat rendering", "a hand-written wrapper per family, sent as raw text",
     "the tokenizer's chat template (template_category reproduces the reference's wrappers)"),
    ("answer", "the last token's log-prob; an answer of several tokens is dropped",
     "the sum of the answer tokens' log-probs; nothing dropped"),
    ("W1", "scipy's wasserstein_distance on two 200-point CDF grids",
     "the exact W1 between the Beta profiles (reference_compat uses the reference's formula)"),
)

PRESETS: dict[str, dict[str, Any]] = {
    # the test's: seconds on a tiny chat model
    "smoke": dict(dims=QUICK_DIMS[:1], budgets=(1, 2), benchmark_trials=2, steering_trials=2, num_questions=2,
                  compare_formats=True, multipliers=(1.0,), joint_dims=QUICK_DIMS[:2], joint_budgets=(1,),
                  joint_questions=2),
    # about 10 minutes on 2 CPU cores with SmolLM2-135M-Instruct (see the README for how it differs from the paper)
    "quick": dict(dims=QUICK_DIMS[:4], budgets=(1, 5, 20), benchmark_trials=2, steering_trials=2, num_questions=8,
                  compare_formats=True, multipliers=(1.0, 4.0), joint_dims=QUICK_DIMS[:2], joint_budgets=(1, 5),
                  joint_questions=5),
    # the paper's configuration (its 32 dimensions, budgets up to 100, 5 x 5 trials, 25 questions per
    # direction) and the stages beyond it: for a GPU or TPU
    "full": dict(dims="paper", budgets=PAPER_BUDGETS, benchmark_trials=5, steering_trials=5, num_questions=25,
                 compare_formats=False, multipliers=(0.5, 1.0, 2.0, 4.0, 8.0), joint_dims=QUICK_DIMS[:3],
                 joint_budgets=(1, 2, 5, 10, 20), joint_questions=20),
    # the reference's protocol and nothing else (the defaults of Config)
    "paper": dict(),
}
"""Named option sets: ``smoke`` (tests), ``quick`` (minutes on a laptop), ``full`` (the paper's
scale and the stages beyond it), ``paper`` (the reference protocol only: :class:`Config`'s defaults)."""


def _positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


def draw_seed(seed: int, *keys) -> int:
    """The seed of one random draw: ``seed`` and the draw's keys (ints, or strings by CRC-32)
    through :class:`numpy.random.SeedSequence`, so draws with different keys are independent."""
    ints = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return int(np.random.SeedSequence([int(seed) % 2 ** 64, *ints]).generate_state(1)[0])


def resolve_dimensions(dims: str | Sequence[str]) -> list[str]:
    """Dimension names from ``"paper"`` (the paper's 32, in the reference config's order),
    ``"all"`` (every dimension of the steering data, 70) or names (a list, or one name).

    Raises:
      ProfileError: no dimensions, or a name given twice.
      DataError: an unknown dimension (with the closest names).
    """
    spec = [dims] if isinstance(dims, str) else list(dims)
    if spec == ["paper"]:
        return list(PAPER_DIMENSIONS)
    if spec == ["all"]:
        return list_dimensions()
    if not spec:
        raise ProfileError("no dimensions given: pass names, 'paper' (the paper's 32) or 'all'")
    if {"paper", "all"} & set(spec):
        raise ProfileError(f"'paper' and 'all' stand alone; got {spec}")
    twice = sorted({d for d in spec if spec.count(d) > 1})
    if twice:
        raise ProfileError(f"dimension(s) {twice} given more than once")
    for dim in spec:  # unknown names: DataError with the closest ones
        steering_statements(dim, "positive")
    return spec


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Every option of a prompt-steerability study. Defaults: the reference protocol.

    Attributes:
      dims: persona dimensions (names), ``"paper"`` (the paper's 32) or ``"all"`` (all 70).
      budgets: steering budgets ``k`` (statements in a steering prompt); run sorted, once each.
      benchmark_trials: profiling samples per dimension, each with its own base profile and
        extremes (the reference's ``num-benchmark-trials``).
      steering_trials: steering prompts per direction, budget and benchmark trial.
      num_questions: profiling questions per dimension and direction; None asks all.
      confidence_threshold: least label confidence of a profiling question.
      seed: seeds every draw (the reference is unseeded).
      nested: nested steering draws (a budget's statements within the larger budgets') instead of
        the reference's independent draws.
      prompt_format: the main run's prompts (:data:`PROMPT_FORMATS`; ``"reference"``:
        IBM/prompt-steering's).
      template_category: None for the tokenizer's chat template, or one of the reference's
        hand-written wrappers (:data:`TEMPLATE_CATEGORIES`).
      reference_compat: indices and curves with the reference's W1 formula (200-point grid,
        :func:`steerjax.studies.prompt_steerability.wasserstein`) instead of the exact W1.
      compare_formats: also run the other prompt formats on the same questions, statements and
        budgets (template sensitivity).
      multipliers: activation steering at these |multipliers| (empty: no activation stage).
      layer: the activation-steering block; None: the middle one.
      joint_dims: dimensions steered together (empty: no joint stage).
      joint_budgets: budgets of the joint stage.
      joint_questions: profiling questions per dimension and direction of the joint stage.
      batch_size: prompts scored per batch.
      dtype: the model's parameter dtype (recorded in the run config).
      preset_name: the preset these options came from (recorded in the run config of a study
        with stages beyond the profiles).
    """

    dims: str | tuple[str, ...] = "paper"
    budgets: tuple[int, ...] = PAPER_BUDGETS
    benchmark_trials: int = 5
    steering_trials: int = 5
    num_questions: int | None = 25
    confidence_threshold: float = 0.85
    seed: int = 0
    nested: bool = False
    prompt_format: str = "reference"
    template_category: str | None = None
    reference_compat: bool = False
    compare_formats: bool = False
    multipliers: tuple[float, ...] = ()
    layer: int | None = None
    joint_dims: tuple[str, ...] = ()
    joint_budgets: tuple[int, ...] = (1, 2, 5)
    joint_questions: int = 10
    batch_size: int = 64
    dtype: str = "float32"
    preset_name: str | None = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if not isinstance(self.dims, str):
            set_("dims", tuple(self.dims))
        for name in ("budgets", "joint_budgets", "multipliers", "joint_dims"):
            value = getattr(self, name)
            set_(name, (value,) if isinstance(value, (str, int, float)) else tuple(value))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Config:
        """The options of preset ``name`` (:data:`PRESETS`) with ``overrides`` (None values are
        ignored, so parsed flags that were not given can be passed as they are)."""
        if name not in PRESETS:
            raise SteerjaxError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise SteerjaxError(f"unknown option(s) {unknown} of the prompt-steerability study")
        return cls(**{**PRESETS[name], "preset_name": name, **given})

    @property
    def formats(self) -> tuple[str, ...]:
        """The prompt formats run: the main one first, then the others when ``compare_formats``."""
        others = tuple(f for f in PROMPT_FORMATS if f != self.prompt_format) if self.compare_formats else ()
        return (self.prompt_format, *others)

    @property
    def profiles_only(self) -> bool:
        """True when the study is the paper's profiles and nothing more: one prompt format, no
        activation or joint stage. Such a run keeps its chunks in the run directory itself (the
        ``steerjax profile`` layout); otherwise each format's chunks are in
        ``profile_run_<format>/`` (the experiment's layout)."""
        return len(self.formats) == 1 and not self.multipliers and not self.joint_dims

    def resolved_dims(self) -> list[str]:
        """The dimension names (``"paper"`` and ``"all"`` expanded); raises as :func:`check`."""
        return resolve_dimensions(self.dims)

    def run_config(self, model_source: str, **facts: Any) -> dict[str, Any]:
        """The run directory's ``config.json``: what was asked, with the dimensions resolved and
        the budgets sorted, plus ``facts``; the one builder that :func:`check` and the run use.

        A profiles-only study (:attr:`profiles_only`) has ``kind`` ``"profiles"`` and the profile
        options; a study with more stages has ``kind`` ``"prompt-steerability"`` and adds them.
        """
        cfg = {
            "kind": KIND, "model": str(model_source), "dtype": self.dtype, "dims": self.resolved_dims(),
            "budgets": sorted({int(b) for b in self.budgets}), "benchmark_trials": int(self.benchmark_trials),
            "steering_trials": int(self.steering_trials), "num_questions": self.num_questions,
            "confidence_threshold": self.confidence_threshold, "seed": int(self.seed), "nested": bool(self.nested),
            "prompt_format": self.prompt_format, "template_category": self.template_category,
            "reference_compat": bool(self.reference_compat), "profiling_source": profiling_source(),
        }
        if not self.profiles_only:
            cfg.update(kind=STUDY_KIND, formats=list(self.formats), compare_formats=self.compare_formats,
                       multipliers=list(self.multipliers), layer=self.layer, joint_dims=list(self.joint_dims),
                       joint_budgets=list(self.joint_budgets), joint_questions=self.joint_questions,
                       preset=self.preset_name)
        return {**cfg, **facts}


def check(config: Config, *, names: Mapping[str, str] | None = None, out: str | None = None, force: bool = False,
          model_config: Any = None, model_source: str | None = None) -> None:
    """Every check of a prompt-steerability study that needs no model weights; raise before any loads.

    Checks the trial counts, budgets (against the statements each dimension and direction holds),
    prompt format, template category, that every dimension exists and has ``num_questions``
    profiling statements per direction (benchmark trial 0's sample is drawn), the activation and
    joint stages' options, the model (when known) and the run directory.

    Args:
      config: the study's options.
      names: how each option is called where it came from (``{"dims": "--dims"}``), for the
        messages; default the field names.
      out: the run directory: new, empty, or holding this same run.
      force: accepted for symmetry with the other studies: a run directory is resumed, never
        replaced, so it changes nothing.
      model_config: a :class:`steerjax.ModelConfig` or a model header (with ``.config``,
        ``.tokenizer``, ``.chat_template``): ``layer`` is checked against its depth; a header
        must have a tokenizer, and a chat template unless ``template_category`` is given.
      model_source: the model as the run config records it (with ``out``: the directory's
        ``model`` must match); default the header's ``source``.

    Raises:
      SteerjaxError (ProfileError, DataError, LayerIndexError, TokenizerError, RunConfigError,
      OutputPathError): the first bad input, naming the option as ``names`` spells it.
    """
    del force
    names = dict(names or {})
    flag = lambda field: names.get(field, field)  # noqa: E731

    def as_flag(fields, fn, *args, **kwargs):  # a reader's own message, prefixed with the options it is about
        try:
            return fn(*args, **kwargs)
        except (DataError, ProfileError) as e:
            raise type(e)(f"{', '.join(flag(f) for f in fields.split())}: {e}") from e

    if config.prompt_format not in PROMPT_FORMATS:
        raise DataError(f"{flag('prompt_format')}: unknown prompt format {config.prompt_format!r}; choose one of "
                        f"{', '.join(PROMPT_FORMATS)}")
    if config.template_category is not None and config.template_category not in TEMPLATE_CATEGORIES:
        raise DataError(f"{flag('template_category')} {config.template_category!r} is not one of the reference's "
                        f"wrappers: {', '.join(TEMPLATE_CATEGORIES)} (or leave it out for the tokenizer's chat "
                        "template)")
    for field in ("benchmark_trials", "steering_trials", "batch_size", "joint_questions"):
        if not _positive_int(getattr(config, field)):
            raise ProfileError(f"{flag(field)} must be an integer >= 1, got {getattr(config, field)!r}")
    if config.num_questions is not None and not _positive_int(config.num_questions):
        raise ProfileError(f"{flag('num_questions')} must be an integer >= 1 or None (all), "
                           f"got {config.num_questions!r}")
    if isinstance(config.seed, bool) or not isinstance(config.seed, (int, np.integer)):
        raise ProfileError(f"{flag('seed')} must be an integer, got {config.seed!r}")
    if not config.budgets or not all(_positive_int(b) for b in config.budgets):
        raise ProfileError(f"{flag('budgets')} must be integers >= 1 (the paper's: 1 2 3 4 5 10 20 50 100), "
                           f"got {list(config.budgets)}")
    threshold = config.confidence_threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ProfileError(f"{flag('confidence_threshold')} must be a number in [0, 1], got {threshold!r}")
    if not all(isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m) and m > 0
               for m in config.multipliers):
        raise ProfileError(f"{flag('multipliers')} must be finite numbers > 0 (each steers both ways), "
                           f"got {list(config.multipliers)}")
    if config.layer is not None and (isinstance(config.layer, bool) or not isinstance(config.layer, int)):
        raise LayerIndexError(f"{flag('layer')} must be an integer block index, got {config.layer!r}")
    dims = as_flag("dims", config.resolved_dims)
    kmax = max(config.budgets)
    for dim in dims:  # budgets beyond the statements available
        for direction in DIRECTIONS:
            as_flag("budgets", steering_statements, dim, direction, kmax, seed=0)
    for dim in dims:  # enough profiling questions per direction
        as_flag("num_questions confidence_threshold", profiling_statements, dim, num_questions=config.num_questions,
                confidence_threshold=threshold, seed=draw_seed(config.seed, "profiling", dim, 0))
    if config.joint_dims:
        joint = config.joint_dims
        if len(set(joint)) < 2 or len(set(joint)) != len(joint):
            raise ProfileError(f"{flag('joint_dims')} needs two or more different dimensions, got {list(joint)}")
        if not config.joint_budgets or not all(_positive_int(b) for b in config.joint_budgets):
            raise ProfileError(f"{flag('joint_budgets')} must be integers >= 1, got {list(config.joint_budgets)}")
        for dim in as_flag("joint_dims", resolve_dimensions, list(joint)):
            for direction in DIRECTIONS:
                as_flag("joint_budgets", steering_statements, dim, direction, max(config.joint_budgets))
            as_flag("joint_questions confidence_threshold", profiling_statements, dim,
                    num_questions=config.joint_questions, confidence_threshold=threshold, seed=config.seed)
    header = model_config
    if header is not None and hasattr(header, "tokenizer"):
        source = getattr(header, "source", "the model")
        if not header.tokenizer:
            raise TokenizerError(f"{source} has no tokenizer: profiling questions are text")
        if config.template_category is None and not header.chat_template:
            raise TokenizerError(f"{source} has no chat template: pass {flag('template_category')} (one of the "
                                 "reference's hand-written wrappers) or use a chat model")
    cfg = getattr(model_config, "config", model_config)
    if config.layer is not None and cfg is not None and config.multipliers:
        n = cfg.num_layers
        if not 0 <= config.layer < n:
            raise LayerIndexError(f"{flag('layer')} {config.layer} is out of range: the model has {n} blocks "
                                  f"(0..{n - 1})")
    if out is not None:
        source = model_source if model_source is not None else getattr(header, "source", None)
        known = config.run_config(source or "")
        if source is None:
            known.pop("model")
        runs.check_run_dir(out, known, flag=names.get("out", "out"))
