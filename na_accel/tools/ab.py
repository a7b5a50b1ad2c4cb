"""A/B comparison of configs on the same prompts and seeds: speed, memory and quality against dense.

``run_ab`` writes into an output directory:

* ``results.json``  -- everything: environment, generation settings, per config the aggregate and one quality
  report per prompt;
* ``results.md``    -- a table, dense row first;
* ``speed_vs_quality.png`` -- speedup vs dense against SSIM and PSNR;
* ``outputs/<config>/<NNN>_<prompt>.{png,mp4}`` -- every generated output;
* ``compare/<NNN>_<prompt>.{png,mp4}`` -- the configs side by side (images as a labelled grid, videos as one
  labelled video).

A config whose patched run made no sparse attention call is reported as ``nothing tested`` (its output equals
dense). :func:`previous_run_files` / :func:`remove_previous_run` find and remove an earlier run in a directory, so
that a new run does not leave old outputs that its tables do not list.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..quality.compare import attention_layer_errors, calibration_step_for, compare_runs, coverage_notes
from ..quality.report import QualityReport, json_safe
from ..quality.run import RunResult, run_pipeline
from . import media
from .generate import LoadedModel, ResolvedConfig, device_description, maybe_patched, now_iso, versions

__all__ = ["plot_speed_quality", "previous_run_files", "remove_previous_run", "results_markdown", "run_ab"]

#: What :func:`run_ab` writes into its output directory.
RUN_FILES = ("results.json", "results.md", "speed_vs_quality.png")
RUN_DIRS = ("outputs", "compare")


def previous_run_files(out_dir: Path) -> list[str]:
    """The files and folders of an earlier A/B run in ``out_dir`` (empty when there is none)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    found += [f"{name}/" for name in RUN_DIRS if (out_dir / name).exists()]
    return found


def remove_previous_run(out_dir: Path) -> None:
    """Remove what :func:`run_ab` wrote into ``out_dir`` (its three files and its ``outputs/`` and ``compare/``
    folders); anything else in the directory is left alone."""
    out_dir = Path(out_dir)
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _mean(vals: Sequence[float | None]) -> float | None:
    v = [float(x) for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(v) / len(v) if v else None


def _fmt(v: float | None, spec: str) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def _aggregate(name: str, runs: list[RunResult], reports: list[QualityReport] | None, dense_total: float) -> dict:
    total = sum(r.total_s for r in runs)
    steps = [s for r in runs for s in r.step_s]
    mem = [r.peak_mem_bytes for r in runs if r.peak_mem_bytes is not None]
    agg: dict[str, Any] = {
        "config": name,
        "total_s": total,
        "mean_step_s": sum(steps) / len(steps) if steps else None,
        "steps_timed": len(steps),
        "peak_mem_bytes": max(mem) if mem else None,
        "peak_mem_gib": (max(mem) / 2**30) if mem else None,
        "speedup_vs_dense": (dense_total / total) if total > 0 else None,
    }
    if reports is None:  # the dense row
        agg.update(
            psnr_mean=math.inf,
            ssim_mean=1.0,
            latent_rel_l2=0.0,
            latent_cosine=1.0,
            attention_max_rel_l2=0.0,
            passed=True,
            verdict="dense",
        )
    else:
        verdicts = [r.verdict for r in reports]
        calls = [r.sparse_calls for r in reports]
        agg.update(
            psnr_mean=_mean([r.psnr_mean for r in reports]),
            ssim_mean=_mean([r.ssim_mean for r in reports]),
            lpips_mean=_mean([r.lpips_mean for r in reports]),
            latent_rel_l2=_mean([r.latent_rel_l2 for r in reports]),
            latent_cosine=_mean([r.latent_cosine for r in reports]),
            attention_max_rel_l2=max([r.attention_max_rel_l2 or 0.0 for r in reports], default=None),
            passed=all(r.passed for r in reports),
            verdict="FAIL" if "FAIL" in verdicts else "NOTHING TESTED" if "NOTHING TESTED" in verdicts else "PASS",
            sparse_calls=None if None in calls else sum(calls),
            failures=sorted({f for r in reports for f in r.failures}),
            notes=sorted({note for r in reports for note in r.notes}),
        )
    return agg


def results_markdown(results: dict[str, Any]) -> str:
    """The results table (dense row first) as Markdown."""
    lines = [
        f"# na_accel A/B: {results['model']}",
        "",
        f"{len(results['prompts'])} prompt(s), seeds {results['seeds']}, "
        + ", ".join(f"{k}={v}" for k, v in results["generation"].items())
        + f"; device {results['device']}.",
        "",
        "| config | mean step (s) | total (s) | speedup vs dense | peak GPU mem (GiB) | PSNR (dB) | SSIM "
        "| latent rel. L2 | latent cosine | max attn rel. L2 | quality gate |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["configs"]:
        a = row["aggregate"]
        verdict = a.get("verdict") or ("pass" if a.get("passed") else "FAIL")
        gate = {"PASS": "pass", "NOTHING TESTED": "nothing tested (ran dense)"}.get(verdict, verdict)
        lines.append(
            f"| {row['name']} | {_fmt(a['mean_step_s'], '.3f')} | {_fmt(a['total_s'], '.2f')} | "
            f"{_fmt(a['speedup_vs_dense'], '.2f')}x | {_fmt(a['peak_mem_gib'], '.2f')} | "
            f"{_fmt(a['psnr_mean'], '.2f')} | {_fmt(a['ssim_mean'], '.4f')} | {_fmt(a['latent_rel_l2'], '.3e')} | "
            f"{_fmt(a['latent_cosine'], '.6f')} | {_fmt(a['attention_max_rel_l2'], '.2e')} | {gate} |"
        )
    lines.append("")
    for row in results["configs"]:
        for note in row["aggregate"].get("notes", []):
            lines.append(f"- {row['name']}: {note}")
        for fail in row["aggregate"].get("failures", []):
            lines.append(f"- {row['name']}: FAILED {fail}")
    if lines[-1] != "":
        lines.append("")
    if results.get("random_weights"):
        lines.append(
            "Model: **tiny random-weight model** -- outputs are noise and timings are not representative; this "
            "run only exercises the code path."
        )
        lines.append("")
    lines.append(
        "Timings are wall-clock per run on this machine (one process, same inputs); quality is against "
        "the dense run of the same prompt and seed."
    )
    return "\n".join(lines) + "\n"


def speed_quality_figure(results: dict[str, Any]) -> Any:
    """The matplotlib figure of :func:`plot_speed_quality`: one marker per config on each axis, named in a legend
    (so that configs at the same point do not print their names over each other)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "sodv^<>pPXh*"
    handles = []
    for k, row in enumerate(results["configs"]):
        a = row["aggregate"]
        x = a.get("speedup_vs_dense")
        if x is None:
            continue
        color = colors[k % len(colors)]
        marker = "s" if row["name"] == "dense" else markers[1 + (k - 1) % (len(markers) - 1)]
        label = row["name"] + (" (ran dense)" if a.get("verdict") == "NOTHING TESTED" else "")
        handle = None
        for ax, key in ((axes[0], "ssim_mean"), (axes[1], "psnr_mean")):
            y = a.get(key)
            if y is None or (isinstance(y, float) and math.isinf(y)):
                continue
            h = ax.scatter([x], [y], s=50, color=color, marker=marker, alpha=0.8, label=label)
            handle = handle or h
        if handle is not None:
            handles.append(handle)
    xs = [r["aggregate"].get("speedup_vs_dense") for r in results["configs"]]
    xs = [x for x in xs if x is not None] or [1.0]
    lo, hi = min(xs + [1.0]), max(xs + [1.0])
    pad = max(0.05, 0.1 * (hi - lo))
    axes[0].set_xlim(lo - pad, hi + pad)
    axes[0].set_ylabel("SSIM vs dense (mean)")
    axes[1].set_ylabel("PSNR vs dense (dB, mean; dense = inf, not shown)")
    for ax in axes:
        ax.set_xlabel("speedup vs dense (total time)")
        ax.grid(True, alpha=0.3)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(f"na_accel: speed vs quality -- {results['model']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.1 if handles else 0, 1, 1))
    return fig


def plot_speed_quality(results: dict[str, Any], path: Path) -> Path:
    """Scatter of speedup vs SSIM and vs PSNR, one marker per config, named in a legend (PNG, Agg backend)."""
    import matplotlib.pyplot as plt

    fig = speed_quality_figure(results)
    with media.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def run_ab(
    lm: LoadedModel,
    prompts: Sequence[str],
    configs: Sequence[ResolvedConfig],
    gen_kwargs: dict[str, Any],
    seed: int,
    out_dir: Path,
    *,
    warmup: int = 0,
    progress: bool = True,
    attention: bool = True,
    echo: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every config (dense first) on every prompt with seed ``seed + prompt index``; write the results.

    ``warn`` (default: ``echo`` with a ``warning:`` prefix) gets one line per prompt cut off at the text encoder's
    limit and per config that made no sparse attention call."""
    from .generate import truncation_text, watch_truncation

    if warn is None:

        def warn(msg: str) -> None:
            echo(f"warning: {msg}")

    out_dir = Path(out_dir)
    steps = int(gen_kwargs.get("num_inference_steps") or 50)
    sparse = [c for c in configs if c.config is not None]
    ordered = [ResolvedConfig("dense", None, None)] + sparse
    cal = {c.name: calibration_step_for(c.config, steps) for c in sparse}
    pipe = lm.pipe
    tag = f"__{lm.file_tag}" if lm.file_tag else ""

    if warmup > 0:
        # enough steps to reach each config's first sparse step (kernel compilation, autotuning), no more
        wsteps = min(steps, 1 + max([c.config.dense_steps for c in sparse], default=0))
        wkw = dict(gen_kwargs, num_inference_steps=wsteps)
        for c in ordered:
            for _ in range(warmup):
                echo(f"warm-up: {c.name} ({wsteps} step(s))")
                with maybe_patched(pipe, c.config):
                    run_pipeline(pipe, prompts[0], seed, progress=False, **wkw)

    runs: dict[str, list[RunResult]] = {c.name: [] for c in ordered}
    reports: dict[str, list[QualityReport]] = {c.name: [] for c in sparse}
    outputs: dict[str, list[str]] = {c.name: [] for c in ordered}
    comparisons: list[str] = []
    truncation: list[list[dict[str, Any]]] = []
    warned: set[str] = set()
    n = len(prompts)
    for i, prompt in enumerate(prompts):
        s = seed + i
        stem = f"{i:03d}_{media.slugify(prompt)}{tag}"
        frames: list[tuple[str, Any]] = []
        echo(f"[{i + 1}/{n}] dense: {prompt!r} (seed {s})")
        with watch_truncation(pipe, prompt) as cut:
            dense = run_pipeline(
                pipe, prompt, s, capture_step=set(cal.values()) if attention else None, progress=progress, **gen_kwargs
            )
        truncation.append(cut)
        if cut:
            warn(truncation_text(i, cut))
        runs["dense"].append(dense)
        frames.append(("dense", dense.frames))
        p = media.write_media(out_dir / "outputs" / "dense" / stem, dense.frames, fps=lm.fps)
        outputs["dense"].append(str(p.relative_to(out_dir)))
        for c in sparse:
            echo(f"[{i + 1}/{n}] {c.name}: {prompt!r} (seed {s})")
            with maybe_patched(pipe, c.config) as handle:
                r = run_pipeline(pipe, prompt, s, progress=progress, **gen_kwargs)
                notes = coverage_notes(handle, c.config, steps)
                calls = handle.call_counts()
            if calls["sparse"] == 0 and c.name not in warned:
                warned.add(c.name)
                warn(f"{c.name} made no sparse attention call, so its outputs equal dense (nothing tested): "
                     + ("; ".join(notes) or "see the notes in results.md"))  # fmt: skip
            errors = None
            if attention and cal[c.name] in dense.captured:
                errors = attention_layer_errors(pipe, c.config, dense.captured[cal[c.name]])
            rep = compare_runs(
                dense,
                r,
                model=lm.label,
                config=c.name,
                prompt=prompt,
                seed=s,
                thresholds=c.config.quality,
                attention=errors,
                calibration_step=cal[c.name] if errors is not None else None,
                random_weights=lm.random_weights,
                generation={k: v for k, v in gen_kwargs.items() if isinstance(v, (int, float, str))},
                attention_calls=calls,
            )
            rep.notes.extend(notes)
            runs[c.name].append(r)
            reports[c.name].append(rep)
            frames.append((c.name, r.frames))
            p = media.write_media(out_dir / "outputs" / c.name / stem, r.frames, fps=lm.fps)
            outputs[c.name].append(str(p.relative_to(out_dir)))
        dense.captured.clear()  # free the captured transformer inputs
        grid = media.side_by_side(frames)
        p = media.write_media(out_dir / "compare" / stem, grid, fps=lm.fps)
        comparisons.append(str(p.relative_to(out_dir)))

    dense_total = sum(r.total_s for r in runs["dense"])
    rows = []
    for c in ordered:
        cfg = c.config
        rows.append(
            {
                "name": c.name,
                "source": c.source,
                "description": getattr(cfg, "description", None) if cfg is not None else "dense attention",
                "measured": _plain(getattr(cfg, "measured", None)) if cfg is not None else None,
                "thresholds": json_safe(dataclasses.asdict(cfg.quality)) if cfg is not None else None,
                "aggregate": _aggregate(c.name, runs[c.name], reports.get(c.name), dense_total),
                "per_prompt_timings": [
                    {"total_s": r.total_s, "step_s": r.step_s, "peak_mem_bytes": r.peak_mem_bytes}
                    for r in runs[c.name]
                ],
                "reports": [rep.to_dict() for rep in reports.get(c.name, [])],
                "outputs": outputs[c.name],
            }
        )
    results = {
        "model": lm.label,
        "model_id": lm.model_id,
        "family": lm.family,
        "random_weights": lm.random_weights,
        "device": device_description(lm.device),
        "dtype": lm.dtype,
        "versions": versions(),
        "created": now_iso(),
        "generation": {k: v for k, v in gen_kwargs.items() if isinstance(v, (int, float, str))},
        "prompts": list(prompts),
        "prompt_truncation": truncation,
        "seeds": [seed + i for i in range(n)],
        "warmup_runs": warmup,
        "configs": rows,
        "comparisons": comparisons,
        "files": {"json": "results.json", "markdown": "results.md", "plot": "speed_vs_quality.png"},
    }
    media.write_json(out_dir / "results.json", results)
    media.write_text(out_dir / "results.md", results_markdown(results))
    plot_speed_quality(results, out_dir / "speed_vs_quality.png")
    return results


def _plain(obj: Any) -> Any:
    """A config's ``measured`` section as plain JSON data (dataclasses, dicts)."""
    if obj is None:
        return None
    if hasattr(obj, "model_dump"):
        return json_safe(obj.model_dump())
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return json_safe(asdict(obj))
    if isinstance(obj, (dict, list, str, int, float, bool)):
        return json_safe(obj)
    return str(obj)
