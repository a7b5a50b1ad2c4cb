"""Tiny end-to-end diffusers pipelines (na_accel.tiny) patched as a whole: 2 denoising steps, 1 dense."""

from __future__ import annotations

import inspect

import pytest
import torch

import na_accel
from na_accel.tiny import default_generation_kwargs, tiny_pipeline, tiny_transformer

FAMILIES = ("hunyuan", "flux", "cosmos", "wan")
PASSES_PER_STEP = {"hunyuan": 1, "flux": 1, "cosmos": 2, "wan": 2}  # cosmos / wan: cond + uncond forwards
WINDOW = {
    "hunyuan": dict(kernel_size=[2, 3, 3], stride=[1, 2, 3]),
    "flux": dict(kernel_size=[3, 4], stride=[2, 4]),
    "cosmos": dict(kernel_size=[2, 3, 4], stride=[2, 1, 2]),
    "wan": dict(kernel_size=[3, 2, 3], stride=[1, 2, 3]),
}
# Cosmos' EDM schedule ends on sigma_min -> sigma_min: its last step ignores the model, so it needs 3 steps here.
STEPS = {"hunyuan": 2, "flux": 2, "cosmos": 3, "wan": 2}
PROMPT = "a cat walks on the beach at sunset"


def generate(pipe, family, **overrides):
    kw = {**default_generation_kwargs(family), **overrides}
    out = pipe(PROMPT, output_type="latent", generator=torch.Generator().manual_seed(0), **kw)
    images = getattr(out, "frames", None)
    if images is None:
        images = out.images
    return images


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_pipeline_end_to_end(family):
    pipe = tiny_pipeline(family)
    signature = inspect.signature(pipe.scheduler.set_timesteps)
    steps = STEPS[family]
    ref = generate(pipe, family, num_inference_steps=steps)
    config = {"version": 1, "model": type(pipe.transformer).__name__, "defaults": {**WINDOW[family], "dense_steps": 1}}
    with na_accel.patched(pipe, config=config) as handle:
        assert na_accel.is_patched(pipe) and na_accel.is_patched(pipe.transformer)
        assert inspect.signature(pipe.scheduler.set_timesteps) == signature
        first = generate(pipe, family, num_inference_steps=steps)
        second = generate(pipe, family, num_inference_steps=steps)  # set_timesteps: step 0 again
        rows = handle.layer_plans()
        summary = handle.summary()
    passes = PASSES_PER_STEP[family]
    for r in rows:
        assert (r["dense_calls"], r["sparse_calls"], r["fallback_calls"]) == (
            2 * passes,
            2 * passes * (steps - 1),
            0,
        ), r
    assert torch.equal(first, second)
    assert not torch.equal(first, ref)  # the sparse step changed the result
    assert torch.isfinite(first).all()
    assert f"step {steps - 1}: sparse" in summary
    assert not na_accel.is_patched(pipe)
    assert "set_timesteps" not in vars(pipe.scheduler)
    assert torch.equal(generate(pipe, family, num_inference_steps=steps), ref)  # unpatched: bit-identical again


def test_pipeline_all_dense_steps_is_bit_identical():
    pipe = tiny_pipeline("hunyuan")
    ref = generate(pipe, "hunyuan")
    with na_accel.patched(pipe, config={"version": 1, "defaults": {**WINDOW["hunyuan"], "dense_steps": 2}}):
        assert torch.equal(generate(pipe, "hunyuan"), ref)


def test_steps_follow_the_scheduler_when_timesteps_repeat():
    """Consecutive steps with one timestep value (as bf16 rounding gives HunyuanVideo near t = 1000) are told apart
    by the scheduler's step index when the pipeline is patched; a bare transformer can only see one step."""
    pipe = tiny_pipeline("hunyuan")
    kw = dict(num_inference_steps=3, sigmas=[1.0, 1.0, 0.5])
    config = {"version": 1, "defaults": {**WINDOW["hunyuan"], "dense_steps": 1}}
    for target, expected in ((pipe, (1, 2)), (pipe.transformer, (2, 1))):
        with na_accel.patched(target, config=config) as handle:
            generate(pipe, "hunyuan", **kw)
            rows = handle.layer_plans()
        assert all((r["dense_calls"], r["sparse_calls"]) == expected for r in rows), (target, rows)


def test_wan22_two_transformers_share_the_step_count():
    """Wan 2.2 A14B layout: `transformer` (high noise) and `transformer_2` (low noise) both patched, one step count."""
    import diffusers

    base = tiny_pipeline("wan")
    pipe = diffusers.WanPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, scheduler=base.scheduler,
        transformer=base.transformer, transformer_2=tiny_transformer("wan", seed=1), boundary_ratio=0.85,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    steps = 4
    seen = {"transformer": [], "transformer_2": []}
    hooks = [
        getattr(pipe, name).register_forward_pre_hook(
            lambda mod, args, kwargs, name=name: seen[name].append(float(kwargs["timestep"].max())), with_kwargs=True
        )
        for name in seen
    ]
    ref = generate(pipe, "wan", num_inference_steps=steps)
    for h in hooks:
        h.remove()
    order = sorted({t for ts in seen.values() for t in ts}, reverse=True)
    assert seen["transformer"] and seen["transformer_2"], seen
    dense_steps = 3
    config = {"version": 1, "defaults": {**WINDOW["wan"], "dense_steps": dense_steps}}
    with na_accel.patched(pipe, config=config) as handle:
        assert set(handle.transformers) == {"transformer", "transformer_2"}
        assert na_accel.is_patched(pipe.transformer_2)
        out = generate(pipe, "wan", num_inference_steps=steps)
        rows = handle.layer_plans()
        assert "transformer_2: WanTransformer3DModel" in handle.summary()
    for name, ts in seen.items():
        dense = sum(1 for t in ts if order.index(t) < dense_steps)
        for r in rows:
            if r["transformer"] == name and r["patched"]:
                assert (r["dense_calls"], r["sparse_calls"]) == (dense, len(ts) - dense), (name, r)
    assert not torch.equal(out, ref)
    assert not na_accel.is_patched(pipe.transformer) and not na_accel.is_patched(pipe.transformer_2)
    assert torch.equal(generate(pipe, "wan", num_inference_steps=steps), ref)


def test_unpatching_one_transformer_unpatches_the_pipeline_patch():
    pipe = tiny_pipeline("flux")
    handle = na_accel.patch(pipe, config="flux_fast")
    with pytest.raises(na_accel.NAAccelError, match="unpatch"):
        na_accel.patch(pipe.transformer)
    assert na_accel.unpatch(pipe.transformer)
    assert not handle.active and not na_accel.is_patched(pipe)
