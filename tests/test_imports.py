"""fvedit without PyAV and dlib: what the lent GPU machine has (neither is installed there).

`import fvedit`, `fvedit info`, the UNet and sampler parts of `fvedit bench`, and the kernel,
backend and pixel tests must run there; commands that read video say in one line what is missing.
Each check runs in a fresh interpreter in which those imports fail (tests/block_imports.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
BLOCKED = "av,dlib,face_recognition_models"


def run_blocked(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TESTS / "block_imports.py"), BLOCKED, *args],
        capture_output=True, text=True, cwd=TESTS.parent, timeout=timeout,
    )  # fmt: skip


def test_the_blocker_blocks():
    res = run_blocked("-c", "import av")
    assert res.returncode != 0 and "blocked by tests/block_imports.py" in res.stderr


def test_library_and_cli_import():
    code = (
        "import fvedit, fvedit.cli, fvedit.benchmark, fvedit.bench_cli, fvedit.metrics, fvedit.synth, "
        "fvedit.runtime.backends, fvedit.runtime.fast_unet, fvedit.pixels, fvedit.diffusion.spec, fvedit.weights.loading\n"
        "import sys; assert not {'av', 'dlib'} & set(sys.modules), sorted({'av', 'dlib'} & set(sys.modules))"
    )
    res = run_blocked("-c", code)
    assert res.returncode == 0, res.stderr


def test_info_runs():
    res = run_blocked("-m", "fvedit.cli", "info")
    assert res.returncode == 0, res.stderr
    assert "pixel kernels:" in res.stdout and "backend torch:" in res.stdout


def test_video_commands_name_the_missing_package(tmp_path):
    video = tmp_path / "in.mp4"
    video.write_bytes(b"\0" * 64)
    res = run_blocked("-m", "fvedit.cli", "edit", str(video), "-o", str(tmp_path / "out.mp4"))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == ["error: reading and writing video needs PyAV "
                                               "(No module named 'av' (blocked by tests/block_imports.py)): pip install av"]


@pytest.mark.slow
def test_bench_unet_and_sampler_parts_run(tmp_path):
    out = tmp_path / "bench.json"
    res = run_blocked(
        "-m", "fvedit.cli", "bench", "--preset", "tiny", "--backend", "torch", "-b", "1", "--steps", "2",
        "--repeats", "1", "--warmup", "0", "--frames", "0", "--threads", "1", "-q", "-o", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    doc = json.loads(out.read_text())
    assert {r["backend"] for r in doc["unet"]["rows"]} >= {"reference", "torch"}
    assert doc["sampler"] and all(r["ms_per_frame"] > 0 for r in doc["sampler"])


@pytest.mark.slow
def test_kernel_backend_and_pixel_tests_run():
    """The test files the GPU check selects import and pass with PyAV and dlib missing (a CPU-cheap subset)."""
    res = run_blocked(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
        "tests/test_pixels.py", "tests/test_backends.py", "tests/test_kernel_adagn.py", "tests/test_kernel_swcfa.py",
        "-k", "not interpreter and not subprocess and not hypothesis", timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "error" not in res.stdout.lower().split("passed")[-1]
