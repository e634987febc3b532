"""--align official: full-resolution detection on every frame, equal to the official DVA preprocessing.

The official code calls dlib's HOG detector on each full frame (`detector(img)`, no upsampling)
and fits the 68 points in that box; fvedit's fast default detects on a copy at most 640 px wide.
The official mode must give exactly the quads that this computation, written out here with dlib
itself, gives on the same decoded frames; the fast mode must differ (else the option does nothing).
"""

from __future__ import annotations

import numpy as np
import pytest

from fvedit.errors import InputError
from fvedit.face.align import OFFICIAL_SIGMAS, compute_quads
from fvedit.face.detect import detector_name, detector_settings, face_recognition_models_dir
from fvedit.pipeline.jobs import run_align
from fvedit.synth import make_face_video
from fvedit.video import iter_frames


@pytest.fixture(scope="module")
def hd_clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("align-modes")
    return make_face_video(root / "hd.mp4", frames=5, size=(1280, 720), face_scale=0.35, audio=False)


def official_quads(video) -> np.ndarray:
    """The official preprocessing, spelled out with dlib: detector(img) on the full frame, the
    largest box (fvedit's default --face; the official code takes the first, the same with one
    face), the shape predictor in it, then the official smoothing."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(face_recognition_models_dir() / "shape_predictor_68_face_landmarks.dat"))
    marks = []
    for frame in iter_frames(video):
        rects = detector(frame.rgb)
        assert len(rects) >= 1
        rect = max(rects, key=lambda r: r.width() * r.height())
        marks.append([(p.x, p.y) for p in predictor(frame.rgb, rect).parts()])
    lm = np.asarray(marks, dtype=np.float64)
    return compute_quads(lm, OFFICIAL_SIGMAS, np.ones(len(lm), dtype=bool))


def test_official_mode_equals_the_official_preprocessing(hd_clip, tmp_path):
    _, official = run_align(hd_clip, tmp_path / "official.npz", align="official", quiet=True)
    _, fast = run_align(hd_clip, tmp_path / "fast.npz", quiet=True)
    expected = official_quads(hd_clip)
    assert np.array_equal(official.quads, expected)
    assert not np.array_equal(fast.quads, expected)  # the default really is another computation
    side = np.linalg.norm(expected[:, 1] - expected[:, 0], axis=-1).min()  # the crop's side in frame pixels
    assert np.abs(fast.quads - expected).max() < 0.01 * side  # ... and a close one: within 1 % of the crop


def test_modes_and_names():
    assert detector_settings("fast") == {}
    assert detector_settings("official") == {"detect_max_side": None, "upsample": 0}
    assert detector_name("dlib", "fast") == "dlib" and detector_name("dlib", "official") == "dlib-official"
    with pytest.raises(InputError, match="unknown --align 'exact'"):
        detector_settings("exact")
    with pytest.raises(InputError, match="cannot be used with detector 'insightface'"):
        detector_name("insightface", "official")


def test_cli_refuses_an_unknown_mode_and_a_fast_faces_file_for_official(hd_clip, tmp_path, capsys):
    from fvedit.cli import main

    for args in (["encode", str(hd_clip), "--align", "exact"],
                 ["align", str(hd_clip), "-o", str(tmp_path / "f.npz"), "--align", "exact"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "unknown --align 'exact'" in errors[0]
    fast, _ = run_align(hd_clip, tmp_path / "fast.npz", quiet=True)
    with pytest.raises(SystemExit) as exc:
        main(["encode", str(hd_clip), "--faces", str(fast), "--align", "official", "--preset", "tiny", "--steps", "2",
              "--cache-dir", str(tmp_path / "cache"), "-q"])
    assert exc.value.code == 2
    assert "--align official was asked for" in capsys.readouterr().err
