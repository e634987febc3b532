"""Ray scale-out: frames/s of one 1080p edit in this process and on 1 and 2 Ray workers, side by side.

Every run is a first edit with a cold encode cache (inversion + decode + paste + write), tiny
preset, reference backend, one torch thread per process (this process and each worker), the
faces replayed from one `fvedit align` file so that detection is not what is measured
(`--detect`: detected in every run, on the workers' chunks with Ray). Two device models:

- cpu: the tiny UNet really runs on the CPU cores (a worker per core);
- simulated: each worker (and this process) has its own simulated device
  (`fvedit.runtime.simulated`, MS per frame per UNet call, sleeping instead of computing), so N
  workers model N GPUs and the host stages are what is left on the cores.

"wall" is the whole call; "steady" leaves out weight loading and the workers' start (once per
pool, paid once for many videos). Goals from issue 15 on this 2-core machine: 2 workers >= 1.5x
one worker; Ray with 1 worker within 10 % of in-process.

    python bench/bench_ray.py --frames 32 --steps 5 --repeat 3   # CPU, about 5 minutes

The same runs as pytest-benchmark groups (one group per device model, a round each, one local Ray
instance for all; FVEDIT_BENCH_FRAMES (16), FVEDIT_BENCH_STEPS (5), FVEDIT_BENCH_SIM_MS (20)):

    FVEDIT_BENCH_THREADS=1 python -m pytest bench/bench_ray.py --benchmark-only
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fvedit.diffusion.spec import SamplerSpec  # noqa: E402
from fvedit.pipeline import PipelineOptions  # noqa: E402
from fvedit.pipeline.jobs import EditRequest, run_align, run_jobs  # noqa: E402
from fvedit.progress import StageTimes  # noqa: E402
from fvedit.synth import make_face_video  # noqa: E402

STARTUP = ("load weights", "start workers")


def options(work: Path, tag: str, faces: Path | None, steps: int, batch: int) -> PipelineOptions:
    return PipelineOptions(sampler=SamplerSpec("dpm", steps), batch_size=batch, cache_dir=work / f"cache-{tag}",
                           quiet=True, threads=1, faces=faces)


def _timed(run) -> tuple[float, float, dict]:
    """(wall s, steady s = wall less weight loading and the workers' start, stage seconds) of run()."""
    t0 = time.perf_counter()
    [s] = run()
    wall = time.perf_counter() - t0
    return wall, wall - sum(s.times.seconds.get(k, 0.0) for k in STARTUP), dict(s.times.seconds)


def run_cpu(video: Path, faces: Path, work: Path, workers: int, steps: int, batch: int,
            on_ray: bool) -> tuple[float, float, dict]:
    """The real tiny UNet: in this process, or on the Ray pool (also with one worker, which
    run_jobs would send to the in-process path)."""
    from fvedit.distributed.ray_run import run_on_pool

    tag = f"{'ray' if on_ray else 'cpu'}{workers}"
    opts = options(work, tag, faces, steps, batch)
    common = dict(preset="tiny", weights_dir=None, device="cpu", backend="reference", opts=opts)
    if on_ray:
        return _timed(lambda: run_on_pool([(video, work / f"{tag}.mp4")], EditRequest(["young"]), workers=workers,
                                          address=None, **common))
    return _timed(lambda: run_jobs([video], work / f"{tag}.mp4", EditRequest(["young"]), workers=1, **common))


def run_simulated(video: Path, faces: Path, work: Path, workers: int, steps: int, batch: int,
                  ms: float) -> tuple[float, float, dict]:
    opts = options(work, f"sim{workers}", faces, steps, batch)
    t0 = time.perf_counter()
    if workers == 0:  # in-process: one simulated device for everything, as `fvedit bench --pipeline` runs it
        from fvedit.pipeline.scheduler import edit_video
        from fvedit.runtime.simulated import simulated_weights

        weights, unet = simulated_weights("tiny", ms)
        times = StageTimes()
        edit_video(video, work / "sim0.mp4", weights, unet, opts, times, _unedited, echo=lambda m: None,
                   writer_options={"threads": 1})
        wall = time.perf_counter() - t0
        return wall, wall, dict(times.seconds)
    from fvedit.distributed.ray_run import run_on_pool

    return _timed(lambda: run_on_pool([(video, work / f"sim{workers}.mp4")], EditRequest([]), preset="tiny",
                                      weights_dir=None, device="cpu", backend="reference", opts=opts, workers=workers,
                                      address=None, simulate_ms=ms))


CONFIGS = [("cpu", 1, "in-process"), ("cpu", 1, "ray"), ("cpu", 2, "ray"),  # (device, workers, path)
           ("simulated", 0, "in-process"), ("simulated", 1, "ray"), ("simulated", 2, "ray")]  # 0: no pool at all


def run_config(config: tuple[str, int, str], video: Path, faces: Path | None, work: Path, steps: int, batch: int,
               ms: float) -> tuple[float, float, dict]:
    device, workers, path = config
    if device == "cpu":
        return run_cpu(video, faces, work, workers, steps, batch, path == "ray")
    return run_simulated(video, faces, work, workers, steps, batch, ms)


def _unedited(enc):
    from fvedit.pipeline.options import EditIdentity

    return EditIdentity(torch.from_numpy(enc.z_id_mean), "none")


FRAMES = int(os.environ.get("FVEDIT_BENCH_FRAMES", "16"))
STEPS = int(os.environ.get("FVEDIT_BENCH_STEPS", "5"))
SIM_MS = float(os.environ.get("FVEDIT_BENCH_SIM_MS", "20"))
BATCH = 4


@pytest.fixture(scope="module")
def ray_clip(tmp_path_factory):
    """(video, its faces file, a folder): a 1080p clip with a keyframe every 8 frames, and one local
    Ray instance (2 CPUs) for every run of the module."""
    ray = pytest.importorskip("ray", reason="pip install -c constraints.txt -e '.[ray]'")
    root = tmp_path_factory.mktemp("bench-ray")
    video = make_face_video(root / "hd.mp4", frames=FRAMES, size=(1920, 1080), face_scale=0.6, audio=True, keyint=8)
    faces, _ = run_align(video, root / "hd.faces.npz", quiet=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield video, faces, root
    ray.shutdown()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[0]}-{c[2]}-{max(c[1], 1)}")
def test_ray(benchmark, ray_clip, config):
    """One first edit (cold encode cache) per run; extra_info: frames/s wall and steady, stages."""
    video, faces, root = ray_clip
    device = config[0]
    work = root / "-".join(map(str, config))
    work.mkdir()
    benchmark.group = (f"ray scale-out, {device if device == 'cpu' else f'simulated {SIM_MS:g} ms'}, "
                       f"{FRAMES} frames 1080p, dpm{STEPS}, batch {BATCH}")
    wall, steady, stages = benchmark.pedantic(lambda: run_config(config, video, faces, work, STEPS, BATCH, SIM_MS),
                                              rounds=1, iterations=1)
    assert wall >= steady > 0
    benchmark.extra_info.update({"frames/s wall": round(FRAMES / wall, 3), "frames/s steady": round(FRAMES / steady, 3)})
    benchmark.extra_info.update({f"{k} s": round(v, 3) for k, v in stages.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--keyint", type=int, default=8,
                    help="a keyframe every that many frames, as camera footage has (about 1 s apart), so that "
                         "the workers' chunks of phase A start at keyframes; 0: one GOP")
    ap.add_argument("--simulate-ms", type=float, default=20.0, help="simulated device ms per frame per UNet call")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--detect", action="store_true",
                    help="detect the faces in every run (on the workers' chunks with Ray) instead of replaying them")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of all the runs, one after the other (the table gives medians, the ratios each round)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import ray

    configs = [c for c in CONFIGS if not (args.skip_cpu and c[0] == "cpu")]
    rows: dict[tuple, list] = {c: [] for c in configs}  # config -> [(wall, steady, stages)] per round
    with tempfile.TemporaryDirectory(prefix="fvedit-bench-ray-") as tmp:
        work = Path(tmp)
        video = make_face_video(work / "hd.mp4", frames=args.frames, size=(1920, 1080), face_scale=0.6, audio=True,
                                keyint=args.keyint or None)
        faces = None if args.detect else run_align(video, work / "hd.faces.npz", quiet=True)[0]
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            for rnd in range(args.repeat):  # every round a cold cache of its own
                here = work / f"round{rnd}"
                here.mkdir()
                for config in configs:
                    got = run_config(config, video, faces, here, args.steps, args.batch, args.simulate_ms)
                    rows[config].append(got)
                    print(f"done round {rnd + 1} {' '.join(map(str, config))}: {got[0]:.1f} s", file=sys.stderr,
                          flush=True)
        finally:
            ray.shutdown()
    report(rows, args)


def report(rows: dict[tuple, list], args) -> None:
    n = args.frames
    gop = f"a keyframe every {args.keyint} frames" if args.keyint else "one GOP"
    gop += ", faces detected" if args.detect else ", faces replayed"
    print(f"\n1920x1080, {n} frames ({gop}), tiny preset, dpm{args.steps}, batch {args.batch}, "
          f"one torch thread per process, {args.repeat} round(s), medians\n")
    print("| device | path | workers | frames/s (wall) | frames/s (steady) |")
    print("|---|---|---|---|---|")
    name = {"cpu": "CPU", "simulated": f"simulated {args.simulate_ms:g} ms"}
    for (device, workers, label), runs in rows.items():
        wall, steady = (statistics.median(r[k] for r in runs) for k in (0, 1))
        print(f"| {name[device]} | {label} | {max(workers, 1)} | {n / wall:.2f} | {n / steady:.2f} |")
    for device in dict.fromkeys(d for d, _, _ in rows):
        inproc = rows.get((device, 1 if device == "cpu" else 0, "in-process"))
        one, two = rows.get((device, 1, "ray")), rows.get((device, 2, "ray"))
        if inproc and one and two:
            over = [o[1] / i[1] for i, o in zip(inproc, one)]
            speed = [o[1] / t[1] for o, t in zip(one, two)]
            print(f"{name[device]}: Ray 1 worker / in-process time " + " / ".join(f"{x:.2f}" for x in over)
                  + " (goal <= 1.10); 2 workers faster than 1 by " + " / ".join(f"{x:.2f}" for x in speed)
                  + "x (goal >= 1.5)")
    print("\nstages, first round (s):")
    for (device, workers, label), runs in rows.items():
        print(f"  {name[device]} {label} {max(workers, 1)}: " + ", ".join(f"{k} {v:.1f}" for k, v in runs[0][2].items()))


if __name__ == "__main__":
    main()
