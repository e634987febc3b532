"""Identity edits: classifier attribute steps (40 CelebA attributes) and learned CLIP text steps.

Both produce an edited identity z_id' that replaces the video's mean identity when rendering:

    edits = parse_attr_specs(["old=0.3,glasses"])
    z_edit = apply_attribute_edits(z_id_mean, edits, weights.classifier)

    delta = learn_text_direction(model, first_frame, "face", "face with beard", load_open_clip())
    z_edit = apply_text_direction(z_id_mean, delta, strength=0.5)
"""

from fvedit.edit.attributes import (
    OFFICIAL_DEFAULT_STRENGTH,
    AttrEdit,
    AttributeInfo,
    apply_attribute_edits,
    attribute_step,
    attribute_table,
    canonical,
    default_strength,
    friendly_name,
    parse_attr_specs,
    resolve_attribute,
)
from fvedit.edit.clip_edit import (
    CLIP_TEMPLATES,
    DEFAULT_STEPS,
    PAPER_STEPS,
    ClipEditStep,
    apply_text_direction,
    directional_clip_loss,
    learn_text_direction,
    noisy_clip_loss,
    text_direction,
)
from fvedit.edit.clip_models import (
    ClipPair,
    OpenClipPair,
    StandInClip,
    clip_preprocess,
    find_clip_weights,
    load_open_clip,
)

__all__ = [
    "CLIP_TEMPLATES",
    "DEFAULT_STEPS",
    "OFFICIAL_DEFAULT_STRENGTH",
    "PAPER_STEPS",
    "AttrEdit",
    "AttributeInfo",
    "ClipEditStep",
    "ClipPair",
    "OpenClipPair",
    "StandInClip",
    "apply_attribute_edits",
    "apply_text_direction",
    "attribute_step",
    "attribute_table",
    "canonical",
    "clip_preprocess",
    "default_strength",
    "directional_clip_loss",
    "find_clip_weights",
    "friendly_name",
    "learn_text_direction",
    "load_open_clip",
    "noisy_clip_loss",
    "parse_attr_specs",
    "resolve_attribute",
    "text_direction",
]
