"""Paste-back: build the blend mask in crop space, feather it, and blend the edited crop
into the original frame through the crop's homography.

The official DVA pastes the whole 256x256 square with a hard parser mask composited
inside the crop, so background inside the square is resampled and the square's edge can
show. Here only the face region is pasted: alpha = feathered mask, forced to 0 near the
crop border, and frame pixels the alpha does not reach stay bit-identical.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from fvedit import pixels
from fvedit.errors import InputError
from fvedit.face.align import crop_homography

# Face-parser (BiSeNet, CelebAMask-HQ, 19 classes) labels that are not pasted.
# Official: 0 background, 16 cloth, 18 hat; with for_video=True also 7/8 ears, 14 neck, 17 hair.
PARSER_BACKGROUND = (0, 16, 18)
PARSER_BACKGROUND_VIDEO = (0, 7, 8, 14, 16, 17, 18)

JAW = slice(0, 17)  # 68-point (iBUG/dlib) indices
BROWS = slice(17, 27)
CHIN = 8


def _as_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def parser_mask(labels_or_mask, background: tuple[int, ...] = PARSER_BACKGROUND_VIDEO) -> np.ndarray:
    """Binary float32 [S,S] foreground mask from parser labels or an existing mask.

    Integer input is a label map: foreground = every class not in `background` (default:
    the official for_video set). Bool or float input is taken as a mask (> 0.5).
    """
    a = _as_numpy(labels_or_mask)
    if a.ndim != 2:
        raise InputError(f"parser mask/labels must be [S, S], got shape {a.shape}")
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        return (~np.isin(a, np.asarray(background))).astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        return (a > 0.5).astype(np.float32)
    raise InputError(f"parser mask/labels must be integer labels, bool or float, got {a.dtype}")


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Hull vertices with positive signed area (interior left of each edge), monotone chain."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) < 3:
        return np.asarray(pts, dtype=np.float64)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1], dtype=np.float64)


def _forehead_points(lm: np.ndarray, height: float) -> np.ndarray:
    """Jaw points mirrored above the brows, `height` times as far above as they are below.

    The face's up axis runs from the chin to the brow centroid; each jaw point below the
    brow line is reflected across that line and scaled, which draws a forehead arc.
    """
    brow = lm[BROWS].mean(0)
    up = brow - lm[CHIN]
    norm = np.linalg.norm(up)
    if norm == 0:
        return np.empty((0, 2))
    up /= norm
    jaw = lm[JAW]
    h = (jaw - brow) @ up  # < 0 below the brows
    below = h < 0
    return jaw[below] - ((1.0 + height) * h[below])[:, None] * up


def landmark_hull_mask(landmarks68, size: int, forehead: float = 0.6) -> np.ndarray:
    """Float32 [S,S] mask of the pixels touched by the convex hull of 68 landmarks.

    `landmarks68` [68,2] are (x, y) in crop pixel coordinates (integer = pixel centre).
    `forehead` > 0 extends the hull upward by that fraction of the brow-to-jaw distance
    (the 68 points stop at the brows); 0 uses the points as they are. A pixel is in the
    mask when its square overlaps the hull (conservative rasterisation), so every
    landmark's pixel is covered.
    """
    lm = _as_numpy(landmarks68).astype(np.float64)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise InputError(f"landmarks must be 68 finite (x, y) points, got shape {lm.shape}")
    if forehead < 0:
        raise InputError(f"forehead must be >= 0, got {forehead}")
    pts = np.concatenate([lm, _forehead_points(lm, forehead)]) if forehead > 0 else lm
    hull = _convex_hull(pts)
    ramp = np.arange(size, dtype=np.float64)
    y, x = np.meshgrid(ramp, ramp, indexing="ij")
    lo, hi = pts.min(0), pts.max(0)
    inside = (x + 0.5 >= lo[0]) & (x - 0.5 <= hi[0]) & (y + 0.5 >= lo[1]) & (y - 0.5 <= hi[1])
    if len(hull) >= 3:
        # Separating-axis test against each hull edge: the pixel square (half-size 0.5)
        # reaches the inner side of the edge line iff the signed distance of its centre
        # is >= -(|nx| + |ny|)/2.
        for a, b in zip(hull, np.roll(hull, -1, axis=0)):
            ex, ey = b - a
            nx, ny = -ey, ex  # left normal = inward, the hull having positive signed area
            ln = np.hypot(nx, ny)
            nx, ny = nx / ln, ny / ln
            inside &= (x - a[0]) * nx + (y - a[1]) * ny >= -0.5 * (abs(nx) + abs(ny))
    return inside.astype(np.float32)


def face_masks_in_crops(landmarks: np.ndarray, quads: np.ndarray, size: int) -> np.ndarray:
    """float32 [N, S, S]: each frame's landmark hull (with forehead), mapped into its aligned crop."""
    to_crop = np.linalg.inv(crop_homography(np.asarray(quads, dtype=np.float64), size))
    lm = np.asarray(landmarks, dtype=np.float64)
    lm_h = np.concatenate([lm, np.ones(lm.shape[:-1] + (1,))], axis=-1) @ to_crop.transpose(0, 2, 1)
    return np.stack([landmark_hull_mask(p[:, :2] / p[:, 2:], size) for p in lm_h]).astype(np.float32)


def feather(mask, width_px: float, border_px: int = 2) -> np.ndarray:
    """Alpha in [0,1] (float32 [S,S]) from a binary mask: a smooth ramp `width_px` wide.

    Alpha is 0 on the mask's edge pixels and outside, rises with the distance d to the
    nearest background pixel as smoothstep((d - 1) / width) and is 1 from `width_px`
    inside on: the edit is eroded by about width/2 and blended over the width. Pixels
    within `border_px` of the crop border count as background (so are 0), and the crop
    border itself always counts as background when width > 0, so the pasted quad's edge
    can never show. width_px = 0 gives the hard mask (0/1), with the border margin zeroed.
    """
    m = _as_numpy(mask)
    if m.ndim != 2:
        raise InputError(f"mask must be [S, S], got shape {m.shape}")
    if width_px < 0 or border_px < 0:
        raise InputError(f"feather width and border must be >= 0, got {width_px} and {border_px}")
    fg = m > 0.5
    if border_px > 0:
        fg[:border_px, :] = fg[-border_px:, :] = False
        fg[:, :border_px] = fg[:, -border_px:] = False
    if width_px == 0:
        return fg.astype(np.float32)
    # Pad with background so the crop border itself is "outside" even with border_px = 0.
    d = ndimage.distance_transform_edt(np.pad(fg, 1))[1:-1, 1:-1]
    t = np.clip((d - 1.0) / float(width_px), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _frame_to_crop(H_crop_to_frame, batch: int | None) -> np.ndarray:
    """The checked inverse of a crop-to-frame homography ([3,3], or [batch,3,3]): what the paste
    kernels sample the crop with."""
    hom = _as_numpy(H_crop_to_frame).astype(np.float64)
    if hom.shape != ((batch, 3, 3) if batch is not None else (3, 3)):
        raise InputError(f"H_crop_to_frame must be [3,3] per frame, got shape {hom.shape}")
    if not np.isfinite(hom).all():
        raise InputError("H_crop_to_frame contains NaN or inf")
    try:
        return np.linalg.inv(hom)
    except np.linalg.LinAlgError:
        raise InputError("H_crop_to_frame is singular; cannot map the frame into the crop") from None


def paste_back(frame, edited_crop, alpha, H_crop_to_frame, *, inplace: bool = False):
    """Blend `edited_crop` into `frame` where `alpha` > 0; other pixels stay bit-identical.

    frame uint8 [H,W,3] (or a batch [N,H,W,3]); edited_crop uint8 [S,S,3] ([N,S,S,3]);
    alpha float32 [S,S] ([N,S,S]) in [0,1], e.g. from `feather`; H_crop_to_frame [3,3]
    ([N,3,3]) maps crop pixel centres to frame pixel centres (the matrix the crop was
    warped with). NumPy or torch in, the same kind out.
    """
    batched = frame.ndim == 4
    inv = _frame_to_crop(H_crop_to_frame, frame.shape[0] if batched else None)
    if isinstance(alpha, np.ndarray) and alpha.dtype != np.float32:
        alpha = alpha.astype(np.float32)
    if batched:
        return pixels.paste_blend_batch(frame, edited_crop, alpha, inv, inplace=inplace)
    return pixels.paste_blend(frame, edited_crop, alpha, inv, inplace=inplace)


def uses_parser(mask: str, is_demo: bool) -> bool:
    """--mask auto: the face parser for real weights, the landmark hull for demo weights (whose
    untrained parser would return noise)."""
    return mask == "parser" or (mask == "auto" and not is_demo)


def alpha_masks(landmarks: np.ndarray, quads: np.ndarray, size: int, feather_px: float, fade: np.ndarray,
                parser=None, x0: torch.Tensor | None = None) -> np.ndarray:
    """Stage: float32 [N,S,S] feathered paste-back alpha of N crops, times `fade` [N].

    The face parser's mask when `parser` (the encoder's `face_mask`) is given with the input
    crops x0 [N,3,S,S] (device work), else the landmark hull from landmarks [N,68,2] and quads
    [N,4,2] (host work). `feather_px` is at 256 px crops and scales with `size`."""
    if parser is not None:
        with torch.no_grad():
            masks = parser(x0, for_video=True)[:, 0].cpu().numpy()
    else:
        masks = face_masks_in_crops(landmarks, quads, size)
    width = feather_px * size / 256
    return np.stack([feather(m, width) * w for m, w in zip(masks, fade)]).astype(np.float32)


PASTE_MODES = ("full", "delta")


def paste_delta(frame, edited_crop, reference_crop, alpha, H_crop_to_frame, *, inplace: bool = False):
    """Delta paste of one frame: frame + alpha * upsampled(edited - reference). With the input
    crop as reference the frame keeps its full-resolution detail and only the edit's change is
    scaled up; an edit that changes nothing returns the frame bit for bit."""
    delta = edited_crop.astype(np.float32) - reference_crop.astype(np.float32)
    inv = _frame_to_crop(H_crop_to_frame, None)
    out = pixels.paste_delta_batch(frame[None], delta[None], np.asarray(alpha, np.float32)[None], inv[None])
    if inplace:
        frame[...] = out[0]
        return frame
    return out[0]


def paste_frames(frames: list[np.ndarray], start: int, frame_ids: np.ndarray, edited: np.ndarray,
                 alpha: np.ndarray, hom: np.ndarray, reference: np.ndarray | None = None) -> None:
    """Stage: paste edited crops [K,S,S,3] with alpha [K,S,S] into `frames` (a chunk whose first
    frame is `start`) at the K frame indices `frame_ids`, in place, one frame at a time (no stacked
    copy of full-resolution frames). hom: crop-to-frame homographies of the whole video [N,3,3].
    With `reference` crops [K,S,S,3] (--paste delta) only edited - reference is added."""
    for j, i in enumerate(frame_ids):
        if reference is None:
            paste_back(frames[i - start], edited[j], alpha[j], hom[i], inplace=True)
        else:
            paste_delta(frames[i - start], edited[j], reference[j], alpha[j], hom[i], inplace=True)
