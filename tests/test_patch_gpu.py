"""Patched tiny models on a CUDA GPU with the Triton backend, in bf16 / fp16, against the masked-SDPA composition."""

from __future__ import annotations

import pytest
import torch

import na_accel
from na_accel.tiny import tiny_transformer

try:
    from test_patch_transformers import FAMILIES, SPARSE, TEXT_FIRST, _spec, composed, inputs, run
except ImportError:  # pragma: no cover - tests/ made a package
    from tests.test_patch_transformers import FAMILIES, SPARSE, TEXT_FIRST, _spec, composed, inputs, run

pytestmark = pytest.mark.gpu

HEAD_DIM_64 = {
    "hunyuan": dict(attention_head_dim=64, rope_axes_dim=(16, 24, 24)),
    "flux": dict(attention_head_dim=64, axes_dims_rope=(16, 24, 24)),
    "cosmos": dict(attention_head_dim=64),
    "wan": dict(attention_head_dim=64),
}


def _to(kw, device, dtype):
    out = {}
    for k, v in kw.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, dtype) if v.is_floating_point() and k not in ("img_ids", "txt_ids") else v.to(device)
        elif isinstance(v, dict):
            v = _to(v, device, dtype)
        out[k] = v
    return out


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_triton_matches_composition(family, dtype, monkeypatch):
    m = tiny_transformer(family, **HEAD_DIM_64[family]).to("cuda", dtype)
    lengths = [5, 8] if family in TEXT_FIRST else None
    kw = _to(inputs(family, text_lengths=lengths), "cuda", dtype)
    if family == "flux" and lengths:
        kw["joint_attention_kwargs"]["attention_mask"] = kw["joint_attention_kwargs"]["attention_mask"].bool()
    spec = _spec(SPARSE[family])
    with torch.no_grad():
        dense = run(m, kw)
        expected = composed(monkeypatch, family, m, dict(kw), lambda i: spec, text_lengths=lengths)
        config = {"version": 1, "defaults": {**SPARSE[family], "backend": "triton"}}
        with na_accel.patched(m, config=config) as handle:
            out = run(m, kw)
            rows = handle.layer_plans()
    assert all(r["sparse_calls"] == 1 and r["fallback_calls"] == 0 for r in rows), rows
    assert _rel(out, expected) < 2e-2, _rel(out, expected)
    assert _rel(dense, expected) > 5 * _rel(out, expected)


def test_gpu_compiled_block_inductor():
    torch._dynamo.reset()
    family = "hunyuan"
    m = tiny_transformer(family, **HEAD_DIM_64[family]).to("cuda", torch.bfloat16)
    kw = _to(inputs(family, text_lengths=[5, 8]), "cuda", torch.bfloat16)
    captured = []
    hook = m.transformer_blocks[0].register_forward_pre_hook(lambda mod, args: captured.append(args))
    with torch.no_grad(), na_accel.patched(m, config={"version": 1, "defaults": SPARSE[family]}):
        run(m, kw)
        hook.remove()
        args = captured[0]
        eager = m.transformer_blocks[0](*args)[0]
        compiled = torch.compile(m.transformer_blocks[0], fullgraph=True)
        out = compiled(*args)[0]
    assert _rel(out, eager) < 1e-2
    torch._dynamo.reset()
