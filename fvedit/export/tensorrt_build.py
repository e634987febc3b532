"""Build a TensorRT engine from an exported UNet ONNX file (TensorRT >= 10.9 Python API).

Written against the TensorRT 10 Python API (Builder, OnnxParser, IBuilderConfig, optimisation
profiles, timing cache, build_serialized_network). TensorRT cannot be installed on the machines
this project is developed and tested on, so this code is import-guarded and has not been run
here; the cache key and the guard are tested (tests/test_export.py).

Precision. fp32 engines come from the fp32 export (TensorRT may use TF32 for convolutions).
fp16 engines come from the fp16 export as a *strongly typed* network: TensorRT then keeps the
types the graph states (fp16 convolutions; fp32 GroupNorm statistics, softmax and time
embedding) instead of choosing per layer, which avoids the fp16 GroupNorm overflow and the
fp16 cos/sin of timesteps near 999 that a blanket FP16 flag invites.

Shapes. A dynamic-batch ONNX gets one optimisation profile (min, opt, max) over the batch axis;
a static-batch ONNX builds a static engine (the fastest kind, and what CUDA graphs need).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

from fvedit.errors import FveditError, InputError
from fvedit.runtime.onnx_backend import read_sidecar
from fvedit.runtime.tensorrt_backend import (
    ENGINE_SUFFIX,
    MIN_TENSORRT,
    engine_cache_key,
    engine_file_name,
    file_sha256,
    import_tensorrt,
    tensorrt_version_tuple,
)


def timing_cache_path(engine_dir: Path, gpu_name: str, trt_version: str) -> Path:
    """One timing cache per GPU model and TensorRT version (a cache from another GPU slows engines)."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    return engine_dir / f"timing-{gpu}-trt{trt_version}.cache"


def build_engine(
    onnx_path: str | Path,
    *,
    batch_profile: tuple[int, int, int] | None = None,
    engine_dir: str | Path | None = None,
    workspace_gib: int = 8,
    optimization_level: int = 3,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Serialize an engine for `onnx_path` into `engine_dir` (default `<onnx dir>/engines`); return its path.

    The engine file name is the cache key (ONNX sha256, precision, batch profile, GPU, TensorRT
    version): an existing engine with the same key is reused unless `force`. batch_profile
    defaults to the file's static batch, or (1, 4, 16) for a dynamic one.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"ONNX model not found: {onnx_path}; run `fvedit export` first")
    trt = import_tensorrt(onnx_path)
    import torch

    if not torch.cuda.is_available():
        raise FveditError(f"building a TensorRT engine needs an NVIDIA GPU; the ONNX model is at {onnx_path}")
    meta = read_sidecar(onnx_path)
    precision = meta.get("precision", "fp32")
    if meta.get("opset", 21) >= 21 and tensorrt_version_tuple(trt.__version__) < MIN_TENSORRT:
        raise FveditError(
            f"TensorRT {trt.__version__} cannot parse opset-21 GroupNormalization (needs >= "
            f"{'.'.join(map(str, MIN_TENSORRT))}): upgrade TensorRT or re-export with `fvedit export --opset 18`"
        )
    static = meta.get("batch") if isinstance(meta.get("batch"), int) else None
    if batch_profile is None:
        batch_profile = (static, static, static) if static else (1, 4, min(16, meta.get("max_batch", 16)))
    lo, opt, hi = batch_profile
    if static and (lo, opt, hi) != (static, static, static):
        raise InputError(f"{onnx_path.name} has a static batch of {static}; its engine profile must be ({static}, {static}, {static})")

    gpu = torch.cuda.get_device_name()
    key = engine_cache_key(file_sha256(onnx_path), precision, (lo, opt, hi), gpu, trt.__version__)
    engine_dir = Path(engine_dir) if engine_dir is not None else onnx_path.parent / "engines"
    engine_dir.mkdir(parents=True, exist_ok=True)
    plan = engine_dir / engine_file_name(key)
    if plan.is_file() and not force:
        log(f"TensorRT engine up to date: {plan}")
        return plan

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if precision != "fp32":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FveditError(f"TensorRT could not parse {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    config.builder_optimization_level = optimization_level
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if any(-1 in tuple(inp.shape) for inp in inputs):
        profile = builder.create_optimization_profile()
        for inp in inputs:
            rest = tuple(inp.shape)[1:]
            profile.set_shape(inp.name, (lo, *rest), (opt, *rest), (hi, *rest))
        config.add_optimization_profile(profile)

    cache_file = timing_cache_path(engine_dir, gpu, trt.__version__)
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    log(f"building TensorRT {trt.__version__} {precision} engine for {gpu}, batch {lo}..{hi} (opt {opt}); this takes minutes")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise FveditError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above)")
    tmp = plan.with_suffix(ENGINE_SUFFIX + ".tmp")
    tmp.write_bytes(memoryview(serialized))
    tmp.replace(plan)
    cache_file.write_bytes(memoryview(config.get_timing_cache().serialize()))
    seconds = time.perf_counter() - start
    plan.with_suffix(".json").write_text(json.dumps({
        "key": key, "onnx": str(onnx_path), "precision": precision, "batch_profile": [lo, opt, hi],
        "gpu": gpu, "tensorrt": trt.__version__, "build_seconds": round(seconds, 1),
    }, indent=2))  # fmt: skip
    log(f"wrote {plan} in {seconds:.0f} s")
    return plan
