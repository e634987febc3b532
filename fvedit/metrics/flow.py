"""Temporal consistency by warping error: does the edit flicker where the original does not?

Following Lai et al. 2018 ("Learning Blind Video Temporal Consistency"), the optical flow is
computed on the ORIGINAL video, forward (t -> t+1) and backward (t+1 -> t). Frame t+1 is
warped back onto frame t with the forward flow and compared with frame t, ignoring pixels the
flow cannot explain. Definitions used here:

- flow convention: a(x) ~ b(x + flow(x)) for flow from a to b; flow[..., 0] is x (right),
  flow[..., 1] is y (down), in pixels; `warp_backward(b, flow)` samples b at x + flow(x)
  bilinearly (pixel centres at integers);
- occlusion (Ruder et al. 2016 forward-backward check, evaluated in frame t): with
  w = backward flow sampled at x + fw(x), a pixel is occluded when
  |fw + w|^2 > 0.01 (|fw|^2 + |w|^2) + 0.5, on a motion boundary when
  |grad fw_x|^2 + |grad fw_y|^2 > 0.01 |fw|^2 + 0.002 (forward differences), or when
  x + fw(x) leaves the frame;
- error of a pair: mean over the remaining pixels (optionally only those in a face-region
  mask) of the per-pixel squared difference, averaged over RGB, on [0, 1] values. When no
  pixel remains, all region pixels are used (as the reference implementation falls back to
  the whole frame).

The same mask and flow give the original video's own error (the flow's residual, a baseline)
and the edited video's; their difference is what the edit added.

Flow backends: OpenCV Farneback (offline, CPU; needs `opencv-python-headless`) and RAFT
through torchvision when its weights are already in torch.hub's checkpoint folder (never
downloaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F

from fvedit.errors import InputError
from fvedit.pipeline.paste import landmark_hull_mask

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (rgb a, rgb b) uint8 [H, W, 3] -> flow a->b [H, W, 2]
FLOW_METHODS = ("farneback", "raft")

# Farneback parameters (OpenCV's documented example values): pyramid scale 0.5, 3 levels,
# 15 px averaging window, 3 iterations, 5-pixel polynomial with sigma 1.2.
FARNEBACK_PARAMS = (0.5, 3, 15, 3, 5, 1.2, 0)


def _cv2():
    try:
        import cv2
    except ImportError:
        raise InputError(
            "the Farneback optical flow needs OpenCV: `pip install opencv-python-headless` (or use --flow raft)"
        ) from None
    return cv2


def _check_rgb(a: np.ndarray, b: np.ndarray) -> None:
    for f in (a, b):
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise InputError(f"optical flow needs RGB uint8 frames [H, W, 3], got {getattr(f, 'dtype', type(f))} {getattr(f, 'shape', '')}")
    if a.shape != b.shape:
        raise InputError(f"optical flow needs two frames of the same size, got {a.shape} and {b.shape}")


def farneback_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow a -> b [H, W, 2] float32 by Farneback's polynomial expansion on the grey frames."""
    _check_rgb(a, b)
    cv2 = _cv2()
    ga = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
    gb = cv2.cvtColor(np.ascontiguousarray(b), cv2.COLOR_RGB2GRAY)
    return cv2.calcOpticalFlowFarneback(ga, gb, None, *FARNEBACK_PARAMS).astype(np.float32)


def raft_weights_path() -> Path:
    """Where torchvision keeps RAFT-large's default weights ($TORCH_HOME/hub/checkpoints/<file>)."""
    from torchvision.models.optical_flow import Raft_Large_Weights

    name = Path(urlparse(Raft_Large_Weights.DEFAULT.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _raft_weights_or_error() -> Path:
    try:
        import torchvision.models.optical_flow  # noqa: F401
    except ImportError:
        raise InputError(
            "--flow raft needs torchvision (the build matching your torch) and RAFT's weights; use --flow farneback"
        ) from None
    path = raft_weights_path()
    if not path.is_file():
        raise InputError(
            f"RAFT weights not found at {path}: copy torchvision's {path.name} there (fvedit never downloads) "
            "or use --flow farneback"
        )
    return path


def raft_flow(device: torch.device | str = "cpu", updates: int = 12) -> FlowFn:
    """RAFT-large (torchvision) as a FlowFn; the weights must already be in torch.hub's checkpoints."""
    path = _raft_weights_or_error()
    from torchvision.models.optical_flow import raft_large

    model = raft_large(weights=None, progress=False)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval().to(device)

    def to_input(rgb: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        h, w = rgb.shape[:2]
        return F.pad(t, (0, -w % 8, 0, -h % 8), mode="replicate")  # RAFT needs sides divisible by 8

    @torch.no_grad()
    def flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        _check_rgb(a, b)
        h, w = a.shape[:2]
        predictions = model(to_input(a), to_input(b), num_flow_updates=updates)
        return predictions[-1][0, :, :h, :w].permute(1, 2, 0).float().cpu().numpy()

    return flow


def check_flow_available(name: str) -> str:
    """Raise a one-line InputError unless flow method `name` can run here (cheap: builds no model)."""
    key = (name or "").lower()
    if key == "farneback":
        _cv2()
    elif key == "raft":
        _raft_weights_or_error()
    else:
        raise InputError(f"unknown flow method {name!r}: choose one of {', '.join(FLOW_METHODS)}")
    return key


def make_flow(name: str = "farneback", device: torch.device | str = "cpu") -> FlowFn:
    """The flow estimator by name; fails early (before any video work) when it cannot run."""
    key = check_flow_available(name)
    return farneback_flow if key == "farneback" else raft_flow(device)


def warp_backward(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample `image` [H, W] or [H, W, C] at x + flow(x), bilinearly. Returns (warped float32, inside bool [H, W]).

    `inside` marks samples that land within the frame's pixel centres; outside samples read zeros.
    """
    img = np.asarray(image, dtype=np.float32)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[..., None]
    h, w = img.shape[:2]
    f = np.asarray(flow, dtype=np.float32)
    if f.shape != (h, w, 2):
        raise InputError(f"flow must be [H, W, 2] = {(h, w, 2)}, got {f.shape}")
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    px, py = xs + f[..., 0], ys + f[..., 1]
    inside = (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
    grid = np.stack([2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1], axis=-1)
    src = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
    out = F.grid_sample(src, torch.from_numpy(grid)[None], mode="bilinear", padding_mode="zeros", align_corners=True)
    warped = out[0].permute(1, 2, 0).numpy()
    return (warped[..., 0] if squeeze else warped), inside


def _forward_gradient_sq(f: np.ndarray) -> np.ndarray:
    """|d f/dx|^2 + |d f/dy|^2 of a 2-D field, forward differences, zero on the last row/column."""
    dx = np.zeros_like(f)
    dy = np.zeros_like(f)
    dx[:, :-1] = f[:, 1:] - f[:, :-1]
    dy[:-1, :] = f[1:, :] - f[:-1, :]
    return dx * dx + dy * dy


def reliable_mask(flow_fw: np.ndarray, flow_bw: np.ndarray) -> np.ndarray:
    """Pixels of frame t [H, W] whose forward flow is trustworthy (not occluded, no motion boundary, stays inside)."""
    fw = np.asarray(flow_fw, dtype=np.float32)
    bw_at_target, inside = warp_backward(flow_bw, fw)
    sq = lambda v: np.sum(v * v, axis=-1)  # noqa: E731
    occluded = sq(fw + bw_at_target) > 0.01 * (sq(fw) + sq(bw_at_target)) + 0.5
    boundary = _forward_gradient_sq(fw[..., 0]) + _forward_gradient_sq(fw[..., 1]) > 0.01 * sq(fw) + 0.002
    return inside & ~occluded & ~boundary


def warp_error(frame_t: np.ndarray, frame_next: np.ndarray, flow_fw: np.ndarray, mask: np.ndarray) -> float:
    """Mean over `mask` of the RGB-mean squared difference between frame t and frame t+1 warped back ([0, 1] units)."""
    a = np.asarray(frame_t, dtype=np.float32) / 255.0
    warped, _ = warp_backward(np.asarray(frame_next, dtype=np.float32) / 255.0, flow_fw)
    err = np.mean((a - warped) ** 2, axis=-1)
    return float(err[mask].mean()) if mask.any() else float(err.mean())


def pair_mask(flow_fw: np.ndarray, flow_bw: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """Where a pair's warping error is measured: reliable flow inside `region`; the region alone if that is empty."""
    reliable = reliable_mask(flow_fw, flow_bw)
    if region is None:
        return reliable if reliable.any() else np.ones_like(reliable)
    chosen = reliable & region
    return chosen if chosen.any() else region.copy()


def face_mask_in_frame(landmarks68: np.ndarray, height: int, width: int, forehead: float = 0.6) -> np.ndarray:
    """bool [H, W]: the landmark hull (extended over the forehead) in frame coordinates.

    Rasterised in a window around the face, so a 4K frame costs no more than the face: the
    forehead reaches at most (1 + forehead) times the landmarks' extent beyond them.
    """
    lm = np.asarray(landmarks68, dtype=np.float64)
    lo, hi = lm.min(0), lm.max(0)
    margin = (1.0 + forehead) * float((hi - lo).max()) + 2.0
    x0, y0 = (np.floor(lo - margin)).astype(int)
    x1, y1 = (np.ceil(hi + margin)).astype(int) + 1
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, width), min(y1, height)
    mask = np.zeros((height, width), dtype=bool)
    if x1 <= x0 or y1 <= y0:
        return mask
    side = max(x1 - x0, y1 - y0)
    local = landmark_hull_mask(lm - np.array([x0, y0], dtype=np.float64), side, forehead=forehead)
    mask[y0:y1, x0:x1] = local[: y1 - y0, : x1 - x0] > 0.5
    return mask
