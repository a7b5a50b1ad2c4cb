"""bench/real_pipelines.py (the GPU script for whole pipelines at real size) run with --tiny on the CPU: the same
code path (build in code, save_pretrained, ``na-accel generate --model DIR`` per variant in a fresh process, the
sidecar read back into the results JSON) on tiny components."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "real_pipelines.py"

TINY_SPARSE = """\
version: 1
model: HunyuanVideoTransformer3DModel
defaults:
  kernel_size: [2, 3, 3]
  stride: [1, 2, 3]
  dense_steps: 15
"""


def _module():
    spec = importlib.util.spec_from_file_location("real_pipelines", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_variants_parse():
    rp = _module()
    v = rp.parse_variant("preset+taylorseer:interval=2,warmup=1+compile+offload-model+no-tiling")
    assert (v["config"], v["cache"], v["compile"], v["offload"], v["vae_tiling"]) == (
        "preset", "taylorseer:interval=2,warmup=1", True, "model", False,
    )  # fmt: skip
    assert rp.parse_variant("dense")["cache"] is None
    assert rp.parse_variant("preset+fp8+compile")["precision"] == "fp8"
    assert rp.parse_variant("preset")["precision"] is None
    for bad in ("fbc", "preset+fbc+magcache", "dense+turbo", "dense+fp8"):
        with pytest.raises(ValueError):
            rp.parse_variant(bad)


def test_projection_from_step_times_and_none_with_a_cache():
    rp = _module()
    rec = {"config": "preset", "cache": None, "dense_step_s": 2.0, "sparse_step_s": 1.0,
           "timings": {"encode_s": 0.5, "decode_s": 1.5}}  # fmt: skip
    assert rp.project(rec, preset_dense_steps=10)["total_s"] == 0.5 + 10 * 2.0 + 40 * 1.0 + 1.5
    assert rp.project({**rec, "config": "dense"}, preset_dense_steps=10)["total_s"] == 0.5 + 50 * 2.0 + 1.5
    # a cached run's last steps may be skipped ones (MagCache) or all computed ones (TaylorSeer's warm-up)
    assert rp.project({**rec, "cache": "magcache", "dense_step_s": 0.005}, preset_dense_steps=10) is None


def test_tiny_run_writes_the_phases_of_each_variant(tmp_path):
    cfg = tmp_path / "tiny_sparse.yaml"
    cfg.write_text(TINY_SPARSE, encoding="utf-8")
    out, models = tmp_path / "out", tmp_path / "models"
    rp = _module()  # the script's main in this process; each variant runs `na-accel generate` in a new one
    argv = ["--family", "hunyuan", "--tiny", "--out", str(out), "--models-dir", str(models), "--config", str(cfg),
            "--steps", "3", "--dense-steps", "1", "--variants", "preset+fbc:10"]  # fmt: skip
    assert rp.main(argv) == 0
    (result,) = out.glob("real-pipelines-hunyuan-tiny-*.json")
    doc = json.loads(result.read_text())
    assert result.with_suffix(".md").read_text().count("| preset+fbc:10 |") == 1
    assert doc["size"] == [64, 96, 9] and doc["steps"] == 3 and doc["preset_dense_steps"] == 15
    assert set(doc["build"]["params"]) == {"text_encoder", "text_encoder_2", "vae", "transformer"}
    (rec,) = doc["variants"]
    assert rec["returncode"] == 0 and "FirstBlockCacheConfig(threshold=10.0)" in rec["cache_config"]
    t = rec["timings"]
    assert len(t["step_s"]) == 3 and t["encode_s"] > 0 and t["decode_s"] > 0 and t["model_load_s"] > 0
    assert rec["dense_step_s"] == t["step_s"][0] and rec["sparse_step_s"] == t["step_s"][2]
    # fbc:10: step 0 runs all 4 attention layers (dense), steps 1 and 2 only the first block's (sparse)
    assert rec["attention_calls"] == {"sparse": 2, "dense": 4, "fallback": 0, "compiled": 0}
    assert rec["ran_sparse"] and Path(rec["output_file"]).is_file() and rec["output_bytes"] > 0
    assert rec["projection"] is None  # with a cache: see test_projection_from_step_times_and_none_with_a_cache
    saved = models / "hunyuan-tiny"
    assert (saved / "model_index.json").is_file() and (saved / "na_accel_bench_build.json").is_file()
    # a second build of the same family reuses the saved folder
    stamp = (saved / "na_accel_bench_build.json").stat().st_mtime_ns
    assert rp.ensure_model("hunyuan", True, models, "cpu")[0] == saved
    assert (saved / "na_accel_bench_build.json").stat().st_mtime_ns == stamp


# Parameters of the released models' components (diffusers / transformers checkpoints), in billions.
REAL_PARAMS = {
    "hunyuan": {"transformer": 12.82, "text_encoder": 7.50, "text_encoder_2": 0.123, "vae": 0.246},
    "wan": {"transformer": 14.29, "text_encoder": 5.68, "vae": 0.127},
    "wan1.3b": {"transformer": 1.42, "text_encoder": 5.68, "vae": 0.127},
    "flux": {"transformer": 11.90, "text_encoder": 0.123, "text_encoder_2": 4.76, "vae": 0.084},
}


@pytest.mark.parametrize("family", list(REAL_PARAMS))
def test_real_size_components_on_the_meta_device(family):
    """The real-size configs the GPU run builds are valid and have the released models' sizes (built here on the
    meta device: no memory, no GPU)."""
    import torch

    rp = _module()
    pipe, params = rp.build_pipeline(family, False, "meta", torch.bfloat16)
    assert {k: round(v / 1e9, 3) for k, v in params.items()} == pytest.approx(REAL_PARAMS[family], rel=0.01)
    pipeline = {"hunyuan": "HunyuanVideoPipeline", "flux": "FluxPipeline"}.get(family, "WanPipeline")
    assert type(pipe).__name__ == pipeline
