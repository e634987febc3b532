"""The "onnxruntime" backend: run the UNet graph that `fvedit export` wrote.

An exported model is `unet-<precision>-<dyn|bN>.onnx` (weights inside the file, so its sha256
names the weights too) plus a JSON sidecar saying which weights it came from (a fingerprint of the
UNet state dict), its precision, batch axis and how well it matched the reference when exported.
By default exports live in a per-weights folder (`default_export_dir`), so `--backend onnxruntime`
finds the right file without a path and refuses one exported from other weights.

Graph inputs: x [B,3,S,S] float32, t [B] float32, cond [B,D] float32; output eps [B,3,S,S]
float32 (the fp16 export keeps fp32 inputs/outputs and casts inside).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fvedit.errors import FveditError, InputError

INPUT_NAMES = ("x", "t", "cond")
OUTPUT_NAME = "eps"


def weights_fingerprint(unet: torch.nn.Module) -> str:
    """sha256 over the UNet state dict (names, shapes, dtypes, bytes): which weights a file holds."""
    h = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def default_export_dir(unet: torch.nn.Module, fingerprint: str | None = None) -> Path:
    """`$XDG_CACHE_HOME/fvedit/export/unet<S>-<fingerprint[:16]>`: one folder per set of weights."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    fp = fingerprint or weights_fingerprint(unet)
    return Path(cache).expanduser() / "fvedit" / "export" / f"unet{unet.cfg.image_size}-{fp[:16]}"


def onnx_file_name(precision: str, batch: int | None) -> str:
    """`unet-fp32-dyn.onnx` for a dynamic batch axis, `unet-fp16-b4.onnx` for a static batch of 4."""
    return f"unet-{precision}-{'dyn' if batch is None else f'b{batch}'}.onnx"


def sidecar_path(onnx_path: Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


def read_sidecar(onnx_path: Path) -> dict:
    path = sidecar_path(onnx_path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {path}: {err}; rerun `fvedit export`") from None


def find_exported_onnx(unet: torch.nn.Module, precision: str, folder: Path | None = None) -> Path:
    """The exported graph for these weights: dynamic batch preferred, else the largest static batch."""
    folder = Path(folder) if folder is not None else default_export_dir(unet)
    dyn = folder / onnx_file_name(precision, None)
    if dyn.is_file():
        return dyn
    static = sorted(folder.glob(f"unet-{precision}-b*.onnx"), key=lambda p: int(p.stem.rsplit("-b", 1)[1]))
    if static:
        return static[-1]
    flag = " --fp16" if precision == "fp16" else ""
    raise InputError(
        f"no exported {precision} ONNX model for these weights in {folder}: run `fvedit export{flag}` first "
        "(with the same --preset/--weights-dir), or pass the .onnx path"
    )


def ort_providers(device: torch.device) -> list:
    """CUDA provider on a GPU (error if onnxruntime lacks it), CPU provider otherwise."""
    import onnxruntime as ort

    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise InputError(
            "this onnxruntime has no CUDA provider: pip uninstall onnxruntime && pip install onnxruntime-gpu "
            "(never both), or run the onnxruntime backend with --device cpu"
        )
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def pad_batch(x: Tensor, n: int) -> Tensor:
    """Repeat the last row so a static-batch graph gets exactly n rows."""
    return x if x.shape[0] == n else torch.cat([x, x[-1:].expand(n - x.shape[0], *x.shape[1:])])


class OnnxBackend:
    """eps from an ONNX graph in onnxruntime. A static-batch graph runs larger or smaller batches
    in chunks of its batch (the last chunk padded), which is exact: frames are independent."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", *, unet: torch.nn.Module | None = None,
                 threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"ONNX model not found: {self.path}; run `fvedit export` first")
        self.meta = read_sidecar(self.path)
        if unet is not None and self.meta.get("weights_fingerprint") not in (None, weights_fingerprint(unet)):
            raise InputError(
                f"{self.path} was exported from other weights than the ones loaded: rerun `fvedit export` for these weights"
            )
        self.device = torch.device(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:  # otherwise onnxruntime sizes its pool to every core, whatever torch was told
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=ort_providers(self.device))
        except Exception as err:  # onnxruntime raises its own exception types
            raise InputError(f"onnxruntime cannot load {self.path}: {str(err).splitlines()[0]}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != set(INPUT_NAMES):
            raise InputError(f"{self.path} is not an fvedit UNet export (inputs {sorted(inputs)}, expected x, t, cond)")
        x_shape, cond_shape = inputs["x"].shape, inputs["cond"].shape
        self.static_batch = x_shape[0] if isinstance(x_shape[0], int) else None
        self.image_size = x_shape[2] if isinstance(x_shape[2], int) else None
        self.cond_dim = int(cond_shape[1])
        self.precision = self.meta.get("precision", "fp32")
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)
        self.provider = self.session.get_providers()[0]

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        from fvedit.runtime.backends import check_inputs

        x, t, cond = check_inputs(x, t, cond, self.cond_dim, self.device)
        if self.image_size is not None and tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise InputError(f"{self.path.name} takes {self.image_size}x{self.image_size} images, got {tuple(x.shape[2:])}")
        if self.static_batch is None:
            return self._run(x, t, cond)
        n, outs = self.static_batch, []
        for i in range(0, x.shape[0], n):
            rows = min(n, x.shape[0] - i)
            chunk = [pad_batch(v[i : i + n], n) for v in (x, t, cond)]
            outs.append(self._run(*chunk)[:rows])
        return torch.cat(outs)

    def _run(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        feeds = dict(zip(INPUT_NAMES, (x, t, cond)))
        if self.device.type != "cuda":
            arrays = {k: np.ascontiguousarray(v.numpy()) for k, v in feeds.items()}
            return torch.from_numpy(self.session.run([OUTPUT_NAME], arrays)[0])
        # GPU: bind torch's buffers directly, no host round trip
        out = torch.empty_like(x)
        binding = self.session.io_binding()
        for k, v in feeds.items():
            v = v.contiguous()
            feeds[k] = v  # keep alive until the run ends
            binding.bind_input(k, "cuda", self.device.index or 0, np.float32, tuple(v.shape), v.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", self.device.index or 0, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch's stream
        self.session.run_with_iobinding(binding)
        return out

    def describe(self) -> str:
        batch = "dynamic batch" if self.static_batch is None else f"static batch {self.static_batch}"
        return f"onnxruntime ({self.precision}, {batch}, {self.provider}) {self.path.name} on {self.device}"


def check_ort_available() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise FveditError('onnxruntime is not installed: pip install "fvedit[onnx]"') from None
