"""The tuner's report as Markdown and as a plot (kept mass per layer and step, the per-layer ladders, the
validations), and strict JSON text."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from .report import json_safe

__all__ = ["markdown", "plot", "write_json_text"]


def write_json_text(report: dict[str, Any]) -> str:
    """Strict JSON (inf/nan as strings), indented."""
    return json.dumps(json_safe(report), indent=1, allow_nan=False) + "\n"


def _num(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):
        return {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}.get(v)
    return float(v)


def _f(v: Any, spec: str = ".2f") -> str:
    v = _num(v)
    if v is None or math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf"
    return format(v, spec)


def _pct(v: Any) -> str:
    v = _num(v)
    return "-" if v is None else f"{v:.0%}"


def _adh(s: dict[str, Any] | None) -> str:
    a = (s or {}).get("adherence") or {}
    if "all" in a:
        return f"colour {_pct(a.get('colour'))}, all {_pct(a.get('all'))}"
    v = a.get("vs_dense")
    return f"vs dense: colour {_pct(v['colour'])}, all {_pct(v['all'])}" if v else "-"


def markdown(r: dict[str, Any]) -> str:
    """A readable summary of a tune report."""
    c = r["chosen"]
    b = r["budget"]
    budget = []
    if b.get("target_psnr") is not None:
        budget.append(f"PSNR >= {_f(b['target_psnr'], 'g')} dB")
    if b.get("target_speedup") is not None:
        budget.append(f"attention-FLOP speedup >= {_f(b['target_speedup'], 'g')}x")
    env = r["environment"]
    lines = [
        f"# na-accel tune: {r['model']}",
        "",
        f"{r['size']}, {r['steps']} steps; {env['device']}, {env['dtype']}; {env['date']}; "
        f"na_accel {env['versions']['na_accel']}, torch {env['versions']['torch']}, diffusers "
        f"{env['versions']['diffusers']}.",
        "",
        f"Budget: {' and '.join(budget)}. Chosen: threshold {_f(c['threshold'], 'g')} of kept attention, "
        f"{c['dense_steps']} dense steps, **{_f(c['speedup'])}x** fewer attention FLOPs than dense over the whole "
        f"generation (cost model: {r['cost_model']}).",
        "",
        "| prompts | clips | PSNR dB (min) | SSIM (min) | latent rel L2 | adherence (detector) |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for name, s in (("fit", r["fit"]), ("held out", r.get("held_out"))):
        if s:
            lines.append(f"| {name} | {s['clips']} | {_f(s['psnr'])} ({_f(s['psnr_min'])}) | {_f(s['ssim'], '.3f')} "
                         f"({_f(s['ssim_min'], '.3f')}) | {_f(s['latent_rel_l2'], '.3f')} | {_adh(s)} |")  # fmt: skip
    t = r["timing"]
    lines += ["", f"Wall time per clip on this device: dense {_f(t['dense_seconds_per_clip'])} s, tuned "
              f"{_f(t['tuned_seconds_per_clip'])} s; the whole tune took {_f(t['tune_seconds'], '.0f')} s.",
              ""]  # fmt: skip
    p = r["profile"]
    lines += [f"Profiling: {p['calls']} attention calls measured on {p['queries_per_call']} sampled queries each, "
              f"{len(r['locality']['candidates'])} candidate windows; probe time {_f(p['probe_seconds'], '.1f')} s "
              f"= {_f(p['probe_seconds_in_dense_steps'], '.2f')} dense steps, inside "
              f"{_f(p['dense_generation_seconds'], '.1f')} s of dense generation (the references).", ""]  # fmt: skip
    lines += ["## Layers", "", "| layer | window | FLOP density | kept mass min / mean (sparse steps) | per head |",
              "|---|---|--:|--:|---|"]  # fmt: skip
    for row in r["layers"]:
        if row["window"] is None:
            lines.append(f"| {row['layer']} | dense | 1 | - | - |")
        else:
            heads = ", ".join(_f(v, ".3f") for v in row["kept_per_head"])
            lines.append(f"| {row['layer']} | {row['window']} | {_f(row['density'], '.3f')} | "
                         f"{_f(row['kept_min'], '.3f')} / {_f(row['kept_mean'], '.3f')} | {heads} |")  # fmt: skip
    lines += ["", "## Validations (fit prompts, full generations against dense)", "",
              "| threshold | dense steps | speedup | predicted kept | PSNR dB | SSIM | latent rel L2 | pass |",
              "|--:|--:|--:|--:|--:|--:|--:|---|"]  # fmt: skip
    for v in r["validations"]:
        s = v["fit"]
        lines.append(f"| {_f(v['threshold'], 'g')} | {v['dense_steps']} | {_f(v['speedup'])}x | "
                     f"{_f(v['predicted_kept'], '.3f')} | {_f(s['psnr'])} | {_f(s['ssim'], '.3f')} | "
                     f"{_f(s['latent_rel_l2'], '.3f')} | {'yes' if v['passed'] else 'no'} |")  # fmt: skip
    lines += ["", "## Heads and step ranges", "", f"- Heads: {r['heads']['verdict']}",
              f"- Step ranges: {r['step_ranges']['verdict']}", ""]  # fmt: skip
    lines += ["## Prompts", ""] + [f"- fit: {q}" for q in r["prompts"]["fit"]]
    lines += [f"- held out: {q}" for q in r["prompts"]["held_out"]] + [""]
    return "\n".join(lines)


def plot(r: dict[str, Any], table: Any, path: str | Path) -> None:
    """Three panels: kept mass of the chosen window per (layer, step) (dense layers blank, the dense steps left of
    the line), each layer's best kept mass against attention-FLOP speedup (mean over the sparse steps, the chosen
    window marked), and the validations (PSNR against speedup)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, steps = table.layers, table.steps
    hm = table.head_mean()  # [L, S, C]
    chosen = r["chosen"]
    index = {c.label: i for i, c in enumerate(table.ladder.candidates)}
    heat = torch.full((len(layers), len(steps)), math.nan)
    picks = []  # per layer, the window it uses on the most sparse steps (None: dense); marked on the ladder panel
    for li, name in enumerate(layers):
        w = chosen["windows"][name]  # a label, or one label per range of chosen["ranges"]
        used: Counter = Counter()
        labels = w if isinstance(w, list) else [w] * len(chosen["ranges"])
        for k, ((a, b), label) in enumerate(zip(chosen["ranges"], labels, strict=True)):
            if label is not None:  # the first range's window is shown over the dense steps too (left of the line)
                heat[li, (0 if k == 0 else a) : b + 1] = hm[li, (0 if k == 0 else a) : b + 1, index[label]].float()
                used[index[label]] += b - a + 1
        picks.append(used.most_common(1)[0][0] if used else None)
    fig, axes = plt.subplots(1, 3, figsize=(18, max(4.0, 0.35 * len(layers) + 2)))
    ax = axes[0]
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    seen = heat[~heat.isnan()]
    low = math.floor(float(seen.min()) * 20) / 20 if seen.numel() else 0.0  # the colour scale from 0.05 below the min
    im = ax.imshow(heat.numpy(), aspect="auto", vmin=low, vmax=1, cmap=cmap, interpolation="nearest")
    ax.axvline(chosen["dense_steps"] - 0.5, color="red", linewidth=2, label=f"{chosen['dense_steps']} dense steps")
    ax.set_yticks(range(len(layers)))
    def label(w: Any) -> str:
        return " | ".join(v or "dense" for v in w) if isinstance(w, list) else (w or "dense")

    ax.set_yticklabels([f"{n} ({label(chosen['windows'][n])})" for n in layers], fontsize=7)
    ax.set_xticks(range(len(steps)))
    ax.set_xticklabels([str(s) for s in steps], fontsize=7)
    ax.set_xlabel("denoising step")
    ax.set_title("kept mass of the chosen window (mean over heads)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.colorbar(im, ax=ax, fraction=0.04)

    ax = axes[1]
    density = table.ladder.densities
    start = chosen["dense_steps"]
    order = torch.argsort(density)  # the cheapest window first
    for li, name in enumerate(layers):
        mean = hm[li, start:].nanmean(0) if start < len(steps) else hm[li].nanmean(0)
        best, xs, ys = -1.0, [], []
        for c in order.tolist():  # decreasing speedup: the best kept mass of a window at least this cheap
            best = max(best, float(mean[c]))
            xs.append(1.0 / float(density[c]))
            ys.append(best)
        line = ax.plot(xs, ys, linewidth=1, label=name)[0]
        if picks[li] is not None:
            ax.plot([1.0 / float(density[picks[li]])], [float(mean[picks[li]])], "o", color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("attention-FLOP speedup of the window (1 / density)")
    ax.set_ylabel("best kept mass of a window at least this cheap")
    ax.set_title("per-layer ladders, mean over the sparse steps (dots: chosen)", fontsize=9)
    ax.grid(alpha=0.3)
    if len(layers) <= 12:
        ax.legend(fontsize=6)

    ax = axes[2]
    vals = r["validations"]
    xs = [_num(v["speedup"]) for v in vals]
    ys = [_num(v["fit"]["psnr"]) for v in vals]
    ax.plot(xs, ys, "o", label="validated plans (fit prompts)")
    ax.plot([_num(chosen["speedup"])], [_num(r["fit"]["psnr"])], "*", markersize=14, label="chosen")
    if r.get("held_out"):
        ax.plot([_num(chosen["speedup"])], [_num(r["held_out"]["psnr"])], "s", label="chosen, held-out prompt")
    if r["budget"].get("target_psnr") is not None:
        ax.axhline(_num(r["budget"]["target_psnr"]), color="red", linestyle=":", label="target PSNR")
    if r["budget"].get("target_speedup") is not None:
        ax.axvline(_num(r["budget"]["target_speedup"]), color="red", linestyle="--", label="target speedup")
    ax.set_xlabel("attention-FLOP speedup over the whole generation")
    ax.set_ylabel("PSNR vs dense (dB)")
    ax.set_title("validations", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"na-accel tune: {r['model']}, {r['size']}, {r['steps']} steps", fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100, format="png")
    plt.close(fig)
