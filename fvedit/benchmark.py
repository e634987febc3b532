"""Latency and memory measurement shared by `fvedit bench`, the pytest benchmarks in bench/ and the CI gate.

Rules every number here follows (see the project's perf notes, "benchmark practice"):
- warm-up calls first (lazy init, allocator growth, cuDNN heuristics, CUDA-graph capture are not latency);
- a GPU is synchronised before every clock read, so asynchronous launches are never mistaken for work done;
  on CUDA the same window is also timed with CUDA events (`*_event_ms`: GPU time of the stream, no host gaps);
- competing implementations are timed *interleaved* in one run (round robin, order reversed every round)
  and reported as ratios to the fp32 reference, because on a shared machine only same-run ratios mean much;
- medians (p50) are the headline; p90, mean and min are kept; build/export time is reported apart;
- peak host memory of a whole edit is read in a fresh subprocess, so earlier work does not pollute it.

Everything returns plain JSON-serialisable dicts (`SCHEMA` names their layout).
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from fvedit.errors import FveditError, InputError
from fvedit.progress import StageTimes

SCHEMA = "fvedit-bench/1"
RESULT_MARK = "FVEDIT_BENCH_RESULT "  # the line a child process prints its result on


# ------------------------------------------------------------------------------------------------
# timing


def sync_device(device: torch.device | str | None) -> None:
    """Wait for queued GPU work; a no-op for the CPU or None."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(torch.device(device))


def _time_once(fn: Callable[[], Any], device: torch.device | None, timer: str) -> float:
    if timer == "cuda-events":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    sync_device(device)
    t0 = time.perf_counter()
    fn()
    sync_device(device)
    return time.perf_counter() - t0


def _time_both(fn: Callable[[], Any], device: torch.device | None) -> tuple[float, float | None]:
    """One call timed two ways in one window: (host wall s, CUDA-event s or None off CUDA).

    Wall: device synchronised on both sides, so it is what a caller waits. Events: recorded on the
    current stream around the call, so host gaps (Python, launches) between kernels are left out;
    the gap between the two is host overhead.
    """
    if device is None or device.type != "cuda":
        return _time_once(fn, device, "host"), None
    stream = torch.cuda.current_stream(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    start.record(stream)
    fn()
    end.record(stream)
    torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    return wall, start.elapsed_time(end) / 1000.0


def _check_timer(timer: str, device: torch.device | None) -> None:
    if timer not in ("host", "cuda-events"):
        raise InputError(f"unknown timer {timer!r}: use 'host' or 'cuda-events'")
    if timer == "cuda-events" and (device is None or device.type != "cuda"):
        raise InputError("the cuda-events timer needs a CUDA device (sync=cuda)")


def measure(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeats: int = 5,
    sync: torch.device | str | None = None,
    timer: str = "host",
) -> list[float]:
    """Seconds per call of `fn()` over `repeats` timed calls, after `warmup` untimed ones.

    timer "host": perf_counter around the call, with the `sync` device synchronised before and
    after (wall clock as a user sees it, host work and other streams included). "cuda-events":
    CUDA events on the current stream (GPU time of that stream only; misses work other libraries
    queue on their own streams, e.g. onnxruntime).
    """
    if warmup < 0 or repeats < 1:
        raise InputError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    device = torch.device(sync) if sync is not None else None
    _check_timer(timer, device)
    for _ in range(warmup):
        fn()
    sync_device(device)
    return [_time_once(fn, device, timer) for _ in range(repeats)]


def measure_interleaved(
    arms: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    repeats: int = 5,
    sync: torch.device | str | None = None,
    timer: str = "host",
) -> dict[str, list[float]]:
    """Like `measure` for several implementations at once: one call of each per round, the order
    reversed every other round, so drift in machine load (other processes, thermal) hits every arm
    alike. Returns arm name -> seconds per call."""
    device = torch.device(sync) if sync is not None else None
    _check_timer(timer, device)
    return _round_robin(arms, warmup, repeats, device, lambda fn: _time_once(fn, device, timer))


def _round_robin(
    arms: Mapping[str, Callable[[], Any]],
    warmup: int,
    repeats: int,
    device: torch.device | None,
    once: Callable[[Callable[[], Any]], Any],
) -> dict[str, list[Any]]:
    """The interleaving loop shared by the timers: warm-up, then `once(arm)` per arm and round."""
    if not arms:
        raise InputError("measure_interleaved needs at least one arm")
    if warmup < 0 or repeats < 1:
        raise InputError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    names = list(arms)
    for _ in range(warmup):
        for name in names:
            arms[name]()
    sync_device(device)
    out: dict[str, list[Any]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(once(arms[name]))
    return out


def _split_pairs(pairs: Sequence[tuple[float, float | None]]) -> tuple[list[float], list[float] | None]:
    wall = [w for w, _ in pairs]
    events = [e for _, e in pairs]
    return wall, (None if any(e is None for e in events) else events)


def measure_interleaved_both(
    arms: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    repeats: int = 5,
    sync: torch.device | str | None = None,
) -> dict[str, tuple[list[float], list[float] | None]]:
    """`measure_interleaved` with both clocks per sample: arm -> (wall s, CUDA-event s or None).

    Events exist only when `sync` is a CUDA device; the wall samples are the headline either way."""
    device = torch.device(sync) if sync is not None else None
    pairs = _round_robin(arms, warmup, repeats, device, lambda fn: _time_both(fn, device))
    return {name: _split_pairs(p) for name, p in pairs.items()}


def measure_both(
    fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5, sync: torch.device | str | None = None
) -> tuple[list[float], list[float] | None]:
    """`measure` with both clocks: (wall s per call, CUDA-event s per call or None off CUDA)."""
    return measure_interleaved_both({"fn": fn}, warmup=warmup, repeats=repeats, sync=sync)["fn"]


TIMER_WALL = "host wall clock, device synchronised"
TIMER_BOTH = TIMER_WALL + "; CUDA events on the current stream in the same window (*_event_ms)"


def timer_label(device: torch.device | str) -> str:
    """What `settings.timer` says: which clocks the rows carry on this device."""
    return TIMER_BOTH if torch.device(device).type == "cuda" else TIMER_WALL


def event_summary(samples: Sequence[float] | None, items_per_call: int = 1, prefix: str = "") -> dict[str, float | None]:
    """CUDA-event columns next to `summarize`'s wall ones; all None when there were no events (CPU)."""
    keys = (f"{prefix}p50_event_ms", f"{prefix}p90_event_ms", f"{prefix}min_event_ms", f"{prefix}ms_per_item_event")
    if not samples:
        return dict.fromkeys(keys)
    p50 = percentile(samples, 50)
    values = (1000 * p50, 1000 * percentile(samples, 90), 1000 * min(samples), 1000 * p50 / items_per_call)
    return dict(zip(keys, values))


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if len(samples) == 0:
        raise InputError("percentile of no samples")
    if not 0 <= q <= 100:
        raise InputError(f"percentile q must be in [0, 100], got {q}")
    s = sorted(float(v) for v in samples)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(samples: Sequence[float], items_per_call: int = 1) -> dict[str, float]:
    """Seconds per call -> {n, p50_ms, p90_ms, mean_ms, min_ms, max_ms, ms_per_item, items_per_s}.

    items_per_call is what one call processes (images of a batch, frames): ms_per_item and
    items_per_s (fps) are taken from the median, the most load-robust statistic here.
    """
    if items_per_call < 1:
        raise InputError(f"items_per_call must be >= 1, got {items_per_call}")
    if len(samples) == 0:
        raise InputError("summarize needs at least one sample")
    p50 = percentile(samples, 50)
    return {
        "n": len(samples),
        "p50_ms": 1000 * p50,
        "p90_ms": 1000 * percentile(samples, 90),
        "mean_ms": 1000 * sum(samples) / len(samples),
        "min_ms": 1000 * min(samples),
        "max_ms": 1000 * max(samples),
        "ms_per_item": 1000 * p50 / items_per_call,
        "items_per_s": items_per_call / p50 if p50 > 0 else float("inf"),
    }


# ------------------------------------------------------------------------------------------------
# memory


def peak_host_memory_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this address space. Not ru_maxrss:
    Linux carries ru_maxrss across fork/exec, so a child started by a 2 GB parent reports at least
    2 GB whatever it does. Elsewhere: ru_maxrss (bytes on macOS, KiB on the BSDs).
    """
    hwm = host_memory_breakdown_mb().get("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def host_memory_breakdown_mb() -> dict[str, float]:
    """Linux /proc/self/status: current RSS split into anonymous / file-backed / shmem, and the peak.

    File-backed pages (memory-mapped caches, libraries) are reclaimable, anonymous ones are not:
    the split tells a growing heap from a growing page cache.
    """
    out: dict[str, float] = {}
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = float(value.split()[0]) / 1024
    return out


def reset_peak_gpu_memory(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_gpu_memory_mb(device: torch.device | str) -> float | None:
    """torch.cuda.max_memory_allocated since the last reset, MiB; None on a CPU. Counts torch's
    allocator only (not onnxruntime/TensorRT workspaces)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def run_isolated(
    function: str,
    kwargs: Mapping[str, Any],
    *,
    threads: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run `fvedit.benchmark.<function>(**kwargs)` in a fresh Python and return its dict result.

    The child adds `peak_host_mb` (its own peak RSS at exit, see `peak_host_memory_mb`: imports,
    weights and the work, nothing the parent did before) and `memory` (`host_memory_breakdown_mb`). kwargs must be JSON.
    """
    if not function.isidentifier() or function.startswith("_"):
        raise InputError(f"not a benchmark function name: {function!r}")
    payload = json.dumps({"function": function, "kwargs": dict(kwargs), "threads": threads})
    child_env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    child_env["PYTHONPATH"] = root + (os.pathsep + child_env["PYTHONPATH"] if child_env.get("PYTHONPATH") else "")
    if threads:
        child_env["OMP_NUM_THREADS"] = str(threads)
    child_env.update(env or {})
    code = "import sys, fvedit.benchmark as b; b._child_main(sys.argv[1])"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, payload], capture_output=True, text=True, env=child_env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise FveditError(f"benchmark child {function} ran past {timeout:.0f} s") from None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    raise FveditError(f"benchmark child {function} failed (exit {proc.returncode}): {tail[0]}")


def hold_memory_child(mb: int) -> dict[str, Any]:
    """A calibration child for `run_isolated`: allocates and touches `mb` MiB, so a test can check
    that the peak a fresh process reports moves by what it held."""
    block = np.ones(int(mb) * 2**20, dtype=np.uint8) if mb > 0 else None
    return {"held_mb": mb, "checksum": int(block[:: 2**20].sum()) if block is not None else 0}


def _child_main(payload: str) -> None:
    from fvedit.runtime.host_memory import retain_freed_memory

    retained = retain_freed_memory()  # as `fvedit` itself does at start (fvedit.cli.main)
    spec = json.loads(payload)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    result = globals()[spec["function"]](**spec["kwargs"])
    result = dict(result, peak_host_mb=peak_host_memory_mb(), memory=host_memory_breakdown_mb(),
                  freed_memory_retained=retained)
    sys.stdout.write("\n" + RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------------
# compute: FLOPs, matmul peak, machine


def unet_flops(cfg, batch: int = 1) -> float:
    """FLOPs (2 per multiply-add) of one UNet call on `batch` images, counted by
    `torch.utils.flop_counter.FlopCounterMode` on the meta device (no memory, no weights).
    Convolutions, matmuls and attention count; norms and pointwise ops do not.
    ~771 GFLOP per image for dva256, ~2.07 GFLOP for tiny."""
    from torch.utils.flop_counter import FlopCounterMode

    from fvedit.models.unet import UNet

    ucfg = getattr(cfg, "unet", cfg)
    with torch.device("meta"):
        unet = UNet(ucfg).eval()
        x = torch.empty(batch, ucfg.in_channels, ucfg.image_size, ucfg.image_size)
        t = torch.empty(batch)
        cond = torch.empty(batch, ucfg.cond_channels)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(x, t, cond)
    return float(counter.get_total_flops())


def matmul_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype the chip's peak is quoted in: bf16 where supported on a GPU (else fp16), fp32 on a CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def measured_matmul_tflops(
    device: torch.device | str, dtype: torch.dtype | None = None, n: int | None = None, repeats: int = 5
) -> float:
    """A large square matmul's rate in TFLOP/s (median of `repeats`): the practical peak the
    UNet's fraction-of-peak is quoted against. n defaults to 8192 on a GPU, 1024 on a CPU."""
    device = torch.device(device)
    dtype = dtype or matmul_dtype(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    samples = measure(lambda: torch.mm(a, b), warmup=2, repeats=repeats, sync=device)
    return 2 * n**3 / percentile(samples, 50) / 1e12


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, load, versions, GPU, pixel backend."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda_version": torch.version.cuda,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    try:
        from fvedit import pixels

        info["pixel_backend"] = pixels.backend()
    except Exception as err:  # noqa: BLE001 - a broken extension must not stop a benchmark
        info["pixel_backend"] = f"unavailable: {err}"
    return info


# ------------------------------------------------------------------------------------------------
# UNet backends


def unet_inputs(cfg, batch: int, device: torch.device | str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random non-zero inputs: x ~ N(0,1), fractional t in [0, 999), cond ~ N(0,1)."""
    ucfg = getattr(cfg, "unet", cfg)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, ucfg.image_size, ucfg.image_size, generator=gen)
    t = torch.rand(batch, generator=gen) * 999.0
    cond = torch.randn(batch, ucfg.cond_channels, generator=gen)
    return x.to(device), t.to(device), cond.to(device)


def resolve_backend_names(requested: Iterable[str] | None) -> list[str]:
    """Expand "all" to every backend usable here; reference always first (it is the ratio's base).

    What "all" leaves out, and why, is `unusable_backends()`."""
    from fvedit.runtime.backends import BACKENDS, available_backends

    names = [n.strip().lower() for n in (requested or ["all"]) if n and n.strip()]
    usable = [n for n, why in available_backends().items() if why.startswith("yes")]
    out: list[str] = []
    for n in names or ["all"]:
        if n == "all":
            out += usable
        elif n not in BACKENDS or n == "auto":
            raise InputError(f"unknown backend {n!r} for the benchmark: use reference, torch, onnxruntime, tensorrt or all")
        else:
            out.append(n)
    out = ["reference"] + [n for n in dict.fromkeys(out) if n != "reference"]
    return out


_PRECISION_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
BENCH_PRECISIONS = ("fp16", "bf16")


def backend_precision(backend: Any) -> str | None:
    """The compute precision a built backend really runs (fp16 asked on a CPU runs fp32), or None."""
    return _PRECISION_NAMES.get(getattr(backend, "dtype", None))


def backend_label(name: str, backend: Any) -> str:
    """The row label: the arm's name plus its precision and window, e.g. "torch bf16 w3", so the
    JSON says what ran without looking the backend up. Parts already in the name are not repeated."""
    parts = [name]
    precision = backend_precision(backend)
    if precision and precision not in name:
        parts.append(precision)
    window = getattr(backend, "temporal_window", 1)
    if isinstance(window, int) and window > 1:
        parts.append(f"w{window}")
    return " ".join(parts)


def _runs_on_cuda(device: torch.device) -> bool:
    """Where the backend checks decide the device type (one place, so a test can fake a GPU)."""
    return device.type == "cuda"


def backend_skip_reason(name: str, device: torch.device, precision: str, temporal_window: int) -> str | None:
    """Why `name` cannot run with these settings, found cheaply *before* building it, or None.

    Above all before an ONNX export: the 190M-parameter dva256 graph takes minutes to export on
    the CPU, and on a GPU a CPU-only onnxruntime could not use it anyway.
    """
    from fvedit.runtime.backends import onnx_cuda_provider_available

    if temporal_window > 1 and name not in ("reference", "torch"):
        return f"--temporal-window {temporal_window} needs the reference or torch backend: the {name} graph has per-frame attention"
    if name != "onnxruntime" or not _runs_on_cuda(device):
        return None
    if not onnx_cuda_provider_available():
        return "this onnxruntime has no CUDAExecutionProvider (CPU build): not exported, not timed on the GPU"
    if precision == "bf16":
        return "no bf16 ONNX export (fp16 or fp32 only)"
    return None


def unusable_backends() -> dict[str, str]:
    """Backend name -> why "all" leaves it out here (`available_backends`' answer), for the notes."""
    from fvedit.runtime.backends import available_backends

    return {n: why for n, why in available_backends().items() if not why.startswith("yes")}


def _import_onnx_exporter():
    """The ONNX exporter (`fvedit.export.onnx_export`), imported only when an export is needed."""
    from fvedit.export import onnx_export

    return onnx_export


def build_backends(
    weights,
    names: Sequence[str],
    device: torch.device | str,
    *,
    export_dir: Path | None = None,
    threads: int | None = None,
    precision: str = "fp16",
    temporal_window: int = 1,
    echo: Callable[[str], None] = lambda m: None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Instantiate the named backends. Returns (name -> backend, name -> {describe, build_s} or {skipped}).

    onnxruntime uses the graph `fvedit export` wrote for these weights; when there is none it
    exports one (fp32 on a CPU, fp16 on a GPU, dynamic batch) into `export_dir` (default: the
    per-weights folder the onnxruntime backend reads, so later runs reuse it) and reports the
    export time as build time, not latency. A backend that cannot be built here is skipped with
    the reason, never silently. threads caps onnxruntime's CPU thread pool like torch's (its
    session is otherwise sized to all cores, whatever torch.set_num_threads says). precision is
    the fast backends' (the reference is fp32); temporal_window > 1 windows the reference's and
    torch's attention and skips the others (`backend_skip_reason`, checked before any export).
    """
    from fvedit.runtime.backends import make_backend

    device = torch.device(device)
    built: dict[str, Any] = {}
    notes: dict[str, dict[str, Any]] = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            reason = backend_skip_reason(name, device, precision, temporal_window)
            if reason is not None:
                raise InputError(reason)
            if name == "onnxruntime":
                built[name] = _onnx_backend(weights, device, export_dir, echo)
                if threads and device.type == "cpu":
                    _limit_onnx_threads(built[name], threads)
            else:
                built[name] = make_backend(name, weights.model, device, dtype=precision, temporal_window=temporal_window)
        except (FveditError, ImportError) as err:
            notes[name] = {"skipped": str(err).splitlines()[0] if str(err) else type(err).__name__}
            echo(f"backend {name}: skipped ({notes[name]['skipped']})")
            continue
        notes[name] = {"describe": built[name].describe(), "build_s": time.perf_counter() - t0}
    return built, notes


def _onnx_backend(weights, device: torch.device, export_dir: Path | None, echo: Callable[[str], None]):
    from fvedit.runtime.backends import make_backend
    from fvedit.runtime.onnx_backend import default_export_dir, find_exported_onnx

    unet = weights.model.unet
    precision = "fp16" if device.type == "cuda" else "fp32"
    folder = export_dir if export_dir is not None else default_export_dir(unet)
    try:
        path = find_exported_onnx(unet, precision, folder)
    except InputError:
        onnx_export = _import_onnx_exporter()
        echo(f"backend onnxruntime: no {precision} export for these weights, exporting to {folder} (build time, not latency)")
        path = onnx_export.export_onnx(unet, Path(folder) / f"unet-{precision}-dyn.onnx", fp16=precision == "fp16")
    return make_backend("onnxruntime", weights.model, device, dtype=precision, onnx_path=path)


def _limit_onnx_threads(backend, threads: int) -> None:
    """Rebuild an onnxruntime CPU session with `threads` intra-op threads and no spin-waiting."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    backend.session = ort.InferenceSession(str(backend.path), options, providers=["CPUExecutionProvider"])


def bench_unet(
    backends: Mapping[str, Callable],
    cfg,
    batch_sizes: Sequence[int],
    device: torch.device | str,
    *,
    warmup: int = 1,
    repeats: int = 5,
    calls_per_frame: int | None = None,
    peak_tflops: float | None = None,
) -> list[dict[str, Any]]:
    """One UNet call per backend and batch size, all backends interleaved in the same run.

    One row per (batch, backend): the `summarize` figures, ratio_to_reference (p50 / reference p50),
    achieved TFLOP/s and, given `peak_tflops`, fraction_of_peak; ms_per_frame = UNet time per frame
    for `calls_per_frame` calls (encode + decode of the sampler); peak GPU memory per backend.
    All of these are wall clock; on CUDA the `event_summary` columns (*_event_ms) come from CUDA
    events in the same windows (None on a CPU). `label` names the backend with its precision.
    """
    device = torch.device(device)
    flops_per_image = unet_flops(cfg)
    rows: list[dict[str, Any]] = []
    for batch in batch_sizes:
        if batch < 1:
            raise InputError(f"batch sizes must be >= 1, got {batch}")
        x, t, cond = unet_inputs(cfg, batch, device)
        arms = {name: (lambda b=b: b(x, t, cond)) for name, b in backends.items()}
        peaks = {}
        for name, arm in arms.items():  # one untimed call each, for its peak GPU memory
            reset_peak_gpu_memory(device)
            arm()
            sync_device(device)
            peaks[name] = peak_gpu_memory_mb(device)
        timed = measure_interleaved_both(arms, warmup=max(warmup - 1, 0), repeats=repeats, sync=device)
        ref_p50 = percentile(timed["reference"][0], 50) if "reference" in timed else None
        for name, (s, events) in timed.items():
            row: dict[str, Any] = {"backend": name, "label": backend_label(name, backends[name]), "batch": batch,
                                   "precision": backend_precision(backends[name]), **summarize(s, batch),
                                   **event_summary(events, batch)}  # fmt: skip
            p50 = row["p50_ms"] / 1000
            row["ratio_to_reference"] = p50 / ref_p50 if ref_p50 else None
            row["tflops"] = flops_per_image * batch / p50 / 1e12
            row["fraction_of_peak"] = row["tflops"] / peak_tflops if peak_tflops else None
            row["ms_per_frame"] = row["ms_per_item"] * calls_per_frame if calls_per_frame else None
            row["peak_gpu_mb"] = peaks[name]
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# samplers


def bench_sampler(
    backend: Callable,
    weights,
    specs: Sequence,
    batch: int,
    device: torch.device | str,
    *,
    warmup: int = 0,
    repeats: int = 3,
) -> list[dict[str, Any]]:
    """Encode (x0 -> x_T) and decode (x_T -> x0) of one batch per sampler spec, timed separately.

    ms_per_frame = (encode p50 + decode p50) / batch: the diffusion part of a frame's edit cost
    (wall clock; the *_event_ms columns are CUDA-event time, None on a CPU).
    """
    from fvedit.runtime.backends import eps_fn

    device = torch.device(device)
    cfg = weights.config
    x0, _, _ = unet_inputs(cfg, batch, device, seed=1)
    x0 = x0.clamp(-1, 1)
    z_face = torch.randn(batch, cfg.unet.cond_channels, generator=torch.Generator().manual_seed(2)).to(device)
    fn = eps_fn(backend, z_face)
    rows = []
    name = getattr(backend, "name", "?")
    for spec in specs:
        x_T = spec.encode(fn, x0)
        enc, enc_ev = measure_both(lambda: spec.encode(fn, x0), warmup=warmup, repeats=repeats, sync=device)
        dec, dec_ev = measure_both(lambda: spec.decode(fn, x_T), warmup=warmup, repeats=repeats, sync=device)
        e, d = summarize(enc, batch), summarize(dec, batch)
        ee, de = event_summary(enc_ev, batch), event_summary(dec_ev, batch)
        rows.append({
            "sampler": spec.key, "backend": name, "label": backend_label(name, backend), "batch": batch,
            "encode_calls": spec.encode_calls, "decode_calls": spec.decode_calls,
            "encode_p50_ms": e["p50_ms"], "decode_p50_ms": d["p50_ms"],
            "encode_p90_ms": e["p90_ms"], "decode_p90_ms": d["p90_ms"],
            "ms_per_frame": e["ms_per_item"] + d["ms_per_item"],
            "encode_p50_event_ms": ee["p50_event_ms"], "decode_p50_event_ms": de["p50_event_ms"],
            "ms_per_frame_event": _sum_or_none(ee["ms_per_item_event"], de["ms_per_item_event"]),
        })  # fmt: skip
    return rows


def _sum_or_none(*values: float | None) -> float | None:
    return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# pixel kernels


def pixel_scene(width: int = 1920, height: int = 1080, size: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """One frame, a rotated face quad ~0.27 of the frame height wide, an edited crop and a feathered
    alpha: what one frame's warp (crop out) and paste (blend back) see in the pipeline."""
    from fvedit.pipeline import paste
    from fvedit.pixels import crop_homography

    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    c, r, ang = np.array([width / 2, height * 0.46]), height * 0.24, np.deg2rad(10)
    u = r * np.array([np.cos(ang), np.sin(ang)])
    v = np.array([-u[1], u[0]])
    h_c2f = crop_homography(np.array([c - u - v, c - u + v, c + u + v, c + u - v]), size)[None]
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    alpha = paste.feather((np.hypot(xx, yy) < size * 0.39).astype(np.float32), size / 16)[None]
    crop = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    return {"frame": frame, "h_c2f": h_c2f, "h_f2c": np.linalg.inv(h_c2f), "crop": crop, "alpha": alpha.astype(np.float32)}


def pixel_arms(scene: Mapping[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
    """warp+paste of one frame through the C++ extension ("ext") and through its PyTorch twin ("twin").

    The twin is called the way `fvedit.pixels` calls it when the extension is missing; "ext" is
    absent when the extension is not built.
    """
    from fvedit import pixels
    from fvedit.pixels import twin

    frame, crop, alpha = scene["frame"], scene["crop"], scene["alpha"]
    h_c2f, h_f2c = scene["h_c2f"], scene["h_f2c"]
    size = crop.shape[1]
    t_frame, t_crop, t_alpha = torch.from_numpy(frame), torch.from_numpy(crop), torch.from_numpy(alpha)
    t_c2f, t_f2c = torch.from_numpy(h_c2f.astype(np.float32)), torch.from_numpy(h_f2c)

    def twin_step():
        twin.warp_crops(t_frame, t_c2f, size)
        return twin.paste_blend_batch(t_frame, t_crop, t_alpha, t_f2c)

    arms: dict[str, Callable[[], Any]] = {}
    if pixels.backend() != "twin":

        def ext_step():
            pixels.warp_crops(frame, h_c2f, size)
            return pixels.paste_blend_batch(frame, crop, alpha, h_f2c)

        arms["ext"] = ext_step
    arms["twin"] = twin_step
    return arms


def bench_pixels(
    width: int = 1920,
    height: int = 1080,
    *,
    warmup: int = 1,
    repeats: int = 5,
    wrap: Callable[[str, Callable[[], Any]], Callable[[], Any]] | None = None,
) -> dict[str, Any]:
    """warp + paste per frame, extension vs twin interleaved; ext_over_twin = ext p50 / twin p50.

    wrap(name, fn) -> fn may decorate an arm (the CI gate's self-test slows one down)."""
    arms = pixel_arms(pixel_scene(width, height))
    if wrap is not None:
        arms = {name: wrap(name, fn) for name, fn in arms.items()}
    samples = measure_interleaved(arms, warmup=warmup, repeats=repeats)
    rows = [{"impl": name, "frame": f"{width}x{height}", **summarize(s)} for name, s in samples.items()]
    ratio = percentile(samples["ext"], 50) / percentile(samples["twin"], 50) if "ext" in samples else None
    return {"rows": rows, "ext_over_twin": ratio, "ext_built": "ext" in samples}


# ------------------------------------------------------------------------------------------------
# whole edit (run these through `run_isolated` for clean memory figures)


def make_bench_video(path: str | Path, frames: int, width: int, height: int) -> Path:
    """A generated face video (the astronaut moving over a background), no audio.

    The face is scaled so dlib's HOG detector (~80 px minimum) finds it at small frame sizes.
    """
    from fvedit.synth import make_face_video

    scale = min(0.8, max(0.5, 100.0 / min(width, height)))
    return make_face_video(Path(path), frames=frames, size=(width, height), fps=25, audio=False, face_scale=scale)


def edit_video_child(
    video: str,
    work_dir: str,
    *,
    preset: str | None = "tiny",
    weights_dir: str | None = None,
    device: str = "cpu",
    backend: str = "auto",
    sampler: str = "dpm",
    steps: int = 15,
    batch: int = 8,
    attrs: Sequence[str] = ("young",),
    faces: str | None = None,
    precision: str = "fp16",
    temporal_window: int = 1,
) -> dict[str, Any]:
    """A whole `fvedit edit` (encode + edit + decode + paste + write), then a re-edit from the
    encode cache; per-stage seconds of each. Meant to run in a fresh process (`run_isolated`).

    faces: a faces file from `fvedit align` for this video; its detections are replayed, so the
    run needs no dlib (and times no detection)."""
    from fvedit.pipeline.jobs import EditRequest, run_edit
    from fvedit.pipeline import PipelineOptions
    from fvedit.diffusion.spec import SamplerSpec

    work = Path(work_dir)
    runs = {}
    for label, out in (("first", "edit-1.mp4"), ("from_cache", "edit-2.mp4")):
        opts = PipelineOptions(sampler=SamplerSpec(sampler, steps), batch_size=batch, cache_dir=work / "cache",
                               precision=precision, temporal_window=temporal_window, quiet=True)  # fmt: skip
        if faces:
            opts.faces = Path(faces)
        t0 = time.perf_counter()
        summary = run_edit(
            Path(video), work / out, EditRequest(list(attrs)), preset=preset,
            weights_dir=Path(weights_dir) if weights_dir else None, device=device, backend=backend, opts=opts,
        )  # fmt: skip
        runs[label] = {
            "wall_s": time.perf_counter() - t0,
            "cache_hit": summary.cache_hit,
            "stages_s": dict(summary.times.seconds),
        }
        if label == "first":
            runs["frames"] = summary.frames
            runs["size"] = f"{summary.info.width}x{summary.info.height}"
    return runs


def edit_memory_child(
    video: str, work_dir: str, *, preset: str = "tiny", steps: int = 2, batch: int = 32, stand_in_unet: bool = False
) -> dict[str, Any]:
    """Encode + edit + decode + paste + write one video (demo weights), report memory before/after.

    stand_in_unet replaces the UNet by a cheap deterministic eps (0.1 x + a term in the condition):
    every other stage (decode, detection, crops, encoders, memory-mapped cache, paste, write) is
    the real pipeline. The UNet's own memory is bounded by the batch size, not the frame count, so
    this keeps the frame-count scaling while making a 400-frame run cheap enough for a unit test.
    """
    from fvedit.diffusion.spec import SamplerSpec
    from fvedit.pipeline.jobs import make_eps_model
    from fvedit.pipeline.options import PipelineOptions
    from fvedit.pipeline.scheduler import edit_video
    from fvedit.progress import StageTimes
    from fvedit.weights.demo import demo_weights

    weights = demo_weights(preset)
    if stand_in_unet:

        def eps_model(x, t, c):
            return 0.1 * x + 0.01 * c.mean(dim=1).view(-1, 1, 1, 1)
    else:
        eps_model = make_eps_model(weights, "reference", torch.device("cpu"))
    work = Path(work_dir)
    opts = PipelineOptions(sampler=SamplerSpec("dpm", steps), batch_size=batch, cache_dir=work / "cache", quiet=True)
    before = peak_host_memory_mb()
    times = StageTimes()
    t0 = time.perf_counter()
    enc, _, _, _ = edit_video(Path(video), work / "out.mp4", weights, eps_model, opts, times, _unedited, echo=lambda m: None)
    return {"frames": enc.num_frames, "peak_before_work_mb": before, "wall_s": time.perf_counter() - t0,
            "stages_s": dict(times.seconds), "stand_in_unet": stand_in_unet}  # fmt: skip


def memory_scaling(
    frame_counts: Sequence[int],
    *,
    width: int = 160,
    height: int = 120,
    steps: int = 2,
    batch: int = 32,
    stand_in_unet: bool = False,
    work_dir: str | Path | None = None,
    parallel: bool = False,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Peak host memory (peak RSS of a fresh process) of encoding + editing videos of each length.

    ratio = peak(longest) / peak(shortest); a streaming pipeline keeps it near 1. parallel runs
    the children side by side, one thread each (memory is per process, so peaks are unaffected).
    """
    with tempfile.TemporaryDirectory(prefix="fvedit-mem-", dir=work_dir) as tmp:
        jobs = []
        for n in frame_counts:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            video = make_bench_video(folder / "in.mp4", n, width, height)
            jobs.append((n, {"video": str(video), "work_dir": str(folder), "steps": steps, "batch": batch,
                             "stand_in_unet": stand_in_unet}))  # fmt: skip
        env = {"FVEDIT_WEIGHTS_DIR": str(Path(tmp) / "no-weights"), "FVEDIT_CACHE_DIR": str(Path(tmp) / "cache")}
        if parallel:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(jobs)) as pool:
                futures = [
                    pool.submit(run_isolated, "edit_memory_child", kw, threads=1, env=env, timeout=timeout) for _, kw in jobs
                ]
                results = [f.result() for f in futures]
        else:
            results = [run_isolated("edit_memory_child", kw, env=env, timeout=timeout) for _, kw in jobs]
    runs = [{"frames": n, **r} for (n, _), r in zip(jobs, results)]
    peaks = [r["peak_host_mb"] for r in runs]
    return {
        "size": f"{width}x{height}", "steps": steps, "batch": batch, "stand_in_unet": stand_in_unet,
        "runs": runs, "ratio": peaks[-1] / peaks[0] if len(peaks) > 1 else 1.0,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------
# the edit pipeline against a simulated device (fvedit.runtime.simulated)

EDIT_PHASE_STAGES = ("encode (inversion)", "decode", "paste", "write")  # the first to start opens the edit phase


@dataclass
class MarkedStageTimes(StageTimes):
    """StageTimes that also remember when each stage first started (perf_counter seconds), so the
    phases of a run can be cut on the wall clock however its stages overlap."""

    first_start: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.first_start.setdefault(name, time.perf_counter())
        with super().stage(name):
            yield


def _unedited(enc):
    """The identity "edit" the pipeline benchmarks run: the mean identity as it is."""
    from fvedit.pipeline.options import EditIdentity

    return EditIdentity(torch.from_numpy(enc.z_id_mean), "none")


def pipeline_child(
    video: str,
    work_dir: str,
    *,
    ms: float,
    threads: int | None = None,
    from_cache: bool = False,
    batch: int = 16,
    steps: int = 15,
    faces: str | None = None,
    preset: str = "dva256",
    encoder_ms: float | None = None,
    options: Mapping[str, Any] | None = None,
    asynchronous: bool = True,
) -> dict[str, Any]:
    """edit_video (as `fvedit edit` runs it) with the simulated device's
    stand-ins, timed by phase. Meant to run in a fresh process (`bench_pipeline` / `run_isolated`).

    First edit (from_cache False): the encoding is computed (use_cache off) and written to
    work_dir/cache. Re-edit (from_cache True): an untimed encode_video first fills that cache when
    it is missing, then the timed run must take the encoding from it. Phases, on the wall clock:
    analyse = start .. the identity edit (the analysis is complete; or the first edit-phase stage,
    `EDIT_PHASE_STAGES`, if earlier), edit = that .. the output written; device_busy_edit = simulated busy seconds in the edit phase /
    its wall seconds. `options`: extra PipelineOptions fields (e.g. a pipeline's own switches).
    `asynchronous`: UNet calls queued like CUDA launches (default) or each waited for
    (`fvedit.runtime.simulated`).
    """
    from fvedit.diffusion.spec import SamplerSpec
    from fvedit.pipeline.options import PipelineOptions
    from fvedit.pipeline.scheduler import edit_video, encode_video
    from fvedit.runtime.simulated import simulated_weights

    weights, unet = simulated_weights(preset, ms, encoder_ms=encoder_ms, asynchronous=asynchronous)
    clock, work, src = unet.clock, Path(work_dir), Path(video)
    opts = PipelineOptions(sampler=SamplerSpec("dpm", steps), batch_size=batch, cache_dir=work / "cache",
                           faces=Path(faces) if faces else None, threads=threads, quiet=True, use_cache=from_cache)
    for name, value in (options or {}).items():
        if not hasattr(opts, name):
            raise InputError(f"PipelineOptions has no field {name!r}")
        setattr(opts, name, value)
    def quiet(message: str) -> None:
        pass

    if from_cache:
        encode_video(src, weights, unet, opts, StageTimes(), echo=quiet)  # fills the cache when missing (untimed)
        opts.require_cache = True
        clock.reset()
    out = work / f"{'re-edit' if from_cache else 'edit'}-{os.getpid()}.mp4"
    times = MarkedStageTimes()
    t0, cpu0 = time.perf_counter(), time.process_time()
    analysed: list[tuple[float, float]] = []

    def unedited(enc):  # the edit step runs when the analysis is done: that closes the phase
        analysed.append((time.perf_counter(), time.process_time()))
        return _unedited(enc)

    enc, info, hit, _ = edit_video(src, out, weights, unet, opts, times, unedited, echo=quiet,
                                   writer_options={"threads": threads})
    end, cpu_end = time.perf_counter(), time.process_time()
    edit_start = min([analysed[0][0], *(times.first_start[s] for s in EDIT_PHASE_STAGES if s in times.first_start)])
    cpu_edit = cpu_end - analysed[0][1]  # CPU seconds of all threads (sleeps cost none)
    n = enc.num_frames
    per_frame = 1000 / max(n, 1)
    return {
        "frames": n, "present_frames": int(enc.present_frames.size), "size": f"{info.width}x{info.height}",
        "preset": preset, "ms": ms, "encoder_ms": ms if encoder_ms is None else encoder_ms,
        "threads": threads, "batch": batch, "sampler": opts.sampler.key,
        "calls_per_frame": (0 if hit else opts.sampler.encode_calls) + opts.sampler.decode_calls,
        "from_cache": from_cache, "cache_hit": hit, "faces_replayed": faces is not None,
        "device_calls_queued": asynchronous,
        "wall_ms_per_frame": (end - t0) * per_frame,
        "device_ms_per_frame": clock.busy_s * per_frame,
        "analyse_ms_per_frame": (edit_start - t0) * per_frame,
        "edit_ms_per_frame": (end - edit_start) * per_frame,
        "device_busy_edit": clock.busy_between(edit_start, end) / (end - edit_start) if end > edit_start else 0.0,
        "device_busy": clock.busy_between(t0, end) / (end - t0) if end > t0 else 0.0,
        "host_cpu_ms_per_frame": (cpu_end - cpu0) * per_frame,
        "host_cpu_ms_per_frame_edit": cpu_edit * per_frame,
        "host_cores_busy_edit": cpu_edit / (end - analysed[0][0]) if end > analysed[0][0] else 0.0,
        "device_calls": clock.calls,
        "stages_ms_per_frame": {name: s * per_frame for name, s in times.seconds.items()},
        "output": str(out),
    }  # fmt: skip


def bench_pipeline(
    video: str | Path,
    *,
    ms: float,
    threads: int | None = None,
    from_cache: bool = False,
    batch: int = 16,
    steps: int = 15,
    faces: str | Path | None = None,
    preset: str = "dva256",
    work_dir: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    asynchronous: bool = True,
) -> dict[str, Any]:
    """`pipeline_child` in a fresh process with `threads` CPU threads (torch, OpenMP, x264).

    work_dir holds the encode cache and the output: pass the same folder to a first edit and then
    a re-edit so the re-edit finds the cache; without one a temporary folder is used (and removed),
    so a re-edit then fills its own cache first (untimed)."""
    kwargs = {"video": str(video), "ms": float(ms), "threads": threads, "from_cache": from_cache, "batch": int(batch),
              "steps": int(steps), "faces": str(faces) if faces else None, "preset": preset,
              "options": dict(options) if options else None, "asynchronous": bool(asynchronous)}  # fmt: skip
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        return run_isolated("pipeline_child", dict(kwargs, work_dir=str(work_dir)), threads=threads, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="fvedit-pipeline-") as tmp:
        return run_isolated("pipeline_child", dict(kwargs, work_dir=tmp), threads=threads, timeout=timeout)


def per_frame_stages(run: Mapping[str, Any], frames: int) -> dict[str, float]:
    """Stage seconds -> ms per frame, plus `total` ('load weights' excluded): the run's wall clock
    when it has one (streamed stages overlap, so their sum can exceed it), else the stages' sum."""
    out = {name: 1000 * s / max(frames, 1) for name, s in run["stages_s"].items()}
    if "wall_s" in run:
        out["total"] = 1000 * (run["wall_s"] - run["stages_s"].get("load weights", 0.0)) / max(frames, 1)
    else:
        out["total"] = sum(v for k, v in out.items() if k != "load weights")
    return out


# ------------------------------------------------------------------------------------------------
# output


def result_document(machine: Mapping[str, Any], **sections: Any) -> dict[str, Any]:
    """The top-level JSON: schema, UTC time, machine info and the given sections."""
    return {
        "schema": SCHEMA,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": dict(machine),
        **sections,
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, document: Mapping[str, Any]) -> Path:
    """Write `document` as indented JSON (non-finite floats -> null), creating parent folders.

    Atomic (a temp file in the same folder, then os.replace): a benchmark rewrites its JSON after
    every part, and a crash or kill mid-write must leave the previous complete file, not half a one.
    """
    path = Path(path)
    text = json.dumps(_json_safe(document), indent=2, sort_keys=False) + "\n"
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
            tmp = Path(f.name)
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write benchmark JSON to {path}: {err.strerror or err}") from None
    return path
