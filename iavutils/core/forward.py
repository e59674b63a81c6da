"""The forward that SmoothGrad's gradient passes run: last block on prefix rows, optional compile.

The last block runs on the prefix rows only in the gradient passes of token-pooled timm ViTs
(ViT, DINO, DeiT, distilled DeiT, registers): the logits read nothing else, so queries,
projection and MLP of the patch rows of the last block are skipped (keys/values still see every
token). BEiT mean-pools the patches, so it runs the full model. ``torch.compile`` of that
forward is cached per model and backend.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["can_trim_last_block", "gradient_forward", "prefix_only_forward"]

_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def gradient_forward(model: nn.Module, compile: bool | str) -> Callable[[Tensor], Tensor]:
    """``x -> logits`` for the gradient passes: prefix-only last block when it applies, compiled
    with ``torch.compile`` when ``compile`` is ``True`` (inductor) or a backend name."""
    base: Callable[[Tensor], Tensor] = model
    if can_trim_last_block(model):
        base = functools.partial(prefix_only_forward, model)
    if not compile:
        return base
    backend = "inductor" if compile is True else str(compile)
    per_model = _COMPILED.setdefault(model, {})
    fn = per_model.get(backend)
    if fn is None:
        # static shapes: the chunk plan produces at most two distinct chunk sizes
        fn = torch.compile(base, dynamic=False, backend=backend)
        per_model[backend] = fn
    return fn


def can_trim_last_block(model: nn.Module) -> bool:
    """True for timm ViTs whose logits read only the prefix tokens of the last block.

    With ``global_pool="token"`` (ViT, DINO, DeiT, registers) or the distilled head, the logits
    depend on the last block's output at the prefix tokens only, so its attention needs queries
    for those rows alone and its MLP runs on ``T`` tokens instead of ``N``. Only the unmodified
    timm classes qualify (a subclass may override any of these methods).
    """
    try:
        from timm.layers import Attention as TimmAttention
        from timm.models.deit import VisionTransformerDistilled
        from timm.models.vision_transformer import Block, VisionTransformer
    except ImportError:  # pragma: no cover
        return False
    if type(model) not in (VisionTransformer, VisionTransformerDistilled):
        return False
    if getattr(model, "global_pool", None) != "token" or getattr(model, "attn_pool", None) is not None:
        return False
    if getattr(model, "grad_checkpointing", False):
        return False
    blk = model.blocks[-1]
    return type(blk) is Block and type(blk.attn) is TimmAttention


def prefix_only_forward(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` for a :func:`can_trim_last_block` model, computing the last block on prefix rows."""
    T = model.num_prefix_tokens
    h = model.patch_embed(x)
    h = model._pos_embed(h)
    h = model.patch_drop(h)
    h = model.norm_pre(h)
    blocks = model.blocks
    for blk in blocks[:-1]:
        h = blk(h)
    blk = blocks[-1]
    a = blk.attn
    B, N, D = h.shape
    H, dh, A = a.num_heads, a.head_dim, a.attn_dim
    n1 = blk.norm1(h)
    w, b = a.qkv.weight, a.qkv.bias
    q = F.linear(n1[:, :T], w[:A], None if b is None else b[:A]).view(B, T, H, dh).transpose(1, 2)
    kv = F.linear(n1, w[A:], None if b is None else b[A:]).view(B, N, 2, H, dh).permute(2, 0, 3, 1, 4)
    k, v = kv.unbind(0)
    q, k = a.q_norm(q), a.k_norm(k)
    o = F.scaled_dot_product_attention(q, k, v)  # [B,H,T,dh]; same maths as the fused path
    o = a.norm(o.transpose(1, 2).reshape(B, T, A))
    if a.gate is not None:
        o = o * a.gate(n1[:, :T]).sigmoid()
    o = a.proj(o)
    y = h[:, :T] + blk.drop_path1(blk.ls1(o))
    y = y + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(y))))
    return model.forward_head(model.norm(y))

