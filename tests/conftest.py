"""Session fixtures (real models loaded once, tiny families saved once) and the marker hooks.

Tiers: ``python -m pytest -m "not slow"`` is the developers' loop; ``.ci/run`` runs everything.
Markers ``requires_data`` and ``requires_smollm2`` skip, with the reason, when the data directory or
the SmolLM2 GGUF is missing.
"""
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")  # the library picks no backend; plots in tests are files
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n: the workers already share the cores; a peer loop (torch) with several OpenMP
    # threads per worker then thrashes (up to 10x slower than one thread on 2 shared cores)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
if not os.environ.get("PYTEST_XDIST_WORKER") and "STEERJAX_CACHE" not in os.environ:
    # steerjax's caches (converted models, GGUF tokenizers, downloads, judge answers) in a directory
    # of this session, shared by its workers and their subprocesses (a model converted by one is
    # restored by the others), removed at the end: tests never write into the user's cache.
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="steerjax-tests-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["STEERJAX_CACHE"] = _cache
# No test downloads data from GitHub: a test that unsets STEERJAX_DATA reaches this dead port
# (the download tests start their own server and set the mirror themselves).
os.environ.setdefault("STEERJAX_DATA_MIRROR", "http://127.0.0.1:9")
from tests.helpers import FLAGS_VARIABLE, probe_xla_flags, session_xla_flags  # noqa: E402  (imports no jax)

if FLAGS_VARIABLE not in os.environ:  # the controller (or a single process) probes; workers inherit
    os.environ[FLAGS_VARIABLE] = probe_xla_flags()
if session_xla_flags() not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {session_xla_flags()}".strip()
# No persistent XLA compilation cache: with jax 0.10.2 a worker segfaulted writing a CPU
# executable to one (JAX_COMPILATION_CACHE_DIR shared by the workers) in a full run.

import jax  # noqa: E402

# Implicit rank promotion hides shape bugs; the library broadcasts explicitly.
jax.config.update("jax_numpy_rank_promotion", "raise")

from tests import tiny_models  # noqa: E402
from tests.helpers import (  # noqa: E402
    CHAT_TEMPLATE,
    DATA_MISSING,
    SMOLLM2_MISSING,
    TINYSTORIES_MISSING,
    ModelLoaded,
    data_dir,
    smollm2_path,
    tinystories_path,
)

#: fixtures whose tests share one xdist worker (``--dist loadgroup``, set in pyproject.toml): the
#: SmolLM2 models take 20-45 s to load (dequantize) per process that needs them
_GROUPED_FIXTURES = {"smollm2": "smollm2", "smollm2_torch": "smollm2"}


def _group(item) -> str | None:
    """The xdist group of a test: ``smollm2`` for every test of the SmolLM2 GGUF (the fixtures, or
    the ``requires_smollm2`` marker: one process parses the GGUF's metadata once, ~5 s)."""
    groups = {_GROUPED_FIXTURES[f] for f in getattr(item, "fixturenames", ()) if f in _GROUPED_FIXTURES}
    if item.get_closest_marker("requires_smollm2"):
        groups.add("smollm2")
    return sorted(groups)[0] if groups else None


# tryfirst: xdist's worker plugin reads the xdist_group markers in its own modifyitems hook, which
# pluggy would otherwise call before this one (it was registered later): the markers added here
# would be ignored and each worker would load SmolLM2 itself
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = _group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(name=group))
    # Longest first (with -n, xdist hands out tests in this order as workers free up): the SmolLM2
    # group, then the slow tests, then the rest, each in file order. A long test started last
    # would leave the other core idle at the end of the run.
    def rank(item):
        return 0 if _group(item) else 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)


_GROUPING_BROKEN_SINCE = "9.2"  # pytest reads node ids from Node._id; pytest-xdist 3.8 still sets Node._nodeid


def pytest_configure(config):
    """Refuse, in the controller, a pytest under which ``--dist loadgroup`` cannot group (see
    pyproject.toml's test extra): the SmolLM2 tests would be scattered over the workers, each
    loading the model, and nothing else would say so."""
    from packaging.version import Version

    if (getattr(config.option, "dist", "no") == "loadgroup" and getattr(config.option, "numprocesses", None)
            and not hasattr(config, "workerinput") and Version(pytest.__version__) >= Version(_GROUPING_BROKEN_SINCE)):
        raise pytest.UsageError(f"pytest {pytest.__version__} breaks pytest-xdist's --dist loadgroup (grouped tests "
                                "would be scattered): install the test extra's pin, pip install 'pytest<9.2'")


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reports the collection
def pytest_collection_finish(session):
    """The same in each worker, by what happened: a grouped test whose node id lacks xdist's
    ``@group`` tag stops the run (the worker's message is lost, but the run fails)."""
    if not getattr(session.config.option, "loadgroup", False) or not hasattr(session.config, "workerinput"):
        return
    lost = [item.nodeid for item in session.items
            if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        pytest.exit(f"pytest-xdist's --dist loadgroup is not grouping under pytest {pytest.__version__} "
                    f"({len(lost)} tests, e.g. {lost[0]})", returncode=4)


def pytest_runtest_setup(item):
    """Skip ``requires_data`` / ``requires_smollm2`` tests whose resource is missing, saying how to provide it."""
    if item.get_closest_marker("requires_data") and data_dir() is None:
        pytest.skip(DATA_MISSING)
    if item.get_closest_marker("requires_smollm2") and smollm2_path() is None:
        pytest.skip(SMOLLM2_MISSING)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """``tiny(name) -> (path, torch model)``: saved once per session."""
    cache = {}

    def get(name):
        if name not in cache:
            path = tiny_models.save(name, tiny_dir)
            import transformers

            torch_model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
            cache[name] = (path, torch_model.eval())
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_llama(tiny_model):
    """The tiny random Llama (no tokenizer) as a steerjax model, once per session."""
    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_model(tiny):
    """``tiny_model(name) -> steerjax model`` of ``tiny(name)``: each tiny family loaded once per session."""
    import steerjax

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = steerjax.load_model(tiny(name)[0])
        return cache[name]

    return get


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (the Q4_1 GGUF, dequantized once per session); skips when not installed."""
    if smollm2_path() is None:
        pytest.skip(SMOLLM2_MISSING)
    import steerjax

    return steerjax.load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tinystories():
    """TinyStories-656k loaded once per session; skips when the checkpoint is absent."""
    path = tinystories_path()
    if path is None:
        pytest.skip(TINYSTORIES_MISSING)
    import steerjax

    return steerjax.load_model(path)


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory):
    """TinyStories with a chat template added: a real model and tokenizer that accepts chats, fast."""
    import json
    import shutil

    src = tinystories_path()
    if src is None:
        pytest.skip(TINYSTORIES_MISSING)
    dst = tmp_path_factory.mktemp("models") / "tinystories-chat"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return str(dst)


@pytest.fixture(scope="session")
def chat_model(chat_model_dir):
    """The chat-template TinyStories loaded once per session."""
    import steerjax

    return steerjax.load_model(chat_model_dir)


@pytest.fixture(scope="session")
def smollm2_torch():
    """The transformers reference for ``smollm2``: the same GGUF dequantized to float32, once per session."""
    path = smollm2_path()
    if path is None:
        pytest.skip(SMOLLM2_MISSING)
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tinystories_torch():
    """The transformers reference for ``tinystories`` (float32), once per session."""
    path = tinystories_path()
    if path is None:
        pytest.skip(TINYSTORIES_MISSING)
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def pytest_terminal_summary(terminalreporter):
    """The run's last lines say what was skipped and why, one line per reason, also under ``-q``
    (which prints no reasons): ``skipped 108: tinystories-656k not found: set STEERJAX_TINYSTORIES ...``."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.section("skipped, and why", sep="-")
        for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"skipped {count}: {reason}")


@pytest.fixture
def no_model(monkeypatch):
    """``steerjax.load_model`` and ``steerjax.model.load_model`` (which the studies and the commands
    call) raise :class:`tests.helpers.ModelLoaded`: a test sees whether the inputs were checked
    before any weights load."""
    import steerjax
    import steerjax.model

    def refuse(*a, **k):
        raise ModelLoaded("a model was loaded")

    monkeypatch.setattr(steerjax, "load_model", refuse)
    monkeypatch.setattr(steerjax.model, "load_model", refuse)
