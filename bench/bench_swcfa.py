"""Sliding-window cross-frame attention: PyTorch twin vs Triton kernel, dva256 shapes.

    python -m pytest bench/bench_swcfa.py --benchmark-only            # GPU rows need CUDA
    python -m pytest bench/bench_swcfa.py --benchmark-only -k cpu     # the CPU twin only

dva256 attends with one 512-channel head at 16x16 (256 tokens) and 8x8 (64 tokens); a batch
of 16 frames with DiffFERV's window w=3. GPU rows synchronise inside the timed call, since
pytest-benchmark reads the wall clock. The Triton row is timed after a warm-up call, so JIT
compilation is not in it.
"""

from __future__ import annotations

import pytest
import torch

from fvedit.runtime.kernels import swcfa

FRAMES, CHANNELS, WINDOW = 16, 512, 3
ROUNDS = 20

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_qkv(tokens: int, dtype: torch.dtype, device: str):
    g = torch.Generator(device=device).manual_seed(0)
    return tuple(torch.randn(FRAMES, CHANNELS, tokens, generator=g, device=device, dtype=dtype) for _ in range(3))


@needs_cuda
@pytest.mark.parametrize("backend", ["twin", "triton"])
@pytest.mark.parametrize("tokens", [256, 64], ids=["16x16", "8x8"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_swcfa_gpu(benchmark, backend, tokens, dtype):
    benchmark.group = f"swcfa-gpu-{tokens}tok-{str(dtype).removeprefix('torch.')}"
    q, k, v = make_qkv(tokens, dtype, "cuda")

    def run():
        out = swcfa.windowed_frame_attention(q, k, v, WINDOW, backend=backend)
        torch.cuda.synchronize()
        return out

    reference = swcfa.windowed_frame_attention_twin(q.float(), k.float(), v.float(), WINDOW)
    out = benchmark.pedantic(run, rounds=ROUNDS, iterations=5, warmup_rounds=3)
    benchmark.extra_info["max_abs_error_vs_fp32_twin"] = (out.float() - reference).abs().max().item()


@pytest.mark.parametrize("tokens", [64], ids=["8x8"])
def test_swcfa_cpu_twin(benchmark, tokens):
    benchmark.group = "swcfa-cpu"
    q, k, v = make_qkv(tokens, torch.float32, "cpu")
    run = swcfa.windowed_frame_attention_twin
    benchmark.pedantic(run, args=(q, k, v, WINDOW), rounds=5, iterations=1, warmup_rounds=1)
