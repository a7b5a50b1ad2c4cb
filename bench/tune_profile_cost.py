"""What `na-accel tune`'s profiling pass costs on a real-size transformer: one denoising step timed dense (unpatched)
and profiled (every window covers the grid, so the original attention answers, with the tuner's
:class:`na_accel.quality.ladder.LadderProbe` measuring its ladder of candidate windows on every call).

The issue's bar: at HunyuanVideo 720p x 129 frames the profiling pass costs at most 3 dense steps of time. A
generation of S steps profiled costs ``S * profiled_step_s``, the same generation dense ``S * dense_step_s``, so the
extra cost is ``S * (profiled_step_s - dense_step_s)``, reported in dense steps for the default 50 steps.

The transformer is built in code with the family's real configuration and random weights (``na_accel.tools.bench``),
fed random inputs of the real shapes. One GPU call (carry ``.wheels`` for diffusers)::

    source bench/gpu_env.sh && python3 bench/tune_profile_cost.py --family hunyuan --out $OUT
    python3 bench/tune_profile_cost.py --tiny --out /tmp/tpc        # CPU: the same code on the tiny model

Writes ``OUT/tune-profile-cost-<device>-<date>.json`` (environment, sizes, step times, probe seconds, ladder size).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import na_accel  # noqa: E402
from na_accel.patching.families import family_adapter  # noqa: E402
from na_accel.quality.ladder import LadderProbe  # noqa: E402
from na_accel.quality.tune import PROFILE_CONFIG  # noqa: E402
from na_accel.tools.bench import _time, build_transformer, make_case  # noqa: E402


def measure(family: str, tiny: bool, height: int | None, width: int | None, frames: int | None, device: str,
            queries: int, iters: int, warmup: int, steps: int) -> dict:  # fmt: skip
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    case = make_case(family, height, width, frames, tiny)
    tr = build_transformer(family, tiny, device, dtype)
    inputs = family_adapter(family).example_inputs(tr, case.latent_shape, case.text_tokens, device, dtype)

    def step() -> None:
        with torch.no_grad():
            tr(**inputs)

    print(f"{type(tr).__name__} on {device}, token grid {case.token_grid}: timing dense ...", flush=True)
    dense = _time(step, device, warmup, iters)
    probe = LadderProbe(queries=queries)
    with na_accel.patched(tr, PROFILE_CONFIG) as handle:
        probe.attach(handle)
        print("timing profiled (ladder probe on every attention call) ...", flush=True)
        profiled = _time(step, device, warmup, iters)
        calls = handle.call_counts()
        probe.detach()
    if calls.get("sparse", 0):  # the profile config must leave every call to the original attention
        raise RuntimeError(f"profiling ran sparse attention: {calls}")
    table = probe.table()
    d, p = statistics.median(dense), statistics.median(profiled)
    return {
        "family": family, "tiny": tiny, "model_class": type(tr).__name__, "dtype": str(dtype).replace("torch.", ""),
        "height": case.height, "width": case.width, "frames": case.frames, "token_grid": list(case.token_grid),
        "text_tokens": case.text_tokens, "queries": queries, "candidates": len(table.ladder.candidates),
        "dense_step_s": d, "profiled_step_s": p, "dense_step_all_s": dense, "profiled_step_all_s": profiled,
        "probe_seconds_total": probe.seconds, "probe_calls": table.calls, "attention_calls": calls,
        "steps": steps, "extra_cost_dense_steps": steps * (p - d) / d,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="hunyuan", choices=["hunyuan", "flux", "cosmos", "wan"])
    ap.add_argument("--tiny", action="store_true", help="the tiny random-weight transformer (a CPU code check)")
    ap.add_argument("--height", type=int, default=None, help="default: the family's real size (720 for hunyuan)")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--queries", type=int, default=64, help="sampled queries per call (the tuner's default)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50, help="denoising steps of the generation the cost is given for")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rec = measure(args.family, args.tiny, args.height, args.width, args.frames, device, args.queries, args.iters,
                  args.warmup, args.steps)  # fmt: skip
    rec["environment"] = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu ({platform.machine()})",
        "torch": torch.__version__, "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if device.startswith("cuda") else "cpu"
    path = args.out / f"tune-profile-cost-{tag}-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(rec, indent=1) + "\n")
    cost = rec["extra_cost_dense_steps"]
    print(f"dense step {rec['dense_step_s']:.3f} s, profiled {rec['profiled_step_s']:.3f} s: profiling a "
          f"{args.steps}-step generation costs {cost:.2f} dense steps; wrote {path}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
