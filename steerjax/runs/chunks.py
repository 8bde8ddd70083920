"""Run directories: the config beside the results, finished chunks recorded, resumable.

Layout::

    RUN_DIR/config.json        what was asked (a run with another config is refused)
    RUN_DIR/manifest.jsonl     one line per finished chunk: {"chunk": i, "rows": n}
    RUN_DIR/chunks/NNNNN.parquet

The manifest is the only record of what is finished; a chunk counts as done when it has a
manifest line *and* its file holds that many rows. Writing a chunk:

1. the table goes to ``NNNNN.parquet.tmp``, which is flushed to disk (fsync);
2. it is renamed to ``NNNNN.parquet`` and the directory is fsynced (the rename is durable);
3. the manifest line is appended in one write and fsynced.

A process killed at any moment (SIGKILL, power loss) therefore leaves one of these states, each
repaired when the directory is opened again:

- a ``*.tmp`` file: deleted;
- a chunk file without a manifest line (killed between 2 and 3): deleted, the chunk is redone;
- a torn last manifest line (no newline, or not JSON): dropped, the chunk is redone;
- a manifest line whose chunk file is missing or has another row count: dropped, redone;
- several lines for one chunk: one is kept.

When anything had to be dropped, the manifest is rewritten atomically (temporary file, fsync,
rename), so new lines are never appended after a torn one. Chunks are identified by their index
in the run's deterministic plan, so rows are never duplicated or lost across restarts.
"""


from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from steerjax.progress import tqdm
from steerjax.runs import atomic_write, claim, fsync_dir, fsync_file, lock, remove_file

MANIFEST = "manifest.jsonl"
CHUNKS = "chunks"


class RunDirectory:
    """A resumable run directory: ``done(i)``, ``save(i, table)``, ``load(i)`` per chunk ``i``.

    Args:
      path: the directory (created if missing).
      config: a JSON-serialisable description of the run; a directory holding a run with another
        config raises :class:`RunConfigError`. The directory is locked for this process
        (:func:`steerjax.runs.lock`): a second writer gets :class:`RunLockedError` naming the PID.
    """

    def __init__(self, path: str, config: dict[str, Any]):
        self.path = path
        os.makedirs(os.path.join(path, CHUNKS), exist_ok=True)
        lock(path)  # before anything is removed: another writer's in-flight files are not ours to delete
        self._remove_tmp_files()
        self.config = claim(path, config)
        self._rows: dict[int, int] = self._recover()

    # ------------------------------------------------------------------ public

    def done(self, chunk: int) -> bool:
        """Whether chunk ``chunk`` is finished (its table can be loaded)."""
        return int(chunk) in self._rows

    @property
    def finished(self) -> list[int]:
        """Indices of the finished chunks, sorted."""
        return sorted(self._rows)

    def save(self, chunk: int, table: pd.DataFrame) -> None:
        """Store the table of a finished chunk durably, then record it in the manifest."""
        chunk = int(chunk)
        final = self._chunk_path(chunk)
        tmp = final + ".tmp"
        table.to_parquet(tmp, index=False)
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(os.path.dirname(final))
        manifest = os.path.join(self.path, MANIFEST)
        created = not os.path.exists(manifest)
        line = (json.dumps({"chunk": chunk, "rows": len(table)}) + "\n").encode()
        fd = os.open(manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write: the line is never interleaved with another
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path)
        self._rows[chunk] = len(table)

    def load(self, chunk: int) -> pd.DataFrame:
        """The table of a finished chunk."""
        return pd.read_parquet(self._chunk_path(int(chunk)))

    # ------------------------------------------------------------------ recovery

    def _chunk_path(self, chunk: int) -> str:
        return os.path.join(self.path, CHUNKS, f"{chunk:05d}.parquet")

    def _remove_tmp_files(self) -> None:
        pattern = [os.path.join(self.path, CHUNKS, "*.parquet.tmp*"), os.path.join(self.path, MANIFEST + ".tmp*")]
        for path in (p for pat in pattern for p in glob.glob(pat)):
            remove_file(path)

    def _recover(self) -> dict[int, int]:
        """Finished chunks -> row counts, repairing what a crash can leave behind."""
        manifest = os.path.join(self.path, MANIFEST)
        entries: dict[int, int] = {}
        dirty = False
        if os.path.exists(manifest):
            with open(manifest, "rb") as f:
                data = f.read()
            lines = data.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            elif lines:  # the last line has no newline: torn by a crash
                lines.pop()
                dirty = True
            for raw in lines:
                entry = _parse_line(raw)
                if entry is None:
                    dirty = True
                    continue
                chunk, rows = entry
                if chunk in entries:
                    dirty = True  # a duplicate: the chunk's file was rewritten; check the last one
                entries[chunk] = rows
        done = {c: n for c, n in entries.items() if _parquet_rows(self._chunk_path(c)) == n}
        dirty = dirty or len(done) != len(entries)
        for path in glob.glob(os.path.join(self.path, CHUNKS, "*.parquet")):  # finished files not recorded
            stem = os.path.basename(path)[: -len(".parquet")]
            if not (stem.isdigit() and int(stem) in done):
                os.remove(path)
        if dirty:
            text = "".join(json.dumps({"chunk": c, "rows": n}) + "\n" for c, n in sorted(done.items()))
            atomic_write(manifest, text)
        return done


def _parse_line(raw: bytes) -> tuple[int, int] | None:
    try:
        entry = json.loads(raw)
        return int(entry["chunk"]), int(entry["rows"])
    except (ValueError, KeyError, TypeError):
        return None


def _parquet_rows(path: str) -> int | None:
    """Row count of a parquet file from its footer; ``None`` if missing or unreadable."""
    if not os.path.exists(path):
        return None
    try:
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows
    except Exception:  # noqa: BLE001 - a damaged file is simply not finished
        return None


def map_chunks(chunks: Sequence[Any], work: Callable[[int, Any], pd.DataFrame], *,
               store: RunDirectory | None = None, desc: str = "chunks", progress: bool = True) -> pd.DataFrame:
    """``work(i, chunk)`` for every chunk, concatenated in order; with a ``store`` the finished
    chunks are loaded instead of recomputed, each new one is saved as soon as it is done, and a
    resumed run says how many chunks it reuses."""
    chunks = list(chunks)
    reused = 0 if store is None else sum(store.done(i) for i in range(len(chunks)))
    if reused and progress:
        print(f"{desc}: resuming {store.path}: {reused} of {len(chunks)} chunks already done, reused",
              file=sys.stderr, flush=True)
    parts = []
    with tqdm(total=len(chunks), initial=reused, desc=desc, unit="chunk", disable=not progress or None) as bar:
        for i, chunk in enumerate(chunks):
            if store is not None and store.done(i):
                parts.append(store.load(i))
                continue
            part = work(i, chunk)
            if store is not None:
                store.save(i, part)
            parts.append(part)
            bar.update(1)
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts, ignore_index=True)
