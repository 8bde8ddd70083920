"""Models from the Hugging Face Hub: only the files a step needs, at one pinned commit.

- Reading a config (``load_config``, ``steerjax info``, every command's pre-flight checks) fetches
  ``config.json`` and the tokenizer files, nothing else.
- Loading the weights fetches exactly the shards that ``model.safetensors.index.json`` names, or
  the one ``model.safetensors``: never a second copy of the weights (Mistral's
  ``consolidated.safetensors``), never ``*.bin``.
- ``revision`` (a branch, tag or commit; also ``org/name@revision``) is resolved once, by one
  listing of the repository at that revision, to a commit; every file is then fetched at that
  commit, so a push in between cannot mix two versions. The commit is the name of the snapshot
  folder the files land in (``.../models--org--name/snapshots/<commit>``): :func:`commit_of`.
- The Hub cache's own layout is a source: a repository folder ``models--org--name`` (its
  ``refs/main``, or a revision) or a snapshot folder in it. A snapshot without its weights gets
  them at its own commit.

Everything goes through ``huggingface_hub`` (``HF_ENDPOINT``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``
and tokens as it reads them). Offline, or when the Hub cannot be reached, a snapshot already in
the cache for that revision is used.
"""

from __future__ import annotations

import json
import os
import re

from steerjax.errors import CheckpointError, ModelNotFoundError
from steerjax.models.checkpoint import TOKENIZER_FILES  # fetched with the config

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_hub_id(text: str) -> bool:
    """Whether ``text`` has the form ``org/name`` (with an optional ``@revision``)."""
    return bool(_HUB_ID.match(split_revision(text)[0]))


def split_revision(source: str, revision: str | None = None) -> tuple[str, str | None]:
    """``("org/name", revision)`` of ``"org/name@revision"``; a ``revision`` argument must agree.

    Raises:
      ModelNotFoundError: two different revisions were given.
    """
    name, at, rev = source.partition("@")
    if not at:
        return source, revision
    if not rev:
        raise ModelNotFoundError(f"{source!r}: nothing after '@'; write org/name@REVISION (a branch, tag or commit)")
    if revision is not None and revision != rev:
        raise ModelNotFoundError(f"{source!r} names revision {rev!r} but revision={revision!r} was given too")
    return name, rev


def commit_of(path: str) -> str | None:
    """The commit of a Hub snapshot folder (``.../models--org--name/snapshots/<commit>``), else None."""
    repo = _snapshot_repo(path)
    return None if repo is None else os.path.basename(os.path.normpath(path))


def repo_of(path: str) -> str | None:
    """``org/name`` of a Hub snapshot or repository folder, else None."""
    path = os.path.normpath(os.path.abspath(path))
    repo = _snapshot_repo(path)
    if repo is None and _is_repo_folder(path):
        repo = path
    if repo is None:
        return None
    return os.path.basename(repo)[len("models--"):].replace("--", "/", 1)


def snapshot_of_repo_folder(path: str, revision: str | None = None) -> str | None:
    """The snapshot folder of a cache repository folder (``models--org--name``) at ``revision``
    (default ``main``); None when ``path`` is not such a folder.

    Raises:
      ModelNotFoundError: the folder holds no snapshot for that revision.
    """
    path = os.path.normpath(os.path.abspath(path))
    if not _is_repo_folder(path):
        return None
    commit = _cached_commit(path, revision or "main")
    if commit is None:
        have = sorted(os.listdir(os.path.join(path, "refs"))) if os.path.isdir(os.path.join(path, "refs")) else []
        raise ModelNotFoundError(f"{path} is a Hub cache folder without a snapshot for revision "
                                 f"{revision or 'main'!r} (refs there: {', '.join(have) or 'none'}); pass a revision "
                                 "it holds, or its snapshots/<commit> folder")
    return os.path.join(path, "snapshots", commit)


def has_weights(path: str) -> bool:
    """Whether a model folder holds its safetensors weights (every shard its index names)."""
    if os.path.isfile(os.path.join(path, SINGLE)):
        return True
    index = os.path.join(path, INDEX)
    if not os.path.isfile(index):
        return False
    try:
        shards = _index_shards(index)
    except CheckpointError:
        return True  # present but damaged: reading it reports that
    return all(os.path.isfile(os.path.join(path, s)) for s in shards)


def fetch(repo_id: str, revision: str | None = None, *, weights: bool) -> str:
    """The local snapshot folder of ``repo_id`` at ``revision`` with its config and tokenizer files,
    and with ``weights`` its safetensors weights, fetching only what is missing.

    Raises:
      ModelNotFoundError: the repository or revision does not exist, or cannot be reached and is
        not in the cache.
      CheckpointError: the repository has no ``config.json`` or no safetensors weights, or an index
        names a shard the repository lacks.
    """
    from huggingface_hub import HfApi, constants, hf_hub_download

    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    if constants.HF_HUB_OFFLINE:
        return _from_cache(repo_id, revision, weights, "HF_HUB_OFFLINE is set")
    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises many kinds (HTTP, connection, offline)
        if _unreachable(e):
            return _from_cache(repo_id, revision, weights, f"the Hub cannot be reached ({type(e).__name__})")
        raise ModelNotFoundError(f"{where!r} is not a local path, so it was treated as a Hub id, and the Hub "
                                 f"answered: {_reason(e)}. Check the id and revision, or pass a local "
                                 "directory.") from e
    commit, files = info.sha, {s.rfilename for s in (info.siblings or [])}
    if not commit or not _COMMIT.match(commit):
        raise ModelNotFoundError(f"the Hub gave no commit for {where!r} (got {commit!r})")
    if "config.json" not in files:
        raise CheckpointError(f"{where} has no config.json at commit {commit}: not a transformers model repository")

    def get(name: str) -> str:
        try:
            return hf_hub_download(repo_id, name, revision=commit)
        except Exception as e:  # noqa: BLE001
            raise ModelNotFoundError(f"downloading {name} of {where} (commit {commit}) failed: {_reason(e)}") from e

    folder = os.path.dirname(get("config.json"))
    _record_ref(folder, revision or "main", commit)
    for name in TOKENIZER_FILES:
        if name in files:
            get(name)
    if weights:
        for name in _weight_files(files, lambda: get(INDEX), where):
            get(name)
    return folder


def _record_ref(snapshot: str, revision: str, commit: str) -> None:
    """``refs/<revision>`` -> ``commit`` in the cache (as huggingface_hub writes it when it resolves
    a revision itself): files fetched at the commit are then found offline, and from the
    repository folder, by their revision's name."""
    if revision == commit or _snapshot_repo(snapshot) is None or any(
            p in ("", ".", "..") for p in revision.split("/")):
        return
    ref = os.path.join(_snapshot_repo(snapshot), "refs", *revision.split("/"))
    try:
        os.makedirs(os.path.dirname(ref), exist_ok=True)
        tmp = f"{ref}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(commit)
        os.replace(tmp, ref)
    except OSError:  # a read-only cache: the snapshot still loads by its path
        pass


def _weight_files(files: set[str], index_path, where: str) -> list[str]:
    if INDEX in files:
        shards = _index_shards(index_path())
        absent = sorted(set(shards) - files)
        if absent:
            raise CheckpointError(f"{where}: {INDEX} names shards the repository lacks: {absent[:5]}")
        return shards
    if SINGLE in files:
        return [SINGLE]
    others = sorted(f for f in files if f.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf")))
    raise CheckpointError(f"{where} has neither {SINGLE} nor {INDEX}" + (
        f" (it holds {others[:5]}: steerjax reads transformers' safetensors layout, or one .gguf file "
        "downloaded yourself)" if others else ""))


def _index_shards(path: str) -> list[str]:
    try:
        with open(path) as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors index ({e})") from e
    bad = [s for s in shards if not isinstance(s, str) or "/" in s or "\\" in s or s in ("", ".", "..")]
    if bad:
        raise CheckpointError(f"{path} names shard files outside its folder: {bad[:5]}")
    return shards


def _from_cache(repo_id: str, revision: str | None, weights: bool, why: str) -> str:
    from huggingface_hub import constants

    folder = os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"))
    commit = _cached_commit(folder, revision or "main") if os.path.isdir(folder) else None
    where = repo_id + (f"@{revision}" if revision else "")
    if commit is None or not os.path.isfile(os.path.join(folder, "snapshots", commit, "config.json")):
        raise ModelNotFoundError(f"{where!r} is not in the Hub cache ({constants.HF_HUB_CACHE}) and {why}. "
                                 "Connect once to download it, or pass a local directory.")
    snapshot = os.path.join(folder, "snapshots", commit)
    if weights and not has_weights(snapshot):
        raise ModelNotFoundError(f"the cached snapshot {snapshot} of {where} lacks its weights and {why}. "
                                 "Connect once to download them.")
    return snapshot


def _cached_commit(repo_folder: str, revision: str) -> str | None:
    if _COMMIT.match(revision) and os.path.isdir(os.path.join(repo_folder, "snapshots", revision)):
        return revision
    try:
        with open(os.path.join(repo_folder, "refs", revision)) as f:
            commit = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    ok = _COMMIT.match(commit) and os.path.isdir(os.path.join(repo_folder, "snapshots", commit))
    return commit if ok else None


def _snapshot_repo(path: str) -> str | None:
    """The repository folder of a snapshot folder, else None."""
    path = os.path.normpath(os.path.abspath(path))
    parent = os.path.dirname(path)
    if (_COMMIT.match(os.path.basename(path)) and os.path.basename(parent) == "snapshots"
            and os.path.basename(os.path.dirname(parent)).startswith("models--")):
        return os.path.dirname(parent)
    return None


def _is_repo_folder(path: str) -> bool:
    return (os.path.basename(path).startswith("models--") and os.path.isdir(os.path.join(path, "snapshots")))


def _unreachable(error: Exception) -> bool:
    """Whether ``error`` means "no connection" (offline mode, DNS, refused, timeout), not an answer."""
    kinds: tuple = (ConnectionError, TimeoutError)
    for module, names in (("huggingface_hub.utils", ("OfflineModeIsEnabled",)),
                          ("requests", ("ConnectionError", "Timeout")),
                          ("httpx", ("TransportError",))):  # huggingface_hub >= 1.0 talks through httpx
        try:
            mod = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        kinds += tuple(getattr(mod, n) for n in names if hasattr(mod, n))
    return isinstance(error, kinds)


def _reason(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"
