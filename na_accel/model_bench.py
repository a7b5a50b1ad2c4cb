"""End-to-end step benchmark: a real-size transformer with random weights, dense vs a config.

Speed does not depend on the weights, so the transformer is built directly on the GPU in bf16 with the real
model's configuration (``REAL_CONFIGS``), fed random inputs of the real shapes, and one denoising step (one
transformer call) is timed dense and patched. On a CPU only the tiny transformer can be used (``tiny=True``),
which exercises the code path but measures nothing meaningful.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from .generate import InputError

__all__ = ["REAL_CONFIGS", "REAL_SIZES", "BenchCase", "build_transformer", "make_inputs", "run_bench"]

# Transformer class and constructor arguments of the real models (diffusers 0.42.1 config.json values).
REAL_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    # hunyuanvideo-community/HunyuanVideo, 12.8B
    "hunyuan": (
        "HunyuanVideoTransformer3DModel",
        dict(
            in_channels=16,
            out_channels=16,
            num_attention_heads=24,
            attention_head_dim=128,
            num_layers=20,
            num_single_layers=40,
            num_refiner_layers=2,
            mlp_ratio=4.0,
            patch_size=2,
            patch_size_t=1,
            qk_norm="rms_norm",
            guidance_embeds=True,
            text_embed_dim=4096,
            pooled_projection_dim=768,
            rope_theta=256.0,
            rope_axes_dim=(16, 56, 56),
        ),
    ),
    # black-forest-labs/FLUX.1-dev, 11.9B
    "flux": (
        "FluxTransformer2DModel",
        dict(
            patch_size=1,
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        ),
    ),
    # nvidia/Cosmos-1.0-Diffusion-7B-Text2World, 7.2B
    "cosmos": (
        "CosmosTransformer3DModel",
        dict(
            in_channels=16,
            out_channels=16,
            num_attention_heads=32,
            attention_head_dim=128,
            num_layers=28,
            mlp_ratio=4.0,
            text_embed_dim=1024,
            adaln_lora_dim=256,
            max_size=(128, 240, 240),
            patch_size=(1, 2, 2),
            rope_scale=(2.0, 1.0, 1.0),
            concat_padding_mask=True,
            extra_pos_embed_type="learnable",
        ),
    ),
    # Wan-AI/Wan2.1-T2V-14B-Diffusers, 14.3B
    "wan": (
        "WanTransformer3DModel",
        dict(
            patch_size=(1, 2, 2),
            num_attention_heads=40,
            attention_head_dim=128,
            in_channels=16,
            out_channels=16,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=13824,
            num_layers=40,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            image_dim=None,
            added_kv_proj_dim=None,
            rope_max_seq_len=1024,
        ),
    ),
}

# Usual generation size (height, width, frames), VAE factors (spatial, temporal) and text length per family.
REAL_SIZES: dict[str, dict[str, Any]] = {
    "hunyuan": dict(height=720, width=1280, frames=129, vae_spatial=8, vae_temporal=4, text_tokens=256),
    "flux": dict(height=1024, width=1024, frames=1, vae_spatial=8, vae_temporal=1, text_tokens=512),
    "cosmos": dict(height=704, width=1280, frames=121, vae_spatial=8, vae_temporal=8, text_tokens=512),
    "wan": dict(height=720, width=1280, frames=81, vae_spatial=8, vae_temporal=4, text_tokens=512),
}

FAMILY_BY_CLASS = {cls: fam for fam, (cls, _) in REAL_CONFIGS.items()}


def family_from(family: str | None, model_class: str | None) -> str:
    if model_class:
        if model_class in FAMILY_BY_CLASS:
            fam = FAMILY_BY_CLASS[model_class]
            if family and family != fam:
                raise InputError(f"--model-class {model_class} is a {fam} model, not {family}")
            return fam
        raise InputError(f"unsupported model class {model_class!r}; choose one of {', '.join(FAMILY_BY_CLASS)}")
    fam = family or "hunyuan"
    if fam not in REAL_CONFIGS:
        raise InputError(f"unknown family {fam!r}; choose one of {', '.join(REAL_CONFIGS)}")
    return fam


@dataclass
class BenchCase:
    family: str
    height: int
    width: int
    frames: int
    tiny: bool
    vae_spatial: int
    vae_temporal: int
    text_tokens: int

    @property
    def latent_shape(self) -> tuple[int, ...]:
        h, w = self.height // self.vae_spatial, self.width // self.vae_spatial
        if self.family == "flux":
            return (16, h, w)
        return (16, (self.frames - 1) // self.vae_temporal + 1, h, w)

    @property
    def token_grid(self) -> tuple[int, ...]:
        lat = self.latent_shape
        if self.family == "flux":
            return (lat[1] // 2, lat[2] // 2)
        return (lat[1], lat[2] // 2, lat[3] // 2)


def make_case(family: str, height: int | None, width: int | None, frames: int | None, tiny: bool) -> BenchCase:
    if tiny:
        from .tiny import default_generation_kwargs

        d = default_generation_kwargs(family)
        sizes = dict(
            height=d["height"],
            width=d["width"],
            frames=d.get("num_frames", 1),
            vae_spatial=8,
            vae_temporal=8 if family == "cosmos" else (1 if family == "flux" else 4),
            text_tokens=d.get("max_sequence_length", 32),
        )
    else:
        sizes = dict(REAL_SIZES[family])
    h = height if height is not None else sizes["height"]
    w = width if width is not None else sizes["width"]
    f = frames if frames is not None else sizes["frames"]
    mult = sizes["vae_spatial"] * 2
    for name, v in (("height", h), ("width", w)):
        if v <= 0 or v % mult:
            raise InputError(f"--{name} {v} is not a positive multiple of {mult} (VAE scale x patch size)")
    if family == "flux":
        if f != 1:
            raise InputError(f"FLUX generates images; --frames must be 1 or omitted, got {f}")
    elif f < 1 or (f - 1) % sizes["vae_temporal"]:
        t = sizes["vae_temporal"]
        raise InputError(f"--frames {f} is not of the form {t}k+1 required by the {family} VAE")
    return BenchCase(family, h, w, f, tiny, sizes["vae_spatial"], sizes["vae_temporal"], sizes["text_tokens"])


def build_transformer(family: str, tiny: bool, device: str, dtype: Any) -> Any:
    import torch

    if tiny:
        from .tiny import tiny_transformer

        return tiny_transformer(family).to(device=device, dtype=dtype).eval()
    import diffusers

    cls_name, kwargs = REAL_CONFIGS[family]
    kwargs = dict(kwargs)
    if family == "cosmos" and kwargs.get("concat_padding_mask"):
        try:
            import torchvision  # noqa: F401
        except ImportError:  # the padding-mask channel needs torchvision's resize; speed is unaffected
            kwargs["concat_padding_mask"] = False
    cls = getattr(diffusers, cls_name)
    with torch.device(device):
        model = cls(**kwargs).to(dtype)
    return model.eval()


def make_inputs(family: str, transformer: Any, case: BenchCase, device: str, dtype: Any, seed: int = 0) -> dict:
    """Random transformer inputs of the right shapes for one conditional denoising step."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    cfg = transformer.config
    lat = case.latent_shape
    n_text = case.text_tokens
    t = torch.tensor([500.0], device=device)
    if family == "hunyuan":
        mask = torch.ones(1, n_text, device=device, dtype=torch.bool)
        return dict(
            hidden_states=rnd(1, *lat),
            timestep=t.to(dtype),
            encoder_hidden_states=rnd(1, n_text, cfg.text_embed_dim),
            encoder_attention_mask=mask,
            pooled_projections=rnd(1, cfg.pooled_projection_dim),
            guidance=torch.tensor([6000.0], device=device, dtype=dtype),
            return_dict=False,
        )
    if family == "flux":
        c, h, w = lat
        img_ids = torch.zeros(h // 2, w // 2, 3)
        img_ids[..., 1] += torch.arange(h // 2)[:, None]
        img_ids[..., 2] += torch.arange(w // 2)[None, :]
        return dict(
            hidden_states=rnd(1, (h // 2) * (w // 2), cfg.in_channels),
            encoder_hidden_states=rnd(1, n_text, cfg.joint_attention_dim),
            pooled_projections=rnd(1, cfg.pooled_projection_dim),
            timestep=(t / 1000).to(dtype),
            img_ids=img_ids.reshape(-1, 3).to(device=device, dtype=dtype),
            txt_ids=torch.zeros(n_text, 3, device=device, dtype=dtype),
            guidance=torch.tensor([3.5], device=device, dtype=dtype) if cfg.guidance_embeds else None,
            return_dict=False,
        )
    if family == "cosmos":
        return dict(
            hidden_states=rnd(1, *lat),
            timestep=t.to(dtype),
            encoder_hidden_states=rnd(1, n_text, cfg.text_embed_dim),
            fps=30,
            padding_mask=torch.zeros(1, 1, case.height, case.width, device=device, dtype=dtype),
            return_dict=False,
        )
    if family == "wan":
        return dict(
            hidden_states=rnd(1, *lat),
            timestep=t,
            encoder_hidden_states=rnd(1, n_text, cfg.text_dim),
            return_dict=False,
        )
    raise AssertionError(family)


def _time(fn: Any, device: str, warmup: int, iters: int) -> list[float]:
    import torch

    cuda = device.startswith("cuda")
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def run_bench(
    family: str,
    config: Any,
    config_name: str,
    case: BenchCase,
    *,
    device: str,
    iters: int = 1,
    warmup: int = 1,
    total_steps: int = 50,
    echo: Any = print,
) -> dict[str, Any]:
    """Time one transformer call dense and patched; return a JSON-ready record."""
    import torch

    import na_accel

    from .quality import dense_steps_of

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    tr = build_transformer(family, case.tiny, device, dtype)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in tr.parameters())
    inputs = make_inputs(family, tr, case, device, dtype)
    echo(
        f"built {type(tr).__name__} ({n_params / 1e9:.2f}B parameters, {str(dtype).replace('torch.', '')}) "
        f"on {device} in {build_s:.1f} s; token grid {case.token_grid}"
    )

    def step() -> None:
        with torch.no_grad():
            tr(**inputs)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    echo("timing dense ...")
    dense = _time(step, device, warmup, iters)
    dense_mem = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    patch_summary = None
    echo(f"timing {config_name} ...")
    handle = _patch(na_accel, tr, config)
    layer_plans = None
    try:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        patched = _time(step, device, warmup, iters)
        patched_mem = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
        patch_summary = handle.summary()
        layer_plans = plan_rows(handle)
    finally:
        handle.unpatch()
    d, p = statistics.median(dense), statistics.median(patched)
    ds = min(dense_steps_of(config), total_steps)
    proj_dense = total_steps * d
    proj_patched = ds * d + (total_steps - ds) * p
    return {
        "family": family,
        "model_class": type(tr).__name__,
        "parameters": n_params,
        "tiny": case.tiny,
        "random_weights": True,
        "config": config_name,
        "height": case.height,
        "width": case.width,
        "frames": case.frames,
        "latent_shape": list(case.latent_shape),
        "token_grid": list(case.token_grid),
        "text_tokens": case.text_tokens,
        "dtype": str(dtype).replace("torch.", ""),
        "iters": iters,
        "warmup": warmup,
        "dense_step_s": d,
        "patched_step_s": p,
        "dense_step_all_s": dense,
        "patched_step_all_s": patched,
        "speedup_per_sparse_step": d / p if p > 0 else None,
        "dense_steps": ds,
        "projection_steps": total_steps,
        "projected_dense_s": proj_dense,
        "projected_patched_s": proj_patched,
        "projected_speedup": proj_dense / proj_patched if proj_patched > 0 else None,
        "peak_mem_dense_bytes": dense_mem,
        "peak_mem_patched_bytes": patched_mem,
        "patch_summary": patch_summary,
        "patch_layers": layer_plans,
        "build_s": build_s,
    }


def _patch(na_accel: Any, tr: Any, config: Any) -> Any:
    """Patch the bare transformer with the config's windows on every step (the timed call is a sparse step;
    the dense steps enter only the projection)."""
    from .quality import sparse_config

    return na_accel.patch(tr, config=sparse_config(config))


def plan_rows(handle: Any) -> list[dict[str, Any]] | None:
    """Per-layer plan of a patch handle as JSON-ready rows (None when the handle cannot say)."""
    from .quality import json_safe

    rows = getattr(handle, "layer_plans", None)
    if rows is None:
        return None
    try:
        return [json_safe({k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()}) for r in rows()]
    except Exception:  # noqa: BLE001 - reporting only
        return None
