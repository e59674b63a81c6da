"""IA-Score, IAV, AAV, global-IAV, head types and attention entropy (Park & Choi).

The tensor functions are pure. :func:`iav` and :func:`aav` read the class token's attention rows
from one clean pass with the CLS-row tap (:func:`clean_cls_attention`: the model keeps its fused
attention, no ``N×N`` map is formed) and combine them with the attribution of
:mod:`iavutils.core.attribution`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .attribution import check_target, gradcam, patch_pool, resolve_target, smoothgrad_passes
from .cls_rows import supports_cls_tap
from .geometry import blocks, check_dtype_device, check_grad_mode, check_input, model_geometry
from .hooks import ClsRowTap, eval_mode, record_attention, threads
from .hooks import autocast as autocast_ctx
from .spec import AnalysisSpec

__all__ = [
    "aav",
    "attention_entropy",
    "clean_cls_attention",
    "cls_attention",
    "global_iav",
    "head_types",
    "ia_score",
    "iav",
]

ATTRIBUTIONS = ("smoothgrad", "gradcam", "saliency")

# the defaults are declared once, in the analysis specification
_D = AnalysisSpec()


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


def clean_cls_attention(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Clean forward (inference mode) giving logits and the CLS rows of every block.

    The CLS-row tap (:class:`~iavutils.core.hooks.ClsRowTap`) computes only the class token's
    row from each block's attention input while the model keeps its fused attention path.
    A model whose attention modules the tap does not know falls back to the reference recorder
    (unfused, full maps).

    Args:
        model: timm ViT / DeiT (distilled) / BEiT.
        x: ``[B,3,H,W]`` model-normalised images.

    Returns:
        ``(logits [B,C], cls_attn [B,L,H,P])``.
    """
    geo = model_geometry(model)
    check_dtype_device(model, x)
    if all(supports_cls_tap(blk.attn) for blk in blocks(model)):
        with eval_mode(model), torch.inference_mode(), ClsRowTap(model, geo.num_prefix_tokens) as tap:
            logits = model(x)
            rows = tap.pop()
        return logits, rows
    with torch.inference_mode():
        logits, attn = record_attention(model, x)
    return logits, cls_attention(attn, geo.num_prefix_tokens)


def iav(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    n_samples: int = _D.n_samples,
    noise_level: float = _D.noise_level,
    generator: torch.Generator | None = None,
    chunk_size: int | str | None = "auto",
    memory_budget: int | None = None,
    autocast: Any = None,
    compile: bool | str = False,
    *,
    attribution: str = "smoothgrad",
    seeds: Tensor | None = None,
    noise: str = _D.noise,
    batch_size: int | None = None,
    num_threads: int | None = None,
    return_details: bool = False,
    progress: bool = False,
) -> Tensor | dict[str, Any]:
    """IA-Score vector of each image: the IA-Score of every block and head.

    The CLS attention comes from one clean pass (:func:`clean_cls_attention`); the attribution
    is computed for ``target``: SmoothGrad by default (chunked, input-only gradients,
    :func:`~iavutils.core.attribution.smoothgrad_passes`). With ``noise="gaussian"`` the result
    depends on the chunking only through float summation order.

    Args:
        model: timm ``VisionTransformer`` / ``VisionTransformerDistilled`` / ``Beit``.
        x: ``[B,3,H,W]`` model-normalised images.
        target: ``None`` (predicted class on the clean image), an int, or a ``[B]`` long tensor.
        n_samples: SmoothGrad samples per image (the defaults ``n_samples=25,
            noise_level=0.15`` are the IAV author's own convention, not stated in the paper).
        noise_level: SmoothGrad σ as a fraction of each image's value range.
        generator: CPU generator for the per-image seeds (``None``: torch's global RNG).
        chunk_size: samples per gradient chunk or ``"auto"``.
        memory_budget: bytes for the ``"auto"`` chunk (see
            :func:`~iavutils.core.chunking.auto_chunk_size`).
        autocast: autocast dtype (``torch.bfloat16`` on GPU); ``None`` = fp32.
        compile: ``torch.compile`` the gradient-pass forward (``True`` or a backend name).
        attribution: ``"smoothgrad"``, ``"saliency"`` (plain gradient: one sample, no noise)
            or ``"gradcam"`` (:func:`~iavutils.core.attribution.gradcam`; takes no SmoothGrad
            or chunking arguments).
        seeds: explicit ``[B]`` per-image seeds (overrides ``generator``).
        noise: ``"gaussian"`` | ``"antithetic"`` | ``"quasi"``.
        batch_size: alias of ``chunk_size`` (which it overrides).
        num_threads: CPU intra-op threads for this call (``torch.set_num_threads``, restored
            afterwards); ``None`` keeps the current setting.
        return_details: return a dict with ``iav``, ``target``, ``logits``, ``cls_attention``,
            ``attribution`` (``[B,P]``), ``plan`` and ``seeds`` instead of the tensor.
        progress: progress bar over gradient chunks.

    Returns:
        ``[B,L,H]`` IA-Scores (flatten to ``[B, L*H]`` for the paper's vector), or the dict above.

    Raises:
        TypeError: ``target`` is a float, bool, string or floating-point tensor
            (:func:`~iavutils.core.attribution.check_target`), or SmoothGrad arguments were
            given to ``"gradcam"`` / ``"saliency"``.
        ValueError: Bad input (size, NaN, or a dtype/device other than the model's).
        RuntimeError: Called under ``torch.inference_mode()`` (``torch.no_grad()`` is fine).
    """
    if attribution not in ATTRIBUTIONS:
        raise ValueError(f"attribution must be one of {ATTRIBUTIONS}, got {attribution!r}")
    if attribution != "smoothgrad":
        _no_noise_arguments(attribution, n_samples, noise_level, generator, seeds, noise)
        if attribution == "gradcam" and (batch_size is not None or chunk_size != "auto" or compile):
            raise TypeError("gradcam takes no chunking arguments (batch_size, chunk_size, compile)")
    geo = model_geometry(model)
    check_input(model, x)
    check_grad_mode("iav")
    check_target(target, x.shape[0])  # before the clean forward: a bad target fails at once
    if batch_size is not None:
        chunk_size = int(batch_size)
    device = x.device
    sg: dict[str, Any] = {"plan": None, "seeds": None}
    with threads(num_threads):
        with autocast_ctx(device, autocast):
            logits, rows = clean_cls_attention(model, x)
        tgt = resolve_target(target, logits)
        if attribution == "gradcam":
            sg["patches"] = gradcam(model, x, tgt)
        else:
            if attribution == "saliency":
                n_samples, noise_level = 1, 0.0
            sg = smoothgrad_passes(
                model, x, tgt, n_samples, noise_level, generator, seeds=seeds, noise=noise,
                chunk_size=chunk_size, memory_budget=memory_budget, autocast=autocast, compile=compile,
                grid=geo.grid, progress=progress,
            )
    scores = ia_score(sg["patches"], rows)
    if not return_details:
        return scores
    return {
        "iav": scores, "target": tgt, "logits": logits, "cls_attention": rows,
        "attribution": sg["patches"], "plan": sg["plan"], "seeds": sg["seeds"],
    }


def _no_noise_arguments(attribution: str, n_samples: int, noise_level: float, generator: Any, seeds: Any, noise: str) -> None:
    # "saliency" and "gradcam" draw no noise: a SmoothGrad argument given to them is a mistake
    given = [
        name
        for name, value, default in (
            ("n_samples", n_samples, _D.n_samples),
            ("noise_level", noise_level, _D.noise_level),
            ("generator", generator, None),
            ("seeds", seeds, None),
            ("noise", noise, _D.noise),
        )
        if ((value is not None) if default is None else (value != default))
    ]
    if given:
        raise TypeError(f"{attribution} takes no SmoothGrad arguments, got {given}")


def aav(model: nn.Module, x: Tensor, maps: Tensor) -> Tensor:
    """Any-input Attribution Vector: IA-Scores with any input-sized map instead of ``phi``.

    The CLS attention comes from the clean CLS-row tap (:func:`clean_cls_attention`).

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
    _, cls_attn = clean_cls_attention(model, x)
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
