#!/usr/bin/env bash
# One prepared benchmark run for a GPU machine (issue 15, point 8).
#
# Installs this checkout (pip install --no-deps --no-build-isolation -e .: no network needed; jax,
# flax, optax, orbax-checkpoint and transformers must already be installed; ott-jax, gguf and
# catboost need not be), checks that `import steerjax` and the entry points benchmarked here import
# none of ott-jax, gguf or catboost, then prints, in bf16, the forward, sweep and generation tables
# of a random-weight Llama-3-8B-shaped model and of TinyStories-656K ($STEERJAX_TINYSTORIES, a local
# HF directory; skipped with a note when unset), with model FLOP utilisation (MFU) for the forward
# pass and the sweep. Everything runs within ACCEL_BUDGET_S seconds (default 450; rows that would
# start later are printed as skipped), so the whole script fits in 8 minutes.
#
# Usage (from anywhere):  benchmarks/accelerator.sh
# Exit status: 0 done; 2 no GPU (or JAX sees none); 1 any other failure.
# STEERJAX_ACCEL_SMOKE=1 runs the same code on CPU with a small 2-block model of the same family and
# without installing (a check of the script itself, not a benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${STEERJAX_ACCEL_SMOKE:-0}" != "1" ]]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "benchmarks/accelerator.sh: no GPU on this machine (nvidia-smi finds none); this script is for a" \
         "GPU machine. On CPU, use benchmarks/forward.py, sweep.py and generate.py." >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

if [[ "${STEERJAX_ACCEL_SMOKE:-0}" != "1" ]]; then  # the smoke check runs in the developer's environment as it is
  python -m pip install --quiet --no-deps --no-build-isolation -e . >/dev/null
fi

script="$(mktemp -t steerjax-accel-XXXXXX.py)"
trap 'rm -f "$script"' EXIT
cat >"$script" <<'PY'
import os
import statistics
import sys
import time

T0 = time.perf_counter()
BUDGET = float(os.environ.get("ACCEL_BUDGET_S", "450"))
SMOKE = os.environ.get("STEERJAX_ACCEL_SMOKE") == "1"
OPTIONAL = ("ott", "gguf", "catboost")

import steerjax  # noqa: E402
import steerjax.generate  # noqa: E402,F401
import steerjax.sweeps  # noqa: E402,F401

loaded = sorted(m for m in OPTIONAL if m in sys.modules)
if loaded:
    print(f"FAIL: importing steerjax and its sweep/generate entry points imported {loaded}", file=sys.stderr)
    sys.exit(1)
print(f"ok: import steerjax (and steerjax.sweeps, steerjax.generate) imports none of {', '.join(OPTIONAL)}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from steerjax.data import Encoded  # noqa: E402
from steerjax.model import LanguageModel  # noqa: E402
from steerjax.models import transformer  # noqa: E402
from steerjax.models.config import ModelConfig, leaves  # noqa: E402
from steerjax.steering import Steering  # noqa: E402

if not SMOKE and jax.default_backend() != "gpu":
    print(f"benchmarks/accelerator.sh: JAX sees no GPU (backend {jax.default_backend()}); install jax[cuda]",
          file=sys.stderr)
    sys.exit(2)
dev = jax.devices()[0]
print(f"jax {jax.__version__}, device: {dev.device_kind} ({jax.default_backend()}), steerjax {steerjax.__version__}")

# nominal dense bf16 peaks (FLOP/s); other devices use the measured matmul rate
NOMINAL = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def measured_peak() -> float:
    n = 512 if SMOKE else 8192
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


measured = measured_peak()
nominal = next((v for k, v in NOMINAL.items() if k in dev.device_kind), None)
PEAK = nominal or measured
print(f"bf16 matmul measured: {measured / 1e12:.1f} TFLOP/s; MFU below is against "
      f"{'the nominal ' + format(PEAK / 1e12, '.0f') + ' TFLOP/s' if nominal else 'the measured rate'}\n")


def time_left() -> float:
    return BUDGET - (time.perf_counter() - T0)


def timed(fn, repeats=5):
    """(first call s, median of ``repeats`` later calls s); ``fn`` blocks until done."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, statistics.median(times)


def random_llama3_8b() -> LanguageModel:
    layers = 2 if SMOKE else 32
    cfg = ModelConfig(family="llama", model_type="llama", num_layers=layers, hidden_size=4096, num_heads=32,
                      num_kv_heads=8, head_dim=128, intermediate_size=14336, vocab_size=128256,
                      max_position_embeddings=8192, norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000,
                      eos_token_ids=(128001,))
    if SMOKE:
        cfg = ModelConfig(**{**cfg.__dict__, "hidden_size": 256, "num_heads": 8, "num_kv_heads": 2,
                             "head_dim": 32, "intermediate_size": 512, "vocab_size": 4096,
                             "layer_windows": (), "layer_local": ()})
    shapes = transformer.abstract_params(cfg)
    key = iter(jax.random.split(jax.random.key(0), 4096))

    def make(shape, name):
        if name.endswith("scale"):
            return jnp.ones(shape, jnp.bfloat16)
        init = jax.jit(lambda k: (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(jnp.bfloat16))
        return init(next(key))

    def build(tree, prefix=""):
        return {k: build(v, f"{prefix}{k}.") if isinstance(v, dict) else make(tuple(v.shape), f"{prefix}{k}")
                for k, v in tree.items()}

    params = build(shapes)
    name = "random Llama-3-8B-shaped" + (" (smoke: 2 blocks, small)" if SMOKE else "")
    return LanguageModel(cfg, params, None, name, "bfloat16")


def flops_per_token(cfg, n_params, context) -> float:
    """Matmul FLOPs of one token's forward pass: 2 x parameters (the embedding lookup is free, the
    unembedding is a matmul) + attention scores and values over ``context`` positions."""
    embed = cfg.vocab_size * cfg.hidden_size
    return 2 * (n_params - embed * (0 if cfg.tie_word_embeddings else 1)) + \
        4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context


def forward_table(model):
    cfg = model.config
    n = model.num_parameters
    rows = []
    shapes = [(1, 128), (8, 512), (32, 512)] if not SMOKE else [(1, 16), (4, 32)]
    rng = np.random.default_rng(0)
    for b, t in shapes:
        if time_left() < 30:
            rows.append(f"| {b} x {t} | skipped (time budget) | | | |")
            continue
        ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, t)), jnp.int32)
        first, med = timed(lambda ids=ids: model.logits(ids).block_until_ready())
        mfu = b * t * flops_per_token(cfg, n, t / 2) / med / PEAK
        rows.append(f"| {b} x {t} | {b * t / med:,.0f} | {med * 1e3:.1f} | {first - med:.1f} | {mfu:.0%} |")
    print("| batch x tokens | tokens/s | ms / call | compile s | MFU |\n|---|---:|---:|---:|---:|")
    print("\n".join(rows) + "\n")


def sweep_table(model):
    cfg = model.config
    n = model.num_parameters
    rng = np.random.default_rng(1)
    n_examples = 8 if SMOKE else 32
    prompt_len = 16 if SMOKE else 96
    examples = [Encoded([int(x) for x in rng.integers(10, cfg.vocab_size, prompt_len)], [5, 6, 7], [5, 8, 7])
                for _ in range(n_examples)]
    layer = cfg.num_layers // 2
    vec = {layer: (rng.normal(size=cfg.hidden_size) * 0.1).astype(np.float32)}
    rows = []
    for n_mult in (7, 21):
        if time_left() < 40:
            rows.append(f"| {n_mult} | skipped (time budget) | | |")
            continue
        mults = np.linspace(-2, 2, n_mult).astype(np.float32)
        run = lambda m=mults: steerjax.sweep(model, examples, vec, layers=[layer], multipliers=m,  # noqa: E731
                                             progress=False)
        first, med = timed(run, repeats=3)
        # FLOPs needed: every prompt once + 2 completions x multipliers of (3 - 1) scored tokens
        tokens = n_examples * prompt_len + n_examples * n_mult * 2 * 2
        mfu = tokens * flops_per_token(cfg, n, prompt_len / 2) / med / PEAK
        rows.append(f"| {n_mult} | {n_examples * n_mult / med:,.1f} | {first - med:.1f} | {mfu:.1%} |")
    print(f"| multipliers ({n_examples} examples, {prompt_len}-token prompts) | example-multipliers/s | "
          "compile s | MFU |\n|---|---:|---:|---:|")
    print("\n".join(rows) + "\n")


def generate_table(model):
    cfg = model.config
    rng = np.random.default_rng(2)
    new = 16 if SMOKE else 64
    layer = cfg.num_layers // 2
    vec = (rng.normal(size=cfg.hidden_size) * 0.1).astype(np.float32)
    rows = []
    for b in ((1, 4) if SMOKE else (1, 16, 64)):
        prompts = [[int(x) for x in rng.integers(10, cfg.vocab_size, 48)] for _ in range(b)]
        for steered in (False, True):
            if time_left() < 40:
                rows.append(f"| {b} | {'yes' if steered else 'no'} | skipped (time budget) | | |")
                continue
            st = Steering.create(model, {layer: vec}, 4.0, positions="generated") if steered else None
            run = lambda p=prompts, s=st: steerjax.generate(model, p, steering=s, max_new_tokens=new)  # noqa: E731
            first, med = timed(run, repeats=3)
            rows.append(f"| {b} | {'yes' if steered else 'no'} | {b * new / med:,.0f} | {med / new * 1e3:.2f} | "
                        f"{first - med:.1f} |")
    print(f"| batch (48-token prompts, {new} new tokens, greedy) | steered | new tokens/s | ms / step | compile s |"
          "\n|---|---|---:|---:|---:|")
    print("\n".join(rows) + "\n")


models = [("llama3-8b", random_llama3_8b)]
ts = os.environ.get("STEERJAX_TINYSTORIES")
if ts:
    models.append(("tinystories", lambda: steerjax.load_model(ts, dtype="bfloat16", cache=False)))
else:
    print("note: STEERJAX_TINYSTORIES is unset: the TinyStories-656K tables are skipped\n")
for _, make_model in models:
    t = time.perf_counter()
    model = make_model()
    jax.block_until_ready(jax.tree.leaves(model.params))
    n = sum(int(np.prod(x.shape)) for x in leaves(model.params))
    print(f"## {model.source}: {n / 1e6:,.1f}M parameters, bf16 ({time.perf_counter() - t:.0f} s to build/load)\n")
    for table in (forward_table, sweep_table, generate_table):
        table(model)
    del model
print(f"total {time.perf_counter() - T0:.0f} s")
PY

timeout --signal=INT 470 python "$script"
