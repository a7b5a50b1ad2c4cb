"""Image, video and latent metrics of a run against a reference run: PSNR, SSIM, latent error, optional LPIPS.

SSIM uses the 11x11 gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03 of Wang et al. 2004 (implemented in torch);
LPIPS runs only when the ``lpips`` package and all its weights are already on this machine (never downloaded).
Everything here takes tensors and imports nothing but torch.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any

import torch

__all__ = ["gaussian_window", "latent_metrics", "lpips_distance", "lpips_status", "psnr", "ssim"]

def _as_nchw(x: torch.Tensor) -> torch.Tensor:
    """[H, W], [C, H, W] or [N, C, H, W] -> float64 [N, C, H, W]."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[None]
    elif x.dim() != 4:
        raise ValueError(f"expected an image tensor [H, W], [C, H, W] or [N, C, H, W], got shape {tuple(x.shape)}")
    return x.to(torch.float64)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_nchw(x), _as_nchw(y)
    if x.shape != y.shape:
        raise ValueError(f"the two images differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    return x, y


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: ``10 log10(data_range^2 / MSE)``; ``inf`` for identical images.

    ``x`` and ``y``: [H, W], [C, H, W] or [N, C, H, W] with values in ``[0, data_range]``. Returns a float64
    tensor of shape [N].
    """
    x, y = _check_pair(x, y)
    mse = (x - y).pow(2).flatten(1).mean(1)
    out = 10.0 * torch.log10(torch.as_tensor(float(data_range) ** 2, dtype=torch.float64) / mse)
    return torch.where(mse == 0, torch.full_like(mse, math.inf), out)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D gaussian window (float64) of odd length ``size``."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be a positive odd integer, got {size}")
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' gaussian filtering of [N, C, H, W], each channel on its own."""
    c = x.shape[1]
    k = g.numel()
    wh = g.view(1, 1, k, 1).expand(c, 1, k, 1).to(x)
    ww = g.view(1, 1, 1, k).expand(c, 1, 1, k).to(x)
    return torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, wh, groups=c), ww, groups=c)


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (Wang, Bovik, Sheikh, Simoncelli 2004) per image, mean over channels and positions.

    Gaussian window ``window_size`` x ``window_size`` with standard deviation ``sigma``, local statistics over
    'valid' positions only (as in the authors' reference implementation), ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``.
    Images smaller than the window use the largest odd window that fits. Inputs: [H, W], [C, H, W] or
    [N, C, H, W] in ``[0, data_range]``. Returns a float64 tensor of shape [N]; 1 for identical images.
    """
    x, y = _check_pair(x, y)
    size = min(window_size, x.shape[-1], x.shape[-2])
    if size % 2 == 0:
        size -= 1
    g = gaussian_window(size, sigma)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_x, mu_y = _filter(x, g), _filter(y, g)
    sxx = _filter(x * x, g) - mu_x * mu_x
    syy = _filter(y * y, g) - mu_y * mu_y
    sxy = _filter(x * y, g) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return (num / den).flatten(1).mean(1)


def latent_metrics(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Relative L2 error ``||other - reference|| / ||reference||`` and cosine similarity, in float64."""
    if reference.shape != other.shape:
        raise ValueError(f"latent shapes differ: {tuple(reference.shape)} vs {tuple(other.shape)}")
    a = reference.detach().to("cpu", torch.float64).flatten()
    b = other.detach().to("cpu", torch.float64).flatten()
    na, nb = a.norm().item(), b.norm().item()
    diff = (b - a).norm().item()
    rel = diff / na if na > 0 else (0.0 if diff == 0 else math.inf)
    if na == 0 and nb == 0:
        cos = 1.0
    elif na == 0 or nb == 0:
        cos = 0.0
    else:
        cos = float(torch.dot(a, b).item() / (na * nb))
    return {"rel_l2": rel, "cosine": cos}


# --------------------------------------------------------------------------------------------------------------
# LPIPS (optional, local only)
# --------------------------------------------------------------------------------------------------------------

_LPIPS_CACHE: dict[str, Any] = {}


def lpips_status(net: str = "alex") -> tuple[bool, str]:
    """Whether LPIPS can run without any download: (available, reason)."""
    if importlib.util.find_spec("lpips") is None:
        return False, "unavailable: the lpips package is not installed"
    spec = importlib.util.find_spec("lpips")
    pkg_dir = os.path.dirname(spec.origin) if spec and spec.origin else ""
    lin = os.path.join(pkg_dir, "weights", "v0.1", f"{net}.pth")
    if not os.path.isfile(lin):
        return False, f"unavailable: lpips linear weights {lin} not found"
    backbone = {"alex": "alexnet-owt-", "vgg": "vgg16-", "squeeze": "squeezenet1_1-"}[net]
    ckpt_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    found = os.path.isdir(ckpt_dir) and any(f.startswith(backbone) for f in os.listdir(ckpt_dir))
    if not found:
        return False, f"unavailable: torchvision {net} backbone weights not in {ckpt_dir} (never downloaded)"
    return True, "available"


def lpips_distance(x: torch.Tensor, y: torch.Tensor, net: str = "alex") -> torch.Tensor | None:
    """LPIPS per image for [N, 3, H, W] in [0, 1], or None when LPIPS is unavailable locally."""
    ok, _ = lpips_status(net)
    if not ok:
        return None
    try:
        if net not in _LPIPS_CACHE:
            import lpips  # type: ignore[import-not-found]

            _LPIPS_CACHE[net] = lpips.LPIPS(net=net, verbose=False).eval()
        model = _LPIPS_CACHE[net]
        x, y = _check_pair(x, y)
        with torch.no_grad():
            d = model(x.float() * 2 - 1, y.float() * 2 - 1)
        return d.flatten().to(torch.float64)
    except Exception:  # noqa: BLE001 - LPIPS is best effort, never a reason to fail the check
        return None
