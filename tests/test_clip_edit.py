"""CLIP text edits with the tiny demo model and the stand-in CLIP pair (no downloads).

The learned step is judged with the quantity the paper optimises, recomputed here
independently: how well one noisy DDIM step under the edited identity moves the CLIP image
embedding along the text direction, compared with random steps of the same size and with the
step learned for the reversed text pair.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from fvedit.diffusion import ddim_decode, ddim_encode, ddim_step
from fvedit.edit import (
    CLIP_TEMPLATES,
    ClipPair,
    StandInClip,
    apply_text_direction,
    clip_preprocess,
    directional_clip_loss,
    find_clip_weights,
    learn_text_direction,
    load_open_clip,
    noisy_clip_loss,
    text_direction,
)
from fvedit.edit.clip_models import CLIP_MEAN, CLIP_STD, OPEN_CLIP_FILES, OPEN_CLIP_HF_REPO
from fvedit.errors import InputError
from fvedit.weights import demo_weights

SRC, TRG = "face", "face with beard"
S = 3  # DDIM states (paper: 5); 3 keeps each optimisation step cheap on CPU
STEPS = 12


@pytest.fixture(scope="module")
def model():
    return demo_weights("tiny").model


@pytest.fixture(scope="module")
def frame(model) -> torch.Tensor:
    """The astronaut's face (skimage sample), [1,3,64,64] in [-1, 1]."""
    face = torch.from_numpy(data.astronaut()[30:230, 150:350].copy()).permute(2, 0, 1)[None].float()
    size = model.config.image_size
    return F.interpolate(face / 127.5 - 1.0, size=(size, size), mode="area")


@pytest.fixture(scope="module")
def clip() -> StandInClip:
    return StandInClip(embed_dim=32, seed=0)


@pytest.fixture(scope="module")
def learned(model, frame, clip):
    logs, ticks = [], []
    delta = learn_text_direction(model, frame, SRC, TRG, clip, steps=STEPS, n_train_step=S, callback=logs.append,
                                 progress=lambda done, total: ticks.append((done, total)))  # fmt: skip
    return delta, logs, ticks


@pytest.fixture(scope="module")
def noisy_alignment(model, frame, clip):
    """Mean cosine between the CLIP image change of one edited DDIM step and the text direction."""
    enc = model.encoder
    with torch.no_grad():
        z_id, z_lnd = enc.id_forward(frame), enc.lnd_forward(frame)
        z_face = enc.fuse(z_id, z_lnd)
        x_top = ddim_encode(lambda x, t: model.unet(x, t, z_face), frame, S)
        _, traj = ddim_decode(lambda x, t: model.unet(x, t, z_face), x_top, S, return_intermediates=True)
        starts, neutral = torch.cat(traj.xs[:-1]), torch.cat(traj.xs[1:])
        neutral_emb = F.normalize(clip.encode_image(neutral), dim=-1)
        # text direction written out again: per template unit embeddings, mean difference, unit
        src = F.normalize(clip.encode_text([t.format(SRC) for t in CLIP_TEMPLATES]), dim=-1)
        trg = F.normalize(clip.encode_text([t.format(TRG) for t in CLIP_TEMPLATES]), dim=-1)
        text_dir = F.normalize((trg - src).mean(0), dim=0)

    def score(delta: torch.Tensor) -> float:
        with torch.no_grad():
            edited_face = enc.fuse(F.normalize(z_id + delta, dim=-1), z_lnd)
            eps_edit = lambda x, t: model.unet(x, t, edited_face)  # noqa: E731
            edited, _ = ddim_step(eps_edit, starts, torch.arange(S - 1, -1, -1), S)
            change = F.normalize(clip.encode_image(edited), dim=-1) - neutral_emb
            return float(F.cosine_similarity(change, text_dir[None], dim=-1).mean())

    return score


# ------------------------------------------------------------------------------------------
# The learned direction


def test_runs_all_steps_and_reports(learned):
    delta, logs, ticks = learned
    assert delta.shape == (128,) and bool(torch.isfinite(delta).all())
    assert ticks == [(i, STEPS) for i in range(1, STEPS + 1)]
    assert [log.step for log in logs] == list(range(1, STEPS + 1))
    torch.testing.assert_close(logs[-1].delta, delta, rtol=0, atol=0)
    assert logs[0].id == pytest.approx(0.0, abs=1e-6)  # starts at the frame's own identity
    for log in logs:
        assert log.loss == pytest.approx(3 * log.clip + 5 * log.id + 5 * log.l1, rel=1e-5)


def test_clip_loss_falls(learned):
    _, logs, _ = learned
    clip_terms = [log.clip for log in logs]
    # Step 1 sees edited == neutral up to rounding, so its image direction is noise and its loss
    # is near an uninformed direction's -log(1/2); the learned step must do clearly better.
    late = float(np.mean(clip_terms[-4:]))
    assert late < min(np.log(2) - 0.15, clip_terms[0] - 0.05)
    assert logs[-1].loss < logs[0].loss
    assert logs[-1].id > 0 and logs[-1].l1 > 0  # the edit is paid for with identity / pixel change


def test_learned_step_moves_along_the_text_direction(learned, noisy_alignment):
    delta = learned[0]
    gen = torch.Generator().manual_seed(1)
    randoms = [noisy_alignment(r / r.norm() * delta.norm()) for r in torch.randn(8, delta.numel(), generator=gen)]
    assert noisy_alignment(delta) > max(randoms) + 0.1


def test_reversed_text_learns_the_opposite(model, frame, clip, noisy_alignment, learned):
    reverse = learn_text_direction(model, frame, TRG, SRC, clip, steps=6, n_train_step=S)
    assert noisy_alignment(reverse) < 0 < noisy_alignment(learned[0])


def test_deterministic_and_works_under_no_grad(model, frame, clip, learned):
    with torch.no_grad():
        again = learn_text_direction(model, frame, SRC, TRG, clip, steps=3, n_train_step=S, seed=0)
    assert torch.equal(again, learned[1][2].delta)


def test_large_identity_weight_keeps_the_step_small(model, frame, clip, learned):
    logs = []
    learn_text_direction(model, frame, SRC, TRG, clip, steps=10, n_train_step=S, id_w=1e6, callback=logs.append)
    free = float(learned[1][9].delta.norm())
    assert float(logs[-1].delta.norm()) < 0.3 * free
    assert logs[-1].id < learned[1][9].id


def test_apply_text_direction_matches_numpy():
    gen = torch.Generator().manual_seed(5)
    z_mean = F.normalize(torch.randn(4, 16, generator=gen), dim=-1).mean(0)
    delta = 0.3 * torch.randn(16, generator=gen)
    for strength in (0.0, 0.5, -1.5):
        want = z_mean.double().numpy() + strength * delta.double().numpy()
        want /= np.linalg.norm(want)
        got = apply_text_direction(z_mean, delta, strength)
        np.testing.assert_allclose(got.double().numpy(), want, atol=1e-6, rtol=0)
        assert apply_text_direction(z_mean[None], delta, strength).shape == (1, 16)
    with pytest.raises(InputError, match="16 dims"):
        apply_text_direction(z_mean, torch.ones(15), 1.0)


# ------------------------------------------------------------------------------------------
# Losses, text direction, preprocessing


def test_directional_losses_match_numpy():
    gen = torch.Generator().manual_seed(2)
    src, trg = torch.randn(5, 12, generator=gen), torch.randn(5, 12, generator=gen)
    text = F.normalize(torch.randn(12, generator=gen), dim=0)
    s, t, d = (v.double().numpy() for v in (src, trg, text))
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    img_dir = (t - s) / np.linalg.norm(t - s, axis=1, keepdims=True)
    want = np.mean(1.0 - img_dir @ d)
    got = directional_clip_loss(src, trg, text)
    assert float(got) == pytest.approx(want, abs=1e-6)
    assert float(noisy_clip_loss(got)) == pytest.approx(-np.log((2 - want) / 2), abs=1e-6)
    aligned = directional_clip_loss(src, src + 3 * text, text)  # image direction == text direction
    assert float(noisy_clip_loss(aligned)) < float(noisy_clip_loss(got))


def test_text_direction_rule(clip):
    templates = ("a photo of a {}.", "{}")
    got = text_direction(clip, "face", "old face", templates)
    with torch.no_grad():
        emb = lambda text: F.normalize(clip.encode_text([tpl.format(text) for tpl in templates]), dim=-1)  # noqa: E731
        want = (emb("old face") - emb("face")).mean(0).double().numpy()
    np.testing.assert_allclose(got.double().numpy(), want / np.linalg.norm(want), atol=1e-6)
    assert not np.allclose(got.numpy(), text_direction(clip, "face", "happy face", templates).numpy(), atol=0.1)


@pytest.mark.parametrize(
    ("src", "trg", "message"),
    [("face", "face", "must differ"), ("", "face", "empty"), ("face zzz", "face qqq", "no difference")],
)
def test_text_direction_refuses_degenerate_texts(clip, src, trg, message):
    with pytest.raises(InputError, match=message):
        text_direction(clip, src, trg)


def test_clip_preprocess_known_answers():
    const = torch.full((2, 3, 64, 64), 0.2)  # bicubic keeps a constant image constant
    want = (torch.tensor([0.6, 0.6, 0.6]) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    out = clip_preprocess(const)
    assert out.shape == (2, 3, 224, 224)
    torch.testing.assert_close(out, want.view(1, 3, 1, 1).expand_as(out), atol=1e-5, rtol=0)
    # non-square: short side to 224, then the centre 224 columns
    gen = torch.Generator().manual_seed(0)
    wide = torch.rand(1, 3, 32, 64, generator=gen) * 2 - 1
    resized = F.interpolate((wide + 1) / 2, size=(224, 448), mode="bicubic", align_corners=False)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    manual = (resized[..., 112:336] - mean) / std
    torch.testing.assert_close(clip_preprocess(wide), manual, atol=1e-6, rtol=0)
    with pytest.raises(InputError, match="RGB images"):
        clip_preprocess(torch.zeros(3, 64, 64))


def test_stand_in_interface_and_seeding(clip):
    assert isinstance(clip, ClipPair)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    assert clip.encode_image(images).shape == (2, 32)
    assert clip.encode_text(["a face", "a face with glasses", "zzz"]).shape == (3, 32)
    other = StandInClip(embed_dim=32, seed=1)
    assert torch.equal(StandInClip(embed_dim=32, seed=0).encode_image(images), clip.encode_image(images))
    assert not torch.allclose(other.encode_image(images), clip.encode_image(images))
    assert all(not p.requires_grad for p in clip.parameters())


# ------------------------------------------------------------------------------------------
# Bad inputs and the open_clip loader


def test_bad_inputs(model, frame, clip):
    with pytest.raises(InputError, match="64x64"):
        learn_text_direction(model, frame[..., :32, :32], SRC, TRG, clip, steps=1)
    with pytest.raises(InputError, match="one frame"):
        learn_text_direction(model, frame.expand(2, -1, -1, -1), SRC, TRG, clip, steps=1)
    with pytest.raises(InputError, match="at least 1"):
        learn_text_direction(model, frame, SRC, TRG, clip, steps=0)
    with pytest.raises(InputError, match="n_train_step"):
        learn_text_direction(model, frame, SRC, TRG, clip, steps=1, n_train_step=1)
    with pytest.raises(InputError, match="must differ"):
        learn_text_direction(model, frame, SRC, SRC, clip, steps=1)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HF_HOME", "FVEDIT_CLIP_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_missing_open_clip_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` fail
    with pytest.raises(InputError, match=r'pip install "fvedit\[clip\]"'):
        load_open_clip()


class FakeOpenClip(types.ModuleType):
    """Records how load_open_clip calls open_clip (no real model, no network)."""

    def __init__(self):
        super().__init__("open_clip")
        self.calls = []

    def create_model(self, name, **kwargs):
        self.calls.append((name, kwargs))
        return torch.nn.Identity()

    def get_tokenizer(self, name):
        return lambda texts: torch.zeros(len(texts), 77, dtype=torch.long)


def test_missing_weights_name_the_file_and_place(monkeypatch, empty_caches):
    monkeypatch.setitem(sys.modules, "open_clip", FakeOpenClip())
    with pytest.raises(InputError) as err:
        load_open_clip()
    message = str(err.value)
    assert OPEN_CLIP_FILES[0] in message and OPEN_CLIP_HF_REPO in message and "FVEDIT_CLIP_WEIGHTS" in message
    assert str(empty_caches / "cache" / "huggingface" / "hub") in message


def test_cached_weights_are_loaded_from_disk(monkeypatch, empty_caches):
    fake = FakeOpenClip()
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    repo = empty_caches / "hub" / ("models--" + OPEN_CLIP_HF_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    weights = repo / "snapshots" / "abc123" / OPEN_CLIP_FILES[0]
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"not really weights")
    monkeypatch.setenv("HF_HUB_CACHE", str(empty_caches / "hub"))
    assert find_clip_weights() == weights
    pair = load_open_clip("cpu")
    assert fake.calls == [("ViT-B-16", {"pretrained": str(weights), "force_quick_gelu": True, "device": "cpu"})]
    assert isinstance(pair, ClipPair)
    monkeypatch.setenv("FVEDIT_CLIP_WEIGHTS", str(empty_caches / "nope.safetensors"))
    with pytest.raises(InputError, match="does not exist"):
        find_clip_weights()
