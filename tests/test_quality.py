"""Quality metrics (PSNR, SSIM, latent errors), the report, and dense-vs-patched comparison on tiny pipelines."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from na_accel.patching.config import QualityThresholds, load_config
from na_accel.quality.metrics import gaussian_window, latent_metrics, lpips_status, psnr, ssim
from na_accel.quality.report import QualityReport
from na_accel.quality.run import run_pipeline

# ----------------------------------------------------------------------------------------------------------------
# PSNR / SSIM against known values
# ----------------------------------------------------------------------------------------------------------------


def test_identical_images_psnr_inf_ssim_one():
    x = torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.1])
def test_psnr_of_gaussian_noise_matches_sigma(sigma):
    g = torch.Generator().manual_seed(1)
    # values in [0.2, 0.8] so that noise of sigma <= 0.1 is not clipped (clipping would lower the MSE)
    x = 0.3 + 0.4 * torch.rand(3, 256, 256, generator=g)
    y = x + sigma * torch.randn(x.shape, generator=g)
    expected = -20 * math.log10(sigma)  # data range 1: PSNR = 10 log10(1 / sigma^2)
    assert abs(psnr(x, y).item() - expected) < 0.1


def test_psnr_data_range():
    x = torch.zeros(1, 1, 8, 8)
    y = torch.full((1, 1, 8, 8), 25.5)
    assert abs(psnr(x, y, data_range=255.0).item() - 20.0) < 1e-9


def test_ssim_decreases_with_noise():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 64, 64, generator=g)
    noise = torch.randn(x.shape, generator=g)
    values = [ssim(x, (x + s * noise).clamp(0, 1)).item() for s in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)]
    assert values[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(values[:-1], values[1:], strict=True)), values
    assert values[-1] < 0.7


def _naive_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Direct per-window SSIM (Wang et al. 2004, 11x11 gaussian, sigma 1.5, valid positions)."""
    g = gaussian_window(11, 1.5)
    w = torch.outer(g, g)
    a, b = a.double(), b.double()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for c in range(a.shape[0]):
        for i in range(a.shape[1] - 10):
            for j in range(a.shape[2] - 10):
                pa, pb = a[c, i : i + 11, j : j + 11], b[c, i : i + 11, j : j + 11]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
                cv = (w * (pa - ma) * (pb - mb)).sum()
                vals.append(((2 * ma * mb + c1) * (2 * cv + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return torch.stack(vals).mean().item()


def test_ssim_matches_direct_definition():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 15, 17, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert ssim(x, y).item() == pytest.approx(_naive_ssim(x, y), abs=1e-10)


def test_ssim_properties():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = torch.rand(2, 3, 32, 32, generator=g)
    s = ssim(x, y)
    assert torch.allclose(s, ssim(y, x))
    assert ((s > -1) & (s < 1)).all()
    assert gaussian_window(11, 1.5).sum().item() == pytest.approx(1.0)
    # images smaller than the window still work (the window shrinks to fit)
    assert ssim(x[..., :5, :7], x[..., :5, :7]).tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        ssim(x, y[..., :16])


def test_latent_metrics():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(1, 16, 3, 8, 12, generator=g, dtype=torch.float64)
    m = latent_metrics(a, a)
    assert m == {"rel_l2": 0.0, "cosine": pytest.approx(1.0)}
    m = latent_metrics(a, 1.1 * a)
    assert m["rel_l2"] == pytest.approx(0.1) and m["cosine"] == pytest.approx(1.0)
    b = torch.randn(a.shape, generator=g, dtype=torch.float64)
    b = b - (b * a).sum() / (a * a).sum() * a  # orthogonal to a
    assert abs(latent_metrics(a, b)["cosine"]) < 1e-9


def test_lpips_reported_unavailable_without_download(monkeypatch, tmp_path):
    """Each reason LPIPS cannot run without a download, with a stand-in lpips package (none is installed here, and
    a real one must not download anything in a test)."""
    find_spec = importlib.util.find_spec
    with monkeypatch.context() as m:
        m.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lpips" else find_spec(name, *a))
        assert lpips_status() == (False, "unavailable: the lpips package is not installed")

    pkg = tmp_path / "site" / "lpips"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    lin = pkg / "weights" / "v0.1" / "alex.pth"
    ok, why = lpips_status()
    assert not ok and why == f"unavailable: lpips linear weights {lin} not found"
    lin.parent.mkdir(parents=True)
    lin.write_bytes(b"")
    ok, why = lpips_status()
    assert not ok and why.startswith("unavailable: torchvision alex backbone weights not in") and str(hub) in why
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes(b"")
    assert lpips_status() == (True, "available")
    assert lpips_status("vgg")[0] is False  # its own weights are missing


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def _report(**kw) -> QualityReport:
    base = dict(
        model="tiny random-weight model (HunyuanVideo)",
        config="hunyuan_fast",
        prompt="a cat",
        seed=0,
        latent_rel_l2=0.05,
        latent_cosine=0.999,
        psnr_per_frame=[30.0, 32.0],
        ssim_per_frame=[0.9, 0.95],
        thresholds=QualityThresholds(min_psnr=25, min_ssim=0.85, max_latent_rel_l2=0.2, min_latent_cosine=0.97),
        attention=[{"name": "transformer_blocks.0.attn", "rel_l2": 0.1}],
        calibration_step=1,
        random_weights=True,
    )
    base.update(kw)
    return QualityReport(**base)


def test_report_pass_and_fail():
    r = _report()
    assert r.passed and r.failures == []
    assert r.psnr_mean == pytest.approx(31.0) and r.ssim_mean == pytest.approx(0.925)
    bad = _report(psnr_per_frame=[20.0, 22.0], latent_cosine=0.5)
    assert not bad.passed
    assert len(bad.failures) == 2
    assert any("PSNR" in f for f in bad.failures) and any("cosine" in f for f in bad.failures)
    assert "FAIL" in bad.summary() and "PASS" in r.summary()


def test_report_to_dict_is_strict_json():
    r = _report(psnr_per_frame=[math.inf, math.inf], ssim_per_frame=[1.0, 1.0], latent_rel_l2=0.0)
    d = r.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["psnr_mean"] == "inf" and back["passed"] is True
    for key in (
        "latent_rel_l2",
        "latent_cosine",
        "psnr_per_frame",
        "ssim_per_frame",
        "ssim_mean",
        "thresholds",
        "failures",
        "attention",
        "lpips_status",
        "random_weights",
    ):
        assert key in back
    assert "tiny random-weight model" in r.summary()


def test_thresholds_from_config_and_overrides():
    cfg = load_config({"version": 1, "quality": {"min_psnr": 20.0, "min_ssim": 0.5}})
    t = cfg.quality.with_overrides(min_psnr=99.0, max_latent_rel_l2=None)
    assert (t.min_psnr, t.min_ssim, t.max_latent_rel_l2, t.min_latent_cosine) == (99.0, 0.5, 0.2, 0.97)
    off = QualityThresholds(None, None, None, None)
    assert _report(thresholds=off, psnr_per_frame=[1.0, 2.0]).passed


# ----------------------------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flux_pipe():
    from na_accel.tiny import tiny_pipeline

    return tiny_pipeline("flux")


@pytest.fixture(scope="module")
def hunyuan_pipe():
    from na_accel.tiny import tiny_pipeline

    return tiny_pipeline("hunyuan")


def _kw(family):
    from na_accel.tiny import default_generation_kwargs

    return default_generation_kwargs(family)


def test_run_pipeline_is_deterministic_and_captures(flux_pipe):
    kw = _kw("flux")
    a = run_pipeline(flux_pipe, "a cat", 3, capture_step=1, progress=False, **kw)
    b = run_pipeline(flux_pipe, "a cat", 3, progress=False, **kw)
    assert a.frames.shape == (1, 3, kw["height"], kw["width"])
    assert a.frames.min() >= 0 and a.frames.max() <= 1
    assert len(a.step_s) == kw["num_inference_steps"] and all(s > 0 for s in a.step_s)
    assert a.latents is not None and 1 in a.captured and 0 not in a.captured
    assert torch.equal(a.frames, b.frames) and torch.equal(a.latents, b.latents)
    c = run_pipeline(flux_pipe, "a cat", 4, progress=False, **kw)
    assert not torch.equal(a.latents, c.latents)


def _window_config(kernel, dense_steps=0):
    return {
        "version": 1,
        "defaults": {"kernel_size": kernel, "stride": 1, "dense_steps": dense_steps},
        "quality": {"min_psnr": 20.0, "min_ssim": 0.5, "max_latent_rel_l2": 0.5, "min_latent_cosine": 0.9},
    }


def test_compare_whole_grid_window_matches_dense(hunyuan_pipe):
    import na_accel
    from na_accel.quality.compare import compare

    kw = _kw("hunyuan")
    r = compare(hunyuan_pipe, _window_config(-1), "a red fox", seed=0, **kw)
    assert not na_accel.is_patched(hunyuan_pipe)
    # whole-grid windows are dense attention: no sparse call, so the check tested nothing (never PASS)
    assert r.failures == [] and r.sparse_calls == 0 and not r.tested, r.summary()
    assert r.verdict == "NOTHING TESTED" and not r.passed and "NOTHING TESTED" in r.summary()
    assert r.latent_rel_l2 < 1e-3 and r.latent_cosine > 0.9999
    assert len(r.psnr_per_frame) == kw["num_frames"] and r.psnr_mean > 40
    assert r.attention and r.calibration_step == 0
    assert max(a["rel_l2"] for a in r.attention) < 1e-3
    json.dumps(r.to_dict(), allow_nan=False)


def test_compare_small_window_differs_and_reports_layers(hunyuan_pipe):
    from na_accel.quality.compare import compare

    kw = _kw("hunyuan")
    cfg = _window_config([1, 2, 2], dense_steps=1)
    r = compare(hunyuan_pipe, cfg, "a red fox", seed=0, **kw)
    assert r.calibration_step == 1  # the first sparse step
    assert r.latent_rel_l2 > 1e-3
    assert r.ssim_mean < 1.0
    errs = [a["rel_l2"] for a in r.attention if a["rel_l2"] is not None]
    assert errs and max(errs) > 1e-3
    assert r.sparse_calls > 0 and r.tested and r.attention_calls["fallback"] == 0
    strict_thresholds = QualityThresholds(None, None, 1e-9, None)
    strict = compare(hunyuan_pipe, cfg, "a red fox", seed=0, thresholds=strict_thresholds, **kw)
    assert not strict.passed and "latent relative L2" in strict.failures[0]
