"""One rank of the context-parallel tests (tests/test_context_parallel.py), started by the test as N processes
with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):

    python tests/cp_worker.py OUT_DIR [--heads H] [--cli PROMPTS CONFIG CLI_OUT_DIR]

Each check's result goes to ``OUT_DIR/rank<r>.json`` as ``{name: {"ok": bool, "detail": str}}`` (a crash inside
one check is that check's failure; the others still run). Every rank builds the same tiny fp32 models from the same
seeds and the same inputs, so single-process references computed on each rank are the ground truth.

CPU/gloo workarounds (what the tests therefore do not cover):
* na_accel.enable_context_parallel counts one accelerator while diffusers' enable_parallelism runs on a torch
  without accelerators (diffusers divides by the device count); the device it records is unused by context
  parallelism. Device placement per rank (cuda:LOCAL_RANK, NCCL) is not exercised here.
* Ring attention: no diffusers attention backend returns a logsumexp on the CPU (native SDPA has none, flash and
  cuDNN are CUDA-only), so for the ring check diffusers' native forward op is replaced, in this process only, by an
  exact SDPA that also returns the logsumexp. What is tested is na_accel's side: every planned layer declines with
  the reason and one warning, and the output is exactly diffusers' dense ring output.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

FAMILIES = ("wan", "flux", "hunyuan", "cosmos")
FIRST_LAYER = {"hunyuan": "transformer_blocks.0.attn", "flux": "transformer_blocks.0.attn",
               "cosmos": "transformer_blocks.0.attn1", "wan": "blocks.0.attn1"}  # fmt: skip
WINDOWS = {  # all smaller than the tiny grids: (3, 4, 6) for the video families, (6, 8) for FLUX
    "hunyuan": dict(kernel_size=[2, 3, 3], stride=[1, 2, 3]),
    "flux": dict(kernel_size=[3, 4], stride=[2, 4], dilation=[1, 2]),
    "cosmos": dict(kernel_size=[2, 3, 4], stride=[2, 1, 2]),
    "wan": dict(kernel_size=[3, 2, 3], stride=[1, 2, 3], dilation=[1, 2, 2]),
}
BATCH, TEXT = 2, 32
HUNYUAN_TEXT_LENGTHS = (11, 27)  # valid text tokens of 32 per batch element: padding on both ranks' text chunks
TOL = 1e-4  # fp32; the observed differences are ~1e-6 (summation order of the gathered layouts)


def na_config(family: str) -> dict:
    """GNA everywhere except the first layer (dense by rule: a planned-dense layer under context parallelism)."""
    return {"version": 1, "defaults": {**WINDOWS[family], "backend": "reference"},
            "layers": [{"match": FIRST_LAYER[family], "dense": True}]}  # fmt: skip


def inputs(family: str, seed: int = 0, grid: tuple[int, int, int] = (3, 4, 6)) -> dict:
    """Batch-2 forward kwargs: grid (3, 4, 6) for the video families, (6, 8) for FLUX; 32 text tokens."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    text = r(BATCH, TEXT, 32)
    if family == "flux":
        h, w = 6, 8
        ids = torch.zeros(h * w, 3)
        ids[:, 1] = torch.arange(h * w) // w
        ids[:, 2] = torch.arange(h * w) % w
        return dict(hidden_states=r(BATCH, h * w, 64), encoder_hidden_states=text, pooled_projections=r(BATCH, 32),
                    timestep=torch.full((BATCH,), 0.9), img_ids=ids, txt_ids=torch.zeros(TEXT, 3),
                    guidance=torch.full((BATCH,), 3.5))  # fmt: skip
    f, h, w = grid
    kw = dict(hidden_states=r(BATCH, 16, f, 2 * h, 2 * w), timestep=torch.full((BATCH,), 900.0),
              encoder_hidden_states=text)  # fmt: skip
    if family == "hunyuan":
        mask = torch.zeros(BATCH, TEXT)
        for b, n in enumerate(HUNYUAN_TEXT_LENGTHS):
            mask[b, :n] = 1
        kw.update(encoder_attention_mask=mask, pooled_projections=r(BATCH, 32), guidance=torch.full((BATCH,), 6000.0))
    return kw


def forward(model, kw) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: (v.clone() if torch.is_tensor(v) else v) for k, v in kw.items()}, return_dict=False)[0]


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


class Results:
    def __init__(self) -> None:
        self.items: dict[str, dict] = {}

    def record(self, name: str, ok: bool, detail: str) -> None:
        self.items[name] = {"ok": bool(ok), "detail": detail}

    def run(self, name: str, fn) -> None:
        """Run one check; an exception is that check's failure. Records the wall time as ``<name>:seconds``."""
        t0 = time.perf_counter()
        try:
            fn()
        except Exception:  # noqa: BLE001
            self.record(name, False, traceback.format_exc())
            print(f"[rank {dist.get_rank()}] {name} raised:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        self.items.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 2)


def fallback_reasons(rows) -> list[str]:
    return sorted({r["last_fallback"] for r in rows if r["fallback_calls"]})


# ----------------------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------------------


def check_family(res: Results, family: str, world: int, heads: int) -> None:
    """Ulysses over all ranks vs one process: dense and patched, GNA calls counted, no fallback."""
    import na_accel
    from na_accel.tiny import tiny_transformer

    model = tiny_transformer(family, num_attention_heads=heads)
    kw = inputs(family)
    ref_dense = forward(model, kw)
    with na_accel.patched(model, config=na_config(family)) as handle:
        ref_na = forward(model, kw)
        ref_sparse = sum(r["sparse_calls"] for r in handle.layer_plans())
    if family == "cosmos":  # the user's path: diffusers' enable_parallelism with na_accel's plan as cp_plan=
        from diffusers import ContextParallelConfig

        from na_accel.patching.parallel import _device_count_at_least_one  # CPU-only torch: see the docstring

        plan = na_accel.context_parallel_plan(model)
        with _device_count_at_least_one():
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world), cp_plan=plan)
    else:
        na_accel.enable_context_parallel(model, world)
    cp_dense = forward(model, kw)
    with na_accel.patched(model, config=na_config(family)) as handle:
        cp_na = forward(model, kw)
        rows = handle.layer_plans()
        summary = handle.summary()
    sparse = sum(r["sparse_calls"] for r in rows)
    e_dense, e_na, gna_effect = max_err(cp_dense, ref_dense), max_err(cp_na, ref_na), max_err(ref_na, ref_dense)
    fb = fallback_reasons(rows)
    res.record(f"{family}:dense", e_dense < TOL, f"dense CP vs one process: max abs {e_dense:.2e}")
    res.record(
        f"{family}:gna",
        e_na < TOL and gna_effect > 100 * TOL,
        f"patched CP vs patched one process: max abs {e_na:.2e}; GNA vs dense {gna_effect:.2e}",
    )
    res.record(
        f"{family}:summary",
        sparse == ref_sparse > 0 and not fb and f"context parallel: ulysses_degree {world}, ring_degree 1" in summary,
        f"sparse calls {sparse} (one process: {ref_sparse}), fallbacks {fb}\n{summary}",
    )  # fmt: skip
    if family == "wan":
        # a forward the plan cannot split: one clear line, before any communication
        odd = inputs("wan", grid=(3, 3, 5))
        try:
            forward(model, odd)
            res.record("wan:indivisible-error", False, "no error for 45 tokens over 2 ranks")
        except na_accel.InputError as exc:
            msg = str(exc)
            res.record("wan:indivisible-error", "45 grid tokens not divisible by" in msg and "\n" not in msg, msg)
    if family == "flux":
        # negative control: without de-interleaving the gathered [text_0, image_0, text_1, image_1] order, GNA would
        # see the wrong neighbours (so the equality above does test the order)
        from na_accel.patching import parallel
        from na_accel.patching.families.flux import FluxAdapter

        original = FluxAdapter.ulysses_token_positions
        FluxAdapter.ulysses_token_positions = lambda self, layout, world: None
        parallel._positions.cache_clear()
        try:
            with na_accel.patched(model, config=na_config(family)):
                wrong = forward(model, kw)
        finally:
            FluxAdapter.ulysses_token_positions = original
            parallel._positions.cache_clear()
        e_wrong = max_err(wrong, ref_na)
        res.record("flux:order-needed", e_wrong > 100 * TOL, f"without de-interleaving: max abs {e_wrong:.2e}")
        masked = dict(inputs("flux"))
        keys = torch.ones(BATCH, 1, 1, TEXT + 48, dtype=torch.bool)
        masked["joint_attention_kwargs"] = {"attention_mask": keys}
        try:
            forward(model, masked)
            res.record("flux:mask-error", False, "no error for a joint_attention_kwargs mask under CP")
        except na_accel.InputError as exc:
            res.record("flux:mask-error", "attention_mask" in str(exc), str(exc))


def check_two_transformers(res: Results, world: int, heads: int) -> None:
    """A pipeline with ``transformer`` and ``transformer_2`` (Wan 2.2): both parallel (one mesh), both exact."""
    from types import SimpleNamespace

    import na_accel
    from na_accel.tiny import tiny_transformer

    pipe = SimpleNamespace(transformer=tiny_transformer("wan", seed=1, num_attention_heads=heads),
                           transformer_2=tiny_transformer("wan", seed=2, num_attention_heads=heads))  # fmt: skip
    kw = inputs("wan")
    refs = [forward(m, kw) for m in (pipe.transformer, pipe.transformer_2)]
    na_accel.enable_context_parallel(pipe, world)
    outs = [forward(m, kw) for m in (pipe.transformer, pipe.transformer_2)]
    meshes = [m._parallel_config.context_parallel_config._mesh for m in (pipe.transformer, pipe.transformer_2)]
    errs = [max_err(o, r) for o, r in zip(outs, refs)]
    res.record("wan:two-transformers", max(errs) < TOL and meshes[0] is meshes[1], f"max abs {errs}")


def _sdpa_with_lse(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):  # fmt: skip
    """Exact attention with its fp32 logsumexp on [B, S, H, D] (test-only stand-in for a backend ring attention can
    use on the CPU)."""
    q, k, v = (x.transpose(1, 2).float() for x in (query, key, value))
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf"))
    lse = s.logsumexp(dim=-1)
    out = ((s - lse[..., None]).exp() @ v).transpose(1, 2).to(query.dtype)
    return (out, lse.transpose(1, 2).contiguous()) if return_lse else out


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def check_ring(res: Results, world: int) -> None:
    """ring_degree = world: planned layers run dense with the reason (one warning), equal to dense ring CP."""
    from diffusers import ContextParallelConfig
    from diffusers.models import attention_dispatch as ad

    import na_accel
    from na_accel.tiny import tiny_transformer

    model = tiny_transformer("wan")
    kw = inputs("wan")
    ref_dense = forward(model, kw)
    na_accel.enable_context_parallel(model, ContextParallelConfig(ring_degree=world))
    original = ad._native_attention_forward_op
    ad._native_attention_forward_op = _sdpa_with_lse
    handler = _Count()
    logging.getLogger("na_accel").addHandler(handler)
    try:
        ring_dense = forward(model, kw)
        with na_accel.patched(model, config=na_config("wan")) as handle:
            ring_na = forward(model, kw)
            forward(model, kw)  # a second forward: still one warning
            rows = handle.layer_plans()
            summary = handle.summary()
    finally:
        ad._native_attention_forward_op = original
        logging.getLogger("na_accel").removeHandler(handler)
    fb = fallback_reasons(rows)
    sparse = sum(r["sparse_calls"] for r in rows)
    warnings = [m for m in handler.messages if "ring_degree" in m]
    res.record(
        "ring:dense-with-reason",
        torch.equal(ring_na, ring_dense) and max_err(ring_dense, ref_dense) < TOL and sparse == 0
        and len(fb) == 1 and fb[0].startswith(f"ring_degree={world}") and len(warnings) == 1
        and f"ring_degree {world}: planned layers run dense" in summary,
        f"patched vs dense ring: max abs {max_err(ring_na, ring_dense):.2e}; dense ring vs one process "
        f"{max_err(ring_dense, ref_dense):.2e}; sparse {sparse}; fallbacks {fb}; warnings {warnings}\n{summary}",
    )  # fmt: skip


def check_declined(res: Results, world: int) -> None:
    """ulysses_anything=True (equal splits here, so it runs on gloo): na_accel declines with the reason; the output
    is diffusers' dense Ulysses output and equals one process's dense output."""
    from diffusers import ContextParallelConfig

    import na_accel
    from na_accel.tiny import tiny_transformer

    model = tiny_transformer("wan")
    kw = inputs("wan")
    ref_dense = forward(model, kw)
    na_accel.enable_context_parallel(model, ContextParallelConfig(ulysses_degree=world, ulysses_anything=True))
    cp_dense = forward(model, kw)
    with na_accel.patched(model, config=na_config("wan")) as handle:
        cp_na = forward(model, kw)
        rows = handle.layer_plans()
    fb = fallback_reasons(rows)
    sparse = sum(r["sparse_calls"] for r in rows)
    res.record(
        "declined:ulysses-anything",
        torch.equal(cp_na, cp_dense) and max_err(cp_dense, ref_dense) < TOL and sparse == 0
        and len(fb) == 1 and fb[0].startswith("ulysses_anything=True"),
        f"patched vs dense CP: max abs {max_err(cp_na, cp_dense):.2e}; dense CP vs one process "
        f"{max_err(cp_dense, ref_dense):.2e}; sparse {sparse}; fallbacks {fb}",
    )  # fmt: skip


def check_cli(res: Results, prompts: str, config: str, out: str) -> None:
    """``na-accel generate --ulysses N`` on this rank (the process group is already up: the CLI uses it)."""
    from na_accel.tools.cli import app

    world = str(dist.get_world_size())
    code = app(["generate", prompts, "--model", "tiny:wan", "--config", config, "--ulysses", world, "--out", out,
                "--quiet"], standalone_mode=False)  # fmt: skip
    res.record("cli:exit", code in (0, None), f"exit code {code}")


def main() -> int:
    out_dir = Path(sys.argv[1])
    heads = int(sys.argv[sys.argv.index("--heads") + 1]) if "--heads" in sys.argv else 2
    cli = sys.argv[sys.argv.index("--cli") + 1 : sys.argv.index("--cli") + 4] if "--cli" in sys.argv else None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    logging.getLogger("diffusers").setLevel(logging.ERROR)  # "enable_parallelism is experimental", ...
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    res = Results()
    try:
        for family in FAMILIES:
            res.run(f"{family}:run", lambda f=family: check_family(res, f, world, heads))
        res.run("two:run", lambda: check_two_transformers(res, world, heads))
        res.run("ring:run", lambda: check_ring(res, world))
        res.run("declined:run", lambda: check_declined(res, world))
        if cli:
            res.run("cli:run", lambda: check_cli(res, *cli))
    finally:
        (out_dir / f"rank{rank}.json").write_text(json.dumps(res.items, indent=1))
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
