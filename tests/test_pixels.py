"""The pixel kernels: C++ extension vs PyTorch twin vs an independent NumPy loop.

Tolerance between extension and twin: both run the same float32 operation sequence
(csrc/pixel_math.h, built with -ffp-contract=off), so they agree bit for bit here. The
only legitimate source of difference is a toolchain that still fuses a*b+c into one FMA
(one rounding instead of two): that moves a sample value by ~1e-5 of a grey level, which
flips floor(v + 0.5) only when v lies that close to a .5 tie, i.e. by at most 1 level on
a vanishing fraction of pixels. We allow max 1 level on <= 0.1 % of values.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fvedit.pixels as pixels
from fvedit.errors import FveditError, InputError
from fvedit.pixels import crop_homography, ext, twin

REPO = Path(__file__).resolve().parents[1]


def _build_extension(tmp: Path):
    """Compile the CPU kernels into tmp when no built extension is importable."""
    if shutil.which("cmake") is None:
        pytest.skip("fvedit._pixelops is not built and cmake is unavailable to build it")
    cfg = ["cmake", "-S", str(REPO), "-B", str(tmp), "-DFVEDIT_CUDA=OFF", "-DCMAKE_BUILD_TYPE=Release"]
    for cmd in (cfg, ["cmake", "--build", str(tmp), "-j", "2"]):
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, f"building the extension failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    so = next(tmp.glob("_pixelops*.so"))
    spec = importlib.util.spec_from_file_location("fvedit._pixelops", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pixelops(tmp_path_factory):
    mod = ext.load()
    return mod if mod is not None else _build_extension(tmp_path_factory.mktemp("pixelops_build"))


@pytest.fixture
def use_ext(monkeypatch, pixelops):
    """Route fvedit.pixels through the extension."""
    monkeypatch.setattr(ext, "_module", pixelops)
    return pixelops


@pytest.fixture
def use_twin(monkeypatch):
    """Simulate a missing extension (fresh one-time-warning state)."""
    monkeypatch.setattr(ext, "_module", None)
    monkeypatch.setattr(pixels, "_warned", set())


def random_quad(rng, w: int, h: int, kind: str) -> np.ndarray:
    """TL, BL, BR, TR corners of a rotated, perspective-jittered square in a w x h frame."""
    if kind == "inside":
        c, r = rng.uniform(0.35, 0.65, 2) * [w, h], rng.uniform(0.15, 0.3) * min(w, h)
    elif kind == "crossing":  # centre near a border or corner: part of the quad is off-frame
        c, r = rng.choice([0.0, 1.0], 2) * [w, h] + rng.normal(0, 3, 2), rng.uniform(0.2, 0.5) * min(w, h)
    elif kind == "tiny":  # a face a few pixels wide
        c, r = rng.uniform(0.2, 0.8, 2) * [w, h], rng.uniform(1.0, 2.5)
    elif kind == "huge":  # zoomed in past the frame
        c, r = rng.uniform(0.3, 0.7, 2) * [w, h], rng.uniform(1.0, 2.0) * max(w, h)
    elif kind == "outside":
        c, r = np.array([-3.0 * w, 2.0 * h]), 0.2 * min(w, h)
    else:
        raise ValueError(kind)
    ang = rng.uniform(0, 2 * np.pi)
    x = r * np.array([np.cos(ang), np.sin(ang)])
    y = np.array([-x[1], x[0]])
    quad = np.array([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad + rng.normal(0, 0.08 * r, (4, 2))  # perspective


def random_case(seed: int, n: int, h: int, w: int, s: int, kinds: tuple[str, ...]):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    homs = np.stack([crop_homography(random_quad(rng, w, h, kinds[i % len(kinds)]), s) for i in range(n)])
    crops = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
    alphas = rng.uniform(-0.3, 1.3, (n, s, s)).clip(0, 1).astype(np.float32)  # with exact 0s and 1s
    return frames, homs, crops, alphas


def assert_close_u8(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max(initial=0) <= 1, f"max diff {diff.max()}"
    assert (diff > 0).mean() <= 1e-3, f"{(diff > 0).sum()} of {diff.size} values differ"


CASES = [  # seed, N, H, W, S, quad kinds
    (0, 1, 37, 53, 8, ("inside",)),
    (1, 3, 64, 97, 31, ("inside", "crossing", "tiny")),
    (2, 2, 120, 90, 64, ("tiny", "huge")),
    (3, 4, 33, 33, 17, ("crossing", "outside", "inside", "huge")),
    (4, 2, 1, 5, 3, ("huge", "inside")),  # one-row frame
]


# ----------------------------------------------------------------------------- ext vs twin


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c[0]}")
def test_warp_extension_matches_twin(pixelops, case):
    frames, homs, _, _ = random_case(*case)
    s = case[4]
    got = pixelops.warp_crops(frames, homs.astype(np.float32), s)
    ref = twin.warp_crops(torch.from_numpy(frames), torch.from_numpy(homs), s).numpy()
    assert_close_u8(got, ref)
    assert ref.any(), "degenerate case: the twin produced an all-black crop batch"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c[0]}")
def test_paste_extension_matches_twin(pixelops, case):
    frames, homs, crops, alphas = random_case(*case)
    inv = np.linalg.inv(homs)
    got = frames.copy()
    pixelops.paste_blend_inplace(got, crops, alphas, inv.astype(np.float32), inv)
    ref = twin.paste_blend_batch(
        torch.from_numpy(frames), torch.from_numpy(crops), torch.from_numpy(alphas), torch.from_numpy(inv)
    ).numpy()
    assert_close_u8(got, ref)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c[0]}")
def test_delta_paste_extension_matches_twin(pixelops, case):
    """The delta paste: signed float deltas (edit - reference, up to +-255 so results clip at both
    ends), the same taps and tap order as the blend; same tolerance as above."""
    frames, homs, _, alphas = random_case(*case)
    deltas = np.random.default_rng(case[0]).uniform(-255, 255, (*alphas.shape, 3)).astype(np.float32)
    inv = np.linalg.inv(homs)
    got = frames.copy()
    pixelops.paste_delta_inplace(got, deltas, alphas, inv.astype(np.float32), inv)
    ref = twin.paste_delta_batch(
        torch.from_numpy(frames), torch.from_numpy(deltas), torch.from_numpy(alphas), torch.from_numpy(inv)
    ).numpy()
    assert_close_u8(got, ref)
    if case[0] in (1, 2):  # cases with the crop inside the frame: the paste moved pixels
        assert np.any(got != frames)


def test_public_delta_paste_uses_the_extension(use_ext, monkeypatch):
    frames, homs, _, alphas = random_case(*CASES[1])
    deltas = np.random.default_rng(9).normal(0, 40, (*alphas.shape, 3)).astype(np.float32)
    inv = np.linalg.inv(homs)
    calls = []
    real = use_ext.paste_delta_inplace

    class Spy:
        def __getattr__(self, name):
            return getattr(use_ext, name)

        def paste_delta_inplace(self, *a):
            calls.append(1)
            return real(*a)

    monkeypatch.setattr(ext, "_module", Spy())
    got = pixels.paste_delta_batch(frames, deltas, alphas, inv)
    assert calls == [1] and not np.array_equal(got, frames)
    ref = twin.paste_delta_batch(*(torch.from_numpy(a) for a in (frames, deltas, alphas, inv))).numpy()
    assert_close_u8(got, ref)
    buf = frames.copy()
    assert pixels.paste_delta_batch(buf, deltas, alphas, inv, inplace=True) is buf
    assert np.array_equal(buf, got)


def test_public_api_uses_extension_and_matches_twin(use_ext):
    frames, homs, crops, alphas = random_case(7, 3, 48, 71, 23, ("inside", "crossing", "tiny"))
    assert pixels.backend() in ("cpp", "cpp+cuda")
    got = pixels.warp_crops(frames, homs, 23)
    assert_close_u8(got, twin.warp_crops(torch.from_numpy(frames), torch.from_numpy(homs), 23).numpy())
    inv = np.linalg.inv(homs)
    pasted = pixels.paste_blend_batch(frames, crops, alphas, inv)
    ref = twin.paste_blend_batch(*(torch.from_numpy(a) for a in (frames, crops, alphas, inv))).numpy()
    assert_close_u8(pasted, ref)
    # single-frame form == batch form; torch in -> torch out
    one = pixels.paste_blend(torch.from_numpy(frames[1]), crops[1], alphas[1], inv[1])
    assert isinstance(one, torch.Tensor) and np.array_equal(one.numpy(), pasted[1])
    # non-contiguous input is accepted and gives the same crops
    strided = np.ascontiguousarray(frames[:, :, ::-1])[:, :, ::-1]
    assert not strided.flags.c_contiguous
    assert np.array_equal(pixels.warp_crops(strided, homs, 23), got)


def test_inplace_paste_writes_into_frames(use_ext):
    frames, homs, crops, alphas = random_case(8, 2, 40, 40, 16, ("inside",))
    inv = np.linalg.inv(homs)
    expected = pixels.paste_blend_batch(frames, crops, alphas, inv)
    buf = frames.copy()
    assert pixels.paste_blend_batch(buf, crops, alphas, inv, inplace=True) is buf
    assert np.array_equal(buf, expected) and not np.array_equal(buf, frames)
    t = torch.from_numpy(frames.copy())
    pixels.paste_blend(t[0], crops[0], alphas[0], inv[0], inplace=True)
    assert np.array_equal(t[0].numpy(), expected[0]) and np.array_equal(t[1].numpy(), frames[1])


# ----------------------------------------------------------------------------- twin vs NumPy loop


def _bilinear64(img: np.ndarray, x: float, y: float, clamp: bool) -> np.ndarray:
    """Float64 bilinear sample of img [h, w, C]: zero padding, or edge clamp."""
    h, w = img.shape[:2]
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - x0, y - y0
    acc = np.zeros(img.shape[2])
    for xi, yi, wgt in ((x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                        (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)):
        if clamp:
            xi, yi = min(max(xi, 0), w - 1), min(max(yi, 0), h - 1)
        elif not (0 <= xi < w and 0 <= yi < h):
            continue
        acc += wgt * img[yi, xi]
    return acc


def _loop_warp(frames, homs, s):
    n, h, w, _ = frames.shape
    out = np.zeros((n, s, s, 3), np.uint8)
    for i in range(n):
        for v in range(s):
            for u in range(s):
                p = homs[i] @ np.array([u, v, 1.0])
                x, y = p[0] / p[2], p[1] / p[2]
                if -1 < x < w and -1 < y < h:
                    val = _bilinear64(frames[i].astype(np.float64), x, y, clamp=False)
                    out[i, v, u] = np.floor(np.clip(val, 0, 255) + 0.5)
    return out


def _loop_paste(frames, crops, alphas, homs_f2c):
    out = frames.copy()
    n, h, w, _ = frames.shape
    s = crops.shape[1]
    for i in range(n):
        for y in range(h):
            for x in range(w):
                p = homs_f2c[i] @ np.array([x, y, 1.0])
                u, v = p[0] / p[2], p[1] / p[2]
                if not (-1 < u < s and -1 < v < s):
                    continue
                a = _bilinear64(alphas[i][..., None].astype(np.float64), u, v, clamp=False)[0]
                if a <= 0:
                    continue
                c = _bilinear64(crops[i].astype(np.float64), u, v, clamp=True)
                out[i, y, x] = np.floor(np.clip(frames[i, y, x] * (1 - a) + c * a, 0, 255) + 0.5)
    return out


def _assert_near_loop(a: np.ndarray, b: np.ndarray) -> None:
    # float64 loop vs float32 twin: at most 1 level where a value sits next to a .5 tie
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).sum() <= max(2, diff.size // 200), diff.max()


@pytest.mark.parametrize("seed,kinds", [(10, ("inside", "crossing")), (11, ("tiny", "huge")), (12, ("crossing",))])
def test_twin_matches_numpy_loop(seed, kinds):
    frames, homs, crops, alphas = random_case(seed, 2, 11, 13, 9, kinds)
    warp = twin.warp_crops(torch.from_numpy(frames), torch.from_numpy(homs), 9).numpy()
    _assert_near_loop(warp, _loop_warp(frames, homs, 9))
    inv = np.linalg.inv(homs)
    pasted = twin.paste_blend_batch(*(torch.from_numpy(a) for a in (frames, crops, alphas, inv))).numpy()
    _assert_near_loop(pasted, _loop_paste(frames, crops, alphas, inv))
    assert not np.array_equal(pasted, frames)


# ----------------------------------------------------------------------------- known answers


@pytest.fixture(params=["ext", "twin"])
def either_backend(request, monkeypatch, pixelops):
    monkeypatch.setattr(ext, "_module", pixelops if request.param == "ext" else None)
    monkeypatch.setattr(pixels, "_warned", set())
    return request.param


def test_identity_and_integer_shift(either_backend):
    rng = np.random.default_rng(20)
    frames = rng.integers(0, 256, (2, 19, 23, 3), dtype=np.uint8)
    eye = np.stack([np.eye(3)] * 2)
    assert np.array_equal(pixels.warp_crops(frames, eye, 19), frames[:, :19, :19])
    big = pixels.warp_crops(frames, eye, 25)  # larger than the frame: zero padding
    assert np.array_equal(big[:, :19, :23], frames) and not big[:, 19:].any() and not big[:, :, 23:].any()
    shift = np.stack([np.eye(3)] * 2)
    shift[:, 0, 2], shift[:, 1, 2] = 5, -3  # crop (u, v) <- frame (u + 5, v - 3)
    crops = pixels.warp_crops(frames, shift, 16)
    ref = np.zeros_like(crops)
    ref[:, 3:, :] = frames[:, 0:13, 5:21]
    assert np.array_equal(crops, ref)


def test_half_pixel_shift_rounds_half_up(either_backend):
    rng = np.random.default_rng(21)
    frames = rng.integers(0, 256, (1, 6, 9, 3), dtype=np.uint8)
    shift = np.eye(3)[None].copy()
    shift[0, 0, 2] = 0.5
    crops = pixels.warp_crops(frames, shift, 6)[0].astype(np.int32)
    f = frames[0].astype(np.int32)
    assert np.array_equal(crops[:, :6], (f[:, :6] + f[:, 1:7] + 1) // 2)


def test_paste_identity_known_blends(either_backend):
    rng = np.random.default_rng(22)
    frame = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    crop = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    full = pixels.paste_blend(frame, crop, np.ones((12, 12), np.float32), np.eye(3))
    assert np.array_equal(full, crop)
    half = pixels.paste_blend(frame, crop, np.full((12, 12), 0.5, np.float32), np.eye(3))
    assert np.array_equal(half.astype(np.int32), (frame.astype(np.int32) + crop + 1) // 2)
    alpha = np.zeros((12, 12), np.float32)
    alpha[4:8, 4:8] = 1.0  # bilinear alpha at integer positions is exact: only this block changes
    part = pixels.paste_blend(frame, crop, alpha, np.eye(3))
    expect = frame.copy()
    expect[4:8, 4:8] = crop[4:8, 4:8]
    assert np.array_equal(part, expect)


# ----------------------------------------------------------------------------- CUDA entry points


def test_cuda_entry_points(pixelops, use_ext):
    if not pixelops.built_with_cuda:
        assert not hasattr(pixelops, "warp_crops_cuda") and not ext.cuda_kernels_built()
        with pytest.raises(FveditError, match="without CUDA"):
            ext.require_cuda()
        return
    assert callable(pixelops.warp_crops_cuda) and callable(pixelops.paste_blend_cuda)
    assert ext.cuda_kernels_built() and pixels.backend() == "cpp+cuda"
    if pixelops.cuda_device_count() == 0:
        h = np.eye(3, dtype=np.float32)[None]
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            pixelops.warp_crops_cuda(1, 1, 8, 8, h, 1, 4, 0)  # dummy pointers: must not be touched
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            pixelops.paste_blend_cuda(1, 1, 8, 8, 1, 1, 4, h, h.astype(np.float64), 0)
        with pytest.raises(FveditError, match="no CUDA device"):
            ext.require_cuda()


def test_installed_extension_is_reported_when_missing(monkeypatch):
    """A missing or CPU-only build is named by `ext.status()` (what `fvedit info` prints), never silent."""
    monkeypatch.setenv("FVEDIT_PIXELS", "twin")
    ext.reset()
    try:
        assert ext.load() is None and "disabled by FVEDIT_PIXELS=twin" in ext.status()
        monkeypatch.delenv("FVEDIT_PIXELS")
        import fvedit

        monkeypatch.setitem(sys.modules, "fvedit._pixelops", None)  # import fails as for a failed build
        monkeypatch.delattr(fvedit, "_pixelops", raising=False)
        monkeypatch.setattr(ext, "_load_shadowed_copy", lambda: None)
        ext.reset()
        assert ext.load() is None
        assert "not built or not importable" in ext.status() and "pip install" in ext.status()
    finally:
        ext.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_kernels_match_twin(monkeypatch):
    """On a GPU machine the installed extension must have its CUDA kernels: a failed or CPU-only
    build fails here (with `ext.status()`'s reason) instead of skipping."""
    ext.reset()
    installed = ext.load()
    assert installed is not None and installed.built_with_cuda, f"CUDA pixel kernels missing: {ext.status()}"
    monkeypatch.setattr(ext, "_module", installed)
    frames, homs, crops, alphas = random_case(30, 3, 71, 64, 33, ("inside", "crossing", "tiny"))
    fd = torch.from_numpy(frames).cuda()
    got = pixels.warp_crops(fd, homs, 33)
    assert got.is_cuda
    assert_close_u8(got.cpu().numpy(), twin.warp_crops(torch.from_numpy(frames), torch.from_numpy(homs), 33).numpy())
    inv = np.linalg.inv(homs)
    pasted = pixels.paste_blend_batch(fd, torch.from_numpy(crops).cuda(), torch.from_numpy(alphas).cuda(), inv)
    ref = twin.paste_blend_batch(*(torch.from_numpy(a) for a in (frames, crops, alphas, inv))).numpy()
    assert_close_u8(pasted.cpu().numpy(), ref)


# ----------------------------------------------------------------------------- fallback, errors


def test_fallback_warns_once_and_matches(pixelops, use_twin, caplog):
    frames, homs, crops, alphas = random_case(40, 2, 30, 41, 15, ("inside", "crossing"))
    inv = np.linalg.inv(homs)
    with caplog.at_level(logging.WARNING, logger="fvedit.pixels"):
        assert pixels.backend() == "twin"
        w1 = pixels.warp_crops(frames, homs, 15)
        w2 = pixels.warp_crops(torch.from_numpy(frames), homs, 15)
        p1 = pixels.paste_blend_batch(frames, crops, alphas, inv)
    msgs = [r.getMessage() for r in caplog.records if "pixel extension" in r.getMessage()]
    assert msgs == ["fvedit: C++ pixel extension not built; using the PyTorch twin (slower)"]
    assert isinstance(w1, np.ndarray) and isinstance(w2, torch.Tensor) and np.array_equal(w1, w2.numpy())
    assert_close_u8(w1, pixelops.warp_crops(frames, homs.astype(np.float32), 15))
    p2 = frames.copy()
    pixelops.paste_blend_inplace(p2, crops, alphas, inv.astype(np.float32), inv)
    assert_close_u8(p1, p2)


def test_force_twin_env(monkeypatch):
    monkeypatch.setenv("FVEDIT_PIXELS", "twin")
    monkeypatch.setattr(ext, "_module", ext._UNSET)
    assert ext.load() is None and pixels.backend() == "twin"


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda f, h, c, a: pixels.warp_crops(f.astype(np.float32), h, 8), "uint8"),
        (lambda f, h, c, a: pixels.warp_crops(f[..., :2], h, 8), r"\[N, H, W, 3\]"),
        (lambda f, h, c, a: pixels.warp_crops(f, h[:, :2], 8), r"\[2, 3, 3\]"),
        (lambda f, h, c, a: pixels.warp_crops(f, h * np.nan, 8), "NaN"),
        (lambda f, h, c, a: pixels.warp_crops(f, h, 0), "positive integer"),
        (lambda f, h, c, a: pixels.paste_blend_batch(f, c, a * 2, h), r"\[0, 1\]"),
        (lambda f, h, c, a: pixels.paste_blend_batch(f, c, a[:, :4], h), "alphas must have shape"),
        (lambda f, h, c, a: pixels.paste_blend_batch(f, c[:1], a, h), "crops must have shape"),
        (lambda f, h, c, a: pixels.paste_blend(f, c, a, h), "one frame"),
    ],
)
def test_bad_inputs_raise_input_error(use_ext, call, match):
    frames, homs, crops, alphas = random_case(50, 2, 10, 10, 8, ("inside",))
    with pytest.raises(InputError, match=match):
        call(frames, homs, crops, alphas)


def test_crop_homography_maps_corners():
    quad = np.array([[10.0, 20.0], [12.0, 80.0], [75.0, 83.0], [70.0, 18.0]])
    hom = crop_homography(quad, 64)
    for (u, v), q in zip([(-0.5, -0.5), (-0.5, 63.5), (63.5, 63.5), (63.5, -0.5)], quad):
        p = hom @ [u, v, 1.0]
        np.testing.assert_allclose(p[:2] / p[2], q, atol=1e-9)
    with pytest.raises(InputError, match="degenerate"):
        crop_homography(np.array([[0.0, 0], [1, 1], [2, 2], [3, 3]]), 8)
