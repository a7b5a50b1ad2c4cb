"""The embedded model's training script (training/train_tiny_t2v.py) at toy size on the CPU (``--smoke``)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_tiny_t2v", ROOT / "training" / "train_tiny_t2v.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def test_lr_schedule_ends_at_steps_or_seconds(train):
    t = {"lr": 1.0, "min_lr": 0.1, "steps": 100}
    assert train.transformer_lr(t, 0) == pytest.approx(1.0)
    assert train.transformer_lr(t, 50) == pytest.approx(0.55)
    assert train.transformer_lr(t, 100) == pytest.approx(0.1)
    timed = dict(t, total_seconds=10.0)
    assert train.transformer_lr(timed, 10, seconds=5.0) == pytest.approx(0.55)  # time ahead of the step count
    assert train.transformer_lr(timed, 10, seconds=10.0) == pytest.approx(0.1)
    assert train.transformer_lr(t, 10, seconds=1e9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.1)))


def test_config_overrides(train):
    """--set section.key=value replaces one value of the config file (parsed as YAML); a key the file lacks fails."""
    path = ROOT / "training" / "tiny_t2v.yaml"
    sets = ["model.heads=4", "train.transformer.total_seconds=450", "model.rope_axes_dim=[8, 28, 28]"]
    cfg = train.load_cfg(path, False, sets)
    assert cfg["model"]["heads"] == 4 and cfg["train"]["transformer"]["total_seconds"] == 450
    assert cfg["model"]["rope_axes_dim"] == [8, 28, 28]
    base = train.load_cfg(path, False)
    assert base["model"]["heads"] == 2 and train._total_seconds(base["train"]["transformer"]) == math.inf
    for bad in ("model.head=4", "model.heads", "nosuch.heads=1", "model.heads.x=1"):
        with pytest.raises(SystemExit, match="--set"):
            train.load_cfg(path, False, [bad])


def test_smoke_run_with_the_shipped_vae(train, tmp_path):
    """--vae-from takes the shipped VAE (weights and scaling factor); the transformer stage runs, the pipeline is
    saved, and its VAE is the shipped one."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    from na_accel.tiny.trained import PIPELINE_DIR

    out = tmp_path / "run"
    train.main(["--smoke", "--out", str(out), "--vae-from", str(PIPELINE_DIR),
                "--stages", "latents,transformer,save"])  # fmt: skip
    log = json.loads((out / "train_log.json").read_text())
    shipped = AutoencoderKLHunyuanVideo.from_pretrained(PIPELINE_DIR / "vae")
    saved = AutoencoderKLHunyuanVideo.from_pretrained(out / "pipeline" / "vae")
    assert log["stages"]["vae"]["scaling_factor"] == pytest.approx(shipped.config.scaling_factor)
    assert saved.config.scaling_factor == pytest.approx(shipped.config.scaling_factor)
    for (name, a), b in zip(shipped.state_dict().items(), saved.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert log["state"]["transformer_step"] > 0 and log["state"]["transformer_seconds"] > 0
    with pytest.raises(SystemExit):  # --vae-from replaces the vae stage
        train.main(["--smoke", "--out", str(out), "--vae-from", str(PIPELINE_DIR), "--stages", "vae"])
