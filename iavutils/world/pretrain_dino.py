"""Self-distillation with no labels (≈ DINO), the ``tiny-dino`` recipe.

A student and an EMA teacher on ``source-small`` images with DINO's multi-crop: two global
views that both networks see and several local crops fed to the student only, at their own
resolution (position embedding resized). The teacher's output is centred and sharpened, the
student matches it across views. :mod:`iavutils.world.pretrain` describes the views in full.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from ..core.progress import tqdm  # one progress helper: widgets, terminal, or the book runner

from .data import get_dataset
from .presets import TINY_CONFIG
from .pretrain_recipes import Recipe, _batches, _lr_at, _norm, _param_groups, augment


class _DINOHead(nn.Module):
    """DINO's projection head: 3-layer MLP, L2-normalised bottleneck, weight-normalised last layer."""

    def __init__(self, dim: int, out_dim: int, hidden: int = 256, bottleneck: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1.0)
        self.last.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


def _vit_features(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ViT's ``forward_features`` that also takes inputs smaller than the model's 32×32.

    Local crops are fed at their own (lower) resolution, as in DINO, with the position
    embedding bicubically resized to their patch grid: a 16×16 crop has 16 patches instead of
    64, so six of them cost about as much as 1.5 global views. The model's own size goes
    through timm's forward unchanged.
    """
    if tuple(x.shape[-2:]) == tuple(vit.patch_embed.img_size):
        return vit.forward_features(x)
    tokens = vit.patch_embed.norm(vit.patch_embed.proj(x).flatten(2).transpose(1, 2))
    h, w = x.shape[-2] // vit.patch_embed.patch_size[0], x.shape[-1] // vit.patch_embed.patch_size[1]
    gh, gw = vit.patch_embed.grid_size
    cls_pos, patch_pos = vit.pos_embed[:, :1], vit.pos_embed[:, 1:]
    patch_pos = patch_pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    tokens = torch.cat((vit.cls_token.expand(len(x), -1, -1) + cls_pos, tokens + patch_pos), dim=1)
    tokens = vit.norm_pre(vit.patch_drop(vit.pos_drop(tokens)))
    return vit.norm(vit.blocks(tokens))


def _dino_view(x01: torch.Tensor, g: torch.Generator, r: Recipe, local: bool) -> torch.Tensor:
    """One DINO view of a batch: a global (32×32) or local (``r.local_size``) crop, augmented.

    Colour jitter (brightness / contrast / saturation, no hue shift, so that the objects' class
    hue survives), random grayscale, Gaussian blur and solarisation, each drawn per image. They
    make the two views of an image disagree on the colours and the fine texture of the
    background they share, so matching them is no longer solvable from the background alone.
    No masks and no labels are used.
    """
    scale = (r.local_crop_scale[0], r.local_crop_scale[1]) if local else (r.crop_scale, 1.0)
    x = augment(x01, g, scale=scale, colour=r.colour_jitter, gray_p=r.gray_p)
    b = len(x)
    if r.blur_p > 0:
        # separable 3×3 Gaussian with a per-image sigma in [0.1, 1.0] px
        sigma = 0.1 + 0.9 * torch.rand(b, generator=g)
        k = torch.exp(-(torch.tensor([-1.0, 0.0, 1.0])[None] ** 2) / (2 * sigma[:, None] ** 2))
        k = k / k.sum(-1, keepdim=True)  # [B,3]
        xp = F.pad(x, (1, 1, 1, 1), mode="reflect")
        xb = k[:, 0, None, None, None] * xp[..., :, :-2] + k[:, 1, None, None, None] * xp[..., :, 1:-1] + k[:, 2, None, None, None] * xp[..., :, 2:]
        xb = k[:, 0, None, None, None] * xb[..., :-2, :] + k[:, 1, None, None, None] * xb[..., 1:-1, :] + k[:, 2, None, None, None] * xb[..., 2:, :]
        x = torch.where(torch.rand(b, 1, 1, 1, generator=g) < r.blur_p, xb, x)
    if r.solarize_p > 0:
        x = torch.where(torch.rand(b, 1, 1, 1, generator=g) < r.solarize_p, torch.where(x >= 0.5, 1 - x, x), x)
    if local:
        # the crop was resampled at 32×32; area-downsampling gives the low-resolution local view
        x = F.interpolate(x, size=(r.local_size, r.local_size), mode="area")
    return x


def _train_dino(model: nn.Module, r: Recipe, g: torch.Generator, progress: bool) -> dict:
    images = get_dataset(r.source, "train").images
    dim = TINY_CONFIG["embed_dim"]
    student = nn.ModuleDict({"backbone": model, "head": _DINOHead(dim, r.out_dim)})
    teacher = copy.deepcopy(student)
    for q in teacher.parameters():
        q.requires_grad = False
    teacher.eval()
    center = torch.zeros(1, r.out_dim)
    opt = torch.optim.AdamW(_param_groups([student], r.weight_decay), lr=r.lr)
    s_params = [p for p in student.parameters()]
    t_params = [p for p in teacher.parameters()]
    losses, entropies = [], []

    def embed(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return net["head"](net["backbone"].forward_head(_vit_features(net["backbone"], x), pre_logits=True))

    bar = tqdm(_batches(len(images), r, g), total=r.steps, desc="tiny-dino", disable=not progress)
    for step, idx in enumerate(bar):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, r)
        x01 = images[idx].float() / 255
        b = len(idx)
        globals_ = _norm(torch.cat([_dino_view(x01, g, r, local=False) for _ in range(2)]))
        locals_ = [_norm(_dino_view(x01, g, r, local=True)) for _ in range(r.local_crops)]
        # DINO's teacher-temperature warm-up: a softer target while the centre settles avoids
        # an early collapse onto one prototype
        warm = min(1.0, step / max(1, r.teacher_temp_warmup_steps))
        t_temp = r.teacher_temp_start + (r.teacher_temp - r.teacher_temp_start) * warm
        with torch.no_grad():
            t_out = embed(teacher, globals_)
            t_prob = F.softmax((t_out - center) / t_temp, dim=-1).chunk(2)
        # the teacher sees only the global views, the student all views (global + local)
        s_out = [embed(student, globals_)] + ([embed(student, torch.cat(locals_))] if locals_ else [])
        s_logp = torch.cat(s_out) / r.student_temp
        s_logp = F.log_softmax(s_logp, dim=-1).split(b)
        loss, n_terms = 0.0, 0
        for ti, tp in enumerate(t_prob):
            for si, sl in enumerate(s_logp):
                if si == ti:  # never the same view
                    continue
                loss = loss - (tp * sl).sum(-1).mean()
                n_terms += 1
        loss = loss / n_terms
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        with torch.no_grad():
            m = 1 - (1 - r.teacher_momentum) * (math.cos(math.pi * step / r.steps) + 1) / 2
            torch._foreach_mul_(t_params, m)
            torch._foreach_add_(t_params, s_params, alpha=1 - m)
            center.mul_(r.center_momentum).add_(t_out.mean(0, keepdim=True), alpha=1 - r.center_momentum)
            # entropy of the batch-mean teacher distribution: near 0 means collapse onto one output
            mean_p = torch.cat(t_prob).mean(0)
            entropies.append(-(mean_p * mean_p.clamp_min(1e-12).log()).sum().item())
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", H=f"{entropies[-1]:.2f}")
    # DINO evaluates (and ships) the teacher: the EMA weights are the better backbone.
    model.load_state_dict(teacher["backbone"].state_dict())
    return {"final_loss": sum(losses[-20:]) / len(losses[-20:]), "teacher_mean_entropy": sum(entropies[-20:]) / len(entropies[-20:])}

