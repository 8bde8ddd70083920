"""The ``steerjax`` command line.

Examples::

    steerjax info                                   # the default model (SmolLM2-135M-Instruct)
    steerjax info /models/llama --json
    steerjax generate --prompt "Tell me about cats"
    steerjax generate MODEL --prompt "Hi" --vector happy.safetensors --multiplier 4 --compare
    steerjax serve MODEL --vector happy.safetensors --multiplier 4   # OpenAI chat API, steered
    steerjax report --preset quick --out runs/report                  # the three papers, one page

One module per command group (:mod:`~steerjax.cli.generate`: info and generate;
:mod:`~steerjax.cli.sweep`: datasets, vector, sweep; :mod:`~steerjax.cli.reliability`;
:mod:`~steerjax.cli.profile`;
:mod:`~steerjax.cli.predictor`: testbed and predictor; :mod:`~steerjax.cli.report`: the
cross-paper report), each a parser and a handler that checks its
arguments, reads the model's config, loads the model and calls the library. Shared checks live in
:mod:`steerjax.cli.checks` and :mod:`steerjax.runs`.

How every command behaves:

- arguments, input files and output paths are checked before the model's weights load (the
  model's config is read first, in milliseconds, for checks that need its depth or width);
- errors that steerjax raises on purpose (:class:`steerjax.errors.SteerjaxError`) and usage
  errors print one line, ``error: <message>``, to stderr and exit with status 2 (a usage error
  names the command that was typed, ``see steerjax sweep --help``; the usage itself is printed
  only by ``--help`` and when a command is missing);
- negative numbers in any notation are values (``--multipliers 1e30 -1e30``), and a flag given
  with its opposite (``--chat --no-chat``) is refused (:class:`Parser`);
- an existing output is replaced only with ``--force``; a run directory (``--out`` of sweep,
  profile, testbed) is resumed only when it holds the same run; ``vector train --method learned``
  keeps checkpoints beside its ``--out`` file (``OUT.checkpoint/``) until the vector is written,
  and resumes from them the same way;
- Ctrl-C (SIGINT) prints ``interrupted: rerun the same command to resume`` and exits with status
  130 within about a second, at any moment: while the libraries import (:mod:`steerjax.interrupts`),
  while a compiled computation runs, and when Python swallows the interrupt in a garbage
  collector callback; run directories keep every finished chunk, and outputs are written to
  temporary files renamed into place, so nothing is left half-written;
- a closed pipe (``steerjax datasets | head -1``) ends the command quietly (status 141).
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from steerjax.cli import convert, data, generate, predictor, profile, reliability, report, serve, sweep
from steerjax.cli.checks import fold_revision
from steerjax.errors import SteerjaxError
from steerjax.interrupts import EXIT_INTERRUPTED, INTERRUPTED  # noqa: F401  (re-exported; see steerjax.interrupts)
from steerjax.version import __version__

EXIT_ERROR = 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141, as a shell reports a writer whose reader left
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
        if hasattr(args, "model"):
            fold_revision(args)
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
    parser = Parser(prog="steerjax",
                    description="Measure and control how steerable language models are, in JAX.")
    parser.add_argument("--version", action="version", version=f"steerjax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate.add_commands(sub)
    sweep.add_commands(sub)
    reliability.add_commands(sub)
    profile.add_commands(sub)
    predictor.add_commands(sub)
    data.add_commands(sub)
    convert.add_commands(sub)
    serve.add_commands(sub)
    report.add_commands(sub)
    return parser


#: a negative number in any notation Python's ``float`` reads (``-1``, ``-.5``, ``-1e30``, ``-1E-3``,
#: ``-1_000``, ``-inf``): a value, never an option (argparse's own pattern misses exponents)
NEGATIVE_NUMBER = re.compile(r"^-(?:(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][-+]?\d+)?|inf(?:inity)?|nan)$",
                             re.IGNORECASE)


class Parser(argparse.ArgumentParser):
    """argparse as the command line wants it:

    - one line, ``error: <message> (see <command> --help)``, from the command that was typed (a
      subcommand's unknown flag is reported by the subcommand); the usage comes only with
      ``--help`` or when a command is missing;
    - negative numbers in any notation are values (``--multipliers 1e30 -1e30``);
    - a flag given with its opposite (``--chat --no-chat``), or two flags that set the same
      thing, are refused instead of the last one silently winning.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        self._given = args
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:  # here, not in the top-level parser, which would report them under its own usage
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        self._refuse_contradictions(args)
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        missing = self._missing_command(message)
        if missing is not None:
            self.print_usage(sys.stderr)
            message += f" (one of: {', '.join(missing)})"
        elif message.startswith("the following arguments are required") and self._unknown():
            message = f"unrecognized arguments: {' '.join(self._unknown())}"  # the likelier mistake: a typo
        self.exit(EXIT_ERROR, f"error: {message} (see {self.prog} --help)\n")

    def _unknown(self) -> list[str]:
        """The options given to this command that it does not know (argparse reports missing
        required arguments first: ``sweep --multiplier 2`` would say that ``--out`` is missing)."""
        if any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            return []  # a command with subcommands: the rest of the line is theirs
        unknown = []
        for arg in getattr(self, "_given", ()):
            if arg == "--":
                break
            if arg.startswith(tuple(self.prefix_chars)) and len(arg) > 1 and self._option(arg)[0] is None \
                    and not NEGATIVE_NUMBER.match(arg):
                unknown.append(arg)
        return unknown

    def _missing_command(self, message: str) -> list[str] | None:
        """The choices of this parser's subcommand when ``message`` says it is missing."""
        if not message.startswith("the following arguments are required"):
            return None
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and (action.metavar or action.dest) in message:
                return list(action.choices)
        return None

    def _refuse_contradictions(self, args: Sequence[str]) -> None:
        """Two option strings of one setting on one command line: ``--chat --no-chat`` (one
        BooleanOptionalAction) or two actions with one ``dest`` (``--quiet --verbose``)."""
        seen: dict[str, str] = {}  # dest -> the option string given first
        for arg in args:
            if arg == "--":
                break
            action, option = self._option(arg)
            if action is None or action.dest in (argparse.SUPPRESS, "help"):
                continue
            first = seen.setdefault(action.dest, option)
            if first != option and _opposed(self._option_string_actions[first], first, action, option):
                self.error(f"argument {option}: not allowed with argument {first}")

    def _option(self, arg: str) -> tuple[argparse.Action | None, str]:
        if not arg.startswith(tuple(self.prefix_chars)) or NEGATIVE_NUMBER.match(arg):
            return None, arg
        name = arg.split("=", 1)[0]
        if name in self._option_string_actions:
            return self._option_string_actions[name], name
        if self.allow_abbrev and name.startswith("--"):
            matches = [o for o in self._option_string_actions if o.startswith(name)]
            if len(matches) == 1:
                return self._option_string_actions[matches[0]], matches[0]
        return None, arg


def _opposed(first: argparse.Action, first_option: str, action: argparse.Action, option: str) -> bool:
    """Whether two option strings of one ``dest`` say different things (not a repeated flag)."""
    if first is not action:
        return not isinstance(action, argparse._AppendAction)
    if isinstance(action, argparse.BooleanOptionalAction):
        return first_option.startswith("--no-") != option.startswith("--no-")
    return False  # -o and --output: two spellings of one flag


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

    def unraisable(info) -> None:
        """A KeyboardInterrupt raised in a gc callback (JAX's ``_xla_gc_callback``) or a
        ``__del__`` is swallowed by Python: interrupt the main thread again, a moment later from
        another thread, so that it gets the interrupt in its own code, after this hook (raised in
        here, it would be swallowed again). The watcher ends the run after the grace period in
        any case."""
        if isinstance(info.exc_type, type) and issubclass(info.exc_type, KeyboardInterrupt):
            _thread.start_new_thread(_interrupt_main_soon, ())  # a C call: no wait for the thread
        else:
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


def _interrupt_main_soon() -> None:
    time.sleep(0.05)
    _thread.interrupt_main()


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
