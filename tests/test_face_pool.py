"""Pooled face detection (the analysis pass on several cores) answers exactly as the serial detector.

dlib's HOG scanner keeps scratch state: two threads sharing one mixed their boxes on a 1080p clip
(frames 2 and 8 of 12 came back with another frame's box). Each pool thread has its own.
"""

from __future__ import annotations

import numpy as np
import pytest

from fvedit.face.align import align_video
from fvedit.face.detect import DlibDetector
from fvedit.face.pool import PooledDetector
from fvedit.synth import make_face_video
from fvedit.video import iter_frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_face_video(tmp_path_factory.mktemp("pool") / "sway.mp4", frames=16, size=(800, 600), face_scale=0.4,
                           blurred_frames=(6,), audio=False)  # fmt: skip


def same_faces(a, b) -> bool:
    return len(a) == len(b) and all(x.box == y.box and x.score == y.score and np.array_equal(x.landmarks68, y.landmarks68)
                                    for x, y in zip(a, b))  # fmt: skip


def test_pooled_detections_equal_the_serial_ones_frame_for_frame(clip):
    frames = [f.rgb for f in iter_frames(clip)]
    serial = DlibDetector()
    expected = [serial.detect(f) for f in frames]
    pool = PooledDetector(lambda private: DlibDetector(private_hog=private), workers=3, ahead=4)
    try:
        got = [pool.detect(f) for f in pool.frames(iter(frames))]
    finally:
        pool.close()
    assert all(same_faces(a, b) for a, b in zip(expected, got))


def test_pooled_alignment_equals_the_serial_one(clip):
    def frames():
        return (f.rgb for f in iter_frames(clip))

    serial = align_video(frames(), DlibDetector())
    pool = PooledDetector(lambda private: DlibDetector(private_hog=private), workers=2)
    try:
        pooled = align_video(pool.frames(frames()), pool)
    finally:
        pool.close()
    for name in ("quads", "landmarks", "present", "detected", "faces_seen"):
        assert np.array_equal(getattr(serial, name), getattr(pooled, name)), name
