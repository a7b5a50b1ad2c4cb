"""bench/quality_sweep.py (the speed-vs-quality sweep on the embedded trained model) on the CPU, small: one prompt,
two steps, one window, with ``--precisions bf16,fp8``. On the CPU every fp8 call runs in 16 bits, so the fp8 row
must equal its bf16 twin and say that all its calls fell back."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "quality_sweep.py"


def _module():
    spec = importlib.util.spec_from_file_location("quality_sweep", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_fp8_rows_compare_with_their_bf16_twin(tmp_path):
    qs = _module()
    argv = ["--out", str(tmp_path), "--count", "1", "--batch", "1", "--steps", "2", "--windows", "4x12x12",
            "--strides", "tile", "--dense-fractions", "0.5", "--precisions", "bf16,fp8", "--device", "cpu",
            "--workers", "0", "--no-warmup", "--tag", "t"]  # fmt: skip
    assert qs.main(argv) == 0
    (result,) = tmp_path.glob("quality-sweep-*-t.json")
    doc = json.loads(result.read_text())
    assert doc["settings"]["precisions"] == ["bf16", "fp8"]
    dense, bf16, fp8 = doc["rows"]
    assert (dense["label"], bf16["label"], fp8["label"]) == ("dense", "w4x12x12-stile-d1", "w4x12x12-stile-d1-fp8")
    assert bf16["precision"] == "bf16" and bf16["fp8_fallbacks"] == {} and "bf16_twin" not in bf16
    assert fp8["bf16_twin"] == bf16["label"]
    calls = fp8["attention_calls"]
    assert sum(fp8["fp8_fallbacks"].values()) == calls["sparse"] + calls["dense"] > 0
    assert fp8["psnr_vs_bf16_db"] == "inf" and fp8["ssim_vs_bf16"] == pytest.approx(1.0)  # strict JSON: "inf"
    assert fp8["adherence_delta_vs_bf16"] == 0.0 and fp8["psnr_db"] == bf16["psnr_db"]
    table = result.with_suffix(".md").read_text()
    assert "against the same config in bf16" in table
    assert f"| w4x12x12-stile-d1-fp8 | inf / inf | 1.0000 | +0.0 | {calls['sparse'] + calls['dense']} |" in table


def test_precisions_must_start_with_bf16(tmp_path):
    qs = _module()
    for bad in ("fp8", "bf16,fp4"):
        with pytest.raises(SystemExit, match="starting with bf16"):
            qs.main(["--out", str(tmp_path), "--precisions", bad, "--device", "cpu", "--count", "1"])
