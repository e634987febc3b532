"""Which engine runs the UNet: one call interface, four implementations, one factory.

Every backend is a callable eps = backend(x, t, cond) with x [B,3,S,S] float32, t [B] float
(original timesteps 0..999, fractional allowed), cond [B or 1, D] float32, returning eps as float32
on the backend's device. Samplers close over cond: `eps_fn(backend, z_face)`.

    reference    the fp32 eager `model.unet`, exactly (with temporal_window > 1: the same modules,
                 attention blocks replaced by sliding-window cross-frame attention, PyTorch twin),
                 with TF32 off on CUDA: a true fp32 oracle
    torch        `fvedit.runtime.fast_unet`: fp16/bf16, fused GroupNorm+SiLU, SDPA,
                 channels_last, cudnn.benchmark and CUDA graphs on a GPU; fp32 (or bf16) with
                 PyTorch twins on a CPU; compile=True runs it through torch.compile (inductor)
    onnxruntime  an exported ONNX graph (`fvedit export`) in onnxruntime, CUDA provider when present
    tensorrt     a TensorRT engine built from that ONNX graph (`fvedit export --tensorrt`)
    auto         torch on CUDA, reference on a CPU (the torch path buys nothing there)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor

from fvedit.errors import InputError
from fvedit.runtime.device import tf32_disabled

BACKENDS = ("auto", "reference", "torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp16", "bf16", "fp32")


@runtime_checkable
class UNetBackend(Protocol):
    """eps = backend(x [B,3,S,S] f32, t [B] f32, cond [B or 1, D] f32) -> [B,3,S,S] f32."""

    name: str
    dtype: torch.dtype
    device: torch.device

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor: ...

    def describe(self) -> str: ...


def check_inputs(x: Tensor, t: Tensor, cond: Tensor, cond_dim: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Validate shapes and move everything to `device` as float32; t and cond broadcast to the batch."""
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
        raise InputError(f"UNet input x must be [B, 3, S, S], got {tuple(getattr(x, 'shape', ()))}")
    b = x.shape[0]
    t = torch.as_tensor(t).reshape(-1)
    if t.shape[0] not in (1, b):
        raise InputError(f"UNet timesteps t must have 1 or {b} values for a batch of {b}, got {t.shape[0]}")
    if cond.dim() != 2 or cond.shape[1] != cond_dim or cond.shape[0] not in (1, b):
        raise InputError(f"UNet condition must be [{b} or 1, {cond_dim}], got {tuple(cond.shape)}")
    x = x.to(device, torch.float32)
    t = t.to(device, torch.float32).expand(b)
    cond = cond.to(device, torch.float32).expand(b, -1)
    return x, t, cond


def eps_fn(backend: Callable[[Tensor, Tensor, Tensor], Tensor], cond: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The sampler's eps_fn(x, t) for a fixed condition."""
    return lambda x, t: backend(x, t, cond)


# ------------------------------------------------------------------------------------------------
# reference


def reference_forward(unet, x: Tensor, t: Tensor, cond: Tensor, temporal_window: int = 1, boundary: str = "shrink") -> Tensor:
    """The reference UNet; with temporal_window > 1 its attention blocks see a window of frames.

    The frames of the batch are taken as consecutive frames of one clip, in order. The windowed
    attention is the PyTorch twin, never the Triton kernel: on CUDA that kernel is what the
    oracle checks.
    """
    if temporal_window == 1:
        return unet(x, t, cond)
    from fvedit.models.unet import timestep_embedding
    from fvedit.runtime.fast_unet import broadcast_inputs, walk_unet
    from fvedit.runtime.kernels.swcfa import attention_block_forward

    t, cond = broadcast_inputs(x, t, cond)
    emb = unet.time_embed(timestep_embedding(t, unet.cfg.model_channels))
    h = walk_unet(
        unet, x, emb, cond,
        resblock=lambda blk, h, e, c, lat: blk(h, e, c, lat),
        attention=lambda blk, h: attention_block_forward(blk, h, temporal_window, boundary=boundary, backend="twin"),
        layer=lambda mod, h: mod(h),
    )  # fmt: skip
    return unet.out(h)


class ReferenceBackend:
    """The fp32 eager model itself (moved to `device` if it lives elsewhere), run with TF32 off.

    cuDNN convolutions default to TF32 on Ampere and later (fp16's 10 mantissa bits), which would
    make the oracle, and the reference timing, a TF32 one; `tf32_disabled` restores the caller's
    settings after each call.
    """

    name = "reference"
    dtype = torch.float32

    def __init__(self, unet, device: torch.device, temporal_window: int = 1, boundary: str = "shrink", note: str = ""):
        self.device = torch.device(device)
        self.unet = unet.to(self.device).eval()
        self.temporal_window = temporal_window
        self.boundary = boundary
        self.cond_dim = unet.cfg.cond_channels
        self.note = note

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        x, t, cond = check_inputs(x, t, cond, self.cond_dim, self.device)
        with tf32_disabled():
            return reference_forward(self.unet, x, t, cond, self.temporal_window, self.boundary)

    def describe(self) -> str:
        attn = "" if self.temporal_window == 1 else f", SWCFA w={self.temporal_window}"
        tf32 = ", TF32 off" if self.device.type == "cuda" else ""
        return f"reference (fp32 eager{attn}{tf32}) on {self.device}" + (f"; {self.note}" if self.note else "")


# ------------------------------------------------------------------------------------------------
# registry


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


ORT_CPU_ONLY = "no: onnxruntime has no CUDA execution provider (CPU build)"


def onnx_cuda_provider_available() -> bool:
    """True when onnxruntime is installed and has its CUDA execution provider.

    Cheap (imports onnxruntime, builds nothing): call it before exporting an ONNX graph for a GPU
    run, as the export of a large UNet takes minutes and a CPU-only onnxruntime cannot use it.
    """
    if not _module_present("onnxruntime"):
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def available_backends() -> dict[str, str]:
    """Backend name -> "yes" or why not (for `fvedit info` and benchmarks).

    Imports nothing heavy; on a CUDA machine it imports onnxruntime to ask for its CUDA provider.
    """
    cuda = torch.cuda.is_available()
    out = {"reference": "yes", "torch": "yes" if cuda else "yes (CPU: fp32/bf16 twins, no speed-up)"}
    if not _module_present("onnxruntime"):
        out["onnxruntime"] = 'no: pip install "fvedit[onnx]"'
    elif cuda and not onnx_cuda_provider_available():
        out["onnxruntime"] = ORT_CPU_ONLY
    else:
        out["onnxruntime"] = "yes"
    if not _module_present("tensorrt"):
        out["tensorrt"] = 'no: install TensorRT 10 (pip install "fvedit[tensorrt]") on a machine with an NVIDIA GPU'
    elif not cuda:
        out["tensorrt"] = "no: TensorRT is installed but no CUDA GPU is visible"
    else:
        out["tensorrt"] = "yes"
    return out


_PRECISION_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
}  # fmt: skip


def _precision(dtype: str | torch.dtype) -> str:
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    key = _PRECISION_ALIASES.get(str(dtype).strip().lower())
    if key is None:
        raise InputError(f"unknown precision {dtype!r}: use one of {', '.join(PRECISIONS)}")
    return key


def make_backend(
    name: str,
    model,
    device: str | torch.device,
    *,
    dtype: str | torch.dtype = "fp16",
    temporal_window: int = 1,
    boundary: str = "shrink",
    onnx_path: str | Path | None = None,
    engine_path: str | Path | None = None,
    threads: int | None = None,
    compile: bool = False,
    cudnn_benchmark: bool | None = None,
) -> UNetBackend:
    """Build the backend `name` for `model` (a DVAModel, or its UNet) on `device`.

    dtype is the compute precision of the fast backends (the reference is always fp32; on a CPU
    the torch backend turns fp16 into fp32, as CPU fp16 convolutions are slow). temporal_window > 1
    turns on sliding-window cross-frame attention (reference and torch only: exported graphs have
    per-frame attention). onnx_path / engine_path default to what `fvedit export` wrote for these
    weights (see `fvedit.runtime.onnx_backend.default_export_dir`). threads sizes onnxruntime's
    CPU thread pool (torch's is set with torch.set_num_threads). compile=True runs the torch
    backend through torch.compile (see `fvedit.runtime.fast_unet.TorchBackend`; "auto" then means
    torch on a CPU too); cudnn_benchmark (default: on for CUDA) is the torch backend's.
    """
    name = (name or "auto").strip().lower()
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if isinstance(temporal_window, bool) or not isinstance(temporal_window, int) or temporal_window < 1:
        raise InputError(f"--temporal-window must be a positive number of frames, got {temporal_window!r}")
    precision = _precision(dtype)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("a CUDA device was asked for, but torch sees no GPU: use --device cpu")
    unet = getattr(model, "unet", model)
    if compile and name not in ("auto", "torch"):
        raise InputError(f"compile=True applies to the torch backend only, not {name}")

    if name == "auto":
        if device.type == "cuda" or compile:
            name = "torch"
        else:
            return ReferenceBackend(unet, device, temporal_window, boundary, note="auto: reference on CPU")
    if name == "reference":
        return ReferenceBackend(unet, device, temporal_window, boundary)
    if name == "torch":
        from fvedit.runtime.fast_unet import DTYPES, TorchBackend

        note = ""
        if device.type == "cpu" and precision == "fp16":
            precision, note = "fp32", "fp16 asked for: CPU fp16 convolutions are slow, ran fp32"
        return TorchBackend(
            unet, device, DTYPES[precision], temporal_window=temporal_window, boundary=boundary,
            compile=compile, cudnn_benchmark=cudnn_benchmark, note=note,
        )  # fmt: skip

    if temporal_window > 1:
        raise InputError(
            f"--temporal-window {temporal_window} needs the reference or torch backend: "
            f"the exported {name} graph has per-frame attention"
        )
    if name == "onnxruntime":
        if not _module_present("onnxruntime"):
            raise InputError('the onnxruntime backend needs onnxruntime: pip install "fvedit[onnx]"')
        if device.type == "cuda" and not onnx_cuda_provider_available():
            raise InputError(
                "this onnxruntime has no CUDA provider: pip uninstall onnxruntime && pip install onnxruntime-gpu "
                "(never both), or run the onnxruntime backend with --device cpu"
            )
        from fvedit.runtime.onnx_backend import OnnxBackend, find_exported_onnx

        if device.type == "cpu" and precision != "fp32":
            precision = "fp32"  # onnxruntime's CPU kernels are fp32 kernels
        path = Path(onnx_path) if onnx_path is not None else find_exported_onnx(unet, precision)
        return OnnxBackend(path, device, unet=unet, threads=threads)
    # tensorrt
    from fvedit.runtime.tensorrt_backend import TensorRTBackend, find_engine, tensorrt_missing_message

    if not _module_present("tensorrt"):
        raise InputError(tensorrt_missing_message(None))
    if device.type != "cuda":
        raise InputError("the tensorrt backend runs on an NVIDIA GPU: use --device cuda")
    path = Path(engine_path) if engine_path is not None else find_engine(unet, precision)
    return TensorRTBackend(path, device, cond_dim=unet.cfg.cond_channels)
