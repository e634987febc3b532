"""Export the reference UNet to ONNX, and check the file against the reference in onnxruntime.

Choices, and why:

- The *reference* modules are exported (plain PyTorch ops), never the fast path: the Triton
  kernels of `fvedit.runtime.kernels` must not enter a graph that onnxruntime/TensorRT run.
- The dynamo exporter (`torch.onnx.export(..., dynamo=True)`, torch.export + onnxscript) at
  **opset 21** by default. GroupNorm then becomes one native `GroupNormalization` node (per-channel
  scale/bias, statistics in fp32 via stash_type), which TensorRT >= 10.9 parses as a normalization
  layer. At opset 18 the ONNX op had per-*group* scale/bias (a spec bug, fixed in opset 21), so
  both PyTorch exporters decompose GroupNorm to InstanceNormalization + Mul/Add there; `--opset 18`
  is kept for older TensorRT (< 10.9) and still validates, it is just not the native op. The
  TorchScript exporter gives that same decomposition at any opset and is deprecated.
- Dynamic batch axis by default (one file for every batch size), or one file per static batch
  (`dynamic=False`): TensorRT with CUDA graphs wants static shapes.
- fp16 (`fp16=True`): the reference UNet is copied and cast to half *except* its GroupNorms
  and time MLP, then exported through the same module walk as the fast path. The official
  `GroupNorm32` casts to fp32 and back and the attention softmax is fp32 in the reference code,
  so the graph keeps GN statistics and softmax in fp32 by construction; inputs and output stay
  float32. (Converting the fp32 graph afterwards with onnxruntime's float16 tool produced wrong
  outputs and duplicate node names here, so it is not used.)
- Weights are stored inside the .onnx file (no external data; the official UNet is 760 MB in
  fp32, under protobuf's 2 GB cap), so the file's sha256 identifies weights + graph for the
  TensorRT engine cache.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from fvedit.errors import FveditError, InputError
from fvedit.models.unet import UNet, timestep_embedding
from fvedit.runtime.fast_unet import walk_unet
from fvedit.runtime.onnx_backend import INPUT_NAMES, OUTPUT_NAME, onnx_file_name, sidecar_path, weights_fingerprint

DEFAULT_OPSET = 21
MIN_OPSET = 18
MAX_DYNAMIC_BATCH = 64
# Max |onnxruntime - reference| as a fraction of max|reference| (eps outputs are ~1-2 in size).
# fp32: reordered sums, ~u32 sqrt(fan-in) per stage over sqrt(stages): ~2e-4 for dva256 (fan-in
# 4608, ~500 stages), measured ~1e-5 on tiny. fp16: every stage rounds its activations to 11
# bits, ~u16 sqrt(stages) ~ 2e-2 for dva256, measured ~4e-3 on tiny (see tests/test_export.py).
DEFAULT_TOL = {"fp32": 1e-3, "fp16": 6e-2}


class HalfUNet(nn.Module):
    """fp32 in, fp32 out, fp16 inside: a half copy of the UNet with GroupNorm and the time MLP in fp32."""

    def __init__(self, unet: UNet, dtype: torch.dtype = torch.float16):
        super().__init__()
        self.dtype = dtype
        self.unet = copy.deepcopy(unet).to(dtype)
        self.unet.time_embed.float()
        for mod in self.unet.modules():
            if isinstance(mod, nn.GroupNorm):
                mod.float()

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        u = self.unet
        emb = u.time_embed(timestep_embedding(t, u.cfg.model_channels)).to(self.dtype)
        h = walk_unet(
            u, x.to(self.dtype), emb, cond.to(self.dtype),
            resblock=lambda blk, h, e, c, lat: blk(h, e, c, lat),
            attention=lambda blk, h: blk(h),
            layer=lambda mod, h: mod(h),
        )  # fmt: skip
        return u.out(h).float()


@contextmanager
def _quiet_exporter():
    """The exporter logs/warns about optional packages (torchvision ops) and deprecations."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def example_inputs(unet: UNet, batch: int, seed: int = 0, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """Random non-zero inputs: x ~ N(0,1), t uniform in [0, 999) (fractional), cond ~ N(0,1)."""
    gen = torch.Generator().manual_seed(seed)
    s, d = unet.cfg.image_size, unet.cfg.cond_channels
    x = torch.randn(batch, 3, s, s, generator=gen)
    t = torch.rand(batch, generator=gen) * 999.0
    cond = torch.randn(batch, d, generator=gen)
    return x.to(device), t.to(device), cond.to(device)


def export_onnx(
    unet: UNet,
    path: str | Path,
    *,
    fp16: bool = False,
    batch: int | None = None,
    opset: int = DEFAULT_OPSET,
    max_batch: int = MAX_DYNAMIC_BATCH,
) -> Path:
    """Write the UNet as ONNX. batch=None: dynamic batch axis (1..max_batch); an int: that static batch.

    Also writes the JSON sidecar (weights fingerprint, precision, batch, opset). Runs on a CPU
    copy when the model lives on a GPU, so the graph is device-neutral.
    """
    if opset < MIN_OPSET:
        raise InputError(f"--opset {opset} is too old: use {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
    if batch is not None and batch < 1:
        raise InputError(f"--batch must be >= 1, got {batch}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    unet = unet if next(unet.parameters()).device.type == "cpu" else copy.deepcopy(unet).cpu()
    unet = unet.eval()
    module: nn.Module = HalfUNet(unet) if fp16 else unet
    # a dynamic axis needs an example batch > 1 (a size-1 example is specialised to a constant)
    args = example_inputs(unet, batch if batch is not None else 2)
    dynamic_shapes = None
    if batch is None:
        dim = torch.export.Dim("batch", min=1, max=max_batch)
        dynamic_shapes = {"x": {0: dim}, "t": {0: dim}, "cond": {0: dim}}
    start = time.perf_counter()
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                module, args, str(path), dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes, external_data=False, verbose=False,
            )  # fmt: skip
    except Exception as err:  # the exporter raises many types; keep the first line
        raise FveditError(f"ONNX export failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    meta = {
        "format": "fvedit-unet-onnx",
        "weights_fingerprint": weights_fingerprint(unet),
        "precision": "fp16" if fp16 else "fp32",
        "batch": batch if batch is not None else "dynamic",
        "max_batch": max_batch if batch is None else batch,
        "image_size": unet.cfg.image_size,
        "cond_dim": unet.cfg.cond_channels,
        "opset": opset,
        "torch": torch.__version__,
        "export_seconds": round(time.perf_counter() - start, 1),
    }
    sidecar_path(path).write_text(json.dumps(meta, indent=2))
    return path


def export_all(
    unet: UNet, out_dir: str | Path, *, fp16: bool = False, batches: list[int] | None = None, dynamic: bool = True,
    opset: int = DEFAULT_OPSET, max_batch: int = MAX_DYNAMIC_BATCH,
) -> list[Path]:
    """One dynamic file, or one file per static batch, named by `onnx_file_name`."""
    precision = "fp16" if fp16 else "fp32"
    out_dir = Path(out_dir)
    if dynamic:
        return [export_onnx(unet, out_dir / onnx_file_name(precision, None), fp16=fp16, opset=opset, max_batch=max_batch)]
    return [export_onnx(unet, out_dir / onnx_file_name(precision, b), fp16=fp16, batch=b, opset=opset) for b in sorted(set(batches or [1]))]


def onnx_op_types(path: str | Path) -> Counter:
    """Op type -> count over the main graph (and the domains used), to check what was exported."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in model.graph.node)


@torch.no_grad()
def validate_onnx(
    path: str | Path, model: nn.Module, batch: int = 2, tol: float | None = None, *, seed: int = 1
) -> float:
    """Max |onnxruntime(CPU) - reference| on random non-zero inputs; FveditError above `tol` * max|reference|.

    tol is relative to the size of the reference output, so it holds for any model scale; it
    defaults by the file's precision (DEFAULT_TOL). The reference is the fp32 eager UNet on the
    model's own device.
    """
    from fvedit.runtime.onnx_backend import OnnxBackend

    unet = getattr(model, "unet", model)
    backend = OnnxBackend(path, "cpu", unet=unet)
    tol = DEFAULT_TOL[backend.precision] if tol is None else tol
    device = next(unet.parameters()).device
    x, t, cond = example_inputs(unet, batch, seed=seed)
    ref = unet(x.to(device), t.to(device), cond.to(device)).float().cpu()
    got = backend(x, t, cond)
    err = float((got - ref).abs().max())
    scale = float(ref.abs().max())
    if not err <= tol * scale:  # also catches NaN
        raise FveditError(
            f"{Path(path).name}: onnxruntime differs from the reference by {err:.3g} at batch {batch} "
            f"(tolerance {tol:g} x max|reference| {scale:.3g} = {tol * scale:.3g})"
        )
    return err
