"""End-to-end tests of the ``na-accel`` command line on the built-in tiny random-weight models (CPU)."""

from __future__ import annotations

import json
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


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


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
    out = tmp_path / "out"
    r = invoke("generate", one_prompt, "--frames", FRAMES, "--steps", 2, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    (video,) = out.glob("*.mp4")
    assert "__hunyuan_fast__tiny-random-weight-model" in video.name
    meta = json.loads(video.with_suffix(".json").read_text())
    assert meta["config"] == "hunyuan_fast"
    assert "hunyuan_fast" in meta["patch"]["summary"] and meta["patch"]["layers"]
    assert len(mp4_frames(video)) == FRAMES


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


def test_check_passes_with_default_preset(tmp_path):
    js = tmp_path / "check.json"
    r = invoke("check", "--frames", FRAMES, "--steps", 2, "--json", js, "-q")
    assert r.exit_code == 0, r.output
    assert "PASS" in r.stdout and "hunyuan_fast" in r.stdout and "tiny random-weight model" in r.stdout
    data = json.loads(js.read_text())
    assert data["passed"] is True and data["reports"][0]["thresholds"]["min_psnr"] == 25.0


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


def test_bench_tiny(tmp_path):
    out = tmp_path / "bench"
    r = invoke("bench", "--tiny", "--family", "wan", "--device", "cpu", "--steps", 1, "--warmup", 0, "--out", out)
    assert r.exit_code == 0, r.output
    assert "wan_fast" in r.stdout and "speedup" in r.stdout
    (js,) = out.glob("*.json")
    rec = json.loads(js.read_text())
    for key in (
        "dense_step_s",
        "patched_step_s",
        "speedup_per_sparse_step",
        "projected_speedup",
        "token_grid",
        "versions",
        "device",
        "config",
        "model_class",
        "dense_steps",
        "patch_layers",
    ):
        assert key in rec
    assert rec["tiny"] is True and rec["model_class"] == "WanTransformer3DModel"


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
    }


CASE_NAMES = [
    "missing prompt file",
    "empty prompt file",
    "unknown preset",
    "invalid yaml",
    "misspelt key",
    "missing config file",
    "config for another model",
    "dense and config",
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
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input(tmp_path, prompts, case):
    args, needle = _bad_cases(tmp_path, prompts)[case]
    out = tmp_path / "out_dir"
    if "--out" not in args and args[0] != "check":
        args = [*args, "--out", out]
    r = invoke(*args)
    assert r.exit_code == 2, (r.exit_code, r.output)
    err = r.stderr.strip().splitlines()
    err = [ln for ln in err if not ln.startswith(("model:", "config:"))]
    assert len(err) == 1 and err[0].startswith("error: "), r.stderr
    assert needle in err[0], err[0]
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
