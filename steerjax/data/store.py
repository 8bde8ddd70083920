"""The data store: where data files are read from.

The data directory (:func:`data_root`): ``$STEERJAX_DATA`` when set (a directory the user
assembled; nothing is ever downloaded then), else the download cache ``$STEERJAX_CACHE/data``
(default ``~/.cache/steerjax/data``), where each pinned file of :mod:`steerjax.data.manifest`
arrives, verified, the first time a reader asks for it (:func:`data_file`). Readers build paths
under :func:`data_root` and ask :func:`data_exists`, :func:`data_file` and :func:`data_names`
instead of the file system, so that in the cache a file not yet downloaded counts as present.
"""

from __future__ import annotations

import os
import pathlib

from steerjax.data import download
from steerjax.errors import DataError

DATA_ENV = "STEERJAX_DATA"
CACHE_ENV = "STEERJAX_CACHE"

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
