"""Loading a pipeline, validating generation sizes, and generating with or without a config.

Used by the command line (``na_accel.cli``) and usable from Python. No heavy import at module level: torch and
diffusers are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import json
import math
import os
import platform
import re
import sys
import time
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, UnsupportedModelError
from ..quality.environment import versions

__all__ = [
    "TINY_LABEL",
    "InputError",
    "LoadedModel",
    "ShapeRules",
    "adapter_of",
    "load_model",
    "read_prompts",
    "resolve_config",
    "shape_rules",
    "versions",
]

TINY_LABEL = "tiny random-weight model"
TINY_FPS = 8


# --------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------


# Characters that print as nothing: zero-width space / non-joiner / joiner, word joiner, byte order mark (and the
# other Unicode "format" characters, category Cf). Stripped from both ends of a prompt line with the whitespace.
def _strip_invisible(line: str) -> str:
    start, end = 0, len(line)
    while start < end and _invisible(line[start]):
        start += 1
    while end > start and _invisible(line[end - 1]):
        end -= 1
    return line[start:end]


def _invisible(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) == "Cf"


def parse_prompts(text: str) -> list[str]:
    """Non-empty lines of ``text``, stripped of whitespace and invisible characters (zero-width spaces, byte order
    marks); lines starting with '#' are comments."""
    prompts = [_strip_invisible(ln) for ln in text.replace("\ufeff", "").splitlines()]
    return [ln for ln in prompts if ln and not ln.startswith("#")]


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a UTF-8 text file (see :func:`parse_prompts`); ``-`` reads standard input."""
    if str(path) == "-":
        where = "standard input"
        stream = sys.stdin
        try:
            raw = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
        except OSError as e:
            raise InputError(f"cannot read prompts from standard input: {e.strerror or e}") from None
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            raise InputError("prompts on standard input are not UTF-8 text; convert them to UTF-8") from None
    else:
        p = Path(path)
        where = repr(str(p))
        if not p.exists():
            raise InputError(f"prompt file not found: {str(p)!r} (give a text file, or - for standard input)")
        if not p.is_file():
            raise InputError(f"prompt file is not a regular file: {str(p)!r}")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"prompt file is not UTF-8 text: {str(p)!r}; convert it to UTF-8") from None
        except OSError as e:
            raise InputError(f"cannot read prompt file {str(p)!r}: {e.strerror or e}") from None
    prompts = parse_prompts(text)
    if not prompts:
        raise InputError(f"no prompts in {where}: every line is empty or a '#' comment; write one prompt per line")
    return prompts


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------


# Largest values the command line takes: far beyond any model's use, small enough that torch can represent them.
MAX_SIDE = 16384  # pixels, height and width
MAX_FRAMES = 4097
MAX_STEPS = 10000
MAX_SEED = 2**64 - 1  # torch generators take 64-bit seeds
MAX_VIDEOS = 64  # outputs per prompt (--num-videos)
MAX_FPS = 240
MAX_GUIDANCE = 100.0

#: Every supported model (HunyuanVideo, FLUX, Cosmos, Wan) needs heights and widths that are multiples of 16 (VAE
#: scale 8 x patch size 2, or more) and video frame counts of the form 4k+1 (Cosmos 1.0: 8k+1).
ANY_MODEL_SPATIAL_MULTIPLE = 16
ANY_MODEL_TEMPORAL_FACTOR = 4


@dataclass
class ShapeRules:
    """What sizes a pipeline can generate: height/width multiple of ``spatial_multiple``; for video, frames
    ``= temporal_factor * k + 1`` with the latent frame count a multiple of ``temporal_patch``."""

    family: str
    is_video: bool
    spatial_multiple: int
    temporal_factor: int = 1
    temporal_patch: int = 1

    def check(self, height: int | None, width: int | None, frames: int | None, model: str = "the model") -> None:
        for name, v in (("height", height), ("width", width)):
            if v is None:
                continue
            if not 1 <= v <= MAX_SIDE:
                raise InputError(
                    f"--{name} {v} is out of range: height and width must be between {self.spatial_multiple} and "
                    f"{MAX_SIDE} pixels"
                )
            if v % self.spatial_multiple:
                lo = max(self.spatial_multiple, v // self.spatial_multiple * self.spatial_multiple)
                raise InputError(
                    f"--{name} {v} is not a multiple of {self.spatial_multiple} (VAE scale x patch size), which "
                    f"{model} requires; try {lo}"
                )
        if frames is None:
            return
        if not 1 <= frames <= MAX_FRAMES:
            raise InputError(f"--frames {frames} is out of range: the frame count must be between 1 and {MAX_FRAMES}")
        if not self.is_video:
            if frames != 1:
                raise InputError(f"{model} generates images; --frames must be 1 or omitted, got {frames}")
            return
        t, pt = self.temporal_factor, self.temporal_patch
        if (frames - 1) % t:
            k = max(0, (frames - 1) // t)
            raise InputError(
                f"--frames {frames} is not of the form {t}k+1 required by {model}'s VAE; try {t * k + 1} or "
                f"{t * (k + 1) + 1}"
            )
        latent = (frames - 1) // t + 1
        if latent % pt:
            raise InputError(
                f"--frames {frames} gives {latent} latent frames, not a multiple of the temporal patch size {pt}"
            )


def _transformer_class(pipe: Any) -> str:
    tr = getattr(pipe, "transformer", None)
    return type(tr).__name__ if tr is not None else "(no transformer)"


def adapter_of(pipe: Any) -> Any:
    """The family adapter of a pipeline's transformer, else :class:`UnsupportedModelError` naming the supported
    models."""
    from ..patching.families import adapter_for_class, supported_models_text

    cls = _transformer_class(pipe)
    adapter = adapter_for_class(cls)
    if adapter is None:
        raise UnsupportedModelError(
            f"unsupported model: {type(pipe).__name__} with transformer {cls}; na_accel supports "
            f"{supported_models_text()}"
        )
    return adapter


def shape_rules(pipe: Any) -> ShapeRules:
    """Size constraints of a loaded pipeline, from its family adapter (VAE scale factors and patch size)."""
    adapter = adapter_of(pipe)
    f = adapter.size_factors(pipe)
    return ShapeRules(adapter.family, f.is_video, f.spatial_multiple, f.temporal_factor, f.temporal_patch)


@dataclass
class LoadedModel:
    pipe: Any
    family: str
    label: str  # human name used in outputs
    model_id: str | None  # what --model said (None: the embedded trained model)
    random_weights: bool
    rules: ShapeRules
    default_kwargs: dict[str, Any] = field(default_factory=dict)
    fps: int = 8
    load_s: float = 0.0
    device: str = "cpu"
    dtype: str = "float32"
    source: str = "built-in"  # built-in | local directory | hub
    default_config: str | None = None  # preset for this model when no --config is given (None: the family's)
    offload: str = "none"  # none | model | sequential (see .runtime.apply_offload)

    @property
    def file_tag(self) -> str:
        """Suffix for output file names: says 'tiny-random-weight-model' for the built-in model."""
        return "tiny-random-weight-model" if self.random_weights else ""


#: ``--model`` values that name the embedded trained model (also the default when --model is not given).
EMBEDDED_SPECS = (None, "embedded")


def _is_tiny_spec(model: str | None) -> bool:
    """``tiny`` / ``tiny:<family>``: a built-in random-weight pipeline."""
    return model is not None and (model == "tiny" or model.startswith("tiny:"))


def _tiny_spec_family(model: str | None) -> str:
    from ..tiny import FAMILIES, TINY_DEFAULT

    family = TINY_DEFAULT if model == "tiny" else str(model).split(":", 1)[1]
    if family not in FAMILIES:
        raise InputError(
            f"unknown tiny model family {family!r} in --model {model}; choose one of "
            + ", ".join(f"tiny:{f}" for f in FAMILIES)
        )
    return family


def _family_rules(family: str) -> ShapeRules:
    """Size rules of a family's VAE and patch size as the released models (and the tiny models) have them."""
    from ..patching.families import family_adapter

    f = family_adapter(family).default_size_factors()
    return ShapeRules(family, f.is_video, f.spatial_multiple, f.temporal_factor, f.temporal_patch)


def preflight_rules(model: str | None) -> tuple[ShapeRules, str]:
    """Size rules known before a model is loaded, and whose they are: the exact rules of a built-in model, else
    the rules every supported model shares (the loaded model's own rules are checked again after loading)."""
    if model in EMBEDDED_SPECS:
        from ..tiny.trained import TRAINED_LABEL

        return _family_rules("hunyuan"), f"the {TRAINED_LABEL}"
    if _is_tiny_spec(model):
        family = _tiny_spec_family(model)
        from ..patching.families import family_adapter

        return _family_rules(family), f"the {TINY_LABEL} ({family_adapter(family).display_name})"
    rules = ShapeRules("any", True, ANY_MODEL_SPATIAL_MULTIPLE, ANY_MODEL_TEMPORAL_FACTOR)
    return rules, "every supported model"


def check_seed(seed: int, n_prompts: int = 1) -> None:
    """Seeds ``seed .. seed + n_prompts - 1`` must fit a torch generator (0 to 2**64 - 1)."""
    n = max(1, n_prompts)
    if seed < 0 or seed + n - 1 > MAX_SEED:
        raise InputError(
            f"--seed {seed} is out of range: seeds are 0 to 2**64-1 and prompt i uses --seed + i; pick a seed "
            f"between 0 and {MAX_SEED - n + 1}"
        )


def check_request(
    model: str | None,
    *,
    height: int | None = None,
    width: int | None = None,
    frames: int | None = None,
    steps: int | None = None,
    seed: int | None = None,
    n_prompts: int = 1,
    device: str | None = None,
    dtype: str | None = None,
    offload: str | None = None,
    guidance_scale: float | None = None,
    true_cfg_scale: float | None = None,
    num_videos: int | None = None,
    fps: int | None = None,
    cache: str | None = None,
) -> None:
    """Validate the command-line values that do not need the model, before it is loaded (or anything written):
    sizes (exactly for a built-in tiny model, else the rules every supported model shares), steps, seed, device,
    dtype, offloading (needs CUDA), guidance scales, outputs per prompt, fps and the cache spec. Raises
    :class:`InputError`."""
    rules, whose = preflight_rules(model)
    rules.check(height, width, frames, model=whose)
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise InputError(f"--steps must be between 1 and {MAX_STEPS}, got {steps}")
    if seed is not None:
        check_seed(seed, n_prompts)
    dev = resolve_device(device)
    _resolve_dtype(dtype, dev)
    from .runtime import check_offload, parse_cache

    check_offload(offload, dev)
    for name, v in (("--guidance-scale", guidance_scale), ("--true-cfg-scale", true_cfg_scale)):
        if v is not None and not (math.isfinite(v) and 0 <= v <= MAX_GUIDANCE):
            raise InputError(f"{name} {v} is out of range: it must be between 0 and {MAX_GUIDANCE:g}")
    if num_videos is not None and not 1 <= num_videos <= MAX_VIDEOS:
        raise InputError(f"--num-videos must be between 1 and {MAX_VIDEOS}, got {num_videos}")
    if fps is not None and not 1 <= fps <= MAX_FPS:
        raise InputError(f"--fps must be between 1 and {MAX_FPS}, got {fps}")
    parse_cache(cache)


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    m = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if m is None:
        raise InputError(
            f"--device {device!r} is not supported; use cpu, cuda or cuda:N (default: cuda when available, else cpu)"
        )
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        n = torch.cuda.device_count()
        if m.group(1) is not None and int(m.group(1)) >= n:
            raise InputError(f"--device {device}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    return device


_DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


def _resolve_dtype(dtype: str | None, device: str) -> Any:
    import torch

    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = dict(zip(_DTYPES, (torch.float32,) * 2 + (torch.bfloat16,) * 2 + (torch.float16,) * 2, strict=True))
    if dtype not in table:
        raise InputError(f"--dtype {dtype!r} is not one of float32, bfloat16, float16 (or fp32, bf16, fp16)")
    return table[dtype]


def _own_module(library: Any) -> bool:
    return isinstance(library, str) and re.fullmatch(r"na_accel(\.[A-Za-z_]\w*)*", library) is not None


def import_own_modules(model_index: dict[str, Any], model: str = "the model") -> list[str]:
    """Import the ``na_accel`` modules a pipeline's ``model_index.json`` names as component libraries.

    diffusers loads a component of a library other than diffusers / transformers only from a module that is already
    imported (it never imports a module a repository names), and ``save_pretrained`` records the module that
    defines the class: ``na_accel.tiny.random_weights`` for the tiny Cosmos pipeline's safety checker. Only names
    under ``na_accel.`` are imported (this package's own code); every other name is left to diffusers.
    """
    imported = []
    for key, value in model_index.items():
        if key.startswith("_") or not isinstance(value, list | tuple) or len(value) != 2:
            continue
        library, cls = value
        if not _own_module(library):
            continue
        try:
            importlib.import_module(library)
        except ImportError:
            raise InputError(
                f"cannot load model {model!r}: its component {key!r} is {library}.{cls}, and this na_accel has no "
                f"module {library}; save the pipeline again with this na_accel version"
            ) from None
        imported.append(library)
    return imported


def _model_index(model: str, local: Path | None) -> dict[str, Any] | None:
    """The model_index.json of a local directory or of a hub id already in the local cache (no download)."""
    path: Any = None
    if local is not None:
        path = local / "model_index.json"
    else:
        with contextlib.suppress(Exception):
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(model, "model_index.json")
    if not isinstance(path, str | os.PathLike) or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


def load_error_message(model: str, e: BaseException) -> str:
    """One line for an exception of ``DiffusionPipeline.from_pretrained``: its message without references to a
    stack trace that is not shown, with the underlying cause, and what to do when the hub is off."""
    msg = _first_line(e)
    msg = re.sub(r"\s*[^.()]*\b(stack ?trace|traceback)( shown)? above[^.]*\.?", "", msg, flags=re.IGNORECASE).strip()
    cause = e.__cause__ or e.__context__
    if cause is not None and str(cause).strip() and _first_line(cause) not in msg:
        msg += f" (cause: {type(cause).__name__}: {_first_line(cause)})"
    text = f"cannot load model {model!r}: {msg}"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        text += "; HF_HUB_OFFLINE is set: download the model first (unset HF_HUB_OFFLINE) or pass a local directory"
    return text


def load_model(model: str | None = None, device: str | None = None, dtype: str | None = None,
               offload: str | None = None) -> LoadedModel:  # fmt: skip
    """``None`` or ``"embedded"``: the embedded trained model (``na_accel.tiny.trained``, loaded from its shipped
    folder); ``"tiny"`` / ``"tiny:<family>"``: a built-in tiny random-weight pipeline; anything else:
    ``DiffusionPipeline.from_pretrained(model)`` (hub id or local directory). A saved tiny pipeline gets the tiny
    model's generation defaults and label; a folder with ``na_accel_generation.json`` (the embedded model's, or a
    copy) gets the generation arguments saved there. ``offload`` ("model" or "sequential", see
    :func:`.runtime.apply_offload`) keeps the weights in CPU memory instead of moving the pipeline to ``device``."""
    import torch

    from .runtime import apply_offload, check_offload

    dev = resolve_device(device)
    offload = check_offload(offload, dev)
    t0 = time.perf_counter()

    def place(pipe: Any) -> None:
        if offload == "none":
            pipe.to(dev)
        else:
            apply_offload(pipe, offload, dev)

    if model in EMBEDDED_SPECS:
        from ..tiny import trained

        lm = load_model(str(trained.PIPELINE_DIR), device=device, dtype=dtype, offload=offload)
        lm.label, lm.model_id, lm.source = trained.TRAINED_LABEL, model, "built-in"
        lm.default_config = trained.TRAINED_PRESET
        lm.load_s = time.perf_counter() - t0
        return lm
    if _is_tiny_spec(model):
        from .. import tiny

        family = _tiny_spec_family(model)
        tdtype = _resolve_dtype(dtype, "cpu") if dtype not in (None, "", "auto") else torch.float32
        pipe = tiny.tiny_pipeline(family=family, seed=0, dtype=tdtype)
        place(pipe)
        defaults = dict(tiny.default_generation_kwargs(family))
        adapter = adapter_of(pipe)
        return LoadedModel(
            pipe=pipe,
            family=adapter.family,
            label=f"{TINY_LABEL} ({adapter.display_name})",
            model_id=model,
            random_weights=True,
            rules=shape_rules(pipe),
            default_kwargs=defaults,
            fps=TINY_FPS,
            load_s=time.perf_counter() - t0,
            device=dev,
            dtype=str(tdtype).replace("torch.", ""),
            source="built-in",
            offload=offload,
        )
    from diffusers import DiffusionPipeline

    tdtype = _resolve_dtype(dtype, dev)
    p = Path(model).expanduser()
    saved_defaults: dict[str, Any] = {}
    looks_local = p.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and not p.exists():
        raise InputError(f"model directory not found: {model!r}")
    if p.exists() and not (p / "model_index.json").is_file():
        raise InputError(f"{model!r} is not a diffusers pipeline directory (no model_index.json)")
    index = _model_index(model, p if p.exists() else None)
    if index is not None:
        import_own_modules(index, model)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = DiffusionPipeline.from_pretrained(str(p) if p.exists() else model, torch_dtype=tdtype)
    except Exception as e:  # noqa: BLE001 - anything from the hub or the loader is reported on one line
        raise InputError(load_error_message(model, e)) from None
    adapter = adapter_of(pipe)
    place(pipe)
    from ..tiny import FAMILIES, default_generation_kwargs, tiny_family

    tiny_attr = tiny_family(pipe)
    if p.exists() and not tiny_attr:
        from ..tiny.trained import generation_defaults

        try:
            saved_defaults = generation_defaults(p)
        except ValueError as e:
            raise InputError(str(e)) from None
    return LoadedModel(
        pipe=pipe,
        family=adapter.family,
        label=f"{model} ({TINY_LABEL})" if tiny_attr else model,
        model_id=model,
        random_weights=bool(tiny_attr),
        rules=shape_rules(pipe),
        default_kwargs=dict(default_generation_kwargs(tiny_attr)) if tiny_attr in FAMILIES else saved_defaults,
        fps=TINY_FPS if tiny_attr or saved_defaults else adapter.default_fps,
        load_s=time.perf_counter() - t0,
        device=dev,
        dtype=str(tdtype).replace("torch.", ""),
        source="local directory" if p.exists() else "hub",
        offload=offload,
    )


# Call arguments of a pipeline that are not generation settings (or that the caller always passes itself).
_NOT_SETTINGS = ("output_type", "return_dict")


def pipeline_defaults(pipe: Any) -> dict[str, Any]:
    """The generation settings a pipeline uses when a call does not give them: the scalar defaults of its
    ``__call__`` (sizes, steps, guidance, text length, ...), and for a height/width default of None the size the
    pipeline derives (``default_sample_size * vae_scale_factor``, as FLUX does)."""
    import inspect

    try:
        params = inspect.signature(type(pipe).__call__).parameters
    except (TypeError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for name, prm in params.items():
        if name in _NOT_SETTINGS or "prompt" in name or "callback" in name:
            continue
        d = prm.default
        if d is inspect.Parameter.empty or d is None or not isinstance(d, int | float | str | bool):
            if name in ("height", "width") and d is None:
                size, factor = getattr(pipe, "default_sample_size", None), getattr(pipe, "vae_scale_factor", None)
                if isinstance(size, int) and isinstance(factor, int):
                    out[name] = size * factor
            continue
        out[name] = d
    return out


def _call_parameters(pipe: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(type(pipe).__call__).parameters)
    except (TypeError, ValueError):
        return set()


#: Pipeline arguments for the number of outputs per prompt, in the order they are looked for.
_NUM_OUTPUTS_ARGS = ("num_videos_per_prompt", "num_images_per_prompt")


def generation_kwargs(
    lm: LoadedModel,
    height: int | None = None,
    width: int | None = None,
    frames: int | None = None,
    steps: int | None = None,
    *,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    true_cfg_scale: float | None = None,
    num_videos: int | None = None,
    fps: int | None = None,
) -> dict[str, Any]:
    """The settings a generation runs with: the pipeline's own defaults, the model's defaults (tiny models) and the
    user's values on top, validated against the model's shape rules and its ``__call__`` signature.

    ``guidance_scale`` is the pipeline's own argument: classifier-free guidance for Wan and Cosmos, the embedded
    (distilled) guidance of HunyuanVideo and FLUX.1, which run true classifier-free guidance with a negative prompt
    only when ``true_cfg_scale`` > 1. ``num_videos`` sets ``num_videos_per_prompt`` / ``num_images_per_prompt``;
    ``fps`` is passed to a pipeline that takes it (Cosmos conditions on it); every model's output files use it.
    Raises :class:`InputError` for an option the pipeline does not take, and for a negative prompt it would ignore."""
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise InputError(f"--steps must be between 1 and {MAX_STEPS}, got {steps}")
    params = _call_parameters(lm.pipe)
    pipe_name = type(lm.pipe).__name__
    for flag, arg, value in (("--negative-prompt", "negative_prompt", negative_prompt),
                             ("--guidance-scale", "guidance_scale", guidance_scale),
                             ("--true-cfg-scale", "true_cfg_scale", true_cfg_scale)):  # fmt: skip
        if value is not None and params and arg not in params:
            hint = " (its --guidance-scale is classifier-free guidance already)" if arg == "true_cfg_scale" else ""
            raise InputError(f"{flag}: {pipe_name} takes no {arg}{hint}; omit {flag}")
    if num_videos is not None and num_videos > 1 and params and not any(a in params for a in _NUM_OUTPUTS_ARGS):
        raise InputError(f"--num-videos: {pipe_name} makes one output per prompt (no {' / '.join(_NUM_OUTPUTS_ARGS)})")
    lm.rules.check(height, width, frames, model=lm.label)
    kw = pipeline_defaults(lm.pipe)
    kw.update(lm.default_kwargs)
    if height is not None:
        kw["height"] = height
    if width is not None:
        kw["width"] = width
    if steps is not None:
        kw["num_inference_steps"] = steps
    if lm.rules.is_video and frames is not None:
        kw["num_frames"] = frames
    if not lm.rules.is_video:
        kw.pop("num_frames", None)
    if negative_prompt is not None:
        kw["negative_prompt"] = negative_prompt
    if guidance_scale is not None:
        kw["guidance_scale"] = guidance_scale
    if true_cfg_scale is not None:
        kw["true_cfg_scale"] = true_cfg_scale
    if num_videos is not None:
        arg = next((a for a in _NUM_OUTPUTS_ARGS if a in params), _NUM_OUTPUTS_ARGS[0])
        kw[arg] = num_videos
    if fps is not None and "fps" in params:
        kw["fps"] = fps
    if negative_prompt is not None and "true_cfg_scale" in params and float(kw.get("true_cfg_scale", 1.0)) <= 1:
        raise InputError(
            f"--negative-prompt would be ignored: {pipe_name} uses a negative prompt only for true classifier-free "
            f"guidance, with --true-cfg-scale > 1 (it is {kw.get('true_cfg_scale', 1.0):g}); pass e.g. "
            "--true-cfg-scale 6"
        )
    # re-check the merged values (a user height with the model's default width, ...)
    lm.rules.check(
        kw.get("height"), kw.get("width"), kw.get("num_frames") if lm.rules.is_video else None, model=lm.label
    )
    return kw


# --------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ResolvedConfig:
    name: str  # "dense" or the preset name / file stem
    source: str | None  # preset name or path as given
    config: Any  # NAConfig or None for dense


def resolve_config(config: str | None, dense: bool = False) -> ResolvedConfig:
    """Load ``config`` (preset name or YAML path); ``dense`` or ``config == 'dense'`` means no patching."""
    if dense or config in ("dense", "none"):
        return ResolvedConfig("dense", None, None)
    if config is None:
        raise InputError("no config given")
    from ..patching.config import load_config

    cfg = load_config(config)  # ConfigError for an unknown preset, a missing file or invalid YAML
    name = Path(config).stem if (os.sep in config or config.endswith((".yaml", ".yml"))) else config
    return ResolvedConfig(name, config, cfg)


def default_config_for(lm: LoadedModel) -> str | None:
    """The preset for the model (the embedded model's own), else the shipped preset of its family (None when
    there is none)."""
    from ..patching.config import list_presets

    if lm.default_config:
        return lm.default_config
    cls = _transformer_class(lm.pipe)
    pipe_cls = type(lm.pipe).__name__
    presets = list(list_presets())
    for p in presets:
        if getattr(p, "model", None) in (cls, pipe_cls):
            return p.name
    for p in presets:  # by family prefix (hunyuan_fast, flux_fast, ...)
        if p.name.startswith(lm.family):
            return p.name
    return None


def token_grid(lm: LoadedModel, kw: dict[str, Any]) -> tuple[int, ...] | None:
    """The latent token grid the transformer will see for these generation kwargs (None if sizes are unknown)."""
    h, w = kw.get("height"), kw.get("width")
    if h is None or w is None:
        return None
    r = lm.rules
    gh, gw = h // r.spatial_multiple, w // r.spatial_multiple
    if not r.is_video:
        return (gh, gw)
    f = kw.get("num_frames")
    if f is None:
        return None
    return (((f - 1) // r.temporal_factor + 1) // r.temporal_patch, gh, gw)


def check_config_fits(lm: LoadedModel, rc: ResolvedConfig, kw: dict[str, Any] | None = None) -> None:
    """Surface config problems before anything runs or is written: patch and unpatch once (unsupported model,
    a config for another model, a rule matching no layer), and resolve every layer's window for the token grid
    of ``kw`` (a window that does not fit with ``on_oversize: raise``)."""
    if rc.config is None:
        return
    import na_accel

    handle = na_accel.patch(lm.pipe, config=rc.config)
    try:
        names = [row["layer"] for row in handle.layer_plans()] if hasattr(handle, "layer_plans") else []
    finally:
        na_accel.unpatch(lm.pipe)
    grid = token_grid(lm, kw or {})
    cfg = rc.config
    if grid is None or not hasattr(cfg, "windows_for"):
        return
    for name in names:
        for window in cfg.windows_for(name):  # every window the layer gets at some step
            if window is not None:
                window.resolve(grid, where=f"{getattr(cfg, 'source', rc.name)}: layer {name}")


@contextlib.contextmanager
def maybe_patched(pipe: Any, config: Any):
    if config is None:
        yield None
        return
    import na_accel

    with na_accel.patched(pipe, config) as h:
        yield h


# --------------------------------------------------------------------------------------------------------------
# Prompt truncation
# --------------------------------------------------------------------------------------------------------------

_TOKENIZER_ATTRS = ("tokenizer", "tokenizer_2", "tokenizer_3")


class _TokenizerWatch:
    """Stands in for a pipeline's tokenizer during one run: every call is answered by the real tokenizer; a call
    that truncates a text containing the prompt (``truncation=True`` with ``max_length``) is recorded with the
    text's full token count. Texts in ``exclude`` (the pipeline's default negative prompts) are not the prompt."""

    def __init__(self, tokenizer: Any, attr: str, prompt: str, records: list[dict[str, Any]],
                 exclude: frozenset[str] = frozenset()) -> None:  # fmt: skip
        self.__dict__.update(_tok=tokenizer, _attr=attr, _prompt=prompt, _records=records, _exclude=exclude)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)

    def __call__(self, text: Any = None, *args: Any, **kwargs: Any) -> Any:
        out = self._tok(text, *args, **kwargs)
        limit = kwargs.get("max_length")
        if kwargs.get("truncation") and isinstance(limit, int) and self._prompt:
            texts = [text] if isinstance(text, str) else list(text) if isinstance(text, list | tuple) else []
            for t in texts:
                if not isinstance(t, str) or self._prompt not in t or t.strip() in self._exclude:
                    continue
                with contextlib.suppress(Exception):  # reporting only
                    full = self._tok(t, add_special_tokens=kwargs.get("add_special_tokens", True), truncation=False)
                    n = len(full["input_ids"])
                    rec = {
                        "tokenizer": self._attr,
                        "tokenizer_class": type(self._tok).__name__,
                        "tokens": n,
                        "limit": limit,
                        "dropped": n - limit,
                    }
                    if n > limit and rec not in self._records:
                        self._records.append(rec)
        return out


@contextlib.contextmanager
def watch_truncation(pipe: Any, prompt: str):
    """Yield a list that collects, while the block runs ``pipe`` on ``prompt``, every tokenizer call that cuts the
    prompt off at the text encoder's limit: ``{tokenizer, tokenizer_class, tokens, limit, dropped}`` (for a prompt
    template, the counts include the template)."""
    records: list[dict[str, Any]] = []
    swapped = []
    module = sys.modules.get(type(pipe).__module__)
    exclude = frozenset(  # e.g. Cosmos' DEFAULT_NEGATIVE_PROMPT, encoded next to the prompt
        v.strip() for k, v in (vars(module).items() if module else ()) if "NEGATIVE_PROMPT" in k and isinstance(v, str)
    )
    for attr in _TOKENIZER_ATTRS:
        tok = pipe.__dict__.get(attr)
        if tok is not None and callable(tok):
            pipe.__dict__[attr] = _TokenizerWatch(tok, attr, prompt, records, exclude)  # bypasses the config
            swapped.append((attr, tok))
    try:
        yield records
    finally:
        for attr, tok in swapped:
            pipe.__dict__[attr] = tok


def truncation_text(prompt_index: int, records: list[dict[str, Any]]) -> str:
    """One line saying how a prompt was cut off (from :func:`watch_truncation`)."""
    parts = [
        f"{r['tokenizer']} ({r['tokenizer_class']}) keeps {r['limit']} of {r['tokens']} tokens, "
        f"dropping the last {r['dropped']}"
        for r in records
    ]
    return (
        f"prompt {prompt_index + 1} is longer than the text encoder takes: {'; '.join(parts)}; shorten it to keep "
        "all of it"
    )


# --------------------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------------------


def device_description(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
