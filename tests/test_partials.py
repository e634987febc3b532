"""Owned partial files and folders: named with the owner's pid, locked while written, and
removed by a later run only once their owner is gone."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fvedit import partials
from fvedit.partials import create_partial_dir, create_partial_file, is_orphan, owner_pid, remove_orphans


def exited_pid() -> int:
    """The pid of a process that has exited and been reaped (so it is running nothing)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def make_old(path: Path) -> None:
    """Backdate a partial past the pid-reuse grace period."""
    old = time.time() - partials.PID_GRACE_SECONDS - 60
    os.utime(path, (old, old))


def can_lock(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def test_partial_file_is_named_for_its_owner_and_locked(tmp_path):
    path, claim = create_partial_file(tmp_path, "talk_young", ".mp4")
    assert path.parent == tmp_path and path.name.startswith(f".talk_young.partial-{os.getpid()}-")
    assert path.suffix == ".mp4" and owner_pid(path) == os.getpid() and path.stat().st_size == 0
    assert not can_lock(path)  # held while written
    claim.release()
    claim.release()  # twice is harmless
    assert can_lock(path)
    assert owner_pid(tmp_path / "talk_young.mp4") is None and owner_pid(tmp_path / ".x.partial-abc.mp4") is None


def test_own_partials_are_never_orphans(tmp_path):
    path, claim = create_partial_file(tmp_path, "out", ".mp4")
    claim.release()  # even unlocked and old: this process may still rename it
    make_old(path)
    assert not is_orphan(path) and remove_orphans(tmp_path, "out") == [] and path.exists()


def test_partials_of_exited_processes_are_removed(tmp_path):
    pid = exited_pid()
    stale_file = tmp_path / f".out.partial-{pid}-k3x9.mp4"
    stale_file.write_bytes(b"half a video")
    stale_dir = tmp_path / f".encoding.partial-{pid}-q2w8"
    (stale_dir / "inner").mkdir(parents=True)
    (stale_dir / "inner" / "x_T.npy").write_bytes(b"0" * 16)
    assert is_orphan(stale_file) and is_orphan(stale_dir)
    assert sorted(remove_orphans(tmp_path)) == sorted([stale_file, stale_dir])
    assert list(tmp_path.iterdir()) == []


def test_a_live_owner_keeps_its_partial_until_it_is_killed(tmp_path, partial_holder):
    child, path = partial_holder(tmp_path, "out")
    make_old(path)  # a long run: the lock, not the age, says it is alive
    assert owner_pid(path) == child.pid and not is_orphan(path)
    assert remove_orphans(tmp_path, "out") == [] and path.exists()
    child.send_signal(signal.SIGKILL)  # kill -9: no chance to clean up
    child.wait()
    assert is_orphan(path) and remove_orphans(tmp_path, "out") == [path] and not path.exists()


def test_a_running_pid_without_the_lock_counts_only_once_old(tmp_path, monkeypatch):
    """The pid may have been reused by an unrelated process: after the grace period it is an orphan."""
    path = tmp_path / f".out.partial-{os.getppid()}-k3x9.mp4"  # a running process that is not us
    path.write_bytes(b"")
    assert not is_orphan(path) and remove_orphans(tmp_path) == []
    make_old(path)
    assert is_orphan(path) and remove_orphans(tmp_path) == [path]


def test_only_matching_names_are_touched(tmp_path):
    pid = exited_pid()
    other_stem = tmp_path / f".other.partial-{pid}-aaaa.mp4"
    glob_stem = tmp_path / f".[a].partial-{pid}-bbbb.mp4"
    kept = [tmp_path / "out.mp4", tmp_path / ".out.partial-nopid.mp4", tmp_path / f".outer.partial-{pid}-cccc.mp4"]
    for path in (other_stem, glob_stem, *kept):
        path.write_bytes(b"")
    assert remove_orphans(tmp_path, "out") == []  # ".outer" is another target's
    assert remove_orphans(tmp_path, "[a]") == [glob_stem]  # glob characters are literal
    assert remove_orphans(tmp_path, "other") == [other_stem]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
    assert remove_orphans(tmp_path / "missing") == []


def test_partial_dir_is_owned_like_a_file(tmp_path):
    path, claim = create_partial_dir(tmp_path, "cache")
    assert path.is_dir() and owner_pid(path) == os.getpid() and not can_lock(path)
    claim.release()
    assert can_lock(path) and not is_orphan(path)


@pytest.mark.parametrize("stem", ["out", "talk.young", "with space"])
def test_writer_style_names_round_trip(tmp_path, stem):
    path, claim = create_partial_file(tmp_path, stem, ".mkv")
    try:
        assert path.name.startswith(f".{stem}.partial-") and path.name.endswith(".mkv")
        assert owner_pid(path) == os.getpid()
    finally:
        claim.release()
