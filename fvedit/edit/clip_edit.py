"""CLIP text edits: learn an identity step from a text pair with the paper's noisy CLIP loss (DVA §4.2).

Decoding a full image for every optimisation step would cost T UNet calls, so the paper works
with a short S-step DDIM trajectory of one frame (S = 5: t = 800, 600, 400, 200, 0):

1. invert the frame to x at t_{S-1} with its own identity, and decode it back keeping every
   state: the neutral images x̂_{t_s};
2. from each state x̂_{t_{s+1}}, one DDIM step under the *trainable* identity gives x^edit_{t_s}
   (all S steps in one batched UNet call);
3. the directional CLIP loss between (x̂_{t_s}, source text) and (x^edit_{t_s}, target text)
   compares images at the same noise level, which keeps the rest of the face (paper App. B);
   an identity cosine loss and a masked L1 loss pull the other way.

The learned step Δ = z_opt - z_id is then added to the video's mean identity with a strength.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fvedit.diffusion import ddim_decode, ddim_encode, ddim_step
from fvedit.diffusion.ddim import ProgressFn
from fvedit.diffusion.schedule import ddim_timesteps
from fvedit.edit.clip_models import ClipPair
from fvedit.errors import InputError

# The paper optimises for 2000 iterations (App. A.3, Tab. 3). That is 2000 batched UNet
# forward+backward passes; the CLI default trades some edit strength for a 10x shorter run.
PAPER_STEPS = 2000
DEFAULT_STEPS = 200

# Prompt templates for the text direction. The official code averages over CLIP's 79 ImageNet
# prompt templates; this shorter list is written for fvedit (generic photo phrasings), so text
# directions are close to, but not bit-identical with, the official ones.
CLIP_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a high quality photo of a {}.",
    "a portrait of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a video frame showing a {}.",
    "a snapshot of a {}.",
    "a {} in a photo.",
    "a {} seen from the front.",
    "a {}.",
)


class ClipEditStep(NamedTuple):
    """What a per-iteration callback sees: the losses at the start of the step (terms before
    weighting) and the identity step after this step's Adam update."""

    step: int  # 1-based
    total: int
    loss: float
    clip: float
    id: float
    l1: float
    delta: Tensor  # [D], z_opt - z_id after this step


def _unit(x: Tensor, eps: float = 0.0) -> Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + eps)


def text_direction(clip: ClipPair, src_text: str, trg_text: str, templates: Sequence[str] = CLIP_TEMPLATES) -> Tensor:
    """Unit text direction [E]: mean over templates of (unit target - unit source), normalised."""
    for what, text in (("source", src_text), ("target", trg_text)):
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"the {what} text is empty; give e.g. --src-text face --trg-text 'face with beard'")
    if src_text.strip() == trg_text.strip():
        raise InputError(f"source and target text are both {src_text!r}; they must differ to define an edit")
    if not templates:
        raise InputError("no prompt templates given")
    with torch.no_grad():
        src = _unit(clip.encode_text([t.format(src_text) for t in templates]).float())
        trg = _unit(clip.encode_text([t.format(trg_text) for t in templates]).float())
        direction = (trg - src).mean(dim=0)
    norm = direction.norm()
    if not bool(torch.isfinite(norm)) or float(norm) < 1e-6:
        raise InputError(f"CLIP sees no difference between {src_text!r} and {trg_text!r}; rephrase the target text")
    return direction / norm


def directional_clip_loss(src_emb: Tensor, trg_emb: Tensor, text_dir: Tensor) -> Tensor:
    """L = mean(1 - cos(unit(unit(trg) - unit(src)), text_dir)) (StyleGAN-NADA's directional loss)."""
    image_dir = _unit(_unit(trg_emb) - _unit(src_emb), eps=1e-7)
    return (1.0 - (image_dir * text_dir).sum(dim=-1)).mean()


def noisy_clip_loss(directional: Tensor) -> Tensor:
    """The DVA script's transform of the directional loss: -log((2 - L) / 2), 0 when aligned."""
    return -torch.log((2.0 - directional) / 2.0)


def _check_inputs(model, frame: Tensor, steps: int, n_train_step: int) -> None:
    size = model.config.image_size
    if frame.ndim != 4 or frame.shape[0] != 1 or frame.shape[1] != 3:
        raise InputError(f"the CLIP edit learns from one frame [1,3,{size},{size}], got shape {tuple(frame.shape)}")
    if tuple(frame.shape[2:]) != (size, size):
        raise InputError(f"frame is {frame.shape[3]}x{frame.shape[2]} but the model works at {size}x{size}")
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"the CLIP edit needs at least 1 optimisation step, got {steps!r}")
    if not isinstance(n_train_step, int) or n_train_step < 2:
        raise InputError(f"n_train_step must be an integer >= 2 (the paper uses 5), got {n_train_step!r}")
    ddim_timesteps(n_train_step, model.config.diffusion.num_timesteps)  # raises on an impossible spacing


def learn_text_direction(
    model,
    frame: Tensor,
    src_text: str,
    trg_text: str,
    clip: ClipPair,
    *,
    steps: int = DEFAULT_STEPS,
    n_train_step: int = 5,
    lr: float = 0.002,
    clip_w: float = 3.0,
    id_w: float = 5.0,
    l1_w: float = 5.0,
    seed: int = 0,
    templates: Sequence[str] = CLIP_TEMPLATES,
    progress: ProgressFn | None = None,
    callback: Callable[[ClipEditStep], None] | None = None,
) -> Tensor:
    """Learn the identity step Δ [D] that moves `frame` from `src_text` towards `trg_text`.

    `model` is a `DVAModel` (frozen); `frame` is [1,3,S,S] RGB in [-1, 1], normally the first
    frame of the video. Defaults follow the official `editing_CLIP.py` except `steps` (paper:
    2000, `PAPER_STEPS`). Everything is deterministic; `seed` pins the global RNG for the run
    (restored afterwards) in case a model or CLIP pair draws random numbers.
    """
    _check_inputs(model, frame, steps, n_train_step)
    encoder, schedule = model.encoder, model.config.diffusion
    with torch.random.fork_rng(devices=[frame.device] if frame.device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.no_grad():
            start = encoder.id_forward(frame)  # [1, D], unit norm
            z_lnd = encoder.lnd_forward(frame)
            start_face = encoder.fuse(start, z_lnd)

            def eps_start(x: Tensor, t: Tensor) -> Tensor:
                return model.unet(x, t, start_face)

            x_top = ddim_encode(eps_start, frame, n_train_step, cfg=schedule)
            _, trajectory = ddim_decode(eps_start, x_top, n_train_step, cfg=schedule, return_intermediates=True)
            states = torch.cat(trajectory.xs[:-1])  # x̂ at t_{S-1} .. t_0: where the edit steps start
            neutral = torch.cat(trajectory.xs[1:])  # x̂ at t_{S-2} .. t_0 and the final image
            indices = torch.arange(n_train_step - 1, -1, -1, device=frame.device)
            mask = encoder.face_mask(frame, for_video=False)
            text_dir = text_direction(clip, src_text, trg_text, templates).to(frame.device)
            neutral_emb = clip.encode_image(neutral).float()

        # At step 1 the edited images equal the neutral ones up to rounding, so the CLIP image
        # direction is ~0/0 and its gradient is large; the official code has the same first step.
        with torch.enable_grad():  # also when the caller runs under torch.no_grad()
            edit = start.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([edit], lr=lr)
            for step in range(1, steps + 1):
                cond = F.normalize(edit, dim=-1)
                z_face = encoder.fuse(cond, z_lnd)
                eps_edit = lambda x, t, z=z_face: model.unet(x, t, z)  # noqa: E731
                edited, _ = ddim_step(eps_edit, states, indices, n_train_step, cfg=schedule)
                edited_emb = clip.encode_image(edited).float()
                loss_clip = noisy_clip_loss(directional_clip_loss(neutral_emb, edited_emb, text_dir))
                loss_id = 1.0 - (cond * start).sum()
                loss_l1 = F.l1_loss(neutral * mask, edited * mask)
                loss = clip_w * loss_clip + id_w * loss_id + l1_w * loss_l1
                (edit.grad,) = torch.autograd.grad(loss, [edit])  # only the identity learns, never the model
                optimizer.step()
                if callback is not None:
                    terms = [float(v.detach()) for v in (loss, loss_clip, loss_id, loss_l1)]
                    callback(ClipEditStep(step, steps, *terms, delta=(edit.detach() - start)[0].clone()))
                if progress is not None:
                    progress(step, steps)
    return (edit.detach() - start)[0]


def apply_text_direction(z_id_mean: Tensor, delta: Tensor, strength: float = 1.0) -> Tensor:
    """Edited identity L2norm(z_id_mean + strength * delta), same shape as z_id_mean ([D] or [1,D])."""
    dim = z_id_mean.shape[-1]
    if z_id_mean.ndim not in (1, 2) or (z_id_mean.ndim == 2 and z_id_mean.shape[0] != 1):
        raise InputError(f"identity must be [D] or [1, D], got {tuple(z_id_mean.shape)}")
    if delta.reshape(-1).shape != (dim,):
        raise InputError(f"text direction has shape {tuple(delta.shape)} but the identity has {dim} dims")
    moved = z_id_mean + float(strength) * delta.reshape(z_id_mean.shape).to(z_id_mean)
    return F.normalize(moved, dim=-1)
