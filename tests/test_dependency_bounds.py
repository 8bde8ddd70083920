"""The dependency ranges are the tested ones: every direct dependency has a floor and a ceiling,
constraints/lowest.txt pins exactly the floors (what .ci/run's second environment installs),
constraints/tested.txt pins versions inside the ranges (what CI's main environment and
tpu_scripts/setup.sh install), and the README's Install section states the same ranges."""

import os
import re

import pytest

from tests.helpers import ROOT

tomllib = pytest.importorskip("tomllib")
from packaging.requirements import Requirement  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402
from packaging.version import Version  # noqa: E402


def _requirements() -> dict[str, Requirement]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return {canonicalize_name(r.name): r for r in map(Requirement, deps)}


def _pins(name: str) -> dict[str, Version]:
    pins = {}
    with open(os.path.join(ROOT, "constraints", name)) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                pkg, version = line.split("==")
                pins[canonicalize_name(pkg)] = Version(version)
    return pins


def _bounds(req: Requirement) -> tuple[Version, Version]:
    lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
    highs = [Version(s.version) for s in req.specifier if s.operator == "<"]
    assert len(lows) == 1 and len(highs) == 1, f"{req}: one floor (>=) and one ceiling (<) wanted"
    return lows[0], highs[0]


def test_every_direct_dependency_has_a_floor_and_a_ceiling():
    for req in _requirements().values():
        low, high = _bounds(req)
        assert low < high


def test_lowest_pins_exactly_the_floors():
    reqs, pins = _requirements(), _pins("lowest.txt")
    assert set(pins) == set(reqs) | {"jaxlib"}
    for name, req in reqs.items():
        assert pins[name] == _bounds(req)[0], f"{name}: lowest.txt pins {pins[name]}, pyproject's floor is {req}"
    assert pins["jaxlib"] == pins["jax"]


def test_tested_pins_are_inside_the_ranges():
    reqs, pins = _requirements(), _pins("tested.txt")
    assert set(pins) == set(reqs) | {"jaxlib"}
    for name, req in reqs.items():
        assert req.specifier.contains(pins[name]), f"{name}: tested.txt pins {pins[name]}, outside {req}"
    assert pins["jaxlib"] == pins["jax"]


def test_the_readme_states_the_tested_ranges():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    install = text[text.index("## Install"):text.index("\n## ", text.index("## Install") + 1)]
    rows = {canonicalize_name(m.group(1)): m.groups()[1:]
            for m in re.finditer(r"^\| `([\w.-]+)` \| ([\w.]+) \| ([\w.]+) \| `([^`]+)` \|", install, re.M)}
    reqs, lowest, tested = _requirements(), _pins("lowest.txt"), _pins("tested.txt")
    assert set(rows) == set(reqs)
    for name, (low, high, allowed) in rows.items():
        assert (Version(low), Version(high)) == (lowest[name], tested[name]), name
        assert SpecifierSet(allowed) == reqs[name].specifier, f"{name}: README says {allowed}, pyproject {reqs[name]}"


def test_tpu_setup_installs_the_tested_versions():
    from tests.test_tpu_scripts import ARGS, commands, flag, gcloud, run

    (ssh,) = [c for c in gcloud(commands(run("setup.sh", *ARGS, "--dry-run").stdout)) if c[4] == "ssh"]
    remote = flag(ssh, "command")
    assert "pip install -q 'jax[tpu]' -c ~/steerjax/constraints/tested.txt" in remote
    assert "pip install -q -e ~/steerjax -c ~/steerjax/constraints/tested.txt" in remote
