"""Progress bars and stage timing for long work (rich), silent under --quiet or when not a terminal."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False, soft_wrap=True)  # logs keep one line per message
_local = threading.local()  # per thread: names of the stages running now, outermost first


def _running() -> list[str]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def current_stage() -> str | None:
    """The innermost stage running now in this thread, or None (what an interrupt message names:
    signal handlers run in the main thread, so it names the main thread's stage)."""
    stack = _running()
    return stack[-1] if stack else None


@dataclass
class StageTimes:
    """Wall time per named stage, in the order stages ran (a stage may run several times).

    Stages may run in several threads at once (the streamed edit): each adds its own time, so
    the stages' sum can exceed the wall time when they overlap.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, dt: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + dt

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        stack = _running()
        stack.append(name)
        try:
            yield
        finally:
            stack.pop()
            self.add(name, time.perf_counter() - t0)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


@contextmanager
def progress_bar(description: str, total: int, *, quiet: bool = False, unit: str = "it") -> Iterator[Callable[[int], None]]:
    """Yields `advance(n)`; shows a bar with rate in `unit`/s on an interactive stderr."""
    if quiet or total <= 0 or not sys.stderr.isatty():
        yield lambda n=1: None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    t0 = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="")

        def advance(n: int = 1) -> None:
            bar.advance(task, n)
            done = bar.tasks[0].completed
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.update(task, rate=f"{done / dt:.2f} {unit}/s")

        yield advance
