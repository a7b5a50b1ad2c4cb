"""Quality check: a patched run against the dense run of the same seed and inputs.

What is compared:

* the final latents (relative L2 error and cosine similarity, computed in float64);
* the decoded frames or image (PSNR and SSIM per frame and their mean; SSIM with the 11x11 gaussian window,
  sigma 1.5, K1 = 0.01, K2 = 0.03 of Wang et al. 2004, implemented in torch; LPIPS only when the ``lpips``
  package and all its weights are already on this machine -- never downloaded);
* the output of every attention module on one calibration step: the transformer is run once dense and once
  patched on the same inputs (captured from the dense run), with forward hooks on the attention modules; the
  relative L2 error per layer is reported. Errors accumulate through the network, so layer ``i`` shows the
  effect of every sparse layer up to and including ``i``.

``compare(pipe, config, prompt, seed, **gen_kwargs)`` returns a :class:`QualityReport` whose thresholds come
from the config's ``quality`` section.

The metric functions (:func:`psnr`, :func:`ssim`, :func:`latent_metrics`) take tensors and import nothing but
torch; the pipeline helpers import diffusers lazily.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = [
    "QualityReport",
    "RunResult",
    "Thresholds",
    "attention_layer_errors",
    "compare",
    "compare_runs",
    "gaussian_window",
    "latent_metrics",
    "lpips_distance",
    "lpips_status",
    "psnr",
    "run_pipeline",
    "ssim",
]


# --------------------------------------------------------------------------------------------------------------
# Image metrics
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Thresholds:
    """Pass conditions (``None`` = not checked)."""

    min_psnr: float | None = None
    min_ssim: float | None = None
    max_latent_rel_l2: float | None = None
    min_latent_cosine: float | None = None

    @classmethod
    def from_config(cls, config: Any, **overrides: float | None) -> Thresholds:
        q = getattr(config, "quality", None) if config is not None else None
        if isinstance(q, dict):
            get = q.get
        else:
            get = lambda k, d=None: getattr(q, k, d)  # noqa: E731
        t = cls(**{k: (None if q is None else get(k, None)) for k in cls.__dataclass_fields__})
        for k, v in overrides.items():
            if v is not None:
                setattr(t, k, float(v))
        return t


def _json_float(v: float | None) -> float | str | None:
    if v is None:
        return None
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def json_safe(obj: Any) -> Any:
    """Recursively make ``obj`` strict-JSON serialisable: inf/nan floats become the strings "inf"/"nan"."""
    if isinstance(obj, float):
        return _json_float(obj)
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
    return obj


def _mean(values: Iterable[float] | None) -> float | None:
    vals = [float(v) for v in (values or [])]
    return sum(vals) / len(vals) if vals else None


@dataclass
class QualityReport:
    """Result of one dense-vs-patched comparison.

    ``psnr`` / ``ssim`` values are in dB / [-1, 1]; ``psnr`` is ``inf`` for identical frames (written to JSON as
    the string ``"inf"``). ``attention`` lists ``{"name", "rel_l2"}`` per attention module on the calibration
    step. ``passed`` is True when every threshold that is set holds; ``failures`` says which did not.
    """

    model: str
    config: str
    prompt: str
    seed: int
    latent_rel_l2: float
    latent_cosine: float
    psnr_per_frame: list[float]
    ssim_per_frame: list[float]
    thresholds: Thresholds = field(default_factory=Thresholds)
    lpips_per_frame: list[float] | None = None
    lpips_status: str = "unavailable"
    attention: list[dict[str, Any]] = field(default_factory=list)
    calibration_step: int | None = None
    dense_time_s: float | None = None
    patched_time_s: float | None = None
    dense_step_s: float | None = None
    patched_step_s: float | None = None
    random_weights: bool = False
    generation: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def psnr_mean(self) -> float | None:
        return _mean(self.psnr_per_frame)

    @property
    def ssim_mean(self) -> float | None:
        return _mean(self.ssim_per_frame)

    @property
    def lpips_mean(self) -> float | None:
        return _mean(self.lpips_per_frame) if self.lpips_per_frame else None

    @property
    def attention_max_rel_l2(self) -> float | None:
        vals = [a["rel_l2"] for a in self.attention if a.get("rel_l2") is not None]
        return max(vals) if vals else None

    @property
    def speedup(self) -> float | None:
        if self.dense_time_s and self.patched_time_s:
            return self.dense_time_s / self.patched_time_s
        return None

    @property
    def failures(self) -> list[str]:
        t = self.thresholds
        out: list[str] = []
        checks = [
            ("PSNR", self.psnr_mean, t.min_psnr, ">=", " dB"),
            ("SSIM", self.ssim_mean, t.min_ssim, ">=", ""),
            ("latent relative L2", self.latent_rel_l2, t.max_latent_rel_l2, "<=", ""),
            ("latent cosine", self.latent_cosine, t.min_latent_cosine, ">=", ""),
        ]
        for name, value, limit, op, unit in checks:
            if limit is None:
                continue
            if value is None or math.isnan(value):
                out.append(f"{name} could not be measured (threshold {op} {limit:g}{unit})")
                continue
            ok = value >= limit if op == ">=" else value <= limit
            if not ok:
                out.append(f"{name} {value:.4g}{unit} fails threshold {op} {limit:g}{unit}")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["thresholds"] = asdict(self.thresholds)
        d.update(
            psnr_mean=self.psnr_mean,
            ssim_mean=self.ssim_mean,
            lpips_mean=self.lpips_mean,
            attention_max_rel_l2=self.attention_max_rel_l2,
            speedup=self.speedup,
            passed=self.passed,
            failures=self.failures,
        )
        return json_safe(d)

    def summary(self) -> str:
        def f(v: float | None, spec: str = ".4f") -> str:
            if v is None:
                return "n/a"
            if math.isinf(v):
                return "inf"
            return format(v, spec)

        model = self.model + (
            " [tiny random-weight model]" if self.random_weights and "tiny" not in self.model else ""
        )
        lines = [
            f"Quality check: {self.config} vs dense  ({'PASS' if self.passed else 'FAIL'})",
            f"  model: {model}",
            f"  prompt: {self.prompt!r}  seed: {self.seed}",
        ]
        if self.generation:
            lines.append("  " + "  ".join(f"{k}: {v}" for k, v in self.generation.items()))
        t = self.thresholds

        def lim(v: float | None, op: str) -> str:
            return f"(threshold {op} {v:g})" if v is not None else "(no threshold)"

        n = len(self.psnr_per_frame)
        lines += [
            f"  latent relative L2: {f(self.latent_rel_l2, '.3e')} {lim(t.max_latent_rel_l2, '<=')}",
            f"  latent cosine:      {f(self.latent_cosine, '.6f')} {lim(t.min_latent_cosine, '>=')}",
            f"  PSNR mean:          {f(self.psnr_mean, '.2f')} dB over {n} frame(s) {lim(t.min_psnr, '>=')}",
            f"  SSIM mean:          {f(self.ssim_mean, '.4f')} {lim(t.min_ssim, '>=')}",
        ]
        if n > 1:
            lines.append("  PSNR per frame: " + ", ".join(f(v, ".2f") for v in self.psnr_per_frame))
            lines.append("  SSIM per frame: " + ", ".join(f(v, ".4f") for v in self.ssim_per_frame))
        if self.lpips_per_frame:
            lines.append(f"  LPIPS mean:         {f(self.lpips_mean)}")
        else:
            lines.append(f"  LPIPS: {self.lpips_status}")
        if self.attention:
            worst = sorted(self.attention, key=lambda a: -(a.get("rel_l2") or 0.0))[:5]
            lines.append(
                f"  attention output rel. L2 on step {self.calibration_step} ({len(self.attention)} modules), "
                f"max {f(self.attention_max_rel_l2, '.3e')}; worst: "
                + ", ".join(f"{a['name']}={f(a['rel_l2'], '.2e')}" for a in worst)
            )
        if self.dense_time_s is not None and self.patched_time_s is not None:
            lines.append(
                f"  time: dense {self.dense_time_s:.2f} s, patched {self.patched_time_s:.2f} s "
                f"(x{f(self.speedup, '.2f')}; not a benchmark)"
            )
        for note in self.notes:
            lines.append(f"  note: {note}")
        for fail in self.failures:
            lines.append(f"  FAILED: {fail}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Running a pipeline and capturing what the comparison needs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One pipeline run: decoded frames [F, C, H, W] float32 in [0, 1] (F = 1 for an image), final latents,
    timing, and optionally the transformer inputs of one denoising step (for the attention calibration)."""

    frames: torch.Tensor
    latents: torch.Tensor | None
    total_s: float
    step_s: list[float]
    peak_mem_bytes: int | None = None
    captured: dict[int, tuple[tuple, dict]] = field(default_factory=dict)

    @property
    def mean_step_s(self) -> float | None:
        return sum(self.step_s) / len(self.step_s) if self.step_s else None

    @property
    def is_video(self) -> bool:
        return self.frames.shape[0] > 1


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def _pipe_device(pipe: Any) -> torch.device:
    dev = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None)
    return torch.device(dev) if dev is not None else torch.device("cpu")


def frames_from_output(out: Any) -> torch.Tensor:
    """A pipeline output with ``output_type="np"`` -> float32 [F, C, H, W] in [0, 1] for the first sample."""
    import numpy as np

    arr = None
    for attr in ("frames", "images", "videos"):
        if hasattr(out, attr):
            arr = getattr(out, attr)
            break
    if arr is None and isinstance(out, (tuple, list)):
        arr = out[0]
    if arr is None:
        raise TypeError(f"cannot find frames or images in pipeline output {type(out).__name__}")
    if isinstance(arr, list):
        arr = arr[0]
    elif isinstance(arr, torch.Tensor) or isinstance(arr, np.ndarray):
        if arr.ndim in (4, 5):
            arr = arr[0]
    if isinstance(arr, list):  # list of PIL images or arrays (frames)
        arr = np.stack([np.asarray(a) for a in arr])
    t = torch.as_tensor(np.asarray(arr) if not isinstance(arr, torch.Tensor) else arr).float()
    if t.dim() == 2:
        t = t[None, :, :, None]
    if t.dim() == 3:  # one image, HWC or CHW
        t = t[None]
    # [F, H, W, C] (numpy layout from diffusers) or [F, C, H, W]
    if t.shape[-1] in (1, 3, 4) and t.shape[1] not in (1, 3, 4):
        t = t.permute(0, 3, 1, 2)
    elif t.shape[-1] in (1, 3, 4) and t.shape[1] in (1, 3, 4) and t.shape[-1] != t.shape[1]:
        t = t.permute(0, 3, 1, 2)
    if t.max() > 1.5:  # uint8 values
        t = t / 255.0
    return t.clamp(0, 1).contiguous()


def run_pipeline(
    pipe: Any,
    prompt: str,
    seed: int,
    capture_step: int | Iterable[int] | None = None,
    progress: bool = True,
    **gen_kwargs: Any,
) -> RunResult:
    """Run ``pipe(prompt, ...)`` with a CPU generator seeded with ``seed`` and ``output_type="np"``.

    Records the final latents (through ``callback_on_step_end``), the time per denoising step (synchronised on
    CUDA), the total time and the peak CUDA memory. With ``capture_step`` (one step index or several) the
    transformer's inputs of the first call at each of those steps are kept (cloned) in ``captured`` for
    :func:`attention_layer_errors`.
    """
    device = _pipe_device(pipe)
    transformer = getattr(pipe, "transformer", None)
    if capture_step is None:
        wanted: set[int] = set()
    elif isinstance(capture_step, int):
        wanted = {capture_step}
    else:
        wanted = {int(c) for c in capture_step}
    state: dict[str, Any] = {"step": 0, "t_start": None, "marks": [], "latents": None, "captured": {}}

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if state["t_start"] is None:
            _sync(device)
            state["t_start"] = time.perf_counter()
        if state["step"] in wanted and state["step"] not in state["captured"]:
            state["captured"][state["step"]] = (
                tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args),
                {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()},
            )

    def on_step_end(_pipe: Any, i: int, t: Any, cb_kwargs: dict) -> dict:
        _sync(device)
        state["marks"].append(time.perf_counter())
        state["step"] = i + 1
        lat = cb_kwargs.get("latents")
        if lat is not None:
            state["latents"] = lat.detach().clone()
        return {}

    handle = transformer.register_forward_pre_hook(pre_hook, with_kwargs=True) if transformer is not None else None
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=not progress)
    generator = torch.Generator("cpu").manual_seed(int(seed))
    try:
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = pipe(
                prompt=prompt,
                generator=generator,
                output_type="np",
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents"],
                **gen_kwargs,
            )
        _sync(device)
        total = time.perf_counter() - t0
    finally:
        if handle is not None:
            handle.remove()
    start = state["t_start"] if state["t_start"] is not None else t0
    marks = [start] + state["marks"]
    steps = [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]
    peak = int(torch.cuda.max_memory_allocated(device)) if cuda else None
    return RunResult(
        frames=frames_from_output(out),
        latents=state["latents"],
        total_s=total,
        step_s=steps,
        peak_mem_bytes=peak,
        captured=state["captured"],
    )


# --------------------------------------------------------------------------------------------------------------
# Per-layer attention error on one calibration step
# --------------------------------------------------------------------------------------------------------------


def attention_modules(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every diffusers attention module of ``transformer`` (``Attention`` or ``AttentionModuleMixin``)."""
    classes: list[type] = []
    with contextlib.suppress(ImportError):
        from diffusers.models.attention_processor import Attention

        classes.append(Attention)
    with contextlib.suppress(ImportError):
        from diffusers.models.attention import AttentionModuleMixin

        classes.append(AttentionModuleMixin)
    out = []
    for name, m in transformer.named_modules():
        if (classes and isinstance(m, tuple(classes))) or (
            not classes and hasattr(m, "processor") and hasattr(m, "set_processor")
        ):
            out.append((name, m))
    return out


def _flat_output(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out.detach().to(torch.float64).flatten().cpu()
    if isinstance(out, (tuple, list)):
        parts = [_flat_output(o) for o in out]
        parts = [p for p in parts if p is not None]
        return torch.cat(parts) if parts else None
    return None


def _capture_attention(transformer: torch.nn.Module, inputs: tuple[tuple, dict]) -> dict[str, torch.Tensor]:
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in attention_modules(transformer):

        def hook(_m: torch.nn.Module, _a: Any, out: Any, _name: str = name) -> None:
            if _name not in outputs:  # first call of the module in this forward
                flat = _flat_output(out)
                if flat is not None:
                    outputs[_name] = flat

        handles.append(module.register_forward_hook(hook))
    args, kwargs = inputs
    try:
        with torch.no_grad():
            transformer(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return outputs


def attention_layer_errors(
    pipe: Any, config: Any, inputs: tuple[tuple, dict], patch_ctx: Callable[[Any, Any], Any] | None = None
) -> list[dict[str, Any]]:
    """Relative L2 error of every attention module's output, patched vs dense, for one transformer call.

    ``inputs``: the (args, kwargs) of a transformer call captured by :func:`run_pipeline`. ``pipe`` must not be
    patched on entry; it is patched with ``config`` (through ``na_accel.patched`` or ``patch_ctx``) for the
    second call and unpatched after.
    """
    transformer = pipe.transformer
    dense = _capture_attention(transformer, inputs)
    ctx = patch_ctx or _default_patch_ctx
    with ctx(pipe, sparse_config(config)):
        sparse = _capture_attention(transformer, inputs)
    errors = []
    for name, _m in attention_modules(transformer):
        a, b = dense.get(name), sparse.get(name)
        if a is None or b is None or a.shape != b.shape:
            errors.append({"name": name, "rel_l2": None})
            continue
        na = a.norm().item()
        diff = (b - a).norm().item()
        errors.append({"name": name, "rel_l2": diff / na if na > 0 else (0.0 if diff == 0 else math.inf)})
    return errors


def sparse_config(config: Any) -> Any:
    """``config`` with ``dense_steps = 0``: the calibration call is a single transformer forward, which the patch
    would count as step 0 (dense when the config has dense steps). Every other setting is kept."""
    import dataclasses

    from na_accel.config import load_config

    cfg = load_config(config)
    if getattr(cfg, "dense_steps", 0) and dataclasses.is_dataclass(cfg):
        cfg = dataclasses.replace(cfg, dense_steps=0)
    return cfg


def _default_patch_ctx(pipe: Any, config: Any) -> Any:
    import na_accel

    return na_accel.patched(pipe, config)


# --------------------------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------------------------


def config_name(config: Any) -> str:
    """A short human name for a config object, name or path."""
    if config is None:
        return "dense"
    if isinstance(config, (str, os.PathLike)):
        return os.path.splitext(os.path.basename(str(config)))[0]
    for attr in ("name", "preset"):
        v = getattr(config, attr, None)
        if isinstance(v, str) and v:
            return v
    src = getattr(config, "source", None) or getattr(config, "path", None)
    if src:
        return os.path.splitext(os.path.basename(str(src)))[0]
    return "custom"


def dense_steps_of(config: Any) -> int:
    """The number of leading dense denoising steps a config asks for (0 when it says nothing)."""
    for holder in (getattr(config, "defaults", None), config):
        if holder is None:
            continue
        v = holder.get("dense_steps") if isinstance(holder, dict) else getattr(holder, "dense_steps", None)
        if isinstance(v, int):
            return v
    return 0


def calibration_step_for(config: Any, num_steps: int) -> int:
    """The first sparse step (after the config's dense steps), or the last step when all are dense."""
    return max(0, min(dense_steps_of(config), num_steps - 1))


def compare_runs(
    dense: RunResult,
    patched: RunResult,
    *,
    model: str,
    config: str,
    prompt: str,
    seed: int,
    thresholds: Thresholds,
    attention: list[dict[str, Any]] | None = None,
    calibration_step: int | None = None,
    random_weights: bool = False,
    generation: dict[str, Any] | None = None,
    with_lpips: bool = True,
) -> QualityReport:
    """Build a :class:`QualityReport` from a dense and a patched :class:`RunResult` of the same inputs."""
    notes: list[str] = []
    if dense.latents is not None and patched.latents is not None:
        lm = latent_metrics(dense.latents, patched.latents)
    else:
        lm = {"rel_l2": math.nan, "cosine": math.nan}
        notes.append("final latents were not captured (the pipeline has no callback_on_step_end)")
    a, b = dense.frames, patched.frames
    p = psnr(a, b).tolist()
    s = ssim(a, b).tolist()
    ok, status = lpips_status() if with_lpips else (False, "not requested")
    lp = None
    if ok and a.shape[1] == 3:
        d = lpips_distance(a, b)
        lp = d.tolist() if d is not None else None
        status = "available" if lp is not None else "unavailable: LPIPS failed to run"
    return QualityReport(
        model=model,
        config=config,
        prompt=prompt,
        seed=int(seed),
        latent_rel_l2=lm["rel_l2"],
        latent_cosine=lm["cosine"],
        psnr_per_frame=[float(v) for v in p],
        ssim_per_frame=[float(v) for v in s],
        thresholds=thresholds,
        lpips_per_frame=lp,
        lpips_status=status,
        attention=attention or [],
        calibration_step=calibration_step,
        dense_time_s=dense.total_s,
        patched_time_s=patched.total_s,
        dense_step_s=dense.mean_step_s,
        patched_step_s=patched.mean_step_s,
        random_weights=random_weights,
        generation=dict(generation or {}),
        notes=notes,
    )


def _model_label(pipe: Any) -> tuple[str, bool]:
    tiny = getattr(pipe, "na_accel_tiny", None)
    if tiny:
        fam = tiny if isinstance(tiny, str) else getattr(tiny, "family", None) or ""
        return (f"tiny random-weight model ({fam})" if fam else "tiny random-weight model"), True
    name = getattr(getattr(pipe, "config", None), "_name_or_path", None) or getattr(pipe, "name_or_path", None)
    return (name or type(pipe).__name__), False


def compare(
    pipe: Any,
    config: Any,
    prompt: str,
    seed: int = 0,
    *,
    attention: bool = True,
    progress: bool = False,
    dense_run: RunResult | None = None,
    thresholds: Thresholds | None = None,
    model_label: str | None = None,
    **gen_kwargs: Any,
) -> QualityReport:
    """Run ``pipe`` dense and patched with ``config`` on the same prompt, seed and ``gen_kwargs``; compare.

    ``config``: a preset name, a YAML path, a dict or an ``NAConfig``. ``pipe`` must not already be patched (it
    is patched for the second run and restored after). ``dense_run`` reuses an earlier dense run of the same
    inputs (it must have captured the calibration step when ``attention`` is True). Thresholds come from the
    config's ``quality`` section unless ``thresholds`` is given.
    """
    import na_accel
    from na_accel.config import load_config

    cfg = load_config(config)
    if na_accel.is_patched(pipe):
        raise na_accel.NAAccelError("compare() needs an unpatched pipeline (call na_accel.unpatch(pipe) first)")
    steps = int(gen_kwargs.get("num_inference_steps") or _default_steps(pipe))
    cal = calibration_step_for(cfg, steps) if attention else None
    if dense_run is None or (attention and cal not in dense_run.captured):
        dense_run = run_pipeline(pipe, prompt, seed, capture_step=cal, progress=progress, **gen_kwargs)
    with na_accel.patched(pipe, cfg) as handle:
        patched_run = run_pipeline(pipe, prompt, seed, progress=progress, **gen_kwargs)
        notes = coverage_notes(handle, cfg, steps)
    errors = None
    if attention and cal in dense_run.captured:
        errors = attention_layer_errors(pipe, cfg, dense_run.captured[cal])
    label, random_weights = _model_label(pipe)
    name = config_name(config if isinstance(config, (str, os.PathLike)) else cfg)
    report = compare_runs(
        dense_run,
        patched_run,
        model=model_label or label,
        config=name,
        prompt=prompt,
        seed=seed,
        thresholds=thresholds or Thresholds.from_config(cfg),
        attention=errors,
        calibration_step=cal if errors is not None else None,
        random_weights=random_weights,
        generation={k: v for k, v in gen_kwargs.items() if isinstance(v, (int, float, str))},
    )
    report.notes.extend(notes)
    return report


def coverage_notes(handle: Any, config: Any, steps: int) -> list[str]:
    """Warnings that make a comparison vacuous: every step dense, or every window covering the whole grid."""
    notes = []
    ds = dense_steps_of(config)
    if ds >= steps:
        notes.append(
            f"all {steps} denoising step(s) ran dense (the config's dense_steps is {ds}): the patched run equals "
            f"dense; use --steps > {ds} for a meaningful check (the attention error above is measured with the "
            "sparse windows all the same)"
        )
    covering, grid = [], None
    with contextlib.suppress(Exception):
        for r in handle.layer_plans():
            if not r.get("patched") or not r.get("grid"):
                continue
            _rule, window = config.window_for(r["layer"])
            if window is None:  # dense by rule
                continue
            grid = tuple(r["grid"])
            covering.append(window.resolve(grid).covers_grid)
    if covering and all(covering):
        notes.append(
            f"every window covers the whole token grid {grid} at this size (clamped): attention is effectively "
            "dense; use a larger --height/--width/--frames to exercise the sparse windows"
        )
    return notes


def _default_steps(pipe: Any) -> int:
    import inspect

    try:
        return int(inspect.signature(pipe.__call__).parameters["num_inference_steps"].default)
    except (KeyError, TypeError, ValueError):
        return 50
