"""The reliability study (Tan et al. 2024) as one call: :func:`run` a :class:`Config` on one or
more models into a run directory, get a :class:`Result`.

Per model:

1. Layer sweep (skipped when ``config.layer`` is given): a CAA vector per block from the paper's
   layer-sweep splits (train 0-10%, evaluated on 20-30%: disjoint from the test half); best
   layer = highest mean per-example steerability.
2. Per dataset, five vectors (baseline, SYS_positive, PT_positive, SYS_negative, PT_negative:
   trained with the persona prompt as system message (SYS) or user-prompt prefix (PT)) and their
   mean (:func:`setting_vectors`), each evaluated under the five settings of the test half: a
   6 x 5 matrix of sweeps.
3. Analyses over every model: per-example steerability, bootstrap intervals, spurious factors,
   train x test generalisation, the paper's distribution shifts, relative steerability, mean
   against variance and (two or more models) the cross-model comparison.

The run directory is resumable: ``config.json`` (what was asked, :meth:`Config.run_config`) is
claimed before anything else is written; trained vectors are keyed artifacts and sweeps store
their finished chunks, so a killed run started again recomputes only what is missing.
``run.json`` holds what the run found (each model's source and chosen layer, versions, time).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import pandas as pd

from steerjax import model as model_lib
from steerjax.data import load_dataset, paper
from steerjax.errors import MetricsError, RunConfigError, SteeringError
from steerjax.progress import tqdm
from steerjax.runs import CONFIG, RunLog, claim, keyed_artifact, read_run_config, write_json
from steerjax.studies.reliability import plots
from steerjax.studies.reliability.analyses import (
    ModelComparison,
    bootstrap_ci,
    compare_models,
    id_ood_shifts,
    mean_variance,
    relative_steerability,
    relative_steerability_correlation,
    shift_correlations,
)
from steerjax.studies.reliability.config import MEAN, SETTINGS, VECTORS, Config, model_slug
from steerjax.studies.reliability.steerability import (
    best_layer,
    generalisation,
    layer_sweep_summary,
    per_example_steerability,
    spurious_variance,
)
from steerjax.sweeps import sweep
from steerjax.vectors import SteeringVector, train_vector
from steerjax.version import __version__

CELL_KEYS = ("model", "dataset", "layer", "train_setting", "test_setting")
DATASET_KEYS = ("model", "dataset", "layer")
COMPARISONS = {"id": "BASE -> BASE", "ood": "SYS_POS -> USER_NEG"}
"""The model comparisons a run with two or more models writes: file label -> the paper's shift."""
TABLES = {
    "sweeps": "sweeps.parquet", "per_example": "per_example.parquet", "steerability": "summary.csv",
    "spurious": "spurious_variance.csv", "generalisation": "generalisation.csv", "shifts": "id_ood_shifts.csv",
    "shift_correlations": "shift_correlations.csv", "relative": "relative_steerability.csv",
    "relative_correlation": "relative_steerability_correlation.csv", "mean_variance": "mean_variance.csv",
    "vector_norms": "vector_norms.csv",
}
"""Result attribute -> file in the run directory (per-model tables live in ``<model>/``)."""
SYSTEM_SETTINGS = ("SYS_positive", "SYS_negative")
USER_SETTINGS = ("PT_positive", "PT_negative")


def setting_vectors(raw: Mapping[str, Any], *, rescale_to_baseline: bool = True,
                    where: str = "") -> dict[str, np.ndarray]:
    """The six vectors of a dataset from its five setting vectors: the five and their mean.

    The mean is taken before any rescaling (repepo's ``persona_generalization``: the mean of the
    five trained vectors). With ``rescale_to_baseline`` (the repepo format), every vector, the
    mean included, is then multiplied by ``|baseline| / |vector|``: all six get the baseline
    vector's norm (repepo's ``normalize_steering_magnitude_to_baseline``).

    Args:
      raw: one ``[D]`` vector per setting of :data:`SETTINGS` (other keys are ignored).
      rescale_to_baseline: rescale as above.
      where: names the dataset and block in the error message.

    Returns:
      ``{setting: [D], ..., "mean": [D]}`` in the order of :data:`VECTORS`.

    Raises:
      SteeringError: a setting is missing, or (when rescaling) a vector is zero: rescaling would
        divide by zero and fill the tables with NaN.
    """
    missing = [s for s in SETTINGS if s not in raw]
    if missing:
        raise SteeringError(f"{where or 'setting_vectors'}: no vector for setting(s) {missing}")
    five = {s: raw[s] for s in SETTINGS}
    vecs = dict(five, **{MEAN: np.mean(np.stack([five[s] for s in SETTINGS]), axis=0)})
    if not rescale_to_baseline:
        return vecs
    norms = {k: float(np.linalg.norm(v)) for k, v in vecs.items()}
    zero = sorted(k for k, n in norms.items() if not n > 0)
    if zero:
        raise SteeringError(f"{where or 'setting_vectors'}: the {', '.join(zero)} vector(s) are zero (positive and "
                            "negative activations coincide); use another layer or more training examples")
    return {k: v * (norms["baseline"] / norms[k]) for k, v in vecs.items()}


@dataclasses.dataclass
class Result:
    """The tables of a reliability run (file names: :data:`TABLES`).

    Attributes:
      config: the options the run was made with.
      models: per model directory name, ``source``, chosen ``layer`` and ``num_layers``.
      sweeps: every sweep row (``model``, ``dataset``, ``train_setting`` (the vector: a setting or
        ``"mean"``), ``test_setting``, ``example``, ``layer``, ``multiplier``, ``propensity`` ...).
      per_example: per-example steerability (slope of propensity against multiplier) per cell.
      steerability: per model and dataset, the baseline vector on baseline prompts: steerability
        and anti-steerable fraction with bootstrap intervals (``summary.csv``).
      spurious: share of per-example steerability variance explained by spurious factors.
      generalisation: steerability of every vector x test setting against in-distribution.
      shifts, shift_correlations: the paper's distribution shifts, per dataset and across datasets.
      relative, relative_correlation: relative steerability against the unsteered propensity gap.
      mean_variance: mean against variance of per-example steerability.
      vector_norms: norm of every vector trained (``norm``) and as steered (``steering_norm``).
      layer_sweeps, layer_sweep_summaries: per model with a layer sweep, its table and summary.
      comparisons: with two or more models, ``{"id": ..., "ood": ...}`` (:data:`COMPARISONS`).
    """

    config: Config
    models: dict[str, dict[str, Any]]
    sweeps: pd.DataFrame
    per_example: pd.DataFrame
    steerability: pd.DataFrame
    spurious: pd.DataFrame
    generalisation: pd.DataFrame
    shifts: pd.DataFrame
    shift_correlations: pd.DataFrame
    relative: pd.DataFrame
    relative_correlation: pd.DataFrame
    mean_variance: pd.DataFrame
    vector_norms: pd.DataFrame
    layer_sweeps: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)
    layer_sweep_summaries: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)
    comparisons: dict[str, ModelComparison] = dataclasses.field(default_factory=dict)

    @property
    def propensity(self) -> str:
        """What the ``propensity`` column holds: ``"logit"`` or ``"logprob"`` (the format's)."""
        return self.config.prompt_format.propensity

    def save(self, out: str) -> list[str]:
        """Write every table into run directory ``out``; returns the paths written.

        A directory without ``config.json`` gets this result's (and ``run.json`` its models), so
        :meth:`load` reads it back; one holding another run's config is refused
        (:class:`~steerjax.errors.RunConfigError`)."""
        if os.path.exists(os.path.join(out, CONFIG)):
            held = Config.from_run_config(read_run_config(out))
            if held != self.config:
                raise RunConfigError(f"{out} holds a run with other options ({held}); save elsewhere")
        else:
            claim(out, self.config.run_config([str(m["source"]) for m in self.models.values()]))
        info_path = os.path.join(out, "run.json")
        info = {}
        if os.path.exists(info_path):
            with open(info_path) as f:
                info = json.load(f)
        write_json(info_path, {**info, "models": self.models})
        written = []

        def put(frame: pd.DataFrame, *parts: str) -> None:
            path = os.path.join(out, *parts)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if path.endswith(".parquet"):
                frame.to_parquet(path, index=False)
            else:
                frame.to_csv(path, index=False)
            written.append(path)

        for slug in self.models:
            if slug in self.layer_sweeps:
                put(self.layer_sweeps[slug], slug, "layer_sweep.parquet")
                put(self.layer_sweep_summaries[slug], slug, "layer_sweep_summary.csv")
            put(self.sweeps[self.sweeps.model == slug].reset_index(drop=True), slug, "sweeps.parquet")
        for attr, name in TABLES.items():
            put(getattr(self, attr), name)
        for label, comparison in self.comparisons.items():
            put(comparison.table, f"model_comparison_{label}.csv")
            put(comparison.correlations, f"model_comparison_{label}_correlations.csv")
        return written

    @classmethod
    def load(cls, out: str) -> Result:
        """The result saved in run directory ``out`` (by :func:`run` or :meth:`save`)."""
        config = Config.from_run_config(read_run_config(out))
        with open(os.path.join(out, "run.json")) as f:
            models = json.load(f)["models"]

        def get(*parts: str) -> pd.DataFrame:
            path = os.path.join(out, *parts)
            if path.endswith(".parquet"):
                return pd.read_parquet(path)
            return pd.read_csv(path, float_precision="round_trip")  # exact floats with pandas 2 too

        tables = {attr: get(name) for attr, name in TABLES.items()}
        sweeps_ = {s: get(s, "layer_sweep.parquet") for s in models
                   if os.path.exists(os.path.join(out, s, "layer_sweep.parquet"))}
        summaries = {s: get(s, "layer_sweep_summary.csv") for s in sweeps_}
        comparisons = {label: ModelComparison(get(f"model_comparison_{label}.csv"),
                                              get(f"model_comparison_{label}_correlations.csv"))
                       for label in COMPARISONS if os.path.exists(os.path.join(out, f"model_comparison_{label}.csv"))}
        return cls(config=config, models=models, layer_sweeps=sweeps_, layer_sweep_summaries=summaries,
                   comparisons=comparisons, **tables)

    def figures(self, out: str) -> list[str]:
        """Draw the run's figures into ``out`` (per model in ``<model>/``); returns their paths.

        The one place that decides which figures a run writes. Every axis showing a propensity or
        a steerability names the propensity's kind and unit; titles carry the model and the
        layer, and the propensity curves each dataset's vector norm.
        """

        kind = self.propensity
        base = self.per_example[(self.per_example.train_setting == "baseline")
                                & (self.per_example.test_setting == "baseline")]
        norms = self.vector_norms[(self.vector_norms.stage == "test") & (self.vector_norms.vector == "baseline")]
        written = []
        for slug, info in self.models.items():
            mdir, layer = os.path.join(out, slug), int(info["layer"])
            at = f"{slug}, layer {layer}"
            if slug in self.layer_sweep_summaries:
                ls_norms = self.vector_norms[(self.vector_norms.model == slug)
                                             & (self.vector_norms.stage == "layer_sweep")]
                written.append(plots.layer_sweep_plot(
                    self.layer_sweep_summaries[slug], os.path.join(mdir, "layer_sweep.png"), propensity=kind,
                    norms=ls_norms.groupby("layer")["norm"].mean().to_dict(), title=f"Layer sweep: {slug}"))
            table = self.sweeps[self.sweeps.model == slug]
            cell = (table.train_setting == "baseline") & (table.test_setting == "baseline")
            m_base = base[base.model == slug]
            m_norms = norms[norms.model == slug].set_index("dataset")["steering_norm"].to_dict()
            written.append(plots.propensity_curves(
                table[cell].drop(columns=["model", "train_setting", "test_setting"]),
                os.path.join(mdir, "propensity_curves.png"), propensity=kind, norms=m_norms,
                title=f"Propensity vs steering multiplier: {at} (baseline vector, baseline prompts)"))
            written.append(plots.violin_steerability(
                m_base.drop(columns=["model", "train_setting", "test_setting"]),
                os.path.join(mdir, "steerability_violin.png"), propensity=kind, norms=m_norms,
                title=f"Per-example steerability by dataset: {at} (baseline vector, baseline prompts)"))
            written.append(plots.spurious_variance_plot(
                self.spurious[self.spurious.model == slug], os.path.join(mdir, "spurious_variance.png"),
                title=f"Spurious factors: variance of steerability they explain ({at})"))
            written.append(plots.steerability_ci_plot(
                self.steerability[self.steerability.model == slug], os.path.join(mdir, "steerability_ci.png"),
                propensity=kind, norms=m_norms, title=f"Steerability with 95% bootstrap intervals: {at}"))
            written.append(plots.generalisation_heatmap(
                self.generalisation[self.generalisation.model == slug].drop(columns="model"),
                os.path.join(mdir, "generalisation_matrix.png"), value="steerability", propensity=kind,
                title=f"Steerability, vector setting x test setting: {at}"))
            written.append(plots.relative_steerability_plot(
                self.relative[self.relative.model == slug], os.path.join(mdir, "relative_steerability.png"),
                propensity=kind, title=f"Relative steerability vs unsteered propensity gap ({at})"))
        at = "; ".join(f"{slug}, layer {int(info['layer'])}" for slug, info in self.models.items())
        written.append(plots.shift_scatter(
            self.shifts, os.path.join(out, "id_ood_shifts.png"), propensity=kind,
            title=f"In- vs out-of-distribution steerability, one point per dataset; dashed: y = x ({at})"))
        written.append(plots.mean_variance_plot(
            self.mean_variance, os.path.join(out, "mean_variance.png"), propensity=kind,
            title=f"Mean vs variance of per-example steerability, one point per dataset ({at})"))
        for label, comparison in self.comparisons.items():
            written.append(plots.model_comparison_plot(
                comparison, os.path.join(out, f"model_comparison_{label}.png"), propensity=kind,
                title=f"Steerability across models: {COMPARISONS[label]} ({at})"))
        return [str(p) for p in written]

    def summary(self, model: str | None = None) -> dict[str, float | int | str]:
        """The headline numbers of one model as a flat dict (what the cross-paper report reads).

        Args:
          model: the model's directory name (a key of :attr:`models`); None: the only one.

        Returns:
          Overall keys: ``model`` (its source), ``format``, ``propensity`` (``"logit"`` or
          ``"logprob"``), ``layer`` (the block steered: the layer sweep's choice or the one
          given), ``layer_chosen_by`` (``"layer_sweep"`` or ``"config"``), ``n_datasets``,
          ``steerability`` (mean over datasets), ``anti_steerable_fraction`` (mean over datasets);
          after a layer sweep also ``layer_sweep_steerability`` (the chosen block's mean steerability
          on the layer-sweep splits) and ``layer_sweep_blocks`` (blocks swept).
          Per dataset ``<d>`` (the concept), for the baseline vector at that layer on the baseline
          prompts of the test half:

          - ``<d>/n``: test examples;
          - ``<d>/steerability``, ``<d>/steerability_lo``, ``<d>/steerability_hi``: mean
            per-example steerability (slope of the propensity per unit multiplier) and its
            percentile bootstrap interval over examples (level ``<d>/ci_level``);
          - ``<d>/anti_steerable_fraction`` with ``_lo`` / ``_hi``: the share of examples with a
            negative slope;
          - ``<d>/spurious_share``: share of the per-example steerability variance that the
            spurious factors (answer letter, yes/no) explain jointly (R²; NaN when constant);
          - ``<d>/vector_norm``: the norm of the baseline vector as steered;
          - ``<d>/shift_system``, ``<d>/shift_user``: the ID/OOD shift of the baseline vector:
            mean steerability on the test prompts with the persona prompt in the system message
            (``SYS_positive``, ``SYS_negative``), resp. the user prompt (``PT_positive``,
            ``PT_negative``), minus the in-distribution steerability;
          - ``<d>/shift[<setting>]``: the same for each of those four settings alone.
        """
        slug = self._model(model)
        info = self.models[slug]
        ci = self.steerability[self.steerability.model == slug].set_index("dataset")
        spur = self.spurious[self.spurious.model == slug].set_index("dataset")
        gen = self.generalisation[(self.generalisation.model == slug)
                                  & (self.generalisation.train_setting == "baseline")]
        norms = self.vector_norms[(self.vector_norms.model == slug) & (self.vector_norms.stage == "test")
                                  & (self.vector_norms.vector == "baseline")].set_index("dataset")
        out: dict[str, float | int | str] = {
            "model": str(info["source"]), "format": self.config.format, "propensity": self.propensity,
            "layer": int(info["layer"]),
            "layer_chosen_by": "config" if self.config.layer is not None else "layer_sweep",
            "n_datasets": int(len(ci)), "steerability": float(ci["steerability"].mean()),
            "anti_steerable_fraction": float(ci["anti_steerable_fraction"].mean()),
        }
        if slug in self.layer_sweep_summaries:
            sweep_summary = self.layer_sweep_summaries[slug].set_index("layer")
            out["layer_sweep_steerability"] = float(sweep_summary.loc[int(info["layer"]), "steerability"])
            out["layer_sweep_blocks"] = int(len(sweep_summary))
        for d, row in ci.iterrows():
            out[f"{d}/n"] = int(row["n"])
            for stat in ("steerability", "anti_steerable_fraction"):
                for suffix in ("", "_lo", "_hi"):
                    out[f"{d}/{stat}{suffix}"] = float(row[stat + suffix])
            out[f"{d}/ci_level"] = float(row["ci_level"])
            out[f"{d}/spurious_share"] = float(spur.loc[d, "r2_joint"]) if d in spur.index else float("nan")
            out[f"{d}/vector_norm"] = float(norms.loc[d, "steering_norm"]) if d in norms.index else float("nan")
            cells = gen[gen.dataset == d].set_index("test_setting")["steerability_gap"]
            for setting in SYSTEM_SETTINGS + USER_SETTINGS:
                out[f"{d}/shift[{setting}]"] = float(cells.get(setting, np.nan))
            out[f"{d}/shift_system"] = float(np.mean([out[f"{d}/shift[{s}]"] for s in SYSTEM_SETTINGS]))
            out[f"{d}/shift_user"] = float(np.mean([out[f"{d}/shift[{s}]"] for s in USER_SETTINGS]))
        return out

    def _model(self, model: str | None) -> str:
        if model is None:
            if len(self.models) != 1:
                raise MetricsError(f"the run holds {len(self.models)} models {sorted(self.models)}: name one")
            return next(iter(self.models))
        if model not in self.models:
            raise MetricsError(f"no model {model!r} in the run; it holds {sorted(self.models)}")
        return model


def run(model: Any, config: Config, out: str, *, mesh=None, progress: bool = True,
        layer_sweep_dir: str | None = None) -> Result:
    """Run the reliability study into run directory ``out`` (resumable) and save its tables.

    Args:
      model: a :class:`steerjax.LanguageModel`, a model source (loaded with ``config.dtype``), or a
        sequence of them (run one after the other, each loaded only for its turn; the analyses
        cover all of them).
      config: the options (check them first with :func:`~steerjax.studies.reliability.check`).
      out: the run directory.
      mesh: a ``("data", "model")`` mesh for training and sweeps (default: one device).
      progress: print the log lines and progress bars.
      layer_sweep_dir: where the layer sweep keeps its vectors and sweeps (per model, as
        ``out`` does); default ``out``. Runs that differ only in ``datasets`` (the layer sweep
        does not read them) can share one, so the sweep runs once: what the cross-paper report
        does with one run per concept. Every artifact there is keyed by what built it.

    Returns:
      The :class:`Result`, saved in ``out`` (figures: :meth:`Result.figures`).
    """
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    sources = [m if isinstance(m, str) else str(m.source) for m in models]
    claim(out, config.claimable_config(out, sources))  # before anything else: another run's directory is refused
    log = RunLog(out, stamp=False)

    def say(msg: str) -> None:
        if progress:
            log(msg)
        else:
            with open(log.path, "a") as f:
                f.write(msg + "\n")

    fmt = config.prompt_format
    info: dict[str, Any] = dict(steerjax=__version__, jax=jax.__version__, python=platform.python_version(),
                                models={})
    tables, norm_rows, layer_sweeps, layer_summaries = [], [], {}, {}
    for given in models:
        slug = model_slug(given if isinstance(given, str) else given.source)
        mdir = os.path.join(out, slug)
        os.makedirs(mdir, exist_ok=True)
        lm = model_lib.load_model(given, dtype=config.dtype) if isinstance(given, str) else given
        say(f"model {lm.source}: {lm.config.num_layers} blocks; preset {config.preset_name}, format {fmt.name}")

        # 1. layer sweep on the paper's layer-sweep splits (disjoint from the test half)
        if config.layer is None:
            layers = list(range(0, lm.config.num_layers, config.layer_sweep_stride))
            sweep_dir = mdir if layer_sweep_dir is None else os.path.join(layer_sweep_dir, slug)
            os.makedirs(sweep_dir, exist_ok=True)
            parts = []
            for name in config.layer_sweep_datasets:
                vec = _vector(lm, config, sweep_dir, name, paper.LAYER_SWEEP_SPLITS["train"], config.layer_n_train,
                              "baseline", layers, mesh)
                norm_rows += [dict(model=slug, stage="layer_sweep", dataset=name, layer=int(layer), vector="baseline",
                                   norm=n, steering_norm=n) for layer, n in sorted(vec.norms().items())]
                test = _load(config, name, paper.LAYER_SWEEP_SPLITS["test"], config.layer_n_test)
                parts.append(_sweep(lm, config, sweep_dir, f"layer_sweep.{name}", test, vec, layers, mesh))
            layer_sweeps[slug] = pd.concat(parts, ignore_index=True)
            layer_summaries[slug] = layer_sweep_summary(layer_sweeps[slug])
            layer = best_layer(layer_summaries[slug])
            best = layer_summaries[slug].set_index("layer").loc[layer, "steerability"]
            say(f"layer sweep ({len(layers)} blocks, {len(parts)} dataset(s)): best layer {layer} "
                f"(steerability {best:.3f}) [{log.seconds:.0f}s]")
        else:
            layer = config.layer
        info["models"][slug] = dict(source=str(lm.source), layer=int(layer), num_layers=lm.config.num_layers)
        write_json(os.path.join(out, "run.json"), info)

        # 2. five vectors (+ their mean) per dataset, each evaluated under the five settings
        cells = []
        for name in tqdm(config.datasets, desc=f"datasets ({slug})", unit="dataset",
                         disable=None if progress else True):
            raw = {s: _vector(lm, config, mdir, name, config.splits["train"], config.n_train, s, [layer],
                              mesh).vectors[layer] for s in SETTINGS}
            raw_mean = np.mean(np.stack([raw[s] for s in SETTINGS]), axis=0)
            vecs = setting_vectors(raw, rescale_to_baseline=fmt.rescale_to_baseline, where=f"{name} at block {layer}")
            norm_rows += [dict(model=slug, stage="test", dataset=name, layer=int(layer), vector=k,
                               norm=float(np.linalg.norm(raw.get(k, raw_mean))), steering_norm=float(np.linalg.norm(v)))
                          for k, v in vecs.items()]
            vecs = {k: {layer: v} for k, v in vecs.items()}
            for test in SETTINGS:
                examples = _load(config, name, config.splits["test"], config.n_test, test)
                t = _sweep(lm, config, mdir, f"{name}.{test}", examples, vecs, [layer], mesh)
                cells.append(t.rename(columns={"vector": "train_setting"}).assign(test_setting=test))
        tables.append(pd.concat(cells, ignore_index=True).assign(model=slug))
        say(f"{len(config.datasets)} datasets x {len(VECTORS)} vectors x {len(SETTINGS)} settings at layer {layer} "
            f"[{log.seconds:.0f}s]")
        del lm

    result = analyse(pd.concat(tables, ignore_index=True), config, info["models"], layer_sweeps=layer_sweeps,
                     layer_sweep_summaries=layer_summaries, vector_norms=pd.DataFrame(norm_rows))
    result.save(out)
    cols = ["model", "dataset", "n", "steerability", "steerability_lo", "steerability_hi", "anti_steerable_fraction"]
    say(result.steerability[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    info["seconds"] = log.seconds
    write_json(os.path.join(out, "run.json"), info)
    say(f"done in {info['seconds']}s: results in {out}")
    return result


def analyse(table: pd.DataFrame, config: Config, models: Mapping[str, Mapping[str, Any]], *,
            layer_sweeps: Mapping[str, pd.DataFrame] | None = None,
            layer_sweep_summaries: Mapping[str, pd.DataFrame] | None = None,
            vector_norms: pd.DataFrame | None = None) -> Result:
    """Every analysis of the study on a sweep table of all models (step 3 of the module docstring)."""
    per_ex = per_example_steerability(table, by=CELL_KEYS)
    base = per_ex[(per_ex.train_setting == "baseline") & (per_ex.test_setting == "baseline")]
    rel = relative_steerability(table)
    comparisons = {}
    if len(set(table.model)) >= 2:
        comparisons = {label: compare_models(per_ex, shift=shift) for label, shift in COMPARISONS.items()}
    shifts = id_ood_shifts(per_ex, by=("dataset",))
    return Result(
        config=config, models={k: dict(v) for k, v in models.items()}, sweeps=table, per_example=per_ex,
        steerability=bootstrap_ci(base, by=DATASET_KEYS, n_boot=config.n_boot, seed=config.seed),
        spurious=spurious_variance(base, by=DATASET_KEYS), generalisation=generalisation(table, by=DATASET_KEYS),
        shifts=shifts, shift_correlations=shift_correlations(shifts), relative=rel,
        relative_correlation=relative_steerability_correlation(rel), mean_variance=mean_variance(per_ex),
        vector_norms=vector_norms if vector_norms is not None else pd.DataFrame(
            columns=["model", "stage", "dataset", "layer", "vector", "norm", "steering_norm"]),
        layer_sweeps=dict(layer_sweeps or {}), layer_sweep_summaries=dict(layer_sweep_summaries or {}),
        comparisons=comparisons)


def _load(config: Config, name: str, split: str, n: int | None, setting: str = "baseline"):
    return load_dataset(name, split=split, seed=config.seed, setting=setting, format=config.prompt_format,
                        split_compat=config.split_compat, max_examples=n)


def _vector(lm, config: Config, mdir: str, name: str, split: str, n: int | None, setting: str, layers, mesh):
    """A CAA vector, trained once: reused only when it was built for this exact key."""
    fmt = config.prompt_format
    key = dict(model=lm.source, dtype=config.dtype, dataset=name, split=split, split_compat=config.split_compat,
               format=fmt.name, setting=setting, n_train=n, seed=config.seed, layers=list(layers), method="caa",
               token_index=fmt.token_index)

    def build():
        vec = train_vector(lm, _load(config, name, split, n, setting), layers=layers, method="caa",
                           token_index=fmt.token_index, progress=False, mesh=mesh)
        vec.metadata.update(dataset=name, split=split, setting=setting, prompt_format=fmt.name, seed=config.seed)
        return vec

    tag = "-".join(map(str, layers)) if len(layers) <= 3 else f"{layers[0]}-{layers[-1]}-by{layers[1] - layers[0]}"
    os.makedirs(os.path.join(mdir, "vectors"), exist_ok=True)
    return keyed_artifact(os.path.join(mdir, "vectors", f"{name}.{setting}.L{tag}.safetensors"), key, build,
                          save=lambda vec, path: vec.save(path), load=SteeringVector.load)


def _sweep(lm, config: Config, mdir: str, tag: str, examples, vecs, layers, mesh) -> pd.DataFrame:
    fmt = config.prompt_format
    return sweep(lm, examples, vecs, layers=layers, multipliers=list(config.multipliers), positions=fmt.steer_from,
                 propensity=fmt.propensity, progress=False, run_dir=os.path.join(mdir, "sweeps", tag), mesh=mesh)
