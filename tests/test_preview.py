"""`fvedit preview`: keyframes x strengths contact sheet, with only the keyframes inverted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fvedit.cli import main
from fvedit.diffusion.spec import SamplerSpec
from fvedit.pipeline import PipelineOptions
from fvedit.pipeline.jobs import EditRequest, run_edit
from fvedit.pipeline.preview import CELL, LABEL, pick_keyframes, run_preview
from fvedit.synth import make_face_video

FAST = dict(preset="tiny", weights_dir=None, device="cpu", backend="reference")

pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture(scope="module")
def face_video(tmp_path_factory) -> Path:
    return make_face_video(tmp_path_factory.mktemp("prev") / "talk.mp4", frames=6, size=(320, 240), fps=25,
                           audio=False, face_scale=0.6)


def opts(cache: Path) -> PipelineOptions:
    return PipelineOptions(sampler=SamplerSpec("dpm", 2), batch_size=4, cache_dir=cache, quiet=True)


def test_keyframes_spread_over_the_present_frames():
    present = np.array([False, True, True, True, False, True, True, True, True, False])
    assert pick_keyframes(present, 3).tolist() == [1, 5, 8]
    assert pick_keyframes(present[:3], 5).tolist() == [1, 2]


def test_sheet_columns_rows_and_the_cache(face_video, tmp_path):
    """Column 0 is the input crop, strength 0 is the plain reconstruction, other strengths move the
    face; a preview inverts only its keyframes and commits nothing to the cache, and one made from
    `fvedit encode`'s cache inverts nothing and shows the same faces."""
    strengths = (-0.5, 0.0, 0.5)
    first = run_preview(face_video, tmp_path / "a.png", "young", strengths=strengths, keyframes=3, opts=opts(tmp_path / "c"), **FAST)
    assert first.inverted == 3 and len(first.keyframes) == 3
    assert not any((tmp_path / "c").rglob("x_T.npy"))  # the pending encoding was not committed
    sheet = np.asarray(Image.open(tmp_path / "a.png"))
    assert sheet.shape == (LABEL + 3 * CELL, LABEL * 3 + 4 * CELL, 3)
    cells = first.cells
    assert not np.array_equal(cells[:, 1], cells[:, 3]) and not np.array_equal(cells[:, 2], cells[:, 3])
    run_edit(face_video, None, EditRequest([]), opts=opts(tmp_path / "c"), **FAST)  # fvedit encode
    cached = run_preview(face_video, tmp_path / "b.png", "young", strengths=strengths, keyframes=3, opts=opts(tmp_path / "c"), **FAST)
    assert cached.inverted == 0 and np.array_equal(cached.keyframes, first.keyframes)
    assert np.array_equal(cached.cells[:, 0], cells[:, 0])
    # the same inversion in another batch composition: equal up to fp32 round-off (relative to the
    # noise maps' size), which the untrained decoder may amplify to a few 8-bit levels
    err = np.abs(cached.x_T - first.x_T).max() / np.abs(first.x_T).max()
    assert err <= 1e-4


def test_each_column_decodes_the_edits_identity_from_the_cached_x_T(face_video, tmp_path):
    """Column k is decode(x_T of the keyframes, L2norm(DeNorm(Norm(z_mean) + s_k * direction))),
    the identity `fvedit edit --attr young --strength s_k` uses; at strength 0 that is the mean
    identity up to fp32 round-off (the official formula re-normalises)."""
    import torch

    from fvedit.edit import apply_attribute_edits, parse_attr_specs
    from fvedit.pipeline.cache import load_encoding
    from fvedit.pipeline.decode import decode_batch
    from fvedit.pipeline.jobs import make_eps_model
    from fvedit.weights.loading import load_for_run

    o = opts(tmp_path / "c")
    summary = run_edit(face_video, None, EditRequest([]), opts=o, **FAST)
    res = run_preview(face_video, tmp_path / "p.png", "young", strengths=(0.0, 0.4), keyframes=2, opts=opts(tmp_path / "c"), **FAST)
    enc = load_encoding(tmp_path / "c", summary.cache_folder.name)
    cpu = torch.device("cpu")
    weights = load_for_run(None, "tiny", cpu)
    eps = make_eps_model(weights, "reference", cpu)
    keys = res.keyframes
    z_mean = torch.from_numpy(enc.z_id_mean)
    for col, strength in enumerate((0.0, 0.4), start=1):
        z = apply_attribute_edits(z_mean, parse_attr_specs(["young"], strength=strength), weights.classifier)
        if strength == 0.0:
            assert torch.allclose(z, torch.nn.functional.normalize(z_mean, dim=0), atol=1e-6)
        ref = decode_batch(weights.model, eps, o.sampler, enc.x_T.take(keys), enc.z_lnd[keys], z, np.arange(len(keys)), cpu)
        assert np.array_equal(res.cells[:, col], ref), strength
    assert not np.array_equal(res.cells[:, 1], res.cells[:, 2])


@pytest.mark.parametrize("args,expected", [
    (["--attr", "young", "-o", "{tmp}/sheet.jpg"], "PNG"),
    (["--attr", "young", "--strengths", "a,b", "-o", "{tmp}/s.png"], "--strengths"),
    (["--attr", "young=0.3", "-o", "{tmp}/s.png"], "one attribute"),
    (["--attr", "wings", "-o", "{tmp}/s.png"], "wings"),
])
def test_bad_arguments_exit_2_with_one_line(face_video, tmp_path, capsys, args, expected):
    argv = ["preview", str(face_video), "--preset", "tiny", "--device", "cpu", "--steps", "2",
            "--cache-dir", str(tmp_path / "c")] + [a.format(tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert not list(tmp_path.glob("*.png"))


def test_cli_writes_the_sheet(face_video, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    argv = ["preview", str(face_video), "--attr", "young", "--frames", "2", "--strengths", "-0.3,0.3",
            "--preset", "tiny", "--device", "cpu", "--steps", "2", "--cache-dir", str(tmp_path / "c"), "-o", str(out)]
    try:
        main(argv)
    except SystemExit as e:
        assert e.code in (0, None)
    captured = capsys.readouterr()
    assert "2 keyframes" in captured.out + captured.err
    assert np.asarray(Image.open(out)).shape == (LABEL + 2 * CELL, LABEL * 3 + 3 * CELL, 3)
