"""``na-accel tune``: per-layer windows and dense steps from the model's measured attention, to a budget.

The command is registered on the ``na-accel`` app by :func:`register` (called from :mod:`.cli` with its shared
helpers, so this module does not import the CLI module). The work is :func:`na_accel.quality.tune.tune`; this
module checks the input before the model loads, shows the progress bar and writes the files: the config (``--out``,
YAML) and its report next to it (``<stem>.report.json``, ``.report.md``, ``.report.png``), all moved into place only
when every one is written. A budget no plan can meet is an error (exit 2) and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]


def register(app: typer.Typer, *, handle_errors: Callable, fail: Callable, info: Callable, preflight: Callable,
             load: Callable) -> None:  # fmt: skip
    """Add the ``tune`` command to ``app``; the callables are the CLI's error handling, one-line failure, progress
    message, pre-load validation and model loading helpers."""

    @app.command(name="tune")
    def tune_command(
        prompt_file: Annotated[
            Path,
            typer.Argument(
                help="Prompts, one per line ('#' comments; - reads standard input); the last one is held "
                "out of the fit and its quality reported."
            ),  # fmt: skip
        ],
        model: Annotated[
            str | None,
            typer.Option(
                "--model",
                "-m",
                help="Hub id or local pipeline directory. Default: the embedded trained "
                "model; 'tiny' or 'tiny:<family>' picks a tiny random-weight model.",
            ),  # fmt: skip
        ] = None,
        height: Annotated[
            int | None, typer.Option("--height", help="Height in pixels (default: the model's).")
        ] = None,
        width: Annotated[int | None, typer.Option("--width", help="Width in pixels (default: the model's).")] = None,
        frames: Annotated[int | None, typer.Option("--frames", help="Number of frames (video models).")] = None,
        steps: Annotated[int | None, typer.Option("--steps", help="Denoising steps (default: the model's).")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the first prompt; prompt i uses seed + i.")] = 0,
        target_psnr: Annotated[
            float | None,
            typer.Option(
                "--target-psnr",
                help="Mean PSNR (dB) against dense the config must reach on the fit "
                "prompts; the cheapest such config is chosen.",
            ),  # fmt: skip
        ] = None,
        target_speedup: Annotated[
            float | None,
            typer.Option(
                "--target-speedup",
                help="Attention-FLOP speedup over the whole generation the config must "
                "reach; the one keeping the most attention is chosen.",
            ),  # fmt: skip
        ] = None,
        out: Annotated[
            Path, typer.Option("--out", "-o", help="The tuned config (YAML); the report goes next to it.")
        ] = Path("tuned.yaml"),  # fmt: skip
        holdout: Annotated[int, typer.Option("--holdout", help="Prompts held out of the fit (the last ones).")] = 1,
        queries: Annotated[
            int, typer.Option("--queries", help="Grid queries sampled per attention call when profiling.")
        ] = 64,
        max_validations: Annotated[
            int, typer.Option("--max-validations", help="Most validation rounds of the --target-psnr search.")
        ] = 6,
        dense_steps: Annotated[
            int | None,
            typer.Option(
                "--dense-steps",
                help="Run this many first steps dense (default: the cheapest number for the measured locality).",
            ),  # fmt: skip
        ] = None,
        step_ranges: Annotated[
            str,
            typer.Option(
                "--step-ranges",
                help="Numbers of step ranges tried, comma-separated, including 1: with R > 1 the sparse steps are "
                "cut into R ranges, each with its own window per layer, kept where that saves >= 5% of the FLOPs.",
            ),  # fmt: skip
        ] = "1,2,4",
        batch: Annotated[int, typer.Option("--batch", help="Prompts per pipeline call.")] = 4,
        report: Annotated[bool, typer.Option("--report/--no-report", help="Write the report files.")] = True,
        device: Annotated[
            str | None, typer.Option("--device", help="cpu, cuda, cuda:N (default: cuda if available).")
        ] = None,  # fmt: skip
        dtype: Annotated[str | None, typer.Option("--dtype", help="float32|bfloat16|float16.")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    ) -> None:
        """Measure attention locality during dense generations, choose per-layer windows and dense steps, validate
        against dense to a budget (--target-psnr and/or --target-speedup), write the config and a report."""
        with handle_errors():
            from ..quality.tune import check_targets
            from .generate import read_prompts
            from .media import check_writable_dir

            prompts = read_prompts(prompt_file)
            check_targets(target_psnr, target_speedup)
            if holdout < 0:
                fail(f"--holdout must be >= 0, got {holdout}")
            if len(prompts) < holdout + 1:
                fail(f"{prompt_file}: {len(prompts)} prompt(s); tune needs at least {holdout + 1} ({holdout} held out "
                     "of the fit and at least one to fit); add prompts or lower --holdout")  # fmt: skip
            for name, value in (("--queries", queries), ("--max-validations", max_validations), ("--batch", batch)):
                if value < 1:
                    fail(f"{name} must be >= 1, got {value}")
            ranges = _step_ranges(step_ranges)
            if ranges is None:
                fail(f"--step-ranges must be comma-separated ints >= 1 that include 1 (e.g. 1,2,4; 1 alone: one "
                     f"window per layer), got {step_ranges!r}")  # fmt: skip
            if out.is_dir():
                fail(f"--out {str(out)!r} is a directory; give a file name such as tuned.yaml")
            if out.suffix not in (".yaml", ".yml"):
                fail(f"--out {str(out)!r} must end in .yaml or .yml (it is loaded with --config PATH)")
            why = check_writable_dir(out.parent if str(out.parent) else Path("."))
            if why:
                fail(why)
            preflight(model, height=height, width=width, frames=frames, steps=steps, seed=seed,
                      n_prompts=len(prompts), device=device, dtype=dtype)  # fmt: skip
            lm = load(model, device, dtype, quiet)
            _run(lm, prompts, height, width, frames, steps, seed, target_psnr, target_speedup, out, holdout, queries,
                 max_validations, dense_steps, ranges, batch, report, quiet, info)  # fmt: skip


def _step_ranges(text: str) -> tuple[int, ...] | None:
    """``--step-ranges "1,2,4"`` as ints; None unless they are ints >= 1 that include 1."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        return None
    return values if values and all(v >= 1 for v in values) and 1 in values else None


def _run(lm: Any, prompts: list[str], height: int | None, width: int | None, frames: int | None, steps: int | None,
         seed: int, target_psnr: float | None, target_speedup: float | None, out: Path, holdout: int, queries: int,
         max_validations: int, dense_steps: int | None, step_ranges: tuple[int, ...], batch: int, report: bool,
         quiet: bool, info: Callable) -> None:  # fmt: skip
    from ..quality.ladder import Ladder
    from ..quality.tune import check_speedup_reachable, tune
    from .generate import generation_kwargs, token_grid

    kw = generation_kwargs(lm, height, width, frames, steps)
    grid = token_grid(lm, kw)
    n_steps = int(kw.get("num_inference_steps") or 0)
    if grid is not None:  # an impossible speedup fails before anything runs
        check_speedup_reachable(target_speedup, Ladder(grid), n_steps)
    n_fit = len(prompts) - holdout
    info(f"tuning on {n_fit} prompt(s), {holdout} held out; token grid {grid}, {n_steps} steps")
    result = tune(lm.pipe, prompts, target_psnr=target_psnr, target_speedup=target_speedup, seed=seed,
                  holdout=holdout, queries=queries, max_validations=max_validations, dense_steps=dense_steps,
                  step_ranges=step_ranges, batch_size=batch,
                  progress=not quiet, model_label=lm.label, **kw)  # fmt: skip
    files = result.save(out, report=report)
    r = result.report
    c = r["chosen"]
    by_range = f", windows in {len(c['ranges'])} step ranges" if len(c["ranges"]) > 1 else ""
    typer.echo(f"chosen: {c['dense_steps']} dense steps, threshold {c['threshold']:g}{by_range}; "
               f"{c['speedup']:.2f}x fewer attention FLOPs than dense")  # fmt: skip
    for name, s in (("fit", r["fit"]), ("held-out", r.get("held_out"))):
        if s:
            typer.echo(f"{name}: PSNR {_f(s['psnr'])} dB, SSIM {_f(s['ssim'], '.3f')}, latent rel L2 "
                       f"{_f(s['latent_rel_l2'], '.3f')} over {s['clips']} prompt(s)")  # fmt: skip
    typer.echo(f"tune took {r['timing']['tune_seconds']:.0f} s; wrote " + ", ".join(str(f) for f in files))


def _f(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    return format(v, spec)
