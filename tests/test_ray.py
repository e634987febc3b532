"""Scale-out on Ray (`fvedit.distributed`): the same output as one process, whatever the workers do.

One local Ray instance (127.0.0.1, 3 CPUs) serves the whole test session; every test uses the tiny
preset with demo weights and a few frames. Torch runs one thread in this process and in every
worker, so the in-process reference and the workers compute with the same kernels.

"The same output" is checked on the frames handed to the video encoder (the `recorded` fixture)
and on the output's audio packets. The H.264 bytes themselves are not compared: x264 here does
not reproduce its own output from identical frames run to run, even with one thread (measured:
4 encodes of the same 7 frames gave 3 different streams), so two runs of one process differ too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fvedit.diffusion.spec import SamplerSpec
from fvedit.errors import InputError
from fvedit.pipeline import PipelineOptions
from fvedit.pipeline.jobs import EditRequest, run_jobs
from fvedit.synth import make_face_video
from fvedit.video import iter_frames

ray = pytest.importorskip("ray", reason="Ray is in the dev extra; CI installs it")

FAST = dict(preset="tiny", weights_dir=None, device="cpu", backend="reference")
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("isolated_dirs", "one_thread")


@pytest.fixture(scope="module", autouse=True)
def ray_instance(tmp_path_factory):
    """The workers inherit this environment: no imported weights (the demo weights, like the tests)."""
    saved = os.environ.get("FVEDIT_WEIGHTS_DIR")
    os.environ["FVEDIT_WEIGHTS_DIR"] = str(tmp_path_factory.mktemp("no-weights"))
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("FVEDIT_WEIGHTS_DIR", None)
    else:
        os.environ["FVEDIT_WEIGHTS_DIR"] = saved


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ray")
    return [make_face_video(folder / f"clip{i}.mp4", frames=5 + i, size=(160, 120), fps=25, audio=True,
                            face_scale=0.55 + 0.05 * i) for i in range(3)]


def opts(tmp_path: Path, **kw) -> PipelineOptions:
    base = dict(sampler=SamplerSpec("dpm", 2), batch_size=2, cache_dir=tmp_path / "cache", quiet=True, threads=1)
    base.update(kw)
    return PipelineOptions(**base)


def decoded(path: Path) -> list[np.ndarray]:
    return [f.rgb.copy() for f in iter_frames(path)]


def audio_packets(path: Path) -> list[bytes]:
    import av

    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(audio=0) if p.size]


def edit(video: Path, out: Path, tmp_path: Path, workers: int, recorded: list, **kw) -> list[np.ndarray]:
    """The frames one edit hands to the encoder (a cold cache each: every run inverts)."""
    cache = tmp_path / f"cache-{workers}-{out.stem}"
    recorded.clear()
    [summary] = run_jobs([video], out, EditRequest(["young"]), opts=opts(tmp_path, cache_dir=cache), workers=workers,
                         **FAST, **kw)
    assert not summary.cache_hit and summary.frames == len(recorded)
    return [f.copy() for f in recorded]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) > 0 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_workers_1_2_3_write_the_same_video(clips, tmp_path, recorded):
    video = clips[1]
    frames = {w: edit(video, tmp_path / f"w{w}.mp4", tmp_path, w, recorded) for w in (1, 2, 3)}
    assert len(frames[1]) == 6
    assert not same(frames[1], decoded(video))  # the face was edited
    from fvedit.pipeline.cache import load_encoding

    def x_T(w):  # each run's cache holds its one encoding
        cache = tmp_path / f"cache-{w}-w{w}"
        [folder] = [p for p in cache.iterdir() if not p.name.startswith(".")]
        return load_encoding(cache, folder.name).x_T[:]

    for w in (2, 3):
        assert same(frames[1], frames[w]), w
        assert audio_packets(tmp_path / f"w{w}.mp4") == audio_packets(tmp_path / "w1.mp4") == audio_packets(video)
        assert len(decoded(tmp_path / f"w{w}.mp4")) == 6
        assert np.array_equal(x_T(w), x_T(1))  # inverted and decoded in one task per batch, written here


def test_a_re_edit_on_the_pool_reuses_the_single_process_encoding(clips, tmp_path, recorded):
    video = clips[0]
    [first] = run_jobs([video], tmp_path / "a.mp4", EditRequest(["young"]), opts=opts(tmp_path), workers=1, **FAST)
    one = [f.copy() for f in recorded]
    recorded.clear()
    [again] = run_jobs([video], tmp_path / "b.mp4", EditRequest(["young"]), opts=opts(tmp_path), workers=2, **FAST)
    assert not first.cache_hit and again.cache_hit and again.cache_folder == first.cache_folder
    assert same(one, recorded)


def test_a_worker_killed_during_decoding_changes_nothing(clips, tmp_path, monkeypatch, recorded):
    """A worker is killed while it decodes a batch: Ray restarts it, the batch runs again, and the
    frames are those of a run without the kill. The UNet is the simulated device's stand-in
    (`fvedit.runtime.simulated`, 150 ms per frame per call) so that the batch is surely in flight."""
    from fvedit.distributed import ray_run

    video = clips[2]

    def run(tag: str, **kw) -> list[np.ndarray]:
        recorded.clear()
        [s] = ray_run.run_on_pool([(video, tmp_path / f"{tag}.mp4")], EditRequest([]), preset="tiny", weights_dir=None,
                                  device="cpu", backend="reference", opts=opts(tmp_path, cache_dir=tmp_path / tag),
                                  workers=2, address=None, simulate_ms=150.0, **kw)
        assert not s.cache_hit and s.frames == len(recorded) == 7
        return [f.copy() for f in recorded]

    reference = run("calm")
    pools, killed, after = [], [], []
    original = ray_run.PoolDecoder.__call__

    def kill_once(self, batch):
        out = original(self, batch)  # batch 0 is back; batch 1 is running on the other worker
        if not killed:
            pid = pools[0].workers[1]["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        after.append(pools[0].pids())
        return out

    monkeypatch.setattr(ray_run.PoolDecoder, "__call__", kill_once)
    frames = run("killed", on_pool=pools.append)
    assert killed and len(after) == 4  # 7 frames in batches of 2
    assert killed[0] not in after[-1] and len(after[-1]) == 2  # a new process holds the model again
    assert same(reference, frames)
    assert not same(reference, [f for f in decoded(video)])  # the simulated decode did change the faces


def test_a_worker_killed_during_the_analysis_changes_nothing(clips, tmp_path, monkeypatch):
    """A worker is killed in phase A while it cuts and encodes its first chunk: its two chunks (that
    one and the one queued behind it) run again on the restarted worker, and the encoding is the
    one of a run without the kill. The encoders are the simulated device's stand-ins (150 ms per
    frame), so that the chunk is surely not done when the kill comes."""
    import threading

    from fvedit.distributed import pool as pool_module
    from fvedit.distributed import ray_run
    from fvedit.distributed.chunks import ChunkJob
    from fvedit.pipeline.cache import load_encoding

    video = clips[2]  # 7 frames, batches of 2: 4 chunks, two on each worker (round robin)

    def run(tag: str, **kw):
        cache = tmp_path / tag
        [s] = ray_run.run_on_pool([(video, None)], EditRequest([]), preset="tiny", weights_dir=None, device="cpu",
                                  backend="reference", opts=opts(tmp_path, cache_dir=cache), workers=2, address=None,
                                  simulate_ms=150.0, **kw)
        return load_encoding(cache, s.cache_folder.name)

    reference = run("calm")
    pools, killed, ran_by = [], [], []
    original = pool_module.WorkerPool.map_ordered

    def kill(pid: int) -> None:
        killed.append(pid)
        os.kill(pid, signal.SIGKILL)

    def kill_once(self, jobs, ahead=None):
        jobs = list(jobs)
        cropping = bool(jobs) and isinstance(jobs[0], ChunkJob) and jobs[0].kind == "crop+encode"
        if cropping:  # 0.1 s after the chunks went out: worker 1 is in its first (>= 0.3 s) or before it
            threading.Timer(0.1, kill, args=(pools[0].workers[1]["pid"],)).start()
        for result in original(self, iter(jobs), ahead):
            if cropping:
                ran_by.append(result.worker)
            yield result

    monkeypatch.setattr(pool_module.WorkerPool, "map_ordered", kill_once)
    got = run("killed", on_pool=pools.append)
    assert killed and killed[0] not in pools[0].pids()  # a new process took the dead one's place
    first = {w["name"] for w in pools[0].workers}
    assert len(ran_by) == 4 and ran_by[0] in first and ran_by[2] in first  # worker 0's chunks: untouched
    assert ran_by[1] not in first and ran_by[3] not in first  # worker 1's: run again, on the new process
    for name in ("crops", "x_T"):
        assert np.array_equal(getattr(reference, name)[:], getattr(got, name)[:]), name
    for name in ("z_id", "z_lnd", "quads", "present", "z_id_mean"):
        assert np.array_equal(getattr(reference, name), getattr(got, name)), name
    assert np.abs(got.z_id).sum() > 0


def test_three_videos_in_one_call_keep_their_names(clips, tmp_path, recorded, monkeypatch):
    """Each output as the video alone would get it; the next video is analysed while the one
    before is decoded (its analysis starts before that edit's decode ends)."""
    from fvedit.pipeline import scheduler

    events = []
    real_analyse, real_decode = scheduler.analyse, scheduler.decode_and_paste

    def analyse(video, *a, **k):
        events.append(("analyse", video.name, time.perf_counter()))
        return real_analyse(video, *a, **k)

    def decode_and_paste(video, *a, **k):
        out = real_decode(video, *a, **k)
        events.append(("decoded", video.name, time.perf_counter()))
        return out

    monkeypatch.setattr(scheduler, "analyse", analyse)
    monkeypatch.setattr(scheduler, "decode_and_paste", decode_and_paste)
    folder = tmp_path / "out"
    summaries = run_jobs(clips, folder, EditRequest(["young"]), opts=opts(tmp_path), workers=2, **FAST)
    together = [f.copy() for f in recorded]
    when = {(kind, name): t for kind, name, t in events}
    for before, after in zip(clips, clips[1:]):
        assert when["analyse", after.name] < when["decoded", before.name]
    monkeypatch.setattr(scheduler, "analyse", real_analyse)
    monkeypatch.setattr(scheduler, "decode_and_paste", real_decode)
    assert [s.output for s in summaries] == [folder / c.name for c in clips]
    assert [s.frames for s in summaries] == [5, 6, 7] and len(together) == 18
    alone = []
    for clip in clips:
        alone += edit(clip, tmp_path / f"one-{clip.name}", tmp_path, 1, recorded)
    assert same(together, alone)
    for clip, s in zip(clips, summaries):
        assert len(decoded(s.output)) == s.frames and audio_packets(s.output) == audio_packets(clip)


def test_the_same_video_twice_is_analysed_once_and_then_reused(clips, tmp_path, recorded):
    """A copy right after its original (another name, the same bytes) waits for the original's
    encoding and reuses it, instead of being analysed alongside it; a different clip between the
    two does not change that (the original is committed by then)."""
    from fvedit.distributed.ray_run import same_as_previous

    copy = tmp_path / "copy" / "again.mp4"
    copy.parent.mkdir()
    shutil.copyfile(clips[0], copy)
    assert same_as_previous([clips[0], copy, clips[1], clips[0], clips[0]]) == [False, True, False, False, True]
    assert same_as_previous([clips[1], clips[2]]) == [False, False]
    summaries = run_jobs([clips[0], copy, clips[1], clips[0]], None, EditRequest([]), encode_only=True, workers=2,
                         opts=opts(tmp_path), **FAST)
    assert [s.cache_hit for s in summaries] == [False, True, False, True]
    twin = tmp_path / "copy" / "twin.mp4"  # an edit: the copy's output comes from the reused encoding
    shutil.copyfile(clips[2], twin)
    recorded.clear()
    first, second = run_jobs([clips[2], twin], tmp_path / "out", EditRequest(["young"]),
                             opts=opts(tmp_path, cache_dir=tmp_path / "c2"), workers=2, **FAST)
    assert not first.cache_hit and second.cache_hit and len(recorded) == 2 * first.frames
    assert same(recorded[:first.frames], recorded[first.frames:])


def encode_alone_and_on_two_workers(video: Path, tmp_path: Path):
    """(the single-process encoding, the 2-worker pool's, that pool) of `video`, each in a cold cache."""
    from fvedit.pipeline.cache import load_encoding

    encodings, pools = [], []
    for workers in (1, 2):
        cache = tmp_path / f"enc{workers}"
        extra = {"on_pool": pools.append} if workers > 1 else {}
        [s] = run_jobs([video], None, EditRequest([]), encode_only=True, opts=opts(tmp_path, cache_dir=cache),
                       workers=workers, **FAST, **extra)
        encodings.append(load_encoding(cache, s.cache_folder.name))
    return encodings[0], encodings[1], pools[0]


def test_the_pool_encodes_exactly_what_one_process_encodes(tmp_path):
    """Quads and landmarks (the workers decoded and detected chunks of frames), crops, identities
    (they cut the crops and ran the encoders too), landmark features and x_T are equal to a
    single-process encoding's, and so is the identity mean the edit moves. A keyframe every 3
    frames: chunks start mid-GOP and after a keyframe."""
    video = make_face_video(tmp_path / "gop.mp4", frames=8, size=(160, 120), fps=25, audio=False, face_scale=0.6,
                            keyint=3)
    one, pool, workers = encode_alone_and_on_two_workers(video, tmp_path)
    # 8 frames in batches of 2 on 2 workers: chunks of one batch (4 detected, 4 cropped + encoded), 4 inversions
    assert sum(workers.times.tasks.values()) == 12
    assert one.folder.name == pool.folder.name  # the same cache key
    for name in ("crops", "x_T"):
        assert np.array_equal(getattr(one, name)[:], getattr(pool, name)[:]), name
    for name in ("z_id", "z_lnd", "quads", "landmarks", "present"):
        assert np.array_equal(getattr(one, name), getattr(pool, name)), name
    assert np.array_equal(one.z_id_mean, pool.z_id_mean) and np.abs(one.z_id).sum() > 0


def test_a_stream_without_timestamps_is_analysed_here_and_inverted_on_the_pool(tmp_path):
    """A raw .h264 has no timestamps to seek by: phase A runs in this process (each chunk would
    decode from the start), the inversions on the workers, and the encoding is one process's."""
    video = make_face_video(tmp_path / "raw.h264", frames=8, size=(160, 120), fps=25, audio=False, face_scale=0.6)
    one, pool, workers = encode_alone_and_on_two_workers(video, tmp_path)
    assert sum(workers.times.tasks.values()) == 4  # the 4 inversions (batches of 2), no chunk
    assert one.folder.name == pool.folder.name and np.array_equal(one.x_T[:], pool.x_T[:])
    assert np.array_equal(one.z_id_mean, pool.z_id_mean) and one.present.all()


def test_detection_misses_and_absences_on_the_pool_match_one_process(tmp_path, recorded):
    """Blurred frames (detector misses, bridged by the re-check that runs here) and frames without
    the face (passed through) come out as in one process: the same track, the same frames."""
    common = dict(size=(320, 240), fps=25, face_scale=0.6, audio=False)
    video = make_face_video(tmp_path / "gaps.mp4", frames=10, blurred_frames=(3, 4), hidden_frames=(7, 8), **common)
    frames, summaries = {}, {}
    for workers in (1, 2):
        recorded.clear()
        [summaries[workers]] = run_jobs([video], tmp_path / f"g{workers}.mp4", EditRequest(["young"]),
                                        opts=opts(tmp_path, cache_dir=tmp_path / f"c{workers}"), workers=workers,
                                        **FAST)
        frames[workers] = [f.copy() for f in recorded]
    one, pool = summaries[1], summaries[2]
    assert (one.passed_through, one.bridged) == (pool.passed_through, pool.bridged)
    assert one.passed_through == 2 and one.bridged >= 1  # both kinds of gap were exercised
    assert same(frames[1], frames[2])


def test_encode_on_the_pool_fills_the_cache_an_edit_then_hits(clips, tmp_path):
    video = clips[0]
    [enc] = run_jobs([video], None, EditRequest([]), encode_only=True, opts=opts(tmp_path), workers=2, **FAST)
    [hit] = run_jobs([video], tmp_path / "e.mp4", EditRequest(["young"]), opts=opts(tmp_path), workers=1, **FAST)
    assert not enc.cache_hit and hit.cache_hit and hit.cache_folder == enc.cache_folder


def test_a_failing_video_leaves_no_output_and_no_pending_encoding(clips, tmp_path, monkeypatch):
    """The second of three edits fails: the first output stands, none is written for the second or
    third, and the third's analysis (already made, one video ahead) is aborted, not committed."""
    from fvedit.pipeline import scheduler

    real = scheduler.decode_and_paste
    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("worker pool failed")
        return real(*a, **k)

    monkeypatch.setattr(scheduler, "decode_and_paste", failing)
    folder = tmp_path / "out"
    with pytest.raises(RuntimeError, match="worker pool failed"):
        run_jobs(clips, folder, EditRequest(["young"]), opts=opts(tmp_path), workers=2, **FAST)
    assert sorted(p.name for p in folder.iterdir()) == [clips[0].name]
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 1 and not entries[0].startswith(".")  # the first video's encoding only


def test_a_cluster_without_the_gpus_is_refused_before_any_work():
    from fvedit.distributed.pool import WorkerPool, WorkerSpec

    spec = WorkerSpec(None, "tiny", "cuda", "reference", "fp32", 1, 1)
    with pytest.raises(InputError, match=r"--workers 2 on cuda needs 2 GPUs, but the Ray instance has 0"):
        WorkerPool(2, spec)


def test_a_worker_on_another_node_reads_the_video_from_the_object_store(clips, tmp_path):
    """Where the driver's path is missing, or holds another file, on a worker's node, the worker
    writes the bytes the driver put in the object store to a file of its own, once per video."""
    import socket

    from fvedit.distributed.chunks import VideoSource
    from fvedit.distributed.pool import UNetWorker
    from fvedit.pipeline.cache import file_sha256

    video = clips[0]
    worker = object.__new__(UNetWorker)  # the method under test needs no model
    worker.name, worker._videos, worker._copies = "node-b:1", {}, []
    sha, size, data = file_sha256(video), video.stat().st_size, [ray.put(video.read_bytes())]
    here = VideoSource(str(video), size, sha, socket.gethostname())
    assert worker._video_path(here) == str(video)  # the driver's host: its own path
    worker._videos.clear()
    impostor = tmp_path / "impostor.mp4"  # the same path on another node, the same size, other bytes
    impostor.write_bytes(bytes(size))
    copies = []
    for path in (tmp_path / "missing.mp4", impostor):
        worker._videos.clear()
        away = VideoSource(str(path), size, sha, "node-a", data)
        copy = Path(worker._video_path(away))
        assert copy != path and copy.read_bytes() == video.read_bytes()
        assert worker._video_path(away) == str(copy)  # once per video
        copies.append(copy)
    assert not copies[0].exists() and copies[1].exists()  # one copy at a time
    worker.drop_videos()  # the pool's close: no copy is left
    assert not copies[1].parent.exists() and worker._videos == {}
    with pytest.raises(InputError, match="cannot read .*missing.mp4"):
        worker._video_path(VideoSource(str(tmp_path / "missing.mp4"), size, sha, socket.gethostname()))


def test_several_outputs_need_a_folder_and_distinct_names(clips, tmp_path):
    f = tmp_path / "file.mp4"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match="names a folder"):
        run_jobs(clips[:2], f, EditRequest([]), opts=opts(tmp_path), workers=2, **FAST)
    twin = tmp_path / "sub" / clips[0].name
    twin.parent.mkdir()
    twin.write_bytes(clips[0].read_bytes())
    with pytest.raises(InputError, match="would both be written to"):
        run_jobs([clips[0], twin], tmp_path / "o", EditRequest([]), opts=opts(tmp_path), workers=2, **FAST)


def test_cli_edit_on_two_workers_with_metrics(clips, tmp_path, capsys):
    """The CLI path end to end: two videos, two workers, --metrics measured here for each output."""
    import json

    from fvedit.cli import main

    folder = tmp_path / "cli"
    try:
        main(["edit", str(clips[0]), str(clips[1]), "-o", str(folder), "--attr", "young", "--workers", "2",
              "--metrics", "--steps", "2", "--preset", "tiny", "--backend", "reference", "--threads", "1",
              "--cache-dir", str(tmp_path / "cache")])
    except SystemExit as stop:
        assert stop.code in (0, None), capsys.readouterr().err
    for clip in clips[:2]:
        out = folder / clip.name
        assert len(decoded(out)) == len(decoded(clip))
        data = json.loads(out.with_suffix(".metrics.json").read_text())
        assert "tl_id" in json.dumps(data).lower()


def test_output_names_for_several_inputs(clips, tmp_path):
    from fvedit.pipeline.jobs import plan_outputs

    other = tmp_path / "clip0.avi"
    other.write_bytes(b"")
    with pytest.raises(InputError, match="would both be written to"):
        plan_outputs([clips[0], other], tmp_path / "o")  # clip0.mp4 twice
    mov = tmp_path / "talk.mov"
    avi = tmp_path / "talk2.avi"
    assert plan_outputs([mov, avi], tmp_path / "o") == [tmp_path / "o" / "talk.mov", tmp_path / "o" / "talk2.mp4"]
    with pytest.raises(InputError, match="would both be written to"):
        plan_outputs([mov, tmp_path / "talk.mp4"], None)  # both talk.edited.mp4 beside the inputs


def test_ray_address_in_the_environment_does_not_move_a_one_worker_edit(clips, tmp_path, monkeypatch, recorded):
    """Ray sets $RAY_ADDRESS on its own nodes; a plain edit there stays in this process."""
    from fvedit.distributed import pool

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing listens there
    monkeypatch.setattr(pool.WorkerPool, "__init__", lambda *a, **k: pytest.fail("a pool was started"))
    [s] = run_jobs([clips[0]], tmp_path / "one.mp4", EditRequest([]), opts=opts(tmp_path), workers=1, **FAST)
    assert s.frames == len(recorded) == 5


def _blocked_ray(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FVEDIT_CACHE_DIR=str(tmp_path / "c"), FVEDIT_WEIGHTS_DIR=str(tmp_path / "w"))
    code = "import sys; from fvedit.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, str(ROOT / "tests" / "block_imports.py"), "ray", "-c", code, *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_without_ray_one_process_runs_and_workers_say_how_to_install(clips, tmp_path):
    """With Ray missing (blocked like an absent package) the in-process edit still runs, so that
    path never imports it, and --workers 2 fails in one line that names the extra."""
    ok = _blocked_ray(["edit", str(clips[0]), "-o", str(tmp_path / "a.mp4"), "--preset", "tiny", "--steps", "2",
                       "-q"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    bad = _blocked_ray(["edit", str(clips[0]), "-o", str(tmp_path / "b.mp4"), "--preset", "tiny", "--workers", "2"],
                       tmp_path)
    assert bad.returncode != 0 and "pip install 'fvedit[ray]'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "b.mp4").exists()
