"""Fused AdaGN (GroupNorm + AdaGN scale/shift + SiLU) vs eager PyTorch, side by side, dva256 shapes.

    python -m pytest bench/bench_adagn.py --benchmark-only                       # quick
    FVEDIT_BENCH_FULL=1 python -m pytest bench/bench_adagn.py --benchmark-only   # every level, B 1/4/8

One group per (device, shape, layout), one row per implementation:
- official: the official module sequence, GroupNorm32 (fp32 upcast, cast back) -> *(1+s) -> +b -> SiLU;
- eager:    F.group_norm in x's dtype (PyTorch's native fp16 kernel) -> *(1+s) -> +b -> SiLU;
- twin:     fvedit's PyTorch twin (the CPU runtime path);
- triton:   fvedit's Triton kernels (GPU only).
CPU runs fp32, GPU fp16. On the GPU each timed call runs the op REPEAT times and then synchronizes;
extra_info holds microseconds per op and effective GB/s for the fused minimum traffic (x read
twice, y written once). L2 is not flushed: at batch 1 a 256x256x128 fp16 activation (16.8 MB)
stays in an H100's 50 MB L2 between the statistics and the apply pass.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from fvedit.models.unet import GroupNorm32
from fvedit.runtime.kernels import adagn

FULL = os.environ.get("FVEDIT_BENCH_FULL") == "1"
GROUPS = 32
REPEAT = 20
# [C, H(=W)] of the dva256 UNet levels (channel_mult 1,1,2,2,4,4 on 128 channels)
LEVELS = [(128, 256), (128, 128), (256, 64), (256, 32), (512, 16), (512, 8)]
CPU_SHAPES = [(1, 128, 256), (1, 512, 16)] if not FULL else [(b, c, h) for b in (1, 4) for c, h in LEVELS]
GPU_SHAPES = (
    [(b, c, h) for b in (1, 8) for c, h in [(128, 256), (256, 64), (512, 16)]]
    if not FULL
    else [(b, c, h) for b in (1, 4, 8) for c, h in LEVELS]
)
IMPLS = ["official", "eager", "twin", "triton"]


def _cases():
    for b, c, h in CPU_SHAPES:
        for impl in IMPLS[:3]:
            yield pytest.param("cpu", b, c, h, False, impl, id=f"cpu-{b}x{c}x{h}x{h}-{impl}")
    for b, c, h in GPU_SHAPES:
        for cl in (False, True):
            for impl in IMPLS:
                lay = "nhwc" if cl else "nchw"
                yield pytest.param("cuda", b, c, h, cl, impl, id=f"cuda-{b}x{c}x{h}x{h}-{lay}-{impl}")


def _op(impl: str, x, gn: GroupNorm32, s, t):
    s4, t4 = s[:, :, None, None], t[:, :, None, None]
    if impl == "official":
        return lambda: F.silu(gn(x) * (1 + s4) + t4)
    if impl == "eager":
        w, b = gn.weight.to(x.dtype), gn.bias.to(x.dtype)
        return lambda: F.silu(F.group_norm(x, GROUPS, w, b, gn.eps) * (1 + s4) + t4)
    fn = adagn.group_norm_silu_reference if impl == "twin" else adagn.group_norm_silu_triton
    return lambda: fn(x, gn.weight, gn.bias, GROUPS, gn.eps, scale=s, shift=t)


@pytest.mark.parametrize("device, batch, channels, size, channels_last, impl", list(_cases()))
def test_adagn(benchmark, device, batch, channels, size, channels_last, impl):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    dtype = torch.float16 if device == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=g).to(device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    gn = GroupNorm32(GROUPS, channels).to(device)
    with torch.no_grad():
        gn.weight.normal_(1.0, 0.2)
        gn.bias.normal_(0.0, 0.2)
    s = (0.3 * torch.randn(batch, channels, generator=g)).to(device, dtype)
    t = torch.randn(batch, channels, generator=g).to(device, dtype)
    op = _op(impl, x, gn, s, t)
    lay = "nhwc" if channels_last else "nchw"
    benchmark.group = f"adagn {device} {dtype} {batch}x{channels}x{size}x{size} {lay}"

    with torch.no_grad():
        expected = adagn.group_norm_silu_reference(x, gn.weight, gn.bias, GROUPS, gn.eps, scale=s, shift=t)
        torch.testing.assert_close(op(), expected, atol=2e-2, rtol=2e-2)  # a wrong kernel must not be timed
        if device == "cuda":

            def run():
                for _ in range(REPEAT):
                    op()
                torch.cuda.synchronize()

            benchmark.pedantic(run, rounds=10 if not FULL else 30, iterations=1, warmup_rounds=2)
            per_op = benchmark.stats.stats.median / REPEAT
        else:
            benchmark.pedantic(op, rounds=3 if not FULL else 10, iterations=1, warmup_rounds=1)
            per_op = benchmark.stats.stats.median
    benchmark.extra_info["us_per_op"] = round(per_op * 1e6, 2)
    benchmark.extra_info["GBps_fused_min_traffic"] = round(3 * x.numel() * x.element_size() / per_op / 1e9, 1)
