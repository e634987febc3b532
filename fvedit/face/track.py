"""Follow one person's face through a video, one pass, keeping only landmarks and boxes.

The official DVA script takes dlib's first detection on every frame and aborts on the first
frame without a face. Here the face is chosen once (on the first frame that has faces),
followed by box overlap / centre distance, and short detection gaps are bridged by linear
interpolation of the landmarks (the nearest detection is held before the first and after
the last one). Gaps longer than `max_gap` frames are an error, since a quad guessed over a
long stretch would paste a face where there is none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from fvedit.errors import InputError
from fvedit.face.detect import Face, FaceDetector

# "largest" | "first" (official: the detector's first face) | index (left to right) | (x, y) point
Selection = Union[str, int, tuple[float, float]]

DEFAULT_MAX_GAP = 25  # frames: about one second of video
DEFAULT_MIN_RELATIVE_SCORE = 0.3  # a face counts if it scores >= 0.3x the frame's best


@dataclass
class Track:
    """One face through N frames.

    landmarks: float64 [N, 68, 2], detections where `detected`, interpolated/held elsewhere.
    boxes: float64 [N, 4] (x0, y0, x1, y1), filled the same way.
    detected: bool [N], whether the followed face was detected on that frame.
    faces_seen: int64 [N], how many (confident) faces the detector reported on each frame.
    first_frame: the frame on which the face was selected.
    """

    landmarks: np.ndarray
    boxes: np.ndarray
    detected: np.ndarray
    faces_seen: np.ndarray
    first_frame: int

    @property
    def num_frames(self) -> int:
        return int(self.detected.shape[0])

    @property
    def max_faces_seen(self) -> int:
        """The largest number of faces on any one frame; > 1 means the choice of face mattered."""
        return int(self.faces_seen.max()) if self.faces_seen.size else 0

    @property
    def num_missing(self) -> int:
        """Frames where the followed face was not detected (interpolated or held)."""
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


def _fill_missing(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Linear interpolation over frames where `known` is False; hold the nearest at the ends."""
    n = values.shape[0]
    idx = np.flatnonzero(known)
    flat = values.reshape(n, -1)
    out = flat.copy()
    frames = np.arange(n)
    for k in range(flat.shape[1]):
        out[:, k] = np.interp(frames, idx, flat[idx, k])  # np.interp holds the end values
    return out.reshape(values.shape)


def _gap_error(start: int, end: int, max_gap: int, where: str) -> InputError:
    n = end - start + 1
    return InputError(
        f"the selected face was lost for {n} consecutive frames (frames {start}-{end}) of {where}, "
        f"more than the {max_gap} that can be bridged; trim the video, choose another face, "
        "or allow longer gaps"
    )


def track_faces(
    items: Iterable,
    *,
    detector: FaceDetector | None = None,
    select: Selection = "largest",
    max_gap: int | None = DEFAULT_MAX_GAP,
    min_relative_score: float = DEFAULT_MIN_RELATIVE_SCORE,
    source: str = "the video",
) -> Track:
    """Follow one face through a stream of frames (with `detector`) or of per-frame detections.

    items: RGB uint8 frames if `detector` is given, else one list of `Face` per frame. Frames
        are detected and dropped one at a time; only landmarks and boxes are kept.
    select: 'largest' (default), 'first' (the detector's first face, as the official code),
        an index into the faces sorted left to right, or an (x, y) pixel position (the face whose
        box contains it, else the nearest centre). Applied on the first frame that has faces.
        With several faces and the default, the largest is taken without failing; see
        `Track.faces_seen` to warn the user.
    max_gap: longest run of frames (at the start, inside, or at the end) where the followed face
        may be missing and is interpolated/held; None for no limit.
    min_relative_score: selection and `faces_seen` only consider faces scoring at least this
        fraction of the frame's best score (see `confident_faces`); following uses every face.
    source: how error messages name the input.
    """
    select = _check_selection(select)
    if max_gap is not None and max_gap < 0:
        raise InputError(f"max_gap must be >= 0 frames (or None), got {max_gap}")

    landmarks: list[np.ndarray | None] = []
    boxes: list[tuple[float, float, float, float] | None] = []
    faces_seen: list[int] = []
    last: Face | None = None
    last_index = -1
    first_frame = -1

    def check_gap(end: int) -> None:
        # Frames last_index+1 .. end are missing; fail if the run exceeds max_gap.
        start = last_index + 1 if last is not None else 0
        if max_gap is None or end - start + 1 <= max_gap:
            return
        if last is None:
            raise InputError(
                f"no face found in the first {end + 1} frames (frames 0-{end}) of {source}, more than the "
                f"{max_gap} that can be bridged; trim the start of the video or allow longer gaps"
            )
        raise _gap_error(start, end, max_gap, source)

    for i, item in enumerate(items):
        if detector is not None:
            faces = list(detector.detect(item))
        else:
            if isinstance(item, np.ndarray):
                raise InputError("track_faces got frames but no detector; pass detector=... or per-frame face lists")
            faces = list(item)
        faces_seen.append(len(confident_faces(faces, min_relative_score)))

        chosen: Face | None
        if last is None:
            chosen = select_face(faces, select, i, min_relative_score=min_relative_score) if faces else None
            if chosen is not None:
                first_frame = i
        else:
            chosen = match_face(faces, last, i - last_index)

        if chosen is None:
            landmarks.append(None)
            boxes.append(None)
            continue
        if i - last_index > 1:
            check_gap(i - 1)
        landmarks.append(np.asarray(chosen.landmarks68, dtype=np.float64))
        boxes.append(tuple(float(v) for v in chosen.box))
        last, last_index = chosen, i

    n = len(landmarks)
    if n == 0:
        raise InputError(f"{source} has no frames")
    if last is None:
        raise InputError(f"no face found in any frame of {source}")
    if last_index < n - 1:
        check_gap(n - 1)

    detected = np.array([lm is not None for lm in landmarks], dtype=bool)
    lm_arr = np.zeros((n, 68, 2), dtype=np.float64)
    box_arr = np.zeros((n, 4), dtype=np.float64)
    for i in np.flatnonzero(detected):
        lm = landmarks[i]
        if lm.shape != (68, 2):
            raise InputError(f"the detector returned landmarks of shape {lm.shape} on frame {i}; expected (68, 2)")
        lm_arr[i] = lm
        box_arr[i] = boxes[i]
    if not detected.all():
        lm_arr = _fill_missing(lm_arr, detected)
        box_arr = _fill_missing(box_arr, detected)
    return Track(
        landmarks=lm_arr,
        boxes=box_arr,
        detected=detected,
        faces_seen=np.asarray(faces_seen, dtype=np.int64),
        first_frame=first_frame,
    )
