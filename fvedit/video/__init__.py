"""Video IO: measure (`probe`), stream upright frames (`iter_frames`), write with the source's
timing and audio (`VideoWriter`, `write_video`), after checking the output path first
(`check_output`, before any slow work).

PyAV is needed here only: without it, this package says how to install it in one line, and the
rest of fvedit (`fvedit info`, `fvedit bench`'s UNet and sampler parts, the kernels) still runs.
"""

try:
    import av  # noqa: F401
except ImportError as _err:
    from fvedit.errors import FveditError

    raise FveditError(f"reading and writing video needs PyAV ({_err}): pip install av") from None

from fvedit.video.probe import VideoInfo, probe
from fvedit.video.reader import Frame, VideoReader, iter_frames
from fvedit.video.writer import OUTPUT_SUFFIXES, OutputPlan, VideoWriter, check_output, write_video

__all__ = [
    "OUTPUT_SUFFIXES",
    "Frame",
    "OutputPlan",
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "check_output",
    "iter_frames",
    "probe",
    "write_video",
]
