"""Frames without the face: written unchanged, true misses bridged, the edit faded in and out.

End to end with real dlib on generated clips (tiny preset, demo weights, CPU); the frames handed to
the video writer are compared with the decoded input bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fvedit.pipeline.cache import load_encoding
from fvedit.pipeline.jobs import EditRequest, run_edit
from fvedit.pipeline import FADE_FRAMES, PipelineOptions, fade_weights, plan_batches
from fvedit.diffusion.spec import SamplerSpec
from fvedit.synth import make_face_video
from fvedit.video import iter_frames

FAST = dict(preset="tiny", weights_dir=None, device="cpu", backend="reference")
LEAVES = range(6, 12)  # the person is out of the shot on these frames
STARTS_WITHOUT = range(0, 5)


pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("absent")
    common = dict(size=(320, 240), fps=25, face_scale=0.6, audio=False)
    return {
        "leaves": make_face_video(root / "leaves.mp4", frames=18, hidden_frames=LEAVES, **common),
        "blur": make_face_video(root / "blur.mp4", frames=10, blurred_frames=(3, 4), **common),
        "late": make_face_video(root / "late.mp4", frames=10, hidden_frames=STARTS_WITHOUT, **common),
    }


def edit(video: Path, tmp_path: Path, **kw):
    options = PipelineOptions(sampler=SamplerSpec("dpm", 2), batch_size=4, cache_dir=tmp_path / "cache", quiet=True, **kw)
    summary = run_edit(video, tmp_path / "out.mp4", EditRequest(["young"]), opts=options, **FAST)
    return summary, load_encoding(tmp_path / "cache", summary.cache_folder.name)


def changed_pixels(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.any(a != b, axis=-1).sum())


def test_frames_without_the_face_are_written_unchanged_and_the_rest_edited(clips, tmp_path, recorded):
    summary, enc = edit(clips["leaves"], tmp_path)
    decoded = [f.rgb for f in iter_frames(clips["leaves"])]
    assert len(recorded) == len(decoded) == 18
    for i, (src, out) in enumerate(zip(decoded, recorded)):
        if i in LEAVES:
            assert np.array_equal(src, out), f"frame {i} has no face and must be passed through"
        else:
            assert changed_pixels(src, out) > 100, f"frame {i} has the face and must be edited"
    assert summary.passed_through == len(LEAVES) and summary.bridged == 0
    assert enc.present.tolist() == [i not in LEAVES for i in range(18)]
    # the representative identity is the mean of the frames that have the face only
    np.testing.assert_allclose(enc.z_id_mean, enc.z_id[enc.present].astype(np.float64).mean(0), rtol=1e-6)
    assert not enc.x_T.take(list(LEAVES)).any()  # nothing was inverted there
    # the edit fades out before the person leaves: one frame before it changes far less than mid-run
    diff = [np.abs(s.astype(int) - o).sum() for s, o in zip(decoded, recorded)]
    assert diff[LEAVES.start - 1] < 0.5 * diff[LEAVES.start - 1 - FADE_FRAMES]
    assert diff[LEAVES.stop] < 0.5 * diff[LEAVES.stop + FADE_FRAMES]


def test_a_short_detection_miss_is_bridged_and_edited(clips, tmp_path, recorded):
    summary, enc = edit(clips["blur"], tmp_path)
    decoded = [f.rgb for f in iter_frames(clips["blur"])]
    assert enc.present.all() and not enc.detected[3:5].all(), "the blur must make dlib miss at least one frame"
    assert summary.bridged == int((~enc.detected).sum()) >= 1 and summary.passed_through == 0
    for i in (3, 4):
        assert changed_pixels(decoded[i], recorded[i]) > 100


def test_a_clip_that_starts_without_the_face(clips, tmp_path, recorded):
    summary, enc = edit(clips["late"], tmp_path)
    decoded = [f.rgb for f in iter_frames(clips["late"])]
    for i in STARTS_WITHOUT:
        assert np.array_equal(decoded[i], recorded[i])
    assert all(changed_pixels(decoded[i], recorded[i]) > 100 for i in range(STARTS_WITHOUT.stop, 10))
    assert summary.passed_through == len(STARTS_WITHOUT)


def test_summary_says_how_many_frames_were_passed_through(clips, tmp_path, capsys):
    from fvedit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["edit", str(clips["leaves"]), "-o", str(tmp_path / "o.mp4"), "--steps", "2", "--preset", "tiny",
              "--device", "cpu", "--backend", "reference", "--max-gap", "3"])
    assert exit_info.value.code in (0, None)
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "6 frames without it passed through unchanged" in err
    assert "no face in 6 of 18 frames (6-11)" in err


# -- the batch plan and the fade, on their own --------------------------------------------------


def test_batches_cover_every_present_frame_once_and_context_never_crosses_an_absence():
    present = np.array([1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 1], dtype=bool)
    for window in (1, 3, 5):
        for batch_size in (1, 2, 4, 12):
            batches = plan_batches(present, batch_size, window)
            kept = np.concatenate([b.frames for b in batches])
            assert kept.tolist() == np.flatnonzero(present).tolist()
            for b in batches:
                assert present[b.run].all() and np.array_equal(b.run[b.keep], b.frames)
                assert len(set(b.frames // batch_size)) == 1  # one reader chunk per batch
                if window > 1:
                    assert np.all(np.diff(b.run) == 1)  # contiguous: a window over real neighbours
                    lo, hi = b.frames[0] - window // 2, b.frames[-1] + window // 2
                    assert b.run[0] == max(lo, b.run[0]) and b.run[-1] <= hi


def test_window_batches_equal_the_old_slices_when_every_frame_has_the_face():
    batches = plan_batches(np.ones(10, dtype=bool), 4, 3)
    assert [(b.run[0], b.run[-1] + 1, b.keep[0]) for b in batches] == [(0, 5, 0), (3, 9, 1), (7, 10, 1)]


def test_fade_weights():
    present = np.array([0, 1, 1, 1, 1, 1, 1, 1, 0, 1], dtype=bool)
    w = fade_weights(present, frames=2)
    np.testing.assert_allclose(w, [0, 1 / 3, 2 / 3, 1, 1, 1, 2 / 3, 1 / 3, 0, 1 / 3], rtol=1e-6)
    assert np.array_equal(fade_weights(np.ones(5, dtype=bool)), np.ones(5, dtype=np.float32))


def test_metrics_measure_only_the_frames_with_the_face(clips):
    from fvedit.metrics import compute_metrics
    from fvedit.weights.demo import demo_weights

    report = compute_metrics(clips["leaves"], clips["leaves"], demo_weights("tiny"), "cpu")
    measured = ~np.isnan(report.psnr)
    assert measured.tolist() == [i not in LEAVES for i in range(18)]
    assert np.isnan(report.warp_edited[LEAVES.start - 1 : LEAVES.stop]).all()  # pairs touching an absence
    assert np.isfinite(report.warp_edited[: LEAVES.start - 1]).all()
    assert report.summary()["psnr_db_mean"] == pytest.approx(report.psnr[measured].mean())
    assert any("measured the 12 of 18 frames" in note for note in report.notes)
