"""Time to precision: wall time until every head's global-IAV is within ``tol`` of a reference.

Imported by ``bench_iav.py`` (``--tol``); every figure below comes from one run, over the same
images and the same model:

* **reference** — global-IAV with plain Gaussian SmoothGrad at ``ref_n`` (400) samples per image,
  on its own seeds. Computed once; not timed against anything.
* **plain curve** — plain Gaussian global-IAV at every ``n`` of a grid (16 … 400), on seeds
  independent of the reference's, computed with the engine as nested prefixes of one run (a
  prefix of the Gaussian stream is the stream at that ``n``). The engine's Gaussian stream is
  the stream captum draws, to float precision (``bench_iav.py``'s equality check): the ``n``
  found here is a property of the estimator, not of the implementation. ``baseline_n`` is the
  smallest grid ``n`` whose coverage (below) is ``>= need`` (95 %). If no grid ``n`` reaches
  it, the largest is used, ``baseline_n_reached`` is false and the speed-up is a lower bound;
  if the grid's smallest ``n`` already reaches it, ``baseline_n_at_floor`` is true and the
  speed-up is an upper bound.
* **ours** — wall time of ``iav_dataset(..., tol=tol)`` (the precision mode: antithetic pairs
  in rounds, stopping on its own jackknife error estimate, no reference used), clean pass
  included; its ``n_used``, its estimated error, and its coverage.
* **baseline** — wall time of the baseline (captum ``NoiseTunnel(Saliency)`` + timm
  ``AttentionExtract``, ``bench_iav.Baseline``) at ``baseline_n``, clean passes included.

Coverage = fraction of heads with ``|global-IAV − reference| <= tol`` (heads that are NaN in
either are left out). The reference has its own error (plain noise at 400 samples, about a
third of the 0.005 at the ~126 samples the noise study found), so the coverage of both sides is
slightly pessimistic, equally.

Ours and the baseline run at the same thread count, in ``rounds`` interleaved rounds; the
reported times are medians and the speed-up is the median of per-round ratios. Everything runs
in fp32 eager mode on every device, the reference's precision: bf16's deviation (up to
``BF16_TOLERANCE = 0.02`` per score) is not small next to 0.005.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from iavutils.core.attribution import smoothgrad_passes
from iavutils.core.hooks import model_geometry, threads
from iavutils.core.noise import noise_seeds
from iavutils.core.precision import check_precision
from iavutils.core.scores import clean_cls_attention, global_iav, ia_score
from iavutils.core.sweep import iav_dataset

#: The ``n`` grid searched for the plain-Gaussian baseline. It starts low because a grid floor
#: above what plain noise needs would inflate the baseline's time (``baseline_n_at_floor`` says
#: when the floor was hit: the speed-up is then an upper bound).
GRID = (4, 8, 16, 25, 32, 48, 64, 96, 128, 192, 256, 400)
#: ``--quick``: a smoke run's grid (its reference has n=64).
QUICK_GRID = (8, 16, 32)
#: Seeds of the reference and of the plain curve: independent of each other and of ours
#: (``iav_dataset`` seeds image ``i`` with ``image_seed(0, i)``, then ``pair_seed``).
REFERENCE_SEED = 999_999
CURVE_SEED = 1_000


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Adds the time-to-precision options to ``bench_iav.py``'s parser."""
    g = ap.add_argument_group("time to precision (time_to_precision.py)")
    g.add_argument("--tol", default="auto",
                   help="global-IAV precision: a number, 'off', or auto = 0.005 for the tiny presets (--quick 0.05) and off for "
                        "vit-b16: ViT-B/16 at 224 needs an n=400 reference over 32 images, hours on a 2-core CPU, so "
                        "'--model vit-b16 --tol 0.005' is for a GPU or a long quiet run")
    g.add_argument("--ref-n", type=int, default=None, help="samples per image of the plain-Gaussian reference (400; --quick 64)")
    g.add_argument("--grid", default=None,
                   help="comma list of n tried for plain noise (4,8,16,25,32,48,64,96,128,192,256,400; --quick 8,16,32)")
    g.add_argument("--max-samples", type=int, default=None, help="the precision mode's cap on samples per image (400; --quick 64)")
    g.add_argument("--ttp-images", type=int, default=None, help="images (32; --quick 4)")
    g.add_argument("--ttp-data", choices=("random", "embedded"), default="random",
                   help="random: the per-pass images (uniform noise, the same seed, so the per-pass set comes first); "
                        "embedded: the first images of the embedded val split (tiny presets only), as convergence.py uses")
    g.add_argument("--ttp-rounds", type=int, default=None, help="interleaved timing rounds (tiny 3, vit-b16 and --quick 1)")
    g.add_argument("--ttp-threads", default="auto",
                   help="CPU threads for ours and the baseline alike: N, or auto = ours' per-pass threads")


def resolve_arguments(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    """Fills the defaults that depend on ``--model`` / ``--quick`` and validates; ``ap.error`` on a bad value."""
    if args.tol == "off":
        args.tol = None
    elif args.tol == "auto":
        args.tol = None if args.big else (0.05 if args.quick else 0.005)
    else:
        try:
            args.tol = float(args.tol)
        except ValueError:
            ap.error(f"--tol: expected a number, 'off' or 'auto', got {args.tol!r}")
    args.ref_n = args.ref_n or (64 if args.quick else 400)
    args.max_samples = args.max_samples or (64 if args.quick else 400)
    args.ttp_images = args.ttp_images or (4 if args.quick else 32)
    args.ttp_rounds = args.ttp_rounds or (1 if args.quick or args.big else 3)
    try:
        args.grid = [int(t) for t in args.grid.split(",") if t.strip()] if args.grid else list(
            QUICK_GRID if args.quick else GRID)
    except ValueError:
        ap.error(f"--grid: expected a comma list of integers, got {args.grid!r}")
    if not any(0 < n <= args.ref_n for n in args.grid):
        ap.error(f"--grid: no n in 1..--ref-n ({args.ref_n})")
    if args.ttp_data == "embedded" and args.big:
        ap.error("--ttp-data embedded: the embedded images are 32x32, for the tiny presets only")
    if args.ttp_threads != "auto" and not args.ttp_threads.isdigit():
        ap.error(f"--ttp-threads: expected a positive integer or auto, got {args.ttp_threads!r}")
    if args.tol is not None:
        try:
            check_precision(args.tol, args.max_samples)
        except ValueError as err:
            ap.error(str(err))


def run(
    args: argparse.Namespace, model: nn.Module, baseline: Callable[[Tensor, int, float], Tensor] | None,
    make_images: Callable[[int], Tensor], num_threads: int | None, info: Any = None, **engine: Any,
) -> dict[str, Any] | None:
    """The benchmark's time-to-precision step: ``measure`` + ``report``, or ``None`` when ``--tol`` is off.

    Args:
        args: ``bench_iav.py``'s parsed arguments (after :func:`resolve_arguments`).
        model: The ViT.
        baseline: ``bench_iav.Baseline`` or ``None``.
        make_images: ``count -> [count,3,H,W]`` the benchmark's random images on the device.
        num_threads: CPU threads for ours and the baseline alike.
        info: The preset's ``ModelInfo`` (resizing and normalisation of ``--ttp-data embedded``).
        **engine: ``chunk_size`` / ``memory_budget``.

    Returns:
        The JSON section, or ``None``.
    """
    if args.tol is None:
        if args.big:
            print("\ntime to precision: off for this model (pass --tol 0.005 on a GPU or for a long quiet run)")
        return None
    if args.ttp_data == "embedded":
        from iavutils.world.data import get_dataset

        ds = get_dataset("embedded", split="val", info=info)
        x = torch.stack([ds[i][0] for i in range(min(args.ttp_images, len(ds)))]).to(next(model.parameters()).device)
    else:
        x = make_images(args.ttp_images)
    print(f"\ntime to precision: tol {args.tol:g}, {x.shape[0]} {args.ttp_data} images, reference n={args.ref_n}, grid {args.grid}")
    section = measure(model, x, baseline, tol=args.tol, ref_n=args.ref_n, grid=args.grid, noise_level=args.noise_level,
                      max_samples=args.max_samples, num_threads=num_threads, rounds=args.ttp_rounds, **engine)
    section["data"] = args.ttp_data
    report(section)
    return section


def coverage(estimate: Tensor, reference: Tensor, tol: float) -> float:
    """Fraction of heads with ``|estimate − reference| <= tol``.

    Args:
        estimate: ``[L,H]`` global-IAV.
        reference: ``[L,H]`` global-IAV of the reference.
        tol: The precision asked for.

    Returns:
        The fraction over the heads finite in both (NaN when there are none).
    """
    d = (estimate.double() - reference.double()).abs()
    ok = d.isfinite()
    if not bool(ok.any()):
        return float("nan")
    return float((d[ok] <= tol).double().mean())


def plain_curve(
    model: nn.Module, x: Tensor, targets: Tensor, cls: Tensor, ns: Sequence[int], noise_level: float, seed: int,
    **engine: Any,
) -> dict[int, Tensor]:
    """Plain-Gaussian global-IAV at every ``n`` of ``ns``, from nested prefixes of one engine run.

    Args:
        model: The ViT.
        x: ``[B,3,H,W]`` images on the compute device.
        targets: ``[B]`` classes explained.
        cls: ``[B,L,H,P]`` clean CLS rows.
        ns: Sample counts.
        noise_level: SmoothGrad σ as a fraction of each image's value range.
        seed: Seeds the per-image noise seeds.
        **engine: ``chunk_size`` / ``memory_budget`` for the engine.

    Returns:
        ``{n: global-IAV [L,H]}``.
    """
    ns = sorted(set(int(n) for n in ns))
    out = smoothgrad_passes(
        model, x, targets, ns[-1], noise_level, seeds=noise_seeds(x.shape[0], torch.Generator().manual_seed(seed)),
        noise="gaussian", grid=model_geometry(model).grid, checkpoints=ns, **engine,
    )
    cls = cls.float().cpu()
    return {n: global_iav(ia_score(p.float().cpu(), cls)) for n, p in out["checkpoints"].items()}


def measure(
    model: nn.Module,
    x: Tensor,
    baseline: Callable[[Tensor, int, float], Tensor] | None,
    *,
    tol: float,
    ref_n: int = 400,
    grid: Sequence[int] = GRID,
    noise_level: float,
    max_samples: int = 400,
    num_threads: int | None = None,
    rounds: int = 1,
    need: float = 0.95,
    chunk_size: Any = "auto",
    memory_budget: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measures ours' and the baseline's time to global-IAV within ``tol`` (module docstring).

    Args:
        model: The ViT (on the compute device).
        x: ``[B,3,H,W]`` images on the compute device.
        baseline: ``baseline(x, n, noise_level)`` (``bench_iav.Baseline``), or ``None`` to time
            ours only.
        tol: The precision.
        ref_n: Samples per image of the reference.
        grid: Candidate ``n`` for the baseline; values above ``ref_n`` are dropped (an estimate
            cannot be checked against a less precise reference).
        noise_level: SmoothGrad σ as a fraction of each image's value range.
        max_samples: The precision mode's cap on samples per image.
        num_threads: CPU threads for everything here, ours and the baseline alike.
        rounds: Interleaved timing rounds (ours, baseline).
        need: Coverage the baseline's ``n`` must reach.
        chunk_size, memory_budget: Engine settings (ours and the curves).
        log: Where the progress lines go.

    Returns:
        The ``time_to_precision`` section of the benchmark's JSON (keys in ``bench_iav.py``'s
        docstring).
    """
    B = x.shape[0]
    engine = {"chunk_size": chunk_size, "memory_budget": memory_budget}
    grid = sorted({int(n) for n in grid if 0 < int(n) <= ref_n})
    if not grid:
        raise ValueError(f"no grid n within the reference's n={ref_n}")
    t_all = time.perf_counter()
    with threads(num_threads):
        logits, cls = clean_cls_attention(model, x)
        targets = logits.argmax(-1)
        t0 = time.perf_counter()
        ref = plain_curve(model, x, targets, cls, [ref_n], noise_level, REFERENCE_SEED, **engine)[ref_n]
        ref_s = time.perf_counter() - t0
        log(f"time to precision: reference (plain Gaussian, n={ref_n}, {B} images) took {ref_s:.1f} s")
        t0 = time.perf_counter()
        curve = plain_curve(model, x, targets, cls, grid, noise_level, CURVE_SEED, **engine)
        curve_s = time.perf_counter() - t0
    cov_curve = {n: coverage(curve[n], ref, tol) for n in grid}
    err_curve = {n: float((curve[n] - ref).abs().nan_to_num(0).max()) for n in grid}
    first = next((n for n in grid if cov_curve[n] >= need), None)
    base_n = first if first is not None else grid[-1]
    log("plain Gaussian coverage by n: " + ", ".join(f"{n}: {cov_curve[n]:.0%}" for n in grid)
        + f" -> baseline n = {base_n}" + ("" if first is not None else f" (not reached: needs > {grid[-1]})"))

    dataset = torch.utils.data.TensorDataset(x.detach().cpu())
    t_ours: list[float] = []
    t_base: list[float] = []
    res: dict[str, Any] | None = None
    capped = False
    for r in range(rounds):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            out = iav_dataset(model, dataset, tol=tol, max_samples=max_samples, noise_level=noise_level,
                              num_threads=num_threads, progress=False, device=x.device, **engine)
            _sync(x.device)
            t_ours.append(time.perf_counter() - t0)
        capped = capped or any("max_samples" in str(w.message) for w in caught)
        res = res or out  # the precision mode is deterministic: every round gives the same numbers
        line = f"time to precision round {r + 1}/{rounds}: ours {t_ours[-1]:.2f} s (n={int(out['n_used'])})"
        if baseline is not None:
            with threads(num_threads), torch.random.fork_rng():
                torch.manual_seed(r)
                t0 = time.perf_counter()
                baseline(x, base_n, noise_level)
                _sync(x.device)
                t_base.append(time.perf_counter() - t0)
            line += f", baseline {t_base[-1]:.2f} s (n={base_n})"
        log(line)
    assert res is not None
    ours_g = global_iav(res["iav"])
    actual = (ours_g.double() - ref.double()).abs()
    bound = res["error"].double()
    held = actual.isfinite() & bound.isfinite()
    section: dict[str, Any] = {
        "tol": tol,
        "threads": num_threads or torch.get_num_threads(),
        "images": B,
        "rounds": rounds,
        "reference_n": ref_n,
        "reference_s": ref_s,
        "ours_s": statistics.median(t_ours),
        "ours_s_rounds": t_ours,
        "ours_n": int(res["n_used"]),
        "ours_capped": capped,
        "ours_max_samples": max_samples,
        "ours_estimated_error_max": float(bound.nan_to_num(0).max()),
        "ours_actual_error_max": float(actual.nan_to_num(0).max()),
        "coverage": coverage(ours_g, ref, tol),
        "error_bound_holds_fraction": float((actual[held] <= bound[held]).double().mean()) if bool(held.any()) else None,
        "baseline_n": base_n,
        "baseline_n_reached": first is not None,
        "baseline_n_at_floor": base_n == grid[0],
        "baseline_coverage": cov_curve[base_n],
        "baseline_s": statistics.median(t_base) if t_base else None,
        "baseline_s_rounds": t_base,
        "speedup": statistics.median(b / o for b, o in zip(t_base, t_ours)) if t_base else None,
        "speedup_is_lower_bound": first is None,
        "speedup_is_upper_bound": base_n == grid[0],
        "need": need,
        "grid": grid,
        "plain_coverage_by_n": {str(n): c for n, c in cov_curve.items()},
        "plain_max_error_by_n": {str(n): e for n, e in err_curve.items()},
        "plain_curve_s": curve_s,
        "total_s": time.perf_counter() - t_all,
    }
    return section


def report(section: dict[str, Any], log: Callable[[str], None] = print) -> None:
    """Prints the time-to-precision table of one ``measure`` result."""
    s = section
    log("")
    log(f"time to global-IAV within {s['tol']:g} of a plain n={s['reference_n']} reference "
        f"({s['images']} images, {s['threads']} thread(s) for both, medians of {s['rounds']} round(s)):")
    log(f"{'row':<10}{'n':>8}{'seconds':>10}{'coverage':>10}{'× baseline':>12}")
    sp = s["speedup"]
    log(f"{'ours':<10}{s['ours_n']:>8}{s['ours_s']:>10.2f}{s['coverage']:>9.0%} "
        f"{(('≥' if s['speedup_is_lower_bound'] else '≤' if s['speedup_is_upper_bound'] else '') + f'{sp:.2f}') if sp else '-':>11}")
    if s["baseline_s"] is not None:
        n_txt = f"{'>' if not s['baseline_n_reached'] else '≤' if s['baseline_n_at_floor'] else ''}{s['baseline_n']}"
        log(f"{'baseline':<10}{n_txt:>8}{s['baseline_s']:>10.2f}{s['baseline_coverage']:>9.0%} {'1.00':>11}")
    held = s["error_bound_holds_fraction"]
    log(f"(ours' own error estimate: max {s['ours_estimated_error_max']:.4f}; actual max {s['ours_actual_error_max']:.4f}; "
        f"bound held for {'-' if held is None else f'{held:.0%}'} of heads"
        + ("; ours hit max_samples" if s["ours_capped"] else "") + ")")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
