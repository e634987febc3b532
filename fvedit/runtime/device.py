"""Pick the torch device from the user's `--device` value; scope the global numerics flags (TF32, cudnn.benchmark)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from fvedit.errors import InputError


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU. An explicit 'cuda' without a GPU is an input error."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise InputError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {spec!r} asked for, but no CUDA GPU is visible to torch: use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {spec!r} is not supported: use auto, cpu, cuda or cuda:N")
    return dev


def synchronize(eps_model) -> None:
    """Wait for the device work an eps model has queued, before its results are read on the host.

    On CUDA the `.cpu()` that reads a result waits by itself; a model with its own queue (the
    simulated device, `fvedit.runtime.simulated`) says so with a `synchronize()` method."""
    wait = getattr(eps_model, "synchronize", None)
    if callable(wait):
        wait()


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None) -> int:
    """Size torch's intra-op pool (`--threads`; default: every available core); returns the count.

    onnxruntime and the x264 encoder are given the same number by the job that builds them.
    """
    count = available_cores() if threads is None else int(threads)
    if count < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


# -- numerics and cuDNN flags, scoped ---------------------------------------------------------------

# The fp32 leaves of torch's precision tree (torch >= 2.9; "none" defers to the parent, "ieee" is
# plain fp32). Pinning the leaves (not the parents) is what wins over any setting above them.
_FP32_LEAVES = (("cuda", "matmul"), ("cudnn", "conv"), ("cudnn", "rnn"))


def _has_fp32_precision_api() -> bool:
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv")


def _leaf(backend: str, op: str):
    return getattr(getattr(torch.backends, backend), op)


def _read_tf32_flags() -> tuple:
    """The settings that decide TF32, as their getters read (what `tf32_disabled` writes back, as
    torch's own tests restore them)."""
    if _has_fp32_precision_api():
        return tuple(_leaf(b, op).fp32_precision for b, op in _FP32_LEAVES)
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _write_tf32_flags(flags: tuple) -> None:
    if _has_fp32_precision_api():
        for (b, op), value in zip(_FP32_LEAVES, flags):
            _leaf(b, op).fp32_precision = value
    else:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def tf32_enabled() -> dict[str, bool]:
    """Whether cuBLAS matmuls, cuDNN convolutions and cuDNN RNNs may run TF32 now.

    Reads the precision tree (its getters resolve "none" through the parents), not the legacy
    `allow_tf32` getters: torch >= 2.9 refuses those while a leaf says "ieee".
    """
    if not _has_fp32_precision_api():
        mm, dnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        return {"matmul": bool(mm), "conv": bool(dnn), "rnn": bool(dnn)}
    return {op: _leaf(b, op).fp32_precision == "tf32" for b, op in _FP32_LEAVES}


@contextmanager
def tf32_disabled() -> Iterator[None]:
    """Plain fp32 (no TF32) in cuBLAS and cuDNN while inside; the previous settings come back after,
    also when the body raises.

    Why: on Ampere and later cuDNN convolutions default to TF32 (10 mantissa bits, like fp16), so
    an "fp32 oracle" on CUDA would be a TF32 one. Uses `fp32_precision = "ieee"` where torch has
    it (2.9+, the API the legacy `allow_tf32` flags are deprecated for), else those flags. Only
    the calling process's global flags change: do not flip them from two threads at once.
    """
    with tf32_allowed(False):
        yield


@contextmanager
def tf32_allowed(allowed: bool) -> Iterator[None]:
    """TF32 allowed (or not) in cuBLAS and cuDNN while inside; the previous settings after.
    `tf32_disabled()` is `tf32_allowed(False)`; benchmarks use `tf32_allowed(True)` to show
    what TF32 changes."""
    before = _read_tf32_flags()
    if _has_fp32_precision_api():
        _write_tf32_flags(("tf32" if allowed else "ieee",) * len(_FP32_LEAVES))
    else:
        _write_tf32_flags((allowed, allowed))
    try:
        yield
    finally:
        _write_tf32_flags(before)


@contextmanager
def cudnn_benchmark(enabled: bool = True) -> Iterator[None]:
    """torch.backends.cudnn.benchmark = enabled while inside, the previous value after.

    Why scoped: autotuning pays off only for static shapes (every UNet call of a run has the same
    one), and flipping the global flag for good would change other code's convolutions too.
    `torch.backends.cudnn.flags()` is not used: it also resets allow_tf32 and deterministic.
    """
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
