"""What a run is asked to do (`PipelineOptions`) and what it reports back (`EditSummary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fvedit.diffusion.spec import SamplerSpec
from fvedit.face.align import OFFICIAL_SIGMAS
from fvedit.face.track import DEFAULT_MAX_GAP
from fvedit.progress import StageTimes
from fvedit.video import VideoInfo


@dataclass
class PipelineOptions:
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    batch_size: int = 8
    device: torch.device = torch.device("cpu")
    face: str | int | tuple[float, float] = "largest"
    sigmas: tuple[float, float] = OFFICIAL_SIGMAS
    detector: str = "dlib"
    align: str = "fast"  # "official": full-resolution detection on every frame (fvedit.face.detect.detector_settings)
    max_gap: int = DEFAULT_MAX_GAP  # longest detection gap that may be bridged (after a re-check)
    faces: Path | None = None  # a faces file from `fvedit align`: replay its detections (no detector needed)
    cache_dir: Path | None = None
    use_cache: bool = True
    require_cache: bool = False  # --from-cache: fail instead of inverting
    feather_px: float = 8.0  # at 256 px crops; scaled with the model resolution
    mask: str = "auto"  # "parser", "hull" or "auto" (parser for real weights, hull for demo weights)
    paste: str = "delta"  # "delta": only edit - input crop is added to the frame; "full": the decoded crop scaled in (official)
    crf: int = 18
    stream: bool = True  # stages overlap in threads (fvedit.pipeline.scheduler); False: one after the other
    x264_preset: str = "faster"  # measured against medium in bench/x264_presets.py (README "What comes back")
    side_by_side: bool = False
    precision: str = "fp16"  # for the torch/onnx/tensorrt backends on a GPU
    temporal_window: int = 1  # sliding-window cross-frame attention (1 = official per-frame attention)
    metrics: bool = False  # measure the written edit against the input (fvedit edit --metrics)
    threads: int | None = None  # CPU threads for torch, onnxruntime and x264 (None: their defaults)
    quiet: bool = False


@dataclass
class EditIdentity:
    """The edited representative identity and a human description of the edit."""

    z_id: torch.Tensor  # [D]
    description: str


@dataclass
class EditSummary:
    output: Path | None
    frames: int
    times: StageTimes
    cache_hit: bool
    cache_folder: Path
    info: VideoInfo
    edit: str
    passed_through: int = 0  # frames without the face, written unchanged
    bridged: int = 0  # detection misses confirmed by the re-check and edited

    wall_s: float | None = None  # the whole run; stages overlap when streamed, so their sum can exceed it

    @property
    def per_frame_ms(self) -> float:
        seconds = self.wall_s if self.wall_s is not None else self.times.total
        return 1000 * seconds / max(self.frames, 1)
