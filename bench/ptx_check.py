#!/usr/bin/env python3
"""Compile every kernel variant of ``na_accel/kernels`` for sm_90 without a GPU and fingerprint its PTX.

A refactor of the kernels must not change what runs on the GPU. This script compiles each variant (Triton grid
kernel, dense text kernel, split combine kernel, Gluon kernel) through the package's own host wrappers, on CPU
tensors, with the Triton wheel of the GPU image and a stub driver, and writes a manifest::

    {"meta": {...}, "variants": {"<variant>/<kernel>": {"sha256": ..., "instructions": N, "shared": bytes}}}

``sha256`` is taken over the PTX with its debug information removed (``.loc`` / ``.file`` directives, ``//``
comments, ``.section .debug*`` blocks and the ``$L__tmp`` / ``$L__func_*`` labels they reference), so a moved line
or a renamed file does not count as a change, while any instruction, register, constant or label that differs does.

How it compiles without a GPU: the Triton wheel given by ``--triton`` (a directory made with ``pip install --no-deps
--target DIR triton==3.6.0``; it bundles ptxas) goes first on ``sys.path``; ``triton.runtime.driver`` is pointed at
:class:`_StubDriver`, whose target is ``GPUTarget("cuda", 90, 32)``; ``JITFunction.run`` is wrapped so that every
launch is a warm-up (compile, no launch). The host wrappers then run unchanged on CPU tensors. Problems are built
here as duck-typed namespaces (the fields of ``na_accel.ops.dispatch.Problem``), so the same script works on the
tree before and after a refactor (``--tree``): it finds the wrappers under either layout.

Usage::

    python bench/ptx_check.py build --tree . --triton /work/triton36 --out bench/results/ptx-sm90-DATE-after.json
    python bench/ptx_check.py compare BEFORE.json AFTER.json      # exit 1 when a variant's PTX differs
    python bench/ptx_check.py list                                 # variant names

``--only REGEX`` compiles a subset; ``--dump DIR`` also writes each stripped PTX (for diffing two trees);
``--jobs N`` compiles in N processes (all 110 variants: 10-17 min with 2 jobs on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
import types
from pathlib import Path

# --------------------------------------------------------------------------------------------------------------
# PTX fingerprint
# --------------------------------------------------------------------------------------------------------------

_DEBUG_LABEL = re.compile(r"^\$L__(tmp|func_begin|func_end)\d+:$")


def strip_debug(ptx: str) -> str:
    """PTX without debug information: ``.loc``/``.file`` lines, ``//`` comments, ``.section .debug*`` blocks and
    the debug-only labels; blank lines dropped, lines right-stripped."""
    out: list[str] = []
    in_section = False  # inside a ".section .debug*" block: skipped up to its closing brace
    depth = 0
    opened = False
    for raw in ptx.splitlines():
        line = raw.split("//", 1)[0].rstrip()
        s = line.strip()
        if in_section:
            depth += s.count("{") - s.count("}")
            opened = opened or "{" in s
            if opened and depth <= 0:
                in_section = False
            continue
        if s.startswith(".section") and ".debug" in s:
            in_section, depth, opened = True, s.count("{") - s.count("}"), "{" in s
            if opened and depth <= 0:
                in_section = False
            continue
        if not s or s.startswith(".loc") or s.startswith(".file") or _DEBUG_LABEL.match(s):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def count_instructions(stripped: str) -> int:
    """Instructions of a stripped PTX: statements ending with ``;`` that are not directives or declarations."""
    n = 0
    for line in stripped.splitlines():
        s = line.strip()
        if s.endswith(";") and not s.startswith("."):
            n += 1
    return n


def fingerprint(ptx: str) -> dict:
    stripped = strip_debug(ptx)
    return {"sha256": hashlib.sha256(stripped.encode()).hexdigest(), "instructions": count_instructions(stripped)}


# --------------------------------------------------------------------------------------------------------------
# Compiling without a GPU
# --------------------------------------------------------------------------------------------------------------


def _setup(triton_dir: str, tree: str, cache_dir: str) -> None:
    """sys.path (the given Triton wheel, then the tree), environment, stub driver and warm-up-only launches."""
    for var in ("TRITON_INTERPRET", "NA_ACCEL_GLUON"):
        os.environ.pop(var, None)
    os.environ["NA_ACCEL_AUTOTUNE"] = "0"  # default (first) launch configs, no autotuning
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    sys.path.insert(0, str(Path(tree).resolve()))
    sys.path.insert(0, str(Path(triton_dir).resolve()))
    for name in [m for m in sys.modules if m == "triton" or m.startswith("triton.") or m.startswith("na_accel")]:
        del sys.modules[name]

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    class _StubDriver(DriverBase):
        """Just enough of a CUDA driver for ``compile``: a Hopper target, device 0, stream 0, no launches."""

        @classmethod
        def is_active(cls):
            return True

        def map_python_to_cpp_type(self, ty: str) -> str:  # pragma: no cover - only launchers use it
            raise NotImplementedError

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_active_torch_device(self):
            import torch

            return torch.device("cpu")

        def get_benchmarker(self):  # pragma: no cover - no timing here
            raise NotImplementedError

        def get_current_device(self):
            return 0

        def set_current_device(self, device):
            pass

        def get_current_stream(self, device=None):
            return 0

        def get_device_capability(self, device=None):
            return (9, 0)

    driver.set_active(_StubDriver())
    orig_run = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        kernel = orig_run(self, *args, grid=grid, warmup=True, **kwargs)
        _COMPILED.append((self.fn.__name__, kernel))
        return kernel

    JITFunction.run = run
    _META["triton"] = triton.__version__
    _META["triton_path"] = str(Path(triton.__file__).parent)


_COMPILED: list = []
_META: dict = {}


def _wrappers():
    """(grid wrapper, Gluon wrapper) of the tree on sys.path: the package layout after the kernels restructure
    (``triton_grid``, ``gluon_hopper``) or the one before it (``gna_fwd``, ``gna_gluon``)."""
    import importlib

    try:
        grid = importlib.import_module("na_accel.kernels.triton_grid")
        gluon = importlib.import_module("na_accel.kernels.gluon_hopper")
        layout = "triton_grid/gluon_hopper"
    except ModuleNotFoundError:
        grid = importlib.import_module("na_accel.kernels.gna_fwd")
        gluon = importlib.import_module("na_accel.kernels.gna_gluon")
        layout = "gna_fwd/gna_gluon"
    _META["layout"] = layout
    _META["grid_module"] = grid.__file__
    _META["gluon_module"] = gluon.__file__
    return grid.gna_forward, gluon.gna_forward_gluon


def _fp8_wrapper():
    """The 8-bit Gluon wrapper of the tree on sys.path, or None where the tree has none."""
    import importlib

    try:
        return importlib.import_module("na_accel.kernels.gluon_hopper_fp8").gna_forward_fp8
    except ModuleNotFoundError:
        return None


# --------------------------------------------------------------------------------------------------------------
# Variants: duck-typed problems (the fields of na_accel.ops.dispatch.Problem)
# --------------------------------------------------------------------------------------------------------------


def _params(grid, ks, st=None, dil=None, causal=None):
    nd = len(grid)
    return types.SimpleNamespace(
        grid=tuple(grid), kernel_size=tuple(ks), stride=tuple(st or (1,) * nd), dilation=tuple(dil or (1,) * nd),
        is_causal=tuple(causal or (False,) * nd), ndim=nd, num_tokens=math.prod(grid),
    )  # fmt: skip


def _problem(grid, ks, st=None, dil=None, causal=None, *, dtype="bfloat16", head_dim=128, heads=2, batch=1,
             extra=0, lengths=False, lse=False, text=0, text_lse=False, layout="contiguous"):  # fmt: skip
    """A problem on CPU tensors. ``layout``: "contiguous" [B, N, heads, D]; "packed" views of [B, N, 3, heads, D]
    (diffusers' fused QKV: the batch folds into the token axis); "unfoldable" views of a longer sequence with
    batch 2 (no 5-D TMA view: pointer path)."""
    import torch

    dt = getattr(torch, dtype)
    params = _params(grid, ks, st, dil, causal)
    n = params.num_tokens
    if layout == "packed":
        q, k, v = torch.zeros(batch, n, 3, heads, head_dim, dtype=dt).unbind(2)
    elif layout == "unfoldable":
        batch = max(batch, 2)
        q, k, v = (torch.zeros(batch, n + 8, heads, head_dim, dtype=dt)[:, :n] for _ in range(3))
    else:
        q, k, v = (torch.zeros(batch, n, heads, head_dim, dtype=dt) for _ in range(3))
    ek = ev = elen = tq = tout = tlse = None
    if extra:
        ek, ev = torch.zeros(batch, extra, 2, heads, head_dim, dtype=dt).unbind(2)
        if lengths:
            elen = torch.full((batch,), extra, dtype=torch.int64)
    if text:
        tq = torch.zeros(batch, text, heads, head_dim, dtype=dt)
        tout = torch.zeros_like(tq)
        if text_lse:
            tlse = torch.zeros(batch, text, heads, dtype=torch.float32)
    out = torch.zeros_like(q)
    lse_t = torch.zeros(batch, n, heads, dtype=torch.float32) if lse else None
    return types.SimpleNamespace(
        query=q, key=k, value=v, params=params, scale=head_dim**-0.5, extra_key=ek, extra_value=ev,
        extra_lengths=elen, text_query=tq, out=out, lse=lse_t, text_out=tout, text_lse=tlse,
    )  # fmt: skip


# per grid rank: a realistic (grid, window, GNA stride) and the same with stride 1 (NA)
_SHAPES = {
    3: ((6, 24, 40), (4, 12, 12), (2, 8, 8)),
    2: ((48, 64), (20, 20), (8, 8)),
    1: ((1000,), (301,), (32,)),
}


def _variants() -> dict:
    """name -> (kind, problem factory, wrapper kwargs); kind is "triton" (grid wrapper), "gluon" or "gluon-fp8"."""
    v: dict = {}

    def add(name, kind, factory, **kw):
        assert name not in v, name
        v[name] = (kind, factory, kw)

    # ---- Triton grid kernel (default launch configs) ----
    for nd, (grid, ks, st) in _SHAPES.items():
        for dt in ("float16", "bfloat16", "float32"):
            add(f"grid-{nd}d-{dt}", "triton", lambda g=grid, k=ks, s=st, d=dt: _problem(g, k, s, dtype=d))
        add(f"grid-{nd}d-bfloat16-na", "triton", lambda g=grid, k=ks: _problem(g, k))
        add(f"grid-{nd}d-bfloat16-packed", "triton", lambda g=grid, k=ks, s=st: _problem(g, k, s, layout="packed"))
        add(f"grid-{nd}d-bfloat16-pointer", "triton",
            lambda g=grid, k=ks, s=st: _problem(g, k, s, layout="unfoldable"))  # fmt: skip
        for dt in ("bfloat16", "float32"):
            add(f"grid-{nd}d-{dt}-extra", "triton", lambda g=grid, k=ks, s=st, d=dt: _problem(g, k, s, dtype=d,
                                                                                            extra=77))  # fmt: skip
            add(f"grid-{nd}d-{dt}-extra-lengths", "triton",
                lambda g=grid, k=ks, s=st, d=dt: _problem(g, k, s, dtype=d, extra=77, lengths=True))  # fmt: skip
            add(f"grid-{nd}d-{dt}-lse", "triton", lambda g=grid, k=ks, s=st, d=dt: _problem(g, k, s, dtype=d,
                                                                                          lse=True))  # fmt: skip
        causal = (True,) + (False,) * (nd - 1)
        dil = (2,) + (1,) * (nd - 1)
        add(f"grid-{nd}d-bfloat16-causal", "triton", lambda g=grid, k=ks, s=st, c=causal: _problem(g, k, s, causal=c))
        add(f"grid-{nd}d-float16-dilation", "triton",
            lambda g=grid, k=ks, d=dil: _problem(g, tuple(x // 2 if i == 0 else x for i, x in enumerate(k)), dil=d,
                                                 dtype="float16"))  # fmt: skip
        add(f"grid-{nd}d-bfloat16-headdim96", "triton", lambda g=grid, k=ks, s=st: _problem(g, k, s, head_dim=96))
        add(f"grid-{nd}d-bfloat16-headdim64", "triton", lambda g=grid, k=ks, s=st: _problem(g, k, s, head_dim=64))
    add("grid-3d-float16-headdim40", "triton", lambda: _problem(*_SHAPES[3], dtype="float16", head_dim=40))
    add("grid-3d-bfloat16-headdim256", "triton", lambda: _problem(*_SHAPES[3], head_dim=256))
    add("grid-3d-float32-headdim256", "triton", lambda: _problem(*_SHAPES[3], head_dim=256, dtype="float32"))
    add("grid-3d-bfloat16-everything", "triton",
        lambda: _problem((6, 24, 40), (2, 6, 12), (2, 2, 8), (2, 2, 1), (True, False, False), head_dim=96, extra=40,
                         lengths=True, lse=True, layout="packed"))  # fmt: skip
    add("grid-2d-float32-everything", "triton",
        lambda: _problem((48, 64), (10, 20), (2, 8), (2, 1), (False, True), head_dim=40, dtype="float32", extra=40,
                         lengths=True, lse=True))  # fmt: skip
    # explicit launch configs: the other autotune candidates of the 16-bit family, 3-D
    for i, cfg in enumerate([{"tq": (2, 8, 8), "tk": (1, 8, 8), "num_warps": 4, "num_stages": 3},
                             {"tq": (2, 8, 8), "tk": (2, 8, 8), "num_warps": 8, "num_stages": 2}]):  # fmt: skip
        add(f"grid-3d-bfloat16-config{i + 1}", "triton", lambda: _problem(*_SHAPES[3]), config=cfg)

    # ---- dense text kernel and split combine (text queries only) ----
    for dt in ("bfloat16", "float32"):
        for splits in (1, 3):
            for extra, lengths, tlse in ((0, False, False), (77, False, True), (77, True, False), (77, True, True)):
                name = f"text-{dt}-splits{splits}" + ("-extra" if extra else "") + ("-lengths" if lengths else "")
                name += "-lse" if tlse else ""
                add(name, "triton", lambda d=dt, e=extra, ln=lengths, tl=tlse: _problem(
                    *_SHAPES[3], dtype=d, extra=e, lengths=ln, text=256, text_lse=tl),
                    text_config={"num_splits": splits}, grid_queries=False)  # fmt: skip
    add("text-float16-headdim96-default-splits", "triton",
        lambda: _problem(*_SHAPES[2], dtype="float16", head_dim=96, extra=20, text=100), grid_queries=False)
    add("text-bfloat16-headdim256-splits2", "triton", lambda: _problem(*_SHAPES[1], head_dim=256, text=64),
        text_config={"num_splits": 2}, grid_queries=False)  # fmt: skip
    # grid + text in one call (the Triton-only path of the backend)
    add("grid-text-3d-bfloat16", "triton",
        lambda: _problem(*_SHAPES[3], extra=256, lengths=True, text=256, layout="packed"))

    # ---- Gluon kernel (grid queries, Hopper) ----
    for nd, (grid, ks, st) in _SHAPES.items():
        for dt in ("float16", "bfloat16"):
            for hd in (64, 128):
                for extra, lengths in ((0, False), (77, False), (77, True)):
                    name = f"gluon-{nd}d-{dt}-d{hd}" + ("-extra" if extra else "") + ("-lengths" if lengths else "")
                    add(name, "gluon", lambda g=grid, k=ks, s=st, d=dt, h=hd, e=extra, ln=lengths: _problem(
                        g, k, s, dtype=d, head_dim=h, extra=e, lengths=ln, layout="packed"))  # fmt: skip
    # a batch that does not fold into the token axis: one launch per batch element (the same kernel)
    add("gluon-3d-bfloat16-d128-unfoldable-extra-lengths", "gluon", lambda: _problem(
        *_SHAPES[3], extra=77, lengths=True, layout="unfoldable"))  # fmt: skip
    # ---- 8-bit Gluon kernel and its layout step (bf16 inputs; trees without gluon_hopper_fp8 skip these) ----
    for nd, (grid, ks, st) in _SHAPES.items():
        for hd in (64, 128):
            for extra, lengths in ((0, False), (77, False), (77, True)):
                name = f"gluon-fp8-{nd}d-d{hd}" + ("-extra" if extra else "") + ("-lengths" if lengths else "")
                add(name, "gluon-fp8", lambda g=grid, k=ks, s=st, h=hd, e=extra, ln=lengths: _problem(
                    g, k, s, head_dim=h, extra=e, lengths=ln, layout="packed"))  # fmt: skip
    return v


# --------------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------------


def _commit(tree: str) -> str:
    """HEAD of ``tree``, marked when ``na_accel/`` has uncommitted changes."""
    import subprocess

    def git(*cmd):
        return subprocess.run(["git", "-C", tree, *cmd], capture_output=True, text=True, check=False).stdout.strip()

    dirty = git("status", "--porcelain", "--", "na_accel")
    return git("rev-parse", "HEAD") + (" (+ uncommitted changes in na_accel/)" if dirty else "")


def _build_parallel(args) -> int:
    """``--jobs N``: N processes compile every N-th variant each; their manifests are merged into ``--out``."""
    import subprocess

    tmp = Path(tempfile.mkdtemp(prefix="ptx_check_shards_"))
    procs = []
    for i in range(args.jobs):
        cmd = [sys.executable, __file__, "build", "--tree", args.tree, "--triton", args.triton,
               "--out", str(tmp / f"{i}.json"), "--shard", f"{i}/{args.jobs}"]  # fmt: skip
        for opt in ("only", "dump", "cache_dir"):
            if getattr(args, opt):
                cmd += [f"--{opt.replace('_', '-')}", getattr(args, opt)]
        procs.append(subprocess.Popen(cmd))
    rcs = [p.wait() for p in procs]
    parts = [json.loads((tmp / f"{i}.json").read_text()) for i in range(args.jobs) if (tmp / f"{i}.json").exists()]
    if not parts:
        return 1
    manifest = {"meta": parts[0]["meta"], "variants": {}}
    manifest["meta"]["compile_s"] = max(p["meta"]["compile_s"] for p in parts)
    manifest["meta"]["jobs"] = args.jobs
    for part in parts:
        manifest["variants"].update(part["variants"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"{len(manifest['variants'])} compiled kernels -> {args.out}")
    return max(rcs)


def build(args) -> int:
    if args.jobs > 1:
        return _build_parallel(args)
    cache = args.cache_dir or tempfile.mkdtemp(prefix="ptx_check_cache_")
    _setup(args.triton, args.tree, cache)
    grid_fn, gluon_fn = _wrappers()
    fp8_fn = _fp8_wrapper()
    import torch

    torch.set_num_threads(1)
    variants = _variants()
    pattern = re.compile(args.only) if args.only else None
    meta = {**_META, "tree": str(Path(args.tree).resolve()), "commit": _commit(args.tree),
            "date": _dt.date.today().isoformat(), "target": "cuda sm_90 (stub driver)", "torch": torch.__version__}
    manifest = {"meta": meta, "variants": {}}
    dump = Path(args.dump) if args.dump else None
    if dump:
        dump.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    failed = 0
    shard, shards = (int(x) for x in args.shard.split("/")) if args.shard else (0, 1)
    for index, (name, (kind, factory, kw)) in enumerate(variants.items()):
        if (pattern and not pattern.search(name)) or index % shards != shard:
            continue
        t0 = time.time()
        _COMPILED.clear()
        try:
            problem = factory()
            if kind == "gluon":
                gluon_fn(problem, warmup_only=True, **kw)
            elif kind == "gluon-fp8":
                if fp8_fn is None:
                    continue
                fp8_fn(problem, warmup_only=True, **kw)
            else:
                grid_fn(problem, **kw)
        except Exception as exc:
            failed += 1
            print(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:2000]}", flush=True)
            manifest["variants"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        seen: dict = {}
        for kernel_name, kernel in _COMPILED:
            seen[kernel_name] = seen.get(kernel_name, 0) + 1
            key = f"{name}/{kernel_name}" + (f"#{seen[kernel_name]}" if seen[kernel_name] > 1 else "")
            ptx = kernel.asm["ptx"]
            rec = fingerprint(ptx)
            rec["shared"] = int(kernel.metadata.shared)
            manifest["variants"][key] = rec
            if dump:
                (dump / (key.replace("/", "__") + ".ptx")).write_text(strip_debug(ptx))
        print(f"{name}: {len(_COMPILED)} kernel(s), {time.time() - t0:.1f} s", flush=True)
    manifest["meta"]["compile_s"] = round(time.time() - t_all, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"{len(manifest['variants'])} compiled kernels ({failed} variants failed) -> {args.out}")
    return 1 if failed else 0


def compare(args) -> int:
    a = json.loads(Path(args.before).read_text())["variants"]
    b = json.loads(Path(args.after).read_text())["variants"]
    same, differ = [], []
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            differ.append(f"{key}: only in {'before' if key in a else 'after'}")
        elif "error" in a[key] or "error" in b[key]:
            differ.append(f"{key}: error before={a[key].get('error')} after={b[key].get('error')}")
        elif a[key]["sha256"] != b[key]["sha256"]:
            differ.append(f"{key}: PTX differs (instructions {a[key]['instructions']} -> {b[key]['instructions']})")
        else:
            same.append(key)
    for line in differ:
        print("DIFF", line)
    print(f"{len(same)} of {len(set(a) | set(b))} compiled kernels identical (PTX without debug info), "
          f"{len(differ)} differ")  # fmt: skip
    return 1 if differ else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile every variant and write a manifest")
    b.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]), help="repository root to compile")
    b.add_argument("--triton", default=os.environ.get("PTX_CHECK_TRITON", "/work/triton36"),
                   help="directory holding the Triton wheel to compile with (pip install --target)")  # fmt: skip
    b.add_argument("--out", required=True, help="manifest path (JSON)")
    b.add_argument("--only", help="regex: compile only the variants whose name matches")
    b.add_argument("--dump", help="also write each variant's stripped PTX into this directory")
    b.add_argument("--cache-dir", help="Triton cache directory (default: a fresh temporary one)")
    b.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    b.add_argument("--shard", help=argparse.SUPPRESS)  # i/n: this process compiles every n-th variant from i
    c = sub.add_parser("compare", help="compare two manifests (exit 1 when any PTX differs)")
    c.add_argument("before")
    c.add_argument("after")
    sub.add_parser("list", help="print the variant names")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        return build(args)
    if args.cmd == "compare":
        return compare(args)
    for name, (kind, _, kw) in _variants().items():
        print(name, kind, kw or "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
