"""`fvedit edit/encode VIDEO... --workers N [--ray-address ADDR]`: the jobs over a Ray worker pool.

Per video, phase A (`fvedit.distributed.analysis`): the workers decode their own chunks of the
video, detect the faces, then cut the crops and run the encoders; this process tracks and
smooths in frame order and takes the one identity (a float64 mean in frame order), so it and the
cache key are those of a single-process run. Phase B on the workers: each batch's inversion and
its decode with the one edited identity, in one task (x_T comes back and is written to the
encode cache here; with cross-frame attention the inversion runs first, as a phase of its own),
fetched ahead in plan order. Phase C here: decode the video once more, paste and write the frames
in order, copy the audio (`decode_and_paste` with the pool as its decoder). The next video is
analysed in a thread meanwhile, so its phase A overlaps this video's phase B (unless it is the
same file's content again: then it waits and reuses this video's encoding). The encode cache is
the folder it always is: only this process reads and writes it, and the workers get their inputs
through Ray's object store (the video itself too, where a worker's node cannot see its path), so
a cluster needs no shared disk and a re-edit on one machine reuses it.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from fvedit.diffusion.spec import SamplerSpec
from fvedit.distributed.analysis import PoolAnalysis
from fvedit.distributed.pool import BatchJob, WorkerPool, WorkerSpec, import_ray
from fvedit.pipeline.batches import FrameBatch, plan_batches
from fvedit.pipeline.cache import Encoding, weights_fingerprint
from fvedit.pipeline.options import EditSummary, PipelineOptions
from fvedit.progress import StageTimes, console, progress_bar


def invert_jobs(enc: Encoding, sampler: SamplerSpec, batches: list[FrameBatch]) -> Iterator[BatchJob]:
    z_mean = np.asarray(enc.z_id_mean, dtype=np.float32)
    for b in batches:
        yield BatchJob("invert", sampler, enc.crops.take(b.run), enc.z_lnd[b.run], z_mean, b.keep, b.frames)


def decode_jobs(enc: Encoding, sampler: SamplerSpec, batches: list[FrameBatch], z_id: torch.Tensor) -> Iterator[BatchJob]:
    z = z_id.detach().float().cpu().numpy()
    for b in batches:
        yield BatchJob("decode", sampler, enc.x_T.take(b.run), enc.z_lnd[b.run], z, b.keep, b.frames)


def invert_on_pool(pool: WorkerPool, enc: Encoding, opts: PipelineOptions, times: StageTimes) -> None:
    """x_T of every batch, computed on the workers and written to the (pending) encoding here."""
    batches = plan_batches(enc.present, opts.batch_size, opts.temporal_window)
    label = f"invert ({len(pool.actors)} workers)"
    with progress_bar(label, int(enc.present.sum()), quiet=opts.quiet, unit="frame") as adv, \
            times.stage("encode (inversion, workers)"):  # fmt: skip
        for result in pool.map_ordered(invert_jobs(enc, opts.sampler, batches)):
            enc.x_T.put(result.frames, result.out)
            adv(result.frames.size)


def invert_decode_jobs(enc: Encoding, sampler: SamplerSpec, batches: list[FrameBatch],
                       z_id: torch.Tensor) -> Iterator[BatchJob]:
    z_mean = np.asarray(enc.z_id_mean, dtype=np.float32)
    z_edit = z_id.detach().float().cpu().numpy()
    for b in batches:
        yield BatchJob("invert+decode", sampler, enc.crops.take(b.run), enc.z_lnd[b.run], z_mean, b.keep, b.frames,
                       z_edit)


class PoolDecoder:
    """The decode stage on the pool: jobs go out ahead in plan order, `__call__(batch)` returns the
    next batch's crops (the scheduler asks for the batches in that same order).

    `invert=True` (a first edit without cross-frame attention): each job inverts its batch and
    decodes the fresh x_T at once, as the in-process first edit does, so there is no inversion
    phase before the decode; x_T is written to the pending encoding here as each batch returns.
    With cross-frame attention a batch's run needs its neighbours' x_T, so the inversion then
    runs first (`invert_on_pool`)."""

    def __init__(self, pool: WorkerPool, enc: Encoding, opts: PipelineOptions, z_id: torch.Tensor,
                 invert: bool = False):
        batches = plan_batches(enc.present, opts.batch_size, opts.temporal_window)
        make = invert_decode_jobs if invert else decode_jobs
        self.enc = enc
        self.results = pool.map_ordered(make(enc, opts.sampler, batches, z_id))

    def __call__(self, batch: FrameBatch) -> np.ndarray:
        result = next(self.results, None)
        if result is None or not np.array_equal(result.frames, batch.frames):
            raise RuntimeError("the pool's decode results are out of step with the scheduler's batches")
        if isinstance(result.out, tuple):
            x_T, edited = result.out
            self.enc.x_T.put(result.frames, x_T)
            return edited
        return result.out


def run_on_pool(
    jobs: list[tuple[Path, Path | None]],
    request,
    *,
    preset: str | None,
    weights_dir: Path | None,
    device: str,
    backend: str,
    opts: PipelineOptions,
    workers: int,
    address: str | None,
    on_pool: Callable[[WorkerPool], None] | None = None,
    simulate_ms: float | None = None,
) -> list[EditSummary]:
    """Edit (output set) or encode (output None) each video in turn with one pool of workers.
    `on_pool` sees the pool once it is up (the fault test kills a worker through it).
    `simulate_ms`: every worker, and this process's encoders, on a simulated device of their own
    (`fvedit.runtime.simulated`; benches only): N workers model N GPUs."""
    from fvedit.pipeline.jobs import _echo, make_eps_model, precheck_edit, prepare_edit
    from fvedit.pipeline.scheduler import backend_label
    from fvedit.runtime.device import resolve_device
    from fvedit.weights.loading import load_for_run

    import_ray()  # not installed: one line, before any work
    dev = resolve_device(device)
    opts.device = dev
    plans: list = []
    summaries: list[EditSummary] = []
    try:
        for video, output in jobs:  # before Ray, weights or any work
            plans.append(precheck_edit(video, output, opts))
        echo = _echo(opts.quiet)
        load_times = StageTimes()
        with load_times.stage("load weights"):
            if simulate_ms is not None:
                from fvedit.runtime.simulated import simulated_weights

                weights, eps_model = simulated_weights(preset or "tiny", simulate_ms)
            else:
                weights = load_for_run(weights_dir, preset, dev, echo=lambda m: console.print(m, style="yellow"))
                eps_model = make_eps_model(weights, backend, dev, opts.precision, opts.temporal_window, opts.threads)
            apply_edit = prepare_edit(weights, request, dev, opts.quiet)
        spec = WorkerSpec(str(weights_dir) if weights_dir else None, preset, dev.type, backend, opts.precision,
                          opts.temporal_window, opts.threads or 1, simulate_ms,
                          None if opts.faces is not None else (opts.detector, opts.align))
        with load_times.stage("start workers"), \
                console.status(f"starting {workers} Ray workers", spinner="dots") if not opts.quiet else nullcontext():  # fmt: skip
            pool = WorkerPool(workers, spec, address)
        with pool:
            pool.check_matches(weights_fingerprint(weights.manifest), backend_label(eps_model))
            if on_pool is not None:
                on_pool(pool)
            def analysis_of(k: int) -> AnalysisAhead:
                return AnalysisAhead(lambda: _analyse_one(k, jobs[k][0], weights, eps_model, opts, echo, load_times,
                                                          pool))

            repeats = same_as_previous([video for video, _ in jobs])
            ahead = analysis_of(0)
            try:
                for k in range(len(jobs)):
                    video, output = jobs[k]
                    analysis, times, started = ahead.get()
                    more = k + 1 < len(jobs)
                    ahead = analysis_of(k + 1) if more and not repeats[k + 1] else None  # overlaps this edit
                    summaries.append(_edit_on_pool(pool, video, output, analysis, times, started, weights,
                                                   eps_model, apply_edit, opts, workers))
                    if more and ahead is None:  # the same video again: after its encoding is committed
                        ahead = analysis_of(k + 1)
            finally:
                if ahead is not None:
                    ahead.discard()
            if not opts.quiet:
                print_worker_times(pool)
        return summaries
    except BaseException:
        for plan in plans[len(summaries):]:
            if plan is not None:
                plan.cleanup()
        raise


def same_as_previous(videos: list[Path]) -> list[bool]:
    """Per video: whether it holds the same bytes as the one before it. Such a video is analysed
    after the one before has committed its encoding, so it reuses that encoding instead of
    analysing it again alongside (the SHA-256 is read only where the sizes match)."""
    from functools import cache

    from fvedit.pipeline.cache import file_sha256

    sha = cache(file_sha256)  # a video between two others is compared twice but read once

    def same(a: Path, b: Path) -> bool:
        return a.stat().st_size == b.stat().st_size and (a.samefile(b) or sha(a) == sha(b))

    return [False] + [same(a, b) for a, b in zip(videos, videos[1:])]


class AnalysisAhead:
    """One video's analysis in a daemon thread, started while the pool edits the video before.

    `get()` waits for it (polling, so Ctrl-C gets through). `discard()` (the run stopped first)
    does not wait: the thread aborts its pending encoding when it finishes, and an interrupted
    process leaves only what a killed run leaves, which the next run cleans up."""

    def __init__(self, work: Callable[[], tuple]):
        self._result: tuple | None = None
        self._error: BaseException | None = None
        self._discarded = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(work,), name="fvedit analyse next video", daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], tuple]) -> None:
        try:
            result = work()
        except BaseException as err:  # handed to get()
            self._error = err
            return
        with self._lock:
            if self._discarded.is_set():
                result[0].abort()
            else:
                self._result = result

    def get(self) -> tuple:
        while self._thread.is_alive():
            self._thread.join(timeout=0.1)
        if self._error is not None:
            raise self._error
        return self._result

    def discard(self) -> None:
        with self._lock:
            self._discarded.set()
            if self._result is not None:
                self._result[0].abort()
                self._result = None


def _analyse_one(k: int, video: Path, weights, eps_model, opts: PipelineOptions, echo, load_times: StageTimes,
                 pool: WorkerPool) -> tuple:
    """(analysis, times, started) of the k-th video. The first shows its progress
    bars; later ones run while the edit before them shows its own, so they are quiet (one live
    display at a time) and say so in one line."""
    from fvedit.pipeline.scheduler import analyse

    started = time.perf_counter()
    times = StageTimes()
    if k == 0:
        for name, sec in load_times.seconds.items():
            times.add(name, sec)
    elif not opts.quiet:
        echo(f"analysing {video} while the workers edit the video before it")
    analysis = analyse(video, weights, eps_model, opts if k == 0 else replace(opts, quiet=True), times, echo,
                       passes=PoolAnalysis(pool))
    return analysis, times, started


def _edit_on_pool(pool: WorkerPool, video: Path, output: Path | None, analysis, times: StageTimes, started: float,
                  weights, eps_model, apply_edit, opts: PipelineOptions, workers: int) -> EditSummary:
    """One analysed video: identity edit here, inversion on the pool, decode + paste + write."""
    from fvedit.pipeline.jobs import DEMO_TAG, print_summary
    from fvedit.pipeline.scheduler import backend_label, decode_and_paste

    try:
        with times.stage("edit identity"):
            identity = apply_edit(analysis.enc)
        hit = analysis.cache_hit
        at_once = not hit and output is not None and opts.temporal_window == 1  # invert + decode per batch
        if not hit and not at_once:
            invert_on_pool(pool, analysis.enc, opts, times)
        if output is not None:
            tags = {"comment": DEMO_TAG} if weights.is_demo else {}
            decode_and_paste(video, output, analysis.enc, analysis.info, weights, eps_model, identity.z_id, opts, times,
                             {"metadata": tags, "threads": opts.threads},
                             decoder=PoolDecoder(pool, analysis.enc, opts, identity.z_id, invert=at_once))
        enc = analysis.finish()
    except BaseException:
        analysis.abort()
        raise
    times.add("other (video decoding, overhead)", max(0.0, time.perf_counter() - started - times.total))
    summary = EditSummary(output, enc.num_frames, times, hit, enc.folder, analysis.info, identity.description,
                          passed_through=enc.num_absent, bridged=enc.num_bridged, wall_s=time.perf_counter() - started)
    if not opts.quiet:
        print_summary(summary, weights, f"{backend_label(eps_model)} on {workers} Ray workers", opts)
    if opts.metrics and output is not None:  # measured here, as one process measures its own edit
        from fvedit.pipeline.jobs import report_metrics

        report_metrics(video, output, weights, enc, opts.device, opts.quiet)
    return summary


def print_worker_times(pool: WorkerPool) -> None:
    say = console.print
    say("workers (tasks: chunks detected, chunks cropped + encoded, batches inverted and/or decoded):")
    for name in sorted(pool.times.tasks):
        say(f"  {name:<28}{pool.times.tasks[name]:6d} tasks {pool.times.seconds[name]:9.2f} s")
