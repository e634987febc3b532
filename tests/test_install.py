"""The offline install path (no package index, no build isolation, no dependency resolution).

A GPU machine with no network gets fvedit with
`pip install --no-index --no-build-isolation --no-deps -e .`: the build backend and every
runtime dependency must already be there. These tests build that way from a copy of the
tracked sources, and check that a GPU build can be told to fail instead of going CPU-only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OFFLINE = ["--no-index", "--no-build-isolation", "--no-deps"]


def _tracked_copy(dest: Path) -> Path:
    """The files git tracks (what a fresh clone has), copied to dest: no build folders, no venv."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    return dest


@pytest.mark.slow
def test_offline_wheel_build_contains_the_extension(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to list the tracked files")
    src = _tracked_copy(tmp_path / "src")
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *OFFLINE, "--wheel-dir", str(tmp_path / "wheels"), str(src)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert built.returncode == 0, f"offline build failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
    (wheel,) = (tmp_path / "wheels").glob("fvedit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("fvedit/_pixelops") and n.endswith(".so") for n in names), names
    assert "fvedit/cli.py" in names

    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", *OFFLINE, "--target", str(site), str(wheel)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    (so,) = (site / "fvedit").glob("_pixelops*.so")
    probe = subprocess.run(  # loaded by path: an editable install of the checkout would shadow the package
        [sys.executable, "-c", "import importlib.util as u, sys; s = u.spec_from_file_location('fvedit._pixelops', "
         "sys.argv[1]); m = u.module_from_spec(s); s.loader.exec_module(m); print(m.ABI_VERSION, m.built_with_cuda)",
         str(so)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    from fvedit.pixels import ext

    abi, with_cuda = probe.stdout.split()
    assert int(abi) == ext.ABI_VERSION
    assert with_cuda == str(shutil.which("nvcc") is not None)  # CMake finds nvcc on PATH, as on the GPU machine


def test_required_cuda_build_fails_loudly(tmp_path):
    """FVEDIT_REQUIRE_CUDA=ON without a usable CUDA compiler stops the build with the reason."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    res = subprocess.run(
        ["cmake", "-S", str(REPO), "-B", str(tmp_path), "-DFVEDIT_CUDA=OFF", "-DFVEDIT_REQUIRE_CUDA=ON",
         f"-DPython_EXECUTABLE={sys.executable}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode != 0
    assert "FVEDIT_REQUIRE_CUDA=ON but no CUDA compiler" in res.stdout + res.stderr
