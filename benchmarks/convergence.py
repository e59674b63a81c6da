"""How many SmoothGrad samples does an IAV need? Convergence of global-IAV and IA-Scores with n.

For plain Gaussian noise (the default stream), antithetic pairs (±ε) and quasi-random normals
(scrambled Sobol → Φ⁻¹), the IA-Scores of ``--images`` images are computed at n = 1, 2, 4, …,
``--n-max`` (nested prefixes of one run per repetition: a prefix of each stream is a valid sample
of that mode) and compared with an independent plain-Gaussian reference at ``--ref-n`` (400).

Reported per mode and n (mean over ``--reps`` repetitions with different seeds):

* ``global``: max over heads of |global-IAV(n) − global-IAV(ref)| (global-IAV = mean over images);
* ``image``: mean over images and heads of |IA(n) − IA(ref)|.

"n needed" is the first n whose mean ``global`` error is ≤ ``--tol`` (0.005) and stays there,
and ``n*`` from a log-log fit of the error over n ≥ 16 (see ``fit_n_needed``).

Usage::

    .venv/bin/python benchmarks/convergence.py                  # tiny-sup, 64 images (~6 min here)
    .venv/bin/python benchmarks/convergence.py --model tiny-mim --images 128 --n-max 128
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iavutils.core.attribution import smoothgrad_passes  # noqa: E402
from iavutils.core.noise import NOISE_MODES, noise_seeds  # noqa: E402
from iavutils.core.scores import clean_cls_attention  # noqa: E402
from iavutils.core.spec import AnalysisSpec  # noqa: E402
from iavutils.core.scores import ia_score  # noqa: E402
from iavutils.world.store import atomic_write  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def load(model_name: str, count: int, split: str) -> tuple[torch.nn.Module, torch.Tensor, str]:
    """Tiny preset (shipped weights if present) and the first ``count`` embedded images."""
    from iavutils.world.data import get_dataset
    from iavutils.world.models import load_model

    # keep the preset's own head where it has one (supervised presets: meaningful predicted
    # classes); a headless preset gets a seeded random 10-class head, said so in the note
    torch.manual_seed(0)
    try:
        try:
            model, info = load_model(model_name)
            note = f"{model_name}, shipped weights"
        except ValueError:  # a preset without a pretrained head asks for an explicit num_classes
            torch.manual_seed(0)
            model, info = load_model(model_name, num_classes=10)
            note = f"{model_name}, shipped weights + seeded random 10-class head (preset has no head)"
    except Exception as err:
        torch.manual_seed(0)
        model, info = load_model(model_name, num_classes=10, pretrained=False)
        note = f"{model_name}, random weights ({type(err).__name__}: no shipped weights yet)"
    ds = get_dataset("embedded", split=split, info=info)
    x = torch.stack([ds[i][0] for i in range(min(count, len(ds)))])
    return model.eval(), x, note


def fit_n_needed(ns: list[int], errs: list[float], tol: float) -> tuple[float | None, float | None]:
    """``(n*, slope)`` from a power-law fit ``log err = α + β log n`` over the given points.

    The global-IAV error is not ``∝ 1/√n``: a noisy attribution lowers every cosine on average
    (a bias ``∝ 1/n``) and the image average shrinks the random part, so the measured slope is
    close to −1. A log-log fit over the larger n interpolates/extrapolates to ``err = tol``.
    """
    pts = [(math.log(n), math.log(e)) for n, e in zip(ns, errs) if e > 0]
    if len(pts) < 2:
        return None, None
    A = torch.tensor([[1.0, x] for x, _ in pts], dtype=torch.float64)
    y = torch.tensor([[v] for _, v in pts], dtype=torch.float64)
    alpha, beta = (float(v) for v in torch.linalg.lstsq(A, y).solution[:, 0])
    if beta >= 0:
        return None, beta
    return math.exp((math.log(tol) - alpha) / beta), beta


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-sup", help="a tiny preset (default tiny-sup: it has a trained head)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--split", default="val")
    ap.add_argument("--n-max", type=int, default=64)
    ap.add_argument("--ref-n", type=int, default=400)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--noise-level", type=float, default=AnalysisSpec().noise_level)
    ap.add_argument("--tol", type=float, default=0.005)
    ap.add_argument("--modes", default=",".join(NOISE_MODES))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    model, x, note = load(args.model, args.images, args.split)
    B = x.shape[0]
    print(f"model: {note}; {B} embedded/{args.split} images; noise_level={args.noise_level}; reference: plain n={args.ref_n}")
    logits, rows = clean_cls_attention(model, x)
    target = logits.argmax(-1)

    ref_patches = smoothgrad_passes(
        model, x, target, args.ref_n, args.noise_level, seeds=noise_seeds(B, torch.Generator().manual_seed(999_999)),
    )["patches"]
    ref = ia_score(ref_patches, rows)  # [B,L,H]
    ref_global = ref.nanmean(0)

    checkpoints = sorted({1, 2, 4, 8, 16, 25, 32, 64, 128, 256, args.n_max} & set(range(1, args.n_max + 1)))
    modes = [m for m in args.modes.split(",") if m]
    curves: dict[str, dict[int, dict[str, list[float]]]] = {m: {n: {"global": [], "image": []} for n in checkpoints} for m in modes}
    for rep in range(args.reps):
        # the same seeds for every mode (common random numbers make the modes comparable)
        seeds = noise_seeds(B, torch.Generator().manual_seed(1000 + rep))
        for mode in modes:
            out = smoothgrad_passes(
                model, x, target, args.n_max, args.noise_level, seeds=seeds, noise=mode, checkpoints=checkpoints,
            )
            for n, patches in out["checkpoints"].items():
                s = ia_score(patches, rows)
                curves[mode][n]["global"].append(float((s.nanmean(0) - ref_global).abs().max()))
                curves[mode][n]["image"].append(float((s - ref).abs().nanmean()))
        print(f"repetition {rep + 1}/{args.reps} done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    mean = {m: {n: {k: sum(v) / len(v) for k, v in d.items()} for n, d in c.items()} for m, c in curves.items()}
    print()
    print("max over heads |global-IAV(n) − ref|   /   mean |IA(n) − ref| per image and head")
    print(f"{'n':>5}" + "".join(f"{m + ' global':>20}{m + ' image':>18}" for m in modes))
    for n in checkpoints:
        print(f"{n:>5}" + "".join(f"{mean[m][n]['global']:>20.4f}{mean[m][n]['image']:>18.4f}" for m in modes))

    summary: dict[str, Any] = {}
    for m in modes:
        errs = [mean[m][n]["global"] for n in checkpoints]
        first = next((n for i, n in enumerate(checkpoints) if all(e <= args.tol for e in errs[i:])), None)
        fit_ns = [n for n in checkpoints if n >= 16] or checkpoints[-2:]
        fitted, slope = fit_n_needed(fit_ns, [mean[m][n]["global"] for n in fit_ns], args.tol)
        summary[m] = {"first_n_within_tol": first, "fitted_n_needed": fitted, "loglog_slope": slope,
                      "global_err_at_25": mean[m].get(25, {}).get("global"), "image_err_at_25": mean[m].get(25, {}).get("image")}
    # the reference's own noise: the plain error at n extrapolated to 400 via 1/sqrt(n)
    if "gaussian" in mean and args.n_max in mean["gaussian"]:
        summary["reference_noise_estimate"] = mean["gaussian"][args.n_max]["global"] * math.sqrt(args.n_max / args.ref_n)
    print()
    print(f"n needed for global-IAV within {args.tol} (max abs over heads):")
    for m in modes:
        s = summary[m]
        fitted = s["fitted_n_needed"]
        ftxt = "-" if fitted is None else f"{fitted:.0f} (log-log slope {s['loglog_slope']:.2f})"
        print(f"  {m:<11} first n on the grid: {s['first_n_within_tol'] or f'> {args.n_max}'}   fitted n*: {ftxt}")
    finite = {m: summary[m]["fitted_n_needed"] for m in modes if summary[m]["fitted_n_needed"] is not None}
    if finite:
        best = min(finite, key=finite.get)
        n_rec = max(8, int(math.ceil(finite[best] / 8.0) * 8))
        if best != "gaussian" and finite.get("gaussian", math.inf) <= 1.15 * finite[best]:
            best = "gaussian"  # variance reduction not worth a non-default stream
            n_rec = max(8, int(math.ceil(finite[best] / 8.0) * 8))
        summary["recommendation"] = {"noise": best, "n_samples": n_rec}
        print(f"recommended: noise={best!r}, n_samples={n_rec} (smallest n* rounded up to a multiple of 8)")
    print(f"(took {time.perf_counter() - t_start:.0f} s)")

    report = {"model": args.model, "note": note, "images": B, "split": args.split, "noise_level": args.noise_level,
              "ref_n": args.ref_n, "reps": args.reps, "tol": args.tol, "checkpoints": checkpoints,
              "curves": {m: {str(n): d for n, d in c.items()} for m, c in curves.items()}, "summary": summary,
              "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    out = Path(args.out) if args.out else RESULTS / f"convergence_{args.model}_{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write(out, json.dumps(report, indent=2, default=str))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
