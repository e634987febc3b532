"""Pixel kernels per 1080p frame: C++ extension vs PyTorch twin, side by side.

    python -m pytest bench/bench_pixels.py --benchmark-only

Each group (warp, paste, warp+paste) has one row per backend. The face quad is ~520 px
wide and rotated, warped to a 256 crop and pasted back with a feathered alpha, as in the
editing pipeline. CPU only; threads = torch/OpenMP defaults.
"""

from __future__ import annotations

import numpy as np
import pytest

import fvedit.pixels as pixels
from fvedit.pipeline import paste
from fvedit.pixels import crop_homography, ext

SIZE = 256
ROUNDS = 5


@pytest.fixture(params=["cpp", "twin"])
def backend(request, monkeypatch):
    if request.param == "cpp":
        if ext.load() is None:
            pytest.skip("fvedit._pixelops is not built")
    else:
        monkeypatch.setattr(ext, "_module", None)
        monkeypatch.setattr(pixels, "_warned", {"noext"})  # no warning noise in the benchmark
    return request.param


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 1080, 1920, 3), dtype=np.uint8)
    c, r, ang = np.array([960.0, 500.0]), 260.0, np.deg2rad(10)
    x = r * np.array([np.cos(ang), np.sin(ang)])
    y = np.array([-x[1], x[0]])
    h_c2f = crop_homography(np.array([c - x - y, c - x + y, c + x + y, c + x - y]), SIZE)[None]
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    alpha = paste.feather((np.hypot(xx, yy) < 100).astype(np.float32), 16)[None]
    crop = rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    return frame, h_c2f, np.linalg.inv(h_c2f), crop, alpha


def _run(benchmark, fn):
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)


def test_warp_1080p(benchmark, backend, scene):
    frame, h_c2f, _, _, _ = scene
    benchmark.group = "warp 1080p -> 256"
    out = _run(benchmark, lambda: pixels.warp_crops(frame, h_c2f, SIZE))
    assert out.shape == (1, SIZE, SIZE, 3) and out.any()


def test_paste_1080p(benchmark, backend, scene):
    frame, _, h_f2c, crop, alpha = scene
    benchmark.group = "paste 256 -> 1080p"
    out = _run(benchmark, lambda: pixels.paste_blend_batch(frame, crop, alpha, h_f2c))
    assert (out != frame).any()


def test_warp_and_paste_1080p(benchmark, backend, scene):
    frame, h_c2f, h_f2c, _, alpha = scene
    benchmark.group = "warp + paste per 1080p frame"

    def step():
        crop = pixels.warp_crops(frame, h_c2f, SIZE)
        return pixels.paste_blend_batch(frame, crop, alpha, h_f2c)

    out = _run(benchmark, step)
    assert out.shape == frame.shape


def test_delta_paste_1080p(benchmark, backend, scene):
    """The default paste: frame + alpha * bilinear(edit - reference), the same footprint as the blend."""
    frame, _, h_f2c, crop, alpha = scene
    benchmark.group = "delta paste 256 -> 1080p"
    delta = np.random.default_rng(1).normal(0, 20, crop.shape).astype(np.float32)
    out = _run(benchmark, lambda: pixels.paste_delta_batch(frame, delta, alpha, h_f2c))
    assert (out != frame).any()
