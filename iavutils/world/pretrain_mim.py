"""Masked image modelling (≈ BEiT), the ``tiny-mim`` recipe, SimMIM-style.

Half of the patches are replaced by a learnable mask token and a linear decoder predicts their
(per-patch normalised) pixels; L1 loss on the masked patches. timm ``Beit`` with relative
position bias, on unlabelled ``source-large``.
"""

from __future__ import annotations


import torch
from torch import nn
from ..core.progress import tqdm  # one progress helper: widgets, terminal, or the book runner

from .data import get_dataset
from .presets import TINY_CONFIG
from .pretrain_recipes import Recipe, _batches, _lr_at, _norm, _param_groups, augment


class _MIMDecoder(nn.Module):
    """SimMIM's head: LayerNorm + linear map from each patch token to its pixels."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch * patch * 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pred(self.norm(tokens))


def _mim_forward(model: nn.Module, mask_token: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """timm Beit's forward_features with masked patch embeddings replaced by the mask token."""
    tokens = model.patch_embed(x)  # [B,P,D]
    w = mask.unsqueeze(-1).to(tokens.dtype)
    tokens = tokens * (1 - w) + mask_token.to(tokens.dtype) * w
    tokens = torch.cat((model.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
    if model.pos_embed is not None:
        tokens = tokens + model.pos_embed
    rel = model.rel_pos_bias() if model.rel_pos_bias is not None else None
    for blk in model.blocks:
        tokens = blk(tokens, shared_rel_pos_bias=rel)
    return tokens[:, model.num_prefix_tokens :]


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def _train_mim(model: nn.Module, r: Recipe, g: torch.Generator, progress: bool) -> dict:
    images = get_dataset(r.source, "train").images
    p = TINY_CONFIG["patch_size"]
    dim = TINY_CONFIG["embed_dim"]
    decoder = _MIMDecoder(dim, p)
    mask_token = nn.Parameter(torch.zeros(1, 1, dim))
    nn.init.trunc_normal_(mask_token, std=0.02)
    opt = torch.optim.AdamW(_param_groups([model, decoder], r.weight_decay) + [{"params": [mask_token], "weight_decay": 0.0}], lr=r.lr)
    num_patches = model.patch_embed.num_patches
    n_mask = int(round(r.mask_ratio * num_patches))
    losses = []
    bar = tqdm(_batches(len(images), r, g), total=r.steps, desc="tiny-mim", disable=not progress)
    for step, idx in enumerate(bar):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, r)
        x01 = augment(images[idx].float() / 255, g, scale=(0.6, 1.0), colour=0.0, gray_p=0.0)
        # exactly n_mask random patches per image
        mask = torch.zeros(len(idx), num_patches)
        mask.scatter_(1, torch.rand(len(idx), num_patches, generator=g).argsort(dim=1)[:, :n_mask], 1.0)
        pred = decoder(_mim_forward(model, mask_token, _norm(x01), mask))
        target = _patchify(x01, p)
        # per-patch normalised pixel targets (MAE / SimMIM option): shape, not mean colour
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        loss = ((pred - target).abs().mean(-1) * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    return {"final_loss": sum(losses[-20:]) / len(losses[-20:])}

