"""Sampler cost: encode (x0 -> x_T) and decode (x_T -> x0) of one batch, DPM-Solver++ and DDIM.

    python -m pytest bench/bench_sampler.py --benchmark-only [--benchmark-json=sampler.json]

One group per (sampler, direction), one row per backend (the fp32 reference and the `torch`
backend), so pytest-benchmark's relative column reads as the speed-up over the reference.
Defaults: CPU `tiny` at batch 4, 15 steps; GPU `dva256` at batch 8. FVEDIT_BENCH_PRESET,
FVEDIT_BENCH_BATCH and FVEDIT_BENCH_STEPS override. extra_info holds ms per frame and the
number of UNet calls, so the sampler's own overhead (solver arithmetic, host copies) shows as
the gap to `calls x` the UNet call time of bench_unet.py.
"""

from __future__ import annotations

import os

import pytest
import torch

from fvedit.benchmark import sync_device, unet_inputs
from fvedit.runtime.backends import eps_fn, make_backend
from fvedit.diffusion.spec import SamplerSpec
from fvedit.weights.demo import demo_weights

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
PRESET = os.environ.get("FVEDIT_BENCH_PRESET", "dva256" if CUDA else "tiny")
BATCH = int(os.environ.get("FVEDIT_BENCH_BATCH", "8" if CUDA else "4"))
STEPS = int(os.environ.get("FVEDIT_BENCH_STEPS", "15"))
ROUNDS = 5 if CUDA else 3
SPECS = [SamplerSpec("dpm", STEPS), SamplerSpec("ddim", STEPS)]


@pytest.fixture(scope="module")
def weights():
    return demo_weights(PRESET, device=DEVICE)


@pytest.fixture(scope="module")
def batch(weights):
    x0, _, _ = unet_inputs(weights.config, BATCH, DEVICE, seed=1)
    z_face = torch.randn(BATCH, weights.config.unet.cond_channels, generator=torch.Generator().manual_seed(2))
    return x0.clamp(-1, 1), z_face.to(DEVICE)


_backends: dict[str, object] = {}


def _backend(weights, name: str):
    if name not in _backends:
        _backends[name] = make_backend(name, weights.model, DEVICE)
    return _backends[name]


@pytest.mark.parametrize("direction", ["encode", "decode"])
@pytest.mark.parametrize("spec", SPECS, ids=[s.key for s in SPECS])
@pytest.mark.parametrize("name", ["reference", "torch"])
def test_sampler(benchmark, weights, batch, spec, direction, name):
    x0, z_face = batch
    fn = eps_fn(_backend(weights, name), z_face)
    with torch.no_grad():
        x_T = spec.encode(fn, x0)  # also the warm-up
    assert torch.isfinite(x_T).all()

    def run():
        out = spec.encode(fn, x0) if direction == "encode" else spec.decode(fn, x_T)
        sync_device(DEVICE)
        return out

    calls = spec.encode_calls if direction == "encode" else spec.decode_calls
    benchmark.group = f"{spec.key} {direction}, {PRESET} batch {BATCH} ({DEVICE})"
    with torch.no_grad():
        out = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    assert out.shape == x0.shape and torch.isfinite(out).all()
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        backend=name, unet_calls=calls, ms_per_frame=round(1000 * median / BATCH, 2), ms_per_call=round(1000 * median / calls, 2)
    )
