"""Pick the torch device from the user's `--device` value."""

from __future__ import annotations

import os

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
