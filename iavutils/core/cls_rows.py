"""The class token's attention row, computed from a block's attention input (pure maths).

The CLS-row tap of :mod:`iavutils.core.hooks` calls :func:`cls_rows_from_block_input` on every
block's attention input during a clean forward, so the model keeps its fused attention path and
no ``N×N`` map is ever formed. With no ``k_norm``, ``q₀·kⱼ = (W_kᵀq₀)·xⱼ + q₀·b_k`` and the
constant ``q₀·b_k`` cancels in the softmax, so the row costs ``O(D² + N·D)`` per head instead of
the ``O(N·D²)`` key projection. BEiT's relative position bias row and ``q_bias``/``v_bias`` are
honoured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["cls_rows_from_block_input", "supports_cls_tap"]


def supports_cls_tap(attn: nn.Module) -> bool:
    """True for attention modules of the timm ViT/BEiT layout the row shortcut is derived for."""
    qkv = getattr(attn, "qkv", None)
    return (
        isinstance(qkv, nn.Linear)
        and hasattr(attn, "num_heads")
        and hasattr(attn, "scale")
        # attention variants with rotary embeddings / grouped KV / separate projections are not
        # the timm ViT/BEiT layout this shortcut is derived for
        and not hasattr(attn, "rope")
        and qkv.out_features % 3 == 0
    )


def cls_rows_from_block_input(
    attn: nn.Module,
    x: Tensor,
    num_prefix_tokens: int,
    shared_rel_pos_bias: Tensor | None = None,
) -> Tensor:
    """The class token's attention row over the patches, from an attention module's input.

    Equals ``softmax(q kᵀ·scale + bias)[:, :, 0, T:]`` of a timm ``Attention`` (ViT, DeiT,
    registers) or BEiT ``Attention`` (q/v bias, relative position bias, shared bias) without
    forming the ``N×N`` map or the full key projection (unless the module normalises keys).

    Args:
        attn: the block's attention module (``block.attn``).
        x: its input, the ``norm1`` output, ``[B,N,D]``.
        num_prefix_tokens: ``T``; the row is returned over tokens ``T..N-1``.
        shared_rel_pos_bias: BEiT's model-level relative position bias ``[1|B,H,N,N]`` if used.

    Returns:
        ``[B,H,P]`` attention probabilities of token 0 over the patch tokens.
    """
    B, N, D = x.shape
    H = int(attn.num_heads)
    weight = attn.qkv.weight  # [3A, D]
    A = weight.shape[0] // 3
    dh = A // H
    w_q, w_k = weight[:A], weight[A : 2 * A]
    q_bias = getattr(attn, "q_bias", None)
    if q_bias is None and attn.qkv.bias is not None:
        q_bias = attn.qkv.bias[:A]
    k_bias = getattr(attn, "k_bias", None) if hasattr(attn, "q_bias") else None
    if k_bias is None and not hasattr(attn, "q_bias") and attn.qkv.bias is not None:
        k_bias = attn.qkv.bias[A : 2 * A]

    q0 = F.linear(x[:, 0], w_q, q_bias).view(B, H, dh)
    q_norm = getattr(attn, "q_norm", None)
    if q_norm is not None and not isinstance(q_norm, nn.Identity):
        q0 = q_norm(q0)
    k_norm = getattr(attn, "k_norm", None)
    if k_norm is not None and not isinstance(k_norm, nn.Identity):
        # a non-linear key norm rules out folding W_k into q₀: project the keys
        k = k_norm(F.linear(x, w_k, k_bias).view(B, N, H, dh))
        logits = torch.einsum("bhd,bnhd->bhn", q0, k)
    else:
        # q₀·(W_k x + b_k) = (W_kᵀ q₀)·x + q₀·b_k; the last term is constant over keys and
        # cancels in the softmax
        u = torch.einsum("bhd,hdc->bhc", q0, w_k.view(H, dh, D))
        logits = torch.einsum("bhc,bnc->bhn", u, x)
    logits = logits * attn.scale
    table = getattr(attn, "relative_position_bias_table", None)
    if table is not None:
        logits = logits + attn._get_rel_pos_bias()[..., 0, :]
    if shared_rel_pos_bias is not None:
        logits = logits + shared_rel_pos_bias[..., 0, :]
    return logits.float().softmax(dim=-1)[:, :, num_prefix_tokens:]
