"""Video IO: measure (`probe`), stream upright frames (`iter_frames`), write with the source's
timing and audio (`VideoWriter`, `write_video`)."""

from fvedit.video.probe import VideoInfo, probe
from fvedit.video.reader import Frame, VideoReader, iter_frames
from fvedit.video.writer import VideoWriter, write_video

__all__ = ["Frame", "VideoInfo", "VideoReader", "VideoWriter", "iter_frames", "probe", "write_video"]
