"""Launch configurations of the kernels: tile shapes, warps, pipeline stages, register budgets.

Every number here was either measured (H200, bf16, head dim 128, 24 heads, ``bench/kernels.py``; the runs and their
tables are in ``bench/NOTES.md`` under the name given) or follows from a hardware limit that is spelled out.
Tiles are given per grid axis and padded to 3-D with leading 1s (see :func:`tiles`).
"""

from __future__ import annotations

from typing import NamedTuple


class GridConfig(NamedTuple):
    """One launch of the Triton grid kernel: query tile and key tile (1 to 3 entries, one per grid axis), warps,
    software-pipeline stages."""

    tq: tuple[int, ...]
    tk: tuple[int, ...]
    num_warps: int
    num_stages: int


def tiles(shape) -> tuple[int, int, int]:
    """A tile shape of a 1-, 2- or 3-D grid as three entries (leading axes get 1)."""
    shape = tuple(shape)
    return (1,) * (3 - len(shape)) + shape


# ---- Triton grid kernel (triton_grid._gna_fwd_kernel) -------------------------------------------------------------

#: Autotune candidates per number of grid axes for 16-bit inputs with head dim <= 128; the first is the default when
#: autotuning is off (``NA_ACCEL_AUTOTUNE=0``), and the one whose key tile sizes the K/V tensor descriptors.
#: Measured on H200 (bench/NOTES.md, config sweeps in sections v1-v4): 3-D, 128 x 128 tiles with 8 warps and 3
#: stages won every case once the full and masked tiles had separate loops (hunyuan-gna 29.84 ms autotuned); the
#: other two candidates are the runner-ups of those sweeps (128 x 64 with 4 warps: fewer live registers; 2 stages:
#: shared memory for two CTAs per SM). 2-D: (16, 8) x (16, 8) with 8 warps won flux4k-na and, autotuned,
#: flux4k-gna (10.29 ms); (16, 16) x (8, 8) won flux4k-gna in an earlier sweep; (8, 16) x (8, 8) is the 4-warp
#: runner-up. 1-D was not timed on its own: the 3-D tile sizes as 1-D tiles. Three candidates per rank keep the
#: first-call autotuning at ~8 s per shape bucket (~25 s with the full sweep).
FAST: dict[int, list[GridConfig]] = {
    3: [
        GridConfig((2, 8, 8), (2, 8, 8), 8, 3),
        GridConfig((2, 8, 8), (1, 8, 8), 4, 3),
        GridConfig((2, 8, 8), (2, 8, 8), 8, 2),
    ],
    2: [
        GridConfig((16, 8), (16, 8), 8, 3),
        GridConfig((16, 16), (8, 8), 8, 3),
        GridConfig((8, 16), (8, 8), 4, 3),
    ],
    1: [
        GridConfig((128,), (128,), 8, 3),
        GridConfig((128,), (64,), 4, 3),
    ],
}

#: Candidates for head dims above 128 or 32-bit inputs ("wide" rows): 64-row tiles and 2 stages so that Q, and K
#: and V per stage, fit the 227 KB of shared memory per CTA on Hopper (head dim 256 in 16 bits: 32 KB per 64-row
#: tile, 160 KB in all; 128-row tiles with 3 stages would need about 448 KB). Not tuned for speed: these shapes are the
#: correctness path (tests/test_triton_gpu.py: head dim 256, fp32).
WIDE: dict[int, list[GridConfig]] = {
    3: [GridConfig((1, 8, 8), (1, 8, 8), 4, 2), GridConfig((1, 8, 8), (1, 4, 8), 4, 2)],
    2: [GridConfig((8, 8), (8, 8), 4, 2), GridConfig((8, 8), (4, 8), 4, 2)],
    1: [GridConfig((64,), (64,), 4, 2), GridConfig((64,), (32,), 4, 2)],
}

#: Fixed configs under the Triton interpreter: the smallest tiles ``tl.dot`` takes (16 rows, 16 keys), so that the
#: tests' tiny grids span many query and key tiles (ragged edges, full and masked tiles). Warps and stages are
#: ignored by the interpreter.
INTERPRETER: dict[int, GridConfig] = {
    3: GridConfig((2, 2, 4), (2, 4, 2), 4, 1),
    2: GridConfig((4, 4), (2, 8), 4, 1),
    1: GridConfig((16,), (16,), 4, 1),
}


def wide(head_dim: int, is_fp32: bool) -> bool:
    """Whether a problem takes the :data:`WIDE` candidates (and never the tensor-descriptor path)."""
    return head_dim > 128 or is_fp32


# ---- Triton text kernel and split combine (triton_text) ------------------------------------------------------------


class TextConfig(NamedTuple):
    """One launch of the dense text kernel: query rows and keys per program, warps, stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


#: 16-bit, head dim <= 128. bench/NOTES.md "Text queries" (results/kernels-h200-2026-11-22-s3b.md, --text-sweep):
#: hunyuan-gna-text's 256 text queries over 115,456 keys took 0.75 ms with 128 x 64, 8 warps, 3 stages, vs 1.10 ms
#: with 64 x 64, 4 warps; 128 x 128 was 0.73 ms but needs 224 KB of shared memory, too close to the 227 KB limit.
TEXT_FAST = TextConfig(128, 64, 8, 3)
#: Head dim > 128 or fp32: the grid kernel's wide tile sizes (shared memory, see :data:`WIDE`); correctness path.
TEXT_WIDE = TextConfig(64, 32, 4, 2)
#: Interpreter: the smallest ``tl.dot`` tiles, so the tests' few text queries and keys span several blocks.
TEXT_INTERPRETER = TextConfig(16, 16, 4, 1)

#: Split the keys (flash-decoding) until there are this many programs per SM. With 256 text queries and 24 heads
#: there are only 48 programs of 128 rows for 132 SMs; hunyuan-gna-text gets 11 splits (528 programs) from this.
TEXT_PROGRAMS_PER_SM = 4
#: ... but give every split at least this many key blocks, so the combine pass stays small next to the splits.
TEXT_MIN_BLOCKS_PER_SPLIT = 8
#: SM count assumed off CUDA (the interpreter): only the number of splits depends on it.
INTERPRETER_SMS = 4

#: Rows (batch, text query, head) per program of the combine kernel: a [32, D] fp32 accumulator per program keeps
#: 4 warps busy at head dim 128; 16 under the interpreter (any small value; it only sets how many programs run).
COMBINE_BLOCK_ROWS = 32
COMBINE_BLOCK_ROWS_INTERPRETER = 16
COMBINE_WARPS = 4


# ---- Gluon kernel (gluon_hopper) -----------------------------------------------------------------------------------


class GluonConfig(NamedTuple):
    """Tiles of the Gluon kernel, padded to 3-D: ``tq`` query tile (128 rows: two consumer warpgroups of 64 rows,
    the M of one Hopper wgmma), ``tk`` key tile (128 keys: one TMA box, the N of the QK^T wgmma)."""

    tq: tuple[int, int, int]
    tk: tuple[int, int, int]


#: Per number of grid axes: the Triton kernel's default tile shapes (above), which the Gluon kernel was built on
#: (bench/NOTES.md v7). Fixed, not autotuned: hunyuan-gna 24.38 ms, flux4k-gna 8.75 ms on H200 (bench/NOTES.md v8).
GLUON: dict[int, GluonConfig] = {
    3: GluonConfig((2, 8, 8), (2, 8, 8)),
    2: GluonConfig((1, 16, 8), (1, 16, 8)),
    1: GluonConfig((1, 1, 128), (1, 1, 128)),
}

#: Depth of the K/V ring in shared memory. H200 (bench/NOTES.md v7): hunyuan-gna 26.5 ms with 2 stages, 27.4 ms with
#: 3 (a third stage also takes 64 KB more shared memory at head dim 128).
GLUON_STAGES = 2

#: Register budgets (registers per thread). A CTA is three warpgroups (384 threads: consumer 0, consumer 1 and the
#: producer, whose single warp is padded to a warpgroup), one CTA per SM (about 160 KB of shared memory). The
#: launch limit is floor(65536 registers / 384 threads) = 170, rounded down to the multiple of 8 that
#: ``setmaxnreg`` works in: 168. At run time ``setmaxnreg`` moves registers between warpgroups within that total
#: (3 x 168 = 504): the producer, which only issues TMA copies and waits on barriers, drops to the minimum of 24,
#: and the two consumers get the rest, (504 - 24) / 2 = 240 each (FA3 uses the same split). At 240 ptxas reports
#: spills of 64-316 bytes per consumer thread in the masked loop, none in the mask-free one (bench/NOTES.md v7, v8).
GLUON_MAXNREG = 168
GLUON_PRODUCER_REGS = 24
GLUON_CONSUMER_REGS = 240

#: Depth of the K/V ring of the 8-bit kernel (:mod:`.gluon_hopper_fp8`); its tiles take half the shared memory of the
#: 16-bit ones (Q 16 KB + 32 KB per stage at head dim 128).
GLUON_FP8_STAGES = 2
#: Q and K of the 8-bit kernel as int8 (True) or e4m3 (False). On the trained model's layers (H200) int8 gives rel. L2
#: 0.023 against bf16 (e4m3: 0.035 on the first call, 0.044 emulated over all); e4m3 is ~7% faster.
FP8_QK_INT8 = True
#: P reaches the PV wgmma of the 8-bit kernel through shared memory (True) or registers (False): see
#: gluon_hopper_fp8._p_operand. Measured on H200: shared memory 10-30% faster (no byte packing).
FP8_P_SMEM = True
#: The two consumer warpgroups of the 8-bit kernel issue their wgmmas in turns (ping-pong, FlashAttention-3), so that
#: one's exp2 runs while the other's products do (gluon_hopper_fp8._my_turn). Measured on H200 (bench/NOTES.md,
#: "ping-pong measured"): no faster (dense 203.2 against 202.5 ms; the same bits); the loop waits on its four
#: warpgroup barriers per key tile, which ping-pong does not remove. Off; kept to measure again once they are gone.
FP8_PINGPONG = False
#: The 8-bit kernel's consumers free a K/V stage once per key tile, K and V of the previous tile together
#: after its PV wait (gluon_hopper_fp8._kv_loop8), instead of K as soon as its QK^T is done and V after its PV: Gluon
#: syncs the warpgroup before each arrive, and the two syncs then sit back to back (3 sync points per tile, not 4).
#: K is held one tile longer, so the ring needs one more stage for the same prefetch distance (GLUON_FP8_STAGES).
#: Off until measured on a GPU: the SASS (compiled here) and the CPU checks only.
FP8_JOINT_RELEASE = False
#: Warps per program of the 8-bit layout step (:func:`.fp8_layout.quantize_tiled`, one 128-token tile of Q, K and V per
#: program). ptxas (sm_90): 207 registers per thread at 8 warps, 122 at 16, 64 at 32 (with 112 bytes of stack), so
#: one program per SM either way; ncu at 8 warps (H200): 1.78 ms for hunyuan's 115,200 tokens x 24 heads, DRAM 37%
#: busy, 2 warps per scheduler, stalls on fixed-latency dependencies (bench/NOTES.md). 16 and 32: not yet measured.
FP8_LAYOUT_WARPS = 8
