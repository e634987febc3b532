"""Shared setting for the pytest benchmarks in bench/: FVEDIT_BENCH_THREADS=N pins torch's CPU threads.

On a shared or busy CPU, OpenMP threads that spin-wait for preempted siblings turn a 40 ms call
into seconds; one thread per process gives steady numbers there (the CI gate always uses 1).
Unset, torch's default is left alone.
"""

from __future__ import annotations

import os

import torch


def pytest_configure(config) -> None:
    threads = os.environ.get("FVEDIT_BENCH_THREADS")
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            raise ValueError(f"FVEDIT_BENCH_THREADS must be a positive integer, got {threads!r}")
        torch.set_num_threads(int(threads))


def pytest_report_header(config) -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return f"fvedit bench: torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {load}"
