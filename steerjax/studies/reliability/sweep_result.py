"""One multiplier sweep as tables and figures: what ``steerjax sweep`` writes beside its run
directory's chunks.

:meth:`SweepResult.from_table` turns a :func:`steerjax.sweep` table into per-example steerability
and a per-(dataset, layer) summary; :meth:`SweepResult.save` writes ``results.parquet``,
``per_example.parquet``, ``summary.csv`` and ``cli.json`` (the facts of the run: its options, the
propensity's kind, the vector's metadata and norms); :meth:`SweepResult.figures` draws per layer
the propensity curves and the per-example steerability, and with several layers steerability
against layer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import pandas as pd

from steerjax.runs import write_json
from steerjax.studies.reliability import plots
from steerjax.studies.reliability.steerability import dataset_steerability, per_example_steerability

TABLES = ("results.parquet", "per_example.parquet", "summary.csv", "cli.json")
"""The files :meth:`SweepResult.save` writes, in order."""
BY = ("dataset", "layer")


@dataclasses.dataclass
class SweepResult:
    """A sweep's tables.

    Attributes:
      results: the sweep table (one row per example x layer x multiplier).
      per_example: per-example steerability per (dataset, layer).
      steerability: dataset steerability per (dataset, layer) (``summary.csv``).
      facts: what the run was (``cli.json``): at least ``propensity`` (``"logit"`` or
        ``"logprob"``); ``model`` and ``vector_norms`` (layer -> norm) go into figure titles.
    """

    results: pd.DataFrame
    per_example: pd.DataFrame
    steerability: pd.DataFrame
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_table(cls, table: pd.DataFrame, facts: Mapping[str, Any] | None = None) -> SweepResult:
        """Per-example steerability and the summary of a :func:`steerjax.sweep` table."""
        per_example = per_example_steerability(table, by=BY)
        return cls(results=table, per_example=per_example, steerability=dataset_steerability(per_example, by=BY),
                   facts=dict(facts or {}))

    def save(self, out: str) -> list[str]:
        """Write :data:`TABLES` into ``out``; returns their paths."""
        paths = [os.path.join(out, name) for name in TABLES]
        self.results.to_parquet(paths[0], index=False)
        self.per_example.to_parquet(paths[1], index=False)
        self.steerability.to_csv(paths[2], index=False)
        write_json(paths[3], self.facts)
        return paths

    @classmethod
    def load(cls, out: str) -> SweepResult:
        with open(os.path.join(out, TABLES[3])) as f:
            facts = json.load(f)
        return cls(results=pd.read_parquet(os.path.join(out, TABLES[0])),
                   per_example=pd.read_parquet(os.path.join(out, TABLES[1])),
                   steerability=pd.read_csv(os.path.join(out, TABLES[2]), float_precision="round_trip"), facts=facts)

    def figures(self, out: str) -> list[str]:
        """Per layer, the propensity curves and the per-example steerability (violins); with
        several layers, steerability against layer. Returns the files written."""

        kind = self.facts.get("propensity")
        model = os.path.basename(os.path.normpath(str(self.facts.get("model", "")))) or "model"
        norms = {int(k): float(v) for k, v in (self.facts.get("vector_norms") or {}).items()}
        written = []
        layers = sorted(set(self.results["layer"]))
        for layer in layers:
            norm = f", |v| = {norms[layer]:.2f}" if layer in norms else ""
            written.append(plots.propensity_curves(
                self.results[self.results["layer"] == layer], os.path.join(out, f"propensity_layer{layer}.png"),
                propensity=kind, title=f"Propensity vs steering multiplier: {model}, layer {layer}{norm}"))
            per_example = self.per_example[self.per_example["layer"] == layer]
            written.append(plots.violin_steerability(
                per_example, os.path.join(out, f"steerability_layer{layer}.png"),
                propensity=kind, title=f"Per-example steerability: {model}, layer {layer}{norm}"))
        if len(layers) > 1:
            written.append(plots.layer_sweep_plot(self.steerability, os.path.join(out, "layer_sweep.png"),
                                                  propensity=kind, norms=norms or None,
                                                  title=f"Layer sweep: {model}"))
        return [str(p) for p in written]

    def summary(self) -> dict[str, float | int | str]:
        """Flat headline numbers: ``propensity``, then per dataset ``<d>`` and layer ``<l>``:
        ``<d>/L<l>/steerability``, ``<d>/L<l>/steerability_std``, ``<d>/L<l>/anti_steerable_fraction``
        and ``<d>/L<l>/n``."""
        out: dict[str, float | int | str] = {"propensity": str(self.facts.get("propensity"))}
        for row in self.steerability.itertuples(index=False):
            key = f"{row.dataset}/L{row.layer}"
            out[f"{key}/n"] = int(row.n)
            for stat in ("steerability", "steerability_std", "anti_steerable_fraction"):
                out[f"{key}/{stat}"] = float(getattr(row, stat))
        return out
