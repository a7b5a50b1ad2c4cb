"""torch.compile(fullgraph=True) of a patched transformer block: no graph break, same result as eager."""

from __future__ import annotations

import pytest
import torch

import na_accel
from na_accel.tiny import tiny_transformer

try:
    from test_patch_transformers import SPARSE, inputs, run
except ImportError:  # pragma: no cover - tests/ made a package
    from tests.test_patch_transformers import SPARSE, inputs, run


def _capture(block, m, kw):
    captured = {}

    def hook(module, args, kwargs):
        captured.setdefault("args", args)
        captured.setdefault("kwargs", kwargs)

    h = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run(m, kw)
    finally:
        h.remove()
    return captured["args"], captured["kwargs"]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize(
    "family, block_name",
    [("hunyuan", "transformer_blocks.0"), ("hunyuan", "single_transformer_blocks.1"), ("wan", "blocks.1")],
)
def test_compiled_patched_block_has_no_graph_break(family, block_name):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # graph breaks counted by earlier tests (e.g. diffusers' cache hooks)
    m = tiny_transformer(family)
    block = m.get_submodule(block_name)
    kw = inputs(family, text_lengths=[5, 8] if family == "hunyuan" else None)
    with torch.no_grad():
        args, kwargs = _capture(block, m, kw)
        dense = _first(block(*args, **kwargs))
        with na_accel.patched(m, config={"version": 1, "defaults": SPARSE[family]}):
            run(m, kw)  # the pre-hook sets the plan for this grid
            eager = _first(block(*args, **kwargs))
            compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
            out = _first(compiled(*args, **kwargs))
        assert not torch._dynamo.utils.counters["graph_break"]
        torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
        assert (eager - dense).abs().max() > 1e-4  # the compiled graph ran the sparse pattern
    torch._dynamo.reset()


def test_compiled_blocks_do_not_recompile_per_step():
    """diffusers' compile_repeated_blocks on a patched model: new steps and new forwards reuse the graphs (a step
    changes no guard), only the switch from dense steps to sparse steps compiles once more."""
    torch._dynamo.reset()
    m = tiny_transformer("hunyuan")
    kw = inputs("hunyuan", text_lengths=[5, 8])
    config = {"version": 1, "defaults": {**SPARSE["hunyuan"], "dense_steps": 2}}
    with torch.no_grad(), na_accel.patched(m, config=config) as handle:
        m.compile_repeated_blocks(fullgraph=True, backend="eager")
        timesteps = iter(range(900, 0, -10))

        def step():
            return run(m, {**kw, "timestep": torch.full((2,), float(next(timesteps)))})

        step()  # dense step 0: compiles
        with torch._dynamo.config.patch(error_on_recompile=True):
            step()  # dense step 1
        sparse = step()  # sparse step 2: compiles the sparse path
        with torch._dynamo.config.patch(error_on_recompile=True):
            again = step()
            step()
        assert handle.step == 4
        assert not torch.equal(sparse, again)  # other timesteps, same graphs
    torch._dynamo.reset()


def test_compiled_rules_by_step_match_eager():
    """A config whose windows change with the step (rules with ``steps``) under compile_repeated_blocks: every step
    gives the eager result of the same config (each distinct window compiles once)."""
    torch._dynamo.reset()
    kw = inputs("hunyuan", text_lengths=[5, 8])
    config = {"version": 1, "defaults": {**SPARSE["hunyuan"], "dense_steps": 1},
              "layers": [{"match": "transformer_blocks.1.attn", "steps": [1, 1], "kernel_size": [3, 3, 3],
                          "stride": [1, 3, 1]},
                         {"match": "transformer_blocks.1.attn", "steps": [2, 2], "dense": True},
                         {"match": "re:single_.*", "steps": [3, -1], "kernel_size": [1, 4, 5], "stride": [1, 2, 5]}]}

    def steps(m):
        return [run(m, {**kw, "timestep": torch.full((2,), t)}) for t in (900.0, 800.0, 700.0, 600.0, 500.0)]

    with torch.no_grad():
        m = tiny_transformer("hunyuan")
        with na_accel.patched(m, config=config):
            eager = steps(m)
        m = tiny_transformer("hunyuan")
        with na_accel.patched(m, config=config) as handle:
            m.compile_repeated_blocks(fullgraph=True, backend="eager")
            compiled = steps(m)
            rows = {r["layer"]: r for r in handle.layer_plans()}
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(eager[1], eager[2])
    assert (rows["transformer_blocks.1.attn"]["sparse_calls"], rows["transformer_blocks.1.attn"]["dense_calls"]) == (
        3, 2)  # step 0 dense (dense_steps), steps 1, 3, 4 sparse, step 2 dense by rule  # fmt: skip
    torch._dynamo.reset()


@pytest.mark.parametrize("family", ["hunyuan", "wan"])
def test_call_counts_under_compile_match_eager(family):
    """Attention calls inside torch.compile cannot count themselves; the forward post-hook counts them from the plan,
    so layer_plans() and call_counts() say the same under compile as in eager mode (and the summary says so)."""
    torch._dynamo.reset()
    kw = inputs(family, text_lengths=[5, 8] if family == "hunyuan" else None)
    config = {"version": 1, "defaults": {**SPARSE[family], "dense_steps": 1}}

    def three_steps(m, handle):
        outs = []
        for t in (900.0, 800.0, 700.0):  # step 0 dense, steps 1 and 2 sparse
            outs.append(run(m, {**kw, "timestep": torch.full((2,), t)}))
        return outs, handle.call_counts(), [(r["sparse_calls"], r["dense_calls"]) for r in handle.layer_plans()]

    with torch.no_grad():
        m = tiny_transformer(family)
        with na_accel.patched(m, config=config) as handle:
            eager, eager_counts, eager_rows = three_steps(m, handle)
        m = tiny_transformer(family)
        with na_accel.patched(m, config=config) as handle:
            m.compile_repeated_blocks(fullgraph=True, backend="eager")
            compiled, counts, rows = three_steps(m, handle)
            summary = handle.summary()
    n_layers = len(rows)
    assert eager_counts == {"sparse": 2 * n_layers, "dense": n_layers, "fallback": 0, "compiled": 0}
    assert counts == {"sparse": 2 * n_layers, "dense": n_layers, "fallback": 0, "compiled": 3 * n_layers}
    assert rows == eager_rows == [(2, 1)] * n_layers
    assert "inside torch.compile, counted as planned" in summary
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the compiled steps ran the sparse pattern
    torch._dynamo.reset()


def test_compiled_fp8_dense_and_sparse_steps_have_no_graph_break():
    """precision fp8 under compile_repeated_blocks(fullgraph=True): dense steps and layers dense by rule go through
    GNA too (whole-grid window) without a graph break, with the eager outputs and call counts."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    m = tiny_transformer("hunyuan")
    kw = inputs("hunyuan", text_lengths=[5, 8])
    config = {"version": 1, "defaults": {**SPARSE["hunyuan"], "dense_steps": 1, "precision": "fp8"},
              "layers": [{"match": "transformer_blocks.0.attn", "dense": True}]}  # fmt: skip
    steps = [{**kw, "timestep": torch.full((2,), t)} for t in (900.0, 800.0)]  # dense, sparse
    with torch.no_grad():
        with na_accel.patched(m, config=config):
            eager = [run(m, s) for s in steps]
        with na_accel.patched(m, config=config) as handle:
            m.compile_repeated_blocks(fullgraph=True, backend="eager")
            compiled = [run(m, s) for s in steps]
            counts = handle.call_counts()
    assert not torch._dynamo.utils.counters["graph_break"]
    assert all(torch.equal(a, b) for a, b in zip(compiled, eager, strict=True))
    assert counts == {"sparse": 3, "dense": 5, "fallback": 0, "compiled": 8}
    torch._dynamo.reset()
