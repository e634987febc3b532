"""The "tensorrt" backend: run a serialized TensorRT engine built from the exported ONNX graph.

TensorRT is optional and cannot be installed on CPU-only machines, so everything that touches it
imports it lazily (`import_tensorrt`) and fails with one message that says what to do. The engine
cache key (`engine_cache_key`) is plain Python and tested everywhere.

An engine is only valid for the exact graph+weights (sha256 of the ONNX file, weights inside),
precision, batch profile, GPU model and TensorRT version it was built with, so all five go into
its file name: a change of any of them builds a new engine instead of loading a wrong one.
The engines sit in `<export dir>/engines/` beside the ONNX files.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from fvedit.errors import FveditError, InputError

ENGINE_SUFFIX = ".plan"
MIN_TENSORRT = (10, 9)  # first release whose ONNX parser reads opset-21 GroupNormalization


def tensorrt_missing_message(onnx_path: Path | str | None) -> str:
    where = f"the ONNX model is at {onnx_path}; " if onnx_path else ""
    return (
        f"TensorRT is not installed; {where}install TensorRT 10 (pip install \"fvedit[tensorrt]\") "
        "on a machine with an NVIDIA GPU and rerun `fvedit export --tensorrt`"
    )


def import_tensorrt(onnx_path: Path | str | None = None):
    """The `tensorrt` module, or FveditError with the install message."""
    try:
        import tensorrt as trt
    except ImportError:
        raise FveditError(tensorrt_missing_message(onnx_path)) from None
    return trt


def tensorrt_version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


@lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path | str) -> str:
    """sha256 of a file, memoised per (path, size, mtime) so repeated lookups do not re-read 760 MB."""
    st = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def engine_cache_key(
    onnx_sha256: str, precision: str, batch_profile: tuple[int, int, int], gpu_name: str, trt_version: str
) -> str:
    """sha256 over everything an engine depends on; the engine file is `unet-<key[:24]>.plan`."""
    lo, opt, hi = (int(b) for b in batch_profile)
    if not 1 <= lo <= opt <= hi:
        raise InputError(f"batch profile must satisfy 1 <= min <= opt <= max, got {batch_profile}")
    if precision not in ("fp32", "fp16", "bf16"):
        raise InputError(f"unknown engine precision {precision!r}: use fp32, fp16 or bf16")
    payload = json.dumps(
        {"onnx": onnx_sha256, "precision": precision, "batch": [lo, opt, hi], "gpu": gpu_name, "tensorrt": trt_version},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def engine_file_name(key: str) -> str:
    return f"unet-{key[:24]}{ENGINE_SUFFIX}"


def find_engine(unet: torch.nn.Module, precision: str, folder: Path | None = None) -> Path:
    """The newest engine built for these weights and precision on this GPU with this TensorRT."""
    from fvedit.runtime.onnx_backend import default_export_dir

    folder = Path(folder) if folder is not None else default_export_dir(unet)
    trt = import_tensorrt(folder)
    gpu = torch.cuda.get_device_name()
    found = []
    for meta_path in (folder / "engines").glob("unet-*.json"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        plan = meta_path.with_suffix(ENGINE_SUFFIX)
        if plan.is_file() and meta.get("precision") == precision and meta.get("gpu") == gpu and meta.get("tensorrt") == trt.__version__:
            found.append(plan)
    if not found:
        raise InputError(
            f"no TensorRT {precision} engine for these weights, this GPU ({gpu}) and TensorRT {trt.__version__} in "
            f"{folder / 'engines'}: run `fvedit export --tensorrt{' --fp16' if precision == 'fp16' else ''}`"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16}


class TensorRTBackend:
    """eps from a TensorRT engine; buffers are torch tensors, run on torch's current CUDA stream.

    TensorRT's lifetime rule: a factory must outlive what it creates. The runtime that deserialised
    the engine is therefore kept (`self.runtime`), and `close()` frees children first: execution
    context, engine, runtime.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, device: str | torch.device = "cuda", *, cond_dim: int):
        trt = import_tensorrt()
        self.trt = trt
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise InputError(f"TensorRT engine not found: {self.path}; run `fvedit export --tensorrt`")
        self.device = torch.device(device)
        self.cond_dim = cond_dim
        meta_path = self.path.with_suffix(".json")
        self.meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.meta.get("precision"), torch.float32)
        self.logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise InputError(f"TensorRT could not load {self.path} (built by another TensorRT version or GPU?): rebuild it")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(self.inputs) != ["cond", "t", "x"] or self.outputs != ["eps"]:
            raise InputError(f"{self.path} is not an fvedit UNet engine (inputs {self.inputs}, outputs {self.outputs})")
        self.profile = tuple(self.meta.get("batch_profile", (1, 1, 1)))

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        from fvedit.runtime.backends import check_inputs

        x, t, cond = check_inputs(x, t, cond, self.cond_dim, self.device)
        lo, _, hi = self.profile
        b = x.shape[0]
        if b > hi:  # the profile's largest batch at a time
            return torch.cat([self(x[i : i + hi], t[i : i + hi], cond[i : i + hi]) for i in range(0, b, hi)])
        if b < lo:
            return self._padded(x, t, cond, lo)
        return self._run(x, t, cond)

    def _padded(self, x: Tensor, t: Tensor, cond: Tensor, n: int) -> Tensor:
        from fvedit.runtime.onnx_backend import pad_batch

        return self._run(*(pad_batch(v, n) for v in (x, t, cond)))[: x.shape[0]]

    def _run(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        feeds = {}
        for name, value in (("x", x), ("t", t), ("cond", cond)):
            want = _TORCH_DTYPES.get(self.engine.get_tensor_dtype(name).name, torch.float32)
            feeds[name] = value.to(want).contiguous()
            self.context.set_input_shape(name, tuple(feeds[name].shape))
            self.context.set_tensor_address(name, feeds[name].data_ptr())
        out_dtype = _TORCH_DTYPES.get(self.engine.get_tensor_dtype("eps").name, torch.float32)
        out = torch.empty(tuple(self.context.get_tensor_shape("eps")), dtype=out_dtype, device=self.device)
        self.context.set_tensor_address("eps", out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise FveditError(f"TensorRT execution failed for batch {x.shape[0]} ({self.path.name})")
        return out.float()

    def close(self) -> None:
        """Release the TensorRT objects in reverse order of creation (context, engine, runtime)."""
        for name in ("context", "engine", "runtime"):
            if getattr(self, name, None) is not None:
                setattr(self, name, None)

    def __del__(self) -> None:
        # Without this, clearing the instance dict would drop `runtime` before `engine` (dict order).
        self.close()

    def describe(self) -> str:
        lo, opt, hi = self.profile
        return f"tensorrt ({self.meta.get('precision', '?')}, batch {lo}..{hi} opt {opt}) {self.path.name} on {self.device}"
