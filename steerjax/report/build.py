"""Run a report: the three studies on the same concepts (run, resumed or reused), their summaries
side by side, correlations across concepts, figures, ``report.json`` and ``report.html``.

Resuming: ``OUT/config.json`` holds the model and the options (not the concepts), and each study's
summary is kept in ``OUT/summaries/`` keyed by everything that made it (the study's options, the
model, the concepts). A finished study is read back from its summary without loading the model;
an unfinished one resumes in its own run directory; so a killed report, rerun, finishes with the
same ``report.json`` (but its wall time), and a rerun with another concept list reuses every
per-concept study it holds.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from steerjax import model as model_lib
from steerjax.data import manifest
from steerjax.report import figures as report_figures
from steerjax.report.config import LAYER_SWEEP, STUDIES, TITLES, Config, Plan, check
from steerjax.report.page import render
from steerjax.report.stats import spearman_ci
from steerjax.runs import RunLog, atomic_write, claim, keyed_artifact
from steerjax.studies import prompt_steerability, reliability, steerability_prediction
from steerjax.studies.prompt_steerability import config as prompt_config
from steerjax.studies.reliability import config as reliability_config
from steerjax.studies.steerability_prediction import config as prediction_config
from steerjax.studies.steerability_prediction.study import SUMMARY as PREDICTION_SUMMARY
from steerjax.version import __version__

SCHEMA = 2  # the summaries' and report.json's layout; a change rebuilds the summaries
SUMMARIES = "summaries"
FIGURES = "figures"
#: the data sources the studies read (steerjax.data.manifest names)
DATA_SOURCES = {"anthropic-evals": "Anthropic persona datasets (Tan et al., Fan et al.)",
                "prompt-steering": "persona statements and profiling questions (Miehling et al.)",
                "steering-bench": "persona prompts of the ID/OOD settings (Tan et al.)"}
PACKAGES = ("jax", "flax", "numpy", "pandas", "catboost", "ott-jax", "transformers")
#: the quantities correlated across concepts: (measure id, column key, label)
CORRELATED = (("prompt", "gamma_pos", "prompt steerability γ+"),
              ("activation", "steerability", "activation steerability"),
              ("strength", "best_success_rate", "best success rate"),
              ("strength", "best_strength", "smallest best strength"))


@dataclasses.dataclass
class Report:
    """A finished report: its JSON document (:attr:`doc`, as ``report.json``) and where it is."""

    doc: dict[str, Any]
    out: str

    @property
    def html(self) -> str:
        return os.path.join(self.out, "report.html")

    @classmethod
    def load(cls, out: str) -> Report:
        with open(os.path.join(out, "report.json")) as f:
            return cls(json.load(f), out)


def run(model: Any, config: Config, out: str, *, mesh=None, progress: bool = True, command: str | None = None,
        sources: Mapping[str, set[str]] | None = None) -> Report:
    """Run (or resume, or reuse) the report in ``out``.

    Args:
      model: a model source (its config is read and checked first; the weights load only when a
        study has work left) or a loaded :class:`steerjax.LanguageModel`.
      config: the options (:class:`~steerjax.report.config.Config`).
      out: the report's directory.
      mesh: a device mesh for the studies.
      progress: a line per stage (counts, elapsed, ETA; on a terminal or not) and the studies' own
        progress.
      command: the command line to record (default: none).

    Returns:
      The :class:`Report`; ``out`` holds ``report.json``, ``report.html``, ``figures/`` and the
      studies' run directories.

    Raises:
      SteerjaxError: a bad input (:func:`~steerjax.report.config.check`), before any model loads.
    """
    start = time.time()
    header = model_lib.load_config(model) if isinstance(model, str) else model
    source = str(header.source)
    the_plan = check(config, model_header=header if isinstance(model, str) else _Header(model), out=out,
                     sources=sources)
    claim(out, config.run_config(source))
    log = RunLog(out, stamp=False) if progress else _quiet(out)
    loaded: dict[str, Any] = {} if isinstance(model, str) else {"lm": model}

    def lm():
        if "lm" not in loaded:
            log(f"loading {source} ...")
            loaded["lm"] = model_lib.load_model(model, dtype=config.dtype, mesh=mesh)
        return loaded["lm"]

    summaries: dict[tuple[str, str], dict[str, Any]] = {}
    timer = _Eta(the_plan)
    log(f"report on {source}: {len(the_plan.concepts)} concepts, {len(the_plan.units)} studies "
        f"(preset {config.preset})")
    for note in the_plan.skipped:
        log(f"left out: {note}")
    for i, (study, concepts, where) in enumerate(the_plan.units):
        label = f"{TITLES[study]}: {', '.join(concepts) if len(concepts) <= 3 else f'{len(concepts)} concepts'}"
        log(f"[{i + 1}/{len(the_plan.units)}] {label} {timer.eta_text(i)}")
        t0 = time.time()
        built: dict[str, bool] = {}

        def build(study=study, concepts=concepts, where=where, built=built):
            built["yes"] = True
            return _run_study(study, concepts, os.path.join(out, where), config, lm, out, mesh, progress)

        key = {"schema": SCHEMA, "study": study, "model": source, "concepts": list(concepts),
               "options": _options(config, study, concepts), "steerjax": __version__}
        path = os.path.join(out, SUMMARIES, where.replace(os.sep, "__") + ".json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        summaries[(study, where)] = keyed_artifact(path, key, build, save=_save_json, load=_load_json)
        timer.done(i, time.time() - t0, reused="yes" not in built)
        if "yes" not in built:
            log(f"[{i + 1}/{len(the_plan.units)}] reused: {where} holds this study")
    doc = assemble(the_plan, summaries, config, header, source, out)
    # the facts of this invocation (a resumed report differs from an uninterrupted one only here)
    doc["command"] = command
    doc["seconds"] = round(time.time() - start, 1)
    doc["reused"] = timer.reused
    # in the document's order (rows in the order asked), not write_json's sorted keys
    atomic_write(os.path.join(out, "report.json"), json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    atomic_write(os.path.join(out, "report.html"), render(doc, os.path.join(out, FIGURES)))
    log(f"done in {doc['seconds']}s: {os.path.join(out, 'report.html')}")
    return Report(doc, out)


class _Header:
    """A loaded model seen as a model header (for the checks)."""

    def __init__(self, lm):
        self.config, self.source = lm.config, lm.source
        tok = getattr(lm, "tokenizer", None)
        self.tokenizer = tok is not None
        self.chat_template = bool(getattr(tok, "chat_template", None))


def _quiet(out: str) -> Callable[[str], None]:
    path = os.path.join(out, "log.txt")

    def write(msg: str) -> None:
        with open(path, "a") as f:
            f.write(msg + "\n")
    return write


class _Eta:
    """The ETA of the stages left: each study's mean time per stage so far (reused ones excluded),
    the mean of all studies' for a study not timed yet."""

    def __init__(self, the_plan: Plan):
        self.kinds = [u[0] for u in the_plan.units]
        self.times: dict[str, list[float]] = {}
        self.reused = 0

    def done(self, i: int, seconds: float, reused: bool) -> None:
        self.reused += reused
        if not reused:
            self.times.setdefault(self.kinds[i], []).append(seconds)

    def eta_text(self, i: int) -> str:
        if not self.times:
            return ""
        every = [t for ts in self.times.values() for t in ts]
        mean = {k: sum(ts) / len(ts) for k, ts in self.times.items()}
        left = sum(mean.get(k, sum(every) / len(every)) for k in self.kinds[i:])
        return f"(ETA {_duration(left)})"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _save_json(value: Any, path: str) -> None:
    with open(path, "w") as f:
        json.dump(_plain(value), f, indent=1, sort_keys=True)


def _load_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _plain(value: Any) -> Any:
    """JSON's view: NaN and infinities as None, numpy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _options(config: Config, study: str, concepts: Sequence[str]) -> Any:
    cfg = {"prompt_steerability": lambda: config.prompt_config(concepts[0]),
           "reliability": lambda: config.reliability_config(concepts[0]),
           "steerability_prediction": lambda: config.prediction_config(concepts)}[study]()
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str, sort_keys=True))


def _run_study(study: str, concepts: Sequence[str], where: str, config: Config, lm: Callable[[], Any], out: str,
               mesh, progress: bool) -> dict[str, Any]:
    """One study's summary: its run directory's finished result read back, after running (or
    resuming) it there unless it is finished (the checks made sure it holds this study's config).
    Always read back, so a summary is the same whether the study ran now or earlier."""
    if study == "prompt_steerability":
        if not _finished(os.path.join(where, "run.json"), "seconds"):
            prompt_steerability.run(lm(), config.prompt_config(concepts[0]), where, mesh=mesh, progress=progress)
        return prompt_steerability.Result.load(where).summary()
    if study == "reliability":
        if not _finished(os.path.join(where, "run.json"), "seconds"):
            reliability.run(lm(), config.reliability_config(concepts[0]), where, mesh=mesh, progress=progress,
                            layer_sweep_dir=os.path.join(out, "reliability", LAYER_SWEEP))
        return reliability.Result.load(where).summary()
    if not _finished(os.path.join(where, PREDICTION_SUMMARY), "wall_seconds"):
        steerability_prediction.run(lm(), config.prediction_config(concepts), where, mesh=mesh, progress=progress)
    return steerability_prediction.Result.load(where).summary()


def _finished(path: str, key: str) -> bool:
    """Whether the JSON file at ``path`` exists and holds ``key`` (what a study writes last)."""
    try:
        with open(path) as f:
            return key in json.load(f)
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- the document


def _cell(s: Mapping[str, Any], key: str, *, lo: str = "_lo", hi: str = "_hi") -> dict[str, Any]:
    return {"value": s.get(key), "lo": s.get(key + lo), "hi": s.get(key + hi)}


def assemble(the_plan: Plan, summaries: Mapping[tuple[str, str], Mapping[str, Any]], config: Config, header,
             source: str, out: str) -> dict[str, Any]:
    """The report's JSON document (:mod:`steerjax.report.page` describes its shape) from the
    studies' summaries; draws the figures into ``out/figures``."""
    by_study: dict[str, list[tuple[tuple[str, ...], str, Mapping[str, Any]]]] = {s: [] for s in STUDIES}
    for study, concepts, where in the_plan.units:
        by_study[study].append((concepts, where, _plain(summaries[(study, where)])))
    concepts = the_plan.concepts
    measures = []

    # prompt steerability: one study per concept
    rows: dict[str, dict[str, Any]] = {}
    budget = None
    for (c,), _, s in by_study["prompt_steerability"]:
        budget = s.get("budget")
        rows[c] = {"gamma_pos": _cell(s, f"{c}/gamma_pos"), "gamma_neg": _cell(s, f"{c}/gamma_neg"),
                   "asymmetry": s.get(f"{c}/asymmetry"), "base_mean": s.get(f"{c}/base_mean")}
    measures.append({
        "id": "prompt", "title": TITLES["prompt_steerability"],
        "paper": "How far persona statements in the system prompt move the model's yes/no answers about that "
                 "persona, as a share of the Wasserstein distance between the base profile and the extreme one "
                 f"(steering budget k = {budget} statements).",
        "columns": [
            {"key": "gamma_pos", "label": "γ+", "help": "steerability index toward the persona at the largest budget "
             "(0: no movement, 1: the extreme profile), mean over benchmark trials; interval: mean ± their std"},
            {"key": "gamma_neg", "label": "γ−", "help": "the same, steered away from the persona (the reference's "
             "sign: positive is movement toward the negative extreme)"},
            {"key": "asymmetry", "label": "γ+ − γ−", "help": "positive: easier to steer toward the persona"},
            {"key": "base_mean", "label": "base p(match)", "help": "the unsteered profile's mean probability of "
             "answering as the persona would"}],
        "rows": {c: rows[c] for c in concepts if c in rows}})

    # activation steerability: one study per concept, one shared layer sweep
    rows = {}
    for (c,), _, s in by_study["reliability"]:
        rows[c] = {"layer": s.get("layer"), "n": s.get(f"{c}/n"), "steerability": _cell(s, f"{c}/steerability"),
                   "anti_steerable_fraction": _cell(s, f"{c}/anti_steerable_fraction"),
                   "spurious_share": s.get(f"{c}/spurious_share"), "shift_system": s.get(f"{c}/shift_system"),
                   "shift_user": s.get(f"{c}/shift_user")}
    measures.append({
        "id": "activation", "title": TITLES["reliability"],
        "paper": "A contrastive (CAA) vector from the training half, added at the block the layer sweep chose, "
                 "multipliers swept on the test half: per-example slopes of the logit difference.",
        "columns": [
            {"key": "layer", "label": "block", "help": "the steered block, chosen by the layer sweep on the paper's "
             "layer-sweep split (shared by every concept)"},
            {"key": "n", "label": "test examples", "help": "examples of the test half"},
            {"key": "steerability", "label": "steerability", "help": "mean per-example slope of the propensity "
             "(logit+ − logit−) per unit multiplier; 95% bootstrap interval over examples"},
            {"key": "anti_steerable_fraction", "label": "anti-steerable", "help": "share of examples whose slope "
             "is negative (steering moves them the wrong way); 95% bootstrap interval"},
            {"key": "spurious_share", "label": "spurious R²", "help": "share of the per-example steerability "
             "variance explained by the answer letter and yes/no (spurious factors)"},
            {"key": "shift_system", "label": "OOD shift, system", "help": "mean steerability with the persona "
             "prompt in the system message minus in-distribution (same vector)"},
            {"key": "shift_user", "label": "OOD shift, user", "help": "the same with the persona prompt in the user "
             "message"}],
        "rows": {c: rows[c] for c in concepts if c in rows}})

    # steering strength: one study of the set
    rows, strengths, overall, pred_where, guided = {}, [], {}, None, None
    for cs, where, s in by_study["steerability_prediction"]:
        pred_where = where
        strengths = sorted({float(k.split("@", 1)[1]) for k in s if "/success_rate@" in k
                            and not k.endswith(("_lo", "_hi"))})
        for c in cs:
            row = {f"success@{g:g}": _cell(s, f"{c}/success_rate@{g:g}") for g in strengths}
            row |= {"best_strength": s.get(f"{c}/best_strength"),
                    "best_success_rate": _cell(s, f"{c}/best_success_rate"),
                    "predictor_macro_f1": _cell(s, f"{c}/predictor_macro_f1"),
                    "guided_success_vs_sweep": _cell(s, f"{c}/guided_success_vs_sweep"),
                    "guided_tokens_vs_sweep": _cell(s, f"{c}/guided_tokens_vs_sweep")}
            rows[c] = row
        overall = {"predictor_macro_f1": _cell(s, "predictor_macro_f1"),
                   "guided_success_vs_sweep": _cell(s, "guided_success_vs_sweep"),
                   "guided_tokens_vs_sweep": _cell(s, "guided_tokens_vs_sweep"), "best_success_rate": None,
                   "best_strength": None} | {f"success@{g:g}": None for g in strengths}
        guided = s.get("guided_setting")
    strength_rows = {c: rows[c] for c in concepts if c in rows}
    if strength_rows:
        strength_rows["all concepts"] = overall
    measures.append({
        "id": "strength", "title": TITLES["steerability_prediction"],
        "paper": "Rollouts steered at each strength (a fraction of the residual norm) with the concept's "
                 "mean-difference vector, judged under-steer / success / over-steer; a predictor of the label from "
                 "the first decoding steps, evaluated on held-out concepts; predictor-guided search for the strength.",
        "columns": [
            *({"key": f"success@{g:g}", "label": f"success @ {g:g}",
               "help": "share of rollouts judged a success at this strength; 95% Wilson interval"}
              if i == 0 else {"key": f"success@{g:g}", "label": f"success @ {g:g}"} for i, g in enumerate(strengths)),
            {"key": "best_strength", "label": "best strength", "help": "the smallest strength with the highest "
             "success rate"},
            {"key": "best_success_rate", "label": "best success", "help": "the success rate there; 95% Wilson "
             "interval"},
            {"key": "predictor_macro_f1", "label": "predictor macro-F1", "help": "the predictor's macro-F1 on the "
             "concept's rollouts with the concept held out (concept-grouped cross-validation), 95% bootstrap "
             "interval over the concept's prompts; row 'all concepts': over every concept, interval over concepts"},
            {"key": "guided_success_vs_sweep", "label": "guided success ÷ sweep",
             "help": f"guided search ({guided or 'n/a'}) success relative to trying every "
                     "strength; 95% bootstrap interval over the concept's prompts ('all concepts': over concepts)"},
            {"key": "guided_tokens_vs_sweep", "label": "guided tokens ÷ sweep",
             "help": "tokens generated by the guided search relative to the full sweep (lower is cheaper)"}],
        "rows": strength_rows})

    values = {m["id"]: m["rows"] for m in measures}

    def column(measure: str, key: str) -> list[float]:
        out_ = []
        for c in concepts:
            cell = values[measure].get(c, {}).get(key)
            v = cell.get("value") if isinstance(cell, Mapping) else cell
            out_.append(float("nan") if v is None else float(v))
        return out_

    correlations = []
    for i, (ma, ka, la) in enumerate(CORRELATED):
        for mb, kb, lb in CORRELATED[i + 1:]:
            if ma == mb:
                continue
            r = spearman_ci(column(ma, ka), column(mb, kb), n_boot=config.n_boot, seed=config.seed)
            correlations.append({"x": la, "y": lb, **{k: r[k] for k in ("n", "rho", "lo", "hi")}})

    fig_dir = os.path.join(out, FIGURES)
    figs = [
        {"file": os.path.basename(report_figures.prompt_vs_activation(
            concepts, values["prompt"], values["activation"], os.path.join(fig_dir, "prompt_vs_activation.png"),
            model=os.path.basename(source))),
         "caption": "Prompt steerability γ+ (± std over benchmark trials) against activation steerability (95% "
                    "bootstrap interval), one point per concept"},
        {"file": os.path.basename(report_figures.success_by_strength(
            concepts, values["strength"], strengths, os.path.join(fig_dir, "success_by_strength.png"),
            model=os.path.basename(source))),
         "caption": "Share of steered rollouts judged a success, by strength, one line per concept"},
    ]

    deviations = _deviations(config, the_plan)
    cfg = header.config
    data_sources = [{"name": f"{name}: {what}", "repo": manifest.SOURCES[name]["repo"],
                     "commit": manifest.SOURCES[name]["commit"]} for name, what in DATA_SOURCES.items()]
    run_dirs = {TITLES["prompt_steerability"]: "prompt_steerability", TITLES["reliability"]: "reliability"}
    if pred_where:
        run_dirs[TITLES["steerability_prediction"]] = pred_where
    notes = [f"left out: {n}" for n in the_plan.skipped]
    notes.append("Intervals: prompt γ is mean ± std over benchmark trials (the paper's spread), activation numbers "
                 "95% bootstrap intervals over test examples, success rates 95% Wilson intervals, correlations "
                 f"95% percentile bootstrap intervals over concepts ({config.n_boot} resamples, seed {config.seed}).")
    return _plain({
        "title": f"steerjax report: {os.path.basename(source)}",
        "schema": SCHEMA,
        "model": {"source": source, "family": getattr(cfg, "family", None), "num_layers": cfg.num_layers},
        "preset": config.preset, "seed": config.seed, "concepts": concepts, "measures": measures,
        "correlations": correlations, "figures": figs, "deviations": deviations, "data_sources": data_sources,
        "versions": _versions(), "runs": run_dirs, "notes": notes,
    })


def _deviations(config: Config, the_plan: Plan) -> dict[str, list[dict[str, str]]]:
    """Each study's departures from its paper: the protocol's (the studies' tables) and the report's
    scale (from the options it ran)."""
    out: dict[str, list[dict[str, str]]] = {}
    c0 = the_plan.concepts[0]
    p = config.prompt_config(c0)
    rows = [("scale", "32 dimensions, budgets 1..100, 5 benchmark x 5 steering trials, 25 questions per direction",
             f"one study per concept, budgets {', '.join(map(str, p.budgets))}, {p.benchmark_trials} benchmark x "
             f"{p.steering_trials} steering trials, {p.num_questions} questions per direction")]
    out[TITLES["prompt_steerability"]] = _rows(rows + list(prompt_config.DEVIATIONS))
    r = config.reliability_config(c0)
    rows = [("scale", "every example of each dataset's halves; layer sweep over every block of 11 datasets",
             f"{r.n_train} training / {r.n_test} test examples per concept; layer sweep every "
             f"{r.layer_sweep_stride} blocks on {', '.join(r.layer_sweep_datasets)} ({r.layer_n_train} / "
             f"{r.layer_n_test} examples)"),
            ("multipliers", "-1.5 .. 1.5 by 0.5", ", ".join(f"{m:g}" for m in r.multipliers))]
    out[TITLES["reliability"]] = _rows(rows + list(reliability_config.DEVIATIONS))
    pred = the_plan.concepts_of("steerability_prediction")
    if len(pred) >= 2:
        f = config.prediction_config(pred)
        scale = {"model, block", "concepts", "prompts", "strength", "decoding"}
        rows = [("concepts", "150 at three abstraction levels, 50 written examples each",
                 f"{len(pred)} persona dimensions, {f.n_statements} statements each minus the mean over all "
                 "dimensions"),
                ("prompts", "50 AlpacaEval instructions", f"{f.prompts} built-in neutral prompts"),
                ("strength", "alpha x the raw vector, 45 alphas 0.2 .. 9.0",
                 f"{len(f.strengths)} fractions of the residual norm, {min(f.strengths):g} .. {max(f.strengths):g}"),
                ("decoding", "temperature 0.7, up to 2048 tokens", f"greedy, {f.max_new_tokens} new tokens"),
                ("block", "layer 10 of Qwen3-1.7B", "the middle block")]
        rows += [(e, ref, here) for e, ref, here, dev in prediction_config.PROTOCOL if dev and e not in scale]
        out[TITLES["steerability_prediction"]] = _rows(rows)
    return out


def _rows(rows) -> list[dict[str, str]]:
    return [{"element": e, "reference": ref, "here": here} for e, ref, here in rows]


def _versions() -> dict[str, str]:
    out = {"steerjax": __version__, "python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
