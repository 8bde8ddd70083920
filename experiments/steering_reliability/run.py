"""Reliability and generalisation of steering vectors as Tan et al. (2024) ran it, on one or more models.

The protocol is the paper's code (``dtch1997/repepo``, ``persona_generalization.py``) by default:
``--format repepo`` (its chat formatting, persona placement, steering from the last prompt token,
raw-logit propensity, every vector rescaled to the baseline vector's norm), train on the first
half of each dataset and test on the second, multipliers -1.5 .. 1.5. Per model:

1. Layer sweep (skipped with ``--layer``): a vector per block from the paper's layer-sweep splits
   (train 0-10%, evaluated on 20-30%: disjoint from the test half); best layer = highest mean
   per-example steerability.
2. Per dataset, five vectors (baseline, SYS_positive, PT_positive, SYS_negative, PT_negative:
   trained with the persona prompt as system message (SYS) or user-prompt prefix (PT)) and their
   mean, each evaluated under the five settings of the test half: a 6 x 5 matrix of sweeps.
3. Analyses, as tables and figures in the run directory: propensity curves, per-example
   steerability (violins with the anti-steerable fraction, bootstrap 95% intervals), spurious
   factors, the ID/OOD scatter per distribution shift, the train x test matrix, relative
   steerability against the unsteered-propensity gap, mean against variance, and (with two or
   more ``--model``) the cross-model comparison.

    python experiments/steering_reliability/run.py --preset quick --out runs/reliability
    python experiments/steering_reliability/run.py --preset full --model A --model B --out runs/reliability-full

Reads its data from STEERJAX_DATA, else downloads it on first use (pinned, verified; see the
README). A run directory is resumable: trained vectors and finished sweep chunks are
reused when the same command is run again. ``config.json`` holds what was asked (written once; a
different command in the same directory is refused); ``run.json`` what the run found (each
model's source and chosen layer, the wall time, versions).
"""

from __future__ import annotations

import argparse
import os
import platform
import re

os.environ.setdefault("MPLBACKEND", "Agg")  # plots are files; no display needed

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from steerjax.data import formats as fmts  # noqa: E402
from steerjax.data import paper  # noqa: E402

SETTINGS = fmts.SETTINGS  # baseline, SYS_positive, PT_positive, SYS_negative, PT_negative
VECTORS = SETTINGS + ("mean",)
PAPER_MULTIPLIERS = [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
PRESETS = {
    # the whole pipeline on a sliver of the data: for tests
    "smoke": dict(layer_sweep_datasets=["corrigible-neutral-HHH"], layer_sweep_stride=10, layer_n_train=8,
                  layer_n_test=6, datasets=["corrigible-neutral-HHH", "believes-abortion-should-be-illegal"],
                  n_train=8, n_test=6, multipliers=[-1.0, 0.0, 1.0], n_boot=200),
    # about 15 minutes on 2 CPU cores with SmolLM2-135M: two x-risk and two persona datasets
    "quick": dict(layer_sweep_datasets=["corrigible-neutral-HHH"], layer_sweep_stride=2, layer_n_train=24,
                  layer_n_test=16, datasets=["corrigible-neutral-HHH", "power-seeking-inclination",
                                             "believes-abortion-should-be-illegal", "subscribes-to-Hinduism"],
                  n_train=40, n_test=16, multipliers=PAPER_MULTIPLIERS, n_boot=1000),
    # the paper's scale: the 37 of its 40 datasets we hold, whole splits, every block (GPU/TPU)
    "full": dict(layer_sweep_datasets=list(paper.TAN_LAYER_SWEEP), layer_sweep_stride=1, layer_n_train=None,
                 layer_n_test=None, datasets=list(paper.TAN_MWE), n_train=None, n_test=None,
                 multipliers=PAPER_MULTIPLIERS, n_boot=1000),
}


def model_slug(source: str) -> str:
    """A directory name for a model: the last part of its id or path (without a weights file's
    extension), with safe characters."""
    name = os.path.basename(os.path.normpath(str(source))) or str(source)
    name = re.sub(r"\.(gguf|safetensors)$", "", name)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Protocol elements and their sources: README, 'Steering reliability' table.")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--model", action="append", default=None,
                    help="a model id or path; repeat for the cross-model comparison "
                         "(default: steerjax.DEFAULT_MODEL, SmolLM2-135M-Instruct, offline)")
    ap.add_argument("--datasets", nargs="+", default=None, help="default: the preset's (full: the paper's 37 MWE sets)")
    ap.add_argument("--format", choices=sorted(fmts.FORMATS), default="repepo",
                    help="prompt format and protocol (default: repepo, the paper's code)")
    ap.add_argument("--split-compat", choices=["repepo"], default=None,
                    help="draw exactly the reference's examples: repepo's shuffle and split strings "
                         "(its test split '50:100%%' overlaps the training half: see the README)")
    ap.add_argument("--layer", type=int, default=None, help="skip the layer sweep and use this block (every model)")
    ap.add_argument("--multipliers", type=float, nargs="+", default=None, help="default: the preset's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default="runs/reliability")
    return ap.parse_args(argv)


def check_inputs(args, preset):
    """Every input that can be checked without a model: datasets, persona prompts, splits, models.

    Raises DataError / SteerjaxError (exit status 2 through the CLI guard) before any model loads.
    """
    from steerjax.data import load_dataset, persona_prompts
    from steerjax.errors import DataError, SteerjaxError

    slugs = [model_slug(m) for m in args.model]
    dupes = sorted({m for m in args.model if args.model.count(m) > 1})
    if dupes:
        raise SteerjaxError(f"--model {dupes[0]!r} is given twice: give each model once")
    if len(set(slugs)) != len(slugs):
        raise SteerjaxError(f"two --model values share the directory name in {slugs}: rename or copy one")
    if preset["multipliers"] and 0.0 not in preset["multipliers"]:
        raise SteerjaxError("--multipliers must include 0: the unsteered propensity is part of the analyses")
    if len(set(preset["multipliers"])) < 2:
        raise SteerjaxError("--multipliers needs at least two different values to fit a slope")
    for name in args.datasets:
        if name in paper.TAN_UNAVAILABLE:
            raise DataError(paper.unavailable_message(name))
        persona_prompts(name)  # every dataset is run under the five persona settings
    splits = paper.REPEPO_COMPAT_SPLITS if args.split_compat else paper.PAPER_SPLITS
    for name in args.datasets:
        for part in ("train", "test"):
            load_dataset(name, split=splits[part], seed=args.seed, format=args.format, split_compat=args.split_compat,
                         max_examples=1)
    if args.layer is None:
        for name in preset["layer_sweep_datasets"]:
            for part in ("train", "test"):
                load_dataset(name, split=paper.LAYER_SWEEP_SPLITS[part], seed=args.seed, format=args.format,
                             split_compat=args.split_compat, max_examples=1)
    from steerjax.model import load_config

    for m in args.model:  # a typo fails here, not after the first model's hour of work
        load_config(m)
    return splits


def main(argv=None):
    args = parse_args(argv)
    import steerjax
    from steerjax.data import load_dataset
    from steerjax.errors import SteerjaxError
    from steerjax.runs import RunLog, claim, keyed_artifact, write_json
    from steerjax.studies.reliability import (
        best_layer,
        bootstrap_ci,
        compare_models,
        generalisation,
        id_ood_shifts,
        layer_sweep_summary,
        mean_variance,
        per_example_steerability,
        plots,
        relative_steerability,
        relative_steerability_correlation,
        shift_correlations,
        spurious_variance,
    )

    preset = dict(PRESETS[args.preset])
    if args.multipliers is not None:
        preset["multipliers"] = sorted(set(args.multipliers))
    args.model = args.model or [steerjax.DEFAULT_MODEL]
    args.datasets = args.datasets or list(preset["datasets"])
    fmt = fmts.get_format(args.format)
    splits = check_inputs(args, preset)
    out = args.out
    config = dict({k: v for k, v in vars(args).items() if k != "out"}, **preset, splits=splits,
                  layer_sweep_splits=paper.LAYER_SWEEP_SPLITS)
    claim(out, config)  # before any model loads: another run's directory is refused at once
    log = RunLog(out, stamp=False)
    info = dict(steerjax=steerjax.__version__, jax=__import__("jax").__version__, python=platform.python_version(),
                models={})
    mults = preset["multipliers"]
    from tqdm.auto import tqdm

    def load(name, split, n, setting="baseline"):
        return load_dataset(name, split=split, seed=args.seed, setting=setting, format=fmt,
                            split_compat=args.split_compat, max_examples=n)

    def vector(model, mdir, name, split, n, setting, layers):
        """A CAA vector, trained once: reused only when it was built for this exact key."""
        key = dict(model=model.source, dtype=args.dtype, dataset=name, split=split, split_compat=args.split_compat,
                   format=fmt.name, setting=setting, n_train=n, seed=args.seed, layers=list(layers), method="caa",
                   token_index=fmt.token_index)

        def build():
            vec = steerjax.train_vector(model, load(name, split, n, setting), layers=layers, method="caa",
                                        token_index=fmt.token_index, progress=False)
            vec.metadata.update(dataset=name, split=split, setting=setting, prompt_format=fmt.name, seed=args.seed)
            return vec

        tag = "-".join(map(str, layers)) if len(layers) <= 3 else f"{layers[0]}-{layers[-1]}-by{layers[1] - layers[0]}"
        os.makedirs(os.path.join(mdir, "vectors"), exist_ok=True)
        return keyed_artifact(os.path.join(mdir, "vectors", f"{name}.{setting}.L{tag}.safetensors"), key, build,
                              save=lambda vec, path: vec.save(path), load=steerjax.SteeringVector.load)

    def run_sweep(model, mdir, tag, examples, vecs, layers):
        return steerjax.sweep(model, examples, vecs, layers=layers, multipliers=mults, positions=fmt.steer_from,
                              propensity=fmt.propensity, progress=False, run_dir=os.path.join(mdir, "sweeps", tag))

    tables = []
    for source in args.model:
        slug = model_slug(source)
        mdir = os.path.join(out, slug)
        os.makedirs(mdir, exist_ok=True)
        model = steerjax.load_model(source, dtype=args.dtype)
        log(f"model {model.source}: {model.config.num_layers} blocks; preset {args.preset}, format {fmt.name}")

        # 1. layer sweep on the paper's layer-sweep splits (disjoint from the test half)
        if args.layer is None:
            layers = list(range(0, model.config.num_layers, preset["layer_sweep_stride"]))
            parts = []
            for name in preset["layer_sweep_datasets"]:
                vec = vector(model, mdir, name, paper.LAYER_SWEEP_SPLITS["train"], preset["layer_n_train"],
                             "baseline", layers)
                test = load(name, paper.LAYER_SWEEP_SPLITS["test"], preset["layer_n_test"])
                parts.append(run_sweep(model, mdir, f"layer_sweep.{name}", test, vec, layers))
            sweep_table = pd.concat(parts, ignore_index=True)
            sweep_table.to_parquet(os.path.join(mdir, "layer_sweep.parquet"), index=False)
            summary = layer_sweep_summary(sweep_table)
            summary.to_csv(os.path.join(mdir, "layer_sweep_summary.csv"), index=False)
            layer = best_layer(summary)
            plots.layer_sweep_plot(summary, os.path.join(mdir, "layer_sweep.png"), title=f"Layer sweep: {slug}")
            log(f"layer sweep ({len(layers)} blocks, {len(parts)} dataset(s)): best layer {layer} "
                f"(steerability {summary.set_index('layer').loc[layer, 'steerability']:.3f}) [{log.seconds:.0f}s]")
        else:
            layer = args.layer
        info["models"][slug] = dict(source=str(model.source), layer=int(layer), num_layers=model.config.num_layers)
        write_json(os.path.join(out, "run.json"), info)

        # 2. five vectors (+ their mean) per dataset, each evaluated under the five settings
        cells = []
        for name in tqdm(args.datasets, desc=f"datasets ({slug})", unit="dataset", disable=None):
            raw = {s: vector(model, mdir, name, splits["train"], preset["n_train"], s, [layer]).vectors[layer]
                   for s in SETTINGS}
            vecs = dict(raw, mean=np.mean(np.stack([raw[s] for s in SETTINGS]), axis=0))  # mean before rescaling
            if fmt.rescale_to_baseline:  # repepo: every vector to the baseline vector's norm
                norms = {k: float(np.linalg.norm(v)) for k, v in vecs.items()}
                zero = sorted(k for k, n in norms.items() if not n > 0)
                if zero:  # rescaling would divide by zero: NaN vectors and a table of NaN, silently
                    raise SteerjaxError(f"{name}: the {', '.join(zero)} vector(s) are zero at block {layer} "
                                        "(positive and negative activations coincide); use another --layer or "
                                        "more training examples")
                vecs = {k: v * (norms["baseline"] / norms[k]) for k, v in vecs.items()}
            vecs = {k: {layer: v} for k, v in vecs.items()}
            for test in SETTINGS:
                examples = load(name, splits["test"], preset["n_test"], test)
                t = run_sweep(model, mdir, f"{name}.{test}", examples, vecs, [layer])
                cells.append(t.rename(columns={"vector": "train_setting"}).assign(test_setting=test))
        table = pd.concat(cells, ignore_index=True).assign(model=slug)
        table.to_parquet(os.path.join(mdir, "sweeps.parquet"), index=False)
        tables.append(table)
        log(f"{len(args.datasets)} datasets x {len(VECTORS)} vectors x {len(SETTINGS)} settings at layer {layer} "
            f"[{log.seconds:.0f}s]")
        del model

    # 3. analyses over every model
    table = pd.concat(tables, ignore_index=True)
    table.to_parquet(os.path.join(out, "sweeps.parquet"), index=False)
    keys = ("model", "dataset", "layer", "train_setting", "test_setting")
    per_ex = per_example_steerability(table, by=keys)
    per_ex.to_parquet(os.path.join(out, "per_example.parquet"), index=False)
    base = per_ex[(per_ex.train_setting == "baseline") & (per_ex.test_setting == "baseline")]
    summary = bootstrap_ci(base, by=("model", "dataset", "layer"), n_boot=preset["n_boot"], seed=args.seed)
    summary.to_csv(os.path.join(out, "summary.csv"), index=False)
    spurious = spurious_variance(base, by=("model", "dataset", "layer"))
    spurious.to_csv(os.path.join(out, "spurious_variance.csv"), index=False)
    gen = generalisation(table, by=("model", "dataset", "layer"))
    gen.to_csv(os.path.join(out, "generalisation.csv"), index=False)
    shifts = id_ood_shifts(per_ex, by=("dataset",))
    shifts.to_csv(os.path.join(out, "id_ood_shifts.csv"), index=False)
    shift_correlations(shifts).to_csv(os.path.join(out, "shift_correlations.csv"), index=False)
    rel = relative_steerability(table)
    rel.to_csv(os.path.join(out, "relative_steerability.csv"), index=False)
    relative_steerability_correlation(rel).to_csv(os.path.join(out, "relative_steerability_correlation.csv"),
                                                  index=False)
    mv = mean_variance(per_ex)
    mv.to_csv(os.path.join(out, "mean_variance.csv"), index=False)

    slugs = list(dict.fromkeys(table.model))
    for slug in slugs:
        mdir = os.path.join(out, slug)
        m_table, m_per_ex = table[table.model == slug], base[base.model == slug]
        cell = (m_table.train_setting == "baseline") & (m_table.test_setting == "baseline")
        plots.propensity_curves(m_table[cell].drop(columns=["model", "train_setting", "test_setting"]),
                                os.path.join(mdir, "propensity_curves.png"))
        plots.violin_steerability(m_per_ex.drop(columns=["model", "train_setting", "test_setting"]),
                                  os.path.join(mdir, "steerability_violin.png"))
        plots.spurious_variance_plot(spurious[spurious.model == slug], os.path.join(mdir, "spurious_variance.png"),
                                     title=f"Spurious factors: variance of steerability they explain ({slug})")
        plots.steerability_ci_plot(summary[summary.model == slug], os.path.join(mdir, "steerability_ci.png"),
                                   title=f"Steerability with 95% bootstrap intervals: {slug}")
        plots.generalisation_heatmap(gen[gen.model == slug].drop(columns="model"),
                                     os.path.join(mdir, "generalisation_matrix.png"), value="steerability",
                                     title=f"Steerability, vector setting x test setting: {slug}")
        plots.relative_steerability_plot(rel[rel.model == slug], os.path.join(mdir, "relative_steerability.png"))
    plots.shift_scatter(shifts, os.path.join(out, "id_ood_shifts.png"))
    plots.mean_variance_plot(mv, os.path.join(out, "mean_variance.png"))
    if len(slugs) >= 2:
        for label, shift in (("id", "BASE -> BASE"), ("ood", "SYS_POS -> USER_NEG")):
            comparison = compare_models(per_ex, shift=shift)
            comparison.table.to_csv(os.path.join(out, f"model_comparison_{label}.csv"), index=False)
            comparison.correlations.to_csv(os.path.join(out, f"model_comparison_{label}_correlations.csv"),
                                           index=False)
            plots.model_comparison_plot(comparison, os.path.join(out, f"model_comparison_{label}.png"),
                                        title=f"Steerability across models: {shift}")
    log(summary[["model", "dataset", "n", "steerability", "steerability_lo", "steerability_hi",
                 "anti_steerable_fraction"]].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    info["seconds"] = log.seconds
    write_json(os.path.join(out, "run.json"), info)
    log(f"done in {info['seconds']}s: results in {out}")


if __name__ == "__main__":
    from steerjax import sharding
    from steerjax.cli import guarded

    with sharding.use_mesh(sharding.from_env()):  # a launched multi-device or multi-host job (tpu_scripts/)
        guarded(main)
