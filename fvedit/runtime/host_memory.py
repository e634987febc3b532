"""Keep freed host memory for reuse instead of returning it to the OS after every batch.

Why: a video edit allocates and frees the same large buffers over and over (decoded 1080p frames,
6 MB each; batch tensors, 12 MB at 16 x 3 x 256 x 256 float32). glibc serves blocks above its
mmap threshold with fresh `mmap`s and trims the heap top when it is freed, so each such buffer is
new memory whose every 4 KiB page faults once on first touch. Measured on the 2-core CPU machine
(bench/README.md): the DPM-Solver arithmetic of a 16-frame batch took 20 ms/frame per 15-call
pass with the defaults and 11 ms/frame with freed memory kept; the simulated UNet's elementwise
stand-in 10.8 -> 1.7 ms/frame. This is what jemalloc/tcmalloc are usually preloaded for; here the
same effect comes from two `mallopt` settings, set once per process before the work starts.

Memory stays bounded: freed blocks are reused by later allocations of the run, so the resident
size is the run's peak (set by the pipeline's queue depths), not a sum over the video.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc malloc.h: free heap top above this many bytes is returned to the OS
M_MMAP_THRESHOLD = -3  # blocks at least this large get their own mmap (munmapped again on free)
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum: frames and batch tensors come from the heap
TRIM_THRESHOLD = 1024 * 1024 * 1024  # keep up to 1 GiB of freed heap for reuse

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); False where there is no
    glibc (macOS, Windows, musl) or it refuses, or FVEDIT_MALLOC_DEFAULTS is set (to compare), and
    nothing changes. Call before the work starts."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("FVEDIT_MALLOC_DEFAULTS") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
