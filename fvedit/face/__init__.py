"""Face detection, tracking and FFHQ-style alignment for face videos."""

from fvedit.face.align import (
    OFFICIAL_SIGMAS,
    Alignment,
    align_video,
    compute_quads,
    crop_homography,
    official_crop_1024,
    quad_from_landmarks,
    quads_from_params,
    smooth_quad_params,
    warp_crop_float,
    warp_crop_reference,
)
from fvedit.face.detect import (
    DlibDetector,
    Face,
    FaceAlignmentDetector,
    FaceDetector,
    InsightFaceDetector,
    make_detector,
)
from fvedit.face.faces_file import FacesFile, RecordingDetector, ReplayDetector, load_faces, save_faces
from fvedit.face.track import Track, parse_selection, select_face, track_faces

__all__ = [
    "OFFICIAL_SIGMAS",
    "Alignment",
    "DlibDetector",
    "Face",
    "FaceAlignmentDetector",
    "FaceDetector",
    "FacesFile",
    "InsightFaceDetector",
    "RecordingDetector",
    "ReplayDetector",
    "Track",
    "align_video",
    "compute_quads",
    "crop_homography",
    "load_faces",
    "make_detector",
    "official_crop_1024",
    "parse_selection",
    "quad_from_landmarks",
    "quads_from_params",
    "save_faces",
    "select_face",
    "smooth_quad_params",
    "track_faces",
    "warp_crop_float",
    "warp_crop_reference",
]
