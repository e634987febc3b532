"""`fvedit weights ...`: import, list, verify and fetch model weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer

from fvedit.errors import FveditError, InputError

app = typer.Typer(
    help="Manage DVA model weights: import the official checkpoint, list, verify, fetch. "
    "Without imported weights, commands fall back to built-in untrained demo weights.",
    no_args_is_help=True,
)

T = TypeVar("T")

WeightsDirOption = Annotated[
    Optional[Path],
    typer.Option(
        "--weights-dir",
        help="Weights directory. Default: $FVEDIT_WEIGHTS_DIR, else ~/.cache/fvedit/weights.",
        show_default=False,
    ),
]


def _run(action: Callable[[], T]) -> T:
    """Turn an FveditError into `error: ...` on stderr and its exit code."""
    try:
        return action()
    except FveditError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def _existing_file(path: Optional[Path], what: str) -> Optional[Path]:
    if path is not None and not path.expanduser().is_file():
        raise InputError(f"{what} not found: {path}")
    return path


@app.command("import-dva")
def import_dva_command(
    ckpt: Annotated[
        Path, typer.Option("--ckpt", help="Official DVA Lightning checkpoint (epoch=51-step=1000000.ckpt).")
    ],
    latent: Annotated[
        Optional[Path], typer.Option("--latent", help="Official latent.pkl with the z_id statistics.")
    ] = None,
    classifier: Annotated[
        Optional[Path],
        typer.Option(
            "--classifier",
            help="Official attribute-classifier checkpoint (diffusion_video_autoencoder_cls/last.ckpt).",
        ),
    ] = None,
    weights_dir: WeightsDirOption = None,
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            help="Model preset the checkpoint must match: 'dva256' (the official release) or 'tiny' "
            "(the small test architecture).",
        ),
    ] = "dva256",
) -> None:
    """Convert the official release into safetensors + manifest (no code in the files is run)."""
    from fvedit.weights.importer import import_dva
    from fvedit.weights.store import resolve_weights_dir

    def action() -> None:
        _existing_file(ckpt, "checkpoint")
        _existing_file(latent, "latent file")
        _existing_file(classifier, "classifier checkpoint")
        out = resolve_weights_dir(weights_dir)
        typer.echo(f"importing {ckpt} into {out} ...", err=True)
        report = import_dva(ckpt, out_dir=out, latent_path=latent, classifier_path=classifier, preset=preset)
        for note in report.notes:
            typer.echo(f"note: {note}", err=True)
        for name, entry in sorted(report.manifest["files"].items()):
            typer.echo(f"{name}  {_human(entry['size'])}  sha256 {entry['sha256'][:16]}")
        typer.echo(f"imported weights for preset {report.manifest['preset']} into {out}")

    _run(action)


@app.command("list")
def list_command(weights_dir: WeightsDirOption = None) -> None:
    """Show the weights in the weights directory and their sizes (no hashing)."""
    from fvedit.weights.store import list_weights, resolve_weights_dir

    def action() -> None:
        out = resolve_weights_dir(weights_dir)
        info = list_weights(out)
        if info.manifest is None:
            typer.echo(
                f"no weights in {out}; run `fvedit weights fetch` or `fvedit weights import-dva` "
                "(until then commands use untrained demo weights)"
            )
            return
        m = info.manifest
        typer.echo(f"{out}: preset {m.get('preset')}, imported by fvedit {m.get('fvedit_version')}")
        for f in info.files:
            typer.echo(f"  {f.name:<24} {_human(f.actual_size):>10}  {f.status:<14} from {f.source}")

    _run(action)


@app.command("verify")
def verify_command(weights_dir: WeightsDirOption = None) -> None:
    """Recompute the sha256 of every weights file and compare with the manifest (exit 2 on mismatch)."""
    from fvedit.weights.store import resolve_weights_dir, verify_weights

    def action() -> None:
        out = resolve_weights_dir(weights_dir)
        info = verify_weights(out)
        for f in info.files:
            typer.echo(f"{f.status:<16} {f.name}")
        bad = [f"{f.name} ({f.status})" for f in info.files if f.status != "ok"]
        if bad:
            raise InputError(
                f"{len(bad)} weights file(s) failed verification in {out}: {', '.join(bad)}; re-import them"
            )
        typer.echo(f"all {len(info.files)} files match the manifest")

    _run(action)


@app.command("fetch")
def fetch_command(
    weights_dir: WeightsDirOption = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for a connection before giving up.", min=0.1)
    ] = 5.0,
) -> None:
    """Download the official checkpoint, latent stats and classifier (Google Drive), then import them.

    Interrupted downloads resume where they stopped. Offline, this fails within --timeout
    seconds and prints where to download the files by hand.
    """
    from fvedit.weights.fetch import DownloadError, fetch_official, manual_instructions
    from fvedit.weights.store import resolve_weights_dir

    out = resolve_weights_dir(weights_dir)

    def progress(name: str, done: int, total: int | None) -> None:
        if done % (64 << 20) < (1 << 20) or done == total:
            typer.echo(f"  {name}: {_human(done)} / {_human(total)}", err=True)

    def action() -> None:
        try:
            report = fetch_official(out, connect_timeout=timeout, progress=progress)
        except DownloadError as exc:
            typer.echo(f"error: {exc}", err=True)
            typer.echo(manual_instructions(out), err=True)
            raise typer.Exit(exc.exit_code) from None
        for note in report.notes:
            typer.echo(f"note: {note}", err=True)
        typer.echo(f"fetched and imported the official DVA weights into {out}")

    _run(action)
