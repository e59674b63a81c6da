"""IA-Score, IAV, AAV, global-IAV, head types and attention entropy (Park & Choi).

The tensor functions are pure; :func:`iav` and :func:`aav` are thin wrappers over attention
recording and attribution.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .attribution import check_target, gradcam, patch_pool, resolve_target, smoothgrad
from .hooks import check_grad_mode, check_input, model_geometry, record_attention

__all__ = [
    "aav",
    "attention_entropy",
    "cls_attention",
    "global_iav",
    "head_types",
    "ia_score",
    "iav",
]

ATTRIBUTIONS = ("smoothgrad", "gradcam", "saliency")


def cls_attention(attn: Tensor, num_prefix_tokens: int) -> Tensor:
    """The class token's attention row over the patch tokens.

    Args:
        attn: Attention ``[..., N, N]`` (typically ``[B,L,H,N,N]``), class token at index 0.
        num_prefix_tokens: Tokens before the patches ``T`` (read it from the model).

    Returns:
        ``attn[..., 0, T:]``, e.g. ``[B,L,H,P]``.
    """
    if attn.dim() < 2 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"expected attention [..., N, N], got {tuple(attn.shape)}")
    if not 1 <= num_prefix_tokens < attn.shape[-1]:
        raise ValueError(f"num_prefix_tokens={num_prefix_tokens} must be in [1, N={attn.shape[-1]})")
    return attn[..., 0, num_prefix_tokens:]


def ia_score(attribution_patches: Tensor, cls_attn: Tensor) -> Tensor:
    """IA-Score: cosine between the patch attribution and each head's CLS attention.

    ``s[b,l,h] = <phi_b, A_bl h> / (|phi_b| |A_blh|)`` over the ``P`` patches. A map with zero
    norm has no direction: its scores are NaN and a warning counts such maps.

    Args:
        attribution_patches: ``[B,P]`` (e.g. :func:`patch_pool` of SmoothGrad).
        cls_attn: ``[B,L,H,P]`` (:func:`cls_attention`).

    Returns:
        ``[B,L,H]``, in ``[0, 1]`` for non-negative inputs.
    """
    if attribution_patches.dim() != 2 or cls_attn.dim() != 4:
        raise ValueError(
            f"expected attribution [B,P] and cls attention [B,L,H,P], got "
            f"{tuple(attribution_patches.shape)} and {tuple(cls_attn.shape)}"
        )
    B, P = attribution_patches.shape
    if cls_attn.shape[0] != B or cls_attn.shape[-1] != P:
        raise ValueError(
            f"shape mismatch: attribution {tuple(attribution_patches.shape)} vs cls attention "
            f"{tuple(cls_attn.shape)}"
        )
    phi = attribution_patches.to(cls_attn.dtype)
    phi_norm = phi.norm(dim=-1)  # [B]
    a_norm = cls_attn.norm(dim=-1)  # [B,L,H]
    dot = torch.einsum("bp,blhp->blh", phi, cls_attn)
    denom = phi_norm[:, None, None] * a_norm
    zero = phi_norm == 0
    if zero.any():
        warnings.warn(
            f"{int(zero.sum())} of {B} attribution maps are all zero; their IA-Scores are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    return torch.where(denom > 0, dot / denom.clamp_min(torch.finfo(denom.dtype).tiny), torch.nan)


def _clean_cls_attention(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    geo = model_geometry(model)
    logits, attn = record_attention(model, x)
    return logits, cls_attention(attn, geo.num_prefix_tokens)


def iav(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    attribution: str = "smoothgrad",
    **kw: object,
) -> Tensor:
    """IA-Score vector of each image: the IA-Score of every head.

    Attention is recorded on the clean image; the attribution is computed for ``target``.

    Args:
        model: A supported timm ViT-family model.
        x: Model-normalised images ``[B,3,H,W]``.
        target: ``None`` (predicted class on the clean image), an int or a ``[B]`` tensor.
        attribution: ``"smoothgrad"`` (defaults ``n_samples=25, noise_level=0.15``: the IAV
            author's own convention, not stated in the paper), ``"saliency"`` (plain
            gradient) or ``"gradcam"``.
        **kw: Passed to :func:`~iavutils.core.attribution.smoothgrad` (``n_samples``,
            ``noise_level``, ``generator``, ``batch_size``); ``"saliency"`` accepts
            ``batch_size``; ``"gradcam"`` none.

    Returns:
        ``[B,L,H]`` IA-Scores (flatten to ``[B, L*H]`` for the paper's vector).

    Raises:
        TypeError: ``target`` is a float, bool, string or floating-point tensor
            (:func:`~iavutils.core.attribution.check_target`).
        ValueError: Bad input (size, NaN, or a dtype/device other than the model's).
        RuntimeError: Called under ``torch.inference_mode()`` (``torch.no_grad()`` is fine).
    """
    if attribution not in ATTRIBUTIONS:
        raise ValueError(f"attribution must be one of {ATTRIBUTIONS}, got {attribution!r}")
    geo = model_geometry(model)
    check_input(model, x)
    check_grad_mode(f"iav(attribution={attribution!r})")
    check_target(target, x.shape[0])  # before the clean forward: a bad target fails at once
    logits, cls_attn = _clean_cls_attention(model, x)
    t = resolve_target(target, logits)
    if attribution == "gradcam":
        if kw:
            raise TypeError(f"gradcam takes no extra arguments, got {sorted(kw)}")
        phi = gradcam(model, x, t)
    else:
        if attribution == "saliency":
            extra = set(kw) - {"batch_size"}
            if extra:
                raise TypeError(f"saliency takes only batch_size, got {sorted(extra)}")
            kw = {**kw, "n_samples": 1, "noise_level": 0.0}
        phi = patch_pool(smoothgrad(model, x, t, **kw), geo.grid)  # type: ignore[arg-type]
    return ia_score(phi, cls_attn)


def aav(model: nn.Module, x: Tensor, maps: Tensor) -> Tensor:
    """Any-input Attribution Vector: IA-Scores with any input-sized map instead of ``phi``.

    Args:
        model: A supported timm ViT-family model.
        x: Model-normalised images ``[B,3,H,W]``.
        maps: Non-negative maps ``[B,H,W]`` of the input size (a segmentation mask, another
            model's SmoothGrad, ...).

    Returns:
        ``[B,L,H]``.
    """
    geo = model_geometry(model)
    check_input(model, x)
    if maps.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"maps must be [B,H,W]={(x.shape[0], *x.shape[-2:])}, got {tuple(maps.shape)}")
    _, cls_attn = _clean_cls_attention(model, x)
    return ia_score(patch_pool(maps.to(cls_attn.device), geo.grid), cls_attn)


def global_iav(iavs: Tensor) -> Tensor:
    """global-IAV: mean of the IAVs over samples, ignoring NaN scores.

    Args:
        iavs: ``[N,L,H]`` (or ``[N, ...]``).

    Returns:
        ``[L,H]``; NaN where every sample is NaN.
    """
    return torch.nanmean(iavs, dim=0)


def head_types(iavs: Tensor, threshold: float = 0.5) -> Tensor:
    """High-IA-Heads: heads whose median IA-Score over samples exceeds ``threshold``.

    The median is the usual one (mean of the two middle values for an even count), ignoring
    NaN scores; a head with only NaN scores is Low-IA.

    Args:
        iavs: ``[N,L,H]``.
        threshold: Median above which a head is High-IA.

    Returns:
        Bool ``[L,H]``, True = High-IA-Head.
    """
    med = torch.nanquantile(iavs.double(), 0.5, dim=0)
    return med > threshold


def attention_entropy(cls_attn: Tensor) -> Tensor:
    """Entropy (natural log) of each head's CLS attention over the patches.

    The row is renormalised to sum 1 over the patches first; ``0 log 0 = 0``.

    Args:
        cls_attn: ``[B,L,H,P]`` (:func:`cls_attention`).

    Returns:
        ``[B,L,H]``; average over ``B`` for the paper's per-head entropy.
    """
    p = cls_attn / cls_attn.sum(dim=-1, keepdim=True)
    return -torch.xlogy(p, p).sum(dim=-1)
