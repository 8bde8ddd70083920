"""Ctrl-C while the ``steerjax`` command is still importing its libraries.

``import steerjax`` imports JAX, transformers and the rest: seconds, before :func:`steerjax.cli.main`
can install its interrupt handling. Python's default handler would turn a Ctrl-C in those seconds
into a traceback, or into nothing at all when the ``KeyboardInterrupt`` lands in a garbage
collector callback (JAX's ``_xla_gc_callback``: "Exception ignored ...", then the command runs to
completion). So the package imports this module first, and when the process is the command line
(the ``steerjax`` script or ``python -m steerjax``) or one of this checkout's experiment scripts,
Ctrl-C prints the command line's one line and exits with status 130 at once: nothing has been
written yet. ``main()`` (and :func:`steerjax.cli.guarded`) replaces this handler with its own as
soon as it starts.

Imported as a library (``import steerjax`` in a program or a notebook), this module changes nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports a command killed by Ctrl-C
INTERRUPTED = "interrupted: rerun the same command to resume"


#: this checkout's experiment scripts (``experiments/<name>/run.py``), which run their ``main()``
#: under :func:`steerjax.cli.guarded`, as the command line runs a command
EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


def is_command() -> bool:
    """Whether this process is the ``steerjax`` command (its script, or ``python -m steerjax``) or
    one of this checkout's experiment scripts (``python experiments/quickstart/run.py``)."""
    main = sys.argv[0] if sys.argv else ""
    script = os.path.basename(main)
    for suffix in (".exe", "-script.py"):
        script = script.removesuffix(suffix)
    if script == "steerjax":
        return True
    if script == "run.py" and os.path.dirname(os.path.dirname(os.path.abspath(main))) == EXPERIMENTS:
        return True
    argv = list(getattr(sys, "orig_argv", ()))
    modules = [b for a, b in zip(argv, argv[1:]) if a == "-m"] + [a[2:] for a in argv if a.startswith("-m")]
    return any(m == "steerjax" or (m.startswith("experiments.") and m.endswith(".run")) for m in modules)


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
