"""Encode once, edit many: the inversion of a video, stored on disk and reused by later edits.

Inverting every frame to x_T is most of an edit's cost and does not depend on the edit. An
encoding holds everything the decode and paste-back need: the alignment (quads, landmarks), the
aligned crops, per-frame identities and landmark features, and x_T. It is keyed by the video's
content hash, the weights, the sampler and the alignment settings; a stale key is simply a
different folder. A folder is written under a temporary name and renamed when complete, and
every array's sha256 is checked on load, so a partial or corrupted cache is rebuilt, never used.

Arrays are .npy files. The large ones (crops, x_T) are read and written a batch of rows at a
time with plain file I/O (`RowFile`), not memory-mapped: mapped pages would stay in the process's
resident memory, so memory would grow with video length.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fvedit.face.track import FacePresence
from fvedit.partials import create_partial_dir, owner_pid, remove_orphans
from fvedit.weights.store import sha256_file as file_sha256

CACHE_VERSION = 2  # 2: frames without the face (present / detected masks)
META = "meta.json"
ARRAYS = ("quads", "landmarks", "present", "detected", "crops", "z_id", "z_lnd", "x_T")


def default_cache_dir() -> Path:
    env = os.environ.get("FVEDIT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return base / "fvedit" / "encodings"


def weights_fingerprint(manifest: dict[str, Any]) -> str:
    """The model file's sha256 for imported weights; preset and seed for demo weights."""
    if manifest.get("demo"):
        return f"demo:{manifest.get('preset')}:seed{manifest.get('seed')}"
    files = manifest.get("files", {})
    model = files.get("model.safetensors", {})
    return str(model.get("sha256") or json.dumps(files, sort_keys=True))


def encoding_key(settings: dict[str, Any]) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class RowFile:
    """A C-ordered .npy array on disk, read and written by rows (first axis) with pread/pwrite."""

    def __init__(self, path: Path, *, writable: bool = False):
        self._fd = -1  # set last: a file that fails the checks below is never opened
        self.path = Path(path)
        with open(self.path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{self.path} is Fortran-ordered")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        expected = self.offset + self.row_bytes * self.shape[0]
        if os.path.getsize(self.path) != expected:
            raise ValueError(f"{self.path} has {os.path.getsize(self.path)} bytes, expected {expected}")
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    @classmethod
    def create(cls, path: Path, shape: tuple[int, ...], dtype) -> "RowFile":
        """A zero-filled array file (header written, data extended with ftruncate)."""
        dtype = np.dtype(dtype)
        with open(path, "wb") as f:
            np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
            f.truncate(f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        return cls(path, writable=True)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows) -> np.ndarray:
        """The rows at the given increasing indices, read one contiguous run at a time."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        for at, run in _contiguous_runs(rows):
            out[at : at + len(run)] = self[int(run[0]) : int(run[-1]) + 1]
        return out

    def put(self, rows, values: np.ndarray) -> None:
        """Write `values` (one per row) to the rows at the given increasing indices."""
        rows = np.asarray(rows, dtype=np.int64)
        values = np.asarray(values)
        for at, run in _contiguous_runs(rows):
            self[int(run[0]) : int(run[-1]) + 1] = values[at : at + len(run)]

    def _rows(self, idx: slice | int) -> tuple[int, int]:
        start, stop, step = (idx if isinstance(idx, slice) else slice(idx, idx + 1)).indices(self.shape[0])
        if step != 1:
            raise IndexError("RowFile supports contiguous row ranges only")
        return start, max(start, stop)

    def __getitem__(self, idx: slice | int) -> np.ndarray:
        start, stop = self._rows(idx)
        nbytes = (stop - start) * self.row_bytes
        buf = os.pread(self._fd, nbytes, self.offset + start * self.row_bytes) if nbytes else b""
        if len(buf) != nbytes:
            raise OSError(f"short read from {self.path}")
        out = np.frombuffer(buf, dtype=self.dtype).reshape((stop - start, *self.row_shape)).copy()
        return out if isinstance(idx, slice) else out[0]

    def __setitem__(self, idx: slice | int, value: np.ndarray) -> None:
        start, stop = self._rows(idx)
        data = np.ascontiguousarray(value, dtype=self.dtype).reshape((stop - start, *self.row_shape))
        written = os.pwrite(self._fd, data.tobytes(), self.offset + start * self.row_bytes)
        if written != data.nbytes:
            raise OSError(f"short write to {self.path} (disk full?)")

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def _contiguous_runs(rows: np.ndarray):
    """(offset into rows, run) for each run of consecutive indices in an increasing index array."""
    if rows.size and np.any(np.diff(rows) <= 0):
        raise IndexError("row indices must be strictly increasing")
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    at = 0
    for run in np.split(rows, breaks):
        if run.size:
            yield at, run
        at += run.size


STREAMED = ("crops", "x_T")  # large arrays kept on disk; the rest is small and loaded whole


@dataclass
class Encoding(FacePresence):
    """A complete, verified encoding (arrays memory-mapped read-only)."""

    folder: Path
    meta: dict[str, Any]
    quads: np.ndarray  # [N,4,2] float64, smoothed, frame coordinates
    landmarks: np.ndarray  # [N,68,2] float64
    present: np.ndarray  # [N] bool: the face is there (detected or bridged); other frames pass through
    detected: np.ndarray  # [N] bool: the detector found it (present & ~detected = bridged)
    crops: RowFile  # [N,S,S,3] uint8 aligned input crops (read by batch)
    z_id: np.ndarray  # [N,D] float32 per-frame identities (unit norm)
    z_lnd: np.ndarray  # [N,102] float32 landmark features
    x_T: RowFile  # [N,3,S,S] float32 noise maps (read by batch)

    @property
    def num_frames(self) -> int:
        return int(self.x_T.shape[0])

    @property
    def z_id_mean(self) -> np.ndarray:
        """The representative identity: plain mean of the unit vectors of the frames with the face,
        not re-normalised (official)."""
        return mean_identity(self.z_id, self.present)


def mean_identity(z_id: np.ndarray, present: np.ndarray) -> np.ndarray:
    """float32 [D]: the mean over the frames that have the face, accumulated in float64."""
    return np.asarray(z_id, dtype=np.float64)[np.asarray(present, dtype=bool)].mean(axis=0).astype(np.float32)


class EncodingWriter:
    """Fills a temporary folder array by array, then `commit()` renames it into place."""

    STALE_SECONDS = 24 * 3600

    def __init__(self, cache_dir: Path, key: str, meta: dict[str, Any], shapes: dict[str, tuple[tuple[int, ...], Any]]):
        cache_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_partials(cache_dir)
        self.final = cache_dir / key
        self.tmp, self._claim = create_partial_dir(cache_dir, key)
        self.meta = dict(meta, version=CACHE_VERSION, key=key)
        try:
            self.arrays = {name: RowFile.create(self.tmp / f"{name}.npy", shape, dtype) for name, (shape, dtype) in shapes.items()}
        except BaseException:
            self._claim.release()
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    @classmethod
    def _remove_stale_partials(cls, cache_dir: Path) -> None:
        """Folders left by a killed run (SIGKILL, power loss): those whose owner process is gone
        (`fvedit.partials`), and those of older fvedit versions (no owner in the name) after a day."""
        remove_orphans(cache_dir)
        now = time.time()
        for leftover in cache_dir.glob(".*.partial-*"):
            try:
                if owner_pid(leftover) is None and now - leftover.stat().st_mtime > cls.STALE_SECONDS:
                    shutil.rmtree(leftover, ignore_errors=True)
            except OSError:
                pass

    def commit(self) -> Path:
        checksums = {}
        for name, arr in self.arrays.items():
            arr.close()
            checksums[name] = file_sha256(self.tmp / f"{name}.npy")
        self.arrays.clear()
        (self.tmp / META).write_text(json.dumps(dict(self.meta, sha256=checksums), indent=1, sort_keys=True))
        try:
            if self.final.exists():
                shutil.rmtree(self.final)
            os.replace(self.tmp, self.final)
        except OSError:  # another process committed the same key meanwhile: keep theirs
            shutil.rmtree(self.tmp, ignore_errors=True)
        self._claim.release()
        return self.final

    def abort(self) -> None:
        for arr in self.arrays.values():
            arr.close()
        self.arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._claim.release()


def load_encoding(cache_dir: Path, key: str) -> Encoding | None:
    """The verified encoding for `key`, or None when absent, partial or corrupt (then it is removed)."""
    folder = cache_dir / key
    if not (folder / META).is_file():
        return None
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, json.JSONDecodeError):
        meta = {}
    if meta.get("version") != CACHE_VERSION:
        return None  # another fvedit version's cache: not ours to delete
    try:
        if meta.get("key") != key:
            raise ValueError("key mismatch")
        arrays: dict[str, Any] = {}
        for name in ARRAYS:
            path = folder / f"{name}.npy"
            if file_sha256(path) != meta["sha256"][name]:
                raise ValueError(f"{name} checksum mismatch")
            arrays[name] = RowFile(path) if name in STREAMED else np.load(path, allow_pickle=False)
        n = arrays["x_T"].shape[0]
        if any(a.shape[0] != n for a in arrays.values()) or n != meta.get("frames"):
            raise ValueError("frame counts disagree")
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return Encoding(folder=folder, meta=meta, **arrays)
