"""Run a command until the model's weights would load, then stop (``tests/test_readme_blocks.py``).

    python -m tests._until_load steerjax ARGS...      a steerjax command
    python -m tests._until_load FILE.py ARGS...       a script (an experiment, a README Python block)

Everything the command does before loading a model runs for real: argument parsing, the checks of
every input (datasets, concepts, presets, output paths, the model's config), the run directory's
``config.json``. ``steerjax.load_model`` (and ``steerjax.model.load_model``, which the studies and
the commands call) then raises :class:`WeightsWouldLoad`, a ``BaseException`` that no ``except
Exception`` swallows: the command stops there and this exits 0, printing ``stopped where the
model's weights would load``. Any other ending keeps its exit status (an ``error:`` is 2).
"""
from __future__ import annotations

import os
import runpy
import sys

STOPPED = "stopped where the model's weights would load"


class WeightsWouldLoad(BaseException):
    """Raised in place of loading a model's weights."""


def _refuse(source=None, *args, **kwargs):
    raise WeightsWouldLoad(source)


def main(argv: list[str]) -> int:
    import steerjax
    import steerjax.model

    steerjax.load_model = steerjax.model.load_model = _refuse
    try:
        if argv[0] == "steerjax":
            from steerjax.cli import main as cli

            return cli(argv[1:])
        script = os.path.abspath(argv[0])
        sys.argv = [argv[0], *argv[1:]]
        sys.path.insert(0, os.path.dirname(script))  # as `python FILE` puts the script's directory first
        runpy.run_path(script, run_name="__main__")
        return 0
    except WeightsWouldLoad as e:
        print(f"{STOPPED} ({e.args[0] if e.args else 'the default model'})", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
