"""The precision mode: SmoothGrad in rounds until every head's global-IAV is within ``tol``.

The fixed-n mode spends ``n_samples`` noisy copies per image and says nothing about how good
the resulting global-IAV is. The precision mode turns that round: the caller states the
precision it needs and gets the ``n`` it took and the estimated error of every head.

* **Noise.** Antithetic pairs ``(ε_u, −ε_u)``: the noise study of ``benchmarks/README.md``
  (``convergence.py``) measured ≈ 48 samples per image for global-IAV within 0.005 with
  antithetic pairs, ≈ 52 with quasi-random and ≈ 126 with plain Gaussian noise. Antithetic
  pairs keep their gain under any split into rounds and replicate groups (a pair is
  self-contained), whereas a randomised Sobol sequence gains only over long runs of one
  randomisation, which replicate groups and rounds would cut short; pairs also need no
  scrambling per input shape. Pair ``u`` of an image is seeded by
  :func:`~iavutils.core.noise.pair_seed` ``(image seed, u)``, so a round continues each
  image's sequence and the result depends on neither batching nor the round schedule.
* **Estimator.** Pair ``u`` belongs to replicate group ``u mod R`` (``R = 8``), so the groups are
  independent and equally sized. The reported global-IAV is the plain one (each image's
  IA-Score from the mean of all its ``n`` samples, averaged over images), the same quantity the
  fixed-n mode gives. The delete-a-group jackknife recomputes it without each group
  (``θ₋ᵣ``) and gives the standard error ``SE = sqrt((R−1)/R · Σᵣ (θ₋ᵣ − θ̄)²)`` and the bias
  ``b = (R−1)(θ̄ − θ)``. The bias matters: noise in the attribution lowers the cosines on
  average by an amount ∝ 1/n (the README's note), and the jackknife estimates exactly a
  bias ∝ 1/n.
* **Stopping rule.** The error bound of a head is ``t · SE + |b|`` with ``t = 2.365``, the
  0.975 quantile of Student's t with ``R − 1 = 7`` degrees of freedom (95 % two-sided per head
  for the random part, the bias added at its estimate). The sweep stops when every head's
  bound is within ``tol``, or at ``max_samples`` with a warning. The next round aims at
  ``n · bound/tol`` (the error falls like 1/n), at least one pair per group more and at most
  double, so an error that falls more slowly costs one more round and never an overshoot.

No hooks here: the passes are the engine's
(:func:`~iavutils.core.attribution.smoothgrad_passes`); the clean CLS rows come from the caller.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .attribution import smoothgrad_passes
from .chunking import auto_chunk_size
from .noise import pair_seed
from .scores import global_iav, ia_score
from .spec import PRECISION_NOISE, PRECISION_REPLICATES

__all__ = ["T_QUANTILE", "check_precision", "jackknife_error", "precision_passes"]

#: 0.975 quantile of Student's t with ``PRECISION_REPLICATES - 1 = 7`` degrees of freedom.
T_QUANTILE = 2.3646

#: ``batches()`` yields ``(positions [G], x [G,C,H,W], image seeds [G])``, the same groups every call.
Batches = Callable[[], Iterable[tuple[Tensor, Tensor, Tensor]]]


def check_precision(tol: Any, max_samples: Any, replicates: int = PRECISION_REPLICATES) -> tuple[float, int]:
    """Validate the precision-mode knobs.

    Args:
        tol: Target precision of global-IAV, a number strictly between 0 and 1.
        max_samples: Cap on the noisy copies per image, an int ``>= 2 * replicates``.
        replicates: Jackknife groups.

    Returns:
        ``(tol, cap)``: ``tol`` as a float and the cap rounded down to a multiple of
        ``2 * replicates`` (the sweep grows ``n`` by whole pairs in every group).

    Raises:
        ValueError: A value that is not accepted, with what is.
    """
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 < float(tol) < 1:
        raise ValueError(f"tol={tol!r} is not valid: tol accepts a number strictly between 0 and 1 (e.g. 0.005); "
                         "IA-Scores lie in [0, 1]")
    step = 2 * replicates
    if isinstance(max_samples, bool) or not isinstance(max_samples, numbers.Integral) or max_samples < step:
        raise ValueError(f"max_samples={max_samples!r} is not valid: max_samples accepts an int >= {step} "
                         f"(one antithetic pair in each of the {replicates} jackknife groups)")
    return float(tol), int(max_samples) // step * step


def _cosines(dot: Tensor, norm2: Tensor, a_norm: Tensor) -> Tensor:
    """Cosines from ``dot [...,K]``, squared attribution norms ``[...]`` and attention norms; NaN for zero maps."""
    denom = norm2.clamp_min(0).sqrt()[..., None] * a_norm
    return torch.where(denom > 0, dot / denom.clamp_min(torch.finfo(denom.dtype).tiny), torch.nan)


def jackknife_error(patch_sums: Tensor, cls_attn: Tensor, t: float = T_QUANTILE) -> dict[str, Tensor]:
    """Delete-a-group jackknife of global-IAV over replicate groups of SmoothGrad samples.

    Args:
        patch_sums: ``[N,R,P]`` per image and group, the sum of the group's patch attributions.
        cls_attn: ``[N,L,H,P]`` CLS attention rows.
        t: Confidence factor on the standard error.

    Returns:
        ``global_iav``, ``se``, ``bias``, ``error`` (``t·se + |bias|``), each ``[L,H]``.
    """
    N, R, P = patch_sums.shape
    L, H = cls_attn.shape[1:3]
    S = patch_sums.double()
    A = cls_attn.double().reshape(N, L * H, P)
    D = torch.einsum("nrp,nkp->nrk", S, A)  # the cosines' numerators are linear in the sums
    G = torch.einsum("nrp,nqp->nrq", S, S)
    a_norm = A.norm(dim=-1)  # [N,K]
    dot, norm2 = D.sum(1), G.sum((1, 2))
    full = torch.nanmean(_cosines(dot, norm2, a_norm), dim=0)  # [K]
    # without group r: numerator minus its part; |S − S_r|² = |S|² − 2⟨S, S_r⟩ + |S_r|²
    loo_norm2 = norm2[:, None] - 2 * G.sum(2) + torch.diagonal(G, dim1=1, dim2=2)
    loo = torch.nanmean(_cosines(dot[:, None] - D, loo_norm2, a_norm[:, None]), dim=0)  # [R,K]
    mean = loo.mean(0)
    se = ((R - 1) / R * ((loo - mean) ** 2).sum(0)).sqrt()
    bias = (R - 1) * (mean - full)
    out = {"global_iav": full, "se": se, "bias": bias, "error": t * se + bias.abs()}
    return {k: v.reshape(L, H).float() for k, v in out.items()}


def precision_passes(
    model: nn.Module,
    batches: Batches,
    cls_attn: Tensor,
    targets: Tensor,
    *,
    tol: float,
    max_samples: int,
    noise_level: float,
    replicates: int = PRECISION_REPLICATES,
    chunk_size: int | str | None = "auto",
    memory_budget: int | None = None,
    autocast: Any = None,
    compile: bool | str = False,
    grid: tuple[int, int],
    return_pixels: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """SmoothGrad of every image in rounds of antithetic pairs until global-IAV is within ``tol``.

    Every round runs the engine over all images (as ``batches()`` groups them) for the pairs
    it adds; image ``i``'s pair ``u`` is seeded by ``pair_seed(seeds[i], u)`` and goes to group
    ``u mod replicates`` (module docstring: estimator, stopping rule, confidence).

    Args:
        model: The ViT.
        batches: Called once per round; yields ``(positions [G], x [G,C,H,W], seeds [G])``:
            positions in ``0..N-1`` (the rows of ``cls_attn``), model-normalised images on the
            compute device, and each image's seed (``image_seed(seed, index)`` in the sweeps).
        cls_attn: ``[N,L,H,P]`` clean CLS attention rows (CPU).
        targets: ``[N]`` classes explained.
        tol: Target precision of every head's global-IAV.
        max_samples: Cap on the samples per image (:func:`check_precision`).
        noise_level: As :func:`~iavutils.core.attribution.smoothgrad_passes`.
        replicates: Jackknife groups (the cache key assumes ``PRECISION_REPLICATES``).
        chunk_size, memory_budget, autocast, compile: As
            :func:`~iavutils.core.attribution.smoothgrad_passes`.
        grid: The patch grid.
        return_pixels: Also return the ``[N,H,W]`` pixel attribution.
        progress: A bar over the images of each round.

    Returns:
        ``iav [N,L,H]``, ``patches [N,P]``, optionally ``pixels [N,H,W]``, ``n_used`` (int,
        samples per image), ``error``/``se``/``bias``/``global_iav`` ``[L,H]``, ``rounds`` and
        ``capped`` (whether ``max_samples`` stopped the sweep before ``tol`` was met).
    """
    tol, cap = check_precision(tol, max_samples, replicates)
    N, L, H, P = cls_attn.shape
    cls_attn = cls_attn.float().cpu()
    targets = torch.as_tensor(targets).long().cpu()
    sums = torch.zeros(N, replicates, P, dtype=torch.float64)
    pixels: Tensor | None = None
    step, n, goal, rounds = 2 * replicates, 0, 2 * replicates, 0
    max_slots: int | None = None
    while True:
        pairs = range(n // 2, goal // 2)
        bar = None
        if progress:
            from .progress import tqdm  # one progress helper: widgets, terminal, or the book runner

            bar = tqdm(total=N, desc=f"IAV to tol {tol:g}, n={goal}", unit="img", leave=False)
        try:
            for pos, x, seeds in batches():
                if max_slots is None:
                    # ~4 engine chunks per call, as the fixed-n sweep does; a slot is one pair
                    plan = auto_chunk_size(model, tuple(x.shape[1:]), None, x.device, memory_budget, autocast)
                    size = chunk_size if isinstance(chunk_size, int) else plan.chunk_size
                    max_slots = max(len(pairs), 2 * size)
                per_call = max(1, max_slots // len(pairs))
                for s in range(0, len(pos), per_call):
                    p_g, x_g, s_g = pos[s : s + per_call], x[s : s + per_call], seeds[s : s + per_call]
                    out = _pair_passes(model, x_g, targets[p_g], s_g, pairs, noise_level, grid, return_pixels,
                                       chunk_size=chunk_size, memory_budget=memory_budget, autocast=autocast,
                                       compile=compile)
                    groups = torch.tensor([u % replicates for u in pairs])
                    rows = (p_g[:, None] * replicates + groups[None]).reshape(-1)
                    sums.view(N * replicates, P).index_add_(0, rows, out["patches"].double())
                    if return_pixels:
                        if pixels is None:
                            pixels = torch.zeros(N, *out["pixels"].shape[1:], dtype=torch.float64)
                        pixels.index_add_(0, p_g, out["pixels"].double())
                if bar is not None:
                    bar.update(len(pos))
        finally:
            if bar is not None:
                bar.close()
        n, rounds = goal, rounds + 1
        est = jackknife_error(sums, cls_attn)
        # a head that is NaN for every image (all-zero maps) cannot improve with more samples
        worst = float(est["error"].nan_to_num(0.0).max())
        if worst <= tol:
            capped = False
            break
        if n >= cap:
            capped = True
            over = int((est["error"].nan_to_num(0.0) > tol).sum())
            warnings.warn(
                f"precision mode stopped at max_samples={n} samples per image before reaching tol={tol:g}: "
                f"{over} of {L * H} heads have an estimated global-IAV error above tol (largest {worst:.4g}); "
                f"raise max_samples or tol",
                RuntimeWarning,
                stacklevel=2,
            )
            break
        aim = math.ceil(n * worst / tol / step) * step  # error ∝ 1/n
        goal = min(max(aim, n + step), 2 * n, cap)
    patches = (sums.sum(1) / n).float()
    scores = ia_score(patches, cls_attn)
    out: dict[str, Any] = {
        "iav": scores, "patches": patches, "n_used": n, "error": est["error"], "se": est["se"],
        "bias": est["bias"], "global_iav": global_iav(scores), "rounds": rounds, "capped": capped,
    }
    if pixels is not None:
        out["pixels"] = (pixels / n).float()
    return out


def _pair_passes(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    seeds: Tensor,
    pairs: range,
    noise_level: float,
    grid: tuple[int, int],
    return_pixels: bool,
    **engine: Any,
) -> dict[str, Tensor]:
    """Per image and pair, the sum of the pair's two patch (and pixel) attributions.

    The engine sees one "image" per (image, pair), image-major, seeded with
    :func:`~iavutils.core.noise.pair_seed`; its antithetic stream with ``n_samples=2`` is
    exactly ``(ε_u, −ε_u)``. Returns ``patches [G·U,P]`` and ``pixels [G,H,W]`` (summed over
    the pairs), on the CPU.
    """
    U = len(pairs)
    xs = x.repeat_interleave(U, dim=0)
    slot_seeds = torch.tensor([pair_seed(int(s), u) for s in seeds.tolist() for u in pairs], dtype=torch.long)
    res = smoothgrad_passes(model, xs, targets.to(x.device).repeat_interleave(U), 2, noise_level, seeds=slot_seeds,
                            noise=PRECISION_NOISE, grid=grid, return_pixels=return_pixels, **engine)
    # the engine returns the mean of the pair; twice it is the pair's sum (exact in binary floats)
    out = {"patches": 2 * res["patches"].cpu()}
    if return_pixels:
        out["pixels"] = 2 * res["pixels"].cpu().view(x.shape[0], U, *res["pixels"].shape[1:]).sum(1)
    return out
