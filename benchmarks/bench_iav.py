"""Benchmark: full IAV (attention + SmoothGrad + IA-Scores), ours vs the obvious baseline vs the limit.

Rows:

* **ours** — ``iavutils.iav`` (:func:`iavutils.core.scores.iav`) at its best settings for the device (CPU: fp32, eager,
  automatic chunk; GPU: bf16 autocast + ``torch.compile``, with the bf16 deviation printed).
* **baseline** — what a user writes from the anchors: timm ``AttentionExtract`` (fx, fused
  attention switched off) for the maps, one plain forward for the predicted class, captum
  ``NoiseTunnel(Saliency)`` with its default batching (all ``n`` samples of an image in one batch;
  one call per image because captum takes one σ per input tensor and σ is per image).
* **limit** — FLOPs the method needs, ``n × (forward + backward to the input only)`` per image,
  counted with ``torch.utils.flop_counter.FlopCounterMode`` (SDPA in its math form so that the
  attention matmuls are counted), divided into the matmul throughput measured in the same run
  (best of square fp32 — or bf16 on GPU — GEMMs). The clean pass is not in the limit, so the
  fraction is conservative.

Before timing, ours and the baseline are run on the *same noise* (captum's noise source is
patched to the engine's stream for this check only) and their IA-Scores compared.

The machine is shared, so the three rows are measured in interleaved rounds (matmul, ours,
baseline) and medians are reported; the fraction of the limit is the median of per-round ratios.

Usage::

    .venv/bin/python benchmarks/bench_iav.py                      # tiny-dino, 32 images, n=25
    .venv/bin/python benchmarks/bench_iav.py --model vit-b16 --images 2 --n 4
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
from iavutils.core.hooks import model_geometry  # noqa: E402
from iavutils.core.scores import ia_score  # noqa: E402
from iavutils.world.store import atomic_write  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------------------------
# models and images


def build(model_name: str, device: torch.device) -> tuple[nn.Module, str]:
    """Returns ``(model, note)``; random weights unless a shipped preset has weights."""
    if model_name == "vit-b16":
        import timm

        m = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000)
        return m.eval().to(device), "timm vit_base_patch16_224, random weights, 224x224"
    from iavutils.world.models import PRESETS, load_model

    if model_name not in PRESETS:
        raise SystemExit(f"unknown --model {model_name!r}: vit-b16 or one of {sorted(PRESETS)}")
    try:
        m, _ = load_model(model_name, num_classes=10, device=device)
        note = f"{model_name}, shipped weights"
    except Exception as err:  # weights not built yet / not downloadable: same architecture
        m, _ = load_model(model_name, num_classes=10, pretrained=False, device=device)
        note = f"{model_name}, random weights ({type(err).__name__})"
    return m.eval(), note


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
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
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--sweep-chunks", default=None, help="comma list of chunk sizes ('all' = B*n) to time")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<model>_<time>.json)")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    big = args.model == "vit-b16" or not args.model.startswith("tiny")
    B = args.images or (2 if big else 32)
    n = args.n or (4 if big else 25)
    rounds = args.rounds or (3 if big else 5)
    use_compile = {"auto": device.type == "cuda", "on": True, "off": False}[args.compile]
    ac = {"auto": torch.bfloat16 if device.type == "cuda" else None, "bf16": torch.bfloat16, "off": None}[args.autocast]
    chunk = args.chunk_size if args.chunk_size == "auto" else int(args.chunk_size)
    budget = int(args.memory_budget_mib * 2**20) if args.memory_budget_mib else None

    _fixed_mmap_threshold()
    model, note = build(args.model, device)
    x = images(model, B, device)
    geo = model_geometry(model)
    print(f"model: {note}; device: {device}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    print(f"IAV of {B} images, n={n}, noise_level={args.noise_level}, L×H = {geo.num_layers}×{geo.num_heads}")

    default_threads = torch.get_num_threads()
    ours_threads: int | None = None

    def ours(gen_seed: int = 0, chunk_size: Any = chunk, autocast: Any = ac, comp: bool = use_compile) -> Tensor:
        return iav(
            model, x, None, n, args.noise_level, torch.Generator().manual_seed(gen_seed),
            chunk_size=chunk_size, memory_budget=budget, autocast=autocast, compile=comp, num_threads=ours_threads,
        )

    plan = auto_chunk_size(model, (3, *geo.img_size), B * n, device, budget, ac) if chunk == "auto" else None
    report: dict[str, Any] = {
        "model": args.model, "note": note, "device": str(device), "device_name": _device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "images": B, "n": n,
        "noise_level": args.noise_level, "rounds": rounds, "compile": use_compile,
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
    report["threads_ours"] = ours_threads or default_threads
    report["threads_baseline"] = default_threads

    # ---- limit ----
    fl = flops_per_sample(model, device)
    per_image = n * (fl["forward"] + fl["backward_input"])
    report["flops"] = {**fl, "per_image_limit": per_image, "clean_forward_not_counted": fl["forward"]}
    mm_dtype = torch.bfloat16 if ac is not None else torch.float32
    print(f"FLOPs/sample: forward {fl['forward']/1e9:.3f} G + backward-to-input {fl['backward_input']/1e9:.3f} G; "
          f"per image ×n = {per_image/1e9:.2f} GFLOP")

    # ---- interleaved timing rounds ----
    same_threads = ours_threads is not None and ours_threads != default_threads and base is not None
    rows: dict[str, list[float]] = {"ours": [], "baseline": [], "baseline_same_threads": [], "matmul": [], "fraction": [], "speedup": []}
    mem: dict[str, int] = {}
    mm_threads = tuple(sorted({1, default_threads})) if device.type == "cpu" else ()
    for r in range(rounds):
        peak = matmul_flops_per_s(device, mm_dtype, threads=mm_threads)
        rows["matmul"].append(peak)
        with PeakMemory(device) as pm:
            t_ours = timed(lambda: ours(r + 1), device)
        mem["ours"] = max(mem.get("ours", 0), pm.peak)
        rows["ours"].append(B / t_ours)
        limit_ips = peak / per_image
        rows["fraction"].append((B / t_ours) / limit_ips)
        line = f"round {r+1}/{rounds}: matmul {peak/1e9:.1f} GFLOP/s, ours {B/t_ours:.2f} img/s"
        if base is not None:
            with PeakMemory(device) as pm:
                t_base = timed(lambda: base(x, n, args.noise_level), device)
            mem["baseline"] = max(mem.get("baseline", 0), pm.peak)
            rows["baseline"].append(B / t_base)
            rows["speedup"].append(t_base / t_ours)
            line += f", baseline {B/t_base:.2f} img/s"
        if same_threads:
            torch.set_num_threads(ours_threads)
            try:
                t_bs = timed(lambda: base(x, n, args.noise_level), device)
            finally:
                torch.set_num_threads(default_threads)
            rows["baseline_same_threads"].append(B / t_bs)
            line += f", baseline@{ours_threads}thr {B/t_bs:.2f} img/s"
        print(line, flush=True)
    if base is not None:
        base._restore_flags()

    med = {k: statistics.median(v) for k, v in rows.items() if v}
    limit_ips = med["matmul"] / per_image
    table = [
        ("ours", med["ours"], med.get("speedup"), med["fraction"], mem.get("ours")),
    ]
    if "baseline" in med:
        table.append(("baseline", med["baseline"], 1.0, med["baseline"] / limit_ips, mem.get("baseline")))
    if "baseline_same_threads" in med:
        table.append((f"base@{ours_threads}thr", med["baseline_same_threads"], med["baseline_same_threads"] / med["baseline"],
                      med["baseline_same_threads"] / limit_ips, None))
    table.append(("limit", limit_ips, limit_ips / med["baseline"] if "baseline" in med else None, 1.0, None))
    print()
    print(f"{'row':<10}{'img/s':>10}{'ms/img':>10}{'× baseline':>12}{'of limit':>10}{'peak MiB':>10}")
    for name, ips, speed, frac, pk in table:
        print(f"{name:<10}{ips:>10.2f}{1000/ips:>10.1f}{(f'{speed:.2f}' if speed else '-'):>12}{frac*100:>9.1f}%"
              f"{(f'{mib(pk):.0f}' if pk is not None else '-'):>10}")
    print(f"(medians of {rounds} interleaved rounds, speed-up and fraction = medians of per-round ratios; matmul peak {med['matmul']/1e9:.1f} GFLOP/s {mm_dtype} "
          f"(best of threads {list(mm_threads) or '-'}); limit = n·(fwd+bwd-to-input) FLOPs / matmul peak; "
          f"threads: ours {ours_threads or default_threads}, baseline {default_threads})")
    if "baseline_same_threads" in med:
        print(f"ours vs the baseline at the same {ours_threads} thread(s): {med['ours'] / med['baseline_same_threads']:.2f}×")
    report["rounds_raw"] = rows
    report["table"] = [
        {"row": nme, "images_per_s": ips, "speedup_vs_baseline": sp, "fraction_of_limit": fr, "peak_bytes": pk}
        for nme, ips, sp, fr, pk in table
    ]

    # ---- optional chunk sweep ----
    if args.sweep_chunks:
        sweep = {}
        for tok in args.sweep_chunks.split(","):
            cs = B * n if tok == "all" else int(tok)
            ts = [timed(lambda: ours(9, chunk_size=cs), device) for _ in range(max(2, rounds))]
            sweep[tok] = B / statistics.median(ts)
            print(f"chunk {tok:>5}: {sweep[tok]:.2f} img/s", flush=True)
        report["chunk_sweep"] = sweep

    out = Path(args.out) if args.out else RESULTS / f"{args.model}_{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
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
