"""Face detection, tracking and alignment: real dlib on scikit-image's astronaut, PIL as the
independent twin of the crop convention, and synthetic detections for the tracker logic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter
from scipy.ndimage import affine_transform
from skimage import data

from fvedit.errors import InputError
from fvedit.face import (
    Alignment,
    DlibDetector,
    Face,
    align_video,
    compute_quads,
    crop_homography,
    make_detector,
    official_crop_1024,
    parse_selection,
    quad_from_landmarks,
    quads_from_params,
    smooth_quad_params,
    track_faces,
    warp_crop_float,
    warp_crop_reference,
)
from fvedit.face import detect as detect_mod
from fvedit.face.align import _official_crop
from fvedit.face.track import match_face, select_face

# ---------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def detector() -> DlibDetector:
    return DlibDetector()


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def astro_face(detector, astro) -> Face:
    faces = detector.detect(astro)
    assert len(faces) == 1
    return faces[0]


def move_image(img: np.ndarray, A: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Frame whose content point p sits at A p + t (pixel-centre coordinates), via scipy."""
    a_inv = np.linalg.inv(A)
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])  # (x, y) <-> (row, col)
    matrix = swap @ a_inv @ swap
    offset = -(swap @ a_inv @ t)
    chans = [affine_transform(img[..., k].astype(np.float64), matrix, offset, order=1, mode="nearest")
             for k in range(img.shape[2])]
    return np.clip(np.rint(np.stack(chans, axis=-1)), 0, 255).astype(np.uint8)


def similarity(angle_deg: float, scale: float, center, shift) -> tuple[np.ndarray, np.ndarray]:
    th = np.deg2rad(angle_deg)
    A = scale * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    center = np.asarray(center, dtype=np.float64)
    t = center + np.asarray(shift, dtype=np.float64) - A @ center
    return A, t


def smooth_image(h: int, w: int, steep: float = 1.0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([
        128 + 100 * np.sin(steep * xx / 37.0 + yy / 53.0),
        128 + 100 * np.cos(xx / 41.0 - steep * yy / 29.0),
        128 + 90 * np.sin((xx + yy) / 61.0),
    ], axis=-1)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def random_parallelogram(rng: np.random.Generator, center, half: float) -> np.ndarray:
    c = np.asarray(center, dtype=np.float64) + rng.uniform(-3, 3, 2)
    ang = rng.uniform(-0.6, 0.6)
    x = half * rng.uniform(0.8, 1.2) * np.array([np.cos(ang), np.sin(ang)])
    y = half * rng.uniform(0.8, 1.2) * np.array([-np.sin(ang + 0.1), np.cos(ang + 0.1)])  # a bit skewed
    return quads_from_params(c, x, y)


def fake_face(center, size: float, lm: np.ndarray | None = None) -> Face:
    cx, cy = center
    box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
    if lm is None:
        lm = np.tile(np.asarray(center, dtype=np.float64), (68, 1))
    return Face(box=box, score=1.0, landmarks68=np.asarray(lm, dtype=np.float64))


def angle_of(v: np.ndarray) -> float:
    return float(np.degrees(np.arctan2(v[1], v[0])))


# ---------------------------------------------------------------------------------------------
# detection


def test_dlib_finds_the_astronaut_with_plausible_landmarks(astro_face):
    lm = astro_face.landmarks68
    assert lm.shape == (68, 2) and lm.dtype == np.float64
    x0, y0, x1, y1 = astro_face.box
    assert astro_face.score > 0
    margin = 0.25 * (x1 - x0)
    assert np.all(lm[:, 0] > x0 - margin) and np.all(lm[:, 0] < x1 + margin)
    assert np.all(lm[:, 1] > y0 - margin) and np.all(lm[:, 1] < y1 + margin)
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    mouth = lm[48:68].mean(0)
    assert eye_l[0] < eye_r[0]  # image-left eye first
    assert mouth[1] > max(eye_l[1], eye_r[1]) + 10  # mouth below the eyes
    assert 0.25 * (x1 - x0) < np.hypot(*(eye_r - eye_l)) < 0.7 * (x1 - x0)
    assert lm[30, 1] > eye_l[1] and lm[30, 1] < mouth[1]  # nose tip between eyes and mouth


@pytest.mark.parametrize(
    "angle, scale, shift",
    [(0.0, 1.0, (23.0, -11.0)), (10.0, 1.0, (5.0, 8.0)), (-8.0, 1.25, (-12.0, 6.0))],
)
def test_quad_follows_known_motion(detector, astro, astro_face, angle, scale, shift):
    A, t = similarity(angle, scale, astro_face.center, shift)
    moved = move_image(astro, A, t)
    faces = detector.detect(moved)  # HOG may add a weak false positive on the suit
    chosen = select_face(faces, "largest")
    assert chosen.score == max(f.score for f in faces)
    c0, x0, _ = quad_from_landmarks(astro_face.landmarks68)
    c1, x1, _ = quad_from_landmarks(chosen.landmarks68)
    np.testing.assert_allclose(c1, A @ c0 + t, atol=4.0)
    assert abs(angle_of(x1) - angle_of(x0) - angle) < 2.0
    assert abs(np.hypot(*x1) / np.hypot(*x0) - scale) < 0.06


def test_downscaled_detection_maps_back_to_full_resolution(astro, astro_face):
    big = np.asarray(Image.fromarray(astro).resize((1024, 1024), Image.Resampling.BILINEAR))
    fast = DlibDetector(detect_max_side=512).detect(big)
    full = select_face(DlibDetector(detect_max_side=None).detect(big), "largest")
    assert len(fast) == 1
    # the box is found at half size and rescaled; landmarks are predicted at full size
    np.testing.assert_allclose(fast[0].box, full.box, atol=15.0)
    assert np.abs(fast[0].landmarks68 - full.landmarks68).mean() < 2.0
    # pixel centre k at 512 sits at 2k + 0.5 at 1024
    assert np.abs(fast[0].landmarks68 - (2 * astro_face.landmarks68 + 0.5)).mean() < 4.0


def test_small_face_found_by_full_resolution_retry(astro):
    canvas = np.zeros((1024, 1024, 3), np.uint8)
    canvas[300:812, 200:712] = astro
    assert DlibDetector(detect_max_side=256, retry_full_res=False).detect(canvas) == []
    faces = DlibDetector(detect_max_side=256, retry_full_res=True).detect(canvas)
    assert len(faces) == 1
    assert 300 < faces[0].center[1] < 812 and 200 < faces[0].center[0] < 712


def test_bad_frames_are_rejected(detector):
    with pytest.raises(InputError, match="RGB uint8"):
        detector.detect(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(InputError, match="RGB uint8"):
        detector.detect(np.zeros((32, 32), np.uint8))


def test_unknown_detector_name():
    with pytest.raises(InputError, match="unknown face detector 'retina'.*dlib"):
        make_detector("retina")


def test_optional_backends_name_the_missing_package(monkeypatch):
    monkeypatch.setattr(detect_mod, "_has_package", lambda name: False)
    with pytest.raises(InputError, match="face-alignment package"):
        make_detector("face-alignment")
    with pytest.raises(InputError, match="insightface package"):
        make_detector("insightface")


def test_optional_backends_name_the_missing_weight_files(monkeypatch, tmp_path):
    monkeypatch.setattr(detect_mod, "_has_package", lambda name: True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    with pytest.raises(InputError, match=r"2DFAN4-.*s3fd-.*does not download"):
        make_detector("fa")
    with pytest.raises(InputError, match=r"model pack 'buffalo_l'.*ifroot"):
        make_detector("insightface", root=tmp_path / "ifroot")


# ---------------------------------------------------------------------------------------------
# quads and smoothing


def test_quad_known_answer():
    lm = np.zeros((68, 2))
    lm[36:42] = (100.0, 100.0)
    lm[42:48] = (140.0, 100.0)
    lm[48] = (105.0, 150.0)
    lm[54] = (135.0, 150.0)
    c, x, y = quad_from_landmarks(lm)
    # eye_to_eye (40, 0), eye_to_mouth (0, 50): x = (40 + 50, 0) rescaled to max(80, 90) = 90
    np.testing.assert_allclose(c, [120.0, 105.0])
    np.testing.assert_allclose(x, [90.0, 0.0])
    np.testing.assert_allclose(y, [0.0, 90.0], atol=1e-12)
    np.testing.assert_allclose(quads_from_params(c, x, y), [[30, 15], [30, 195], [210, 195], [210, 15]])


@settings(max_examples=40, deadline=None)
@given(
    angle=st.floats(-40, 40),
    scale=st.floats(0.3, 3.0),
    tx=st.floats(-500, 500),
    ty=st.floats(-500, 500),
)
def test_quad_is_equivariant_to_similarity_transforms(astro_face, angle, scale, tx, ty):
    lm = astro_face.landmarks68
    A, _ = similarity(angle, scale, (0, 0), (0, 0))
    t = np.array([tx, ty])
    c0, x0, y0 = quad_from_landmarks(lm)
    c1, x1, y1 = quad_from_landmarks(lm @ A.T + t)
    np.testing.assert_allclose(c1, A @ c0 + t, atol=1e-6)
    np.testing.assert_allclose(x1, A @ x0, atol=1e-6)
    np.testing.assert_allclose(y1, A @ y0, atol=1e-6)


def test_quad_batch_matches_single_frames(astro_face):
    rng = np.random.default_rng(0)
    lms = astro_face.landmarks68 + rng.normal(0, 2, (5, 68, 2))
    c, x, y = quad_from_landmarks(lms)
    for i in range(5):
        ci, xi, yi = quad_from_landmarks(lms[i])
        np.testing.assert_allclose((c[i], x[i], y[i]), (ci, xi, yi))


def _gauss_twin(a: np.ndarray, sigma: float) -> np.ndarray:
    """Independent twin of gaussian_filter1d(mode='reflect', truncate=4): explicit kernel, numpy pad."""
    r = int(4.0 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(a, ((r, r), (0, 0)), mode="symmetric")  # scipy 'reflect' = numpy 'symmetric'
    return np.stack([np.convolve(padded[:, j], k, mode="valid") for j in range(a.shape[1])], axis=1)


def test_smoothing_matches_twin_and_reduces_jitter(astro_face):
    rng = np.random.default_rng(1)
    n = 60
    drift = np.linspace(0, 30, n)[:, None, None] * np.array([1.0, 0.5])  # slow, real motion
    lms = astro_face.landmarks68[None] + drift + rng.normal(0, 1.5, (n, 68, 2))
    c, x, y = quad_from_landmarks(lms)
    cs, xs, ys = smooth_quad_params(c, x, y)  # official sigmas (1, 3)
    np.testing.assert_allclose(cs, _gauss_twin(c, 1.0), atol=1e-9)
    np.testing.assert_allclose(xs, _gauss_twin(x, 3.0), atol=1e-9)
    np.testing.assert_allclose(ys, _gauss_twin(y, 3.0), atol=1e-9)

    def jitter(a):  # frame-to-frame roughness (second difference)
        return np.abs(np.diff(a, n=2, axis=0)).mean()

    assert jitter(cs) < 0.6 * jitter(c)
    assert jitter(xs) < 0.2 * jitter(x)
    # the slow drift survives smoothing
    assert abs((cs[-5] - cs[5])[0] - (c[-5] - c[5])[0]) < 3.0

    c0, x0, y0 = smooth_quad_params(c, x, y, sigmas=(0.0, 0.0))
    np.testing.assert_array_equal(c0, c)
    np.testing.assert_array_equal(x0, x)
    np.testing.assert_array_equal(y0, y)
    with pytest.raises(InputError, match="sigmas"):
        smooth_quad_params(c, x, y, sigmas=(-1.0, 3.0))


# ---------------------------------------------------------------------------------------------
# crop transform


def test_crop_homography_maps_crop_edges_to_quad_corners():
    rng = np.random.default_rng(2)
    for size in (1, 64, 256, 1024):
        q = random_parallelogram(rng, (300, 200), 120)
        H = crop_homography(q, size)
        e = size - 0.5
        corners = np.array([[-0.5, -0.5, 1], [-0.5, e, 1], [e, e, 1], [e, -0.5, 1]])
        np.testing.assert_allclose((corners @ H.T)[:, :2], q, atol=1e-9)
        mid = (size - 1) / 2
        np.testing.assert_allclose((H @ [mid, mid, 1])[:2], q.mean(axis=0), atol=1e-9)
    qs = np.stack([random_parallelogram(rng, (300, 200), 100) for _ in range(4)])
    Hs = crop_homography(qs, 256)
    assert Hs.shape == (4, 3, 3)
    for i in range(4):
        np.testing.assert_allclose(Hs[i], crop_homography(qs[i], 256))


def test_crop_homography_rejects_bad_quads():
    q = quads_from_params(np.array([50.0, 50]), np.array([20.0, 0]), np.array([0.0, 20]))
    bent = q.copy()
    bent[2] += (5.0, 0.0)
    with pytest.raises(InputError, match="parallelogram"):
        crop_homography(bent, 64)
    with pytest.raises(InputError, match="zero area"):
        crop_homography(np.zeros((4, 2)), 64)
    with pytest.raises(InputError, match="shape"):
        crop_homography(np.zeros((3, 2)), 64)


def _official_paste_coeffs(quad: np.ndarray, size: int) -> np.ndarray:
    """Twin of the official un-align: least-squares 8-parameter perspective, quad+0.5 -> crop corners."""
    src = quad + 0.5
    dst = np.array([[0, 0], [0, size], [size, size], [size, 0]], dtype=np.float64)
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]


def test_inverse_homography_is_the_official_paste_back_map():
    rng = np.random.default_rng(3)
    size = 256
    q = random_parallelogram(rng, (500, 300), 200)
    H_inv = np.linalg.inv(crop_homography(q, size))
    a = _official_paste_coeffs(q, size)
    pts = rng.uniform(200, 700, (50, 2))  # frame pixel centres
    pe = pts + 0.5  # PIL edge coordinates
    den = a[6] * pe[:, 0] + a[7] * pe[:, 1] + 1
    crop_e = np.stack([(a[0] * pe[:, 0] + a[1] * pe[:, 1] + a[2]) / den,
                       (a[3] * pe[:, 0] + a[4] * pe[:, 1] + a[5]) / den], axis=1)
    crop_c = (np.c_[pts, np.ones(50)] @ H_inv.T)[:, :2]
    np.testing.assert_allclose(crop_e, crop_c + 0.5, atol=1e-6)


def test_reference_warp_matches_pil_quad_exactly_in_float():
    """PIL in float mode has no rounding: any half-pixel slip on this steep image would show as > 1."""
    rng = np.random.default_rng(4)
    img = smooth_image(300, 400, steep=4.0)
    size = 96
    q = random_parallelogram(rng, (200, 150), 90)
    H = crop_homography(q, size)
    for ch in range(3):
        plane = img[..., ch].astype(np.float32) * 3.0
        pil = np.asarray(Image.fromarray(plane).transform(
            (size, size), Image.Transform.QUAD, tuple((q + 0.5).flatten()), Image.Resampling.BILINEAR))
        ours = warp_crop_float(plane.astype(np.float64), H, size)
        np.testing.assert_allclose(ours, pil, atol=1e-3)


def test_reference_warp_matches_pil_quad_uint8(astro, astro_face):
    c, x, y = quad_from_landmarks(astro_face.landmarks68)
    q = quads_from_params(c, x, y)
    for img in (astro, smooth_image(512, 512)):
        for size in (64, 256):
            ours = warp_crop_reference(img, crop_homography(q, size), size).astype(int)
            pil = np.asarray(Image.fromarray(img).transform(
                (size, size), Image.Transform.QUAD, tuple((q + 0.5).flatten()), Image.Resampling.BILINEAR))
            diff = ours - pil  # PIL truncates, we round half up: 0 or +1
            assert diff.min() >= 0 and diff.max() <= 1
            assert 0.2 < diff.mean() < 0.8


def test_reference_warp_is_zero_outside_like_grid_sample():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    q = quads_from_params(np.array([5.0, 35.0]), np.array([18.0, 4.0]), np.array([-4.0, 18.0]))  # half outside
    size = 48
    H = crop_homography(q, size)
    ours = warp_crop_float(img, H, size)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    p = np.stack([u, v, np.ones_like(u)], axis=-1) @ H.T
    grid = np.stack([2 * p[..., 0] / (50 - 1) - 1, 2 * p[..., 1] / (40 - 1) - 1], axis=-1)
    src = torch.from_numpy(img.astype(np.float64)).permute(2, 0, 1)[None]
    twin = torch.nn.functional.grid_sample(src, torch.from_numpy(grid)[None], mode="bilinear",
                                           padding_mode="zeros", align_corners=True)
    twin = twin[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, twin, atol=1e-9)
    assert (ours == 0).all(axis=-1).mean() > 0.2  # a good part of the crop is outside the frame
    out = warp_crop_reference(img, H, size)
    np.testing.assert_array_equal(out, np.floor(ours + 0.5).astype(np.uint8))  # round half up
    assert np.abs(out.astype(int) - np.floor(twin + 0.5)).max() <= 1  # ties may flip in the last ulp
    gray = warp_crop_reference(img[..., 0], H, size)
    np.testing.assert_array_equal(gray, out[..., 0])


def test_official_crop_agrees_with_reference_warp(astro, astro_face):
    c, x, y = quad_from_landmarks(astro_face.landmarks68)
    q = quads_from_params(c, x, y)
    off = official_crop_1024(astro, q, model_size=None)
    assert off.shape == (1024, 1024, 3) and off.dtype == np.uint8
    ref = warp_crop_reference(astro, crop_homography(q, 1024), 1024)
    assert np.abs(off.astype(int) - ref).mean() < 2.5  # JPEG q75 noise only; a geometry slip is far larger
    small = official_crop_1024(astro, q)
    assert small.shape == (256, 256, 3)
    ref256 = np.asarray(Image.fromarray(ref).resize((256, 256), Image.Resampling.BILINEAR))
    assert np.abs(small.astype(int) - ref256).mean() < 2.0


def test_official_crop_shrink_branch_keeps_geometry():
    img = smooth_image(600, 800)
    q = quads_from_params(np.array([400.3, 290.7]), np.array([150.0, 30.0]), np.array([-30.0, 150.0]))
    size = 64  # diagonal 433 px: shrink = floor(433 / 64 / 2) = 3
    off = np.asarray(_official_crop(img, q, size)).astype(int)
    ref = warp_crop_reference(img, crop_homography(q, size), size)
    assert np.abs(off - ref).mean() < 3.0
    shifted = warp_crop_reference(img, crop_homography(q + 6.0, size), size)  # a 6 px slip
    assert np.abs(off - shifted).mean() > 2 * np.abs(off - ref).mean()


# ---------------------------------------------------------------------------------------------
# tracking


def test_a_frame_without_the_face_is_absent_not_bridged(detector, astro, astro_face):
    A, t = similarity(0.0, 1.0, (0, 0), (16.0, 6.0))
    frames = [astro, np.zeros_like(astro), move_image(astro, A, t)]
    track = track_faces(iter(frames), detector=detector, source="test clip")
    assert track.detected.tolist() == [True, False, True]
    assert track.present.tolist() == [True, False, True]  # the re-check finds nothing on black
    assert track.faces_seen.tolist() == [1, 0, 1]
    np.testing.assert_array_equal(track.landmarks[0], astro_face.landmarks68)
    assert track.num_missing == 1 and track.num_absent == 1 and track.num_bridged == 0


def test_a_blurred_frame_missed_by_the_detector_is_confirmed_and_bridged(detector, astro):
    """Motion blur drops dlib's HOG score below 0; the re-check (threshold -0.5) still finds the face."""
    A, t = similarity(0.0, 1.0, (0, 0), (16.0, 6.0))
    moved = move_image(astro, A, t)
    blurred = np.asarray(Image.fromarray(move_image(astro, A, t / 2)).filter(ImageFilter.GaussianBlur(4)))
    assert not detector.detect(blurred), "the test needs a frame the default detector misses"
    track = track_faces(iter([astro, blurred, moved]), detector=detector)
    assert track.detected.tolist() == [True, False, True] and track.present.tolist() == [True, True, True]
    np.testing.assert_allclose(track.landmarks[1], (track.landmarks[0] + track.landmarks[2]) / 2)  # interior
    assert track.num_bridged == 1 and track.num_absent == 0


class ScriptedDetector:
    """Detections and re-check answers by frame number (a frame is an array filled with its index)."""

    name = "scripted"

    def __init__(self, detections, near=None):
        self.detections, self.near = list(detections), dict(near or {})
        self.near_calls: list[tuple[int, tuple]] = []

    def detect(self, frame):
        return self.detections[int(frame[0, 0, 0])]

    def detect_near(self, frame, box):
        i = int(frame[0, 0, 0])
        self.near_calls.append((i, tuple(box)))
        return self.near.get(i, [])


def index_frames(n: int):
    return (np.full((2, 2, 3), i, np.uint8) for i in range(n))


def test_confirmed_misses_are_interpolated_inside_and_fitted_at_the_ends(astro_face):
    lm = astro_face.landmarks68
    box_of = lambda i: tuple(np.asarray(astro_face.box) + (3 * i, 0, 3 * i, 0))  # noqa: E731
    face_at = lambda i, dy=0.0: Face(box=box_of(i), score=1.0, landmarks68=lm + (3 * i, dy))  # noqa: E731
    missed = (0, 4, 5, 9)
    dets = [[] if i in missed else [face_at(i)] for i in range(10)]
    near = {i: [face_at(i, dy=0.5)] for i in missed}  # the re-check's own fit, 0.5 px lower
    det = ScriptedDetector(dets, near)
    track = track_faces(index_frames(10), detector=det)
    assert track.detected.tolist() == [i not in missed for i in range(10)] and track.present.all()
    for i in range(1, 9):  # inside: linear in time, so exactly the moving landmarks
        np.testing.assert_allclose(track.landmarks[i], lm + (3 * i, 0), atol=1e-9)
    np.testing.assert_allclose(track.landmarks[0], lm + (0, 0.5))  # ends: the re-check's fit
    np.testing.assert_allclose(track.landmarks[9], lm + (27, 0.5))
    # each missed frame was re-checked around where the face should be (interpolated inside)
    expected = dict(det.near_calls)
    np.testing.assert_allclose(expected[4], np.asarray(box_of(3)) + (3, 0, 3, 0))
    np.testing.assert_allclose(expected[5], np.asarray(box_of(3)) + (6, 0, 6, 0))
    np.testing.assert_allclose(expected[0], box_of(1))  # held from the first detection
    assert track.first_frame == 1 and track.num_bridged == 4


def test_unconfirmed_misses_and_implausible_fits_are_absent(astro_face):
    lm = astro_face.landmarks68
    face = Face(box=astro_face.box, score=1.0, landmarks68=lm)
    elsewhere = Face(box=tuple(np.asarray(astro_face.box) + 400), score=1.0, landmarks68=lm + 400)
    collapsed = Face(box=astro_face.box, score=1.0, landmarks68=np.tile(lm.mean(0), (68, 1)))
    dets = [[face], [], [], [], [face]]
    det = ScriptedDetector(dets, {1: [elsewhere], 2: [collapsed], 3: [face]})
    track = track_faces(index_frames(5), detector=det)
    assert track.present.tolist() == [True, False, False, True, True]
    # without a re-check (no detect_near, or plain face lists) every miss is an absence
    assert track_faces([[face], [], [face]]).present.tolist() == [True, False, True]


def test_long_absence_is_passed_through_and_the_face_is_chosen_again(astro_face):
    lm = astro_face.landmarks68
    here = Face(box=astro_face.box, score=1.0, landmarks68=lm)
    back = Face(box=tuple(np.asarray(astro_face.box) + (300, 0, 300, 0)), score=1.0, landmarks68=lm + (300, 0))
    dets = [[here]] * 2 + [[]] * 5 + [[back]] * 2
    det = ScriptedDetector(dets, {i: [here] for i in range(2, 7)})
    track = track_faces(index_frames(9), detector=det, max_gap=4)
    assert track.present.tolist() == [True] * 2 + [False] * 5 + [True] * 2  # too long to bridge: no re-check
    assert det.near_calls == [] and track.reacquired == (7,)
    np.testing.assert_array_equal(track.landmarks[8], back.landmarks68)  # followed at its new place
    # a gap within max_gap, with the face back where it was, is re-checked (and confirmed here)
    dets = [[here]] * 2 + [[]] * 5 + [[here]] * 2
    det = ScriptedDetector(dets, {i: [Face(box=astro_face.box, score=-0.3, landmarks68=lm)] for i in range(2, 7)})
    track = track_faces(index_frames(9), detector=det, max_gap=5)
    assert track.present.all() and track.num_bridged == 5 and track.reacquired == ()
    # a clip that starts without the face
    det = ScriptedDetector([[]] * 30 + [[here]] * 2)
    track = track_faces(index_frames(32), detector=det)
    assert track.present.tolist() == [False] * 30 + [True] * 2 and track.first_frame == 30
    with pytest.raises(InputError, match="max_gap"):
        track_faces([[here]], max_gap=-1)


def test_no_face_anywhere(detector):
    frames = [data.coffee(), data.coffee()[::-1].copy()]
    with pytest.raises(InputError, match="no face found in any frame of coffee.mp4"):
        track_faces(frames, detector=detector, source="coffee.mp4")
    with pytest.raises(InputError, match="no frames"):
        track_faces([], detector=detector)
    with pytest.raises(InputError, match="no detector"):
        track_faces([data.coffee()])


@pytest.fixture(scope="module")
def two_faces(detector, astro):
    """Two astronauts side by side: the right one 1.5x larger."""
    head = astro[20:276, 80:336]  # 256 x 256 around the face
    big = np.asarray(Image.fromarray(head).resize((384, 384), Image.Resampling.BILINEAR))
    canvas = np.full((400, 680, 3), 90, np.uint8)
    canvas[60:316, 10:266] = head
    canvas[8:392, 290:674] = big
    faces = detector.detect(canvas)
    assert len(faces) == 2
    return faces


def test_several_faces_choose_largest_by_default(two_faces):
    left, right = sorted(two_faces, key=lambda f: f.center[0])
    assert right.area > 1.8 * left.area
    dets = [list(two_faces)] * 3
    track = track_faces(dets)
    np.testing.assert_array_equal(track.landmarks[2], right.landmarks68)
    assert track.faces_seen.tolist() == [2, 2, 2] and track.max_faces_seen == 2

    np.testing.assert_array_equal(track_faces(dets, select=0).landmarks[1], left.landmarks68)
    np.testing.assert_array_equal(track_faces(dets, select=1).landmarks[1], right.landmarks68)
    point = tuple(left.center + 5)
    np.testing.assert_array_equal(track_faces(dets, select=point).landmarks[0], left.landmarks68)
    np.testing.assert_array_equal(track_faces(dets, select=(670.0, 10.0)).landmarks[0], right.landmarks68)
    assert select_face(two_faces, "first") is two_faces[0]
    with pytest.raises(InputError, match=r"face index 2 requested but frame 0 has 2 face\(s\)"):
        track_faces(dets, select=2)


def test_weak_false_positives_neither_win_nor_count():
    real = Face(box=(100, 100, 180, 180), score=1.2, landmarks68=np.zeros((68, 2)))
    weak_big = Face(box=(300, 300, 400, 400), score=0.1, landmarks68=np.ones((68, 2)))
    other = Face(box=(500, 100, 570, 170), score=0.7, landmarks68=np.full((68, 2), 2.0))
    assert select_face([weak_big, real], "largest") is real
    assert select_face([weak_big, real, other], 1) is other  # numbering skips the weak one
    assert select_face([weak_big, real], "largest", min_relative_score=0.0) is weak_big
    assert select_face([weak_big, real], "first") is weak_big  # official: the detector's first
    track = track_faces([[weak_big, real], [real, other]])
    assert track.faces_seen.tolist() == [1, 2]
    np.testing.assert_array_equal(track.landmarks[1], real.landmarks68)


def test_tracking_follows_the_chosen_face_not_the_order():
    rng = np.random.default_rng(6)
    dets, truth = [], []
    for i in range(12):
        small = fake_face((150 + 4 * i, 200 + 2 * i), 90)  # the one we want, moving right
        big = fake_face((500 - 3 * i, 220), 140)
        pair = [small, big]
        rng.shuffle(pair)
        dets.append(pair)
        truth.append(small.center)
    track = track_faces(dets, select=0)
    np.testing.assert_allclose((track.boxes[:, :2] + track.boxes[:, 2:]) / 2, truth)
    assert track.detected.all()


def test_gap_does_not_jump_to_another_person():
    me = fake_face((100, 100), 80)
    other = fake_face((400, 110), 85)
    assert match_face([other], me, frames_since=3) is None
    assert match_face([fake_face((130, 104), 82), other], me, frames_since=2).center[0] == 130
    dets = [[me], [other], [other], [me]]
    track = track_faces(dets)
    assert track.detected.tolist() == [True, False, False, True]


def test_parse_selection():
    assert parse_selection("largest") == "largest"
    assert parse_selection(" First ") == "first"
    assert parse_selection("2") == 2
    assert parse_selection("640,360.5") == (640.0, 360.5)
    for bad in ("big", "1,2,3", "a,b"):
        with pytest.raises(InputError, match="face selection"):
            parse_selection(bad)
    with pytest.raises(InputError, match=">= 0"):
        track_faces([[fake_face((0, 0), 10)]], select=-1)


# ---------------------------------------------------------------------------------------------
# one call


class ReplayDetector:
    """Stands in for a detector: replays detections and checks it sees each frame once."""

    name = "replay"

    def __init__(self, detections):
        self.detections = list(detections)
        self.calls = 0

    def detect(self, frame):
        self.calls += 1
        return self.detections[int(frame[0, 0, 0])]


def test_align_video_streams_once_and_composes(astro_face, tmp_path):
    rng = np.random.default_rng(7)
    n = 8
    lms = astro_face.landmarks68[None] + np.linspace(0, 20, n)[:, None, None] + rng.normal(0, 1, (n, 68, 2))
    dets = [[Face(box=astro_face.box, score=1.0, landmarks68=lms[i])] if i != 3 else [] for i in range(n)]

    def frames():
        for i in range(n):
            yield np.full((4, 4, 3), i, np.uint8)

    det = ReplayDetector(dets)
    al = align_video(frames(), det, size=256, sigmas=(1.0, 3.0), source="replay")
    assert det.calls == n
    assert al.detected.tolist() == [i != 3 for i in range(n)] and al.present.tolist() == al.detected.tolist()
    # each run with the face is smoothed on its own: frame 3 never leaks into the quads
    np.testing.assert_allclose(al.quads[:3], compute_quads(al.landmarks[:3], (1.0, 3.0)))
    np.testing.assert_allclose(al.quads[4:], compute_quads(al.landmarks[4:], (1.0, 3.0)))
    np.testing.assert_allclose(al.quads, compute_quads(al.landmarks, (1.0, 3.0), al.present))
    np.testing.assert_allclose(al.quads[3], al.quads[2])  # a placeholder: the nearest present frame
    np.testing.assert_allclose(al.homographies, crop_homography(al.quads, 256))
    assert al.homographies.shape == (n, 3, 3) and al.faces_seen.tolist() == [int(i != 3) for i in range(n)]
    np.testing.assert_allclose(al.homographies_for(1024)[:, :2, 2], crop_homography(al.quads, 1024)[:, :2, 2])

    path = tmp_path / "align.npz"
    al.save(path)
    back = Alignment.load(path)
    np.testing.assert_array_equal(back.quads, al.quads)
    np.testing.assert_array_equal(back.detected, al.detected)
    np.testing.assert_array_equal(back.present, al.present)
    assert back.size == 256
    with pytest.raises(InputError, match="cannot read alignment"):
        Alignment.load(tmp_path / "missing.npz")
