"""Run in a subprocess by tests/test_sharding.py: XLA_FLAGS (the CPU device count) must be set
before jax is imported, so multi-device runs cannot share the test process.

``python tests/_mesh_worker.py meshes MODEL_DIR OUT.npz``: sweep, generate, answer_logprobs,
early_features and the hidden-state judge on one device and on 8x1 and 1x8 meshes (parameter
shards on 4x2 and 2x4 too), and a sweep, generation and profile scoring on a one-device mesh;
writes every result (``OUT.npz``), the single-device and one-device-mesh sweep tables
(``OUT.npz.single.parquet``, ``OUT.npz.one.parquet``) and the generated texts, shard shapes and
bad-input errors (``OUT.npz.json``).

``python tests/_mesh_worker.py single MODEL_DIR OUT.npz``: the same computations on one device, no
mesh (the test runs it under XLA's default flags and compares with the test flags' results).

``python tests/_mesh_worker.py sweep MODEL_DIR OUT.parquet [PROCESS_ID NUM_PROCESSES PORT]``: one
sweep on a mesh over every device (of every process after ``jax.distributed.initialize``);
process 0 writes the table.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SHAPES = ((8, 1), (4, 2), (2, 4), (1, 8))  # 1x8: the 4 KV heads of the test model are replicated
#: meshes whose results are compared with one device (each costs a full set of compilations): the
#: data axis alone at its widest (every batch padded to a multiple of 8 rows) and the model axis alone at its
#: widest (the 4 KV heads replicated); both axes at once (4x2) are compared by the two-process
#: run, with these single-device results. The parameter shards of all four shapes are checked (no computation).
COMPARED = ((8, 1), (1, 8))
THINGS = ["cat", "dog", "bird", "little girl", "big tree", "boat", "sun", "princess", "frog"]
SYSTEMS = ["You are kind.", None, "You love the sea and boats.", "Be brief."]
QUESTIONS = ["I like cats.", "The sun is hot.", "Dogs are loud and big.", "I am happy.", "Trees are green."]


def examples():
    from steerjax.data import Example

    out = [Example(f"Once upon a time there was a {w}. Was it happy?\n(A) yes\n(B) no\nAnswer:", " (A)", " (B)",
                   {"thing": w}) for w in THINGS]
    out[3] = Example(out[3].prompt, " yes", " no and then", {"thing": "odd lengths"})
    return out


def vector(cfg):
    import numpy as np

    return np.random.default_rng(0).normal(size=cfg.hidden_size).astype(np.float32)


def run_sweep(model, mesh, positions="completion", batch_size=None):
    return __import__("steerjax").sweep(model, examples(), vector(model.config), layers=[0, 1],
                                        multipliers=[-2.0, 0.0, 1.5], positions=positions, progress=False,
                                        mesh=mesh, batch_size=batch_size)


def meshes(model_dir, out_path):
    import jax
    import numpy as np

    import steerjax
    from steerjax import sharding

    model = steerjax.load_model(model_dir)
    cfg = model.config

    alone = everything(model, None)
    alone["sweep"].to_parquet(out_path + ".single.parquet")  # the two-process test's reference table
    results = {f"single/{k}": v for k, v in arrays(alone).items()}
    report = {"devices": jax.device_count(), "shards": {}, "errors": {}}
    # a one-device mesh changes nothing: its sweep table, generation and profile scores
    one = sharding.make_mesh(1, 1, jax.devices()[:1])
    run_sweep(model, one).to_parquet(out_path + ".one.parquet")
    g = steered_generation(model, one)
    results |= {"1x1/tokens": g.tokens, "1x1/profile": profile_scores(model, one)}
    report["texts"] = {"single": list(alone["texts"]), "1x1": list(g.texts)}
    for shape in SHAPES:
        name = "x".join(map(str, shape))
        mesh = sharding.make_mesh(*shape)
        if shape in COMPARED:
            results |= {f"{name}/{k}": v for k, v in arrays(everything(model, mesh)).items()}
        placed = sharding.shard_params(model.params, cfg, mesh)["layers"]
        report["shards"][name] = {f"self_attn.{k}.kernel": list(placed["self_attn"][k]["kernel"].addressable_shards[0]
                                                              .data.shape) for k in ("q_proj", "k_proj")}
    np.savez(out_path, **results)

    def error(name, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the test checks the type and message
            report["errors"][name] = [type(e).__name__, str(e)]

    mesh = sharding.make_mesh(8, 1)
    error("uneven_batch", lambda: sharding.put(np.zeros((3, 2)), mesh))
    error("mesh_size", lambda: sharding.make_mesh(3, 2))
    mesh_2x3 = sharding.make_mesh(2, 3, jax.devices()[:6])  # 3 divides none of the 8 heads
    error("heads", lambda: sharding.shard_params(model.params, cfg, mesh_2x3))
    error("sweep_heads", lambda: run_sweep(model, mesh_2x3))
    with open(out_path + ".json", "w") as f:
        json.dump(report, f)


def everything(model, mesh):
    """Sweeps in both position modes (the default batch size: their chunks share shapes and
    compilations) and :func:`others`."""
    out = {"sweep": run_sweep(model, mesh), "sweep_all": run_sweep(model, mesh, "all")}
    return out | others(model, mesh)


def arrays(out):
    """The arrays of :func:`everything`'s results, by name."""
    cols = ["logp_positive", "logp_negative"]
    return {"sweep": out["sweep"][cols].to_numpy(), "sweep_all": out["sweep_all"][cols].to_numpy(),
            "sweep_keys": out["sweep"][["example", "layer", "multiplier"]].to_numpy(),
            **{k: out[k] for k in OTHERS}}


def single(model_dir, out_path):
    """:func:`everything` on one device, no mesh, written as :func:`arrays` to ``out_path``."""
    import numpy as np

    import steerjax

    np.savez(out_path, **arrays(everything(steerjax.load_model(model_dir), None)))


#: the arrays of :func:`others`
OTHERS = ("tokens", "lengths", "profile", "features", "feature_tokens", "judge_nll", "judge_hidden")


def steered_generation(model, mesh):
    """6 tokens for each of 5 chats (padded to 8 rows on the 8-device meshes), steered per example."""
    import numpy as np

    import steerjax

    cfg = model.config
    prompts = [[{"role": "user", "content": f"Tell me about a {w}."}] for w in THINGS[:5]]
    steer = steerjax.Steering.create(cfg, {1: np.stack([vector(cfg) * s for s in (0, 1, -1, 2, 0.5)])},
                                     multipliers=[0.0, 1.0, 2.0, -1.0, 3.0], positions="generated")
    return steerjax.generate(model, prompts, steering=steer, max_new_tokens=6, mesh=mesh)


def profile_scores(model, mesh):
    """Profile scoring of 5 questions under 4 steering prompts (padded to 8 on the 8-device meshes)."""
    from steerjax.studies.prompt_steerability.scoring import answer_logprobs

    return answer_logprobs(model, SYSTEMS, QUESTIONS, progress=False, mesh=mesh)


def others(model, mesh):
    """Generation (5 prompts, per-example steering), profile scoring, early features (2 chunks of
    4 rows: padded to the data axis) and the hidden-state judge's reading of 5 rollouts of 2
    prompts (batches of 3 rows: padded, and each prompt's prefill copied once per data shard)."""
    import numpy as np
    import pandas as pd

    from steerjax.studies.steerability_prediction import Concept, early_features, feature_columns
    from steerjax.studies.steerability_prediction.judge import HiddenStateJudge

    cfg = model.config
    g = steered_generation(model, mesh)
    profile = profile_scores(model, mesh)
    rng = np.random.default_rng(2)
    concepts = [Concept(n, "test", rng.normal(size=cfg.hidden_size), 1, 10.0) for n in ("a", "b")]
    table, feature_tokens = early_features(model, ["Once upon a time", "The cat"], concepts, [0.0, 2.0], layer=1,
                                           steps=(1, 2), batch_size=4, mesh=mesh)
    rollouts = pd.DataFrame({"prompt_id": [0, 0, 0, 1, 1], "concept": ["none", "a", "b", "none", "a"],
                             "strength": [0.0, 1.0, 1.0, 0.0, 2.0], "text": "",
                             "tokens": [rng.integers(3, cfg.vocab_size, n).tolist() for n in (5, 3, 7, 1, 6)]})
    # two prompt lengths in one prefill bucket: one prefill and one read to compile
    prompt_tokens = {0: rng.integers(3, cfg.vocab_size, 9).tolist(), 1: rng.integers(3, cfg.vocab_size, 20).tolist()}
    judge = HiddenStateJudge(model, concepts, prompt_tokens=prompt_tokens, batch_size=3, progress=False, mesh=mesh)
    nll, hidden = judge.read(rollouts)
    return {"tokens": g.tokens, "lengths": g.lengths, "texts": g.texts, "profile": profile,
            "features": table[feature_columns(cfg, (1, 2))].to_numpy(np.float64), "feature_tokens": feature_tokens,
            "judge_nll": nll, "judge_hidden": hidden}


def sweep(model_dir, out_path, process_id=None, num_processes=None, port=None):
    import jax
    import numpy as np

    if num_processes is not None:
        jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=int(num_processes),
                                   process_id=int(process_id), initialization_timeout=60)
    import steerjax
    from steerjax import sharding

    model = steerjax.load_model(model_dir)
    mesh = sharding.make_mesh(model=2)  # every device of every process
    table = run_sweep(model, mesh)
    extra = others(model, mesh)
    if jax.process_index() == 0:
        table.to_parquet(out_path)
        np.savez(out_path + ".npz", **extra)
        with open(out_path + ".json", "w") as f:
            json.dump({"devices": jax.device_count(), "processes": jax.process_count(),
                       "mesh": dict(mesh.shape)}, f)
    if num_processes is not None:
        jax.distributed.shutdown()


if __name__ == "__main__":
    {"meshes": meshes, "single": single, "sweep": sweep}[sys.argv[1]](*sys.argv[2:])
