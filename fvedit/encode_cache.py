"""Encode once, edit many: the inversion of a video, stored on disk and reused by later edits.

Inverting every frame to x_T is most of an edit's cost and does not depend on the edit. An
encoding holds everything the decode and paste-back need: the alignment (quads, landmarks), the
aligned crops, per-frame identities and landmark features, and x_T. It is keyed by the video's
content hash, the weights, the sampler and the alignment settings; a stale key is simply a
different folder. A folder is written under a temporary name and renamed when complete, and
every array's sha256 is checked on load, so a partial or corrupted cache is rebuilt, never used.

Arrays are .npy files opened memory-mapped, so a long video's x_T never has to fit in RAM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fvedit.weights.store import sha256_file as file_sha256

CACHE_VERSION = 1
META = "meta.json"
ARRAYS = ("quads", "landmarks", "crops", "z_id", "z_lnd", "x_T")


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


@dataclass
class Encoding:
    """A complete, verified encoding (arrays memory-mapped read-only)."""

    folder: Path
    meta: dict[str, Any]
    quads: np.ndarray  # [N,4,2] float64, smoothed, frame coordinates
    landmarks: np.ndarray  # [N,68,2] float64
    crops: np.ndarray  # [N,S,S,3] uint8 aligned input crops
    z_id: np.ndarray  # [N,D] float32 per-frame identities (unit norm)
    z_lnd: np.ndarray  # [N,102] float32 landmark features
    x_T: np.ndarray  # [N,3,S,S] float32 noise maps

    @property
    def num_frames(self) -> int:
        return int(self.x_T.shape[0])

    @property
    def z_id_mean(self) -> np.ndarray:
        """The representative identity: plain mean of unit vectors, not re-normalised (official)."""
        return self.z_id.astype(np.float64).mean(axis=0).astype(np.float32)


class EncodingWriter:
    """Fills a temporary folder array by array, then `commit()` renames it into place."""

    def __init__(self, cache_dir: Path, key: str, meta: dict[str, Any], shapes: dict[str, tuple[tuple[int, ...], Any]]):
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.final = cache_dir / key
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{key}.partial-", dir=cache_dir))
        self.meta = dict(meta, version=CACHE_VERSION, key=key)
        self.arrays = {
            name: np.lib.format.open_memmap(self.tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
            for name, (shape, dtype) in shapes.items()
        }

    def commit(self) -> Path:
        checksums = {}
        for name, arr in self.arrays.items():
            arr.flush()
            checksums[name] = file_sha256(self.tmp / f"{name}.npy")
        self.arrays.clear()
        (self.tmp / META).write_text(json.dumps(dict(self.meta, sha256=checksums), indent=1, sort_keys=True))
        if self.final.exists():
            shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def load_encoding(cache_dir: Path, key: str) -> Encoding | None:
    """The verified encoding for `key`, or None when absent, partial or corrupt (then it is removed)."""
    folder = cache_dir / key
    if not (folder / META).is_file():
        return None
    try:
        meta = json.loads((folder / META).read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("key") != key:
            raise ValueError("version or key mismatch")
        arrays = {}
        for name in ARRAYS:
            path = folder / f"{name}.npy"
            if file_sha256(path) != meta["sha256"][name]:
                raise ValueError(f"{name} checksum mismatch")
            arrays[name] = np.load(path, mmap_mode="r")
        n = arrays["x_T"].shape[0]
        if any(a.shape[0] != n for a in arrays.values()) or n != meta.get("frames"):
            raise ValueError("frame counts disagree")
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return Encoding(folder=folder, meta=meta, **arrays)
