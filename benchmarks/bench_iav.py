"""Benchmark: full IAV (attention + SmoothGrad + IA-Scores), ours vs the obvious baseline vs the limit.

Rows of the per-pass table (``--n`` samples per image):

* **ours** — ``iavutils.iav`` (:func:`iavutils.core.scores.iav`) at its best settings for the device (CPU: fp32, eager,
  automatic chunk, the faster of 1 and the machine's threads; GPU: bf16 autocast + ``torch.compile``,
  with the bf16 deviation printed).
* **baseline** — what a user writes from the anchors: timm ``AttentionExtract`` (fx, fused
  attention switched off) for the maps, one plain forward for the predicted class, captum
  ``NoiseTunnel(Saliency)`` with its default batching (all ``n`` samples of an image in one batch;
  one call per image because captum takes one σ per input tensor and σ is per image), at torch's
  default threads.
* **baseline at ours' threads** (``per_pass.baseline_equal_threads``) — the baseline at the thread
  count ours uses, always measured (equal to the baseline row when the counts agree).
* **equal threads** (``per_pass.equal_threads``) — ours and the baseline both at 1 thread and both
  at the machine's threads (``--equal-threads``), so that the engine's own gain is separated from
  the thread setting.
* **limit** — FLOPs the method needs, ``n × (forward + backward to the input only)`` per image,
  counted with ``torch.utils.flop_counter.FlopCounterMode`` (SDPA in its math form so that the
  attention matmuls are counted), divided into the matmul throughput measured in the same run
  (best of square fp32 — or bf16 on GPU — GEMMs). The clean pass is not in the limit, so the
  fraction is conservative.
* **roofline** — ``min(FLOP limit, bandwidth limit)`` in img/s, the bandwidth limit being the
  memory bandwidth measured in the same run (best of a large tensor copy, 2 bytes moved per
  byte copied, and add, 3 per byte; ``--bandwidth-mib``) divided by the bytes a pass moves.
  *Bytes model:* every aten op of the forward and backward-to-input (the model's own attention
  path, as the engine runs it; parameters frozen) reads each of its input tensors and writes each
  of its output tensors once, to and from main memory; views move nothing; a tensor counts at
  most its storage's size (expanded tensors). Counted with a ``TorchDispatchMode`` at batch 1
  and 2, ``bytes(b) = W + b·A``, so per sample at the engine's chunk ``c``: ``A + W/c``
  (weights are read once per chunk). This is the traffic of the unfused eager op sequence with no
  cache reuse: a fused kernel moves less, and caches absorb part of it for a narrow model, so the
  bandwidth limit is the limit *of this op sequence at DRAM bandwidth*, and
  ``fraction_of_roofline = achieved / roofline`` can overstate what a fused engine could still
  gain.

Before timing, ours and the baseline are run on the *same noise* (captum's noise source is
patched to the engine's stream for this check only) and their IA-Scores compared.

The machine is shared, so the rows are measured in interleaved rounds (matmul, bandwidth,
ours, baseline, at each thread count) and medians are reported; the fractions of the limits are
medians of per-round ratios.

**Time to precision** (``--tol``, default 0.005 for the tiny presets; off for ``vit-b16`` unless
given, since its n=400 reference takes hours on a CPU): see ``time_to_precision.py``. Over
``--ttp-images`` images: a plain-Gaussian n=``--ref-n`` reference; ours = ``iav_dataset(...,
tol=tol)`` timed; the baseline timed at the smallest ``n`` of ``--grid`` whose plain-Gaussian
global-IAV is within tol of the reference for >= 95 % of heads, found in the same run.

JSON (``benchmarks/results/<model>_<YYYYmmdd-HHMMSS>.json``, written atomically): ``model``,
``threads``, ``per_pass.{ours,baseline,baseline_equal_threads}.{img_per_s,threads}``,
``per_pass.equal_threads.<t>.{ours_img_per_s,baseline_img_per_s,speedup}``,
``per_pass.{flop_limit,roofline_limit}.img_per_s``, ``fraction_of_flop_limit``,
``fraction_of_roofline``, ``roofline`` (FLOPs and bytes per image, peaks, bound),
``time_to_precision.{tol,ours_s,ours_n,coverage,baseline_s,baseline_n,speedup,...}`` (``null``
when off), plus the older ``table``/``rounds_raw``/``flops``/``chunk_plan``.

Usage::

    .venv/bin/python benchmarks/bench_iav.py                      # tiny-dino, 32 images, n=25, tol 0.005
    .venv/bin/python benchmarks/bench_iav.py --quick              # smoke run (seconds): plumbing, not figures
    .venv/bin/python benchmarks/bench_iav.py --model vit-b16 --images 2 --n 4            # per pass only
    .venv/bin/python benchmarks/bench_iav.py --model vit-b16 --tol 0.005  # + time to precision (GPU / long run)
    .venv/bin/python benchmarks/bench_iav.py --sweep-chunks 16,32,64,128,256,512,all
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iavutils.core.attribution import patch_pool  # noqa: E402
from iavutils.core.chunking import auto_chunk_size  # noqa: E402
from iavutils.core.noise import noise_seeds  # noqa: E402
from iavutils.core.scores import iav  # noqa: E402
from iavutils.core.spec import AnalysisSpec  # noqa: E402
from iavutils.core.sweep import BF16_TOLERANCE  # noqa: E402
from iavutils.core.hooks import model_geometry, threads  # noqa: E402
from iavutils.core.scores import ia_score  # noqa: E402
from iavutils.world.store import atomic_write  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # time_to_precision.py, also when loaded by path
import time_to_precision as ttp  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------------------------
# models and images


def build(model_name: str, device: torch.device) -> tuple[nn.Module, str, Any]:
    """Returns ``(model, note, info)``; random weights unless a shipped preset has weights; ``info`` is ``None`` for vit-b16."""
    if model_name == "vit-b16":
        import timm

        m = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000)
        return m.eval().to(device), "timm vit_base_patch16_224, random weights, 224x224", None
    from iavutils.world.models import PRESETS, load_model

    if model_name not in PRESETS:
        raise SystemExit(f"unknown --model {model_name!r}: vit-b16 or one of {sorted(PRESETS)}")
    try:
        m, info = load_model(model_name, num_classes=10, device=device)
        note = f"{model_name}, shipped weights"
    except Exception as err:  # weights not built yet / not downloadable: same architecture
        m, info = load_model(model_name, num_classes=10, pretrained=False, device=device)
        note = f"{model_name}, random weights ({type(err).__name__})"
    return m.eval(), note, info


def images(model: nn.Module, count: int, device: torch.device, seed: int = 0) -> Tensor:
    """Uniform [0,1] images normalised with mean = std = 0.5 (value range is what σ uses)."""
    geo = model_geometry(model)
    g = torch.Generator().manual_seed(seed)
    x01 = torch.rand(count, 3, *geo.img_size, generator=g)
    return ((x01 - 0.5) / 0.5).to(device)


# --------------------------------------------------------------------------------------------
# the baseline a user would write


class Baseline:
    """captum NoiseTunnel(Saliency) + timm AttentionExtract (fused attention off).

    Built once (the fx trace is set-up, not per-image work); ``close()`` restores the flags.
    """

    def __init__(self, model: nn.Module) -> None:
        from captum.attr import NoiseTunnel, Saliency
        from timm.utils import AttentionExtract

        self.model = model
        self.geo = model_geometry(model)
        # AttentionExtract's fx trace bakes in the eager attention path, so switch fused off first
        self._saved = [(blk.attn, blk.attn.__dict__.get("fused_attn", None)) for blk in model.blocks]
        for blk in model.blocks:
            blk.attn.fused_attn = False
        try:
            self.extract = AttentionExtract(model, method="fx")
        finally:
            self._restore_flags()
        self.nt = NoiseTunnel(Saliency(model))

    def _restore_flags(self) -> None:
        for attn, val in self._saved:
            if val is None:
                attn.__dict__.pop("fused_attn", None)
            else:
                attn.fused_attn = val

    def __call__(self, x: Tensor, n: int, noise_level: float) -> Tensor:
        T = self.geo.num_prefix_tokens
        with torch.no_grad():
            maps = self.extract(x)  # {node: [B,H,N,N]}
            attn = torch.stack(list(maps.values()), dim=1)
            target = self.model(x).argmax(-1)
        cls = attn[:, :, :, 0, T:]
        sigma = noise_level * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
        maps_px = []
        for b in range(x.shape[0]):
            a = self.nt.attribute(
                x[b : b + 1], nt_type="smoothgrad", nt_samples=n, stdevs=float(sigma[b]), target=int(target[b])
            )
            maps_px.append(a.mean(dim=1))
        phi = patch_pool(torch.cat(maps_px), self.geo.grid)
        return ia_score(phi, cls)


@contextlib.contextmanager
def captum_same_noise(x: Tensor, n: int, noise_level: float, seeds: Tensor):
    """Make captum draw the engine's noise stream (for the equality check only)."""
    from captum.attr import NoiseTunnel

    orig = NoiseTunnel.__dict__["_add_noise_to_input"]
    sigma = noise_level * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    state = {"b": 0}

    def patched(inp: Tensor, stdev: float, parts: int) -> Tensor:
        b = state["b"]
        state["b"] += 1
        g = torch.Generator().manual_seed(int(seeds[b]))
        z = torch.stack([torch.randn(inp.shape[1:], generator=g) for _ in range(parts)]).to(inp.device)
        return inp.repeat_interleave(parts, dim=0) + sigma[b] * z

    NoiseTunnel._add_noise_to_input = staticmethod(patched)
    try:
        yield
    finally:
        NoiseTunnel._add_noise_to_input = orig


# --------------------------------------------------------------------------------------------
# limit


def flops_per_sample(model: nn.Module, device: torch.device) -> dict[str, int]:
    """FLOPs of one forward + backward-to-input (no weight grads), and of one clean forward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    geo = model_geometry(model)
    x = torch.zeros(1, 3, *geo.img_size, device=device, requires_grad=True)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        # math SDPA: the fused CPU kernels have no flop formula, the decomposed matmuls do
        with sdpa_kernel(SDPBackend.MATH):
            with FlopCounterMode(display=False) as fwd:
                out = model(x)
            with FlopCounterMode(display=False) as bwd:
                torch.autograd.grad(out[:, 0].sum(), x)
    finally:
        for p, f in flags:
            p.requires_grad_(f)
    return {"forward": int(fwd.get_total_flops()), "backward_input": int(bwd.get_total_flops())}


def matmul_flops_per_s(
    device: torch.device, dtype: torch.dtype, sizes=(1024, 2048), reps: int = 3, threads: tuple[int, ...] = ()
) -> float:
    """Best median GEMM throughput over a few square sizes and CPU thread counts (FLOP/s)."""
    if device.type == "cpu" and threads:
        saved = torch.get_num_threads()
        try:
            best = 0.0
            for t in threads:
                torch.set_num_threads(t)
                best = max(best, matmul_flops_per_s(device, dtype, sizes, reps))
            return best
        finally:
            torch.set_num_threads(saved)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        ts = []
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            ts.append(time.perf_counter() - t0)
        best = max(best, 2 * n**3 / statistics.median(ts))
    return best


def bytes_per_sample(model: nn.Module, device: torch.device, chunk: int) -> dict[str, float]:
    """Bytes one forward + backward-to-input moves per sample at batch ``chunk`` (module docstring's model)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    def size(ts: Any) -> int:
        seen, total = set(), 0
        for t in tree_leaves(ts):
            if isinstance(t, Tensor) and id(t) not in seen:
                seen.add(id(t))
                total += min(t.numel() * t.element_size(), t.untyped_storage().nbytes())
        return total

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            if not func.is_view:  # a view reads and writes nothing
                self.bytes += size((args, kwargs)) + size(out)
            return out

    geo = model_geometry(model)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    counts = {}
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for b in (1, 2):
            x = torch.zeros(b, 3, *geo.img_size, device=device, requires_grad=True)
            with Count() as c:
                out = model(x)
                torch.autograd.grad(out[:, 0].sum(), x)
            counts[b] = c.bytes
    finally:
        for p, f in flags:
            p.requires_grad_(f)
    per_sample = counts[2] - counts[1]
    fixed = max(0, counts[1] - per_sample)  # weights and other per-call traffic
    return {"per_sample_activations": per_sample, "per_call_fixed": fixed, "chunk": chunk,
            "per_sample_at_chunk": per_sample + fixed / max(1, chunk)}


def bandwidth_bytes_per_s(device: torch.device, mib: float = 256, reps: int = 5, threads: tuple[int, ...] = ()) -> float:
    """Best median memory bandwidth of a large copy (2 bytes moved per byte) and add (3) (bytes/s)."""
    if device.type == "cpu" and threads:
        saved = torch.get_num_threads()
        try:
            best = 0.0
            for t in threads:
                torch.set_num_threads(t)
                best = max(best, bandwidth_bytes_per_s(device, mib, reps))
            return best
        finally:
            torch.set_num_threads(saved)
    n = int(mib * 2**20) // 4
    a = torch.ones(n, device=device)
    b = torch.empty_like(a)
    c = torch.empty_like(a)
    best = 0.0
    for moved, op in ((2, lambda: b.copy_(a)), (3, lambda: torch.add(a, b, out=c))):
        op()  # first touch: page faults are not bandwidth
        ts = [timed(op, device) for _ in range(reps)]
        best = max(best, moved * a.nbytes / statistics.median(ts))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# memory


def _fixed_mmap_threshold() -> None:
    # glibc raises its mmap threshold after large frees and then keeps freed tensors in the heap,
    # so the RSS would not fall between runs; a fixed 128 KiB threshold returns every large tensor
    # to the OS on free and makes the sampled RSS peak a real per-run peak
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak extra memory of a block: CUDA allocator peak, or sampled process RSS on CPU.

    ``tracemalloc`` does not see torch's allocations, so on CPU a thread samples the RSS (psutil)
    every 2 ms and the peak minus the starting RSS is reported (with a fixed glibc mmap threshold
    so that freed tensors leave the RSS).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        self._proc = psutil.Process()
        self.start = self._proc.memory_info().rss
        self._top = self.start
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._top = max(self._top, self._proc.memory_info().rss)
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
            return
        self._stop.set()
        self._thread.join()
        self._top = max(self._top, self._proc.memory_info().rss)
        self.peak = self._top - self.start


# --------------------------------------------------------------------------------------------
# runs


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def mib(b: float) -> float:
    return b / 2**20


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-dino", help="tiny-dino (default) | vit-b16 | any preset")
    ap.add_argument("--images", type=int, default=None, help="images per run (tiny: 32, vit-b16: 2)")
    ap.add_argument("--n", type=int, default=None, help="SmoothGrad samples (tiny: 25, vit-b16: 4)")
    ap.add_argument("--noise-level", type=float, default=AnalysisSpec().noise_level)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (tiny: 5, vit-b16: 3)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--chunk-size", default="auto", help="'auto' or samples per gradient chunk")
    ap.add_argument("--memory-budget-mib", type=float, default=None)
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="auto: on for CUDA")
    ap.add_argument("--autocast", choices=("auto", "bf16", "off"), default="auto", help="auto: bf16 on CUDA")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for everything (default: torch's)")
    ap.add_argument("--ours-threads", default="auto", help="CPU threads for ours: N, or auto = faster of 1 and --threads (probed)")
    ap.add_argument("--equal-threads", default=None,
                    help="comma list of CPU thread counts at which ours and the baseline both run (default: 1 and the machine's threads)")
    ap.add_argument("--bandwidth-mib", type=float, default=None, help="buffer of the bandwidth copy/add in MiB (256, CUDA 1024; --quick 32)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--sweep-chunks", default=None, help="comma list of chunk sizes ('all' = B*n) to time")
    ap.add_argument("--quick", action="store_true",
                    help="smoke setting: 4 images, n=4, 1 round, small GEMMs; time to precision at tol 0.05 against an n=64 "
                         "reference, grid 8,16,32, 4 images (checks the plumbing; the figures mean nothing)")
    ap.add_argument("--out", default=None, help="JSON path (default <results-dir>/<model>_<time>.json)")
    ap.add_argument("--results-dir", default=None, help="folder of the JSON (default benchmarks/results)")
    ttp.add_arguments(ap)
    args = ap.parse_args(argv)
    big = args.model == "vit-b16" or not args.model.startswith("tiny")
    args.big = big
    ttp.resolve_arguments(args, ap)
    if args.equal_threads:
        try:
            args.equal_threads = sorted(set(_ints(args.equal_threads)))
        except ValueError:
            ap.error(f"--equal-threads: expected a comma list of integers, got {args.equal_threads!r}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    big, quick = args.big, args.quick
    B = args.images or (4 if quick else 2 if big else 32)
    n = args.n or (4 if quick or big else 25)
    rounds = args.rounds or (1 if quick else 3 if big else 5)
    use_compile = {"auto": device.type == "cuda", "on": True, "off": False}[args.compile]
    ac = {"auto": torch.bfloat16 if device.type == "cuda" else None, "bf16": torch.bfloat16, "off": None}[args.autocast]
    chunk = args.chunk_size if args.chunk_size == "auto" else int(args.chunk_size)
    budget = int(args.memory_budget_mib * 2**20) if args.memory_budget_mib else None
    gemm_sizes = (256, 512) if quick else (1024, 2048)
    bw_mib = args.bandwidth_mib or (32 if quick else 1024 if device.type == "cuda" else 256)  # ≫ the caches

    _fixed_mmap_threshold()
    model, note, info = build(args.model, device)
    x = images(model, B, device)
    geo = model_geometry(model)
    print(f"model: {note}; device: {device}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    print(f"IAV of {B} images, n={n}, noise_level={args.noise_level}, L×H = {geo.num_layers}×{geo.num_heads}")

    default_threads = torch.get_num_threads()
    ours_threads: int | None = None

    def ours(gen_seed: int = 0, chunk_size: Any = chunk, autocast: Any = ac, comp: bool = use_compile,
             nthreads: int | None = None) -> Tensor:
        return iav(
            model, x, None, n, args.noise_level, torch.Generator().manual_seed(gen_seed),
            chunk_size=chunk_size, memory_budget=budget, autocast=autocast, compile=comp,
            num_threads=nthreads or ours_threads,
        )

    plan = auto_chunk_size(model, (3, *geo.img_size), B * n, device, budget, ac) if chunk == "auto" else None
    report: dict[str, Any] = {
        "model": args.model, "note": note, "device": str(device), "device_name": _device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "images": B, "n": n,
        "noise_level": args.noise_level, "rounds": rounds, "compile": use_compile, "quick": quick,
        "autocast": str(ac) if ac else None, "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
    }
    if plan is not None:
        report["chunk_plan"] = {
            "chunk_size": plan.chunk_size, "sizes": list(plan.sizes), "saved_bytes_per_sample": plan.bytes_per_sample,
            "memory_budget": plan.memory_budget, "peak_bound_bytes": plan.peak_bytes_bound,
        }
        print(f"chunk: {plan.chunk_size} samples ({list(plan.sizes)}); autograd-saved {mib(plan.bytes_per_sample):.2f} MiB/sample; "
              f"bound chunk×saved = {mib(plan.peak_bytes_bound):.0f} MiB (budget {mib(plan.memory_budget):.0f} MiB)")

    # ---- equality check on the same noise (fp32, eager) ----
    t0 = time.perf_counter()
    ref32 = ours(0, autocast=None, comp=False)
    base = None
    if not args.skip_baseline:
        base = Baseline(model)
        seeds = noise_seeds(B, torch.Generator().manual_seed(0))
        with captum_same_noise(x, n, args.noise_level, seeds):
            b_scores = base(x, n, args.noise_level)
        diff = float((b_scores - ref32).abs().nan_to_num(0).max())
        ok = diff < 1e-4
        report["equality"] = {"max_abs_diff": diff, "tolerance": 1e-4, "ok": ok}
        print(f"equality check (same noise): max |IA ours − IA baseline| = {diff:.2e} -> {'OK' if ok else 'FAIL'}")
    if ac is not None or use_compile:
        fast = ours(0)  # warm-up incl. compilation
        dev = float((fast.float() - ref32).abs().nan_to_num(0).max())
        report["fast_settings_deviation"] = {"max_abs_diff": dev, "tolerance": BF16_TOLERANCE, "ok": dev <= BF16_TOLERANCE}
        print(f"best settings vs fp32: max |ΔIA| = {dev:.2e} (tolerance {BF16_TOLERANCE})")
    print(f"(checks took {time.perf_counter() - t0:.1f} s)")

    # ---- CPU threads for ours: on a shared, oversubscribed CPU one thread can beat two ----
    if device.type == "cpu":
        if args.ours_threads == "auto" and default_threads > 1:
            probe_x = x[:1] if big else x[: max(1, min(B, 4))]
            n_probe = min(n, 2) if big else n
            probe: dict[int, list[float]] = {1: [], default_threads: []}
            for _ in range(2 if big else 3):
                for th in probe:
                    probe[th].append(timed(lambda: iav(
                        model, probe_x, None, n_probe, args.noise_level, torch.Generator().manual_seed(0),
                        chunk_size=chunk, memory_budget=budget, num_threads=th), device))
            ours_threads = min(probe, key=lambda t: statistics.median(probe[t]))
            print("thread probe (s per call): " + ", ".join(f"{t}: {statistics.median(v):.2f}" for t, v in probe.items())
                  + f" -> ours uses {ours_threads}")
        elif args.ours_threads != "auto":
            ours_threads = int(args.ours_threads)
    ours_thr = ours_threads or default_threads
    # equal threads: CPU thread counts at which both run; a GPU's speed does not depend on them
    eq = (args.equal_threads or sorted({1, default_threads})) if device.type == "cpu" else [default_threads]
    report["threads_ours"] = ours_thr
    report["threads_baseline"] = default_threads
    report["threads_equal"] = eq

    # ---- limits: FLOPs at the GEMM peak, bytes at the memory bandwidth ----
    fl = flops_per_sample(model, device)
    per_image = n * (fl["forward"] + fl["backward_input"])
    report["flops"] = {**fl, "per_image_limit": per_image, "clean_forward_not_counted": fl["forward"]}
    chunk_c = min(plan.chunk_size if plan is not None else int(chunk), B * n)
    by = bytes_per_sample(model, device, chunk_c)
    bytes_img = n * by["per_sample_at_chunk"]
    mm_dtype = torch.bfloat16 if ac is not None else torch.float32
    print(f"FLOPs/sample: forward {fl['forward']/1e9:.3f} G + backward-to-input {fl['backward_input']/1e9:.3f} G; "
          f"per image ×n = {per_image/1e9:.2f} GFLOP; bytes/sample at chunk {chunk_c}: {mib(by['per_sample_at_chunk']):.2f} MiB "
          f"(per image {mib(bytes_img):.1f} MiB, {per_image / bytes_img:.1f} FLOP/byte)")

    # ---- interleaved timing rounds ----
    ours_set = sorted({ours_thr, *eq})
    base_set = sorted({default_threads, ours_thr, *eq}) if base is not None else []
    rows: dict[str, list[float]] = {k: [] for k in (
        "ours", "baseline", "baseline_same_threads", "speedup_same_threads", "matmul", "bandwidth", "fraction",
        "fraction_roofline", "speedup")}
    eq_rows = {t: {"ours": [], "baseline": [], "speedup": []} for t in eq}
    mem: dict[str, int] = {}
    mm_threads = tuple(sorted({1, default_threads})) if device.type == "cpu" else ()
    for r in range(rounds):
        peak = matmul_flops_per_s(device, mm_dtype, sizes=gemm_sizes, threads=mm_threads)
        bw = bandwidth_bytes_per_s(device, bw_mib, threads=mm_threads)
        rows["matmul"].append(peak)
        rows["bandwidth"].append(bw)
        t_o: dict[int, float] = {}
        t_b: dict[int, float] = {}
        for t in ours_set:
            with PeakMemory(device) as pm:
                t_o[t] = timed(lambda: ours(r + 1, nthreads=t), device)
            if t == ours_thr:
                mem["ours"] = max(mem.get("ours", 0), pm.peak)
        for t in base_set:
            with threads(t), PeakMemory(device) as pm:
                t_b[t] = timed(lambda: base(x, n, args.noise_level), device)
            if t == default_threads:
                mem["baseline"] = max(mem.get("baseline", 0), pm.peak)
        ips = B / t_o[ours_thr]
        rows["ours"].append(ips)
        rows["fraction"].append(ips / (peak / per_image))
        rows["fraction_roofline"].append(ips / min(peak / per_image, bw / bytes_img))
        line = f"round {r+1}/{rounds}: matmul {peak/1e9:.1f} GFLOP/s, bandwidth {bw/1e9:.1f} GB/s, ours {ips:.2f} img/s"
        if base is not None:
            rows["baseline"].append(B / t_b[default_threads])
            rows["speedup"].append(t_b[default_threads] / t_o[ours_thr])
            rows["baseline_same_threads"].append(B / t_b[ours_thr])
            rows["speedup_same_threads"].append(t_b[ours_thr] / t_o[ours_thr])
            line += f", baseline {B/t_b[default_threads]:.2f} img/s"
            for t in eq:
                eq_rows[t]["ours"].append(B / t_o[t])
                eq_rows[t]["baseline"].append(B / t_b[t])
                eq_rows[t]["speedup"].append(t_b[t] / t_o[t])
            line += "; equal threads " + ", ".join(f"{t}: ours {B/t_o[t]:.2f} / base {B/t_b[t]:.2f}" for t in eq)
        print(line, flush=True)

    med = {k: statistics.median(v) for k, v in rows.items() if v}
    limit_ips = med["matmul"] / per_image
    bw_ips = med["bandwidth"] / bytes_img
    roof_ips = min(limit_ips, bw_ips)
    table = [
        ("ours", med["ours"], med.get("speedup"), med["fraction"], mem.get("ours")),
    ]
    if "baseline" in med:
        table.append(("baseline", med["baseline"], 1.0, med["baseline"] / limit_ips, mem.get("baseline")))
    if "baseline_same_threads" in med and ours_thr != default_threads:
        table.append((f"base@{ours_thr}thr", med["baseline_same_threads"], med["baseline_same_threads"] / med["baseline"],
                      med["baseline_same_threads"] / limit_ips, None))
    table.append(("limit", limit_ips, limit_ips / med["baseline"] if "baseline" in med else None, 1.0, None))
    table.append(("roofline", roof_ips, roof_ips / med["baseline"] if "baseline" in med else None, roof_ips / limit_ips, None))
    print()
    print(f"{'row':<10}{'img/s':>10}{'ms/img':>10}{'× baseline':>12}{'of limit':>10}{'peak MiB':>10}")
    for name, ips, speed, frac, pk in table:
        print(f"{name:<10}{ips:>10.2f}{1000/ips:>10.1f}{(f'{speed:.2f}' if speed else '-'):>12}{frac*100:>9.1f}%"
              f"{(f'{mib(pk):.0f}' if pk is not None else '-'):>10}")
    print(f"(medians of {rounds} interleaved rounds, speed-up and fractions = medians of per-round ratios; matmul peak {med['matmul']/1e9:.1f} GFLOP/s {mm_dtype} "
          f"(best of threads {list(mm_threads) or '-'}); limit = n·(fwd+bwd-to-input) FLOPs / matmul peak; "
          f"threads: ours {ours_thr}, baseline {default_threads})")
    bound = "memory" if bw_ips < limit_ips else "compute"
    print(f"roofline: bandwidth {med['bandwidth']/1e9:.1f} GB/s -> {bw_ips:.2f} img/s, FLOP limit {limit_ips:.2f} img/s -> "
          f"{bound}-bound; ours = {med['fraction']:.1%} of the FLOP limit, {med['fraction_roofline']:.1%} of the roofline")
    eq_med = {t: {k: statistics.median(v) for k, v in d.items()} for t, d in eq_rows.items() if d["ours"]}
    if eq_med:
        print(f"{'equal threads':<16}{'ours img/s':>12}{'base img/s':>12}{'ours × base':>13}")
        for t, d in eq_med.items():
            print(f"{f'both at {t}':<16}{d['ours']:>12.2f}{d['baseline']:>12.2f}{d['speedup']:>13.2f}")
    report["rounds_raw"] = {**rows, "equal_threads": {str(t): d for t, d in eq_rows.items()}}
    report["table"] = [
        {"row": nme, "images_per_s": ips, "speedup_vs_baseline": sp, "fraction_of_limit": fr, "peak_bytes": pk}
        for nme, ips, sp, fr, pk in table
    ]
    report["per_pass"] = {
        "ours": {"img_per_s": med["ours"], "threads": ours_thr, "peak_bytes": mem.get("ours")},
        "baseline": {"img_per_s": med.get("baseline"), "threads": default_threads, "peak_bytes": mem.get("baseline"),
                     "speedup_of_ours": med.get("speedup")},
        "baseline_equal_threads": {"img_per_s": med.get("baseline_same_threads"), "threads": ours_thr,
                                   "speedup_of_ours": med.get("speedup_same_threads")},
        "equal_threads": {str(t): {"ours_img_per_s": d["ours"], "baseline_img_per_s": d["baseline"],
                                   "speedup": d["speedup"]} for t, d in eq_med.items()},
        "flop_limit": {"img_per_s": limit_ips},
        "roofline_limit": {"img_per_s": roof_ips, "bound": bound},
    }
    report["fraction_of_flop_limit"] = med["fraction"]
    report["fraction_of_roofline"] = med["fraction_roofline"]
    report["roofline"] = {
        "flops_per_image": per_image, "bytes_per_image": bytes_img, "bytes_model": by,
        "arithmetic_intensity": per_image / bytes_img, "matmul_flops_per_s": med["matmul"],
        "bandwidth_bytes_per_s": med["bandwidth"], "bandwidth_buffer_mib": bw_mib,
        "ridge_point": med["matmul"] / med["bandwidth"], "flop_limit_img_per_s": limit_ips,
        "bandwidth_limit_img_per_s": bw_ips, "bound": bound,
    }

    # ---- optional chunk sweep ----
    if args.sweep_chunks:
        sweep = {}
        for tok in args.sweep_chunks.split(","):
            cs = B * n if tok == "all" else int(tok)
            ts = [timed(lambda: ours(9, chunk_size=cs), device) for _ in range(max(2, rounds))]
            sweep[tok] = B / statistics.median(ts)
            print(f"chunk {tok:>5}: {sweep[tok]:.2f} img/s", flush=True)
        report["chunk_sweep"] = sweep

    # ---- time to precision ----
    ttp_threads = (ours_thr if args.ttp_threads == "auto" else int(args.ttp_threads)) if device.type == "cpu" else None
    report["time_to_precision"] = ttp.run(args, model, base, lambda k: images(model, k, device), ttp_threads,
                                          info=info, chunk_size=chunk, memory_budget=budget)

    folder = Path(args.results_dir) if args.results_dir else RESULTS
    out = Path(args.out) if args.out else folder / f"{args.model}_{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write(out, json.dumps(report, indent=2, default=str))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ×{os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or "cpu"


if __name__ == "__main__":
    main()
