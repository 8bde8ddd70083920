"""Ctrl-C while the ``steerjax`` command is still importing its libraries.

``import steerjax`` imports JAX, transformers and the rest: seconds, before :func:`steerjax.cli.main`
can install its interrupt handling. Python's default handler would turn a Ctrl-C in those seconds
into a traceback, or into nothing at all when the ``KeyboardInterrupt`` lands in a garbage
collector callback (JAX's ``_xla_gc_callback``: "Exception ignored ...", then the command runs to
completion). So the package imports this module first, and when the process is the command line
(the ``steerjax`` script or ``python -m steerjax``), Ctrl-C prints the command line's one line and
exits with status 130 at once: nothing has been written yet. ``main()`` replaces this handler with
its own as soon as it starts.

Imported as a library (``import steerjax`` in a program or a notebook), this module changes nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports a command killed by Ctrl-C
INTERRUPTED = "interrupted: rerun the same command to resume"


def is_command() -> bool:
    """Whether this process is the ``steerjax`` command (its script, or ``python -m steerjax``)."""
    script = os.path.basename(sys.argv[0] if sys.argv else "")
    for suffix in (".exe", "-script.py"):
        script = script.removesuffix(suffix)
    if script == "steerjax":
        return True
    argv = list(getattr(sys, "orig_argv", ()))
    return any(a == "-m" and b == "steerjax" for a, b in zip(argv, argv[1:])) or "-msteerjax" in argv


def exit_on_interrupt() -> None:
    """Make Ctrl-C print :data:`INTERRUPTED` and exit 130 at once (no traceback, nothing swallowed).

    For the seconds before a command's own handling starts: it is safe only while nothing is being
    written. Does nothing outside the main thread or when SIGINT is ignored (a background job)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return
    signal.signal(signal.SIGINT, _exit_now)


def _exit_now(signum, frame) -> None:
    lead = b"\n" if _isatty(2) else b""
    os.write(2, lead + INTERRUPTED.encode() + b"\n")
    os._exit(EXIT_INTERRUPTED)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


if is_command():
    exit_on_interrupt()
