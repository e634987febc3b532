"""CI installs what the README says, with the tested versions in constraints.txt."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (CI runs 3.11)

ROOT = Path(__file__).resolve().parents[1]


def readme_command(title: str) -> list[str]:
    """The `&&`-joined steps of the bash block that follows the README paragraph starting with `title`."""
    text = (ROOT / "README.md").read_text()
    block = re.search(re.escape(title) + r".*?```bash\n(.*?)\n```", text, re.S)
    assert block, f"README has no command after {title!r}"
    return [step.strip() for step in block.group(1).split("&&")]


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_ci_runs_the_readme_test_command_with_the_constraints():
    steps = readme_command("Install and run the tests")
    ci = (ROOT / ".ci" / "run").read_text()
    block = ci.split('# --- README: "Install and run the tests"')[1].split("# ---")[0]
    ci_steps = [line.strip() for line in block.splitlines()[1:] if line.strip()]
    assert ci_steps == steps
    assert any("-c constraints.txt" in step for step in steps)
    assert "set -euo pipefail" in ci  # a failing test fails CI
    quick = readme_command("Install and run the main job")
    assert any("-c constraints.txt" in step for step in quick) and quick[-1] == "fvedit demo"


def test_constraints_pin_every_dependency_within_the_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = constraints()
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req.specifier}"
    assert pins["torch"] == "2.13.0"  # the README's first step; no local label such as +cpu
