"""Two threads with bounded queues, so host work overlaps the device: a prefetching reader and an
in-order worker.

The edit's decode pass uses both: frames of chunk k+1 are decoded while the UNet samples chunk k,
and chunk k-1 is pasted and written meanwhile. Threads (not processes) because the work releases
the GIL: PyAV's decoder and encoder, the C++ paste kernels, torch. Memory stays bounded by the
queue sizes whatever the video's length. Errors in a thread surface in the caller at its next
`put`/`next` or at `close`; `close` (always call it, e.g. in `finally`) stops and joins the thread.
"""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()
_POLL_S = 0.05  # how often a blocked put/get looks at the other side's state


class Prefetch(Generic[T]):
    """Iterate `items` in a background thread, at most `depth` items ahead of the consumer."""

    def __init__(self, items: Iterable[T], depth: int = 2, name: str = "prefetch"):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _run(self, items: Iterable[T]) -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not self._offer(item):
                    return
        except BaseException as err:  # handed to the consumer
            self._error = err
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # a generator is closed in the thread that ran it
                close()
            self._offer(_DONE)

    def _offer(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)  # polled: a signal (Ctrl-C) gets through
            except queue.Empty:
                continue
            if item is _DONE:
                if self._error is not None:
                    raise self._error
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class Worker(Generic[T]):
    """Apply `fn` to each submitted item, in submission order, in a background thread; at most
    `depth` items wait. `finish()` waits for the rest and raises the worker's error, if any."""

    def __init__(self, fn: Callable[[T], None], depth: int = 2, name: str = "worker"):
        self._fn = fn
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is _DONE or self._stop.is_set():
                return
            try:
                self._fn(item)
            except BaseException as err:
                self._error = err
                return

    def put(self, item: T) -> None:
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Process everything submitted, then stop; the worker's error is raised here."""
        if self._thread.is_alive() and self._error is None:
            self.put(_DONE)  # type: ignore[arg-type]
        self._thread.join()
        self._raise_if_failed()

    def close(self) -> None:
        """Stop without processing what waits (after an error elsewhere); never raises."""
        self._stop.set()
        self._thread.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err


@contextmanager
def prefetched(items: Iterable[T], enabled: bool = True, depth: int = 2, name: str = "prefetch") -> Iterator[Iterator[T]]:
    """`items`, read ahead in a thread when enabled (and stopped on leaving the block), else as is."""
    if not enabled:
        yield iter(items)
        return
    reader = Prefetch(items, depth=depth, name=name)
    try:
        yield iter(reader)
    finally:
        reader.close()
