"""``na-accel generate`` options for real pipelines, on the tiny random-weight models (CPU): --offload (needs CUDA:
refused here; the offloading code path itself is in test_pipelines_stack.py), --vae-tiling, --dtype,
--negative-prompt, --guidance-scale, --true-cfg-scale, --num-videos, --fps, --cache NAME[:PARAM] and --compile."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import pytest
from typer.testing import CliRunner

from na_accel.errors import InputError
from na_accel.tools.cli import app
from na_accel.tools.runtime import enable_vae_tiling, parse_cache

runner = CliRunner()

SPARSE_YAML = """\
version: 1
model: HunyuanVideoTransformer3DModel
defaults:
  kernel_size: [2, 3, 3]
  stride: [1, 2, 3]
  dense_steps: 1
"""
WAN_SPARSE_YAML = SPARSE_YAML.replace("HunyuanVideoTransformer3DModel", "WanTransformer3DModel")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def sidecars(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


@pytest.fixture()
def prompt(tmp_path: Path) -> Path:
    p = tmp_path / "one.txt"
    p.write_text("a red fox in the snow\n", encoding="utf-8")
    return p


BEFORE_LOAD = {
    "offload on the CPU": (["--offload", "model"], "moves each to a CUDA GPU when it runs"),
    "sequential offload on the CPU": (["--offload", "sequential", "--device", "cpu"], "uses the CPU (cpu)"),
    "unknown offload": (["--offload", "fast"], "not one of none, model, sequential"),
    "no videos": (["--num-videos", "0"], "--num-videos must be between 1 and 64"),
    "fps zero": (["--fps", "0"], "--fps must be between 1 and 240"),
    "negative guidance": (["--guidance-scale", "-1"], "--guidance-scale -1.0 is out of range"),
    "nan true cfg": (["--true-cfg-scale", "nan"], "--true-cfg-scale nan is out of range"),
    "unknown cache": (["--cache", "teacache"], "unknown cache 'teacache'; choose fbc[:THRESHOLD]"),
    "cache value": (["--cache", "fbc:abc"], "threshold='abc' is not a number"),
    "cache range": (["--cache", "taylorseer:interval=0"], "interval=0 is out of range: it must be >= 1"),
    "cache key": (["--cache", "fbc:interval=2"], "fbc has no option 'interval'; its options: threshold"),
    "cache ratios file": (["--cache", "magcache:ratios=missing.json"], "no such file"),
}


@pytest.mark.parametrize("case", list(BEFORE_LOAD))
def test_bad_options_fail_before_loading(tmp_path, prompt, case, monkeypatch):
    import na_accel.tools.generate as generate

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(generate, "load_model", no_load)
    args, needle = BEFORE_LOAD[case]
    out = tmp_path / "out"
    r = invoke("generate", prompt, "--model", "tiny", "--dense", *args, "--out", out)
    assert r.exit_code == 2, r.output
    err = [ln for ln in r.stderr.strip().splitlines()]
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not out.exists()


AFTER_LOAD = {
    "negative prompt without true CFG": (
        ["--model", "tiny", "--negative-prompt", "blurry"], "--negative-prompt would be ignored",
    ),
    "true CFG on Wan": (["--model", "tiny:wan", "--true-cfg-scale", "3"], "WanPipeline takes no true_cfg_scale"),
    "cache on Cosmos": (["--model", "tiny:cosmos", "--cache", "fbc"], "has no diffusers cache support"),
    "magcache without ratios": (["--model", "tiny", "--cache", "magcache"], "--cache magcache:calibrate"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(AFTER_LOAD))
def test_options_the_pipeline_cannot_take(tmp_path, prompt, case):
    args, needle = AFTER_LOAD[case]
    out = tmp_path / "out"
    r = invoke("generate", prompt, "--dense", *args, "--out", out, "-q")
    assert r.exit_code == 2, r.output
    err = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and needle in err[0], r.stderr
    assert not out.exists()


def test_num_videos_fps_guidance_negative_prompt_vae_tiling(tmp_path, prompt):
    """Wan (true CFG with a negative prompt): two videos of one batch, at the requested frame rate, every setting in
    the sidecars; the time phases add up to the total."""
    out = tmp_path / "out"
    r = invoke("generate", prompt, "--model", "tiny:wan", "--dense", "--steps", 2, "--num-videos", 2, "--fps", 12,
               "--negative-prompt", "blurry", "--guidance-scale", 4, "--vae-tiling", "--out", out, "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "wrote 2 output(s)" in r.stdout
    videos = sorted(out.glob("*.mp4"))
    assert [v.name[-8:] for v in videos] == ["__v1.mp4", "__v2.mp4"]
    frames = []
    for v in videos:
        reader = imageio.get_reader(str(v), format="FFMPEG")
        assert reader.get_meta_data()["fps"] == 12
        frames.append(reader.get_data(0))
        reader.close()
    assert (frames[0] != frames[1]).any()  # two samples of one batch, not one video twice
    metas = sidecars(out)
    assert [m["output_index"] for m in metas] == [0, 1] and all(m["outputs_per_prompt"] == 2 for m in metas)
    m = metas[0]
    kw = m["generation_kwargs"]
    assert (kw["negative_prompt"], kw["guidance_scale"], kw["num_videos_per_prompt"]) == ("blurry", 4.0, 2)
    assert m["fps"] == 12 and m["vae_tiling"] is True and m["offload"] == "none" and m["cache"] is None
    t = m["timings"]
    assert t["encode_s"] > 0 and t["decode_s"] > 0 and len(t["step_s"]) == 2
    assert abs(t["encode_s"] + sum(t["step_s"]) + t["decode_s"] - t["total_s"]) < 1e-3


def test_true_cfg_negative_prompt_and_bf16(tmp_path, prompt):
    """HunyuanVideo takes the negative prompt with --true-cfg-scale > 1 (two transformer passes per step)."""
    cfg = tmp_path / "sparse.yaml"
    cfg.write_text(SPARSE_YAML, encoding="utf-8")
    out = tmp_path / "out"
    r = invoke("generate", prompt, "--model", "tiny", "--config", cfg, "--steps", 2, "--frames", 5,
               "--negative-prompt", "blurry", "--true-cfg-scale", 3, "--dtype", "bf16", "-o", out, "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    (m,) = sidecars(out)
    assert m["dtype"] == "bfloat16" and m["generation_kwargs"]["true_cfg_scale"] == 3.0
    calls = m["patch"]["attention_calls"]
    assert (calls["dense"], calls["sparse"]) == (2 * 4, 2 * 4)  # 2 passes x 4 layers, step 0 dense, step 1 sparse


def test_cache_and_compile_with_the_patch(tmp_path, prompt, monkeypatch):
    """--cache fbc:10 (after step 0 only the first block runs) on a sparse config (Wan: cond and uncond passes):
    the calls the sidecar counts are the ones that ran (step 0: 2 layers x 2 passes, dense; steps 1-2: the first
    block's layer x 2 passes, sparse). --compile asks for regional compilation without fullgraph (the cache's hooks
    break the graph) and a recompile limit for per-block graphs; compiled runs themselves are tested in
    test_pipelines_stack.py (here compile_regions is recorded, not run, to keep this test fast)."""
    import na_accel.tools.runtime as runtime

    asked = []

    def compile_regions(pipe, backend="inductor", fullgraph=True):
        asked.append((backend, fullgraph))
        return ["transformer.blocks.0", "transformer.blocks.1"]

    monkeypatch.setattr(runtime, "compile_regions", compile_regions)
    monkeypatch.setattr(runtime, "raise_recompile_limit", lambda n: 4 * n + 8)
    cfg = tmp_path / "sparse.yaml"
    cfg.write_text(WAN_SPARSE_YAML, encoding="utf-8")
    out = tmp_path / "out"
    r = invoke("generate", prompt, "--model", "tiny:wan", "--config", cfg, "--steps", 3, "--cache", "fbc:10",
               "--compile", "--compile-backend", "eager", "--out", out, "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert asked == [("eager", False)]
    (m,) = sidecars(out)
    assert m["cache"]["spec"] == "fbc:10" and "FirstBlockCacheConfig(threshold=10.0)" in m["cache"]["config"]
    assert m["compile"] == {"backend": "eager", "fullgraph": False, "blocks": 2, "recompile_limit": 16}
    assert m["patch"]["attention_calls"] == {"sparse": 4, "dense": 4, "fallback": 0, "compiled": 0}
    assert m["patch"]["ran_sparse"] is True


def test_magcache_uses_the_flux_ratios(tmp_path, prompt):
    out = tmp_path / "out"
    r = invoke("generate", prompt, "--model", "tiny:flux", "--dense", "--steps", 6, "--cache", "magcache",
               "--out", out, "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    (m,) = sidecars(out)
    assert "MagCacheConfig(" in m["cache"]["config"] and "num_inference_steps=6" in m["cache"]["config"]


def test_parse_cache(tmp_path):
    assert parse_cache(None) is None and parse_cache("none") is None
    assert parse_cache("fbc").options == {}
    assert parse_cache("fbc:0.1").options == {"threshold": 0.1}
    assert parse_cache("taylorseer:interval=2,warmup=1").options == {"interval": 2, "warmup": 1}
    assert parse_cache("magcache:calibrate").options == {"calibrate": True}
    ratios = tmp_path / "r.json"
    ratios.write_text("[1.0, 1.1, 0.9]")
    assert parse_cache(f"magcache:ratios={ratios},threshold=0.1").options == {"ratios": [1.0, 1.1, 0.9],
                                                                               "threshold": 0.1}
    with pytest.raises(InputError, match="given twice"):
        parse_cache("fbc:0.1,threshold=0.2")


def test_vae_tiling_needs_a_tiling_vae():
    from na_accel.tiny import tiny_pipeline

    pipe = tiny_pipeline("hunyuan")
    enable_vae_tiling(pipe)
    assert pipe.vae.use_tiling

    class NoTiling:
        vae = object()

    with pytest.raises(InputError, match="without enable_tiling"):
        enable_vae_tiling(NoTiling())
