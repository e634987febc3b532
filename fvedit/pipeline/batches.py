"""Which frames go through the UNet together, and how strongly each frame is edited.

The same plan serves inversion and decoding, so every x_T is decoded in the batch it was made in
(with cross-frame attention, batch edges change x_T).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fvedit.face.track import nearest_known, present_runs

FADE_FRAMES = 4  # present frames over which the edit fades in/out next to frames without the face


@dataclass(frozen=True)
class FrameBatch:
    """One UNet batch: the frames it encodes or decodes, and the neighbours run with them.

    frames: increasing indices of the frames kept (all have the face); run: the indices run
    through the UNet (the frames plus, for cross-frame attention, context on each side, never
    past a frame without the face); keep: positions of `frames` within `run`.
    """

    frames: np.ndarray
    run: np.ndarray
    keep: np.ndarray


def plan_batches(present: np.ndarray, batch_size: int, window: int) -> list[FrameBatch]:
    """The batches of an encode or decode pass, the same for both so x_T is decoded as it was made.

    Frames are taken in chunks of `batch_size` positions, the chunks the video reader yields, and
    a chunk's frames with the face form its batch. With cross-frame attention (window > 1) a
    batch also runs window//2 neighbours on each side and is split where the face is absent, so
    attention never looks across a cut; its edges approximate the whole-clip result.
    """
    present = np.asarray(present, dtype=bool)
    runs = present_runs(present)
    ctx = window // 2 if window > 1 else 0
    batches = []
    for start in range(0, len(present), batch_size):
        idx = np.flatnonzero(present[start : start + batch_size]) + start
        if not idx.size:
            continue
        if ctx == 0:
            batches.append(FrameBatch(idx, idx, np.arange(idx.size)))
            continue
        for run in runs:
            part = idx[(idx >= run.start) & (idx < run.stop)]
            if part.size:
                lo, hi = max(run.start, int(part[0]) - ctx), min(run.stop, int(part[-1]) + 1 + ctx)
                batches.append(FrameBatch(part, np.arange(lo, hi), part - lo))
    return batches


def batches_by_chunk(batches: list[FrameBatch], batch_size: int) -> dict[int, list[FrameBatch]]:
    """The batches of each reader chunk (chunk k holds frames k*batch_size .. (k+1)*batch_size-1)."""
    by_chunk: dict[int, list[FrameBatch]] = {}
    for batch in batches:
        by_chunk.setdefault(int(batch.frames[0]) // batch_size, []).append(batch)
    return by_chunk


def fade_weights(present: np.ndarray, frames: int = FADE_FRAMES) -> np.ndarray:
    """float32 [N]: 1 for frames far from any frame without the face, ramping down to 1/(frames+1)
    next to one, 0 on frames without the face (they are not pasted at all)."""
    present = np.asarray(present, dtype=bool)
    if present.all():
        return np.ones(len(present), dtype=np.float32)
    dist = np.abs(np.arange(len(present)) - nearest_known(~present))  # to the nearest frame without it
    return np.minimum(1.0, dist / (frames + 1.0)).astype(np.float32)
