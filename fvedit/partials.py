"""Temporary files and folders that become a result only when complete, and their clean-up after a crash.

Outputs (videos, encodings, weights) are written under a hidden partial name next to their target
and renamed into place when complete. A run that is killed (SIGKILL, power loss) cannot remove its
partial, so every partial is *owned*: its name carries the owner's pid, and the owner holds an
exclusive `flock` on it for as long as it writes. The next run removes the partials whose owner is
gone: the lock can be taken (a dead process holds no locks) and the pid is not running (or the
partial is older than `PID_GRACE_SECONDS`, in case the pid was reused). A partial whose owner is
alive is never touched, so two runs writing into one folder do not delete each other's work.

Names: `.<stem>.partial-<pid>-<random><suffix>`, e.g. `.talk_young.partial-4242-k3x9.mp4`.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

try:  # POSIX; on other systems ownership falls back to the pid alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

PID_GRACE_SECONDS = 3600.0  # a partial whose pid runs again (reused) is still an orphan after this
_NAME = re.compile(r"^\..+\.partial-(\d+)-[^/]*$")


def partial_prefix(stem: str) -> str:
    """The hidden prefix of this process's partials for a target named `stem`."""
    return f".{stem}.partial-{os.getpid()}-"


def owner_pid(path: Path) -> int | None:
    """The pid recorded in a partial's name, or None for names this module did not make."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OSError:
        return False
    return True


class Claim:
    """An exclusive lock on a partial file or folder, held until `release()` (or process exit)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = -1
        if fcntl is None:
            return
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = -1
            raise

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1

    def __del__(self) -> None:
        self.release()


def create_partial_file(folder: Path, stem: str, suffix: str) -> tuple[Path, Claim]:
    """An empty hidden partial file in `folder`, locked by this process."""
    fd, name = tempfile.mkstemp(prefix=partial_prefix(stem), suffix=suffix, dir=folder)
    os.close(fd)
    path = Path(name)
    try:
        return path, Claim(path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def create_partial_dir(folder: Path, stem: str) -> tuple[Path, Claim]:
    """An empty hidden partial folder in `folder`, locked by this process."""
    path = Path(tempfile.mkdtemp(prefix=partial_prefix(stem), dir=folder))
    try:
        return path, Claim(path)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def is_orphan(path: Path, *, now: float | None = None) -> bool:
    """True when the partial's owner is gone: its lock is free and its pid is not running (or it is old)."""
    pid = owner_pid(path)
    if pid is None or pid == os.getpid():
        return False
    if fcntl is not None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # someone holds it: the owner is alive
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    if not _pid_running(pid):
        return True
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except OSError:
        return False
    return age > PID_GRACE_SECONDS


def remove_orphans(folder: Path, stem: str = "*") -> list[Path]:
    """Remove the partials in `folder` (for targets named `stem`, default all) whose owner is gone."""
    removed = []
    try:
        pattern = "*" if stem == "*" else glob.escape(stem)
        candidates = list(Path(folder).glob(f".{pattern}.partial-*"))
    except OSError:
        return removed
    for path in candidates:
        if not is_orphan(path):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed
