"""The embedded trained model: the shipped pipeline loads through the real diffusers path, draws what it is asked
for, runs sparse on its default grid with ``tiny_fast``, and is the command line's default."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import na_accel
from na_accel.quality.metrics import latent_metrics, psnr
from na_accel.tiny import detect, trained

# Thresholds measured on the 2-core CPU (fp32) with the shipped weights (bench/NOTES.md, "Embedded model"): a
# 4-step generation at the default size with 3 sparse steps of an (8, 12, 12) window gave PSNR 23.2 dB and latent
# rel L2 0.308 against dense; the dense generation of another seed is 17.9 dB / 0.619 away, so these bounds sit
# between "close to dense" and "an unrelated video".
SPARSE_MIN_PSNR = 20.5  # decoded video, dB, mean over frames
SPARSE_MAX_LATENT_REL_L2 = 0.45


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return trained.trained_pipeline()


def test_shipped_pipeline_is_the_real_model_classes(pipe):
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    assert type(pipe) is HunyuanVideoPipeline
    assert type(pipe.transformer) is HunyuanVideoTransformer3DModel
    assert type(pipe.vae) is AutoencoderKLHunyuanVideo
    assert type(pipe.scheduler) is FlowMatchEulerDiscreteScheduler
    kw = trained.trained_generation_kwargs()
    assert kw["num_inference_steps"] == 16 and kw["true_cfg_scale"] > 1
    # the default size gives a (9, 16, 16) latent token grid
    t = (kw["num_frames"] - 1) // pipe.vae_scale_factor_temporal + 1
    h = kw["height"] // pipe.vae_scale_factor_spatial // pipe.transformer.config.patch_size
    w = kw["width"] // pipe.vae_scale_factor_spatial // pipe.transformer.config.patch_size
    assert (t, h, w) == (9, 16, 16)
    size = sum(f.stat().st_size for f in trained.PIPELINE_DIR.rglob("*") if f.is_file())
    assert size < 30 * 2**20, f"the shipped pipeline is {size / 2**20:.1f} MiB; at most 30 MiB may ship"
    assert not [f for f in trained.PIPELINE_DIR.rglob("*.bin")], "weights ship as safetensors"


def test_generates_the_colour_and_size_it_is_asked_for(pipe):
    """A full default generation (16 steps, CFG): the detector finds a large red object and no other colour."""
    kw = trained.trained_generation_kwargs()
    with torch.no_grad():
        video = pipe(prompt="a big red circle moves to the right on a plain white background",
                     generator=torch.Generator().manual_seed(0), output_type="np", **kw).frames[0]  # fmt: skip
    u8 = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
    found = detect.detect(u8)
    colours = sorted(found.objects)
    assert "red" in colours, f"no red object detected (found {colours})"
    assert detect.temporal_coherence(u8) < 0.5


def _latents(pipe, kw, seed=3):
    with torch.no_grad():
        return pipe(prompt="a large yellow square bounces up and down on a plain navy background",
                    generator=torch.Generator().manual_seed(seed), output_type="latent", **kw).frames  # fmt: skip


def test_short_sparse_generation_is_close_to_dense(pipe):
    """4 steps at the default size, the last 3 sparse with an (8, 12, 12) window (2x fewer attention FLOPs): the
    output differs from dense (sparse attention ran) but stays close to it."""
    kw = dict(trained.trained_generation_kwargs(), num_inference_steps=4)
    dense = _latents(pipe, kw)
    cfg = {"version": 1, "model": "HunyuanVideoTransformer3DModel",
           "defaults": {"kernel_size": [8, 12, 12], "stride": 1, "dense_steps": 1}}  # fmt: skip
    with na_accel.patched(pipe, cfg) as handle:
        sparse = _latents(pipe, kw)
        counts = handle.call_counts()
    assert counts["sparse"] > 0 and counts["fallback"] == 0, counts
    lat = latent_metrics(dense.float(), sparse.float())
    assert 1e-4 < lat["rel_l2"] < SPARSE_MAX_LATENT_REL_L2, lat
    with torch.no_grad():
        vd = pipe.vae.decode(dense / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
        vs = pipe.vae.decode(sparse / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    frames = lambda v: (v[0].transpose(0, 1) + 1) / 2  # noqa: E731 - [1, C, T, H, W] -> [T, C, H, W] in [0, 1]
    p = float(psnr(frames(vd), frames(vs)).mean())  # mean over frames
    assert math.isfinite(p) and SPARSE_MIN_PSNR < p < 60, p


def test_tiny_fast_runs_sparse_on_the_default_grid(pipe):
    """The preset's fractional windows resolve to a real window on (9, 16, 16) (not clamped to dense)."""
    from na_accel.patching.config import load_config

    cfg = load_config("tiny_fast")
    resolved = cfg.defaults.resolve((9, 16, 16))
    assert not resolved.params.is_dense and not resolved.notes
    assert 1 / resolved.params.density() > 2
    # and at another size the same fractions still fit
    assert not cfg.defaults.resolve((5, 8, 12)).params.is_dense


def test_cli_default_is_the_embedded_model(tmp_path):
    from typer.testing import CliRunner

    from na_accel.tools.cli import app

    prompts = tmp_path / "p.txt"
    prompts.write_text("a big red circle moves to the right on a plain white background\n", encoding="utf-8")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["generate", str(prompts), "--frames", "5", "--steps", "2", "--out", str(out), "-q"],
                           catch_exceptions=False)  # fmt: skip
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "embedded trained model" in r.stderr and "config: tiny_fast" in r.stderr
    (sidecar,) = out.glob("*.json")
    meta = json.loads(sidecar.read_text())
    assert meta["random_weights"] is False and "embedded trained model" in meta["model"]
    assert "tiny_fast" in sidecar.name and "random" not in sidecar.name
