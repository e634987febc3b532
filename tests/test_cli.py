"""The command line as a user meets it: help, the reconstruct job on demo weights, and bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fvedit.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else (0 if exc.value.code is None else 1)
    return code, out, err


def test_console_script_help_lists_commands():
    res = subprocess.run([sys.executable, "-m", "fvedit.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for cmd in ("reconstruct", "weights", "info"):
        assert cmd in res.stdout


def test_every_option_has_help(capsys):
    code, out, _ = run_cli(["reconstruct", "--help"], capsys)
    assert code == 0
    for opt in ("--sampler", "--steps", "--preset", "--weights-dir", "--device", "--output"):
        assert opt in out


def test_reconstruct_runs_on_demo_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FVEDIT_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    out_png = tmp_path / "rec.png"
    code, out, err = run_cli(["reconstruct", "-o", str(out_png), "--steps", "3", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "untrained demo weights" in out + err
    img = np.asarray(Image.open(out_png))
    assert img.shape == (256, 512, 3)  # tiny preset: 64 px crops, shown 4x, input | reconstruction
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda p: p, "image not found"),
        (lambda p: (p.write_bytes(b"not an image"), p)[1], "cannot read"),
        (lambda p: (Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(p), p)[1], "no face found"),
    ],
)
def test_reconstruct_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch, make, expected):
    monkeypatch.setenv("FVEDIT_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    path = make(tmp_path / "in.png")
    code, out, err = run_cli(["reconstruct", str(path), "-o", str(tmp_path / "o.png"), "--steps", "2"], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0]
    assert not (tmp_path / "o.png").exists()


def test_unknown_sampler_and_device_are_input_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FVEDIT_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    code, _, err = run_cli(["reconstruct", "--sampler", "euler", "-o", str(tmp_path / "o.png")], capsys)
    assert code == 2 and "unknown sampler" in err
    code, _, err = run_cli(["reconstruct", "--device", "tpu", "-o", str(tmp_path / "o.png")], capsys)
    assert code == 2 and "device" in err


def test_explicit_weights_dir_without_manifest_is_an_error(tmp_path, capsys):
    code, _, err = run_cli(["reconstruct", "--weights-dir", str(tmp_path), "-o", str(tmp_path / "o.png")], capsys)
    assert code == 2 and "no imported weights" in err
