"""Deterministic synthetic face videos built from a real face that ships offline.

The face is NASA astronaut Eileen Collins from `skimage.data.astronaut()` (public domain):
a real photograph, so real detectors and landmark models find it, unlike a drawn cartoon.
Her head is cut out with a soft elliptical mask and moved over a smooth moving background
(translation, in-plane rotation and scale over time). Several faces are the same head
tiled side by side, every other one mirrored, so no extra package or download is needed.

The same code makes the awkward inputs video IO has to survive: variable frame rate,
phone-style rotation metadata, odd frame sizes, audio, no face, zero frames, and files
that are not videos at all. Rendering is a pure function of the arguments, so the same
call renders the same frames; x264 (run single-threaded) almost always writes the same
bytes too, but that is not guaranteed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageFilter

# dlib's HOG detector box for the astronaut's face in the 512x512 image: (x0, y0, x1, y1).
ASTRONAUT_FACE_BOX = (175.0, 76.0, 265.0, 166.0)
_HEAD_CENTER = (221.0, 126.0)  # centre of the elliptical head-and-neck cut-out
_HEAD_RADII = (96.0, 122.0)
_FEATHER = 10.0  # px of soft edge on the cut-out

MOTIONS = ("sway", "still")
ROTATIONS = (0, 90, 180, 270)
AUDIO_RATE = 48_000


@lru_cache(maxsize=1)
def _head_cutout() -> Image.Image:
    """The astronaut photo as RGBA whose alpha keeps only her head, hair and neck."""
    from skimage import data

    rgb = data.astronaut()
    h, w = rgb.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = _HEAD_CENTER
    rx, ry = _HEAD_RADII
    radius = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)  # 1 on the ellipse
    edge_px = (1.0 - radius) * min(rx, ry)  # approx. distance inside the ellipse
    alpha = np.clip(edge_px / _FEATHER, 0.0, 1.0)
    rgba = np.dstack([rgb, (alpha * 255).round().astype(np.uint8)])
    return Image.fromarray(rgba, "RGBA")


def _face_center_in_source() -> tuple[float, float]:
    x0, y0, x1, y1 = ASTRONAUT_FACE_BOX
    return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class FaceScene:
    """A moving scene of `faces` astronaut heads on a `width` x `height` canvas.

    `face_scale` is the face box side (dlib-style, brow to chin) as a fraction of the
    shorter side of each face's tile; 0.4 gives a face the HOG detector finds at 256 px.
    """

    width: int = 256
    height: int = 256
    frames: int = 24
    faces: int = 1
    face_scale: float = 0.4
    motion: str = "sway"
    hidden: frozenset[int] = frozenset()  # frames drawn without any face (the person left the shot)
    blurred: frozenset[int] = frozenset()  # frames blurred (radius 5 px) as by fast motion: a detector misses them

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f"frame size must be at least 8x8, got {self.width}x{self.height}")
        if self.faces not in (0, 1, 2, 3):
            raise ValueError(f"faces must be 0, 1, 2 or 3, got {self.faces}")
        if self.motion not in MOTIONS:
            raise ValueError(f"motion must be one of {', '.join(MOTIONS)}, got {self.motion!r}")
        if not 0.05 <= self.face_scale <= 1.5:
            raise ValueError(f"face_scale must be in [0.05, 1.5], got {self.face_scale}")

    def pose(self, index: int, face: int) -> tuple[float, float, float, float]:
        """(centre x, centre y, face box side in px, clockwise degrees) of one face in one frame."""
        tile = self.width / max(self.faces, 1)
        side = self.face_scale * min(tile, self.height) * (1.0, 0.88, 0.94)[face]
        phase = 2 * math.pi * index / max(self.frames, 1) + 1.3 * face
        cx, cy = (face + 0.5) * tile, self.height * 0.5
        angle = 0.0
        if self.motion == "sway":
            cx += 0.06 * tile * math.sin(phase)
            cy += 0.04 * self.height * math.sin(2 * phase)
            side *= 1.0 + 0.06 * math.sin(phase + 0.7)
            angle = 7.0 * math.sin(phase)
        return cx, cy, side, angle

    def face_boxes(self, index: int) -> list[tuple[float, float, float, float]]:
        """Where each face is in frame `index`: axis-aligned (x0, y0, x1, y1), ground truth for detectors."""
        boxes = []
        for face in range(0 if index in self.hidden else self.faces):
            cx, cy, side, _ = self.pose(index, face)
            boxes.append((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
        return boxes

    def background(self, index: int) -> np.ndarray:
        """A smooth, slowly drifting colour gradient (no face-like structure)."""
        y, x = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        shift = 2 * math.pi * index / max(self.frames, 1)
        u, v = x / self.width, y / self.height
        r = 90 + 60 * np.sin(2.0 * u + shift)
        g = 110 + 50 * np.cos(1.5 * v - 0.5 * shift)
        b = 140 + 40 * np.sin(1.2 * (u + v) + 0.3 * shift)
        return np.clip(np.dstack([r, g, b]), 0, 255).round().astype(np.uint8)

    def render(self, index: int) -> np.ndarray:
        """Frame `index` as an upright (height, width, 3) uint8 RGB array."""
        canvas = Image.fromarray(self.background(index), "RGB").convert("RGBA")
        head = _head_cutout()
        sx, sy = _face_center_in_source()
        face_side = ASTRONAUT_FACE_BOX[2] - ASTRONAUT_FACE_BOX[0]
        for face in range(0 if index in self.hidden else self.faces):
            cx, cy, side, angle = self.pose(index, face)
            zoom = side / face_side  # output px per source px
            theta = math.radians(angle)
            cos, sin = math.cos(theta) / zoom, math.sin(theta) / zoom
            mirror = -1.0 if face % 2 else 1.0
            # output (x, y) -> source: undo translation, rotation, zoom (and the mirror)
            coeffs = (
                mirror * cos, mirror * sin, sx - mirror * (cos * cx + sin * cy),
                -sin, cos, sy - (-sin * cx + cos * cy),
            )  # fmt: skip
            layer = head.transform((self.width, self.height), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
            canvas.alpha_composite(layer)
        image = canvas.convert("RGB")
        if index in self.blurred:
            image = image.filter(ImageFilter.GaussianBlur(5))
        return np.asarray(image)


def vfr_durations(frames: int, fps: Fraction, time_base: Fraction) -> list[int]:
    """Irregular but deterministic frame durations (in time_base units) averaging near 1/fps."""
    pattern = (1.0, 0.5, 1.5, 1.0, 2.0, 0.75, 1.25, 0.5)
    nominal = 1 / (Fraction(fps) * time_base)
    return [max(1, round(pattern[i % len(pattern)] * nominal)) for i in range(frames)]


def make_face_video(
    path: str | os.PathLike,
    *,
    frames: int = 24,
    size: tuple[int, int] = (256, 256),
    fps: Fraction | int = 25,
    motion: str = "sway",
    audio: bool = True,
    rotation_meta: int = 0,
    vfr: bool = False,
    faces: int = 1,
    face_scale: float = 0.4,
    crf: int = 16,
    hidden_frames: Iterable[int] = (),
    blurred_frames: Iterable[int] = (),
    keyint: int | None = None,
    open_gop: bool = False,
) -> Path:
    """Write a synthetic face video to `path` (any FFmpeg container by extension) and return it.

    `size` is the upright (width, height). `rotation_meta` (0/90/180/270) stores the frames
    turned by that angle counter-clockwise plus a display matrix telling players to turn
    them back clockwise, like a phone held upright; a correct reader shows the upright scene.
    `vfr` gives irregular timestamps. Odd sizes are encoded as H.264 4:4:4, which allows them.
    The audio is a 440/660 Hz stereo AAC tone lasting exactly as long as the video.
    `hidden_frames` are drawn as background only, as when the person leaves the shot;
    `blurred_frames` are blurred as by fast motion, so a detector may miss the face there.
    `keyint`: a keyframe every that many frames (x264's default is 250), so seeking has several
    to land on; `open_gop`: x264's open GOPs, whose B-frames before a keyframe reference the GOP before.
    """
    scene = FaceScene(width=size[0], height=size[1], frames=frames, faces=faces, face_scale=face_scale,
                      motion=motion, hidden=frozenset(int(i) for i in hidden_frames),
                      blurred=frozenset(int(i) for i in blurred_frames))
    gop = f":keyint={keyint}:min-keyint=1:scenecut=0" if keyint else ""
    gop += ":open-gop=1" if open_gop else ""
    return _write_scene(path, scene, fps=fps, audio=audio, rotation_meta=rotation_meta, vfr=vfr, crf=crf, gop=gop)


def make_no_face_video(
    path: str | os.PathLike,
    *,
    frames: int = 12,
    size: tuple[int, int] = (160, 120),
    fps: Fraction | int = 25,
    audio: bool = False,
) -> Path:
    """A video with no face: the moving gradient background alone."""
    scene = FaceScene(width=size[0], height=size[1], frames=frames, faces=0)
    return _write_scene(path, scene, fps=fps, audio=audio, rotation_meta=0, vfr=False, crf=18)


def make_empty_video(path: str | os.PathLike, *, size: tuple[int, int] = (64, 48)) -> Path:
    """A container with a video stream and zero frames (AVI: MP4 drops empty tracks)."""
    import av  # imported here: the rest of fvedit imports without PyAV
    path = Path(path)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        container.start_encoding()
    return path


def make_non_video_file(path: str | os.PathLike) -> Path:
    """A text file (whatever its extension says): the "not a video" case."""
    path = Path(path)
    path.write_text("this is a text file, not a video\n" * 20)
    return path


def make_audio_only_file(path: str | os.PathLike, *, seconds: float = 0.5) -> Path:
    """An AAC file with sound and no video stream."""
    import av  # imported here: the rest of fvedit imports without PyAV
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        _encode_tone(container, container.add_stream("aac", rate=AUDIO_RATE, layout="stereo"), seconds)
    return path


def make_corrupt_video(path: str | os.PathLike, source: str | os.PathLike) -> Path:
    """The first half of a valid video: a truncated download (MP4 index at the end is missing)."""
    data = Path(source).read_bytes()
    path = Path(path)
    path.write_bytes(data[: len(data) // 2])
    return path


# -- encoding ------------------------------------------------------------------------------


def _write_scene(path, scene: FaceScene, *, fps, audio: bool, rotation_meta: int, vfr: bool, crf: int,
                 gop: str = "") -> Path:
    import av  # imported here: the rest of fvedit imports without PyAV
    path = Path(path)
    if rotation_meta not in ROTATIONS:
        raise ValueError(f"rotation_meta must be one of {ROTATIONS}, got {rotation_meta}")
    fps = Fraction(fps)
    turns = rotation_meta // 90
    coded_w, coded_h = (scene.height, scene.width) if turns % 2 else (scene.width, scene.height)
    odd = coded_w % 2 or coded_h % 2
    time_base = Fraction(1, 90000) if vfr else 1 / fps
    durations = vfr_durations(scene.frames, fps, time_base) if vfr else [1] * scene.frames
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = coded_w, coded_h
        stream.pix_fmt = "yuv444p" if odd else "yuv420p"
        stream.codec_context.time_base = time_base
        stream.time_base = time_base
        # one thread and a synchronous lookahead: encoding decisions do not depend on timing
        stream.codec_context.options = {
            "crf": str(crf),
            "preset": "veryfast",
            "threads": "1",
            "x264-params": "sync-lookahead=0" + gop,
        }
        if rotation_meta:
            stream.set_display_rotation(-rotation_meta)  # PyAV counts counter-clockwise
        tone = container.add_stream("aac", rate=AUDIO_RATE, layout="stereo") if audio else None
        pts = 0
        for index, duration in enumerate(durations):
            coded = np.ascontiguousarray(np.rot90(scene.render(index), k=turns))
            frame = av.VideoFrame.from_ndarray(coded, format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            for packet in stream.encode(frame):
                container.mux(packet)
            pts += duration
        for packet in stream.encode(None):
            container.mux(packet)
        if tone is not None:
            _encode_tone(container, tone, float(pts * time_base))
    return path


def _encode_tone(container, stream, seconds: float) -> None:
    """Exactly round(seconds * rate) samples of a stereo sine tone, 1024-sample AAC frames."""
    import av  # imported here: the rest of fvedit imports without PyAV
    total = round(seconds * AUDIO_RATE)
    for start in range(0, total, 1024):
        n = min(1024, total - start)
        t = (start + np.arange(n)) / AUDIO_RATE
        samples = np.stack([0.25 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)])
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, start, Fraction(1, AUDIO_RATE)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
