"""What a report asks: its presets, the three studies' options per concept, its run config, and
every check that can be made before a model loads.

A report runs three studies on the same persona concepts:

- prompt steerability (Miehling et al.): one profiles-only study per concept (the paper's
  protocol: profiles, indices; no format comparison, activation or joint stage), in
  ``OUT/prompt_steerability/<concept>/``;
- activation steerability (Tan et al.): one reliability study per concept in
  ``OUT/reliability/<concept>/``, all of them steering the block that one shared layer sweep
  chose (``OUT/reliability/layer_sweep/``: the sweep reads its own datasets, not the concepts);
- steering strength (Fan et al.): one steerability-prediction study of the concept set (its
  predictor is evaluated on held-out concepts, so it needs the set) in
  ``OUT/steerability_prediction/<digest of the set>/``.

So a rerun with another concept list reuses every per-concept study it already holds, and the
layer sweep; only the prediction study is per set.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from steerjax import runs
from steerjax.errors import DataError, SteerjaxError, TokenizerError
from steerjax.report.concepts import PRESET_SIZES, SOURCES, check_concepts, preset_concepts
from steerjax.studies import prompt_steerability, reliability, steerability_prediction

KIND = "report"
#: the studies, in the order the report runs them, and their directory names under ``OUT``
STUDIES: tuple[str, ...] = ("prompt_steerability", "reliability", "steerability_prediction")
#: each study's title, the paper it reproduces, and the source it cannot run without
TITLES = {
    "prompt_steerability": "Prompt steerability (Miehling et al. 2024)",
    "reliability": "Activation steerability (Tan et al. 2024)",
    "steerability_prediction": "Steering strength (Fan et al.)",
}
NEEDS = {
    "prompt_steerability": ("prompt-steering statements",),
    "reliability": ("Anthropic persona dataset", "steering-bench persona prompts"),
    "steerability_prediction": ("Anthropic persona dataset",),
}
LAYER_SWEEP = "layer_sweep"

#: per report preset: each study's preset and the options the report changes
PRESETS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    # a test: about two minutes on 2 CPU cores with SmolLM2-135M-Instruct
    "smoke": {
        "prompt_steerability": ("smoke", {}),
        "reliability": ("smoke", dict(layer_sweep_stride=15, layer_n_train=6, layer_n_test=4, n_train=6,
                                      n_test=4)),
        "steerability_prediction": ("smoke", dict(prompts=3, strengths=(0.1, 0.6), max_new_tokens=6, steps=(1,),
                                                  n_statements=6, prompt_folds=2, kappa_sample=8)),
    },
    # at most 30 minutes on 2 CPU cores with SmolLM2-135M-Instruct, 8 concepts
    "quick": {
        "prompt_steerability": ("quick", dict(budgets=(1, 5, 20), num_questions=8)),
        "reliability": ("quick", dict(layer_sweep_stride=3, layer_n_train=16, layer_n_test=8, n_train=24,
                                      n_test=12)),
        "steerability_prediction": ("quick", dict(prompts=6, strengths=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5),
                                                  max_new_tokens=16, n_statements=24, prompt_folds=3,
                                                  kappa_sample=100)),
    },
    # every study at its paper scale (a GPU or TPU), on every shared concept
    "full": {
        "prompt_steerability": ("paper", {}),
        "reliability": ("full", {}),
        "steerability_prediction": ("full", {}),
    },
}
#: the prompt study's stages beyond the paper's profiles, off in every report
_PROFILES_ONLY = dict(compare_formats=False, multipliers=(), joint_dims=())


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Every option of a report.

    Attributes:
      preset: ``smoke`` (a test), ``quick`` (at most 30 minutes on 2 CPU cores) or ``full`` (the
        papers' scale): the concepts (unless given) and each study's options (:data:`PRESETS`).
      concepts: persona dimensions; None: the preset's (:func:`~.concepts.preset_concepts`).
      allow_partial: run a concept that a source lacks with the studies that do not need it.
      seed: every study's seed, and the correlations' bootstrap.
      dtype: the model's parameter dtype.
      n_boot: bootstrap resamples of the correlations' intervals.
    """

    preset: str = "quick"
    concepts: tuple[str, ...] | None = None
    allow_partial: bool = False
    seed: int = 0
    dtype: str = "float32"
    n_boot: int = 2000

    def __post_init__(self):
        if self.concepts is not None:
            value = (self.concepts,) if isinstance(self.concepts, str) else tuple(self.concepts)
            object.__setattr__(self, "concepts", value)

    def concept_list(self, sources: Mapping[str, set[str]] | None = None) -> list[str]:
        """The concepts, in the order asked (the preset's when none were given)."""
        if self.preset not in PRESETS:
            raise SteerjaxError(f"unknown preset {self.preset!r}; choose one of {list(PRESETS)}")
        return list(self.concepts) if self.concepts is not None else preset_concepts(self.preset, sources)

    def run_config(self, model_source: str) -> dict[str, Any]:
        """``OUT/config.json``: the model and what decides every study's options. Not the concepts:
        a rerun with other concepts in the same directory reuses the studies it holds."""
        return {"kind": KIND, "model": str(model_source), "preset": self.preset, "seed": int(self.seed),
                "dtype": self.dtype, "n_boot": int(self.n_boot)}

    # ------------------------------------------------------------------ the studies' options

    def _study(self, study: str, **options: Any):
        name, changes = PRESETS[self.preset][study]
        cls = {"prompt_steerability": prompt_steerability.Config, "reliability": reliability.Config,
               "steerability_prediction": steerability_prediction.Config}[study]
        return cls.preset(name, **{**changes, **options})

    def prompt_config(self, concept: str) -> prompt_steerability.Config:
        """The prompt-steerability study of one concept: the profiles only."""
        return self._study("prompt_steerability", dims=(concept,), seed=self.seed, dtype=self.dtype, **_PROFILES_ONLY)

    def reliability_config(self, concept: str) -> reliability.Config:
        """The reliability study of one concept (its layer sweep is shared: :data:`LAYER_SWEEP`)."""
        return self._study("reliability", datasets=(concept,), seed=self.seed, dtype=self.dtype)

    def prediction_config(self, concepts: Sequence[str]) -> steerability_prediction.Config:
        """The steerability-prediction study of the concept set: the preset's concept folds, at
        most one per concept."""
        base = self._study("steerability_prediction", seed=self.seed)
        return dataclasses.replace(base, concept_names=tuple(concepts), folds=min(base.folds, len(concepts)))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a report will run: the concepts, which studies each takes, and where each study's run
    directory is (relative to ``OUT``)."""

    concepts: list[str]
    missing: dict[str, list[str]]  # concept -> the sources that lack it
    units: list[tuple[str, tuple[str, ...], str]]  # (study, its concepts, its directory)
    skipped: list[str]  # one line per study left out, and why

    def concepts_of(self, study: str) -> list[str]:
        return [c for s, cs, _ in self.units if s == study for c in cs]


def plan(config: Config, sources: Mapping[str, set[str]] | None = None) -> Plan:
    """The report's studies (no model, no run): raises as :func:`check` on bad concepts."""
    concepts = config.concept_list(sources)
    missing = check_concepts(concepts, allow_partial=config.allow_partial, sources=sources)
    can = {study: [c for c in concepts if not set(NEEDS[study]) & set(missing[c])] for study in STUDIES}
    units: list[tuple[str, tuple[str, ...], str]] = []
    skipped = [f"{TITLES[s]}: not for {', '.join(c for c in concepts if c not in can[s])} (missing from "
               f"{' and '.join(NEEDS[s])})" for s in STUDIES if len(can[s]) < len(concepts)]
    units += [("prompt_steerability", (c,), os.path.join("prompt_steerability", c)) for c in can["prompt_steerability"]]
    units += [("reliability", (c,), os.path.join("reliability", c)) for c in can["reliability"]]
    pred = sorted(can["steerability_prediction"])  # the set, in one order: the same set is the same study
    if len(pred) >= 2:
        units.append(("steerability_prediction", tuple(pred),
                      os.path.join("steerability_prediction", runs.digest(pred, length=12))))
    elif pred or concepts:
        if not config.allow_partial:
            raise DataError(f"the steering-strength study (Fan et al.) evaluates its predictor on held-out concepts "
                            f"and needs two or more, got {pred}: add a concept to --concepts, or pass "
                            "--allow-partial to leave that study out")
        skipped.append(f"{TITLES['steerability_prediction']}: needs two or more concepts, got {len(pred)}")
    return Plan(concepts, missing, units, skipped)


def check(config: Config, *, model_header: Any = None, out: str | None = None,
          names: Mapping[str, str] | None = None, sources: Mapping[str, set[str]] | None = None) -> Plan:
    """Every check of a report that needs no model weights; raise before any loads.

    Checks the preset, the concepts (unknown: the closest names; missing from a source: which,
    and ``--allow-partial``), the model's tokenizer and chat template (``model_header``, from
    :func:`steerjax.model.load_config`), each study's options and data for every concept, and
    the run directory ``out`` with every study directory in it (another model's or another
    config's: refused).

    Returns:
      The :class:`Plan`.

    Raises:
      SteerjaxError (DataError, TokenizerError, RunConfigError, OutputPathError, ...): the
      first bad input.
    """
    names = dict(names or {})
    if config.preset not in PRESETS:
        raise SteerjaxError(f"{names.get('preset', 'preset')}: unknown preset {config.preset!r}; choose one of "
                            f"{list(PRESETS)}")
    for field in ("seed", "n_boot"):
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if field == "seed" else 1):
            kind = "non-negative" if field == "seed" else "positive"
            raise SteerjaxError(f"{names.get(field, field)} must be a {kind} integer, got {value!r}")
    the_plan = plan(config, sources)
    source = None
    if model_header is not None:
        source = str(model_header.source)
        if not model_header.tokenizer:
            raise TokenizerError(f"{source} has no tokenizer: the report's studies read and write text")
        if not model_header.chat_template:
            raise TokenizerError(f"{source} has no chat template: every study of the report talks to a chat model "
                                 "(persona prompts, yes/no questions, steered answers); use an instruction-tuned "
                                 "model")
    if out is not None:
        runs.check_run_dir(out, config.run_config(source) if source else None, flag=names.get("out", "--out"))
    for study, concepts, where in the_plan.units:
        d = None if out is None else os.path.join(out, where)
        if study == "prompt_steerability":
            prompt_steerability.check(config.prompt_config(concepts[0]), out=d, model_config=model_header,
                                      model_source=source)
        elif study == "reliability":
            reliability.check(config.reliability_config(concepts[0]), out=d,
                              models=None if source is None else [source],
                              model_config=None if model_header is None else model_header.config)
        else:
            steerability_prediction.check(config.prediction_config(concepts), out=d, model_source=source,
                                          model_config=None if model_header is None else model_header.config)
    return the_plan


def cost(preset: str) -> str:
    """What a preset costs, as the README and ``--help`` say it."""
    return {"smoke": f"{PRESET_SIZES['smoke']} concepts, about 2 minutes on 2 CPU cores (a test)",
            "quick": f"{PRESET_SIZES['quick']} concepts, at most 30 minutes on 2 CPU cores",
            "full": "every shared concept at the papers' scale: hours on a GPU or TPU"}[preset]


__all__ = ["Config", "KIND", "LAYER_SWEEP", "NEEDS", "PRESETS", "Plan", "SOURCES", "STUDIES", "TITLES", "check",
           "cost", "plan"]
