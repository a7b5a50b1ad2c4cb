"""End-to-end tests of the ``na-accel`` command line on the built-in tiny random-weight models (CPU).

These tests are about the command line's code paths, so they run the random-weight models (seconds): :func:`invoke`
adds ``--model tiny`` to ``generate``, ``ab`` and ``check`` unless the call names a model (``DEFAULT_MODEL`` marks a
call that means the real default). The embedded trained default has its own tests (``tests/test_trained.py``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from typer.testing import CliRunner

from na_accel.tools.cli import app

runner = CliRunner()

# A sparse config that works on the tiny token grid (3, 4, 6): a real 3x3x3 neighborhood after one dense step.
SPARSE_YAML = """\
version: 1
model: HunyuanVideoTransformer3DModel
description: tiny test config
defaults:
  kernel_size: [3, 3, 3]
  stride: [1, 1, 1]
  dense_steps: 1
quality: {min_psnr: 10.0, min_ssim: 0.3, max_latent_rel_l2: 0.9, min_latent_cosine: 0.5}
"""

FRAMES = 5  # 4k+1, the smallest non-trivial video of the tiny HunyuanVideo model (2 latent frames)


REPO = Path(__file__).resolve().parents[1]
TINY_DEMO = REPO / "examples" / "configs" / "tiny_demo.yaml"  # sparse on the tiny HunyuanVideo grid after 1 step


DEFAULT_MODEL = "--default-model"  # marker for invoke(): do not add --model tiny


def invoke(*args: str, input: str | bytes | None = None):
    argv = [str(a) for a in args]
    if DEFAULT_MODEL in argv:
        argv.remove(DEFAULT_MODEL)
    elif argv and argv[0] in ("generate", "ab", "check") and not {"--model", "-m"} & set(argv):
        argv[1:1] = ["--model", "tiny"]
    return runner.invoke(app, argv, catch_exceptions=False, input=input)


def mp4_frames(path: Path) -> list[np.ndarray]:
    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return [np.asarray(f) for f in reader]
    finally:
        reader.close()


@pytest.fixture()
def prompts(tmp_path: Path) -> Path:
    p = tmp_path / "prompts.txt"
    p.write_text("# a comment\na red fox in the snow\n\n  a boat on a calm lake  \n", encoding="utf-8")
    return p


@pytest.fixture()
def one_prompt(tmp_path: Path) -> Path:
    p = tmp_path / "one.txt"
    p.write_text("a red fox in the snow\n", encoding="utf-8")
    return p


@pytest.fixture()
def sparse_cfg(tmp_path: Path) -> Path:
    p = tmp_path / "tiny_sparse.yaml"
    p.write_text(SPARSE_YAML, encoding="utf-8")
    return p


# ----------------------------------------------------------------------------------------------------------------
# --help and laziness
# ----------------------------------------------------------------------------------------------------------------


def test_help_lists_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("generate", "ab", "check", "bench", "presets"):
        assert cmd in r.stdout


def test_version():
    import na_accel

    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"na-accel {na_accel.__version__}"


def test_cli_module_imports_no_diffusers():
    code = (
        "import sys, na_accel\n"
        "torch_from_pkg = 'torch' in sys.modules\n"
        "import na_accel.tools.cli\n"
        "print('diffusers' in sys.modules, 'torch' in sys.modules, torch_from_pkg)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    diffusers_loaded, torch_loaded, torch_from_pkg = (v == "True" for v in out)
    assert not diffusers_loaded
    if not torch_from_pkg:  # only the CLI's own imports are checked here
        assert not torch_loaded


# ----------------------------------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------------------------------

SIDECAR_FIELDS = {
    "file",
    "kind",
    "model",
    "model_id",
    "model_class",
    "transformer_class",
    "family",
    "random_weights",
    "config",
    "config_source",
    "patch",
    "prompt",
    "prompt_index",
    "seed",
    "height",
    "width",
    "frames",
    "fps",
    "steps",
    "generation_kwargs",
    "timings",
    "peak_gpu_mem_bytes",
    "versions",
    "device",
    "dtype",
    "created",
    "command",
}


def test_generate_video_dense(tmp_path, prompts):
    out = tmp_path / "out"
    r = invoke("generate", prompts, "--dense", "--frames", FRAMES, "--steps", 2, "--seed", 7, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    videos = sorted(out.glob("*.mp4"))
    assert [v.name for v in videos] == [
        "000_a-red-fox-in-the-snow__dense__tiny-random-weight-model.mp4",
        "001_a-boat-on-a-calm-lake__dense__tiny-random-weight-model.mp4",
    ]
    for i, v in enumerate(videos):
        frames = mp4_frames(v)
        assert len(frames) == FRAMES and frames[0].shape == (64, 96, 3)
        meta = json.loads(v.with_suffix(".json").read_text())
        assert SIDECAR_FIELDS <= set(meta)
        assert meta["random_weights"] is True and "tiny random-weight model" in meta["model"]
        assert meta["config"] == "dense" and meta["patch"] is None
        assert meta["seed"] == 7 + i and meta["prompt_index"] == i
        assert (meta["height"], meta["width"], meta["frames"], meta["steps"]) == (64, 96, FRAMES, 2)
        assert len(meta["timings"]["step_s"]) == 2 and meta["timings"]["total_s"] > 0
        assert {"na_accel", "torch", "diffusers", "triton"} <= set(meta["versions"])
        assert meta["device"].startswith(("cpu", "cuda"))
    assert json.loads(videos[1].with_suffix(".json").read_text())["prompt"] == "a boat on a calm lake"
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_generate_default_preset(tmp_path, one_prompt):
    """The family preset is the default; on the tiny grid at 2 steps it cannot run sparse (15 dense steps, windows
    larger than the grid), and the run says so: a warning, the sidecar's call counts, the file name."""
    out = tmp_path / "out"
    r = invoke("generate", one_prompt, "--frames", FRAMES, "--steps", 2, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    assert "config: hunyuan_fast (the hunyuan preset" in r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and "hunyuan_fast made no sparse attention call" in warnings[0]
    assert "dense_steps is 15" in warnings[0] and "covers the whole token grid" in warnings[0]
    (video,) = out.glob("*.mp4")
    assert video.name == "000_a-red-fox-in-the-snow__hunyuan_fast-ran-dense__tiny-random-weight-model.mp4"
    meta = json.loads(video.with_suffix(".json").read_text())
    assert meta["config"] == "hunyuan_fast" and "hunyuan_fast" in meta["patch"]["summary"]
    n_layers = len(meta["patch"]["layers"])
    assert meta["patch"]["ran_sparse"] is False
    assert meta["patch"]["attention_calls"] == {"sparse": 0, "dense": 2 * n_layers, "fallback": 0, "compiled": 0}
    assert all(row["sparse_calls"] == 0 for row in meta["patch"]["layers"])
    assert meta["warnings"] == [warnings[0][len("warning: ") :]]
    assert len(mp4_frames(video)) == FRAMES


def test_generate_sparse_config_runs_sparse(tmp_path, one_prompt):
    out = tmp_path / "out"
    r = invoke("generate", one_prompt, "--config", TINY_DEMO, "--frames", FRAMES, "--steps", 3, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    assert "warning" not in r.stderr
    (video,) = out.glob("*.mp4")
    assert video.name == "000_a-red-fox-in-the-snow__tiny_demo__tiny-random-weight-model.mp4"
    meta = json.loads(video.with_suffix(".json").read_text())
    n_layers = len(meta["patch"]["layers"])
    # step 0 dense (dense_steps: 1), steps 1 and 2 sparse in every layer
    assert meta["patch"]["attention_calls"] == {"sparse": 2 * n_layers, "dense": n_layers, "fallback": 0,
                                                "compiled": 0}  # fmt: skip
    assert meta["patch"]["ran_sparse"] is True and meta["warnings"] == []
    assert all(row["sparse_calls"] == 2 and row["kernel_size"] == [2, 3, 3] for row in meta["patch"]["layers"])


def test_generate_precision_fp8_falls_back_on_cpu(tmp_path, one_prompt):
    """--precision fp8 sets the precision of the config's defaults and rules: the name gets -fp8, the sidecar's layers
    and summary say fp8 and, on a CPU, why it fell back; the frames equal the bf16 run's (the inputs' precision)."""
    runs = {}
    for precision in ("bf16", "fp8"):
        out = tmp_path / precision
        r = invoke("generate", one_prompt, "--config", TINY_DEMO, "--precision", precision, "--frames", FRAMES,
                   "--steps", 2, "--out", out, "-q")  # fmt: skip
        assert r.exit_code == 0, r.output
        (video,) = out.glob("*.mp4")
        runs[precision] = (r, video, json.loads(video.with_suffix(".json").read_text()))
    r, video, meta = runs["fp8"]
    assert video.name == "000_a-red-fox-in-the-snow__tiny_demo-fp8__tiny-random-weight-model.mp4"
    assert "precision: fp8 for the defaults and every rule of tiny_demo (--precision)" in r.stderr
    assert meta["config"] == "tiny_demo-fp8" and meta["config_source"] == str(TINY_DEMO)
    patch = meta["patch"]
    n_layers = len(patch["layers"])
    assert all(row["precision"] == "fp8" for row in patch["layers"])
    # step 0 dense (answered by GNA over the whole grid in fp8), step 1 sparse
    assert patch["attention_calls"] == {"sparse": n_layers, "dense": n_layers, "fallback": 0, "compiled": 0}
    assert patch["fp8_fallbacks"] and all("has no 8-bit path" in k for k in patch["fp8_fallbacks"])
    assert sum(patch["fp8_fallbacks"].values()) == 2 * n_layers  # every call of the run
    assert "precision=fp8" in patch["summary"] and "precision fp8 fell back" in patch["summary"]
    r_bf16, video_bf16, meta_bf16 = runs["bf16"]
    assert "precision:" not in r_bf16.stderr  # tiny_demo is bf16 already: config and name unchanged
    assert video_bf16.name == "000_a-red-fox-in-the-snow__tiny_demo__tiny-random-weight-model.mp4"
    assert meta_bf16["patch"]["fp8_fallbacks"] == {} and "fp8" not in meta_bf16["patch"]["summary"]
    assert all(row["precision"] == "bf16" for row in meta_bf16["patch"]["layers"])
    assert all(np.array_equal(a, b) for a, b in zip(mp4_frames(video), mp4_frames(video_bf16), strict=True))


def _generate_png(one_prompt, out, *args, height: int, width: int) -> dict:
    """``na-accel generate`` of one image (2 steps) into ``out``: checks the PNG's size, returns its JSON sidecar."""
    r = invoke("generate", one_prompt, *args, "--height", height, "--width", width, "--steps", 2, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    (png,) = out.glob("*.png")
    assert imageio.imread(png).shape == (height, width, 3)
    return json.loads(png.with_suffix(".json").read_text())


def test_generate_image_model_png(tmp_path, one_prompt, sparse_cfg):
    meta = _generate_png(one_prompt, tmp_path / "out", "--model", "tiny:flux", "--dense", height=64, width=80)
    assert meta["kind"] == "image" and meta["frames"] == 1 and meta["fps"] is None and meta["family"] == "flux"


def test_generate_from_saved_pipeline_dir(tmp_path, one_prompt):
    from na_accel.tiny import tiny_pipeline

    model_dir = tmp_path / "tiny_flux"
    tiny_pipeline("flux").save_pretrained(model_dir)
    meta = _generate_png(
        one_prompt, tmp_path / "out", "--model", model_dir, "--config", "flux_fast", height=64, width=64
    )
    assert meta["model_id"] == str(model_dir) and meta["config"] == "flux_fast"
    assert meta["random_weights"] is True  # the tiny marker survives save/load


# ----------------------------------------------------------------------------------------------------------------
# ab
# ----------------------------------------------------------------------------------------------------------------


def test_ab_video(tmp_path, one_prompt, sparse_cfg):
    out = tmp_path / "ab"
    r = invoke(
        "ab",
        one_prompt,
        "--configs",
        f"hunyuan_fast,{sparse_cfg},dense",
        "--frames",
        FRAMES,
        "--steps",
        2,
        "--out",
        out,
        "-q",
    )
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    names = [c["name"] for c in res["configs"]]
    assert names == ["dense", "hunyuan_fast", "tiny_sparse"]
    assert res["random_weights"] is True and "tiny random-weight model" in res["model"]
    assert res["seeds"] == [0] and res["prompts"] == ["a red fox in the snow"]
    for c in res["configs"]:
        a = c["aggregate"]
        assert a["total_s"] > 0 and a["mean_step_s"] > 0 and a["speedup_vs_dense"] > 0
        assert "peak_mem_bytes" in a  # null on CPU
        assert (out / c["outputs"][0]).is_file()
    dense, fast, sparse = res["configs"]
    assert dense["aggregate"]["psnr_mean"] == "inf" and dense["reports"] == []
    rep = sparse["reports"][0]
    assert rep["latent_rel_l2"] > 0 and rep["ssim_mean"] < 1 and len(rep["psnr_per_frame"]) == FRAMES
    assert rep["calibration_step"] == 1 and any(a["rel_l2"] > 0 for a in rep["attention"])
    assert any("dense" in n for n in fast["reports"][0]["notes"])  # all steps dense: said so

    md = (out / "results.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| config")]
    assert rows[0].startswith("| dense |") and len(rows) == 3
    assert "tiny random-weight model" in md
    assert imageio.imread(out / "speed_vs_quality.png").ndim == 3
    (cmp_video,) = (out / "compare").glob("*.mp4")
    frames = mp4_frames(cmp_video)
    assert len(frames) == FRAMES and frames[0].shape[1] > 3 * 96  # three videos side by side


def test_ab_image_grid(tmp_path, one_prompt):
    out = tmp_path / "ab"
    r = invoke(
        "ab",
        one_prompt,
        "--model",
        "tiny:flux",
        "--configs",
        "dense,flux_fast",
        "--height",
        64,
        "--width",
        64,
        "--steps",
        2,
        "--warmup",
        0,
        "--no-attention",
        "--out",
        out,
        "-q",
    )
    assert r.exit_code == 0, r.output
    (grid,) = (out / "compare").glob("*.png")
    img = imageio.imread(grid)
    assert img.shape[1] > 2 * 64
    res = json.loads((out / "results.json").read_text())
    assert [c["name"] for c in res["configs"]] == ["dense", "flux_fast"]
    assert res["configs"][1]["reports"][0]["attention"] == []


# ----------------------------------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------------------------------


def test_check_passes_on_a_sparse_run(tmp_path):
    """A config that runs sparse on the tiny grid (a (2, 3, 3) window after one dense step): the gate compares real
    differences against its thresholds."""
    js = tmp_path / "check.json"
    r = invoke("check", "--config", TINY_DEMO, "--frames", FRAMES, "--steps", 3, "--json", js, "-q")
    assert r.exit_code == 0, r.output
    assert "quality gate PASSED: 1/1" in r.stdout and "tiny random-weight model" in r.stdout
    data = json.loads(js.read_text())
    assert data["passed"] is True and data["verdict"] == "PASSED"
    (rep,) = data["reports"]
    assert rep["verdict"] == "PASS" and rep["tested"] is True
    assert rep["sparse_calls"] == rep["attention_calls"]["sparse"] > 0
    assert rep["thresholds"]["min_psnr"] == 20.0 and rep["thresholds"]["min_ssim"] == 0.5  # from tiny_demo.yaml
    assert 0 < rep["latent_rel_l2"] <= 0.2 and 0.97 <= rep["latent_cosine"] < 1  # judged, and not identical
    assert 20.0 <= rep["psnr_mean"] != "inf" and 0.5 <= rep["ssim_mean"] < 1
    assert rep["calibration_step"] == 1 and max(a["rel_l2"] for a in rep["attention"]) > 0


def test_check_default_preset_nothing_tested(tmp_path):
    """The family preset on the tiny grid at 2 steps runs dense throughout: the gate says NOTHING TESTED (never
    PASSED) and fails, unless --allow-dense."""
    js = tmp_path / "check.json"
    r = invoke("check", "--frames", FRAMES, "--steps", 2, "--no-attention", "--json", js, "-q")
    assert r.exit_code == 1, r.output
    assert "PASS" not in r.stdout and "quality gate NOTHING TESTED" in r.stdout and "--allow-dense" in r.stdout
    data = json.loads(js.read_text())
    assert data["verdict"] == "NOTHING TESTED" and data["passed"] is False
    (rep,) = data["reports"]
    assert rep["sparse_calls"] == 0 and rep["tested"] is False and rep["failures"] == []
    assert rep["psnr_mean"] == "inf"  # the patched run equals dense
    r = invoke("check", "--frames", FRAMES, "--steps", 2, "--no-attention", "--allow-dense", "-q")
    assert r.exit_code == 0, r.output
    assert "PASS" not in r.stdout and "quality gate NOTHING TESTED" in r.stdout


def test_check_fails_threshold_exit_1(tmp_path, sparse_cfg):
    js = tmp_path / "check.json"
    r = invoke(
        "check",
        "--config",
        sparse_cfg,
        "--prompt",
        "a cat",
        "--frames",
        FRAMES,
        "--steps",
        2,
        "--max-latent-rel-l2",
        "1e-9",
        "--json",
        js,
        "-q",
    )
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.stdout and "latent relative L2" in r.stdout
    data = json.loads(js.read_text())
    assert data["passed"] is False and data["reports"][0]["failures"]


# ----------------------------------------------------------------------------------------------------------------
# bench, presets
# ----------------------------------------------------------------------------------------------------------------


WAN_SPARSE_YAML = """\
version: 1
model: WanTransformer3DModel
defaults: {kernel_size: [2, 3, 3], stride: 1, dense_steps: 4}
"""


def test_bench_tiny(tmp_path):
    """A config whose windows are smaller than the tiny grid: the timed patched step is sparse in every layer and
    the speedup and projection follow from the timings."""
    cfg = tmp_path / "wan_small.yaml"
    cfg.write_text(WAN_SPARSE_YAML)
    out = tmp_path / "bench"
    r = invoke("bench", "--tiny", "--family", "wan", "--config", cfg, "--device", "cpu", "--steps", 2, "--warmup", 0,
               "--total-steps", 10, "--out", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "warning" not in r.stderr and "ran dense" not in r.stdout
    assert "K parameters" in r.stderr  # a tiny model's size, not "0.00B"
    (js,) = out.glob("e2e_wan_wan_small_tiny_*.json")
    rec = json.loads(js.read_text())
    assert rec["tiny"] is True and rec["model_class"] == "WanTransformer3DModel" and rec["config"] == "wan_small"
    assert rec["token_grid"] == [3, 4, 6] and rec["device"].startswith("cpu") and "torch" in rec["versions"]
    n_layers = len(rec["patch_layers"])
    assert rec["patched_step_sparse"] is True and rec["patched_dense_reason"] is None
    assert rec["patched_attention_calls"] == {"sparse": 2 * n_layers, "dense": 0, "fallback": 0, "compiled": 0}
    assert all(row["kernel_size"] == [2, 3, 3] and row["sparse_calls"] == 2 for row in rec["patch_layers"])
    d, p = rec["dense_step_s"], rec["patched_step_s"]
    assert d > 0 and p > 0 and len(rec["dense_step_all_s"]) == len(rec["patched_step_all_s"]) == 2
    assert rec["speedup_per_sparse_step"] == pytest.approx(d / p)
    assert rec["dense_steps"] == 4 and rec["projection_steps"] == 10
    assert rec["projected_dense_s"] == pytest.approx(10 * d)
    assert rec["projected_patched_s"] == pytest.approx(4 * d + 6 * p)
    assert rec["projected_speedup"] == pytest.approx(10 * d / (4 * d + 6 * p))
    assert f"{d / p:.2f}x" in r.stdout


def test_bench_tiny_default_preset_labels_the_dense_step(tmp_path):
    """wan_fast's windows cover the whole tiny grid: the "patched" step is dense and is reported as such."""
    out = tmp_path / "bench"
    r = invoke("bench", "--tiny", "--family", "wan", "--device", "cpu", "--steps", 1, "--warmup", 0, "--out", out)
    assert r.exit_code == 0, r.output
    assert "warning: the wan_fast step made no sparse attention call" in r.stderr
    (js,) = out.glob("*.json")
    rec = json.loads(js.read_text())
    assert rec["config"] == "wan_fast" and rec["patched_step_sparse"] is False
    assert rec["patched_attention_calls"]["sparse"] == 0 and "whole grid" in rec["patched_dense_reason"]
    assert rec["speedup_per_sparse_step"] is None and rec["projected_speedup"] is None
    table = dict(ln.split("  ", 1) for ln in r.stdout.splitlines() if "  " in ln)
    assert table["wan_fast step"].strip().split(" (")[1].startswith("ran dense")
    assert "no sparse step" in table["speedup per sparse step"]


def test_bench_parameter_count_text():
    from na_accel.tools.bench import count_text

    assert [count_text(n) for n in (999, 45_600, 7_890_000, 12_800_000_000)] == ["999", "45.6K", "7.89M", "12.8B"]


def test_bench_real_size_refuses_on_cpu(tmp_path):
    out = tmp_path / "bench"
    r = invoke("bench", "--family", "hunyuan", "--device", "cpu", "--out", out)
    assert r.exit_code == 2
    assert "GPU" in r.stderr and "--tiny" in r.stderr
    assert not out.exists()


def test_bench_real_configs_are_real_size():
    """The family adapters hold the real models' configurations (the benchmark builds them on the GPU)."""
    from na_accel.patching.families import FAMILIES

    assert set(FAMILIES) == {"hunyuan", "flux", "cosmos", "wan"}
    hun = FAMILIES["hunyuan"]
    assert hun.model_class == "HunyuanVideoTransformer3DModel"
    assert hun.real_config["num_layers"] == 20 and hun.real_config["num_single_layers"] == 40
    assert FAMILIES["wan"].real_config["num_attention_heads"] == 40 and FAMILIES["wan"].real_config["num_layers"] == 40
    assert hun.real_token_grid(720, 1280, 129) == (33, 45, 80)
    assert FAMILIES["flux"].real_token_grid(1024, 1024, 1) == (64, 64)
    assert FAMILIES["cosmos"].real_token_grid(704, 1280, 121) == (16, 44, 80)
    assert FAMILIES["wan"].real_token_grid(720, 1280, 81) == (21, 45, 80)


def test_presets():
    r = invoke("presets")
    assert r.exit_code == 0
    assert "hunyuan_fast" in r.stdout and "measured:" in r.stdout
    r = invoke("presets", "--json")
    rows = json.loads(r.stdout)
    assert {"name", "model", "description", "measured", "path"} <= set(rows[0])


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit code 2, nothing written
# ----------------------------------------------------------------------------------------------------------------


def _bad_cases(tmp_path: Path, prompts: Path) -> dict[str, tuple[list, str]]:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n# only a comment\n")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("version: 1\ndefaults: [unclosed\n")
    bad_key = tmp_path / "badkey.yaml"
    bad_key.write_text("version: 1\ndefaults:\n  kernel_sise: 3\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {
        "missing prompt file": (["generate", tmp_path / "nope.txt"], "not found"),
        "empty prompt file": (["generate", empty], "no prompts"),
        "unknown preset": (["generate", prompts, "--config", "hunyuan_fats"], "hunyuan_fast"),
        "invalid yaml": (["generate", prompts, "--config", bad_yaml], "invalid YAML"),
        "misspelt key": (["generate", prompts, "--config", bad_key], "kernel_size"),
        "missing config file": (["ab", prompts, "--configs", f"dense,{tmp_path / 'no.yaml'}"], "not found"),
        "config for another model": (["generate", prompts, "--config", "flux_fast"], "FluxTransformer2DModel"),
        "dense and config": (["generate", prompts, "--dense", "--config", "hunyuan_fast"], "mutually exclusive"),
        "unknown precision": (
            ["generate", prompts, "--precision", "fp16"],
            "--precision 'fp16' is not one of bf16, fp8 (bf16: the inputs' own dtype; fp8: 8-bit operands on Hopper",
        ),
        "dense and fp8": (["generate", prompts, "--dense", "--precision", "fp8"], "applies to a patched run"),
        "height not a multiple": (["generate", prompts, "--dense", "--height", 50], "multiple of 16"),
        "frames not 4k+1": (["generate", prompts, "--dense", "--frames", 8], "4k+1"),
        "frames for an image model": (
            ["generate", prompts, "--dense", "--model", "tiny:flux", "--frames", 5],
            "images",
        ),
        "bad steps": (["ab", prompts, "--configs", "dense", "--steps", 0], "--steps"),
        "missing model dir": (["generate", prompts, "--model", tmp_path / "no_model_dir"], "not found"),
        "out under a file": (["generate", prompts, "--dense", "--out", a_file / "sub"], "not a directory"),
        "out is a file": (["ab", prompts, "--out", a_file], "not a directory"),
        "check against dense": (["check", "--config", "dense"], "dense"),
        "bench unknown family": (["bench", "--family", "sdxl", "--tiny"], "unknown family"),
        "bench bad frames": (["bench", "--tiny", "--frames", 8], "4k+1"),
        "huge height": (["generate", prompts, "--dense", "--height", HUGE], "between 16 and 16384"),
        "huge width, ab": (["ab", prompts, "--width", HUGE], "between 16 and 16384"),
        "huge frames": (["generate", prompts, "--dense", "--frames", 4 * 10**20 + 1], "between 1 and 4097"),
        "huge steps": (["generate", prompts, "--dense", "--steps", 10**30], "between 1 and 10000"),
        "huge seed": (["generate", prompts, "--dense", "--seed", 99999999999999999999999], "2**64-1"),
        "last prompt's seed too big": (
            ["generate", prompts, "--dense", "--seed", 2**64 - 1],
            "between 0 and 18446744073709551614",
        ),
        "negative seed": (["check", "--seed", -1], "--seed -1 is out of range"),
        "unknown device": (["generate", prompts, "--dense", "--device", "tpu"], "'tpu' is not supported"),
        "cuda index": (["ab", prompts, "--device", "cuda:99"], "cuda:99"),
        "unknown dtype": (["generate", prompts, "--dense", "--dtype", "int8"], "'int8' is not one of"),
        "check huge height": (["check", "--height", HUGE], "between 16 and 16384"),
        "check min ssim above 1": (["check", "--min-ssim", 5], "--min-ssim: expected a number from -1 to 1"),
        "check min psnr -inf": (["check", "--min-psnr", "-inf"], "--min-psnr: expected a number, finite,"),
        "check min psnr nan": (["check", "--min-psnr", "nan"], "got nan"),
        "check max rel l2 negative": (["check", "--max-latent-rel-l2", -0.1], "--max-latent-rel-l2"),
        "check min cosine above 1": (["check", "--min-latent-cosine", 1.5], "from -1 to 1"),
        "bench huge height": (["bench", "--tiny", "--height", HUGE], "between 16 and 16384"),
        "bench unknown device": (["bench", "--tiny", "--device", "tpu"], "'tpu' is not supported"),
        "tiny image model frames": (["generate", prompts, "-m", "tiny:flux", "--frames", 5], "images"),
        "unknown tiny family": (["generate", prompts, "-m", "tiny:sdxl"], "tiny:hunyuan"),
        "warmup negative": (["ab", prompts, "--warmup", -1], "--warmup must be >= 0"),
        "ab empty configs": (["ab", prompts, "--configs", ","], "--configs is empty"),
    }


HUGE = 99999999999999999984  # a multiple of 16


CASE_NAMES = [
    "missing prompt file",
    "empty prompt file",
    "unknown preset",
    "invalid yaml",
    "misspelt key",
    "missing config file",
    "config for another model",
    "dense and config",
    "unknown precision",
    "dense and fp8",
    "height not a multiple",
    "frames not 4k+1",
    "frames for an image model",
    "bad steps",
    "missing model dir",
    "out under a file",
    "out is a file",
    "check against dense",
    "bench unknown family",
    "bench bad frames",
    "huge height",
    "huge width, ab",
    "huge frames",
    "huge steps",
    "huge seed",
    "last prompt's seed too big",
    "negative seed",
    "unknown device",
    "cuda index",
    "unknown dtype",
    "check huge height",
    "check min ssim above 1",
    "check min psnr -inf",
    "check min psnr nan",
    "check max rel l2 negative",
    "check min cosine above 1",
    "bench huge height",
    "bench unknown device",
    "tiny image model frames",
    "unknown tiny family",
    "warmup negative",
    "ab empty configs",
]

# Bad input that needs no model: rejected before the model is loaded.
BEFORE_LOAD = [c for c in CASE_NAMES if c not in ("config for another model", "missing model dir")
               and not c.startswith(("bench", "check against"))]  # fmt: skip


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input(tmp_path, prompts, case, monkeypatch):
    args, needle = _bad_cases(tmp_path, prompts)[case]
    out = tmp_path / "out_dir"
    if "--out" not in args and args[0] != "check":
        args = [*args, "--out", out]
    if case in BEFORE_LOAD:
        import na_accel.tools.generate as generate

        def no_load(*a, **k):
            raise AssertionError("the model was loaded before the input was checked")

        monkeypatch.setattr(generate, "load_model", no_load)
    r = invoke(*args)
    assert r.exit_code == 2, (r.exit_code, r.output)
    err = r.stderr.strip().splitlines()
    err = [ln for ln in err if not ln.startswith(("model:", "config:"))]
    assert len(err) == 1 and err[0].startswith("error: "), r.stderr
    assert needle in err[0], err[0]
    assert len(err[0]) < 400
    assert "Traceback" not in r.output
    assert not out.exists()


def test_unsupported_model(tmp_path, prompts):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(4, 8),
        norm_num_groups=4,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    )
    model_dir = tmp_path / "ddpm"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(model_dir)
    out = tmp_path / "out_dir"
    r = invoke("generate", prompts, "--model", model_dir, "--dense", "--out", out)
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "unsupported model" in lines[0] and "HunyuanVideo" in lines[0]
    assert not out.exists()


def test_write_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    import na_accel.tools.media as media

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("PIL.Image.Image.save", boom)
    with pytest.raises(RuntimeError):
        media.write_png(tmp_path / "x.png", np.zeros((8, 8, 3), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_missing_video_writer_fails_before_writing(tmp_path, prompts, monkeypatch):
    import na_accel.tools.media as media

    monkeypatch.setattr(media, "video_writer_problem", lambda: "cannot write MP4 videos: no ffmpeg")
    out = tmp_path / "out_dir"
    r = invoke("generate", prompts, "--dense", "--frames", FRAMES, "--out", out)
    assert r.exit_code == 2 and "cannot write MP4" in r.stderr
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------------
# Saved pipelines
# ----------------------------------------------------------------------------------------------------------------


def test_saved_tiny_cosmos_loads_in_a_fresh_process(tmp_path, one_prompt):
    """diffusers resolves the tiny Cosmos safety checker's module only from sys.modules: in a process that has not
    imported na_accel.tiny, the CLI must import it (it is named in model_index.json). A saved tiny pipeline gets the
    tiny model's defaults (64x96, 17 frames, 2 steps), not the real model's."""
    from na_accel.tiny import default_generation_kwargs, tiny_pipeline

    model_dir = tmp_path / "tiny_cosmos"
    tiny_pipeline("cosmos").save_pretrained(model_dir)
    index = json.loads((model_dir / "model_index.json").read_text())
    assert index["safety_checker"][0].startswith("na_accel.")
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "from na_accel.tools.cli import app\n"
        "assert 'na_accel.tiny' not in sys.modules\n"
        f"app(['generate', {str(one_prompt)!r}, '--model', {str(model_dir)!r}, '--out', {str(out)!r}, '-q'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(loaded from a local directory," in r.stderr
    (video,) = out.glob("*.mp4")
    meta = json.loads(video.with_suffix(".json").read_text())
    d = default_generation_kwargs("cosmos")
    assert meta["random_weights"] is True and meta["family"] == "cosmos"
    assert (meta["height"], meta["width"], meta["frames"], meta["steps"]) == (
        d["height"], d["width"], d["num_frames"], d["num_inference_steps"]
    )  # fmt: skip
    assert len(meta["timings"]["step_s"]) == d["num_inference_steps"]


def test_import_own_modules_imports_only_na_accel(tmp_path):
    from na_accel.errors import InputError
    from na_accel.tools.generate import import_own_modules

    index = {
        "_class_name": "X",
        "a": ["na_accel.tiny.random_weights", "TinySafetyChecker"],
        "b": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "c": ["na_accel_lookalike_not_ours", "Y"],
        "d": ["json", "JSONDecoder"],
    }
    assert import_own_modules(index) == ["na_accel.tiny.random_weights"]
    assert "na_accel_lookalike_not_ours" not in sys.modules
    with pytest.raises(InputError, match="no module na_accel.no_such_module"):
        import_own_modules({"a": ["na_accel.no_such_module", "Z"]}, "dir")


def test_generate_from_real_model_dir_records_the_pipeline_defaults(tmp_path):
    """A pipeline directory without the tiny marker runs at the pipeline's own defaults (FLUX: 28 steps; its size
    from default_sample_size), and the sidecar records them."""
    from na_accel.tiny import tiny_pipeline

    model_dir = tmp_path / "flux_like"
    tiny_pipeline("flux").save_pretrained(model_dir)
    cfg_path = model_dir / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["_na_accel_tiny"]
    cfg_path.write_text(json.dumps(cfg))
    prompt = tmp_path / "p.txt"
    prompt.write_text("a cat\n")
    out = tmp_path / "out"
    r = invoke("generate", prompt, "--model", model_dir, "--dense", "--height", 32, "--width", 32, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    (png,) = out.glob("*.png")
    assert "tiny" not in png.name
    meta = json.loads(png.with_suffix(".json").read_text())
    assert meta["random_weights"] is False and meta["steps"] == 28 and len(meta["timings"]["step_s"]) == 28
    g = meta["generation_kwargs"]
    assert g["num_inference_steps"] == 28 and g["guidance_scale"] == 3.5 and g["max_sequence_length"] == 512
    assert (g["height"], g["width"]) == (32, 32) == (meta["height"], meta["width"])


def test_pipeline_defaults_fill_a_derived_size():
    from na_accel.tiny import tiny_pipeline
    from na_accel.tools.generate import pipeline_defaults

    pipe = tiny_pipeline("flux")
    d = pipeline_defaults(pipe)
    assert d["height"] == d["width"] == pipe.default_sample_size * pipe.vae_scale_factor
    assert d["num_inference_steps"] == 28 and "output_type" not in d and "prompt" not in d


def test_offline_hub_error_shows_the_cause(monkeypatch):
    import diffusers

    from na_accel.errors import InputError
    from na_accel.tools.generate import load_model

    def offline(*a, **k):
        try:
            raise ConnectionError("Cannot reach https://huggingface.co/api/models/org/model: offline mode is enabled.")
        except ConnectionError as cause:
            raise OSError(
                "Cannot load model org/model: the model is not fully cached locally and an error occurred while "
                "trying to fetch metadata from the Hub. Please check out the root cause in the stacktrace above."
            ) from cause

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as info:
        load_model("org/model", device="cpu")
    msg = str(info.value)
    assert "stacktrace" not in msg and "\n" not in msg
    assert "cause: ConnectionError: Cannot reach https://huggingface.co" in msg
    assert "HF_HUB_OFFLINE is set" in msg


def test_built_in_models_are_labelled_built_in(tmp_path, one_prompt):
    r = invoke("generate", one_prompt, "-m", "tiny:flux", "--dense", "--height", 32, "--width", 32, "--steps", 1,
               "--out", tmp_path / "out", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "model: tiny random-weight model (FLUX) (built-in, cpu" in r.stderr


# ----------------------------------------------------------------------------------------------------------------
# Output files, ab reruns
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_output_files_honour_the_umask(tmp_path, umask):
    import na_accel.tools.media as media

    old = os.umask(umask)
    try:
        paths = [
            media.write_json(tmp_path / "a.json", {"x": 1}),
            media.write_text(tmp_path / "a.md", "x"),
            media.write_png(tmp_path / "a.png", np.zeros((8, 8, 3), dtype=np.uint8)),
            media.write_mp4(tmp_path / "a.mp4", np.zeros((3, 16, 16, 3), dtype=np.uint8)),
        ]
    finally:
        os.umask(old)
    for p in paths:
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p.name


def _ab_flux(prompt_file: Path, out: Path, *extra):
    return invoke("ab", prompt_file, "--model", "tiny:flux", "--height", 32, "--width", 32, "--steps", 1,
                  "--warmup", 0, "--no-attention", "--out", out, "-q", *extra)  # fmt: skip


def _listed_files(out: Path) -> set[str]:
    res = json.loads((out / "results.json").read_text())
    return {p for c in res["configs"] for p in c["outputs"]} | set(res["comparisons"])


def test_ab_defaults_to_dense_and_the_preset_and_refuses_an_earlier_run(tmp_path, prompts, one_prompt):
    out = tmp_path / "ab"
    r = _ab_flux(prompts, out)
    assert r.exit_code == 0, r.output
    assert "configs: dense, flux_fast (the flux preset" in r.stderr
    res = json.loads((out / "results.json").read_text())
    assert [c["name"] for c in res["configs"]] == ["dense", "flux_fast"]
    assert "nothing tested" in (out / "results.md").read_text()  # flux_fast runs dense at this size and step count
    assert res["configs"][1]["aggregate"]["verdict"] == "NOTHING TESTED"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    r = _ab_flux(one_prompt, out)
    assert r.exit_code == 2 and "already holds an A/B run" in r.stderr and "--overwrite" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # untouched

    (out / "notes.txt").write_text("mine")
    r = _ab_flux(one_prompt, out, "--overwrite")
    assert r.exit_code == 0, r.output
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    listed = _listed_files(out)
    assert len(listed) == 3  # one prompt: dense, flux_fast, the comparison
    assert written == listed | {"results.json", "results.md", "speed_vs_quality.png", "notes.txt"}


def test_ab_plot_names_configs_in_a_legend():
    from na_accel.tools.ab import speed_quality_figure

    def row(name, x, ssim, psnr, verdict="PASS"):
        return {"name": name, "aggregate": {"speedup_vs_dense": x, "ssim_mean": ssim, "psnr_mean": psnr,
                                            "verdict": verdict}}  # fmt: skip

    results = {
        "model": "m",
        "configs": [row("dense", 1.0, 1.0, math.inf, "dense"), row("a", 1.0, 1.0, 60.0),
                    row("b", 1.0, 1.0, 60.0, "NOTHING TESTED"), row("c", 1.5, 0.9, 30.0)],
    }  # fmt: skip
    fig = speed_quality_figure(results)
    try:
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == ["dense", "a", "b (ran dense)", "c"]
        assert all(not ax.texts for ax in fig.axes)  # no point labels that could overlap
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------------------------


def test_prompt_file_bom_and_invisible_characters(tmp_path):
    from na_accel.tools.generate import read_prompts

    p = tmp_path / "p.txt"
    p.write_bytes("\ufeff# a comment\n\u200b\n \u200ba cat\u200b \n\u2060\ufeff\n\u00a0a dog\u200d\n".encode())
    assert read_prompts(p) == ["a cat", "a dog"]
    only = tmp_path / "only.txt"
    only.write_bytes("\ufeff\n\u200b\u200c\n# x\n".encode())
    from na_accel.errors import InputError

    with pytest.raises(InputError, match="no prompts"):
        read_prompts(only)


def test_prompts_from_stdin(tmp_path):
    out = tmp_path / "out"
    text = "\ufeff# from stdin\na cat on a mat\n\u200b\n".encode()
    r = invoke("generate", "-", "-m", "tiny:flux", "--dense", "--height", 32, "--width", 32, "--steps", 1,
               "--out", out, "-q", input=text)  # fmt: skip
    assert r.exit_code == 0, r.output
    (png,) = out.glob("*.png")
    assert json.loads(png.with_suffix(".json").read_text())["prompt"] == "a cat on a mat"
    r = invoke("generate", "-", "--dense", "--out", tmp_path / "out2", input="# nothing\n")
    assert r.exit_code == 2 and "no prompts in standard input" in r.stderr


def test_long_prompt_truncation_is_warned_and_recorded(tmp_path):
    p = tmp_path / "p.txt"
    long = " ".join(["a small red fox runs through the deep white snow under a grey winter sky"] * 4)
    p.write_text(f"a cat\n{long}\n")
    out = tmp_path / "out"
    r = invoke("generate", p, "-m", "tiny:flux", "--dense", "--height", 32, "--width", 32, "--steps", 1,
               "--out", out, "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: prompt 2 is longer than the text encoder takes")
    short, cut = (json.loads(f.read_text()) for f in sorted(out.glob("*.json")))
    assert short["prompt_truncation"] == [] and short["warnings"] == []
    by_tok = {rec["tokenizer"]: rec for rec in cut["prompt_truncation"]}
    t5 = by_tok["tokenizer_2"]  # T5, max_sequence_length 32 for the tiny model
    assert t5["limit"] == 32 and t5["tokens"] > 32 and t5["dropped"] == t5["tokens"] - 32
    assert by_tok["tokenizer"]["limit"] == 77  # CLIP
    assert cut["warnings"] == [warnings[0][len("warning: ") :]]


def test_failed_run_leaves_no_empty_output_directory(tmp_path, one_prompt, monkeypatch):
    import na_accel.quality.run as run

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(run, "run_pipeline", boom)
    out = tmp_path / "out"
    r = invoke("generate", one_prompt, "--dense", "--out", out, "-q")
    assert r.exit_code == 1 and "error: RuntimeError: out of memory" in r.stderr
    assert not out.exists()


def test_truncation_watch_ignores_the_default_negative_prompt():
    """Cosmos encodes its long default negative prompt next to the prompt; its truncation is not the prompt's, even
    when the prompt is a word of it."""
    from diffusers.pipelines.cosmos.pipeline_cosmos_text2world import DEFAULT_NEGATIVE_PROMPT

    from na_accel.tiny import tiny_pipeline
    from na_accel.tools.generate import watch_truncation

    pipe = tiny_pipeline("cosmos")
    tokenizer = pipe.tokenizer
    assert "blur" in DEFAULT_NEGATIVE_PROMPT
    for prompt, expect in (("blur", 0), ("a fox " * 40, 1)):
        with watch_truncation(pipe, prompt) as cut:
            pipe.encode_prompt(prompt, do_classifier_free_guidance=True, max_sequence_length=32)
        assert len(cut) == expect, cut
    assert pipe.tokenizer is tokenizer  # restored
