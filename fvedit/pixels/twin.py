"""PyTorch twins of the C++/CUDA pixel kernels: the reference for what they compute.

They repeat, op for op, the float32 arithmetic of `csrc/pixel_math.h`, so on an IEEE
machine without fused multiply-adds the extension and the twin agree bit for bit. They run
on any device (the fallback when the extension is missing, and on GPUs when it was built
without CUDA). Conventions:

* pixel coordinates: integer = pixel centre; x = column, y = row;
* a homography maps a destination pixel centre to a source pixel centre (p = H @ [x, y, 1],
  then divide by p[2]);
* bilinear taps (x0,y0), (x1,y0), (x0,y1), (x1,y1), summed in that order;
* uint8 out: clamp to [0, 255], then round half up, floor(v + 0.5).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _project(hom: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) -> H @ (x, y, 1), dehomogenised; hom [N,3,3] float32, x/y broadcast against [N,1,1]."""
    m = [hom[:, r, c, None, None] for r in range(3) for c in range(3)]
    px = (m[0] * x + m[1] * y) + m[2]
    py = (m[3] * x + m[4] * y) + m[5]
    pw = (m[6] * x + m[7] * y) + m[8]
    return px / pw, py / pw


def _in_support(x: torch.Tensor, y: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Samples with at least one bilinear tap inside a w x h image (NaN/inf fail)."""
    return (x > -1.0) & (x < float(w)) & (y > -1.0) & (y < float(h))


def _taps(x: torch.Tensor, y: torch.Tensor):
    """Top-left tap and the four bilinear weights, in the kernel's order and rounding."""
    fx0, fy0 = torch.floor(x), torch.floor(y)
    fx, fy = x - fx0, y - fy0
    gx, gy = 1.0 - fx, 1.0 - fy
    return fx0.long(), fy0.long(), (gx * gy, fx * gy, gx * fy, fx * fy)


def _round_u8(v: torch.Tensor) -> torch.Tensor:
    return torch.floor(v.clamp(0.0, 255.0) + 0.5).to(torch.uint8)


def _gather(img: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor, w: int) -> torch.Tensor:
    """img [N, h*w, C] at integer taps xi, yi [N, P] (already inside) -> float32 [N, P, C]."""
    idx = (yi * w + xi).unsqueeze(-1).expand(-1, -1, img.shape[-1])
    return torch.gather(img, 1, idx).to(torch.float32)


def _sample(img: torch.Tensor, h: int, w: int, x: torch.Tensor, y: torch.Tensor, pad: str) -> torch.Tensor:
    """Bilinear sample of img [N, h*w, C] at float points x, y [N, P] -> float32 [N, P, C].

    pad="zero": taps outside the image contribute 0; pad="clamp": taps are clamped to the
    edge. Points must already be inside the support (-1, w) x (-1, h).
    """
    x0, y0, weights = _taps(x, y)
    acc = torch.zeros(*x.shape, img.shape[-1], dtype=torch.float32, device=img.device)
    for (dx, dy), wgt in zip(((0, 0), (1, 0), (0, 1), (1, 1)), weights):
        xi, yi = x0 + dx, y0 + dy
        if pad == "zero":
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            val = _gather(img, xi.clamp(0, w - 1), yi.clamp(0, h - 1), w) * inside.unsqueeze(-1)
        else:
            val = _gather(img, xi.clamp(0, w - 1), yi.clamp(0, h - 1), w)
        acc = acc + wgt.unsqueeze(-1) * val
    return acc


def warp_crops(frames: torch.Tensor, hom_crop_to_frame: torch.Tensor, size: int) -> torch.Tensor:
    """frames uint8 [N,H,W,3], H (crop -> frame) [N,3,3] -> crops uint8 [N,S,S,3].

    Crop pixel (u, v) samples the frame at H @ (u, v, 1), bilinear, zero padding per tap.
    """
    n, h, w, _ = frames.shape
    dev = frames.device
    hom = hom_crop_to_frame.to(device=dev, dtype=torch.float32)
    ramp = torch.arange(size, dtype=torch.float32, device=dev)
    v, u = torch.meshgrid(ramp, ramp, indexing="ij")
    x, y = _project(hom, u, v)  # [N,S,S]
    ok = _in_support(x, y, w, h)
    x = torch.where(ok, x, 0.0).reshape(n, -1)  # park unsupported points inside; zeroed below
    y = torch.where(ok, y, 0.0).reshape(n, -1)
    val = _sample(frames.reshape(n, h * w, 3), h, w, x, y, pad="zero")
    out = _round_u8(val) * ok.reshape(n, -1, 1)
    return out.reshape(n, size, size, 3)


def paste_box(hom_frame_to_crop: np.ndarray, crop_size: int, frame_w: int, frame_h: int):
    """Conservative frame box (x0, y0, x1, y1), inclusive, that can receive crop pixels.

    The crop's bilinear footprint (-1, S)^2 mapped into the frame by the inverse
    homography, plus a 2-pixel margin against float32 rounding; the whole frame when the
    footprint is unbounded (it meets the inverse's line at infinity) or the matrix is
    singular; None when it misses the frame.
    """
    whole = (0, 0, frame_w - 1, frame_h - 1)
    hom = np.asarray(hom_frame_to_crop, dtype=np.float64)
    if not np.isfinite(hom).all() or abs(np.linalg.det(hom)) == 0.0:
        return whole
    inv = np.linalg.inv(hom)
    lo, hi = -1.0, float(crop_size)
    corners = np.array([[lo, lo, 1.0], [hi, lo, 1.0], [hi, hi, 1.0], [lo, hi, 1.0]]) @ inv.T
    wc = corners[:, 2]
    if not ((wc > 0).all() or (wc < 0).all()):
        return whole
    pts = corners[:, :2] / wc[:, None]
    if not np.isfinite(pts).all():
        return whole
    (xmin, ymin), (xmax, ymax) = pts.min(0) - 2.0, pts.max(0) + 2.0
    if xmin > frame_w - 1 or ymin > frame_h - 1 or xmax < 0 or ymax < 0:
        return None
    return (
        max(math.floor(xmin), 0),
        max(math.floor(ymin), 0),
        min(math.ceil(xmax), frame_w - 1),
        min(math.ceil(ymax), frame_h - 1),
    )


def paste_blend_batch(
    frames: torch.Tensor, crops: torch.Tensor, alphas: torch.Tensor, hom_frame_to_crop: torch.Tensor
) -> torch.Tensor:
    """Blend crops [N,S,S,3] with alphas [N,S,S] into frames [N,H,W,3]; returns new frames.

    Frame pixel (x, y) samples the crop at H @ (x, y, 1): colour bilinear with edge clamp,
    alpha bilinear with zero padding; out = frame*(1-a) + crop*a, rounded. Pixels whose
    alpha is 0 keep their exact input value.
    """
    return _paste_batch(frames, crops, alphas, hom_frame_to_crop, lambda f, col, a3: f * (1.0 - a3) + col * a3)


def paste_delta_batch(
    frames: torch.Tensor, deltas: torch.Tensor, alphas: torch.Tensor, hom_frame_to_crop: torch.Tensor
) -> torch.Tensor:
    """Add signed float crops deltas [N,S,S,3] (edit - reference, in 0-255 units) into frames
    [N,H,W,3] with alphas [N,S,S]: out = frame + a * delta, rounded and clipped. Sampled as
    `paste_blend_batch`; the frame keeps its own full-resolution detail, only the change is
    upsampled, and a zero delta returns the frame exactly."""
    return _paste_batch(frames, deltas, alphas, hom_frame_to_crop, lambda f, col, a3: f + col * a3)


def _paste_batch(frames, crops, alphas, hom_frame_to_crop, combine) -> torch.Tensor:
    n, h, w, _ = frames.shape
    s = crops.shape[1]
    dev = frames.device
    out = frames.clone()
    hom64 = hom_frame_to_crop.detach().to("cpu", torch.float64).numpy()
    hom32 = hom_frame_to_crop.to(device=dev, dtype=torch.float32)
    for i in range(n):
        box = paste_box(hom64[i], s, w, h)
        if box is None:
            continue
        bx0, by0, bx1, by1 = box
        ys = torch.arange(by0, by1 + 1, dtype=torch.float32, device=dev)
        xs = torch.arange(bx0, bx1 + 1, dtype=torch.float32, device=dev)
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        u, v = _project(hom32[i : i + 1], x, y)  # [1,bh,bw]
        ok = _in_support(u, v, s, s)
        u = torch.where(ok, u, 0.0).reshape(1, -1)
        v = torch.where(ok, v, 0.0).reshape(1, -1)
        a = _sample(alphas[i].to(torch.float32).reshape(1, s * s, 1), s, s, u, v, pad="zero")[..., 0]
        col = _sample(crops[i].reshape(1, s * s, 3), s, s, u, v, pad="clamp")
        a = torch.where(ok.reshape(1, -1), a, 0.0)
        region = out[i, by0 : by1 + 1, bx0 : bx1 + 1].reshape(1, -1, 3)
        f = region.to(torch.float32)
        a3 = a.unsqueeze(-1)
        blended = _round_u8(combine(f, col, a3))
        region = torch.where(a3 > 0.0, blended, region)
        out[i, by0 : by1 + 1, bx0 : bx1 + 1] = region.reshape(by1 - by0 + 1, bx1 - bx0 + 1, 3)
    return out
