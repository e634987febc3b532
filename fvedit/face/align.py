"""FFHQ-style face alignment for video: per-frame quads, temporal smoothing, crop transforms.

Geometry follows the official DVA pre-processing (STIT's video variant of the FFHQ recipe):
a quad (c, x, y) per frame from the 68 landmarks, Gaussian smoothing of c, x, y along time,
then the quad [c-x-y, c-x+y, c+x+y, c+x-y] = top-left, bottom-left, bottom-right, top-right.

Coordinate conventions used throughout (and by the pixel kernels):
- Frame coordinates: x right, y down, pixel centres at integers (dlib landmarks are in this
  convention). Pixel (i, j) covers [j - 0.5, j + 0.5) x [i - 0.5, i + 0.5).
- Crop coordinates (u, v): u right (column), v down (row), pixel centres at integers.
- The quad corners are the *outer edges* of the crop: crop point (-0.5, -0.5) sits at the
  top-left corner quad[0]. See `crop_homography` for why this equals the official PIL call.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter1d

from fvedit.errors import InputError
from fvedit.face.detect import FaceDetector, check_frame
from fvedit.face.track import DEFAULT_MAX_GAP, DEFAULT_MIN_RELATIVE_SCORE, FacePresence, Selection, nearest_known, present_runs, track_faces

OFFICIAL_SIGMAS = (1.0, 3.0)  # frames: (centre c, half-axes x and y), as in the official scripts
OFFICIAL_CROP_SIZE = 1024
MODEL_SIZE = 256


# --------------------------------------------------------------------------------------------
# quads


def quad_from_landmarks(lm68: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FFHQ oriented square (centre c, half-axes x and y) from 68 landmarks.

    lm68: [68, 2] or [N, 68, 2]. Returns c, x, y of shape [2] or [N, 2]. Official recipe with
    scale 1.0: eye centres are the means of points 36-41 and 42-47, the mouth centre the midpoint
    of corners 48 and 54; x points along the eyes, tilted by the eye-to-mouth direction, with
    half-length max(2|eye_to_eye|, 1.8|eye_to_mouth|); y is x turned 90 degrees (image y down);
    c sits 10 % of the way from the eyes to the mouth.
    """
    lm = np.asarray(lm68, dtype=np.float64)
    if lm.shape[-2:] != (68, 2) or lm.ndim not in (2, 3):
        raise InputError(f"landmarks must have shape [68, 2] or [N, 68, 2], got {tuple(lm.shape)}")
    eye_left = lm[..., 36:42, :].mean(axis=-2)
    eye_right = lm[..., 42:48, :].mean(axis=-2)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[..., 48, :] + lm[..., 54, :]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    # eye_to_mouth turned by -90 degrees: (dx, dy) -> (dy, -dx), i.e. flipud(v) * [-1, 1] negated.
    x = eye_to_eye - eye_to_mouth[..., ::-1] * np.array([-1.0, 1.0])
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norm == 0):
        raise InputError("degenerate landmarks: eyes and mouth coincide, cannot build a face quad")
    half = np.maximum(np.linalg.norm(eye_to_eye, axis=-1) * 2.0, np.linalg.norm(eye_to_mouth, axis=-1) * 1.8)
    x = x / norm * half[..., None]
    y = x[..., ::-1] * np.array([-1.0, 1.0])
    c = eye_avg + eye_to_mouth * 0.1
    return c, x, y


def smooth_quad_params(
    c: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    sigmas: tuple[float, float] = OFFICIAL_SIGMAS,
    *,
    truncate: float = 4.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian-smooth c, x, y ([N, 2] each) along frames: why the official crops do not jitter.

    sigmas = (sigma for c, sigma for x and y) in frames; 0 disables that smoothing. Uses
    `scipy.ndimage.gaussian_filter1d` with mode 'reflect' and `truncate` 4, as the official code.
    Express sigmas in frames of the source video; scale them with fps if that differs much from
    the ~25 fps the official values were tuned on.
    """
    sigma_c, sigma_xy = (float(s) for s in sigmas)
    if sigma_c < 0 or sigma_xy < 0:
        raise InputError(f"smoothing sigmas must be >= 0 frames, got {tuple(sigmas)}")
    out = []
    for arr, sigma in ((c, sigma_c), (x, sigma_xy), (y, sigma_xy)):
        arr = np.asarray(arr, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise InputError(f"quad parameters must have shape [N, 2], got {tuple(arr.shape)}")
        if sigma > 0:
            arr = gaussian_filter1d(arr, sigma, axis=0, mode="reflect", truncate=truncate)
        out.append(arr.copy() if sigma == 0 else arr)
    return out[0], out[1], out[2]


def quads_from_params(c: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[..., 4, 2] corners (c-x-y, c-x+y, c+x+y, c+x-y): top-left, bottom-left, bottom-right, top-right."""
    c, x, y = (np.asarray(a, dtype=np.float64) for a in (c, x, y))
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y], axis=-2)


def compute_quads(
    landmarks: np.ndarray, sigmas: tuple[float, float] = OFFICIAL_SIGMAS, present: np.ndarray | None = None
) -> np.ndarray:
    """Smoothed quads [N, 4, 2] for landmarks [N, 68, 2] (the official per-video recipe).

    With `present` (bool [N]) each run of frames that have the face is smoothed on its own, as
    if it were a clip of its own, so frames without the face never leak into the quads; those
    frames copy the nearest present frame's quad (they are never cropped or pasted).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3:
        raise InputError("compute_quads needs landmarks of shape [N, 68, 2]")
    if present is None or np.all(present):
        return quads_from_params(*smooth_quad_params(*quad_from_landmarks(lm), sigmas))
    present = np.asarray(present, dtype=bool)
    if present.shape != lm.shape[:1] or not present.any():
        raise InputError(f"present must be a bool [N] mask with at least one frame, got shape {present.shape}")
    quads = np.zeros(lm.shape[:1] + (4, 2), dtype=np.float64)
    for run in present_runs(present):
        quads[run] = quads_from_params(*smooth_quad_params(*quad_from_landmarks(lm[run]), sigmas))
    absent = np.flatnonzero(~present)
    quads[absent] = quads[nearest_known(present)[absent]]
    return quads


# --------------------------------------------------------------------------------------------
# crop transform


def crop_homography(quad: np.ndarray, size: int) -> np.ndarray:
    """3x3 float64 map from crop pixel coordinates (u, v, 1) to frame pixel coordinates.

    quad: [4, 2] or [N, 4, 2] (TL, BL, BR, TR) in frame coordinates (pixel centres at integers);
    returns [3, 3] or [N, 3, 3]. Its inverse maps frame -> crop (for the paste-back).

    Derivation, matching the official `img.transform((S, S), QUAD, (quad + 0.5).flatten(), BILINEAR)`:
    PIL works in edge coordinates (pixel k spans [k, k + 1), centre k + 0.5). For output pixel
    (u, v) it evaluates its quad map at the pixel centre (u + 0.5, v + 0.5):
        X_e = q'0 + (q'3 - q'0) (u + 0.5) / S + (q'1 - q'0) (v + 0.5) / S    (+ a bilinear term
    that is zero for a parallelogram), with q' = quad + 0.5, and samples the frame at X_e in edge
    coordinates, i.e. at X_c = X_e - 0.5 in centre coordinates. The two 0.5 shifts cancel in q',
    leaving
        X_c = q0 + (q3 - q0) (u + 0.5) / S + (q1 - q0) (v + 0.5) / S.
    So the quad corners are the crop's outer pixel edges: (-0.5, -0.5) -> q0, (S - 0.5, -0.5) -> q3,
    (-0.5, S - 0.5) -> q1, (S - 0.5, S - 0.5) -> q2, and the crop centre ((S-1)/2, (S-1)/2) -> c.
    The official paste-back (a least-squares PERSPECTIVE fit of quad + 0.5 onto the corners
    [[0, 0], [0, S], [S, S], [S, 0]]) is the inverse of the same map. The map is affine because a
    quad built from (c, x, y) is a parallelogram; other quads are rejected.
    """
    q = np.asarray(quad, dtype=np.float64)
    if q.shape[-2:] != (4, 2) or q.ndim not in (2, 3):
        raise InputError(f"a quad must have shape [4, 2] or [N, 4, 2], got {tuple(q.shape)}")
    if int(size) != size or size < 1:
        raise InputError(f"crop size must be a positive integer, got {size}")
    size = int(size)
    q0, q1, q2, q3 = q[..., 0, :], q[..., 1, :], q[..., 2, :], q[..., 3, :]
    e_u = q3 - q0  # along the crop's top edge (u direction)
    e_v = q1 - q0  # along the crop's left edge (v direction)
    scale = np.maximum(np.linalg.norm(e_u, axis=-1), np.linalg.norm(e_v, axis=-1))
    area = np.abs(e_u[..., 0] * e_v[..., 1] - e_u[..., 1] * e_v[..., 0])
    if np.any(area <= 1e-12 * np.maximum(scale, 1.0) ** 2):
        raise InputError("degenerate face quad (zero area): the landmarks do not describe a face")
    skew = np.linalg.norm(q2 - q1 - q3 + q0, axis=-1)
    if np.any(skew > 1e-6 * np.maximum(scale, 1.0)):
        raise InputError("the face quad is not a parallelogram; build it with quads_from_params (c-x-y, ...)")
    h = np.zeros(q.shape[:-2] + (3, 3), dtype=np.float64)
    h[..., 0:2, 0] = e_u / size
    h[..., 0:2, 1] = e_v / size
    h[..., 0:2, 2] = q0 + 0.5 * (e_u + e_v) / size
    h[..., 2, 2] = 1.0
    return h


def warp_crop_reference(frame: np.ndarray, H: np.ndarray, size: int) -> np.ndarray:
    """Reference crop sampler: the exact semantics the fast pixel kernels must reproduce.

    output[v, u, ch] = round(B(frame[..., ch], p)), p = (px, py) = dehomogenise(H @ [u, v, 1]),
    for u, v in 0..size-1, where
    - frame pixel centres are at integer coordinates: frame[j, i] is the value at (x=i, y=j);
    - B is bilinear interpolation of the frame *extended by zeros*: with x0 = floor(px),
      y0 = floor(py), fx = px - x0, fy = py - y0, the four taps (x0, y0), (x0+1, y0), (x0, y0+1),
      (x0+1, y0+1) get weights (1-fx)(1-fy), fx(1-fy), (1-fx)fy, fx fy, and a tap outside
      [0, W-1] x [0, H-1] contributes 0 (so samples fade to black across the last half pixel and
      are exactly 0 one pixel outside); this equals torch `grid_sample(..., mode='bilinear',
      padding_mode='zeros', align_corners=True)` with grid = 2 p / (W-1, H-1) - 1;
    - round is half-up, floor(value + 0.5), then clipped to 0..255; arithmetic in float64 here
      (float32 kernels may differ by one grey level at exact ties).
    This is the official crop with padding disabled (black outside the frame), except at the
    outermost half pixel of the frame, where PIL clamps to the edge pixel instead of fading.

    frame: uint8 [H, W] or [H, W, C]. H: [3, 3] crop -> frame map (`crop_homography`).
    Returns uint8 [size, size] or [size, size, C]. No antialiasing: for quads much larger than
    `size` (downscale > 2x) prefilter the frame or expect aliasing.
    """
    img = np.asarray(frame)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise InputError(f"frame must be a uint8 [H, W] or [H, W, C] array, got {img.dtype} {tuple(img.shape)}")
    acc = warp_crop_float(img, H, size)
    return np.clip(np.floor(acc + 0.5), 0, 255).astype(np.uint8)


def warp_crop_float(frame: np.ndarray, H: np.ndarray, size: int) -> np.ndarray:
    """`warp_crop_reference` before rounding: float64 [size, size(, C)] for any real-valued frame."""
    img = np.asarray(frame)
    if img.ndim not in (2, 3):
        raise InputError(f"frame must be an [H, W] or [H, W, C] array, got shape {tuple(img.shape)}")
    squeeze = img.ndim == 2
    if squeeze:
        img = img[:, :, None]
    m = np.asarray(H, dtype=np.float64)
    if m.shape != (3, 3):
        raise InputError(f"H must be a 3x3 matrix, got shape {tuple(m.shape)}")
    if int(size) != size or size < 1:
        raise InputError(f"crop size must be a positive integer, got {size}")
    size = int(size)
    hgt, wid, _ = img.shape

    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    w = m[2, 0] * u + m[2, 1] * v + m[2, 2]
    px = (m[0, 0] * u + m[0, 1] * v + m[0, 2]) / w
    py = (m[1, 0] * u + m[1, 1] * v + m[1, 2]) / w
    x0 = np.floor(px)
    y0 = np.floor(py)
    fx = px - x0
    fy = py - y0
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)

    src = img.astype(np.float64)
    acc = np.zeros((size, size, img.shape[2]), dtype=np.float64)
    for dx, dy, weight in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi = x0 + dx
        yi = y0 + dy
        inside = (xi >= 0) & (xi < wid) & (yi >= 0) & (yi < hgt)
        tap = src[np.clip(yi, 0, hgt - 1), np.clip(xi, 0, wid - 1)]
        acc += tap * (weight * inside)[:, :, None]
    return acc[:, :, 0] if squeeze else acc


# --------------------------------------------------------------------------------------------
# official parity crop


def _official_crop(frame: np.ndarray, quad: np.ndarray, output_size: int) -> Image.Image:
    """The official `crop_image` with padding disabled, as PIL operations (before the JPEG save).

    Note the official `qsize` here is the quad *diagonal* |quad[3] - quad[1]| (STIT recovers
    "x" as half the TR-BL diagonal), not FFHQ's side length; it drives the shrink and border.
    """
    img = Image.fromarray(check_frame(frame))
    q = np.array(quad, dtype=np.float64).reshape(4, 2)
    qsize = float(np.hypot(*(q[3] - q[1])))
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:  # integer downscale of huge faces (LANCZOS, the old PIL.ANTIALIAS)
        rsize = (int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        q /= shrink
        qsize /= shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    box = (
        max(int(np.floor(q[:, 0].min())) - border, 0),
        max(int(np.floor(q[:, 1].min())) - border, 0),
        min(int(np.ceil(q[:, 0].max())) + border, img.size[0]),
        min(int(np.ceil(q[:, 1].max())) + border, img.size[1]),
    )
    if box[2] - box[0] < img.size[0] or box[3] - box[1] < img.size[1]:
        img = img.crop(box)
        q -= np.array(box[:2], dtype=np.float64)
    data = tuple(float(v) for v in (q + 0.5).flatten())
    return img.transform((output_size, output_size), Image.Transform.QUAD, data, Image.Resampling.BILINEAR)


def official_crop_1024(frame: np.ndarray, quad: np.ndarray, *, model_size: int | None = MODEL_SIZE) -> np.ndarray:
    """Parity mode: the official 1024 crop, JPEG round trip, then torchvision's Resize(256).

    Steps (§9 of the official facts): shrink rule, border crop, PIL QUAD BILINEAR with quad + 0.5
    to 1024x1024, save/reload as JPEG at PIL's default quality 75, then an antialiased PIL
    bilinear resize to `model_size` (what torchvision Resize does to a PIL image; CenterCrop is a
    no-op on a square). `model_size=None` returns the 1024 JPEG-decoded crop. uint8 RGB.
    Slower and lossier than the default path (`crop_homography` + a pixel kernel); use it only
    to compare with the official implementation.
    """
    crop = _official_crop(frame, quad, OFFICIAL_CROP_SIZE)
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=75)
    buf.seek(0)
    crop = Image.open(buf).convert("RGB")
    if model_size is not None:
        crop = crop.resize((int(model_size), int(model_size)), Image.Resampling.BILINEAR)
    return np.asarray(crop).copy()


# --------------------------------------------------------------------------------------------
# one call for a whole video


@dataclass
class Alignment(FacePresence):
    """Everything the crop and paste-back passes need, for N frames.

    quads [N, 4, 2] (smoothed per run of frames with the face), homographies [N, 3, 3] (crop of
    `size` -> frame), landmarks [N, 68, 2], detected bool [N] (the detector found the face),
    present bool [N] (the face is there: detected or a confirmed, bridged miss; frames without
    it are passed through unedited, and their quads and landmarks are placeholders),
    faces_seen int64 [N] (confident faces the detector reported per frame; > 1 means a face was
    chosen among several), reacquired (frames where the face was chosen again after an absence).
    """

    quads: np.ndarray
    homographies: np.ndarray
    landmarks: np.ndarray
    detected: np.ndarray
    present: np.ndarray
    faces_seen: np.ndarray
    size: int
    reacquired: tuple[int, ...] = ()

    @property
    def num_frames(self) -> int:
        return int(self.quads.shape[0])

    @property
    def max_faces_seen(self) -> int:
        return int(self.faces_seen.max()) if self.faces_seen.size else 0

    def homographies_for(self, size: int) -> np.ndarray:
        """The crop -> frame maps for another crop size (e.g. 1024 for the official crop)."""
        return crop_homography(self.quads, size)

    def save(self, path: str | Path) -> None:
        np.savez(
            Path(path), quads=self.quads, homographies=self.homographies, landmarks=self.landmarks,
            detected=self.detected, present=self.present, faces_seen=self.faces_seen, size=np.int64(self.size),
            reacquired=np.asarray(self.reacquired, dtype=np.int64),
        )

    @classmethod
    def load(cls, path: str | Path) -> "Alignment":
        try:
            with np.load(Path(path)) as d:
                return cls(
                    quads=d["quads"], homographies=d["homographies"], landmarks=d["landmarks"],
                    detected=d["detected"], present=d["present"], faces_seen=d["faces_seen"],
                    size=int(d["size"]), reacquired=tuple(int(i) for i in d["reacquired"]),
                )
        except (OSError, KeyError, ValueError) as err:
            raise InputError(f"cannot read alignment file {path}: {err}") from None


def align_video(
    frames: Iterable[np.ndarray],
    detector: FaceDetector | None = None,
    *,
    size: int = MODEL_SIZE,
    select: Selection = "largest",
    sigmas: tuple[float, float] = OFFICIAL_SIGMAS,
    max_gap: int = DEFAULT_MAX_GAP,
    min_relative_score: float = DEFAULT_MIN_RELATIVE_SCORE,
    source: str = "the video",
) -> Alignment:
    """Detect, track, smooth: one streaming pass over `frames` (only a pending gap's frames are held).

    The crops themselves are cut later, in a second pass, by the pixel kernels using
    `homographies` (or `warp_crop_reference`). Default detector: `DlibDetector()`. `select`,
    `max_gap` and `min_relative_score` are `track_faces`'s; `sigmas` `smooth_quad_params`'s.
    """
    if detector is None:
        from fvedit.face.detect import DlibDetector

        detector = DlibDetector()
    track = track_faces(
        frames, detector=detector, select=select, max_gap=max_gap,
        min_relative_score=min_relative_score, source=source,
    )
    quads = compute_quads(track.landmarks, sigmas, track.present)
    return Alignment(
        quads=quads,
        homographies=crop_homography(quads, size),
        landmarks=track.landmarks,
        detected=track.detected,
        present=track.present,
        faces_seen=track.faces_seen,
        size=int(size),
        reacquired=track.reacquired,
    )
