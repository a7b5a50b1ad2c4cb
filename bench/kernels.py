#!/usr/bin/env python3
"""Kernel benchmark: na_accel's GNA kernels vs cuDNN SDPA (dense) and FlexAttention (same mask).

* cuDNN: ``scaled_dot_product_attention`` under ``sdpa_kernel(SDPBackend.CUDNN_ATTENTION)`` on ``[B, H, S, D]``.
* Flex: compiled ``flex_attention`` with the exact mask on inputs already in tiled order (``na_accel.flex.to_tiled``;
  the permute is not timed), block mask built once (compiled ``create_block_mask``: the eager one materialises the
  full mask and does not fit at these sizes).
* Ours: ``na_accel.na_flat`` / ``na_accel.na_joint`` with ``backend="triton"`` on ``[B, N, H, D]`` tensors, everything
  included (validation, custom op, output allocation, autotuned launch).

All in one process, ``triton.testing.do_bench`` medians. One JSON record per case and a Markdown table go to
``<out>/kernels-<gpu>-<date>.json`` / ``.md``. Usage::

    PYTHONPATH=. python3 bench/kernels.py [--cases hunyuan-gna,hunyuan-na] [--quick] [--sweep] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import na_accel  # noqa: E402
from na_accel.kernels import configs, triton_grid, triton_text  # noqa: E402
from na_accel.ops import flex as nflex  # noqa: E402
from na_accel.ops.semantics import make_params  # noqa: E402

# name: grid, kernel_size, stride, heads, text tokens (text queries included)
CASES = {
    "hunyuan-gna": ((30, 48, 80), (18, 24, 24), (16, 8, 8), 24, 0),
    "hunyuan-gna-text": ((30, 48, 80), (18, 24, 24), (16, 8, 8), 24, 256),
    "hunyuan-na": ((30, 48, 80), (18, 24, 24), (1, 1, 1), 24, 0),
    "flux4k-gna": ((256, 256), (80, 80), (16, 16), 24, 0),
    "flux4k-na": ((256, 256), (80, 80), (1, 1), 24, 0),
    "hunyuan720-gna": ((33, 45, 80), (18, 24, 24), (16, 8, 8), 24, 0),
    # Wan2.1 720p, 40 heads. No Wan preset existed when this was written: a GNA window of about the same FLOP bound
    # as the HunyuanVideo cases (~11x), strides tile-aligned in H and W.
    "wan720": ((21, 45, 80), (12, 24, 24), (4, 8, 8), 40, 0),
    "dense-equal": ((30, 48, 80), (-1, -1, -1), (1, 1, 1), 24, 0),
}
HEAD_DIM = 128
#: --fp8-variants: builds of the 8-bit kernel timed side by side, each the configs values it changes ({}: as
#: configured). Measured before and dropped here: P in registers alone (10-30% slower), ping-pong alone (no faster).
FP8_BUILDS = [
    {},
    {"FP8_QK_INT8": False},
    {"GLUON_FP8_STAGES": 3},
    {"FP8_JOINT_RELEASE": True, "GLUON_FP8_STAGES": 3},
    {"FP8_JOINT_RELEASE": True, "GLUON_FP8_STAGES": 4},
    {"FP8_JOINT_RELEASE": True, "GLUON_FP8_STAGES": 4, "FP8_PINGPONG": True},
    {"FP8_JOINT_RELEASE": True, "GLUON_FP8_STAGES": 3, "FP8_P_SMEM": False},
]
DTYPE = torch.bfloat16


@contextlib.contextmanager
def _configured(**values):
    """``configs.NAME = value`` for each keyword inside the block, the old values back after it."""
    saved = {name: getattr(configs, name) for name in values}
    try:
        for name, value in values.items():
            setattr(configs, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(configs, name, value)


def _bench(fn, quick: bool) -> float:
    import triton

    warmup, rep = (10, 40) if quick else (25, 100)
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def _gpu_slug() -> str:
    name = torch.cuda.get_device_name().lower()
    for key in ("h200", "h100", "b200", "a100", "l40s", "l4"):
        if key in name:
            return key
    return name.replace("nvidia", "").strip().replace(" ", "-")


def _pairs(params, n_text: int) -> tuple[float, float]:
    """(attended query-key pairs, all pairs) over grid + text tokens."""
    n = params.num_tokens
    grid_pairs = params.density() * n * n
    attended = grid_pairs + n * n_text + n_text * (n + n_text)
    return attended, float(n + n_text) ** 2


_CREATE_BLOCK_MASK = None


def _flex_block_mask(params, n_text: int, device):
    global _CREATE_BLOCK_MASK
    from torch.nn.attention.flex_attention import create_block_mask

    if _CREATE_BLOCK_MASK is None:
        _CREATE_BLOCK_MASK = torch.compile(create_block_mask)
    n_pad = math.prod(nflex.padded_grid(params))
    mask_mod = nflex.make_mask_mod(params, n_text, None)
    size = n_pad + n_text
    return _CREATE_BLOCK_MASK(mask_mod, 1, None, size, size, device=device, BLOCK_SIZE=nflex.BLOCK)


def _config_label(cfg) -> str:
    tq, tk = configs.tiles(cfg.tq), configs.tiles(cfg.tk)
    return f"tq={'x'.join(map(str, tq))} tk={'x'.join(map(str, tk))} w{cfg.num_warps} s{cfg.num_stages}"


def _best_config(ndim: int) -> str | None:
    """The launch config the autotuner picked for the last shape of ``ndim`` axes (16-bit family), if any."""
    cfg = triton_grid.tuned_config(ndim)
    return None if cfg is None else _config_label(cfg)


def run_case(name: str, args) -> dict:
    grid, ks, st, heads, n_text = CASES[name]
    params = make_params(grid, ks, st)
    n = params.num_tokens
    dev = torch.device("cuda")
    scale = HEAD_DIM**-0.5
    torch.manual_seed(0)
    x = [torch.randn(1, n + n_text, heads, HEAD_DIM, device=dev, dtype=DTYPE) for _ in range(3)]
    rec: dict = {"case": name, "grid": list(grid), "kernel_size": list(params.kernel_size), "stride": list(st),
                 "heads": heads, "head_dim": HEAD_DIM, "dtype": str(DTYPE).replace("torch.", ""),
                 "text_tokens": n_text}  # fmt: skip
    attended, total = _pairs(params, n_text)
    rec["flop_bound"] = total / attended
    flops = 4.0 * HEAD_DIM * heads * attended

    # ---- ours (everything included) ----
    if n_text:
        ours = functools.partial(na_accel.na_joint, *x, grid, n_text, ks, st, backend="triton")
    else:
        ours = functools.partial(na_accel.na_flat, *x, grid, ks, st, backend="triton")

    t0 = time.time()
    out = ours()
    torch.cuda.synchronize()
    rec["first_call_s"] = round(time.time() - t0, 2)
    rec["ms"] = _bench(ours, args.quick)
    rec["tflops"] = flops / rec["ms"] * 1e-9
    rec["config"] = _best_config(params.ndim)
    from na_accel.ops.dispatch import get_backend

    rec["path"] = getattr(get_backend("triton"), "last_path", None)
    if rec["path"] == "gluon" and not args.no_triton_alone:
        # the same call with the Gluon kernel turned off: the Triton kernel alone, side by side
        os.environ["NA_ACCEL_GLUON"] = "0"
        try:
            out_t = ours()
            rec["triton_kernel_ms"] = _bench(ours, args.quick)
            rec["rel_diff_gluon_vs_triton"] = float((out.float() - out_t.float()).norm() / out_t.float().norm())
        finally:
            os.environ.pop("NA_ACCEL_GLUON", None)
        rec["config"] = "gluon ws; triton " + (_best_config(params.ndim) or "-")
        print(f"[{name}] triton kernel alone {rec['triton_kernel_ms']:.3f} ms, rel diff gluon vs triton "
              f"{rec['rel_diff_gluon_vs_triton']:.2e}", flush=True)  # fmt: skip
    print(f"[{name}] ours {rec['ms']:.3f} ms ({rec['tflops']:.0f} TFLOP/s eff), first call {rec['first_call_s']} s, "
          f"config {rec['config']}", flush=True)  # fmt: skip

    if args.fp8:
        rec.update(_fp8(name, params, x, n_text, out, ours, args))

    if params.is_dense and not n_text:
        # what a user gets for a dense problem: auto routes it to SDPA (cuDNN first); "ours" above is the kernel
        auto = functools.partial(na_accel.na_flat, *x, grid, ks, st)
        auto()
        rec["auto_ms"] = _bench(auto, args.quick)
        print(f"[{name}] auto (sdpa) {rec['auto_ms']:.3f} ms", flush=True)

    if args.sweep:
        rec["sweep"] = _sweep(name, params, x, n_text, args)
    if args.text_sweep and n_text:
        rec["text_sweep"] = _text_sweep(name, params, x, n_text)

    # ---- FlexAttention (kernel only, tiled order, same mask) ----
    rec["flex_ms"] = None
    if not args.no_flex:
        try:
            t0 = time.time()
            qt, kt, vt = (nflex.to_tiled(y[:, :n], params) for y in x)
            if n_text:
                qt = torch.cat([qt, x[0][:, n:].transpose(1, 2)], 2)
                kt = torch.cat([kt, x[1][:, n:].transpose(1, 2)], 2)
                vt = torch.cat([vt, x[2][:, n:].transpose(1, 2)], 2)
            bm = _flex_block_mask(params, n_text, dev)
            fn = nflex._compiled_flex()
            fout = fn(qt, kt, vt, block_mask=bm, scale=scale)
            torch.cuda.synchronize()
            rec["flex_setup_s"] = round(time.time() - t0, 1)
            rec["flex_ms"] = _bench(lambda: fn(qt, kt, vt, block_mask=bm, scale=scale), args.quick)
            n_pad = math.prod(nflex.padded_grid(params))
            fo = nflex.from_tiled(fout[:, :, :n_pad], params)
            if n_text:
                fo = torch.cat([fo, fout[:, :, n_pad:].transpose(1, 2)], 1)
            rec["rel_diff_vs_flex"] = float((out.float() - fo.float()).norm() / fo.float().norm())
            print(f"[{name}] flex {rec['flex_ms']:.3f} ms (setup {rec['flex_setup_s']} s), "
                  f"rel diff ours vs flex {rec['rel_diff_vs_flex']:.2e}", flush=True)  # fmt: skip
            del qt, kt, vt, fout, fo, bm
        except Exception as exc:  # keep the other numbers
            print(f"[{name}] flex failed: {type(exc).__name__}: {exc}", flush=True)
            rec["flex_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"

    # ---- cuDNN SDPA (dense) ----
    rec["cudnn_ms"] = None
    if not args.no_cudnn:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        qd, kd, vd = (y.transpose(1, 2).contiguous() for y in x)
        try:
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                f = lambda: torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, scale=scale)  # noqa: E731
                f()
                rec["cudnn_ms"] = _bench(f, args.quick)
            print(f"[{name}] cudnn {rec['cudnn_ms']:.3f} ms", flush=True)
        except Exception as exc:
            print(f"[{name}] cudnn failed: {type(exc).__name__}: {exc}", flush=True)
            rec["cudnn_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        del qd, kd, vd

    rec["speedup_vs_cudnn"] = rec["cudnn_ms"] / rec["ms"] if rec["cudnn_ms"] else None
    if rec.get("fp8_ms") and rec["cudnn_ms"]:
        rec["fp8_speedup_vs_cudnn"] = rec["cudnn_ms"] / rec["fp8_ms"]
    if rec.get("sage_ms") and rec["cudnn_ms"]:
        rec["sage_speedup_vs_cudnn"] = rec["cudnn_ms"] / rec["sage_ms"]
    rec["speedup_vs_flex"] = rec["flex_ms"] / rec["ms"] if rec["flex_ms"] else None
    if rec.get("auto_ms") and rec["cudnn_ms"]:
        rec["auto_speedup_vs_cudnn"] = rec["cudnn_ms"] / rec["auto_ms"]
    del ours, x, out
    gc.collect()
    torch.cuda.empty_cache()
    return rec


def _accuracy(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Cosine similarity (per token and head, the worst and the mean) and relative L2 error of ``out`` vs ``ref``."""
    o, r = out.float(), ref.float()
    cos = torch.nn.functional.cosine_similarity(o, r, dim=-1)
    return {"cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
            "cos_all": float(torch.nn.functional.cosine_similarity(o.flatten(), r.flatten(), dim=0)),
            "rel_l2": float((o - r).norm() / r.norm())}  # fmt: skip


def _fp8(name, params, x, n_text, out_bf16, ours, args) -> dict:
    """The same call with precision="fp8": time (the layout step included), the layout step alone, accuracy vs the
    bf16 output; on dense problems also SageAttention 1.0.6 (INT8 QK, per block, smoothed K) when it is installed."""
    from na_accel.kernels import fp8_layout
    from na_accel.ops.dispatch import Problem, get_backend
    from na_accel.ops.precision import fp8_fallbacks

    rec: dict = {}
    ours8 = functools.partial(ours, precision="fp8")
    t0 = time.time()
    out8 = ours8()
    torch.cuda.synchronize()
    rec["fp8_first_call_s"] = round(time.time() - t0, 2)
    rec["fp8_path"] = getattr(get_backend("triton"), "last_path", None)
    rec["fp8_fallbacks"] = fp8_fallbacks()
    rec["fp8_ms"] = _bench(ours8, args.quick)
    rec["fp8_vs_bf16"] = _accuracy(out8, out_bf16)
    n = params.num_tokens
    q, k, v = (y[:, :n] for y in x)
    ek, ev = ((y[:, n:] for y in x[1:]) if n_text else (None, None))
    p = Problem(q, k, v, params, HEAD_DIM**-0.5, ek, ev, None, None, torch.empty_like(q), None, None, None)
    tile = configs.GLUON[params.ndim].tq
    grid3 = configs.tiles(params.grid)
    rec["fp8_layout_ms"] = _bench(lambda: fp8_layout.quantize_tiled(p, tile, grid3, 1.0), args.quick)
    kmean = fp8_layout.smoothing_mean(k)
    rec["fp8_layout_parts_ms"] = {  # the passes before the layout kernel; the kernel takes the rest
        "k_mean": _bench(lambda: fp8_layout.smoothing_mean(k), args.quick),
        "k_scale": _bench(lambda: fp8_layout.key_scale(k, kmean, ek, None, fp8_layout.qk_max(configs.FP8_QK_INT8)),
                          args.quick),
        "v_scale": _bench(lambda: fp8_layout.value_scale(v, ev), args.quick),
    }
    if args.fp8_layout_warps:  # the layout step alone at each warp count (configs.FP8_LAYOUT_WARPS)
        rec["fp8_layout_ms_by_warps"] = {}
        for w in args.fp8_layout_warps:
            with _configured(FP8_LAYOUT_WARPS=w):
                ms = _bench(lambda: fp8_layout.quantize_tiled(p, tile, grid3, 1.0), args.quick)
            rec["fp8_layout_ms_by_warps"][w] = ms
            print(f"[{name}] fp8 layout step at {w} warps: {ms:.3f} ms", flush=True)
    if args.fp8_variants:  # the 8-bit kernel's build switches (configs.FP8_*), side by side in this run
        rec["fp8_variants"] = []
        for build in FP8_BUILDS:
            with _configured(**build):
                o = ours8()
                v = {"build": build, "ms": _bench(ours8, args.quick), **_accuracy(o, out_bf16)}
            rec["fp8_variants"].append(v)
            print(f"[{name}] fp8 variant {v}", flush=True)
    print(f"[{name}] fp8 {rec['fp8_ms']:.3f} ms (layout step {rec['fp8_layout_ms']:.3f} ms of which "
          f"{ {a: round(b, 3) for a, b in rec['fp8_layout_parts_ms'].items()} }), path {rec['fp8_path']},"
          f" first call {rec['fp8_first_call_s']} s, vs bf16 {rec['fp8_vs_bf16']}", flush=True)  # fmt: skip
    if params.is_dense and not n_text:
        try:
            from sageattention import sageattn
        except ImportError as exc:
            rec["sage_error"] = f"{type(exc).__name__}: {exc}"
        else:
            import importlib.metadata as md

            rec["sage_version"] = md.version("sageattention")
            f = lambda: sageattn(x[0], x[1], x[2], tensor_layout="NHD", is_causal=False)  # noqa: E731
            so = f()
            rec["sage_ms"] = _bench(f, args.quick)
            rec["sage_vs_bf16"] = _accuracy(so, out_bf16)
            print(f"[{name}] sageattention {rec['sage_version']} {rec['sage_ms']:.3f} ms, vs bf16 "
                  f"{rec['sage_vs_bf16']}", flush=True)  # fmt: skip
    return rec


def _sweep(name, params, x, n_text, args) -> list:
    """Time each fixed candidate config of the kernel (kernel path only, no text)."""
    from na_accel.ops.dispatch import Problem

    n = params.num_tokens
    q, k, v = (y[:, :n] for y in x)
    out = torch.empty_like(q)
    p = Problem(q, k, v, params, HEAD_DIM**-0.5, None, None, None, None, out, None, None, None)
    variants = []
    for cfg in configs.FAST[params.ndim]:
        variants.append((_config_label(cfg), functools.partial(triton_grid.gna_forward, p, config=cfg._asdict())))
    return _time_variants(f"[{name}] sweep", variants)


def _time_variants(prefix: str, variants) -> list:
    """Run and time each ``(label, fn)``; a variant that fails (compile error, shared memory) is reported, skipped."""
    res = []
    for label, fn in variants:
        try:
            fn()
            ms = _bench(fn, True)
        except Exception as exc:
            print(f"{prefix} {label}: failed {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            continue
        print(f"{prefix} {label}: {ms:.3f} ms", flush=True)
        res.append({"config": label, "ms": ms})
    return res


# (block_m, block_n, num_warps, num_stages) of the dense text-query kernel; splits follow from the block sizes
TEXT_CONFIGS = [(64, 64, 4, 3), (64, 128, 4, 2), (64, 128, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3)]


def _text_sweep(name, params, x, n_text) -> list:
    """Time the text-query path alone (Triton text kernel + split combine) for each of TEXT_CONFIGS."""
    from na_accel.ops.dispatch import Problem

    n = params.num_tokens
    q, k, v = (y[:, :n] for y in x)
    tq, ek, ev = (y[:, n:] for y in x)
    p = Problem(q, k, v, params, HEAD_DIM**-0.5, ek, ev, None, tq, torch.empty_like(q), None, torch.empty_like(tq),
                None)  # fmt: skip
    variants = [("default", functools.partial(triton_text.text_forward, p))]
    for bm, bn, warps, stages in TEXT_CONFIGS:
        cfg = {"block_m": bm, "block_n": bn, "num_warps": warps, "num_stages": stages}
        variants.append((f"bm{bm} bn{bn} w{warps} s{stages}", functools.partial(triton_text.text_forward, p, cfg)))
    return _time_variants(f"[{name}] text", variants)


def _markdown(records: list, meta: dict) -> str:
    lines = [
        f"# Kernel benchmark: {meta['gpu']} ({meta['gpu_name']}), torch {meta['torch']}, triton {meta['triton']}, "
        f"{meta['date']}",
        "",
        "bf16, batch 1, head dim 128. Ours through `na_accel.ops.functional` (everything included); Flex kernel only "
        "on tiled inputs; cuDNN dense SDPA. Speedups are ratios within this run.",
        "",
        "| case | grid | kernel | stride | heads | text | ours ms | cuDNN ms | Flex ms | vs cuDNN | vs Flex "
        "| FLOP bound | eff. TFLOP/s | config |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in records:
        lines.append(
            f"| {r['case']} | {tuple(r['grid'])} | {tuple(r['kernel_size'])} | {tuple(r['stride'])} | {r['heads']} | "
            f"{r['text_tokens']} | {f(r['ms'], '.2f')} | {f(r['cudnn_ms'], '.2f')} | {f(r['flex_ms'], '.2f')} | "
            f"{f(r['speedup_vs_cudnn'], '.2f')}x | {f(r['speedup_vs_flex'], '.2f')}x | {r['flop_bound']:.1f}x | "
            f"{f(r.get('tflops'), '.0f')} | {r.get('config') or '-'} |"
        )
    if any(r.get("fp8_ms") for r in records):
        lines += ["", "8-bit (`precision=\"fp8\"`, layout step included) against bf16 (ours) and cuDNN bf16, accuracy "
                  "vs our bf16 output:", "",
                  "| case | bf16 ms | fp8 ms | layout step ms | fp8 vs bf16 | fp8 vs cuDNN | cos (min) | rel L2 "
                  "| SageAttention ms | Sage vs cuDNN | Sage cos (min) / rel L2 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in records:
            if not r.get("fp8_ms"):
                continue
            a = r["fp8_vs_bf16"]
            sa = r.get("sage_vs_bf16")
            lines.append(
                f"| {r['case']} | {r['ms']:.2f} | {r['fp8_ms']:.2f} | {r['fp8_layout_ms']:.2f} | "
                f"{r['ms'] / r['fp8_ms']:.2f}x | {f(r.get('fp8_speedup_vs_cudnn'), '.2f')}x | {a['cos_min']:.5f} | "
                f"{a['rel_l2']:.4f} | {f(r.get('sage_ms'), '.2f')} | {f(r.get('sage_speedup_vs_cudnn'), '.2f')}x | "
                f"{'-' if not sa else format(sa['cos_min'], '.5f') + ' / ' + format(sa['rel_l2'], '.4f')} |"
            )
    for r in records:
        if r.get("triton_kernel_ms"):
            lines.append(
                f"\n{r['case']}: Gluon kernel {r['ms']:.2f} ms, Triton kernel alone {r['triton_kernel_ms']:.2f} ms "
                f"({r['triton_kernel_ms'] / r['ms']:.2f}x), rel. diff {r['rel_diff_gluon_vs_triton']:.1e}."
            )
        if r.get("text_sweep"):
            cells = ", ".join(f"{s['config']} {s['ms']:.3f}" for s in r["text_sweep"])
            lines.append(f"\n{r['case']}: text-query path alone, ms: {cells}.")
        if r.get("auto_ms"):
            lines.append(
                f"\n{r['case']} through `auto` (routed to SDPA, cuDNN first): {r['auto_ms']:.2f} ms, "
                f"{f(r.get('auto_speedup_vs_cudnn'), '.2f')}x cuDNN; the row above is our kernel (backend='triton')."
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated case names: " + ", ".join(CASES))
    ap.add_argument("--quick", action="store_true", help="shorter timing (do_bench warmup 10 ms, rep 40 ms)")
    ap.add_argument("--sweep", action="store_true", help="also time every fixed candidate config of our kernel")
    ap.add_argument("--text-sweep", action="store_true", help="time the text-query path alone per config")
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    ap.add_argument("--no-cudnn", action="store_true", help="skip cuDNN SDPA")
    ap.add_argument("--no-triton-alone", action="store_true", help="skip the same call with NA_ACCEL_GLUON=0")
    ap.add_argument("--fp8", action="store_true",
                    help="also precision='fp8' (accuracy vs bf16, layout step alone; SageAttention on dense cases)")
    ap.add_argument("--fp8-variants", action="store_true",
                    help="with --fp8: also time each build of the 8-bit kernel (int8 / e4m3 Q-K, P via shared memory"
                    " / registers)")
    ap.add_argument("--fp8-layout-warps", type=lambda x: [int(w) for w in x.split(",")], default=[],
                    metavar="W1,W2", help="with --fp8: also time the layout step alone at each of these warp counts")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output directory")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/kernels.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    date = _dt.date.today().isoformat()
    meta = {"gpu": _gpu_slug(), "gpu_name": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "date": date}  # fmt: skip
    print(f"# {meta}", flush=True)
    records = []
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"kernels-{meta['gpu']}-{date}{('-' + args.tag) if args.tag else ''}"
    for name in names:
        t0 = time.time()
        rec = {**{k: meta[k] for k in ("gpu", "torch", "triton", "date")}, **run_case(name, args)}
        rec["case_wall_s"] = round(time.time() - t0, 1)
        records.append(rec)
        (out_dir / f"{stem}.json").write_text(json.dumps(records, indent=1))
        (out_dir / f"{stem}.md").write_text(_markdown(records, meta))
    print(_markdown(records, meta), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRITON_PRINT_AUTOTUNING", "1")
    raise SystemExit(main())
