"""Stage 1, align: decode -> detect + landmarks -> track + temporal smoothing -> FFHQ quads.

Detection is the one host stage that holds the GIL for long (dlib's HOG scan releases it, the
landmark fit is short), so it runs ahead of the tracker in a pool of threads, each with its own
scanner (`fvedit.face.pool`); tracking and smoothing stay in frame order. With a faces file
(`fvedit align`) the recorded detections are replayed and dlib is never imported.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fvedit.errors import InputError
from fvedit.face.align import Alignment, align_video
from fvedit.face.faces_file import FacesFile, ReplayDetector
from fvedit.face.track import present_runs
from fvedit.pipeline.options import PipelineOptions
from fvedit.pipeline.streaming import prefetched
from fvedit.progress import progress_bar
from fvedit.video import iter_frames

POOL_MIN_FRAMES = 64  # each pool thread builds its own HOG scanner (~0.4 s): not worth it for short clips
DECODE_AHEAD = 4  # frames decoded ahead of the detectors


def detection_workers(opts: PipelineOptions) -> int:
    """Threads that detect faces ahead of the tracker: --threads, else every core this process may use."""
    if opts.threads:
        return int(opts.threads)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def face_detectors(opts: PipelineOptions, faces: FacesFile | None, frames: int = POOL_MIN_FRAMES):
    """(detector, ahead) for the align pass: the replayed faces file (no dlib import), or a real
    detector, pooled over `detection_workers` threads when that is more than one and the video has
    at least POOL_MIN_FRAMES `frames` (`ahead` wraps the frame stream so each frame's detection
    starts early; identity without a pool)."""
    if faces is not None:
        yield ReplayDetector(faces), iter
        return
    from fvedit.face.detect import detector_settings, make_detector

    def factory(private: bool = False):
        extra = {"private_hog": True} if private and opts.detector == "dlib" else {}
        return make_detector(opts.detector, **detector_settings(opts.align), **extra)

    pooled = opts.stream and opts.detector == "dlib" and frames >= POOL_MIN_FRAMES
    workers = detection_workers(opts) if pooled else 1
    if workers <= 1:
        yield factory(), iter
        return
    from fvedit.face.pool import PooledDetector

    pool = PooledDetector(factory, workers)
    try:
        yield pool, pool.frames
    finally:
        pool.close()


def align_pass(video: Path, frames: int, size: int, opts: PipelineOptions, faces: FacesFile | None) -> Alignment:
    """The whole video's face track and crop quads (one decode of the video)."""
    chosen = face_detectors(opts, faces, frames)
    with progress_bar("align", frames, quiet=opts.quiet, unit="frame") as adv, \
            prefetched(iter_frames(video), opts.stream, depth=DECODE_AHEAD, name="fvedit decode frames") as decoded, \
            chosen as (detector, ahead):  # fmt: skip
        def frames_for_detection():  # decoded in a thread, detected ahead in a pool, tracked here
            for frame in decoded:
                adv(1)
                yield frame.rgb

        alignment = align_video(
            ahead(frames_for_detection()), detector, size=size, select=opts.face,
            sigmas=opts.sigmas, max_gap=opts.max_gap, source=str(video),
        )
    if alignment.num_frames != frames:
        raise InputError(f"{video}: decoded {alignment.num_frames} frames but probed {frames}; the file may be damaged")
    return alignment


def _frame_list(frames: np.ndarray, limit: int = 4) -> str:
    """'3-8, 40-52' for the runs of the given frame indices (the first `limit` runs)."""
    mask = np.zeros(int(frames.max()) + 1, dtype=bool)
    mask[frames] = True
    runs = present_runs(mask)
    text = ", ".join(f"{r.start}" if r.stop - r.start == 1 else f"{r.start}-{r.stop - 1}" for r in runs[:limit])
    return text + (", ..." if len(runs) > limit else "")


def alignment_notes(alignment: Alignment, opts: PipelineOptions) -> list[str]:
    """What the user should know about the face track: several faces, bridged misses, absences."""
    notes = []
    n = alignment.num_frames
    if alignment.max_faces_seen > 1:
        notes.append(f"up to {alignment.max_faces_seen} faces per frame; editing the one chosen by --face {opts.face}")
    bridged = alignment.bridged_frames
    if bridged.size:
        notes.append(
            f"the detector missed the face in {bridged.size} of {n} frames ({_frame_list(bridged)}) and a second, "
            "more sensitive look found it there; those frames are edited with interpolated landmarks"
        )
    absent = alignment.absent_frames
    if absent.size:
        notes.append(f"no face in {absent.size} of {n} frames ({_frame_list(absent)}); they are passed through unchanged")
    for frame in alignment.reacquired:
        notes.append(f"the face was chosen again at frame {frame} after an absence; check that it is the same person")
    return notes
