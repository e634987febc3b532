"""A whole edit per frame, stage by stage, and the peak host memory against video length.

pytest-benchmark (one round each: a whole edit is seconds to minutes):

    python -m pytest bench/bench_edit.py --benchmark-only [--benchmark-json=edit.json]

  test_edit_first       encode (align, crops + encoders, inversion), edit, decode, paste, write
  test_edit_from_cache  the same edit again: the encode cache skips alignment and inversion
extra_info holds ms per frame for every stage. Defaults: `tiny` on a CPU (`dva256` on a GPU), a
generated 16-frame 640x360 face video, DPM-Solver++ 15 steps, batch 8, backend auto.
FVEDIT_BENCH_PRESET / _FRAMES / _STEPS / _BATCH / _BACKEND override.

Memory scaling (a script; each run in a fresh process, peak = its VmHWM):

    python bench/bench_edit.py memory --frames 100,1000          # the real tiny UNet, ~10 min on 2 cores
    python bench/bench_edit.py memory --frames 100,400 --stand-in-unet   # what tests/test_benchmark.py runs

prints the peaks and exits 1 when the longest video's peak exceeds the shortest's by more than 20 %.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pytest  # noqa: E402
import torch  # noqa: E402

from fvedit import benchmark as bm  # noqa: E402

CUDA = torch.cuda.is_available()
PRESET = os.environ.get("FVEDIT_BENCH_PRESET", "dva256" if CUDA else "tiny")
FRAMES = int(os.environ.get("FVEDIT_BENCH_FRAMES", "16"))
STEPS = int(os.environ.get("FVEDIT_BENCH_STEPS", "15"))
BATCH = int(os.environ.get("FVEDIT_BENCH_BATCH", "8"))
BACKEND = os.environ.get("FVEDIT_BENCH_BACKEND", "auto")
MEMORY_LIMIT = 1.2


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A generated face video and an isolated cache; demo weights unless imported ones are installed."""
    work = tmp_path_factory.mktemp("bench-edit")
    video = bm.make_bench_video(work / "face.mp4", FRAMES, 640, 360)
    return video, work


def _edit(video: Path, work: Path, out: str):
    from fvedit.pipeline.jobs import EditRequest, run_edit
    from fvedit.pipeline import PipelineOptions
    from fvedit.diffusion.spec import SamplerSpec

    opts = PipelineOptions(sampler=SamplerSpec("dpm", STEPS), batch_size=BATCH, cache_dir=work / "cache", quiet=True)
    return run_edit(video, work / out, EditRequest(["young"]), preset=PRESET, weights_dir=None,
                    device="auto", backend=BACKEND, opts=opts)  # fmt: skip


def _record(benchmark, summary) -> None:
    stages = bm.per_frame_stages({"stages_s": summary.times.seconds}, summary.frames)
    benchmark.extra_info.update({f"{k} ms/frame": round(v, 2) for k, v in stages.items()})
    benchmark.extra_info.update(frames=summary.frames, cache_hit=summary.cache_hit, preset=PRESET, steps=STEPS)


def test_edit_first(benchmark, workspace):
    video, work = workspace
    benchmark.group = f"whole edit, {PRESET}, {FRAMES} frames 640x360, dpm{STEPS}"
    summary = benchmark.pedantic(lambda: _edit(video, work, "first.mp4"), rounds=1, iterations=1)
    assert not summary.cache_hit and summary.frames == FRAMES
    _record(benchmark, summary)


def test_edit_from_cache(benchmark, workspace):
    video, work = workspace
    _edit(video, work, "warm.mp4")  # makes sure the cache exists whatever ran before
    benchmark.group = f"whole edit, {PRESET}, {FRAMES} frames 640x360, dpm{STEPS}"
    summary = benchmark.pedantic(lambda: _edit(video, work, "again.mp4"), rounds=1, iterations=1)
    assert summary.cache_hit and summary.frames == FRAMES
    _record(benchmark, summary)


# ---------------------------------------------------------------------------------------- script


def memory_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="Peak host memory of encode + edit vs video length (fresh process each).")
    ap.add_argument("--frames", default="100,1000", help="comma-separated video lengths (default 100,1000)")
    ap.add_argument("--size", default="160x120", help="frame size WxH (default 160x120)")
    ap.add_argument("--steps", type=int, default=2, help="DPM-Solver++ steps (default 2)")
    ap.add_argument("--batch", type=int, default=32, help="frames per batch (default 32)")
    ap.add_argument("--stand-in-unet", action="store_true", help="cheap stand-in eps instead of the tiny UNet")
    ap.add_argument("--parallel", action="store_true", help="run the lengths side by side, one thread each")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the result as JSON")
    args = ap.parse_args(argv)
    counts = [int(n) for n in args.frames.split(",")]
    width, height = (int(v) for v in args.size.lower().split("x"))
    res = bm.memory_scaling(counts, width=width, height=height, steps=args.steps, batch=args.batch,
                            stand_in_unet=args.stand_in_unet, parallel=args.parallel)  # fmt: skip
    unet = "stand-in eps" if args.stand_in_unet else "tiny UNet (demo weights)"
    print(f"encode + edit + decode + paste + write, {res['size']}, dpm{args.steps}, batch {args.batch}, {unet}")
    print(f"{'frames':>7}{'peak MiB':>10}{'before work':>13}{'RssAnon':>9}{'RssFile':>9}{'wall s':>8}")
    for r in res["runs"]:
        m = r["memory"]
        print(f"{r['frames']:>7}{r['peak_host_mb']:>10.0f}{r['peak_before_work_mb']:>13.0f}"
              f"{m.get('RssAnon', 0):>9.0f}{m.get('RssFile', 0):>9.0f}{r['wall_s']:>8.0f}")  # fmt: skip
    ok = res["ratio"] <= MEMORY_LIMIT
    print(f"peak ratio longest/shortest = {res['ratio']:.3f} ({'ok' if ok else 'FAIL'}, limit {MEMORY_LIMIT})")
    if args.json_out:
        bm.write_json(args.json_out, bm.result_document(bm.machine_info("cpu"), memory_scaling=res))
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "memory":
        sys.exit(memory_main(sys.argv[2:]))
    print(__doc__)
    sys.exit(2)
