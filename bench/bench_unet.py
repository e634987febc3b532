"""Latency of one UNet call by backend and batch size; the reference runs in the same session.

    python -m pytest bench/bench_unet.py --benchmark-only [--benchmark-json=unet.json]

One benchmark group per batch size, one row per backend, so pytest-benchmark's relative columns
read as speed-ups over the fp32 eager reference. Defaults: on a CPU the `tiny` preset at batch 1
and 4 (reference, torch fp32, onnxruntime fp32), a few rounds; on a GPU `dva256` at batch 1, 4,
8, 16, 32 (reference fp32, torch fp16/bf16 with CUDA graphs, onnxruntime fp16 when it has the
CUDA provider, tensorrt when an engine was built). FVEDIT_BENCH_PRESET and FVEDIT_BENCH_BATCHES
(e.g. "1,8") override. The ONNX export needed by onnxruntime is written once into the per-weights
cache folder and reused by later runs. Times include the host-side input copy of a real
caller's eps_fn; CUDA runs synchronise before the clock stops. Engine build, export and CUDA-graph
capture happen before timing (warm-up rounds).
"""

from __future__ import annotations

import os

import pytest
import torch

from fvedit.errors import FveditError
from fvedit.runtime.backends import available_backends, make_backend
from fvedit.weights.demo import demo_weights

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
PRESET = os.environ.get("FVEDIT_BENCH_PRESET", "dva256" if CUDA else "tiny")
BATCHES = [int(b) for b in os.environ.get("FVEDIT_BENCH_BATCHES", "1,4,8,16,32" if CUDA else "1,4").split(",")]
ROUNDS, WARMUP = (20, 3) if CUDA else (3, 1)

ARMS = [("reference", "fp32"), ("torch", "fp16" if CUDA else "fp32")]
if CUDA:
    ARMS.append(("torch", "bf16"))
ARMS += [("onnxruntime", "fp16" if CUDA else "fp32"), ("tensorrt", "fp16")]


@pytest.fixture(scope="module")
def model():
    return demo_weights(PRESET, device=DEVICE).model


def _ensure_onnx(model, precision: str) -> None:
    """Export once into the per-weights cache folder that make_backend searches."""
    from fvedit.runtime.onnx_backend import find_exported_onnx

    unet = model.unet
    try:
        find_exported_onnx(unet, precision)
        return
    except FveditError:
        pass
    from fvedit.export.onnx_export import export_onnx
    from fvedit.runtime.onnx_backend import default_export_dir, onnx_file_name

    export_onnx(unet, default_export_dir(unet) / onnx_file_name(precision, None), fp16=precision == "fp16")


_backends: dict[tuple[str, str], object] = {}


def _backend(model, name: str, precision: str):
    key = (name, precision)
    if key not in _backends:
        if not available_backends()[name].startswith("yes"):
            pytest.skip(f"{name}: {available_backends()[name]}")
        try:
            if name == "onnxruntime":
                _ensure_onnx(model, precision)
            _backends[key] = make_backend(name, model, DEVICE, dtype=precision)
        except FveditError as err:  # e.g. no CUDA provider in onnxruntime, no engine built
            pytest.skip(f"{name} {precision}: {err}")
    return _backends[key]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name,precision", ARMS, ids=[f"{n}-{p}" for n, p in ARMS])
def test_unet_call(benchmark, model, name, precision, batch):
    backend = _backend(model, name, precision)
    cfg = model.config.unet
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen).to(DEVICE)
    t = torch.full((batch,), 500.0, device=DEVICE)
    cond = torch.randn(1, cfg.cond_channels, generator=gen).to(DEVICE)

    def call():
        out = backend(x, t, cond)
        if CUDA:
            torch.cuda.synchronize()
        return out

    benchmark.group = f"UNet {PRESET} batch {batch} ({DEVICE})"
    benchmark.extra_info.update(backend=backend.describe(), batch=batch, preset=PRESET)
    out = benchmark.pedantic(call, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    assert out.shape == x.shape and torch.isfinite(out).all()
    benchmark.extra_info["frames_per_s"] = round(batch / benchmark.stats.stats.median, 2)
