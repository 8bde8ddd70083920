"""Where data is read from, and output paths checked before any work starts.

The data directory (:func:`data_root`): ``$STEERJAX_DATA`` when set (a directory the user
assembled; nothing is ever downloaded then), else the download cache ``$STEERJAX_CACHE/data``
(default ``~/.cache/steerjax/data``), where each pinned file of :mod:`steerjax.data.manifest`
arrives, verified, the first time a loader asks for it (:func:`data_file`). Loaders build paths
under :func:`data_root` as before and ask :func:`data_exists`, :func:`data_file` and
:func:`data_names` instead of the file system, so that in the cache a file not yet downloaded
counts as present.

Output paths: a command that would fail to write its result after minutes of compute, or would
replace an earlier result, stops at once instead, with a message naming the flag as the user typed
it:

- :func:`check_output_file`: a file that will be written (its folder must exist and be writable; an
  existing file is replaced only with ``force``);
- :func:`check_output_dir`: a directory of results (tables, figures): missing or empty, or replaced
  file by file with ``force``; a resumable run directory is never written into;
- :func:`check_run_dir`: a resumable run directory (:mod:`steerjax.runs`): missing, empty, or
  holding a run of the same kind whose ``config.json`` agrees with what is known before the model
  loads (the run itself checks the whole config once it starts).
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

from steerjax.errors import DataError, OutputPathError, RunConfigError

DATA_ENV = "STEERJAX_DATA"
CACHE_ENV = "STEERJAX_CACHE"

CONFIG = "config.json"
RUN_FILES = ("chunks", "manifest.jsonl")  # what a run directory holds besides its config


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
        own = set(RUN_FILES) | set(allowed)
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


# ----------------------------------------------------------------------------- data


def cache_root() -> pathlib.Path:
    """steerjax's cache: ``$STEERJAX_CACHE``, default ``~/.cache/steerjax``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return pathlib.Path(value).expanduser() if value else pathlib.Path.home() / ".cache" / "steerjax"


def data_cache() -> pathlib.Path:
    """The download cache of data files: ``$STEERJAX_CACHE/data`` (default ``~/.cache/steerjax/data``)."""
    return cache_root() / "data"


def data_override() -> pathlib.Path | None:
    """The directory named by ``STEERJAX_DATA``, or None when the variable is unset (or empty).

    Raises:
      DataError: the variable names no directory.
    """
    value = os.environ.get(DATA_ENV, "").strip()
    if not value:
        return None
    root = pathlib.Path(value).expanduser()
    if not root.is_dir():
        raise DataError(f"{DATA_ENV}={value!r} is not a directory: set {DATA_ENV} to the directory holding "
                        f"anthropic-evals/ and steering-bench/, or unset it to download the data into {data_cache()}")
    return root


def data_root() -> pathlib.Path:
    """The data directory: ``$STEERJAX_DATA`` when set, else :func:`data_cache` (which may not exist
    yet: files are downloaded into it on first use).

    Raises:
      DataError: ``STEERJAX_DATA`` names no directory.
    """
    root = data_override()
    return data_cache() if root is None else root


def data_exists(path: str | os.PathLike) -> bool:
    """Whether a data file or folder is there: on disk, or (in the download cache, when
    ``STEERJAX_DATA`` is unset) pinned in the manifest and so downloaded when read."""
    path = pathlib.Path(path)
    if path.exists():
        return True
    local = _cache_relative(path)
    if local is None:
        return False
    from steerjax.data import download

    return download.find(local) is not None or bool(download.listed_under(local))


def data_file(path: str | os.PathLike) -> pathlib.Path:
    """``path``, a data file under :func:`data_root`, downloaded first when it is a pinned file
    missing from the download cache (with its source's licence files). Under ``STEERJAX_DATA``, or
    for a file the manifest does not list, ``path`` as it is: no request is made.

    Raises:
      DataError: the download failed (the URL and the reason) or does not verify.
    """
    path = pathlib.Path(path)
    local = _cache_relative(path)
    if local is None:
        return path
    from steerjax.data import download

    entry = download.find(local)
    if entry is None or (path.is_file() and download.problem(path, entry, check_sha=False) is None):
        return path
    try:
        return download.ensure(entry, data_cache())
    except DataError as e:
        raise DataError(f"{DATA_ENV} is not set, so steerjax downloads {local} into {data_cache()}: {e}") from e


def data_names(folder: str | os.PathLike, suffix: str) -> list[str]:
    """The names (without ``suffix``) of the data files ending in ``suffix`` directly in ``folder``,
    sorted: on disk, and in the download cache also the pinned ones not downloaded yet."""
    folder = pathlib.Path(folder)
    names = {p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}") if p.is_file()} if folder.is_dir() else set()
    local = _cache_relative(folder)
    if local is not None:
        from steerjax.data import download

        prefix = local.strip("/") + "/" if local.strip("/") else ""
        names.update(f.local[len(prefix): -len(suffix)] for f in download.listed_under(local)
                     if f.local.endswith(suffix) and "/" not in f.local[len(prefix):])
    return sorted(names)


def _cache_relative(path: pathlib.Path) -> str | None:
    """``path`` relative to the download cache (``/``-separated) when the cache is the data
    directory (``STEERJAX_DATA`` unset) and ``path`` lies in it; else None."""
    if os.environ.get(DATA_ENV, "").strip():
        return None
    try:
        local = path.relative_to(data_cache()).as_posix()
    except ValueError:
        return None
    return "" if local == "." else local


# ----------------------------------------------------------------------------- internals


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
