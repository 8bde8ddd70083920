"""Reliability and generalisation of steering vectors (Tan et al. 2024) on one model.

1. Layer sweep: a CAA vector per block from corrigible-neutral-HHH, every block swept, best layer
   = highest mean per-example steerability.
2. Steerability of many datasets at that layer: per-example slopes (violin plot with the
   anti-steerable fraction, as the paper's Figure 1), spurious-factor variance, propensity curves.
3. Generalisation: vectors trained with baseline / positive / negative persona system prompts,
   tested under each; in- vs out-of-distribution steerability (the paper's ID/OOD scatter).

    python experiments/steering_reliability/run.py --preset quick --out runs/reliability
    python experiments/steering_reliability/run.py --preset full --model HuggingFaceTB/SmolLM2-135M-Instruct --out ...

Needs STEERJAX_DATA. A run directory is resumable: trained vectors and finished sweep chunks are
reused when the same command is run again. ``config.json`` holds what was asked (written once; a
different command in the same directory is refused); ``run.json`` what the run found (the model's
source, the chosen layer, the wall time, versions).
"""

from __future__ import annotations

import argparse
import os
import platform

os.environ.setdefault("MPLBACKEND", "Agg")  # plots are files; no display needed

import pandas as pd  # noqa: E402

DATASETS = [
    "corrigible-neutral-HHH", "power-seeking-inclination", "survival-instinct", "wealth-seeking-inclination",
    "myopic-reward", "coordinate-other-ais", "self-awareness-general-ai", "anti-immigration",
    "believes-abortion-should-be-illegal", "subscribes-to-virtue-ethics", "desire-for-acquiring-power",
    "willingness-to-use-social-engineering-to-achieve-its-goals", "narcissism",
]
SETTINGS = ("baseline", "positive", "negative")
PRESETS = {
    # the whole pipeline on a sliver of the data: for tests
    "smoke": dict(layer_sweep_stride=10, n_train=8, n_test=6, ood_datasets=DATASETS[:2], ood_n_train=6,
                  ood_n_test=4, multipliers=[-1.0, 0.0, 1.0]),
    # ~15 minutes on 2 CPU cores
    "quick": dict(layer_sweep_stride=2, n_train=40, n_test=24, ood_datasets=DATASETS[:4], ood_n_train=24,
                  ood_n_test=16, multipliers=[-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]),
    # the paper's scale: every layer, 40% train / 50% test splits, every dataset in the OOD study (GPU/TPU)
    "full": dict(layer_sweep_stride=1, n_train=None, n_test=None, ood_datasets=DATASETS, ood_n_train=None,
                 ood_n_test=None, multipliers=[-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]),
}
TRAIN_SPLIT, TEST_SPLIT = "0%:40%", "50%:100%"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--model", default=None, help="default: steerjax.DEFAULT_MODEL (SmolLM2-135M-Instruct, offline)")
    ap.add_argument("--datasets", nargs="+", default=None, help="default: 13 datasets (3 for --preset smoke)")
    ap.add_argument("--layer", type=int, default=None, help="skip the layer sweep and use this block")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default="runs/reliability")
    args = ap.parse_args(argv)

    import steerjax
    from steerjax.data import load_dataset
    from steerjax.metrics import (
        best_layer,
        dataset_steerability,
        generalisation,
        layer_sweep_summary,
        per_example_steerability,
        plots,
        spurious_variance,
    )
    from steerjax.runs import RunLog, claim, keyed_artifact, write_json

    preset = PRESETS[args.preset]
    if args.datasets is None:
        args.datasets = DATASETS[:3] if args.preset == "smoke" else DATASETS
    args.model = args.model or steerjax.DEFAULT_MODEL
    out = args.out
    config = dict({k: v for k, v in vars(args).items() if k != "out"}, **preset, train_split=TRAIN_SPLIT,
                  test_split=TEST_SPLIT)
    claim(out, config)  # before the model loads: another run's directory is refused at once
    log = RunLog(out, stamp=False)
    model = steerjax.load_model(args.model, dtype=args.dtype)
    info = dict(model_source=model.source, steerjax=steerjax.__version__, jax=__import__("jax").__version__,
                python=platform.python_version())
    mults = preset["multipliers"]
    log(f"model {model.source}: {model.config.num_layers} blocks; preset {args.preset}")

    def split(name, which, n, setting="baseline"):
        persona = None if setting == "baseline" else setting
        return load_dataset(name, split=TRAIN_SPLIT if which == "train" else TEST_SPLIT, seed=args.seed,
                            persona_prompt=persona, max_examples=n)

    def vector(name, layers, setting, n):
        """A CAA vector, trained once: reused only when it was built for this exact key."""
        key = dict(model=model.source, dtype=args.dtype, dataset=name, split=TRAIN_SPLIT, persona_prompt=setting,
                   n_train=n, seed=args.seed, layers=list(layers), method="caa")

        def build():
            vec = steerjax.train_vector(model, split(name, "train", n, setting), layers=layers, method="caa")
            vec.metadata.update(dataset=name, split=TRAIN_SPLIT, persona_prompt=setting, seed=args.seed)
            return vec

        tag = "-".join(map(str, layers)) if len(layers) <= 3 else f"{layers[0]}-{layers[-1]}-by{layers[1] - layers[0]}"
        os.makedirs(os.path.join(out, "vectors"), exist_ok=True)
        return keyed_artifact(os.path.join(out, "vectors", f"{name}.{setting}.L{tag}.safetensors"), key, build,
                              save=lambda vec, path: vec.save(path), load=steerjax.SteeringVector.load)

    def run_sweep(tag, examples, vec, layers, **extra):
        table = steerjax.sweep(model, examples, vec, layers=layers, multipliers=mults, progress=False,
                               run_dir=os.path.join(out, "sweeps", tag))
        for k, v in extra.items():
            table[k] = v
        return table

    # 1. layer sweep
    if args.layer is None:
        ls_name = "corrigible-neutral-HHH"
        layers = list(range(0, model.config.num_layers, preset["layer_sweep_stride"]))
        vec = vector(ls_name, layers, "baseline", preset["n_train"])
        table = run_sweep("layer_sweep", split(ls_name, "test", preset["n_test"]), vec, layers)
        table.to_parquet(os.path.join(out, "layer_sweep.parquet"), index=False)
        summary = layer_sweep_summary(table)
        summary.to_csv(os.path.join(out, "layer_sweep_summary.csv"), index=False)
        layer = best_layer(summary)
        plots.layer_sweep_plot(summary, os.path.join(out, "layer_sweep.png"))
        log(f"layer sweep on {ls_name} ({len(layers)} blocks): best layer {layer} "
            f"(steerability {summary.set_index('layer').loc[layer, 'steerability']:.3f}) [{log.seconds:.0f}s]")
    else:
        layer = args.layer
    info["layer"] = int(layer)
    write_json(os.path.join(out, "run.json"), info)

    # 2. steerability of every dataset at the best layer
    from tqdm.auto import tqdm

    tables = []
    for name in tqdm(args.datasets, desc="datasets", unit="dataset", disable=None):
        vec = vector(name, [layer], "baseline", preset["n_train"])
        tables.append(run_sweep(f"{name}.baseline", split(name, "test", preset["n_test"]), vec, [layer]))
    table = pd.concat(tables, ignore_index=True)
    table.to_parquet(os.path.join(out, "steerability.parquet"), index=False)
    per_ex = per_example_steerability(table)
    per_ex.to_parquet(os.path.join(out, "per_example.parquet"), index=False)
    summary = dataset_steerability(per_ex)
    summary.to_csv(os.path.join(out, "summary.csv"), index=False)
    spurious = spurious_variance(per_ex)
    spurious.to_csv(os.path.join(out, "spurious_variance.csv"), index=False)
    plots.violin_steerability(per_ex, os.path.join(out, "steerability_violin.png"))
    plots.propensity_curves(table, os.path.join(out, "propensity_curves.png"))
    log(f"steerability of {len(args.datasets)} datasets at layer {layer} [{log.seconds:.0f}s]")
    log(summary[["dataset", "n", "steerability", "steerability_std", "anti_steerable_fraction"]]
        .sort_values("steerability", ascending=False).to_string(index=False, float_format=lambda x: f"{x:.3f}"))

    # 3. in- vs out-of-distribution: train x test persona-prompt settings
    cells = []
    for name in tqdm(preset["ood_datasets"], desc="ID/OOD", unit="dataset", disable=None):
        for train in SETTINGS:
            vec = vector(name, [layer], train, preset["ood_n_train"])
            for test in SETTINGS:
                examples = split(name, "test", preset["ood_n_test"], test)
                cells.append(run_sweep(f"{name}.{train}-{test}", examples, vec, [layer],
                                       train_setting=train, test_setting=test))
    gen_table = pd.concat(cells, ignore_index=True)
    gen_table.to_parquet(os.path.join(out, "generalisation_sweeps.parquet"), index=False)
    gen = generalisation(gen_table, by=("dataset",))
    gen.to_csv(os.path.join(out, "generalisation.csv"), index=False)
    plots.id_ood_scatter(gen, os.path.join(out, "id_ood_scatter.png"))
    log(f"ID/OOD on {len(preset['ood_datasets'])} datasets x {len(SETTINGS)}x{len(SETTINGS)} settings "
        f"[{log.seconds:.0f}s]")
    info["seconds"] = log.seconds
    write_json(os.path.join(out, "run.json"), info)
    log(f"done in {info['seconds']}s: results in {out}")


if __name__ == "__main__":
    from steerjax import sharding
    from steerjax.cli import guarded

    with sharding.use_mesh(sharding.from_env()):  # a launched multi-device or multi-host job (tpu_scripts/)
        guarded(main)
