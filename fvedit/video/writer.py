"""Write edited frames back with the source's exact size, timing and untouched audio, atomically.

Preflight: `check_output(path, inputs=...)` finds every problem with an output path (it is an
input, a folder, has an unknown extension, cannot be created) in milliseconds, so a job can
call it before minutes of alignment and inversion. It creates missing folders and returns an
`OutputPlan` whose `cleanup()` removes exactly those folders again if the run fails.

Timing: every frame is encoded with the pts it had in the source, in the source's time
base, so constant and variable frame rates both survive and the frame count is identical
(peer tools re-time to a fixed fps and drift against the audio). Each packet is given the
duration of the frame it carries (the gap to the next pts; the last frame keeps the
duration the source stored for it), and the last frame is coded as a keyframe so that it
is also the last packet in decode order. That matters because MP4 stores a sample's
duration only as the gap to the next *decode* timestamp (`stts`): with B-frames the last
packet decoded is usually an earlier frame, and the shown-last frame would get somebody
else's length. With it last, its duration is exactly its own, and the edit list (whose end
FFmpeg takes from the largest pts + duration) ends where the source ended.

Audio: the source's audio packets are copied byte for byte (stream copy, no re-encode) and
interleaved with the video as it is written. If the container cannot hold that audio codec
the writer fails loudly instead of silently dropping the sound. MP4/MOV keep every pts as
is; Matroska cannot store negative timestamps, so when copied AAC starts before zero (its
1024-sample priming) the whole file moves later by that delay, sync intact.

Atomicity: everything goes to a hidden `.<name>.partial-<pid>-<random><ext>` file next to
the target (see `fvedit.partials`: the pid and an flock mark it as this run's) and is
renamed onto the target only when complete; an exception or Ctrl-C inside the `with` block
removes the partial file, and a partial left by a killed run is removed by the next one.

Size: the output has exactly the input's width and height, odd ones included. H.264 and
HEVC in 4:2:0 cannot code an odd size: their cropping (SPS frame cropping, the mechanism
that turns 1088 coded rows into 1080) counts in chroma samples, i.e. 2 pixels, and FFmpeg's
`h264_metadata` refuses `crop_right=1` ("must be a multiple of 2"). A container-level crop
(MP4 `clap`, Matroska `PixelCrop`) is ignored by FFmpeg's decoders (a 302x208 stream with a
301x207 `clap` still decodes 302x208) and PyAV cannot write one; padding changes the size.
So a size the pixel format cannot hold is coded as VP9 in that same pixel format: a VP9
frame may have any size (its chroma planes round up), and VP9 plays in Chromium-based
browsers and Firefox, on Android, in VLC, mpv and everything built on FFmpeg. H.264 4:4:4
would be exact too, but its High 4:4:4 profile is refused by most browsers, by Android and
by hardware decoders, so it is used only where FFmpeg cannot put VP9: .mov and .m4v.
QuickTime Player plays neither; for it, give an even-sized input. Even sizes keep H.264
4:2:0, which plays everywhere. Frames are written upright and the output carries no
rotation metadata. Colours are converted and tagged as BT.709 limited range.

Tags: `metadata={"comment": ...}` writes container-level tags. MP4/M4V keep only known keys
(title, comment, description, artist, album, date, genre, copyright, keywords, synopsis),
MOV fewer (title, comment, album, date, genre, copyright), so any other key is refused
rather than silently lost; Matroska keeps any key (and stores its name in upper case, as
its tagging convention says: `comment` reads back as `COMMENT`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from fvedit.errors import FveditError, InputError
from fvedit.partials import Claim, create_partial_file, remove_orphans
from fvedit.video.probe import VideoInfo, ffmpeg_reason
from fvedit.video.reader import Frame

OUTPUT_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv")
_MP4_FAMILY = (".mp4", ".mov", ".m4v")
_VP9_CONTAINERS = (".mp4", ".mkv")  # FFmpeg's mov and ipod (.m4v) muxers do not take VP9
_REORDERING = ("libx264", "libx265")  # B-frames: decode order differs from display order
_ODD_SIZE_CODECS = ("libvpx-vp9",)  # code any size in any chroma format
_MP4_TAGS = frozenset(
    {"title", "comment", "description", "artist", "album", "date", "genre", "copyright", "keywords", "synopsis"}
)
_MOV_TAGS = frozenset({"title", "comment", "album", "date", "genre", "copyright"})
_KEPT_TAGS: dict[str, frozenset[str]] = {".mp4": _MP4_TAGS, ".m4v": _MP4_TAGS, ".mov": _MOV_TAGS}
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")

# x264 preset -> libvpx cpu-used (0 slowest/best .. 5 fastest in "good" mode)
_VP9_SPEED = {"ultrafast": 5, "superfast": 5, "veryfast": 5, "faster": 5, "fast": 4, "medium": 4, "slow": 3}


# -- preflight --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputPlan:
    """An output path that passed `check_output`, and the folders that check created for it."""

    path: Path
    created: tuple[Path, ...] = ()  # folders made for this run, outermost first

    def cleanup(self) -> None:
        """Remove the folders this run created, innermost first, each only while it is empty.

        Call it when the run fails (after the writer has removed its partial file); safe to
        call twice. A folder someone has put a file into stays, and so do the ones above it.
        """
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                return


def check_output(
    path: str | os.PathLike, *, inputs: Sequence[str | os.PathLike] = (), overwrite: bool = True
) -> OutputPlan:
    """Prove that `path` can be written, before any slow work; raise a one-line InputError if not.

    Refuses an output that is one of `inputs` (same path, symlink or hard link), a folder,
    something other than a file, or a name without a video extension (.mp4 .mov .m4v .mkv);
    creates missing parent folders, removes partial files a killed run left for this target,
    and creates and removes a partial file next to it (the only test of writability that
    holds for root and for odd file systems). On success the caller keeps the plan and calls
    `plan.cleanup()` if the run later fails; on failure nothing it created is left behind.
    """
    path = Path(path)
    check_output_name(path)
    for source in inputs:
        if _is_same_file(path, Path(source)):
            raise InputError(f"refusing to overwrite the input {source}; choose another output path")
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; remove it or allow overwriting")
    plan = OutputPlan(path, _make_parent_folders(path))
    try:
        remove_orphans(path.parent, path.stem)
        partial, claim = _create_partial(path)
        claim.release()
        partial.unlink(missing_ok=True)
    except BaseException:
        plan.cleanup()
        raise
    return plan


def check_output_name(path: Path) -> None:
    """The checks that need no writing: not a folder or device, a known video extension."""
    if path.is_dir():
        raise InputError(f"output {path} is a folder; give a file name such as {path / 'out.mp4'}")
    if path.exists() and not path.is_file():
        raise InputError(f"output {path} exists and is not a regular file; choose another output path")
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        what = f"has the extension '{path.suffix}'" if path.suffix else "has no extension"
        raise InputError(f"output {path} {what}; use {', '.join(OUTPUT_SUFFIXES)}")


def _is_same_file(a: Path, b: Path) -> bool:
    """True when writing `a` would replace `b`: the same path, or a link to the same file."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _make_parent_folders(path: Path) -> tuple[Path, ...]:
    """Create the missing folders above `path`; returns them outermost first."""
    missing: list[Path] = []
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: {folder} is not a folder")
    created: list[Path] = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if folder.is_dir():  # made meanwhile by someone else: not ours to remove
                continue
            OutputPlan(path, tuple(created)).cleanup()
            raise InputError(f"cannot write {path}: {folder} is not a folder") from None
        except OSError as err:
            OutputPlan(path, tuple(created)).cleanup()
            raise InputError(f"cannot create the folder {folder} for {path}: {_reason(err)}") from None
        created.append(folder)
    return tuple(created)


def _create_partial(path: Path) -> tuple[Path, Claim]:
    """This run's locked partial file next to `path`; errors name `path`, never the partial."""
    try:
        return create_partial_file(path.parent, path.stem, path.suffix)
    except OSError as err:
        raise InputError(f"cannot write {path}: {_reason(err)}") from None


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


# -- encoder choice ---------------------------------------------------------------------------


def _chroma_block(pix_fmt: str) -> tuple[int, int]:
    """How many pixels share one chroma sample across and down: (2, 2) for 4:2:0."""
    try:
        fmt = av.VideoFormat(pix_fmt)
    except ValueError:
        raise InputError(f"unknown pixel format {pix_fmt!r}; try yuv420p or yuv444p") from None
    return 1024 // max(1, fmt.chroma_width(1024)), 1024 // max(1, fmt.chroma_height(1024))


def pick_encoder(codec: str | None, pix_fmt: str, width: int, height: int, suffix: str) -> tuple[str, str]:
    """The (codec, pixel format) that stores exactly width x height in a `suffix` file.

    `codec=None` chooses: H.264 when the size fits the pixel format's chroma blocks (any
    even size in 4:2:0), else VP9 in the same pixel format, else (.mov/.m4v, which cannot
    hold VP9) H.264 4:4:4. An explicit codec that cannot code the size is refused.
    """
    sub_w, sub_h = _chroma_block(pix_fmt)
    if width % sub_w == 0 and height % sub_h == 0:
        return codec or "libx264", pix_fmt
    if codec in _ODD_SIZE_CODECS:
        return codec, pix_fmt
    if codec is None:
        return ("libvpx-vp9", pix_fmt) if suffix.lower() in _VP9_CONTAINERS else ("libx264", "yuv444p")
    raise InputError(
        f"{codec} in {pix_fmt} cannot store the odd size {width}x{height} (its crop step is 2 pixels); "
        "leave the codec unset (VP9 is used) or choose pix_fmt yuv444p"
    )


def _encoder_options(codec: str, crf: int, preset: str, threads: int | None = None) -> dict[str, str]:
    """Encoder settings; `threads` caps the encoder's worker threads (None: its own default, all cores)."""
    extra = {"threads": str(int(threads))} if threads else {}
    if codec == "libx264":
        return {"crf": str(crf), "preset": preset, **extra}
    if codec == "libx265":  # forced-idr: a forced keyframe is an IDR, so it closes the GOP
        return {"crf": str(crf), "preset": preset, "forced-idr": "1", **extra}
    if codec == "libvpx-vp9":  # x264's crf 0..51 scale onto VP9's 0..63; constant quality (b=0)
        speed = _VP9_SPEED.get(preset, 2)
        return {"crf": str(min(63, round(crf * 63 / 51))), "deadline": "good", "cpu-used": str(speed), "row-mt": "1", **extra}
    return extra


def _check_tags(metadata: Mapping[str, str] | None, path: Path) -> dict[str, str]:
    """Tags the container will keep; a key it would drop is an error, not a silent loss."""
    tags = dict(metadata or {})
    for key, value in tags.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InputError(f"metadata for {path} must map non-empty text keys to text, got {key!r}: {value!r}")
    kept = _KEPT_TAGS.get(path.suffix.lower())
    lost = sorted(key for key in tags if kept is not None and key.lower() not in kept)
    if lost:
        raise InputError(
            f"{path.suffix} files drop the tag(s) {', '.join(lost)}; use one of {', '.join(sorted(kept))} or write .mkv"
        )
    return tags


def _new_file_mode() -> int:
    """The permissions a plainly created file gets (mkstemp's 0600 would hide the result)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# -- writer -----------------------------------------------------------------------------------


class VideoWriter:
    """Encode RGB frames into `path` with the timing of `like` and the audio of `audio_from`.

    Pass `like` (the source's VideoInfo) to reuse its fps, time base and size, or give `fps`
    (and optionally `time_base`, `width`, `height`) directly. Frames may be `Frame` objects
    (their pts is used, and the last one's duration) or plain (H, W, 3) uint8 arrays
    (numbered at the nominal rate). `codec=None` picks the encoder (see `pick_encoder`);
    `metadata` adds container tags. Each frame is encoded when the next one arrives (its
    duration is the gap between them), so one frame is held back until `close()`.
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
        codec: str | None = None,
        crf: int = 18,
        preset: str = "medium",
        pix_fmt: str = "yuv420p",
        audio_from: str | os.PathLike | None = None,
        audio_until: float | None = None,
        overwrite: bool = True,
        faststart: bool = True,
        metadata: Mapping[str, str] | None = None,
        threads: int | None = None,
    ):
        if preset not in X264_PRESETS:
            raise InputError(f"unknown x264 preset {preset!r}: use one of {', '.join(X264_PRESETS)}")
        self.path = Path(path)
        self.threads = threads
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
        check_output_name(self.path)
        self.codec, self.pix_fmt = pick_encoder(codec, pix_fmt, self.width, self.height, self.path.suffix)
        tags = _check_tags(metadata, self.path)
        self._start_pts = like.start_pts if like is not None else 0
        self._step = max(1, round(1 / (self.fps * self.time_base)))
        self.audio_until = audio_until
        self.frames_written = 0
        self._last_pts: int | None = None
        self._held: tuple[av.VideoFrame, int | None] | None = None  # newest frame and its own duration
        self._durations: dict[int, int] = {}  # pts -> duration of frames sent to the encoder
        self._output: av.container.OutputContainer | None = None
        self._audio_input: av.container.InputContainer | None = None
        self._audio_packets: Iterator[av.Packet] | None = None
        self._pending_audio: av.Packet | None = None
        self._finished = False

        sources = [p for p in (like.path if like is not None else None, audio_from) if p is not None]
        self.plan = check_output(self.path, inputs=sources, overwrite=overwrite)
        try:
            self._temp, self._claim = _create_partial(self.path)
        except BaseException:
            self.plan.cleanup()
            raise
        self._closed = False  # from here on a partial file exists and abort() must remove it
        try:
            self._open(crf, preset, faststart, audio_from, tags)
        except BaseException:
            self.abort()
            raise

    # -- setup ---------------------------------------------------------------------------

    def _open(self, crf: int, preset: str, faststart: bool, audio_from, tags: dict[str, str]) -> None:
        suffix = self.path.suffix.lower()
        options = {"movflags": "+faststart"} if faststart and suffix in _MP4_FAMILY else {}
        try:
            self._output = av.open(str(self._temp), "w", options=options)
        except (av.FFmpegError, ValueError, OSError) as err:
            raise InputError(f"cannot write {self.path}: {ffmpeg_reason(err)}") from None
        self._output.metadata.update(tags)
        try:
            stream = self._output.add_stream(self.codec, rate=self.fps.limit_denominator(1001))
        except (av.FFmpegError, ValueError) as err:
            raise InputError(f"cannot encode {self.codec} into {self.path} ({ffmpeg_reason(err)})") from None
        stream.width, stream.height = self.width, self.height
        stream.pix_fmt = self.pix_fmt
        stream.time_base = self.time_base
        context = stream.codec_context
        context.time_base = self.time_base
        context.bit_rate = 0  # quality (crf) decides the size; FFmpeg's default would cap it at 200 kb/s
        context.colorspace = 1  # BT.709 tags, matching the conversion in `_to_video_frame`
        context.color_primaries = 1
        context.color_trc = 1
        context.color_range = 1  # limited ("tv") range
        context.options = _encoder_options(self.codec, crf, preset, self.threads)
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
                f"cannot copy the {audio.codec_context.name} audio of {source} into {self.path} "
                f"({ffmpeg_reason(err)}); write .mkv instead"
            ) from None
        if "language" in audio.metadata:
            out_audio.metadata["language"] = audio.metadata["language"]
        self._out_audio = out_audio
        self._audio_packets = (p for p in container.demux(audio) if p.size > 0)

    # -- writing -------------------------------------------------------------------------

    def write(self, frame: Frame | np.ndarray, pts: int | None = None) -> None:
        """Add one upright RGB frame; its pts (source time base) comes from `frame` or `pts`."""
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
        if self._held is not None:  # the held frame lasts until this one starts
            self._encode(self._held[0], int(pts) - self._held[0].pts)
        self._held = (video_frame, int(duration) if duration else None)
        self._last_pts = int(pts)
        self.frames_written += 1

    def write_all(self, frames: Iterable[Frame | np.ndarray]) -> None:
        for frame in frames:
            self.write(frame)

    def _to_video_frame(self, image: np.ndarray, pts: int) -> av.VideoFrame:
        rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        out = rgb.reformat(format=self.pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG")
        out.pts = pts
        out.time_base = self.time_base
        return out

    def _encode(self, frame: av.VideoFrame | None, duration: int = 0, *, last: bool = False) -> None:
        """Encode a frame that lasts `duration` (None flushes) and mux what comes out.

        The last frame is forced to be a keyframe: a closed GOP puts every earlier frame
        before it in decode order, so its MP4 sample duration is its own (see the module doc).
        """
        if frame is not None:
            frame.duration = duration
            if last and self.codec in _REORDERING:
                frame.pict_type = av.video.frame.PictureType.I
            self._durations[frame.pts] = duration
        try:
            for packet in self._video.encode(frame):
                packet.duration = self._durations.pop(packet.pts, packet.duration)  # still codec time base
                self._mux_one(packet)
        except av.FFmpegError as err:
            self.abort()
            raise FveditError(f"writing {self.path} failed ({ffmpeg_reason(err)})") from None

    def _mux_one(self, packet: av.Packet) -> None:
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
            if not self._finished:
                raise FveditError(f"writing {self.path} was aborted; nothing was saved")
            return self.path
        try:
            if self.frames_written == 0:
                raise FveditError(f"no frames were written to {self.path}; nothing was saved")
            frame, duration = self._held
            self._held = None
            self._encode(frame, duration or self._step, last=True)
            self._encode(None)
            self._pump_audio(None)
            self._output.close()
            self._output = None
            self._close_audio()
            os.chmod(self._temp, _new_file_mode())
            os.replace(self._temp, self.path)
        except av.FFmpegError as err:
            self.abort()
            raise FveditError(f"writing {self.path} failed ({ffmpeg_reason(err)})") from None
        except OSError as err:
            self.abort()
            raise FveditError(f"cannot write {self.path}: {_reason(err)}") from None
        except BaseException:
            self.abort()
            raise
        self._closed = self._finished = True
        self._claim.release()  # only now: until the rename the partial must look owned
        return self.path

    def abort(self) -> None:
        """Stop writing, delete the partial file and the folders this writer created.

        The target path is left as it was. Does nothing after a successful `close()`.
        """
        if self._finished:
            return
        self._closed = True
        for container in (self._output, self._audio_input):
            if container is not None:
                try:
                    container.close()
                except Exception:  # the file is being thrown away; its close errors do not matter
                    pass
        self._output = self._audio_input = None
        self._temp.unlink(missing_ok=True)
        self._claim.release()
        self.plan.cleanup()

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
    _finished = False

    def __del__(self) -> None:  # a writer dropped without close() must not leave a partial file
        if not self._closed:
            self.abort()


def write_video(
    path: str | os.PathLike,
    frames: Iterable[Frame | np.ndarray],
    like: VideoInfo | None = None,
    *,
    audio_from: str | os.PathLike | None = None,
    metadata: Mapping[str, str] | None = None,
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
    with VideoWriter(path, like, audio_from=audio_from, metadata=metadata, **writer_options) as writer:
        writer.write(first)
        for frame in iterator:
            writer.write(frame)
    return writer.path
