"""A pool of Ray actors that each hold the model once and run the pipeline's tasks, in order.

A task is a chunk of phase A (`fvedit.distributed.chunks.ChunkJob`: the worker decodes its frames
itself and detects faces, or cuts crops and runs the encoders) or one `FrameBatch` of the
in-process plan (`BatchJob`: inversion and/or decode, with crops or x_T, landmark features and
the one identity). Tasks are pure, so a worker that dies is restarted by Ray and its tasks are run
again with the same result (`max_restarts` / `max_task_retries`, `RETRIES` times: a worker that
always crashes ends the run with one line instead of retrying forever). Results come back in submission
order with a bounded number in flight, so the driver can paste and write them as they arrive.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from fvedit.diffusion.spec import SamplerSpec
from fvedit.distributed.chunks import ChunkJob, VideoSource
from fvedit.errors import FveditError, InputError
from fvedit.video.seek import FrameRange

RAY_HINT = "pip install 'fvedit[ray]'"
RETRIES = 3  # restarts of a dead worker, and re-runs of each of its tasks (pure: the result is the same)
DROP_TIMEOUT_S = 5.0  # the workers' deleting their video copies at the pool's close
START_TIMEOUT_S = 600.0  # workers that cannot be placed (busy GPUs) or load nothing by then: one-line error


def import_ray():
    """Ray, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(f"--workers above 1 and --ray-address run on Ray, which is not installed: {RAY_HINT}") from None
    return ray


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build the driver's model and backend itself. Weights are loaded from
    their folder on each worker (a checkpoint once per worker, not with every task), so on a
    cluster the folder must exist on every node; the driver checks the fingerprints match."""

    weights_dir: str | None
    preset: str | None
    device: str  # "cpu" or "cuda": a CUDA worker sees the one GPU Ray gave it
    backend: str
    precision: str
    temporal_window: int
    threads: int  # torch threads per worker
    simulate_ms: float | None = None  # a simulated device per worker (fvedit.runtime.simulated), for benches
    detector: tuple[str, str] | None = None  # (detector, align): built at the start too, held like the model


@dataclass
class BatchJob:
    kind: str  # "invert" / "invert+decode" (inputs: crops uint8 [B,S,S,3]) or "decode" (inputs: x_T float32 [B,C,S,S])
    sampler: SamplerSpec
    inputs: np.ndarray
    z_lnd: np.ndarray  # [B, lnd_dim], the whole run
    z_id: np.ndarray  # float32 [D]: the mean identity (invert) or the edited one (decode)
    keep: np.ndarray  # positions of the batch's own frames in the run
    frames: np.ndarray  # the batch's own frame indices (checked when the result comes back)
    z_edit: np.ndarray | None = None  # "invert+decode": the edited identity the fresh x_T is decoded with


@dataclass
class BatchResult:
    out: object  # x_T [K,C,S,S], edited crops uint8 [K,S,S,3], (x_T, edited crops) for "invert+decode";
    # for a chunk: each frame's faces ("detect") or (rows, crops, z_id, z_lnd) ("crop+encode")
    frames: np.ndarray
    seconds: float  # time the worker spent on the task
    worker: str  # host:pid


class UNetWorker:
    """The body of one Ray actor: the model and backend, built once; `run` is the stage call."""

    def __init__(self, spec: WorkerSpec):
        from fvedit.pipeline.jobs import make_eps_model
        from fvedit.runtime.device import resolve_device, set_threads
        from fvedit.weights.loading import load_for_run

        set_threads(spec.threads)
        self.device = resolve_device(spec.device)
        if spec.simulate_ms is not None:
            from fvedit.runtime.simulated import simulated_weights

            self.weights, self.eps_model = simulated_weights(spec.preset or "tiny", spec.simulate_ms)
        else:
            weights_dir = Path(spec.weights_dir) if spec.weights_dir else None
            self.weights = load_for_run(weights_dir, spec.preset, self.device, echo=lambda m: None)
            self.eps_model = make_eps_model(self.weights, spec.backend, self.device, spec.precision,
                                            spec.temporal_window, spec.threads)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._videos: dict[str, str] = {}  # sha256 -> a local path to that video
        self._copies: list[Path] = []  # folders holding copies from the object store
        if spec.detector is not None:  # while the other workers start too, not on the first chunk
            self._detector(*spec.detector)

    def describe(self) -> dict:
        """What the driver checks against its own: the weights and the backend that ran."""
        from fvedit.pipeline.cache import weights_fingerprint
        from fvedit.pipeline.scheduler import backend_label

        return {"name": self.name, "pid": os.getpid(), "weights": weights_fingerprint(self.weights.manifest),
                "backend": backend_label(self.eps_model)}

    def _detector(self, detector: str, align: str):
        """This worker's face detector for (detector, align), built once and kept."""
        from fvedit.face.detect import detector_settings, make_detector

        key = (detector, align)
        if getattr(self, "_detector_key", None) != key:
            self._detector_obj = make_detector(detector, **detector_settings(align))
            self._detector_key = key
        return self._detector_obj

    def can_recheck(self, detector: str, align: str) -> bool:
        """Whether the detector has the tracker's second look (`detect_near`)."""
        return callable(getattr(self._detector(detector, align), "detect_near", None))

    def _video_path(self, video: VideoSource) -> str:
        """A local path to the video: the driver's, when this node sees that very file, else a copy
        of the file from the object store (once per worker and video)."""
        known = self._videos.get(video.sha256)
        if known is not None:
            return known
        path = Path(video.path)
        same = path.is_file() and path.stat().st_size == video.size
        if same and video.host != socket.gethostname():  # another node: the same file only if the hash says so
            from fvedit.pipeline.cache import file_sha256

            same = file_sha256(path) == video.sha256
        if not same:
            if not video.data:  # on the driver's own host: the file went away or changed during the run
                raise InputError(f"Ray worker {self.name} cannot read {video.path}: it was moved or changed during the run")
            import ray

            self.drop_videos()  # one copy at a time: phase A reads one video, phase B none
            folder = Path(tempfile.mkdtemp(prefix="fvedit-video-"))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)  # not run when Ray kills the worker
            self._copies.append(folder)
            path = folder / (video.sha256[:16] + path.suffix)
            path.write_bytes(ray.get(video.data[0]))
        self._videos[video.sha256] = str(path)
        return str(path)

    def drop_videos(self) -> None:
        """Delete this worker's copies of videos from the object store (the pool's close calls it)."""
        for folder in self._copies:
            shutil.rmtree(folder, ignore_errors=True)
        self._copies.clear()
        self._videos.clear()

    def _run_chunk(self, job: ChunkJob):
        from fvedit.distributed.chunks import crop_and_encode, detect_frames
        from fvedit.video.seek import read_frames

        frames = read_frames(self._video_path(job.video), job.frames_at)
        if job.kind == "detect":
            return detect_frames(frames, self._detector(job.detector, job.align))
        return crop_and_encode(frames, job, self.weights.model.encoder, self.device)

    def detect_near(self, video: VideoSource, frame_at: FrameRange, box, detector: str, align: str) -> list:
        """The tracker's second look at one frame (decoded here), for a gap in the track."""
        from fvedit.video.seek import read_frames

        [frame] = list(read_frames(self._video_path(video), frame_at))
        return self._detector(detector, align).detect_near(frame.rgb, box)

    def run(self, job: "BatchJob | ChunkJob") -> BatchResult:
        import torch

        from fvedit.pipeline.decode import decode_batch
        from fvedit.pipeline.invert import invert_batch

        started = time.perf_counter()
        if isinstance(job, ChunkJob):
            return BatchResult(self._run_chunk(job), job.frames, time.perf_counter() - started, self.name)
        model, eps, sampler, dev = self.weights.model, self.eps_model, job.sampler, self.device
        z = torch.from_numpy(job.z_id).to(dev)
        if job.kind == "invert+decode":  # a batch without context frames: its x_T is the whole run
            x_T = invert_batch(model, eps, sampler, job.inputs, job.z_lnd, z, job.keep, dev)
            edited = decode_batch(model, eps, sampler, x_T, job.z_lnd, torch.from_numpy(job.z_edit).to(dev),
                                  job.keep, dev)
            return BatchResult((x_T, edited), job.frames, time.perf_counter() - started, self.name)
        stage = invert_batch if job.kind == "invert" else decode_batch
        out = stage(model, eps, sampler, job.inputs, job.z_lnd, z, job.keep, dev)
        return BatchResult(out, job.frames, time.perf_counter() - started, self.name)


@dataclass
class WorkerTimes:
    """Per worker: tasks done and seconds spent, for the closing summary (added from two threads)."""

    tasks: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, result: BatchResult) -> None:
        with self.lock:
            self.tasks[result.worker] = self.tasks.get(result.worker, 0) + 1
            self.seconds[result.worker] = self.seconds.get(result.worker, 0.0) + result.seconds


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


@contextmanager
def _keep_signal_handlers():
    """ray.init installs its own SIGINT/SIGTERM handlers; fvedit's (one line, exit 130/143) stay."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


class WorkerPool:
    """`workers` actors on a local Ray instance (started here when none is running) or on the
    cluster at `address`. The cluster must have a GPU per worker when the device is CUDA."""

    def __init__(self, workers: int, spec: WorkerSpec, address: str | None = None):
        if workers < 1:
            raise InputError(f"--workers must be at least 1, got {workers}")
        ray = self.ray = import_ray()
        self.started_ray = False
        self._next = 0  # round robin over the actors, carried across calls
        if not ray.is_initialized():
            with _keep_signal_handlers():
                try:
                    if address:
                        ray.init(address=address, log_to_driver=False)
                    else:
                        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError) as err:
                    raise InputError(f"cannot start or reach Ray{' at ' + address if address else ''}: {one_line(err)}") from None
            self.started_ray = True
        try:
            # another node may not see the driver's files: the videos then travel in the object store
            self.multi_node = sum(1 for node in ray.nodes() if node.get("Alive")) > 1
            gpu = spec.device.startswith("cuda")
            resources = ray.cluster_resources()
            kind, have = ("GPU", resources.get("GPU", 0)) if gpu else ("CPU", resources.get("CPU", 0))
            if have < workers:
                where = f"the Ray cluster at {address}" if address else "the Ray instance"
                raise InputError(f"--workers {workers} on {spec.device} needs {workers} {kind}s, but {where} has {have:g}")
            actor = ray.remote(num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0, max_restarts=RETRIES,
                               max_task_retries=RETRIES)(UNetWorker)
            self.actors = [actor.remote(spec) for _ in range(workers)]
            try:
                self.workers = self._get([a.describe.remote() for a in self.actors], timeout=START_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                raise InputError(f"{workers} Ray workers did not start within {START_TIMEOUT_S:g} s: the cluster has "
                                 f"no free {kind}s for them, or loading the model hangs") from None
        except BaseException:
            self.close()
            raise
        self.times = WorkerTimes()

    def check_matches(self, weights_fingerprint: str, backend: str) -> None:
        """Every worker must run the driver's weights and backend, or outputs and caches would differ."""
        for w in self.workers:
            if w["weights"] != weights_fingerprint:
                raise InputError(f"Ray worker {w['name']} loaded other weights ({w['weights']}) than this machine "
                                 f"({weights_fingerprint}): give every node the same --weights-dir")
            if w["backend"] != backend:
                raise InputError(f"Ray worker {w['name']} runs the {w['backend']} backend, this machine {backend}: "
                                 "pick one with --backend")

    def _get(self, refs, timeout: float | None = None):
        """ray.get, with a worker's own error re-raised as itself (one line), not as Ray's wrapper."""
        exc = self.ray.exceptions
        try:
            return self.ray.get(refs, timeout=timeout)
        except exc.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, FveditError):
                raise cause from None
            raise RuntimeError(f"a Ray worker failed: {one_line(cause or err)}") from None
        except exc.RayActorError as err:
            raise RuntimeError(f"a Ray worker died and could not be restarted: {one_line(err)}") from None

    def pids(self) -> list[int]:
        """The worker processes' ids now (they change when Ray restarts a dead worker)."""
        return [d["pid"] for d in self._get([a.describe.remote() for a in self.actors])]

    def map_ordered(self, jobs: Iterable[BatchJob], ahead: int | None = None) -> Iterator[BatchResult]:
        """Run the jobs on the workers (round robin, at most `ahead` in flight), yield results in order."""
        ahead = ahead or 2 * len(self.actors)
        pending: deque = deque()
        source = iter(jobs)

        def submit() -> bool:
            job = next(source, None)
            if job is None:
                return False
            pending.append((job.frames, self.next_actor().run.remote(job)))
            return True

        while len(pending) < ahead and submit():
            pass
        while pending:
            frames, ref = pending.popleft()
            result = self._get(ref)
            if not np.array_equal(result.frames, frames):  # pragma: no cover - a Ray ordering bug
                raise RuntimeError("a Ray worker returned another batch than the one asked for")
            self.times.add(result)
            submit()
            yield result

    def next_actor(self):
        with self.times.lock:
            actor = self.actors[self._next % len(self.actors)]
            self._next += 1
        return actor

    def close(self) -> None:
        if getattr(self, "multi_node", False) and getattr(self, "actors", []):  # only other nodes' workers copy videos
            try:  # queued behind a task still running; Ray's kill below runs no atexit handler
                self.ray.get([a.drop_videos.remote() for a in self.actors], timeout=DROP_TIMEOUT_S)
            except Exception:  # pragma: no cover - a dead or busy worker keeps its copy until the node's /tmp is cleaned
                pass
        for a in getattr(self, "actors", []):
            try:
                self.ray.kill(a)
            except Exception:  # pragma: no cover - an actor already gone
                pass
        self.actors = []
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
