"""The built-in models and their world.

* :mod:`.random_weights`: tiny random-weight pipelines of the four families (tests and code paths; noise outputs);
* :mod:`.world`: procedural captioned clips (coloured shapes moving over muted backgrounds), the training data of
  the embedded model; :mod:`.detect`: reads the attributes back from a video and scores prompt adherence;
* :mod:`.trained`: the embedded text-to-video model, trained on those clips (``training/train_tiny_t2v.py``).
"""

from __future__ import annotations

from .random_weights import (
    FAMILIES,
    TINY_DEFAULT,
    TINY_LABEL,
    TinySafetyChecker,
    default_generation_kwargs,
    tiny_family,
    tiny_pipeline,
    tiny_transformer,
)

__all__ = [
    "FAMILIES",
    "TINY_DEFAULT",
    "TINY_LABEL",
    "TinySafetyChecker",
    "default_generation_kwargs",
    "tiny_family",
    "tiny_pipeline",
    "tiny_transformer",
]
