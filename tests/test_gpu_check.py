"""The prepared GPU check's mechanics, on the CPU (where it falls back to the tiny preset).

What must hold before a lease is spent on it: the device command fits the tool's 2,000
characters, the script parses, every part writes results.json when it ends, a failing part is
recorded and the next one still runs, and a part that no longer fits the budget is skipped and
says so. The numbers themselves are only meaningful on the GPU.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402


def test_device_command_fits_and_script_parses():
    readme = (REPO / "bench" / "README.md").read_text()
    commands = re.findall(r'run\(command="([^"]+)"', readme)
    assert commands, "bench/README.md must give the device call"
    assert all(len(cmd) < 2000 for cmd in commands)
    assert subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_check.sh")]).returncode == 0


def test_parts_write_results_as_they_end(tmp_path):
    res = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(tmp_path), "--budget", "120",
         "--only", "machine,ceil,parity"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert set(doc["parts"]) == {"machine", "ceil", "parity"} and not doc["errors"]
    parity = doc["parts"]["parity"]
    for dtype in ("fp16", "bf16"):
        assert parity[dtype]["unet"]["finite"] and parity[dtype]["unet"]["rel_l2"] > 0  # compared, not copied
    assert doc["parts"]["ceil"]["copy_tb_s"] > 0
    assert "parity fp16" in (tmp_path / "summary.txt").read_text()


def test_a_failing_part_is_recorded_and_the_next_runs(tmp_path, monkeypatch):
    seen = []

    def broken(check):
        on_disk = json.loads((tmp_path / "results.json").read_text())
        seen.append(set(on_disk["parts"]))  # the earlier part was saved before this one began
        raise RuntimeError("kernel launch failed\nsecond line")

    monkeypatch.setattr(gpu_check, "PARTS", {
        "first": (lambda check: {"value": 1}, 0), "broken": (broken, 0), "after": (lambda check: {"value": 2}, 0),
        "too_long": (lambda check: pytest.fail("must be skipped"), 10**6),
    })  # fmt: skip
    code = gpu_check.main(["--out", str(tmp_path), "--budget", "60"])
    doc = json.loads((tmp_path / "results.json").read_text())
    assert code == 1 and seen == [{"first"}]
    assert doc["errors"] == {"broken": "RuntimeError: kernel launch failed"}
    assert doc["parts"]["after"]["value"] == 2 and "broken" not in doc["parts"]
    assert "too_long" in doc["skipped"]
    assert "Traceback" in (tmp_path / "gpu_check.log").read_text()


def test_unknown_part_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path), "--only", "unet,warp-speed"])
