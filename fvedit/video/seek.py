"""Frame-exact random access: a video's frames start..stop-1 without decoding the frames before.

Chunks of a long video are decoded in parallel (the Ray workers' analysis), so each must start
near its first frame. `index_frames` reads every packet's pts and keyframe flag (a demux, no
decode); `read_frames` seeks to the keyframe at or before the first wanted frame, decodes
forward and drops what comes before it. Frames before a keyframe in presentation order but after
it in decode order (open GOPs' leading B-frames) have smaller pts and are dropped with them.

Every frame is checked against the pts the index expects at its position; when seeking gives
anything else (a container whose index is wrong, a stream without timestamps) the rest of the
range comes from the sequential reader, so the frames are always exactly `VideoReader`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from fvedit.errors import InputError
from fvedit.video.probe import ffmpeg_reason, frame_orientation, open_video
from fvedit.video.reader import Frame, VideoReader

SEEK_TRIES = 3  # keyframes to seek back to before reading from the start: MP4 seeks by decode time,
# which runs a few frames ahead of presentation time with B-frames, so a seek can land one GOP late


@dataclass(frozen=True)
class FrameIndex:
    """Where each frame is: its pts in presentation order, and which frames are keyframes."""

    pts: np.ndarray  # int64 [N], sorted (positions 0..N-1 where not seekable)
    keyframes: np.ndarray  # int64, sorted indices into pts
    seekable: bool  # every packet has a pts (raw streams have none: those are read from the start)

    def __len__(self) -> int:
        return int(self.pts.size)

    def range(self, start: int, stop: int) -> "FrameRange":
        """What a reader needs for frames start..stop-1: their pts and where it may seek to."""
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"frames {start}..{stop - 1} of a video of {len(self)}")
        if not self.seekable:
            return FrameRange(start, stop)
        before = self.keyframes[self.keyframes <= start][::-1][:SEEK_TRIES]
        return FrameRange(start, stop, self.pts[start:stop].copy(), tuple(int(self.pts[k]) for k in before))


@dataclass(frozen=True)
class FrameRange:
    """Frames start..stop-1 of one video, with their pts (None: read from the start) and the pts
    of the keyframes at or before `start`, latest first: the seek targets to try."""

    start: int
    stop: int
    pts: np.ndarray | None = None
    seek_pts: tuple[int, ...] = ()


def index_frames(path: str | os.PathLike) -> FrameIndex:
    """Every frame's pts and the keyframes, from one demux of the video stream (no decode)."""
    container, stream = open_video(path)
    pts: list[int] = []
    keys: list[int] = []
    count = 0
    try:
        with container:
            for packet in container.demux(stream):  # the packets `probe` counts as frames
                if packet.size == 0 or packet.is_discard:
                    continue
                count += 1
                if packet.pts is not None:
                    pts.append(int(packet.pts))
                    if packet.is_keyframe:
                        keys.append(int(packet.pts))
    except av.FFmpegError as err:
        raise InputError(f"{path} is corrupt or truncated ({ffmpeg_reason(err)})") from None
    if len(pts) < count or count == 0:  # no timestamps to seek by: positions only
        return FrameIndex(np.arange(count, dtype=np.int64), np.zeros(0, np.int64), seekable=False)
    order = np.sort(np.asarray(pts, dtype=np.int64))
    keyframes = np.unique(np.searchsorted(order, np.asarray(keys, dtype=np.int64))).astype(np.int64)
    return FrameIndex(order, keyframes, seekable=True)


def read_frames(path: str | os.PathLike, frames: FrameRange, *, threads: bool = True) -> Iterator[Frame]:
    """Frames `frames.start`..`stop`-1, upright RGB, with the index and pts `VideoReader` gives
    them (no duration), and the same pixels."""
    start, stop = frames.start, frames.stop
    if start == stop:
        return
    done = start
    if frames.pts is not None:
        if len(frames.pts) != stop - start:
            raise ValueError(f"{len(frames.pts)} pts for the {stop - start} frames {start}..{stop - 1}")
        for target in frames.seek_pts:
            for frame in _seek_and_decode(Path(path), done, frames.pts[done - start:], target, threads):
                if frame is None:  # not the frame the index expects
                    break
                yield frame
                done += 1
            if done == stop:
                return
            if done > start:  # a mismatch in mid-range: the rest from the start of the file
                break
    last = done - 1
    for frame in islice(VideoReader(path, threads=threads).frames(max_frames=stop), done, None):
        # numbered by the decoder's output here; a chunk must hold the frames the index numbers so
        # (a stream whose decoder drops leading packets would shift every chunk after it)
        if frames.pts is not None and frame.pts != int(frames.pts[frame.index - start]):
            raise InputError(f"{path}: frame {frame.index} decodes with timestamp {frame.pts}, but its packet has "
                             f"{int(frames.pts[frame.index - start])}; the file may be damaged")
        yield Frame(frame.index, frame.pts, frame.time, frame.rgb)
        last = frame.index
    if last != stop - 1:  # the sequential reader ran out first
        raise InputError(f"{path}: frame {stop - 1} was probed but could not be decoded; the file may be damaged")


def _seek_and_decode(path: Path, start: int, pts: np.ndarray, target: int, threads: bool) -> Iterator[Frame | None]:
    """Frames from the keyframe a seek to `target` finds; None at the first frame the index does
    not expect (the seek landed after pts[0], the stream lost a frame, a pts is missing)."""
    container, stream = open_video(path)
    try:
        if threads:
            stream.thread_type = "AUTO"
        time_base = Fraction(stream.time_base)
        container.seek(int(target), stream=stream, backward=True, any_frame=False)
        k = 0
        for decoded in container.decode(stream):
            if decoded.pts is not None and decoded.pts < pts[0]:
                continue
            if decoded.pts != pts[k] or getattr(decoded, "is_corrupt", False):  # corrupt: not a clean entry point
                yield None
                return
            rgb = frame_orientation(decoded).apply(decoded.to_ndarray(format="rgb24"))
            yield Frame(start + k, int(decoded.pts), float(decoded.pts * time_base), np.ascontiguousarray(rgb))
            k += 1
            if k == len(pts):
                return
        yield None  # the stream ended early
    except av.FFmpegError:  # e.g. invalid data where the seek landed: the sequential reader decides
        yield None
    finally:
        container.close()
