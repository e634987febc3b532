"""Model weights: the safetensors weights directory, the official-checkpoint importer, demo weights.

Typical use:

    from fvedit.weights import load_weights, resolve_weights_dir, demo_weights
    weights = load_weights(resolve_weights_dir(cli_value))   # or demo_weights("tiny")
    weights.model, weights.classifier, weights.id_stats, weights.is_demo
"""

from fvedit.weights.demo import DEMO_NOTICE, demo_weights
from fvedit.weights.importer import ImportReport, dropped_reason, import_dva, official_to_fvedit
from fvedit.weights.safe_pickle import SafeLoadResult, safe_load
from fvedit.weights.store import (
    CELEBA_ATTRIBUTES,
    AttributeClassifier,
    IdentityStats,
    LoadedWeights,
    WeightsInfo,
    describe_weights_dir,
    list_weights,
    load_weights,
    resolve_weights_dir,
    verify_weights,
)

__all__ = [
    "CELEBA_ATTRIBUTES",
    "DEMO_NOTICE",
    "AttributeClassifier",
    "IdentityStats",
    "ImportReport",
    "LoadedWeights",
    "SafeLoadResult",
    "WeightsInfo",
    "demo_weights",
    "describe_weights_dir",
    "dropped_reason",
    "import_dva",
    "list_weights",
    "load_weights",
    "official_to_fvedit",
    "resolve_weights_dir",
    "safe_load",
    "verify_weights",
]
