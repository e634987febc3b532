"""CLIP encoder pairs for text edits: open_clip ViT-B/16 (the paper's model) and a tiny stand-in.

Both speak the same `ClipPair` protocol. Images go in as the diffusion model sees them (RGB in
[-1, 1], any square size) and the pair applies CLIP's own preprocessing, differentiably, so a
loss on the embeddings can send gradients back into the images.

The real weights are never downloaded here: `load_open_clip` uses a file that is already on
disk (an explicit path, `$FVEDIT_CLIP_WEIGHTS`, or the Hugging Face cache that open_clip itself
fills) and fails with an `InputError` that says what to install or where to put the file.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fvedit.errors import FveditError, InputError

CLIP_IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

OPEN_CLIP_MODEL = "ViT-B-16"  # the paper's ViT-B/16 (Appendix A.3)
OPEN_CLIP_HF_REPO = "timm/vit_base_patch16_clip_224.openai"  # where open_clip keeps the OpenAI weights
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
WEIGHTS_ENV_VAR = "FVEDIT_CLIP_WEIGHTS"


@runtime_checkable
class ClipPair(Protocol):
    """A CLIP image encoder and text encoder sharing one embedding space (outputs not normalised)."""

    def encode_image(self, images: Tensor) -> Tensor:
        """images [B,3,H,W] RGB in [-1, 1] -> [B, E]; includes CLIP's own preprocessing."""
        ...

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """N strings -> [N, E]."""
        ...


def clip_preprocess(
    images: Tensor, size: int = CLIP_IMAGE_SIZE, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> Tensor:
    """(x + 1) / 2, bicubic resize of the short side to `size`, centre crop, CLIP normalisation.

    Tensor ops only (differentiable). Like the official code (torchvision 0.13 tensor Resize)
    the resize does not antialias and the values are not clamped.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"CLIP expects RGB images [B,3,H,W], got shape {tuple(images.shape)}")
    x = (images + 1.0) / 2.0
    height, width = x.shape[-2:]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=False)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        x = x[:, :, top : top + size, left : left + size]
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


# --------------------------------------------------------------------------------------------
# The real thing: open_clip ViT-B/16 with the OpenAI weights


class OpenClipPair:
    """open_clip's CLIP model and tokenizer behind the `ClipPair` protocol (fp32, frozen)."""

    def __init__(self, model: nn.Module, tokenizer, device: torch.device | str = "cpu"):
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_image(clip_preprocess(images.to(self.device)))

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens)


def _hf_cache_roots(cache_dir: Path | str | None) -> list[Path]:
    """Hugging Face hub cache folders in the order huggingface_hub itself resolves them."""
    roots = []
    if cache_dir is not None:
        roots.append(Path(cache_dir).expanduser())
    if os.environ.get("HF_HUB_CACHE"):
        roots.append(Path(os.environ["HF_HUB_CACHE"]).expanduser())
    if os.environ.get("HF_HOME"):
        roots.append(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    roots.append(Path(xdg).expanduser() / "huggingface" / "hub")
    return list(dict.fromkeys(roots))


def _cached_snapshot_file(root: Path) -> Path | None:
    """The weights file in `root`'s snapshot of OPEN_CLIP_HF_REPO: the `main` ref first, then any."""
    repo_dir = root / ("models--" + OPEN_CLIP_HF_REPO.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    revisions = [ref.read_text().strip()] if ref.is_file() else []
    revisions += sorted(p.name for p in snapshots.iterdir() if p.is_dir())
    for revision in dict.fromkeys(revisions):
        for name in OPEN_CLIP_FILES:
            candidate = snapshots / revision / name
            if candidate.is_file():
                return candidate
    return None


def expected_weights_locations(cache_dir: Path | str | None = None) -> list[Path]:
    """Where `find_clip_weights` looks, for error messages."""
    return [
        root / ("models--" + OPEN_CLIP_HF_REPO.replace("/", "--")) / "snapshots" / "<revision>" / OPEN_CLIP_FILES[0]
        for root in _hf_cache_roots(cache_dir)
    ]


def find_clip_weights(weights: Path | str | None = None, cache_dir: Path | str | None = None) -> Path | None:
    """The local ViT-B/16 OpenAI weights file: `weights`, then `$FVEDIT_CLIP_WEIGHTS`, then the HF cache."""
    for explicit in (weights, os.environ.get(WEIGHTS_ENV_VAR) or None):
        if explicit is not None:
            path = Path(explicit).expanduser()
            if not path.is_file():
                raise InputError(f"CLIP weights file {path} does not exist")
            return path
    for root in _hf_cache_roots(cache_dir):
        found = _cached_snapshot_file(root)
        if found is not None:
            return found
    return None


def load_open_clip(
    device: torch.device | str = "cpu", *, weights: Path | str | None = None, cache_dir: Path | str | None = None
) -> OpenClipPair:
    """open_clip ViT-B/16 with OpenAI weights from local files only (never the network).

    Raises `InputError` naming what is missing: the `open_clip` package (`pip install
    "fvedit[clip]"`) or the weights file (with the paths searched).
    """
    try:
        import open_clip
    except ImportError as exc:
        raise InputError(
            f'CLIP text edits need the open_clip package ({exc}); install it with `pip install "fvedit[clip]"`'
        ) from None
    except Exception as exc:  # e.g. a torchvision build that does not match torch
        raise InputError(
            f"the open_clip package is installed but cannot be imported ({type(exc).__name__}: {exc}); "
            'reinstall it with `pip install "fvedit[clip]"` and a torchvision that matches your torch'
        ) from None
    path = find_clip_weights(weights, cache_dir)
    if path is None:
        where = expected_weights_locations(cache_dir)[0]
        raise InputError(
            f"CLIP ViT-B/16 (OpenAI) weights not found; fvedit does not download them. Put "
            f"{OPEN_CLIP_FILES[0]} from the Hugging Face repo {OPEN_CLIP_HF_REPO} at {where} "
            f"(e.g. with `huggingface-cli download {OPEN_CLIP_HF_REPO}` on a connected machine), "
            f"or set ${WEIGHTS_ENV_VAR} to the file"
        )
    try:
        # A file path as `pretrained` makes open_clip load it directly (no hub lookup). The OpenAI
        # weights were trained with QuickGELU, which the tag would set; a path must force it.
        model = open_clip.create_model(OPEN_CLIP_MODEL, pretrained=str(path), force_quick_gelu=True, device=device)
        tokenizer = open_clip.get_tokenizer(OPEN_CLIP_MODEL)
    except Exception as exc:
        raise FveditError(f"cannot load CLIP weights from {path} ({type(exc).__name__}: {exc})") from None
    return OpenClipPair(model, tokenizer, device)


# --------------------------------------------------------------------------------------------
# A tiny stand-in with the same interface, for tests and offline demos


STANDIN_VOCABULARY: tuple[str, ...] = (
    "a", "an", "the", "of", "with", "without", "and", "in", "photo", "picture", "image", "portrait",
    "face", "person", "man", "woman", "beard", "mustache", "eyeglasses", "glasses", "smile", "smiling",
    "young", "old", "hair", "blond", "black", "makeup", "lipstick", "hat", "bald", "happy", "sad",
    "angry", "close", "up", "bright", "dark", "blurry", "good", "bad", "small", "large",
)  # fmt: skip


class StandInClip(nn.Module):
    """Seeded, untrained CLIP look-alike: a small conv image encoder and a bag-of-words text encoder.

    It runs CLIP's real preprocessing (224 px by default) and returns [B, embed_dim]; text is the
    mean of fixed random word vectors (unknown words share one vector). It has no semantics:
    it only lets the CLIP-edit machinery run and be tested without the 600 MB ViT-B/16.
    """

    def __init__(
        self,
        embed_dim: int = 32,
        seed: int = 0,
        image_size: int = CLIP_IMAGE_SIZE,
        vocabulary: Sequence[str] = STANDIN_VOCABULARY,
    ):
        super().__init__()
        self.image_size = image_size
        self.vocabulary = {word: i for i, word in enumerate(vocabulary)}
        self.image_net = nn.Sequential(
            nn.Conv2d(3, 8, 8, stride=8), nn.GELU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * 16, embed_dim),
        )  # fmt: skip
        self.word_vectors = nn.Parameter(torch.empty(len(vocabulary) + 1, embed_dim))  # last row: unknown
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in self.parameters():
                fan_in = math.prod(param.shape[1:]) if param.ndim > 1 else param.numel()
                bound = 1.0 / math.sqrt(fan_in)
                param.copy_(torch.empty(param.shape).uniform_(-bound, bound, generator=gen))
            self.word_vectors.copy_(torch.randn(self.word_vectors.shape, generator=gen))
        self.eval().requires_grad_(False)

    def encode_image(self, images: Tensor) -> Tensor:
        return self.image_net(clip_preprocess(images, self.image_size))

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        if isinstance(texts, str):
            raise InputError("encode_text takes a list of strings, not one string")
        unknown = len(self.vocabulary)
        rows = []
        for text in texts:
            words = re.findall(r"[a-z]+", text.lower()) or [""]
            ids = torch.tensor([self.vocabulary.get(w, unknown) for w in words], device=self.word_vectors.device)
            rows.append(self.word_vectors[ids].mean(dim=0))
        return torch.stack(rows)
