"""Face detection of the frames ahead in worker threads, so the analysis pass scales with cores.

Tracking stays where it is (one thread, frame by frame: it needs the previous frame's face); only
the per-frame `detect` calls, which are independent, run ahead in a pool, each thread with its
own detector: `factory(private=True)` must share no mutable state with any other (dlib's HOG
scanner keeps scratch buffers; two threads on one mix their boxes). dlib's HOG and shape predictor and
PyAV's decoder release the GIL for most of their work. Results are those of the serial detector,
frame for frame; the re-checks of short gaps (`detect_near`) run in the caller's thread.

    pool = PooledDetector(lambda private: DlibDetector(private_hog=private), workers=4)
    try:
        alignment = align_video(pool.frames(decoded), pool)
    finally:
        pool.close()
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import numpy as np

from fvedit.face.detect import Face, FaceDetector


class PooledDetector:
    """`detect(frame)` answered by worker threads that started on the frame when `frames` yielded it."""

    def __init__(self, factory: Callable[[bool], FaceDetector], workers: int, ahead: int | None = None):
        self._factory = factory
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fvedit detect")
        self._pending: dict[int, Future] = {}  # id(frame) -> its detection
        self.ahead = ahead if ahead is not None else 2 * max(1, workers)
        self._own = factory(False)  # the caller's: serial detections and re-checks
        self.name = getattr(self._own, "name", "detector")
        if callable(getattr(self._own, "detect_near", None)):
            self.detect_near = self._own.detect_near

    def _thread_detector(self) -> FaceDetector:
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = self._factory(True)
        return detector

    def frames(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """The same frames in order, each one's detection submitted `ahead` frames early."""
        window: deque[np.ndarray] = deque()
        for frame in frames:
            self._pending[id(frame)] = self._pool.submit(lambda f=frame: self._thread_detector().detect(f))
            window.append(frame)
            if len(window) > self.ahead:
                yield window.popleft()
        while window:
            yield window.popleft()

    def detect(self, frame: np.ndarray) -> list[Face]:
        future = self._pending.pop(id(frame), None)
        return future.result() if future is not None else self._own.detect(frame)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
