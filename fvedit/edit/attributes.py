"""Classifier attribute edits: friendly names for the 40 CelebA attributes, and the official move.

The official editor (`editing_classifier.py`) takes one CelebA name (`No_Beard`) and a signed
`--scale`. Users think in words like "old", "beard" or "glasses", so every attribute gets a
kebab-case name plus aliases; an alias may mean the *opposite* direction (`old` = -young,
`beard` = -no-beard, `female` = -male). Several attributes are applied in one move.

The move (DVA Appendix A.3, official `--normalize`, which is always on):

    n  = (z - mu) / sigma                                 normalise with the z_id statistics
    n' = n + sum_c  s_c * sqrt(D) * W[c] / ||W[c]||        one step per attribute, all at once
    z' = L2norm(n' * sigma + mu)

and without normalisation z' = L2norm(z + sum_c s_c * sqrt(D) * W[c]) (W[c] not unit-scaled).
z is the video's representative identity: the plain mean of the per-frame unit z_id, which the
official reconstruction uses as is (not re-normalised). An edit always re-normalises, so a
zero strength (or no edit at all) returns L2norm(z), not z.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import torch
from torch import Tensor

from fvedit.errors import InputError
from fvedit.weights.store import CELEBA_ATTRIBUTES, AttributeClassifier

# Default strengths (the signed `scale` of the formula above, in the attribute's own direction).
# Sources: the official README's only example is `--attribute Mustache --scale 0.25`; the
# official `--scale` argparse default is 0.3. The DVA paper gives no per-attribute classifier step
# sizes (its Tab. 3 range 0.1-2.5 is the *CLIP* edit step size), so every other attribute uses
# the official default 0.3. Opposite aliases (`old`) use their attribute's default, negated.
OFFICIAL_DEFAULT_STRENGTH = 0.3  # editing_classifier.py: `--scale` default
_README_STRENGTHS = {"Mustache": 0.25}  # official README example

# official name -> (friendly name, aliases in the same direction, aliases meaning the opposite).
# The official name itself (any case, `_`/`-`/space) is always accepted too.
_NAMES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "5_o_Clock_Shadow": ("five-o-clock-shadow", ("stubble", "five-oclock-shadow", "5-oclock-shadow"), ()),
    "Arched_Eyebrows": ("arched-eyebrows", (), ()),
    "Attractive": ("attractive", (), ()),
    "Bags_Under_Eyes": ("bags-under-eyes", ("eye-bags",), ()),
    "Bald": ("bald", (), ()),
    "Bangs": ("bangs", ("fringe",), ()),
    "Big_Lips": ("big-lips", (), ()),
    "Big_Nose": ("big-nose", (), ()),
    "Black_Hair": ("black-hair", (), ()),
    "Blond_Hair": ("blond-hair", ("blond", "blonde", "blonde-hair"), ()),
    "Blurry": ("blurry", (), ()),
    "Brown_Hair": ("brown-hair", (), ()),
    "Bushy_Eyebrows": ("bushy-eyebrows", (), ()),
    "Chubby": ("chubby", (), ()),
    "Double_Chin": ("double-chin", (), ()),
    "Eyeglasses": ("eyeglasses", ("glasses", "spectacles"), ()),
    "Goatee": ("goatee", (), ()),
    "Gray_Hair": ("gray-hair", ("grey-hair", "gray", "grey"), ()),
    "Heavy_Makeup": ("heavy-makeup", ("makeup",), ()),
    "High_Cheekbones": ("high-cheekbones", (), ()),
    "Male": ("male", ("man", "masculine"), ("female", "woman", "feminine")),
    "Mouth_Slightly_Open": ("mouth-slightly-open", ("mouth-open", "open-mouth"), ()),
    "Mustache": ("mustache", ("moustache",), ()),
    "Narrow_Eyes": ("narrow-eyes", (), ()),
    "No_Beard": ("no-beard", ("beardless", "clean-shaven"), ("beard",)),
    "Oval_Face": ("oval-face", (), ()),
    "Pale_Skin": ("pale-skin", ("pale",), ()),
    "Pointy_Nose": ("pointy-nose", (), ()),
    "Receding_Hairline": ("receding-hairline", (), ()),
    "Rosy_Cheeks": ("rosy-cheeks", (), ()),
    "Sideburns": ("sideburns", (), ()),
    "Smiling": ("smiling", ("smile",), ()),
    "Straight_Hair": ("straight-hair", (), ()),
    "Wavy_Hair": ("wavy-hair", (), ()),
    "Wearing_Earrings": ("wearing-earrings", ("earrings",), ()),
    "Wearing_Hat": ("wearing-hat", ("hat",), ()),
    "Wearing_Lipstick": ("wearing-lipstick", ("lipstick",), ()),
    "Wearing_Necklace": ("wearing-necklace", ("necklace",), ()),
    "Wearing_Necktie": ("wearing-necktie", ("necktie", "tie"), ()),
    "Young": ("young", ("younger", "youthful"), ("old", "older", "aged")),
}


def canonical(name: str) -> str:
    """Lookup key of a name: lower case, apostrophes dropped, runs of `-`, `_`, spaces -> one `-`."""
    return re.sub(r"[-_\s]+", "-", name.strip().lower().replace("'", "")).strip("-")


class AttributeInfo(NamedTuple):
    """One row of `fvedit attrs`. Aliases written with a leading '-' mean the opposite direction."""

    name: str
    official: str
    aliases: tuple[str, ...]
    default_strength: float


@dataclass(frozen=True)
class AttrEdit:
    """One attribute step: row `index` of the classifier, signed strength in that row's direction."""

    index: int
    name: str  # friendly name of the attribute (never an opposite alias)
    strength: float

    @property
    def official(self) -> str:
        return CELEBA_ATTRIBUTES[self.index]


def _build_lookup() -> dict[str, tuple[int, int]]:
    """canonical name -> (attribute index, sign). Built once; refuses ambiguous tables."""
    if set(_NAMES) != set(CELEBA_ATTRIBUTES):
        raise AssertionError("attribute name table does not cover the 40 CelebA attributes")
    lookup: dict[str, tuple[int, int]] = {}

    def add(key: str, value: tuple[int, int]) -> None:
        key = canonical(key)
        if lookup.get(key, value) != value:
            raise AssertionError(f"attribute name {key!r} is ambiguous")
        lookup[key] = value

    for index, official in enumerate(CELEBA_ATTRIBUTES):
        friendly, same, opposite = _NAMES[official]
        for key in (official, friendly, *same):
            add(key, (index, +1))
        for key in opposite:
            add(key, (index, -1))
    return lookup


_LOOKUP = _build_lookup()


def default_strength(index: int) -> float:
    """The default strength of attribute `index` in its own direction (see the sources above)."""
    return _README_STRENGTHS.get(CELEBA_ATTRIBUTES[index], OFFICIAL_DEFAULT_STRENGTH)


def friendly_name(index: int) -> str:
    return _NAMES[CELEBA_ATTRIBUTES[index]][0]


def attribute_table() -> list[AttributeInfo]:
    """Every attribute in the official (classifier row) order, for `fvedit attrs`."""
    rows = []
    for index, official in enumerate(CELEBA_ATTRIBUTES):
        friendly, same, opposite = _NAMES[official]
        aliases = tuple(same) + tuple(f"-{a}" for a in opposite)
        rows.append(AttributeInfo(friendly, official, aliases, default_strength(index)))
    return rows


def resolve_attribute(name: str) -> tuple[int, int]:
    """(classifier row, sign) of a friendly name, alias or official name; sign -1 for opposites.

    Unknown names raise `InputError` with the closest known names.
    """
    key = canonical(name)
    if key in _LOOKUP:
        return _LOOKUP[key]
    close = difflib.get_close_matches(key, list(_LOOKUP), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise InputError(f"unknown attribute {name.strip()!r}{hint} (run `fvedit attrs` to list the 40 attributes)")


def _parse_value(item: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"attribute strength in {item!r} is not a number; write e.g. young=0.3") from None
    if not math.isfinite(value):
        raise InputError(f"attribute strength in {item!r} must be a finite number")
    return value


def parse_attr_specs(specs: str | Iterable[str], *, strength: float | None = None) -> list[AttrEdit]:
    """Parse `--attr` values: `young`, `young=0.3`, `"young=0.3,eyeglasses=0.5"`, repeated flags.

    A name without `=value` gets `strength` if given, else its default strength. Opposite
    aliases flip the sign: `old=0.3` is young -0.3 and `beard` is no-beard -0.3. Naming the
    same attribute twice (also via an alias) is an error, since the intent is unclear.
    """
    if isinstance(specs, str):
        specs = [specs]
    if strength is not None and not math.isfinite(float(strength)):
        raise InputError(f"--strength must be a finite number, got {strength!r}")
    edits: list[AttrEdit] = []
    given_as: dict[int, str] = {}
    for spec in specs:
        for item in str(spec).split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, value_text = item.partition("=")
            if not name.strip():
                raise InputError(f"attribute spec {item!r} has no name; write e.g. young=0.3")
            index, sign = resolve_attribute(name)
            if sep:
                value = _parse_value(item, value_text.strip())
            else:
                value = float(strength) if strength is not None else default_strength(index)
            if index in given_as:
                raise InputError(
                    f"attribute {friendly_name(index)!r} is given twice ({given_as[index]!r} and {item!r}); "
                    "give it once"
                )
            given_as[index] = item
            edits.append(AttrEdit(index=index, name=friendly_name(index), strength=sign * value))
    return edits


def _as_row(z: Tensor, id_dim: int) -> Tensor:
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2 or z.shape != (1, id_dim):
        raise InputError(f"identity must be [{id_dim}] or [1, {id_dim}] to match the classifier, got {tuple(z.shape)}")
    return z


def attribute_step(edits: Sequence[AttrEdit], classifier: AttributeClassifier, *, normalize: bool = True) -> Tensor:
    """sum_c s_c * sqrt(D) * W[c] (/ ||W[c]|| when normalize), shape [id_dim]."""
    weight = classifier.weight
    n_cls, id_dim = weight.shape
    step = torch.zeros(id_dim, dtype=weight.dtype, device=weight.device)
    for edit in edits:
        if not 0 <= edit.index < n_cls:
            raise InputError(f"attribute index {edit.index} out of range 0..{n_cls - 1}")
        direction = weight[edit.index]
        if normalize:
            direction = direction / direction.norm()
        step = step + float(edit.strength) * math.sqrt(id_dim) * direction
    return step


def apply_attribute_edits(
    z_id_mean: Tensor, edits: Sequence[AttrEdit], classifier: AttributeClassifier, *, normalize: bool = True
) -> Tensor:
    """Edited identity L2norm(DeNorm(Norm(z) + step)) (official formula), same shape as z_id_mean.

    All edits move together in one step. With no edits or zero strengths the result is the
    re-normalised mean L2norm(z_id_mean).
    """
    squeeze = z_id_mean.ndim == 1
    z = _as_row(z_id_mean, classifier.id_dim)
    if not bool(torch.isfinite(z).all()):
        raise InputError("identity feature has non-finite values; the identity encoder output is corrupt")
    step = attribute_step(edits, classifier, normalize=normalize).to(z)
    if normalize:
        moved = classifier.denormalize(classifier.normalize(z) + step)
    else:
        moved = z + step
    out = torch.nn.functional.normalize(moved, dim=-1)
    return out[0] if squeeze else out
