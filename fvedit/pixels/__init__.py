"""Pixel hot path: warp face crops out of frames and blend edited crops back in.

Each function takes NumPy arrays or torch tensors and returns the same kind. CPU data
goes to the C++/OpenMP extension `fvedit._pixelops`, CUDA tensors to its CUDA kernels;
without the extension everything runs on the PyTorch twins (`fvedit.pixels.twin`, the
reference), after one logged warning. Conventions (see twin.py): integer pixel
coordinates are pixel centres, homographies map destination pixels to source pixels,
bilinear sampling in float32, uint8 results rounded half up.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from fvedit.errors import InputError
from fvedit.pixels import ext, twin

__all__ = ["backend", "crop_homography", "paste_blend", "paste_blend_batch", "paste_delta_batch", "warp_crops"]

log = logging.getLogger("fvedit.pixels")
_warned: set[str] = set()

Array = np.ndarray | torch.Tensor


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg)


def backend() -> str:
    """Active backend: "cpp+cuda" / "cpp" (extension with / without CUDA kernels) or "twin"."""
    mod = ext.load()
    if mod is None:
        return "twin"
    return "cpp+cuda" if getattr(mod, "built_with_cuda", False) else "cpp"


# ----------------------------------------------------------------------------- validation


def _check_frames(frames: Array, name: str) -> tuple[int, int, int]:
    if frames.dtype not in (np.uint8, torch.uint8):
        raise InputError(f"{name} must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"{name} must have shape [N, H, W, 3], got {tuple(frames.shape)}")
    n, h, w, _ = frames.shape
    if h < 1 or w < 1:
        raise InputError(f"{name} is empty: shape {tuple(frames.shape)}")
    return n, h, w


def _homographies(hom: Array, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Host copies of [N,3,3] homographies as (float32, float64), checked finite."""
    if isinstance(hom, torch.Tensor):
        hom = hom.detach().to("cpu", torch.float64).numpy()
    h64 = np.ascontiguousarray(hom, dtype=np.float64)
    if h64.shape != (n, 3, 3):
        raise InputError(f"{name} must have shape [{n}, 3, 3] (one 3x3 matrix per frame), got {h64.shape}")
    if not np.isfinite(h64).all():
        raise InputError(f"{name} contains NaN or inf")
    h32 = h64.astype(np.float32)
    if not np.isfinite(h32).all():
        raise InputError(f"{name} overflows float32; rescale the matrix (a homography is defined up to scale)")
    return h32, h64


def _check_crops(crops: Array, alphas: Array, n: int) -> int:
    if crops.dtype not in (np.uint8, torch.uint8):
        raise InputError(f"crops must be uint8, got {crops.dtype}")
    if crops.ndim != 4 or crops.shape[0] != n or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
        raise InputError(f"crops must have shape [{n}, S, S, 3], got {tuple(crops.shape)}")
    s = crops.shape[1]
    if tuple(alphas.shape) != (n, s, s):
        raise InputError(f"alphas must have shape [{n}, {s}, {s}] to match the crops, got {tuple(alphas.shape)}")
    if alphas.dtype not in (np.float32, np.float64, torch.float32, torch.float64):
        raise InputError(f"alphas must be float32 in [0, 1], got {alphas.dtype}")
    if s > 0:
        lo, hi = float(alphas.min()), float(alphas.max())
        if not (lo >= 0.0 and hi <= 1.0):
            raise InputError(f"alphas must lie in [0, 1], got values in [{lo}, {hi}]")
    return s


def _to_numpy(a: Array, dtype) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(a, dtype=dtype)


def _to_torch(a: Array) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))


def _use_cuda_kernels(t: Array) -> bool:
    """True for CUDA tensors when the extension has CUDA kernels; twin (with a note) otherwise."""
    if not (isinstance(t, torch.Tensor) and t.is_cuda):
        return False
    if ext.cuda_kernels_built():
        return True
    if ext.load() is not None:
        _warn_once("nocuda", "fvedit: C++ pixel extension built without CUDA; using the PyTorch twin on the GPU")
    return False


def _cpu_module():
    mod = ext.load()
    if mod is None:
        _warn_once("noext", "fvedit: C++ pixel extension not built; using the PyTorch twin (slower)")
    return mod


# ----------------------------------------------------------------------------- public API


def warp_crops(frames: Array, H_crop_to_frame: Array, size: int) -> Array:
    """Crops uint8 [N,S,S,3] sampled from frames uint8 [N,H,W,3].

    Crop pixel (u, v) takes the bilinear, zero-padded frame value at H @ (u, v, 1).
    """
    n, h, w = _check_frames(frames, "frames")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"crop size must be a positive integer, got {size!r}")
    size = int(size)
    h32, _ = _homographies(H_crop_to_frame, n, "H_crop_to_frame")
    if _use_cuda_kernels(frames):
        mod = ext.require_cuda()
        src = frames.contiguous()
        out = torch.empty((n, size, size, 3), dtype=torch.uint8, device=src.device)
        with torch.cuda.device(src.device):
            stream = torch.cuda.current_stream(src.device).cuda_stream
            mod.warp_crops_cuda(src.data_ptr(), n, h, w, h32, out.data_ptr(), size, stream)
        return out
    if isinstance(frames, torch.Tensor) and frames.is_cuda:
        return twin.warp_crops(frames, torch.from_numpy(h32).to(frames.device), size)
    mod = _cpu_module()
    if mod is None:
        out = twin.warp_crops(_to_torch(frames), torch.from_numpy(h32), size)
        return out if isinstance(frames, torch.Tensor) else out.numpy()
    res = mod.warp_crops(_to_numpy(frames, np.uint8), h32, size)
    return torch.from_numpy(res) if isinstance(frames, torch.Tensor) else res


def paste_blend_batch(
    frames: Array, crops: Array, alphas: Array, H_frame_to_crop: Array, *, inplace: bool = False
) -> Array:
    """Blend crops [N,S,S,3] (alpha [N,S,S] in [0,1]) into frames [N,H,W,3].

    Frame pixel (x, y) samples the crop at H @ (x, y, 1): colour bilinear with edge clamp,
    alpha bilinear with zero padding. out = frame*(1-a) + crop*a, rounded half up; pixels
    with a == 0 are never written. Returns new frames unless `inplace` (then `frames`,
    which must be C-contiguous, is written and returned).
    """
    n, h, w = _check_frames(frames, "frames")
    s = _check_crops(crops, alphas, n)
    h32, h64 = _homographies(H_frame_to_crop, n, "H_frame_to_crop")
    is_tensor = isinstance(frames, torch.Tensor)
    if inplace and not (frames.is_contiguous() if is_tensor else frames.flags.c_contiguous):
        raise InputError("inplace paste needs C-contiguous frames")
    if _use_cuda_kernels(frames):
        mod = ext.require_cuda()
        dev = frames.device
        out = frames if inplace else frames.clone(memory_format=torch.contiguous_format)
        crops_d = _to_torch(crops).to(dev, torch.uint8).contiguous()
        alphas_d = _to_torch(alphas).to(dev, torch.float32).contiguous()
        with torch.cuda.device(dev):
            stream = torch.cuda.current_stream(dev).cuda_stream
            mod.paste_blend_cuda(
                out.data_ptr(), n, h, w, crops_d.data_ptr(), alphas_d.data_ptr(), s, h32, h64, stream
            )
        return out
    if is_tensor and frames.is_cuda:
        dev = frames.device
        res = twin.paste_blend_batch(
            frames, _to_torch(crops).to(dev), _to_torch(alphas).to(dev, torch.float32), torch.from_numpy(h64)
        )
    else:
        mod = _cpu_module()
        if mod is not None:
            buf = (frames.numpy() if is_tensor else frames) if inplace else _to_numpy(frames, np.uint8).copy()
            mod.paste_blend_inplace(buf, _to_numpy(crops, np.uint8), _to_numpy(alphas, np.float32), h32, h64)
            if inplace:
                return frames
            return torch.from_numpy(buf) if is_tensor else buf
        res = twin.paste_blend_batch(
            _to_torch(frames), _to_torch(crops).cpu(), _to_torch(alphas).cpu().float(), torch.from_numpy(h64)
        )
    if inplace:
        frames[...] = res if is_tensor else res.numpy()
        return frames
    return res if is_tensor else res.numpy()


def paste_delta_batch(frames: Array, deltas: Array, alphas: Array, H_frame_to_crop: Array, *, inplace: bool = False) -> Array:
    """Delta paste: frames [N,H,W,3] uint8 + alphas [N,S,S] * bilinear(deltas [N,S,S,3] float32).

    On CPU arrays the C++ kernel (`paste_delta_inplace`, OpenMP) when the extension is built, else
    the PyTorch twin; CUDA tensors run the twin on their device (there is no CUDA kernel yet)."""
    n, h, w = _check_frames(frames, "frames")
    if tuple(deltas.shape[:1]) != (n,) or deltas.ndim != 4 or deltas.shape[-1] != 3:
        raise InputError(f"deltas must be [N,S,S,3] for {n} frames, got shape {tuple(deltas.shape)}")
    h32, h64 = _homographies(H_frame_to_crop, n, "H_frame_to_crop")
    is_tensor = isinstance(frames, torch.Tensor)
    if inplace and not (frames.is_contiguous() if is_tensor else frames.flags.c_contiguous):
        raise InputError("inplace paste needs C-contiguous frames")
    mod = None if (is_tensor and frames.is_cuda) else _cpu_module()
    if mod is not None and hasattr(mod, "paste_delta_inplace"):
        buf = (frames.numpy() if is_tensor else frames) if inplace else _to_numpy(frames, np.uint8).copy()
        mod.paste_delta_inplace(buf, _to_numpy(deltas, np.float32), _to_numpy(alphas, np.float32), h32, h64)
        if inplace:
            return frames
        return torch.from_numpy(buf) if is_tensor else buf
    src = _to_torch(frames)
    dev = src.device
    res = twin.paste_delta_batch(src, _to_torch(deltas).to(dev, torch.float32), _to_torch(alphas).to(dev, torch.float32),
                                 torch.from_numpy(h64))
    if inplace:
        frames[...] = res if is_tensor else res.numpy()
        return frames
    return res if is_tensor else res.numpy()


def paste_blend(frame: Array, crop: Array, alpha: Array, H_frame_to_crop: Array, *, inplace: bool = False) -> Array:
    """Single-frame paste_blend_batch: frame [H,W,3], crop [S,S,3], alpha [S,S], H [3,3]."""
    if frame.ndim != 3 or crop.ndim != 3 or alpha.ndim != 2 or tuple(H_frame_to_crop.shape) != (3, 3):
        raise InputError(
            "paste_blend takes one frame [H,W,3], crop [S,S,3], alpha [S,S] and H [3,3]; "
            "use paste_blend_batch for batches"
        )
    out = paste_blend_batch(frame[None], crop[None], alpha[None], H_frame_to_crop[None], inplace=inplace)
    return frame if inplace else out[0]


def crop_homography(quad: Array, size: int) -> np.ndarray:
    """H_crop_to_frame (float64 [3,3]) for an FFHQ-style quad.

    `quad` [4,2] holds frame points (pixel-centre coordinates) in the order top-left,
    bottom-left, bottom-right, top-right (the FFHQ/STIT/PIL QUAD order). They are the outer
    corners of the crop: crop pixel centres (-0.5,-0.5), (-0.5,S-0.5), (S-0.5,S-0.5),
    (S-0.5,-0.5), which is what PIL's QUAD transform does with (quad + 0.5).
    """
    q = np.asarray(quad.detach().cpu() if isinstance(quad, torch.Tensor) else quad, dtype=np.float64)
    if q.shape != (4, 2) or not np.isfinite(q).all():
        raise InputError(f"quad must be 4 finite (x, y) points, got shape {q.shape}")
    e = float(size) - 0.5
    src = np.array([[-0.5, -0.5], [-0.5, e], [e, e], [e, -0.5]])
    rows, rhs = [], []
    for (u, v), (x, y) in zip(src, q):
        rows.append([u, v, 1, 0, 0, 0, -u * x, -v * x])
        rows.append([0, 0, 0, u, v, 1, -u * y, -v * y])
        rhs += [x, y]
    try:
        p = np.linalg.solve(np.array(rows), np.array(rhs))
    except np.linalg.LinAlgError:
        raise InputError("quad is degenerate (three corners on a line); cannot build a crop") from None
    return np.append(p, 1.0).reshape(3, 3)
