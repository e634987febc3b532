"""Phase A of one video on the pool: the analysis' two passes over the frames, chunk by chunk.

The workers decode their own chunks (`fvedit.video.seek`), so this process decodes no frame of
phase A and no frame travels: what comes back is each frame's faces, then each chunk's crops and
encoder features. Here, in frame order: the tracker (with its re-checks of short gaps, one frame
decoded on a worker each), the temporal smoothing, and the writes to the pending encoding. The
identity mean is then taken by the scheduler from those arrays (float64, frame order), so it is
the one a single process computes, whatever the number of workers.

With a faces file the detections are replayed here and nothing is decoded for the align pass. A
stream without timestamps (a raw .h264) cannot be seeked: both passes then run here, as in one process.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator

import numpy as np

from fvedit.distributed.chunks import ChunkJob, VideoSource, plan_chunks
from fvedit.distributed.pool import WorkerPool
from fvedit.errors import InputError
from fvedit.face.align import Alignment, align_video
from fvedit.face.faces_file import FacesFile, FramesById, ReplayDetector
from fvedit.pipeline.crop import supersample_factor
from fvedit.pipeline.options import PipelineOptions
from fvedit.pipeline.scheduler import InProcessPasses
from fvedit.progress import progress_bar
from fvedit.video import VideoInfo
from fvedit.video.seek import FrameIndex, index_frames


def stand_in(shape: tuple[int, int, int]) -> np.ndarray:
    """A frame's place in the tracker's stream: its shape, no pixels (a zero-stride view)."""
    return np.broadcast_to(np.zeros((), dtype=np.uint8), shape)


class PoolAnalysis:
    """`fvedit.pipeline.scheduler.analyse`'s passes on the pool; one instance per video."""

    def __init__(self, pool: WorkerPool):
        self.pool = pool
        self.source: VideoSource | None = None
        self.index: FrameIndex | None = None
        self.chunks: list[tuple[int, int]] = []
        self.here: InProcessPasses | None = None  # a stream that cannot be seeked: both passes here

    def _start(self, video: Path, info: VideoInfo, video_sha: str, opts: PipelineOptions) -> None:
        index = index_frames(video)
        if len(index) != info.frame_count:
            raise InputError(f"{video}: {len(index)} frames are indexed but {info.frame_count} were probed; "
                             "the file may be damaged")
        self.index = index
        if not index.seekable:  # no timestamps (a raw stream): chunks would each decode from the start
            self.here = InProcessPasses()
            return
        data = [self.pool.ray.put(video.read_bytes())] if self.pool.multi_node else None
        self.source = VideoSource(str(video.resolve()), video.stat().st_size, video_sha, socket.gethostname(), data)
        self.chunks = plan_chunks(len(index), opts.batch_size, index.keyframes, len(self.pool.actors))

    def align(self, video: Path, info: VideoInfo, video_sha: str, size: int, opts: PipelineOptions,
              faces: FacesFile | None) -> Alignment:
        """Faces detected chunk by chunk on the workers (or replayed here), tracked and smoothed here."""
        self._start(video, info, video_sha, opts)
        if self.here is not None:
            return self.here.align(video, info, video_sha, size, opts, faces)
        shape = (info.height, info.width, 3)
        if faces is not None:
            detector = ReplayDetector(faces)
            frames: Iterator[np.ndarray] = (stand_in(shape) for _ in range(info.frame_count))
        else:
            detector = ChunkDetections(self.pool, self.source, self.index, self.chunks, opts, shape)
            frames = detector.frames()
        label = f"align ({len(self.pool.actors)} workers)"
        with progress_bar(label, info.frame_count, quiet=opts.quiet, unit="frame") as adv:
            def counted():
                for frame in frames:
                    adv(1)
                    yield frame

            alignment = align_video(counted(), detector, size=size, select=opts.face, sigmas=opts.sigmas,
                                    max_gap=opts.max_gap, source=str(video))
        if alignment.num_frames != info.frame_count:  # pragma: no cover - the readers check every frame
            raise InputError(f"{video}: {alignment.num_frames} frames were aligned but {info.frame_count} probed")
        return alignment

    def crop(self, video: Path, n: int, quads: np.ndarray, kept: np.ndarray, weights, opts: PipelineOptions,
             arr: dict) -> None:
        """Crops and encoder features chunk by chunk on the workers, written here as they return."""
        if self.here is not None:
            return self.here.crop(video, n, quads, kept, weights, opts, arr)
        size = weights.config.image_size
        factor = supersample_factor(quads[kept], size)
        present = np.zeros(n, dtype=bool)
        present[kept] = True
        jobs = (ChunkJob("crop+encode", self.source, self.index.range(a, b), quads=np.asarray(quads[a:b]),
                         present=present[a:b], size=size, factor=factor, batch_size=opts.batch_size)
                for a, b in self.chunks)
        label = f"crop + encoders ({len(self.pool.actors)} workers)"
        with progress_bar(label, n, quiet=opts.quiet, unit="frame") as adv:
            for result in self.pool.map_ordered(jobs):
                rows, crops, z_id, z_lnd = result.out
                if rows.size:  # frames without the face get no crop and no features
                    arr["crops"].put(rows, crops)
                    arr["z_id"].put(rows, z_id)
                    arr["z_lnd"].put(rows, z_lnd)
                adv(result.frames.size)


class ChunkDetections:
    """The tracker's detector when the workers detect chunk by chunk: `frames()` yields a stand-in
    per frame as the chunks come back in order, `detect` answers with that frame's faces, and
    `detect_near` (when the detector has it) decodes and re-checks the one frame on a worker."""

    def __init__(self, pool: WorkerPool, source: VideoSource, index: FrameIndex, chunks: list[tuple[int, int]],
                 opts: PipelineOptions, shape: tuple[int, int, int]):
        self.pool, self.source, self.index, self.chunks = pool, source, index, chunks
        self.detector, self.align, self.shape = opts.detector, opts.align, shape
        self.name = opts.detector
        self._ids = FramesById()
        self._faces: dict[int, list] = {}
        # every worker is asked: each built its detector at its start (WorkerSpec.detector)
        if all(pool._get([a.can_recheck.remote(opts.detector, opts.align) for a in pool.actors])):
            self.detect_near = self._detect_near

    def frames(self) -> Iterator[np.ndarray]:
        jobs = (ChunkJob("detect", self.source, self.index.range(a, b), detector=self.detector, align=self.align)
                for a, b in self.chunks)
        for result in self.pool.map_ordered(jobs):
            for i, faces in zip(result.frames, result.out):
                frame = stand_in(self.shape)
                self._ids.add(frame, int(i))
                self._faces[id(frame)] = faces
                yield frame

    def detect(self, frame: np.ndarray) -> list:
        return self._faces.pop(id(frame))

    def _detect_near(self, frame: np.ndarray, box) -> list:
        i = self._ids.find(frame)
        if i is None:  # pragma: no cover - the tracker only re-checks frames it was handed
            raise RuntimeError("detect_near got a frame the pool never detected")
        actor = self.pool.next_actor()
        return self.pool._get(actor.detect_near.remote(self.source, self.index.range(i, i + 1), box,
                                                       self.detector, self.align))
