"""Video IO: measure (`probe`), stream upright frames (`iter_frames`), write with the source's
timing and audio (`VideoWriter`, `write_video`), after checking the output path first
(`check_output`, before any slow work)."""

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
