"""The edit pipeline against a simulated device: how busy today's pipeline keeps a fast GPU.

pytest-benchmark (one round each, every run in a fresh process):

    python -m pytest bench/bench_pipeline.py --benchmark-only [--benchmark-json=pipeline.json]

  test_pipeline[first-t1|t2]    first edit: probe, hash, align (faces replayed), crops + encoders,
                                inversion, decode, paste, write
  test_pipeline[re-edit-t1|t2]  the same edit again, the encoding from the encode cache
The UNet and encoders are `fvedit.runtime.simulated` stand-ins that sleep MS per frame per call
(the GIL released, as a synchronised GPU call), so host stages may overlap them; extra_info holds
`fvedit.benchmark.pipeline_child`'s fields: wall, device, analyse and edit ms per frame, the
device's busy fraction in the edit phase (device_busy_edit) and every stage's own ms per frame.
The clip: a generated 1920x1080 face video (face_scale 0.3) of FVEDIT_BENCH_FRAMES (24) frames; dlib
runs once (`fvedit align`) and every edit replays its faces file. FVEDIT_BENCH_SIM_MS (2.3),
FVEDIT_BENCH_BATCH (16) and FVEDIT_BENCH_STEPS (15: 15 + 15 UNet calls a frame) override.

`fvedit bench --pipeline VIDEO --simulate-device-ms MS` takes the same measurement of any clip.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pytest  # noqa: E402

from fvedit import benchmark as bm  # noqa: E402

FRAMES = int(os.environ.get("FVEDIT_BENCH_FRAMES", "24"))
MS = float(os.environ.get("FVEDIT_BENCH_SIM_MS", "2.3"))
BATCH = int(os.environ.get("FVEDIT_BENCH_BATCH", "16"))
STEPS = int(os.environ.get("FVEDIT_BENCH_STEPS", "15"))
RECORDED = ("frames", "size", "ms", "threads", "batch", "calls_per_frame", "cache_hit", "wall_ms_per_frame",
            "device_ms_per_frame", "analyse_ms_per_frame", "edit_ms_per_frame", "device_busy_edit", "device_busy")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(video, its faces file, a work folder whose encode cache the re-edits share)."""
    from fvedit.pipeline.jobs import run_align
    from fvedit.synth import make_face_video

    root = tmp_path_factory.mktemp("bench-pipeline")
    video = make_face_video(root / "face1080.mp4", frames=FRAMES, size=(1920, 1080), fps=25, audio=False, face_scale=0.3)
    faces, _ = run_align(video, root / "face1080.faces.npz", quiet=True)
    return video, faces, root / "work"


@pytest.mark.parametrize("threads", [1, 2], ids=lambda t: f"t{t}")
@pytest.mark.parametrize("from_cache", [False, True], ids=["first", "re-edit"])
def test_pipeline(benchmark, clip, from_cache, threads):
    video, faces, work = clip
    benchmark.group = f"pipeline, simulated device {MS:g} ms/frame/call, {FRAMES} frames 1080p, batch {BATCH}, dpm{STEPS}"
    res = benchmark.pedantic(
        lambda: bm.bench_pipeline(video, ms=MS, threads=threads, from_cache=from_cache, batch=BATCH, steps=STEPS,
                                  faces=faces, work_dir=work),
        rounds=1, iterations=1,
    )  # fmt: skip
    assert res["frames"] == FRAMES and res["cache_hit"] == from_cache
    benchmark.extra_info.update({k: res[k] for k in RECORDED})
    benchmark.extra_info.update({f"{k} ms/frame": round(v, 2) for k, v in res["stages_ms_per_frame"].items()})
