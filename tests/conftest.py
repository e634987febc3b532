"""Shared media fixtures: small synthetic videos, built once per test session.

Everything comes from `fvedit.synth` (a real face photo moving over a gradient), so tests
need no downloads. Sizes stay at 160x120-ish and clips at 12-24 frames to keep CI fast.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from fvedit import synth

SMALL = (160, 120)


@pytest.fixture
def isolated_dirs(tmp_path, monkeypatch):
    """No imported weights and a per-test encode cache: runs see the demo weights and a cold cache."""
    monkeypatch.setenv("FVEDIT_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    monkeypatch.setenv("FVEDIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def recorded(monkeypatch):
    """Frames handed to the video writer (exact pixels, before H.264 compression)."""
    from fvedit.video import VideoWriter

    frames: list[np.ndarray] = []
    original = VideoWriter.write

    def spy(self, frame, pts=None):
        frames.append(np.array(frame.rgb))
        return original(self, frame, pts)

    monkeypatch.setattr(VideoWriter, "write", spy)
    return frames


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def cfr_video(media_dir) -> Path:
    """24 frames, 25 fps, 160x120, with a stereo AAC tone."""
    return synth.make_face_video(media_dir / "cfr.mp4", frames=24, size=SMALL, fps=25, audio=True)


@pytest.fixture(scope="session")
def silent_video(media_dir) -> Path:
    """12 frames at NTSC 30000/1001 fps, no audio."""
    ntsc = Fraction(30000, 1001)
    return synth.make_face_video(media_dir / "silent.mp4", frames=12, size=SMALL, fps=ntsc, audio=False)


@pytest.fixture(scope="session")
def vfr_video(media_dir) -> Path:
    """20 frames with irregular timestamps, with audio."""
    return synth.make_face_video(media_dir / "vfr.mp4", frames=20, size=SMALL, vfr=True, audio=True)


@pytest.fixture(scope="session")
def odd_video(media_dir) -> Path:
    """301x207: odd in both directions."""
    return synth.make_face_video(media_dir / "odd.mp4", frames=12, size=(301, 207), audio=False)


@pytest.fixture(scope="session")
def odd_vfr_video(media_dir) -> Path:
    """301x207 with irregular timestamps and audio: written back as VP9, timing must survive."""
    return synth.make_face_video(media_dir / "odd_vfr.mp4", frames=23, size=(301, 207), vfr=True, audio=True)


@pytest.fixture(scope="session", params=[(301, 207), (301, 208), (300, 207)], ids=lambda s: f"{s[0]}x{s[1]}")
def odd_sized_video(request, media_dir) -> Path:
    """Odd in both directions, only in width, only in height (encoded as H.264 4:4:4)."""
    width, height = request.param
    return synth.make_face_video(media_dir / f"odd{width}x{height}.mp4", frames=8, size=(width, height), audio=False)


@pytest.fixture(scope="session", params=[90, 180, 270], ids=lambda r: f"rot{r}")
def rotated_video(request, media_dir) -> tuple[Path, int]:
    """Phone-style: frames stored turned, display matrix says how to turn them back."""
    rotation = request.param
    path = synth.make_face_video(
        media_dir / f"rot{rotation}.mp4", frames=12, size=SMALL, rotation_meta=rotation, audio=False
    )
    return path, rotation


@pytest.fixture
def partial_holder():
    """Start child processes that each create an owned partial file (`fvedit.partials`) for
    a target named `stem` in `folder`, hold its claim and sleep; returns (process, path).
    Children still running at the end of the test are killed."""
    children: list[subprocess.Popen] = []
    code = (
        "import sys, time; from pathlib import Path; from fvedit.partials import create_partial_file\n"
        "path, claim = create_partial_file(Path(sys.argv[1]), sys.argv[2], '.mp4')\n"
        "print(path, flush=True); time.sleep(120)\n"
    )

    def start(folder: Path, stem: str) -> tuple[subprocess.Popen, Path]:
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(folder), stem], cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE, text=True,
        )
        children.append(child)
        return child, Path(child.stdout.readline().strip())

    yield start
    for child in children:
        child.kill()
        child.wait()
        child.stdout.close()


@pytest.fixture(scope="session")
def bad_files(media_dir, cfr_video) -> dict[str, Path]:
    """Inputs that must be refused with a one-line InputError."""
    garbage = media_dir / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {
        "missing": media_dir / "does-not-exist.mp4",
        "folder": media_dir,
        "text": synth.make_non_video_file(media_dir / "notes.mp4"),
        "garbage": garbage,
        "audio_only": synth.make_audio_only_file(media_dir / "tone.m4a"),
        "empty": synth.make_empty_video(media_dir / "empty.avi"),
        "truncated": synth.make_corrupt_video(media_dir / "truncated.mp4", cfr_video),
    }


# -- an orientation test pattern with a hand-written MP4 display matrix --------------------


def write_marker_video(path: Path, width: int, height: int, frames: int = 3) -> np.ndarray:
    """Dark frames with a bright block in the top-left corner; returns the coded frame."""
    import av  # here, not at the top: the kernel and backend tests run on machines without PyAV

    image = np.full((height, width, 3), 30, np.uint8)
    image[: height // 4, : width // 4] = 235
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        stream.codec_context.options = {"crf": "10", "threads": "1"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return image


def tkhd_matrix_offset(data: bytes) -> int:
    """Byte offset of the (first) track header's 3x3 matrix in an MP4 (ISO 14496-12 8.3.2)."""
    at = data.index(b"tkhd") + 4
    version = data[at]
    return at + 4 + (32 if version == 1 else 20) + 16  # version/flags, times+ids, reserved/layer/volume


def read_tkhd_matrix(path: Path) -> tuple[int, ...]:
    data = path.read_bytes()
    offset = tkhd_matrix_offset(data)
    return struct.unpack(">9i", data[offset : offset + 36])


def patch_tkhd_matrix(path: Path, matrix: tuple[int, ...]) -> None:
    """Overwrite the track matrix in place, the way a phone's muxer stores orientation."""
    data = bytearray(path.read_bytes())
    offset = tkhd_matrix_offset(bytes(data))
    data[offset : offset + 36] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))


ONE, W_ONE = 1 << 16, 1 << 30  # 16.16 and 2.30 fixed-point 1.0
# An iPhone held upright records landscape pixels plus this matrix (a b u / c d v / x y w):
# a=0 b=1 c=-1 d=0, translated by the coded height: players turn the picture 90° clockwise.
IPHONE_PORTRAIT_MATRIX = (0, ONE, 0, -ONE, 0, 0, 0, 0, W_ONE)


@pytest.fixture(scope="session")
def phone_marker_video(media_dir) -> tuple[Path, np.ndarray]:
    """64x48 coded frames with a top-left marker, tagged with the iPhone portrait matrix.

    The matrix is written straight into the MP4 bytes, so the reader's interpretation is
    checked against the file format's convention, not against PyAV's own helper.
    """
    path = media_dir / "phone_marker.mp4"
    coded = write_marker_video(path, 64, 48)
    matrix = list(IPHONE_PORTRAIT_MATRIX)
    matrix[6] = 48 * ONE  # x translation = coded height, as phones write it
    patch_tkhd_matrix(path, tuple(matrix))
    return path, coded


@pytest.fixture(scope="session")
def tkhd_matrix():
    """Read an MP4's track matrix as nine big-endian integers."""
    return read_tkhd_matrix
