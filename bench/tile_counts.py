#!/usr/bin/env python3
"""Key tiles the Gluon kernels visit per problem, counted on the CPU from the window rule (no GPU): the work of a
GNA call is about proportional to them.

Tilings compared (query and key tile ``configs.GLUON``, 128 tokens):

* ``unaligned``: the 16-bit kernel's, key tiles start at each query tile's union start;
* ``aligned``: the 8-bit kernel's, key tiles are the grid's aligned tiles (the union rounded out to them);
* ``offset``: aligned tiles whose boundaries are shifted by a per-axis offset ``o`` (tiles ``[m T - o, (m + 1) T
  - o)``, the same for queries and keys, as one tiled layout needs), the best offset of all ``T0 T1 T2``.

    PYTHONPATH=. python3 bench/tile_counts.py --out bench/results/tile-counts-DATE.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import CASES  # noqa: E402  (bench/kernels.py: the benchmark's problems)

from na_accel.kernels import configs  # noqa: E402
from na_accel.ops.semantics import axis_window, make_params  # noqa: E402


def axis_counts(params, axis: int, tile: int, mode: str, offset: int = 0) -> list[int]:
    """Key tiles along ``axis`` of each query tile along it (a query tile's key tiles are the product over axes)."""
    n = params.grid[axis]
    out = []
    for f in range(-offset, n, tile):
        a, e = max(f, 0), min(f + tile - 1, n - 1)
        lo = int(axis_window(torch.tensor([a]), params, axis)[0])
        hi = int(axis_window(torch.tensor([e]), params, axis)[1])
        if mode == "unaligned":
            out.append((hi - lo + tile) // tile)
        else:
            out.append((hi + offset) // tile - (lo + offset) // tile + 1)
    return out


def key_tiles(params, tiles, mode: str, offsets=(0, 0, 0)) -> int:
    per_axis = [axis_counts(params, ax, tiles[ax], mode, offsets[ax]) for ax in range(3)]
    return sum(math.prod(c) for c in itertools.product(*per_axis))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    tiles = configs.GLUON[3].tq
    rows = {}
    for name, (grid, ks, st, _heads, _text) in CASES.items():
        if len(grid) != 3 or -1 in ks:
            continue
        p = make_params(grid, ks, st)
        unaligned = key_tiles(p, tiles, "unaligned")
        aligned = key_tiles(p, tiles, "aligned")
        best = min((key_tiles(p, tiles, "aligned", o), o) for o in itertools.product(*(range(t) for t in tiles)))
        rows[name] = {"grid": grid, "window": ks, "stride": st, "unaligned": unaligned, "aligned": aligned,
                      "best_offset": best[1], "offset": best[0]}  # fmt: skip
        print(f"{name}: key tiles unaligned {unaligned}, aligned {aligned} ({aligned / unaligned:.2f}x), "
              f"best offset {best[1]}: {best[0]} ({best[0] / unaligned:.2f}x)")
    if args.out:
        meta = {"created": _dt.date.today().isoformat(), "device": "cpu (counted, nothing timed)"}
        args.out.write_text(json.dumps({**meta, "tiles": tiles, "cases": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
