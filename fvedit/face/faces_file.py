"""Faces files: a video's face detections recorded once, replayed later without the detector.

`fvedit align` runs the real detector (dlib by default) through a `RecordingDetector` and saves
every answer it gave, plus the smoothed quads the crops use, in one .npz (`save_faces`). An
edit with `--faces` replays those answers through a `ReplayDetector`, so tracking, smoothing
and crops run for real, bit for bit as with the detector, on a machine that has no dlib and
no 100 MB landmark model (analyse on a laptop, edit on a server).

The tracker asks two kinds of questions: `detect(frame)` once per frame, in order, and
`detect_near(frame, box)` for frames of a short gap (see `fvedit.face.track`). Both answers
are recorded. A replay that asks something the recording never answered (a re-check on
another frame or box, because --max-gap or --face differ) fails with an InputError naming the
options to match; it never invents "no face".

Loading never runs code (`np.load(allow_pickle=False)`) and every array is checked for name,
dtype and shape, with one-line errors.
"""

from __future__ import annotations

import weakref
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from fvedit.errors import InputError
from fvedit.face.align import OFFICIAL_SIGMAS
from fvedit.face.detect import Box, Face, FaceDetector
from fvedit.face.track import (
    DEFAULT_MAX_GAP,
    DEFAULT_MIN_RELATIVE_SCORE,
    FacePresence,
    track_faces,
)

FORMAT = "fvedit-faces"
VERSION = 1

# The arrays of a faces file (documented for users in `fvedit align --help`):
# name: (dtype kind, shape; "N" frames, "K" detections, "M" re-checks, "L" re-check faces, "R" re-acquisitions)
SCHEMA: dict[str, tuple[str, tuple[int | str, ...]]] = {
    "format": ("U", ()),
    "version": ("i", ()),
    "frames": ("i", ()),
    "width": ("i", ()),
    "height": ("i", ()),
    "detector": ("U", ()),
    "video_sha256": ("U", ()),
    "can_recheck": ("b", ()),
    "face": ("U", ()),
    "max_gap": ("i", ()),
    "sigmas": ("f", (2,)),
    "min_relative_score": ("f", ()),
    "det_frame": ("i", ("K",)),
    "det_box": ("f", ("K", 4)),
    "det_score": ("f", ("K",)),
    "det_landmarks": ("f", ("K", 68, 2)),
    "near_frame": ("i", ("M",)),
    "near_box": ("f", ("M", 4)),
    "near_face_call": ("i", ("L",)),
    "near_face_box": ("f", ("L", 4)),
    "near_face_score": ("f", ("L",)),
    "near_face_landmarks": ("f", ("L", 68, 2)),
    "quads": ("f", ("N", 4, 2)),
    "landmarks": ("f", ("N", 68, 2)),
    "present": ("b", ("N",)),
    "detected": ("b", ("N",)),
    "faces_seen": ("i", ("N",)),
    "reacquired": ("i", ("R",)),
}

_KIND_NAMES = {"U": "text", "i": "integer", "f": "float", "b": "bool"}


def format_selection(select) -> str:
    """A --face value as the user would type it (an (x, y) point as 'x,y')."""
    if isinstance(select, tuple):
        return ",".join(f"{float(v):g}" for v in select)
    return str(select)


class FramesById:
    """Which frame index a frame array was handed in as, by identity (the tracker hands back
    the very arrays of a pending gap to `detect_near`); entries go when the array is freed."""

    def __init__(self) -> None:
        self._index: dict[int, tuple[int, weakref.ref]] = {}

    def add(self, frame: np.ndarray, index: int) -> None:
        key = id(frame)

        def forget(ref: weakref.ref, key: int = key) -> None:
            if self._index.get(key, (None, None))[1] is ref:
                del self._index[key]

        self._index[key] = (index, weakref.ref(frame, forget))

    def find(self, frame: np.ndarray) -> int | None:
        entry = self._index.get(id(frame))
        if entry is None or entry[1]() is not frame:
            return None
        return entry[0]


def _box(box) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in box)  # type: ignore[return-value]


def _check_face(face: Face, where: str) -> Face:
    lm = np.asarray(face.landmarks68, dtype=np.float64)
    if lm.shape != (68, 2):
        raise InputError(f"the detector returned landmarks of shape {lm.shape} on {where}; expected (68, 2)")
    return Face(box=_box(face.box), score=float(face.score), landmarks68=lm)


class RecordingDetector:
    """Wraps a real detector and keeps every answer it gives, for `save_faces`.

    Frames must arrive in order, one `detect` call each (as `track_faces` does). `detect_near`
    exists only when the wrapped detector has it, so the tracker re-checks exactly as it would.
    """

    def __init__(self, detector: FaceDetector) -> None:
        self.inner = detector
        self.name = str(getattr(detector, "name", type(detector).__name__))
        self.detections: list[list[Face]] = []
        self.rechecks: list[tuple[int, Box, list[Face]]] = []
        self._frames = FramesById()
        self.can_recheck = callable(getattr(detector, "detect_near", None))
        if self.can_recheck:
            self.detect_near = self._detect_near

    def detect(self, frame: np.ndarray) -> list[Face]:
        index = len(self.detections)
        faces = [_check_face(f, f"frame {index}") for f in self.inner.detect(frame)]
        self.detections.append(faces)
        self._frames.add(frame, index)
        return list(faces)

    def _detect_near(self, frame: np.ndarray, box: Box) -> list[Face]:
        index = self._frames.find(frame)
        if index is None:
            raise InputError("detect_near got a frame that was never handed to detect; cannot record it")
        faces = [_check_face(f, f"frame {index}") for f in self.inner.detect_near(frame, box)]
        self.rechecks.append((index, _box(box), faces))
        return list(faces)


@dataclass(frozen=True)
class TrackSettings:
    """The tracking options a faces file was made with (replays with others may need re-checks it lacks)."""

    face: str = "largest"
    max_gap: int = DEFAULT_MAX_GAP
    sigmas: tuple[float, float] = OFFICIAL_SIGMAS
    min_relative_score: float = DEFAULT_MIN_RELATIVE_SCORE

    def as_options(self) -> str:
        return f"--face {self.face} --max-gap {self.max_gap}"


def _flatten(faces_by_call: list[list[Face]]) -> dict[str, np.ndarray]:
    rows = [(i, f) for i, faces in enumerate(faces_by_call) for f in faces]
    return {
        "call": np.array([i for i, _ in rows], dtype=np.int64),
        "box": np.array([f.box for _, f in rows], dtype=np.float64).reshape(-1, 4),
        "score": np.array([f.score for _, f in rows], dtype=np.float64),
        "landmarks": np.array([f.landmarks68 for _, f in rows], dtype=np.float64).reshape(-1, 68, 2),
    }


def save_faces(
    target: str | Path | IO[bytes],
    recording: RecordingDetector,
    alignment,
    *,
    width: int,
    height: int,
    settings: TrackSettings,
    video_sha256: str,
) -> None:
    """Write one faces file: what the detector said (`recording`) and the alignment built from it."""
    n = len(recording.detections)
    if alignment.num_frames != n:
        raise InputError(f"the alignment has {alignment.num_frames} frames but {n} were detected")
    det = _flatten(recording.detections)
    near = _flatten([faces for _, _, faces in recording.rechecks])
    arrays = {
        "format": np.array(FORMAT),
        "version": np.int64(VERSION),
        "frames": np.int64(n),
        "width": np.int64(width),
        "height": np.int64(height),
        "detector": np.array(recording.name),
        "video_sha256": np.array(video_sha256),
        "can_recheck": np.bool_(recording.can_recheck),
        "face": np.array(settings.face),
        "max_gap": np.int64(settings.max_gap),
        "sigmas": np.asarray(settings.sigmas, dtype=np.float64),
        "min_relative_score": np.float64(settings.min_relative_score),
        "det_frame": det["call"],
        "det_box": det["box"],
        "det_score": det["score"],
        "det_landmarks": det["landmarks"],
        "near_frame": np.array([i for i, _, _ in recording.rechecks], dtype=np.int64),
        "near_box": np.array([b for _, b, _ in recording.rechecks], dtype=np.float64).reshape(-1, 4),
        "near_face_call": near["call"],
        "near_face_box": near["box"],
        "near_face_score": near["score"],
        "near_face_landmarks": near["landmarks"],
        "quads": np.asarray(alignment.quads, dtype=np.float64),
        "landmarks": np.asarray(alignment.landmarks, dtype=np.float64),
        "present": np.asarray(alignment.present, dtype=bool),
        "detected": np.asarray(alignment.detected, dtype=bool),
        "faces_seen": np.asarray(alignment.faces_seen, dtype=np.int64),
        "reacquired": np.asarray(alignment.reacquired, dtype=np.int64).reshape(-1),
    }
    np.savez_compressed(target, **arrays)


# --------------------------------------------------------------------------------------------
# reading


@dataclass
class FacesFile(FacePresence):
    """A loaded, checked faces file (its arrays: SCHEMA and `fvedit align --help`)."""

    path: Path
    frames: int
    width: int
    height: int
    detector: str
    video_sha256: str  # of the video file the faces were found in: a replay needs the same bytes
    can_recheck: bool
    settings: TrackSettings
    detections: list[list[Face]]
    rechecks: dict[int, list[tuple[Box, list[Face]]]]
    quads: np.ndarray
    landmarks: np.ndarray
    present: np.ndarray
    detected: np.ndarray
    faces_seen: np.ndarray
    reacquired: tuple[int, ...]

    def check_video(self, info, video: Path) -> None:
        """Refuse a video this file was not made for (other frame count or upright size)."""
        mine, theirs = (self.frames, self.width, self.height), (info.frame_count, info.width, info.height)
        if mine != theirs:
            raise InputError(
                f"{self.path} was made for {self.frames} frames at {self.width}x{self.height} but {video} has "
                f"{info.frame_count} frames at {info.width}x{info.height}; run `fvedit align {video}` to make its faces file"
            )

    def check_video_hash(self, sha256: str, video: Path) -> None:
        """Refuse another file with the same frame count and size: its faces would be wrong silently."""
        if sha256 != self.video_sha256:
            raise InputError(
                f"{self.path} was made from another file than {video} (its sha256 differs: a re-encode or another "
                f"clip); run `fvedit align {video}` to make its faces file"
            )

    def check_replay(self, select, max_gap: int, min_relative_score: float = DEFAULT_MIN_RELATIVE_SCORE) -> None:
        """Track on the recorded answers alone (no pixels, milliseconds) so a re-check the file
        lacks, or a --face that finds nothing, fails before any slow work."""
        blank = np.zeros((1, 1, 3), np.uint8)
        frames = (np.broadcast_to(blank, (self.height, self.width, 3)) for _ in range(self.frames))
        track_faces(
            frames, detector=ReplayDetector(self), select=select, max_gap=max_gap,
            min_relative_score=min_relative_score,
            source=str(self.path),
        )


def _read(data, name: str, path: Path, sizes: dict[str, int]) -> np.ndarray:
    kind, shape = SCHEMA[name]
    if name not in data.files:
        raise InputError(f"{path} is not a complete faces file: it has no array '{name}' (make one with `fvedit align`)")
    try:
        arr = data[name]
    except ValueError as err:  # object arrays with allow_pickle=False, a damaged member
        raise InputError(f"cannot read array '{name}' of faces file {path}: {err}") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:  # CRC or decompression errors
        raise InputError(f"cannot read array '{name}' of faces file {path}: the file is damaged ({err})") from None
    ok_kind = arr.dtype.kind == kind or (kind == "i" and arr.dtype.kind == "u")
    ok_shape = arr.ndim == len(shape) and all(
        dim == want if isinstance(want, int) else sizes.setdefault(want, dim) == dim for dim, want in zip(arr.shape, shape)
    )
    if not (ok_kind and ok_shape):
        dims = ", ".join(f"{s}={sizes[s]}" if isinstance(s, str) and s in sizes else str(s) for s in shape)
        want = f"[{dims}]" if shape else "a scalar"
        raise InputError(f"faces file {path}: array '{name}' is {arr.dtype} {list(arr.shape)}; expected {_KIND_NAMES[kind]} {want}")
    if kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(f"faces file {path}: array '{name}' holds NaN or infinite values")
    return arr


def _faces(rows: np.ndarray, box: np.ndarray, score: np.ndarray, lm: np.ndarray, count: int, path: Path, what: str) -> list[list[Face]]:
    """Per-call face lists from flattened rows, in the recorded order."""
    if rows.size and (rows.min() < 0 or rows.max() >= count or np.any(np.diff(rows) < 0)):
        raise InputError(f"faces file {path}: {what} must be sorted indices in 0..{count - 1}")
    out: list[list[Face]] = [[] for _ in range(count)]
    for r, b, s, l in zip(rows.tolist(), box, score.tolist(), lm):
        out[r].append(Face(box=_box(b), score=float(s), landmarks68=np.array(l, dtype=np.float64)))
    return out


def load_faces(path: str | Path) -> FacesFile:
    """Read and check a faces file; every problem is a one-line InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"faces file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"cannot read faces file {path}: not an .npz archive from `fvedit align` ({err})") from None
    if not hasattr(data, "files"):  # a bare .npy array
        raise InputError(f"cannot read faces file {path}: it is a single array, not an .npz archive from `fvedit align`")
    with data:
        sizes: dict[str, int] = {}
        fmt = str(_read(data, "format", path, sizes))
        if fmt != FORMAT:
            raise InputError(f"{path} is not a faces file (format {fmt!r}, expected {FORMAT!r})")
        version = int(_read(data, "version", path, sizes))
        if version != VERSION:
            raise InputError(f"faces file {path} has format version {version}; this fvedit reads version {VERSION}")
        a = {name: _read(data, name, path, sizes) for name in SCHEMA if name not in ("format", "version")}
    n, width, height = int(a["frames"]), int(a["width"]), int(a["height"])
    if n < 1 or width < 1 or height < 1:
        raise InputError(f"faces file {path}: frames, width and height must be positive, got {n}, {width}, {height}")
    if sizes.get("N", n) != n:
        raise InputError(f"faces file {path}: the per-frame arrays have {sizes['N']} rows but frames is {n}")
    detections = _faces(a["det_frame"], a["det_box"], a["det_score"], a["det_landmarks"], n, path, "det_frame")
    near_frame = a["near_frame"]
    if near_frame.size and (near_frame.min() < 0 or near_frame.max() >= n):
        raise InputError(f"faces file {path}: near_frame must hold frame indices in 0..{n - 1}")
    answers = _faces(a["near_face_call"], a["near_face_box"], a["near_face_score"], a["near_face_landmarks"],
                     int(near_frame.size), path, "near_face_call")
    rechecks: dict[int, list[tuple[Box, list[Face]]]] = {}
    for frame, box, faces in zip(near_frame.tolist(), a["near_box"], answers):
        rechecks.setdefault(frame, []).append((_box(box), faces))
    sigmas = tuple(float(s) for s in a["sigmas"])
    settings = TrackSettings(str(a["face"]), int(a["max_gap"]), sigmas, float(a["min_relative_score"]))  # type: ignore[arg-type]
    return FacesFile(
        path=path, frames=n, width=width, height=height, detector=str(a["detector"]),
        video_sha256=str(a["video_sha256"]),
        can_recheck=bool(a["can_recheck"]), settings=settings, detections=detections, rechecks=rechecks,
        quads=a["quads"], landmarks=a["landmarks"], present=a["present"], detected=a["detected"],
        faces_seen=a["faces_seen"].astype(np.int64), reacquired=tuple(int(i) for i in a["reacquired"]),
    )


def load_faces_for(path: str | Path, video: Path, info) -> FacesFile:
    """A faces file checked against the video's probe (`info`): cheap, so it runs before slow work."""
    faces = load_faces(path)
    faces.check_video(info, video)
    return faces


class ReplayDetector:
    """Answers `detect` and `detect_near` from a faces file, as the recorded detector did.

    `name` is the recorded detector's (a replay gives that detector's results, so it shares the
    encode cache with it). Asking for a frame or re-check the file does not hold is an InputError.
    """

    def __init__(self, faces: FacesFile | str | Path) -> None:
        self.faces = faces if isinstance(faces, FacesFile) else load_faces(faces)
        self.name = self.faces.detector
        self._next = 0
        self._frames = FramesById()
        if self.faces.can_recheck:
            self.detect_near = self._detect_near

    def detect(self, frame: np.ndarray) -> list[Face]:
        f = self.faces
        index = self._next
        if index >= f.frames:
            raise InputError(f"{f.path} holds {f.frames} frames but the video has more; run `fvedit align` on this video")
        shape = tuple(np.shape(frame)[:2])
        if shape != (f.height, f.width):
            raise InputError(
                f"{f.path} was made for {f.width}x{f.height} frames but frame {index} is {shape[1]}x{shape[0]}; "
                "run `fvedit align` on this video"
            )
        self._next += 1
        self._frames.add(frame, index)
        return list(f.detections[index])

    def _detect_near(self, frame: np.ndarray, box: Box) -> list[Face]:
        f = self.faces
        index = self._frames.find(frame)
        if index is None:
            raise InputError("detect_near got a frame that was never handed to detect; cannot replay it")
        wanted = np.asarray(_box(box))
        for recorded, faces in f.rechecks.get(index, []):
            if np.allclose(recorded, wanted, rtol=0.0, atol=1e-6):
                return list(faces)
        what = "was not re-checked" if index not in f.rechecks else "was re-checked around another box"
        raise InputError(
            f"frame {index} {what} when {f.path} was made ({f.settings.as_options()}); "
            "use the same --face and --max-gap as the faces file, or run `fvedit align` again with this run's"
        )


# --------------------------------------------------------------------------------------------
# writing a file atomically


class FacesOutput:
    """Where a faces file goes: checked and claimed before the slow work, complete or absent after.

    The file is written under an owned partial name next to the target (`fvedit.partials`) and
    renamed into place by `commit`; `abort` (or leaving the `with` block on an error) removes it,
    so a failed or interrupted `fvedit align` leaves no half-written file and the old one intact.
    """

    def __init__(self, path: Path, *, inputs: tuple[Path, ...] = ()) -> None:
        from fvedit.partials import create_partial_file, remove_orphans

        self.path = Path(path)
        if self.path.is_dir():
            raise InputError(f"output {self.path} is a folder; give a file name such as {self.path / 'faces.npz'}")
        if self.path.exists() and not self.path.is_file():
            raise InputError(f"output {self.path} exists and is not a regular file; choose another output path")
        for source in inputs:
            if _same_file(self.path, Path(source)):
                raise InputError(f"refusing to overwrite the input {source}; choose another output path")
        folder = self.path.parent
        if not folder.is_dir():
            raise InputError(f"the output folder {folder} does not exist; create it first")
        stem = self.path.name.removesuffix(".npz")
        remove_orphans(folder, stem)
        try:
            self.partial, self._claim = create_partial_file(folder, stem, ".npz")
        except OSError as err:
            raise InputError(f"cannot write {self.path}: {err.strerror or err}") from None

    def commit(self) -> Path:
        import os

        os.replace(self.partial, self.path)
        self._claim.release()
        return self.path

    def abort(self) -> None:
        self._claim.release()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> FacesOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False
