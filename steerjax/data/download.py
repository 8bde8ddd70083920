"""Pinned, verified downloads of the data steerjax reads.

Every file steerjax can download is listed in :mod:`steerjax.data.manifest`: a GitHub repository
at a fixed commit, a path there, a size and a git blob SHA-1. A file is fetched from
``{base}/{owner}/{repo}/{commit}/{path}``, where ``base`` is GitHub's raw-file host or
``$STEERJAX_DATA_MIRROR`` (a mirror or proxy keeping that layout), and kept only once its size and
SHA-1 agree with the manifest.

How a file is written: into a temporary file (``.NAME.*.part``) in its final folder, checked, then
renamed into place (atomic on one file system). A failed, interrupted or corrupt download removes
its temporary file, so nothing is left that a later run could mistake for data; a rerun fetches
what is missing and keeps what verifies. Each source's licence files are stored beside its data.

Where the files go (:func:`steerjax.data.store.data_root`): ``$STEERJAX_DATA`` when set (then nothing is
ever downloaded: the directory is the user's), else the cache ``$STEERJAX_CACHE/data`` (default
``~/.cache/steerjax/data``), filled file by file on first use or all at once by ``steerjax data
download``.

Only the standard library talks to the network (``urllib``, with a timeout).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import pathlib
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence

from steerjax.data import manifest
from steerjax.errors import DataError
from steerjax.progress import tqdm
from steerjax.version import __version__

MIRROR_ENV = "STEERJAX_DATA_MIRROR"
DEFAULT_BASE = "https://" + ".".join(("raw", "githubusercontent", "com"))
TIMEOUT = 60.0  # seconds without progress (connect or read) before a download is abandoned
CHUNK = 1 << 16
STALE_PART_SECONDS = 600  # a temporary file not written for this long belongs to a killed download
MAX_UNPINNED_BYTES = 1 << 30  # the cap of a file whose size the manifest does not record


@dataclasses.dataclass(frozen=True)
class DataFile:
    """One pinned file of a source.

    Attributes:
      source: the source's name (:data:`steerjax.data.manifest.SOURCES`).
      repo: ``owner/name`` on GitHub.
      commit: the pinned commit.
      path: the file's path in the repository.
      size: its size in bytes, or -1 when not recorded (checked by SHA-1 alone).
      sha1: its git blob SHA-1.
      local: where it is stored, relative to the data directory (``/``-separated).
      licence: True for a licence file.
    """

    source: str
    repo: str
    commit: str
    path: str
    size: int
    sha1: str
    local: str
    licence: bool = False

    def url(self, base: str | None = None) -> str:
        """The file's URL: ``{base}/{repo}/{commit}/{path}`` (base: :func:`mirror_base` by default)."""
        return f"{(base or mirror_base()).rstrip('/')}/{self.repo}/{self.commit}/{self.path}"


def mirror_base() -> str:
    """``$STEERJAX_DATA_MIRROR`` when set, else GitHub's raw-file host."""
    return os.environ.get(MIRROR_ENV, "").strip() or DEFAULT_BASE


def sources() -> list[str]:
    """The source names, in the manifest's order."""
    return list(manifest.SOURCES)


def source_files(name: str) -> list[DataFile]:
    """Every pinned file of source ``name``.

    Raises:
      DataError: an unknown source.
    """
    if name not in manifest.SOURCES:
        raise DataError(f"unknown data source {name!r}: choose from {', '.join(manifest.SOURCES)} "
                        "(steerjax data list shows them)")
    spec = manifest.SOURCES[name]
    out = []
    for folder, entries in spec["files"].items():
        local_folder = spec["folders"].get(folder, folder)
        for file_name, size, sha1 in entries:
            path = f"{folder}/{file_name}" if folder else file_name
            local = "/".join(p for p in (name, local_folder, file_name) if p)
            out.append(DataFile(name, spec["repo"], spec["commit"], path, int(size), sha1, local,
                                licence=path in spec["licence"]))
    return out


def all_files(names: Iterable[str] | None = None) -> list[DataFile]:
    """The pinned files of the sources ``names`` (default: every source)."""
    return [f for name in (sources() if names is None else names) for f in source_files(name)]


def find(local: str) -> DataFile | None:
    """The pinned file stored at ``local`` (relative to the data directory, ``/``-separated), or None."""
    return _by_local().get(local)


def listed_under(folder: str) -> list[DataFile]:
    """The pinned files stored under ``folder`` (relative, ``/``-separated; ``""``: all)."""
    prefix = folder.strip("/") + "/" if folder.strip("/") else ""
    return [f for local, f in _by_local().items() if local.startswith(prefix)]


def licence_files(source: str) -> list[DataFile]:
    """The licence files of ``source`` (none for a source without one)."""
    return [f for f in source_files(source) if f.licence]


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The git blob SHA-1 of a file: SHA-1 of ``b"blob <size>\\0"`` and its bytes (``git hash-object``)."""
    size = os.path.getsize(path)
    digest = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def target(root: str | os.PathLike, local: str) -> pathlib.Path:
    """``root/local``, checked to stay inside ``root``: ``local`` is relative, ``/``-separated,
    without empty, ``.`` or ``..`` parts, and no symbolic link under ``root`` leads out of it.

    Raises:
      DataError: the path would leave the data directory.
    """
    parts = local.split("/") if isinstance(local, str) else []
    if (not parts or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts)
            or os.path.isabs(local)):
        raise DataError(f"the data path {local!r} is not a plain relative path: refusing to write outside the "
                        "data directory")
    dest = pathlib.Path(root, *parts)
    base = os.path.realpath(root)
    if os.path.commonpath([base, os.path.realpath(dest)]) != base:
        raise DataError(f"the data path {local!r} leads outside the data directory {root} (through a symbolic "
                        "link): refusing to write there")
    return dest


def problem(path: str | os.PathLike, entry: DataFile, *, check_sha: bool = True) -> str | None:
    """What is wrong with the file at ``path`` as a copy of ``entry`` (None: it verifies).

    Args:
      path: the local file.
      entry: its manifest entry.
      check_sha: also compare the git blob SHA-1 (else the size alone, when recorded).
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        return "missing"
    if entry.size != -1 and size != entry.size:
        return f"{size} bytes, the manifest pins {entry.size}"
    if check_sha:
        sha1 = git_blob_sha1(path)
        if sha1 != entry.sha1:
            return f"git blob SHA-1 {sha1}, the manifest pins {entry.sha1}"
    return None


def fetch(entry: DataFile, root: str | os.PathLike, *, base: str | None = None, force: bool = False,
          verify: bool = True, progress: bool | None = None, timeout: float = TIMEOUT) -> tuple[pathlib.Path, bool]:
    """Make ``root/entry.local`` a verified copy of ``entry``, downloading it if needed.

    Args:
      entry: the file.
      root: the data directory.
      base: the raw-file base URL (default :func:`mirror_base`).
      force: download even when a verified copy is there.
      verify: check a present copy by SHA-1 too (else by size: the cheap check of a file
        only this module writes).
      progress: a progress bar on stderr (None: only on a terminal).
      timeout: seconds without progress before giving up.

    Returns:
      ``(path, downloaded)``.

    Raises:
      DataError: the URL cannot be fetched (its reason and the URL), the transfer ended early, the
        content does not match the manifest (the file named; nothing is kept), or the folder
        cannot be written.
    """
    dest = target(root, entry.local)
    if not force and dest.is_file() and problem(dest, entry, check_sha=verify) is None:
        return dest, False
    url = entry.url(base)
    _make_folder(dest.parent)
    _remove_stale_parts(dest)
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise DataError(_unwritable(dest.parent, e)) from e
    try:
        with os.fdopen(fd, "wb") as out:
            received, expected = _transfer(url, out, entry, progress, timeout)
        if expected is not None and received != expected:
            raise DataError(f"the transfer of {url} ended after {received} of {expected} bytes (the connection "
                            f"closed early): nothing was kept; rerun to download {entry.local} again")
        wrong = problem(tmp, entry)
        if wrong is not None:
            raise DataError(f"checksum mismatch for {entry.local}: the file downloaded from {url} has {wrong}. "
                            "It was not kept. The server sent another version of the file (check "
                            f"{MIRROR_ENV}, if set) or the transfer was damaged: rerun to try again")
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise
    return dest, True


def ensure(entry: DataFile, root: str | os.PathLike, *, base: str | None = None,
           progress: bool | None = None) -> pathlib.Path:
    """``root/entry.local``, downloaded (with its source's licence files) if missing; a present
    copy is checked by size only. The loaders' first-use download."""
    for licence in licence_files(entry.source):
        if licence != entry:
            fetch(licence, root, base=base, verify=False, progress=progress)
    return fetch(entry, root, base=base, verify=False, progress=progress)[0]


def download(names: Sequence[str] | None, root: str | os.PathLike, *, force: bool = False,
             base: str | None = None, progress: bool | None = None) -> list[tuple[DataFile, bool]]:
    """Download whole sources into a data directory, keeping the copies that verify.

    Args:
      names: source names (default: every source).
      root: the data directory (:func:`steerjax.data.store.data_root` for the one readers use).
      force: download every file again.
      base: the raw-file base URL (default :func:`mirror_base`).
      progress: progress bars on stderr (None: only on a terminal).

    Returns:
      ``(file, downloaded)`` per file, licence files first within each source.

    Raises:
      DataError: an unknown source, or a file that cannot be downloaded and verified (the files
        already done stay; a rerun continues).
    """
    names = sources() if names is None else list(dict.fromkeys(names))
    for name in names:
        source_files(name)  # every name is checked before anything is fetched
    done = []
    for name in names:
        files = sorted(source_files(name), key=lambda f: not f.licence)
        for entry in files:
            done.append((entry, fetch(entry, root, base=base, force=force, progress=progress)[1]))
    return done


# ----------------------------------------------------------------------------- internals


def _by_local() -> dict[str, DataFile]:
    return {f.local: f for f in all_files()}


def _transfer(url: str, out, entry: DataFile, progress: bool | None, timeout: float) -> tuple[int, int | None]:
    """Stream ``url`` into ``out``; ``(bytes received, Content-Length or None)``."""
    request = urllib.request.Request(url, headers={"User-Agent": f"steerjax/{__version__}"})
    received, expected = 0, None
    cap = entry.size if entry.size >= 0 else MAX_UNPINNED_BYTES

    def too_long(what: str) -> DataError:
        return DataError(f"the server sent {what} for {entry.local}, but the manifest pins {cap} bytes: the transfer "
                         f"was stopped at {cap} bytes and nothing was kept. Check the server ({url})")

    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            if expected is not None and expected > cap:
                raise too_long(f"a Content-Length of {expected} bytes")
            total = expected if expected is not None else (entry.size if entry.size >= 0 else None)
            with tqdm(total=total, desc=entry.local, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                      disable=None if progress is None else not progress) as bar:
                while True:
                    block = response.read(min(CHUNK, cap - received) or 1)
                    if not block:
                        break
                    if received + len(block) > cap:  # one byte past the cap: never written
                        raise too_long("more bytes")
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as e:
        hint = " (the pinned commit or path is not on this server)" if e.code == 404 else ""
        raise DataError(f"downloading {url} failed: HTTP {e.code} {e.reason}{hint}. {_remedy()}") from e
    except urllib.error.URLError as e:
        raise DataError(f"cannot reach {url} ({e.reason}). {_remedy()}") from e
    except (TimeoutError, socket.timeout) as e:
        raise DataError(f"downloading {url} timed out (no data for {timeout:g} s after {received} bytes): rerun "
                        f"to try again. {_remedy()}") from e
    except (http.client.HTTPException, ConnectionError) as e:
        raise DataError(f"the transfer of {url} broke off after {received} bytes ({type(e).__name__}: {e}): "
                        f"nothing was kept; rerun to download {entry.local} again") from e
    except OSError as e:
        raise DataError(f"writing {entry.local} failed ({e.strerror or e}) while downloading {url}") from e
    return received, expected


def _remedy() -> str:
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    where = f"{MIRROR_ENV}={mirror!r} is the server asked" if mirror else f"set {MIRROR_ENV} to a mirror"
    return (f"Check the network ({where}), or set STEERJAX_DATA to a directory that already holds the data "
            "(then nothing is downloaded)")


def _make_folder(folder: pathlib.Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(_unwritable(folder, e)) from e


def _unwritable(folder: pathlib.Path, error: OSError) -> str:
    return (f"cannot write the data directory {folder} ({error.strerror or error}): make it writable, set "
            "STEERJAX_CACHE to a writable directory (data goes in $STEERJAX_CACHE/data), or set STEERJAX_DATA "
            "to a directory that already holds the data")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _remove_stale_parts(dest: pathlib.Path) -> None:
    """Remove the temporary files of killed downloads of ``dest`` (untouched for a while)."""
    now = time.time()
    for part in dest.parent.glob(f".{dest.name}.*.part"):
        try:
            if now - part.stat().st_mtime > STALE_PART_SECONDS:
                part.unlink()
        except OSError:
            pass
