#!/usr/bin/env python3
"""Whole pipelines at real size, end to end through ``na-accel generate``: time per phase and peak GPU memory,
dense against the family's preset, alone, with a diffusers cache, with regional compile, with CPU offloading.

For one family per call (a GPU call is limited to 10 minutes, the disk to 64 GB):

1. build the full pipeline in code with random weights at the real model's size (the transformer of the family
   adapter's ``real_config``; HunyuanVideo: Llama-3-8B and CLIP-L text encoders and its VAE; Wan 2.1 14B or 1.3B:
   UMT5-XXL and its VAE; FLUX.1: CLIP-L, T5-XXL and its VAE), constructed directly on the GPU in bf16, and
   ``save_pretrained`` it to ``--models-dir`` (kept and reused while the machine is warm: a build records what it
   built in ``na_accel_bench_build.json``; other families' folders are removed first, for the disk). The tokenizers
   are na_accel's small trained-in-code ones (no download; the text encoders keep their real vocabulary sizes and
   sequence lengths, so their cost is the real one);
2. run ``python -m na_accel.tools.cli generate PROMPTS --model DIR`` once per variant in a fresh process, at the
   real resolution with ``--steps`` steps (default 4), ``--vae-tiling`` and the full VAE decode, and read the JSON
   sidecar: model load, text encoding, each denoising step, decode, peak GPU memory per phase, attention calls.
   Step times are reported as the last step of each kind (dense, sparse): the first also pays one-time costs
   (CUDA set-up, the GNA kernels' Triton compilation, offloading moving weights in);
3. write ``OUT/real-pipelines-<family>-<date>.json`` (and ``.md``) after every variant, so a call cut short keeps
   what it finished. Generated files go to ``--gen-dir`` (outside OUT: a 720p video can exceed what comes back).

Variants (``--variants``, space separated): ``dense`` or ``preset``, then ``+``-joined extras: ``fbc[:T]``,
``taylorseer[:...]``, ``magcache[:...]`` (``--cache``; a ``:`` inside is kept), ``compile`` (``--compile``;
compiled variants run two prompts and the second is the measured one), ``offload-model`` / ``offload-sequential``
(``--offload``), ``no-tiling``. ``preset`` is the family's shipped preset with ``dense_steps`` set to
``--dense-steps`` (default 2) so that a short run has sparse steps; the record projects a 50-step generation with
the preset's own dense steps from the measured dense and sparse step times.

``--tiny`` runs the same code on the CPU with tiny component configs (seconds; it tests this script, measures
nothing). Usage::

    python3 bench/real_pipelines.py --family hunyuan --out OUT [--variants dense preset preset+fbc] [--steps 4]
    python3 bench/real_pipelines.py --family wan --tiny --out /tmp/rp --config tiny_sparse.yaml   # CPU check
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from na_accel.quality.environment import versions  # noqa: E402

FAMILIES = ("hunyuan", "wan", "wan1.3b", "flux")
BUILD_FILE = "na_accel_bench_build.json"
PROMPT = "a red fox runs through a snowy forest at sunrise, cinematic, detailed fur, soft light"
PROMPT_2 = "a sailing boat on a calm lake at dusk, mountains in the background, reflections on the water"

# Real generation sizes (height, width, frames) and the preset of each family.
REAL_SIZES = {"hunyuan": (720, 1280, 129), "wan": (720, 1280, 81), "wan1.3b": (480, 832, 81), "flux": (2048, 2048, 1)}
PRESETS = {"hunyuan": "hunyuan_fast", "wan": "wan_fast", "wan1.3b": "wan_fast", "flux": "flux_fast"}
EXTRAS = ("fbc", "taylorseer", "magcache", "compile", "fp8", "offload-model", "offload-sequential", "no-tiling")

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers
WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, rope_max_seq_len=1024,
)  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# Component configs: real and tiny
# --------------------------------------------------------------------------------------------------------------


def _llama(tiny: bool, tok) -> tuple[str, dict]:
    if tiny:
        cfg = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)  # fmt: skip
    else:  # the text part of xtuner/llava-llama-3-8b-v1_1 (HunyuanVideo's text_encoder)
        cfg = dict(vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
                   rope_theta=500000.0)  # fmt: skip
    cfg.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return "LlamaModel", cfg


def _clip(tiny: bool, tok) -> tuple[str, dict]:
    if tiny:
        cfg = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2,
                   num_attention_heads=4)  # fmt: skip
    else:  # openai/clip-vit-large-patch14 text model
        cfg = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768,
                   num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu")  # fmt: skip
    cfg.update(max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)  # fmt: skip
    return "CLIPTextModel", cfg


def _t5(tiny: bool, tok, umt5: bool) -> tuple[str, dict]:
    if tiny:
        cfg = dict(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=32)  # fmt: skip
    else:  # google/t5-v1_1-xxl encoder (FLUX.1) / google/umt5-xxl encoder (Wan 2.1)
        cfg = dict(vocab_size=256384 if umt5 else 32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                   num_heads=64, relative_attention_num_buckets=32, relative_attention_max_distance=128)  # fmt: skip
    cfg.update(feed_forward_proj="gated-gelu", pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
               decoder_start_token_id=tok.pad_token_id)  # fmt: skip
    return ("UMT5EncoderModel" if umt5 else "T5EncoderModel"), cfg


def _vae(family: str, tiny: bool) -> tuple[str, dict]:
    small = dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)
    if family == "hunyuan":  # the class defaults are HunyuanVideo's VAE
        return "AutoencoderKLHunyuanVideo", (small if tiny else {})
    if family == "flux":
        cfg = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                   layers_per_block=2, latent_channels=16, norm_num_groups=32, sample_size=1024, use_quant_conv=False,
                   use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)  # fmt: skip
        return "AutoencoderKL", {**cfg, **(small if tiny else {})}
    # Wan: the class defaults are Wan 2.1's VAE
    return "AutoencoderKLWan", (dict(base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1) if tiny else {})


def _transformer(family: str, tiny: bool) -> tuple[str, dict]:
    from na_accel.patching.families import family_adapter
    from na_accel.tiny.random_weights import _transformer_config

    base = "wan" if family.startswith("wan") else family
    adapter = family_adapter(base)
    if tiny:
        return adapter.model_class, _transformer_config(base)
    return adapter.model_class, dict(WAN_1_3B if family == "wan1.3b" else adapter.real_config)


# --------------------------------------------------------------------------------------------------------------
# Build and save
# --------------------------------------------------------------------------------------------------------------


_CONFIG_CLASSES = {"LlamaModel": "LlamaConfig", "CLIPTextModel": "CLIPTextConfig", "T5EncoderModel": "T5Config",
                   "UMT5EncoderModel": "UMT5Config"}  # fmt: skip


def _construct(library: str, cls_name: str, config: dict, device: str, dtype) -> Any:
    """Build a model from its config directly on ``device`` with ``dtype`` parameters (the default init, which is
    fast on a GPU; non-persistent buffers are rebuilt when the saved pipeline is loaded)."""
    import torch

    if library == "transformers":
        import transformers

        cls = getattr(transformers, cls_name)
        config_cls = getattr(transformers, _CONFIG_CLASSES[cls_name])
        make = lambda: cls(config_cls(**config))  # noqa: E731
    else:
        import diffusers

        cls = getattr(diffusers, cls_name)
        make = lambda: cls(**config)  # noqa: E731
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), torch.no_grad():
            model = make()
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval()


def build_pipeline(family: str, tiny: bool, device: str, dtype) -> tuple[Any, dict[str, int]]:
    """The pipeline of ``family`` with random weights (real-size or tiny components), and parameters per
    component."""
    import diffusers

    from na_accel.tiny import random_weights as rw

    base = "wan" if family.startswith("wan") else family
    scheduler = rw._scheduler(base)
    parts: dict[str, Any] = {}
    if family == "hunyuan":
        tok, tok2 = rw._llama_tokenizer(), rw._clip_tokenizer()
        parts["text_encoder"] = _construct("transformers", *_llama(tiny, tok), device, dtype)
        parts["text_encoder_2"] = _construct("transformers", *_clip(tiny, tok2), device, dtype)
        parts.update(tokenizer=tok, tokenizer_2=tok2)
        cls = diffusers.HunyuanVideoPipeline
    elif family == "flux":
        tok, tok2 = rw._clip_tokenizer(), rw._t5_tokenizer()
        parts["text_encoder"] = _construct("transformers", *_clip(tiny, tok), device, dtype)
        parts["text_encoder_2"] = _construct("transformers", *_t5(tiny, tok2, umt5=False), device, dtype)
        parts.update(tokenizer=tok, tokenizer_2=tok2)
        cls = diffusers.FluxPipeline
    else:
        tok = rw._t5_tokenizer()
        parts["text_encoder"] = _construct("transformers", *_t5(tiny, tok, umt5=True), device, dtype)
        parts["tokenizer"] = tok
        cls = diffusers.WanPipeline
    parts["vae"] = _construct("diffusers", *_vae(base, tiny), device, dtype)
    parts["transformer"] = _construct("diffusers", *_transformer(family, tiny), device, dtype)
    pipe = cls(scheduler=scheduler, **parts)
    params = {k: sum(p.numel() for p in v.parameters()) for k, v in parts.items() if hasattr(v, "parameters")}
    return pipe, params


def ensure_model(family: str, tiny: bool, models_dir: Path, device: str) -> tuple[Path, dict]:
    """The saved pipeline folder of ``family`` (built and saved unless an identical build is there)."""
    import torch

    want = {"family": family, "tiny": tiny, "script_version": 1}
    target = models_dir / (f"{family}-tiny" if tiny else family)
    marker = target / BUILD_FILE
    if marker.is_file():
        info = json.loads(marker.read_text())
        if {k: info.get(k) for k in want} == want:
            log(f"reusing the pipeline saved in {target}")
            return target, info
    if models_dir.is_dir():  # one family at a time on the disk
        for old in models_dir.iterdir():
            if old.is_dir() and (old / BUILD_FILE).is_file():
                log(f"removing {old} (disk)")
                shutil.rmtree(old)
    if target.exists():
        shutil.rmtree(target)
    dtype = torch.float32 if tiny else torch.bfloat16
    log(f"building {family} ({'tiny' if tiny else 'real size'}, random weights, {dtype}) on {device}")
    t0 = time.perf_counter()
    pipe, params = build_pipeline(family, tiny, device, dtype)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    log(f"built in {build_s:.1f} s: " + ", ".join(f"{k} {_count(v)}" for k, v in params.items()))
    t0 = time.perf_counter()
    tmp = target.with_name(target.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp)
    save_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
    del pipe
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    info = {**want, "params": params, "build_s": build_s, "save_s": save_s, "disk_bytes": size, "device": device,
            "dtype": str(dtype).replace("torch.", "")}  # fmt: skip
    (tmp / BUILD_FILE).write_text(json.dumps(info, indent=1))
    tmp.rename(target)
    log(f"saved {size / 2**30:.1f} GiB to {target} in {save_s:.1f} s")
    return target, info


# --------------------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------------------


def parse_variant(name: str) -> dict[str, Any]:
    """``preset+fbc:0.1+compile`` -> {config, cache, compile, precision, offload, vae_tiling}. ``fp8`` (preset only:
    ``--dense`` runs the unpatched model) runs every attention call of the preset, dense steps included, with 8-bit
    operands."""
    parts = [p for p in name.split("+") if p]
    if not parts or parts[0] not in ("dense", "preset"):
        raise ValueError(f"variant {name!r}: must start with 'dense' or 'preset'")
    out = {"name": name, "config": parts[0], "cache": None, "compile": False, "precision": None, "offload": "none",
           "vae_tiling": True}  # fmt: skip
    for p in parts[1:]:
        head = p.split(":", 1)[0]
        if head in ("fbc", "taylorseer", "magcache"):
            if out["cache"] is not None:
                raise ValueError(f"variant {name!r}: one cache at most")
            out["cache"] = p
        elif p == "compile":
            out["compile"] = True
        elif p == "fp8":
            if parts[0] != "preset":
                raise ValueError(f"variant {name!r}: fp8 applies to 'preset' (dense runs the unpatched model)")
            out["precision"] = "fp8"
        elif p in ("offload-model", "offload-sequential"):
            out["offload"] = p.split("-", 1)[1]
        elif p == "no-tiling":
            out["vae_tiling"] = False
        else:
            raise ValueError(f"variant {name!r}: unknown part {p!r}; allowed: {', '.join(EXTRAS)}")
    return out


def preset_config(family: str, dense_steps: int, out_dir: Path, config: str | None) -> tuple[Path, int]:
    """A YAML copy of the preset (or ``config``) with ``dense_steps`` replaced; and the original dense_steps."""
    import yaml

    from na_accel.patching.config import preset_path

    src = Path(config) if config else preset_path(PRESETS[family])
    data = yaml.safe_load(src.read_text(encoding="utf-8"))
    original = int(data.get("defaults", {}).get("dense_steps", 0))
    data.setdefault("defaults", {})["dense_steps"] = dense_steps
    data["description"] = f"{data.get('description', src.stem)} [bench: dense_steps {original} -> {dense_steps}]"
    path = out_dir / f"{src.stem}_d{dense_steps}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path, original


def run_variant(v: dict, args, model_dir: Path, cfg_path: Path, size: tuple[int, int, int], gen_dir: Path,
                timeout: float) -> dict[str, Any]:  # fmt: skip
    """One ``na-accel generate`` in a fresh process; the record of the measured (last) prompt."""
    out = gen_dir / v["name"].replace(":", "_").replace("+", "_")
    if out.exists():
        shutil.rmtree(out)
    prompts = gen_dir / f"prompts-{2 if v['compile'] else 1}.txt"
    prompts.write_text(PROMPT + "\n" + (PROMPT_2 + "\n" if v["compile"] else ""), encoding="utf-8")
    h, w, f = size
    cmd = [sys.executable, "-m", "na_accel.tools.cli", "generate", str(prompts), "--model", str(model_dir),
           "--height", str(h), "--width", str(w), "--steps", str(args.steps), "--seed", "0", "--out", str(out),
           "-q", "--device", args.device]  # fmt: skip
    if not args.family == "flux":
        cmd += ["--frames", str(f)]
    cmd += ["--dense"] if v["config"] == "dense" else ["--config", str(cfg_path)]
    if v["vae_tiling"]:
        cmd.append("--vae-tiling")
    if v["cache"]:
        cmd += ["--cache", v["cache"]]
    if v["compile"]:
        cmd += ["--compile", "--compile-backend", args.compile_backend]
    if v["precision"]:
        cmd += ["--precision", v["precision"]]
    if v["offload"] != "none":
        cmd += ["--offload", v["offload"]]
    if args.tiny:
        cmd += ["--dtype", "fp32"]
    rec: dict[str, Any] = {"variant": v["name"], **{k: v[k] for k in ("config", "cache", "compile", "precision",
                                                                      "offload", "vae_tiling")}}  # fmt: skip
    rec["command"] = " ".join(cmd[1:])
    log(f"variant {v['name']} (time limit {timeout:.0f} s): {rec['command']}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(":")}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        rec["returncode"], stderr = p.returncode, p.stderr
    except subprocess.TimeoutExpired as e:
        rec["returncode"], stderr = "timeout", (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (
            e.stderr or "")  # fmt: skip
        rec["error"] = f"timed out after {timeout:.0f} s"
    rec["wall_s"] = time.perf_counter() - t0
    rec["stderr_tail"] = stderr.strip().splitlines()[-12:]
    for line in rec["stderr_tail"]:
        log(f"  | {line}")
    sidecars = sorted(out.glob("*.json")) if out.is_dir() else []
    if rec["returncode"] != 0 or not sidecars:
        rec.setdefault("error", next((ln for ln in reversed(rec["stderr_tail"]) if ln.startswith("error")),
                                     f"exit {rec['returncode']}, no output"))  # fmt: skip
        return rec
    metas = [json.loads(s.read_text()) for s in sidecars]
    m = metas[-1]  # the last prompt: after compilation for compiled variants
    t = m["timings"]
    k = args.dense_steps if v["config"] == "preset" else len(t["step_s"])
    steps = t["step_s"]
    media = out / m["file"]
    # Steady state: the last step of each kind (the first of a kind also pays one-time costs: CUDA and cuBLAS
    # set-up, Triton compiling the GNA kernels, weights moved in by offloading); the means are kept too.
    rec.update(
        measured_prompt=m["prompt_index"],
        timings=t,
        first_prompt_total_s=metas[0]["timings"]["total_s"],
        dense_step_s=steps[k - 1] if k else None,
        sparse_step_s=steps[-1] if v["config"] == "preset" and len(steps) > k else None,
        mean_dense_step_s=_mean(steps[:k]),
        mean_sparse_step_s=_mean(steps[k:]) if v["config"] == "preset" else None,
        peak_gpu_mem_bytes=m["peak_gpu_mem_bytes"],
        phase_peak_gpu_mem_bytes=m.get("phase_peak_gpu_mem_bytes"),
        attention_calls=None if m["patch"] is None else m["patch"]["attention_calls"],
        ran_sparse=None if m["patch"] is None else m["patch"]["ran_sparse"],
        fp8_fallbacks=None if m["patch"] is None else m["patch"].get("fp8_fallbacks"),
        cache_config=None if m.get("cache") is None else m["cache"]["config"],
        compile_info=m.get("compile"),
        output_file=str(media),
        output_bytes=media.stat().st_size if media.is_file() else None,
        shape=[m["frames"], m["height"], m["width"]],
        warnings=m["warnings"],
        versions=m["versions"],
        device=m["device"],
    )
    return rec


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def project(rec: dict, preset_dense_steps: int, total: int = 50) -> dict | None:
    """Projected time of a ``total``-step generation from the steady-state step times: encode + dense steps +
    sparse steps (the preset's own dense_steps) + decode. None with a cache: which steps a cache skips depends on
    its schedule over the whole run (TaylorSeer computes its first steps in full, MagCache skips by accumulated
    error), so a short run's last steps do not stand for the others; compare the runs' totals instead."""
    t = rec.get("timings")
    if not t or rec.get("cache"):
        return None
    dense_step = rec["dense_step_s"]
    if rec["config"] == "preset":
        sparse = rec["sparse_step_s"]
        if sparse is None or dense_step is None:
            return None
        steps_s = preset_dense_steps * dense_step + (total - preset_dense_steps) * sparse
    else:
        steps_s = total * dense_step
    return {"steps": total, "dense_steps": preset_dense_steps if rec["config"] == "preset" else total,
            "total_s": t["encode_s"] + steps_s + t["decode_s"]}  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------


def write_results(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    path.with_suffix(".md").write_text(markdown(doc), encoding="utf-8")


def _gib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**30:.1f}"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(doc: dict) -> str:
    h, w, f = doc["size"]
    lines = [
        f"# {doc['family']} at {h}x{w}x{f}, {doc['steps']} steps ({doc['model']}); {doc['device']}, {doc['created']}",
        "",
        "| variant | load s | encode s | dense step s | sparse step s | decode s | total s | 50-step proj. s | "
        "peak GiB (enc/denoise/dec) | attention calls |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["variants"]:
        if "timings" not in r:
            lines.append(f"| {r['variant']} | failed: {r.get('error')} |||||||||")
            continue
        t, pp = r["timings"], r.get("phase_peak_gpu_mem_bytes") or {}
        peaks = "/".join(_gib(pp.get(k)) for k in ("encode", "denoise", "decode")) if pp else "-"
        proj = (r.get("projection") or {}).get("total_s")
        calls = r["attention_calls"]
        calls_s = "-" if calls is None else f"{calls['sparse']} sparse, {calls['dense']} dense"
        if r.get("fp8_fallbacks"):  # calls that asked for fp8 and ran in the inputs' precision
            calls_s += f"; fp8 fallbacks {sum(r['fp8_fallbacks'].values())}"
        lines.append(
            f"| {r['variant']} | {_s(t['model_load_s'])} | {_s(t['encode_s'])} | {_s(r['dense_step_s'])} | "
            f"{_s(r['sparse_step_s'])} | {_s(t['decode_s'])} | {_s(t['total_s'])} | {_s(proj)} | "
            f"{_gib(r['peak_gpu_mem_bytes'])} ({peaks}) | {calls_s} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=FAMILIES, required=True)
    ap.add_argument("--out", type=Path, required=True, help="where the JSON and Markdown results go")
    ap.add_argument("--variants", nargs="+", default=["dense", "preset", "preset+fbc", "preset+compile"],
                    help="variants, space separated (a cache parameter may hold commas)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--dense-steps", type=int, default=2, help="dense steps of the preset variants in this run")
    ap.add_argument("--config", help="YAML to use instead of the family preset (dense_steps is replaced)")
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--frames", type=int)
    ap.add_argument("--models-dir", type=Path, default=ROOT / ".bench_models")
    ap.add_argument("--gen-dir", type=Path, help="generated files (default: MODELS_DIR/generated)")
    ap.add_argument("--budget-s", type=float, default=540.0,
                    help="no variant starts after this many seconds from the start (the model build included); each "
                    "variant may run until this + 60 s (at least 60 s)")  # fmt: skip
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--compile-backend", default=None, help="default: inductor (eager with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="tiny components on the CPU: tests this script")
    ap.add_argument("--tag", default="", help="added to the result file name")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    variants = [parse_variant(v.strip()) for v in args.variants if v.strip()]
    if args.steps <= args.dense_steps and any(v["config"] == "preset" for v in variants):
        ap.error(f"--steps {args.steps} leaves no sparse step after --dense-steps {args.dense_steps}")

    import torch

    args.device = args.device or ("cpu" if args.tiny else "cuda")
    args.compile_backend = args.compile_backend or ("eager" if args.tiny else "inductor")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("no CUDA GPU here: real-size pipelines need one (add --tiny to test the script on the CPU)")
    from na_accel.tiny import default_generation_kwargs

    base = "wan" if args.family.startswith("wan") else args.family
    if args.tiny:
        d = default_generation_kwargs(base)
        size = (d["height"], d["width"], d.get("num_frames", 1))
    else:
        size = REAL_SIZES[args.family]
    size = (args.height or size[0], args.width or size[1], args.frames or size[2])
    args.out.mkdir(parents=True, exist_ok=True)
    gen_dir = args.gen_dir or args.models_dir / "generated"
    gen_dir.mkdir(parents=True, exist_ok=True)
    model_dir, build = ensure_model(args.family, args.tiny, args.models_dir, args.device)
    cfg_path, preset_dense = preset_config(args.family, args.dense_steps, gen_dir, args.config)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%S")
    kind = "tiny" if args.tiny else "real-size"
    result = args.out / f"real-pipelines-{args.family}{'-tiny' if args.tiny else ''}{args.tag}-{stamp}.json"
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu ({platform.machine()})"
    doc: dict[str, Any] = {
        "family": args.family,
        "model": f"{kind} random-weight pipeline, {_count(sum(build['params'].values()))} parameters",
        "build": build,
        "size": list(size),
        "steps": args.steps,
        "bench_dense_steps": args.dense_steps,
        "preset": args.config or PRESETS[args.family],
        "preset_dense_steps": preset_dense,
        "device": device,
        "versions": versions(extra=("accelerate",)),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "variants": [],
        "skipped": [],
    }
    write_results(result, doc)
    for v in variants:
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            doc["skipped"].append({"variant": v["name"], "reason": f"budget: {elapsed:.0f} s > {args.budget_s:.0f} s"})
            log(f"skipping {v['name']}: budget")
            write_results(result, doc)
            continue
        timeout = max(60.0, args.budget_s + 60.0 - elapsed)
        rec = run_variant(v, args, model_dir, cfg_path, size, gen_dir, timeout)
        rec["projection"] = project(rec, preset_dense)
        doc["variants"].append(rec)
        write_results(result, doc)
        log(f"  -> {'ok' if 'timings' in rec else 'FAILED'} in {rec['wall_s']:.0f} s; wrote {result}")
    print(markdown(doc))
    print(f"wrote {result} and {result.with_suffix('.md')}")
    return 0 if all("timings" in r for r in doc["variants"]) else 1


if __name__ == "__main__":
    sys.exit(main())
