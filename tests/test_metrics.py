"""fvedit.metrics: identity (TL-ID, TG-ID, preservation), PSNR/SSIM/MS-SSIM, warping error, report outputs.

Image metrics are checked against scikit-image and NumPy/SciPy twins, identity metrics against
brute-force pair loops, the flow against known translations. End-to-end runs use 8-frame 320x240
synthetic face videos and the tiny preset's untrained demo weights: its identity net is random,
so the end-to-end identity tests prove the plumbing (same crops, same quads, the right ratios),
not face-recognition quality.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from scipy import ndimage
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from typer.testing import CliRunner

from fvedit.errors import InputError
from fvedit.metrics import compute_metrics, identity_metrics, print_report, write_json, write_plot
from fvedit.metrics import flow as mflow
from fvedit.metrics import image as mimage
from fvedit.metrics.identity import mean_adjacent_cosine, mean_pairwise_cosine
from fvedit.metrics.report import (
    BASELINE_COLOUR,
    EDITED_ID_COLOUR,
    EDITED_WARP_COLOUR,
    PSNR_COLOUR,
    WORST_COLOUR,
)
from fvedit.pipeline.paste import landmark_hull_mask
from fvedit.synth import FaceScene, make_face_video
from fvedit.video import iter_frames, probe, write_video
from fvedit.weights.demo import demo_weights

N = 8
SIZE = (320, 240)
FACE_SCALE = 0.6


@pytest.fixture(autouse=True)
def _no_imported_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("FVEDIT_WEIGHTS_DIR", str(tmp_path / "no-weights"))


@pytest.fixture(scope="module")
def weights():
    return demo_weights("tiny")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return tmp_path_factory.mktemp("metrics")


@pytest.fixture(scope="module")
def face_video(media):
    return make_face_video(media / "face.mp4", frames=N, size=SIZE, audio=False, face_scale=FACE_SCALE)


@pytest.fixture(scope="module")
def cat_video(media, face_video):
    """The face video whose second half shows scikit-image's cat over the (ground-truth) face box."""
    scene = FaceScene(width=SIZE[0], height=SIZE[1], frames=N, faces=1, face_scale=FACE_SCALE)
    cat = data.chelsea()[20:260, 90:330]

    def swap(index: int, rgb: np.ndarray) -> np.ndarray:
        if index < N // 2:
            return rgb
        x0, y0, x1, y1 = scene.face_boxes(index)[0]
        m = 0.35 * (x1 - x0)
        x0, y0 = max(int(x0 - m), 0), max(int(y0 - m), 0)
        x1, y1 = min(int(x1 + m), SIZE[0]), min(int(y1 + m), SIZE[1])
        out = rgb.copy()
        out[y0:y1, x0:x1] = np.asarray(Image.fromarray(cat).resize((x1 - x0, y1 - y0)))
        return out

    frames = [swap(f.index, f.rgb) for f in iter_frames(face_video)]
    return write_video(media / "cat.mp4", frames, probe(face_video), crf=12)


@pytest.fixture(scope="module")
def self_report(face_video, weights):
    return compute_metrics(face_video, face_video, weights, "cpu")


@pytest.fixture(scope="module")
def cat_report(face_video, cat_video, weights):
    return compute_metrics(face_video, cat_video, weights, "cpu")


def rng_images(shape, seed=0, noise=0.1):
    """A smooth random image in [0, 1] and a noisy copy (both float64, [B, C, H, W])."""
    g = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(g.random(shape), sigma=(0, 0, 2, 2))
    a = (a - a.min()) / (a.max() - a.min())
    b = np.clip(a + noise * g.standard_normal(shape), 0, 1)
    return torch.from_numpy(a), torch.from_numpy(b)


# ------------------------------------------------------------------------------- identity


def brute_force_relative(orig: np.ndarray, edit: np.ndarray) -> tuple[float, float]:
    def unit(e):
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    def tl(e):
        u = unit(e)
        return np.mean([u[t] @ u[t + 1] for t in range(len(u) - 1)])

    def tg(e):
        u = unit(e)
        return np.mean([u[i] @ u[j] for i in range(len(u)) for j in range(i + 1, len(u))])

    return tl(edit) / tl(orig), tg(edit) / tg(orig)


def test_tl_tg_id_match_brute_force_pair_loops():
    g = np.random.default_rng(1)
    base = g.standard_normal(16)
    orig = base + 0.3 * g.standard_normal((7, 16))
    edit = 3.0 * (base + 0.6 * g.standard_normal((7, 16)))  # scale must not matter
    m = identity_metrics(orig, edit)
    tl, tg = brute_force_relative(orig, edit)
    assert m.tl_id == pytest.approx(tl, abs=1e-12)
    assert m.tg_id == pytest.approx(tg, abs=1e-12)
    mo, me = orig / np.linalg.norm(orig, axis=1, keepdims=True), edit / np.linalg.norm(edit, axis=1, keepdims=True)
    mo, me = mo.mean(0), me.mean(0)
    assert m.preservation == pytest.approx(mo @ me / np.linalg.norm(mo) / np.linalg.norm(me), abs=1e-12)
    assert m.sim_to_first_edited.shape == (7,) and m.sim_to_first_edited[0] == pytest.approx(1.0)


def test_identity_of_a_video_with_itself_is_one():
    g = np.random.default_rng(2)
    e = g.standard_normal(32) + 0.5 * g.standard_normal((9, 32))
    m = identity_metrics(e, e.copy())
    assert (m.tl_id, m.tg_id) == (1.0, 1.0)
    assert m.preservation == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(m.sim_to_original, 1.0, atol=1e-12)


def test_another_identity_in_the_second_half_drops_tg_more_than_tl():
    g = np.random.default_rng(3)
    a, b = g.standard_normal(64), g.standard_normal(64)
    orig = a + 0.2 * g.standard_normal((10, 64))
    edit = np.concatenate([a + 0.2 * g.standard_normal((5, 64)), b + 0.2 * g.standard_normal((5, 64))])
    m = identity_metrics(orig, edit)
    assert m.tg_id < m.tl_id - 0.2  # half of all pairs cross the cut, one adjacent pair of nine
    assert m.tl_id < 1.0 and m.preservation < 0.9
    assert m.sim_to_first_edited[5:].max() < m.sim_to_first_edited[1:5].min()


def test_pairwise_cosine_closed_form_and_short_videos():
    e = np.random.default_rng(4).standard_normal((5, 8))
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    gram = u @ u.T
    assert mean_pairwise_cosine(e) == pytest.approx(gram[np.triu_indices(5, 1)].mean(), abs=1e-12)
    assert mean_adjacent_cosine(e) == pytest.approx(np.diag(gram, 1).mean(), abs=1e-12)
    one = identity_metrics(e[:1], e[:1])
    assert np.isnan(one.tl_id) and np.isnan(one.tg_id) and one.preservation == pytest.approx(1.0)
    alternating = np.array([[1.0, 0.0], [-1.0, 0.1]] * 3)  # the original's own consistency is negative
    assert np.isnan(identity_metrics(alternating, alternating).tl_id)
    with pytest.raises(InputError, match="same non-empty shape"):
        identity_metrics(e, e[:3])


# ---------------------------------------------------------------------------------- image


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (2, 3, 48, 80)], ids=["gray64", "rgb48x80"])
def test_ssim_matches_scikit_image(shape):
    a, b = rng_images(shape, seed=5)
    got = mimage.ssim(b, a)
    for i in range(shape[0]):
        ref = structural_similarity(
            a[i].permute(1, 2, 0).numpy(), b[i].permute(1, 2, 0).numpy(), data_range=1.0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1,
        )
        assert float(got[i]) == pytest.approx(ref, abs=1e-9)


def test_masked_ssim_averages_scikit_images_map_inside_the_mask():
    a, b = rng_images((1, 1, 60, 60), seed=6)
    mask = torch.zeros(1, 1, 60, 60, dtype=torch.float64)
    mask[..., 10:40, 20:55] = 1
    _, s_map = structural_similarity(
        a[0, 0].numpy(), b[0, 0].numpy(), data_range=1.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, full=True,
    )
    inner, inner_mask = s_map[5:-5, 5:-5], mask[0, 0, 5:-5, 5:-5].numpy() > 0
    assert float(mimage.ssim(a, b, mask)[0]) == pytest.approx(inner[inner_mask].mean(), abs=1e-9)


def test_psnr_matches_scikit_image_and_masks():
    a, b = rng_images((2, 3, 32, 32), seed=7)
    got = mimage.psnr(b, a)
    for i in range(2):
        ref = peak_signal_noise_ratio(a[i].numpy(), b[i].numpy(), data_range=1.0)
        assert float(got[i]) == pytest.approx(ref, abs=1e-9)
    mask = torch.zeros(2, 32, 32, dtype=torch.float64)
    mask[:, 4:20, 8:30] = 1
    sq = ((a - b) ** 2).numpy()
    for i in range(2):
        mse = sq[i][:, 4:20, 8:30].mean()
        assert float(mimage.psnr(b, a, mask)[i]) == pytest.approx(10 * np.log10(1 / mse), abs=1e-9)
    assert torch.all(mimage.psnr(a, a.clone()) == mimage.PSNR_CAP_DB)


def test_all_ones_mask_is_the_whole_crop():
    a, b = rng_images((2, 3, 64, 64), seed=8)
    ones = torch.ones(2, 1, 64, 64, dtype=torch.float64)
    for fn in (mimage.psnr, mimage.ssim, mimage.ms_ssim):
        torch.testing.assert_close(fn(a, b, ones), fn(a, b), rtol=0, atol=1e-12)


def test_ms_ssim_is_one_for_identical_images_and_falls_with_noise():
    a, _ = rng_images((1, 3, 256, 256), seed=9, noise=0)
    assert float(mimage.ms_ssim(a, a.clone())[0]) == pytest.approx(1.0, abs=1e-9)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(a.shape, generator=g, dtype=torch.float64)
    values = [float(mimage.ms_ssim(a, (a + s * noise).clamp(0, 1))[0]) for s in (0.01, 0.03, 0.1, 0.3)]
    assert all(x > y for x, y in zip(values, values[1:])), values
    assert values[0] > 0.9 and values[-1] < 0.7


def test_ms_ssim_scales_and_a_numpy_twin():
    assert mimage.ms_ssim_scales(256, 256) == 5
    assert mimage.ms_ssim_scales(64, 64) == 3
    assert mimage.ms_ssim_scales(16, 40) == 1
    with pytest.raises(InputError, match="smaller than the 11 px"):
        mimage.ms_ssim_scales(10, 64)
    a, b = rng_images((1, 1, 64, 64), seed=10)
    # one scale is plain SSIM
    assert float(mimage.ms_ssim(a, b, scales=1)[0]) == pytest.approx(float(mimage.ssim(a, b)[0]), abs=1e-12)
    # two scales: cs at full size (SciPy Gaussian, truncate 3.5 = 11 taps) and SSIM of the 2x2-pooled pair
    x, y = a[0, 0].numpy(), b[0, 0].numpy()

    def blur(v):
        return ndimage.gaussian_filter(v, 1.5, truncate=3.5)[5:-5, 5:-5]

    c2 = 0.03**2
    mx, my = blur(x), blur(y)
    cs = np.mean((2 * (blur(x * y) - mx * my) + c2) / (blur(x * x) - mx**2 + blur(y * y) - my**2 + c2))
    pool = lambda v: v.reshape(32, 2, 32, 2).mean(axis=(1, 3))  # noqa: E731
    s2 = structural_similarity(pool(x), pool(y), data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    w0, w1 = mimage.MS_SSIM_WEIGHTS[:2]
    expected = max(cs, 0) ** (w0 / (w0 + w1)) * max(s2, 0) ** (w1 / (w0 + w1))
    assert float(mimage.ms_ssim(a, b, scales=2)[0]) == pytest.approx(expected, abs=1e-9)


def test_image_metric_inputs_are_checked():
    a, _ = rng_images((1, 3, 32, 32))
    with pytest.raises(InputError, match="same shape"):
        mimage.ssim(a, a[:, :, :16])
    with pytest.raises(InputError, match="float images"):
        mimage.psnr(a.to(torch.uint8), a.to(torch.uint8))
    with pytest.raises(InputError, match="face mask"):
        mimage.psnr(a, a, torch.ones(1, 1, 8, 8))


# ----------------------------------------------------------------------------------- flow


@pytest.fixture(scope="module")
def shifted_pair():
    """Frame a and frame b with the content moved by d = (+3, +2) px: flow a -> b is d."""
    img = data.astronaut()
    a = np.ascontiguousarray(img[100:340, 100:420])
    b = np.ascontiguousarray(img[98:338, 97:417])
    return a, b


def test_farneback_recovers_a_translation(shifted_pair):
    a, b = shifted_pair
    f = mflow.farneback_flow(a, b)
    assert f.shape == (240, 320, 2) and f.dtype == np.float32
    np.testing.assert_allclose(np.median(f[20:-20, 20:-20], axis=(0, 1)), [3.0, 2.0], atol=0.25)


def test_warp_backward_with_an_integer_flow_is_a_shift(shifted_pair):
    a, b = shifted_pair
    flow = np.broadcast_to(np.array([3.0, 2.0], np.float32), (240, 320, 2))
    warped, inside = mflow.warp_backward(b.astype(np.float32), flow)
    np.testing.assert_allclose(warped[:-2, :-3], a[:-2, :-3].astype(np.float32), atol=0.01)  # float32 grid
    assert inside[:-2, :-3].all() and not inside[-2:].any() and not inside[:, -3:].any()


def test_warping_error_after_flow_is_far_below_the_frame_difference(shifted_pair):
    a, b = shifted_pair
    fw, bw = mflow.farneback_flow(a, b), mflow.farneback_flow(b, a)
    where = mflow.pair_mask(fw, bw)
    assert where.mean() > 0.8  # a pure translation is mostly reliable
    with_flow = mflow.warp_error(a, b, fw, where)
    without = float(np.mean(((a / 255.0) - (b / 255.0)) ** 2))
    assert with_flow < 0.05 * without


def test_forward_backward_check():
    h, w = 40, 50
    d = np.broadcast_to(np.array([2.0, 1.0], np.float32), (h, w, 2)).copy()
    ok = mflow.reliable_mask(d, -d)
    assert ok[:-1, :-2].all() and not ok[-1:].any() and not ok[:, -2:].any()  # only leaving the frame fails
    assert not mflow.reliable_mask(d, d)[:-1, :-2].any()  # backward flow disagrees everywhere
    step = np.zeros((h, w, 2), np.float32)
    step[:, 25:, 0] = 4.0  # the right half moves: a motion boundary at column 24/25
    back = np.zeros_like(step)
    back[:, 29:, 0] = -4.0
    rel = mflow.reliable_mask(step, back)
    assert not rel[:, 24].any() and rel[:, :23].all()


def test_face_mask_in_frame_equals_the_hull_on_a_full_grid():
    """68 face-like points (jaw arc, brows on top, the rest inside); the forehead reaches far above the brows."""
    g = np.random.default_rng(11)
    angles = np.linspace(0.2, np.pi - 0.2, 17)
    jaw = np.stack([160 - 55 * np.cos(angles), 150 + 60 * np.sin(angles)], axis=1)
    brows = np.stack([np.linspace(115, 205, 10), np.full(10, 135.0)], axis=1)
    rest = np.stack([g.uniform(125, 195, 41), g.uniform(140, 195, 41)], axis=1)
    lm = np.concatenate([jaw, brows, rest])
    got = mflow.face_mask_in_frame(lm, 240, 320)
    expected = landmark_hull_mask(lm, 320)[:240] > 0.5
    assert got[:100].any()  # forehead well above the top landmark (y 135)
    assert np.array_equal(got, expected)


def test_flow_backends_fail_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were not installed
    with pytest.raises(InputError, match="opencv-python-headless"):
        mflow.make_flow("farneback")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(InputError, match="RAFT|torchvision") as err:
        mflow.make_flow("raft")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="unknown flow method"):
        mflow.make_flow("lucas-kanade")


# ------------------------------------------------------------------------------ end to end


def test_a_video_compared_with_itself(self_report):
    r = self_report
    assert r.frames == N and (r.width, r.height) == SIZE and r.demo_weights
    assert r.identity.tl_id == pytest.approx(1.0, abs=1e-6)
    assert r.identity.tg_id == pytest.approx(1.0, abs=1e-6)
    assert r.identity.preservation == pytest.approx(1.0, abs=1e-6)
    assert np.all(r.psnr == mimage.PSNR_CAP_DB)
    np.testing.assert_allclose(r.ssim, 1.0, atol=1e-6)
    np.testing.assert_allclose(r.ms_ssim, 1.0, atol=1e-6)
    assert r.ms_ssim_scales == 5 and r.quality_size == 256
    assert r.warp_edited.shape == (N - 1,) and np.array_equal(r.warp_edited, r.warp_original)
    assert np.all(r.warp_excess == 0)
    assert np.all(r.warp_original >= 0) and r.warp_original.mean() < 2e-3  # the flow's own residual on a swaying face
    assert r.worst_frames() == {"identity": [], "warp": [], "psnr": []}
    assert any("untrained" in note for note in r.notes)


def test_a_different_face_in_the_second_half(cat_report):
    """The cat replaces the face from frame N/2 on: identity consistency across the cut must fall
    (TG-ID more than TL-ID, since half of all pairs but one adjacent pair cross it), quality must
    collapse only in the second half, and the warping error must peak at the cut."""
    r, half = cat_report, N // 2
    idm = r.identity
    assert idm.tg_id < idm.tl_id - 0.1 and idm.tg_id < 0.9
    assert idm.preservation < 0.95
    assert np.mean(idm.sim_to_first_edited[half:]) < np.mean(idm.sim_to_first_original[half:]) - 0.2
    np.testing.assert_allclose(idm.sim_to_first_edited[:half], idm.sim_to_first_original[:half], atol=0.05)
    assert r.psnr[:half].min() > 30 and r.psnr[half:].max() < 20
    assert r.ssim[half:].max() < r.ssim[:half].min()
    assert int(np.argmax(r.warp_excess)) == half - 1
    worst = r.worst_frames()
    assert set(worst["psnr"]) <= set(range(half, N)) and worst["warp"][0] == half - 1


def test_flow_explains_a_sliding_camera(media, weights):
    """A window sliding over a photo (3, 2 px per frame): the original's warping error must be the
    flow's small residual, far below the plain frame difference."""
    img = data.astronaut()
    frames = [np.ascontiguousarray(img[40 + 2 * t : 280 + 2 * t, 60 + 3 * t : 380 + 3 * t]) for t in range(6)]
    video = write_video(media / "slide.mp4", frames, fps=25, crf=12)
    decoded = [f.rgb / 255.0 for f in iter_frames(video)]
    plain = np.mean([np.mean((x - y) ** 2) for x, y in zip(decoded, decoded[1:])])
    r = compute_metrics(video, video, weights, "cpu", region="full", quality_size=64)
    assert r.warp_original.shape == (5,)
    assert r.warp_original.max() < 0.05 * plain
    assert r.ms_ssim_scales == 3


def test_json_holds_every_curve(cat_report, tmp_path):
    path = write_json(cat_report, tmp_path / "out" / "m.json")
    d = json.loads(path.read_text())
    assert d["frames"] == N and d["settings"]["flow"] == "farneback" and d["settings"]["demo_weights"] is True
    for key, values in d["per_frame"].items():
        assert len(values) == N, key
    for key, values in d["per_pair"].items():
        assert len(values) == N - 1, key
    for key, value in cat_report.summary().items():
        assert d["summary"][key] == pytest.approx(value, rel=1e-12), key
    assert d["per_frame"]["psnr_db"] == pytest.approx(cat_report.psnr.tolist())
    assert d["worst_frames"] == cat_report.worst_frames()


def test_json_writes_undefined_values_as_null(face_video, weights, tmp_path):
    one = tmp_path / "one.mp4"
    write_video(one, [next(iter_frames(face_video)).rgb], fps=25, crf=12)
    r = compute_metrics(one, one, weights, "cpu")
    d = json.loads(write_json(r, tmp_path / "one.json").read_text())
    assert d["summary"]["tl_id"] is None and d["summary"]["warp_error_edited"] is None
    assert d["per_pair"]["warp_error_edited"] == []
    write_plot(r, tmp_path / "one.png")  # a single frame still plots


def colour_count(image: Image.Image, rgb) -> int:
    return int(np.all(np.asarray(image) == np.array(rgb, np.uint8), axis=-1).sum())


def test_plot_is_a_png_with_every_curve(cat_report, tmp_path):
    path = write_plot(cat_report, tmp_path / "plot.png", size=(800, 600))
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (800, 600)
        rgb = im.convert("RGB")
    for colour in (EDITED_ID_COLOUR, EDITED_WARP_COLOUR, PSNR_COLOUR, BASELINE_COLOUR):
        assert colour_count(rgb, colour) > 100, colour
    assert colour_count(rgb, WORST_COLOUR) > 30  # worst frames are ringed
    with pytest.raises(InputError, match="at least 320x240"):
        write_plot(cat_report, tmp_path / "tiny.png", size=(100, 100))


def test_table_names_every_metric(cat_report):
    console = Console(record=True, width=140)
    print_report(cat_report, console)
    text = console.export_text()
    for word in ("TL-ID", "TG-ID", "ID preservation", "PSNR (face)", "SSIM (face)", "MS-SSIM (face)", "warping error", "worst frames", "untrained"):
        assert word in text, word
    for word in ("TL-ID (ratio; DVA, STIT)", "TL-ID (cosine; DiffFERV)", "TG-ID (ratio; DVA, STIT)", "TG-ID (cosine; DiffFERV)"):
        assert word in text, word


def test_both_published_forms_of_tl_and_tg_id_are_named(cat_report):
    """DVA/STIT's ratio form is the edit's cosine over the original's; DiffFERV's is the raw cosine."""
    s = cat_report.summary()
    assert s["tl_id_cosine_diffferv"] == s["tl_cos_edited"] and s["tg_id_cosine_diffferv"] == s["tg_cos_edited"]
    assert s["tl_id_ratio_dva_stit"] == pytest.approx(s["tl_cos_edited"] / s["tl_cos_original"], rel=1e-12)
    assert s["tg_id_ratio_dva_stit"] == pytest.approx(s["tg_cos_edited"] / s["tg_cos_original"], rel=1e-12)


# ------------------------------------------------------------------------------ bad input


def test_videos_that_cannot_be_compared(face_video, media, weights, tmp_path):
    short = make_face_video(tmp_path / "short.mp4", frames=5, size=SIZE, audio=False, face_scale=FACE_SCALE)
    with pytest.raises(InputError, match="has 5 frames but .* has 8") as err:
        compute_metrics(face_video, short, weights)
    assert "\n" not in str(err.value)
    tall = make_face_video(tmp_path / "tall.mp4", frames=N, size=(240, 320), audio=False, face_scale=FACE_SCALE)
    with pytest.raises(InputError, match="is 240x320 but .* is 320x240"):
        compute_metrics(face_video, tall, weights)
    with pytest.raises(InputError, match="no such file"):
        compute_metrics(face_video, tmp_path / "missing.mp4", weights)
    with pytest.raises(InputError, match="both quads and landmarks"):
        compute_metrics(face_video, face_video, weights, quads=np.zeros((N, 4, 2)))
    with pytest.raises(InputError, match="unknown region"):
        compute_metrics(face_video, face_video, weights, region="hair")


def test_metrics_command(face_video, tmp_path):
    import typer

    from fvedit.metrics.cli import metrics_command

    app = typer.Typer()
    app.command()(metrics_command)
    app.command("other")(lambda: None)  # two commands: the runner addresses `metrics_command` by name
    runner = CliRunner()
    json_out, plot_out = tmp_path / "m.json", tmp_path / "m.png"
    args = ["metrics-command", str(face_video), str(face_video), "--json", str(json_out), "--plot", str(plot_out),
            "--preset", "tiny", "--device", "cpu", "--region", "full", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "TL-ID" in result.output and "note:" not in result.output
    assert json.loads(json_out.read_text())["settings"]["region"] == "full"
    assert Image.open(plot_out).format == "PNG"
    missing = runner.invoke(app, ["metrics-command", str(face_video), str(tmp_path / "nope.mp4")])
    assert isinstance(missing.exception, InputError) and "video not found" in str(missing.exception)
