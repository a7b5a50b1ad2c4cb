#!/usr/bin/env python3
"""Tuned configs (``na_accel.tune``'s chooser) against uniform-window configs of the same attention FLOPs, on the
embedded text-to-video model.

1. **Profile** (:func:`na_accel.quality.tune.profile`): the fit prompts (the first ``--fit`` held-out evaluation
   prompts of the world, :func:`na_accel.tiny.world.eval_prompts`, with their seeds) generated dense with the ladder
   probe: kept mass per (layer, step, candidate window, head).
2. **Per budget** X (``--budgets``, attention-FLOP speedup over the whole generation):

   * *uniform*: one window on every layer and a global number of dense steps: among every stride-1 window of the
     ladder and every dense-step count, the one with the most predicted kept mass (mean over layers and steps, from
     the same profile) whose speedup is at least X and below 1.25 X. The window shape is thus chosen from the
     measurements too: the comparison isolates what per-layer windows and measured dense steps add.
   * *uniform+dense steps*: the same with the most dense steps that fit the budget, up to 30% of the steps (as the
     presets do it: dense first steps, then one window), when that differs from *uniform*.
   * *tuned*: the tuner's plan (:func:`na_accel.quality.choose.sweep`) with the highest threshold whose speedup is
     at least *uniform*'s: equal or fewer attention FLOPs.
   * *tuned+dense steps*: the same with the dense steps of *uniform+dense steps* fixed (``dense_steps=``), at
     least its speedup: what per-layer windows add to the same dense steps.
   * *tuned+step ranges*: the tuner's plans with windows per step range as well
     (:func:`na_accel.quality.choose.sweep_ranges`, 1, 2 or 4 ranges), the highest threshold at least *tuned*'s
     speedup, when that plan differs from *tuned*: what per-step-range windows add at equal or fewer FLOPs.

3. **Evaluate** both on the next ``--eval`` evaluation prompts (never profiled) against their dense generations, same
   seeds: PSNR and SSIM of the decoded frames (mean over frames per clip, then over clips), relative L2 error of the
   final latents, and prompt adherence with the detector (:mod:`na_accel.tiny.detect`) against each prompt's scene.

Writes ``--out/tune-vs-uniform-<device>-<date>[-tag].json`` (environment, settings, profile, every row with its
per-clip values and config) and ``--png`` (PSNR and SSIM against the attention-FLOP speedup). Rerun after the
embedded model changes with the same command (printed in bench/NOTES.md)::

    PYTHONPATH=. python3 bench/tune_vs_uniform.py            # ~6 minutes on a 2-core CPU
    PYTHONPATH=. python3 bench/tune_vs_uniform.py --smoke --out /tmp/tvu --png /tmp/tvu/plot.png   # seconds
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import na_accel  # noqa: E402
from na_accel.patching.config import config_from_dict  # noqa: E402
from na_accel.quality.choose import Choice, sweep, sweep_ranges  # noqa: E402
from na_accel.quality.environment import versions  # noqa: E402
from na_accel.quality.ladder import LadderProbe  # noqa: E402
from na_accel.quality.tune import (  # noqa: E402
    Detector,
    config_yaml,
    device_description,
    generate_clips,
    plan_config,
    plan_dict,
    profile,
    score_clips,
    summarize_scores,
)
from na_accel.tiny import world  # noqa: E402
from na_accel.tiny.trained import PIPELINE_DIR  # noqa: E402

_T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def uniform_plan(kept: torch.Tensor, density: torch.Tensor, candidates: list, budget: float, steps: int,
                 most_dense_steps: bool = False, slack: float = 1.25) -> Choice | None:  # fmt: skip
    """A uniform config (one stride-1 window on every layer, ``d`` dense first steps) whose speedup lies in
    ``[budget, slack * budget)``: the one with the most predicted kept mass, or with ``most_dense_steps`` the one
    with the most dense steps up to 30% of the steps (then the most predicted kept mass), as the presets do it."""
    n_layers = kept.shape[0]
    best = None
    top = int(math.floor(0.3 * steps + 0.5)) if most_dense_steps else steps - 1
    for c, cand in enumerate(candidates):
        if cand.stride_kind != "1":
            continue
        for d in range(top + 1):
            cost = (d + (steps - d) * float(density[c])) / steps
            if not budget <= 1.0 / cost < slack * budget:
                continue
            cells = kept[:, d:, c]
            mean_kept = (n_layers * d + float(cells.nansum())) / (n_layers * steps)
            lowest = float(cells[~cells.isnan()].min())
            plan = Choice(math.nan, d, (c,) * n_layers, cost, mean_kept, lowest, n_layers * (steps - d))
            rank = (d, plan.predicted_kept) if most_dense_steps else (plan.predicted_kept,)
            if best is None or rank > best[0]:
                best = (rank, plan)
    return None if best is None else best[1]


def tuned_plan(plans: list[Choice], speedup: float) -> Choice | None:
    """The tuner's choice for a speedup budget: the most expensive plan (highest threshold) reaching it."""
    ok = [p for p in plans if p.speedup >= speedup * (1 - 1e-9)]
    return ok[0] if ok else None


def windows(table: Any, plan: Choice) -> dict[str, Any]:
    """Per layer its window's label (None: dense), or one per step range for a plan by step range."""
    return plan_dict(plan, table)["windows"]


def run_config(pipe: Any, cfg_dict: dict[str, Any], prompts: list[str], seeds: list[int], kw: dict[str, Any],
               batch: int, dense: Any, indices: list[int], detector: Detector) -> dict[str, Any]:  # fmt: skip
    cfg = config_from_dict(cfg_dict, source="<bench>")
    with na_accel.patched(pipe, cfg) as handle:
        clips = generate_clips(pipe, prompts, seeds, kw, batch)
        calls = handle.call_counts()
    rows = score_clips(dense, clips, indices, detector)
    return {"eval": summarize_scores(rows), "clips": rows, "seconds": clips.seconds, "attention_calls": calls}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = result["rows"]
    for ax, key, label in ((axes[0], "psnr", "PSNR vs dense (dB)"), (axes[1], "ssim", "SSIM vs dense")):
        for kind, marker in (("uniform", "s--"), ("tuned", "o-"), ("uniform+dense steps", "^:"),
                             ("tuned+dense steps", "D-"), ("tuned+step ranges", "v-")):  # fmt: skip
            pts = sorted((r["speedup"], r["eval"][key]) for r in rows if r["kind"] == kind)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=kind)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("attention-FLOP speedup over the whole generation")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    s = result["settings"]
    fig.suptitle(f"tuned vs uniform windows, embedded model, {s['eval']} held-out prompts, {s['steps']} steps, "
                 f"{result['environment']['device']}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=110)
    plt.close(fig)


def environment(pipe: Any, pipeline: Path) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = None
    weights = pipeline / "transformer" / "diffusion_pytorch_model.safetensors"
    return {"device": device_description(pipe), "versions": versions(), "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
            "pipeline": str(pipeline),
            "transformer_weights_mtime": dt.datetime.fromtimestamp(weights.stat().st_mtime, dt.timezone.utc)
            .isoformat(timespec="seconds") if weights.is_file() else None}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", type=Path, default=PIPELINE_DIR, help="saved pipeline (default: the embedded one)")
    ap.add_argument("--fit", type=int, default=3, help="profiled prompts (the first eval prompts)")
    ap.add_argument("--eval", type=int, default=4, help="evaluation prompts (the next ones; never profiled)")
    ap.add_argument("--budgets", default="2,4,8", help="attention-FLOP speedups, comma-separated")
    ap.add_argument("--queries", type=int, default=64, help="sampled queries per attention call when profiling")
    ap.add_argument("--batch", type=int, default=4, help="prompts per pipeline call")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="JSON output directory")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "tune_vs_uniform.png", help="plot path")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    ap.add_argument("--smoke", action="store_true", help="1 fit + 1 eval prompt, 3 steps, 32 queries (a code check)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.fit, args.eval, args.steps, args.queries = 1, 1, 3, 32

    from diffusers import HunyuanVideoPipeline

    gen = json.loads((args.pipeline / "na_accel_generation.json").read_text())
    if args.steps:
        gen["num_inference_steps"] = args.steps
    steps = int(gen["num_inference_steps"])
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    say(f"loading {args.pipeline}")
    pipe = HunyuanVideoPipeline.from_pretrained(args.pipeline, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    items = world.eval_prompts(args.fit + args.eval)
    seeds = [s for s, _, _ in items]
    scenes = [sc for _, sc, _ in items]
    captions = [c for _, _, c in items]
    fit = list(range(args.fit))
    ev = list(range(args.fit, args.fit + args.eval))
    detector = Detector(scenes)

    say(f"profiling {args.fit} prompt(s) dense, {args.queries} queries per call")
    probe = LadderProbe(queries=args.queries)
    table, dense_fit = profile(pipe, [captions[i] for i in fit], [seeds[i] for i in fit], gen, probe, args.batch)
    say(f"profile: {table.calls} calls, probe {table.probe_seconds:.1f} s of {dense_fit.seconds:.1f} s generation")
    say(f"dense: {args.eval} evaluation prompt(s)")
    dense_ev = generate_clips(pipe, [captions[i] for i in ev], [seeds[i] for i in ev], gen, args.batch)
    dense_adherence = [detector.reference(i, f) for i, f in zip(ev, dense_ev.frames, strict=True)]

    kept = table.head_mean()
    density = table.ladder.densities
    plans = [p for p in sweep(kept, density, table.flops) if not p.is_dense]
    ranged = [p for p in sweep_ranges(kept, density, table.flops) if not p.is_dense]
    model_class = "HunyuanVideoTransformer3DModel"
    rows: list[dict[str, Any]] = []
    result = {
        "kind": "tune vs uniform",
        "environment": environment(pipe, args.pipeline),
        "settings": {
            "fit": args.fit,
            "eval": args.eval,
            "fit_prompts": [captions[i] for i in fit],
            "eval_prompts": [captions[i] for i in ev],
            "seeds": seeds,
            "steps": steps,
            "generation": gen,
            "budgets": budgets,
            "queries": args.queries,
            "batch": args.batch,
            "grid": list(table.ladder.grid),
            "ladder": table.ladder.to_dict(),
            "smoke": args.smoke,
            "command": "PYTHONPATH=. python3 bench/tune_vs_uniform.py " + " ".join(argv or sys.argv[1:]),
            "speedup": "attention FLOPs of dense / of the config, over every layer and denoising step "
            "(grid tokens; dense steps count 1)",
        },  # fmt: skip
        "profile": {
            "calls": table.calls,
            "probe_seconds": table.probe_seconds,
            "dense_generation_seconds": dense_fit.seconds,
            "clips": args.fit,
        },  # fmt: skip
        "dense": {
            "seconds_per_clip": dense_ev.seconds / max(1, args.eval),
            "adherence": dense_adherence,
            "adherence_mean": summarize_scores(
                [{"psnr": math.inf, "ssim": 1.0, "adherence": a} for a in dense_adherence]
            )["adherence"],
        },  # fmt: skip
        "rows": rows,
    }
    stem = f"tune-vs-uniform-cpu-{dt.date.today().isoformat()}" + ("-smoke" if args.smoke else "")
    stem += f"-{args.tag}" if args.tag else ""
    json_path = args.out / f"{stem}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    for budget in budgets:
        uni = uniform_plan(kept, density, table.ladder.candidates, budget, steps)
        uni_dense = uniform_plan(kept, density, table.ladder.candidates, budget, steps, most_dense_steps=True)
        if uni is None:
            say(f"budget {budget:g}x: no uniform window fits; skipped")
            continue
        tuned = tuned_plan(plans, uni.speedup)  # at least uniform's speedup
        runs = [("uniform", uni), ("tuned", tuned)]
        by_range = tuned_plan(ranged, tuned.speedup) if tuned is not None else None
        if by_range is not None and by_range.key != tuned.key:
            runs.append(("tuned+step ranges", by_range))
        if uni_dense is not None and uni_dense.key != uni.key:
            # the tuner with the same dense steps as the preset-style config: what per-layer windows add to them
            fixed = [p for p in sweep(kept, density, table.flops, dense_steps=uni_dense.dense_steps) if not p.is_dense]
            runs += [("uniform+dense steps", uni_dense), ("tuned+dense steps", tuned_plan(fixed, uni_dense.speedup))]
        for kind, plan in runs:
            if plan is None:
                say(f"budget {budget:g}x {kind}: no plan reaches the uniform config's speedup; skipped")
                continue
            cfg = plan_config(table, plan, model_class=model_class, description=f"{kind} at {budget:g}x")
            say(f"budget {budget:g}x {kind}: {plan.speedup:.2f}x, {plan.dense_steps} dense steps, predicted kept "
                f"{plan.predicted_kept:.3f}, windows {sorted({str(w) for w in windows(table, plan).values()})}"
            )  # fmt: skip
            res = run_config(pipe, cfg, [captions[i] for i in ev], [seeds[i] for i in ev], gen, args.batch, dense_ev,
                             ev, detector)  # fmt: skip
            e = res["eval"]
            say(f"  -> PSNR {e['psnr']:.2f} dB, SSIM {e['ssim']:.3f}, latent rel L2 {e['latent_rel_l2']:.3f}, "
                f"adherence {e.get('adherence', {}).get('all')}")  # fmt: skip
            rows.append({"budget": budget, "kind": kind, "speedup": plan.speedup, "dense_steps": plan.dense_steps,
                         "threshold": plan.threshold, "predicted_kept": plan.predicted_kept,
                         "step_ranges": [list(r) for r in plan.ranges] if plan.by_range else None,
                         "lowest_kept": plan.lowest_kept, "windows": windows(table, plan),
                         "config_yaml": config_yaml(cfg), **res})  # fmt: skip
            json_path.write_text(json.dumps(na_accel.quality.report.json_safe(result), indent=1) + "\n")
    # per budget: the difference at (tuned <=) equal FLOPs
    summary = []
    for budget in budgets:
        for tk, uk in (("tuned", "uniform"), ("tuned+dense steps", "uniform+dense steps"),
                       ("tuned+step ranges", "tuned")):  # fmt: skip
            t = next((r for r in rows if r["budget"] == budget and r["kind"] == tk), None)
            u = next((r for r in rows if r["budget"] == budget and r["kind"] == uk), None)
            if t is None or u is None:
                continue
            summary.append({"budget": budget, "tuned": tk, "baseline": uk, "uniform_speedup": u["speedup"],
                            "tuned_speedup": t["speedup"], "psnr_gain_db": t["eval"]["psnr"] - u["eval"]["psnr"],
                            "ssim_gain": t["eval"]["ssim"] - u["eval"]["ssim"],
                            "latent_rel_l2_change": t["eval"]["latent_rel_l2"] - u["eval"]["latent_rel_l2"],
                            "clips_tuned_better": sum(a["psnr"] > b["psnr"] for a, b in
                                                      zip(t["clips"], u["clips"], strict=True))})  # fmt: skip
    result["summary"] = summary
    json_path.write_text(json.dumps(na_accel.quality.report.json_safe(result), indent=1) + "\n")
    plot(result, args.png)
    for s in summary:
        say(f"{s['budget']:g}x: {s['tuned']} {s['tuned_speedup']:.2f}x vs {s['baseline']} "
            f"{s['uniform_speedup']:.2f}x: PSNR "
            f"{s['psnr_gain_db']:+.2f} dB, SSIM {s['ssim_gain']:+.3f}, tuned better on {s['clips_tuned_better']}/"
            f"{args.eval} clips")  # fmt: skip
    say(f"wrote {json_path} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
