#!/usr/bin/env python3
"""Static instruction profile of the Gluon kernels' key loops: SASS for sm_90 compiled on the CPU, no GPU needed.

Compiles the 16-bit Gluon kernel and the 8-bit one (``precision="fp8"``) on the same problem with
``bench/ptx_check.py``'s stub driver and the Triton wheel given by ``--triton`` (its bundled ``nvdisasm`` turns the
cubins into SASS), finds every loop (a backward branch) whose body issues at least 4 wgmma instructions, and counts
its instructions by opcode. The mask-free key loop of a consumer is the shortest such loop that takes exp2 of a
score tile and stores nothing: one iteration is QK^T and PV of 64 query rows x 128 keys, per warp. What the counts
mean (issue slots against MMA and MUFU time) is in bench/NOTES.md ("8-bit kernel").

    python bench/sass_profile.py --triton /work/triton36 --out bench/results/sass-loop-sm90-DATE.json
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ptx_check  # noqa: E402

#: one GNA problem of each kernel (grid, window, stride): GNA with tile-aligned windows, head dim 128
PROBLEM = ((4, 16, 16), (3, 9, 9), (2, 8, 8))
_INSTR = re.compile(r"^\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;", re.M)
_LABEL = re.compile(r"^\s*\.(L_x_\d+):", re.M)


def loops(sass: str) -> list[dict]:
    """Every loop of ``sass`` with >= 4 wgmma instructions: its address range, length and opcode counts."""
    instrs, labels, pending = [], {}, None
    for line in sass.splitlines():
        lab = _LABEL.match(line)
        if lab:
            pending = lab.group(1)
            continue
        m = _INSTR.match(line)
        if m:
            addr = int(m.group(1), 16)
            instrs.append((addr, m.group(2)))
            if pending:
                labels[pending], pending = addr, None
    found = []
    for addr, text in instrs:
        target = re.search(r"BRA\s+(?:`\()?\.?(L_x_\d+)", text)
        if not target or labels.get(target.group(1), addr) >= addr:
            continue
        lo = labels[target.group(1)]
        body = [t for a, t in instrs if lo <= a <= addr]
        ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in body)
        if sum(n for op, n in ops.items() if op.endswith("GMMA")) >= 4:
            found.append({"start": hex(lo), "end": hex(addr), "instructions": len(body), "opcodes": dict(ops)})
    return sorted(found, key=lambda r: r["instructions"])


def profile(kernel, nvdisasm: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        sass = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
    found = loops(sass)
    # the key loops: exp2 of a whole score tile (MUFU) and no output stores (STG: a region through the epilogue);
    # the mask-free one is the shortest
    key = [r for r in found if r["opcodes"].get("MUFU", 0) >= 32 and "STG" not in r["opcodes"]]
    return {"mask_free_loop": key[0] if key else None, "loops": found}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--triton", required=True, help="a Triton 3.6 wheel unpacked (pip install --target DIR)")
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]), help="the na_accel tree to compile")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        ptx_check._setup(args.triton, args.tree, cache)
        from na_accel.kernels import gluon_hopper, gluon_hopper_fp8

        nvdisasm = str(Path(ptx_check._META["triton_path"]) / "backends" / "nvidia" / "bin" / "nvdisasm")
        problem = ptx_check._problem(*PROBLEM)
        res = {
            "bf16": profile(gluon_hopper.gna_forward_gluon(problem, warmup_only=True), nvdisasm),
            "fp8": profile(gluon_hopper_fp8.gna_forward_fp8(problem, warmup_only=True), nvdisasm),
        }
    git = subprocess.run(["git", "-C", args.tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    rec = {"what": "SASS opcode counts of the Gluon kernels' key loops (sm_90, compiled on the CPU); the shortest "
           "key loop is the mask-free one, per warp and key tile", "problem": PROBLEM, "target": "sm_90",
           "triton": ptx_check._META["triton"], "tree": args.tree, "commit": git.stdout.strip(),
           "date": _dt.date.today().isoformat(), **res}  # fmt: skip
    args.out.write_text(json.dumps(rec, indent=1) + "\n")
    for name in ("bf16", "fp8"):
        loop = res[name]["mask_free_loop"]
        print(name, loop and loop["instructions"], loop and loop["opcodes"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
