"""The command line as a user meets it: help, the reconstruct job on demo weights, and bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import run_cli


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


# -- help, switches, exit codes --------------------------------------------------------------------

COMMANDS = [[], ["edit"], ["encode"], ["demo"], ["reconstruct"], ["metrics"], ["bench"], ["export"], ["info"], ["align"],
            ["attrs"], ["weights"], ["weights", "import-dva"], ["weights", "verify"], ["weights", "fetch"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c) or "top")
def test_help_shows_switches_as_switches_and_explains_every_option(command, capsys):
    import typer

    from fvedit.cli import app

    code, out, _ = run_cli(command + ["--help"], capsys)
    assert code == 0 and "<bool>" not in out  # a switch takes no value
    group = typer.main.get_command(app)
    cmd = group
    for name in command:
        cmd = cmd.commands[name]
    for param in cmd.params:
        if param.param_type_name == "option":
            assert (param.help or "").strip(), f"{' '.join(command)} {param.opts} has no help"


def test_a_switch_takes_no_value(tmp_path, capsys):
    (tmp_path / "x.mp4").write_bytes(b"not checked: every input is looked for first")
    code, _, err = run_cli(["edit", str(tmp_path / "x.mp4"), "--side-by-side", "true"], capsys)
    assert code == 2 and "video not found: true" in err  # 'true' is one more input video, as the help implies


def test_help_texts_say_what_users_need(capsys):
    from fvedit.config import PRESETS

    _, top, _ = run_cli(["--help"], capsys)
    for words in ("Exit codes", "130", "143", "UNTRAINED demo weights"):
        assert words in top
    _, edit, _ = run_cli(["edit", "--help"], capsys)
    flat = " ".join(edit.split())
    assert "reconstruction" in flat and "overwritten" in flat and "--max-gap" in flat and "--threads" in flat
    _, imp, _ = run_cli(["weights", "import-dva", "--help"], capsys)
    assert all(f"'{name}'" in " ".join(imp.split()) for name in PRESETS)


def test_max_gap_default_is_the_trackers():
    from fvedit.cli import MaxGapOpt
    from fvedit.face.track import DEFAULT_MAX_GAP

    assert MaxGapOpt.default == DEFAULT_MAX_GAP


def test_threads_default_to_the_available_cores():
    import torch

    from fvedit.runtime.device import available_cores, set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(None) == available_cores() == torch.get_num_threads()
        assert set_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# -- Ctrl-C and SIGTERM ------------------------------------------------------------------------

INTERRUPT_SCRIPT = """
import os, signal, sys
from fvedit.diffusion import spec as sampling
from fvedit.cli import main

original = sampling.SamplerSpec.encode
def encode(self, *args, **kwargs):  # the signal arrives while the inversion runs
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    return original(self, *args, **kwargs)
sampling.SamplerSpec.encode = encode
main(sys.argv[2:])
"""


@pytest.mark.parametrize("sig,code,words", [("SIGINT", 130, "interrupted (Ctrl-C)"), ("SIGTERM", 143, "terminated (SIGTERM)")])
def test_interrupt_prints_one_line_exits_128_plus_signal_and_keeps_nothing(tmp_path, sig, code, words):
    from fvedit.synth import make_face_video

    video = make_face_video(tmp_path / "in.mp4", frames=4, size=(320, 240), face_scale=0.6, audio=False)
    out = tmp_path / "out" / "o.mp4"
    env = dict(__import__("os").environ, FVEDIT_WEIGHTS_DIR=str(tmp_path / "none"), FVEDIT_CACHE_DIR=str(tmp_path / "cache"))
    res = subprocess.run(
        [sys.executable, "-c", INTERRUPT_SCRIPT, sig, "edit", str(video), "-o", str(out), "--steps", "2",
         "--preset", "tiny", "--device", "cpu", "-q"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert res.returncode == code, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip() and not l.startswith("note:") and "demo weights" not in l and "fvedit weights" not in l]
    assert lines == [f"{words}: fvedit edit stopped during 'encode (inversion)'; no partial output was kept"]
    assert not out.exists() and not (tmp_path / "out").exists()  # the folder it made is gone too
    assert not list((tmp_path / "cache").rglob("*partial*"))
