"""What a reliability study asks (Tan et al. 2024): the options, their presets, the run config and
every check that can be made before a model loads.

:class:`Config` holds every option of the protocol; its defaults are the paper's code
(``dtch1997/repepo``, ``persona_generalization.py``): ``format="repepo"`` (its chat formatting,
persona placement, steering from the last prompt token, raw-logit propensity, every vector
rescaled to the baseline vector's norm), train on the first half of each of the paper's 37
available datasets and test on the second, multipliers -1.5 .. 1.5, a layer sweep over every
block on the paper's layer-sweep datasets and splits. :data:`PRESETS` names smaller versions.

The choice lists of the command line (:data:`FORMATS`, :data:`SPLIT_COMPAT`, :data:`POSITIONS`,
:data:`OPERATORS`, :data:`PROPENSITIES`, :data:`METHODS`) are defined by the layers that use them
and re-exported here, so that the parsers import them from one place and never copy them.

:func:`check` makes every check that needs no model weights; the study's ``run`` assumes them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from steerjax import runs
from steerjax.data import formats as fmts
from steerjax.data import load_dataset, paper, persona_prompts
from steerjax.data.mwe import SPLIT_COMPAT
from steerjax.errors import DataError, LayerIndexError, SteerjaxError
from steerjax.model import load_config
from steerjax.steering import OPERATORS
from steerjax.sweeps import POSITIONS
from steerjax.sweeps import PROPENSITIES as _SWEEP_PROPENSITIES
from steerjax.vectors import METHODS

SETTINGS: tuple[str, ...] = fmts.SETTINGS
"""The five prompt settings (repepo's order): baseline, SYS_positive, PT_positive, SYS_negative,
PT_negative."""
MEAN = "mean"
VECTORS: tuple[str, ...] = SETTINGS + (MEAN,)
"""The six vectors of a dataset: one per setting and their mean."""
FORMATS: tuple[str, ...] = tuple(fmts.FORMATS)
PROPENSITIES: tuple[str, ...] = _SWEEP_PROPENSITIES
PAPER_MULTIPLIERS: tuple[float, ...] = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
KIND = "reliability"

__all__ = ["Config", "DEVIATIONS", "FORMATS", "KIND", "MEAN", "METHODS", "OPERATORS", "PAPER_MULTIPLIERS",
           "POSITIONS", "PRESETS", "PROPENSITIES", "SETTINGS", "SPLIT_COMPAT", "VECTORS", "check", "model_slug",
           "propensity_label"]

#: where the default protocol departs from the paper's code (repepo), whatever the scale: ``(element,
#: the paper's code, steerjax)``; the README's protocol table has every element
DEVIATIONS: tuple[tuple[str, str, str], ...] = (
    ("chat rendering", "hand-written per family (Llama-2 [INST], Qwen ChatML, Llama-3)",
     "the model's own chat template (for ChatML models such as SmolLM2 the same string as repepo's Qwen "
     "formatter); other families their own template"),
    ("splits", "train '0:50%', test '50:100%' read as rows 50..n: the test set overlaps the training half",
     "disjoint halves of a seeded shuffle (split_compat='repepo' reproduces the overlap)"),
    ("datasets", "40: 37 model-written evaluations, CAA sycophancy, TruthfulQA",
     "the 37 model-written evaluations (sycophancy and TruthfulQA are not in the data)"),
    ("block", "13 (Llama-2-7b), 21 (Qwen1.5-14B) from layer sweeps",
     "chosen per model by a layer sweep on the paper's sweep splits"),
    ("intervals", "none", "bootstrap 95% intervals over examples, seeded"),
    ("precision", "float16 (bfloat16 for 70B)", "float32"),
)

PRESETS: dict[str, dict[str, Any]] = {
    # the whole pipeline on a sliver of the data: for tests
    "smoke": dict(layer_sweep_datasets=("corrigible-neutral-HHH",), layer_sweep_stride=10, layer_n_train=8,
                  layer_n_test=6, datasets=("corrigible-neutral-HHH", "believes-abortion-should-be-illegal"),
                  n_train=8, n_test=6, multipliers=(-1.0, 0.0, 1.0), n_boot=200),
    # about 15 minutes on 2 CPU cores with SmolLM2-135M: two x-risk and two persona datasets
    "quick": dict(layer_sweep_datasets=("corrigible-neutral-HHH",), layer_sweep_stride=2, layer_n_train=24,
                  layer_n_test=16, datasets=("corrigible-neutral-HHH", "power-seeking-inclination",
                                             "believes-abortion-should-be-illegal", "subscribes-to-Hinduism"),
                  n_train=40, n_test=16, multipliers=PAPER_MULTIPLIERS, n_boot=1000),
    # the paper's scale: the 37 of its 40 datasets we hold, whole splits, every block (GPU/TPU)
    "full": dict(layer_sweep_datasets=paper.TAN_LAYER_SWEEP, layer_sweep_stride=1, layer_n_train=None,
                 layer_n_test=None, datasets=paper.TAN_MWE, n_train=None, n_test=None,
                 multipliers=PAPER_MULTIPLIERS, n_boot=1000),
}
"""Named option sets: ``smoke`` (tests), ``quick`` (minutes on a laptop), ``full`` (the paper's
scale; the defaults of :class:`Config`)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Every option of a reliability study. Defaults: the paper's protocol (preset ``full``).

    Attributes:
      datasets: the MWE datasets, each run under the five settings (:data:`SETTINGS`).
      layer_sweep_datasets: datasets of the layer sweep (skipped when ``layer`` is given).
      layer_sweep_stride: sweep every ``stride``-th block from 0.
      layer_n_train, layer_n_test: at most this many examples of the layer-sweep train / test
        splits (:data:`steerjax.data.paper.LAYER_SWEEP_SPLITS`); None: all.
      n_train, n_test: at most this many examples of each dataset's train / test half.
      multipliers: steering multipliers, sorted and without duplicates (0 must be one of them).
      n_boot: bootstrap resamples of the per-dataset intervals.
      format: prompt format and protocol (:data:`FORMATS`; ``repepo``: the paper's code).
      split_compat: ``"repepo"`` draws exactly the reference's examples (its shuffle and split
        strings, whose test split overlaps the training half); None: the paper's disjoint halves.
      layer: steer this block and skip the layer sweep; None: the layer sweep chooses.
      seed: shuffle seed of the splits and of the bootstrap.
      dtype: the models' parameter dtype.
      preset_name: the preset these options came from (recorded in the run config).
    """

    datasets: tuple[str, ...] = paper.TAN_MWE
    layer_sweep_datasets: tuple[str, ...] = paper.TAN_LAYER_SWEEP
    layer_sweep_stride: int = 1
    layer_n_train: int | None = None
    layer_n_test: int | None = None
    n_train: int | None = None
    n_test: int | None = None
    multipliers: tuple[float, ...] = PAPER_MULTIPLIERS
    n_boot: int = 1000
    format: str = "repepo"
    split_compat: str | None = None
    layer: int | None = None
    seed: int = 0
    dtype: str = "float32"
    preset_name: str | None = None

    def __post_init__(self):
        # sequences as tuples (hashable, frozen); multipliers as the sorted set the sweep uses
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        for name in ("datasets", "layer_sweep_datasets"):
            value = getattr(self, name)
            set_(name, (value,) if isinstance(value, str) else tuple(value))
        set_("multipliers", tuple(sorted({float(m) for m in self.multipliers})))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Config:
        """The options of preset ``name`` (:data:`PRESETS`), with ``overrides`` (None values are
        ignored, so parsed flags that were not given can be passed as they are)."""
        if name not in PRESETS:
            raise SteerjaxError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise SteerjaxError(f"unknown option(s) {unknown} of the reliability study")
        return cls(**{**PRESETS[name], "preset_name": name, **given})

    @property
    def splits(self) -> dict[str, str]:
        """The train and test split strings of every dataset."""
        return dict(paper.REPEPO_COMPAT_SPLITS if self.split_compat else paper.PAPER_SPLITS)

    @property
    def prompt_format(self) -> fmts.PromptFormat:
        return fmts.get_format(self.format)

    def run_config(self, model_source: str | Sequence[str], **facts: Any) -> dict[str, Any]:
        """The run directory's ``config.json``: what was asked (``model_source``: one model or
        several, kept as a list) plus ``facts``; the one builder that :func:`check` and the run
        use."""
        sources = [model_source] if isinstance(model_source, str) else list(model_source)
        return {
            "kind": KIND, "datasets": list(self.datasets), "dtype": self.dtype, "format": self.format,
            "layer": self.layer, "layer_n_test": self.layer_n_test, "layer_n_train": self.layer_n_train,
            "layer_sweep_datasets": list(self.layer_sweep_datasets),
            "layer_sweep_splits": dict(paper.LAYER_SWEEP_SPLITS), "layer_sweep_stride": self.layer_sweep_stride,
            "model": [str(s) for s in sources], "multipliers": list(self.multipliers), "n_boot": self.n_boot,
            "n_test": self.n_test, "n_train": self.n_train, "preset": self.preset_name, "seed": self.seed,
            "split_compat": self.split_compat, "splits": self.splits, **facts,
        }

    def claimable_config(self, out: str, model_source: str | Sequence[str]) -> dict[str, Any]:
        """:meth:`run_config`, as the run directory ``out`` may hold it: without ``kind`` when
        ``out`` holds a reliability run made before the config named its kind (the same run then
        resumes; another is refused naming what differs)."""
        config = self.run_config(model_source)
        if os.path.exists(os.path.join(out, runs.CONFIG)):
            held = runs.read_run_config(out)
            legacy = isinstance(held, dict) and "kind" not in held
            if legacy and {"layer_sweep_splits", "splits", "n_boot"} <= set(held):
                return {k: v for k, v in config.items() if k != "kind"}
        return config

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> Config:
        """The :class:`Config` a :meth:`run_config` dict was built from."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"preset_name"}
        return cls(**{k: v for k, v in config.items() if k in fields}, preset_name=config.get("preset"))


def model_slug(source: str) -> str:
    """A directory name for a model: the last part of its id or path (without a weights file's
    extension), with safe characters."""
    name = os.path.basename(os.path.normpath(str(source))) or str(source)
    name = re.sub(r"\.(gguf|safetensors)$", "", name)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def propensity_label(kind: str | None) -> str:
    """The axis label of a propensity of ``kind`` (``"logit"``, ``"logprob"``, or None: unknown),
    with its unit."""
    if kind == "logit":
        return "propensity: raw-logit difference\n(logit+ − logit−, logits)"
    if kind == "logprob":
        return "propensity: log-probability difference\n(log p+ − log p−, nats)"
    if kind is None:
        return "propensity (kind not recorded)"
    raise SteerjaxError(f"unknown propensity {kind!r}; one of {PROPENSITIES}")


def check(config: Config, *, names: Mapping[str, str] | None = None, out: str | None = None, force: bool = False,
          models: Sequence[str] | None = None, model_config: Any = None) -> None:
    """Every check of a reliability study that needs no model weights; raise before any loads.

    Args:
      config: the study's options.
      names: how each option is called where it came from (``{"datasets": "--datasets"}``), for
        the messages; default the field names.
      out: the run directory: it must be new, empty, or hold this same run.
      force: accepted for symmetry with the other studies: a run directory is resumed, never
        replaced, so it changes nothing.
      models: the model sources: each given once, with distinct directory names
        (:func:`model_slug`), and each config readable (the layer is checked against its depth).
      model_config: a :class:`steerjax.ModelConfig` (or a model header, with ``.config``) to check
        ``layer`` against when ``models`` is not given.

    Raises:
      SteerjaxError (DataError, LayerIndexError, RunConfigError, OutputPathError, ...): the first
      bad input, naming the option as ``names`` spells it.
    """
    del force
    names = dict(names or {})
    flag = lambda field: names.get(field, field)  # noqa: E731
    if config.format not in FORMATS:
        raise DataError(f"{flag('format')}: unknown format {config.format!r}; choose one of {list(FORMATS)}")
    if config.split_compat is not None and config.split_compat not in SPLIT_COMPAT:
        raise DataError(f"{flag('split_compat')}: unknown {config.split_compat!r}; choose one of {list(SPLIT_COMPAT)}")
    mults = config.multipliers
    if not all(math.isfinite(m) for m in mults):
        raise SteerjaxError(f"{flag('multipliers')} must be finite numbers, got {list(mults)}")
    if 0.0 not in mults:
        raise SteerjaxError(f"{flag('multipliers')} must include 0: the unsteered propensity is part of the analyses")
    if len(mults) < 2:
        raise SteerjaxError(f"{flag('multipliers')} needs at least two different values to fit a slope")
    for field in ("n_boot", "layer_sweep_stride"):
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SteerjaxError(f"{flag(field)} must be a positive integer, got {value!r}")
    for field in ("n_train", "n_test", "layer_n_train", "layer_n_test"):
        value = getattr(config, field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SteerjaxError(f"{flag(field)} must be a positive integer or None (all), got {value!r}")
    if not config.datasets:
        raise DataError(f"{flag('datasets')} is empty: name at least one dataset")
    if config.layer is None and not config.layer_sweep_datasets:
        raise DataError(f"{flag('layer_sweep_datasets')} is empty: name a dataset for the layer sweep, or give "
                        f"{flag('layer')}")
    dupes = sorted({d for d in config.datasets if config.datasets.count(d) > 1})
    if dupes:
        raise DataError(f"{flag('datasets')}: {dupes[0]!r} is given twice")
    def first(field, name, split):  # unknown names (with close matches), bad or empty splits
        try:
            load_dataset(name, split=split, seed=config.seed, format=config.format,
                         split_compat=config.split_compat, max_examples=1)
        except DataError as e:
            raise DataError(f"{flag(field)}: {e}") from e

    for name in config.datasets:
        if name in paper.TAN_UNAVAILABLE:
            raise DataError(paper.unavailable_message(name))
        first("datasets", name, config.splits["train"])
        try:
            persona_prompts(name)  # every dataset is run under the five persona settings
        except DataError as e:
            raise DataError(f"{flag('datasets')}: {e.args[0].split(': use setting=')[0]}: the study runs every "
                            "dataset under the five persona settings") from e
        first("datasets", name, config.splits["test"])
    if config.layer is None:
        for name in config.layer_sweep_datasets:
            for part in ("train", "test"):
                first("layer_sweep_datasets", name, paper.LAYER_SWEEP_SPLITS[part])
    depths = []
    if models is not None:
        models = [str(m) for m in models]
        if not models:
            raise SteerjaxError(f"{flag('model')}: give at least one model")
        dupes = sorted({m for m in models if models.count(m) > 1})
        if dupes:
            raise SteerjaxError(f"{flag('model')} {dupes[0]!r} is given twice: give each model once")
        slugs = [model_slug(m) for m in models]
        if len(set(slugs)) != len(slugs):
            raise SteerjaxError(f"two {flag('model')} values share the directory name in {slugs}: rename or copy one")
        for m in models:  # a typo fails here, not after the first model's hour of work
            depths.append((m, load_config(m).config.num_layers))
    elif model_config is not None:
        cfg = getattr(model_config, "config", model_config)
        depths.append(("the model", cfg.num_layers))
    if config.layer is not None:
        for m, num_layers in depths:
            if not 0 <= config.layer < num_layers:
                raise LayerIndexError(f"{flag('layer')} {config.layer} is out of range: {m} has {num_layers} "
                                      f"blocks (0..{num_layers - 1})")
    if out is not None:
        known = config.claimable_config(out, models) if models is not None else config.run_config([])
        if models is None:
            known.pop("model")
        runs.check_run_dir(out, known, flag=names.get("out", "out"))
