"""Download the official DVA release from Google Drive and import it (urllib only).

Downloads go to `<weights_dir>/downloads/<name>.part` and resume with an HTTP Range request
after an interruption. Offline, the first connection attempt fails within `connect_timeout`
seconds with a message saying how to download the files by hand and run `import-dva`.
The Drive ids come from the official `download_requirements.sh`; the authors publish no
checksums, so `sha256` is None and the manifest records the hash of what was downloaded.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fvedit.errors import FveditError
from fvedit.weights.importer import ImportReport, fvedit_version, import_dva

DRIVE_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    role: str  # "ckpt" | "latent" | "classifier"
    name: str  # file name under <weights_dir>/downloads/
    url: str
    sha256: str | None = None


OFFICIAL_FILES: tuple[RemoteFile, ...] = (
    RemoteFile("ckpt", "epoch=51-step=1000000.ckpt", DRIVE_URL.format(id="1Q6z7Wmo9xve5SgfDJExohpDSSNi4QxcH")),
    RemoteFile("latent", "latent.pkl", DRIVE_URL.format(id="1J_eAs5-KWn--kmcqx5S-QjVPskTczTMU")),
    RemoteFile("classifier", "last.ckpt", DRIVE_URL.format(id="1nddbwuAvIVEqKkkmUF96nJj91jVmAdtR")),
)


class DownloadError(FveditError):
    """The network or the server failed; the message says what to do instead."""


Progress = Callable[[str, int, int | None], None]  # (name, bytes so far, total or None)


def manual_instructions(weights_dir: Path, files: Sequence[RemoteFile] | None = None) -> str:
    """Multi-line how-to for users without (working) internet access from this machine."""
    files = OFFICIAL_FILES if files is None else files
    downloads = Path(weights_dir) / "downloads"
    lines = ["Download these files in a browser:"]
    lines += [f"  {f.url}\n    -> {downloads / f.name}" for f in files]
    by_role = {f.role: downloads / f.name for f in files}
    cmd = f"fvedit weights import-dva --ckpt '{by_role.get('ckpt', 'CKPT')}'"
    if "latent" in by_role:
        cmd += f" --latent '{by_role['latent']}'"
    if "classifier" in by_role:
        cmd += f" --classifier '{by_role['classifier']}'"
    lines += ["then run:", f"  {cmd} --weights-dir '{weights_dir}'"]
    return "\n".join(lines)


def _offline_error(url: str, reason: str) -> DownloadError:
    host = urlsplit(url).hostname or url
    return DownloadError(
        f"cannot download {url.split('?')[0]} ({host}: {reason}); download the files manually and run "
        "`fvedit weights import-dva` (see `fvedit weights fetch --help`)"
    )


def _resolve(host: str, port: int, timeout: float) -> list:
    """getaddrinfo has no timeout of its own; run it in a daemon thread and stop waiting."""
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["ok"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            result["err"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"name lookup took longer than {timeout:g} s")
    if "err" in result:
        raise result["err"]  # type: ignore[misc]
    return result["ok"]  # type: ignore[return-value]


def check_reachable(url: str, timeout: float) -> None:
    """Fail fast (DNS + TCP connect within `timeout`) before starting a long download."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"unsupported download URL {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = _resolve(parts.hostname, port, timeout)
        last: OSError | None = None
        for family, type_, proto, _, addr in infos:
            sock = socket.socket(family, type_, proto)
            sock.settimeout(timeout)
            try:
                sock.connect(addr)
                return
            except OSError as exc:
                last = exc
            finally:
                sock.close()
        raise last or OSError("no address")
    except (OSError, TimeoutError) as exc:
        raise _offline_error(url, str(exc) or type(exc).__name__) from None


def _content_range_start(value: str | None) -> int | None:
    """`bytes START-END/TOTAL` -> START."""
    if not value or not value.startswith("bytes "):
        return None
    span = value[6:].split("/")[0]
    try:
        return int(span.split("-")[0])
    except ValueError:
        return None


def _content_range_total(value: str | None) -> int | None:
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1]
    return int(total) if total.isdigit() else None


def _download_once(url: str, part: Path, timeout: float, progress: Progress | None, name: str) -> bool:
    """One HTTP request appending to `part`. True when the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": f"fvedit/{fvedit_version()}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            total = _content_range_total(exc.headers.get("Content-Range"))
            if total == offset:
                return True  # the .part was already complete
            part.unlink()  # server disagrees about what we have: start over
            return False
        raise DownloadError(f"download of {name} failed: HTTP {exc.code} {exc.reason}") from None
    with response:
        status = response.status
        if "text/html" in (response.headers.get("Content-Type") or ""):
            raise DownloadError(
                f"the server sent a web page instead of {name} (Google Drive quota or confirmation page); "
                "download the files manually and run `fvedit weights import-dva`"
            )
        if status == 206 and _content_range_start(response.headers.get("Content-Range")) == offset:
            mode = "ab"
            total = _content_range_total(response.headers.get("Content-Range"))
        else:  # 200 (Range ignored) or an unexpected range: rewrite from the start
            mode, offset = "wb", 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        done = offset
        with open(part, mode) as f:
            while block := response.read(CHUNK):
                f.write(block)
                done += len(block)
                if progress:
                    progress(name, done, total)
    if total is not None and done != total:
        return False  # connection closed early; the caller resumes
    return True


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    retries: int = 3,
    progress: Progress | None = None,
) -> Path:
    """Download `url` to `dest` via `dest.part`, resuming with HTTP Range; verify sha256 if known."""
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or _sha256(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    check_reachable(url, connect_timeout)
    for attempt in range(retries + 1):
        try:
            if _download_once(url, part, read_timeout, progress, dest.name):
                break
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if attempt == retries:
                raise DownloadError(
                    f"download of {dest.name} failed after {retries + 1} attempts ({exc}); run the same "
                    f"command again to resume from {part}"
                ) from None
    else:
        raise DownloadError(f"download of {dest.name} did not complete; run the same command again to resume")
    if sha256 is not None:
        actual = _sha256(part)
        if actual != sha256:
            part.unlink()
            raise DownloadError(f"{dest.name}: sha256 {actual[:16]}... does not match the expected {sha256[:16]}...")
    part.replace(dest)
    return dest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch_official(
    out_dir: Path,
    *,
    files: Sequence[RemoteFile] | None = None,
    preset: str = "dva256",
    connect_timeout: float = 5.0,
    progress: Progress | None = None,
) -> ImportReport:
    """Download the official checkpoint, latent stats and classifier, then run the importer."""
    out_dir = Path(out_dir).expanduser()
    files = OFFICIAL_FILES if files is None else files
    roles = {f.role for f in files}
    if "ckpt" not in roles:
        raise FveditError("fetch needs a 'ckpt' entry among the files to download")
    paths: dict[str, Path] = {}
    for remote in files:
        paths[remote.role] = download(
            remote.url,
            out_dir / "downloads" / remote.name,
            sha256=remote.sha256,
            connect_timeout=connect_timeout,
            progress=progress,
        )
    return import_dva(
        paths["ckpt"],
        out_dir=out_dir,
        latent_path=paths.get("latent"),
        classifier_path=paths.get("classifier"),
        preset=preset,
    )
