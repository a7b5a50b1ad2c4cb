"""``na-accel`` command line: generate, ab, check, bench, presets, tune (:mod:`.tune`).

Without ``--model`` every command uses the embedded trained model (``na_accel.tiny.trained``: a small
HunyuanVideo pipeline trained on procedural clips of coloured shapes, 33 x 128 x 128, about 15 s a clip on a 2-core
CPU) with its preset ``tiny_fast``; its outputs are labelled "embedded trained model". ``--model`` takes a Hugging
Face hub id or a local diffusers pipeline directory (``DiffusionPipeline.from_pretrained``); ``--model tiny`` /
``tiny:<family>`` picks a tiny random-weight pipeline (hunyuan, flux, cosmos, wan: code paths in seconds, noise
outputs labelled "tiny random-weight model").

Bad input (missing or empty prompt file, unknown preset, invalid YAML, unsupported model, a size, step count, seed,
device or threshold out of range, an output directory that cannot be written) gives a one-line ``error: ...`` on
stderr and exit code 2, before anything is written; values that do not need the model are checked before it is
loaded. A failed quality gate (``check``) exits with 1. Prompt files hold one prompt per line (``-`` reads
standard input); warnings (a prompt cut off at the text encoder's limit, a patched run without any sparse
attention call) go to stderr as ``warning: ...`` lines and into the JSON records.

torch and diffusers are imported inside the commands, so ``na-accel --help`` answers at once.

Files written (every file is written to a temporary name and moved into place, with the mode the umask gives; the
output directory is created with the first file, so a run that fails before writing leaves no empty directory):

* ``generate``: ``<out>/<NNN>_<prompt-slug>__<config>[-ran-dense][__tiny-random-weight-model].{mp4,png}``
  (``-ran-dense``: the config made no sparse attention call, so the output equals dense) and a ``.json`` sidecar
  with: file, kind (video|image), model, model_id, model_class, transformer_class, family, random_weights,
  config (``-<precision>`` added when ``--precision`` changed it), config_source, patch (summary text, per-layer
  plan, attention_calls {sparse, dense, fallback, compiled} and fp8_fallbacks {reason: calls that asked for fp8
  and ran in the inputs' precision} of this prompt's run, ran_sparse; null for dense), prompt, prompt_index,
  seed (= --seed + prompt index),
  output_index and outputs_per_prompt (``--num-videos N``: N files ``...__v1`` to ``__vN`` per prompt, one
  batch), height, width, frames, fps, steps, generation_kwargs (every setting the pipeline ran with: its
  defaults, the model's and the user's values), offload, vae_tiling, cache (spec, the diffusers config that ran),
  compile (backend, fullgraph, blocks), prompt_truncation ([{tokenizer, tokenizer_class, tokens, limit,
  dropped}], empty when the prompt fit), warnings, timings (total_s, encode_s, step_s, mean_step_s, decode_s,
  model_load_s; see :class:`na_accel.quality.run.RunResult`), peak_gpu_mem_bytes and phase_peak_gpu_mem_bytes
  (encode, denoise, decode; null off CUDA), versions (python, na_accel, torch, diffusers, triton, transformers),
  device, dtype, context_parallel (null, or ulysses_degree, world_size,
  backend of a ``--ulysses N`` run), created, command. With ``--ulysses N`` (under ``torchrun --nproc-per-node N``)
  every rank generates, rank 0 alone prints and writes.
* ``ab``: see :mod:`na_accel.tools.ab` (results.json, results.md, speed_vs_quality.png, outputs/, compare/). An
  output directory holding an earlier A/B run is refused unless ``--overwrite`` (which first removes that run).
* ``check --json``: model, random_weights, config, config_source, verdict (PASSED | FAILED | NOTHING TESTED),
  passed, allow_dense, device, versions, created, and reports (``QualityReport.to_dict()``: latent_rel_l2,
  latent_cosine, psnr_per_frame, psnr_mean, ssim_per_frame, ssim_mean, lpips_*, attention [{name, rel_l2}],
  calibration_step, thresholds, attention_calls, sparse_calls, tested, verdict, passed, failures, notes,
  timings). NOTHING TESTED (the patched run made no sparse attention call) exits with 1 unless --allow-dense.
* ``bench``: ``<out>/e2e_<family>_<config>[_tiny]_<time>.json`` with dense_step_s, patched_step_s,
  patched_step_sparse (false when every attention call of the patched step ran dense: then
  speedup_per_sparse_step and the projection are null), patched_attention_calls (warm-up and timed calls),
  speedup_per_sparse_step, dense_steps, projected_dense_s / projected_patched_s / projected_speedup (for
  --total-steps), token_grid, shapes, peak memory, patch_summary, patch_layers, device, versions.

Infinite values (PSNR of identical frames) are written as the string "inf" so every JSON file is strict JSON.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="na-accel",
    help="Fused generalized neighborhood attention for diffusers video/image transformers: generate, A/B test, "
    "quality-check and benchmark configs. Without --model, commands use the embedded trained text-to-video model "
    "(offline, CPU).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"na-accel {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version of na_accel and exit."),
    ] = False,
) -> None:
    """Fused generalized neighborhood attention for diffusers video/image transformers."""


# ------------------------------------------------------------------------------------------------------------
# Shared options
# ------------------------------------------------------------------------------------------------------------

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Hub id or local pipeline directory. Default: the embedded trained model ('embedded'); "
        "'tiny' or 'tiny:<family>' picks a tiny random-weight model (hunyuan|flux|cosmos|wan).",
    ),
]
PromptFileArg = Annotated[
    Path, typer.Argument(help="Text file, one prompt per non-empty line ('#' comments); - reads standard input.")
]
HeightOpt = Annotated[int | None, typer.Option("--height", help="Height in pixels (default: the model's).")]
WidthOpt = Annotated[int | None, typer.Option("--width", help="Width in pixels (default: the model's).")]
FramesOpt = Annotated[int | None, typer.Option("--frames", help="Number of frames (video models; 4k+1 etc.).")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Denoising steps (default: the model's).")]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Seed of the first prompt (0 to 2**64-1); prompt i uses seed + i.")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N (default: cuda if available).")]
DtypeOpt = Annotated[
    str | None, typer.Option("--dtype", help="float32|bfloat16|float16 (default: bf16 on CUDA, fp32 on CPU).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="bf16|fp8: operands of the attention kernel for the config's defaults and every rule (default: the "
        "config's). fp8: 8-bit operands on Hopper GPUs, dense steps included; elsewhere it falls back to the inputs' "
        "precision and the patch summary says why.",
    ),
]


def _one_line(msg: str) -> str:
    parts = [p.strip() for p in str(msg).strip().splitlines() if p.strip()]
    return "; ".join(parts) if parts else "unknown error"


def _fail(msg: str, code: int = EXIT_BAD_INPUT) -> None:
    typer.echo(f"error: {_one_line(msg)}", err=True)
    raise typer.Exit(code=code)


@contextlib.contextmanager
def _handle_errors() -> Iterator[None]:
    """Turn user-input errors into one line on stderr and exit code 2; anything else into exit code 1."""
    try:
        yield
    except (typer.Exit, typer.Abort, SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001
        from ..errors import NAAccelError

        if os.environ.get("NA_ACCEL_DEBUG"):
            raise
        if isinstance(e, NAAccelError):
            _fail(str(e), EXIT_BAD_INPUT)
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            _fail(f"{e.strerror or e}: {e.filename}" if getattr(e, "filename", None) else str(e), EXIT_BAD_INPUT)
        _fail(f"{type(e).__name__}: {_short(str(e))} (set NA_ACCEL_DEBUG=1 for the traceback)", EXIT_FAILED)


def _short(text: str, limit: int = 300) -> str:
    """The first line of an unexpected error, cut to ``limit`` characters (torch appends whole C++ stacks)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _info(msg: str) -> None:
    from .parallel import quiet_rank

    if not quiet_rank():  # a --ulysses run prints on rank 0 only
        typer.echo(msg, err=True)


def _warn(msg: str) -> None:
    typer.echo(f"warning: {_one_line(msg)}", err=True)


def _check_out(out: Path) -> None:
    from .media import check_writable_dir

    why = check_writable_dir(out)
    if why:
        _fail(why)


def _check_media(lm: Any) -> None:
    """Fail before anything is written when this model's outputs (MP4 for video) cannot be written here."""
    if lm.rules.is_video:
        from .media import video_writer_problem

        why = video_writer_problem()
        if why:
            _fail(why)


def _quiet_libraries() -> None:
    """Keep diffusers/transformers warnings off the terminal (na_accel reports prompt truncation itself); errors
    still show."""
    with contextlib.suppress(Exception):
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
    with contextlib.suppress(Exception):
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()


def _preflight(model: str | None, **values: Any) -> None:
    """Validate what does not need the model (sizes, steps, seed, device, dtype) before loading it."""
    from .generate import check_request

    check_request(model, **values)


def _load(model: str | None, device: str | None, dtype: str | None, quiet: bool = False,
          offload: str | None = None) -> Any:  # fmt: skip
    from .generate import load_model

    _quiet_libraries()
    if quiet:
        with contextlib.suppress(Exception):
            from diffusers.utils import logging as dlog

            dlog.disable_progress_bar()
        with contextlib.suppress(Exception):
            from transformers.utils import logging as tlog

            tlog.disable_progress_bar()
    lm = load_model(model, device=device, dtype=dtype, offload=offload)
    where = "built-in" if lm.source == "built-in" else f"loaded from a {lm.source}"
    off = "" if lm.offload == "none" else f", {lm.offload} CPU offload"
    _info(f"model: {lm.label} ({where}, {lm.device}{off}, {lm.dtype}, {lm.load_s:.1f} s)")
    return lm


# ------------------------------------------------------------------------------------------------------------
# generate
# ------------------------------------------------------------------------------------------------------------


@app.command()
def generate(
    prompt_file: PromptFileArg,
    model: ModelOpt = None,
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Preset name or YAML path (default: the model family's preset)."),
    ] = None,
    dense: Annotated[bool, typer.Option("--dense", help="Run the unpatched (dense) model.")] = False,
    precision: PrecisionOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    frames: FramesOpt = None,
    steps: StepsOpt = None,
    seed: SeedOpt = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("outputs/generate"),
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quiet: QuietOpt = False,
    ulysses: Annotated[
        int | None,
        typer.Option(
            "--ulysses",
            help="Ulysses context parallelism over N processes (one per GPU; gloo on a CPU): launch with "
            "torchrun --nproc-per-node N. Rank 0 writes the outputs.",
        ),
    ] = None,
    negative_prompt: Annotated[
        str | None,
        typer.Option("--negative-prompt", help="Negative prompt (HunyuanVideo/FLUX: with --true-cfg-scale > 1)."),
    ] = None,
    guidance_scale: Annotated[
        float | None,
        typer.Option("--guidance-scale", help="The pipeline's guidance_scale: CFG (Wan, Cosmos) or embedded guidance "
                     "(HunyuanVideo, FLUX.1). Default: the model's."),
    ] = None,
    true_cfg_scale: Annotated[
        float | None,
        typer.Option("--true-cfg-scale", help="True classifier-free guidance with the negative prompt (HunyuanVideo, "
                     "FLUX.1; > 1 turns it on)."),
    ] = None,
    num_videos: Annotated[
        int | None, typer.Option("--num-videos", help="Outputs per prompt (one batch; files get __v<N>).")
    ] = None,
    fps: Annotated[
        int | None, typer.Option("--fps", help="Frame rate of the MP4 files (and Cosmos' fps input). Default: the "
                                 "model's.")
    ] = None,
    offload: Annotated[
        str,
        typer.Option("--offload", help="none | model (enable_model_cpu_offload) | sequential "
                     "(enable_sequential_cpu_offload): weights in CPU memory, moved to the GPU when they run (CUDA)."),
    ] = "none",
    vae_tiling: Annotated[
        bool, typer.Option("--vae-tiling", help="Decode in tiles (vae.enable_tiling): bounded VAE memory.")
    ] = False,
    cache: Annotated[
        str | None,
        typer.Option("--cache", help="A diffusers step cache stacked with the patch: fbc[:THRESHOLD] "
                     "(FirstBlockCache), taylorseer[:INTERVAL], magcache[:THRESHOLD] (or NAME:key=value,...; "
                     "HunyuanVideo, FLUX.1, Wan)."),
    ] = None,
    compile_: Annotated[
        bool,
        typer.Option("--compile", help="Regional torch.compile of the transformer blocks (compile_repeated_blocks)."),
    ] = False,
    compile_backend: Annotated[
        str, typer.Option("--compile-backend", help="torch.compile backend for --compile.")
    ] = "inductor",
) -> None:
    """Generate one output per prompt line: MP4 for video models, PNG for image models, plus a JSON sidecar."""
    from .parallel import ParallelSession

    with _handle_errors(), ParallelSession() as ranks:
        from .generate import read_prompts
        from .runtime import parse_cache

        prompts = read_prompts(prompt_file)
        if dense and config is not None and config not in ("dense", "none"):
            _fail("--dense and --config are mutually exclusive")
        _check_precision(precision, dense or config in ("dense", "none"))
        _preflight(model, height=height, width=width, frames=frames, steps=steps, seed=seed,
                   n_prompts=len(prompts), device=device, dtype=dtype, offload=offload,
                   guidance_scale=guidance_scale, true_cfg_scale=true_cfg_scale, num_videos=num_videos, fps=fps,
                   cache=cache)  # fmt: skip
        if ulysses is not None and offload != "none":
            _fail(f"--offload {offload} and --ulysses cannot be combined: context parallelism keeps each rank's "
                  "models on its GPU")  # fmt: skip
        cache_spec = parse_cache(cache)
        _check_out(out)
        rc = _resolve_cfg(config, dense)  # before the model: an unknown preset or bad YAML fails fast
        device = ranks.start(ulysses, device)  # --ulysses N: join torchrun's process group; this rank's device
        lm = _load(model, device, dtype, quiet, offload=offload)
        ranks.enable(lm.pipe, echo=_info)
        rc = _with_precision(rc or _default_cfg(lm), precision)
        from .generate import generation_kwargs

        kw = generation_kwargs(lm, height, width, frames, steps, negative_prompt=negative_prompt,
                               guidance_scale=guidance_scale, true_cfg_scale=true_cfg_scale, num_videos=num_videos,
                               fps=fps)  # fmt: skip
        _fits(lm, rc, kw)
        _check_media(lm)
        with _runtime(lm, kw, vae_tiling, cache_spec, compile_backend if compile_ else None) as stack:
            _run_generate(lm, rc, prompts, kw, seed, out, progress=not quiet and ranks.is_main,
                          write=ranks.is_main, parallel=ranks.describe(), fps=fps or lm.fps,
                          stack=stack)  # fmt: skip


@contextlib.contextmanager
def _runtime(lm: Any, kw: dict, vae_tiling: bool, cache_spec: Any, compile_backend: str | None) -> Iterator[dict]:
    """VAE tiling, a diffusers cache and regional compile on the loaded pipeline for the run (the cache is removed
    afterwards); yields what the sidecars record about them (and about offloading)."""
    from .runtime import compile_regions, disable_caches, enable_caches, enable_vae_tiling, raise_recompile_limit

    if vae_tiling:
        enable_vae_tiling(lm.pipe)
    cached = enable_caches(lm.pipe, cache_spec, lm.family, kw.get("num_inference_steps"))
    try:
        compiled = None
        if compile_backend is not None:
            # a cache's block hooks and sequential offloading's per-module hooks break the graph (their own code)
            fullgraph = cache_spec is None and lm.offload != "sequential"
            blocks = compile_regions(lm.pipe, backend=compile_backend, fullgraph=fullgraph)
            compiled = {"backend": compile_backend, "fullgraph": fullgraph, "blocks": len(blocks)}
            # one set of graphs per block with a cache's per-block hooks, and one per distinct window of a block's
            # attention (per-layer windows, rules by step): more than torch.compile's default limit of 8
            compiled["recompile_limit"] = raise_recompile_limit(len(blocks))
            _info(f"compile: {len(blocks)} blocks, backend {compile_backend}, fullgraph {fullgraph} "
                  "(compiled on the first step)")  # fmt: skip
        if cache_spec is not None:
            _info(f"cache: {cache_spec.describe()} on {len(cached)} transformer(s)")
        yield {
            "offload": lm.offload,
            "vae_tiling": vae_tiling,
            "cache": None if cache_spec is None else {
                "spec": cache_spec.text,
                "config": repr(cached[0]._cache_config) if cached else None,  # the diffusers config that ran
                "transformers": len(cached),
            },
            "compile": compiled,
        }
    finally:
        disable_caches(cached)


def _resolve_cfg(config: str | None, dense: bool) -> Any:
    from .generate import resolve_config

    if dense or config is not None:
        return resolve_config(config, dense=dense)
    return None


def _check_precision(precision: str | None, dense: bool) -> None:
    """Validate ``--precision`` before the model is loaded."""
    from ..ops.precision import PRECISIONS

    if precision is None:
        return
    if precision not in PRECISIONS:
        _fail(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)} (bf16: the inputs' own dtype; fp8: "
              "8-bit operands on Hopper GPUs)")  # fmt: skip
    if dense and precision != "bf16":
        _fail(f"--precision {precision} applies to a patched run; --dense runs the unpatched model in its own dtype")


def _with_precision(rc: Any, precision: str | None) -> Any:
    """``rc`` with ``--precision`` for its defaults and every rule; its name (output files, sidecars) gets
    ``-<precision>`` when that changes the config."""
    from .generate import ResolvedConfig

    if precision is None or rc.config is None:
        return rc
    cfg = rc.config.with_precision(precision)
    if cfg == rc.config:
        return rc
    _info(f"precision: {precision} for the defaults and every rule of {rc.name} (--precision)")
    return ResolvedConfig(f"{rc.name}-{precision}", rc.source, cfg)


def _default_cfg(lm: Any) -> Any:
    from .generate import resolve_config

    name = _default_cfg_name(lm)
    whose = "the embedded model's" if lm.default_config else f"the {lm.family}"
    _info(f"config: {name} ({whose} preset; --dense for the unpatched model)")
    return resolve_config(name)


def _default_cfg_name(lm: Any) -> str:
    from .generate import default_config_for

    name = default_config_for(lm)
    if name is None:
        _fail(f"no shipped preset for {lm.label}; pass --config NAME_OR_PATH or --dense")
    return name


def _fits(lm: Any, rc: Any, kw: dict) -> None:
    from .generate import check_config_fits

    check_config_fits(lm, rc, kw)


def _calls_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def no_sparse_text(name: str, handle: Any, config: Any, steps: int, calls: dict[str, int]) -> str:
    """Why a patched run made no sparse attention call, on one line."""
    from ..quality.compare import coverage_notes

    reasons = coverage_notes(handle, config, steps, comparison=False)
    if calls.get("fallback"):
        last = next((r["last_fallback"] for r in handle.layer_plans() if r["last_fallback"]), None)
        reasons.append(f"{calls['fallback']} attention call(s) fell back to dense (last: {last})")
    why = "; ".join(reasons) if reasons else "every planned layer ran dense (see the patch summary in the sidecar)"
    return f"{name} made no sparse attention call, so the output equals dense: {why}"


def _settings(kw: dict, frames: Any) -> dict[str, Any]:
    """The scalar generation settings of a run, with the size that actually came out."""
    out = {k: v for k, v in kw.items() if isinstance(v, (int, float, str, bool))}
    f, _, h, w = frames.shape
    out.setdefault("height", h)
    out.setdefault("width", w)
    if f > 1:
        out.setdefault("num_frames", f)
    return out


def _run_generate(lm: Any, rc: Any, prompts: list[str], kw: dict, seed: int, out: Path, progress: bool,
                  write: bool = True, parallel: dict | None = None, fps: int | None = None,
                  stack: dict | None = None) -> None:  # fmt: skip
    from ..ops.precision import fp8_fallbacks
    from ..quality.run import run_pipeline
    from . import media
    from .bench import plan_rows
    from .generate import device_description, maybe_patched, truncation_text, versions, watch_truncation

    n = len(prompts)
    tag = f"__{lm.file_tag}" if lm.file_tag else ""
    fps = fps or lm.fps
    stack = stack or {"offload": lm.offload, "vae_tiling": False, "cache": None, "compile": None}
    vers = versions()
    dev = device_description(lm.device)
    steps = int(kw.get("num_inference_steps") or 0)
    shown: set[str] = set()
    n_dense_only = 0
    n_files = 0

    def warn_once(msg: str) -> None:
        if msg not in shown:
            shown.add(msg)
            _warn(msg)

    with maybe_patched(lm.pipe, rc.config) as handle:
        for i, prompt in enumerate(prompts):
            s = seed + i
            _info(f"[{i + 1}/{n}] {rc.name}: {prompt!r} (seed {s})")
            before = handle.call_counts() if handle is not None else None
            fp8_before = fp8_fallbacks()
            with watch_truncation(lm.pipe, prompt) as cut:
                r = run_pipeline(lm.pipe, prompt, s, progress=progress, **kw)
            warnings: list[str] = []
            if cut:
                warnings.append(truncation_text(i, cut))
                _warn(warnings[-1])
            patch_info = None
            name = rc.name
            if handle is not None:
                calls = _calls_delta(handle.call_counts(), before)
                ran_sparse = calls["sparse"] > 0
                patch_info = {
                    "summary": handle.summary(),
                    "layers": plan_rows(handle),
                    "attention_calls": calls,
                    "fp8_fallbacks": {
                        k: n - fp8_before.get(k, 0) for k, n in fp8_fallbacks().items() if n > fp8_before.get(k, 0)
                    },
                    "ran_sparse": ran_sparse,
                }
                if not ran_sparse:
                    n_dense_only += 1
                    name = f"{rc.name}-ran-dense"
                    warnings.append(no_sparse_text(rc.name, handle, rc.config, steps, calls))
                    warn_once(warnings[-1])
            if not write:  # a non-zero rank of a --ulysses run: rank 0 writes
                continue
            n_out = len(r.samples)
            n_files += n_out
            for j, frames in enumerate(r.samples):
                suffix = f"__v{j + 1}" if n_out > 1 else ""
                stem = out / f"{i:03d}_{media.slugify(prompt)}__{name}{tag}{suffix}"
                path = media.write_media(stem, frames, fps=fps)
                _write_sidecar(path, frames, lm, rc, prompt, i, s, kw, r, cut, warnings, patch_info, vers, dev,
                               parallel, fps, stack, j, n_out)  # fmt: skip
                _info(f"  -> {path} ({r.total_s:.2f} s)")
    if not write:
        return
    dense_note = f"; {n_dense_only} ran dense throughout (no sparse attention call)" if n_dense_only else ""
    typer.echo(
        f"wrote {n_files} output(s) to {out}{dense_note}"
        + (" [tiny random-weight model]" if lm.random_weights else "")
    )


def _write_sidecar(path: Path, frames: Any, lm: Any, rc: Any, prompt: str, i: int, s: int, kw: dict, r: Any,
                   cut: list, warnings: list[str], patch_info: dict | None, vers: dict, dev: str,
                   parallel: dict | None, fps: int, stack: dict, j: int, n_out: int) -> None:  # fmt: skip
    from . import media
    from .generate import command_line, now_iso

    f, _, h, w = frames.shape
    sidecar = {
        "file": path.name,
        "kind": "video" if f > 1 else "image",
        "model": lm.label,
        "model_id": lm.model_id,
        "model_class": type(lm.pipe).__name__,
        "transformer_class": type(lm.pipe.transformer).__name__,
        "family": lm.family,
        "random_weights": lm.random_weights,
        "config": rc.name,
        "config_source": rc.source,
        "patch": patch_info,
        "prompt": prompt,
        "prompt_index": i,
        "seed": s,
        "output_index": j,
        "outputs_per_prompt": n_out,
        "height": h,
        "width": w,
        "frames": f,
        "fps": fps if f > 1 else None,
        "steps": kw.get("num_inference_steps"),
        "generation_kwargs": _settings(kw, frames),
        "offload": stack["offload"],
        "vae_tiling": stack["vae_tiling"],
        "cache": stack["cache"],
        "compile": stack["compile"],
        "prompt_truncation": cut,
        "warnings": warnings,
        "timings": {
            "total_s": r.total_s,
            "encode_s": r.encode_s,
            "step_s": r.step_s,
            "mean_step_s": r.mean_step_s,
            "decode_s": r.decode_s,
            "model_load_s": lm.load_s,
        },
        "peak_gpu_mem_bytes": r.peak_mem_bytes,
        "phase_peak_gpu_mem_bytes": r.phase_peak_mem_bytes,
        "versions": vers,
        "device": dev,
        "dtype": lm.dtype,
        "context_parallel": parallel,
        "created": now_iso(),
        "command": command_line(),
    }
    media.write_json(path.with_suffix(".json"), sidecar)


# ------------------------------------------------------------------------------------------------------------
# ab
# ------------------------------------------------------------------------------------------------------------


@app.command()
def ab(
    prompt_file: PromptFileArg,
    configs: Annotated[
        str | None,
        typer.Option(
            "--configs",
            help="Comma-separated config names/paths (default: dense and the model family's preset); 'dense' is "
            "always run first.",
        ),
    ] = None,
    model: ModelOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    frames: FramesOpt = None,
    steps: StepsOpt = None,
    seed: SeedOpt = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("outputs/ab"),
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier A/B run in --out (its outputs are removed first).")
    ] = False,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed short warm-up runs per config before timing.")] = 1,
    attention: Annotated[
        bool, typer.Option("--attention/--no-attention", help="Per-layer attention error on the calibration step.")
    ] = True,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run every config on the same prompts and seeds; time, memory and quality vs dense; tables, plot, grids."""
    with _handle_errors():
        from .ab import previous_run_files
        from .generate import generation_kwargs, read_prompts, resolve_config

        prompts = read_prompts(prompt_file)
        names = None if configs is None else [c.strip() for c in configs.split(",") if c.strip()]
        if names is not None and not names:
            _fail("--configs is empty; give comma-separated preset names or YAML paths, or omit it")
        seen: dict[str, Any] = {}
        for name in names or []:
            rc = resolve_config(name)
            if rc.name in seen:
                if rc.name == "dense":
                    continue
                _fail(f"config {rc.name!r} is listed twice")
            seen[rc.name] = rc
        if warmup < 0:
            _fail(f"--warmup must be >= 0, got {warmup}")
        _preflight(model, height=height, width=width, frames=frames, steps=steps, seed=seed,
                   n_prompts=len(prompts), device=device, dtype=dtype)  # fmt: skip
        _check_out(out)
        previous = previous_run_files(out)
        if previous and not overwrite:
            _fail(
                f"--out {str(out)!r} already holds an A/B run ({', '.join(previous)}); pass --overwrite to replace "
                "it or choose another --out"
            )
        lm = _load(model, device, dtype, quiet)
        if names is None:
            default = _default_cfg_name(lm)
            _info(f"configs: dense, {default} (the {lm.family} preset; --configs to choose)")
            seen = {"dense": resolve_config("dense"), default: resolve_config(default)}
        rcs = list(seen.values())
        kw = generation_kwargs(lm, height, width, frames, steps)
        for rc in rcs:
            _fits(lm, rc, kw)
        _check_media(lm)
        if previous:
            from .ab import remove_previous_run

            remove_previous_run(out)
        from .ab import run_ab

        results = run_ab(
            lm,
            prompts,
            rcs,
            kw,
            seed,
            out,
            warmup=warmup,
            progress=not quiet,
            attention=attention,
            echo=_info,
            warn=_warn,
        )
        from .ab import results_markdown

        typer.echo(results_markdown(results))
        typer.echo(
            f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'speed_vs_quality.png'}, "
            f"{len(results['comparisons'])} comparison(s) in {out / 'compare'}"
        )


# ------------------------------------------------------------------------------------------------------------
# check
# ------------------------------------------------------------------------------------------------------------

DEFAULT_CHECK_PROMPT = "a red fox running through a snowy forest at sunrise, cinematic"


def _check_thresholds(values: dict[str, float | None]) -> None:
    from ..patching.config import quality_value_problem

    for key, v in values.items():
        if v is None:
            continue
        why = quality_value_problem(key, v)
        if why is not None:
            _fail(f"--{key.replace('_', '-')}: {why[0].lower()}{why[1:].rstrip('.')}")


@app.command()
def check(
    model: ModelOpt = None,
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="Preset name or YAML path (default: the family's preset).")
    ] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Prompt to check (repeatable).")] = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    frames: FramesOpt = None,
    steps: StepsOpt = None,
    seed: SeedOpt = 0,
    min_psnr: Annotated[
        float | None, typer.Option("--min-psnr", help="Override the config's min PSNR (dB, >= 0).")
    ] = None,
    min_ssim: Annotated[
        float | None, typer.Option("--min-ssim", help="Override the config's min SSIM (-1 to 1).")
    ] = None,
    max_latent_rel_l2: Annotated[
        float | None, typer.Option("--max-latent-rel-l2", help="Override the config's max latent relative L2 (>= 0).")
    ] = None,
    min_latent_cosine: Annotated[
        float | None, typer.Option("--min-latent-cosine", help="Override the config's min latent cosine (-1 to 1).")
    ] = None,
    allow_dense: Annotated[
        bool,
        typer.Option(
            "--allow-dense",
            help="Exit with 0 when the patched run made no sparse attention call (reported as NOTHING TESTED).",
        ),
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the reports to this JSON file.")] = None,
    attention: Annotated[
        bool, typer.Option("--attention/--no-attention", help="Per-layer attention error on the calibration step.")
    ] = True,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Quality gate: patched vs dense on the same seed; exit code 1 when a threshold fails or nothing sparse ran."""
    with _handle_errors():
        from .generate import generation_kwargs, resolve_config, truncation_text, watch_truncation

        prompts = [p.strip() for p in (prompt or [DEFAULT_CHECK_PROMPT])]
        if any(not p for p in prompts):
            _fail("--prompt must not be empty")
        if config in ("dense", "none"):
            _fail("check compares a config against dense; pass a preset or a YAML file, not 'dense'")
        overrides = {
            "min_psnr": min_psnr,
            "min_ssim": min_ssim,
            "max_latent_rel_l2": max_latent_rel_l2,
            "min_latent_cosine": min_latent_cosine,
        }
        _check_thresholds(overrides)
        _preflight(model, height=height, width=width, frames=frames, steps=steps, seed=seed,
                   n_prompts=len(prompts), device=device, dtype=dtype)  # fmt: skip
        if json_out is not None:
            _check_out(json_out.parent if str(json_out.parent) else Path("."))
            if json_out.is_dir():
                _fail(f"--json {str(json_out)!r} is a directory")
        rc = resolve_config(config) if config is not None else None
        lm = _load(model, device, dtype, quiet)
        rc = rc or _default_cfg(lm)
        kw = generation_kwargs(lm, height, width, frames, steps)
        _fits(lm, rc, kw)
        from ..quality.compare import compare

        thr = rc.config.quality.with_overrides(**overrides)
        reports = []
        for i, p in enumerate(prompts):
            _info(f"[{i + 1}/{len(prompts)}] checking {rc.name} on {p!r} (seed {seed + i})")
            with watch_truncation(lm.pipe, p) as cut:
                rep = compare(
                    lm.pipe,
                    rc.config,
                    p,
                    seed + i,
                    attention=attention,
                    progress=not quiet,
                    thresholds=thr,
                    model_label=lm.label,
                    **kw,
                )
            if cut:
                _warn(truncation_text(i, cut))
                rep.notes.append(truncation_text(i, cut))
            rep.config = rc.name
            rep.random_weights = lm.random_weights
            reports.append(rep)
            typer.echo(rep.summary())
        n_fail = sum(r.verdict == "FAIL" for r in reports)
        n_untested = sum(not r.tested for r in reports)
        verdict = "FAILED" if n_fail else "NOTHING TESTED" if n_untested else "PASSED"
        if json_out is not None:
            from . import media
            from .generate import device_description, now_iso, versions

            media.write_json(
                json_out,
                {
                    "model": lm.label,
                    "random_weights": lm.random_weights,
                    "config": rc.name,
                    "config_source": rc.source,
                    "verdict": verdict,
                    "passed": verdict == "PASSED",
                    "allow_dense": allow_dense,
                    "device": device_description(lm.device),
                    "versions": versions(),
                    "created": now_iso(),
                    "reports": [r.to_dict() for r in reports],
                },
            )
        if verdict == "NOTHING TESTED":
            ds = rc.config.dense_steps
            typer.echo(
                f"quality gate NOTHING TESTED: the patched run of {rc.name} made no sparse attention call for "
                f"{n_untested}/{len(reports)} prompt(s), so it equals dense (see the notes); use more --steps than "
                f"its {ds} dense step(s) and a size whose token grid is larger than its windows"
                + ("" if allow_dense else ", or pass --allow-dense to accept this")
            )
        else:
            typer.echo(
                f"quality gate {verdict}: {len(reports) - n_fail}/{len(reports)} prompt(s) within the thresholds "
                f"of {rc.name}"
            )
    if verdict == "FAILED" or (verdict == "NOTHING TESTED" and not allow_dense):
        raise typer.Exit(code=EXIT_FAILED)


# ------------------------------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------------------------------


@app.command()
def bench(
    family: Annotated[
        str | None, typer.Option("--family", "-f", help="hunyuan|flux|cosmos|wan (default: hunyuan).")
    ] = None,
    model_class: Annotated[
        str | None, typer.Option("--model-class", help="Transformer class name instead of --family.")
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="Preset name or YAML path (default: the family's preset).")
    ] = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    frames: FramesOpt = None,
    steps: Annotated[int, typer.Option("--steps", help="Timed transformer calls (denoising steps) per variant.")] = 1,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls before timing, per variant.")] = 1,
    total_steps: Annotated[
        int, typer.Option("--total-steps", help="Steps of the projected full generation (with the dense steps).")
    ] = 50,
    tiny: Annotated[bool, typer.Option("--tiny", help="Use the tiny transformer (allowed on CPU).")] = False,
    device: DeviceOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the JSON record.")] = Path("bench/results"),
) -> None:
    """Per-step time of a real-size transformer (random weights, bf16, GPU): dense vs a config."""
    with _handle_errors():
        from .bench import family_from, make_case
        from .generate import MAX_STEPS, resolve_device

        fam = family_from(family, model_class)
        if not (1 <= steps <= MAX_STEPS and 0 <= warmup <= MAX_STEPS and 1 <= total_steps <= MAX_STEPS):
            _fail(f"--steps and --total-steps must be 1 to {MAX_STEPS}, --warmup 0 to {MAX_STEPS}")
        case = make_case(fam, height, width, frames, tiny)
        dev = resolve_device(device)
        _check_out(out)
        if not dev.startswith("cuda") and not tiny:
            _fail(
                "bench builds a real-size model and needs a CUDA GPU; on a CPU add --tiny to exercise the code "
                "path with the tiny transformer"
            )
        from .generate import resolve_config

        if config in ("dense", "none"):
            _fail("bench compares a config against dense; pass a preset or a YAML file")
        if config is None:
            from ..patching.config import list_presets
            from ..patching.families import family_adapter

            cls = model_class or family_adapter(fam).model_class
            names = [p.name for p in list_presets() if getattr(p, "model", None) == cls]
            names = names or [p.name for p in list_presets() if p.name.startswith(fam)]
            if not names:
                _fail(f"no shipped preset for {fam}; pass --config")
            config = names[0]
        rc = resolve_config(config)
        from .bench import run_bench

        _quiet_libraries()
        rec = run_bench(
            fam, rc.config, rc.name, case, device=dev, iters=steps, warmup=warmup, total_steps=total_steps, echo=_info
        )
        from . import media
        from .generate import device_description, now_iso, versions

        rec.update(config_source=rc.source, device=device_description(dev), versions=versions(), created=now_iso())
        label = "tiny random-weight model" if tiny else f"real-size {rec['model_class']}, random weights"
        rec["model"] = label
        stamp = rec["created"].replace(":", "").replace("-", "")[:15]
        path = media.write_json(out / f"e2e_{fam}_{rc.name}{'_tiny' if tiny else ''}_{stamp}.json", rec)
        if not rec["patched_step_sparse"]:
            _warn(f"the {rc.name} step made no sparse attention call: {rec['patched_dense_reason']}")
        typer.echo(_bench_table(rec))
        typer.echo(f"wrote {path}")


def _bench_table(r: dict) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"

    sparse = r["patched_step_sparse"]
    if sparse:
        patched = ms(r["patched_step_s"])
        speedup = f"{r['speedup_per_sparse_step']:.2f}x" if r["speedup_per_sparse_step"] else "-"
        projection = (
            f"{ms(r['projected_dense_s'])} -> {ms(r['projected_patched_s'])} ({r['dense_steps']} dense steps): "
            f"{r['projected_speedup']:.2f}x"
            if r["projected_speedup"]
            else "-"
        )
    else:
        patched = f"{ms(r['patched_step_s'])} (ran dense: {r['patched_dense_reason']})"
        speedup = "- (no sparse step was timed)"
        projection = "- (no sparse step was timed)"
    rows = [
        ("model", r["model"]),
        ("shape", f"{r['height']}x{r['width']}x{r['frames']} -> token grid {tuple(r['token_grid'])}"),
        ("dense step", ms(r["dense_step_s"])),
        (f"{r['config']} step", patched),
        ("speedup per sparse step", speedup),
        (f"{r['projection_steps']}-step projection", projection),
    ]
    if r.get("peak_mem_dense_bytes") is not None:
        rows.append(
            (
                "peak GPU memory",
                f"{r['peak_mem_dense_bytes'] / 2**30:.1f} GiB dense, "
                f"{r['peak_mem_patched_bytes'] / 2**30:.1f} GiB patched",
            )
        )
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


# ------------------------------------------------------------------------------------------------------------
# presets
# ------------------------------------------------------------------------------------------------------------


@app.command()
def presets(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the shipped presets and what each was measured to give."""
    with _handle_errors():
        from ..patching.config import list_presets

        items = list(list_presets())
        rows = []
        for p in items:
            measured = getattr(p, "measured", None)
            rows.append(
                {
                    "name": p.name,
                    "model": getattr(p, "model", None),
                    "description": getattr(p, "description", None),
                    "measured": _measured_text(measured),
                    "path": str(getattr(p, "path", "") or ""),
                }
            )
        if as_json:
            import json

            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            typer.echo("no presets shipped")
            return
        for r in rows:
            typer.echo(f"{r['name']}  ({r['model']})")
            if r["description"]:
                typer.echo(f"    {_one_line(r['description'])}")
            typer.echo(f"    measured: {r['measured']}")
            typer.echo(f"    file: {r['path']}")


def _measured_text(m: Any) -> str:
    if m is None or m is False or m == {}:
        return "unmeasured"
    if isinstance(m, str):
        return _one_line(m)
    if hasattr(m, "model_dump"):
        m = m.model_dump()
    if isinstance(m, dict):
        return ", ".join(f"{k}: {v}" for k, v in m.items() if v is not None) or "unmeasured"
    return str(m)


from . import tune as _tune  # noqa: E402  (the tune command lives in its own module)

_tune.register(app, handle_errors=_handle_errors, fail=_fail, info=_info, preflight=_preflight, load=_load)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
