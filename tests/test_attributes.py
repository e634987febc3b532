"""Attribute names, `--attr` parsing and the official classifier edit formula.

The formula is checked against a float64 NumPy computation written from DVA Appendix A.3 /
`editing_classifier.py`, with a classifier whose statistics are random and non-trivial.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fvedit.edit import (
    AttrEdit,
    apply_attribute_edits,
    attribute_table,
    canonical,
    default_strength,
    parse_attr_specs,
    resolve_attribute,
)
from fvedit.errors import InputError
from fvedit.weights import CELEBA_ATTRIBUTES, AttributeClassifier, demo_weights

# Written from the brief and user vocabulary, independently of the library's table:
# alias -> (official attribute, sign).
EXPECTED_ALIASES = {
    "old": ("Young", -1), "young": ("Young", 1), "beard": ("No_Beard", -1), "no-beard": ("No_Beard", 1),
    "glasses": ("Eyeglasses", 1), "eyeglasses": ("Eyeglasses", 1), "smile": ("Smiling", 1),
    "smiling": ("Smiling", 1), "male": ("Male", 1), "female": ("Male", -1), "blond": ("Blond_Hair", 1),
    "blonde": ("Blond_Hair", 1), "bangs": ("Bangs", 1), "bald": ("Bald", 1), "mustache": ("Mustache", 1),
    "moustache": ("Mustache", 1), "goatee": ("Goatee", 1), "makeup": ("Heavy_Makeup", 1),
    "lipstick": ("Wearing_Lipstick", 1), "hat": ("Wearing_Hat", 1), "gray-hair": ("Gray_Hair", 1),
    "grey-hair": ("Gray_Hair", 1), "black-hair": ("Black_Hair", 1), "brown-hair": ("Brown_Hair", 1),
    "wavy-hair": ("Wavy_Hair", 1), "straight-hair": ("Straight_Hair", 1), "pale": ("Pale_Skin", 1),
    "chubby": ("Chubby", 1), "double-chin": ("Double_Chin", 1), "earrings": ("Wearing_Earrings", 1),
    "necklace": ("Wearing_Necklace", 1), "necktie": ("Wearing_Necktie", 1), "tie": ("Wearing_Necktie", 1),
    "narrow-eyes": ("Narrow_Eyes", 1), "big-nose": ("Big_Nose", 1), "big-lips": ("Big_Lips", 1),
    "pointy-nose": ("Pointy_Nose", 1), "oval-face": ("Oval_Face", 1), "rosy-cheeks": ("Rosy_Cheeks", 1),
    "sideburns": ("Sideburns", 1), "receding-hairline": ("Receding_Hairline", 1),
    "high-cheekbones": ("High_Cheekbones", 1), "bushy-eyebrows": ("Bushy_Eyebrows", 1),
    "attractive": ("Attractive", 1), "blurry": ("Blurry", 1), "mouth-open": ("Mouth_Slightly_Open", 1),
    "five-o-clock-shadow": ("5_o_Clock_Shadow", 1), "arched-eyebrows": ("Arched_Eyebrows", 1),
}  # fmt: skip


def row(official: str) -> int:
    return CELEBA_ATTRIBUTES.index(official)


# ------------------------------------------------------------------------------------------
# Names


def test_table_covers_the_40_attributes_in_official_order():
    table = attribute_table()
    assert [r.official for r in table] == list(CELEBA_ATTRIBUTES)
    assert len({r.name for r in table}) == 40
    for r in table:
        assert r.name == canonical(r.name), r.name  # friendly names are already kebab-case
        assert r.default_strength == default_strength(row(r.official))


@pytest.mark.parametrize("official", CELEBA_ATTRIBUTES)
def test_every_attribute_reachable_by_friendly_and_official_name(official):
    info = attribute_table()[row(official)]
    for spelling in (info.name, info.name.upper(), info.name.replace("-", "_"), info.name.replace("-", " "),
                     official, official.lower(), official.replace("_", "-")):  # fmt: skip
        assert resolve_attribute(spelling) == (row(official), 1), spelling


@pytest.mark.parametrize("alias", sorted(EXPECTED_ALIASES))
def test_expected_aliases_and_signs(alias):
    official, sign = EXPECTED_ALIASES[alias]
    assert resolve_attribute(alias) == (row(official), sign)
    assert resolve_attribute(alias.replace("-", "_").title()) == (row(official), sign)


def test_table_aliases_resolve_with_their_marked_sign():
    for r in attribute_table():
        for alias in r.aliases:
            sign = -1 if alias.startswith("-") else 1
            assert resolve_attribute(alias.lstrip("-")) == (row(r.official), sign), alias


def test_name_spellings():
    assert resolve_attribute("No_Beard") == (row("No_Beard"), 1)
    assert resolve_attribute("  five o'clock  shadow ") == (row("5_o_Clock_Shadow"), 1)
    assert resolve_attribute("Mouth Slightly Open") == (row("Mouth_Slightly_Open"), 1)
    assert resolve_attribute("WEARING__HAT") == (row("Wearing_Hat"), 1)


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [("yung", "young"), ("eyeglases", "eyeglasses"), ("moustach", "moustache"), ("No_Berd", "no-beard")],
)
def test_unknown_name_suggests_the_closest(typo, suggestion):
    with pytest.raises(InputError, match=f"unknown attribute '{typo}'.*did you mean.*'{suggestion}'") as err:
        resolve_attribute(typo)
    assert "fvedit attrs" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_name_without_close_match_has_no_suggestion():
    with pytest.raises(InputError) as err:
        parse_attr_specs(["xylophone=0.2"])
    assert "did you mean" not in str(err.value) and "fvedit attrs" in str(err.value)


# ------------------------------------------------------------------------------------------
# --attr parsing


def test_defaults_follow_the_official_sources():
    assert default_strength(row("Mustache")) == 0.25  # official README example
    others = [default_strength(i) for i, a in enumerate(CELEBA_ATTRIBUTES) if a != "Mustache"]
    assert others == [0.3] * 39  # official --scale default


def test_parse_single_names_use_defaults_and_signs():
    assert parse_attr_specs(["young"]) == [AttrEdit(row("Young"), "young", 0.3)]
    assert parse_attr_specs("old") == [AttrEdit(row("Young"), "young", -0.3)]
    assert parse_attr_specs(["moustache"]) == [AttrEdit(row("Mustache"), "mustache", 0.25)]
    assert parse_attr_specs(["beard"]) == [AttrEdit(row("No_Beard"), "no-beard", -0.3)]


def test_parse_values_lists_and_repeated_flags():
    edits = parse_attr_specs(["young=0.3,eyeglasses=0.5", "female=-0.2", " smile = .1 ", "No_Beard=-1e-1"])
    assert [(e.official, e.strength) for e in edits] == [
        ("Young", 0.3),
        ("Eyeglasses", 0.5),
        ("Male", 0.2),
        ("Smiling", 0.1),
        ("No_Beard", -0.1),
    ]
    assert parse_attr_specs(["old=0.3"]) == parse_attr_specs(["young=-0.3"])
    assert parse_attr_specs([]) == [] and parse_attr_specs(["young,,"]) == parse_attr_specs(["young"])


def test_global_strength_applies_only_without_explicit_value():
    edits = parse_attr_specs(["old,glasses=0.1", "mustache"], strength=0.7)
    assert [(e.official, e.strength) for e in edits] == [("Young", -0.7), ("Eyeglasses", 0.1), ("Mustache", 0.7)]


@pytest.mark.parametrize(("spec", "message"), [
    (["young=abc"], "not a number"), (["young=nan"], "finite"), (["=0.3"], "no name"),
    (["young=0.2", "old=0.1"], "given twice"), (["glasses,eyeglasses"], "given twice"),
])  # fmt: skip
def test_parse_errors(spec, message):
    with pytest.raises(InputError, match=message):
        parse_attr_specs(spec)


# ------------------------------------------------------------------------------------------
# The edit formula


D = 48


@pytest.fixture(scope="module")
def classifier() -> AttributeClassifier:
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(40, D, generator=g) * torch.rand(40, 1, generator=g) * 3  # rows of varied norm
    return AttributeClassifier(weight, torch.randn(40, generator=g), 0.05 * torch.randn(D, generator=g),
                               0.05 + 0.2 * torch.rand(D, generator=g))  # fmt: skip


@pytest.fixture(scope="module")
def z_mean() -> torch.Tensor:
    """A video's representative identity: the mean of 6 unit vectors (not unit itself)."""
    g = torch.Generator().manual_seed(3)
    frames = torch.nn.functional.normalize(torch.randn(6, D, generator=g) + 2 * torch.randn(1, D, generator=g), dim=-1)
    return frames.mean(dim=0)


def numpy_edit(z, clf: AttributeClassifier, steps: list[tuple[int, float]], normalize: bool) -> np.ndarray:
    """Float64 twin of the official formula."""
    z = z.double().numpy()
    w = clf.weight.double().numpy()
    mu, sigma = clf.conds_mean.double().numpy(), clf.conds_std.double().numpy()
    d = z.shape[-1]
    if normalize:
        n = (z - mu) / sigma
        for c, s in steps:
            n = n + s * math.sqrt(d) * w[c] / np.linalg.norm(w[c])
        out = n * sigma + mu
    else:
        out = z.copy()
        for c, s in steps:
            out = out + s * math.sqrt(d) * w[c]
    return out / np.linalg.norm(out)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("steps", [[(22, 0.25)], [(39, -0.4), (15, 0.6)]], ids=["one", "two"])
def test_formula_matches_numpy(classifier, z_mean, normalize, steps):
    edits = [AttrEdit(c, "x", s) for c, s in steps]
    got = apply_attribute_edits(z_mean, edits, classifier, normalize=normalize)
    want = numpy_edit(z_mean, classifier, steps, normalize)
    assert got.shape == z_mean.shape and got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=2e-6)
    assert abs(float(got.double().norm()) - 1.0) < 1e-6
    # the edit actually moved the identity (not just re-normalised it)
    assert np.abs(want - numpy_edit(z_mean, classifier, [], normalize)).max() > 1e-2


def test_batch_row_input_and_order_independence(classifier, z_mean):
    edits = parse_attr_specs(["old=0.3,glasses=0.5,beard"])
    flat = apply_attribute_edits(z_mean, edits, classifier)
    as_row = apply_attribute_edits(z_mean[None], edits[::-1], classifier)
    assert as_row.shape == (1, D)
    torch.testing.assert_close(as_row[0], flat, rtol=0, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_zero_strength_returns_the_renormalised_mean(classifier, z_mean, normalize):
    expected = z_mean / z_mean.norm()
    assert abs(float(z_mean.norm()) - 1.0) > 1e-2  # the mean of unit vectors is shorter than 1
    for edits in (
        [],
        [AttrEdit(5, "bangs", 0.0)],
        parse_attr_specs(["young,glasses"], strength=0.0),
        parse_attr_specs(["old=0"]),
    ):
        got = apply_attribute_edits(z_mean, edits, classifier, normalize=normalize)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_positive_strength_raises_the_attribute_logit():
    weights = demo_weights("tiny")
    clf = weights.classifier
    g = torch.Generator().manual_seed(11)
    z = torch.nn.functional.normalize(torch.randn(clf.id_dim, generator=g), dim=0)
    for name in ("young", "eyeglasses", "male", "no-beard"):
        (edit,) = parse_attr_specs([name])
        up = apply_attribute_edits(z, [edit], clf)
        down = apply_attribute_edits(z, [AttrEdit(edit.index, edit.name, -edit.strength)], clf)
        base = clf(z)[edit.index]
        assert clf(down)[edit.index] < base < clf(up)[edit.index], name


def test_dimension_mismatch_is_an_input_error(classifier):
    with pytest.raises(InputError, match=r"identity must be \[48\]"):
        apply_attribute_edits(torch.ones(D + 1), [AttrEdit(0, "x", 0.1)], classifier)
    with pytest.raises(InputError, match="non-finite"):
        apply_attribute_edits(torch.full((D,), float("nan")), [], classifier)
