"""The encode cache's on-disk arrays and its integrity checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fvedit.pipeline.cache import EncodingWriter, RowFile, encoding_key, load_encoding

SHAPES = {
    "quads": ((5, 4, 2), np.float64),
    "landmarks": ((5, 68, 2), np.float64),
    "present": ((5,), np.bool_),
    "detected": ((5,), np.bool_),
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


def test_rowfile_take_and_put_by_index(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((9, 2, 3)).astype(np.float32)
    rf = RowFile.create(tmp_path / "c.npy", data.shape, data.dtype)
    rows = np.array([0, 1, 2, 5, 7, 8])  # three runs
    rf.put(rows, data[rows])
    got = np.load(tmp_path / "c.npy")
    assert np.array_equal(got[rows], data[rows]) and not got[[3, 4, 6]].any()
    assert np.array_equal(rf.take([8, 2, 3][1:]), got[[2, 3]])
    assert np.array_equal(rf.take(rows), data[rows]) and rf.take([]).shape == (0, 2, 3)
    with pytest.raises(IndexError):
        rf.take([3, 1])


def test_truncated_rowfile_is_rejected(tmp_path):
    rf = RowFile.create(tmp_path / "b.npy", (4, 10), np.float32)
    rf.close()
    with open(tmp_path / "b.npy", "r+b") as f:
        f.truncate(f.seek(0, 2) - 4)
    with pytest.raises(ValueError):
        RowFile(tmp_path / "b.npy")


PRESENT = np.array([True, True, False, True, False])


def _write(cache, key, seed=0):
    rng = np.random.default_rng(seed)
    w = EncodingWriter(cache, key, {"frames": 5}, SHAPES)
    for name, (shape, dtype) in SHAPES.items():
        w.arrays[name][:] = (rng.random(shape) * 200).astype(dtype)
    w.arrays["present"][:] = PRESENT
    return w.commit()


def test_commit_load_and_checksums(tmp_path):
    key = encoding_key({"video": "abc"})
    folder = _write(tmp_path, key)
    enc = load_encoding(tmp_path, key)
    assert enc is not None and enc.num_frames == 5 and enc.x_T[1:3].shape == (2, 3, 8, 8)
    assert enc.present.tolist() == PRESENT.tolist() and enc.present_frames.tolist() == [0, 1, 3]
    # the representative identity averages only the frames that have the face
    assert np.allclose(enc.z_id_mean, enc.z_id[PRESENT].astype(np.float64).mean(0))
    assert not np.allclose(enc.z_id_mean, enc.z_id.astype(np.float64).mean(0))
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


def _killed_writer(cache, key) -> int:
    """A child process that starts an encoding, then dies by SIGKILL mid-way; returns its pid."""
    code = (
        "import sys, time, numpy as np; from pathlib import Path; from fvedit.pipeline.cache import EncodingWriter; "
        f"w = EncodingWriter(Path({str(cache)!r}), {key!r}, {{'frames': 5}}, {{'x_T': ((5, 3), np.float32)}}); "
        "print('ready', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    return child.pid


def test_next_run_removes_what_a_killed_run_left(tmp_path):
    pid = _killed_writer(tmp_path, "dead")
    leftovers = list(tmp_path.glob(".dead.partial-*"))
    assert len(leftovers) == 1 and f"-{pid}-" in leftovers[0].name
    EncodingWriter(tmp_path, "other", {"frames": 5}, SHAPES).abort()  # the next run, not a day later
    assert not list(tmp_path.glob(".dead.partial-*"))


def test_a_live_run_keeps_its_partial(tmp_path):
    code = (
        "import time, numpy as np; from pathlib import Path; from fvedit.pipeline.cache import EncodingWriter; "
        f"w = EncodingWriter(Path({str(tmp_path)!r}), 'live', {{'frames': 5}}, {{'x_T': ((5, 3), np.float32)}}); "
        "print('ready', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        EncodingWriter(tmp_path, "other", {"frames": 5}, SHAPES).abort()
        assert len(list(tmp_path.glob(".live.partial-*"))) == 1
    finally:
        child.kill()
        child.wait()


def test_old_unowned_partials_still_age_out(tmp_path):
    old = tmp_path / ".k.partial-abcd"  # the name of an fvedit before owned partials
    old.mkdir()
    EncodingWriter(tmp_path, "x", {"frames": 5}, SHAPES).abort()
    assert old.exists()
    stale = time.time() - 2 * EncodingWriter.STALE_SECONDS
    os.utime(old, (stale, stale))
    EncodingWriter(tmp_path, "x", {"frames": 5}, SHAPES).abort()
    assert not old.exists()
