"""Evaluation of explanations: perturbation curves, localization against masks, map zoo.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from ..core.progress import tqdm  # one progress helper: widgets, terminal, or the book runner

from ..core.attribution import gradcam, patch_pool, resolve_target, smoothgrad
from ..core.hooks import AttentionRecorder, check_input, eval_mode, model_geometry, record_attention
from ..core.rollout import attention_rollout, gmar_from_grads, gradient_rollout_from_grads
from ..core.scores import aav, cls_attention

__all__ = [
    "DEFAULT_FRACTIONS",
    "EXPLANATION_METHODS",
    "LOCALIZATION_METRICS",
    "PATCH_MASKING_METHODS",
    "PERTURBATION_METHODS",
    "PerturbationCurve",
    "average_precision",
    "attention_and_grads",
    "evaluate_explanations",
    "explanation_maps",
    "explanation_table",
    "gmar_vs_rollout",
    "localization_metrics",
    "mask_aav",
    "paired_difference",
    "perturbation_auc",
    "perturbation_curve",
    "perturbation_fractions",
    "run_explanation_eval",
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

#: Every method :func:`explanation_maps` knows, in table order.
EXPLANATION_METHODS: tuple[str, ...] = (
    "attention",  # last layer, mean of heads, CLS row over patches
    "attention_mean",  # mean over all layers and heads (the IAV paper's "Attention-Mean")
    "rollout",
    "gmar_l1",
    "gmar_l2",
    "gradient_rollout",
    "gradcam",
    "smoothgrad",  # pixel map
    "smoothgrad_patch",  # patch-pooled
    "random",
)

#: Methods with pixel perturbation curves by default (the issue's list; Fig. 5's
#: ``attention_mean`` and ``smoothgrad_patch`` get the patch-masking curve instead).
PERTURBATION_METHODS: tuple[str, ...] = (
    "attention", "rollout", "gmar_l1", "gmar_l2", "gradient_rollout", "gradcam", "smoothgrad", "random",
)

#: Patch orderings of the IAV paper's Fig. 5 (patch masking).
PATCH_MASKING_METHODS: tuple[str, ...] = ("attention", "attention_mean", "smoothgrad_patch", "random")

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


# --------------------------------------------------------------------------- explanation maps


def _chunks(n: int, size: int | None) -> Iterable[slice]:
    step = n if not size else int(size)
    return (slice(s, s + step) for s in range(0, n, step))


def attention_and_grads(model: nn.Module, x: Tensor, target: int | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Attention ``[B,L,H,N,N]`` and the gradient of the target logit with respect to it.

    Args:
        model: A supported timm ViT-family model (run in eval mode, flags restored).
        x: Model-normalised images ``[B,3,H,W]``.
        target: ``None`` (predicted class), an int or a ``[B]`` tensor.

    Returns:
        ``(attn, grads)``, both detached ``[B,L,H,N,N]``.
    """
    check_input(model, x)
    with torch.enable_grad(), AttentionRecorder(model, keep_graph=True) as rec:
        # The input carries the graph, so the gradients exist even for a frozen model.
        logits = model(x.detach().requires_grad_(True))
        maps = rec.maps
        t = resolve_target(target, logits)
        grads = torch.autograd.grad(logits.gather(1, t.unsqueeze(1)).sum(), maps)
    return torch.stack([m.detach() for m in maps], dim=1), torch.stack(grads, dim=1)


def explanation_maps(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    methods: Sequence[str] = EXPLANATION_METHODS,
    *,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    batch_size: int | None = None,
    precomputed: Mapping[str, Tensor] | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Every explanation map of a batch, for one shared target class per image.

    Methods (see :data:`EXPLANATION_METHODS`): ``attention`` (last layer, mean of heads, class
    token row over patches), ``attention_mean`` (mean over all layers and heads),
    ``rollout``, ``gmar_l1``, ``gmar_l2``, ``gradient_rollout``, ``gradcam``, ``smoothgrad``
    (pixel map), ``smoothgrad_patch`` (patch-pooled), ``random`` (uniform noise from ``seed``).

    Args:
        model: A supported timm ViT-family model.
        x: Model-normalised images ``[B,3,H,W]``.
        target: ``None`` (predicted class, resolved once so that every method explains the
            same class), an int or a ``[B]`` tensor.
        methods: Which maps to compute.
        n_samples: SmoothGrad samples.
        noise_level: SmoothGrad noise level.
        seed: Seeds SmoothGrad's noise stream and the random map (independently).
        batch_size: Images per chunk (``None``: all at once); results do not depend on it
            except through SmoothGrad's seeds, which are drawn once for the whole batch.
        precomputed: Maps already computed for the same images and targets (e.g. the book's
            cached SmoothGrad ``{"smoothgrad": [B,H,W]}``); used instead of recomputing.
        progress: Show a tqdm bar over methods.

    Returns:
        ``{method: map}`` with ``[B,P]`` patch maps and ``[B,H,W]`` for ``smoothgrad``; detached
        float32 on ``x``'s device.
    """
    unknown = [m for m in methods if m not in EXPLANATION_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {EXPLANATION_METHODS}")
    geo = model_geometry(model)
    B = x.shape[0]
    with eval_mode(model), torch.no_grad():
        logits = torch.cat([model(x[sl]) for sl in _chunks(B, batch_size)])
    t = resolve_target(target, logits)
    out: dict[str, Tensor] = {k: v.to(x.device) for k, v in (precomputed or {}).items() if k in methods}
    if "smoothgrad_patch" in methods and "smoothgrad" in (precomputed or {}) and "smoothgrad_patch" not in out:
        out["smoothgrad_patch"] = patch_pool(precomputed["smoothgrad"].to(x.device).float(), geo.grid)
    need_attn = ({"attention", "attention_mean", "rollout"} & set(methods)) - set(out)
    if need_attn:
        cls_parts, roll_parts = [], []
        for sl in _chunks(B, batch_size):
            _, attn = record_attention(model, x[sl])
            cls_parts.append(cls_attention(attn, geo.num_prefix_tokens))
            if "rollout" in need_attn:
                roll_parts.append(attention_rollout(attn, geo.num_prefix_tokens))
        cls = torch.cat(cls_parts)  # [B,L,H,P]
        if "attention" in need_attn:
            out["attention"] = cls[:, -1].mean(dim=1)
        if "attention_mean" in need_attn:
            out["attention_mean"] = cls.mean(dim=(1, 2))
        if "rollout" in need_attn:
            out["rollout"] = torch.cat(roll_parts)
    grad_methods = [m for m in ("gmar_l1", "gmar_l2", "gradient_rollout") if m in methods and m not in out]
    if grad_methods:
        # One forward/backward serves GMAR (both norms) and gradient rollout: same ∂y_c/∂A.
        parts: dict[str, list[Tensor]] = {m: [] for m in grad_methods}
        for sl in _chunks(B, batch_size):
            attn, grads = attention_and_grads(model, x[sl], t[sl])
            for m in grad_methods:
                if m == "gradient_rollout":
                    parts[m].append(gradient_rollout_from_grads(attn, grads, geo.num_prefix_tokens))
                else:
                    parts[m].append(gmar_from_grads(attn, grads, geo.num_prefix_tokens, norm=m[-2:]))
        out.update({m: torch.cat(v) for m, v in parts.items()})
    sg = None
    for m in tqdm([m for m in methods if m not in out], desc="maps", disable=not progress, leave=False):
        if m == "gradcam":
            out[m] = torch.cat([gradcam(model, x[sl], t[sl]) for sl in _chunks(B, batch_size)])
        elif m in ("smoothgrad", "smoothgrad_patch"):
            if sg is None:
                # One generator for the whole batch: the noise stream draws B seeds up front.
                gen = torch.Generator().manual_seed(int(seed))
                sg = smoothgrad(model, x, t, n_samples=n_samples, noise_level=noise_level, generator=gen,
                                batch_size=None if batch_size is None else batch_size * n_samples)
            out[m] = sg if m == "smoothgrad" else patch_pool(sg, geo.grid)
        elif m == "random":
            gen = torch.Generator().manual_seed(int(seed) + 1)
            out[m] = torch.rand(B, geo.num_patches, generator=gen).to(x.device)
    return {m: out[m].detach().float() for m in methods}


def mask_aav(model: nn.Module, x: Tensor, masks: Tensor, batch_size: int | None = None) -> Tensor:
    """AAV with the ground-truth object mask as the map (the IAV paper's suggested future work).

    ``aav[b,l,h] = cos(patch_pool(mask_b), A_cls[b,l,h])``: how much each head's class-token
    attention agrees with *where the object is*, independently of the model's decision.

    Args:
        model: A supported timm ViT-family model.
        x: Model-normalised images ``[B,3,H,W]``.
        masks: ``[B,H,W]`` object masks.
        batch_size: Images per chunk.

    Returns:
        ``[B,L,H]`` scores (NaN for an image without object pixels).
    """
    return torch.cat([aav(model, x[sl], masks[sl].to(x)) for sl in _chunks(x.shape[0], batch_size)])


# --------------------------------------------------------------------------- whole evaluation


def evaluate_explanations(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    masks: Tensor | None = None,
    *,
    info: Any | None = None,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    methods: Sequence[str] = EXPLANATION_METHODS,
    target: int | Tensor | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    perturbation_methods: Sequence[str] = PERTURBATION_METHODS,
    patch_methods: Sequence[str] = PATCH_MASKING_METHODS,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    batch_size: int = 64,
    precomputed: Mapping[str, Tensor] | None = None,
    progress: bool = True,
) -> dict[str, Tensor]:
    """Maps, perturbation curves (pixel positive/negative, patch positive) and localization.

    The result is a flat ``dict[str, Tensor]`` (what ``ResultStore.cached`` stores):
    ``fractions`` ``[F+1]``; ``map.{m}``; ``positive.{m}``, ``negative.{m}`` and
    ``patch_positive.{m}`` (per-image correctness ``[F+1,B]``; patch masking only for
    ``patch_methods``); ``loc.{metric}.{m}`` ``[B]``; ``aav_mask`` ``[B,L,H]``; ``labels``; ``target``.

    Args:
        model: A supported timm ViT-family model.
        x: Model-normalised images ``[B,3,H,W]``.
        labels: ``[B]`` ground-truth classes.
        masks: ``[B,H,W]`` object masks (``None``: no localization, no mask AAV).
        info: ``ModelInfo`` with the normalisation (or ``mean``/``std``).
        mean: Normalisation mean (if no ``info``).
        std: Normalisation std (if no ``info``).
        methods: Explanation methods.
        target: Class explained: ``None`` = the predicted class (what the model decided).
        fractions: Removed fractions.
        perturbation_methods: Methods that get the pixel perturbation curves (positive and
            negative); the forwards of the perturbed images dominate the cost.
        patch_methods: Methods (with patch maps) that also get the patch-masking curve of the
            IAV paper's Fig. 5.
        n_samples: SmoothGrad samples.
        noise_level: SmoothGrad noise level.
        seed: Seeds the maps and the tie-breaking.
        batch_size: Images per forward (perturbed images per forward: ``4 * batch_size``).
        precomputed: Maps computed elsewhere for the same images and targets
            (:func:`explanation_maps`).
        progress: Show tqdm bars.

    Returns:
        The flat result dictionary described above.
    """
    geo = model_geometry(model)
    with eval_mode(model), torch.no_grad():
        logits = torch.cat([model(x[sl]) for sl in _chunks(x.shape[0], batch_size)])
    t = resolve_target(target, logits)
    maps = explanation_maps(model, x, t, methods, n_samples=n_samples, noise_level=noise_level, seed=seed,
                            batch_size=batch_size, precomputed=precomputed)
    res: dict[str, Tensor] = {"labels": labels.detach().cpu().long(), "target": t.cpu()}
    # The unperturbed images' predictions are the first point of every curve: computed once.
    kw = dict(info=info, mean=mean, std=std, fractions=fractions, grid=geo.grid, batch_size=4 * batch_size, seed=seed,
              clean=logits.argmax(1))
    fr = [float(f) for f in fractions]
    res["fractions"] = torch.tensor(fr if fr and fr[0] == 0.0 else [0.0, *fr])
    for m in tqdm(methods, desc="perturbation", disable=not progress, leave=False):
        res[f"map.{m}"] = maps[m].cpu()
        for mode in ("positive", "negative") if m in perturbation_methods else ():
            c = perturbation_curve(model, x, maps[m], labels, mode=mode, **kw)
            res[f"{mode}.{m}"] = c.correct
        if m in patch_methods and maps[m].dim() == 2:
            res[f"patch_positive.{m}"] = perturbation_curve(model, x, maps[m], labels, unit="patch", **kw).correct
        if masks is not None:
            for k, v in localization_metrics(maps[m], masks.to(x.device), grid=geo.grid).items():
                res[f"loc.{k}.{m}"] = v
    if masks is not None:
        res["aav_mask"] = mask_aav(model, x, masks, batch_size=batch_size).cpu()
    return res


def explanation_table(results: Mapping[str, Mapping[str, Tensor]]) -> Any:
    """A tidy table of AUCs and localization per model and method.

    Args:
        results: ``{model name: evaluate_explanations(...) result}``.

    Returns:
        ``pandas.DataFrame`` with columns ``model, method, auc_positive, auc_negative,
        auc_patch_positive, pixel_accuracy, miou, ap, pointing`` (AUCs in [0, 90], positive
        lower is better, negative higher is better; localization means in [0, 1]).
    """
    import pandas as pd

    rows = []
    for name, res in results.items():
        fr = res["fractions"]
        methods = [k.split(".", 1)[1] for k in res if k.startswith("map.")]
        for m in methods:
            row: dict[str, Any] = {"model": name, "method": m}
            for mode in ("positive", "negative", "patch_positive"):
                key = f"{mode}.{m}"
                row[f"auc_{mode}"] = float(perturbation_auc(fr, res[key].mean(1))) if key in res else float("nan")
            for metric in LOCALIZATION_METRICS:
                key = f"loc.{metric}.{m}"
                row[metric] = float(torch.nanmean(res[key].float())) if key in res else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


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
        result: One model's :func:`evaluate_explanations` result.
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


# --------------------------------------------------------------------------- cached experiment

#: Bump when a definition behind :func:`run_explanation_eval` changes (invalidates the cache).
_EVAL_VERSION = 1


def run_explanation_eval(
    preset: str,
    dataset: str = "embedded",
    run_dir: str | None = "",
    *,
    num_images: int = 64,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    device: str = "auto",
    methods: Sequence[str] = EXPLANATION_METHODS,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    target: str = "label",
    epoch: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Tensor]:
    """:func:`evaluate_explanations` of a finetuned checkpoint, cached in the run directory.

    Images: the seeded validation subset of :func:`iavutils.analysis.experiments.load_images` (the same
    images for every model). SmoothGrad is taken from the book's cached
    :func:`iavutils.analysis.experiments.checkpoint_analysis` of the same images (shared with chapters
    02–07), and every method explains the same class. The cache key holds the checkpoint's
    fingerprint, so a re-finetuned model is re-evaluated.

    Args:
        preset: Preset finetuned in the run.
        dataset: ``"embedded"`` (with masks) or ``"cifar10"`` (no localization).
        run_dir: Run directory (``""``: the repository's ``runs``; see ``resolve_run_dir``).
        num_images: Validation images.
        n_samples: SmoothGrad samples.
        noise_level: SmoothGrad noise level.
        seed: Image subset, SmoothGrad noise, random map and tie-breaking seed.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        methods: Explanation methods.
        fractions: Removed fractions.
        target: Class explained: ``"label"`` (the book's default) or ``"predicted"``.
        epoch: Checkpoint (``None``: the last one).
        batch_size: Images per forward.
        progress: Show progress bars.

    Returns:
        The :func:`evaluate_explanations` dictionary plus ``indices`` (dataset indices) and
        ``epoch``.
    """
    from . import experiments as ex
    from ..world.store import ResultStore
    from ..world.training import list_checkpoints, load_checkpoint

    run = ex.resolve_run_dir(run_dir)
    dev = ex.resolve_device(device)
    ckpts = dict(list_checkpoints(run, dataset, preset))
    if not ckpts:
        raise FileNotFoundError(f"no checkpoints of {preset!r} on {dataset!r} in {run}: finetune it first")
    epoch = max(ckpts) if epoch is None else int(epoch)
    if target not in ("label", "predicted"):
        raise ValueError(f"target must be 'label' or 'predicted', got {target!r}")
    if not ex.has_masks(dataset):
        ex.warn_no_masks(dataset, "localization against the masks (pixel accuracy, mIoU, AP, pointing "
                                  "game) and the AAV with the mask")
    key = {
        "version": _EVAL_VERSION, "preset": preset, "dataset": dataset, "epoch": epoch,
        "fingerprint": ex.checkpoint_fingerprint(ckpts[epoch]), "num_images": num_images,
        "n_samples": n_samples, "noise_level": noise_level, "seed": seed, "target": target,
        "methods": list(methods), "fractions": [float(f) for f in fractions],
    }

    def compute() -> dict[str, Tensor]:
        # SmoothGrad of the same images and targets is the book's shared, cached analysis.
        analysis = ex.checkpoint_analysis(
            preset, dataset, epoch, run_dir=run, num_images=num_images, n_samples=n_samples,
            noise_level=noise_level, seed=seed, target=target, device=device, progress=progress,
        )
        model, info = load_checkpoint(run, dataset, preset, epoch=epoch, device=dev)
        imgs = ex.load_images(dataset, info, num_images, seed)
        if not torch.equal(imgs["indices"], analysis["indices"]):
            raise RuntimeError("the image subset differs from the cached analysis")
        res = evaluate_explanations(
            model, imgs["x"].to(dev), imgs["y"].to(dev), imgs.get("mask"), info=info, methods=methods,
            target=analysis["targets"].to(dev), fractions=fractions, n_samples=n_samples,
            noise_level=noise_level, seed=seed, batch_size=batch_size,
            precomputed={"smoothgrad": analysis["smoothgrad"]}, progress=progress,
        )
        res["indices"] = imgs["indices"]
        res["epoch"] = torch.tensor(epoch)
        return res

    return ResultStore(run).cached("explanation_eval", key, compute, meta={"preset": preset})


def gmar_vs_rollout(
    results: Mapping[str, Mapping[str, Tensor]],
    pairs: Sequence[tuple[str, str]] = (("gmar_l1", "rollout"), ("gmar_l2", "rollout")),
    n_boot: int = 2000,
    seed: int = 0,
) -> Any:
    """Per model, the paired AUC difference of GMAR and rollout with a bootstrap interval.

    ``better`` is ``True`` when the 95% interval says GMAR is better (positive: lower AUC;
    negative: higher AUC), ``False`` when it says worse, ``None`` when it contains 0.

    Args:
        results: ``{model: evaluate_explanations result}``.
        pairs: ``(method, reference)`` pairs.
        n_boot: Bootstrap resamples over images.
        seed: Bootstrap seed.

    Returns:
        ``pandas.DataFrame`` with ``model, method, reference, mode, diff, low, high, better``.
    """
    import pandas as pd

    rows = []
    for name, res in results.items():
        for a, b in pairs:
            if f"positive.{a}" not in res or f"positive.{b}" not in res:  # no curves for them
                continue
            for mode in ("positive", "negative"):
                d = paired_difference(res, a, b, mode=mode, n_boot=n_boot, seed=seed)
                sign = -1.0 if mode == "positive" else 1.0  # which direction is "better"
                # Interval of the improvement (positive = GMAR better) in either test.
                lo, hi = sorted((sign * d["low"], sign * d["high"]))
                better = True if lo > 0 else False if hi < 0 else None
                rows.append({"model": name, "method": a, "reference": b, "mode": mode, **d, "better": better})
    return pd.DataFrame(rows)
