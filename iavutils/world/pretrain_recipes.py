"""The pretraining recipes of the tiny presets, and what their three training loops share.

:data:`RECIPES` holds each tiny preset's :class:`Recipe` (method, source data, steps, optimiser
and augmentation settings); :func:`augment` is the batched, generator-seeded augmentation;
``_lr_at``, ``_param_groups`` and ``_batches`` are the schedule, AdamW parameter groups and data
order every loop uses. The loops are in :mod:`~iavutils.world.pretrain_mim`,
:mod:`~iavutils.world.pretrain_dino` and :mod:`~iavutils.world.pretrain_supervised`; the
command line in :mod:`iavutils.world.pretrain`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RECIPES", "Recipe", "augment"]


@dataclass(frozen=True)
class Recipe:
    """One pretraining recipe.

    Attributes:
        method: ``"mim"``, ``"dino"`` or ``"supervised"``.
        source: Embedded source dataset (``"source-small"`` / ``"source-large"``).
        steps: Optimizer steps.
        batch_size: Images per step.
        lr: Peak learning rate (AdamW, linear warm-up then cosine decay).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps.
        seed: Seeds initialisation, data order and augmentation.
    """

    method: str
    source: str
    steps: int
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    seed: int = 0
    mask_ratio: float = 0.5  # mim
    out_dim: int = 256  # dino head outputs
    teacher_momentum: float = 0.99  # dino EMA start (goes to 1 by a cosine)
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    center_momentum: float = 0.9
    crop_scale: float = 0.4  # dino views: random resized crops of [crop_scale, 1] of the area
    colour_jitter: float = 0.1  # dino views: brightness/contrast/saturation, never hue (a class cue)
    gray_p: float = 0.0  # dino views: grayscale probability
    blur_p: float = 0.0  # dino views: Gaussian blur probability
    solarize_p: float = 0.0  # dino views: solarisation probability
    local_crops: int = 0  # dino: number of local crops (student only)
    local_size: int = 16  # dino: local crops' side in pixels (fed at that resolution)
    local_crop_scale: tuple[float, float] = (0.1, 0.4)  # dino: local crops' area fraction
    teacher_temp_start: float = 0.04  # dino: teacher temperature warms up from this ...
    teacher_temp_warmup_steps: int = 0  # ... to teacher_temp over these steps


RECIPES: dict[str, Recipe] = {
    "tiny-mim": Recipe("mim", "source-large", steps=300, batch_size=64, lr=1e-3, weight_decay=0.05),
    # Multi-crop and strong colour augmentation: with mild jitter the views were matched by their
    # shared background colours and the probe fell below random init (0.117 vs 0.135).
    "tiny-dino": Recipe(
        "dino", "source-small", steps=700, batch_size=32, lr=1e-3, weight_decay=0.04, teacher_momentum=0.95,
        crop_scale=0.5, colour_jitter=0.4, gray_p=0.5, blur_p=0.3, solarize_p=0.2,
        local_crops=4, local_crop_scale=(0.3, 0.6),
    ),
    "tiny-sup": Recipe("supervised", "source-small", steps=400, batch_size=64, lr=1e-3),
    "tiny-sup21k": Recipe("supervised", "source-large", steps=400, batch_size=64, lr=1e-3),
}


# ---------------------------------------------------------------------------------------------
# augmentation (batched, on [0,1] pixels, randomness from a generator)


def augment(
    x01: torch.Tensor, g: torch.Generator, scale: tuple[float, float] = (0.35, 1.0), colour: float = 0.4, gray_p: float = 0.2
) -> torch.Tensor:
    """Random resized crop (aspect 3/4..4/3), horizontal flip, colour jitter and grayscale.

    Args:
        x01: ``[B,3,H,W]`` pixels in [0, 1].
        g: The generator every random choice is drawn from.
        scale: Range of the crop's area fraction.
        colour: Strength of brightness / contrast / saturation jitter (0 = none).
        gray_p: Probability of converting to grayscale.

    Returns:
        ``[B,3,H,W]`` in [0, 1].
    """
    b = x01.shape[0]
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(b, generator=g)
    log_r = (torch.rand(b, generator=g) * 2 - 1) * math.log(4 / 3)
    ratio = torch.exp(log_r)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (torch.rand(b, generator=g) * 2 - 1) * (1 - sw)
    ty = (torch.rand(b, generator=g) * 2 - 1) * (1 - sh)
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = sw * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    x = F.grid_sample(x01, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if colour > 0:
        bright = 1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * colour
        contrast = 1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * colour
        sat = 1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * colour
        x = x * bright
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * sat + gray
    if gray_p > 0:
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
        x = torch.where((torch.rand(b, 1, 1, 1, generator=g) < gray_p), gray, x)
    return x.clamp(0, 1)


def _norm(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - 0.5) / 0.5  # the tiny presets' mean/std



# ---------------------------------------------------------------------------------------------
# recipes


def _lr_at(step: int, r: Recipe) -> float:
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    p = (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps)
    return 1e-6 + (r.lr - 1e-6) * 0.5 * (1 + math.cos(math.pi * p))


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for m in modules:
        for name, p in m.named_parameters():
            if not p.requires_grad:
                continue
            skip = p.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "mask_token", "relative_position_bias_table"))
            (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _batches(n: int, r: Recipe, g: torch.Generator):
    """Yields index batches for ``r.steps`` steps, reshuffling every pass over the data."""
    perm, pos = torch.randperm(n, generator=g), 0
    for _ in range(r.steps):
        if pos + r.batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        yield perm[pos : pos + r.batch_size]
        pos += r.batch_size

