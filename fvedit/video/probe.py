"""What is in a video file: size, orientation, exact frame count, timing, audio.

Peer tools drift against their audio because they trust the header frame rate and re-time
every frame to it, and they show phone videos sideways because they ignore the display
matrix. `probe` therefore measures instead of trusting: it demuxes every video packet to
count frames and collect their timestamps (no decoding, so it is cheap), decodes only the
first frame to learn the orientation, and reports constant vs variable timing from the
measured timestamp deltas.

Orientation convention used throughout `fvedit.video`: `rotation` is the clockwise angle
(0, 90, 180, 270) a player turns the *coded* frame to show it upright (the legacy `rotate`
tag; an iPhone portrait clip has 90), and `mirrored` says a horizontal flip follows it.
`width`/`height` are the upright (displayed) size; `coded_width`/`coded_height` are the
size stored in the bitstream.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np

from fvedit.errors import InputError

# Container formats that hold one still image rather than a video.
_IMAGE_FORMATS = ("image2", "_pipe")


@dataclass(frozen=True)
class VideoInfo:
    """Facts about one video file, measured by `probe`."""

    path: Path
    width: int  # upright (displayed) width
    height: int  # upright (displayed) height
    coded_width: int
    coded_height: int
    rotation: int  # clockwise degrees a player applies: 0, 90, 180 or 270
    mirrored: bool  # a horizontal flip follows the rotation (rare)
    frame_count: int  # counted packet by packet (or decoded frames), never the header's guess
    fps: Fraction  # average frame rate
    time_base: Fraction  # unit of the stream's pts
    start_pts: int  # pts of the first frame in presentation order
    duration: float  # seconds, first frame start to last frame end
    is_vfr: bool  # frame durations vary (see `_is_variable`)
    codec: str
    pix_fmt: str
    container_format: str
    has_audio: bool
    audio_codec: str | None = None
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    last_frame_duration_pts: int | None = None  # the container's duration for the last frame (time_base units)

    @property
    def start_time(self) -> float:
        """Presentation time of the first frame in seconds."""
        return float(self.start_pts * self.time_base)

    @property
    def frame_duration_pts(self) -> int:
        """Nominal frame duration in time_base units (for frames that carry no pts)."""
        return max(1, round(1 / (self.fps * self.time_base)))


class Orientation(NamedTuple):
    """How to turn a decoded (coded) frame upright: transpose, then flip rows/columns."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Turn an (H, W, C) array upright; returns a view (no copy) when nothing changes."""
        if self.transpose:
            image = image.transpose(1, 0, *range(2, image.ndim))
        if self.flip_rows:
            image = image[::-1]
        if self.flip_cols:
            image = image[:, ::-1]
        return image

    @property
    def rotation_and_mirror(self) -> tuple[int, bool]:
        """The same transform as (clockwise degrees, horizontal mirror after rotating)."""
        probe_grid = np.arange(6).reshape(2, 3)
        target = self.apply(probe_grid)
        for mirrored in (False, True):
            for degrees in (0, 90, 180, 270):
                candidate = np.rot90(probe_grid, k=-degrees // 90)
                if mirrored:
                    candidate = candidate[:, ::-1]
                if candidate.shape == target.shape and np.array_equal(candidate, target):
                    return degrees, mirrored
        raise AssertionError("unreachable: every axis-aligned transform is a rotation+mirror")


UPRIGHT = Orientation()


def orientation_from_display_matrix(matrix: tuple[int, ...] | None) -> Orientation:
    """Read FFmpeg's AV_FRAME_DATA_DISPLAYMATRIX (the MP4 `tkhd` matrix layout).

    A source pixel (x, y) lands at (a*x + c*y, b*x + d*y) with a, b, c, d = m[0], m[1],
    m[3], m[4] (16.16 fixed point; translation ignored). Angles that are not a multiple of
    90 degrees snap to the nearest axis-aligned transform.
    """
    if matrix is None:
        return UPRIGHT
    a, b, c, d = (matrix[0], matrix[1], matrix[3], matrix[4])
    if abs(a) + abs(d) >= abs(b) + abs(c):  # axis-aligned: x' = a*x, y' = d*y
        return Orientation(transpose=False, flip_rows=d < 0, flip_cols=a < 0)
    # swapped axes: x' = c*y, y' = b*x, so upright[x, y] = coded[y, x] then flips
    return Orientation(transpose=True, flip_rows=b < 0, flip_cols=c < 0)


def frame_orientation(frame: av.VideoFrame) -> Orientation:
    """The orientation a decoded frame asks for through its display-matrix side data."""
    for side_data in frame.side_data:
        if side_data.type.name == "DISPLAYMATRIX":
            raw = bytes(side_data)
            if len(raw) >= 36:
                return orientation_from_display_matrix(struct.unpack("=9i", raw[:36]))
    return UPRIGHT


def open_video(path: str | os.PathLike) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open `path` and pick its video stream, turning every failure into one InputError line."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a video file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path} is not readable (check its permissions)")
    try:
        container = av.open(str(path), "r")
    except av.FFmpegError as err:
        raise InputError(f"{path} is not a video or is corrupt ({ffmpeg_reason(err)})") from None
    format_name = container.format.name
    if any(format_name == tag or format_name.endswith(tag) for tag in _IMAGE_FORMATS):
        container.close()
        raise InputError(f"{path} is a still image ({format_name}), not a video")
    stream = next(
        (s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic),
        None,
    )
    if stream is None:
        container.close()
        raise InputError(f"{path} has no video stream")
    return container, stream


def ffmpeg_reason(err: BaseException) -> str:
    """FFmpeg's own short explanation, without the repeated file name."""
    strerror = getattr(err, "strerror", None)
    return strerror or str(err).split(":")[0]


def _is_variable(pts: np.ndarray) -> bool:
    """True when frame durations differ by more than rounding can explain.

    Containers with coarse clocks (Matroska: 1 ms) alternate durations by one tick for a
    constant rate (33, 33, 34 ms), so a tick of slack plus 1 % is still "constant".
    """
    if pts.size < 3:
        return False
    deltas = np.diff(pts)
    median = float(np.median(deltas))
    return bool(np.any(np.abs(deltas - median) > max(1.0, 0.01 * median)))


def scan_video_timestamps(
    path: str | os.PathLike, *, decode: bool = False
) -> tuple[np.ndarray, Fraction, int | None]:
    """Every video frame's pts of `path` (sorted), the time base, and the last frame's duration.

    By default packets are demuxed, not decoded, which keeps a probe of a long video quick;
    empty packets (the demuxer's end-of-stream marker) and packets an edit list discards are
    not frames. `decode=True` decodes instead: slower, but exact even for streams whose
    decoder drops frames (e.g. a transport stream cut in the middle of a GOP).

    The last frame's duration is the one stored with the frame that is shown last (the
    highest pts), not with the last packet demuxed: with B-frames those differ. In MP4/MOV
    it is checked against the track's edit list (see `_checked_against_edit_list`).
    """
    container, stream = open_video(path)
    with container:
        return _scan(container, stream, Path(path), decode=decode)


def _scan(container, stream, path: Path, *, decode: bool = False) -> tuple[np.ndarray, Fraction, int | None]:
    time_base = stream.time_base or Fraction(1, 90000)
    pts_list: list[int] = []
    missing = 0
    max_pts = 0
    last_duration: int | None = None
    units = container.decode(stream) if decode else container.demux(stream)
    try:
        for unit in units:  # packets, or frames when decoding
            if not decode and (unit.size == 0 or unit.is_discard):
                continue
            if unit.pts is None:
                missing += 1
            else:
                if not pts_list or unit.pts >= max_pts:
                    max_pts, last_duration = unit.pts, unit.duration or None
                pts_list.append(unit.pts)
    except av.FFmpegError as err:
        raise InputError(f"{path} is corrupt or truncated ({ffmpeg_reason(err)})") from None
    if missing:  # no timestamps (raw elementary streams): number the frames instead
        nominal = _nominal_rate(stream) or Fraction(25)
        step = max(1, round(1 / (nominal * time_base)))
        start = min(pts_list) if pts_list else 0
        pts_list = [start + i * step for i in range(len(pts_list) + missing)]
    elif pts_list and "mp4" in container.format.name.split(","):
        last_duration = _checked_against_edit_list(path, stream.id, max_pts, Fraction(time_base), last_duration)
    return np.sort(np.asarray(pts_list, dtype=np.int64)), Fraction(time_base), last_duration


def _checked_against_edit_list(
    path: Path, track_id: int, last_pts: int, time_base: Fraction, stored: int | None
) -> int | None:
    """The last frame's duration, corrected by the MP4 edit list where FFmpeg's is wrong.

    FFmpeg re-parses some codecs in MP4 (VP9, VP8, VC-1, MPEG-1: `need_parsing = FULL` in
    its mov demuxer) and then invents packet durations from a guessed frame rate, so a
    variable-rate VP9 clip reports 10 ms for a 40 ms last frame although the file stores 40.
    The edit list says where the track's presentation ends (FFmpeg puts that end at
    pts = segment total), but only to one movie tick (1 ms as FFmpeg writes it), so the
    stored duration is kept whenever it agrees with that end to within a tick.
    """
    edit = mp4_edit_list_end(path, track_id)
    if edit is None:
        return stored
    end, tick = edit
    if stored is not None and abs((last_pts + stored) * time_base - end) <= tick:
        return stored
    from_edit = round(end / time_base) - last_pts
    return from_edit if from_edit > 0 else stored


def mp4_edit_list_end(path: str | os.PathLike, track_id: int) -> tuple[Fraction, Fraction] | None:
    """(end, precision) in seconds of track `track_id`'s edit list in an MP4/MOV file, or None.

    The end is the sum of the edit segments (ISO 14496-12 8.6.6), the precision one tick of
    the movie time scale (`mvhd`). None when the file has no readable `moov` or no edit list.
    """
    moov = _read_moov(Path(path))
    if moov is None:
        return None
    try:
        timescale = 0
        for kind, start, end in _boxes(moov, 0, len(moov)):
            if kind == b"mvhd":
                timescale = struct.unpack_from(">I", moov, start + (20 if moov[start] == 1 else 12))[0]
            elif kind == b"trak" and timescale:
                total = _trak_edit_total(moov, start, end, track_id)
                if total is not None:
                    return Fraction(total, timescale), Fraction(1, timescale)
    except (struct.error, IndexError):
        return None
    return None


def _trak_edit_total(data: bytes, start: int, end: int, track_id: int) -> int | None:
    """Sum of the edit segment durations of this `trak` if it is track `track_id`."""
    children = {kind: (s, e) for kind, s, e in _boxes(data, start, end)}
    if b"tkhd" not in children or b"edts" not in children:
        return None
    tkhd = children[b"tkhd"][0]
    if struct.unpack_from(">I", data, tkhd + (20 if data[tkhd] == 1 else 12))[0] != track_id:
        return None
    elst = next((s for kind, s, _ in _boxes(data, *children[b"edts"]) if kind == b"elst"), None)
    if elst is None:
        return None
    version, count = data[elst], struct.unpack_from(">I", data, elst + 4)[0]
    entry, size, fmt = elst + 8, (20 if version == 1 else 12), (">Q" if version == 1 else ">I")
    return sum(struct.unpack_from(fmt, data, entry + i * size)[0] for i in range(count))


def _boxes(data: bytes, start: int, end: int):
    """(type, body start, body end) of each ISO-BMFF box in data[start:end]."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            return
        yield kind, at + header, at + size
        at += size


_MAX_MOOV = 256 << 20


def _read_moov(path: Path) -> bytes | None:
    """The body of the file's top-level `moov` box, skipping `mdat` without reading it."""
    try:
        with open(path, "rb") as file:
            length = os.fstat(file.fileno()).st_size
            at = 0
            while at + 8 <= length:
                file.seek(at)
                head = file.read(16)
                size, kind = struct.unpack_from(">I4s", head)
                header = 8
                if size == 1 and len(head) == 16:
                    size, header = struct.unpack_from(">Q", head, 8)[0], 16
                elif size == 0:
                    size = length - at
                if size < header:
                    return None
                if kind == b"moov":
                    if size - header > _MAX_MOOV:
                        return None
                    file.seek(at + header)
                    return file.read(size - header)
                at += size
    except (OSError, struct.error):
        return None
    return None


def _nominal_rate(stream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _measured_fps(pts: np.ndarray, time_base: Fraction, header: Fraction | None) -> Fraction:
    """Average rate from the timestamps; the header's tidy value (30000/1001 rather than
    29.97003) when it agrees within 0.5 %. Pass header=None for variable-rate video."""
    if pts.size < 2 or pts[-1] == pts[0]:
        return header or Fraction(25)
    measured = Fraction(int(pts.size - 1)) / (int(pts[-1] - pts[0]) * time_base)
    if header and abs(header - measured) <= measured * Fraction(1, 200):
        return header
    return measured.limit_denominator(1_000_000)


def probe(path: str | os.PathLike, *, decode: bool = False) -> VideoInfo:
    """Measure `path`. Raises InputError with one line for anything that is not a usable video.

    `decode=True` counts decoded frames instead of packets (see `scan_video_timestamps`).
    """
    path = Path(path)
    container, stream = open_video(path)
    with container:
        codec_context = stream.codec_context
        coded_width, coded_height = int(codec_context.width), int(codec_context.height)
        header_rate = _nominal_rate(stream)
        codec_name = codec_context.name
        pix_fmt = codec_context.pix_fmt or "unknown"
        container_format = container.format.name
        audio = next(iter(container.streams.audio), None)
        pts, time_base, last_duration = _scan(container, stream, path, decode=decode)
    if pts.size == 0:
        raise InputError(f"{path} has no video frames")

    first = _first_frame(path)
    orientation = frame_orientation(first)
    rotation, mirrored = orientation.rotation_and_mirror
    coded_width, coded_height = first.width or coded_width, first.height or coded_height
    width, height = (coded_height, coded_width) if orientation.transpose else (coded_width, coded_height)
    pix_fmt = first.format.name if first.format is not None else pix_fmt

    is_vfr = _is_variable(pts)
    fps = _measured_fps(pts, time_base, None if is_vfr else header_rate)
    # Presentation span plus one typical frame: depends only on the frames' timestamps, not on
    # how a muxer chose to store the last sample's length (which B-frame reordering muddles).
    typical = Fraction(float(np.median(np.diff(pts)))) if pts.size >= 2 else Fraction(last_duration or 0)
    if typical <= 0:
        typical = 1 / (fps * time_base)
    duration = float((int(pts[-1] - pts[0]) + typical) * time_base)

    audio_channels = None
    if audio is not None:
        layout = getattr(audio.codec_context, "layout", None)
        audio_channels = int(layout.nb_channels) if layout is not None else None
    return VideoInfo(
        path=path,
        width=width,
        height=height,
        coded_width=coded_width,
        coded_height=coded_height,
        rotation=rotation,
        mirrored=mirrored,
        frame_count=int(pts.size),
        fps=fps,
        time_base=time_base,
        start_pts=int(pts[0]),
        duration=duration if math.isfinite(duration) else 0.0,
        is_vfr=is_vfr,
        codec=codec_name,
        pix_fmt=pix_fmt,
        container_format=container_format,
        has_audio=audio is not None,
        audio_codec=audio.codec_context.name if audio is not None else None,
        audio_sample_rate=int(audio.codec_context.sample_rate) if audio is not None else None,
        audio_channels=audio_channels,
        last_frame_duration_pts=last_duration,
    )


def _first_frame(path: Path) -> av.VideoFrame:
    """Decode one frame: proves the stream is decodable and carries the display matrix."""
    container, stream = open_video(path)
    with container:
        try:
            for frame in container.decode(stream):
                return frame
        except av.FFmpegError as err:
            raise InputError(f"{path}: video frames cannot be decoded ({ffmpeg_reason(err)})") from None
    raise InputError(f"{path}: video frames cannot be decoded (the decoder produced none)")
