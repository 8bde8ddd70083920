"""Converted checkpoints: a model's config, tokenizer files and converted state as an orbax checkpoint.

A converted directory (``steerjax convert``, and each entry of the conversion cache) holds::

    config.json                the HF-style config the model was converted with
    tokenizer.json, ...        the tokenizer files (no copy of the weights)
    state/                     the converted parameters: an orbax-checkpoint pytree checkpoint
    steerjax_checkpoint.json   written last: format, steerjax version, dtype, source, and the size
                               of every file above (a truncated file is named, never loaded)

The state is any pytree of arrays (the params of :mod:`steerjax.models.weights`), so nothing
here depends on parameter names. It is restored against an abstract target built from the
checkpoint's own metadata, with the shardings the caller gives: each device receives only its
shards. Directories are written atomically (a temporary sibling, renamed into place when
complete), so an interrupted conversion leaves nothing that loads.

The conversion cache (:func:`cache_lookup`, :func:`cache_store`) keeps one converted directory per
source path and dtype under ``$STEERJAX_CACHE/models`` (default ``~/.cache/steerjax/models``),
recording the source's identity (path, file sizes and mtimes) and the steerjax version; an entry
that no longer matches, or that is damaged, is reported in one warning line and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from steerjax.errors import CheckpointError
from steerjax.version import __version__

FORMAT = "steerjax-checkpoint"
#: 2: the state is the Flax NNX module state (module paths such as ``layers/self_attn/q_proj/kernel``);
#: 1 held HF-named dict params. Entries of another version are rebuilt (cache) or refused (convert).
FORMAT_VERSION = 2
MARKER = "steerjax_checkpoint.json"
STATE = "state"
CACHE_VARIABLE = "STEERJAX_CACHE"
#: files of an HF model directory copied next to a converted state (tokenizer and generation settings)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
_TMP = ".tmp-"
_TMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}(\.old)?$")  # what write() names its temporary directories


class CacheWarning(UserWarning):
    """A conversion-cache entry was stale or damaged and is being rebuilt."""


# ----------------------------------------------------------------------------- converted directories


def is_converted(path: str) -> bool:
    """Whether ``path`` is a directory written by :func:`write` (it holds the marker file)."""
    return os.path.isfile(os.path.join(path, MARKER))


def write(
    directory: str,
    params: Any,
    hf_config: dict,
    *,
    dtype: str,
    source: str,
    tokenizer: Callable[[str], None] | None = None,
    force: bool = False,
    extra: dict | None = None,
) -> str:
    """Write a converted directory atomically.

    Args:
      directory: the directory to create.
      params: the converted state: a pytree of arrays (numpy or jax).
      hf_config: the HF-style config dict (written as ``config.json``).
      dtype: the parameters' dtype name, recorded.
      source: the path converted from, recorded.
      tokenizer: called with the temporary directory to write the tokenizer files into (or None).
      force: replace an existing ``directory``.
      extra: more fields for the marker (the cache's source identity).

    Returns:
      ``directory``.

    Raises:
      CheckpointError: ``directory`` exists and ``force`` is False, or it cannot be written.
    """
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    if os.path.lexists(directory):
        if not force:
            raise CheckpointError(f"{directory} already exists; pass --force (force=True) to replace it")
        replaceable = (is_converted(directory) or parent == os.path.abspath(cache_dir())
                       or (os.path.isdir(directory) and not os.listdir(directory)))
        if not replaceable:
            raise CheckpointError(f"{directory} is neither empty nor a converted checkpoint; refusing to replace "
                                  "it even with --force. Remove it yourself or choose another directory")
    os.makedirs(parent, exist_ok=True)
    remove_abandoned(parent)
    tmp = os.path.join(parent, f".{os.path.basename(directory)}{_TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(tmp)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2, sort_keys=True, default=_json_default)
        if tokenizer is not None:
            tokenizer(tmp)
        save_state(os.path.join(tmp, STATE), params)
        files = {}
        for root, _, names in os.walk(tmp):
            for name in names:
                full = os.path.join(root, name)
                files[os.path.relpath(full, tmp)] = os.path.getsize(full)
        marker = {"format": FORMAT, "format_version": FORMAT_VERSION, "steerjax": _version(), "dtype": dtype,
                  "source": source, "files": dict(sorted(files.items())), **(extra or {})}
        with open(os.path.join(tmp, MARKER), "w") as f:  # last: a directory without it never loads
            json.dump(marker, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _replace(tmp: str, directory: str) -> None:
    """Rename ``tmp`` to ``directory``, replacing what stands there."""
    old = None
    if os.path.lexists(directory):
        old = f"{tmp}.old"
        os.rename(directory, old)
    os.rename(tmp, directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_abandoned(parent: str) -> None:
    """Remove temporary directories under ``parent`` left by conversions whose process is gone."""
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            m = _TMP_NAME.match(name)
            if m and not _alive(int(m.group(1))):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_marker(directory: str) -> dict:
    """The marker of a converted directory, checked: format, version, and every listed file present
    with its recorded size.

    Raises:
      CheckpointError: not a converted directory, another format version, or a file missing or
        truncated (the message names it).
    """
    path = os.path.join(directory, MARKER)
    try:
        with open(path) as f:
            marker = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{directory} is not a converted steerjax checkpoint (no {MARKER}); "
                              "write one with `steerjax convert`") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); convert the model again") from e
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a steerjax checkpoint marker; convert the model again")
    if marker.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{directory} has checkpoint format {marker.get('format_version')}, this steerjax "
                              f"reads {FORMAT_VERSION}; convert the model again with this version")
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{path} lists no files; convert the model again")
    for rel, size in files.items():
        full = os.path.join(directory, rel)
        try:
            actual = os.path.getsize(full)
        except OSError:
            raise CheckpointError(f"checkpoint file {full} is missing; convert the model again") from None
        if actual != size:
            raise CheckpointError(f"checkpoint file {full} has {actual} bytes but {size} were written: it is "
                                  "truncated or was changed; convert the model again")
    return marker


def read_hf_config(directory: str) -> dict:
    """The ``config.json`` of a converted directory, as a dict."""
    path = os.path.join(directory, "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); convert the model again") from e


# ----------------------------------------------------------------------------- orbax state


def save_state(path: str, params: Any) -> None:
    """Save a pytree of arrays as an orbax checkpoint at ``path`` (synchronously, uncompressed:
    restoring SmolLM2's 0.5 GB takes ~1.3 s instead of ~2 s with orbax's default zstd, for
    1.5x the disk)."""
    import orbax.checkpoint as ocp

    with _quiet_absl(), ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False)) as ckptr:
        ckptr.save(os.path.abspath(path), args=ocp.args.PyTreeSave(params))


def abstract_state(path: str) -> Any:
    """The checkpoint's pytree of ``jax.ShapeDtypeStruct`` (no sharding), from its metadata."""
    import jax
    import orbax.checkpoint as ocp

    try:
        with _quiet_absl(), ocp.StandardCheckpointer() as ckptr:
            meta = ckptr.metadata(os.path.abspath(path))
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds for a damaged directory
        raise CheckpointError(f"the orbax metadata of {path} is unreadable ({type(e).__name__}: {e}); "
                              "convert the model again") from e
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype)), tree)


def restore_state(path: str, *, dtype: Any = None, shardings: Callable[[Any], Any] | None = None) -> Any:
    """Restore the pytree saved at ``path``, each leaf straight into its sharding.

    Args:
      path: an orbax checkpoint written by :func:`save_state`.
      dtype: cast every floating leaf to this dtype while reading (None: as saved).
      shardings: called with the abstract tree (``ShapeDtypeStruct`` leaves); returns a tree of
        ``jax.sharding.Sharding`` of the same structure. None: every leaf on the default device.

    Raises:
      CheckpointError: the checkpoint cannot be read (the message says which path).
    """
    import jax
    import orbax.checkpoint as ocp

    abstract = abstract_state(path)
    if dtype is not None:
        abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(
            s.shape, np.dtype(dtype) if np.issubdtype(s.dtype, np.floating) or s.dtype.name == "bfloat16"
            else s.dtype), abstract)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        placement = jax.tree.map(lambda _: device, abstract)
    else:
        placement = shardings(abstract)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, placement)
    try:
        with _quiet_absl(), ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(os.path.abspath(path), target)
    except Exception as e:  # noqa: BLE001 - tensorstore/orbax errors of damaged files
        raise CheckpointError(f"cannot restore the orbax checkpoint {path} ({type(e).__name__}: "
                              f"{str(e)[:300]}); convert the model again") from e


@contextlib.contextmanager
def _quiet_absl():
    """orbax logs its progress through absl at INFO/WARNING; a command prints only its own lines."""
    try:
        from absl import logging as absl_logging
    except ImportError:  # pragma: no cover - absl comes with orbax
        yield
        return
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(level)


# ----------------------------------------------------------------------------- conversion cache


def cache_root() -> str:
    """``$STEERJAX_CACHE``, default ``~/.cache/steerjax`` (as :func:`steerjax.data.store.cache_root`)."""
    value = os.environ.get(CACHE_VARIABLE, "").strip()
    return os.path.expanduser(value) if value else os.path.join(os.path.expanduser("~"), ".cache", "steerjax")


def cache_dir() -> str:
    """Where converted models are cached: ``<cache root>/models``."""
    return os.path.join(cache_root(), "models")


def source_identity(path: str, dtype: str) -> dict:
    """What a cache entry must match: the source's path, the size and mtime of its files (a GGUF
    file, or the top-level files of an HF directory), the dtype and the steerjax version."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
    else:
        names = [""]
    files = {}
    for name in names:
        st = os.stat(os.path.join(path, name) if name else path)
        files[name or os.path.basename(path)] = [st.st_size, st.st_mtime_ns]
    return {"source": path, "source_files": files, "dtype": dtype, "steerjax": _version(),
            "format_version": FORMAT_VERSION}


def cache_entry(path: str, dtype: str) -> str:
    """The cache directory of ``(path, dtype)`` (one entry per source and dtype)."""
    key = hashlib.sha256(f"{os.path.abspath(path)}|{dtype}".encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), key)


def cache_lookup(path: str, dtype: str) -> str | None:
    """The cache entry of ``path`` converted to ``dtype`` when it is present, complete and current;
    else None. A present entry that is stale (the source or steerjax changed) or damaged is
    reported in one :class:`CacheWarning` line and removed, to be rebuilt."""
    entry = cache_entry(path, dtype)
    if not os.path.lexists(entry):
        return None
    try:
        marker = read_marker(entry)
    except CheckpointError as e:
        return _drop(entry, f"damaged ({e})")
    want = source_identity(path, dtype)
    got = {k: marker.get(k) for k in want}
    if got != want:
        changed = [k for k in want if got[k] != want[k]]
        return _drop(entry, f"stale ({', '.join(changed)} changed)")
    return entry


def cache_failed(path: str, dtype: str, error: Exception) -> None:
    """Report (one warning line) and remove the entry of ``path`` that failed to restore."""
    _drop(cache_entry(path, dtype), f"damaged ({error})")


def _drop(entry: str, why: str) -> None:
    warnings.warn(f"conversion cache entry {entry} is {why}; converting again and rebuilding it",
                  CacheWarning, stacklevel=3)
    shutil.rmtree(entry, ignore_errors=True)
    with contextlib.suppress(OSError):
        if os.path.lexists(entry):
            os.remove(entry)
    return None


def cache_store(path: str, dtype: str, params: Any, hf_config: dict,
                tokenizer: Callable[[str], None] | None = None) -> str | None:
    """Write the cache entry of ``path`` (atomically; an existing entry is replaced).

    Only one process writes (a multi-process job reads entries another run wrote). A failure to
    write (a read-only or full disk) is a warning: the cache is only an optimisation.
    Entries whose source no longer exists are removed first. Returns the entry, or None.
    """
    import jax

    if jax.process_count() > 1:
        return None
    entry = cache_entry(path, dtype)
    try:
        prune()
        return write(entry, params, hf_config, dtype=dtype, source=os.path.abspath(path), tokenizer=tokenizer,
                     force=True, extra=source_identity(path, dtype))
    except (OSError, CheckpointError) as e:
        warnings.warn(f"could not write the conversion cache entry {entry} ({e}); set {CACHE_VARIABLE} to a "
                      "writable directory or pass cache=False", CacheWarning, stacklevel=3)
        return None


def prune() -> list[str]:
    """Remove cache entries whose source is gone, and abandoned temporary directories; returns the
    removed entries."""
    root = cache_dir()
    removed = []
    if not os.path.isdir(root):
        return removed
    remove_abandoned(root)
    for name in os.listdir(root):
        entry = os.path.join(root, name)
        if name.startswith("."):
            continue
        try:
            with open(os.path.join(entry, MARKER)) as f:
                source = json.load(f).get("source")
        except (OSError, json.JSONDecodeError, AttributeError):
            continue  # a damaged entry is reported when its source is loaded
        if isinstance(source, str) and not os.path.exists(source):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _version() -> str:
    return __version__


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
