"""Import the official DVA release (Lightning checkpoint, latent.pkl, classifier) into a weights dir.

The official `epoch=51-step=1000000.ckpt` holds every model tensor twice in its `state_dict`:
`model.*` (online weights) and `ema_model.*` (EMA). The official scripts use only the EMA copy,
so we do too. Key names after the prefix are those of `dva_state_dict_keys.txt`; `KEY_RULES`
maps them to fvedit's `DVAModel` names. Nothing is loaded with plain pickle (see `safe_pickle`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fvedit.config import ModelConfig, get_preset
from fvedit.errors import FveditError, InputError
from fvedit.weights.safe_pickle import safe_load
from fvedit.weights.safetensors_writer import write_safetensors
from fvedit.weights.store import (
    CELEBA_ATTRIBUTES,
    CLASSIFIER_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    ID_STATS_FILE,
    MANIFEST_NAME,
    MODEL_FILE,
    check_positive_std,
    describe_mismatch,
    expected_state_shapes,
    sha256_file,
)

EMA_PREFIX = "ema_model."


@dataclass(frozen=True)
class KeyRule:
    """Official keys starting with `official` become `fvedit + rest`, or are dropped (fvedit=None)."""

    official: str
    fvedit: str | None
    why: str


# First match wins, so the specific landmark-net rules come before the generic `encoder.` rule.
KEY_RULES: tuple[KeyRule, ...] = (
    KeyRule(
        "encoder.lndnet.backbone.pretrain_net.features.",
        "encoder.lndnet.backbone.features.",
        "MobileNetV2 features, stored once in fvedit",
    ),
    KeyRule(
        "encoder.lndnet.backbone.base_net.0.",
        None,
        "duplicate: the official `base_net` is a Sequential over the same `features` module, so "
        "these are the pretrain_net.features tensors again (checked equal on import)",
    ),
    KeyRule(
        "encoder.lndnet.backbone.pretrain_net.classifier.",
        None,
        "torchvision's ImageNet head (Linear 1280->1000), never used: landmarks come from linear7/linear1",
    ),
    KeyRule("encoder.", "encoder.", "identity/landmark/face-parser nets and the fusion Linear: same names"),
    KeyRule("time_embed.", "unet.time_embed.", "UNet time MLP"),
    KeyRule("input_blocks.", "unet.input_blocks.", "UNet encoder side"),
    KeyRule("middle_block.", "unet.middle_block.", "UNet middle block"),
    KeyRule("output_blocks.", "unet.output_blocks.", "UNet decoder side"),
    KeyRule("out.", "unet.out.", "UNet output head"),
)

_DUPLICATE = ("encoder.lndnet.backbone.base_net.0.", "encoder.lndnet.backbone.pretrain_net.features.")


def _rule_for(key: str) -> KeyRule:
    for rule in KEY_RULES:
        if key.startswith(rule.official):
            return rule
    raise KeyError(f"no mapping rule for official key {key!r}")


def official_to_fvedit(key: str) -> str | None:
    """fvedit name of an official key (without `ema_model.`); None if deliberately dropped.

    Raises KeyError for keys no rule covers (not part of the official model).
    """
    rule = _rule_for(key)
    return None if rule.fvedit is None else rule.fvedit + key[len(rule.official) :]


def dropped_reason(key: str) -> str | None:
    """Why `official_to_fvedit(key)` is None, or None if the key is kept."""
    rule = _rule_for(key)
    return rule.why if rule.fvedit is None else None


# --------------------------------------------------------------------------------------------


def _state_dict_of(ckpt: Any, path: Path) -> dict[str, Any]:
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        return ckpt["state_dict"]
    if isinstance(ckpt, dict) and all(isinstance(k, str) for k in ckpt):
        return ckpt  # a bare state dict
    raise InputError(f"{path} is not a Lightning checkpoint (no 'state_dict' dictionary)")


def map_official_state_dict(ema: dict[str, Any], cfg: ModelConfig) -> dict[str, Tensor]:
    """Official EMA state dict (prefix stripped) -> fvedit DVAModel state dict, fully checked.

    Raises one `InputError` naming unknown, missing and mis-shaped keys (first few + counts).
    """
    expected = expected_state_shapes(cfg)
    mapped: dict[str, Tensor] = {}
    unknown: list[str] = []
    dropped: dict[str, Tensor] = {}
    not_tensors = [k for k, v in ema.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise InputError(
            f"{len(not_tensors)} checkpoint entries are not tensors ({', '.join(sorted(not_tensors)[:3])}); "
            "the file is not a DVA checkpoint or was altered"
        )
    for key, value in ema.items():
        try:
            new = official_to_fvedit(key)
        except KeyError:
            unknown.append(key)
            continue
        if new is None:
            dropped[key] = value
        elif new not in expected:
            unknown.append(key)
        else:
            mapped[new] = value

    for key, value in dropped.items():
        if key.startswith(_DUPLICATE[0]):
            twin = _DUPLICATE[1] + key[len(_DUPLICATE[0]) :]
            if twin in ema and not (ema[twin].shape == value.shape and torch.equal(ema[twin], value)):
                raise InputError(
                    f"landmark-net duplicate {key} differs from {twin}; they are one module in the official "
                    "model, so the checkpoint is corrupt or not a DVA checkpoint"
                )

    problem = describe_mismatch(
        {k: shape for k, (shape, _) in expected.items()},
        {k: tuple(v.shape) for k, v in mapped.items()},
        unknown_extra=unknown,
    )
    if problem:
        raise InputError(f"checkpoint does not match preset {cfg.name}: {problem}")

    out: dict[str, Tensor] = {}
    for key, value in mapped.items():
        dtype = expected[key][1]
        tensor = value.detach().to(dtype)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"checkpoint tensor {key} contains NaN or inf")
        out[key] = tensor
    return out


def _as_vector(value: Any, id_dim: int, what: str, path: Path) -> Tensor:
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value)
        except Exception:
            raise InputError(f"{path}: {what} is not a tensor") from None
    if value.numel() != id_dim or value.shape[-1] != id_dim:
        raise InputError(f"{path}: {what} has shape {list(value.shape)}, expected [{id_dim}] or [1,{id_dim}]")
    return value.detach().reshape(id_dim).float().contiguous()


def read_latent_stats(path: Path, id_dim: int) -> tuple[dict[str, Tensor], int]:
    """The official latent.pkl -> ({'mean','std'} [id_dim], number of z_id samples it was computed from)."""
    data = safe_load(path).data
    if not isinstance(data, dict) or "conds_mean" not in data or "conds_std" not in data:
        raise InputError(f"{path} is not a DVA latent.pkl (expected a dict with conds_mean and conds_std)")
    mean = _as_vector(data["conds_mean"], id_dim, "conds_mean", path)
    std = _as_vector(data["conds_std"], id_dim, "conds_std", path)
    check_positive_std(std, f"{path}: conds_std")
    conds = data.get("conds")
    n = int(conds.shape[0]) if isinstance(conds, Tensor) and conds.ndim == 2 else 0
    return {"mean": mean, "std": std}, n


def read_classifier(path: Path, id_dim: int) -> dict[str, Tensor]:
    """The official classifier last.ckpt -> weight/bias/conds_mean/conds_std (the non-EMA `classifier.*`)."""
    sd = _state_dict_of(safe_load(path).data, path)
    n_cls = len(CELEBA_ATTRIBUTES)
    wanted = {
        "classifier.weight": (n_cls, id_dim),
        "classifier.bias": (n_cls,),
    }
    actual = {k: tuple(v.shape) for k, v in sd.items() if k in wanted and isinstance(v, Tensor)}
    problem = describe_mismatch(wanted, actual)
    for name in ("conds_mean", "conds_std"):
        if name not in sd:
            problem = (problem + "; " if problem else "") + f"missing {name}"
    if problem:
        raise InputError(f"{path} is not a DVA attribute-classifier checkpoint: {problem}")
    out = {
        "weight": sd["classifier.weight"].detach().float().contiguous(),
        "bias": sd["classifier.bias"].detach().float().contiguous(),
        "conds_mean": _as_vector(sd["conds_mean"], id_dim, "conds_mean", path),
        "conds_std": _as_vector(sd["conds_std"], id_dim, "conds_std", path),
    }
    check_positive_std(out["conds_std"], f"{path}: conds_std")
    for k, v in out.items():
        if not bool(torch.isfinite(v).all()):
            raise InputError(f"{path}: {k} contains NaN or inf")
    return out


# --------------------------------------------------------------------------------------------


def fvedit_version() -> str:
    try:
        import fvedit

        if getattr(fvedit, "__version__", None):
            return str(fvedit.__version__)
    except Exception:
        pass
    try:
        from importlib.metadata import version

        return version("fvedit")
    except Exception:
        return "0+unknown"


@dataclass
class ImportReport:
    weights_dir: Path
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _write_safetensors(tensors: dict[str, Tensor], final: Path, metadata: dict[str, str]) -> Path:
    """Write next to `final` under a temporary name; byte-reproducible (see `safetensors_writer`)."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    write_safetensors(tensors, tmp, metadata)
    return tmp


def import_dva(
    ckpt_path: str | Path,
    *,
    out_dir: str | Path,
    latent_path: str | Path | None = None,
    classifier_path: str | Path | None = None,
    preset: str = "dva256",
) -> ImportReport:
    """Convert the official DVA files into `out_dir` (model/classifier/id_stats safetensors + manifest).

    Everything is read and checked before anything is written; files are written under
    temporary names and moved into place with `Path.replace`, manifest last, so a failed
    import leaves the previous contents of `out_dir` untouched.
    """
    try:
        cfg = get_preset(preset)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    ckpt_path = Path(ckpt_path).expanduser()
    out_dir = Path(out_dir).expanduser()
    notes: list[str] = []
    id_dim = cfg.encoder.id_dim

    loaded = safe_load(ckpt_path)
    if loaded.neutralized:
        notes.append(f"ignored non-tensor objects in the checkpoint: {', '.join(loaded.neutralized)}")
    sd = _state_dict_of(loaded.data, ckpt_path)
    ema = {k[len(EMA_PREFIX) :]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(EMA_PREFIX)}
    if not ema:
        prefixes = sorted({k.split(".", 1)[0] + "." for k in sd if isinstance(k, str)})[:5]
        raise InputError(
            f"{ckpt_path} has no '{EMA_PREFIX}*' weights (found prefixes: {', '.join(prefixes) or 'none'}); "
            "expected the official DVA Lightning checkpoint"
        )
    other = [k for k in sd if not (isinstance(k, str) and (k.startswith(EMA_PREFIX) or k.startswith("model.")))]
    if other:
        notes.append(f"ignored {len(other)} state_dict entries outside model./ema_model. ({', '.join(other[:3])})")
    model_sd = map_official_state_dict(ema, cfg)
    del loaded, sd, ema

    classifier = read_classifier(Path(classifier_path).expanduser(), id_dim) if classifier_path else None
    id_stats = None
    if latent_path:
        id_stats, n_conds = read_latent_stats(Path(latent_path).expanduser(), id_dim)
        if n_conds:
            notes.append(f"latent.pkl statistics were computed from {n_conds} identity features")
    elif classifier is not None:
        id_stats = {"mean": classifier["conds_mean"].clone(), "std": classifier["conds_std"].clone()}
        notes.append("id_stats taken from the classifier checkpoint's conds_mean/conds_std (no latent.pkl given)")
    if classifier is not None and latent_path:
        same_mean = torch.allclose(classifier["conds_mean"], id_stats["mean"])
        if not (same_mean and torch.allclose(classifier["conds_std"], id_stats["std"])):
            notes.append(
                "the classifier's conds_mean/std differ from latent.pkl; editing uses the classifier's (as official)"
            )

    sources: dict[str, Path] = {MODEL_FILE: ckpt_path}
    tensors: dict[str, dict[str, Tensor]] = {MODEL_FILE: model_sd}
    if classifier is not None:
        sources[CLASSIFIER_FILE] = Path(classifier_path).expanduser()
        tensors[CLASSIFIER_FILE] = classifier
    if id_stats is not None:
        sources[ID_STATS_FILE] = Path(latent_path).expanduser() if latent_path else Path(classifier_path).expanduser()
        tensors[ID_STATS_FILE] = id_stats

    try:
        return _write_weights_dir(out_dir, cfg, tensors, sources, notes)
    except OSError as exc:
        raise FveditError(f"cannot write weights to {out_dir}: {exc}") from None


def _write_weights_dir(
    out_dir: Path,
    cfg: ModelConfig,
    tensors: dict[str, dict[str, Tensor]],
    sources: dict[str, Path],
    notes: list[str],
) -> ImportReport:
    """Write every file under a temporary name, then move them into place, manifest last.

    Every file is a function of the inputs only, so importing the same files again (in any
    process, with any hash seed) gives byte-identical files and sha256 sums: safetensors
    headers are written in a fixed order and the manifest holds no import time (it is
    JSON with sorted keys; its `source` entries are the resolved input paths).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "fvedit_config": cfg.to_json()}
    temps: dict[str, Path] = {}
    try:
        for name, tdict in tensors.items():
            temps[name] = _write_safetensors(tdict, out_dir / name, metadata)
        source_hashes = {str(p): sha256_file(p) for p in sorted(set(sources.values()))}
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "fvedit_version": fvedit_version(),
            "demo": False,
            "preset": cfg.name,
            "config": cfg.to_dict(),
            "source_weights": "ema_model (official EMA copy)",
            "files": {
                name: {
                    "sha256": sha256_file(tmp),
                    "size": tmp.stat().st_size,
                    "source": str(sources[name].resolve()),
                    "source_sha256": source_hashes[str(sources[name])],
                }
                for name, tmp in temps.items()
            },
            "notes": notes,
        }
        manifest_text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        manifest = json.loads(manifest_text)  # what readers will see (lists, not tuples)
        manifest_tmp = out_dir / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
        manifest_tmp.write_text(manifest_text)
        temps[MANIFEST_NAME] = manifest_tmp

        # Swap in: drop the old manifest first so an interrupted swap reads as "no weights",
        # never as a manifest describing files it does not match.
        (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
        for name in (MODEL_FILE, CLASSIFIER_FILE, ID_STATS_FILE):
            if name in temps:
                temps.pop(name).replace(out_dir / name)
            else:
                (out_dir / name).unlink(missing_ok=True)  # left over from an earlier import
        temps.pop(MANIFEST_NAME).replace(out_dir / MANIFEST_NAME)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return ImportReport(weights_dir=out_dir, manifest=manifest, notes=notes)
