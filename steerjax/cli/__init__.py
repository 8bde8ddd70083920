"""The ``steerjax`` command line.

Examples::

    steerjax info                                   # the default model (SmolLM2-135M-Instruct)
    steerjax info /models/llama --json
    steerjax generate --prompt "Tell me about cats"
    steerjax generate MODEL --prompt "Hi" --vector happy.safetensors --multiplier 4 --compare
    steerjax serve MODEL --vector happy.safetensors --multiplier 4   # OpenAI chat API, steered

One module per command group (:mod:`~steerjax.cli.generate`: info and generate;
:mod:`~steerjax.cli.sweep`: datasets, vector, sweep; :mod:`~steerjax.cli.profile`;
:mod:`~steerjax.cli.predictor`: testbed and predictor), each a parser and a handler that checks its
arguments, reads the model's config, loads the model and calls the library. Shared checks live in
:mod:`steerjax.cli.checks` and :mod:`steerjax.paths`.

How every command behaves:

- arguments, input files and output paths are checked before the model's weights load (the
  model's config is read first, in milliseconds, for checks that need its depth or width);
- errors that steerjax raises on purpose (:class:`steerjax.errors.SteerjaxError`) and usage
  errors print ``error: <message>`` to stderr and exit with status 2;
- an existing output is replaced only with ``--force``; a run directory (``--out`` of sweep,
  profile, testbed) is resumed only when it holds the same run;
- Ctrl-C (SIGINT) prints ``interrupted: rerun the same command to resume`` and exits with status
  130 within about a second, even while a compiled computation runs; run directories keep every
  finished chunk;
- a closed pipe (``steerjax datasets | head -1``) ends the command quietly (status 141).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from steerjax.errors import SteerjaxError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports a command killed by Ctrl-C
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141, as a shell reports a writer whose reader left
INTERRUPTED = "interrupted: rerun the same command to resume"
GRACE_SECONDS = 1.0  # after Ctrl-C, the main thread's time to unwind before the process exits


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
      argv: arguments without the program name; default ``sys.argv[1:]``. As the real command
        (``argv`` None), Ctrl-C also ends a process stuck in a compiled computation.

    Returns:
      The exit status: 0 on success, 2 after an error (printed as ``error: ...``), 130 after
      Ctrl-C, 141 when the reader of stdout went away.
    """

    def command() -> int:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help, --version or a usage error, already printed
            return e.code if isinstance(e.code, int) else EXIT_ERROR
        return args.run(args)

    return _behave(command, hard=argv is None)


def guarded(script: Callable[[], object]) -> NoReturn:
    """Run an experiment script's ``main()`` as the command line runs a command (errors as
    ``error: ...`` and status 2, Ctrl-C as one line and status 130, a closed pipe quietly), then
    exit the process."""
    sys.exit(_behave(lambda: (script(), 0)[1], hard=True))


def _behave(command: Callable[[], int], *, hard: bool) -> int:
    with _interrupts(hard=hard) as interrupted:
        try:
            code = command()
            sys.stdout.flush()  # a closed pipe shows here, not at exit where it cannot be caught
            return code
        except SteerjaxError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_ERROR
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        except KeyboardInterrupt:
            interrupted()
            return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every subcommand."""
    from steerjax import __version__
    from steerjax.cli import convert, data, generate, predictor, profile, serve, sweep

    parser = Parser(prog="steerjax",
                    description="Measure and control how steerable language models are, in JAX.")
    parser.add_argument("--version", action="version", version=f"steerjax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate.add_commands(sub)
    sweep.add_commands(sub)
    profile.add_commands(sub)
    predictor.add_commands(sub)
    data.add_commands(sub)
    convert.add_commands(sub)
    serve.add_commands(sub)
    return parser


class Parser(argparse.ArgumentParser):
    """argparse with the command line's error format: the usage, then ``error: <message>``."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------- signals and pipes


@contextlib.contextmanager
def _interrupts(*, hard: bool) -> Iterator:
    """Ctrl-C: one line on stderr, then exit 130.

    The main thread gets ``KeyboardInterrupt`` as usual, but Python delivers it only between
    bytecodes, and a JIT compile or a device computation can keep the main thread in C++ for
    minutes. With ``hard``, the signal is also written to a wakeup pipe that a watcher thread
    reads at once: it prints the line and, if the main thread has not finished unwinding after
    :data:`GRACE_SECONDS`, ends the process. Run directories survive that (they survive SIGKILL).
    Yields the function that prints the line (once).
    """
    said = threading.Event()
    lock = threading.Lock()

    def announce() -> None:
        with lock:
            if not said.is_set():
                lead = "\n" if _isatty(sys.stderr) else ""  # leave a progress bar's line
                os.write(2, f"{lead}{INTERRUPTED}\n".encode())
                said.set()  # only once written: whoever sees it set may end the process

    if (not hard or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):  # e.g. a background job of a script
        yield announce
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            data = os.read(read_fd, 64)
            if not data or 0 in data:  # the command finished
                return
            if signal.SIGINT in data:
                announce()
                if not finished.wait(GRACE_SECONDS):
                    os._exit(EXIT_INTERRUPTED)

    def unraisable(info) -> None:  # a KeyboardInterrupt in a gc callback or __del__: the watcher ends the run
        if not (isinstance(info.exc_type, type) and issubclass(info.exc_type, KeyboardInterrupt)):
            old_hook(info)

    finished = threading.Event()
    watcher = threading.Thread(target=watch, name="steerjax-interrupts", daemon=True)
    watcher.start()
    old_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield announce
    finally:
        finished.set()
        sys.unraisablehook = old_hook
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGINT, old_handler)
        os.write(write_fd, b"\0")
        watcher.join(GRACE_SECONDS)
        os.close(write_fd)
        os.close(read_fd)
        if said.is_set():  # the interpreter's shutdown (JAX's runtime, thread joins) can take seconds
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
            os._exit(EXIT_INTERRUPTED)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush into the closed pipe
    raises nothing."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
