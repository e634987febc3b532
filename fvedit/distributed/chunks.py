"""Phase A over chunks of frames: each worker decodes its own chunk of the video and detects the
faces in it, or cuts its crops and runs the two encoders, so the driver decodes nothing and no
frame travels.

What makes the result that of one process:
- chunk borders are multiples of `batch_size`, so the encoders see exactly the batches the
  in-process crop pass gives them (a conv's rounding can depend on the batch it runs in);
- `fvedit.video.seek.read_frames` gives each chunk the sequential reader's frames, pixel for pixel;
- tracking and smoothing (they cross chunk borders) and the identity mean stay in the driver,
  fed in frame order.
Borders move to just after a keyframe where one is near, so a chunk decodes little it drops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from fvedit.video.reader import Frame
from fvedit.video.seek import FrameRange

CHUNKS_PER_WORKER = 2  # chunks go round robin: a few per worker keep them all busy to the end
MAX_CHUNK = 256  # frames aimed at; a border moved to a keyframe makes it up to twice that, and a
# chunk's crops come back in one piece (at most 511 x 196 KB at 256 px)


@dataclass(frozen=True)
class VideoSource:
    """How a worker finds the video: at `path` (this host, or a disk every node mounts at the same
    path, checked by size and SHA-256), else from `data`, the file's bytes in the object store
    (put there only for a cluster: `[ObjectRef]`, nested so Ray does not fetch it with every task)."""

    path: str
    size: int
    sha256: str
    host: str  # the driver's host name: a worker on it reads `path` without hashing
    data: list | None = None


@dataclass
class ChunkJob:
    """One chunk of phase A: "detect" (faces of every frame) or "crop+encode" (crops, z_id, z_lnd
    of the frames with the face)."""

    kind: str
    video: VideoSource
    frames_at: FrameRange
    detector: str = "dlib"
    align: str = "fast"
    quads: np.ndarray | None = None  # float64 [K, 4, 2] of the chunk's frames ("crop+encode")
    present: np.ndarray | None = None  # bool [K]
    size: int = 0
    factor: int = 1
    batch_size: int = 1

    @property
    def frames(self) -> np.ndarray:
        return np.arange(self.frames_at.start, self.frames_at.stop)


def plan_chunks(n: int, batch_size: int, keyframes: np.ndarray, workers: int) -> list[tuple[int, int]]:
    """(start, stop) ranges covering frames 0..n-1 in order; every start a multiple of batch_size.

    The size S aims at CHUNKS_PER_WORKER chunks per worker (one worker: no split, but at most
    MAX_CHUNK frames), at least one batch. A chunk that starts mid-GOP decodes the frames from
    the keyframe before and drops them, so a border goes to the first batch start after a
    keyframe, the one nearest S, if one lies between S/2 and 2S into the chunk (that window is
    longer than x264's default 250-frame GOP at S = MAX_CHUNK); else it stays at S."""
    if n <= 0:
        return []
    if workers <= 1 and n <= MAX_CHUNK:
        return [(0, n)]
    per = math.ceil(n / (CHUNKS_PER_WORKER * workers)) if workers > 1 else n
    size = batch_size * max(1, min(math.ceil(per / batch_size), MAX_CHUNK // batch_size or 1))
    starts = np.unique(np.ceil(np.asarray(keyframes, dtype=np.float64) / batch_size).astype(np.int64) * batch_size)
    borders, start = [], 0
    while start < n:
        stop = start + size
        near = starts[(starts >= start + max(batch_size, size // 2)) & (starts < start + 2 * size)]
        if near.size:
            stop = int(near[np.argmin(np.abs(near - (start + size)))])
        stop = min(n, stop)
        borders.append((start, stop))
        start = stop
    return borders


def detect_frames(frames: Iterator[Frame], detector) -> list[list]:
    """Each frame's faces, in order."""
    return [list(detector.detect(f.rgb)) for f in frames]


def crop_and_encode(frames: Iterator[Frame], job: ChunkJob, encoder, device) -> tuple[np.ndarray, ...]:
    """(rows, crops uint8 [K,S,S,3], z_id, z_lnd) of the chunk's frames with the face, the encoders
    run per batch of `batch_size` frames counted from frame 0, as the in-process crop pass runs them."""
    from fvedit.pipeline.crop import cut_crops, encode_crops

    start, bs = job.frames_at.start, job.batch_size
    out: list[tuple[np.ndarray, ...]] = []
    group: list[Frame] = []

    def flush() -> None:
        rows = np.asarray([f.index for f in group if job.present[f.index - start]], dtype=np.int64)
        if rows.size:
            pick = {f.index: f.rgb for f in group}
            crops = cut_crops([pick[i] for i in rows], job.quads[rows - start], job.size, job.factor)
            out.append((rows, crops, *encode_crops(encoder, crops, device)))
        group.clear()

    for frame in frames:
        if group and frame.index // bs != group[0].index // bs:
            flush()
        group.append(frame)
    if group:
        flush()
    if not out:
        return np.zeros(0, np.int64), None, None, None
    return tuple(np.concatenate(parts) for parts in zip(*out))
