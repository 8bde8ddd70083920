"""Run directories, the one home: output-path checks before any work, the run's config claimed
once and compared on resume, keyed artifacts, one digest, atomic JSON, the run log.

A run directory holds ``config.json`` (what was asked: a rerun with another config is refused,
naming what differs), results and facts found during the run in other files, and for chunked
work the manifest and chunks of :mod:`steerjax.runs.chunks` (which needs pandas; this module does
not, so command-line checks import it cheaply).

Output paths: a command that would fail to write its result after minutes of compute, or would
replace an earlier result, stops at once instead, with a message naming the flag as the user typed
it:

- :func:`check_output_file`: a file that will be written (its folder must exist and be writable; an
  existing file is replaced only with ``force``);
- :func:`check_output_dir`: a directory of results (tables, figures): missing or empty, or replaced
  file by file with ``force``; a resumable run directory is never written into;
- :func:`check_run_dir`: a resumable run directory: missing, empty, or holding a run of the same
  kind whose ``config.json`` agrees with what is known before the model loads (the run itself
  checks the whole config once it starts).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np

from steerjax.errors import ArtifactKeyError, OutputPathError, RunConfigError, RunLockedError

T = TypeVar("T")

CONFIG = "config.json"
RUN_FILES = ("chunks", "manifest.jsonl")  # what a run directory holds besides its config
LOCK = ".lock"  # the advisory lock of the process writing a run directory (it holds the writer's PID)
MODEL_FINGERPRINT = "model_fingerprint"  # the run config entry identifying the model's weights
_held: dict[str, int] = {}  # run directories locked by this process: real path -> the lock file's descriptor


def check_output_file(path: str | os.PathLike, *, force: bool = False, flag: str = "--out",
                      force_flag: str = "--force") -> str:
    """``path`` if a file can be written there now; raise :class:`OutputPathError` otherwise.

    The file's folder must exist (it is not created: a typo in a folder name should not be
    silently accepted) and be writable. An existing file is refused unless ``force``.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputPathError(f"{flag} {path} is a directory: give a file name inside it, e.g. "
                              f"{os.path.join(path, 'out' + (os.path.splitext(path)[1] or ''))}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputPathError(f"{flag} {path}: the folder {os.path.dirname(path) or folder} does not exist; "
                              "create it first or choose another path")
    _check_writable(folder, flag, path)
    if os.path.lexists(path) and not force:
        raise OutputPathError(f"{flag} {path} already exists: pass {force_flag} to replace it, or choose another path")
    return path


def check_output_dir(path: str | os.PathLike, *, force: bool = False, flag: str = "--out",
                     force_flag: str = "--force") -> str:
    """``path`` if a directory of results can be written there now; raise otherwise.

    A missing directory is fine when its nearest existing parent is writable (it will be
    created). An existing one must be empty unless ``force`` (its files are then replaced one by
    one). A resumable run directory (``config.json`` beside ``manifest.jsonl`` or ``chunks/``) is
    refused even with ``force``: replacing its ``config.json`` would stop it from resuming.
    """
    path = os.fspath(path)
    if not _existing_dir(path, flag, "a directory"):
        return path
    kind = run_kind(path)
    if kind is not None:
        raise OutputPathError(f"{flag} {path} holds a resumable steerjax run ({kind}); writing here would "
                              f"break it. Choose another {flag} directory")
    if os.listdir(path) and not force:
        raise OutputPathError(f"{flag} {path} already exists and is not empty: pass {force_flag} to replace "
                              f"its files, or choose a new {flag} directory")
    _check_writable(path, flag, path)
    return path


def check_run_dir(path: str | os.PathLike, config: Mapping[str, Any] | None = None, *,
                  allowed: Iterable[str] = (), flag: str = "--out") -> str:
    """``path`` if the run described by ``config`` may start or resume there; raise otherwise.

    Args:
      path: the run directory.
      config: the entries of the run's ``config.json`` known before the model loads (e.g.
        ``kind``, ``model``, ``dtype`` and the options); an existing directory must hold a run
        whose config has these values. Entries not given are checked when the run starts.
      allowed: files a run of this kind writes before its ``config.json`` (e.g. a cached
        artifact), accepted in a directory without one, as are the temporary files (``*.tmp*``)
        of a write that was killed.
      flag: the command-line flag named in messages.

    Raises:
      OutputPathError: a file stands at ``path``, a non-empty directory holds no run, or the
        location is not writable.
      RunConfigError: the directory holds a run of another kind or with another config.
    """
    path = os.fspath(path)
    if not _existing_dir(path, flag, "a run directory"):
        return path
    cfg_path = os.path.join(path, CONFIG)
    if os.path.exists(cfg_path):
        _check_config(path, cfg_path, dict(config or {}), flag)
    else:
        own = set(RUN_FILES) | set(allowed) | {LOCK}
        foreign = sorted(e for e in os.listdir(path) if e not in own and ".tmp" not in e)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise OutputPathError(f"{flag} {path} is not empty ({shown}) and holds no steerjax run (no {CONFIG}): "
                                  f"choose a new or empty {flag} directory")
    _check_writable(path, flag, path)
    return path


def run_kind(path: str | os.PathLike) -> str | None:
    """The ``kind`` of the resumable run held in directory ``path`` (``"run"`` when its config
    names none), or None when it holds none."""
    path = os.fspath(path)
    if not os.path.exists(os.path.join(path, CONFIG)):
        return None
    if not any(os.path.exists(os.path.join(path, name)) for name in RUN_FILES):
        return None
    try:
        with open(os.path.join(path, CONFIG)) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError):
        return "run"
    return str(cfg.get("kind", "run")) if isinstance(cfg, dict) else "run"


def config_difference(old: Any, new: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[str]:
    """The keys (of ``keys``, default all) whose values differ between two configs, sorted."""
    old_map = old if isinstance(old, dict) else {}
    keys = set(new) | set(old_map) if keys is None else set(keys)
    return sorted(k for k in keys if not isinstance(old, dict) or old_map.get(k) != new.get(k))


def describe_difference(path: str, old: Any, new: Mapping[str, Any], diff: list[str], flag: str = "--out") -> str:
    """The message for a run directory whose config differs from the one asked for."""
    old_map = old if isinstance(old, dict) else {}
    detail = "; ".join(f"{k}: {_short(old_map.get(k))} in the directory, {_short(new.get(k))} now" for k in diff[:4])
    more = f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""
    return (f"{path} holds a run with a different config (differs in: {', '.join(diff)}; {detail}{more}). "
            f"Use a new {flag} directory, or delete this one to start over.")





def read_run_config(path: str, flag: str = "--out") -> Any:
    """The ``config.json`` of run directory ``path``; :class:`RunConfigError` if unreadable."""
    try:
        with open(os.path.join(path, CONFIG)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RunConfigError(f"{path} has an unreadable {CONFIG} ({e}): it is not a steerjax run directory or it "
                             f"is damaged. Use a new {flag} directory, or delete this one to start over.") from e


def _check_config(path: str, cfg_path: str, config: dict[str, Any], flag: str) -> None:
    old = read_run_config(path, flag)
    config = json.loads(json.dumps(config, default=str))
    kind = config.get("kind")
    old_kind = old.get("kind") if isinstance(old, dict) else None
    if kind is not None and old_kind != kind:
        held = f"a {old_kind} run" if old_kind else f"something else (its {CONFIG} names no kind)"
        raise RunConfigError(f"{path} holds {held}, not a {kind} run: use a new {flag} directory")
    diff = config_difference(old, config, config)
    if diff:
        raise RunConfigError(describe_difference(path, old, config, diff, flag))


def _existing_dir(path: str, flag: str, what: str) -> bool:
    """False for a missing ``path`` that can be created, True for an existing directory; raise
    for a file or an uncreatable path."""
    if not os.path.exists(path):
        _check_creatable(path, flag)
        return False
    if not os.path.isdir(path):
        raise OutputPathError(f"{flag} {path} is a file, not {what}: choose a new directory")
    return True


def _check_creatable(path: str, flag: str) -> None:
    """The nearest existing parent of ``path`` is a writable directory."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputPathError(f"{flag} {path}: {parent} is a file, so the directory cannot be created")
    _check_writable(parent, flag, path)


def _check_writable(folder: str, flag: str, path: str) -> None:
    """Create and delete a file in ``folder``: the one test that permissions, read-only mounts and
    full quotas all answer truthfully."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".steerjax-write-test-")
    except OSError as e:
        raise OutputPathError(f"{flag} {path}: cannot write in {folder} ({e.strerror or e}); "
                              "choose a writable location") from e
    os.close(fd)
    os.remove(probe)


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def lock(path: str) -> None:
    """Take the advisory lock of run directory ``path`` for this process: an exclusive ``flock`` on
    ``path/.lock``, which records the holder's PID. It is held until the process exits (the
    system drops it even after SIGKILL) or :func:`release`; taking it again in the same process
    is a no-op. Where ``fcntl`` does not exist (Windows), nothing is locked.

    Raises:
      RunLockedError: another process holds it (the message names its PID).
    """
    real = os.path.realpath(path)
    if real in _held:
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return
    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLockedError(f"{path} is being written by another process (PID {holder}, which holds {LOCK} "
                             "there): two writers would delete each other's chunks. Wait for it to finish or stop "
                             "it, or use another directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[real] = fd


def release(path: str) -> None:
    """Give up this process's lock of run directory ``path`` (:func:`lock`), if held."""
    fd = _held.pop(os.path.realpath(path), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def claim(path: str, config: dict[str, Any]) -> dict[str, Any]:
    """Make ``path`` the directory of the run described by ``config``: its ``config.json`` is
    written once (atomically) and, when it already exists, must equal ``config``. The directory
    is locked first (:func:`lock`): one writer at a time.

    Returns the config as stored (JSON types). Results and facts found during the run (timings,
    a chosen layer, versions) belong in other files, never in ``config.json``. A config naming the
    model's weights (``model_fingerprint``, e.g. ``LanguageModel.fingerprint``: the Hub commit, or
    the files' sizes and mtimes) refuses to resume with a model that changed since.

    Raises:
      RunLockedError: another process is writing the directory.
      RunConfigError: the directory holds another run (the message names what differs), or its
        ``config.json`` is unreadable.
    """
    config = json.loads(json.dumps(config, default=str))
    lock(path)
    for stale in glob.glob(os.path.join(path, CONFIG + ".tmp*")):
        remove_file(stale)
    cfg_path = os.path.join(path, CONFIG)
    if not os.path.exists(cfg_path):
        atomic_write(cfg_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
        return config
    old = read_run_config(path)
    diff = config_difference(old, config)
    if diff == [MODEL_FINGERPRINT] and isinstance(old, dict) and old.get(MODEL_FINGERPRINT):
        raise RunConfigError(f"{path} holds a run of {config.get('model', 'this model')} whose weights have changed "
                             f"since it started ({MODEL_FINGERPRINT}: {_short(old.get(MODEL_FINGERPRINT))} in the "
                             f"directory, {_short(config.get(MODEL_FINGERPRINT))} now): resuming would mix results "
                             "of two models. Use a new directory, or delete this one to start over.")
    if diff:
        raise RunConfigError(describe_difference(path, old, config, diff))
    return config


def write_json(path: str, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``, written atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make a rename or a new file in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old file or the new one, never a mix."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


# ----------------------------------------------------------------------------- the two patterns


def keyed_artifact(path: str, key: Any, build: Callable[[], T], *, save: Callable[[T, str], None],
                   load: Callable[[str], T], on_mismatch: str = "rebuild") -> T:
    """An artifact built once and reloaded only while its key matches.

    ``path`` holds the artifact (written by ``save(value, path)`` to a temporary name, then
    renamed), ``path + ".key.json"`` the key it was built for (JSON-serialisable: the model,
    data digests, options). When both exist and the keys are equal, ``load(path)`` is returned.
    Otherwise it is built; an existing artifact with another key is rebuilt
    (``on_mismatch="rebuild"``) or refused with :class:`ArtifactKeyError` (``"error"``).

    Replacing: the key file is first replaced (atomically) by a "being rebuilt" marker, then the
    artifact is renamed into place, then the new key written. A process killed in between leaves
    the marker, which matches no key: the next run rebuilds (never serves an artifact built for
    another key, and ``"error"`` does not refuse its own interrupted rebuild).
    """
    if on_mismatch not in ("rebuild", "error"):
        raise ValueError(f"on_mismatch must be 'rebuild' or 'error', got {on_mismatch!r}")
    key = json.loads(json.dumps(key, default=str))
    key_path = path + ".key.json"
    if os.path.exists(path) and os.path.exists(key_path):
        try:
            with open(key_path) as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError):
            old = None
        if old == key:
            return load(path)
        if on_mismatch == "error" and not _rebuilding(old):
            diff = config_difference(old, key) if isinstance(key, dict) else ["key"]
            raise ArtifactKeyError(f"{path} was built for another configuration (differs in: {', '.join(diff)}); "
                                   "delete it or use another directory")
    elif os.path.exists(path) and on_mismatch == "error":
        raise ArtifactKeyError(f"{path} exists but has no {os.path.basename(key_path)}: it was not built by "
                               "steerjax for this run; delete it or use another directory")
    value = build()
    d, base = os.path.split(path)
    root, ext = os.path.splitext(base)
    tmp = os.path.join(d, f"{root}.tmp{os.getpid()}{ext}")  # keep the extension: savers may look at it
    save(value, tmp)
    # first the old key stops vouching for what stands at path (also a first build: a process killed
    # after the rename leaves this marker, not an artifact without a key)
    atomic_write(key_path, json.dumps({_REBUILDING: key}, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    fsync_dir(d or ".")
    atomic_write(key_path, json.dumps(key, indent=2, sort_keys=True) + "\n")
    return value


_REBUILDING = "__being_rebuilt_for__"


def _rebuilding(old_key: Any) -> bool:
    """Whether a key file holds the marker of a rebuild that was interrupted."""
    return isinstance(old_key, dict) and set(old_key) == {_REBUILDING}


class RunLog:
    """Print a line and append it to ``PATH/log.txt``, stamped with the seconds since the start."""

    def __init__(self, path: str, *, stamp: bool = True):
        self.path = os.path.join(path, "log.txt")
        self.start = time.time()
        self.stamp = stamp

    @property
    def seconds(self) -> float:
        return round(time.time() - self.start, 1)

    def __call__(self, msg: str) -> None:
        line = f"[{self.seconds:7.1f}s] {msg}" if self.stamp else msg
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def digest(obj: Any, *, length: int | None = None) -> str:
    """The SHA-256 hex digest of ``obj``, cut to ``length`` characters (default all 64): bytes as
    they are; a numpy array (or a tuple of arrays) by dtype, shape and bytes; anything else as
    JSON with sorted keys (numpy arrays as lists, other objects by ``str``). The one digest that
    run configs, keyed artifacts and checkpoints use to name their inputs."""
    h = hashlib.sha256()
    if isinstance(obj, bytes):
        h.update(obj)
    elif _is_array(obj) or (isinstance(obj, tuple) and obj and all(_is_array(a) for a in obj)):
        for a in obj if isinstance(obj, tuple) else (obj,):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    else:
        h.update(json.dumps(obj, sort_keys=True, default=_jsonable).encode())
    out = h.hexdigest()
    return out if length is None else out[:length]


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or (hasattr(x, "__array__") and hasattr(x, "dtype") and hasattr(x, "shape"))


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def remove_file(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
