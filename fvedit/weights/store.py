"""The weights directory: safetensors files plus a `manifest.json` that says what they are.

Layout of a weights directory (written by `fvedit.weights.importer`):

    manifest.json           format version, model config, sha256/size/source of every file
    model.safetensors       the DVAModel state dict (fp32; `unet.*` and `encoder.*`)
    classifier.safetensors  attribute classifier: weight [40,id_dim], bias [40], conds_mean/std [id_dim]
    id_stats.safetensors    z_id statistics from the official latent.pkl: mean/std [id_dim]

Loading reads safetensors only (never pickle), so a weights directory cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from fvedit.config import ModelConfig, get_preset
from fvedit.errors import InputError

ENV_VAR = "FVEDIT_WEIGHTS_DIR"
MANIFEST_NAME = "manifest.json"
MODEL_FILE = "model.safetensors"
CLASSIFIER_FILE = "classifier.safetensors"
ID_STATS_FILE = "id_stats.safetensors"
FORMAT_NAME = "fvedit-weights"
FORMAT_VERSION = 1

# Row order of the official classifier's weight (CelebA attribute order, `CelebAttrDataset.id_to_cls`).
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Where the weights live


def default_weights_dir() -> Path:
    """`$XDG_CACHE_HOME/fvedit/weights`, i.e. `~/.cache/fvedit/weights` by default."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "fvedit" / "weights"


def resolve_weights_dir(cli_value: Path | str | None = None) -> Path:
    """CLI `--weights-dir` wins, then `$FVEDIT_WEIGHTS_DIR`, then the user cache directory."""
    if cli_value is not None and str(cli_value) != "":
        return Path(cli_value).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return default_weights_dir()


# --------------------------------------------------------------------------------------------
# The small pieces that travel with the model


class AttributeClassifier(nn.Module):
    """The official linear attribute classifier over *normalised* identity features.

    logits = W (z_id - conds_mean) / conds_std + b; row c of W is the edit direction of
    attribute c (`CELEBA_ATTRIBUTES[c]`).
    """

    def __init__(self, weight: Tensor, bias: Tensor, conds_mean: Tensor, conds_std: Tensor):
        super().__init__()
        n_cls, id_dim = weight.shape
        if bias.shape != (n_cls,) or conds_mean.shape != (id_dim,) or conds_std.shape != (id_dim,):
            raise InputError(
                f"classifier tensors have inconsistent shapes: weight {list(weight.shape)}, bias "
                f"{list(bias.shape)}, conds_mean {list(conds_mean.shape)}, conds_std {list(conds_std.shape)}"
            )
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())
        self.register_buffer("conds_mean", conds_mean.float())
        self.register_buffer("conds_std", conds_std.float())

    @property
    def id_dim(self) -> int:
        return self.weight.shape[1]

    def normalize(self, z_id: Tensor) -> Tensor:
        return (z_id - self.conds_mean) / self.conds_std

    def denormalize(self, n: Tensor) -> Tensor:
        return n * self.conds_std + self.conds_mean

    def forward(self, z_id: Tensor) -> Tensor:
        return nn.functional.linear(self.normalize(z_id), self.weight, self.bias)

    @staticmethod
    def attribute_index(name: str) -> int:
        if name in CELEBA_ATTRIBUTES:
            return CELEBA_ATTRIBUTES.index(name)
        lowered = {a.lower(): i for i, a in enumerate(CELEBA_ATTRIBUTES)}
        if name.lower() in lowered:
            return lowered[name.lower()]
        raise InputError(f"unknown attribute {name!r}; choose one of: {', '.join(CELEBA_ATTRIBUTES)}")


@dataclass
class IdentityStats:
    """Per-dimension mean/std of z_id (official `latent.pkl`), used to normalise identities."""

    mean: Tensor
    std: Tensor

    def to(self, device: str | torch.device) -> "IdentityStats":
        return IdentityStats(self.mean.to(device), self.std.to(device))


@dataclass
class LoadedWeights:
    model: nn.Module  # fvedit.models.DVAModel, eval mode, requires_grad off
    classifier: AttributeClassifier | None
    id_stats: IdentityStats | None
    manifest: dict[str, Any]
    is_demo: bool

    @property
    def config(self) -> ModelConfig:
        return self.model.config


# --------------------------------------------------------------------------------------------
# Expected keys, and the one error message for a mismatch


@lru_cache(maxsize=8)
def expected_state_shapes(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Key -> (shape, dtype) of `build_model(cfg).state_dict()`, built on the meta device (no memory)."""
    from fvedit.models import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


def _first(items: list[str], n: int = 3) -> str:
    more = f", ... {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def describe_mismatch(
    expected: dict[str, tuple[int, ...]], actual: dict[str, tuple[int, ...]], unknown_extra: list[str] = ()
) -> str | None:
    """One-line summary of missing / unknown / mis-shaped keys (first few of each), or None if equal."""
    missing = sorted(k for k in expected if k not in actual)
    unknown = sorted([k for k in actual if k not in expected] + list(unknown_extra))
    misshaped = sorted(
        f"{k} {_fmt_shape(actual[k])} (expected {_fmt_shape(expected[k])})"
        for k in expected
        if k in actual and tuple(actual[k]) != tuple(expected[k])
    )
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' * (len(missing) != 1)} ({_first(missing)})")
    if unknown:
        parts.append(f"{len(unknown)} unknown key{'s' * (len(unknown) != 1)} ({_first(unknown)})")
    if misshaped:
        parts.append(f"{len(misshaped)} mis-shaped key{'s' * (len(misshaped) != 1)} ({_first(misshaped)})")
    return "; ".join(parts) if parts else None


# --------------------------------------------------------------------------------------------
# Manifest, listing, verification


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(weights_dir: Path) -> dict[str, Any]:
    """The parsed manifest, or `InputError` saying how to create one."""
    path = Path(weights_dir) / MANIFEST_NAME
    if not path.is_file():
        raise InputError(
            f"no weights in {weights_dir} (no {MANIFEST_NAME}); run `fvedit weights import-dva` or "
            f"`fvedit weights fetch`, or use the built-in demo weights"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}; re-run `fvedit weights import-dva`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise InputError(f"{path} is not an fvedit weights manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(
            f"{path} has format version {version}, this fvedit reads version {FORMAT_VERSION}; re-import the weights"
        )
    if not isinstance(manifest.get("files"), dict) or MODEL_FILE not in manifest["files"]:
        raise InputError(f"{path} lists no {MODEL_FILE}; re-import the weights")
    return manifest


@dataclass(frozen=True)
class FileStatus:
    name: str
    expected_size: int
    expected_sha256: str
    actual_size: int | None  # None: the file is missing
    actual_sha256: str | None = None  # only computed by `verify_weights`
    source: str | None = None

    @property
    def status(self) -> str:
        if self.actual_size is None:
            return "missing"
        if self.actual_size != self.expected_size:
            return "size mismatch"
        if self.actual_sha256 is not None and self.actual_sha256 != self.expected_sha256:
            return "sha256 mismatch"
        return "ok"


@dataclass
class WeightsInfo:
    weights_dir: Path
    manifest: dict[str, Any] | None
    files: list[FileStatus] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.manifest is not None and all(f.status == "ok" for f in self.files)


def _file_statuses(weights_dir: Path, manifest: dict[str, Any], hash_files: bool) -> list[FileStatus]:
    out = []
    for name, entry in sorted(manifest["files"].items()):
        path = weights_dir / name
        present = path.is_file()
        out.append(
            FileStatus(
                name=name,
                expected_size=int(entry["size"]),
                expected_sha256=str(entry["sha256"]),
                actual_size=path.stat().st_size if present else None,
                actual_sha256=sha256_file(path) if present and hash_files else None,
                source=entry.get("source"),
            )
        )
    return out


def list_weights(weights_dir: Path) -> WeightsInfo:
    """What the manifest says is here, with file sizes checked (cheap; no hashing)."""
    weights_dir = Path(weights_dir)
    if not (weights_dir / MANIFEST_NAME).is_file():
        return WeightsInfo(weights_dir=weights_dir, manifest=None)
    manifest = read_manifest(weights_dir)
    return WeightsInfo(weights_dir, manifest, _file_statuses(weights_dir, manifest, hash_files=False))


def describe_weights_dir(cli_value: Path | str | None = None) -> str:
    """One line for `fvedit info`: which weights a command would use. Never raises."""
    weights_dir = resolve_weights_dir(cli_value)
    if not (weights_dir / MANIFEST_NAME).is_file():
        return (
            f"weights: none in {weights_dir}; commands use untrained demo weights "
            "(run `fvedit weights fetch` or `fvedit weights import-dva`)"
        )
    try:
        info = list_weights(weights_dir)
    except InputError as exc:
        return f"weights: {weights_dir} is unusable: {exc}"
    manifest = info.manifest or {}
    problems = [f"{f.name} {f.status}" for f in info.files if f.status != "ok"]
    state = "problems: " + ", ".join(problems) if problems else "ok"
    return (
        f"weights: {weights_dir} (preset {manifest.get('preset')}, imported by fvedit "
        f"{manifest.get('fvedit_version')}, {len(info.files)} files, sizes {state})"
    )


def verify_weights(weights_dir: Path) -> WeightsInfo:
    """sha256 of every file against the manifest; `.ok` is False on any missing/changed file."""
    weights_dir = Path(weights_dir)
    manifest = read_manifest(weights_dir)
    return WeightsInfo(weights_dir, manifest, _file_statuses(weights_dir, manifest, hash_files=True))


# --------------------------------------------------------------------------------------------
# Loading


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:
        raise InputError(f"cannot read {path} as safetensors ({exc}); run `fvedit weights verify`") from None


def _read_tensors(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    shapes = _safetensors_shapes(path)
    problem = describe_mismatch(expected, shapes)
    if problem:
        raise InputError(f"{path.name} does not have the expected tensors: {problem}")
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k).float() for k in expected}


def _check_model_file(path: Path, cfg: ModelConfig) -> None:
    expected = {k: shape for k, (shape, _) in expected_state_shapes(cfg).items()}
    problem = describe_mismatch(expected, _safetensors_shapes(path))
    if problem:
        raise InputError(f"checkpoint does not match preset {cfg.name}: {problem}")


def build_empty_model(cfg: ModelConfig) -> nn.Module:
    """`build_model(cfg)` without disturbing the caller's global RNG (its init is overwritten anyway)."""
    from fvedit.models import build_model

    with torch.random.fork_rng(devices=[]):
        return build_model(cfg)


@torch.no_grad()
def _copy_into(model: nn.Module, path: Path) -> None:
    """Copy the safetensors tensors into the model one at a time (peak memory: model + one tensor)."""
    target = model.state_dict()
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            dst = target[key]
            dst.copy_(f.get_tensor(key).to(dst.dtype))


def manifest_config(manifest: dict[str, Any]) -> ModelConfig:
    try:
        return ModelConfig.from_dict(manifest["config"])
    except Exception as exc:
        raise InputError(f"the weights manifest has an invalid model config ({exc}); re-import the weights") from None


def load_weights(
    weights_dir: Path, device: str | torch.device = "cpu", *, preset: str | None = None
) -> LoadedWeights:
    """Load an imported weights directory (safetensors only) into a ready, eval-mode DVAModel.

    Checks the manifest (format, config, file sizes) and every key and shape before building
    the model. `preset`, if given, must equal the config the weights were imported for.
    Content hashes are not recomputed here (1 GB); `verify_weights` does that.
    """
    weights_dir = Path(weights_dir)
    manifest = read_manifest(weights_dir)
    cfg = manifest_config(manifest)
    if preset is not None:
        wanted = get_preset(preset)
        if cfg != wanted:
            raise InputError(
                f"the weights in {weights_dir} are for model config {cfg.name!r}, not preset {preset!r}; "
                f"import matching weights or choose --preset {cfg.name}"
            )
    for status in _file_statuses(weights_dir, manifest, hash_files=False):
        if status.status != "ok":
            raise InputError(
                f"{weights_dir / status.name}: {status.status} (manifest says {status.expected_size} bytes); "
                f"re-import the weights or run `fvedit weights verify`"
            )

    model_path = weights_dir / MODEL_FILE
    _check_model_file(model_path, cfg)
    model = build_empty_model(cfg)
    _copy_into(model, model_path)
    model.eval().requires_grad_(False).to(device)

    id_dim = cfg.encoder.id_dim
    classifier = None
    if CLASSIFIER_FILE in manifest["files"]:
        n_cls = len(CELEBA_ATTRIBUTES)
        t = _read_tensors(
            weights_dir / CLASSIFIER_FILE,
            {"weight": (n_cls, id_dim), "bias": (n_cls,), "conds_mean": (id_dim,), "conds_std": (id_dim,)},
        )
        classifier = AttributeClassifier(t["weight"], t["bias"], t["conds_mean"], t["conds_std"]).to(device)
    id_stats = None
    if ID_STATS_FILE in manifest["files"]:
        t = _read_tensors(weights_dir / ID_STATS_FILE, {"mean": (id_dim,), "std": (id_dim,)})
        id_stats = IdentityStats(t["mean"], t["std"]).to(device)
    return LoadedWeights(
        model=model, classifier=classifier, id_stats=id_stats, manifest=manifest, is_demo=bool(manifest.get("demo"))
    )


def check_positive_std(std: Tensor, what: str) -> None:
    """Identity normalisation divides by std: zeros or NaNs would silently produce inf edits."""
    if not bool(torch.isfinite(std).all()) or not bool((std > 0).all()):
        raise InputError(f"{what} has non-positive or non-finite entries; the statistics file is corrupt")


def unit_vector_std(id_dim: int) -> float:
    """Per-coordinate std of a uniformly random unit vector in R^id_dim."""
    return 1.0 / math.sqrt(id_dim)
