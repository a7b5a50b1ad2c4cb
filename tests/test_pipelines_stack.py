"""The patch stacked with what users put on a pipeline: diffusers' step caches (FirstBlockCache, TaylorSeer,
MagCache), CPU offloading (accelerate's hooks) and regional torch.compile, on the tiny random-weight pipelines.

What must hold: the plan of every attention call follows the real denoising step (the pipeline's loop index), also
on steps whose blocks a cache skipped or predicted; dense steps are exactly the configured ones; a layer a cache
skipped is not counted as called; the patch and a cache can be removed in either order, leaving the exact outputs
of each remaining one (and of the bare pipeline); offloading hooks (weights on the meta device at patch time, moved
in when a module runs, re-installed by diffusers after every call) change no output; under regional compile na_accel
adds no graph break.
"""

from __future__ import annotations

import re

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

import na_accel
from na_accel.patching.plan import LayerPatch
from na_accel.tiny import default_generation_kwargs, tiny_pipeline
from na_accel.tools.runtime import apply_offload, compile_regions, raise_recompile_limit

WINDOW = {
    "hunyuan": dict(kernel_size=[2, 3, 3], stride=[1, 2, 3]),
    "flux": dict(kernel_size=[3, 4], stride=[2, 4]),
    "wan": dict(kernel_size=[3, 2, 3], stride=[1, 2, 3]),
}
STEPS = 6
PROMPT = "a cat walks on the beach at sunset"


def config(family: str, dense_steps: int) -> dict:
    return {"version": 1, "defaults": {**WINDOW[family], "dense_steps": dense_steps}}


def generate(pipe, family: str, steps: int = STEPS, on_step=None, **overrides) -> torch.Tensor:
    kw = {**default_generation_kwargs(family), "num_inference_steps": steps, **overrides}

    def callback(_pipe, i, t, cb_kwargs):
        if on_step is not None:
            on_step(i)
        return {}

    out = pipe(PROMPT, output_type="latent", generator=torch.Generator().manual_seed(0), callback_on_step_end=callback,
               **kw)  # fmt: skip
    return out.frames if hasattr(out, "frames") else out.images


class CallLog:
    """Every attention call answered by na_accel (eager): (pipeline loop step, step in the call's plan, sparse?)."""

    def __init__(self) -> None:
        self.loop_step = 0
        self.calls: list[tuple[int, int | None, bool]] = []

    def step_done(self, i: int) -> None:
        assert i == self.loop_step
        self.loop_step = i + 1

    def per_step(self) -> dict[int, list[tuple[int | None, bool]]]:
        out: dict[int, list] = {i: [] for i in range(STEPS)}
        for loop, planned, sparse in self.calls:
            out[loop].append((planned, sparse))
        return out


@pytest.fixture()
def log(monkeypatch) -> CallLog:
    record = CallLog()
    original = LayerPatch.attend

    def attend(self, args, kwargs):
        out = original(self, args, kwargs)
        record.calls.append((record.loop_step, self.owner.plan.step, out is not None))
        return out

    monkeypatch.setattr(LayerPatch, "attend", attend)
    return record


# name -> (cache config, family, dense_steps, steps whose blocks the cache computes: the others are skipped/predicted)
CACHES = {
    # threshold 10: after step 0 only the first block runs (its residual never changes by 10x)
    "fbc-hunyuan": (lambda: FirstBlockCacheConfig(threshold=10.0), "hunyuan", 2, "first block only after step 0"),
    "fbc-flux": (lambda: FirstBlockCacheConfig(threshold=10.0), "flux", 2, "first block only after step 0"),
    "fbc-wan-cfg": (lambda: FirstBlockCacheConfig(threshold=10.0), "wan", 2, "first block only after step 0"),
    # warm-up 1, interval 2: steps 0, 2, 4 computed, 1, 3, 5 predicted
    "taylorseer": (
        lambda: TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1,
                                      taylor_factors_dtype=torch.float32),
        "hunyuan", 2, {0, 2, 4},
    ),
    # constant ratios, no retention, at most 2 skipped steps in a row: steps 0 and 3 computed, 1, 2, 4, 5 skipped
    "magcache": (
        lambda: MagCacheConfig(mag_ratios=[1.0] * STEPS, num_inference_steps=STEPS, retention_ratio=0.0,
                               max_skip_steps=2),
        "hunyuan", 3, {0, 3},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CACHES))
def test_plans_follow_the_real_step_with_a_cache(name, log):
    """Each attention call's plan step equals the pipeline's loop step while the cache skips blocks or whole steps;
    dense exactly on the first dense_steps steps; call counts are the calls that ran (skipped layers not counted)."""
    make, family, dense_steps, computed = CACHES[name]
    pipe = tiny_pipeline(family)
    passes = 2 if family == "wan" else 1  # Wan: cond and uncond forwards
    pipe.transformer.enable_cache(make())
    with na_accel.patched(pipe, config=config(family, dense_steps)) as handle:
        generate(pipe, family, on_step=log.step_done)
        counts = handle.call_counts()
        n_layers = sum(r["patched"] for r in handle.layer_plans())
    pipe.transformer.disable_cache()
    assert log.loop_step == STEPS
    per_step = log.per_step()
    for step, calls in per_step.items():
        for planned, sparse in calls:
            assert planned == step, (name, step, planned)
            assert sparse == (step >= dense_steps), (name, step)
    ran = {s for s, c in per_step.items() if len(c) == n_layers * passes}
    if isinstance(computed, set):  # whole steps skipped: no attention call at all on the others
        assert ran == computed and all(not per_step[s] for s in set(range(STEPS)) - computed), per_step
    else:  # the first block runs every step, the rest only on step 0
        assert ran == {0} and all(len(per_step[s]) == passes for s in range(1, STEPS)), per_step
    assert dense_steps in ran or not isinstance(computed, set)  # the first sparse step ran its blocks
    assert counts["sparse"] + counts["dense"] == len(log.calls) and counts["compiled"] == counts["fallback"] == 0


@pytest.mark.parametrize("cache_first", [True, False], ids=["cache-then-patch", "patch-then-cache"])
@pytest.mark.parametrize("unpatch_first", [True, False], ids=["unpatch-first", "disable-cache-first"])
def test_patch_and_cache_remove_in_either_order(cache_first, unpatch_first):
    """Outputs are bit-identical to the runs without the removed one, and finally to the bare pipeline."""
    family = "hunyuan"
    pipe = tiny_pipeline(family)
    make = CACHES["taylorseer"][0]
    cfg = config(family, 2)
    bare = generate(pipe, family)
    with na_accel.patched(pipe, config=cfg):
        patch_only = generate(pipe, family)
    pipe.transformer.enable_cache(make())
    cache_only = generate(pipe, family)
    pipe.transformer.disable_cache()
    assert not torch.equal(patch_only, bare) and not torch.equal(cache_only, bare)

    if cache_first:
        pipe.transformer.enable_cache(make())
        handle = na_accel.patch(pipe, config=cfg)
    else:
        handle = na_accel.patch(pipe, config=cfg)
        pipe.transformer.enable_cache(make())
    both = generate(pipe, family)
    assert not torch.equal(both, patch_only) and not torch.equal(both, cache_only)
    if unpatch_first:
        handle.unpatch()
        assert torch.equal(generate(pipe, family), cache_only)
        pipe.transformer.disable_cache()
    else:
        pipe.transformer.disable_cache()
        assert torch.equal(generate(pipe, family), patch_only)
        handle.unpatch()
    assert torch.equal(generate(pipe, family), bare)
    assert not na_accel.is_patched(pipe) and not pipe.transformer.is_cache_enabled


def test_all_dense_patch_with_a_cache_equals_the_cache_alone():
    pipe = tiny_pipeline("hunyuan")
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    cached = generate(pipe, "hunyuan")
    with na_accel.patched(pipe, config=config("hunyuan", STEPS)):
        assert torch.equal(generate(pipe, "hunyuan"), cached)
    pipe.transformer.disable_cache()


# ----------------------------------------------------------------------------------------------------------------
# CPU offloading
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("patch_first", [False, True], ids=["offload-then-patch", "patch-then-offload"])
def test_patch_with_model_cpu_offload(patch_first):
    """enable_model_cpu_offload's hooks (diffusers re-installs them after every call) leave the patch working: two
    generations equal the patched run without offloading, and unpatching gives the bare output back."""
    family, steps = "hunyuan", 3
    cfg = config(family, 1)
    pipe = tiny_pipeline(family)
    bare = generate(pipe, family, steps)
    with na_accel.patched(pipe, config=cfg) as handle:
        patched = generate(pipe, family, steps)
        per_run = handle.call_counts()
    pipe = tiny_pipeline(family)
    if patch_first:
        handle = na_accel.patch(pipe, config=cfg)
        apply_offload(pipe, "model", "cpu")  # diffusers allows the CPU as the "accelerator": the same hooks run
    else:
        apply_offload(pipe, "model", "cpu")
        handle = na_accel.patch(pipe, config=cfg)
    assert hasattr(pipe.transformer, "_hf_hook")
    first, second = generate(pipe, family, steps), generate(pipe, family, steps)
    assert torch.equal(first, patched) and torch.equal(second, patched)
    assert handle.call_counts() == {k: 2 * v for k, v in per_run.items()}
    handle.unpatch()
    assert torch.equal(generate(pipe, family, steps), bare)


def test_patch_with_sequential_offload_weights_on_meta():
    """accelerate's cpu_offload (what enable_sequential_cpu_offload puts on each component): the transformer's
    weights are on the meta device when it is patched and are moved in per submodule as it runs. (The tiny text
    encoders are left out: accelerate fails on them with the CPU as execution device, na_accel not involved.)"""
    from accelerate import cpu_offload

    family, steps = "hunyuan", 3
    cfg = config(family, 1)
    pipe = tiny_pipeline(family)
    with na_accel.patched(pipe, config=cfg) as handle:
        patched = generate(pipe, family, steps)
        per_run = handle.call_counts()
    cpu_offload(pipe.transformer, torch.device("cpu"), offload_buffers=len(pipe.transformer._parameters) > 0)
    assert next(pipe.transformer.parameters()).device.type == "meta"
    with na_accel.patched(pipe, config=cfg) as handle:
        out = generate(pipe, family, steps)
        assert handle.call_counts() == per_run and per_run["sparse"] > 0
    assert torch.equal(out, patched)


# ----------------------------------------------------------------------------------------------------------------
# Regional torch.compile
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Compiled code and graph-break counters of one test do not reach the next."""
    yield
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def _graph_breaks() -> set[str]:
    """The reasons of the graph breaks so far (object addresses removed)."""
    return {re.sub(r"0x[0-9a-f]+", "0x", k) for k in torch._dynamo.utils.counters["graph_break"]}


def _compiled_cached_run(patched: bool, dense_steps: int, steps: int):
    """A tiny HunyuanVideo pipeline with TaylorSeer and compiled blocks, patched or not: (graph breaks, output,
    eager patched output, call counts per step)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    family = "hunyuan"
    pipe = tiny_pipeline(family)
    pipe.transformer.enable_cache(CACHES["taylorseer"][0]())
    eager = None
    if patched:
        with na_accel.patched(pipe, config=config(family, dense_steps)):
            eager = generate(pipe, family, steps)
    raise_recompile_limit(len(compile_regions(pipe, backend="eager", fullgraph=False)))
    per_step: list[dict[str, int]] = []
    if not patched:
        out = generate(pipe, family, steps)
        return _graph_breaks(), out, eager, per_step
    handle = na_accel.patch(pipe, config=config(family, dense_steps))
    before = [handle.call_counts()]

    def on_step(i):
        assert handle.step == i
        now = handle.call_counts()
        per_step.append({k: now[k] - before[0][k] for k in now})
        before[0] = now

    out = generate(pipe, family, steps, on_step=on_step)
    handle.unpatch()
    return _graph_breaks(), out, eager, per_step


def test_compiled_blocks_with_a_cache_follow_the_step_and_add_no_graph_break():
    """compile_repeated_blocks (fullgraph=False: TaylorSeer's hook calls a torch.compiler.disable-d function) with
    the patch: the same graph breaks as without na_accel, outputs equal the eager run, and per step the counted
    calls are dense exactly on the dense steps, sparse after, none on predicted steps."""
    dense_steps, steps = 2, 3  # TaylorSeer computes steps 0 and 2, predicts step 1
    breaks_without, _, _, _ = _compiled_cached_run(False, dense_steps, steps)
    breaks_with, out, eager, per_step = _compiled_cached_run(True, dense_steps, steps)
    torch._dynamo.reset()
    assert breaks_with == breaks_without, (breaks_with, breaks_without)  # the reasons, all diffusers'
    assert breaks_without  # (TaylorSeer's hook breaks the graph: the comparison is not vacuous)
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    n = 4  # attention layers of the tiny HunyuanVideo (2 double + 2 single blocks)
    expected = []
    for step in range(steps):
        calls = n if step % 2 == 0 else 0
        sparse = calls if step >= dense_steps else 0
        expected.append({"sparse": sparse, "dense": calls - sparse, "fallback": 0, "compiled": calls})
    assert per_step == expected


def test_compile_regions_fullgraph_patched_pipeline():
    """compile_regions with fullgraph=True (an error on any graph break) on a patched pipeline, through the
    per-block path (Cosmos names no repeated blocks; HunyuanVideo's compile_repeated_blocks with fullgraph is in
    test_patch_compile.py)."""
    torch._dynamo.reset()
    family, steps = "cosmos", 3
    cfg = {"version": 1, "defaults": {"kernel_size": [2, 3, 4], "stride": [2, 1, 2], "dense_steps": 1}}
    pipe = tiny_pipeline(family)
    with na_accel.patched(pipe, config=cfg):
        eager = generate(pipe, family, steps)
    blocks = compile_regions(pipe, backend="eager", fullgraph=True)
    assert blocks and all(b.startswith("transformer.") for b in blocks)
    with na_accel.patched(pipe, config=cfg) as handle:
        out = generate(pipe, family, steps)
        counts = handle.call_counts()
    torch._dynamo.reset()
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    assert counts["sparse"] > 0 and counts["compiled"] == counts["sparse"] + counts["dense"]
