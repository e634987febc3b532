"""The encode cache's on-disk arrays and its integrity checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fvedit.encode_cache import EncodingWriter, RowFile, encoding_key, load_encoding

SHAPES = {
    "quads": ((5, 4, 2), np.float64),
    "landmarks": ((5, 68, 2), np.float64),
    "crops": ((5, 8, 8, 3), np.uint8),
    "z_id": ((5, 16), np.float32),
    "z_lnd": ((5, 102), np.float32),
    "x_T": ((5, 3, 8, 8), np.float32),
}


def test_rowfile_round_trip_matches_numpy(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((7, 3, 5, 4)).astype(np.float32)
    rf = RowFile.create(tmp_path / "a.npy", data.shape, data.dtype)
    rf[0:3] = data[0:3]
    rf[3:7] = data[3:7]
    rf.close()
    assert np.array_equal(np.load(tmp_path / "a.npy"), data)  # a valid .npy for numpy too
    ro = RowFile(tmp_path / "a.npy")
    assert np.array_equal(ro[2:5], data[2:5]) and np.array_equal(ro[6], data[6]) and np.array_equal(np.asarray(ro), data)
    assert ro[5:5].shape == (0, 3, 5, 4)
    with pytest.raises(IndexError):
        ro[::2]


def test_truncated_rowfile_is_rejected(tmp_path):
    rf = RowFile.create(tmp_path / "b.npy", (4, 10), np.float32)
    rf.close()
    with open(tmp_path / "b.npy", "r+b") as f:
        f.truncate(f.seek(0, 2) - 4)
    with pytest.raises(ValueError):
        RowFile(tmp_path / "b.npy")


def _write(cache, key, seed=0):
    rng = np.random.default_rng(seed)
    w = EncodingWriter(cache, key, {"frames": 5}, SHAPES)
    for name, (shape, dtype) in SHAPES.items():
        w.arrays[name][:] = (rng.random(shape) * 200).astype(dtype)
    return w.commit()


def test_commit_load_and_checksums(tmp_path):
    key = encoding_key({"video": "abc"})
    folder = _write(tmp_path, key)
    enc = load_encoding(tmp_path, key)
    assert enc is not None and enc.num_frames == 5 and enc.x_T[1:3].shape == (2, 3, 8, 8)
    assert np.allclose(enc.z_id_mean, enc.z_id.astype(np.float64).mean(0))
    assert not list(tmp_path.glob(".*partial*"))
    (folder / "crops.npy").write_bytes((folder / "crops.npy").read_bytes()[:-1] + b"\x07")
    assert load_encoding(tmp_path, key) is None and not folder.exists()  # corrupt: removed, rebuilt later


def test_other_versions_cache_is_left_alone(tmp_path):
    key = encoding_key({"video": "v"})
    folder = _write(tmp_path, key)
    meta = json.loads((folder / "meta.json").read_text())
    meta["version"] = 999
    (folder / "meta.json").write_text(json.dumps(meta))
    assert load_encoding(tmp_path, key) is None and folder.exists()


def test_abort_leaves_nothing(tmp_path):
    w = EncodingWriter(tmp_path, "k", {"frames": 5}, SHAPES)
    w.abort()
    assert list(tmp_path.iterdir()) == []
