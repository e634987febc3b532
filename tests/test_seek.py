"""Frame-exact random access (`fvedit.video.seek`) and phase A's chunks (`fvedit.distributed.chunks`).

The sequential reader (`iter_frames`) is the reference: every range must give its frames, pixel
for pixel and pts for pts. The seek path must also be the one that ran (a spy on the fallback),
or a broken seek would pass by reading from the start every time.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

import fvedit.video.seek as seek
from fvedit.distributed.chunks import MAX_CHUNK, ChunkJob, VideoSource, crop_and_encode, plan_chunks
from fvedit.errors import InputError
from fvedit.synth import make_face_video
from fvedit.video import iter_frames

RANGES = [(0, 23), (5, 9), (8, 23), (22, 23), (3, 4), (12, 16), (4, 4)]
LAYOUTS = {
    "one GOP": dict(),
    "keyint 4": dict(keyint=4),
    "open GOPs": dict(keyint=5, open_gop=True),
    "variable rate": dict(keyint=3, vfr=True),
    "rotated phone video": dict(keyint=4, rotation_meta=90),
    "open GOPs, variable rate": dict(keyint=7, vfr=True, open_gop=True),
    "matroska": dict(keyint=4, suffix=".mkv"),
}


@pytest.fixture
def fallbacks(monkeypatch) -> list:
    """Counts the reads that fell back to the sequential reader."""
    used, real = [], seek.VideoReader

    class Spy(real):
        def __init__(self, *a, **k):
            used.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(seek, "VideoReader", Spy)
    return used


def check_range(path: Path, reference: list, frames) -> None:
    got = list(seek.read_frames(path, frames))
    assert [f.index for f in got] == list(range(frames.start, frames.stop))
    for g, r in zip(got, reference[frames.start:frames.stop]):
        assert g.pts == r.pts and g.rgb.shape == r.rgb.shape and np.array_equal(g.rgb, r.rgb), g.index


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_range_gives_the_sequential_readers_frames_by_seeking(tmp_path, layout, fallbacks):
    kw = dict(LAYOUTS[layout])
    path = make_face_video(tmp_path / f"v{kw.pop('suffix', '.mp4')}", frames=23, size=(96, 64), audio=False, **kw)
    reference = list(iter_frames(path))
    index = seek.index_frames(path)
    assert len(index) == 23 and index.seekable
    assert index.keyframes[0] == 0 and (len(index.keyframes) > 1) == ("keyint" in kw)
    for a, b in RANGES:
        check_range(path, reference, index.range(a, b))
    assert fallbacks == []  # every range was read by seeking


def test_a_seek_that_lands_late_falls_back_to_the_exact_frames_and_a_wrong_index_is_an_error(tmp_path, fallbacks):
    """A late seek: the sequential reader gives the frames. An index whose timestamps the decoder
    does not give (a stream that drops packets, say) would number chunks apart from the sequential
    reader, so the fallback refuses it instead of returning frames shifted against the others."""
    path = make_face_video(tmp_path / "v.mp4", frames=12, size=(96, 64), audio=False, keyint=3)
    reference = list(iter_frames(path))
    index = seek.index_frames(path)
    good = index.range(7, 11)
    late = seek.FrameRange(7, 11, good.pts, (int(index.pts[9]),))  # lands on frame 9: after the range's start
    check_range(path, reference, late)
    assert len(fallbacks) == 1
    wrong = seek.FrameRange(7, 11, good.pts + np.array([0, 0, 1, 0]), good.seek_pts)  # frame 9's pts is off
    got = []
    with pytest.raises(InputError, match="frame 9 decodes with timestamp .* the file may be damaged"):
        got.extend(seek.read_frames(path, wrong))  # frames 7, 8 by seeking, then 9 from the start: refused
    assert [f.index for f in got] == [7, 8] and len(fallbacks) == 2


def test_a_stream_without_timestamps_is_read_from_the_start(tmp_path):
    path = tmp_path / "raw.h264"
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.options = {"x264-params": "keyint=3:min-keyint=1:scenecut=0", "threads": "1"}
        for i in range(9):
            rgb = np.full((48, 64, 3), 20 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    reference = list(iter_frames(path))
    index = seek.index_frames(path)
    assert not index.seekable and len(index) == len(reference) == 9
    check_range(path, reference, index.range(4, 9))


def test_chunks_cover_the_video_on_batch_borders_and_start_at_keyframes():
    keys = np.array([0, 37, 70, 101, 160])
    chunks = plan_chunks(200, 4, keys, workers=2)
    assert chunks[0][0] == 0 and chunks[-1][1] == 200
    assert all(a < b and a % 4 == 0 for a, b in chunks) and all(b == a2 for (_, b), (a2, _) in zip(chunks, chunks[1:]))
    # 52-frame chunks (200 frames / 4, in whole batches); each border is the batch start after a
    # keyframe (37 -> 40, 70 -> 72, 101 -> 104, 160) nearest 52 frames into its chunk, within 24..103
    assert [a for a, _ in chunks[1:]] == [40, 104, 160]
    assert plan_chunks(200, 4, np.array([0]), workers=2) == [(0, 52), (52, 104), (104, 156), (156, 200)]  # one GOP
    assert plan_chunks(5, 2, np.array([0]), workers=3) == [(0, 2), (2, 4), (4, 5)]  # at least one batch each
    assert plan_chunks(50, 2, np.array([0, 20, 30]), workers=1) == [(0, 50)]  # one worker: no split
    long = plan_chunks(100_000, 16, np.array([0]), workers=2)
    assert max(b - a for a, b in long) == MAX_CHUNK and plan_chunks(0, 4, keys, 2) == []
    every_250 = plan_chunks(100_000, 16, np.arange(0, 100_000, 250), workers=8)  # x264's default GOP
    assert all(a % 250 < 16 for a, _ in every_250) and max(b - a for a, b in every_250) <= 2 * MAX_CHUNK


def test_a_chunks_crops_and_features_are_the_in_process_crop_pass(tmp_path, monkeypatch):
    """The worker's share of phase A against `_crop_pass` on the same quads: crops, z_id and z_lnd
    equal, with a chunk that starts mid-GOP and an absent frame inside it."""
    from fvedit.pipeline import PipelineOptions
    from fvedit.pipeline.crop import supersample_factor
    from fvedit.pipeline.scheduler import _crop_pass
    from fvedit.weights.loading import load_for_run

    torch.set_num_threads(1)
    monkeypatch.setenv("FVEDIT_WEIGHTS_DIR", str(tmp_path / "none"))
    weights = load_for_run(None, "tiny", torch.device("cpu"), echo=lambda m: None)
    n, size, bs = 10, weights.config.image_size, 2
    path = make_face_video(tmp_path / "v.mp4", frames=n, size=(160, 120), audio=False, keyint=3, face_scale=0.6)
    rng = np.random.default_rng(0)
    centre = np.array([80.0, 60.0]) + rng.normal(0, 3, (n, 1, 2))
    quads = centre + np.array([[-40, -40], [-40, 40], [40, 40], [40, -40]], dtype=np.float64)
    present = np.ones(n, bool)
    present[5] = False
    kept = np.flatnonzero(present)
    arr = {"crops": _Rows((n, size, size, 3), np.uint8), "z_id": _Rows((n, weights.config.encoder.id_dim), np.float32),
           "z_lnd": _Rows((n, weights.config.encoder.lnd_dim), np.float32)}
    _crop_pass(path, n, quads, kept, weights, PipelineOptions(batch_size=bs, quiet=True, threads=1), arr)
    index = seek.index_frames(path)
    source = VideoSource(str(path), path.stat().st_size, "-", "-")
    factor = supersample_factor(quads[kept], size)
    a, b = 4, 10
    job = ChunkJob("crop+encode", source, index.range(a, b), quads=quads[a:b], present=present[a:b], size=size,
                   factor=factor, batch_size=bs)
    rows, crops, z_id, z_lnd = crop_and_encode(seek.read_frames(path, job.frames_at), job, weights.model.encoder, "cpu")
    assert rows.tolist() == [4, 6, 7, 8, 9] and np.abs(z_id).sum() > 0
    assert np.array_equal(crops, arr["crops"].a[rows])
    assert np.array_equal(z_id, arr["z_id"].a[rows]) and np.array_equal(z_lnd, arr["z_lnd"].a[rows])


class _Rows:
    """The encoding writer's `put(rows, values)`, on an array."""

    def __init__(self, shape, dtype):
        self.a = np.zeros(shape, dtype)

    def put(self, rows, values):
        self.a[rows] = values
