"""``na-accel tune`` (na_accel.quality.{ladder, choose, tune}, na_accel.tools.tune): the ladder's kept mass against
brute-force softmax, the probe on dense calls, the chooser on synthetic locality, the YAML round trip, and the
command line end to end on a tiny random-weight model (and its errors for impossible budgets)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import na_accel
from na_accel.errors import InputError
from na_accel.ops.semantics import make_params
from na_accel.patching.config import load_config
from na_accel.patching.families.base import Layout
from na_accel.quality.choose import choose, choose_per_head, sweep
from na_accel.quality.ladder import Ladder, LadderProbe, LocalityTable, ladder_kept_mass
from na_accel.quality.locality import LocalityProbe, kept_mass_per_query, sample_queries
from na_accel.quality.tune import PROFILE_CONFIG, check_round_trip, config_yaml, plan_config
from na_accel.tiny import default_generation_kwargs, tiny_pipeline
from na_accel.tools.cli import app

try:
    import bruteforce as bf
except ImportError:  # pragma: no cover - tests/ made a package
    from tests import bruteforce as bf

runner = CliRunner()


# ------------------------------------------------------------------------------------------------------------
# The ladder's kept mass
# ------------------------------------------------------------------------------------------------------------


# grid, text tokens, text lengths (None: all valid), text first, ladder tile
CASES = [
    ((3, 5, 7), 4, [2, 4], False, (2, 2, 4)),
    ((4, 6), 3, [0, 3], True, (2, 4)),
    ((11,), 0, None, False, (4,)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_ladder_kept_mass_matches_bruteforce(case):
    grid, num_text, lengths, text_first, tile = case
    layout = Layout(grid, num_text, text_first)
    gen = torch.Generator().manual_seed(len(grid))
    q, k = (torch.randn(2, layout.seq_len, 3, 8, generator=gen, dtype=torch.float64) * 2 for _ in range(2))
    ladder = Ladder(grid, fractions=(0.25, 0.5, 0.75, 1.0), tile=tile)
    assert len({(c.kernel_size, c.stride) for c in ladder.candidates}) == len(ladder)
    assert any(c.stride_kind == "tile" for c in ladder.candidates)
    assert all(c.kernel_size != grid for c in ladder.candidates)  # dense is not a candidate
    text_lengths = None if lengths is None else torch.tensor(lengths)
    queries = sample_queries(grid, 9, seed=1)
    got = ladder_kept_mass(q, k, layout, ladder, queries, 0.6, text_lengths, chunk_bytes=1)  # one row per chunk
    assert got.shape == (2, 9, len(ladder), 3)
    tiles = [c for c, cand in enumerate(ladder.candidates) if cand.stride_kind == "tile"]
    checked = sorted(set(range(0, len(ladder), max(1, len(ladder) // 8))) | set(tiles[:: max(1, len(tiles) // 4)]))
    for c in checked:  # a spread of the ladder (the brute-force mask is slow), both stride kinds
        cand = ladder.candidates[c]
        expected = bf.kept_mass(q, k, grid, cand.kernel_size, cand.stride, 1, num_text, lengths, text_first, 0.6)
        torch.testing.assert_close(got[:, :, c].double(), expected[:, queries], rtol=1e-6, atol=1e-7)
        assert cand.density == pytest.approx(make_params(grid, cand.kernel_size, cand.stride).density())
    total = ladder_kept_mass(q, k, layout, ladder, queries, 0.6, text_lengths, reduce=True)
    torch.testing.assert_close(total, got.sum(dim=(0, 1)), rtol=1e-12, atol=1e-12)


def test_ladder_float32_matches_kept_mass_per_query():
    grid = (9, 16, 16)
    layout = Layout(grid, 16)
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, layout.seq_len, 2, 32, generator=gen) * 3 for _ in range(2))
    lengths = torch.tensor([5])
    ladder = Ladder(grid)
    queries = sample_queries(grid, 64, seed=0)
    got = ladder_kept_mass(q, k, layout, ladder, queries, None, lengths)
    for c in (0, len(ladder) // 2, len(ladder) - 1):
        ref = kept_mass_per_query(q, k, layout, ladder.candidates[c].params(grid), None, lengths, queries=queries)
        torch.testing.assert_close(got[:, :, c], ref, rtol=1e-5, atol=2e-6)


# ------------------------------------------------------------------------------------------------------------
# The probe on dense calls
# ------------------------------------------------------------------------------------------------------------


class _Keep:
    observe_dense = True

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, call):
        self.calls.append(call)
        self.inner(call)


def test_ladder_probe_sees_dense_calls_and_leaves_outputs_unchanged():
    pipe = tiny_pipeline("hunyuan")
    kw = {**default_generation_kwargs("hunyuan"), "num_inference_steps": 2}

    def generate():
        return pipe("a red circle", output_type="latent", generator=torch.Generator().manual_seed(0), **kw).frames

    plain = generate()
    probe = LadderProbe(queries=16)
    keep = _Keep(probe)
    with na_accel.patched(pipe, PROFILE_CONFIG) as handle:
        handle.set_probe(keep)
        profiled = generate()
        handle.set_probe(LocalityProbe())  # a probe without observe_dense sees no dense call
        assert torch.equal(generate(), plain)
        assert handle.call_counts()["sparse"] == 0
    assert torch.equal(profiled, plain)
    table = probe.table()
    assert table.steps == [0, 1] and len(table.layers) == 4 and table.calls == len(keep.calls) == 8
    assert table.kept.shape == (4, 2, len(table.ladder), pipe.transformer.config.num_attention_heads)
    assert all(c.params is None for c in keep.calls)
    call = keep.calls[-1]
    sample = sample_queries(call.layout.grid, 16, seed=0)
    direct = ladder_kept_mass(call.query, call.key, call.layout, table.ladder, sample, call.scale,
                              call.text_lengths).mean(dim=(0, 1))  # fmt: skip
    li, si = table.layers.index(call.layer), table.steps.index(call.step)
    torch.testing.assert_close(table.kept[li, si].float(), direct, rtol=1e-5, atol=1e-6)
    assert ((table.kept > 0) & (table.kept <= 1 + 1e-6)).all()


# ------------------------------------------------------------------------------------------------------------
# The chooser on synthetic locality
# ------------------------------------------------------------------------------------------------------------

DENSITY = torch.tensor([0.1, 0.25, 0.5, 0.25])  # candidate 3 costs what candidate 1 costs


def synthetic() -> torch.Tensor:
    """3 layers x 6 steps x 4 candidates: layer 0 local, layer 1 needs the wide window, layer 2 not local at all;
    steps 0 and 1 keep little mass everywhere."""
    kept = torch.zeros(3, 6, 4, dtype=torch.float64)
    kept[0] = torch.tensor([0.92, 0.96, 0.99, 0.95])
    kept[1] = torch.tensor([0.60, 0.80, 0.93, 0.85])
    kept[2] = torch.tensor([0.30, 0.50, 0.70, 0.40])
    kept[:, :2] *= 0.5
    return kept


def test_choose_cheapest_window_meeting_the_threshold_and_dense_steps():
    kept = synthetic()
    c = choose(kept, DENSITY, None, 0.9)
    assert c.dense_steps == 2  # the low-locality first steps run dense
    assert c.layers == (0, 2, None)  # cheapest clearing 0.9; layer 2 dense (nothing clears it)
    expected = (2 * 3 + 4 * (0.1 + 0.5 + 1.0)) / (6 * 3)
    assert c.cost == pytest.approx(expected) and c.speedup == pytest.approx(1 / expected)
    assert c.lowest_kept == pytest.approx(0.92)
    # a lower threshold: layer 1 takes the cheaper of the two equal-cost windows that keeps more (3 over 1)
    c = choose(kept, DENSITY, None, 0.82)
    assert c.layers == (0, 3, None)
    # fixed dense steps: the window must clear the threshold on the low steps as well -> dense layers
    assert choose(kept, DENSITY, None, 0.9, dense_steps=0).is_dense
    c = choose(kept, DENSITY, None, 0.45, dense_steps=0)
    assert c.dense_steps == 0 and c.layers == (0, 2, None)
    # nothing local enough: all dense
    c = choose(kept, DENSITY, None, 0.999)
    assert c.is_dense and c.cost == pytest.approx(1.0)
    # a layer with more FLOPs weighs more
    flops = torch.tensor([1.0, 1.0, 8.0])
    c = choose(kept, DENSITY, flops, 0.45)
    assert c.layers == (0, 0, 1)


def test_choose_ranges_per_head_and_sweep():
    kept = synthetic()
    kept[1, 4:] = torch.tensor([0.95, 0.97, 0.99, 0.96])  # layer 1 gets local in the last steps
    one = choose(kept, DENSITY, None, 0.9)
    two = choose(kept, DENSITY, None, 0.9, dense_steps=one.dense_steps, ranges=2)
    assert two.ranges == ((2, 3), (4, 5)) and [row[1] for row in two.range_layers] == [2, 0]
    assert two.cost < one.cost
    heads = torch.stack([kept, kept], dim=-1)
    heads[0, :, :, 1] = 0.995  # head 1 of layer 0 is very local
    ph = choose_per_head(heads, DENSITY, None, 0.9, one.dense_steps)
    assert ph["choices"][0] == [0, 0] and ph["choices"][2] == [None, None]
    plans = sweep(kept, DENSITY, None)
    costs = [p.cost for p in plans]
    assert costs == sorted(costs, reverse=True) and len({p.key for p in plans}) == len(plans)
    assert plans[-1].layers == (0, 0, 0) and plans[-1].dense_steps == 0  # threshold 0: the cheapest everywhere


def test_choose_by_step_range_and_merged_sweep():
    """ranges=2: each (layer, range) gets the cheapest window clearing the threshold on that range; sweep_ranges
    keeps a plan by range only where it saves >= 5% at its threshold, and keeps the threshold falling with cost."""
    from na_accel.quality.choose import sweep_ranges

    kept = synthetic()
    kept[1, 4:] = torch.tensor([0.95, 0.97, 0.99, 0.96])  # layer 1 gets local in the last steps
    one = choose(kept, DENSITY, None, 0.9)
    two = choose(kept, DENSITY, None, 0.9, ranges=2, dense_steps=one.dense_steps)
    assert two.by_range and two.ranges == ((2, 3), (4, 5))
    assert two.range_layers == ((0, 2, None), (0, 0, None))
    assert two.cells(6)[1] == [None, None, 2, 2, 0, 0] and two.cells(6)[2] == [None] * 6
    expected = (2 * 3 + 2 * (0.1 + 0.5 + 1.0) + 2 * (0.1 + 0.1 + 1.0)) / (6 * 3)  # dense steps, range 1, range 2
    assert two.cost == pytest.approx(expected)
    assert two.cost < one.cost and two.key != one.key
    free = choose(kept, DENSITY, None, 0.9, ranges=2)  # the dense steps chosen for the ranged plan
    assert free.cost <= two.cost
    plans = sweep_ranges(kept, DENSITY, None, ranges=(1, 2))
    costs = [p.cost for p in plans]
    thresholds = [p.threshold for p in plans]
    assert costs == sorted(costs, reverse=True) and thresholds == sorted(thresholds, reverse=True)
    ranged = [p for p in plans if p.by_range]
    assert ranged, "layer 1's late locality should pay for a plan by step range"
    for p in ranged:
        assert p.cost <= choose(kept, DENSITY, None, p.threshold).cost * 0.95
    flat = synthetic()
    flat[:, :2] = flat[:, 2:4]  # the same locality on every step: ranges never pay
    assert not any(p.by_range for p in sweep_ranges(flat, DENSITY, None, ranges=(1, 2, 4)))


# ------------------------------------------------------------------------------------------------------------
# YAML round trip
# ------------------------------------------------------------------------------------------------------------


def test_plan_config_round_trip(tmp_path):
    grid = (9, 16, 16)
    ladder = Ladder(grid)
    layers = ["transformer_blocks.0.attn", "transformer_blocks.1.attn", "single_transformer_blocks.0.attn",
              "single_transformer_blocks.1.attn"]  # fmt: skip
    kept = torch.rand(len(layers), 5, len(ladder), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    table = LocalityTable(ladder, layers, list(range(5)), kept, torch.ones(len(layers), dtype=torch.float64), [2] * 4,
                          Layout(grid, 8))  # fmt: skip
    pick = [next(i for i, c in enumerate(ladder.candidates) if c.label == lab)
            for lab in ("4x12x12", "3x10x10", "4x12x12/s2x8x8")]  # fmt: skip
    from na_accel.quality.choose import Choice

    plan = Choice(0.9, 2, (pick[0], pick[1], None, pick[2]), 0.5, 0.9, 0.9, 9)
    data = plan_config(table, plan, model_class="HunyuanVideoTransformer3DModel", measured="test")
    assert data["defaults"]["kernel_size"] == [0.44, 0.75, 0.75] and data["defaults"]["dense_steps"] == 2
    path = tmp_path / "tuned.yaml"
    path.write_text(config_yaml(data, ["a header"]))
    cfg = load_config(str(path))
    check_round_trip(cfg, table, plan)
    assert cfg.window_for("single_transformer_blocks.0.attn")[1] is None
    # the windows are fractions of the axes: on a larger grid they scale
    big = cfg.window_for("transformer_blocks.1.attn")[1].resolve((18, 32, 32)).params
    assert big.kernel_size == (6, 20, 20)
    wrong = Choice(0.9, 2, (pick[1], pick[1], None, pick[2]), 0.5, 0.9, 0.9, 9)
    with pytest.raises(na_accel.NAAccelError, match="internal error"):
        check_round_trip(cfg, table, wrong)


def test_plan_config_by_step_range_round_trip(tmp_path):
    """A plan by step range becomes layer rules with ``steps`` (the last range open-ended) that load back to the
    same window at every sparse step."""
    from na_accel.quality.choose import Choice

    grid = (9, 16, 16)
    ladder = Ladder(grid)
    layers = ["transformer_blocks.0.attn", "transformer_blocks.1.attn", "single_transformer_blocks.0.attn"]
    kept = torch.rand(len(layers), 6, len(ladder), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    table = LocalityTable(ladder, layers, list(range(6)), kept, torch.ones(len(layers), dtype=torch.float64), [2] * 3,
                          Layout(grid, 8))  # fmt: skip
    a, b, c = (next(i for i, x in enumerate(ladder.candidates) if x.label == lab)
               for lab in ("4x12x12", "3x10x10", "4x12x12/s2x8x8"))  # fmt: skip
    plan = Choice(0.9, 1, (a, b, None), 0.5, 0.9, 0.9, 9, ranges=((1, 3), (4, 5)),
                  range_layers=((a, b, None), (a, c, b)))  # fmt: skip
    data = plan_config(table, plan, model_class="HunyuanVideoTransformer3DModel")
    rules = {(r["match"], tuple(r.get("steps", ()))) for r in data["layers"]}
    assert ("transformer_blocks.1.attn", (1, 3)) in rules and ("transformer_blocks.1.attn", (4, -1)) in rules
    assert ("single_transformer_blocks.0.attn", (1, 3)) in rules and ("transformer_blocks.0.attn", ()) not in rules
    path = tmp_path / "ranged.yaml"
    path.write_text(config_yaml(data))
    cfg = load_config(str(path))
    check_round_trip(cfg, table, plan)
    assert cfg.window_for("single_transformer_blocks.0.attn", 2)[1] is None
    assert cfg.window_for("transformer_blocks.1.attn", 40)[1].resolve(grid).params == ladder.candidates[c].params(grid)
    wrong = Choice(0.9, 1, (a, b, None), 0.5, 0.9, 0.9, 9, ranges=((1, 3), (4, 5)),
                   range_layers=((a, b, None), (a, b, b)))  # fmt: skip
    with pytest.raises(na_accel.NAAccelError, match="at step 4"):
        check_round_trip(cfg, table, wrong)


# ------------------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------------------

PROMPTS = "a red circle moves left\na blue square bounces\n"


def test_cli_tune_end_to_end_tiny_and_round_trip(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    out = tmp_path / "cfg" / "tuned.yaml"
    r = runner.invoke(app, ["tune", str(prompts), "--model", "tiny:hunyuan", "--steps", "3", "--target-psnr", "20",
                            "--queries", "24", "--max-validations", "3", "--out", str(out), "--quiet"],
                      catch_exceptions=False)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "chosen:" in r.stdout and "held-out: PSNR" in r.stdout
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["tuned.report.json", "tuned.report.md", "tuned.report.png", "tuned.yaml"]
    report = json.loads((out.parent / "tuned.report.json").read_text())
    assert report["fit"]["psnr"] >= 20 and report["held_out"]["clips"] == 1
    assert set(report["locality"]["kept_chosen"]) == {k for k, v in report["chosen"]["windows"].items() if v}
    assert report["validations"] and all(v["attention_calls"]["sparse"] > 0 for v in report["validations"])
    cfg = load_config(str(out))
    assert cfg.model == "HunyuanVideoTransformer3DModel" and cfg.measured.startswith("na-accel tune")
    # the tuned config loads with patch and reproduces the chosen windows
    pipe = tiny_pipeline("hunyuan")
    kw = {**default_generation_kwargs("hunyuan"), "num_inference_steps": 3}
    with na_accel.patched(pipe, config=str(out)) as handle:
        pipe("a green plus", output_type="latent", generator=torch.Generator().manual_seed(0), **kw)
        plans = {row["layer"]: row for row in handle.layer_plans()}
    assert handle.config.dense_steps == report["chosen"]["dense_steps"]
    for name, label in report["chosen"]["windows"].items():
        row = plans[name]  # the windows of the last step (2)
        if isinstance(label, list):  # a window per step range: the last range's
            label = label[-1]
        if label is None:
            assert row["kernel_size"] is None
        else:
            cand = next(c for c in Ladder(row["grid"]).candidates if c.label == label)
            assert (row["kernel_size"], row["stride"]) == (cand.kernel_size, cand.stride)


@pytest.mark.parametrize("family", ["flux", "cosmos", "wan"])
def test_tune_api_other_families(family):
    pipe = tiny_pipeline(family)
    kw = default_generation_kwargs(family)
    result = na_accel.tune(pipe, ["a red circle", "a blue square"], target_speedup=1.2, queries=16, progress=False,
                           **kw)  # fmt: skip
    assert isinstance(result, na_accel.TuneResult)
    assert result.report["chosen"]["speedup"] >= 1.2 and result.report["held_out"]["clips"] == 1
    cfg = load_config(result.config.to_dict())
    with na_accel.patched(pipe, cfg):
        pass


def test_cli_impossible_budgets_write_nothing(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    out = tmp_path / "tuned.yaml"
    base = ["tune", str(prompts), "--model", "tiny:hunyuan", "--steps", "2", "--queries", "16", "--quiet", "--out",
            str(out)]  # fmt: skip
    r = runner.invoke(app, [*base, "--target-speedup", "500"], catch_exceptions=False)
    assert r.exit_code == 2
    assert "target speedup 500x is above what the window ladder offers" in r.stderr and "allowed at most" in r.stderr
    assert "Lower the target speedup" in r.stderr
    r = runner.invoke(app, [*base, "--target-psnr", "900", "--max-validations", "2"], catch_exceptions=False)
    assert r.exit_code == 2
    assert "target PSNR 900 dB is not reached by any sparse plan" in r.stderr and "Allowed: a target PSNR of at most" \
        in r.stderr  # fmt: skip
    for argv, msg in (([], "no budget given"), (["--target-psnr", "-3"], "out of range"),
                      (["--target-speedup", "0.5"], "out of range"),
                      (["--target-psnr", "20", "--step-ranges", "2,4"], "--step-ranges must be comma-separated ints"),
                      (["--target-psnr", "20", "--step-ranges", "1,x"], "that include 1")):  # fmt: skip
        r = runner.invoke(app, [*base, *argv], catch_exceptions=False)
        assert r.exit_code == 2 and msg in r.stderr
    one = tmp_path / "one.txt"
    one.write_text("a red circle\n")
    r = runner.invoke(app, ["tune", str(one), "--model", "tiny:hunyuan", "--target-psnr", "20", "--out", str(out)],
                      catch_exceptions=False)  # fmt: skip
    assert r.exit_code == 2 and "at least 2" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.txt", "prompts.txt"]  # no output, no partial file


def test_tune_api_errors():
    pipe = tiny_pipeline("hunyuan")
    with pytest.raises(InputError, match="no budget"):
        na_accel.tune(pipe, ["a", "b"])
    with pytest.raises(InputError, match="at least 2"):
        na_accel.tune(pipe, ["a"], target_speedup=2)
    with na_accel.patched(pipe, PROFILE_CONFIG), pytest.raises(na_accel.NAAccelError, match="unpatched"):
        na_accel.tune(pipe, ["a", "b"], target_speedup=2)


def test_profile_cost_script_on_the_tiny_transformer(tmp_path):
    """bench/tune_profile_cost.py (the GPU measurement of the profiling pass at real size) runs its code path on the
    tiny HunyuanVideo transformer: the ladder probe saw every attention call, none ran sparse, the JSON is written."""
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "tune_profile_cost.py"
    spec = importlib.util.spec_from_file_location("tune_profile_cost", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--tiny", "--out", str(tmp_path), "--iters", "1", "--warmup", "0", "--device", "cpu"]) == 0
    (path,) = tmp_path.glob("tune-profile-cost-cpu-*.json")
    rec = json.loads(path.read_text())
    assert rec["attention_calls"]["sparse"] == 0 and rec["probe_calls"] > 0, rec
    assert rec["probe_seconds_total"] > 0 and rec["profiled_step_s"] > 0 and rec["dense_step_s"] > 0
    assert rec["extra_cost_dense_steps"] == rec["steps"] * (rec["profiled_step_s"] - rec["dense_step_s"]) / rec[
        "dense_step_s"]
