"""Write edited frames back with the source's exact timing and its untouched audio, atomically.

Timing: every frame is encoded with the pts it had in the source, in the source's time
base, so constant and variable frame rates both survive and the frame count is identical
(peer tools re-time to a fixed fps and drift against the audio).

Audio: the source's audio packets are copied byte for byte (stream copy, no re-encode) and
interleaved with the video as it is written. If the container cannot hold that audio codec
the writer fails loudly instead of silently dropping the sound. MP4/MOV keep every pts as
is; Matroska cannot store negative timestamps, so when copied AAC starts before zero (its
1024-sample priming) the whole file moves later by that delay, sync intact.

Atomicity: everything goes to a hidden `.<name>.partial-XXXX<ext>` file next to the target
and is renamed onto it only when the file is complete; an exception or Ctrl-C inside the
`with` block removes the partial file, so no half-written video is ever left behind.

Size: 4:2:0 and 4:2:2 pixel formats (the default yuv420p plays everywhere) need even
dimensions. An odd width or height is padded by one column/row that repeats the edge
pixels, so a 301x207 input is written as 302x208; choose pix_fmt="yuv444p" to keep odd
sizes exactly (at the cost of player support). Frames are written upright and the output
carries no rotation metadata. Colours are converted and tagged as BT.709 limited range.
"""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np

from fvedit.errors import FveditError, InputError
from fvedit.video.probe import VideoInfo, ffmpeg_reason
from fvedit.video.reader import Frame

_X264_LIKE = ("libx264", "libx265")
_MP4_LIKE = ("mp4", "mov", "m4v")


def even_size(width: int, height: int, pix_fmt: str) -> tuple[int, int]:
    """The encoded size: width/height rounded up to the pixel format's chroma block."""
    try:
        fmt = av.VideoFormat(pix_fmt)
    except ValueError:
        raise InputError(f"unknown pixel format {pix_fmt!r}; try yuv420p or yuv444p") from None
    sub_w = 1024 // max(1, fmt.chroma_width(1024))  # 2 for 4:2:0 and 4:2:2, 1 for 4:4:4
    sub_h = 1024 // max(1, fmt.chroma_height(1024))
    pad = lambda n, m: -(-n // m) * m  # noqa: E731 - round n up to a multiple of m
    return pad(width, sub_w), pad(height, sub_h)


def pad_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Grow an (H, W, 3) image to (height, width) by repeating its last row/column."""
    extra_h, extra_w = height - image.shape[0], width - image.shape[1]
    if extra_h == 0 and extra_w == 0:
        return image
    return np.pad(image, ((0, extra_h), (0, extra_w), (0, 0)), mode="edge")


def _new_file_mode() -> int:
    """The permissions a plainly created file gets (mkstemp's 0600 would hide the result)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class VideoWriter:
    """Encode RGB frames into `path` with the timing of `like` and the audio of `audio_from`.

    Pass `like` (the source's VideoInfo) to reuse its fps, time base and size, or give `fps`
    (and optionally `time_base`, `width`, `height`) directly. Frames may be `Frame` objects
    (their pts is used) or plain (H, W, 3) uint8 arrays (numbered at the nominal rate).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        like: VideoInfo | None = None,
        *,
        fps: Fraction | int | float | None = None,
        time_base: Fraction | None = None,
        width: int | None = None,
        height: int | None = None,
        codec: str = "libx264",
        crf: int = 18,
        preset: str = "medium",
        pix_fmt: str = "yuv420p",
        audio_from: str | os.PathLike | None = None,
        audio_until: float | None = None,
        overwrite: bool = True,
        faststart: bool = True,
    ):
        self.path = Path(path)
        fps = fps if fps is not None else (like.fps if like is not None else None)
        if fps is None:
            raise InputError("VideoWriter needs the source's VideoInfo (like=...) or an fps")
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        if self.fps <= 0:
            raise InputError(f"fps must be positive, got {fps}")
        self.time_base = Fraction(
            time_base if time_base is not None else (like.time_base if like is not None else 1 / self.fps)
        )
        self.width = int(width if width is not None else (like.width if like is not None else 0))
        self.height = int(height if height is not None else (like.height if like is not None else 0))
        if self.width <= 0 or self.height <= 0:
            raise InputError("VideoWriter needs a frame size: pass like=... or width= and height=")
        self.encoded_width, self.encoded_height = even_size(self.width, self.height, pix_fmt)
        self._start_pts = like.start_pts if like is not None else 0
        self._step = max(1, round(1 / (self.fps * self.time_base)))
        self.audio_until = audio_until
        self.frames_written = 0
        self._last_pts: int | None = None
        self._end_pts: int | None = None  # where the last written frame ends (time_base units)
        self._held: av.Packet | None = None
        self._first_dts: Fraction | None = None  # seconds
        self._output: av.container.OutputContainer | None = None
        self._audio_input: av.container.InputContainer | None = None
        self._audio_packets: Iterator[av.Packet] | None = None
        self._pending_audio: av.Packet | None = None

        self._check_target(like, audio_from, overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{self.path.stem}.partial-", suffix=self.path.suffix, dir=self.path.parent)
        os.close(fd)
        self._temp = Path(temp)
        self._closed = False  # from here on a partial file exists and abort() must remove it
        try:
            self._open(codec, crf, preset, pix_fmt, faststart, audio_from)
        except BaseException:
            self.abort()
            raise

    # -- setup ---------------------------------------------------------------------------

    def _check_target(self, like: VideoInfo | None, audio_from, overwrite: bool) -> None:
        if self.path.is_dir():
            raise InputError(f"output {self.path} is a folder; give a file name such as {self.path / 'out.mp4'}")
        if not self.path.suffix:
            raise InputError(f"output {self.path} has no extension; use .mp4, .mov or .mkv")
        for source in (like.path if like is not None else None, audio_from):
            if source is not None and (
                _same_file(self.path, Path(source)) or self.path.resolve() == Path(source).resolve()
            ):
                raise InputError(f"refusing to overwrite the input {source}; choose another output path")
        if self.path.exists() and not overwrite:
            raise InputError(f"{self.path} already exists; remove it or allow overwriting")

    def _open(self, codec, crf, preset, pix_fmt, faststart, audio_from) -> None:
        suffix = self.path.suffix.lower().lstrip(".")
        options = {"movflags": "+faststart"} if faststart and suffix in _MP4_LIKE else {}
        try:
            self._output = av.open(str(self._temp), "w", options=options)
        except (av.FFmpegError, ValueError) as err:
            raise InputError(f"cannot write {self.path}: unknown container for '.{suffix}' ({ffmpeg_reason(err)})") from None
        try:
            stream = self._output.add_stream(codec, rate=self.fps.limit_denominator(1001))
        except (av.FFmpegError, ValueError) as err:
            raise InputError(f"cannot encode {codec} into {self.path.name} ({ffmpeg_reason(err)})") from None
        stream.width, stream.height = self.encoded_width, self.encoded_height
        stream.pix_fmt = pix_fmt
        stream.time_base = self.time_base
        context = stream.codec_context
        context.time_base = self.time_base
        context.colorspace = 1  # BT.709 tags, matching the conversion in `_to_video_frame`
        context.color_primaries = 1
        context.color_trc = 1
        context.color_range = 1  # limited ("tv") range
        if codec in _X264_LIKE:
            context.options = {"crf": str(crf), "preset": preset}
        self._video = stream
        if audio_from is not None:
            self._open_audio(Path(audio_from))

    def _open_audio(self, source: Path) -> None:
        try:
            container = av.open(str(source), "r")
        except av.FFmpegError as err:
            raise InputError(f"cannot read audio from {source} ({ffmpeg_reason(err)})") from None
        audio = next(iter(container.streams.audio), None)
        if audio is None:  # a silent source: nothing to copy
            container.close()
            return
        self._audio_input = container
        try:
            out_audio = self._output.add_stream_from_template(audio)
        except (av.FFmpegError, ValueError) as err:
            raise FveditError(
                f"cannot copy the {audio.codec_context.name} audio of {source} into {self.path.suffix} "
                f"({ffmpeg_reason(err)}); write .mkv instead"
            ) from None
        if "language" in audio.metadata:
            out_audio.metadata["language"] = audio.metadata["language"]
        self._out_audio = out_audio
        self._audio_packets = (p for p in container.demux(audio) if p.size > 0)

    # -- writing -------------------------------------------------------------------------

    def write(self, frame: Frame | np.ndarray, pts: int | None = None) -> None:
        """Encode one upright RGB frame; its pts (source time base) comes from `frame` or `pts`."""
        if self._closed:
            raise FveditError(f"writer for {self.path} is already closed")
        duration = None
        if isinstance(frame, Frame):
            image, duration = frame.rgb, frame.duration
            pts = frame.pts if pts is None else pts
        else:
            image = frame
        if pts is None:
            pts = self._start_pts if self._last_pts is None else self._last_pts + self._step
        if self._last_pts is not None and pts <= self._last_pts:
            raise InputError(f"frame pts must increase: got {pts} after {self._last_pts} (frame {self.frames_written})")
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"frames must be (H, W, 3) uint8 RGB arrays, got {image.dtype} {image.shape}")
        if image.shape[:2] != (self.height, self.width):
            raise InputError(
                f"frame {self.frames_written} is {image.shape[1]}x{image.shape[0]}, "
                f"but this writer was opened for {self.width}x{self.height}"
            )
        video_frame = self._to_video_frame(image, int(pts))
        if duration:  # keeps the last frame's length, hence the total duration, exact
            video_frame.duration = int(duration)
        self._mux_video(self._video.encode(video_frame))
        self._last_pts = int(pts)
        frame_end = int(pts) + int(duration or self._step)
        self._end_pts = frame_end if self._end_pts is None else max(self._end_pts, frame_end)
        self.frames_written += 1

    def write_all(self, frames: Iterable[Frame | np.ndarray]) -> None:
        for frame in frames:
            self.write(frame)

    def _to_video_frame(self, image: np.ndarray, pts: int) -> av.VideoFrame:
        padded = pad_to(np.ascontiguousarray(image), self.encoded_width, self.encoded_height)
        rgb = av.VideoFrame.from_ndarray(padded, format="rgb24")
        out = rgb.reformat(format=self._video.pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG")
        out.pts = pts
        out.time_base = self.time_base
        return out

    def _mux_video(self, packets: list[av.Packet], *, final: bool = False) -> None:
        """Mux encoded packets one behind, so the very last one can be given its true length.

        MP4 stores each sample's duration as the gap to the next dts; only the last sample
        uses its own duration, which decides the video's total duration.
        """
        for packet in packets:
            if self._held is not None:
                self._mux_one(self._held)
            self._held = packet
        if final and self._held is not None:
            last, self._held = self._held, None
            if last.dts is not None and self._end_pts is not None and self._first_dts is not None:
                # track length = last dts + its duration - first dts; make it end - start
                end = (self._end_pts - self._start_pts) * self.time_base + self._first_dts
                last.duration = max(1, round((end - last.dts * last.time_base) / last.time_base))
            self._mux_one(last)

    def _mux_one(self, packet: av.Packet) -> None:
        if self._first_dts is None and packet.dts is not None:
            self._first_dts = packet.dts * packet.time_base
        self._output.mux(packet)
        if packet.dts is not None:
            self._pump_audio(float(packet.dts * packet.time_base))

    def _pump_audio(self, until: float | None) -> None:
        """Copy source audio packets up to time `until` (all when None), keeping files interleaved."""
        if self._audio_packets is None:
            return
        while True:
            packet = self._pending_audio or next(self._audio_packets, None)
            self._pending_audio = None
            if packet is None:
                self._audio_packets = None
                return
            start = float(packet.pts * packet.time_base) if packet.pts is not None else None
            if self.audio_until is not None and start is not None and start >= self.audio_until:
                continue  # past the requested end: drop it
            if until is not None and start is not None and start > until:
                self._pending_audio = packet  # not yet: wait for the video to catch up
                return
            packet.stream = self._out_audio
            self._output.mux(packet)

    # -- finishing -----------------------------------------------------------------------

    def close(self) -> Path:
        """Flush, finish the file and move it onto the target path. Returns the target path."""
        if self._closed:
            return self.path
        try:
            if self.frames_written == 0:
                raise FveditError(f"no frames were written to {self.path}; nothing was saved")
            self._mux_video(self._video.encode(None), final=True)
            self._pump_audio(None)
            self._output.close()
            self._output = None
            self._close_audio()
            os.chmod(self._temp, _new_file_mode())
            os.replace(self._temp, self.path)
        except av.FFmpegError as err:
            self.abort()
            raise FveditError(f"writing {self.path} failed ({ffmpeg_reason(err)})") from None
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Stop writing and delete the partial file; the target path is left as it was."""
        self._closed = True
        for container in (self._output, self._audio_input):
            if container is not None:
                try:
                    container.close()
                except Exception:  # the file is being thrown away; its close errors do not matter
                    pass
        self._output = self._audio_input = None
        self._temp.unlink(missing_ok=True)

    def _close_audio(self) -> None:
        if self._audio_input is not None:
            self._audio_input.close()
            self._audio_input = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    _closed = True  # until __init__ has created the partial file

    def __del__(self) -> None:  # a writer dropped without close() must not leave a partial file
        if not self._closed:
            self.abort()


def write_video(
    path: str | os.PathLike,
    frames: Iterable[Frame | np.ndarray],
    like: VideoInfo | None = None,
    *,
    audio_from: str | os.PathLike | None = None,
    **writer_options,
) -> Path:
    """Write `frames` to `path` in one call; size comes from `like` or the first frame."""
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise FveditError(f"no frames to write to {path}")
    image = first.rgb if isinstance(first, Frame) else np.asarray(first)
    writer_options.setdefault("width", image.shape[1])
    writer_options.setdefault("height", image.shape[0])
    with VideoWriter(path, like, audio_from=audio_from, **writer_options) as writer:
        writer.write(first)
        for frame in iterator:
            writer.write(frame)
    return writer.path
