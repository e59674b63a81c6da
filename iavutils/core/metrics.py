"""Pure metrics of explanation maps: perturbation curves, localization against masks, paired AUC tests.

Tensor code only, no checkpoints or run directories: chapter 08
(:mod:`iavutils.analysis.explanations`) and chapter 03's masking curves build on it.

Protocols (book/methods.md, "Evaluation protocols"):

- **Perturbation test** (Chefer et al., CVPR 2021): the top-k% pixels of a map (upsampled to
  the input size) are set to 0 in [0,1] pixel space, the image is re-normalised and top-1
  accuracy against the label is measured for k = 10…90. *Positive* removes the most relevant
  pixels first (lower AUC is better), *negative* the least relevant first (higher is better).
  AUC = trapezoid over the fractions (clean accuracy at 0) × 100, so it lies in [0, 90].
  Ties in a map are broken by a seeded random permutation, so an all-equal map *is* the random
  baseline (and patch maps upsampled with ``"nearest"`` mask random pixels inside a patch).
- **Patch masking** (the IAV paper's Fig. 5): the same curve with whole patches ranked by a
  patch score (``unit="patch"``), masking ratio 0.1…0.9 of the patches.
- **Localization**: upsample, min-max per image, threshold at the map mean → pixel accuracy and
  two-class (object/background) mIoU; average precision of the soft map; pointing game
  (argmax inside the mask, no tolerance radius: our images are small).

All functions are batched and deterministic given their seeds. Maps may be patch maps ``[B,P]``
(then the patch grid is needed: pass ``grid`` or the model) or pixel maps ``[B,H,W]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attribution import patch_pool
from .geometry import model_geometry
from .hooks import eval_mode
from .progress import tqdm  # one progress helper: widgets, terminal, or the book runner

__all__ = [
    "DEFAULT_FRACTIONS",
    "LOCALIZATION_METRICS",
    "PerturbationCurve",
    "average_precision",
    "localization_metrics",
    "paired_difference",
    "perturbation_auc",
    "perturbation_curve",
    "perturbation_fractions",
    "to_pixel_maps",
]

#: Fractions of pixels (or patches) removed; the clean accuracy at 0 is added by the curve.
DEFAULT_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def perturbation_fractions(steps: int = 9) -> tuple[float, ...]:
    """Removed fractions ``k/(steps+1)``, ``k = 1..steps``; ``steps=9`` is :data:`DEFAULT_FRACTIONS`.

    Each step costs one forward of every image per method and mode (the clean accuracy at 0 is
    added by the curve), so a quick run takes fewer steps.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"perturbation steps must be an integer >= 1, got {steps!r}")
    return tuple(k / (steps + 1) for k in range(1, steps + 1))

#: Per-image metrics returned by :func:`localization_metrics`.
LOCALIZATION_METRICS: tuple[str, ...] = ("pixel_accuracy", "miou", "ap", "pointing")


# --------------------------------------------------------------------------- maps and geometry


def _infer_grid(num_patches: int, size: tuple[int, int]) -> tuple[int, int]:
    """The patch grid with ``gh*gw = P`` and the aspect ratio of ``size`` (for pure callers)."""
    H, W = size
    gh = round(math.sqrt(num_patches * H / W))
    gw = num_patches // max(gh, 1)
    if gh * gw != num_patches or gh < 1:
        raise ValueError(f"cannot infer a patch grid for P={num_patches} and size {size}; pass grid=")
    return gh, gw


def to_pixel_maps(
    maps: Tensor,
    size: tuple[int, int],
    grid: tuple[int, int] | None = None,
    mode: str = "bilinear",
) -> Tensor:
    """Upsample patch maps ``[B,P]`` (or resize pixel maps ``[B,h,w]``) to ``[B,H,W]``.

    Args:
        maps: Patch maps ``[B,P]`` in row-major patch order, or pixel maps ``[B,h,w]``.
        size: Target ``(H, W)``.
        grid: Patch grid ``(gh, gw)`` of patch maps; ``None`` infers it from ``P`` and the
            aspect ratio of ``size`` (pass it explicitly for non-square grids).
        mode: ``"bilinear"`` (Chefer et al.'s choice) or ``"nearest"`` (patch-constant).

    Returns:
        Float maps ``[B,H,W]``.
    """
    maps = maps.detach().float()
    if maps.dim() == 2:
        gh, gw = grid if grid is not None else _infer_grid(maps.shape[1], size)
        if gh * gw != maps.shape[1]:
            raise ValueError(f"grid {(gh, gw)} does not match P={maps.shape[1]}")
        maps = maps.reshape(-1, gh, gw)
    elif maps.dim() != 3:
        raise ValueError(f"expected maps [B,P] or [B,H,W], got {tuple(maps.shape)}")
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode=mode, **kw).squeeze(1)


def _normalization(
    info: Any | None, mean: Sequence[float] | Tensor | None, std: Sequence[float] | Tensor | None, x: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-channel ``(mean, std)`` as ``[1,C,1,1]`` tensors on ``x``'s device."""
    if info is not None:
        mean, std = info.mean, info.std
    if mean is None or std is None:
        raise ValueError("pass info= (a ModelInfo) or mean= and std= to go to [0,1] pixel space")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return m, s


def _ranks(scores: Tensor, descending: bool, generator: torch.Generator) -> Tensor:
    """Rank of every element (0 = removed first), ties broken by a seeded random permutation.

    Args:
        scores: ``[B,n]``.
        descending: Highest score gets rank 0.
        generator: CPU generator for the tie-breaking permutation.

    Returns:
        ``[B,n]`` long ranks.
    """
    B, n = scores.shape
    perm = torch.argsort(torch.rand(B, n, generator=generator), dim=1).to(scores.device)
    # Stable sort of a randomly permuted copy = sort with uniformly random tie-breaking.
    order = torch.argsort(scores.gather(1, perm), dim=1, descending=descending, stable=True)
    order = perm.gather(1, order)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n, device=scores.device).expand(B, n).contiguous())
    return ranks


# --------------------------------------------------------------------------- perturbation


@dataclass
class PerturbationCurve:
    """Result of :func:`perturbation_curve`.

    Attributes:
        fractions: ``[F+1]`` removed fractions, starting with 0 (the clean images).
        correct: ``[F+1, B]`` float, 1 where the perturbed image is classified as its label.
        accuracy: ``[F+1]`` top-1 accuracy in [0, 1] (mean of ``correct`` over images).
        auc: Trapezoid area under ``accuracy`` over ``fractions`` × 100.
        mode: ``"positive"`` or ``"negative"``.
        unit: ``"pixel"`` or ``"patch"``.
    """

    fractions: Tensor
    correct: Tensor
    accuracy: Tensor
    auc: float
    mode: str
    unit: str

    def per_image_auc(self) -> Tensor:
        """``[B]`` AUC of each image's 0/1 curve; their mean equals :attr:`auc`."""
        return perturbation_auc(self.fractions, self.correct.T)


def perturbation_auc(fractions: Tensor | Sequence[float], accuracy: Tensor | Sequence[float]) -> Tensor:
    """Trapezoid AUC × 100 of accuracy (in [0,1]) over the removed fraction.

    Args:
        fractions: ``[F]`` increasing fractions (include 0 for the clean accuracy).
        accuracy: ``[..., F]`` accuracies.

    Returns:
        ``[...]`` AUC (a 0-d tensor for a single curve).
    """
    x = torch.as_tensor(fractions, dtype=torch.float64)
    y = torch.as_tensor(accuracy, dtype=torch.float64)
    return 100.0 * torch.trapezoid(y, x, dim=-1)


def perturbation_curve(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    labels: Tensor,
    *,
    info: Any | None = None,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    mode: str = "positive",
    unit: str = "pixel",
    grid: tuple[int, int] | None = None,
    upsample: str = "bilinear",
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
    clean: Tensor | None = None,
) -> PerturbationCurve:
    """Accuracy while removing the most (positive) or least (negative) relevant input first.

    Removed pixels are set to 0 in [0,1] pixel space (black), then the image is re-normalised
    with the model's mean/std. ``unit="pixel"`` ranks the pixels of the map upsampled to the
    input (``round(f·H·W)`` pixels removed); ``unit="patch"`` ranks patches by a patch score and
    removes ``round(f·P)`` whole patches (the IAV paper's Fig. 5 masking).

    Args:
        model: Classifier on model-normalised images ``[B,3,H,W] -> [B,C]``.
        x: Model-normalised images ``[B,3,H,W]``; not modified.
        maps: Relevance ``[B,P]`` (patch) or ``[B,h,w]`` (pixel); higher = more relevant.
        labels: ``[B]`` ground-truth classes (accuracy is measured against them).
        info: A ``ModelInfo`` (its ``mean``/``std``); or give ``mean`` and ``std``.
        mean: Per-channel normalisation mean (if no ``info``).
        std: Per-channel normalisation std (if no ``info``).
        fractions: Increasing removed fractions in (0, 1]; 0 is prepended.
        mode: ``"positive"`` (most relevant first) or ``"negative"`` (least relevant first).
        unit: ``"pixel"`` or ``"patch"``.
        grid: Patch grid; ``None`` reads it from the model (or infers it for pure toy models).
        upsample: Interpolation of patch maps to pixels for ``unit="pixel"``.
        batch_size: Perturbed images per forward (pairs of fraction and image).
        seed: Seed of the tie-breaking permutation (an all-equal map = a random ordering).
        progress: Show a tqdm bar.
        clean: ``[B]`` classes the model predicts for the unperturbed images, if already known:
            the fractions that remove nothing (0, and any too small to remove a pixel or patch)
            take them instead of a forward of the re-normalised, unchanged image.

    Returns:
        The :class:`PerturbationCurve`.
    """
    if mode not in ("positive", "negative"):
        raise ValueError(f"mode must be 'positive' or 'negative', got {mode!r}")
    if unit not in ("pixel", "patch"):
        raise ValueError(f"unit must be 'pixel' or 'patch', got {unit!r}")
    B, _, H, W = x.shape
    if maps.shape[0] != B or labels.shape[0] != B:
        raise ValueError(f"maps {tuple(maps.shape)} and labels {tuple(labels.shape)} must have B={B} rows")
    fr = [float(f) for f in fractions]
    if any(not 0.0 <= f <= 1.0 for f in fr) or fr != sorted(fr):
        raise ValueError(f"fractions must be increasing in [0, 1], got {fr}")
    if not fr or fr[0] != 0.0:
        fr = [0.0, *fr]
    if grid is None and maps.dim() == 2 and hasattr(model, "patch_embed"):
        grid = model_geometry(model).grid
    mean_t, std_t = _normalization(info, mean, std, x)

    if unit == "pixel":
        scores = to_pixel_maps(maps, (H, W), grid, mode=upsample).reshape(B, H * W)
    else:
        if maps.dim() == 3:
            g = grid if grid is not None else _infer_grid(maps.shape[1] * maps.shape[2], (H, W))
            # A pixel map is ranked by its patch means: the unit of removal is the patch.
            scores = patch_pool(to_pixel_maps(maps, (H, W)), g)
            grid = g
        else:
            scores = maps.detach().float()
            grid = grid if grid is not None else _infer_grid(scores.shape[1], (H, W))
    n = scores.shape[1]
    g = torch.Generator().manual_seed(int(seed))
    ranks = _ranks(scores.to(x.device), descending=(mode == "positive"), generator=g)
    counts = [int(math.floor(f * n + 0.5)) for f in fr]

    labels = labels.to(x.device).long()
    correct = torch.zeros(len(fr), B)
    # Forward (fraction, image) pairs in batches of `batch_size`: a few large forwards amortise
    # the per-call overhead that one small forward per fraction pays again and again.
    pairs = [(i, b) for i in range(len(fr)) for b in range(B)]
    if clean is not None:
        if clean.shape != (B,):
            raise ValueError(f"clean must hold B={B} predicted classes, got shape {tuple(clean.shape)}")
        same = (clean.to(labels.device).long() == labels).float().cpu()
        for i, c in enumerate(counts):
            if c == 0:
                correct[i] = same
        pairs = [(i, b) for i, b in pairs if counts[i] != 0]
    count_of = torch.tensor(counts, device=x.device)
    x01_all = x * std_t + mean_t
    with eval_mode(model), torch.no_grad():
        for s in tqdm(range(0, len(pairs), batch_size), desc=f"perturbation ({mode})", disable=not progress, leave=False):
            chunk = torch.tensor(pairs[s : s + batch_size], device=x.device)
            fi, bi = chunk[:, 0], chunk[:, 1]
            removed = (ranks[bi] < count_of[fi, None]).to(x.dtype)
            if unit == "pixel":
                removed = removed.reshape(-1, 1, H, W)
            else:
                removed = F.interpolate(removed.reshape(-1, 1, *grid), size=(H, W), mode="nearest")
            xin = (x01_all[bi] * (1.0 - removed) - mean_t) / std_t
            pred = model(xin).argmax(dim=1)
            correct[fi.cpu(), bi.cpu()] = (pred == labels[bi]).float().cpu()
    fr_t = torch.tensor(fr)
    accuracy = correct.mean(dim=1)
    return PerturbationCurve(
        fractions=fr_t,
        correct=correct,
        accuracy=accuracy,
        auc=float(perturbation_auc(fr_t, accuracy)),
        mode=mode,
        unit=unit,
    )


# --------------------------------------------------------------------------- localization


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Average precision of each row's scores against binary targets (sklearn's definition).

    ``AP = Σ_n (R_n − R_{n−1}) P_n`` over the distinct score thresholds in decreasing order,
    the same step-wise (not interpolated) definition as ``sklearn.metrics.average_precision_score``.

    Args:
        scores: ``[B,n]`` soft scores.
        targets: ``[B,n]`` bool/0-1 targets.

    Returns:
        ``[B]`` AP; NaN for a row with no positive target (AP is undefined there).
    """
    scores = scores.detach().double()
    t = targets.detach().bool()
    out = torch.full((scores.shape[0],), float("nan"), dtype=torch.float64)
    for b in range(scores.shape[0]):
        npos = int(t[b].sum())
        if npos == 0:
            continue
        s, order = torch.sort(scores[b].cpu(), descending=True, stable=True)
        y = t[b].cpu()[order].double()
        tp = torch.cumsum(y, 0)
        fp = torch.cumsum(1.0 - y, 0)
        # Only the last position of each run of equal scores is a threshold.
        last = torch.ones_like(s, dtype=torch.bool)
        last[:-1] = s[1:] != s[:-1]
        precision = tp[last] / (tp[last] + fp[last])
        recall = tp[last] / npos
        drec = torch.diff(recall, prepend=recall.new_zeros(1))
        out[b] = (drec * precision).sum()
    return out


def localization_metrics(
    maps: Tensor,
    masks: Tensor,
    *,
    grid: tuple[int, int] | None = None,
    upsample: str = "bilinear",
) -> dict[str, Tensor]:
    """Per-image localization of explanation maps against ground-truth object masks.

    Maps are upsampled to the mask size and min-max normalised per image; the binary
    prediction is ``map > mean(map)``. A constant map has no direction: it normalises to zeros
    and predicts no object pixel.

    Args:
        maps: ``[B,P]`` patch maps (with ``grid``, or inferred) or ``[B,h,w]`` pixel maps.
        masks: ``[B,H,W]`` ground truth; object where ``mask > 0.5``.
        grid: Patch grid of patch maps.
        upsample: Interpolation of maps to the mask size.

    Returns:
        ``dict`` of ``[B]`` tensors: ``pixel_accuracy``; ``miou`` (mean of object and
        background IoU; an empty union counts as IoU 1); ``iou_object``; ``ap`` (average
        precision of the soft map, NaN without object pixels); ``pointing`` (1 if the map's
        argmax pixel lies in the object).
    """
    if masks.dim() != 3:
        raise ValueError(f"expected masks [B,H,W], got {tuple(masks.shape)}")
    B, H, W = masks.shape
    pix = to_pixel_maps(maps.to(masks.device), (H, W), grid, mode=upsample)
    flat = pix.reshape(B, -1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = hi - lo
    norm = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    pred = norm > norm.mean(1, keepdim=True)
    gt = masks.reshape(B, -1) > 0.5

    def iou(a: Tensor, b: Tensor) -> Tensor:
        inter = (a & b).sum(1).float()
        union = (a | b).sum(1).float()
        return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))

    iou_obj = iou(pred, gt)
    iou_bg = iou(~pred, ~gt)
    pointing = gt.gather(1, flat.argmax(1, keepdim=True)).squeeze(1).float()
    return {
        "pixel_accuracy": (pred == gt).float().mean(1).cpu(),
        "miou": (0.5 * (iou_obj + iou_bg)).cpu(),
        "iou_object": iou_obj.cpu(),
        "ap": average_precision(norm, gt).float(),
        "pointing": pointing.cpu(),
    }


# --------------------------------------------------------------------------- paired comparison


def paired_difference(
    result: Mapping[str, Tensor],
    method_a: str,
    method_b: str,
    mode: str = "positive",
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """AUC(a) − AUC(b) on the same images, with a paired bootstrap interval over images.

    Each image has its own 0/1 curve and AUC; the dataset AUC is their mean, so the difference
    of two methods is a mean of per-image differences and can be resampled by image.

    Args:
        result: One model's :func:`iavutils.analysis.explanations.evaluate_explanations` result.
        method_a: First method.
        method_b: Second method.
        mode: ``"positive"``, ``"negative"`` or ``"patch_positive"``.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        ``{"diff", "low", "high", "n_images"}`` (95% percentile interval).
    """
    fr = result["fractions"]
    a = perturbation_auc(fr, result[f"{mode}.{method_a}"].T)
    b = perturbation_auc(fr, result[f"{mode}.{method_b}"].T)
    d = a - b
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, d.numel(), (n_boot, d.numel()), generator=g)
    boots = d[idx].mean(1)
    lo, hi = torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=boots.dtype))
    return {"diff": float(d.mean()), "low": float(lo), "high": float(hi), "n_images": int(d.numel())}
