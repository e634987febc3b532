"""Paste-back: masks, feathering, and blending an edited crop into its frame."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import data, draw, transform

import fvedit.pixels as pixels
from fvedit.pipeline import paste
from fvedit.errors import InputError
from fvedit.pixels import crop_homography, ext


@pytest.fixture(params=["default", "twin"])
def backend(request, monkeypatch):
    """Run with the active backend (the extension when built) and with the twin."""
    if request.param == "twin":
        monkeypatch.setattr(ext, "_module", None)
        monkeypatch.setattr(pixels, "_warned", set())
    return request.param


def face_landmarks(size: int, rng) -> np.ndarray:
    """A plausible 68-point layout (jaw, brows, nose, eyes, mouth), jittered, in crop pixels."""
    s = size / 256.0
    jaw = np.stack([np.linspace(52, 204, 17), 110 + 95 * np.sin(np.linspace(0, np.pi, 17))], 1)  # U, chin at 8
    brows = np.stack([np.r_[np.linspace(70, 118, 5), np.linspace(138, 186, 5)], np.full(10, 92.0)], 1)
    nose = np.stack(
        [np.r_[np.full(4, 128.0), np.linspace(112, 144, 5)], np.r_[np.linspace(105, 145, 4), np.full(5, 155.0)]], 1
    )
    eye = lambda cx: np.stack([cx + 14 * np.cos(np.linspace(0, 2 * np.pi, 6, endpoint=False)),  # noqa: E731
                               110 + 6 * np.sin(np.linspace(0, 2 * np.pi, 6, endpoint=False))], 1)
    mouth = np.stack([128 + 26 * np.cos(np.linspace(0, 2 * np.pi, 20, endpoint=False)),
                      182 + 10 * np.sin(np.linspace(0, 2 * np.pi, 20, endpoint=False))], 1)
    lm = np.concatenate([jaw, brows, nose, eye(96), eye(160), mouth]) * s
    assert lm.shape == (68, 2)
    return lm + rng.normal(0, 1.5 * s, lm.shape)


# ----------------------------------------------------------------------------- masks


def test_parser_mask_classes():
    labels = np.arange(19).repeat(2).reshape(2, 19)
    video = paste.parser_mask(labels)
    keep = [c for c in range(19) if c not in (0, 7, 8, 14, 16, 17, 18)]
    assert np.array_equal(video[0], np.isin(np.arange(19).repeat(2)[:19], keep).astype(np.float32))
    assert video.dtype == np.float32 and set(np.unique(video)) == {0.0, 1.0}
    still = paste.parser_mask(labels, background=paste.PARSER_BACKGROUND)  # hair, ears, neck kept
    assert still.sum() == video.sum() + 2 * 4
    soft = np.array([[0.2, 0.7], [0.5, 1.0]], np.float32)
    assert np.array_equal(paste.parser_mask(soft), [[0, 1], [0, 1]])
    assert np.array_equal(paste.parser_mask(soft > 0.6), [[0, 1], [0, 1]])
    with pytest.raises(InputError, match=r"\[S, S\]"):
        paste.parser_mask(np.zeros((2, 2, 2), np.int64))


@pytest.mark.parametrize("forehead", [0.0, 0.6])
def test_hull_mask_covers_landmarks(forehead):
    rng = np.random.default_rng(1)
    lm = face_landmarks(128, rng)
    mask = paste.landmark_hull_mask(lm, 128, forehead=forehead)
    px = np.floor(lm + 0.5).astype(int)  # the pixel holding each landmark
    assert mask[px[:, 1], px[:, 0]].all()
    # it is the hull: it contains skimage's polygon fill of the hull and little more
    from scipy.spatial import ConvexHull

    pts = np.concatenate([lm, paste._forehead_points(lm, forehead)]) if forehead else lm
    hv = pts[ConvexHull(pts).vertices]
    rr, cc = draw.polygon(hv[:, 1], hv[:, 0], (128, 128))
    filled = np.zeros((128, 128), bool)
    filled[rr, cc] = True
    assert mask[filled].all()
    grown = ndimage.binary_dilation(filled, iterations=2)
    assert not (mask.astype(bool) & ~grown).any()


def test_hull_forehead_extends_above_brows():
    lm = face_landmarks(256, np.random.default_rng(2))
    top_brow = int(np.floor(lm[17:27, 1].min()))
    plain = paste.landmark_hull_mask(lm, 256, forehead=0.0)
    tall = paste.landmark_hull_mask(lm, 256, forehead=0.6)
    assert not plain[: top_brow - 1].any()
    rows = np.nonzero(tall.any(1))[0]
    brow_to_chin = lm[8, 1] - lm[17:27, 1].mean()
    assert rows.min() < top_brow - 0.3 * brow_to_chin  # a real forehead, not a sliver
    assert rows.min() > top_brow - 0.9 * brow_to_chin
    assert (tall >= plain).all()


# ----------------------------------------------------------------------------- feathering


def disk_mask(size: int, r: float) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    return (np.hypot(x, y) <= r).astype(np.float32)


@pytest.mark.parametrize("width", [1, 6, 20])
def test_feather_zero_at_border_and_monotone(width):
    size = 96
    full = np.ones((size, size), np.float32)  # worst case: the mask fills the whole crop
    a = paste.feather(full, width, border_px=0)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    for edge in (a[0], a[-1], a[:, 0], a[:, -1]):
        assert not edge.any()
    assert a[size // 2, size // 2] == 1.0
    alpha = paste.feather(disk_mask(size, 40), width)
    c = (size - 1) / 2
    for ang in np.linspace(0, 2 * np.pi, 16, endpoint=False):  # non-increasing from centre outwards
        r = np.arange(0, 48)
        xs, ys = np.clip(np.round(c + r * np.cos(ang)).astype(int), 0, size - 1), np.clip(
            np.round(c + r * np.sin(ang)).astype(int), 0, size - 1
        )
        prof = alpha[ys, xs]
        assert (np.diff(prof) <= 1e-6).all(), prof
    # zero outside the mask; reaches 1 inside; the ramp is about `width` wide
    assert not alpha[disk_mask(size, 40) == 0].any()
    assert alpha[disk_mask(size, 40 - width - 2) == 1].min() == 1.0
    mid = (alpha > 0) & (alpha < 1)
    assert mid.any()


def test_feather_smooth_not_stepped():
    alpha = paste.feather(disk_mask(128, 50), 16)
    prof = alpha[64, 64:]  # centre row, centre to edge
    steps = np.abs(np.diff(prof))
    assert steps.max() < 0.2  # a 16-px ramp rises in small increments


def test_feather_width_zero_is_the_hard_mask():
    rng = np.random.default_rng(3)
    m = (ndimage.gaussian_filter(rng.normal(size=(64, 64)), 4) > 0).astype(np.float32)
    hard = paste.feather(m, 0, border_px=3)
    expect = m.copy()
    expect[:3], expect[-3:], expect[:, :3], expect[:, -3:] = 0, 0, 0, 0
    assert np.array_equal(hard, expect)
    assert np.array_equal(paste.feather(m, 0, border_px=0), m)
    with pytest.raises(InputError, match=">= 0"):
        paste.feather(m, -1)


# ----------------------------------------------------------------------------- paste-back


def test_untouched_pixels_bit_identical(backend):
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    s = 48
    quad = np.array([[30.0, 15.0], [26.0, 70.0], [84.0, 74.0], [88.0, 12.0]])
    h_c2f = crop_homography(quad, s)
    crop = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
    alpha = paste.feather(disk_mask(s, 18), 6)
    out = paste.paste_back(frame, crop, alpha, h_c2f)
    # Independent support: frame pixels whose float64 crop position lies within 2 crop px
    # of a non-zero alpha pixel. Everything else must be bit-identical.
    support = ndimage.binary_dilation(alpha > 0, iterations=2)
    ys, xs = np.mgrid[:90, :120]
    p = np.linalg.inv(h_c2f) @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    u, v = np.round(p[0] / p[2]).astype(int), np.round(p[1] / p[2]).astype(int)
    inside = (u >= 0) & (u < s) & (v >= 0) & (v < s)
    near = np.zeros(xs.size, bool)
    near[inside] = support[v[inside], u[inside]]
    near = near.reshape(90, 120)
    assert np.array_equal(out[~near], frame[~near])
    changed = (out != frame).any(-1)
    assert changed.sum() > 200 and not (changed & ~near).any()
    # where alpha == 1 the frame takes the crop's (resampled) colour: compare to a warp
    # of the crop into the frame done with skimage (float64, bilinear)
    full = paste.feather(disk_mask(s, 18), 6) == 1.0
    core = np.zeros(xs.size, bool)
    core[inside] = ndimage.binary_erosion(full, iterations=2)[v[inside], u[inside]]
    core = core.reshape(90, 120)
    ref = transform.warp(crop, transform.ProjectiveTransform(np.linalg.inv(h_c2f)), order=1,
                         output_shape=(90, 120), preserve_range=True)
    assert np.abs(out[core].astype(float) - ref[core]).max() <= 1.0


def test_paste_back_batch_matches_single(backend):
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (2, 50, 60, 3), dtype=np.uint8)
    crops = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    alpha = paste.feather(disk_mask(32, 12), 4)
    homs = np.stack([crop_homography(np.array([[10.0, 8], [12, 40], [44, 42], [42, 6]]) + k, 32) for k in (0, 3)])
    batch = paste.paste_back(frames, crops, np.stack([alpha, alpha]), homs)
    for i in range(2):
        assert np.array_equal(batch[i], paste.paste_back(frames[i], crops[i], alpha, homs[i]))
    with pytest.raises(InputError, match="singular"):
        paste.paste_back(frames[0], crops[0], alpha, np.zeros((3, 3)))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_round_trip_unchanged_crop(backend):
    """Warp a face crop out and paste it back unchanged: the frame barely changes."""
    frame = np.ascontiguousarray(data.astronaut()[:384, 64:448])  # a real face, 384x384
    quad = np.array([[150.0, 40.0], [140.0, 250.0], [350.0, 260.0], [360.0, 50.0]])  # rotated, around the head
    s = 256
    h_c2f = crop_homography(quad, s)
    crop = pixels.warp_crops(frame[None], h_c2f[None], s)[0]
    alpha = paste.feather(np.ones((s, s), np.float32), 8)
    out = paste.paste_back(frame, crop, alpha, h_c2f)
    # the footprint interior (alpha == 1 mapped into the frame)
    ys, xs = np.mgrid[:384, :384]
    p = np.linalg.inv(h_c2f) @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    u, v = p[0] / p[2], p[1] / p[2]
    interior = ((u > 12) & (u < s - 13) & (v > 12) & (v < s - 13)).reshape(384, 384)
    assert interior.sum() > 20000
    assert _psnr(out[interior], frame[interior]) > 33.0
    assert np.array_equal(out[~interior & ~ndimage.binary_dilation(interior, iterations=20)],
                          frame[~interior & ~ndimage.binary_dilation(interior, iterations=20)])
    # and the round trip is not a no-op: a blank crop would be far off
    black = paste.paste_back(frame, np.zeros_like(crop), alpha, h_c2f)
    assert _psnr(black[interior], frame[interior]) < 15.0


def _delta_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    size = 32
    quad = np.array([[20.0, 15.0], [18.0, 70.0], [75.0, 72.0], [77.0, 17.0]])
    hom = crop_homography(quad, size)
    edited = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    reference = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    alpha = paste.feather(np.pad(np.ones((size - 8, size - 8), np.float32), 4), 3.0)
    return hom, edited, reference, alpha


def test_delta_paste_on_a_plate_equal_to_the_reference_is_the_full_paste():
    """Where the frame is what the reference crop shows (a flat plate of one colour c), frame +
    a (edit - c) and frame (1 - a) + a edit are the same number, so the two modes must agree to
    the one level that rounding the two float expressions can differ by; elsewhere the delta
    paste keeps the frame exactly."""
    hom, edited, _, alpha = _delta_case()
    c = 97
    frame = np.full((90, 100, 3), c, np.uint8)
    reference = np.full_like(edited, c)
    full = paste.paste_back(frame, edited, alpha, hom)
    delta = paste.paste_delta(frame, edited, reference, alpha, hom)
    diff = np.abs(full.astype(int) - delta.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    assert np.any(delta != frame)  # the edit did land
    assert np.array_equal(delta[:10], frame[:10])  # outside the mask's reach nothing moves


def test_delta_paste_adds_the_change_to_the_frames_own_detail():
    """On a textured frame the delta paste is frame + a * bilinear(edit - reference): check it
    against the full paste of the two crops (linear in the crop, so blend(edit) - blend(ref) =
    a * bilinear(edit - ref)) to within the two rounding steps, and a zero change returns the frame."""
    hom, edited, reference, alpha = _delta_case(1)
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (90, 100, 3), dtype=np.uint8)
    plate = np.zeros_like(frame)
    change = (paste.paste_back(plate, edited, alpha, hom).astype(int)
              - paste.paste_back(plate, reference, alpha, hom).astype(int))
    expected = np.clip(frame.astype(int) + change, 0, 255)
    got = paste.paste_delta(frame, edited, reference, alpha, hom).astype(int)
    assert np.abs(got - expected).max() <= 2
    assert np.array_equal(paste.paste_delta(frame, edited, edited, alpha, hom), frame)
