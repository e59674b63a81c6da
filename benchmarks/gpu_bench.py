"""GPU benchmark of the full IAV: fp32, bf16 autocast and bf16 autocast + torch.compile.

One run, one JSON file. For each setting it times ``iavutils.iav`` (the clean pass for the
class token's attention rows + SmoothGrad with ``n`` samples + the IA-Scores) on the same
images and the same noise, and reports:

* ``img_per_s`` — images per second in the steady state (median of ``--rounds`` calls);
* ``first_call_s`` and ``compile_s`` — the first call apart from the steady state
  (``compile_s = first_call_s - steady median``, only for the compiled setting);
* ``fraction_of_bf16_peak`` — achieved FLOP/s over the bf16 dense-matmul peak *measured in the
  same run* (square ``torch.mm`` GEMMs, warm-up then timed with CUDA events), and
  ``fraction_of_matmul_peak`` over the better of the bf16 and fp32 GEMMs (the same on a GPU; on a
  CPU without bf16 matrix units the bf16 GEMM is the slow one);
* ``flops`` — per image, counted with ``torch.utils.flop_counter.FlopCounterMode`` as in
  ``bench_iav.py``'s limit: ``n x (forward + backward to the input only)`` of the untrimmed model
  (math SDPA so the attention matmuls are counted, no weight gradients); the clean forward is
  reported beside it and not in the fraction;
* ``peak_memory_bytes`` — ``torch.cuda.max_memory_allocated``, reset before every call (CUDA
  only; ``null`` on CPU);
* ``deviation`` — max |IA-Score - IA-Score(fp32)| on the same noise and target, against
  ``iavutils.core.sweep.BF16_TOLERANCE``. The fp32 row compares fp32 with its own first call, so
  it is 0 on CPU and shows the run-to-run floor of non-deterministic GPU kernels.

The GPU run (ViT-B/16 at 224, random weights, 10 classes, n=25; well under 5 minutes on an
H200-class GPU)::

    .venv/bin/python benchmarks/gpu_bench.py

Without CUDA the same code path runs on the CPU with the tiny preset (``tiny-dino``, random
weights, 32x32), a few images, small ``n`` and a small GEMM — what CI and the test run::

    .venv/bin/python benchmarks/gpu_bench.py --quick            # = --device cpu when no CUDA
    .venv/bin/python benchmarks/gpu_bench.py --device cpu --model tiny --images 4 --n 4

bf16 + compile is skipped on CPU (recorded as skipped, with the reason) unless ``--cpu-compile``:
inductor takes minutes there. A setting that fails on the device (e.g. no bf16 support, a compile
error) is recorded as skipped with the error instead of ending the run.

Output: ``benchmarks/results/gpu_<model>_<UTC timestamp>.json`` (git-ignored), written atomically.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
SCHEMA = "iavutils.gpu_bench/1"

# setting name -> (autocast dtype, torch.compile); fp32 is the reference for the deviations
SETTINGS: dict[str, tuple[torch.dtype | None, bool]] = {
    "fp32": (None, False),
    "bf16": (torch.bfloat16, False),
    "bf16_compile": (torch.bfloat16, True),
}

# Two profiles: the GPU figure, and the CPU smoke run that CI can afford. Every value can be
# overridden by its own flag.
PROFILES: dict[str, dict[str, Any]] = {
    "gpu": {"model": "vit-b16", "images": 32, "n": 25, "rounds": 5, "gemm_size": 8192,
            "gemm_warmup": 10, "gemm_reps": 50},
    "quick": {"model": "tiny", "images": 4, "n": 4, "rounds": 2, "gemm_size": 256,
              "gemm_warmup": 2, "gemm_reps": 5},
}

CPU_COMPILE_REASON = (
    "torch.compile on CPU takes minutes (inductor compiled the tiny model's gradient pass in "
    "~7.5 min on the 2-core project machine); pass --cpu-compile to run it"
)


# --------------------------------------------------------------------------------------------
# arguments


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _chunk_size(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    """The command line; ``--help`` documents every option."""
    from iavutils.core.spec import AnalysisSpec

    spec = AnalysisSpec()
    g, q = PROFILES["gpu"], PROFILES["quick"]
    ap = argparse.ArgumentParser(
        prog="gpu_bench.py",
        description="Full-IAV throughput, fraction of the measured bf16 GEMM peak, peak memory and "
        "bf16 deviation for fp32 / bf16 autocast / bf16 autocast + torch.compile; writes one JSON file.",
        epilog="Defaults come from one of two profiles: on CUDA (no --quick) "
        f"model={g['model']} images={g['images']} n={g['n']} rounds={g['rounds']} gemm-size={g['gemm_size']}; "
        f"with --quick or on CPU model={q['model']} images={q['images']} n={q['n']} rounds={q['rounds']} "
        f"gemm-size={q['gemm_size']}. Output: benchmarks/results/gpu_<model>_<UTC timestamp>.json.",
    )
    ap.add_argument("--device", default="auto",
                    help="auto (cuda when available, else cpu) | cpu | cuda | cuda:N")
    ap.add_argument("--quick", action="store_true",
                    help="the small CPU-sized profile (tiny model, few images, small n and GEMM); "
                    "the default whenever the device is the CPU")
    ap.add_argument("--model", default=None,
                    help="vit-b16 (timm vit_base_patch16_224, random weights, 224x224) | tiny (the tiny-dino "
                    "preset, random weights, 32x32) | any preset name (random weights)")
    ap.add_argument("--num-classes", type=_positive_int, default=10, help="classifier outputs (default 10)")
    ap.add_argument("--images", type=_positive_int, default=None, help="images per IAV call")
    ap.add_argument("--n", type=_positive_int, default=None, help="SmoothGrad samples per image")
    ap.add_argument("--noise", choices=("gaussian", "antithetic", "quasi"), default=spec.noise,
                    help=f"SmoothGrad noise stream (default {spec.noise})")
    ap.add_argument("--noise-level", type=_positive_float, default=spec.noise_level,
                    help=f"SmoothGrad sigma as a fraction of each image's value range (default {spec.noise_level})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the images and of the noise (default 0)")
    ap.add_argument("--rounds", type=_positive_int, default=None,
                    help="timed steady-state calls per setting, interleaved across settings (after one untimed-for-"
                    "throughput first call)")
    ap.add_argument("--chunk-size", type=_chunk_size, default="auto",
                    help="'auto' (the engine's plan) or samples per gradient chunk")
    ap.add_argument("--settings", default=",".join(SETTINGS),
                    help=f"comma list out of {', '.join(SETTINGS)} (fp32 is required: it is the reference)")
    ap.add_argument("--cpu-compile", action="store_true",
                    help="run bf16_compile on the CPU too (skipped there by default: minutes of compile)")
    ap.add_argument("--gemm-size", type=_positive_int, default=None, help="side of the square peak GEMM")
    ap.add_argument("--gemm-warmup", type=_positive_int, default=None, help="untimed GEMMs before timing")
    ap.add_argument("--gemm-reps", type=_positive_int, default=None, help="timed GEMMs per measurement")
    ap.add_argument("--threads", type=_positive_int, default=None,
                    help="CPU intra-op threads (torch.set_num_threads; default: torch's)")
    ap.add_argument("--results-dir", type=Path, default=RESULTS,
                    help="directory of gpu_<model>_<timestamp>.json (default benchmarks/results)")
    ap.add_argument("--out", type=Path, default=None, help="exact JSON path (overrides --results-dir)")
    return ap


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parses and checks the arguments, fills the profile's defaults; bad input exits with code 2."""
    ap = build_parser()
    args = ap.parse_args(argv)

    try:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
            else torch.device(args.device)
    except RuntimeError as err:
        ap.error(f"--device {args.device!r}: {err}")
    if device.type not in ("cpu", "cuda"):
        ap.error(f"--device {args.device!r}: only cpu and cuda are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            ap.error(f"--device {args.device!r}: CUDA is not available here; use --device cpu --quick")
        if device.index is not None and device.index >= torch.cuda.device_count():
            ap.error(f"--device {args.device!r}: only {torch.cuda.device_count()} CUDA device(s)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    args.device = device

    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        ap.error(f"--settings: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(SETTINGS)}")
    if "fp32" not in settings:
        ap.error("--settings must include fp32: it is the reference of the deviations")
    args.settings = [s for s in SETTINGS if s in settings]  # fixed order: fp32 first

    args.profile = "quick" if (args.quick or device.type == "cpu") else "gpu"
    for key, value in PROFILES[args.profile].items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    from iavutils.world.presets import PRESETS

    if args.model not in ("vit-b16", "tiny") and args.model not in PRESETS:
        ap.error(f"--model {args.model!r}: vit-b16, tiny or one of {', '.join(sorted(PRESETS))}")
    return args


# --------------------------------------------------------------------------------------------
# model, images, FLOPs, GEMM peak


def build_model(name: str, num_classes: int, device: torch.device) -> tuple[nn.Module, str]:
    """Random-weight model (offline) in eval mode on ``device``, and a one-line description."""
    if name == "vit-b16":
        import timm

        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=num_classes)
        return model.eval().to(device), "timm vit_base_patch16_224, random weights, 224x224"
    from iavutils.world.models import load_model

    preset = "tiny-dino" if name == "tiny" else name
    model, _ = load_model(preset, num_classes=num_classes, pretrained=False, device=device)
    return model.eval(), f"preset {preset}, random weights (pretrained=False)"


def make_images(model: nn.Module, count: int, device: torch.device, seed: int) -> Tensor:
    """Uniform [0,1] images normalised with mean = std = 0.5 (SmoothGrad's sigma reads the range)."""
    from iavutils.core.geometry import model_geometry

    geo = model_geometry(model)
    x01 = torch.rand(count, 3, *geo.img_size, generator=torch.Generator().manual_seed(seed))
    return ((x01 - 0.5) / 0.5).to(device)


def gemm_flops_per_s(device: torch.device, dtype: torch.dtype, size: int, warmup: int, reps: int) -> float:
    """Dense-matmul throughput (FLOP/s) of ``size``-cubed ``torch.mm`` in ``dtype``.

    CUDA: ``reps`` back-to-back GEMMs between two CUDA events after ``warmup`` GEMMs (the clocks
    ramp up and cuBLAS picks its kernel during the warm-up). CPU: median of per-GEMM wall times.
    """
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    c = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(warmup):
        torch.mm(a, b, out=c)
    flop = 2.0 * size**3
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(reps):
            torch.mm(a, b, out=c)
        end.record()
        end.synchronize()
        return flop * reps / (start.elapsed_time(end) / 1e3)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return flop / statistics.median(times)


# --------------------------------------------------------------------------------------------
# the settings


def _rate(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:.1f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.2f} GFLOP/s"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    # per call, so each row's peak is its own and not the largest row's so far
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _plan_dict(plan: Any) -> dict[str, Any] | None:
    if plan is None:
        return None
    return {"chunk_size": plan.chunk_size, "sizes": list(plan.sizes),
            "saved_bytes_per_sample": plan.bytes_per_sample, "memory_budget": plan.memory_budget}


class Setting:
    """One row: a dtype/compile choice, its calls, timings, memory and deviation from fp32."""

    def __init__(self, name: str, args: argparse.Namespace, model: nn.Module, x: Tensor, target: Tensor) -> None:
        self.name = name
        self.autocast, self.compile = SETTINGS[name]
        self.args, self.model, self.x, self.target = args, model, x, target
        self.skipped: str | None = None
        self.first_call_s: float | None = None
        self.first_peak: int | None = None
        self.steady_s: list[float] = []
        self.peaks: list[int] = []
        self.deviations: list[float] = []
        self.plan: dict[str, Any] | None = None

    def call(self, details: bool = False) -> Any:
        """One full IAV on the benchmark images; the same noise seed every time (timing does not
        depend on it, and the deviations then compare like with like)."""
        from iavutils.core.scores import iav

        a = self.args
        return iav(
            self.model, self.x, self.target, a.n, a.noise_level, torch.Generator().manual_seed(a.seed),
            chunk_size=a.chunk_size, autocast=self.autocast, compile=self.compile, noise=a.noise,
            return_details=details,
        )

    def timed(self, details: bool = False) -> tuple[Any, float, int | None]:
        """One call: ``(result, wall seconds after a device sync, peak CUDA bytes or None)``."""
        dev = self.args.device
        _sync(dev)
        _peak_reset(dev)
        t0 = time.perf_counter()
        out = self.call(details)
        _sync(dev)
        return out, time.perf_counter() - t0, _peak(dev)

    def first(self) -> Tensor | None:
        """The first call (compiles when ``compile``); a device error marks the row skipped."""
        try:
            out, self.first_call_s, self.first_peak = self.timed(details=True)
        except Exception as err:  # a failed compile or dtype must not lose the other rows
            self.skipped = f"{type(err).__name__}: {err}".strip()[:2000]
            traceback.print_exc()
            return None
        self.plan = _plan_dict(out.get("plan"))
        return out["iav"]

    def steady(self, reference: Tensor) -> None:
        """One timed steady-state call, and its deviation from the fp32 reference."""
        out, seconds, peak = self.timed()
        self.steady_s.append(seconds)
        if peak is not None:
            self.peaks.append(peak)
        self.deviations.append(float((out.float() - reference).abs().nan_to_num(0.0).max()))

    def report(self, flops_per_image: int, bf16_peak: float, matmul_peak: float, tolerance: float) -> dict[str, Any]:
        """The row's JSON: every key always present, ``None`` where skipped or not measurable.

        Args:
            flops_per_image: ``n x (forward + backward to the input)`` FLOPs of one image.
            bf16_peak: measured bf16 GEMM FLOP/s (median over the rounds).
            matmul_peak: the better of the bf16 and fp32 GEMM FLOP/s.
            tolerance: the accepted deviation from fp32 (``BF16_TOLERANCE``).
        """
        row: dict[str, Any] = {
            "autocast": str(self.autocast).removeprefix("torch.") if self.autocast else None,
            "compile": self.compile, "skipped": self.skipped is not None, "reason": self.skipped,
            "img_per_s": None, "steady_s_median": None, "steady_s": self.steady_s,
            "first_call_s": self.first_call_s, "compile_s": None, "achieved_flops_per_s": None,
            "fraction_of_bf16_peak": None, "fraction_of_matmul_peak": None, "peak_memory_bytes": None,
            "peak_memory_first_call_bytes": self.first_peak, "chunk_plan": self.plan,
            "deviation": {"max_abs": None, "tolerance": tolerance, "within_tolerance": None},
        }
        if self.skipped is not None or not self.steady_s:
            return row
        med = statistics.median(self.steady_s)
        ips = len(self.x) / med
        dev = max(self.deviations)
        row.update({
            "img_per_s": ips, "steady_s_median": med,
            "achieved_flops_per_s": ips * flops_per_image,
            "fraction_of_bf16_peak": ips * flops_per_image / bf16_peak,
            "fraction_of_matmul_peak": ips * flops_per_image / matmul_peak,
            "peak_memory_bytes": max(self.peaks) if self.peaks else None,
            "deviation": {"max_abs": dev, "tolerance": tolerance,
                          "within_tolerance": bool(math.isfinite(dev) and dev <= tolerance)},
        })
        if self.compile and self.first_call_s is not None:
            # the first call = compile + one call; the steady median stands for the call
            row["compile_s"] = max(0.0, self.first_call_s - med)
        return row


# --------------------------------------------------------------------------------------------
# environment


def device_info(device: torch.device) -> dict[str, Any]:
    """Name and capabilities of the device the benchmark ran on."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "index": device.index, "name": torch.cuda.get_device_name(device),
                "capability": f"{p.major}.{p.minor}", "total_memory_bytes": int(p.total_memory),
                "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count(),
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                "bf16_supported": torch.cuda.is_bf16_supported()}
    name = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"type": "cpu", "index": None, "name": name, "cores": os.cpu_count()}


def _compile_cache() -> dict[str, Any]:
    # a warm inductor cache (a second run on the same machine) makes compile_s much smaller:
    # record whether it was on so that a reader knows what the figure means
    try:
        from torch._inductor import config as inductor_config

        return {"fx_graph_cache": bool(inductor_config.fx_graph_cache),
                "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}
    except Exception as err:  # pragma: no cover - private module moved
        return {"error": f"{type(err).__name__}: {err}"}


# --------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> tuple[dict[str, Any], Path]:
    """Runs the benchmark and writes the JSON.

    Args:
        argv: Command-line arguments (``None``: ``sys.argv[1:]``).

    Returns:
        ``(report, path)``: the JSON content as a dict, and where it was written.

    Raises:
        SystemExit: Bad arguments (code 2, with a one-line reason), or ``--help`` (code 0).
    """
    args = parse_args(argv)
    t_start = time.perf_counter()
    now = _dt.datetime.now(_dt.timezone.utc)
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)

    import timm

    from iavutils.core.geometry import model_geometry
    from iavutils.core.sweep import BF16_TOLERANCE
    from iavutils.world.store import atomic_write

    torch.manual_seed(args.seed)
    model, note = build_model(args.model, args.num_classes, device)
    x = make_images(model, args.images, device, args.seed)
    geo = model_geometry(model)
    with torch.no_grad():
        # the fp32 prediction is every setting's target: a bf16 clean pass could pick another
        # class of a random-weight model, and the deviation would then measure that, not bf16
        target = model(x).argmax(-1)
    model_bytes = int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else None
    dinfo = device_info(device)
    print(f"{note}; {dinfo['name']}; torch {torch.__version__}; {args.images} images, n={args.n}, "
          f"{args.noise} noise; settings {', '.join(args.settings)}", flush=True)

    # the same count as bench_iav's FLOP limit (math SDPA, backward to the input only)
    from bench_iav import flops_per_sample

    fl = flops_per_sample(model, device)
    flops_per_image = args.n * (fl["forward"] + fl["backward_input"])
    print(f"FLOPs/sample: forward {fl['forward'] / 1e9:.3f} G + backward-to-input {fl['backward_input'] / 1e9:.3f} G;"
          f" x n = {flops_per_image / 1e9:.2f} GFLOP per image", flush=True)

    gemm = lambda dtype: gemm_flops_per_s(device, dtype, args.gemm_size, args.gemm_warmup, args.gemm_reps)  # noqa: E731
    bf16_rounds = [gemm(torch.bfloat16)]
    fp32_gemm = gemm(torch.float32)
    print(f"GEMM {args.gemm_size}^3: bf16 {_rate(bf16_rounds[0])}, fp32 {_rate(fp32_gemm)}", flush=True)

    rows = {name: Setting(name, args, model, x, target) for name in args.settings}
    if device.type == "cpu" and "bf16_compile" in rows and not args.cpu_compile:
        rows["bf16_compile"].skipped = CPU_COMPILE_REASON
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        for name in rows:
            if SETTINGS[name][0] is torch.bfloat16:
                rows[name].skipped = f"{dinfo['name']} does not support bf16"

    # first calls (compile time apart from the steady state); fp32 first: it is the reference
    reference = rows["fp32"].first()
    if reference is None:
        raise RuntimeError(f"the fp32 reference failed: {rows['fp32'].skipped}")
    reference = reference.float()
    for name, row in rows.items():
        if name != "fp32" and row.skipped is None:
            out = row.first()
            if out is not None:
                row.deviations.append(float((out.float() - reference).abs().nan_to_num(0.0).max()))
        if row.first_call_s is not None:
            print(f"{name}: first call {row.first_call_s:.2f} s", flush=True)
        elif row.skipped:
            print(f"{name}: skipped ({row.skipped})", flush=True)

    # steady state in interleaved rounds: a GPU's clocks and a shared CPU's load drift, and
    # interleaving spreads that drift over every row instead of biasing the last one
    live = [r for r in rows.values() if r.skipped is None]
    for r in range(args.rounds):
        if r:
            bf16_rounds.append(gemm(torch.bfloat16))
        for row in live:
            row.steady(reference)
        print(f"round {r + 1}/{args.rounds}: GEMM bf16 {_rate(bf16_rounds[-1])}; "
              + ", ".join(f"{row.name} {len(x) / row.steady_s[-1]:.2f} img/s" for row in live), flush=True)
    bf16_peak = statistics.median(bf16_rounds)
    matmul_peak = max(bf16_peak, fp32_gemm)

    report: dict[str, Any] = {
        "schema": SCHEMA,
        "time_utc": now.isoformat(timespec="seconds"),
        "date": now.date().isoformat(),
        "device": dinfo,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "model": {"name": args.model, "note": note, "num_classes": args.num_classes,
                  "img_size": list(geo.img_size), "layers": geo.num_layers, "heads": geo.num_heads,
                  "tokens": geo.num_prefix_tokens + geo.grid[0] * geo.grid[1],
                  "parameters": sum(p.numel() for p in model.parameters()), "memory_bytes": model_bytes},
        "config": {"profile": args.profile, "quick": args.quick, "images": args.images, "n_samples": args.n,
                   "noise": args.noise, "noise_level": args.noise_level, "seed": args.seed,
                   "rounds": args.rounds, "chunk_size": args.chunk_size, "settings": args.settings,
                   "cpu_compile": args.cpu_compile, "target": "fp32 prediction on the clean images",
                   "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                   "float32_matmul_precision": torch.get_float32_matmul_precision(),
                   "inductor": _compile_cache()},
        "flops": {"forward": fl["forward"], "backward_input": fl["backward_input"], "per_image": flops_per_image,
                  "clean_forward_not_counted": fl["forward"],
                  "counted_as": "n x (forward + backward to the input only), FlopCounterMode, math SDPA, "
                                "untrimmed model"},
        "gemm": {"size": args.gemm_size, "warmup": args.gemm_warmup, "reps": args.gemm_reps,
                 "bf16_flops_per_s": bf16_peak, "bf16_flops_per_s_rounds": bf16_rounds,
                 "fp32_flops_per_s": fp32_gemm, "matmul_peak_flops_per_s": matmul_peak,
                 "timing": "CUDA events around back-to-back torch.mm" if device.type == "cuda"
                 else "median wall time per torch.mm"},
        "settings": {name: row.report(flops_per_image, bf16_peak, matmul_peak, BF16_TOLERANCE)
                     for name, row in rows.items()},
    }
    report["total_s"] = time.perf_counter() - t_start

    print(f"\n{'setting':<14}{'img/s':>10}{'of bf16 peak':>14}{'of mm peak':>12}{'first s':>10}{'compile s':>11}"
          f"{'peak MiB':>10}{'max|dIA|':>11}")
    for name, row in report["settings"].items():
        if row["skipped"]:
            print(f"{name:<14}  skipped: {row['reason']}")
            continue
        pk, cs = row["peak_memory_bytes"], row["compile_s"]
        cs_text = "-" if cs is None else f"{cs:.1f}"
        pk_text = "-" if pk is None else f"{pk / 2**20:.0f}"
        print(f"{name:<14}{row['img_per_s']:>10.2f}{row['fraction_of_bf16_peak'] * 100:>13.1f}%"
              f"{row['fraction_of_matmul_peak'] * 100:>11.1f}%"
              f"{row['first_call_s']:>10.2f}{cs_text:>11}{pk_text:>10}{row['deviation']['max_abs']:>11.2e}")
    print(f"(bf16 GEMM peak {_rate(bf16_peak)}, fp32 {_rate(fp32_gemm)}, measured in this run; "
          f"tolerance of the deviation {BF16_TOLERANCE}; total {report['total_s']:.0f} s)")

    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    out = args.out or args.results_dir / f"gpu_{args.model}_{stamp}.json"
    atomic_write(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report, out


if __name__ == "__main__":
    main()
