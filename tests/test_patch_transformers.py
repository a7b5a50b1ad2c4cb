"""Patching tiny real diffusers transformers (HunyuanVideo, Flux, Cosmos, Wan) on the CPU in float32.

The oracle for sparse plans is an independent composition: the same model, never patched, with its attention
function (``dispatch_attention_fn`` in the model's diffusers module) replaced by explicit masked SDPA whose boolean
mask is built by the tests' own brute-force code (tests/bruteforce.py), not by na_accel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import na_accel
from na_accel import AlreadyPatchedError
from na_accel.tiny import tiny_transformer

try:
    import bruteforce as bf
except ImportError:  # pragma: no cover - tests/ made a package
    from tests import bruteforce as bf

FAMILIES = ("hunyuan", "flux", "cosmos", "wan")
MODULES = {
    "hunyuan": "diffusers.models.transformers.transformer_hunyuan_video",
    "flux": "diffusers.models.transformers.transformer_flux",
    "cosmos": "diffusers.models.transformers.transformer_cosmos",
    "wan": "diffusers.models.transformers.transformer_wan",
}
GRID = {"hunyuan": (3, 4, 6), "flux": (6, 8), "cosmos": (3, 4, 6), "wan": (3, 4, 6)}
TEXT_FIRST = {"hunyuan": False, "flux": True}  # joint attention; cosmos / wan: video-only self-attention
NUM_TEXT = 8

_MODELS: dict[str, torch.nn.Module] = {}


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def model(family: str) -> torch.nn.Module:
    """One tiny transformer per family for the whole module (tests always unpatch)."""
    if family not in _MODELS:
        _MODELS[family] = tiny_transformer(family)
    m = _MODELS[family]
    assert not na_accel.is_patched(m)
    return m


def inputs(family: str, grid=None, batch: int = 2, t: float = 900.0, text_lengths=None, seed: int = 0) -> dict:
    """Forward kwargs for a tiny transformer with the token ``grid``. ``text_lengths`` (Hunyuan, Flux) pads text."""
    grid = grid or GRID[family]
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    text = r(batch, NUM_TEXT, 32)
    if family == "flux":
        h, w = grid
        n = h * w
        ids = torch.zeros(n, 3)
        ids[:, 1] = torch.arange(n) // w
        ids[:, 2] = torch.arange(n) % w
        kw = dict(hidden_states=r(batch, n, 64), encoder_hidden_states=text, pooled_projections=r(batch, 32),
                  timestep=torch.full((batch,), t / 1000), img_ids=ids, txt_ids=torch.zeros(NUM_TEXT, 3),
                  guidance=torch.full((batch,), 3.5))  # fmt: skip
        if text_lengths is not None:
            keys = torch.ones(batch, NUM_TEXT + n, dtype=torch.bool)
            for b, length in enumerate(text_lengths):
                keys[b, length:NUM_TEXT] = False
            kw["joint_attention_kwargs"] = {"attention_mask": keys[:, None, None, :]}
        return kw
    f, h, w = grid
    hidden = r(batch, 16, f, 2 * h, 2 * w)  # patch (1, 2, 2)
    kw = dict(hidden_states=hidden, timestep=torch.full((batch,), t), encoder_hidden_states=text)
    if family == "hunyuan":
        mask = torch.ones(batch, NUM_TEXT)
        for b, length in enumerate(text_lengths or []):
            mask[b, length:] = 0
        kw.update(encoder_attention_mask=mask, pooled_projections=r(batch, 32), guidance=torch.full((batch,), 6000.0))
    return kw


def run(m, kw) -> torch.Tensor:
    return m(**kw, return_dict=False)[0]


def cfg(family_or_ks, **defaults) -> dict:
    out = {"version": 1, "defaults": dict(defaults)}
    return out


def window_mask(grid, kernel_size, stride, dilation=1) -> torch.Tensor:
    return bf.grid_mask_bruteforce(tuple(grid), kernel_size, stride, dilation, False)


def composed(monkeypatch, family: str, m, kw, windows, text_lengths=None) -> torch.Tensor:
    """Run the UNPATCHED model with its attention replaced by masked SDPA. ``windows(i)`` gives, for the i-th
    self-attention call of the forward, ``(kernel_size, stride, dilation)`` or None (dense)."""
    assert not na_accel.is_patched(m)
    mod = sys.modules[MODULES[family]]
    original = mod.dispatch_attention_fn
    grid = GRID[family] if "grid" not in kw else kw.pop("grid")
    n = 1
    for a in grid:
        n *= a
    num_text = NUM_TEXT if family in TEXT_FIRST else 0
    counter = [0]

    def fake(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
             attention_kwargs=None, *, backend=None, parallel_config=None):  # fmt: skip
        s = query.shape[1]
        if key.shape[1] != s or s != n + num_text:  # cross-attention: untouched
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa, attention_kwargs=attention_kwargs, backend=backend,
                            parallel_config=parallel_config)  # fmt: skip
        spec = windows(counter[0])
        counter[0] += 1
        if spec is None:
            gm = torch.ones(n, n, dtype=torch.bool)
        else:
            gm = window_mask(grid, *spec)
        b = query.shape[0]
        full = bf.full_mask(gm, b, num_text, text_lengths, True, TEXT_FIRST.get(family, False))
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=full[:, None].to(query.device)
        )
        return out.transpose(1, 2)

    monkeypatch.setattr(mod, "dispatch_attention_fn", fake)
    try:
        return run(m, kw)
    finally:
        monkeypatch.setattr(mod, "dispatch_attention_fn", original)


def assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)


SPARSE = {
    "hunyuan": dict(kernel_size=[2, 3, 3], stride=[1, 2, 3]),
    "flux": dict(kernel_size=[3, 4], stride=[2, 4], dilation=[1, 2]),
    "cosmos": dict(kernel_size=[2, 3, 4], stride=[2, 1, 2]),
    "wan": dict(kernel_size=[3, 2, 3], stride=[1, 2, 3], dilation=[1, 2, 2]),
}


def _spec(d):
    return (d["kernel_size"], d["stride"], d.get("dilation", 1))


# --------------------------------------------------------------------------------------------------------------
# Identity: dense plans and unpatch
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_plans_and_unpatch_are_bit_identical(family):
    m = model(family)
    kw = inputs(family, text_lengths=[5, 8] if family in TEXT_FIRST else None)
    ref = run(m, kw)
    # whole-grid windows, all layers dense by rule, and dense steps: all answered by the original function
    configs = [
        cfg(family, kernel_size=-1),
        {"version": 1, "defaults": SPARSE[family], "layers": [{"match": "_default", "dense": True}]},
        {"version": 1, "defaults": {**SPARSE[family], "dense_steps": 1}},
    ]
    for config in configs:
        with na_accel.patched(m, config=config) as handle:
            assert torch.equal(run(m, kw), ref), config
            rows = handle.layer_plans()
            assert rows and all(r["sparse_calls"] == 0 for r in rows)
        assert not na_accel.is_patched(m)
        assert torch.equal(run(m, kw), ref)
    # a sparse patch changes the output; unpatching restores it bit for bit, processors and hooks included
    processors = {n: mod.processor for n, mod in m.named_modules() if hasattr(mod, "processor")}
    hooks = dict(m._forward_pre_hooks)
    handle = na_accel.patch(m, config={"version": 1, "defaults": SPARSE[family]})
    assert na_accel.is_patched(m)
    assert hasattr(sys.modules[MODULES[family]].dispatch_attention_fn, "_na_accel_original")
    assert (run(m, kw) - ref).abs().max() > 1e-3
    assert na_accel.unpatch(m) is True
    assert not handle.active and not na_accel.is_patched(m)
    assert na_accel.unpatch(m) is False
    assert {n: mod.processor for n, mod in m.named_modules() if hasattr(mod, "processor")} == processors
    assert dict(m._forward_pre_hooks) == hooks
    assert not hasattr(sys.modules[MODULES[family]].dispatch_attention_fn, "_na_accel_original")
    assert torch.equal(run(m, kw), ref)


# --------------------------------------------------------------------------------------------------------------
# Sparse plans against the independent composition
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_plan_matches_masked_sdpa_composition(family, monkeypatch):
    m = model(family)
    lengths = [5, 8] if family in TEXT_FIRST else None
    kw = inputs(family, text_lengths=lengths)
    spec = _spec(SPARSE[family])
    expected = composed(monkeypatch, family, m, dict(kw), lambda i: spec, text_lengths=lengths)
    dense = run(m, kw)
    with na_accel.patched(m, config={"version": 1, "defaults": SPARSE[family]}) as handle:
        out = run(m, kw)
        rows = handle.layer_plans()
    assert_close(out, expected)
    assert (out - dense).abs().max() > 1e-3  # the pattern matters
    assert all(r["sparse_calls"] == 1 and r["fallback_calls"] == 0 for r in rows), rows


def test_cosmos_predict2_and_wan22_ti2v_variants(monkeypatch):
    """Cosmos-Predict2 layout (no learnable pos. embedding, condition mask, per-frame timestep [B, 1, T, 1, 1]) and
    Wan 2.2 TI2V's per-token timestep [B, S]: same token grid, the step from the timestep's maximum."""
    cosmos = tiny_transformer("cosmos", in_channels=17, extra_pos_embed_type=None, rope_scale=(1.0, 4.0, 4.0))
    kw_cosmos = inputs("cosmos")
    b, _, f, h, w = kw_cosmos["hidden_states"].shape
    kw_cosmos["condition_mask"] = torch.zeros(b, 1, f, h, w)
    kw_cosmos["condition_mask"][:, :, 0] = 1
    kw_cosmos["timestep"] = torch.full((b, 1, f, 1, 1), 0.7)
    kw_cosmos["timestep"][:, :, 0] = 0.0
    wan = model("wan")
    kw_wan = inputs("wan")
    n = 3 * 4 * 6
    kw_wan["timestep"] = torch.full((2, n), 700.0)
    kw_wan["timestep"][:, : 4 * 6] = 0.0  # first latent frame is the (clean) conditioning image
    for family, m, kw in (("cosmos", cosmos, kw_cosmos), ("wan", wan, kw_wan)):
        spec = _spec(SPARSE[family])
        expected = composed(monkeypatch, family, m, dict(kw), lambda i, spec=spec: spec)
        with na_accel.patched(m, config={"version": 1, "defaults": SPARSE[family]}) as handle:
            out = run(m, kw)
            assert f"timestep {float(kw['timestep'].max()):g}" in handle.summary()
        assert_close(out, expected)


@pytest.mark.parametrize("family", ["hunyuan", "flux"])
def test_text_padding_batch_lengths(family, monkeypatch):
    """Batch 2 with different valid text lengths, including one with no padding and one with a single token."""
    m = model(family)
    lengths = [1, 8]
    kw = inputs(family, batch=2, text_lengths=lengths, seed=3)
    spec = _spec(SPARSE[family])
    expected = composed(monkeypatch, family, m, dict(kw), lambda i: spec, text_lengths=lengths)
    with na_accel.patched(m, config={"version": 1, "defaults": SPARSE[family]}):
        out = run(m, kw)
    assert_close(out, expected)


def test_per_layer_rules(monkeypatch):
    """Exact name first, then the first matching regex, then _default; dense rules leave a layer untouched."""
    family = "hunyuan"
    m = model(family)
    config = {
        "version": 1,
        "defaults": {"kernel_size": [2, 2, 2], "stride": 1},
        "layers": [
            {"match": "re:single_transformer_blocks\\.\\d+\\.attn", "kernel_size": [3, 3, 3], "stride": [1, 3, 1]},
            {"match": "re:single_transformer_blocks\\.1\\.attn", "dense": True},  # shadowed by the regex above
            {"match": "single_transformer_blocks.1.attn", "kernel_size": [1, 4, 5], "stride": [1, 2, 5]},
            {"match": "transformer_blocks.0.attn", "dense": True},
            {"match": "_default", "kernel_size": [-1, 2, 0.5], "stride": [1, 2, 1]},
        ],
    }
    # call order: transformer_blocks.0, transformer_blocks.1, single_transformer_blocks.0, single_transformer_blocks.1
    plan = [None, ([3, 2, 3], [1, 2, 1], 1), ([3, 3, 3], [1, 3, 1], 1), ([1, 4, 5], [1, 2, 5], 1)]
    kw = inputs(family, text_lengths=[6, 3])
    expected = composed(monkeypatch, family, m, dict(kw), lambda i: plan[i], text_lengths=[6, 3])
    with na_accel.patched(m, config=config) as handle:
        out = run(m, kw)
        rows = {r["layer"]: r for r in handle.layer_plans()}
        text = handle.summary()
    assert_close(out, expected)
    assert rows["transformer_blocks.0.attn"]["patched"] is False
    assert rows["transformer_blocks.1.attn"]["kernel_size"] == (3, 2, 3)
    assert rows["single_transformer_blocks.0.attn"]["rule"] == "re:single_transformer_blocks\\.\\d+\\.attn"
    assert rows["single_transformer_blocks.1.attn"]["stride"] == (1, 2, 5)
    assert "dense: true" in text and "kernel_size=(1, 4, 5)" in text and "_default" in text
    assert "context_embedder.token_refiner.refiner_blocks.0.attn" in text  # never patched, listed


def test_dense_step_schedule_and_generations(monkeypatch):
    """First dense_steps distinct timesteps dense; cond/uncond passes of a step share the plan; a larger timestep or
    new_generation() restarts the count."""
    family = "wan"
    m = model(family)
    spec = _spec(SPARSE[family])
    cond = inputs(family, batch=1, seed=1)
    uncond = inputs(family, batch=1, seed=2)
    timesteps = [900.0, 800.0, 700.0]
    dense_ref, sparse_ref = {}, {}
    for t in timesteps:
        for name, kw in (("c", cond), ("u", uncond)):
            kw = {**kw, "timestep": torch.tensor([t])}
            dense_ref[t, name] = run(m, kw)
            sparse_ref[t, name] = composed(monkeypatch, family, m, dict(kw), lambda i: spec)
    config = {"version": 1, "defaults": {**SPARSE[family], "dense_steps": 2}}
    with na_accel.patched(m, config=config) as handle:
        for generation in range(3):
            if generation == 2:
                handle.new_generation()
            for step, t in enumerate(timesteps):
                for name, kw in (("c", cond), ("u", uncond)):
                    out = run(m, {**kw, "timestep": torch.tensor([t])})
                    assert handle.step == step
                    if step < 2:
                        assert torch.equal(out, dense_ref[t, name])
                    else:
                        assert_close(out, sparse_ref[t, name])
        # repeated timesteps (a second-order solver re-evaluating t) stay in the same step
        run(m, {**cond, "timestep": torch.tensor([700.0])})
        assert handle.step == 2
        assert "generation" in handle.summary()


def test_rules_by_step(monkeypatch):
    """Rules with ``steps`` choose a layer's window per denoising step: each step's output equals the composition
    with that step's windows; a dense-by-step rule leaves the layer dense at those steps only; steps outside every
    range fall back to the rule without steps (here the defaults)."""
    family = "hunyuan"
    m = model(family)
    config = {
        "version": 1,
        "defaults": {"kernel_size": [2, 2, 2], "stride": 1, "dense_steps": 1},
        "layers": [
            {"match": "transformer_blocks.1.attn", "steps": [1, 1], "kernel_size": [3, 3, 3], "stride": [1, 3, 1]},
            {"match": "transformer_blocks.1.attn", "steps": [2, 2], "dense": True},
            {"match": "re:single_transformer_blocks\\.\\d+\\.attn", "steps": [2, -1], "kernel_size": [1, 4, 5],
             "stride": [1, 2, 5]},
        ],
    }
    d = ([2, 2, 2], [1, 1, 1], 1)
    # per step, the windows of the calls in order: transformer_blocks.0, .1, single_transformer_blocks.0, .1
    plans = {
        0: [None] * 4,  # dense step
        1: [d, ([3, 3, 3], [1, 3, 1], 1), d, d],
        2: [d, None, ([1, 4, 5], [1, 2, 5], 1), ([1, 4, 5], [1, 2, 5], 1)],
        3: [d, d, ([1, 4, 5], [1, 2, 5], 1), ([1, 4, 5], [1, 2, 5], 1)],
    }
    timesteps = [900.0, 800.0, 700.0, 600.0]
    kw = inputs(family, batch=1)
    expected = {}
    for step, t in enumerate(timesteps):
        expected[step] = composed(monkeypatch, family, m, {**kw, "timestep": torch.tensor([t])},
                                  lambda i, s=step: plans[s][i])  # fmt: skip
    with na_accel.patched(m, config=config) as handle:
        for step, t in enumerate(timesteps):
            before = {r["layer"]: r for r in handle.layer_plans()}
            out = run(m, {**kw, "timestep": torch.tensor([t])})
            assert handle.step == step
            assert_close(out, expected[step])
            rows = {r["layer"]: r for r in handle.layer_plans()}
            got = rows["transformer_blocks.1.attn"]
            calls = {k: got[k] - before.get("transformer_blocks.1.attn", {}).get(k, 0)
                     for k in ("sparse_calls", "dense_calls")}  # fmt: skip
            assert calls == ({"sparse_calls": 0, "dense_calls": 1} if step in (0, 2)
                             else {"sparse_calls": 1, "dense_calls": 0}), (step, calls)  # fmt: skip
            if step == 2:
                assert got["kernel_size"] is None and "steps 2-2" in got["dense_reason"]
                assert rows["single_transformer_blocks.0.attn"]["kernel_size"] == (1, 4, 5)
            text = handle.summary()
        assert "rule(s) by step" in text and "(steps 2-end)" in text
        assert rows["transformer_blocks.1.attn"]["patched"] is True


def test_change_of_resolution(monkeypatch):
    """New grids between calls re-resolve every window (fractions scale, oversize clamps)."""
    family = "flux"
    m = model(family)
    config = {"version": 1, "defaults": {"kernel_size": [0.5, 5], "stride": [2, 4]}}
    with na_accel.patched(m, config=config) as handle:
        outs = {}
        for grid in [(6, 8), (4, 4), (3, 10)]:
            outs[grid] = run(m, inputs(family, grid=grid))
            rows = handle.layer_plans()
            assert rows[0]["grid"] == grid
        assert "grid (3, 10)" in handle.summary()
    # (6, 8): k = (3, 5), s = (2, 4); (4, 4): k = (2, 4 clamped), s = (2, 4); (3, 10): k = (2, 5), s = (2, 4)
    expect = {(6, 8): ((3, 5), (2, 4)), (4, 4): ((2, 4), (2, 4)), (3, 10): ((2, 5), (2, 4))}
    for grid, (k, s) in expect.items():
        kw = inputs(family, grid=grid)
        kw["grid"] = grid
        ref = composed(monkeypatch, family, m, kw, lambda i, k=k, s=s: (list(k), list(s), 1))
        assert_close(outs[grid], ref)


def test_on_oversize_raise():
    m = model("cosmos")
    config = {"version": 1, "defaults": {"kernel_size": [2, 3, 8], "stride": 1, "on_oversize": "raise"}}
    with na_accel.patched(m, config=config):
        with pytest.raises(na_accel.ConfigError, match="exceeds the token grid"):
            run(m, inputs("cosmos"))  # W = 6 < 8
        run(m, inputs("cosmos", grid=(3, 4, 8)))


# --------------------------------------------------------------------------------------------------------------
# Fallbacks: identical to the unpatched model
# --------------------------------------------------------------------------------------------------------------


def test_fallback_unrecognised_grid_is_identical():
    """Flux img_ids that are not one raster grid (e.g. Kontext-style extra tokens): the whole forward is dense."""
    m = model("flux")
    kw = inputs("flux")
    ids = kw["img_ids"].clone()
    ids[:, 1:] = ids[:, 1:].flip(0)  # reversed order: not raster
    kw["img_ids"] = ids
    ref = run(m, kw)
    with na_accel.patched(m, config={"version": 1, "defaults": SPARSE["flux"]}) as handle:
        assert torch.equal(run(m, kw), ref)
        assert "not one image grid" in handle.summary()


def test_fallback_mask_not_key_padding_is_identical():
    m = model("flux")
    kw = inputs("flux", text_lengths=[4, 8])
    mask = kw["joint_attention_kwargs"]["attention_mask"].clone()
    mask[0, 0, 0, 1] = False  # a hole inside the valid text prefix
    mask[1, 0, 0, NUM_TEXT + 3] = False  # a masked image key
    for bad in (mask, mask.float(), mask[:, :, :, :-1]):
        kw2 = {**kw, "joint_attention_kwargs": {"attention_mask": bad}}
        try:
            ref = run(m, kw2)
        except Exception:  # noqa: BLE001 - a mask the dense path rejects too: nothing to compare
            continue
        with na_accel.patched(m, config={"version": 1, "defaults": SPARSE["flux"]}) as handle:
            assert torch.equal(run(m, kw2), ref)
            rows = handle.layer_plans()
            assert "joint_attention_kwargs: attention mask" in handle.summary()
        assert all(r["dense_calls"] == 1 and r["sparse_calls"] == 0 for r in rows)
    # a block called on its own with such a mask: caught per call
    m = model("hunyuan")
    kw = inputs("hunyuan", text_lengths=[5, 8])
    args = _block_inputs(m, "transformer_blocks.0", kw)
    bad = args[3].clone()
    bad[0, 0, 0, 3] = False  # a masked video key
    args = (*args[:3], bad, *args[4:])
    ref = m.transformer_blocks[0](*args)
    with na_accel.patched(m, config={"version": 1, "defaults": SPARSE["hunyuan"]}) as handle:
        run(m, kw)
        out = m.transformer_blocks[0](*args)
        row = handle.layer_plans()[0]
    assert all(torch.equal(a, b) for a, b in zip(out, ref, strict=True))
    assert row["fallback_calls"] == 1 and "not a pure text key-padding mask" in row["last_fallback"]


def _block_inputs(m, name, kw):
    captured = []
    hook = m.get_submodule(name).register_forward_pre_hook(lambda mod, args: captured.append(args))
    try:
        run(m, kw)
    finally:
        hook.remove()
    return captured[0]


def test_fallback_block_called_on_another_sequence_and_autograd():
    """A block called with a sequence that is not the grid seen by the pre-hook, and autograd: dense, identical."""
    m = model("wan")
    kw = inputs("wan")
    with na_accel.patched(m, config={"version": 1, "defaults": SPARSE["wan"]}) as handle:
        run(m, kw)
        block = m.blocks[0]
        x = torch.randn(2, 20, 32)
        enc = torch.randn(2, NUM_TEXT, 32)
        temb = torch.randn(2, 6, 32)
        rope = m.rope(torch.randn(2, 16, 1, 8, 10))
        patched_out = block(x, enc, temb, rope)
        assert handle.layer_plans()[0]["fallback_calls"] == 1
        with torch.enable_grad():
            grad_out = run(m, {**kw, "hidden_states": kw["hidden_states"].requires_grad_()})
        assert "autograd" in handle.layer_plans()[0]["last_fallback"]
    assert torch.equal(block(x, enc, temb, rope), patched_out)
    with torch.enable_grad():
        assert torch.equal(run(m, kw), grad_out)


def test_fallback_unsupported_call_arguments():
    """dropout, causal, GQA, attention_kwargs, a parallel config, other shapes: declined (the original answers)."""
    from na_accel.patching.intercept import _ACTIVE

    m = model("cosmos")
    with na_accel.patched(m, config={"version": 1, "defaults": SPARSE["cosmos"]}) as handle:
        run(m, inputs("cosmos"))
        dispatch = sys.modules[MODULES["cosmos"]].dispatch_attention_fn
        layer = handle._patches[0].layers[0]
        q = torch.randn(1, 72, 2, 16)
        cases = [
            ((q, q, q), {"dropout_p": 0.1}, "dropout"),
            ((q, q, q), {"is_causal": True}, "is_causal"),
            ((q, q, q), {"enable_gqa": True}, "gqa"),
            ((q, q, q), {"attention_kwargs": {"foo": 1}}, "attention_kwargs"),
            ((q, q, q), {"parallel_config": object()}, "parallel"),
            ((q, q[:, :10], q[:, :10]), {}, "shapes"),
            ((q[:, :10], q[:, :10], q[:, :10]), {}, "sequence length"),
            ((q, q, q), {"attn_mask": torch.ones(1, 1, 1, 72, dtype=torch.bool)}, "grid-only"),
        ]
        for args, kwargs, reason in cases:
            assert layer.attend(args, kwargs) is None
            assert reason in layer.stats.last_fallback.lower()
        # through the installed interceptor: no active layer -> the original function with identical arguments
        _ACTIVE.layer = None
        ref = dispatch._na_accel_original(q, q, q, dropout_p=0.0)
        assert torch.equal(dispatch(q, q, q, dropout_p=0.0), ref)
        # the active layer declines a dropout call: the original answers it
        _ACTIVE.layer = layer
        try:
            torch.manual_seed(0)
            out = dispatch(q, q, q, dropout_p=0.5)
        finally:
            _ACTIVE.layer = None
        torch.manual_seed(0)
        assert torch.equal(out, dispatch._na_accel_original(q, q, q, dropout_p=0.5))


# --------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------


def test_double_patch_raises():
    m = model("wan")
    with na_accel.patched(m, config="wan_fast"):
        with pytest.raises(AlreadyPatchedError, match="unpatch") as info:
            na_accel.patch(m, config="wan_fast")
        assert isinstance(info.value, na_accel.NAAccelError)
        compiled = torch.compile(m)
        with pytest.raises(AlreadyPatchedError):
            na_accel.patch(compiled)  # the same module behind torch.compile's wrapper
        assert na_accel.is_patched(compiled)
    assert not na_accel.is_patched(m)


def test_unsupported_models_raise():
    for obj in (torch.nn.Linear(2, 2), object(), "flux"):
        with pytest.raises(na_accel.UnsupportedModelError) as info:
            na_accel.patch(obj)
        msg = str(info.value)
        for name in ("HunyuanVideoTransformer3DModel", "FluxTransformer2DModel", "CosmosTransformer3DModel",
                     "WanTransformer3DModel"):  # fmt: skip
            assert name in msg
    assert isinstance(info.value, TypeError)


def test_patch_time_config_errors():
    m = model("hunyuan")
    with pytest.raises(na_accel.ConfigError, match="config is for WanTransformer3DModel"):
        na_accel.patch(m, config="wan_fast")
    bad_rule = {"version": 1, "layers": [{"match": "transformer_blocks.0.atn", "dense": True}]}
    with pytest.raises(na_accel.ConfigError, match=r"matches no patchable .*Did you mean 'transformer_blocks.0.attn'"):
        na_accel.patch(m, config=bad_rule)
    bad_regex = {"version": 1, "layers": [{"match": "re:blocks\\.\\d+\\.attn1", "dense": True}]}
    with pytest.raises(na_accel.ConfigError, match="matches no patchable"):
        na_accel.patch(m, config=bad_regex)
    cross = {
        "version": 1,
        "layers": [{"match": "context_embedder.token_refiner.refiner_blocks.0.attn", "dense": True}],
    }
    with pytest.raises(na_accel.ConfigError, match="not a token-grid self-attention"):
        na_accel.patch(m, config=cross)
    with pytest.raises(na_accel.ConfigError, match="has 2 entries"):
        na_accel.patch(m, config={"version": 1, "defaults": {"kernel_size": [3, 3], "stride": 1}})
    assert not na_accel.is_patched(m)
    assert all(type(mod.processor).__name__.startswith("NAAccel") is False
               for mod in m.modules() if hasattr(mod, "processor"))  # fmt: skip


def test_default_config_is_family_fast_preset_and_summary():
    m = model("hunyuan")
    with na_accel.patched(m) as handle:
        assert handle.config.name == "hunyuan_fast"
        text = handle.summary()
        assert "no forward seen yet" in text
        run(m, inputs("hunyuan", t=1000.0))
        text = handle.summary()
    assert "dense step 0 (the first 15 steps are dense)" in text
    # (18, 24, 24) on the (3, 4, 6) grid: clamped to the whole grid, hence dense
    assert "window covers the whole grid" in text


def test_unsupported_processor_layer_stays_dense():
    """A layer whose processor was replaced by one na_accel does not know stays dense, and says so."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    m = tiny_transformer("hunyuan")
    m.transformer_blocks[0].attn.set_processor(AttnProcessor2_0())
    with na_accel.patched(m, config={"version": 1, "defaults": SPARSE["hunyuan"]}) as handle:
        rows = {r["layer"]: r for r in handle.layer_plans()}
        assert rows["transformer_blocks.0.attn"]["patched"] is False
        assert "AttnProcessor2_0 is not supported" in handle.summary()
        assert isinstance(m.transformer_blocks[0].attn.processor, AttnProcessor2_0)


def test_two_models_of_one_family_patched_independently(monkeypatch):
    """The interceptor is shared per diffusers module and reference counted; each model keeps its own plan."""
    a, b = model("cosmos"), tiny_transformer("cosmos", seed=1)
    kw = inputs("cosmos")
    mod = sys.modules[MODULES["cosmos"]]
    ref_b = run(b, kw)
    expected_a = composed(monkeypatch, "cosmos", a, dict(kw), lambda i: _spec(SPARSE["cosmos"]))
    ha = na_accel.patch(a, config={"version": 1, "defaults": SPARSE["cosmos"]})
    hb = na_accel.patch(b, config={"version": 1, "defaults": {"kernel_size": -1}})
    try:
        assert torch.equal(run(b, kw), ref_b)
        assert_close(run(a, kw), expected_a)
        hb.unpatch()
        assert hasattr(mod.dispatch_attention_fn, "_na_accel_original")
        assert_close(run(a, kw), expected_a)
    finally:
        ha.unpatch()
        hb.unpatch()
    assert not hasattr(mod.dispatch_attention_fn, "_na_accel_original")


# --------------------------------------------------------------------------------------------------------------
# precision: fp8 (8-bit operands on Hopper; on the CPU every fp8 call falls back to the inputs' precision)
# --------------------------------------------------------------------------------------------------------------

FIRST_LAYER = {"hunyuan": "transformer_blocks.0.attn", "flux": "transformer_blocks.0.attn",
               "cosmos": "transformer_blocks.0.attn1", "wan": "blocks.0.attn1"}  # fmt: skip


def precision_config(family: str, precision: str) -> dict:
    """One dense step, the family's sparse window, the first layer dense by rule and (joint families) the second
    layer with a window covering the whole grid."""
    layers = [{"match": FIRST_LAYER[family], "dense": True}]
    if family in TEXT_FIRST:
        layers.append({"match": "transformer_blocks.1.attn", "kernel_size": -1})
    return {"version": 1, "defaults": {**SPARSE[family], "dense_steps": 1, "precision": precision}, "layers": layers}


def two_steps(family: str, **kw) -> list[dict]:
    """Forward kwargs of a dense step (step 0) and a sparse step (step 1) of one generation."""
    first = inputs(family, **kw)
    return [first, {**first, "timestep": first["timestep"] * 0.8}]


@pytest.mark.parametrize("family", FAMILIES)
def test_precision_fp8_on_cpu_gives_the_bf16_output_and_says_why(family):
    """On the CPU every fp8 call (sparse, dense step, whole-grid window, dense by rule) runs in the inputs' precision:
    the output is the bf16 config's (bit for bit where na_accel's dense path keeps diffusers' token order; FLUX's
    text comes first, so its dense calls match up to rounding), and the summary gives the reasons and counts."""
    from na_accel.ops.precision import fp8_fallbacks, reset_fp8_fallbacks

    m = model(family)
    steps = two_steps(family, text_lengths=[5, 8] if family in TEXT_FIRST else None)
    outs, texts, rows, fallbacks = {}, {}, {}, {}
    for precision in ("bf16", "fp8"):
        reset_fp8_fallbacks()
        with na_accel.patched(m, config=precision_config(family, precision)) as handle:
            outs[precision] = [run(m, kw) for kw in steps]
            assert handle.step == 1
            texts[precision] = handle.summary()
            rows[precision] = {r["layer"]: r for r in handle.layer_plans()}
        fallbacks[precision] = fp8_fallbacks()
    for bf16, fp8 in zip(outs["bf16"], outs["fp8"], strict=True):
        if family == "flux":
            torch.testing.assert_close(fp8, bf16, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(fp8, bf16)
    assert fallbacks["bf16"] == {}
    assert fallbacks["fp8"] and all("has no 8-bit path" in reason for reason in fallbacks["fp8"]), fallbacks
    n_calls = sum(fallbacks["fp8"].values())
    assert n_calls == 2 * len(rows["fp8"])  # every layer, both steps
    text = texts["fp8"]
    assert "; precision: fp8" in text and "precision=fp8" in text
    assert "dense: true (precision=fp8, the defaults')" in text
    line = next(ln for ln in text.splitlines() if "precision fp8 fell back" in ln)
    for reason, n in fallbacks["fp8"].items():
        assert f"{n} call{'s' if n != 1 else ''}: {reason}" in line
    assert "fp8" not in texts["bf16"]
    first = FIRST_LAYER[family]
    assert all(r["precision"] == "fp8" for r in rows["fp8"].values())
    assert all(r["precision"] == "bf16" for r in rows["bf16"].values())
    # dense by rule: left to the original attention in bf16; installed in fp8, its calls counted as dense
    assert rows["bf16"][first]["patched"] is False and rows["bf16"][first]["dense_calls"] == 0
    assert rows["fp8"][first]["patched"] is True
    assert (rows["fp8"][first]["dense_calls"], rows["fp8"][first]["sparse_calls"]) == (2, 0)
    counts = ("sparse_calls", "dense_calls", "fallback_calls")
    for name, row in rows["fp8"].items():
        if name != first:
            assert [row[k] for k in counts] == [rows["bf16"][name][k] for k in counts], name


def _record_gna_calls(monkeypatch) -> list[tuple]:
    """Record ``(kernel_size, stride, precision)`` of every na_joint / na_flat call of the patch layer."""
    import na_accel.patching.plan as plan_mod

    calls: list[tuple] = []

    def recorder(real):
        def call(*args, **kwargs):
            calls.append((tuple(kwargs["kernel_size"]), kwargs["stride"], kwargs["precision"]))
            return real(*args, **kwargs)

        return call

    for name in ("na_joint", "na_flat"):
        monkeypatch.setattr(plan_mod, name, recorder(getattr(plan_mod, name)))
    return calls


@pytest.mark.parametrize("family", ["hunyuan", "wan"])
def test_precision_fp8_dense_calls_run_gna_over_the_whole_grid(family, monkeypatch):
    """With fp8, dense steps, whole-grid windows and layers dense by rule go to GNA with the whole grid as window
    (kernel_size -1, stride 1) and precision fp8, counted as dense calls; with bf16 GNA sees only the sparse calls."""
    calls = _record_gna_calls(monkeypatch)
    m = model(family)
    steps = two_steps(family, text_lengths=[5, 8] if family in TEXT_FIRST else None)
    n_layers = 4 if family in TEXT_FIRST else 2
    sparse = SPARSE[family]
    for precision in ("bf16", "fp8"):
        whole = ((-1, -1, -1), 1, precision)
        window = (tuple(sparse["kernel_size"]), tuple(sparse["stride"]), precision)
        # per step, the calls in layer order: the first layer dense by rule, (joint families) a whole-grid window
        expected = {
            0: [whole] * n_layers if precision == "fp8" else [],
            1: ([whole] if precision == "fp8" else [])
            + ([whole] if family in TEXT_FIRST and precision == "fp8" else [])
            + [window] * (n_layers - (2 if family in TEXT_FIRST else 1)),
        }
        with na_accel.patched(m, config=precision_config(family, precision)) as handle:
            for step, kw in enumerate(steps):
                calls.clear()
                before = handle.call_counts()
                run(m, kw)
                assert handle.step == step
                assert calls == expected[step], (precision, step, calls)
                after = handle.call_counts()
                got = {k: after[k] - before[k] for k in ("sparse", "dense", "fallback")}
                n_sparse = len([c for c in expected[1] if c == window]) if step == 1 else 0
                n_dense = (n_layers if step == 0 else n_layers - n_sparse) - (precision == "bf16")
                assert got == {"sparse": n_sparse, "dense": n_dense, "fallback": 0}, (precision, step, got)


def test_precision_fp8_keeps_what_probes_see(monkeypatch):
    """A probe that observes dense calls sees the same calls with fp8 as with bf16 (layers dense by rule never)."""
    family = "hunyuan"
    m = model(family)
    steps = two_steps(family, text_lengths=[5, 8])

    class Probe:
        observe_dense = True

        def __init__(self):
            self.seen = []

        def __call__(self, call):
            self.seen.append((call.layer, call.step, call.params))

    seen = {}
    for precision in ("bf16", "fp8"):
        probe = Probe()
        with na_accel.patched(m, config=precision_config(family, precision)) as handle:
            handle.set_probe(probe)
            for kw in steps:
                run(m, kw)
        seen[precision] = probe.seen
    assert seen["fp8"] == seen["bf16"]
    assert all(layer != FIRST_LAYER[family] for layer, _, _ in seen["fp8"])
    assert [p is None for _, step, p in seen["fp8"] if step == 0] == [True] * 3
    assert sum(p is not None for _, _, p in seen["fp8"]) == 2


def test_precision_fp8_dense_call_under_autograd_runs_the_original_and_says_why():
    """A dense call GNA cannot answer (autograd recording) runs the original attention, counted as an fp8 fallback."""
    from na_accel.ops.precision import fp8_fallbacks, reset_fp8_fallbacks

    family = "wan"
    m = model(family)
    kw = inputs(family)
    config = precision_config(family, "fp8")
    with torch.enable_grad():
        ref = run(m, kw)
        reset_fp8_fallbacks()
        with na_accel.patched(m, config=config) as handle:
            out = run(m, kw)  # step 0: dense
            counts = handle.call_counts()
    assert torch.equal(out, ref)
    assert counts == {"sparse": 0, "dense": 2, "fallback": 0, "compiled": 0}
    assert fp8_fallbacks() == {
        "a dense call GNA cannot answer (autograd is recording (na_accel attention is forward-only)) runs the "
        "original attention": 2
    }


def test_precision_fp8_in_the_dense_steps_only(monkeypatch):
    """examples/configs/hunyuan_fast_fp8_dense.yaml (defaults fp8, a rule from the first sparse step on with bf16),
    scaled to the tiny model: the dense step's calls ask for fp8 (GNA over the whole grid), the sparse step's run the
    window in bf16; on the CPU only the dense step's calls count as fp8 fallbacks."""
    from na_accel.ops.precision import fp8_fallbacks, reset_fp8_fallbacks
    from na_accel.patching.config import load_config

    path = Path(__file__).resolve().parents[1] / "examples" / "configs" / "hunyuan_fast_fp8_dense.yaml"
    shipped = load_config(path)
    assert shipped.defaults.precision == "fp8" and shipped.dense_steps == 15
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["defaults"].update(SPARSE["hunyuan"], dense_steps=1)
    data["layers"][0]["steps"] = [1, -1]
    calls = _record_gna_calls(monkeypatch)
    m = model("hunyuan")
    steps = two_steps("hunyuan", text_lengths=[5, 8])
    window = (tuple(SPARSE["hunyuan"]["kernel_size"]), tuple(SPARSE["hunyuan"]["stride"]), "bf16")
    reset_fp8_fallbacks()
    per_step, fp8_after_step = [], []
    with na_accel.patched(m, config=data) as handle:
        for kw in steps:
            calls.clear()
            run(m, kw)
            per_step.append(list(calls))
            fp8_after_step.append(sum(fp8_fallbacks().values()))
    n_layers = 4 if "hunyuan" in TEXT_FIRST else 2
    assert per_step[0] == [((-1, -1, -1), 1, "fp8")] * n_layers
    assert per_step[1] == [window] * n_layers
    assert fp8_after_step == [n_layers, n_layers]
    assert handle.step == 1
