"""Progress of long steps, on a terminal or not: the one progress helper of steerjax.

:func:`tqdm` takes tqdm's arguments and is a drop-in for ``tqdm.auto.tqdm``:

- on a terminal it *is* a tqdm bar;
- when the stream (stderr unless ``file=``) is not a terminal (a log file, a pipe, a cluster's job
  output), where tqdm's ``disable=None`` shows nothing, it prints plain lines instead::

      rollouts: 0/120 started
      rollouts: 14/120 (12%), 0.47 chunk/s, 30s elapsed, ETA 3m46s
      rollouts: 120/120 (100%) done in 4m15s, 0.47 chunk/s

  one when the step starts, then at most one every :func:`interval` seconds (``$STEERJAX_PROGRESS_SECONDS``,
  default 30) and one when it ends, so an hour-long run logs about 120 lines per step;
- ``disable=True`` shows nothing anywhere, as with tqdm (``progress=False`` of the library's functions).

Library code adopts it by changing its import: ``from steerjax.progress import tqdm``. A step
without a count (loading a model, fitting a classifier) says when it starts and ends with
:func:`stage`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

INTERVAL_ENV = "STEERJAX_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def interval() -> float:
    """Seconds between two plain progress lines: ``$STEERJAX_PROGRESS_SECONDS``, default 30."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 else DEFAULT_INTERVAL


@contextlib.contextmanager
def stage(name: str, *, file: TextIO | None = None, disable: bool | None = False,
          clock=time.monotonic) -> Iterator[None]:
    """``with stage("fitting CatBoost"):`` prints ``fitting CatBoost ...`` when the step starts and
    ``fitting CatBoost: done in 1m12s`` when it ends (nothing more after an error: the error says
    what happened), on a terminal or not; ``disable=True`` prints nothing."""
    stream = sys.stderr if file is None else file
    if disable is True:
        yield
        return
    start = clock()
    _write(stream, f"{name} ...")
    yield
    _write(stream, f"{name}: done in {_duration(clock() - start)}")


def tqdm(iterable: Iterable | None = None, *, desc: str | None = None, total: float | None = None,
         disable: bool | None = False, file: TextIO | None = None, unit: str = "it", **kwargs: Any):
    """A tqdm bar on a terminal, :class:`Lines` elsewhere, nothing with ``disable=True``.

    ``disable=None`` (tqdm's "only on a terminal") and ``disable=False`` both report: a bar on a
    terminal, plain lines otherwise. Other keyword arguments go to tqdm (and are ignored by
    :class:`Lines`, except ``initial``).
    """
    stream = sys.stderr if file is None else file
    if disable is True:
        from tqdm.auto import tqdm as bar

        return bar(iterable, desc=desc, total=total, disable=True, file=file, unit=unit, **kwargs)
    if _isatty(stream):
        from tqdm.auto import tqdm as bar

        return bar(iterable, desc=desc, total=total, disable=False, file=file, unit=unit, **kwargs)
    return Lines(iterable, desc=desc, total=total, file=stream, unit=unit, initial=kwargs.get("initial", 0))


def _message(s: str, file: TextIO | None = None, end: str = "\n") -> None:
    """``tqdm.write``: a line that does not break a bar on a terminal."""
    from tqdm.auto import tqdm as bar

    bar.write(s, file=file, end=end)


tqdm.write = _message  # type: ignore[attr-defined]  (as tqdm.auto.tqdm.write, for a drop-in)


class Lines:
    """Progress as plain lines (stage, done/total, rate, elapsed, ETA) for streams that are not a
    terminal. The subset of tqdm's interface that steerjax uses: iteration, ``update``,
    ``close``, ``set_description``, ``set_postfix``, ``write``, ``n``, ``total``, ``with``."""

    def __init__(self, iterable: Iterable | None = None, *, desc: str | None = None, total: float | None = None,
                 file: TextIO | None = None, unit: str = "it", initial: float = 0,
                 clock=time.monotonic, every: float | None = None):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.iterable, self.desc, self.total, self.unit = iterable, desc or "progress", total, unit
        self.file = sys.stderr if file is None else file
        self.n = self.initial = initial
        self.postfix = ""
        self._clock, self._every = clock, interval() if every is None else float(every)
        self._start = self._last = clock()
        self._closed = False
        self._emit(self._started())

    # ---------------------------------------------------------------- tqdm's interface

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("Lines() without an iterable cannot be iterated")
        completed = False
        try:
            for item in self.iterable:
                yield item
                self.update(1)
            completed = True
        finally:
            self.close(failed=not completed)

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self._every:
            self._last = now
            self._emit(self._status(now))

    def close(self, failed: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if failed:  # an error or Ctrl-C: the error's own line says what happened
            return
        now = self._clock()
        elapsed = now - self._start
        done = self._count(self.n) + (f"/{self._count(self.total)}" if self.total is not None else "")
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        self._emit(f"{self.desc}: {done}{pct} done in {_duration(elapsed)}{self._rate(elapsed)}{self._postfix()}")

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs: Any) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={_fmt(v)}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def refresh(self) -> None:
        pass

    def write(self, s: str, file: TextIO | None = None, end: str = "\n") -> None:
        (file or self.file).write(s + end)

    # ---------------------------------------------------------------- the lines

    def _started(self) -> str:
        if self.total is None:
            return f"{self.desc}: started"
        return f"{self.desc}: {self._count(self.n)}/{self._count(self.total)} started"

    def _status(self, now: float) -> str:
        elapsed = now - self._start
        parts = [f"{self.desc}: {self._count(self.n)}" + (f"/{self._count(self.total)}" if self.total else "")]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        text = parts[0] + self._rate(elapsed) + f", {_duration(elapsed)} elapsed"
        if self.total and rate > 0:
            text += f", ETA {_duration(max(self.total - self.n, 0) / rate)}"
        return text + self._postfix()

    def _rate(self, elapsed: float) -> str:
        done = self.n - self.initial
        if elapsed <= 0 or done <= 0:
            return ""
        rate = done / elapsed
        return f", {rate:.3g} {self.unit}/s" if rate >= 1 else f", {1 / rate:.3g} s/{self.unit}"

    def _postfix(self) -> str:
        return f" [{self.postfix}]" if self.postfix else ""

    @staticmethod
    def _count(value: float | None) -> str:
        return "?" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    def _emit(self, line: str) -> None:
        _write(self.file, line)


def _write(stream: TextIO, line: str) -> None:
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):  # a closed log: progress is never worth an error
        pass


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
