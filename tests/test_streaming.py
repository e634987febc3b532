"""The streamed decode pass: frames decoded ahead and pasted + written behind the device.

`fvedit.pipeline.streaming`'s two threads keep order, stay bounded, hand errors to the caller and stop
cleanly; and the streamed edit writes exactly the frames of the serial one (real tiny UNet, CPU).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fvedit.pipeline.cache import load_encoding
from fvedit.pipeline.jobs import EditRequest, run_edit
from fvedit.pipeline import PipelineOptions
from fvedit.diffusion.spec import SamplerSpec
from fvedit.pipeline.streaming import Prefetch, Worker
from fvedit.synth import make_face_video

# -- the two threads ---------------------------------------------------------------------------


def test_prefetch_keeps_order_and_runs_at_most_depth_ahead():
    produced, ahead = [], []

    def items():
        for i in range(20):
            produced.append(i)
            yield i

    reader = Prefetch(items(), depth=2)
    try:
        got = []
        for item in reader:
            time.sleep(0.002)
            ahead.append(len(produced) - len(got))
            got.append(item)
    finally:
        reader.close()
    assert got == list(range(20))
    assert max(ahead) <= 2 + 2  # queued (depth) + the one being handed over + the one being produced


def test_prefetch_hands_errors_over_and_close_stops_the_generator_in_its_thread():
    def failing():
        yield 1
        raise ValueError("decoder broke")

    reader = Prefetch(failing())
    with pytest.raises(ValueError, match="decoder broke"):
        list(reader)
    reader.close()

    closed_in = []

    def endless():
        try:
            while True:
                yield 0
        finally:
            closed_in.append(threading.current_thread().name)

    reader = Prefetch(endless(), name="the reader")
    next(iter(reader))
    reader.close()
    assert closed_in == ["the reader"]


def test_worker_keeps_order_raises_at_finish_or_put_and_close_drops_the_rest():
    done = []
    worker = Worker(done.append, depth=1)
    for i in range(10):
        worker.put(i)
    worker.finish()
    assert done == list(range(10))

    def fails(item):
        raise OSError("disk full")

    worker = Worker(fails)
    worker.put(0)
    with pytest.raises(OSError, match="disk full"):
        for i in range(1000):  # the error surfaces at a later put at the latest
            worker.put(i)
            time.sleep(0.001)
    worker.close()

    slow = []
    worker = Worker(lambda i: (time.sleep(0.05), slow.append(i)), depth=1)
    worker.put(0)
    worker.put(1)
    worker.close()  # after an error elsewhere: no more work, no exception
    assert slow == [0]  # the item in progress ends; the waiting one is dropped


# -- the streamed edit equals the serial one ----------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_face_video(tmp_path_factory.mktemp("stream") / "leaves.mp4", frames=14, size=(320, 240),
                           face_scale=0.6, hidden_frames=range(5, 8), audio=True)  # fmt: skip


@pytest.mark.parametrize("side_by_side", [False, True])
def test_streamed_edit_writes_exactly_the_serial_frames(clip, tmp_path, recorded, monkeypatch, side_by_side):
    monkeypatch.setenv("FVEDIT_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    import fvedit.face.pool
    import fvedit.pipeline.align

    monkeypatch.setattr(fvedit.pipeline.align, "POOL_MIN_FRAMES", 1)  # the detection pool on this short clip too
    pools = []
    original_init = fvedit.face.pool.PooledDetector.__init__

    def counting_init(self, *args, **kwargs):
        pools.append(1)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(fvedit.face.pool.PooledDetector, "__init__", counting_init)
    monkeypatch.setattr(fvedit.pipeline.align, "detection_workers", lambda opts: 2)
    frames, encodings = {}, {}
    for stream in (False, True):  # each with its own cache: both encode (align, crop passes) and decode
        recorded.clear()
        opts = PipelineOptions(sampler=SamplerSpec("dpm", 2), batch_size=4, cache_dir=tmp_path / f"cache-{stream}",
                               quiet=True, stream=stream, side_by_side=side_by_side)  # fmt: skip
        summary = run_edit(clip, tmp_path / f"out-{stream}.mp4", EditRequest(["young"]), opts=opts, preset="tiny",
                           weights_dir=None, device="cpu", backend="reference")  # fmt: skip
        frames[stream] = np.stack(recorded)
        encodings[stream] = load_encoding(opts.cache_dir, summary.cache_folder.name)
        assert summary.frames == 14 and summary.passed_through == 3 and not summary.cache_hit
    assert pools == [1]  # the streamed run detected in the pool, the serial one did not
    assert frames[True].shape == frames[False].shape and np.array_equal(frames[True], frames[False])
    a, b = encodings[True], encodings[False]
    every = np.arange(14)
    assert np.array_equal(a.quads, b.quads) and np.array_equal(a.z_id, b.z_id)
    assert np.array_equal(a.crops.take(every), b.crops.take(every)) and np.array_equal(a.x_T.take(every), b.x_T.take(every))
    assert not np.array_equal(frames[True][0], frames[True][6])  # edited and untouched frames both present


def test_a_failing_write_stops_the_streamed_edit_with_no_output(clip, tmp_path, monkeypatch):
    from fvedit.video import VideoWriter

    monkeypatch.setenv("FVEDIT_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    original = VideoWriter.write
    calls = []

    def write(self, frame, pts=None):
        calls.append(1)
        if len(calls) == 6:
            raise OSError(28, "No space left on device")
        return original(self, frame, pts)

    monkeypatch.setattr(VideoWriter, "write", write)
    opts = PipelineOptions(sampler=SamplerSpec("dpm", 2), batch_size=4, cache_dir=tmp_path / "cache", quiet=True)
    with pytest.raises(OSError, match="No space left"):
        run_edit(clip, tmp_path / "out.mp4", EditRequest(["young"]), opts=opts, preset="tiny", weights_dir=None,
                 device="cpu", backend="reference")  # fmt: skip
    assert not (tmp_path / "out.mp4").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []
    assert [t.name for t in threading.enumerate() if t.name.startswith("fvedit ")] == []
