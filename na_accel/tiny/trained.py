"""The embedded text-to-video model: a small HunyuanVideo pipeline trained on the procedural clips of :mod:`.world`.

It is the command line's default model and the model every quality number of na_accel is measured on: its attention
was learned from data, so what a window keeps or loses says something (the random-weight models of
:mod:`.random_weights` have no locality to lose). The pipeline folder ``t2v_pipeline/`` next to this file is what
``training/train_tiny_t2v.py`` saved (``save_pretrained``, fp16 safetensors) and is loaded with
``HunyuanVideoPipeline.from_pretrained``, the real loading path. ``na_accel_generation.json`` in that folder holds
the generation arguments it was trained and evaluated with (33 x 128 x 128: latent token grid (9, 16, 16), 16 steps,
true classifier-free guidance 5.0).

What it can draw: one to three coloured shapes (circle, square, triangle, diamond, plus sign) of three sizes moving
over plain, gradient or textured backgrounds, with or without a camera pan, described in plain English
(``examples/prompts.txt``; :func:`na_accel.tiny.world.caption` writes such captions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "GENERATION_FILE",
    "PIPELINE_DIR",
    "TRAINED_LABEL",
    "TRAINED_PRESET",
    "generation_defaults",
    "trained_generation_kwargs",
    "trained_pipeline",
]

#: The shipped pipeline folder (package data).
PIPELINE_DIR = Path(__file__).resolve().with_name("t2v_pipeline")
#: The file in a pipeline folder that holds its generation arguments (written by the training script).
GENERATION_FILE = "na_accel_generation.json"
#: How outputs of the embedded model are labelled.
TRAINED_LABEL = "embedded trained model (tiny HunyuanVideo trained on procedural clips)"
#: The preset that runs sparse on its default token grid (9, 16, 16).
TRAINED_PRESET = "tiny_fast"


def generation_defaults(path: str | Path) -> dict[str, Any]:
    """The generation arguments saved in a pipeline folder's ``na_accel_generation.json`` ({} if it has none)."""
    f = Path(path) / GENERATION_FILE
    if not f.is_file():
        return {}
    data = json.loads(f.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{f}: expected a JSON object of pipeline call arguments, got {type(data).__name__}")
    return data


def trained_generation_kwargs() -> dict[str, Any]:
    """Call arguments of the embedded model as trained: size, steps, guidance, negative prompt, text length."""
    return generation_defaults(PIPELINE_DIR)


def trained_pipeline(dtype=None, device: str | None = None):
    """Load the embedded trained pipeline (``HunyuanVideoPipeline.from_pretrained`` on the shipped folder).

    ``dtype`` defaults to float32 (the weights are stored in fp16; float32 is what the CPU runs fastest);
    the progress bar is disabled. Generate with ``pipe(prompt, **trained_generation_kwargs())``.
    """
    import torch
    from diffusers import HunyuanVideoPipeline

    if not (PIPELINE_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded model is missing: no model_index.json in {PIPELINE_DIR}; reinstall na_accel (the folder "
            "is package data) or rebuild it with training/train_tiny_t2v.py"
        )
    pipe = HunyuanVideoPipeline.from_pretrained(PIPELINE_DIR, dtype=dtype or torch.float32)
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
