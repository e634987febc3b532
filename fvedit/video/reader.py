"""Stream a video's frames as upright RGB arrays, one at a time, with their timestamps.

Frames are yielded, never collected, so memory stays at a frame or two however long the
video is. Every decoded frame comes out (frame-exact: as many frames as `probe` counts),
turned upright by its display matrix, with its pts in the stream's time base so a writer
can give the edited frame exactly the same timestamp.

Durations: a frame lasts until the next one starts, so the reader decodes one frame ahead
and gives each frame `next pts - pts`. FFmpeg's own per-frame duration is the gap between
*decode* timestamps (MP4 `stts`), which for B-frames belongs to another frame: on a
variable-rate clip it is simply wrong. Only the last frame has no successor; it keeps the
duration its container stores for it, as `probe` measures it (`last_frame_duration_pts`,
which in MP4 is checked against the edit list).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator, overload

import av
import numpy as np

from fvedit.errors import InputError
from fvedit.video.probe import VideoInfo, ffmpeg_reason, frame_orientation, open_video, probe


@dataclass(frozen=True)
class Frame:
    """One decoded frame: upright RGB pixels plus where it sits in time."""

    index: int  # 0-based position in presentation order
    pts: int  # presentation timestamp in the source stream's time base
    time: float  # presentation time in seconds
    rgb: np.ndarray  # (H, W, 3) uint8, upright, C-contiguous
    duration: int | None = None  # display duration (next pts - pts) in the source time base, when known

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


class VideoReader:
    """Iterate a video's frames; `len()` is the probed frame count.

    Usage: `with VideoReader(path) as reader: for frame in reader: use(frame.rgb)`.
    Each iteration opens its own decoder, so two loops over one reader do not interfere.
    """

    def __init__(self, path: str | os.PathLike, *, info: VideoInfo | None = None, threads: bool = True):
        self.path = Path(path)
        self.info = info if info is not None else probe(self.path)
        self._threads = threads
        self._open: set[av.container.InputContainer] = set()  # one per live iteration

    def __len__(self) -> int:
        return self.info.frame_count

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the files of iterations still running (they end at their next step)."""
        while self._open:
            self._open.pop().close()

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def frames(self, max_frames: int | None = None) -> Iterator[Frame]:
        """Yield frames in presentation order; stops early after `max_frames` if given."""
        if max_frames is not None and max_frames < 0:
            raise InputError(f"max_frames must be 0 or more, got {max_frames}")
        if max_frames == 0:
            return
        container, stream = open_video(self.path)
        self._open.add(container)
        if self._threads:
            stream.thread_type = "AUTO"  # frame threading: same frames, same order, faster
        time_base = Fraction(stream.time_base or self.info.time_base)
        step = self.info.frame_duration_pts
        held: Frame | None = None  # decoded, waiting for the next pts to know its duration
        stored_duration: int | None = None  # the container's duration for `held`
        index = 0
        try:
            for decoded in container.decode(stream):
                pts = decoded.pts
                if pts is None:  # raw streams carry no timestamps: continue the cadence
                    pts = self.info.start_pts if held is None else held.pts + step
                if held is not None:
                    yield replace(held, duration=pts - held.pts if pts > held.pts else stored_duration)
                    index += 1
                    if max_frames is not None and index >= max_frames:
                        return
                rgb = frame_orientation(decoded).apply(decoded.to_ndarray(format="rgb24"))
                held = Frame(index=index, pts=int(pts), time=float(pts * time_base), rgb=np.ascontiguousarray(rgb))
                stored_duration = int(decoded.duration) if decoded.duration else None
            if held is not None:  # the container's word for the last frame, as `probe` checked it
                yield replace(held, duration=self.info.last_frame_duration_pts or stored_duration)
        except av.FFmpegError as err:
            raise InputError(f"{self.path}: decoding failed at frame {index} ({ffmpeg_reason(err)})") from None
        finally:
            if container in self._open:
                self._open.discard(container)
                container.close()


@overload
def iter_frames(
    path: str | os.PathLike, *, chunk: None = None, max_frames: int | None = None
) -> Iterator[Frame]: ...
@overload
def iter_frames(
    path: str | os.PathLike, *, chunk: int, max_frames: int | None = None
) -> Iterator[list[Frame]]: ...
def iter_frames(path, *, chunk=None, max_frames=None):
    """Yield a video's frames one by one, or in lists of up to `chunk` frames for batching."""
    if chunk is not None and chunk < 1:
        raise InputError(f"chunk must be a positive number of frames, got {chunk}")
    if max_frames is not None and max_frames < 0:
        raise InputError(f"max_frames must be 0 or more, got {max_frames}")
    frames = VideoReader(path).frames(max_frames=max_frames)
    if chunk is None:
        return frames
    return _chunked(frames, chunk)


def _chunked(frames: Iterator[Frame], chunk: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == chunk:
            yield batch
            batch = []
    if batch:
        yield batch
