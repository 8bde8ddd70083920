"""Every README command works verbatim (issue 29, point 2).

README.md is read at test time: each ```bash block, and each ```python block, is one test case
(``line-N``, the line of its opening fence), so a broken block names itself. A bash block's
commands are its lines that are not comments (a ``\\`` continues a line); a Python block is one
script. Each block runs in a fresh working directory, as one ``bash -e`` script (its commands in
order: an ``export`` holds for the commands after it, and a command reads what the ones before it
wrote, e.g. ``vector train`` then ``sweep`` of that vector), with the checkout's ``experiments/``
and ``tpu_scripts/`` linked in (the README's commands run from a checkout's root), this
interpreter's ``bin`` first on ``PATH`` (the ``steerjax`` command), torch importable (transformers
reads the SmolLM2 GGUF's tokenizer with it) and the session's steerjax cache.

What happens to each command is decided here, in three tables; a command no table names runs as it is:

- :data:`NOT_RUN`: cannot run in a test by nature (installs, the network, a server in the
  foreground, a TPU slice, a fragment of code).
- :data:`UNTIL_LOAD`: a study at a size that takes minutes to hours, run verbatim until the model's
  weights would load (``tests/_until_load.py``): its arguments, presets, datasets, concepts, output
  checks and run directory are real; its computation is not (the studies' smoke presets run end to
  end in their own test files, most on tiny models).
- :data:`SMALLER`: the other commands run to the end; one costing more than about 20 s on 2 CPU
  cores runs at a smaller size, documented values substituted (``--max-examples 40`` ->
  ``--max-examples 4``), never a flag added or removed. The README says so in the paragraph right
  under the block (checked here).

A new README block therefore runs unless a table says otherwise, and a table entry that matches no
README command fails the fast test below.

:data:`PLACEHOLDERS` names the README's placeholders and the value they stand for; a command run
by an earlier block (the same words) runs once; :data:`SETUP` makes what a block reads from a
command the README runs elsewhere (``runs/quickstart`` from ``make quickstart``).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from tests._until_load import STOPPED
from tests.helpers import ROOT, SMOLLM2_MISSING, smollm2_path, subprocess_env

README = os.path.join(ROOT, "README.md")

#: command (a regular expression, searched in a bash command or a Python block) -> why it is not run
NOT_RUN = {
    r"^python -m venv ": "creates and activates a virtual environment (the test runs in one)",
    r"^pip install ": "installs packages from an index (the test runs in the installed environment)",
    r"^make quickstart": "creates .venv and installs before its run; the run itself is SETUP below",
    r"^make test": "runs this test suite (CI's command)",
    r"^steerjax data download": "downloads from GitHub; tests/test_download.py runs it against a local server",
    r"^steerjax serve\b": "serves in the foreground until stopped; tests/test_serve.py starts and stops it",
    r"--judge-url http://127\.0\.0\.1:8000": "judges through the `steerjax serve` of the line above",
    r"^python experiments/steering_reliability/run\.py --preset full --model HuggingFaceTB/":
        "a hub model (the network) at the paper's scale: an accelerator's job",
    r"^tpu_scripts/(create|setup|launch|copy_back|delete)\.sh": "creates and uses a real TPU slice (gcloud); "
                                                                 "tests/test_tpu_scripts.py dry-runs them and runs "
                                                                 "them on a fake gcloud",
    r"from openai import OpenAI": "a client of a running `steerjax serve`",
    r"sharding\.make_mesh\(data=4, model=2\)": "a fragment: `model`, `examples`, `vector`, `prompts` and 8 "
                                               "devices are the reader's",
}

#: command -> why it runs only until the model's weights would load (measured on 2 shared CPU cores)
UNTIL_LOAD = {
    r"^steerjax report --preset quick": "26 min (its smoke preset, 2.5 min, runs in tests/test_report.py)",
    r"^steerjax report MODEL --concepts": "the quick preset on 3 concepts: about 10 min (estimated from 26 min for 8)",
    r"--method learned": "100 Adam steps, about an hour; the command has no flag for fewer",
    r"^steerjax reliability --preset quick": "8 min; even --preset smoke takes 2.7 min",
    r"^python experiments/steering_reliability/run\.py --preset quick": "8 min; even --preset smoke takes 3 min",
    r"^python experiments/prompt_steerability/run\.py --preset quick": "12 min; even --preset smoke takes 1.6 min",
    r"^steerjax profile --dims paper": "the paper's protocol on 32 dimensions: an accelerator's job",
    r"^python experiments/steerability_predictor/run\.py --preset quick": "68 min; even --preset smoke takes 1.5 min",
    r"^steerjax predictor study --preset quick": "68 min; even --preset smoke takes 1.5 min",
    r"reliability\.run\(": "the quick preset on two datasets: minutes; --preset smoke takes 2.7 min",
    r"Config\.preset\(\"paper\"": "the paper's 5 x 5 trials: 86 s even at one budget and 2 questions",
    r"sp\.run\(": "the smoke preset: about 1.5 min",
}

#: documented value -> the smaller one the test runs (in commands that run to the end)
SMALLER = {
    "--max-examples 40": "--max-examples 4",
    "--max-examples 24": "--max-examples 4",
    "--budgets 1 5 20": "--budgets 1",
    "--questions 8": "--questions 2",
    "--prompts 50": "--prompts 2",
    "--strengths 0.05 0.1 0.2 0.3 0.4 0.6": "--strengths 0.1 0.6",
    "--max-new-tokens 32": "--max-new-tokens 4",
    "max_examples=40": "max_examples=4",
    "max_examples=24": "max_examples=4",
}

#: the README's placeholders -> what they stand for (the README: MODEL "defaults to smollm2-135m-instruct")
PLACEHOLDERS = {"MODEL": "smollm2-135m-instruct"}

#: a path a block reads -> the command that writes it: what `make quickstart` runs once its
#: environment exists (the Makefile's quickstart target; checked below)
SETUP = {"runs/quickstart/": "python experiments/quickstart/run.py --out runs/quickstart"}

#: the checkout's directories the README's commands name, linked into each working directory
CHECKOUT = ("experiments", "tpu_scripts")


@dataclass
class Command:
    text: str  # as in the README, continuations joined
    mode: str = "run"  # run | until_load | not_run | earlier
    why: str = ""
    runs: str = ""  # what the test runs


@dataclass
class Block:
    line: int  # of the opening fence
    lang: str
    commands: list[Command]
    after: str  # the paragraph right under the block
    smaller: dict[str, str] = field(default_factory=dict)  # the SMALLER entries applied

    @property
    def id(self) -> str:
        return f"line-{self.line}"


def _substitute(text: str, table: dict[str, str], used: dict[str, str] | None = None) -> str:
    for old, new in table.items():
        pattern = r"(?<![\w.=-])" + r"\s+".join(map(re.escape, old.split())) + r"(?![\w.-])"
        text, n = re.subn(pattern, new, text)
        if n and used is not None:
            used[old] = new
    return text


def _classify(text: str) -> tuple[str, str]:
    for table, mode in ((NOT_RUN, "not_run"), (UNTIL_LOAD, "until_load")):
        hits = [(p, why) for p, why in table.items() if re.search(p, text, re.M)]
        assert len(hits) <= 1, f"{text!r} matches several entries: {hits}"
        if hits:
            return mode, hits[0][1]
    return "run", ""


def _until_load(command: str) -> str:
    """``steerjax ARGS`` / ``python FILE ARGS`` run by ``tests/_until_load.py``."""
    if command.startswith("steerjax "):
        return "python -m tests._until_load " + command
    assert command.startswith("python "), f"cannot stop {command!r} at the model load"
    return "python -m tests._until_load " + command.removeprefix("python ")


def parse_readme(path: str = README) -> list[Block]:
    """The README's ```bash and ```python blocks, each command classified and rewritten as the test runs it."""
    lines = open(path, encoding="utf-8").read().splitlines()
    blocks, seen = [], {}
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(bash|python)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.groups()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        body = [line[len(indent):] for line in lines[i + 1:end]]
        after = []
        for line in lines[end + 1:]:
            if line.strip() or after:
                if not line.strip():
                    break
                after.append(line)
        if lang == "python":
            texts = ["\n".join(body) + "\n"]
        else:
            texts, current = [], ""
            for line in body:
                if not current and (not line.strip() or line.lstrip().startswith("#")):
                    continue
                current += line.strip()
                if current.endswith("\\"):
                    current = current[:-1].rstrip() + " "
                else:
                    texts.append(current)
                    current = ""
            assert not current, f"README line {i + 1}: a block ends in a continuation"
        block = Block(i + 1, lang, [], " ".join(after))
        for text in texts:
            cmd = Command(text)
            cmd.mode, cmd.why = _classify(text)
            key = tuple(shlex.split(text, comments=True)) if lang == "bash" else text
            if cmd.mode != "not_run" and key in seen:
                cmd.mode, cmd.why = "earlier", f"the same command runs in {seen[key]}"
            elif cmd.mode != "not_run":
                seen[key] = block.id
            runs = _substitute(text, PLACEHOLDERS)
            if cmd.mode == "run":
                runs = _substitute(runs, SMALLER, block.smaller)
            cmd.runs = runs
            block.commands.append(cmd)
        blocks.append(block)
        i = end + 1
    return blocks


BLOCKS = parse_readme()


def test_every_table_entry_is_used_and_every_smaller_run_is_documented():
    """The tables match README commands (none goes stale), and a block run at a smaller size says
    so in the paragraph right under it, naming the values the test substitutes."""
    commands = [c for b in BLOCKS for c in b.commands]
    assert sum(b.lang == "bash" for b in BLOCKS) >= 22, "the README's bash blocks were not all found"
    for table in (NOT_RUN, UNTIL_LOAD):
        for pattern in table:
            assert any(re.search(pattern, c.text, re.M) for c in commands), f"{pattern!r} matches no README command"
    used = {old for b in BLOCKS for old in b.smaller}
    assert used == set(SMALLER), f"SMALLER entries no command uses: {sorted(set(SMALLER) - used)}"
    for name in PLACEHOLDERS:
        assert any(re.search(rf"\b{name}\b", c.text) for c in commands if c.mode != "not_run")
    for b in BLOCKS:
        for new in b.smaller.values():
            assert new in b.after and "test suite runs" in b.after, (
                f"README {b.id}: the paragraph under the block must say the test suite runs it with {new!r}")
    makefile = open(os.path.join(ROOT, "Makefile")).read()  # SETUP is what `make quickstart` runs
    assert "experiments/quickstart/run.py --out $(OUT)" in makefile and "OUT ?= runs/quickstart" in makefile


def _script(block: Block) -> str:
    lines = ["set -ex"]
    for cmd in block.commands:
        if cmd.mode == "not_run":
            lines.append(f": not run: {shlex.quote(cmd.why)}")
        elif cmd.mode == "earlier":
            lines.append(f": {shlex.quote(cmd.why)}")
        elif block.lang == "python":
            lines.append("python -m tests._until_load readme_block.py" if cmd.mode == "until_load"
                         else "python readme_block.py")
        else:
            lines.append(_until_load(cmd.runs) if cmd.mode == "until_load" else cmd.runs)
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@pytest.mark.requires_data
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(block, tmp_path):
    if all(c.mode in ("not_run", "earlier") for c in block.commands):
        return  # nothing of it runs here: each command says why in NOT_RUN or names the block that runs it
    if smollm2_path() is None:
        pytest.skip(SMOLLM2_MISSING)
    for name in CHECKOUT:
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    env = subprocess_env(MPLBACKEND="Agg")
    env.pop("USE_TORCH")  # a newcomer's environment has torch: transformers reads GGUF tokenizers with it
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    if block.lang == "python":
        (tmp_path / "readme_block.py").write_text(block.commands[0].runs)
    setup = [cmd for path, cmd in SETUP.items() if any(path in c.runs for c in block.commands if c.mode == "run")]
    script = "set -ex\n" + "\n".join(setup) + "\n" + _script(block) if setup else _script(block)
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, (f"README {block.id} failed (exit {proc.returncode}); the script:\n{script}\n"
                                  f"its output (the end):\n{proc.stdout[-6000:]}")
    stopped = proc.stdout.count(STOPPED)  # each UNTIL_LOAD command got as far as the model load, and no further
    assert stopped == sum(c.mode == "until_load" for c in block.commands), proc.stdout[-6000:]
