"""Attention rollout (Abnar & Zuidema), GMAR (Jo, Jang & Park) and gradient rollout (Chefer et al.).

:func:`attention_rollout` and :func:`gmar_head_weights` are pure tensor functions;
:func:`gmar` and :func:`gradient_rollout` get the attention and the gradient of the target logit
with respect to every map from :func:`attention_and_grads` (one recorded forward,
``torch.autograd.grad``, parameters' ``.grad`` untouched) and call the pure functions. All outputs are the class token's row over the patch
tokens, ``[B,P]``, unnormalised (scale them for display as you like).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attribution import check_target, resolve_target
from .hooks import AttentionRecorder, check_grad_mode, check_input, grad_input, model_geometry

__all__ = [
    "HEAD_FUSIONS",
    "GMAR_NORMS",
    "attention_and_grads",
    "attention_rollout",
    "gmar",
    "gmar_from_grads",
    "gmar_head_weights",
    "gradient_rollout",
    "gradient_rollout_from_grads",
]

HEAD_FUSIONS = ("mean", "max", "min")
GMAR_NORMS = ("l1", "l2")


def _check_attn(attn: Tensor, num_prefix_tokens: int) -> None:
    if attn.dim() != 5 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"expected attention [B,L,H,N,N], got {tuple(attn.shape)}")
    if not 1 <= num_prefix_tokens < attn.shape[-1]:
        raise ValueError(f"num_prefix_tokens={num_prefix_tokens} must be in [1, N={attn.shape[-1]})")


def _discard_lowest(a: Tensor, ratio: float) -> Tensor:
    # As in vit-explain, the lowest `ratio` of the N*N entries of each map are zeroed, except the
    # class token's self-attention a[0, 0]; unlike it, per image (not image 0 only) and on a copy.
    B, N, _ = a.shape
    k = int(N * N * ratio)
    if k == 0:
        return a
    flat = a.reshape(B, N * N).clone()
    ranked = flat.clone()
    ranked[:, 0] = torch.inf
    idx = ranked.topk(k, dim=-1, largest=False).indices
    return flat.scatter(-1, idx, 0.0).reshape(B, N, N)


def _rollout(fused: Tensor, num_prefix_tokens: int, discard_ratio: float, start_layer: int) -> Tensor:
    B, L, N, _ = fused.shape
    eye = torch.eye(N, dtype=fused.dtype, device=fused.device)
    R = eye.expand(B, N, N)
    for layer in range(start_layer, L):
        a = fused[:, layer]
        if discard_ratio > 0:
            a = _discard_lowest(a, discard_ratio)
        # The identity stands for the residual connection.
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        R = a @ R
    return R[:, 0, num_prefix_tokens:]


def attention_rollout(
    attn: Tensor,
    num_prefix_tokens: int,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
) -> Tensor:
    """Attention rollout: ``R = Â_L ⋯ Â_s`` with ``Â_l = rownorm(½·fuse_h(A_l) + ½·I)``.

    Args:
        attn: Attention ``[B,L,H,N,N]`` (post-softmax, :func:`~iavutils.record_attention`).
        num_prefix_tokens: Tokens before the patches ``T`` (read it from the model).
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.
        discard_ratio: Fraction of each fused map's ``N*N`` entries, the lowest ones, set to
            zero before adding the identity (the class token's self-attention is kept).
        start_layer: First layer ``s`` included in the product.

    Returns:
        The class token's row of ``R`` over the patches, ``[B,P]``.
    """
    _check_attn(attn, num_prefix_tokens)
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    L = attn.shape[1]
    if not 0 <= start_layer < L:
        raise ValueError(f"start_layer must be in [0, {L}), got {start_layer}")
    if head_fusion == "mean":
        fused = attn.mean(dim=2)
    elif head_fusion == "max":
        fused = attn.amax(dim=2)
    else:
        fused = attn.amin(dim=2)
    return _rollout(fused, num_prefix_tokens, discard_ratio, start_layer)


def gmar_head_weights(attn: Tensor, attn_grads: Tensor, norm: str = "l1") -> Tensor:
    """GMAR head weights ``w_{l,h} = g_{l,h} / Σ_h g_{l,h}``, ``g = ‖∂y_c/∂A_{l,h}‖``.

    The norm runs over the whole ``N×N`` map (L1: sum of absolute values, L2: Euclidean).
    Plain sum-to-one, as in the paper (no softmax). A layer whose gradient is zero for every
    head carries no preference; it gets uniform weights ``1/H``.

    Args:
        attn: Attention ``[B,L,H,N,N]`` (checked for shape agreement).
        attn_grads: ``∂y_c/∂A`` with the same shape.
        norm: ``"l1"`` or ``"l2"``.

    Returns:
        ``[B,L,H]``, summing to 1 over ``H``.
    """
    if norm not in GMAR_NORMS:
        raise ValueError(f"norm must be one of {GMAR_NORMS}, got {norm!r}")
    if attn.shape != attn_grads.shape or attn.dim() != 5:
        raise ValueError(
            f"attn and attn_grads must both be [B,L,H,N,N], got {tuple(attn.shape)} and "
            f"{tuple(attn_grads.shape)}"
        )
    if norm == "l1":
        g = attn_grads.abs().sum(dim=(-2, -1))
    else:
        g = attn_grads.pow(2).sum(dim=(-2, -1)).sqrt()
    total = g.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(g, 1.0 / g.shape[-1])
    return torch.where(total > 0, g / total.clamp_min(torch.finfo(g.dtype).tiny), uniform)


def attention_and_grads(model: nn.Module, x: Tensor, target: int | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Attention and the gradient of the target logit with respect to it, from one forward.

    The model runs in eval mode with its attention recorded (graph kept); the input carries the
    graph, so gradients exist even for a frozen model. Parameters' ``.grad`` stays untouched.

    Args:
        model: A supported timm ViT-family model.
        x: Model-normalised images ``[B,3,H,W]``.
        target: ``None`` (predicted class), an int or a ``[B]`` tensor; ``y_c`` is its logit.

    Returns:
        ``(attn, grads)``: attention ``[B,L,H,N,N]`` (detached) and ``∂y_c/∂A`` of the same shape.

    Raises:
        TypeError: ``target`` is a float, bool, string or floating-point tensor.
        ValueError: Bad input (size, NaN, or a dtype/device other than the model's).
        RuntimeError: Called under ``torch.inference_mode()`` (``torch.no_grad()`` is fine).
    """
    model_geometry(model)  # an unsupported model fails here, before any forward
    check_input(model, x)
    check_grad_mode("attention_and_grads")
    check_target(target, x.shape[0])
    with torch.enable_grad(), AttentionRecorder(model, keep_graph=True) as rec:
        # The input carries the graph, so gradients exist even for a frozen model.
        logits = model(grad_input(x).requires_grad_(True))
        maps = rec.maps
        t = resolve_target(target, logits)
        y = logits.gather(1, t.unsqueeze(1)).sum()
    grads = torch.autograd.grad(y, maps)
    attn = torch.stack([m.detach() for m in maps], dim=1)
    return attn, torch.stack(grads, dim=1)


def gmar(model: nn.Module, x: Tensor, target: int | Tensor | None = None, norm: str = "l1") -> Tensor:
    """GMAR: rollout of the gradient-weighted head average ``Ā_l = Σ_h w_{l,h} A_{l,h}``.

    Implements the paper's equations (see :func:`gmar_head_weights`), then
    :func:`attention_rollout` on ``Ā``. The model runs in eval mode.

    Args:
        model: A supported timm ViT-family model.
        x: Model-normalised images ``[B,3,H,W]``.
        target: ``None`` (predicted class), an int or a ``[B]`` tensor; ``y_c`` is its logit.
        norm: ``"l1"`` or ``"l2"``.

    Returns:
        ``[B,P]``.

    Raises:
        TypeError: ``target`` is a float, bool, string or floating-point tensor
            (:func:`~iavutils.core.attribution.check_target`).
        ValueError: Bad input (size, NaN, or a dtype/device other than the model's).
        RuntimeError: Called under ``torch.inference_mode()`` (``torch.no_grad()`` is fine).
    """
    if norm not in GMAR_NORMS:
        raise ValueError(f"norm must be one of {GMAR_NORMS}, got {norm!r}")
    T = model_geometry(model).num_prefix_tokens
    check_grad_mode("gmar")
    attn, grads = attention_and_grads(model, x, target)
    return gmar_from_grads(attn, grads, T, norm)


def gradient_rollout(model: nn.Module, x: Tensor, target: int | Tensor | None = None) -> Tensor:
    """Gradient-weighted rollout (Chefer et al., ICCV 2021, generic rule for self-attention).

    ``R = I``; for each layer in forward order ``R ← R + mean_h((∇A ⊙ A)⁺) R``, with ``∇A`` the
    gradient of the target logit. The model runs in eval mode.

    Args:
        model: A supported timm ViT-family model.
        x: Model-normalised images ``[B,3,H,W]``.
        target: ``None`` (predicted class), an int or a ``[B]`` tensor.

    Returns:
        The class token's row of ``R`` over the patches, ``[B,P]``.

    Raises:
        TypeError: ``target`` is a float, bool, string or floating-point tensor
            (:func:`~iavutils.core.attribution.check_target`).
        ValueError: Bad input (size, NaN, or a dtype/device other than the model's).
        RuntimeError: Called under ``torch.inference_mode()`` (``torch.no_grad()`` is fine).
    """
    T = model_geometry(model).num_prefix_tokens
    check_grad_mode("gradient_rollout")
    attn, grads = attention_and_grads(model, x, target)
    return gradient_rollout_from_grads(attn, grads, T)


def gmar_from_grads(attn: Tensor, attn_grads: Tensor, num_prefix_tokens: int, norm: str = "l1") -> Tensor:
    """GMAR from given attention and gradients (the pure part of :func:`gmar`).

    Args:
        attn: Attention ``[B,L,H,N,N]``.
        attn_grads: ``∂y_c/∂A``, same shape.
        num_prefix_tokens: Tokens before the patches ``T``.
        norm: ``"l1"`` or ``"l2"``.

    Returns:
        ``[B,P]``: :func:`attention_rollout` of ``Ā_l = Σ_h w_{l,h} A_{l,h}``.
    """
    _check_attn(attn, num_prefix_tokens)
    w = gmar_head_weights(attn, attn_grads, norm)
    weighted = (w[..., None, None] * attn).sum(dim=2, keepdim=True)
    return attention_rollout(weighted, num_prefix_tokens, head_fusion="mean")


def gradient_rollout_from_grads(attn: Tensor, attn_grads: Tensor, num_prefix_tokens: int) -> Tensor:
    """Chefer et al.'s generic rollout from given attention and gradients.

    Args:
        attn: Attention ``[B,L,H,N,N]``.
        attn_grads: ``∂y_c/∂A``, same shape.
        num_prefix_tokens: Tokens before the patches ``T``.

    Returns:
        ``[B,P]``: the class token's row of ``R`` (``R = I``; ``R ← R + mean_h((∇A ⊙ A)⁺) R``
        in forward order) over the patches.
    """
    _check_attn(attn, num_prefix_tokens)
    if attn.shape != attn_grads.shape:
        raise ValueError(f"attn and attn_grads shapes differ: {tuple(attn.shape)} vs {tuple(attn_grads.shape)}")
    B, L, _, N, _ = attn.shape
    R = torch.eye(N, dtype=attn.dtype, device=attn.device).expand(B, N, N)
    for layer in range(L):
        cam = (attn_grads[:, layer] * attn[:, layer]).clamp_min(0).mean(dim=1)
        R = R + cam @ R
    return R[:, 0, num_prefix_tokens:]
