"""Train the embedded text-to-video model: a small HunyuanVideo pipeline (real diffusers classes) on procedural clips.

Everything that shapes the result is in ``training/tiny_t2v.yaml`` (sizes, seeds, schedules); the clips and captions
come from :mod:`na_accel.tiny.world` (deterministic from their seeds). Stages, run in order (``--stages``):

* ``vae``: render ``vae_clips`` short clips, train ``AutoencoderKLHunyuanVideo`` as a deterministic autoencoder (the
  posterior mean is decoded; object-weighted MSE + L1, a small L2 penalty on the latents), and set its
  ``scaling_factor`` so that scaled latents have unit standard deviation;
* ``latents``: render ``train_clips`` clips at the full size and encode them once with the trained VAE;
* ``transformer``: train ``HunyuanVideoTransformer3DModel`` together with the Llama and CLIP text encoders (their
  tokenizers are trained in code over the caption vocabulary) with the rectified-flow objective of
  ``FlowMatchEulerDiscreteScheduler`` (x_t = (1 - s) x_0 + s e, target e - x_0, s shifted like the scheduler's
  inference grid) and caption dropout for classifier-free guidance; an exponential moving average of the weights
  is what gets saved;
* ``save``: ``HunyuanVideoPipeline.save_pretrained`` (fp16 safetensors) of the EMA weights into ``OUT/pipeline``;
* ``eval``: load it with ``HunyuanVideoPipeline.from_pretrained``, generate the held-out ``eval`` prompts, and score
  prompt adherence with :mod:`na_accel.tiny.detect`.

Checkpoints (``OUT/ckpt/*.pt``: fp32 weights and EMA, no optimizer state) are written after every stage and every
``--checkpoint-every`` seconds of transformer training, so a run that is cut off (10-minute GPU calls) resumes with
``--resume OUT``. The training curve and every stage's numbers go to ``OUT/train_log.json``.

Usage (the GPU run; see bench/NOTES.md for the calls that produced the shipped model)::

    python training/train_tiny_t2v.py --out /tmp/t2v --stages vae,latents,transformer,save,eval
    python training/train_tiny_t2v.py --smoke --out /tmp/t2v_smoke      # CPU: every stage at toy size
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from na_accel.tiny import world  # noqa: E402
from na_accel.tiny.random_weights import _clip_tokenizer, _llama_tokenizer  # noqa: E402

STAGES = ("vae", "latents", "transformer", "save", "eval")
VAE_SEED0, TRAIN_SEED0 = 2_000_000, 1_000_000  # the eval prompts start at world.EVAL_SEED0 (3_000_000)


# --------------------------------------------------------------------------------------------------------------
# Config and logging
# --------------------------------------------------------------------------------------------------------------


def load_cfg(path: Path, smoke: bool, overrides: list[str] = ()) -> dict[str, Any]:
    """The config file with ``overrides`` (``section.key=value``, value parsed as YAML) applied, then the smoke
    sizes. An override must name a key the file has (a typo fails instead of adding an unused key)."""
    cfg = yaml.safe_load(path.read_text())
    for item in overrides:
        dotted, sep, text = item.partition("=")
        keys = dotted.split(".")
        node = cfg
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if not sep or not isinstance(node, dict) or keys[-1] not in node:
            raise SystemExit(f"--set {item!r}: expected section.key=value naming a key of {path} "
                             "(e.g. model.heads=4)")  # fmt: skip
        node[keys[-1]] = yaml.safe_load(text)
    if smoke:  # every stage at toy size, a few seconds each on a CPU
        cfg["data"].update(frames=9, height=64, width=64, train_clips=16, vae_clips=8, vae_frames=5, workers=2)
        cfg["train"]["vae"].update(steps=3, batch=2, time_budget_s=60)
        cfg["train"]["transformer"].update(batch=2, warmup=2, resume_warmup=1, time_budget_s=60, steps=3)
        cfg["generation"]["num_inference_steps"] = 2
    return cfg


class Log:
    """``OUT/train_log.json``: config, environment, per-stage results and the training curves."""

    def __init__(self, out: Path, cfg: dict, resume: bool) -> None:
        self.path = out / "train_log.json"
        if resume and self.path.exists():
            self.data = json.loads(self.path.read_text())
        else:
            self.data = {"config": cfg, "runs": [], "stages": {}, "curves": {"vae": [], "transformer": []}}
        self.data["runs"].append({"started": now(), "environment": environment()})
        self.write()

    def stage(self, name: str, **values: Any) -> None:
        self.data["stages"].setdefault(name, {}).update(values)
        self.write()

    def curve(self, name: str, row: dict) -> None:
        self.data["curves"][name].append(row)

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def environment() -> dict[str, Any]:
    import diffusers
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
           "transformers": transformers.__version__, "numpy": np.__version__, "cpu_count": os.cpu_count()}  # fmt: skip
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------------------
# The pipeline's components
# --------------------------------------------------------------------------------------------------------------


def build_components(cfg: dict) -> dict[str, Any]:
    """Untrained components of the pipeline (deterministic from ``cfg['seed']``)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    m = cfg["model"]
    words = world.vocabulary()
    tokenizer, tokenizer_2 = _llama_tokenizer(words), _clip_tokenizer(words)
    torch.manual_seed(cfg["seed"])
    text_encoder = LlamaModel(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=m["text_dim"], intermediate_size=2 * m["text_dim"],
        num_hidden_layers=m["text_layers"], num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))  # fmt: skip
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer_2), hidden_size=m["clip_dim"], intermediate_size=2 * m["clip_dim"],
        projection_dim=m["clip_dim"], num_hidden_layers=m["clip_layers"], num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer_2.bos_token_id, eos_token_id=tokenizer_2.eos_token_id,
        pad_token_id=tokenizer_2.pad_token_id,
    ))  # fmt: skip
    transformer = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=m["latent_channels"], out_channels=m["latent_channels"], num_attention_heads=m["heads"],
        attention_head_dim=m["head_dim"], num_layers=m["double_blocks"], num_single_layers=m["single_blocks"],
        num_refiner_layers=m["refiner_blocks"], mlp_ratio=m["mlp_ratio"], patch_size=1, patch_size_t=1,
        qk_norm="rms_norm", guidance_embeds=False, text_embed_dim=m["text_dim"], pooled_projection_dim=m["clip_dim"],
        rope_theta=256.0, rope_axes_dim=tuple(m["rope_axes_dim"]),
    )  # fmt: skip
    transformer.register_to_config(_na_accel_model="tiny-t2v")
    ch = tuple(m["vae_channels"])
    vae = diffusers.AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=m["latent_channels"], block_out_channels=ch,
        layers_per_block=1, norm_num_groups=min(ch), spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )  # fmt: skip
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=m["scheduler_shift"])
    return dict(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
                scheduler=scheduler, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)  # fmt: skip


LEARNED = ("transformer", "text_encoder", "text_encoder_2")  # trained together in the transformer stage


def save_ckpt(out: Path, comps: dict, ema: dict | None, state: dict, log: Log) -> None:
    """``OUT/ckpt``: ``vae.pt`` (fp32), ``live.pt`` (the transformer stage's live weights, bf16: enough to go on
    training), ``ema.pt`` (their moving average, fp32: what gets saved), each under 16 MiB; the training state goes
    into the log. No optimizer state: a resumed run restarts AdamW with a short warm-up."""
    d = out / "ckpt"
    d.mkdir(parents=True, exist_ok=True)
    blobs = {"vae.pt": comps["vae"].state_dict(),
             "live.pt": {k: {n: t.to(torch.bfloat16) for n, t in comps[k].state_dict().items()} for k in LEARNED}}
    if ema is not None:
        blobs["ema.pt"] = {k: m.state_dict() for k, m in ema.items()}
    for name, blob in blobs.items():
        torch.save(blob, d / f"{name}.tmp")
        os.replace(d / f"{name}.tmp", d / name)
    log.data["state"] = state
    log.write()


def load_ckpt(out: Path, comps: dict, log: Log) -> tuple[dict | None, dict]:
    d = out / "ckpt"
    state = dict(log.data.get("state", {}))
    if (d / "vae.pt").exists():
        comps["vae"].load_state_dict(torch.load(d / "vae.pt", map_location="cpu"))
        # the scaling factor is config, not a weight: without it the resumed run would scale its latents by the
        # class default and train the transformer on a different latent distribution than before the resume
        sf = log.data["stages"].get("vae", {}).get("scaling_factor")
        if sf is None:
            raise SystemExit(f"--resume: {log.path} records no VAE scaling_factor (stages.vae); run the vae stage")
        comps["vae"].register_to_config(scaling_factor=sf)
    if (d / "live.pt").exists():
        for k, sd in torch.load(d / "live.pt", map_location="cpu").items():
            comps[k].load_state_dict({n: t.float() for n, t in sd.items()})
    ema = None
    if (d / "ema.pt").exists():
        ema = {}
        for k, sd in torch.load(d / "ema.pt", map_location="cpu").items():
            ema[k] = copy.deepcopy(comps[k])
            ema[k].load_state_dict(sd)
    return ema, state


# --------------------------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------------------------


def _render(job: tuple[int, str, int, int, int]) -> tuple[bytes, str]:
    seed, split, frames, height, width = job
    video, caption, _scene = world.make_clip(seed, split=split, frames=frames, height=height, width=width)
    return video.tobytes(), caption


def clips(seeds: range, split: str, frames: int, height: int, width: int, workers: int, chunk: int = 256):
    """Yield (uint8 tensor [n, T, H, W, 3], captions) chunks of rendered clips, rendered by ``workers`` processes."""
    jobs = [(s, split, frames, height, width) for s in seeds]
    ctx = mp.get_context("fork")
    with ctx.Pool(workers) as pool:
        for start in range(0, len(jobs), chunk):
            part = pool.map(_render, jobs[start : start + chunk], chunksize=8)
            arr = np.stack([np.frombuffer(b, np.uint8).reshape(frames, height, width, 3) for b, _ in part])
            yield torch.from_numpy(arr), [c for _, c in part]


def to_vae_input(video: torch.Tensor, device) -> torch.Tensor:
    """uint8 [n, T, H, W, 3] -> float [n, 3, T, H, W] in [-1, 1] (what the VAE was trained on)."""
    return video.to(device).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


# --------------------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------------------


def object_weight(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weight ``[n, 1, T, H, W]``: ``1 + weight`` on object pixels (chroma above 0.35; every object
    colour has chroma >= 0.7, every background <= 0.18), 1 elsewhere. Objects are a few percent of the pixels; without
    the weight a small autoencoder learns the backgrounds and drops them."""
    chroma = (x.amax(1, keepdim=True) - x.amin(1, keepdim=True)) / 2.0  # x in [-1, 1]
    return 1.0 + weight * (chroma > 0.35).float()


def stage_vae(cfg: dict, comps: dict, dev, log: Log) -> None:
    d, t = cfg["data"], cfg["train"]["vae"]
    vae = comps["vae"].to(dev).train()
    say(f"vae: rendering {d['vae_clips']} clips of {d['vae_frames']} frames")
    data = torch.cat([v for v, _ in clips(range(VAE_SEED0, VAE_SEED0 + d["vae_clips"]), "train", d["vae_frames"],
                                          d["height"], d["width"], d["workers"])])  # fmt: skip
    opt = torch.optim.AdamW(vae.parameters(), lr=t["lr"], weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg["seed"] + 1)
    t0, step = time.time(), 0
    while step < t["steps"] and time.time() - t0 < t["time_budget_s"]:
        progress = min(1.0, max(step / t["steps"], (time.time() - t0) / t["time_budget_s"]))
        lr = t["lr"] * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(data), (t["batch"],), generator=g)
        x = to_vae_input(data[idx], dev)
        w = object_weight(x, t["object_weight"])
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.mode()).sample
        rec = rec.float()
        err = rec - x
        mse = (err.square() * w).mean() / w.mean()
        l1 = (err.abs() * w).mean() / w.mean()
        latent_l2 = post.mean.float().square().mean()
        loss = mse + 0.5 * l1 + t["latent_l2"] * latent_l2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == t["steps"] - 1:
            psnr = float(10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10)))
            log.curve("vae", {"step": step, "t": round(time.time() - t0, 1), "weighted_mse": float(mse.detach()),
                              "weighted_l1": float(l1.detach()), "psnr_weighted": psnr, "lr": lr})  # fmt: skip
            say(f"vae step {step}: mse {float(mse.detach()):.5f} psnr {psnr:.2f} dB")
        step += 1
    vae.eval()
    # scaling factor: scaled latents (posterior means) have unit standard deviation
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        zs = [vae.encode(to_vae_input(data[i : i + 32], dev)).latent_dist.mode().float()
              for i in range(0, min(256, len(data)), 32)]  # fmt: skip
        z = torch.cat(zs)
        rec = vae.decode(z[:8]).sample.float()
    std = float(z.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    ref = to_vae_input(data[:8], dev)
    psnr = float(10 * torch.log10(4.0 / torch.nn.functional.mse_loss(rec, ref)))
    obj = object_weight(ref, 1.0) > 1.0
    obj_psnr = float(10 * torch.log10(4.0 / (rec - ref).square()[obj.expand_as(ref)].mean()))
    log.stage("vae", steps=step, seconds=round(time.time() - t0, 1), latent_std=std, scaling_factor=1.0 / std,
              latent_mean=float(z.mean()), recon_psnr_db=psnr, object_psnr_db=obj_psnr)  # fmt: skip
    say(f"vae: {step} steps, latent std {std:.3f}, reconstruction PSNR {psnr:.2f} dB, on objects {obj_psnr:.2f} dB")


def vae_from(comps: dict, path: Path, log: Log) -> None:
    """Load the VAE of a saved pipeline folder (``PATH/vae``) into ``comps`` and record where it came from (the
    scaling factor travels in its config). Its architecture must match the config's ``model`` section."""
    import diffusers

    saved = diffusers.AutoencoderKLHunyuanVideo.from_pretrained(path / "vae", torch_dtype=torch.float32)
    comps["vae"].load_state_dict(saved.state_dict())  # strict: a mismatched config fails here
    sf = float(saved.config.scaling_factor)
    comps["vae"].register_to_config(scaling_factor=sf)
    log.stage("vae", source=str(path), scaling_factor=sf)
    say(f"vae: loaded from {path} (scaling factor {sf:.4f})")


def stage_latents(cfg: dict, comps: dict, dev) -> tuple[torch.Tensor, list[str]]:
    d = cfg["data"]
    vae = comps["vae"].to(dev).eval()
    sf = vae.config.scaling_factor
    out, caps = [], []
    t0 = time.time()
    for video, captions in clips(range(TRAIN_SEED0, TRAIN_SEED0 + d["train_clips"]), "train", d["frames"],
                                 d["height"], d["width"], d["workers"]):  # fmt: skip
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            for i in range(0, len(video), 32):
                z = vae.encode(to_vae_input(video[i : i + 32], dev)).latent_dist.mode()
                out.append((z.float() * sf).to(torch.float16))
        caps += captions
        if len(caps) % 4096 < len(captions):
            say(f"latents: {len(caps)} / {d['train_clips']} ({time.time() - t0:.0f} s)")
    lat = torch.cat(out)
    say(f"latents: {tuple(lat.shape)}, std {float(lat.float().std()):.3f}, {time.time() - t0:.0f} s")
    return lat, caps


def make_pipe(comps: dict):
    from diffusers import HunyuanVideoPipeline

    return HunyuanVideoPipeline(**comps)


def _total_seconds(t: dict) -> float:
    """The transformer schedule's time bound (``total_seconds``; absent or null: none)."""
    value = t.get("total_seconds")
    return math.inf if value is None else float(value)


def transformer_lr(t: dict, step: int, seconds: float = 0.0) -> float:
    """Cosine decay from ``lr`` to ``min_lr`` over ``steps`` or ``total_seconds`` of training (whichever ends first;
    ``seconds`` counts earlier calls too, so a resumed run continues the same schedule)."""
    progress = min(1.0, max(step / t["steps"], seconds / _total_seconds(t)))
    return t["min_lr"] + (t["lr"] - t["min_lr"]) * 0.5 * (1 + math.cos(math.pi * progress))


def stage_transformer(cfg: dict, comps: dict, ema: dict | None, state: dict, lat: torch.Tensor, caps: list[str],
                      dev, log: Log, out: Path, checkpoint_every: float) -> dict:  # fmt: skip
    t = cfg["train"]["transformer"]
    m = cfg["model"]
    shift = m["scheduler_shift"]
    pipe = make_pipe(comps)
    pipe.to(dev)
    modules = {k: comps[k] for k in ("transformer", "text_encoder", "text_encoder_2")}
    for mod in modules.values():
        mod.train()
    if ema is None:
        ema = {k: copy.deepcopy(mod).eval().requires_grad_(False) for k, mod in modules.items()}
    for mod in ema.values():
        mod.to(dev)
    params = [p for mod in modules.values() for p in mod.parameters()]
    opt = torch.optim.AdamW(params, lr=t["lr"], betas=(0.9, 0.99), weight_decay=t["weight_decay"])
    step0 = state.get("transformer_step", 0)
    seconds0 = state.get("transformer_seconds", 0.0)  # training time of earlier calls (the schedule's clock)
    total = _total_seconds(t)
    g = torch.Generator().manual_seed(cfg["seed"] + 2 + step0)
    gd = torch.Generator(dev).manual_seed(cfg["seed"] + 3 + step0)  # noise on the device: no host round trip
    n = len(caps)
    t0 = last_ckpt = time.time()
    step = step0
    guidance = torch.full((t["batch"],), cfg["generation"]["guidance_scale"] * 1000.0, device=dev)
    losses: list[float] = []
    warmup = t["resume_warmup"] if step0 else t["warmup"]
    while step < t["steps"] and time.time() - t0 < t["time_budget_s"] and seconds0 + time.time() - t0 < total:
        warm = min(1.0, (step - step0 + 1) / warmup)
        lr = warm * transformer_lr(t, step, seconds0 + time.time() - t0)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(n, (t["batch"],), generator=g)
        x0 = lat[idx.to(lat.device)].to(dev).float()
        drop = torch.rand(t["batch"], generator=g) < t["caption_dropout"]
        prompts = ["" if dr else caps[i] for i, dr in zip(idx.tolist(), drop.tolist())]
        u = torch.rand(t["batch"], generator=gd, device=dev)
        sigma = shift * u / (1 + (shift - 1) * u)
        noise = torch.randn(x0.shape, generator=gd, device=dev)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            pe, pooled, mask = pipe.encode_prompt(prompt=prompts, device=dev, max_sequence_length=m["max_text_tokens"])
            v = comps["transformer"](hidden_states=xt, timestep=sigma * 1000.0, encoder_hidden_states=pe,
                                     encoder_attention_mask=mask.to(pe.dtype), pooled_projections=pooled,
                                     guidance=guidance, return_dict=False)[0]  # fmt: skip
        loss = torch.nn.functional.mse_loss(v.float(), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, t["grad_clip"])
        opt.step()
        decay = min(t["ema"], (1 + step - step0) / (10 + step - step0))
        with torch.no_grad():
            for k, mod in modules.items():
                torch._foreach_lerp_(list(ema[k].parameters()), list(mod.parameters()), 1 - decay)
        losses.append(float(loss.detach()))
        step += 1
        if step % 50 == 0:
            el = time.time() - t0
            row = {"step": step, "t": round(el, 1), "loss": sum(losses) / len(losses), "grad_norm": float(gn),
                   "lr": lr, "samples_per_s": (step - step0) * t["batch"] / el}  # fmt: skip
            log.curve("transformer", row)
            say(f"step {step}: loss {row['loss']:.4f} grad {row['grad_norm']:.2f} "
                f"{row['samples_per_s']:.0f} samples/s")  # fmt: skip
            losses = []
        if time.time() - last_ckpt > checkpoint_every:
            save_ckpt(out, comps, ema, dict(state, transformer_step=step,
                                            transformer_seconds=seconds0 + time.time() - t0), log)  # fmt: skip
            last_ckpt = time.time()
    state = dict(state, transformer_step=step, transformer_seconds=round(seconds0 + time.time() - t0, 1))
    prev = log.data["stages"].get("transformer", {})
    log.stage("transformer", steps=step, seconds=round(prev.get("seconds", 0) + time.time() - t0, 1),
              samples=step * t["batch"])  # fmt: skip
    save_ckpt(out, comps, ema, state, log)
    return ema


def stage_save(cfg: dict, comps: dict, ema: dict, out: Path, log: Log) -> Path:
    final = dict(comps)
    for k, mod in ema.items():
        final[k] = mod
    pipe = make_pipe({k: (v.to("cpu") if isinstance(v, torch.nn.Module) else v) for k, v in final.items()})
    pipe.to(dtype=torch.float16)
    path = out / "pipeline"
    pipe.save_pretrained(path, safe_serialization=True)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    gen = dict(cfg["generation"], height=cfg["data"]["height"], width=cfg["data"]["width"],
               num_frames=cfg["data"]["frames"], max_sequence_length=cfg["model"]["max_text_tokens"])  # fmt: skip
    (path / "na_accel_generation.json").write_text(json.dumps(gen, indent=1) + "\n")
    log.stage("save", path=str(path), bytes=size)
    say(f"saved the pipeline to {path} ({size / 2**20:.1f} MiB)")
    return path


def stage_eval(cfg: dict, path: Path, dev, log: Log, out: Path, count: int, batch: int) -> None:
    """Dense generations of the held-out eval prompts, scored by the detector."""
    from diffusers import HunyuanVideoPipeline

    from na_accel.tiny import detect
    from na_accel.tiny.trained import generation_defaults

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    pipe = HunyuanVideoPipeline.from_pretrained(path, dtype=dtype).to(dev)
    pipe.set_progress_bar_config(disable=True)
    gen = generation_defaults(path)
    seeds, scenes, captions = map(list, zip(*world.eval_prompts(count), strict=True))
    rows, t0 = [], time.time()
    samples = []
    for start in range(0, count, batch):
        prompts = captions[start : start + batch]
        gens = [torch.Generator("cpu").manual_seed(seeds[start + j]) for j in range(len(prompts))]
        with torch.no_grad():
            frames = pipe(prompt=prompts, negative_prompt=[gen["negative_prompt"]] * len(prompts), generator=gens,
                          output_type="np", **{k: v for k, v in gen.items() if k != "negative_prompt"}).frames
        for j, video in enumerate(frames):
            u8 = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
            det = detect.detect(u8)
            score = detect.adherence(scenes[start + j], det)
            rows.append({"prompt": prompts[j], "scene": scenes[start + j].to_dict(), "adherence": score,
                         "coherence": detect.temporal_coherence(u8)})  # fmt: skip
            if len(samples) < 4:
                samples.append(u8)
        say(f"eval: {len(rows)} / {count} ({time.time() - t0:.0f} s)")
    summary = detect.summarize([r["adherence"] for r in rows])
    summary["temporal_coherence_mean"] = float(np.mean([r["coherence"] for r in rows]))
    summary["clips"] = count
    summary["seconds"] = round(time.time() - t0, 1)
    log.stage("eval", **summary)
    (out / "eval.json").write_text(json.dumps({"summary": summary, "clips": rows}, indent=1))
    strip = np.concatenate([np.concatenate(list(v[:: max(1, len(v) // 8)][:8]), axis=1) for v in samples], axis=0)
    import imageio.v2 as imageio

    imageio.imwrite(out / "eval_samples.png", strip)
    say(f"eval: {json.dumps(summary)}")


# --------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "training" / "tiny_t2v.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config value (repeatable), e.g. --set model.heads=4")
    ap.add_argument("--out", type=Path, required=True, help="run directory: checkpoints, log, pipeline")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {', '.join(STAGES)}")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/ckpt (weights; optimizer restarts)")
    ap.add_argument("--checkpoint-every", type=float, default=120.0, help="seconds between transformer checkpoints")
    ap.add_argument("--transformer-seconds", type=float, default=None, help="override the transformer time budget")
    ap.add_argument("--vae-from", type=Path, default=None,
                    help="take the VAE (weights and scaling factor) from a saved pipeline folder instead of the vae "
                         "stage, e.g. the shipped na_accel/tiny/t2v_pipeline when only the transformer changes")
    ap.add_argument("--eval-count", type=int, default=64)
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (checks every stage end to end)")
    args = ap.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        ap.error(f"unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
    cfg = load_cfg(args.config, args.smoke, args.overrides)
    if args.transformer_seconds is not None:
        cfg["train"]["transformer"]["time_budget_s"] = args.transformer_seconds
    args.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log = Log(args.out, cfg, args.resume)
    comps = build_components(cfg)
    ema, state = load_ckpt(args.out, comps, log) if args.resume else (None, {})
    if args.vae_from is not None:
        if "vae" in stages:
            ap.error("--vae-from replaces the vae stage; leave 'vae' out of --stages")
        vae_from(comps, args.vae_from, log)
        state["vae_done"] = True
    say(f"device {dev}; stages {stages}; resumed at {state or 'start'}")
    if "vae" in stages:
        stage_vae(cfg, comps, dev, log)
        state["vae_done"] = True
        save_ckpt(args.out, comps, ema, state, log)
    if "latents" in stages or "transformer" in stages:
        lat, caps = stage_latents(cfg, comps, dev)
        if "transformer" in stages:
            ema = stage_transformer(cfg, comps, ema, state, lat, caps, dev, log, args.out, args.checkpoint_every)
        del lat
    path = args.out / "pipeline"
    if "save" in stages:
        if ema is None:
            raise SystemExit("save: no EMA weights (run the transformer stage or --resume a run that has one)")
        path = stage_save(cfg, comps, ema, args.out, log)
    if "eval" in stages:
        stage_eval(cfg, path, dev, log, args.out, args.eval_count if not args.smoke else 2, args.eval_batch)
    log.data["runs"][-1]["finished"] = now()
    log.write()


if __name__ == "__main__":
    main()
