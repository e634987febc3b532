"""Follow one person's face through a video, one pass, keeping only landmarks and boxes.

The official DVA script takes dlib's first detection on every frame and aborts on the first
frame without a face. Here the face is chosen once (on the first frame that has faces) and
followed by box overlap / centre distance. A frame where the followed face is not detected is
one of two things, and telling them apart is what keeps fvedit from inventing faces:

- a *detection miss* (motion blur, a hand, a turned head): the face is there. Each frame of a
  run of at most `max_gap` missing frames is re-checked where the face should be, with the
  detector's more sensitive `detect_near` (full resolution, lower threshold) plus the landmark
  fit. Frames where the face is confirmed are *bridged*: inside the video their landmarks are
  interpolated between the detections around the gap (smoother than a low-threshold fit); at
  the video's ends, where only one side is known, the re-check's own fit is used.
- an *absence* (the person left the shot, a cutaway): nothing is confirmed, or the run is
  longer than `max_gap`. Those frames are not edited at all; the pipeline writes them as they
  were decoded. After a long absence the face is chosen again with the same rule.

Only frames of a pending run are held (at most `max_gap + 1` frames), so memory stays bounded
whatever the video's length.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from fvedit.errors import InputError
from fvedit.face.detect import Box, Face, FaceDetector

# "largest" | "first" (official: the detector's first face) | index (left to right) | (x, y) point
Selection = Union[str, int, tuple[float, float]]

DEFAULT_MAX_GAP = 25  # frames: about one second of video
DEFAULT_MIN_RELATIVE_SCORE = 0.3  # a face counts if it scores >= 0.3x the frame's best
MAX_CONFIRM_SHIFT = 0.5  # a re-checked face's landmarks must centre within 0.5 face sizes of the expected box
MAX_CONFIRM_SCALE = 1.5  # ... and their size stay within this factor of the expected one


class FacePresence:
    """Which frames have the face, from a class's `detected` and `present` masks (bool [N]).

    Shared by `Track`, `fvedit.face.align.Alignment` and `fvedit.pipeline.cache.Encoding`.
    """

    @property
    def present_frames(self) -> np.ndarray:
        """Frames that have the face (detected or bridged): the only ones cropped, inverted and edited."""
        return np.flatnonzero(self.present)

    @property
    def bridged_frames(self) -> np.ndarray:
        """Detection misses where the re-check confirmed the face (they are edited)."""
        return np.flatnonzero(self.present & ~self.detected)

    @property
    def absent_frames(self) -> np.ndarray:
        """Frames without the face: they are passed through unchanged."""
        return np.flatnonzero(~self.present)

    @property
    def num_bridged(self) -> int:
        return int(self.bridged_frames.size)

    @property
    def num_absent(self) -> int:
        return int(self.absent_frames.size)


@dataclass
class Track(FacePresence):
    """One face through N frames.

    landmarks: float64 [N, 68, 2]: detections where `detected`, bridged where `present` only;
        on absent frames the nearest present frame's values are held (never used for pixels).
    boxes: float64 [N, 4] (x0, y0, x1, y1), filled the same way.
    detected: bool [N], whether the followed face was detected on that frame.
    present: bool [N], whether the face is there: detected, or a miss confirmed by the re-check.
    faces_seen: int64 [N], how many (confident) faces the detector reported on each frame.
    first_frame: the frame on which the face was selected.
    reacquired: frames where the face was chosen again after a long absence.
    """

    landmarks: np.ndarray
    boxes: np.ndarray
    detected: np.ndarray
    present: np.ndarray
    faces_seen: np.ndarray
    first_frame: int
    reacquired: tuple[int, ...] = ()

    @property
    def num_frames(self) -> int:
        return int(self.detected.shape[0])

    @property
    def max_faces_seen(self) -> int:
        """The largest number of faces on any one frame; > 1 means the choice of face mattered."""
        return int(self.faces_seen.max()) if self.faces_seen.size else 0

    @property
    def num_missing(self) -> int:
        """Frames where the followed face was not detected (bridged or absent)."""
        return int((~self.detected).sum())


def parse_selection(text: str) -> Selection:
    """CLI helper: 'largest', 'first', an index '1' (left to right) or a point 'x,y'."""
    s = text.strip().lower()
    if s in ("largest", "first"):
        return s
    if "," in s:
        parts = s.split(",")
        try:
            if len(parts) == 2:
                return (float(parts[0]), float(parts[1]))
        except ValueError:
            pass
    else:
        try:
            return int(s)
        except ValueError:
            pass
    raise InputError(
        f"cannot read face selection {text!r}: use 'largest', 'first', a face index such as 0 "
        "(left to right) or a pixel position such as 640,360"
    )


def _check_selection(select: Selection) -> Selection:
    if isinstance(select, str):
        if select not in ("largest", "first"):
            raise InputError(f"unknown face selection {select!r}; use 'largest', 'first', an index or an (x, y) point")
        return select
    if isinstance(select, (bool, np.bool_)):
        raise InputError(f"face selection must be 'largest', 'first', an index or an (x, y) point, got {select!r}")
    if isinstance(select, (int, np.integer)):
        if select < 0:
            raise InputError(f"face index must be >= 0 (faces are numbered left to right from 0), got {select}")
        return int(select)
    if isinstance(select, Sequence) and len(select) == 2:
        return (float(select[0]), float(select[1]))
    raise InputError(f"face selection must be 'largest', 'first', an index or an (x, y) point, got {select!r}")


def confident_faces(faces: Sequence[Face], min_relative_score: float = DEFAULT_MIN_RELATIVE_SCORE) -> list[Face]:
    """The faces scoring at least `min_relative_score` times the best score on the frame.

    Weak detections next to a strong one are mostly false positives (dlib's HOG fires on
    textured clothing at scores near 0 while real faces score ~1); they must not win 'largest'
    or shift the left-to-right numbering. Keeps every face when the best score is not positive.
    """
    faces = list(faces)
    if not faces:
        return faces
    best = max(f.score for f in faces)
    if best <= 0:
        return faces
    return [f for f in faces if f.score >= min_relative_score * best]


def select_face(
    faces: Sequence[Face],
    select: Selection,
    frame_index: int = 0,
    *,
    min_relative_score: float = DEFAULT_MIN_RELATIVE_SCORE,
) -> Face:
    """Pick one face from a frame's detections according to `select` (among `confident_faces`)."""
    select = _check_selection(select)
    if select == "first":
        if not faces:
            raise InputError(f"no face to select on frame {frame_index}")
        return faces[0]
    faces = confident_faces(faces, min_relative_score)
    if not faces:
        raise InputError(f"no face to select on frame {frame_index}")
    if select == "largest":
        return max(faces, key=lambda f: f.area)
    if isinstance(select, int):
        ordered = sorted(faces, key=lambda f: f.center[0])
        if select >= len(ordered):
            raise InputError(
                f"face index {select} requested but frame {frame_index} has {len(ordered)} face(s) "
                f"(indices 0-{len(ordered) - 1}, left to right)"
            )
        return ordered[select]
    point = np.asarray(select, dtype=np.float64)
    inside = [f for f in faces if f.box[0] <= point[0] <= f.box[2] and f.box[1] <= point[1] <= f.box[3]]
    pool = inside or list(faces)
    return min(pool, key=lambda f: float(np.hypot(*(f.center - point))))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_face(
    faces: Sequence[Face],
    last: Face,
    frames_since: int,
    *,
    min_iou: float = 0.3,
    max_shift: float = 0.5,
    max_scale: float = 2.0,
) -> Face | None:
    """The detection that continues `last`, seen `frames_since` frames ago, or None.

    A candidate must keep its size within a factor `max_scale` and either overlap the last box
    (IoU >= min_iou) or have its centre within `max_shift` face sizes per elapsed frame (capped
    at 1.5 sizes, so a gap does not let the track jump to another person). Among candidates
    the best overlap wins, then the nearest centre.
    """
    size = max(last.size, 1.0)
    reach = min(max_shift * max(frames_since, 1), 1.5) * size
    best, best_key = None, None
    for f in faces:
        ratio = max(f.size, 1e-6) / size
        if not (1.0 / max_scale <= ratio <= max_scale):
            continue
        iou = box_iou(f.box, last.box)
        dist = float(np.hypot(*(f.center - last.center)))
        if iou < min_iou and dist > reach:
            continue
        key = (-iou, dist)
        if best_key is None or key < best_key:
            best, best_key = f, key
    return best


def _fill_from(values: np.ndarray, known: np.ndarray, *, interpolate: bool) -> np.ndarray:
    """Values on every frame from those where `known`: linear in time, or copied from the nearest.

    Either way frames before the first / after the last known one copy it (np.interp holds ends).
    """
    n = values.shape[0]
    idx = np.flatnonzero(known)
    flat = values.reshape(n, -1)
    frames = np.arange(n)
    if interpolate:
        out = np.stack([np.interp(frames, idx, flat[idx, k]) for k in range(flat.shape[1])], axis=1)
    else:
        out = flat[nearest_known(known)]
    return out.reshape(values.shape)


def nearest_known(known: np.ndarray) -> np.ndarray:
    """For every frame, the index of the nearest frame where `known` is True (the earlier on ties)."""
    idx = np.flatnonzero(known)
    frames = np.arange(len(known))
    pos = np.searchsorted(idx, frames)
    right = idx[np.minimum(pos, len(idx) - 1)]
    left = idx[np.maximum(pos - 1, 0)]
    return np.where(np.abs(frames - left) <= np.abs(right - frames), left, right)


def present_runs(present: np.ndarray) -> list[slice]:
    """The maximal runs of consecutive True frames, in order, as slices."""
    mask = np.asarray(present, dtype=bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8)))
    return [slice(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]


def _lerp_box(a: Box, b: Box, w: float) -> Box:
    return tuple((1 - w) * p + w * q for p, q in zip(a, b))  # type: ignore[return-value]


def confirm_face(candidates: Sequence[Face], expected: Box) -> Face | None:
    """The re-checked face that continues the track at `expected`, if its landmark fit agrees.

    A candidate must match the expected box as a next-frame detection would (`match_face`), and
    its 68 fitted landmarks must span a face where the box says: their centre within
    MAX_CONFIRM_SHIFT face sizes of the box centre, their extent within a factor
    MAX_CONFIRM_SCALE of the box size. A shape predictor forced into a box on background
    collapses or spills out, and fails this.
    """
    reference = Face(box=tuple(float(v) for v in expected), score=1.0, landmarks68=np.zeros((68, 2)))
    face = match_face(candidates, reference, 1)
    if face is None:
        return None
    lm = np.asarray(face.landmarks68, dtype=np.float64)
    low, high = lm.min(axis=0), lm.max(axis=0)
    extent = float(np.sqrt(max((high - low).prod(), 0.0)))
    size = max(reference.size, 1.0)
    if float(np.hypot(*((low + high) / 2 - reference.center))) > MAX_CONFIRM_SHIFT * size:
        return None
    if not (1.0 / MAX_CONFIRM_SCALE <= extent / size <= MAX_CONFIRM_SCALE):
        return None
    return face


@dataclass
class _Gap:
    """A run of frames where the followed face was not detected, with their pixels for the re-check."""

    frames: list[tuple[int, np.ndarray | None]]
    overflow: bool = False  # longer than max_gap: an absence, never bridged


class _Tracker:
    """The state of one pass (see `track_faces`)."""

    def __init__(self, detector, select: Selection, max_gap: int, min_relative_score: float):
        self.detector = detector
        self.can_recheck = detector is not None and callable(getattr(detector, "detect_near", None))
        self.select, self.max_gap, self.min_relative_score = select, max_gap, min_relative_score
        self.landmarks: list[np.ndarray | None] = []
        self.boxes: list[Box | None] = []
        self.bridged: dict[int, Face | None] = {}  # frame -> re-check fit (None: interpolate)
        self.faces_seen: list[int] = []
        self.last: Face | None = None
        self.last_index = -1
        self.first_frame = -1
        self.reacquired: list[int] = []
        self.gap = _Gap([])

    def add(self, i: int, faces: list[Face], frame: np.ndarray | None) -> None:
        self.faces_seen.append(len(confident_faces(faces, self.min_relative_score)))
        long_absence = self.last is not None and i - self.last_index > self.max_gap + 1
        if self.last is None or long_absence:
            chosen = self._select(faces, i, strict=self.last is None)
            if chosen is not None and self.last is None:
                self.first_frame = i
            elif chosen is not None:
                self.reacquired.append(i)
        else:
            chosen = match_face(faces, self.last, i - self.last_index)
        if chosen is None:
            self.landmarks.append(None)
            self.boxes.append(None)
            self._hold(i, frame)
            return
        self._close_gap(after=chosen)
        self.landmarks.append(np.asarray(chosen.landmarks68, dtype=np.float64))
        self.boxes.append(tuple(float(v) for v in chosen.box))
        self.last, self.last_index = chosen, i

    def _select(self, faces: list[Face], i: int, *, strict: bool) -> Face | None:
        """The face the selection rule picks; after an absence a rule that fits no face finds none."""
        if not faces:
            return None
        try:
            return select_face(faces, self.select, i, min_relative_score=self.min_relative_score)
        except InputError:
            if strict:
                raise
            return None

    def _hold(self, i: int, frame: np.ndarray | None) -> None:
        """Keep a missing frame for the re-check until the gap is known to be short."""
        gap = self.gap
        if gap.overflow:
            return
        gap.frames.append((i, frame if self.can_recheck else None))
        if len(gap.frames) > self.max_gap:
            gap.frames.clear()
            gap.overflow = True  # a long absence: drop the pixels, pass the frames through

    def _close_gap(self, after: Face | None) -> None:
        """Re-check the pending gap between `self.last` and `after` (either may be None)."""
        gap, self.gap = self.gap, _Gap([])
        if gap.overflow or not gap.frames or not self.can_recheck:
            return
        before = self.last  # a gap starts right after the last detection (None: the clip's start)
        if before is None and after is None:
            return
        start, stop = gap.frames[0][0] - 1, gap.frames[-1][0] + 1
        for i, frame in gap.frames:
            if before is not None and after is not None:
                expected = _lerp_box(before.box, after.box, (i - start) / (stop - start))
            else:
                expected = (before or after).box
            face = confirm_face(self.detector.detect_near(frame, expected), expected)
            if face is not None:
                # interior gaps are interpolated; at the ends only the re-check's fit is known
                self.bridged[i] = None if (before is not None and after is not None) else face

    def finish(self, source: str) -> Track:
        self._close_gap(after=None)
        n = len(self.landmarks)
        if n == 0:
            raise InputError(f"{source} has no frames")
        if self.last is None:
            raise InputError(f"no face found in any frame of {source}")
        detected = np.array([lm is not None for lm in self.landmarks], dtype=bool)
        lm_arr = np.zeros((n, 68, 2), dtype=np.float64)
        box_arr = np.zeros((n, 4), dtype=np.float64)
        for i in np.flatnonzero(detected):
            lm = self.landmarks[i]
            if lm.shape != (68, 2):
                raise InputError(f"the detector returned landmarks of shape {lm.shape} on frame {i}; expected (68, 2)")
            lm_arr[i], box_arr[i] = lm, self.boxes[i]
        present = detected.copy()
        fitted = np.zeros(n, dtype=bool)
        for i, face in self.bridged.items():
            present[i] = True
            if face is not None:
                lm_arr[i], box_arr[i], fitted[i] = face.landmarks68, face.box, True
        if not detected.all():
            # bridged interior frames: linear in time between detections; then the rest held
            interp_lm = _fill_from(lm_arr, detected, interpolate=True)
            interp_box = _fill_from(box_arr, detected, interpolate=True)
            fill = present & ~detected & ~fitted
            lm_arr[fill], box_arr[fill] = interp_lm[fill], interp_box[fill]
            lm_arr = np.where(present[:, None, None], lm_arr, _fill_from(lm_arr, present, interpolate=False))
            box_arr = np.where(present[:, None], box_arr, _fill_from(box_arr, present, interpolate=False))
        return Track(
            landmarks=lm_arr,
            boxes=box_arr,
            detected=detected,
            present=present,
            faces_seen=np.asarray(self.faces_seen, dtype=np.int64),
            first_frame=self.first_frame,
            reacquired=tuple(self.reacquired),
        )


def track_faces(
    items: Iterable,
    *,
    detector: FaceDetector | None = None,
    select: Selection = "largest",
    max_gap: int = DEFAULT_MAX_GAP,
    min_relative_score: float = DEFAULT_MIN_RELATIVE_SCORE,
    source: str = "the video",
) -> Track:
    """Follow one face through a stream of frames (with `detector`) or of per-frame detections.

    items: RGB uint8 frames if `detector` is given, else one list of `Face` per frame (then
        nothing can be re-checked, so every miss counts as an absence). Frames are detected and
        dropped one at a time; only the frames of a pending gap (at most `max_gap`) are held.
    select: 'largest' (default), 'first' (the detector's first face, as the official code),
        an index into the faces sorted left to right, or an (x, y) pixel position (the face whose
        box contains it, else the nearest centre). Applied on the first frame that has faces,
        and again after an absence longer than `max_gap`. With several faces and the default,
        the largest is taken without failing; see `Track.faces_seen` to warn the user.
    max_gap: longest run of missing frames that may be bridged, if the detector's `detect_near`
        confirms the face on them (see the module docstring); 0 never bridges.
    min_relative_score: selection and `faces_seen` only consider faces scoring at least this
        fraction of the frame's best score (see `confident_faces`); following uses every face.
    source: how error messages name the input.
    """
    select = _check_selection(select)
    if isinstance(max_gap, bool) or not isinstance(max_gap, (int, np.integer)) or max_gap < 0:
        raise InputError(f"max_gap must be a whole number of frames >= 0, got {max_gap!r}")
    tracker = _Tracker(detector, select, int(max_gap), min_relative_score)
    for i, item in enumerate(items):
        if detector is not None:
            frame = item
            faces = list(detector.detect(item))
        else:
            if isinstance(item, np.ndarray):
                raise InputError("track_faces got frames but no detector; pass detector=... or per-frame face lists")
            frame, faces = None, list(item)
        tracker.add(i, faces, frame)
    return tracker.finish(source)
