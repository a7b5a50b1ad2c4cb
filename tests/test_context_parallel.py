"""Context parallelism (diffusers' Ulysses) with GNA, on the CPU: unit tests in this process, and one launch of
``tests/cp_worker.py`` as 2 processes with torch.distributed's gloo backend (torchrun's environment: RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT on a free port) that runs every multi-process check once:

* all four tiny families under Ulysses degree 2 (Cosmos set up the user's way: diffusers' ``enable_parallelism``
  with ``cp_plan=na_accel.context_parallel_plan(model)``): dense output and patched output each equal to the
  one-process output (fp32), GNA actually changing the output, the summary showing sparse calls and no fallback;
  FLUX's de-interleaving shown necessary (negative control); a two-transformer pipeline (Wan 2.2) on one mesh;
* ring_degree 2: planned layers dense with the reason and one warning, output exactly diffusers' dense ring output;
* ulysses_anything=True (a declined case): dense, exactly diffusers' dense output, the reason in the summary;
* inputs the plan cannot split (45 tokens over 2 ranks; a FLUX mask): one-line InputError;
* ``na-accel generate --ulysses 2`` on the tiny Wan pipeline: rank 0 alone writes, the sidecar records the run.

CPU/gloo workarounds, and so what these tests do not cover: diffusers' ``enable_parallelism`` divides by the
accelerator count, which is 0 on a CPU-only torch; ``na_accel.enable_context_parallel`` counts one device while it
runs (the device it records is unused by context parallelism), so device placement per rank (``cuda:LOCAL_RANK``,
NCCL, the Triton GNA kernels) is not exercised. Ring attention needs a backend that returns a logsumexp, which none
of diffusers' backends does on the CPU, so the ring check swaps diffusers' native forward op for an exact SDPA with
logsumexp inside the worker. ``ulysses_anything`` with unequal splits fails in gloo's all-gather (diffusers), so the
declined check uses equal splits. Ulysses degree 4 runs only with ``NA_ACCEL_TEST_CP4=1`` (4 processes are slow on
a shared 2-core machine).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

import na_accel
from na_accel import InputError
from na_accel.patching import parallel
from na_accel.patching.families import FAMILIES as ADAPTERS
from na_accel.patching.families.base import Layout
from na_accel.tiny import tiny_transformer

try:
    import cp_worker
except ImportError:  # pragma: no cover - tests/ made a package
    from tests import cp_worker

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "cp_worker.py"
FAMILIES = ("wan", "flux", "hunyuan", "cosmos")
LAUNCH_TIMEOUT_S = 300

WAN_CONFIG = """\
version: 1
model: WanTransformer3DModel
defaults:
  kernel_size: [3, 2, 3]
  stride: [1, 2, 3]
  backend: reference
"""


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


# ----------------------------------------------------------------------------------------------------------------
# Launching the worker
# ----------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, out_dir: Path, *args: str) -> dict[int, dict]:
    """Run ``world`` worker processes (torchrun's environment) and return each rank's results. Any process still
    running at the timeout is killed (only the processes started here); a missing result fails with its log."""
    out_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    path = os.pathsep.join([str(ROOT), base_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    procs, logs = [], []
    try:
        for rank in range(world):
            env = dict(base_env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                       LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                       PYTHONPATH=path, OMP_NUM_THREADS="1")  # fmt: skip
            log = open(out_dir / f"log{rank}.txt", "w")  # noqa: SIM115 - closed below
            logs.append(log)
            cmd = [sys.executable, str(WORKER), str(out_dir), *args]
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT)))
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    results = {}
    for rank in range(world):
        path = out_dir / f"rank{rank}.json"
        if not path.exists():
            tail = (out_dir / f"log{rank}.txt").read_text(errors="replace")[-4000:]
            pytest.fail(f"rank {rank} wrote no results (exit {procs[rank].returncode}); log tail:\n{tail}")
        results[rank] = json.loads(path.read_text())
    return results


def assert_checks(results: dict[int, dict], *names: str) -> None:
    for rank, res in results.items():
        for name in names:
            assert name in res, f"rank {rank}: check {name!r} did not run: {res.get(name.split(':')[0] + ':run')}"
            assert res[name]["ok"], f"rank {rank}: {name}: {res[name]['detail']}"


@pytest.fixture(scope="module")
def ulysses2(tmp_path_factory):
    """One 2-process launch running every check (and the CLI); returns (results per rank, CLI output dir)."""
    tmp = tmp_path_factory.mktemp("cp2")
    prompts, config, cli_out = tmp / "prompts.txt", tmp / "tiny_wan.yaml", tmp / "cli_out"
    prompts.write_text("a red fox in the snow\n", encoding="utf-8")
    config.write_text(WAN_CONFIG, encoding="utf-8")
    results = launch(2, tmp / "run", "--cli", str(prompts), str(config), str(cli_out))
    return results, cli_out


# ----------------------------------------------------------------------------------------------------------------
# Multi-process checks (2 ranks)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_ulysses_equals_one_process(ulysses2, family):
    """Patched + Ulysses 2 == patched on one process (and dense == dense); sparse calls, no fallback."""
    assert_checks(ulysses2[0], f"{family}:dense", f"{family}:gna", f"{family}:summary")


def test_pipeline_with_two_transformers(ulysses2):
    assert_checks(ulysses2[0], "wan:two-transformers")


def test_flux_deinterleaving_is_needed(ulysses2):
    assert_checks(ulysses2[0], "flux:order-needed")


def test_ring_degree_runs_dense_with_reason(ulysses2):
    assert_checks(ulysses2[0], "ring:dense-with-reason")


def test_declined_case_is_dense_and_correct(ulysses2):
    assert_checks(ulysses2[0], "declined:ulysses-anything")


def test_inputs_the_plan_cannot_split_are_refused(ulysses2):
    assert_checks(ulysses2[0], "wan:indivisible-error", "flux:mask-error")


def test_cli_generate_ulysses_writes_from_rank0(ulysses2):
    results, out = ulysses2
    assert_checks(results, "cli:exit")
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".mp4"), files
    meta = json.loads((out / files[0]).read_text())
    assert meta["context_parallel"] == {"ulysses_degree": 2, "world_size": 2, "backend": "gloo"}
    assert "context parallel: ulysses_degree 2, ring_degree 1" in meta["patch"]["summary"]
    assert sum(row["sparse_calls"] for row in meta["patch"]["layers"]) > 0
    assert all(not row["fallback_calls"] for row in meta["patch"]["layers"]), meta["patch"]["summary"]


@pytest.mark.skipif(os.environ.get("NA_ACCEL_TEST_CP4") != "1", reason="4 processes: set NA_ACCEL_TEST_CP4=1")
def test_ulysses4(tmp_path):
    """Degree 4 (tiny models with 4 heads): every check of the 2-rank run except the CLI's."""
    results = launch(4, tmp_path, "--heads", "4")
    names = [n for n in results[0] if n not in ("seconds",) and not n.endswith(":run")]
    assert len(names) >= 15, names
    assert_checks(results, *names)


# ----------------------------------------------------------------------------------------------------------------
# Token order after the all-to-all (each family's adapter)
# ----------------------------------------------------------------------------------------------------------------

LAYOUTS = {
    "wan": Layout((3, 4, 6)),
    "cosmos": Layout((3, 4, 6)),
    "hunyuan": Layout((3, 4, 6), 32, text_first=False),
    "flux": Layout((6, 8), 32, text_first=True),
}


def simulated_gathered_order(layout: Layout, world: int) -> torch.Tensor:
    """Canonical token ids in the order diffusers' Ulysses attention hands them to the forward op: each rank holds
    its equal chunk of the tokens the plan splits (text and grid separately where there is text) in the order the
    processor concatenates them, and the all-to-all concatenates the ranks' local sequences in rank order."""
    ids = torch.arange(layout.seq_len)
    grid, text = ids[layout.grid_slice], ids[layout.text_slice]
    local = []
    for r in range(world):
        g = grid.chunk(world)[r]
        t = text.chunk(world)[r] if layout.num_text else text
        local.append(torch.cat([t, g] if layout.text_first else [g, t]))
    return torch.cat(local)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_token_positions(family, world):
    layout = LAYOUTS[family]
    pos = ADAPTERS[family].ulysses_token_positions(layout, world)
    gathered = simulated_gathered_order(layout, world)
    if family in ("wan", "cosmos"):
        assert pos is None and torch.equal(gathered, torch.arange(layout.seq_len))  # raster order
    else:
        assert torch.equal(gathered[pos], torch.arange(layout.seq_len))
        assert not torch.equal(pos, torch.arange(layout.seq_len))  # really interleaved


# ----------------------------------------------------------------------------------------------------------------
# Plans and hooks (one process, no parallelism)
# ----------------------------------------------------------------------------------------------------------------


def _inputs(family: str) -> dict:
    return cp_worker.inputs(family)


def _fwd(model, kw) -> torch.Tensor:
    return model(**{k: (v.clone() if torch.is_tensor(v) else v) for k, v in kw.items()}, return_dict=False)[0]


def test_plans_of_every_family():
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    for family in FAMILIES:
        model = tiny_transformer(family)
        plan = na_accel.context_parallel_plan(model)
        if family in ("wan", "flux"):  # diffusers' own
            assert plan == type(model)._cp_plan
        else:
            assert type(model)._cp_plan is None  # diffusers ships none: na_accel's
            assert isinstance(plan["proj_out"], ContextParallelOutput)
            first = plan["transformer_blocks.0"]
            assert isinstance(first["hidden_states"], ContextParallelInput) and first["hidden_states"].split_dim == 1
            assert ("encoder_hidden_states" in first) == (family == "hunyuan")
        hooks = len(model._forward_pre_hooks)
        assert na_accel.context_parallel_plan(model) == plan
        assert len(model._forward_pre_hooks) == hooks  # installed once


def test_hunyuan_token_replace_is_refused():
    model = tiny_transformer("hunyuan", image_condition_type="token_replace")
    with pytest.raises(na_accel.UnsupportedModelError, match="token_replace"):
        na_accel.context_parallel_plan(model)


@pytest.mark.parametrize("family", ["hunyuan", "cosmos"])
def test_plan_hooks_change_nothing_without_parallelism(family):
    """The hooks and the Cosmos processor context_parallel_plan installs: bit-identical outputs without a parallel
    config, and na_accel's patch still reaches the (swapped) Cosmos self-attention."""
    kw = _inputs(family)
    plain = tiny_transformer(family)
    prepared = tiny_transformer(family)
    na_accel.context_parallel_plan(prepared)
    if family == "cosmos":
        from na_accel.patching.families.cosmos import context_parallel_processor_class

        block, plain_block = prepared.transformer_blocks[0], plain.transformer_blocks[0]
        assert isinstance(block.attn1.processor, context_parallel_processor_class())
        assert type(block.attn2.processor) is type(plain_block.attn2.processor)  # cross-attention: diffusers' own
    assert torch.equal(_fwd(plain, kw), _fwd(prepared, kw))
    with na_accel.patched(plain, config=cp_worker.na_config(family)):
        ref = _fwd(plain, kw)
    with na_accel.patched(prepared, config=cp_worker.na_config(family)) as handle:
        out = _fwd(prepared, kw)
        rows = handle.layer_plans()
    assert torch.equal(ref, out)
    assert sum(r["sparse_calls"] for r in rows) > 0 and not any(r["fallback_calls"] for r in rows)


@pytest.mark.parametrize("family", ["hunyuan", "cosmos"])
def test_adapter_hooks_are_removable(family):
    model = tiny_transformer(family)
    adapter = ADAPTERS[family]
    processors = [b.attn1.processor for b in model.transformer_blocks] if family == "cosmos" else []
    counts = [len(m._forward_pre_hooks) for m in model.modules()]
    handles = adapter.install_context_parallel_hooks(model)
    assert handles
    for h in handles:
        h.remove()
    assert [len(m._forward_pre_hooks) for m in model.modules()] == counts
    if family == "cosmos":
        assert [b.attn1.processor for b in model.transformer_blocks] == processors


def test_cosmos_plan_after_patch_is_refused():
    model = tiny_transformer("cosmos")
    with na_accel.patched(model):
        with pytest.raises(na_accel.AlreadyPatchedError, match="before patching"):
            na_accel.context_parallel_plan(model)


# ----------------------------------------------------------------------------------------------------------------
# Decisions and errors
# ----------------------------------------------------------------------------------------------------------------


def _cp(ulysses=2, ring=1, anything=False):
    return SimpleNamespace(ulysses_degree=ulysses, ring_degree=ring, ulysses_anything=anything, ring_anything=False)


def test_decline_reasons():
    layout = LAYOUTS["hunyuan"]  # 72 grid + 32 text tokens
    q = torch.zeros(2, 52, 4, 8)  # local: 104 / 2
    mask = torch.ones(2, 1, 1, 52, dtype=torch.bool)
    reason = parallel.ulysses_decline_reason
    assert reason(_cp(), layout, q, None) is None
    assert reason(_cp(), layout, q, mask) is None
    assert reason(_cp(ring=2), layout, q, None).startswith("ring_degree=2")
    assert reason(_cp(ulysses=2, ring=2), layout, q, None).startswith("ring_degree=2")
    assert reason(_cp(anything=True), layout, q, None).startswith("ulysses_anything")
    assert "heads" in reason(_cp(), layout, torch.zeros(2, 52, 3, 8), None)
    assert "not divisible" in reason(_cp(ulysses=2), Layout((3, 4, 6), 31), torch.zeros(2, 52, 4, 8), None)
    assert "local sequence" in reason(_cp(), layout, torch.zeros(2, 40, 4, 8), None)
    assert "[B, 1, 1, S_local]" in reason(_cp(), layout, q, torch.ones(2, 1, 1, 104, dtype=torch.bool))
    assert "boolean" in reason(_cp(), layout, q, mask.float())
    assert "grid-only" in reason(_cp(), Layout((3, 4, 6)), torch.zeros(2, 36, 4, 8), mask[..., :36])


def test_enable_context_parallel_errors():
    model = tiny_transformer("wan", num_attention_heads=3)
    with pytest.raises(InputError) as exc:
        na_accel.enable_context_parallel(model, 2)
    msg = str(exc.value)
    assert "ulysses_degree 2 does not divide the 3 attention heads" in msg and "allowed Ulysses degrees: 1, 3" in msg
    assert "\n" not in msg
    model = tiny_transformer("wan")
    with pytest.raises(InputError, match="torchrun"):  # no process group in this process
        na_accel.enable_context_parallel(model, 2)
    with pytest.raises(InputError, match="at least 2"):
        na_accel.enable_context_parallel(model, 1)
    with pytest.raises(InputError, match="ContextParallelConfig"):
        na_accel.enable_context_parallel(model, "2")
    with pytest.raises(na_accel.UnsupportedModelError):
        na_accel.enable_context_parallel(torch.nn.Linear(2, 2), 2)


def test_cli_ulysses_errors(tmp_path, monkeypatch):
    from na_accel.tools.cli import app

    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)

    def run(*args):
        r = CliRunner().invoke(app, ["generate", str(prompts), "--dense", "--model", "tiny:wan",
                                     "--out", str(tmp_path / "out"), *args])  # fmt: skip
        lines = [ln for ln in r.stderr.strip().splitlines() if ln]
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.exit_code, r.output)
        assert not (tmp_path / "out").exists()
        return lines[0]

    assert "torchrun --nproc-per-node 2" in run("--ulysses", "2")
    assert "at least 2" in run("--ulysses", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert "WORLD_SIZE=3" in run("--ulysses", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    expected = "cuda:<LOCAL_RANK>" if torch.cuda.is_available() else "CUDA is not available"
    assert expected in run("--ulysses", "2", "--device", "cuda:1")
