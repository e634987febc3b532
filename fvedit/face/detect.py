"""Per-frame face detection with 68-point (iBUG/dlib layout) landmarks.

Every backend answers the same question for one RGB uint8 frame: which faces are there, and
where are their 68 landmarks. Coordinates are frame pixels with pixel *centres* at integer
positions (x to the right, y down), which is dlib's convention and what the official DVA
quad recipe consumes.

Backends:
- `DlibDetector` (default, the official choice): HOG frontal detector + the 68-point shape
  predictor from the `face-recognition-models` wheel. Works offline.
- `FaceAlignmentDetector`: the `face-alignment` package (S3FD + 2D-FAN). Optional.
- `InsightFaceDetector`: `insightface` (SCRFD + 68-point 3D landmarks). Optional, and its model
  packs are licensed for non-commercial research only.
Optional backends never download: they look for their weight files where their packages keep
them and raise `InputError` naming what is missing.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from fvedit.errors import InputError

Box = tuple[float, float, float, float]

# HOG scores of real faces are ~0.5-2; a blurred or turned face drops to about -0.5 and is missed
# at the default threshold 0. Background false positives were seen at -0.7 and below, and a
# re-check candidate must also sit where the track expects the face (`track.confirm_face`).
RECHECK_THRESHOLD = -0.5


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face: box (x0, y0, x1, y1), detector score, landmarks float64 [68, 2] (x, y)."""

    box: Box
    score: float
    landmarks68: np.ndarray

    @property
    def width(self) -> float:
        return max(self.box[2] - self.box[0], 0.0)

    @property
    def height(self) -> float:
        return max(self.box[3] - self.box[1], 0.0)

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        return np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])

    @property
    def size(self) -> float:
        """A length scale of the face: the geometric mean of the box sides."""
        return float(np.sqrt(self.area))


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that turns an RGB uint8 [H, W, 3] frame into a list of faces.

    A detector may also offer `detect_near(frame, box) -> list[Face]`, a more sensitive look
    around an expected box; without it, frames where the face is missed are never bridged
    (they are passed through unedited).
    """

    name: str

    def detect(self, frame: np.ndarray) -> list[Face]: ...


def check_frame(frame: np.ndarray) -> np.ndarray:
    """Return the frame as a C-contiguous uint8 [H, W, 3] array, or raise a clear InputError."""
    if not isinstance(frame, np.ndarray):
        raise InputError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise InputError(
            f"a frame must be an RGB uint8 array of shape [H, W, 3], got {frame.dtype} {tuple(frame.shape)}"
        )
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise InputError(f"a frame must not be empty, got shape {tuple(frame.shape)}")
    return np.ascontiguousarray(frame)


# --------------------------------------------------------------------------------------------
# dlib (default)


def face_recognition_models_dir() -> Path:
    """Folder holding the `.dat` files of the face-recognition-models wheel.

    Located by path: importing the package runs `pkg_resources`, which new setuptools removed.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the dlib face models are missing: install them with `pip install face-recognition-models`"
        )
    for root in spec.submodule_search_locations:
        models = Path(root) / "models"
        if models.is_dir():
            return models
    raise InputError(
        "face-recognition-models is installed but has no models/ folder; reinstall it with "
        "`pip install --force-reinstall face-recognition-models`"
    )


def _import_dlib():
    try:
        import dlib
    except ImportError as err:
        raise InputError(f"the dlib face detector needs dlib: `pip install dlib-bin` ({err})") from None
    return dlib


@functools.lru_cache(maxsize=2)
def _load_shape_predictor(path: str):
    """Load a shape predictor once per process: the 68-point model is ~100 MB and takes seconds."""
    return _import_dlib().shape_predictor(path)


@functools.lru_cache(maxsize=1)
def _frontal_face_detector():
    """dlib's HOG detector, built once per process (deserialising it takes about a second)."""
    return _import_dlib().get_frontal_face_detector()


class DlibDetector:
    """dlib HOG frontal face detector + 68-point shape predictor (the official DVA pre-processing).

    Detection runs on a copy downscaled so its longest side is at most `detect_max_side` (HOG
    cost grows with pixel count; faces worth editing stay well above HOG's ~80 px minimum), and
    the shape predictor then runs at full resolution on the box mapped back. If nothing is found
    on the downscaled copy and `retry_full_res` is set, the full frame is tried too, so small
    faces are not lost at the price of speed. `detect_max_side=None, upsample=0` reproduces the
    official call exactly (`detector(img)` on the full frame). private_hog: a HOG detector of its
    own (about 0.4 s to build) instead of the process-wide one, for use from another thread.
    """

    name = "dlib"

    def __init__(
        self,
        *,
        detect_max_side: int | None = 640,
        upsample: int = 0,
        threshold: float = 0.0,
        retry_full_res: bool = True,
        predictor_path: str | os.PathLike | None = None,
        private_hog: bool = False,
    ) -> None:
        if detect_max_side is not None and detect_max_side < 64:
            raise InputError(f"detect_max_side must be at least 64 pixels (or None), got {detect_max_side}")
        if upsample < 0:
            raise InputError(f"upsample must be >= 0, got {upsample}")
        dlib = _import_dlib()
        path = Path(predictor_path) if predictor_path is not None else (
            face_recognition_models_dir() / "shape_predictor_68_face_landmarks.dat"
        )
        if not path.is_file():
            raise InputError(
                f"dlib 68-point shape predictor not found at {path}; install face-recognition-models "
                "or pass the path of shape_predictor_68_face_landmarks.dat"
            )
        self._dlib = dlib
        # The HOG scanner keeps scratch state: two threads must not share one (their boxes mix,
        # seen in tests/test_face_pool.py). The shape predictor is read-only and stays shared.
        self._detector = dlib.get_frontal_face_detector() if private_hog else _frontal_face_detector()
        self._predictor = _load_shape_predictor(str(path.resolve()))
        self.detect_max_side = detect_max_side
        self.upsample = int(upsample)
        self.threshold = float(threshold)
        self.retry_full_res = retry_full_res
        self.name = "dlib-official" if detect_max_side is None and upsample == 0 else "dlib"

    def _boxes(
        self, image: np.ndarray, upsample: int | None = None, threshold: float | None = None
    ) -> list[tuple[tuple[int, int, int, int], float]]:
        """HOG boxes as inclusive pixel index rectangles (left, top, right, bottom) with scores
        (the detector's own upsampling and threshold unless given)."""
        upsample = self.upsample if upsample is None else upsample
        threshold = self.threshold if threshold is None else threshold
        rects, scores, _ = self._detector.run(image, int(upsample), float(threshold))
        return [((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in zip(rects, scores)]

    def _fit(self, frame: np.ndarray, boxes) -> list[Face]:
        """The 68-point shape predictor at full resolution inside each (box, score)."""
        faces = []
        for (l, t, r, b), score in boxes:
            shape = self._predictor(frame, self._dlib.rectangle(int(l), int(t), int(r), int(b)))
            lm = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            faces.append(Face(box=(float(l), float(t), float(r), float(b)), score=score, landmarks68=lm))
        return faces

    def detect_near(self, frame: np.ndarray, box: Box, *, threshold: float = RECHECK_THRESHOLD,
                    margin: float = 0.75) -> list[Face]:
        """The more sensitive second look where a face is expected (see `fvedit.face.track`).

        HOG runs at full resolution (2x upsampled when the face is under ~100 px, near HOG's
        80 px window) on the region around `box` grown by `margin` face sizes per side, with
        the score threshold lowered to `threshold`; the shape predictor then fits every box
        found. The caller decides which candidate, if any, continues the track.
        """
        frame = check_frame(frame)
        h, w = frame.shape[:2]
        x0, y0, x1, y1 = (float(v) for v in box)
        side = max(x1 - x0, y1 - y0, 1.0)
        left, top = max(0, int(np.floor(x0 - margin * side))), max(0, int(np.floor(y0 - margin * side)))
        right, bottom = min(w, int(np.ceil(x1 + margin * side)) + 1), min(h, int(np.ceil(y1 + margin * side)) + 1)
        if right - left < 16 or bottom - top < 16:
            return []
        region = np.ascontiguousarray(frame[top:bottom, left:right])
        found = self._boxes(region, upsample=1 if side < 100 else 0, threshold=threshold)
        return self._fit(frame, [((l + left, t + top, r + left, b + top), s) for (l, t, r, b), s in found])

    def detect(self, frame: np.ndarray) -> list[Face]:
        frame = check_frame(frame)
        h, w = frame.shape[:2]
        scale = 1.0
        if self.detect_max_side is not None and max(h, w) > self.detect_max_side:
            scale = self.detect_max_side / max(h, w)
            small_size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = np.asarray(Image.fromarray(frame).resize(small_size, Image.Resampling.BILINEAR))
            sx, sy = w / small_size[0], h / small_size[1]
            found = self._boxes(small)
            # Inclusive index rectangle [l, r] covers pixel edges [l, r + 1): scale the edges back.
            boxes = [
                ((round(l * sx), round(t * sy), round((r + 1) * sx) - 1, round((b + 1) * sy) - 1), s)
                for (l, t, r, b), s in found
            ]
            if not boxes and self.retry_full_res:
                boxes = self._boxes(frame)
        else:
            boxes = self._boxes(frame)
        return self._fit(frame, boxes)


# --------------------------------------------------------------------------------------------
# optional backends


def _has_package(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _torch_hub_checkpoints() -> Path:
    """torch.hub's checkpoint folder ($TORCH_HOME/hub/checkpoints), where face-alignment caches weights."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


# face-alignment 1.5 file names (used only when the package's own URL table can't be read).
_FA_LANDMARK_FILE = "2DFAN4-11f355bf06.pth.tar"
_FA_DETECTOR_FILE = "s3fd-619a316812.pth"


def _face_alignment_weight_files() -> tuple[str, str]:
    """(landmark net, S3FD detector) file names the installed face-alignment would download."""
    landmark, detector = _FA_LANDMARK_FILE, _FA_DETECTOR_FILE
    try:
        from face_alignment import api as fa_api
        from face_alignment.detection.sfd import sfd_detector

        landmark = os.path.basename(fa_api.models_urls["2DFAN-4"])
        detector = os.path.basename(sfd_detector.models_urls["s3fd"])
    except Exception:  # older/newer layouts: fall back to the 1.5 names
        pass
    return landmark, detector


class FaceAlignmentDetector:
    """`face-alignment` (Bulat & Tzimiropoulos): S3FD boxes + 2D-FAN 68-point landmarks.

    Needs the package and its two weight files in torch.hub's checkpoint folder
    (`$TORCH_HOME/hub/checkpoints`, default `~/.cache/torch/hub/checkpoints`); never downloads.
    """

    name = "face-alignment"

    def __init__(self, *, device: str = "cpu", flip_input: bool = False) -> None:
        if not _has_package("face_alignment"):
            raise InputError(
                "the 'face-alignment' detector needs the face-alignment package: `pip install face-alignment`"
            )
        folder = _torch_hub_checkpoints()
        missing = [name for name in _face_alignment_weight_files() if not (folder / name).is_file()]
        if missing:
            raise InputError(
                f"the 'face-alignment' detector needs its weight files {', '.join(missing)} in {folder} "
                "(set TORCH_HOME to use another cache); fvedit does not download them"
            )
        import face_alignment

        types = face_alignment.LandmarksType
        two_d = getattr(types, "TWO_D", None) or getattr(types, "_2D")  # renamed in 1.4
        kwargs: dict = {"device": device, "flip_input": flip_input}
        if "compile" in inspect.signature(face_alignment.FaceAlignment.__init__).parameters:
            kwargs["compile"] = False  # eager: no compile cache, no warm-up
        self._fa = face_alignment.FaceAlignment(two_d, **kwargs)

    def detect(self, frame: np.ndarray) -> list[Face]:
        frame = check_frame(frame)
        lms, _, boxes = self._fa.get_landmarks_from_image(frame, return_bboxes=True)
        if lms is None:
            return []
        faces = []
        for lm, box in zip(lms, boxes):
            box = np.asarray(box, dtype=np.float64)
            score = float(box[4]) if box.shape[0] > 4 else 1.0
            faces.append(
                Face(box=tuple(float(v) for v in box[:4]), score=score,
                     landmarks68=np.asarray(lm, dtype=np.float64)[:, :2].copy())
            )
        return faces


def _insightface_root() -> Path:
    """insightface's model root (`root='~/.insightface'` in FaceAnalysis; no env var is read)."""
    return Path(os.path.expanduser("~/.insightface"))


class InsightFaceDetector:
    """`insightface` FaceAnalysis: SCRFD boxes + the 68-point 3D landmark net (x, y kept).

    Needs the package and an extracted model pack in `<root>/models/<pack>/` (default
    `~/.insightface/models/buffalo_l`, containing a detector and `1k3d68.onnx`); never downloads.
    insightface model packs are for non-commercial research only.
    """

    name = "insightface"

    def __init__(self, *, pack: str = "buffalo_l", root: str | os.PathLike | None = None,
                 det_size: int = 640) -> None:
        if not _has_package("insightface"):
            raise InputError("the 'insightface' detector needs the insightface package: `pip install insightface`")
        root_dir = Path(root) if root is not None else _insightface_root()
        pack_dir = root_dir / "models" / pack
        onnx_files = sorted(pack_dir.glob("*.onnx")) if pack_dir.is_dir() else []
        if not onnx_files:
            raise InputError(
                f"the 'insightface' detector needs the model pack '{pack}' extracted in {pack_dir} "
                "(a detector .onnx and the 68-point landmark net 1k3d68.onnx); fvedit does not download it"
            )
        from insightface.app import FaceAnalysis

        self._app = FaceAnalysis(
            name=pack, root=str(root_dir), allowed_modules=["detection", "landmark_3d_68"],
            providers=["CPUExecutionProvider"],
        )
        if "landmark_3d_68" not in self._app.models:
            raise InputError(
                f"the insightface pack in {pack_dir} has no 68-point landmark model (1k3d68.onnx); "
                "use a pack that has one, e.g. buffalo_l"
            )
        self._app.prepare(ctx_id=-1, det_size=(det_size, det_size))

    def detect(self, frame: np.ndarray) -> list[Face]:
        frame = check_frame(frame)
        bgr = np.ascontiguousarray(frame[:, :, ::-1])  # insightface expects OpenCV's BGR order
        faces = []
        for f in self._app.get(bgr):
            faces.append(
                Face(box=tuple(float(v) for v in f.bbox[:4]), score=float(f.det_score),
                     landmarks68=np.asarray(f.landmark_3d_68, dtype=np.float64)[:, :2].copy())
            )
        return faces


# --------------------------------------------------------------------------------------------

ALIGN_MODES = ("fast", "official")


def detector_settings(align: str = "fast") -> dict:
    """DlibDetector keyword arguments for an --align mode.

    fast: HOG on a copy at most 640 px on its longest side (landmarks still fitted at full
    resolution); on 1080p this moves the quads about 0.9 px on average (2 px at most) from the
    official ones, for several times less HOG work. official: HOG on every full-resolution frame
    without upsampling, the official DVA call `detector(img)`, so boxes, landmarks and quads equal
    the official preprocessing on the same decoded frames.
    """
    if align == "fast":
        return {}
    if align == "official":
        return {"detect_max_side": None, "upsample": 0}
    raise InputError(f"unknown --align {align!r}: use {' or '.join(ALIGN_MODES)}")


def detector_name(detector: str = "dlib", align: str = "fast") -> str:
    """The name a run's encodings and faces files record: 'dlib' or 'dlib-official'."""
    detector_settings(align)
    if align == "official" and detector != "dlib":
        raise InputError(f"--align official is the official dlib preprocessing; it cannot be used with detector {detector!r}")
    return detector if align == "fast" else f"{detector}-official"


DETECTORS = {
    "dlib": DlibDetector,
    "face-alignment": FaceAlignmentDetector,
    "insightface": InsightFaceDetector,
}
_ALIASES = {"fa": "face-alignment", "face_alignment": "face-alignment", "insight": "insightface"}


def make_detector(name: str = "dlib", **kwargs) -> FaceDetector:
    """Build a detector by name: 'dlib' (default), 'face-alignment' or 'insightface'."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DETECTORS:
        raise InputError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[key](**kwargs)
